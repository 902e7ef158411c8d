//! Runs a hot loop compiled for the widest x86-64 vector instruction set the CPU has (AVX-512F,
//! AVX2, else the SSE2 baseline the crate is built for), picked at run time. The memory-bound
//! kernels use it for their f64 reductions, whose f32 → f64 conversions and adds otherwise run
//! two lanes at a time.
//!
//! Same bits on every path: the loops keep their own fixed grouping (explicit lane arrays, not
//! reassociation by the compiler), and Rust never contracts a·b + c into a fused multiply-add,
//! so a wider instruction set only changes how many lanes one instruction handles.
//!
//! Not here: anything that needs FMA or instructions beyond AVX-512F, and other architectures
//! (they run the closure as compiled).

/// Calls `f` from a function compiled with the widest vector extension the CPU supports, so that
/// `f`'s body (inlined there) is vectorised with it. `f` must be small enough to inline: a closure
/// whose loops call `#[inline(always)]` helpers.
#[inline]
pub(crate) fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked on the line above).
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked on the line above).
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Defines `fn $name<T: Real>(args) -> R` that runs the `#[inline(always)]` function `$body` on
/// the same arguments, compiled for the widest instruction set as in [`widest`]. For loops too
/// large for a closure passed to [`widest`] to be inlined into its variants (the compiler then
/// calls the closure compiled for the baseline instead).
macro_rules! widest_fn {
    ($(#[$doc:meta])* fn $name:ident<T: Real>($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident) => {
        $(#[$doc])*
        fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512<T: Real>($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<T: Real>($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked on the line above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked on the line above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use widest_fn;
