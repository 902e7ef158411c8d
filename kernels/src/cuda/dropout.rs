//! CUDA launchers of [`crate::dropout`]: element-wise and channel-wise (2-d) inverted dropout
//! (`kernels/cuda/dropout.cu`, compiled together with `philox.cu` as one module, so the masks are
//! the CPU's Philox draws bit for bit). `p` and the counter range are checked with the CPU's own
//! checks; [`dropout_bwd`] is dy·mask, launched as `elementwise.cu`'s `mul_fwd`.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: the Philox fills themselves ([`super::philox`]), alpha dropout.

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::{DROPOUT, ELEMENTWISE};
use super::CudaError;
use crate::philox::Philox;
use crate::{dropout, Nchw};
use cudarc::driver::PushKernelArg;

/// [`crate::dropout::dropout_fwd`]: `mask[i] = 0` if `rng.bernoulli_at(offset + i, p)` else
/// `1/(1−p)`, `y = x·mask`; bit-identical to the CPU. x, y, mask: same length.
pub fn dropout_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    p: f32,
    rng: &Philox,
    offset: u64,
    y: &mut impl DeviceBufMut<f32>,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout_fwd";
    let n = x.elems();
    expect(K, "y", y, n)?;
    expect(K, "mask", mask, n)?;
    let scale = dropout::prepare::<f32>(K, p, offset, n)?;
    if n == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, pm, n64) = (
        x.device_addr(st),
        y.device_addr(st),
        mask.device_addr(st),
        n as u64,
    );
    let (seed, stream) = (rng.seed(), rng.stream());
    launch!(dev, DROPOUT, "dropout_fwd", grid(n); px, n64, p, scale, seed, stream, offset, py, pm)
}

/// [`crate::dropout::dropout_bwd`]: dx = dy·mask. dy, mask, dx: same length.
pub fn dropout_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    mask: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout_bwd";
    let n = dy.elems();
    expect(K, "mask", mask, n)?;
    expect(K, "dx", dx, n)?;
    if n == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pm, pdx, n64) = (
        dy.device_addr(st),
        mask.device_addr(st),
        dx.device_addr(st),
        n as u64,
    );
    launch!(dev, ELEMENTWISE, "mul_fwd", grid(n); pdy, pm, n64, pdx)
}

/// `dropout2d_apply`: y[n, c, :, :] = x[n, c, :, :]·mask[n, c].
fn dropout2d_apply(dev: &Device, x: u64, mask: u64, shape: Nchw, y: u64) -> Result<(), CudaError> {
    let (len, plane) = (shape.len() as u64, shape.plane() as u64);
    launch!(dev, DROPOUT, "dropout2d_apply", grid(shape.len()); x, mask, len, plane, y)
}

/// [`crate::dropout::dropout2d_fwd`]: `mask[n, c] = 0` if `rng.bernoulli_at(offset + n·C + c,
/// p)` else `1/(1−p)`; `y[n, c] = x[n, c]·mask[n, c]`; bit-identical to the CPU.
///
/// x, y: [N, C, H, W] (`shape`); mask: [N, C].
#[allow(clippy::too_many_arguments)]
pub fn dropout2d_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    p: f32,
    rng: &Philox,
    offset: u64,
    y: &mut impl DeviceBufMut<f32>,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout2d_fwd";
    let planes = shape.n * shape.c;
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.len())?;
    expect(K, "mask", mask, planes)?;
    let scale = dropout::prepare::<f32>(K, p, offset, planes)?;
    if planes == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, pm, planes64) = (
        x.device_addr(st),
        y.device_addr(st),
        mask.device_addr(st),
        planes as u64,
    );
    let (seed, stream) = (rng.seed(), rng.stream());
    launch!(dev, DROPOUT, "dropout2d_mask", grid(planes);
        planes64, p, scale, seed, stream, offset, pm)?;
    if shape.is_empty() {
        return Ok(());
    }
    dropout2d_apply(dev, px, pm, shape, py)
}

/// [`crate::dropout::dropout2d_bwd`]: `dx[n, c] = dy[n, c]·mask[n, c]`.
///
/// dy, dx: [N, C, H, W] (`shape`); mask: [N, C].
pub fn dropout2d_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    mask: &impl DeviceBuf<f32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout2d_bwd";
    expect(K, "dy", dy, shape.len())?;
    expect(K, "mask", mask, shape.n * shape.c)?;
    expect(K, "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pm, pdx) = (dy.device_addr(st), mask.device_addr(st), dx.device_addr(st));
    dropout2d_apply(dev, pdy, pm, shape, pdx)
}
