//! Batch normalization per channel over (N, H, W), forward and backward, in the two modes the
//! engine needs. PyTorch equivalent: `torch.nn.functional.batch_norm` as `nn.BatchNorm2d` calls
//! it (affine, tracking running statistics, a numeric momentum): `training=True` is
//! [`batch_norm_train_fwd`], `training=False` is [`batch_norm_eval_fwd`].
//!
//! With M = N·H·W values in channel c:
//! * train forward: mean = Σx/M, var = Σ(x − mean)²/M (biased), invstd = 1/√(var + eps),
//!   x̂ = (x − mean)·invstd, y = x̂·gamma + beta. The running statistics move in place,
//!   r ← (1 − momentum)·r + momentum·stat, and the variance fed to them is the *unbiased*
//!   var·M/(M − 1), as PyTorch does although it normalizes with the biased one. mean and invstd
//!   are saved for the backward. M < 2 is an error, as in PyTorch ("Expected more than 1 value
//!   per channel when training"): one value has no unbiased variance.
//! * eval forward: the same y with running_mean and running_var in place of the batch
//!   statistics, which stay untouched. This is also the *frozen* mode: a frozen BN layer in a
//!   model being trained runs the eval kernels, its statistics are constants, and gamma and beta
//!   still get gradients (the engine decides whether to train them).
//! * train backward: dx = gamma·invstd/M·(M·dy − Σdy − x̂·Σ(dy·x̂)), dgamma = Σ dy·x̂,
//!   dbeta = Σ dy (the batch statistics depend on x, hence the two correction terms).
//! * eval backward: dx = dy·gamma·invstd, dgamma = Σ dy·x̂, dbeta = Σ dy, with invstd and x̂
//!   from the running statistics.
//!
//! Per-channel sums accumulate in f64 (M reaches millions in a segmentation batch, beyond what
//! an f32 sum keeps); element-wise passes run in T.
//!
//! Speed and determinism: every statistic is reduced per (n, c) plane first — a plane is
//! contiguous, and small enough at this model's sizes (up to 64×64) that a second pass over it
//! hits the cache — with `LANES` independent f64 accumulators (so the adds overlap and
//! vectorise instead of forming one serial chain), then the N plane results of a channel are
//! combined in image order. The forward's
//! variance is two-pass per plane (plane mean, then squared deviations from it) and the planes
//! are merged with Chan's formula M2 = Σ M2ₙ + Σ P·(meanₙ − mean)², which is stable when
//! |mean| ≫ std without a third pass over x. Planes are spread over rayon's pool in blocks of
//! at least `MIN_TASK` elements; the grouping of every sum is fixed by the shape alone, so
//! results do not depend on the thread count. The per-plane reductions run compiled for the
//! widest vector instruction set the CPU has (`crate::widest`), with the same bits on each.
//!
//! Not here: affine=False (pass gamma = 1, beta = 0 and drop their gradients), momentum=None
//! (the cumulative average), the num_batches_tracked counter, synchronized BN across devices,
//! layouts other than NCHW, fusion with the following activation.

use crate::widest::widest_fn;
use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;

/// Hyper-parameters of a batch-norm layer, with PyTorch's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    /// Added to the variance under the square root (PyTorch default 1e-5).
    pub eps: f64,
    /// Weight of the new batch statistic in the running averages (PyTorch default 0.1). Only
    /// [`batch_norm_train_fwd`] reads it.
    pub momentum: f64,
    /// The forwards also apply a ReLU, y = max(x̂·gamma + beta, 0), in the same pass (the
    /// planner's fusion of `batch_norm` → `relu`); the backward's counterpart is its `relu_y`
    /// argument. Default false.
    pub relu: bool,
}

impl Default for BatchNormParams {
    fn default() -> Self {
        BatchNormParams {
            eps: 1e-5,
            momentum: 0.1,
            relu: false,
        }
    }
}

/// M = N·H·W, refusing M < 2 like PyTorch's training mode.
fn train_count(kernel: &'static str, s: Nchw) -> Result<usize, KernelError> {
    let m = s.n * s.plane();
    if m < 2 {
        return Err(KernelError::Shape {
            kernel,
            reason: format!(
                "training needs more than 1 value per channel, got N·H·W = {m} (shape {s:?})"
            ),
        });
    }
    Ok(m)
}

/// Independent f64 accumulators per plane sum: enough to hide the add latency and fill the
/// vector registers. The grouping of every sum depends on this constant and the shape only.
const LANES: usize = 8;

/// Smallest number of elements one rayon task handles: below this the task's overhead outweighs
/// the work.
const MIN_TASK: usize = 16 * 1024;

/// Planes per rayon task for planes of `plane` elements (at least 1).
fn planes_per_task(plane: usize) -> usize {
    (MIN_TASK / plane.max(1)).max(1)
}

/// Σ over the lanes of `acc`, in a fixed pairwise order.
#[inline(always)]
fn fold_lanes(acc: [f64; LANES]) -> f64 {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Σ f(x_i) over `x` in f64, element i into lane i mod [`LANES`].
#[inline(always)]
fn lane_sum<T: Real>(x: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += f(v);
    }
    fold_lanes(acc)
}

