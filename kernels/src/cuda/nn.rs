//! Rust launchers for the network-layer CUDA kernels — batch norm, pooling, resize, softmax —
//! each named after its CPU reference and taking the same arguments in the same order (inputs
//! → shape → params → outputs), device buffers in place of slices. Shapes and hyper-parameters
//! are validated on the host with the CPU kernel's own errors before anything is enqueued.
//!
//! Launchers enqueue on [`Device::stream`] and return without waiting. Scratch (reduction
//! partials, per-channel coefficients) is allocated per call on the stream, as in [`super::launch`].
//!
//! Not here: conv, augment/mix, losses (see [`super::launch`] for the others).

use super::common::{expect, grid, grid2, launch, scratch, MAX_BLOCKS, THREADS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::{BATCH_NORM, POOL, RESIZE, SOFTMAX};
use super::CudaError;
use crate::batch_norm::BatchNormParams;
use crate::pool::Pool2d;
use crate::{KernelError, Nchw};
use cudarc::driver::PushKernelArg;

// ---------------------------------------------------------------- batch_norm.cu

/// Blocks per channel of the statistics pass: about 16 grid-stride steps per thread, at most
/// 128. A function of the shape alone, so results are reproducible.
fn bn_blocks(count: usize) -> u32 {
    count.div_ceil(THREADS as usize * 16).clamp(1, 128) as u32
}

fn bn_train_count(kernel: &'static str, s: Nchw) -> Result<usize, CudaError> {
    let m = s.n * s.plane();
    if m < 2 {
        return Err(KernelError::Shape {
            kernel,
            reason: format!(
                "training needs more than 1 value per channel, got N·H·W = {m} (shape {s:?})"
            ),
        }
        .into());
    }
    Ok(m)
}

/// [`crate::batch_norm::batch_norm_train_fwd`]: batch statistics (f64, deterministic), the
/// running-stat update, y = (x − mean)·invstd·γ + β.
///
/// x, y: [N,C,H,W] (`s`); gamma, beta, running_mean, running_var, save_mean, save_invstd: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    gamma: &impl DeviceBuf<f32>,
    beta: &impl DeviceBuf<f32>,
    s: Nchw,
    p: BatchNormParams,
    running_mean: &mut impl DeviceBufMut<f32>,
    running_var: &mut impl DeviceBufMut<f32>,
    y: &mut impl DeviceBufMut<f32>,
    save_mean: &mut impl DeviceBufMut<f32>,
    save_invstd: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "batch_norm_train_fwd";
    expect(K, "x", x, s.len())?;
    expect(K, "gamma", gamma, s.c)?;
    expect(K, "beta", beta, s.c)?;
    expect(K, "running_mean", running_mean, s.c)?;
    expect(K, "running_var", running_var, s.c)?;
    expect(K, "y", y, s.len())?;
    expect(K, "save_mean", save_mean, s.c)?;
    expect(K, "save_invstd", save_invstd, s.c)?;
    let m = bn_train_count(K, s)?;
    if s.c == 0 {
        return Ok(());
    }
    let nb = bn_blocks(m);
    let partials = scratch::<f64>(dev, s.c * nb as usize)?;
    let mean = scratch::<f64>(dev, s.c)?;
    let coef = scratch::<f32>(dev, 3 * s.c)?;
    let st = dev.stream();
    let (px, pg, pb) = (
        x.device_addr(st),
        gamma.device_addr(st),
        beta.device_addr(st),
    );
    let (prm, prv, py, psm, psi) = (
        running_mean.device_addr(st),
        running_var.device_addr(st),
        y.device_addr(st),
        save_mean.device_addr(st),
        save_invstd.device_addr(st),
    );
    let (pp, pmean, pcoef, null) = (
        partials.device_addr(st),
        mean.device_addr(st),
        coef.device_addr(st),
        0u64,
    );
    let (count, ch, plane, mf) = (m as u64, s.c as u32, s.plane() as u64, m as f64);
    let (len, eps, momentum) = (s.len() as u64, p.eps, p.momentum);
    let c32 = s.c as u32;
    launch!(dev, BATCH_NORM, "bn_stat_partials", grid2(nb, c32); px, count, ch, plane, null, pp)?;
    launch!(dev, BATCH_NORM, "bn_mean_finalize", grid2(c32, 1); pp, nb, mf, pmean)?;
    launch!(dev, BATCH_NORM, "bn_stat_partials", grid2(nb, c32); px, count, ch, plane, pmean, pp)?;
    launch!(dev, BATCH_NORM, "bn_train_finalize", grid2(c32, 1);
        pp, nb, mf, pmean, pg, pb, eps, momentum, prm, prv, psm, psi, pcoef)?;
    launch!(dev, BATCH_NORM, "bn_affine", grid(s.len()); px, pcoef, len, ch, plane, py)
}

