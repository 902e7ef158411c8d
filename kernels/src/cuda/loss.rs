//! CUDA launchers of [`crate::loss`] (`kernels/cuda/loss.cu`): cross entropy on hard labels (a
//! fused softmax + CE with ignore_index, an optional per-pixel weight and the loss denominators),
//! the masked probability-space losses: soft-target cross entropy and squared error, and binary
//! cross entropy of logits. A forward writes its scalar to a `[1]` device buffer instead of
//! returning it; a backward reads `dloss` from one.
//!
//! Every loss finishes with `ce_finalize`: one block adds the per-block f64 partials in a fixed
//! order, resolves the denominator D and writes loss[0] and 1/D, so there is one implementation
//! of the denominators. Loss values agree with the CPU to f32 rounding. A class label that is
//! neither `ignore_index` nor in [0, K) cannot raise an error on the device: it makes
//! [`cross_entropy_fwd`]'s loss NaN (the CPU returns an error).
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: softmax alone ([`super::softmax`]), class weights, label smoothing, gradients with
//! respect to the mask or the soft target.

use super::common::{blocks, expect, grid, grid2, launch, one_block, scratch, REDUCE_BLOCKS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::LOSS;
use super::CudaError;
use crate::loss::{CrossEntropyParams, Denominator};
use crate::{KernelError, Nchw};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// (mode, constant) of a denominator as `ce_finalize` reads them; rejects a bad constant with
/// the CPU's message. Shared by every loss of this file. `AllElements` (N·K·H·W) is known on the
/// host, so it travels as a constant.
fn denominator_code(
    kernel: &'static str,
    d: Denominator,
    shape: Nchw,
) -> Result<(i32, f64), CudaError> {
    Ok(match d {
        Denominator::ValidPixels => (0, 0.0),
        Denominator::AllPixels => (1, 0.0),
        Denominator::AllElements => (3, shape.len() as f64),
        Denominator::WeightSum => (2, 0.0),
        Denominator::Constant(c) if c.is_finite() && c >= 0.0 => (3, c),
        Denominator::Constant(c) => {
            return Err(KernelError::Shape {
                kernel,
                reason: format!("Denominator::Constant({c}) must be finite and >= 0"),
            }
            .into())
        }
    })
}

// ---------------------------------------------------------------- hard labels: softmax + CE

fn check_ce_common(
    kernel: &'static str,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<i32>,
    weight: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect(kernel, "logits", logits, shape.len())?;
    expect(kernel, "target", target, pixels)?;
    if let Some(w) = weight {
        expect(kernel, "weight", w, pixels)?;
    }
    Ok(())
}

/// [`crate::loss::cross_entropy_fwd`]: loss[0] = Σ_valid w·(−log softmax(x)_t) / D.
///
/// logits: [N,K,H,W]; target: [N,H,W] i32; weight: [N,H,W] or `None`; pixel_loss: [N,H,W] or
/// `None`; loss: [1]. A target neither `ignore_index` nor in [0, K) makes the loss NaN (the CPU
/// returns an error).
pub fn cross_entropy_fwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<i32>,
    weight: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    params: CrossEntropyParams,
    pixel_loss: Option<&mut dyn DeviceBufMut<f32>>,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "cross_entropy_fwd";
    check_ce_common(K, logits, target, weight, shape)?;
    let pixels = shape.n * shape.plane();
    if let Some(pl) = pixel_loss.as_deref() {
        expect(K, "pixel_loss", pl, pixels)?;
    }
    expect(K, "loss", loss, 1)?;
    let (mode, constant) = denominator_code(K, params.denominator, shape)?;
    if shape.c == 0 && pixels > 0 {
        return Err(KernelError::Shape {
            kernel: K,
            reason: "cross entropy over K = 0 classes is undefined".into(),
        }
        .into());
    }
    let s = dev.stream();
    let nblocks = blocks(pixels, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let (px, pt) = (logits.device_addr(s), target.device_addr(s));
    let pw = weight.map_or(0, |w| w.device_addr(s));
    let ppl = pixel_loss.map_or(0, |p| p.device_addr(s));
    let (pp, pinv, ploss) = (
        partials.device_addr(s),
        inv_d.device_addr(s),
        loss.device_addr(s),
    );
    let (pixels64, k, plane, ignore) = (
        pixels as u64,
        shape.c as u32,
        shape.plane() as u64,
        params.ignore_index,
    );
    let cfg = LaunchConfig {
        grid_dim: (nblocks, 1, 1),
        ..grid(pixels)
    };
    launch!(dev, LOSS, "ce_fwd_partials", cfg;
        px, pt, pw, pixels64, k, plane, ignore, ppl, pp)?;
    launch!(dev, LOSS, "ce_finalize", one_block();
        pp, nblocks, mode, constant, pixels64, ploss, pinv)
}

/// [`crate::loss::cross_entropy_bwd`]: dlogits = dloss·w·(softmax − onehot)/D at valid pixels,
/// 0 elsewhere. logits, dlogits: [N,K,H,W]; target, weight: [N,H,W]; dloss: [1] on the device.
pub fn cross_entropy_bwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<i32>,
    weight: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    params: CrossEntropyParams,
    dloss: &impl DeviceBuf<f32>,
    dlogits: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "cross_entropy_bwd";
    check_ce_common(K, logits, target, weight, shape)?;
    expect(K, "dloss", dloss, 1)?;
    expect(K, "dlogits", dlogits, shape.len())?;
    let (mode, constant) = denominator_code(K, params.denominator, shape)?;
    let pixels = shape.n * shape.plane();
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let nblocks = blocks(pixels, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let unused_loss = scratch::<f32>(dev, 1)?;
    let (px, pt) = (logits.device_addr(s), target.device_addr(s));
    let pw = weight.map_or(0, |w| w.device_addr(s));
    let (pp, pinv, ploss) = (
        partials.device_addr(s),
        inv_d.device_addr(s),
        unused_loss.device_addr(s),
    );
    let (pdl, pg) = (dloss.device_addr(s), dlogits.device_addr(s));
    let (pixels64, k, plane, ignore) = (
        pixels as u64,
        shape.c as u32,
        shape.plane() as u64,
        params.ignore_index,
    );
    let cfg = LaunchConfig {
        grid_dim: (nblocks, 1, 1),
        ..grid(pixels)
    };
    launch!(dev, LOSS, "ce_stats_partials", cfg; pt, pw, pixels64, k, ignore, pp)?;
    launch!(dev, LOSS, "ce_finalize", one_block();
        pp, nblocks, mode, constant, pixels64, ploss, pinv)?;
    launch!(dev, LOSS, "ce_bwd", grid(pixels);
        px, pt, pw, pdl, pinv, pixels64, k, plane, ignore, pg)
}

// ---------------------------------------------------------------- masked losses

/// The per-pixel forward of a masked loss (`loss.cu`'s `*_fwd_partials`).
#[derive(Clone, Copy)]
enum MaskedLoss {
    SoftCrossEntropy,
    SquaredError,
}

/// The checks every masked loss shares (the CPU's `masked_prologue` without the statistics,
/// which are computed on the device): two [N,K,H,W] maps, an [N,H,W] mask, the denominator.
/// Returns `ce_finalize`'s (mode, constant).
fn masked_check(
    kernel: &'static str,
    names: [&'static str; 2],
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
) -> Result<(i32, f64), CudaError> {
    expect(kernel, names[0], a, shape.len())?;
    expect(kernel, names[1], b, shape.len())?;
    if let Some(m) = mask {
        expect(kernel, "mask", m, shape.n * shape.plane())?;
    }
    denominator_code(kernel, denominator, shape)
}

/// `ce_finalize` over `nblocks` rows of partials: loss[0] = Σ w·ℓ / D, inv_d[0] = 1/D.
fn finalize(
    dev: &Device,
    partials: &CudaSlice<f64>,
    nblocks: u32,
    (mode, constant): (i32, f64),
    pixels: usize,
    loss: u64,
    inv_d: &CudaSlice<f64>,
) -> Result<(), CudaError> {
    let st = dev.stream();
    let (pp, pinv, pixels64) = (
        partials.device_addr(st),
        inv_d.device_addr(st),
        pixels as u64,
    );
    launch!(dev, LOSS, "ce_finalize", one_block();
        pp, nblocks, mode, constant, pixels64, loss, pinv)
}

/// The forward of a masked loss: per-block partials, then `ce_finalize` into loss[0].
#[allow(clippy::too_many_arguments)]
fn masked_fwd(
    dev: &Device,
    which: MaskedLoss,
    kernel: &'static str,
    names: [&'static str; 2],
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let code = masked_check(kernel, names, a, b, mask, shape, denominator)?;
    expect(kernel, "loss", loss, 1)?;
    let pixels = shape.n * shape.plane();
    // An empty map (K = 0 included) sums to 0 like the CPU's early return: no pixel is visited.
    let visited = if shape.is_empty() { 0 } else { pixels };
    let nblocks = blocks(visited, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let st = dev.stream();
    let (pa, pb, pp) = (
        a.device_addr(st),
        b.device_addr(st),
        partials.device_addr(st),
    );
    let pm = mask.map_or(0, |m| m.device_addr(st));
    let (visited64, k, plane) = (visited as u64, shape.c as u32, shape.plane() as u64);
    let cfg = grid2(nblocks, 1);
    match which {
        MaskedLoss::SoftCrossEntropy => launch!(dev, LOSS, "soft_ce_fwd_partials", cfg;
            pa, pb, pm, visited64, k, plane, pp),
        MaskedLoss::SquaredError => launch!(dev, LOSS, "squared_error_fwd_partials", cfg;
            pa, pb, pm, visited64, k, plane, pp),
    }?;
    finalize(
        dev,
        &partials,
        nblocks,
        code,
        pixels,
        loss.device_addr(st),
        &inv_d,
    )
}

/// 1/D of a masked loss on the device ([1], f64; 0 when D = 0), from the mask's statistics.
fn masked_inv_d(
    dev: &Device,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    code: (i32, f64),
) -> Result<CudaSlice<f64>, CudaError> {
    let pixels = shape.n * shape.plane();
    let nblocks = blocks(pixels, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let unused_loss = scratch::<f32>(dev, 1)?;
    let st = dev.stream();
    let pm = mask.map_or(0, |m| m.device_addr(st));
    let (pp, pixels64) = (partials.device_addr(st), pixels as u64);
    launch!(dev, LOSS, "masked_stats_partials", grid2(nblocks, 1); pm, pixels64, pp)?;
    finalize(
        dev,
        &partials,
        nblocks,
        code,
        pixels,
        unused_loss.device_addr(st),
        &inv_d,
    )?;
    Ok(inv_d)
}

/// [`crate::loss::soft_cross_entropy_fwd`]: loss[0] = Σ_pixels w·(−Σ_k q_k log softmax(x)_k)/D.
///
/// logits, q: [N,K,H,W] (`shape.c` is K); mask: [N,H,W] or `None`; loss: [1].
pub fn soft_cross_entropy_fwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    q: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    masked_fwd(
        dev,
        MaskedLoss::SoftCrossEntropy,
        "soft_cross_entropy_fwd",
        ["logits", "q"],
        logits,
        q,
        mask,
        shape,
        denominator,
        loss,
    )
}

/// [`crate::loss::soft_cross_entropy_bwd`]: dlogits = dloss·w·(p·Σ_k q_k − q)/D, 0 where the
/// mask is 0. logits, q, dlogits: [N,K,H,W]; mask: [N,H,W] or `None`; dloss: [1].
#[allow(clippy::too_many_arguments)]
pub fn soft_cross_entropy_bwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    q: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    dloss: &impl DeviceBuf<f32>,
    dlogits: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "soft_cross_entropy_bwd";
    let code = masked_check(K, ["logits", "q"], logits, q, mask, shape, denominator)?;
    expect(K, "dloss", dloss, 1)?;
    expect(K, "dlogits", dlogits, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let inv_d = masked_inv_d(dev, mask, shape, code)?;
    let st = dev.stream();
    let (px, pq, pm) = (
        logits.device_addr(st),
        q.device_addr(st),
        mask.map_or(0, |m| m.device_addr(st)),
    );
    let (pdl, pinv, pg) = (
        dloss.device_addr(st),
        inv_d.device_addr(st),
        dlogits.device_addr(st),
    );
    let pixels = shape.n * shape.plane();
    let (pixels64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, LOSS, "soft_ce_bwd", grid(pixels); px, pq, pm, pdl, pinv, pixels64, k, plane, pg)
}

/// [`crate::loss::squared_error_fwd`]: loss[0] = Σ_pixels w·Σ_k (a_k − b_k)²/D.
///
/// a, b: [N,K,H,W] (`shape.c` is K); mask: [N,H,W] or `None`; loss: [1].
pub fn squared_error_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    masked_fwd(
        dev,
        MaskedLoss::SquaredError,
        "squared_error_fwd",
        ["a", "b"],
        a,
        b,
        mask,
        shape,
        denominator,
        loss,
    )
}

/// [`crate::loss::squared_error_bwd`]: da = 2·dloss·w·(a − b)/D, db = −da, 0 where the mask is
/// 0; bit-identical to the CPU given the same D. a, b: [N,K,H,W]; mask: [N,H,W] or `None`;
/// dloss: [1]; da, db: [N,K,H,W] or `None` (skipped).
#[allow(clippy::too_many_arguments)]
pub fn squared_error_bwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    dloss: &impl DeviceBuf<f32>,
    da: Option<&mut dyn DeviceBufMut<f32>>,
    db: Option<&mut dyn DeviceBufMut<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "squared_error_bwd";
    let code = masked_check(K, ["a", "b"], a, b, mask, shape, denominator)?;
    expect(K, "dloss", dloss, 1)?;
    if let Some(g) = da.as_deref() {
        expect(K, "da", g, shape.len())?;
    }
    if let Some(g) = db.as_deref() {
        expect(K, "db", g, shape.len())?;
    }
    if shape.is_empty() || (da.is_none() && db.is_none()) {
        return Ok(());
    }
    let inv_d = masked_inv_d(dev, mask, shape, code)?;
    let st = dev.stream();
    let (pa, pb, pm) = (
        a.device_addr(st),
        b.device_addr(st),
        mask.map_or(0, |m| m.device_addr(st)),
    );
    let (pdl, pinv) = (dloss.device_addr(st), inv_d.device_addr(st));
    let (len, k, plane) = (shape.len() as u64, shape.c as u32, shape.plane() as u64);
    let outs = [
        (da.map(|g| g.device_addr(st)), 1.0f64),
        (db.map(|g| g.device_addr(st)), -1.0),
    ];
    for (pg, sign) in outs {
        let Some(pg) = pg else { continue };
        launch!(dev, LOSS, "squared_error_bwd", grid(shape.len());
            pa, pb, pm, pdl, pinv, sign, len, k, plane, pg)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- binary cross entropy

/// [`crate::loss::binary_cross_entropy_fwd`]: loss[0] = mean of max(x, 0) − x·t + ln(1 + e^−|x|),
/// summed in f64 by one block (deterministic; agrees with the CPU to f32 rounding). logits,
/// target: [len]; loss: [1].
pub fn binary_cross_entropy_fwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<f32>,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "binary_cross_entropy_fwd";
    let len = logits.elems();
    expect(K, "target", target, len)?;
    expect(K, "loss", loss, 1)?;
    let st = dev.stream();
    let (px, pt, pl, len64) = (
        logits.device_addr(st),
        target.device_addr(st),
        loss.device_addr(st),
        len as u64,
    );
    launch!(dev, LOSS, "binary_cross_entropy_fwd", one_block(); px, pt, len64, pl)
}

/// [`crate::loss::binary_cross_entropy_bwd`]: dlogits = dloss·(σ(x) − t)/len (CUDA's expf: a
/// few ulp from the CPU). logits, target, dlogits: [len]; dloss: [1].
pub fn binary_cross_entropy_bwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<f32>,
    dloss: &impl DeviceBuf<f32>,
    dlogits: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "binary_cross_entropy_bwd";
    let len = logits.elems();
    expect(K, "target", target, len)?;
    expect(K, "dloss", dloss, 1)?;
    expect(K, "dlogits", dlogits, len)?;
    if len == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, pt, pd, pg, len64) = (
        logits.device_addr(st),
        target.device_addr(st),
        dloss.device_addr(st),
        dlogits.device_addr(st),
        len as u64,
    );
    launch!(dev, LOSS, "binary_cross_entropy_bwd", grid(len); px, pt, pd, len64, pg)
}