/// Σ dy_i·(x_i − m) over two equal-length slices in f64, lane by lane as in [`lane_sum`].
#[inline(always)]
fn lane_dot<T: Real>(x: &[T], dy: &[T], m: f64) -> f64 {
    let mut acc = [0f64; LANES];
    let (xc, gc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    let (xr, gr) = (xc.remainder(), gc.remainder());
    for (cx, cg) in xc.zip(gc) {
        for ((a, &v), &g) in acc.iter_mut().zip(cx).zip(cg) {
            *a += g.f64() * (v.f64() - m);
        }
    }
    for ((a, &v), &g) in acc.iter_mut().zip(xr).zip(gr) {
        *a += g.f64() * (v.f64() - m);
    }
    fold_lanes(acc)
}

/// (Σ dy_i, Σ dy_i·(x_i − m)) over one plane of x and dy: two passes (each vectorises on its
/// own), the second over data still in cache.
#[inline(always)]
fn dy_lane_sums<T: Real>(x: &[T], dy: &[T], m: f64) -> (f64, f64) {
    (lane_sum(dy, |g| g.f64()), lane_dot(x, dy, m))
}

/// (Σx, Σ(x − mean)²) over one plane, mean being the plane's own: two passes, the second over
/// data still in cache.
#[inline(always)]
fn plane_stats<T: Real>(xp: &[T]) -> (f64, f64) {
    let sum = lane_sum(xp, |v| v.f64());
    let mean = sum / xp.len() as f64;
    (sum, lane_sum(xp, |v| (v.f64() - mean) * (v.f64() - mean)))
}

widest_fn! {
    /// [`plane_stats`] for the widest instruction set.
    fn plane_stats_widest<T: Real>(xp: &[T]) -> (f64, f64) = plane_stats
}

widest_fn! {
    /// [`dy_lane_sums`] for the widest instruction set.
    fn dy_lane_sums_widest<T: Real>(x: &[T], dy: &[T], m: f64) -> (f64, f64) = dy_lane_sums
}

/// Per channel (mean, biased variance) of x: per plane Σx and the squared deviations from the
/// plane's own mean (the plane is still in cache for the second pass), merged over the N planes
/// of each channel with Chan's formula. Callers have checked the lengths and that N·H·W ≥ 2.
fn channel_stats<T: Real>(s: Nchw, x: &[T]) -> Vec<(f64, f64)> {
    let p = s.plane();
    let pf = p as f64;
    let planes: Vec<(f64, f64)> = x
        .par_chunks(p)
        .with_min_len(planes_per_task(p))
        .map(plane_stats_widest)
        .collect();
    let m = (s.n * p) as f64;
    (0..s.c)
        .map(|c| {
            let ours = || (0..s.n).map(|n| planes[n * s.c + c]);
            let mean = ours().fold(0f64, |acc, (sum, _)| acc + sum) / m;
            let m2 = ours().fold(0f64, |acc, (sum, m2)| {
                let d = sum / pf - mean;
                acc + m2 + pf * d * d
            });
            (mean, m2 / m)
        })
        .collect()
}

/// y = (x − mean[c])·scale[c] + shift[c] per channel, then max(y, 0) with `relu` (the exact
/// comparison of `activation::relu_fwd`, so a fused node gives relu's bits); `coef[c] = (mean,
/// scale, shift)`.
fn affine<T: Real>(s: Nchw, x: &[T], coef: &[(T, T, T)], relu: bool, y: &mut [T]) {
    // An empty plane means empty slices; `max(1)` only keeps the chunk size legal.
    let p = s.plane().max(1);
    y.par_chunks_mut(p)
        .zip(x.par_chunks(p))
        .with_min_len(planes_per_task(p))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let (mean, scale, shift) = coef[i % s.c];
            if relu {
                for (o, &v) in yp.iter_mut().zip(xp) {
                    let t = (v - mean) * scale + shift;
                    *o = if t > T::zero() { t } else { T::zero() };
                }
            } else {
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = (v - mean) * scale + shift;
                }
            }
        });
}

/// The N plane sums of each channel added in image order: per channel (Σdy, Σdy·x̂).
fn combine_planes(s: Nchw, planes: &[(f64, f64)], invstd: &[f64]) -> Vec<(f64, f64)> {
    (0..s.c)
        .map(|c| {
            let (sd, sdx) = (0..s.n)
                .map(|n| planes.get(n * s.c + c).copied().unwrap_or((0.0, 0.0)))
                .fold((0f64, 0f64), |(a, b), (u, v)| (a + u, b + v));
            (sd, sdx * invstd[c])
        })
        .collect()
}

/// Per channel (Σdy, Σdy·(x − mean[c])·invstd[c]) in f64, over inputs checked by the caller:
/// per plane with [`dy_lane_sums`], then the N planes of each channel in image order.
fn dy_sums<T: Real>(s: Nchw, x: &[T], dy: &[T], mean: &[f64], invstd: &[f64]) -> Vec<(f64, f64)> {
    let p = s.plane().max(1);
    let planes: Vec<(f64, f64)> = x
        .par_chunks(p)
        .zip(dy.par_chunks(p))
        .with_min_len(planes_per_task(p))
        .enumerate()
        .map(|(i, (xp, gp))| dy_lane_sums_widest(xp, gp, mean[i % s.c]))
        .collect();
    combine_planes(s, &planes, invstd)
}

