//! CUDA launchers of [`crate::pool`]: max 2-d pooling and global average pooling, forward and
//! backward (`kernels/cuda/pool.cu`). The max forward visits each window in the CPU's order and
//! its backward is a gather in the order in which the CPU scatters, so they are bit-identical;
//! the global mean's f64 tree sum agrees to f32 rounding, its backward is bit-identical.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: windowed average pooling, ceil_mode, dilation, adaptive pooling to sizes other than
//! 1×1.

use super::common::{expect, grid, grid2, launch, MAX_BLOCKS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::POOL;
use super::CudaError;
use crate::pool::Pool2d;
use crate::{KernelError, Nchw};
use cudarc::driver::PushKernelArg;

/// `PoolGeom` of pool.cu: plane extents, window, stride, padding.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
}

// SAFETY: a #[repr(C)] struct of ten u32, laid out exactly as pool.cu's `PoolGeom`.
unsafe impl cudarc::driver::DeviceRepr for PoolGeom {}

/// Validates the geometry with the CPU's own checks and packs it; errors when a plane or a
/// window extent does not fit the kernels' u32 indices.
fn pool_geom(kernel: &'static str, s: Nchw, p: Pool2d) -> Result<(PoolGeom, usize), CudaError> {
    let (ho, wo) = p.out_hw(s.h, s.w).map_err(|e| match e {
        KernelError::Shape { reason, .. } => KernelError::Shape { kernel, reason },
        other => other,
    })?;
    // pool.cu finds covering windows in i32 arithmetic on padded coordinates.
    let big = |v: usize| u32::try_from(v).is_err();
    let big_i32 = |v: usize| i32::try_from(v).is_err();
    if big(s.plane()) || big(ho * wo) || big_i32(s.h + 2 * p.ph) || big_i32(s.w + 2 * p.pw) {
        return Err(KernelError::Shape {
            kernel,
            reason: format!("a {}×{} plane overflows the kernel's u32 indices", s.h, s.w),
        }
        .into());
    }
    let geom = PoolGeom {
        h: s.h as u32,
        w: s.w as u32,
        ho: ho as u32,
        wo: wo as u32,
        kh: p.kh as u32,
        kw: p.kw as u32,
        sh: p.sh as u32,
        sw: p.sw as u32,
        ph: p.ph as u32,
        pw: p.pw as u32,
    };
    Ok((geom, s.n * s.c * ho * wo))
}

/// [`crate::pool::max_pool2d_fwd`]: y = window max, argmax = its iy·W + ix (bit-identical).
///
/// x: [N,C,H,W] (`s`); y, argmax: [N,C,Ho,Wo] with (Ho, Wo) = `p.out_hw(H, W)`.
pub fn max_pool2d_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    s: Nchw,
    p: Pool2d,
    y: &mut impl DeviceBufMut<f32>,
    argmax: &mut impl DeviceBufMut<u32>,
) -> Result<(), CudaError> {
    const K: &str = "max_pool2d_fwd";
    let (g, out) = pool_geom(K, s, p)?;
    expect(K, "x", x, s.len())?;
    expect(K, "y", y, out)?;
    expect(K, "argmax", argmax, out)?;
    if out == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, pa, n) = (
        x.device_addr(st),
        y.device_addr(st),
        argmax.device_addr(st),
        out as u64,
    );
    launch!(dev, POOL, "max_pool2d_fwd", grid(out); px, n, g, py, pa)
}

/// [`crate::pool::max_pool2d_bwd`]: dx[i] = Σ dy over outputs whose argmax is i (a gather,
/// deterministic and bit-identical). dy, argmax: [N,C,Ho,Wo]; dx: [N,C,H,W] (`s`).
///
/// An argmax must come from [`max_pool2d_fwd`] with the same geometry: an index inside the
/// plane but outside its output's window is not credited (the CPU would credit it), and one
/// outside the plane is not detected on the device (the CPU reports it).
pub fn max_pool2d_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    argmax: &impl DeviceBuf<u32>,
    s: Nchw,
    p: Pool2d,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "max_pool2d_bwd";
    let (g, out) = pool_geom(K, s, p)?;
    expect(K, "dy", dy, out)?;
    expect(K, "argmax", argmax, out)?;
    expect(K, "dx", dx, s.len())?;
    if s.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pa, pdx, n) = (
        dy.device_addr(st),
        argmax.device_addr(st),
        dx.device_addr(st),
        s.len() as u64,
    );
    launch!(dev, POOL, "max_pool2d_bwd", grid(s.len()); pdy, pa, n, g, pdx)
}

fn nonempty_plane(kernel: &'static str, s: Nchw) -> Result<(), CudaError> {
    if s.plane() == 0 {
        return Err(KernelError::Shape {
            kernel,
            reason: format!("empty input plane {}×{}", s.h, s.w),
        }
        .into());
    }
    Ok(())
}

/// [`crate::pool::global_avg_pool_fwd`]: y[n, c] = mean of the plane (f64 tree sum, agrees to
/// f32 rounding). x: [N,C,H,W] (`s`); y: [N,C].
pub fn global_avg_pool_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    s: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "global_avg_pool_fwd";
    nonempty_plane(K, s)?;
    expect(K, "x", x, s.len())?;
    expect(K, "y", y, s.n * s.c)?;
    let planes = s.n * s.c;
    if planes == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, np, area) = (
        x.device_addr(st),
        y.device_addr(st),
        planes as u64,
        s.plane() as u64,
    );
    let cfg = grid2(planes.min(MAX_BLOCKS) as u32, 1);
    launch!(dev, POOL, "global_avg_pool_fwd", cfg; px, np, area, py)
}

/// [`crate::pool::global_avg_pool_bwd`]: dx[n, c, ·, ·] = dy[n, c] / (H·W) (bit-identical).
/// dy: [N,C]; dx: [N,C,H,W] (`s`).
pub fn global_avg_pool_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    s: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "global_avg_pool_bwd";
    nonempty_plane(K, s)?;
    expect(K, "dy", dy, s.n * s.c)?;
    expect(K, "dx", dx, s.len())?;
    if s.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pdx, n, area) = (
        dy.device_addr(st),
        dx.device_addr(st),
        s.len() as u64,
        s.plane() as u64,
    );
    launch!(dev, POOL, "global_avg_pool_bwd", grid(s.len()); pdy, n, area, pdx)
}
