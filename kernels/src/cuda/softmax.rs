//! CUDA launchers of [`crate::softmax`]: softmax and log-softmax over the class axis, forward and
//! backward (`kernels/cuda/softmax.cu`). [`softmax_bwd`] is bit-identical to the CPU; the others
//! use CUDA's expf/logf and agree to a few ulp.
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

fn softmax_launch(
    dev: &Device,
    kernel: &'static str,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect(kernel, "x", x, shape.len())?;
    expect(kernel, "y", y, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let pixels = shape.n * shape.plane();
    let st = dev.stream();
    let (px, py) = (x.device_addr(st), y.device_addr(st));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    match kernel {
        "softmax_fwd" => launch!(dev, SOFTMAX, "softmax_fwd", grid(pixels); px, p64, k, plane, py),
        _ => launch!(dev, SOFTMAX, "log_softmax_fwd", grid(pixels); px, p64, k, plane, py),
    }
}

fn softmax_bwd_launch(
    dev: &Device,
    kernel: &'static str,
    y: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect(kernel, "y", y, shape.len())?;
    expect(kernel, "dy", dy, shape.len())?;
    expect(kernel, "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let pixels = shape.n * shape.plane();
    let st = dev.stream();
    let (py, pdy, pdx) = (y.device_addr(st), dy.device_addr(st), dx.device_addr(st));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    match kernel {
        "softmax_bwd" => {
            launch!(dev, SOFTMAX, "softmax_bwd", grid(pixels); py, pdy, p64, k, plane, pdx)
        }
        _ => launch!(dev, SOFTMAX, "log_softmax_bwd", grid(pixels); py, pdy, p64, k, plane, pdx),
    }
}

/// [`crate::softmax::softmax_fwd`]: y = softmax over K at every pixel (CUDA's expf: agrees to
/// a few ulp). x, y: [N,K,H,W] (`shape.c` is K).
pub fn softmax_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    softmax_launch(dev, "softmax_fwd", x, shape, y)
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
    softmax_bwd_launch(dev, "softmax_bwd", y, dy, shape, dx)
}

/// [`crate::softmax::log_softmax_fwd`]: y = x − max − ln Σ exp(x − max) (CUDA's expf/logf:
/// agrees to a few ulp). x, y: [N,K,H,W] (`shape.c` is K).
pub fn log_softmax_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    softmax_launch(dev, "log_softmax_fwd", x, shape, y)
}

/// [`crate::softmax::log_softmax_bwd`]: dx = dy − exp(y)·Σ_k dy from the log-softmax output y
/// (CUDA's expf: agrees to a few ulp). y, dy, dx: [N,K,H,W] (`shape.c` is K).
pub fn log_softmax_bwd(
    dev: &Device,
    y: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    softmax_bwd_launch(dev, "log_softmax_bwd", y, dy, shape, dx)
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
