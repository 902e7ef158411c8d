//! CUDA launchers of [`crate::batch_norm`]: batch norm in training and evaluation, forward and
//! backward (`kernels/cuda/batch_norm.cu`, whose header gives each launch sequence). Statistics
//! are f64 sums over per-block partials added in a fixed order that depends on the shape only, so
//! results are reproducible and agree with the CPU to f32 rounding; the per-element affine steps
//! are the CPU's exact f32 operations. Partials and per-channel coefficients are per-call scratch.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Fused ReLU: `BatchNormParams::relu` in the forwards, `relu_y` in the backwards, as on the CPU.
//!
//! Not here: sync-BN across devices, f64 tensors.

use super::common::{expect, grid, grid2, launch, scratch, shape_err, THREADS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::BATCH_NORM;
use super::CudaError;
use crate::batch_norm::BatchNormParams;
use crate::{KernelError, Nchw};
use cudarc::driver::PushKernelArg;

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
    channels_fit_grid(K, s.c)?;
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
    let relu = i32::from(p.relu);
    let c32 = s.c as u32;
    launch!(dev, BATCH_NORM, "bn_stat_partials", grid2(nb, c32); px, count, ch, plane, null, pp)?;
    launch!(dev, BATCH_NORM, "bn_mean_finalize", grid2(c32, 1); pp, nb, mf, pmean)?;
    launch!(dev, BATCH_NORM, "bn_stat_partials", grid2(nb, c32); px, count, ch, plane, pmean, pp)?;
    launch!(dev, BATCH_NORM, "bn_train_finalize", grid2(c32, 1);
        pp, nb, mf, pmean, pg, pb, eps, momentum, prm, prv, psm, psi, pcoef)?;
    launch!(dev, BATCH_NORM, "bn_affine", grid(s.len()); px, pcoef, len, ch, plane, relu, py)
}

/// The partial-sum kernels put channels on grid.y, which CUDA caps at 65 535 (instance norm
/// passes N·C as C): a clear error instead of the driver's launch failure.
fn channels_fit_grid(kernel: &'static str, c: usize) -> Result<(), CudaError> {
    const GRID_Y_MAX: usize = 65_535;
    if c > GRID_Y_MAX {
        return Err(shape_err(
            kernel,
            format!(
                "{c} channels (N·C for instance norm) exceed CUDA's grid.y limit of {GRID_Y_MAX}"
            ),
        ));
    }
    Ok(())
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
    let relu = i32::from(p.relu);
    launch!(dev, BATCH_NORM, "bn_eval_coef", grid(s.c); pg, pb, prm, prv, ch, eps, pcoef)?;
    launch!(dev, BATCH_NORM, "bn_affine", grid(s.len()); px, pcoef, len, ch, plane, relu, py)
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
    relu_y: Option<&dyn DeviceBuf<f32>>,
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
    channels_fit_grid("batch_norm_bwd", s.c)?;
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
    // Null: no fused ReLU in front.
    let pry = relu_y.map_or(0u64, |r| r.device_addr(st));
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
        px, pdy, pry, count, ch, plane, pstats, pp)?;
    launch!(dev, BATCH_NORM, "bn_bwd_finalize", grid2(ch, 1);
        pp, nb, mf, pg, pstats, pm, pinv, pdg, pdb, pcoef)?;
    if s.is_empty() {
        return Ok(());
    }
    launch!(dev, BATCH_NORM, "bn_bwd_dx", grid(s.len());
        px, pdy, pry, pcoef, len, ch, plane, is_eval, pdx)
}

/// [`crate::batch_norm::batch_norm_train_bwd`]: dx, dgamma = Σ dy·x̂, dbeta = Σ dy from the
/// forward's save_mean / save_invstd; behind a fused ReLU (`relu_y`), of dy·[relu_y > 0].
///
/// x, dy, relu_y, dx: [N,C,H,W] (`s`); gamma, save_mean, save_invstd, dgamma, dbeta: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    gamma: &impl DeviceBuf<f32>,
    save_mean: &impl DeviceBuf<f32>,
    save_invstd: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    relu_y: Option<&dyn DeviceBuf<f32>>,
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
    if let Some(r) = relu_y {
        expect(K, "relu_y", r, s.len())?;
    }
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
        relu_y,
        s,
        None,
        dx,
        dgamma,
        dbeta,
    )
}

/// [`crate::batch_norm::batch_norm_eval_bwd`]: dx = dy·γ/√(running_var + eps), dgamma, dbeta
/// as in training but with the running statistics (`relu_y` as in the train backward).
///
/// x, dy, relu_y, dx: [N,C,H,W] (`s`); gamma, running_mean, running_var, dgamma, dbeta: [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    gamma: &impl DeviceBuf<f32>,
    running_mean: &impl DeviceBuf<f32>,
    running_var: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    relu_y: Option<&dyn DeviceBuf<f32>>,
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
    if let Some(r) = relu_y {
        expect(K, "relu_y", r, s.len())?;
    }
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
        relu_y,
        s,
        Some(p.eps),
        dx,
        dgamma,
        dbeta,
    )
}

/// [`crate::batch_norm::batch_norm_eval_stats_fwd`]: save_mean = running_mean, save_invstd =
/// 1/√(running_var + eps) in f64, rounded once. All four: [C].
pub fn batch_norm_eval_stats_fwd(
    dev: &Device,
    running_mean: &impl DeviceBuf<f32>,
    running_var: &impl DeviceBuf<f32>,
    eps: f64,
    save_mean: &mut impl DeviceBufMut<f32>,
    save_invstd: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "batch_norm_eval_stats_fwd";
    let c = running_mean.elems();
    expect(K, "running_var", running_var, c)?;
    expect(K, "save_mean", save_mean, c)?;
    expect(K, "save_invstd", save_invstd, c)?;
    if c == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pm, pv, c64) = (
        running_mean.device_addr(s),
        running_var.device_addr(s),
        c as u64,
    );
    let (psm, psi) = (save_mean.device_addr(s), save_invstd.device_addr(s));
    launch!(dev, BATCH_NORM, "bn_eval_stats", grid(c); pm, pv, c64, eps, psm, psi)
}
