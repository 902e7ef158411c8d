//! CUDA launchers of [`crate::activation`]: relu and leaky relu, forward and backward
//! (`kernels/cuda/activation.cu`). Each kernel does the CPU's exact f32 operations (one compare,
//! at most one multiply; `--fmad=false`), so results are bit-identical to the CPU.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: threshold (an element-wise op, [`super::elementwise`]), softmax
//! ([`super::softmax`]), activations fused into other kernels.

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::ACTIVATION;
use super::CudaError;
use cudarc::driver::PushKernelArg;

/// [`crate::activation::relu_fwd`]: y = max(x, 0). x, y: same length.
pub fn relu_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("relu_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64) = (x.device_addr(s), y.device_addr(s), n as u64);
    launch!(dev, ACTIVATION, "relu_fwd", grid(n); px, n64, py)
}

/// [`crate::activation::relu_bwd`]: dx = dy · [x > 0]. x, dy, dx: same length.
pub fn relu_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("relu_bwd", "dy", dy, n)?;
    expect("relu_bwd", "dx", dx, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pdy, pdx, n64) = (
        x.device_addr(s),
        dy.device_addr(s),
        dx.device_addr(s),
        n as u64,
    );
    launch!(dev, ACTIVATION, "relu_bwd", grid(n); px, pdy, n64, pdx)
}

/// [`crate::activation::leaky_relu_fwd`]: y = x if x > 0 else slope·x. x, y: same length.
pub fn leaky_relu_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    slope: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("leaky_relu_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64) = (x.device_addr(s), y.device_addr(s), n as u64);
    launch!(dev, ACTIVATION, "leaky_relu_fwd", grid(n); px, n64, slope, py)
}

/// [`crate::activation::leaky_relu_bwd`]: dx = dy if x > 0 else slope·dy. x, dy, dx: same
/// length.
pub fn leaky_relu_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    slope: f32,
    dy: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("leaky_relu_bwd", "dy", dy, n)?;
    expect("leaky_relu_bwd", "dx", dx, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pdy, pdx, n64) = (
        x.device_addr(s),
        dy.device_addr(s),
        dx.device_addr(s),
        n as u64,
    );
    launch!(dev, ACTIVATION, "leaky_relu_bwd", grid(n); px, slope, pdy, n64, pdx)
}
