//! The float trait every kernel is generic over. Two instances matter: `f32` (what runs) and
//! `f64` (the oracle for finite-difference gradient checks). Nothing here is numeric policy; it
//! only gathers the bounds the kernels need so signatures stay short.

use num_traits::Float;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

mod sealed {
    /// Only f32 and f64 may implement `Real`: the GEMM entry point dispatches on the type and
    /// has no path for anything else.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type a kernel can run on (`f32`, `f64`). Sealed.
pub trait Real:
    sealed::Sealed
    + Float
    + Default
    + Debug
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Send
    + Sync
    + 'static
{
    /// Converts an `f64` constant (hyper-parameters, literals) into this type.
    fn of(v: f64) -> Self;
    /// Widens to `f64` (reductions that must not lose precision, tests).
    fn f64(self) -> f64;
    /// Replaces every element x of `v` by e^x. f32: the vectorisable polynomial of
    /// [`crate::exp`] (within 1 ulp, not always libm's bits); f64: `f64::exp` (the gradcheck oracle).
    fn exp_in_place(v: &mut [Self]);
    /// `v` as f32, when this type is f32 (kernels with an f32-only fast path dispatch on it).
    fn as_f32(v: &[Self]) -> Option<&[f32]>;
    /// `v` as mutable f32, when this type is f32.
    fn as_f32_mut(v: &mut [Self]) -> Option<&mut [f32]>;
}

impl Real for f32 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    fn exp_in_place(v: &mut [Self]) {
        crate::exp::exp_f32_in_place(v);
    }
    fn as_f32(v: &[Self]) -> Option<&[f32]> {
        Some(v)
    }
    fn as_f32_mut(v: &mut [Self]) -> Option<&mut [f32]> {
        Some(v)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    fn exp_in_place(v: &mut [Self]) {
        for x in v {
            *x = x.exp();
        }
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}