/// [`dy_sums`] of the gradient behind a fused ReLU, dz = dy·[relu_y > 0] (the exact select of
/// `activation::relu_bwd`), written into `dz` plane by plane and summed while the plane is in
/// cache: the same dz and the same sums as `relu_bwd` followed by [`dy_sums`].
fn masked_dy_sums<T: Real>(
    s: Nchw,
    x: &[T],
    dy: &[T],
    relu_y: &[T],
    mean: &[f64],
    invstd: &[f64],
    dz: &mut [T],
) -> Vec<(f64, f64)> {
    let p = s.plane().max(1);
    let planes: Vec<(f64, f64)> = dz
        .par_chunks_mut(p)
        .zip(
            x.par_chunks(p)
                .zip(dy.par_chunks(p).zip(relu_y.par_chunks(p))),
        )
        .with_min_len(planes_per_task(p))
        .enumerate()
        .map(|(i, (zp, (xp, (gp, yp))))| {
            for ((o, &g), &v) in zp.iter_mut().zip(gp).zip(yp) {
                *o = if v > T::zero() { g } else { T::zero() };
            }
            dy_lane_sums_widest(xp, zp, mean[i % s.c])
        })
        .collect();
    combine_planes(s, &planes, invstd)
}

/// Training-mode forward: normalizes with the batch statistics, saves them for the backward and
/// moves the running statistics in place (unbiased variance; see the module doc).
///
/// Shapes: x, y [N,C,H,W]; gamma, beta, running_mean, running_var, save_mean, save_invstd [C].
/// Errors on a length mismatch or N·H·W < 2.
pub fn batch_norm_train_fwd<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    s: Nchw,
    p: BatchNormParams,
    running_mean: &mut [T],
    running_var: &mut [T],
    y: &mut [T],
    save_mean: &mut [T],
    save_invstd: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "batch_norm_train_fwd";
    check_len(K, "x", x, s.len())?;
    check_len(K, "gamma", gamma, s.c)?;
    check_len(K, "beta", beta, s.c)?;
    check_len(K, "running_mean", running_mean, s.c)?;
    check_len(K, "running_var", running_var, s.c)?;
    check_len(K, "y", y, s.len())?;
    check_len(K, "save_mean", save_mean, s.c)?;
    check_len(K, "save_invstd", save_invstd, s.c)?;
    let m = train_count(K, s)?;
    let mf = m as f64;
    let stats = channel_stats(s, x);
    let mut coef = Vec::with_capacity(s.c);
    for (c, &(mean, var)) in stats.iter().enumerate() {
        let invstd = 1.0 / (var + p.eps).sqrt();
        save_mean[c] = T::of(mean);
        save_invstd[c] = T::of(invstd);
        let unbiased = var * mf / (mf - 1.0);
        running_mean[c] = T::of((1.0 - p.momentum) * running_mean[c].f64() + p.momentum * mean);
        running_var[c] = T::of((1.0 - p.momentum) * running_var[c].f64() + p.momentum * unbiased);
        coef.push((T::of(mean), T::of(invstd * gamma[c].f64()), beta[c]));
    }
    affine(s, x, &coef, p.relu, y);
    Ok(())
}

/// What an eval-mode forward used, for a backward or a reader: `save_mean = running_mean` and
/// `save_invstd = 1/√(running_var + eps)`, computed in f64 and rounded once.
///
/// Shapes: running_mean, running_var, save_mean, save_invstd [C].
pub fn batch_norm_eval_stats_fwd<T: Real>(
    running_mean: &[T],
    running_var: &[T],
    eps: f64,
    save_mean: &mut [T],
    save_invstd: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "batch_norm_eval_stats_fwd";
    let c = running_mean.len();
    check_len(K, "running_var", running_var, c)?;
    check_len(K, "save_mean", save_mean, c)?;
    check_len(K, "save_invstd", save_invstd, c)?;
    save_mean.copy_from_slice(running_mean);
    for (o, &v) in save_invstd.iter_mut().zip(running_var) {
        *o = T::of(1.0 / (v.f64() + eps).sqrt());
    }
    Ok(())
}

/// Eval-mode (and frozen-mode) forward: y = (x − running_mean)/√(running_var + eps)·gamma + beta.
/// Reads the running statistics only; `p.momentum` is unused.
///
/// Shapes: x, y [N,C,H,W]; gamma, beta, running_mean, running_var [C].
pub fn batch_norm_eval_fwd<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    running_mean: &[T],
    running_var: &[T],
    s: Nchw,
    p: BatchNormParams,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "batch_norm_eval_fwd";
    check_len(K, "x", x, s.len())?;
    check_len(K, "gamma", gamma, s.c)?;
    check_len(K, "beta", beta, s.c)?;
    check_len(K, "running_mean", running_mean, s.c)?;
    check_len(K, "running_var", running_var, s.c)?;
    check_len(K, "y", y, s.len())?;
    let coef: Vec<(T, T, T)> = (0..s.c)
        .map(|c| {
            let invstd = 1.0 / (running_var[c].f64() + p.eps).sqrt();
            (running_mean[c], T::of(invstd * gamma[c].f64()), beta[c])
        })
        .collect();
    affine(s, x, &coef, p.relu, y);
    Ok(())
}