/// [`crate::batch_norm::batch_norm_eval_fwd`]: y = (x − running_mean)·γ/√(running_var + eps) + β.
///
/// x, y: [N,C,H,W] (`s`); gamma, beta, running_mean, running_var: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    gamma: &impl DeviceBuf<f32>,
    beta: &impl DeviceBuf<f32>,
    running_mean: &impl DeviceBuf<f32>,
    running_var: &impl DeviceBuf<f32>,
    s: Nchw,
    p: BatchNormParams,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "batch_norm_eval_fwd";
    expect(K, "x", x, s.len())?;
    expect(K, "gamma", gamma, s.c)?;
    expect(K, "beta", beta, s.c)?;
    expect(K, "running_mean", running_mean, s.c)?;
    expect(K, "running_var", running_var, s.c)?;
    expect(K, "y", y, s.len())?;
    if s.is_empty() {
        return Ok(());
    }
    let coef = scratch::<f32>(dev, 3 * s.c)?;
    let st = dev.stream();
    let (px, pg, pb, prm, prv, py, pcoef) = (
        x.device_addr(st),
        gamma.device_addr(st),
        beta.device_addr(st),
        running_mean.device_addr(st),
        running_var.device_addr(st),
        y.device_addr(st),
        coef.device_addr(st),
    );
    let (ch, eps, len, plane) = (s.c as u32, p.eps, s.len() as u64, s.plane() as u64);
    launch!(dev, BATCH_NORM, "bn_eval_coef", grid(s.c); pg, pb, prm, prv, ch, eps, pcoef)?;
    launch!(dev, BATCH_NORM, "bn_affine", grid(s.len()); px, pcoef, len, ch, plane, py)
}

/// Shared backward: `invstd` is save_invstd (train) or running_var (eval).
#[allow(clippy::too_many_arguments)]
fn bn_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    gamma: &impl DeviceBuf<f32>,
    mean: &impl DeviceBuf<f32>,
    invstd_or_var: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    s: Nchw,
    eval: Option<f64>,
    dx: &mut impl DeviceBufMut<f32>,
    dgamma: &mut impl DeviceBufMut<f32>,
    dbeta: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let m = s.n * s.plane();
    if s.c == 0 {
        return Ok(());
    }
    let nb = bn_blocks(m);
    let stats = scratch::<f64>(dev, 2 * s.c)?;
    let partials = scratch::<f64>(dev, 2 * s.c * nb as usize)?;
    let coef = scratch::<f32>(dev, 5 * s.c)?;
    let st = dev.stream();
    let (px, pg, pm, pv, pdy) = (
        x.device_addr(st),
        gamma.device_addr(st),
        mean.device_addr(st),
        invstd_or_var.device_addr(st),
        dy.device_addr(st),
    );
    let (pdx, pdg, pdb) = (
        dx.device_addr(st),
        dgamma.device_addr(st),
        dbeta.device_addr(st),
    );
    let (pstats, pp, pcoef) = (
        stats.device_addr(st),
        partials.device_addr(st),
        coef.device_addr(st),
    );
    let (is_eval, eps) = (i32::from(eval.is_some()), eval.unwrap_or(0.0));
    let pinv = if eval.is_some() { 0u64 } else { pv };
    let (count, ch, plane, mf, len) = (
        m as u64,
        s.c as u32,
        s.plane() as u64,
        m as f64,
        s.len() as u64,
    );
    launch!(dev, BATCH_NORM, "bn_bwd_stats", grid(s.c); pm, pv, ch, is_eval, eps, pstats)?;
    launch!(dev, BATCH_NORM, "bn_dy_partials", grid2(nb, ch);
        px, pdy, count, ch, plane, pstats, pp)?;
    launch!(dev, BATCH_NORM, "bn_bwd_finalize", grid2(ch, 1);
        pp, nb, mf, pg, pstats, pm, pinv, pdg, pdb, pcoef)?;
    if s.is_empty() {
        return Ok(());
    }
    launch!(dev, BATCH_NORM, "bn_bwd_dx", grid(s.len()); px, pdy, pcoef, len, ch, plane, is_eval, pdx)
}

