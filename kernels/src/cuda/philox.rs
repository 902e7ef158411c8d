//! CUDA launchers of [`crate::philox`]: raw Philox4x32-10 words and the uniform and normal fills
//! of a stream (`kernels/cuda/philox.cu`), bit-identical to [`crate::philox::Philox`]'s
//! `u32_at`, `fill_uniform` and `fill_normal` ([`philox_u32`] is `u32_at`'s twin).
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: dropout masks ([`super::dropout`], whose module compiles `philox.cu` in), the
//! augmentation and mix draws (host side).

use super::common::{grid, launch};
use super::device::{Device, DeviceBufMut};
use super::nvrtc::PHILOX;
use super::CudaError;
use cudarc::driver::PushKernelArg;

/// `out[j] = Philox::new(seed, stream).u32_at(offset + j)`.
pub fn philox_u32(
    dev: &Device,
    seed: u64,
    stream: u64,
    offset: u64,
    out: &mut impl DeviceBufMut<u32>,
) -> Result<(), CudaError> {
    let n = out.elems();
    if n == 0 {
        return Ok(());
    }
    let (po, n64) = (out.device_addr(dev.stream()), n as u64);
    launch!(dev, PHILOX, "philox_u32", grid(n); seed, stream, offset, n64, po)
}

/// [`crate::philox::Philox::fill_uniform`] of `Philox::new(seed, stream)`, bit-identical.
pub fn fill_uniform(
    dev: &Device,
    seed: u64,
    stream: u64,
    offset: u64,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = out.elems();
    if n == 0 {
        return Ok(());
    }
    let (po, n64) = (out.device_addr(dev.stream()), n as u64);
    launch!(dev, PHILOX, "philox_uniform", grid(n); seed, stream, offset, n64, po)
}

/// [`crate::philox::Philox::fill_normal`] of `Philox::new(seed, stream)`, bit-identical.
pub fn fill_normal(
    dev: &Device,
    seed: u64,
    stream: u64,
    offset: u64,
    mean: f32,
    std: f32,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = out.elems();
    if n == 0 {
        return Ok(());
    }
    let (po, n64) = (out.device_addr(dev.stream()), n as u64);
    launch!(dev, PHILOX, "philox_normal", grid(n); seed, stream, offset, n64, mean, std, po)
}