/// Training-mode backward, from the statistics [`batch_norm_train_fwd`] saved:
/// dx = gamma·invstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M), dgamma = Σ dy·x̂, dbeta = Σ dy.
/// Overwrites dx, dgamma and dbeta. With `relu_y` (the output of a forward fused with a ReLU,
/// [`BatchNormParams::relu`]) the incoming gradient is dy·[relu_y > 0], as `relu_bwd` would
/// have made it, bit for bit.
///
/// Shapes: x, dy, relu_y, dx [N,C,H,W]; gamma, save_mean, save_invstd, dgamma, dbeta [C].
/// Errors on a length mismatch or N·H·W < 2 (no train forward can have run on that shape).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_bwd<T: Real>(
    x: &[T],
    gamma: &[T],
    save_mean: &[T],
    save_invstd: &[T],
    dy: &[T],
    relu_y: Option<&[T]>,
    s: Nchw,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "batch_norm_train_bwd";
    check_len(K, "x", x, s.len())?;
    check_len(K, "gamma", gamma, s.c)?;
    check_len(K, "save_mean", save_mean, s.c)?;
    check_len(K, "save_invstd", save_invstd, s.c)?;
    check_len(K, "dy", dy, s.len())?;
    check_len(K, "dx", dx, s.len())?;
    check_len(K, "dgamma", dgamma, s.c)?;
    check_len(K, "dbeta", dbeta, s.c)?;
    if let Some(r) = relu_y {
        check_len(K, "relu_y", r, s.len())?;
    }
    let mf = train_count(K, s)? as f64;
    let mean: Vec<f64> = save_mean.iter().map(|v| v.f64()).collect();
    let invstd: Vec<f64> = save_invstd.iter().map(|v| v.f64()).collect();
    // Behind a fused ReLU the masked gradient goes into dx first; the last pass reads it there.
    let sums = match relu_y {
        Some(r) => masked_dy_sums(s, x, dy, r, &mean, &invstd, dx),
        None => dy_sums(s, x, dy, &mean, &invstd),
    };
    // Per channel: (mean, invstd, gamma·invstd, Σdy/M, Σ(dy·x̂)/M), so that the element-wise
    // pass is dx = k·(dy − a − (x − mean)·invstd·b).
    let coef: Vec<[T; 5]> = (0..s.c)
        .map(|c| {
            dgamma[c] = T::of(sums[c].1);
            dbeta[c] = T::of(sums[c].0);
            [
                save_mean[c],
                save_invstd[c],
                T::of(gamma[c].f64() * invstd[c]),
                T::of(sums[c].0 / mf),
                T::of(sums[c].1 / mf),
            ]
        })
        .collect();
    let p = s.plane().max(1);
    let dx_of = |(i, dxp, xp, dyp): (usize, &mut [T], &[T], Option<&[T]>)| {
        let [mean, invstd, k, a, b] = coef[i % s.c];
        match dyp {
            Some(dyp) => {
                for ((o, &v), &g) in dxp.iter_mut().zip(xp).zip(dyp) {
                    *o = k * (g - a - (v - mean) * invstd * b);
                }
            }
            None => {
                for (o, &v) in dxp.iter_mut().zip(xp) {
                    *o = k * (*o - a - (v - mean) * invstd * b);
                }
            }
        }
    };
    let chunks = dx.par_chunks_mut(p).zip(x.par_chunks(p)).enumerate();
    if relu_y.is_some() {
        chunks
            .with_min_len(planes_per_task(p))
            .for_each(|(i, (dxp, xp))| dx_of((i, dxp, xp, None)));
    } else {
        chunks
            .zip(dy.par_chunks(p))
            .with_min_len(planes_per_task(p))
            .for_each(|((i, (dxp, xp)), dyp)| dx_of((i, dxp, xp, Some(dyp))));
    }
    Ok(())
}

