//! CUDA launchers of [`crate::softmax`]: softmax over the class axis, forward and backward, and
//! sharpening (`kernels/cuda/softmax.cu`). [`softmax_bwd`] is bit-identical to the CPU; the
//! others use CUDA's expf/powf and agree to a few ulp.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: softmax fused with cross entropy ([`super::loss`]), other axes, temperature.

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::SOFTMAX;
use super::CudaError;
use crate::Nchw;
use cudarc::driver::PushKernelArg;

/// [`crate::softmax::softmax_fwd`]: y = softmax over K at every pixel (CUDA's expf: agrees to
/// a few ulp). x, y: [N,K,H,W] (`shape.c` is K).
pub fn softmax_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("softmax_fwd", "x", x, shape.len())?;
    expect("softmax_fwd", "y", y, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let pixels = shape.n * shape.plane();
    let st = dev.stream();
    let (px, py) = (x.device_addr(st), y.device_addr(st));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, SOFTMAX, "softmax_fwd", grid(pixels); px, p64, k, plane, py)
}

/// [`crate::softmax::softmax_bwd`]: dx = y·(dy − Σ_k dy·y) from the softmax output y
/// (bit-identical). y, dy, dx: [N,K,H,W] (`shape.c` is K).
pub fn softmax_bwd(
    dev: &Device,
    y: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("softmax_bwd", "y", y, shape.len())?;
    expect("softmax_bwd", "dy", dy, shape.len())?;
    expect("softmax_bwd", "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let pixels = shape.n * shape.plane();
    let st = dev.stream();
    let (py, pdy, pdx) = (y.device_addr(st), dy.device_addr(st), dx.device_addr(st));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, SOFTMAX, "softmax_bwd", grid(pixels); py, pdy, p64, k, plane, pdx)
}

/// [`crate::softmax::sharpen_fwd`]: y = p^(1/T)/Σ p^(1/T) per pixel, max-normalised (CUDA's
/// powf: a few ulp from the CPU). p, y: [N,K,H,W]; `temperature` finite and > 0 (checked here
/// with the CPU's error).
pub fn sharpen_fwd(
    dev: &Device,
    p: &impl DeviceBuf<f32>,
    shape: Nchw,
    temperature: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("sharpen_fwd", "p", p, shape.len())?;
    expect("sharpen_fwd", "y", y, shape.len())?;
    if !(temperature.is_finite() && temperature > 0.0) {
        // The CPU kernel's own error, from its own check.
        crate::softmax::sharpen_fwd::<f32>(&[], Nchw::new(0, 0, 0, 0), temperature, &mut [])?;
    }
    if shape.is_empty() {
        return Ok(());
    }
    let pixels = shape.n * shape.plane();
    let st = dev.stream();
    let (pp, py) = (p.device_addr(st), y.device_addr(st));
    let (p64, k, plane, power) = (
        pixels as u64,
        shape.c as u32,
        shape.plane() as u64,
        temperature.recip(),
    );
    launch!(dev, SOFTMAX, "sharpen_fwd", grid(pixels); pp, p64, k, plane, power, py)
}
