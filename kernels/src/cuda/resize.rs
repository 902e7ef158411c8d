//! CUDA launchers of [`crate::resize`]: bilinear resize forward and backward, and nearest for
//! i32 label maps (`kernels/cuda/resize.cu`): PyTorch's index and weight formulas in the CPU's f32
//! operations, the backward a gather in the order in which the CPU scatters, all bit-identical.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: scale_factor, antialias, bicubic, a nearest backward.

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::RESIZE;
use super::CudaError;
use crate::{KernelError, Nchw};
use cudarc::driver::PushKernelArg;

/// The CPU's size checks, plus u32 extents for the kernels; returns (H, W, Ho, Wo) as u32.
fn resize_dims(
    kernel: &'static str,
    s: Nchw,
    out_h: usize,
    out_w: usize,
) -> Result<(u32, u32, u32, u32), CudaError> {
    if s.h == 0 || s.w == 0 || out_h == 0 || out_w == 0 {
        return Err(KernelError::Shape {
            kernel,
            reason: format!(
                "input and output sizes must be greater than 0, got input (H, W) = ({}, {}) and \
                 output (Ho, Wo) = ({out_h}, {out_w})",
                s.h, s.w
            ),
        }
        .into());
    }
    let fits = |v: usize| u32::try_from(v).ok();
    match (
        fits(s.plane()),
        fits(out_h * out_w),
        // f32 index arithmetic is exact below 2^24, as on the CPU for any sane size.
        (s.h.max(s.w).max(out_h).max(out_w) < 1 << 24).then_some(()),
    ) {
        (Some(_), Some(_), Some(())) => Ok((s.h as u32, s.w as u32, out_h as u32, out_w as u32)),
        _ => Err(KernelError::Shape {
            kernel,
            reason: format!(
                "planes {}×{} → {out_h}×{out_w} are too large for the kernel's u32 indices",
                s.h, s.w
            ),
        }
        .into()),
    }
}

/// [`crate::resize::resize_bilinear_fwd`]: PyTorch's bilinear interpolation (bit-identical).
///
/// x: [N,C,H,W] (`shape`); y: [N,C,Ho,Wo] with Ho = `out_h`, Wo = `out_w`.
pub fn resize_bilinear_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "resize_bilinear_fwd";
    let (h, w, ho, wo) = resize_dims(K, shape, out_h, out_w)?;
    let out = shape.n * shape.c * out_h * out_w;
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, out)?;
    if out == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, n, ac) = (
        x.device_addr(st),
        y.device_addr(st),
        out as u64,
        i32::from(align_corners),
    );
    launch!(dev, RESIZE, "resize_bilinear_fwd", grid(out); px, n, h, w, ho, wo, ac, py)
}

/// [`crate::resize::resize_bilinear_bwd`] as a per-input-pixel gather (deterministic, no
/// atomics, bit-identical to the CPU's scatter).
///
/// dy: [N,C,Ho,Wo]; `shape`: the forward input's [N,C,H,W]; dx: [N,C,H,W], overwritten.
pub fn resize_bilinear_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "resize_bilinear_bwd";
    let (h, w, ho, wo) = resize_dims(K, shape, out_h, out_w)?;
    expect(K, "dy", dy, shape.n * shape.c * out_h * out_w)?;
    expect(K, "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pdx, n, ac) = (
        dy.device_addr(st),
        dx.device_addr(st),
        shape.len() as u64,
        i32::from(align_corners),
    );
    launch!(dev, RESIZE, "resize_bilinear_bwd", grid(shape.len()); pdy, n, h, w, ho, wo, ac, pdx)
}

/// [`crate::resize::resize_nearest_fwd`] for i32 label maps: PyTorch's 'nearest' (identical).
///
/// x: [N,C,H,W] (`shape`); y: [N,C,Ho,Wo] with Ho = `out_h`, Wo = `out_w`.
pub fn resize_nearest_fwd(
    dev: &Device,
    x: &impl DeviceBuf<i32>,
    shape: Nchw,
    out_h: usize,
    out_w: usize,
    y: &mut impl DeviceBufMut<i32>,
) -> Result<(), CudaError> {
    const K: &str = "resize_nearest_fwd";
    let (h, w, ho, wo) = resize_dims(K, shape, out_h, out_w)?;
    let out = shape.n * shape.c * out_h * out_w;
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, out)?;
    if out == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, n) = (x.device_addr(st), y.device_addr(st), out as u64);
    launch!(dev, RESIZE, "resize_nearest_fwd", grid(out); px, n, h, w, ho, wo, py)
}