/// [`crate::batch_norm::batch_norm_train_bwd`]: dx, dgamma = Σ dy·x̂, dbeta = Σ dy from the
/// forward's save_mean / save_invstd.
///
/// x, dy, dx: [N,C,H,W] (`s`); gamma, save_mean, save_invstd, dgamma, dbeta: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    gamma: &impl DeviceBuf<f32>,
    save_mean: &impl DeviceBuf<f32>,
    save_invstd: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    s: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
    dgamma: &mut impl DeviceBufMut<f32>,
    dbeta: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "batch_norm_train_bwd";
    expect(K, "x", x, s.len())?;
    expect(K, "gamma", gamma, s.c)?;
    expect(K, "save_mean", save_mean, s.c)?;
    expect(K, "save_invstd", save_invstd, s.c)?;
    expect(K, "dy", dy, s.len())?;
    expect(K, "dx", dx, s.len())?;
    expect(K, "dgamma", dgamma, s.c)?;
    expect(K, "dbeta", dbeta, s.c)?;
    bn_train_count(K, s)?;
    bn_bwd(
        dev,
        x,
        gamma,
        save_mean,
        save_invstd,
        dy,
        s,
        None,
        dx,
        dgamma,
        dbeta,
    )
}

/// [`crate::batch_norm::batch_norm_eval_bwd`]: dx = dy·γ/√(running_var + eps), dgamma, dbeta
/// as in training but with the running statistics.
///
/// x, dy, dx: [N,C,H,W] (`s`); gamma, running_mean, running_var, dgamma, dbeta: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    gamma: &impl DeviceBuf<f32>,
    running_mean: &impl DeviceBuf<f32>,
    running_var: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    s: Nchw,
    p: BatchNormParams,
    dx: &mut impl DeviceBufMut<f32>,
    dgamma: &mut impl DeviceBufMut<f32>,
    dbeta: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "batch_norm_eval_bwd";
    expect(K, "x", x, s.len())?;
    expect(K, "gamma", gamma, s.c)?;
    expect(K, "running_mean", running_mean, s.c)?;
    expect(K, "running_var", running_var, s.c)?;
    expect(K, "dy", dy, s.len())?;
    expect(K, "dx", dx, s.len())?;
    expect(K, "dgamma", dgamma, s.c)?;
    expect(K, "dbeta", dbeta, s.c)?;
    bn_bwd(
        dev,
        x,
        gamma,
        running_mean,
        running_var,
        dy,
        s,
        Some(p.eps),
        dx,
        dgamma,
        dbeta,
    )
}

// ---------------------------------------------------------------- pool.cu

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

/// [`crate::pool::avg_pool2d_fwd`]: y = Σ window / d in f64 (bit-identical).
///
/// x: [N,C,H,W] (`s`); y: [N,C,Ho,Wo] with (Ho, Wo) = `p.out_hw(H, W)`.
pub fn avg_pool2d_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    s: Nchw,
    p: Pool2d,
    count_include_pad: bool,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "avg_pool2d_fwd";
    let (g, out) = pool_geom(K, s, p)?;
    expect(K, "x", x, s.len())?;
    expect(K, "y", y, out)?;
    if out == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, n, cip) = (
        x.device_addr(st),
        y.device_addr(st),
        out as u64,
        i32::from(count_include_pad),
    );
    launch!(dev, POOL, "avg_pool2d_fwd", grid(out); px, n, g, cip, py)
}

/// [`crate::pool::avg_pool2d_bwd`]: each input cell gathers dy/d from the windows holding it
/// (deterministic, bit-identical). dy: [N,C,Ho,Wo]; dx: [N,C,H,W] (`s`).
pub fn avg_pool2d_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    s: Nchw,
    p: Pool2d,
    count_include_pad: bool,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "avg_pool2d_bwd";
    let (g, out) = pool_geom(K, s, p)?;
    expect(K, "dy", dy, out)?;
    expect(K, "dx", dx, s.len())?;
    if s.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pdx, n, cip) = (
        dy.device_addr(st),
        dx.device_addr(st),
        s.len() as u64,
        i32::from(count_include_pad),
    );
    launch!(dev, POOL, "avg_pool2d_bwd", grid(s.len()); pdy, n, g, cip, pdx)
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

// ---------------------------------------------------------------- resize.cu

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

// ---------------------------------------------------------------- softmax.cu

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