/// Eval-mode (and frozen-mode) backward: the running statistics are constants, so
/// dx = dy·gamma·invstd, dgamma = Σ dy·x̂, dbeta = Σ dy with invstd = 1/√(running_var + eps) and
/// x̂ = (x − running_mean)·invstd. Overwrites dx, dgamma and dbeta; `p.momentum` and `p.relu`
/// are unused (`relu_y` as in [`batch_norm_train_bwd`]).
///
/// Shapes: x, dy, relu_y, dx [N,C,H,W]; gamma, running_mean, running_var, dgamma, dbeta [C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_bwd<T: Real>(
    x: &[T],
    gamma: &[T],
    running_mean: &[T],
    running_var: &[T],
    dy: &[T],
    relu_y: Option<&[T]>,
    s: Nchw,
    p: BatchNormParams,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "batch_norm_eval_bwd";
    check_len(K, "x", x, s.len())?;
    check_len(K, "gamma", gamma, s.c)?;
    check_len(K, "running_mean", running_mean, s.c)?;
    check_len(K, "running_var", running_var, s.c)?;
    check_len(K, "dy", dy, s.len())?;
    check_len(K, "dx", dx, s.len())?;
    check_len(K, "dgamma", dgamma, s.c)?;
    check_len(K, "dbeta", dbeta, s.c)?;
    if let Some(r) = relu_y {
        check_len(K, "relu_y", r, s.len())?;
    }
    let mean: Vec<f64> = running_mean.iter().map(|v| v.f64()).collect();
    let invstd: Vec<f64> = running_var
        .iter()
        .map(|v| 1.0 / (v.f64() + p.eps).sqrt())
        .collect();
    let sums = match relu_y {
        Some(r) => masked_dy_sums(s, x, dy, r, &mean, &invstd, dx),
        None => dy_sums(s, x, dy, &mean, &invstd),
    };
    let scale: Vec<T> = (0..s.c)
        .map(|c| {
            dgamma[c] = T::of(sums[c].1);
            dbeta[c] = T::of(sums[c].0);
            T::of(gamma[c].f64() * invstd[c])
        })
        .collect();
    let p = s.plane().max(1);
    if relu_y.is_some() {
        dx.par_chunks_mut(p)
            .with_min_len(planes_per_task(p))
            .enumerate()
            .for_each(|(i, dxp)| {
                let k = scale[i % s.c];
                dxp.iter_mut().for_each(|o| *o *= k);
            });
    } else {
        dx.par_chunks_mut(p)
            .zip(dy.par_chunks(p))
            .with_min_len(planes_per_task(p))
            .enumerate()
            .for_each(|(i, (dxp, dyp))| {
                let k = scale[i % s.c];
                for (o, &g) in dxp.iter_mut().zip(dyp) {
                    *o = g * k;
                }
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, rand_vec};

    /// Runs the train forward with fresh running statistics (mean 0, var 1) and returns
    /// (y, save_mean, save_invstd, running_mean, running_var).
    #[allow(clippy::type_complexity)]
    fn train(
        s: Nchw,
        p: BatchNormParams,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut rm, mut rv) = (vec![0.0; s.c], vec![1.0; s.c]);
        let mut y = vec![0.0; s.len()];
        let (mut sm, mut si) = (vec![0.0; s.c], vec![0.0; s.c]);
        batch_norm_train_fwd(
            x, gamma, beta, s, p, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
        )
        .unwrap();
        (y, sm, si, rm, rv)
    }

    // N=2, C=2, H=1, W=2. Channel 0 holds {0, 2, 0, 2}: mean 1, biased var 1, x̂ = ±1.
    // Channel 1 holds {1, 1 | 5, 5}: mean 3, biased var 4, invstd 1/2, x̂ = −1, −1, 1, 1.
    const S: Nchw = Nchw::new(2, 2, 1, 2);
    const X: [f64; 8] = [0.0, 2.0, 1.0, 1.0, 0.0, 2.0, 5.0, 5.0];
    const GAMMA: [f64; 2] = [2.0, 3.0];
    const BETA: [f64; 2] = [0.5, -1.0];
    const P0: BatchNormParams = BatchNormParams {
        eps: 0.0,
        momentum: 0.1,
        relu: false,
    };

    #[test]
    fn hand_computed_train_forward() {
        let (y, sm, si, rm, rv) = train(S, P0, &X, &GAMMA, &BETA);
        // y = x̂·gamma + beta: channel 0 2·(±1) + 0.5, channel 1 3·(±1) − 1.
        assert_close(
            "y",
            &y,
            &[-1.5, 2.5, -4.0, -4.0, -1.5, 2.5, 2.0, 2.0],
            1e-15,
            0.0,
        );
        assert_close("save_mean", &sm, &[1.0, 3.0], 0.0, 0.0);
        assert_close("save_invstd", &si, &[1.0, 0.5], 0.0, 0.0);
        // Unbiased var = biased·4/3: 4/3 and 16/3. From (0, 1) with momentum 0.1:
        // mean 0.1·(1, 3); var 0.9 + 0.1·(4/3, 16/3).
        assert_close("running_mean", &rm, &[0.1, 0.3], 1e-15, 0.0);
        assert_close(
            "running_var",
            &rv,
            &[0.9 + 0.4 / 3.0, 0.9 + 1.6 / 3.0],
            1e-15,
            0.0,
        );

        // The f32 instance agrees (every value here is exact in f32 but the running ones).
        let x32: Vec<f32> = X.iter().map(|&v| v as f32).collect();
        let (mut rm32, mut rv32) = ([0f32; 2], [1f32; 2]);
        let (mut y32, mut sm32, mut si32) = ([0f32; 8], [0f32; 2], [0f32; 2]);
        batch_norm_train_fwd(
            &x32,
            &[2.0, 3.0],
            &[0.5, -1.0],
            S,
            P0,
            &mut rm32,
            &mut rv32,
            &mut y32,
            &mut sm32,
            &mut si32,
        )
        .unwrap();
        assert_eq!(y32, [-1.5, 2.5, -4.0, -4.0, -1.5, 2.5, 2.0, 2.0]);
        assert_close(
            "running_var f32",
            &[rv32[0] as f64, rv32[1] as f64],
            &rv,
            1e-7,
            0.0,
        );
    }

    #[test]
    fn hand_computed_eval_forward() {
        // Running statistics equal to this batch's (mean 1, 3; var 1, 4) reproduce the train y.
        let mut y = vec![0.0; 8];
        batch_norm_eval_fwd(&X, &GAMMA, &BETA, &[1.0, 3.0], &[1.0, 4.0], S, P0, &mut y).unwrap();
        assert_close(
            "y",
            &y,
            &[-1.5, 2.5, -4.0, -4.0, -1.5, 2.5, 2.0, 2.0],
            1e-15,
            0.0,
        );
        // Other statistics: mean 0, var 3 + eps 1 → invstd 1/2; y = x·gamma/2 + beta.
        let p = BatchNormParams {
            eps: 1.0,
            momentum: 0.5,
            relu: false,
        };
        batch_norm_eval_fwd(&X, &GAMMA, &BETA, &[0.0, 0.0], &[3.0, 3.0], S, p, &mut y).unwrap();
        assert_close(
            "y",
            &y,
            &[0.5, 2.5, 0.5, 0.5, 0.5, 2.5, 6.5, 6.5],
            1e-15,
            0.0,
        );
    }

    #[test]
    fn hand_computed_backward() {
        let (_, sm, si, _, _) = train(S, P0, &X, &GAMMA, &BETA);
        // Channel 0: x̂ = (−1, 1, −1, 1), dy = (1, 0, 0, 0): Σdy = 1, Σdy·x̂ = −1, M = 4,
        // gamma·invstd = 2, so dx = 2/4·(4·dy − 1 + x̂) = (1, 0, −1, 0).
        // Channel 1: dy = 1 everywhere: Σdy = 4, Σdy·x̂ = 0, dx = 3/2/4·(4 − 4) = 0.
        let dy = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
        let mut dx = vec![9.0; 8];
        let (mut dg, mut db) = (vec![9.0; 2], vec![9.0; 2]);
        batch_norm_train_bwd(
            &X, &GAMMA, &sm, &si, &dy, None, S, &mut dx, &mut dg, &mut db,
        )
        .unwrap();
        assert_close(
            "train dx",
            &dx,
            &[1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0],
            1e-15,
            0.0,
        );
        assert_close("train dgamma", &dg, &[-1.0, 0.0], 1e-15, 0.0);
        assert_close("train dbeta", &db, &[1.0, 4.0], 1e-15, 0.0);

        // Eval with running mean (1, 3), var (1, 4): dx = dy·gamma·invstd = dy·(2, 3/2); the
        // sums are the train ones since x̂ is the same.
        batch_norm_eval_bwd(
            &X,
            &GAMMA,
            &[1.0, 3.0],
            &[1.0, 4.0],
            &dy,
            None,
            S,
            P0,
            &mut dx,
            &mut dg,
            &mut db,
        )
        .unwrap();
        assert_close(
            "eval dx",
            &dx,
            &[2.0, 0.0, 1.5, 1.5, 0.0, 0.0, 1.5, 1.5],
            1e-15,
            0.0,
        );
        assert_close("eval dgamma", &dg, &[-1.0, 0.0], 1e-15, 0.0);
        assert_close("eval dbeta", &db, &[1.0, 4.0], 1e-15, 0.0);
    }

    #[test]
    fn running_statistics_use_the_unbiased_variance() {
        let s = Nchw::new(2, 3, 7, 5);
        let p = BatchNormParams {
            eps: 1e-5,
            momentum: 0.25,
            relu: false,
        };
        let gamma = rand_vec(2, s.c, 0.5, 1.5);
        let beta = rand_vec(3, s.c, -0.5, 0.5);
        let mut rm = rand_vec(4, s.c, -1.0, 1.0);
        let mut rv = rand_vec(5, s.c, 0.5, 2.0);
        let (mut y, mut sm, mut si) = (vec![0.0; s.len()], vec![0.0; s.c], vec![0.0; s.c]);
        // Two steps on different batches, so the in-place update must compound.
        for step in 0..2u64 {
            let x: Vec<f64> = rand_vec(10 + step, s.len(), -2.0, 6.0);
            let (rm0, rv0) = (rm.clone(), rv.clone());
            batch_norm_train_fwd(
                &x, &gamma, &beta, s, p, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
            )
            .unwrap();
            for c in 0..s.c {
                // Oracle: gather the channel by coordinates, textbook formulas.
                let vals: Vec<f64> = (0..s.n)
                    .flat_map(|n| (0..s.h).flat_map(move |i| (0..s.w).map(move |j| (n, i, j))))
                    .map(|(n, i, j)| x[s.at(n, c, i, j)])
                    .collect();
                let m = vals.len() as f64;
                let mean = vals.iter().sum::<f64>() / m;
                let ss = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
                let (biased, unbiased) = (ss / m, ss / (m - 1.0));
                let want_rm = 0.75 * rm0[c] + 0.25 * mean;
                let want_rv = 0.75 * rv0[c] + 0.25 * unbiased;
                assert_close("running_mean", &[rm[c]], &[want_rm], 1e-12, 0.0);
                assert_close("running_var", &[rv[c]], &[want_rv], 1e-12, 0.0);
                assert_close("save_mean", &[sm[c]], &[mean], 1e-12, 0.0);
                let invstd = 1.0 / (biased + 1e-5).sqrt();
                assert_close("save_invstd", &[si[c]], &[invstd], 1e-12, 0.0);
                let (n, i, j) = (1, 6, 4);
                let want_y = (x[s.at(n, c, i, j)] - mean) * invstd * gamma[c] + beta[c];
                assert_close("y", &[y[s.at(n, c, i, j)]], &[want_y], 1e-12, 0.0);
            }
        }
    }

    #[test]
    fn train_gradients_match_finite_differences() {
        let s = Nchw::new(2, 3, 7, 5);
        let p = BatchNormParams::default();
        let x = rand_vec(20, s.len(), -1.0, 3.0);
        let gamma = rand_vec(21, s.c, 0.5, 1.5);
        let beta = rand_vec(22, s.c, -0.5, 0.5);
        gradcheck(
            "batch_norm train",
            &[x, gamma, beta],
            // Fresh running statistics on every call: y must not depend on them.
            |i| train(s, p, &i[0], &i[1], &i[2]).0,
            |i, dy| {
                let (_, sm, si, _, _) = train(s, p, &i[0], &i[1], &i[2]);
                let mut dx = vec![0.0; s.len()];
                let (mut dg, mut db) = (vec![0.0; s.c], vec![0.0; s.c]);
                batch_norm_train_bwd(
                    &i[0], &i[1], &sm, &si, dy, None, s, &mut dx, &mut dg, &mut db,
                )
                .unwrap();
                vec![dx, dg, db]
            },
        );
    }

    #[test]
    fn eval_gradients_match_finite_differences() {
        let s = Nchw::new(2, 3, 7, 5);
        let p = BatchNormParams {
            eps: 1e-3,
            momentum: 0.1,
            relu: false,
        };
        let x = rand_vec(30, s.len(), -1.0, 3.0);
        let gamma = rand_vec(31, s.c, 0.5, 1.5);
        let beta = rand_vec(32, s.c, -0.5, 0.5);
        let rm = rand_vec(33, s.c, -0.5, 1.5);
        let rv = rand_vec(34, s.c, 0.3, 2.0);
        gradcheck(
            "batch_norm eval",
            &[x, gamma, beta],
            |i| {
                let mut y = vec![0.0; s.len()];
                batch_norm_eval_fwd(&i[0], &i[1], &i[2], &rm, &rv, s, p, &mut y).unwrap();
                y
            },
            |i, dy| {
                let mut dx = vec![0.0; s.len()];
                let (mut dg, mut db) = (vec![0.0; s.c], vec![0.0; s.c]);
                batch_norm_eval_bwd(
                    &i[0], &i[1], &rm, &rv, dy, None, s, p, &mut dx, &mut dg, &mut db,
                )
                .unwrap();
                vec![dx, dg, db]
            },
        );
    }

    #[test]
    fn one_value_per_channel_is_refused_in_training() {
        let s = Nchw::new(1, 3, 1, 1);
        let x = [1.0f32, 2.0, 3.0];
        let (mut rm, mut rv) = ([0f32; 3], [1f32; 3]);
        let (mut y, mut sm, mut si) = ([0f32; 3], [0f32; 3], [0f32; 3]);
        let e = batch_norm_train_fwd(
            &x,
            &[1.0; 3],
            &[0.0; 3],
            s,
            BatchNormParams::default(),
            &mut rm,
            &mut rv,
            &mut y,
            &mut sm,
            &mut si,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("more than 1 value per channel"),
            "{e}"
        );
        // The running statistics were not touched.
        assert_eq!((rm, rv), ([0.0; 3], [1.0; 3]));
        let (mut dx, mut dg, mut db) = ([0f32; 3], [0f32; 3], [0f32; 3]);
        let e = batch_norm_train_bwd(
            &x, &[1.0; 3], &sm, &si, &[1.0; 3], None, s, &mut dx, &mut dg, &mut db,
        )
        .unwrap_err();
        assert!(matches!(e, KernelError::Shape { .. }), "{e}");
        // Eval has no such limit.
        batch_norm_eval_fwd(
            &x,
            &[1.0; 3],
            &[0.0; 3],
            &rm,
            &rv,
            s,
            BatchNormParams::default(),
            &mut y,
        )
        .unwrap();
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut y = vec![0.0; 8];
        let e = batch_norm_eval_fwd(&X, &[1.0; 3], &BETA, &[0.0; 2], &[1.0; 2], S, P0, &mut y)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("batch_norm_eval_fwd: `gamma` has 3 elements, expected 2"),
            "{e}"
        );
        let (_, sm, si, _, _) = train(S, P0, &X, &GAMMA, &BETA);
        let mut dx = vec![0.0; 7];
        let (mut dg, mut db) = (vec![0.0; 2], vec![0.0; 2]);
        let e = batch_norm_train_bwd(&X, &GAMMA, &sm, &si, &X, None, S, &mut dx, &mut dg, &mut db)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("batch_norm_train_bwd: `dx` has 7 elements, expected 8"),
            "{e}"
        );
    }

    /// Runs `f` on a rayon pool of `threads` threads.
    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Planes of 1 000 elements (not a multiple of the lane count) and enough of them for
        // several rayon tasks; an offset mean so the Chan merge matters.
        let s = Nchw::new(24, 3, 25, 40);
        let x: Vec<f32> = rand_vec(40, s.len(), 5.0, 9.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let dy: Vec<f32> = rand_vec(41, s.len(), -1.0, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let (gamma, beta) = ([1.5f32, 0.5, -1.0], [0.1f32, 0.2, 0.3]);
        let run = || {
            let (mut rm, mut rv) = ([0f32; 3], [1f32; 3]);
            let (mut y, mut sm, mut si) = (vec![0f32; s.len()], [0f32; 3], [0f32; 3]);
            let p = BatchNormParams::default();
            batch_norm_train_fwd(
                &x, &gamma, &beta, s, p, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
            )
            .unwrap();
            let (mut dx, mut dg, mut db) = (vec![0f32; s.len()], [0f32; 3], [0f32; 3]);
            batch_norm_train_bwd(
                &x, &gamma, &sm, &si, &dy, None, s, &mut dx, &mut dg, &mut db,
            )
            .unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            [y, rm.to_vec(), rv.to_vec(), dx, dg.to_vec(), db.to_vec()].map(|v| bits(&v))
        };
        let one = on_threads(1, run);
        assert_eq!(one, on_threads(3, run));
        // And the statistics are right: the f64 mean and variance of channel 1, gathered.
        let vals: Vec<f64> = (0..s.n)
            .flat_map(|n| &x[(n * s.c + 1) * s.plane()..][..s.plane()])
            .map(|&v| v as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        let (mut rm, mut rv) = ([0f32; 3], [1f32; 3]);
        let (mut y, mut sm, mut si) = (vec![0f32; s.len()], [0f32; 3], [0f32; 3]);
        let p = BatchNormParams {
            eps: 0.0,
            momentum: 1.0,
            relu: false,
        };
        batch_norm_train_fwd(
            &x, &gamma, &beta, s, p, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
        )
        .unwrap();
        assert_close("mean", &[sm[1] as f64], &[mean], 0.0, 1e-7);
        assert_close("invstd", &[si[1] as f64], &[1.0 / var.sqrt()], 0.0, 1e-6);
    }

    #[test]
    fn every_instruction_set_gives_the_same_sums() {
        // `*_widest` runs the AVX-512 or AVX2 build where the CPU has one; the plain functions
        // are the baseline build. Lengths around the lane count and its remainders.
        for len in [1, 7, 8, 9, 63, 1000, 4099] {
            let x: Vec<f32> = rand_vec(50 + len as u64, len, -3.0, 5.0)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let dy: Vec<f32> = rand_vec(60 + len as u64, len, -1.0, 1.0)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let bits = |(a, b): (f64, f64)| (a.to_bits(), b.to_bits());
            assert_eq!(bits(plane_stats(&x)), bits(plane_stats_widest(&x)), "{len}");
            assert_eq!(
                bits(dy_lane_sums(&x, &dy, 0.25)),
                bits(dy_lane_sums_widest(&x, &dy, 0.25)),
                "{len}"
            );
            // And they are the sums: Σx and Σ(x − mean)², Σdy and Σdy·(x − 0.25).
            let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let sum: f64 = xs.iter().sum();
            let mean = sum / len as f64;
            let m2: f64 = xs.iter().map(|v| (v - mean).powi(2)).sum();
            let (got_sum, got_m2) = plane_stats(&x);
            assert_close("sum", &[got_sum], &[sum], 1e-9, 1e-12);
            assert_close("m2", &[got_m2], &[m2], 1e-9, 1e-12);
            let sd: f64 = dy.iter().map(|&g| g as f64).sum();
            let sdx: f64 = xs
                .iter()
                .zip(&dy)
                .map(|(v, &g)| g as f64 * (v - 0.25))
                .sum();
            let (got_sd, got_sdx) = dy_lane_sums(&x, &dy, 0.25);
            assert_close("sd", &[got_sd], &[sd], 1e-9, 1e-12);
            assert_close("sdx", &[got_sdx], &[sdx], 1e-9, 1e-12);
        }
    }

    #[test]
    fn fused_relu_is_batch_norm_then_relu_bit_for_bit() {
        use crate::activation::{relu_bwd, relu_fwd};
        // Odd plane (tails of every lane loop), about half the outputs below zero.
        let s = Nchw::new(3, 4, 7, 9);
        let f = |seed, lo, hi| -> Vec<f32> {
            rand_vec(seed, s.len(), lo, hi)
                .iter()
                .map(|&v| v as f32)
                .collect()
        };
        let (x, dy) = (f(50, -2.0, 3.0), f(51, -1.0, 1.0));
        let gamma = [1.5f32, 0.5, -1.0, 0.8];
        let beta = [0.1f32, -0.2, 0.3, 0.0];
        let (rm0, rv0) = ([0.2f32, -0.1, 0.0, 0.4], [1.3f32, 0.7, 2.0, 1.0]);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for train in [true, false] {
            // (y, mean, invstd) of one forward; `relu` fused or not.
            let fwd = |relu: bool| {
                let p = BatchNormParams {
                    relu,
                    ..BatchNormParams::default()
                };
                let (mut rm, mut rv) = (rm0, rv0);
                let (mut y, mut sm, mut si) = (vec![f32::NAN; s.len()], rm0, [0f32; 4]);
                if train {
                    batch_norm_train_fwd(
                        &x, &gamma, &beta, s, p, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
                    )
                    .unwrap();
                } else {
                    batch_norm_eval_fwd(&x, &gamma, &beta, &rm0, &rv0, s, p, &mut y).unwrap();
                    si = rv0;
                }
                (y, sm, si)
            };
            let (y_bn, a, b) = fwd(false);
            let mut y_relu = vec![f32::NAN; s.len()];
            relu_fwd(&y_bn, &mut y_relu).unwrap();
            let (y_fused, ..) = fwd(true);
            assert_eq!(bits(&y_fused), bits(&y_relu), "forward, train {train}");
            assert!(y_relu.contains(&0.0) && y_relu.iter().any(|&v| v > 0.0));
            // Backward: relu_bwd on the relu output, then batch norm's; against the fused one.
            let bwd = |dy: &[f32], relu_y: Option<&[f32]>| {
                let (mut dx, mut dg, mut db) = (vec![f32::NAN; s.len()], [0f32; 4], [0f32; 4]);
                let p = BatchNormParams::default();
                if train {
                    batch_norm_train_bwd(
                        &x, &gamma, &a, &b, dy, relu_y, s, &mut dx, &mut dg, &mut db,
                    )
                    .unwrap();
                } else {
                    batch_norm_eval_bwd(
                        &x, &gamma, &a, &b, dy, relu_y, s, p, &mut dx, &mut dg, &mut db,
                    )
                    .unwrap();
                }
                [dx, dg.to_vec(), db.to_vec()].map(|v| bits(&v))
            };
            let mut dz = vec![f32::NAN; s.len()];
            relu_bwd(&y_relu, &dy, &mut dz).unwrap();
            assert_eq!(
                bwd(&dy, Some(&y_fused)),
                bwd(&dz, None),
                "backward, train {train}"
            );
        }
    }
}
