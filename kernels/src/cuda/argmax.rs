//! CUDA launchers of [`crate::argmax`]: argmax and max over the class axis of an [N,K,H,W] map
//! (the pseudo-label and its confidence) and max's backward (`kernels/cuda/argmax.cu`),
//! bit-identical to the CPU (comparisons and copies only; ties go to the lowest class, NaN wins).
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`]. Unlike
//! the CPU, [`max_bwd`] cannot report an index outside [0, K): such a pixel contributes nothing.
//!
//! Not here: top-k, thresholding the confidence ([`super::elementwise::threshold_fwd`]).

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::ARGMAX;
use super::CudaError;
use crate::{KernelError, Nchw};
use cudarc::driver::PushKernelArg;

fn check_classes(kernel: &'static str, shape: Nchw) -> Result<(), CudaError> {
    if shape.c == 0 && shape.n * shape.plane() > 0 {
        return Err(KernelError::Shape {
            kernel,
            reason: "max over K = 0 classes is undefined".into(),
        }
        .into());
    }
    Ok(())
}

/// [`crate::argmax::argmax_fwd`]: idx = argmax over K. x: [N,K,H,W]; idx: [N,H,W] i32.
pub fn argmax_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    idx: &mut impl DeviceBufMut<i32>,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect("argmax_fwd", "x", x, shape.len())?;
    expect("argmax_fwd", "idx", idx, pixels)?;
    check_classes("argmax_fwd", shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pi) = (x.device_addr(s), idx.device_addr(s));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, ARGMAX, "argmax_fwd", grid(pixels); px, p64, k, plane, pi)
}

/// [`crate::argmax::max_fwd`]: values, idx = max over K and its class (max_confidence).
/// x: [N,K,H,W]; values: [N,H,W]; idx: [N,H,W] i32.
pub fn max_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    values: &mut impl DeviceBufMut<f32>,
    idx: &mut impl DeviceBufMut<i32>,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect("max_fwd", "x", x, shape.len())?;
    expect("max_fwd", "values", values, pixels)?;
    expect("max_fwd", "idx", idx, pixels)?;
    check_classes("max_fwd", shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pv, pi) = (x.device_addr(s), values.device_addr(s), idx.device_addr(s));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, ARGMAX, "max_fwd", grid(pixels); px, p64, k, plane, pv, pi)
}

/// [`crate::argmax::max_bwd`]: dx[n,k,y,x] = dy[n,y,x] where idx = k, else 0. dy, idx:
/// [N,H,W]; dx: [N,K,H,W]. Unlike the CPU, an idx outside [0, K) is not reported (dx = 0).
pub fn max_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    idx: &impl DeviceBuf<i32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect("max_bwd", "dy", dy, pixels)?;
    expect("max_bwd", "idx", idx, pixels)?;
    expect("max_bwd", "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let (pdy, pi, pdx) = (dy.device_addr(s), idx.device_addr(s), dx.device_addr(s));
    let (len, k, plane) = (shape.len() as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, ARGMAX, "max_bwd", grid(shape.len()); pdy, pi, len, k, plane, pdx)
}
