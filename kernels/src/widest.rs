//! Runs a hot loop compiled for the widest x86-64 vector instruction set the CPU has (AVX-512F,
//! AVX2, else the SSE2 baseline the crate is built for), picked at run time. The batch-norm
//! kernels use it for their per-plane f64 reductions, whose f32 → f64 conversions and adds
//! otherwise run two lanes at a time. (Plain element-wise loops — relu, add, the batch-norm
//! apply passes — measured no faster or slower with it: they are limited by memory, not lanes.)
//!
//! Same bits on every path: the loops keep their own fixed grouping (explicit lane arrays, not
//! reassociation by the compiler), and Rust never contracts a·b + c into a fused multiply-add,
//! so a wider instruction set only changes how many lanes one instruction handles.
//!
//! Not here: anything that needs FMA or instructions beyond AVX-512F, and other architectures
//! (they run the baseline build).

/// Defines `fn $name<T: Real>(args) -> R` that runs the `#[inline(always)]` function `$body` on
/// the same arguments, compiled for the widest instruction set the CPU supports: `$body` is
/// inlined into an AVX-512F and an AVX2 variant (and the plain build), and the widest variant
/// the CPU has is called, checked at run time.
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
