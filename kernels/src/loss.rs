//! Pixel-wise segmentation losses, forward (returns the scalar) and backward (writes the input
//! gradients from the upstream scalar gradient `dloss`). Maps are [N,K,H,W] with K classes as
//! channels; labels, weights and masks are per pixel, [N,H,W].
//!
//! Every loss is  L = Σ_pixels w·ℓ(pixel) / D  with the denominator D chosen by [`Denominator`]:
//!
//! * cross entropy, hard labels t (ignore_index skipped): ℓ = −log softmax(x)_t;
//!   dx = dloss·w·(softmax(x) − onehot(t))/D at valid pixels, 0 elsewhere.
//!   With `weight = None` and `Denominator::ValidPixels` this is
//!   `F.cross_entropy(x, t, reduction='mean', ignore_index=…)`; `pixel_loss` gives the
//!   `reduction='none'` map (unweighted, 0 at ignored pixels), for methods that rank pixels.
//! * soft cross entropy, target probabilities q held constant: ℓ = −Σ_k q_k·log softmax(x)_k;
//!   dx = dloss·w·(p·Σ_k q_k − q)/D (q need not sum to 1).
//! * squared error between two maps a, b (Mean Teacher / CCT consistency): ℓ = Σ_k (a_k − b_k)²;
//!   da = 2·dloss·w·(a − b)/D = −db. `F.mse_loss(a, b)` (mean over every element) is this with
//!   no mask and `Denominator::Constant(N·K·H·W)`.
//!
//! * binary cross entropy of logits x against targets t (multi-label classification, not a
//!   pixel loss): ℓ = max(x, 0) − x·t + ln(1 + e^(−|x|)) per element, mean over all elements
//!   (`tf.nn.sigmoid_cross_entropy_with_logits` then `reduce_mean`, PseudoSeg's classifier loss;
//!   `F.binary_cross_entropy_with_logits`); dx = dloss·(σ(x) − t)/len.
//!
//! Validity and weights. Cross entropy's valid pixels are those whose target is not
//! `ignore_index`; its optional `weight` scales each valid pixel but does not change which are
//! valid (so a confidence mask with `ValidPixels` divides by the non-ignored count, as UniMatch
//! does, and with `WeightSum` by the confident count). The other losses take an optional `mask`
//! that is both: a pixel is valid when its mask is ≠ 0, and it is weighted by the mask. Pixels
//! that are ignored or have weight / mask 0 are skipped outright (gradient exactly 0), so NaN or
//! ∞ there cannot leak into the loss or the gradient. Negative weights are not rejected.
//!
//! Zero denominator: when D = 0 (no valid pixels, weights summing to 0, or `Constant(0.0)`) the
//! loss is 0 and every gradient is 0, not NaN, so an all-ignored batch is a no-op step.
//!
//! Precision: softmax statistics (max, Σexp) per pixel run in `T` (see `softmax`); per-pixel
//! class sums of the other losses and the loss total accumulate in f64. Images run in parallel
//! and their partial sums are added in image order, so the result does not depend on the thread
//! count. Backward recomputes what it needs from the forward inputs (nothing is saved).
//!
//! Speed (the hard-label cross-entropy pair, the supervised step's loss): both walk an image in
//! blocks of 256 pixels, class planes inner, so a block's statistics stay in L1 and every loop
//! runs over contiguous pixels; the exponentials go through [`Real::exp_in_place`] (for f32 the
//! vectorised polynomial of [`crate::exp`], within 1 ulp of libm's), and the backward takes each
//! e^(x − m) once, straight into its output.
//!
//! Not here: per-class weights (`F.cross_entropy(weight=…)`), label smoothing, focal / dice /
//! OHEM losses (OHEM ranks `pixel_loss` and passes a 0/1 weight), KL divergence (no op uses it),
//! and gradients with respect to the weights, masks, labels or soft targets.

use crate::softmax::max_sumexp;
use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;

/// What the weighted pixel-loss sum is divided by. A denominator that comes out 0 makes the loss
/// and its gradients 0.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Denominator {
    /// Number of valid pixels, each counted once: not `ignore_index` for cross entropy, mask ≠ 0
    /// for the masked losses (every pixel when there is no mask). PyTorch's `reduction='mean'`.
    #[default]
    ValidPixels,
    /// N·H·W, whatever is ignored or masked (FixMatch's mean over all unlabeled pixels).
    AllPixels,
    /// N·K·H·W, every element of the class maps: with no mask, the mean PyTorch's
    /// `F.mse_loss(a, b)` takes (CCT's and GCT's consistency losses), whatever K is.
    AllElements,
    /// Σ of the per-pixel weights (or mask values) over valid pixels; the valid count when there
    /// are no weights.
    WeightSum,
    /// A fixed value; must be finite and ≥ 0.
    Constant(f64),
}

impl Denominator {
    /// The value of D given the batch's statistics and the shape of the class maps.
    fn resolve(
        self,
        kernel: &'static str,
        valid: usize,
        weight_sum: f64,
        shape: Nchw,
    ) -> Result<f64, KernelError> {
        match self {
            Denominator::ValidPixels => Ok(valid as f64),
            Denominator::AllPixels => Ok((shape.n * shape.plane()) as f64),
            Denominator::AllElements => Ok(shape.len() as f64),
            Denominator::WeightSum => Ok(weight_sum),
            Denominator::Constant(c) if c.is_finite() && c >= 0.0 => Ok(c),
            Denominator::Constant(c) => Err(KernelError::Shape {
                kernel,
                reason: format!("Denominator::Constant({c}) must be finite and >= 0"),
            }),
        }
    }
}

/// 1/D, or 0 when D = 0: the zero-denominator rule in one place.
fn inv(d: f64) -> f64 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Params of [`cross_entropy_fwd`] / [`cross_entropy_bwd`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropyParams {
    /// Target value marking a pixel to skip (contributes nothing, gradient 0). PyTorch's default
    /// is −100; segmentation datasets usually use 255.
    pub ignore_index: i32,
    /// What the weighted sum is divided by.
    pub denominator: Denominator,
}

impl Default for CrossEntropyParams {
    /// PyTorch's defaults: `ignore_index = -100`, mean over valid pixels.
    fn default() -> Self {
        CrossEntropyParams {
            ignore_index: -100,
            denominator: Denominator::ValidPixels,
        }
    }
}

/// Pixel (n, y, x) of flat pixel index `p` in an [N,H,W] map.
fn pixel_of(shape: Nchw, p: usize) -> (usize, usize, usize) {
    let plane = shape.plane();
    (p / plane, (p % plane) / shape.w, p % shape.w)
}

/// Checks every target is `ignore_index` or in [0, K) and returns (valid count, Σ weight over
/// valid pixels) for the denominator.
fn check_targets<T: Real>(
    kernel: &'static str,
    target: &[i32],
    weight: Option<&[T]>,
    shape: Nchw,
    ignore_index: i32,
) -> Result<(usize, f64), KernelError> {
    let k = shape.c;
    // A branch-free pass (it vectorises) for the common case; the loop below finds the first
    // bad pixel when there is one. A negative label wraps to a large u32.
    let k32 = u32::try_from(k).unwrap_or(u32::MAX);
    let (mut valid, mut bad) = (0usize, false);
    for &t in target {
        let counted = t != ignore_index;
        valid += usize::from(counted);
        bad |= counted & (t as u32 >= k32);
    }
    if bad {
        for (p, &t) in target.iter().enumerate() {
            if t != ignore_index && (t < 0 || t as usize >= k) {
                let (n, y, x) = pixel_of(shape, p);
                return Err(KernelError::Shape {
                    kernel,
                    reason: format!(
                        "target at pixel (n={n}, y={y}, x={x}) is {t}, neither ignore_index \
                         {ignore_index} nor a class in [0, {k})"
                    ),
                });
            }
        }
    }
    // Unweighted, Σ 1 over the valid pixels is their count, exactly.
    let wsum = match weight {
        None => valid as f64,
        Some(w) => (target.iter().zip(w))
            .filter(|(&t, _)| t != ignore_index)
            .fold(0f64, |acc, (_, &wv)| acc + wv.f64()),
    };
    Ok((valid, wsum))
}

/// (count of mask ≠ 0, Σ mask) over `pixels` pixels; every pixel with weight 1 without a mask.
fn mask_stats<T: Real>(mask: Option<&[T]>, pixels: usize) -> (usize, f64) {
    match mask {
        None => (pixels, pixels as f64),
        Some(m) => m.iter().fold((0, 0.0), |(c, s), &v| {
            (c + usize::from(v != T::zero()), s + v.f64())
        }),
    }
}

/// One pixel's gradient coefficient dloss·w/D (`scale` = dloss/D), exactly 0 when skipped.
fn coefficient<T: Real>(w: f64, skip: bool, scale: f64) -> T {
    if skip || w == 0.0 || scale == 0.0 {
        T::zero()
    } else {
        T::of(scale * w)
    }
}

/// Per-pixel gradient coefficient dloss·w/D, exactly 0 at skipped pixels ([N,H,W]).
fn coefficients<T: Real>(
    pixels: usize,
    weight: Option<&[T]>,
    skip: impl Fn(usize) -> bool,
    scale: f64,
) -> Vec<T> {
    (0..pixels)
        .map(|p| coefficient(weight.map_or(1.0, |w| w[p].f64()), skip(p), scale))
        .collect()
}

/// Pixels per block of the cross-entropy pair: one block's per-pixel statistics and
/// exponentials stay in L1 while the K class planes stream past.
const BLOCK: usize = 256;

/// Per-pixel max over the K classes of pixels `p0..p0 + m.len()` of one image `x` (K planes of
/// `plane`), into `m`: the same comparisons as `softmax::plane_max` on a slice of the plane.
fn block_max<T: Real>(x: &[T], plane: usize, p0: usize, m: &mut [T]) {
    let b = m.len();
    m.copy_from_slice(&x[p0..p0 + b]);
    for xk in x.chunks_exact(plane).skip(1) {
        for (mv, &v) in m.iter_mut().zip(&xk[p0..p0 + b]) {
            if v > *mv {
                *mv = v;
            }
        }
    }
}

/// Σ over images of `f(n)`, computed in parallel and added in image order (deterministic).
fn sum_images(n: usize, f: impl Fn(usize) -> f64 + Sync + Send) -> f64 {
    let parts: Vec<f64> = (0..n).into_par_iter().map(f).collect();
    parts.iter().sum()
}

/// Validates the lengths shared by the masked losses: two [N,K,H,W] maps and an [N,H,W] mask.
fn check_pair<T>(
    kernel: &'static str,
    names: [&'static str; 2],
    a: &[T],
    b: &[T],
    mask: Option<&[T]>,
    shape: Nchw,
) -> Result<(), KernelError> {
    check_len(kernel, names[0], a, shape.len())?;
    check_len(kernel, names[1], b, shape.len())?;
    if let Some(m) = mask {
        check_len(kernel, "mask", m, shape.n * shape.plane())?;
    }
    Ok(())
}

/// The prologue every masked loss shares: validates the two maps and the mask, and resolves the
/// denominator. Returns 1/D (0 when D = 0, see [`inv`]).
fn masked_prologue<T: Real>(
    kernel: &'static str,
    names: [&'static str; 2],
    a: &[T],
    b: &[T],
    mask: Option<&[T]>,
    shape: Nchw,
    denominator: Denominator,
) -> Result<f64, KernelError> {
    check_pair(kernel, names, a, b, mask, shape)?;
    let pixels = shape.n * shape.plane();
    let (valid, wsum) = mask_stats(mask, pixels);
    Ok(inv(denominator.resolve(kernel, valid, wsum, shape)?))
}

/// Σ_p w_p·ℓ_p over the pixels of image `n` (`per_pixel` is [H·W]), skipping w = 0 outright so
/// that NaN or ∞ at masked pixels cannot leak into the loss.
fn masked_image_sum<T: Real>(per_pixel: &[f64], mask: Option<&[T]>, n: usize) -> f64 {
    let plane = per_pixel.len();
    let mut acc = 0f64;
    for (p, &v) in per_pixel.iter().enumerate() {
        let w = mask.map_or(1.0, |mk| mk[n * plane + p].f64());
        if w != 0.0 {
            acc += w * v;
        }
    }
    acc
}

/// Cross entropy of logits against hard labels; returns the scalar loss.
///
/// logits: [N,K,H,W] (`shape.c` is K); target: [N,H,W], each `ignore_index` or in [0, K) (else
/// `KernelError::Shape` naming the pixel and value); weight: [N,H,W] per-pixel weights or `None`
/// (all 1); pixel_loss: [N,H,W] or `None`, receives the unweighted −log p_t per pixel, 0 at
/// ignored pixels.
pub fn cross_entropy_fwd<T: Real>(
    logits: &[T],
    target: &[i32],
    weight: Option<&[T]>,
    shape: Nchw,
    params: CrossEntropyParams,
    pixel_loss: Option<&mut [T]>,
) -> Result<T, KernelError> {
    const K: &str = "cross_entropy_fwd";
    let (pixels, plane) = (shape.n * shape.plane(), shape.plane());
    check_len(K, "logits", logits, shape.len())?;
    check_len(K, "target", target, pixels)?;
    if let Some(w) = weight {
        check_len(K, "weight", w, pixels)?;
    }
    if let Some(pl) = pixel_loss.as_deref() {
        check_len(K, "pixel_loss", pl, pixels)?;
    }
    let ignore = params.ignore_index;
    let (valid, wsum) = check_targets(K, target, weight, shape, ignore)?;
    let d = params.denominator.resolve(K, valid, wsum, shape)?;
    if shape.is_empty() {
        if let Some(pl) = pixel_loss {
            pl.fill(T::zero());
        }
        return Ok(T::zero());
    }
    // One image: writes −log p_t per pixel into `out` (if given) and returns Σ w·(−log p_t).
    let image = |n: usize, mut out: Option<&mut [T]>| -> f64 {
        let xi = &logits[n * shape.image()..(n + 1) * shape.image()];
        let ti = &target[n * plane..(n + 1) * plane];
        let (mut m, mut s, mut e) = ([T::zero(); BLOCK], [T::zero(); BLOCK], [T::zero(); BLOCK]);
        let mut acc = 0f64;
        for p0 in (0..plane).step_by(BLOCK) {
            let b = BLOCK.min(plane - p0);
            let (m, s, e) = (&mut m[..b], &mut s[..b], &mut e[..b]);
            block_max(xi, plane, p0, m);
            s.fill(T::zero());
            for xk in xi.chunks_exact(plane) {
                for ((ev, &v), &mv) in e.iter_mut().zip(&xk[p0..p0 + b]).zip(m.iter()) {
                    *ev = v - mv;
                }
                T::exp_in_place(e);
                for (sv, &ev) in s.iter_mut().zip(e.iter()) {
                    *sv += ev;
                }
            }
            for j in 0..b {
                let p = p0 + j;
                let t = ti[p];
                let l = if t == ignore {
                    T::zero()
                } else {
                    // ln s − (x_t − m), not (ln s + m) − x_t: with logits near 1000 the f32 sum
                    // m + ln s would round ln s to the ulp of m, so large logits keep their
                    // precision.
                    s[j].ln() - (xi[t as usize * plane + p] - m[j])
                };
                if let Some(out) = out.as_deref_mut() {
                    out[p] = l;
                }
                if t == ignore {
                    continue;
                }
                let w = weight.map_or(1.0, |w| w[n * plane + p].f64());
                if w != 0.0 {
                    acc += w * l.f64();
                }
            }
        }
        acc
    };
    let total = match pixel_loss {
        Some(pl) => {
            let parts: Vec<f64> = pl
                .par_chunks_mut(plane)
                .enumerate()
                .map(|(n, out)| image(n, Some(out)))
                .collect();
            parts.iter().sum()
        }
        None => sum_images(shape.n, |n| image(n, None)),
    };
    Ok(T::of(total * inv(d)))
}

/// Gradient of [`cross_entropy_fwd`] w.r.t. the logits: dlogits = dloss·w·(softmax − onehot)/D
/// at valid pixels, 0 at ignored ones. logits, dlogits: [N,K,H,W] (`shape.c` is K), dlogits
/// overwritten; target, weight: [N,H,W] as in the forward.
pub fn cross_entropy_bwd<T: Real>(
    logits: &[T],
    target: &[i32],
    weight: Option<&[T]>,
    shape: Nchw,
    params: CrossEntropyParams,
    dloss: T,
    dlogits: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "cross_entropy_bwd";
    let (pixels, plane) = (shape.n * shape.plane(), shape.plane());
    check_len(K, "logits", logits, shape.len())?;
    check_len(K, "target", target, pixels)?;
    if let Some(w) = weight {
        check_len(K, "weight", w, pixels)?;
    }
    check_len(K, "dlogits", dlogits, shape.len())?;
    let ignore = params.ignore_index;
    let (valid, wsum) = check_targets(K, target, weight, shape, ignore)?;
    let d = params.denominator.resolve(K, valid, wsum, shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let scale = dloss.f64() * inv(d);
    let image = shape.image();
    dlogits
        .par_chunks_mut(image)
        .zip(logits.par_chunks(image))
        .enumerate()
        .for_each(|(n, (gi, xi))| {
            let ti = &target[n * plane..(n + 1) * plane];
            let wi = weight.map(|w| &w[n * plane..(n + 1) * plane]);
            let (mut m, mut s, mut c) =
                ([T::zero(); BLOCK], [T::zero(); BLOCK], [T::zero(); BLOCK]);
            for p0 in (0..plane).step_by(BLOCK) {
                let b = BLOCK.min(plane - p0);
                let (m, s, c) = (&mut m[..b], &mut s[..b], &mut c[..b]);
                for (j, cv) in c.iter_mut().enumerate() {
                    let p = p0 + j;
                    *cv = coefficient(wi.map_or(1.0, |w| w[p].f64()), ti[p] == ignore, scale);
                }
                block_max(xi, plane, p0, m);
                // e^(x_k − m) straight into dlogits, summed over k in class order.
                s.fill(T::zero());
                for (gk, xk) in gi.chunks_exact_mut(plane).zip(xi.chunks_exact(plane)) {
                    let g = &mut gk[p0..p0 + b];
                    for ((gv, &v), &mv) in g.iter_mut().zip(&xk[p0..p0 + b]).zip(m.iter()) {
                        *gv = v - mv;
                    }
                    T::exp_in_place(g);
                    for (sv, &e) in s.iter_mut().zip(g.iter()) {
                        *sv += e;
                    }
                }
                for sv in s.iter_mut() {
                    *sv = sv.recip();
                }
                for (k, gk) in gi.chunks_exact_mut(plane).enumerate() {
                    let k = k as i32;
                    let g = &mut gk[p0..p0 + b];
                    for (((gv, &cv), &r), &t) in g.iter_mut().zip(&*c).zip(&*s).zip(&ti[p0..]) {
                        let hot = if t == k { T::one() } else { T::zero() };
                        *gv = if cv == T::zero() {
                            T::zero()
                        } else {
                            cv * (*gv * r - hot)
                        };
                    }
                }
            }
        });
    Ok(())
}

/// Soft-target cross entropy; returns the scalar loss Σ_pixels w·(−Σ_k q_k log softmax(x)_k)/D.
///
/// logits, q: [N,K,H,W] (`shape.c` is K; q is a constant target, need not be normalised);
/// mask: [N,H,W] per-pixel weight/mask or `None`.
pub fn soft_cross_entropy_fwd<T: Real>(
    logits: &[T],
    q: &[T],
    mask: Option<&[T]>,
    shape: Nchw,
    denominator: Denominator,
) -> Result<T, KernelError> {
    const K: &str = "soft_cross_entropy_fwd";
    let inv_d = masked_prologue(K, ["logits", "q"], logits, q, mask, shape, denominator)?;
    let (plane, image) = (shape.plane(), shape.image());
    if shape.is_empty() {
        return Ok(T::zero());
    }
    let total = sum_images(shape.n, |n| {
        let xi = &logits[n * image..(n + 1) * image];
        let qi = &q[n * image..(n + 1) * image];
        let mut m = vec![T::zero(); plane];
        let mut s = vec![T::zero(); plane];
        max_sumexp(xi, &mut m, &mut s);
        // −Σ q_k (x_k − m − ln s) = ln s·Σ q_k − Σ q_k (x_k − m): both sums per pixel, in f64.
        let mut qsum = vec![0f64; plane];
        let mut qx = vec![0f64; plane];
        for (xk, qk) in xi.chunks_exact(plane).zip(qi.chunks_exact(plane)) {
            for p in 0..plane {
                qsum[p] += qk[p].f64();
                qx[p] += qk[p].f64() * (xk[p] - m[p]).f64();
            }
        }
        let per_pixel: Vec<f64> = (0..plane)
            .map(|p| s[p].f64().ln() * qsum[p] - qx[p])
            .collect();
        masked_image_sum(&per_pixel, mask, n)
    });
    Ok(T::of(total * inv_d))
}

/// Gradient of [`soft_cross_entropy_fwd`] w.r.t. the logits: dlogits = dloss·w·(p·Σ_k q_k − q)/D,
/// 0 where the mask is 0. logits, q, dlogits: [N,K,H,W] (`shape.c` is K), dlogits overwritten;
/// mask: [N,H,W] or `None`.
pub fn soft_cross_entropy_bwd<T: Real>(
    logits: &[T],
    q: &[T],
    mask: Option<&[T]>,
    shape: Nchw,
    denominator: Denominator,
    dloss: T,
    dlogits: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "soft_cross_entropy_bwd";
    let inv_d = masked_prologue(K, ["logits", "q"], logits, q, mask, shape, denominator)?;
    check_len(K, "dlogits", dlogits, shape.len())?;
    let (pixels, plane, image) = (shape.n * shape.plane(), shape.plane(), shape.image());
    if shape.is_empty() {
        return Ok(());
    }
    let coef = coefficients(pixels, mask, |_| false, dloss.f64() * inv_d);
    dlogits
        .par_chunks_mut(image)
        .zip(logits.par_chunks(image))
        .zip(q.par_chunks(image).zip(coef.par_chunks(plane)))
        .for_each(|((gi, xi), (qi, ci))| {
            let mut m = vec![T::zero(); plane];
            let mut s = vec![T::zero(); plane];
            max_sumexp(xi, &mut m, &mut s);
            // s becomes Σq / Σexp, so that p·Σq = exp(x − m)·s.
            let mut qsum = vec![T::zero(); plane];
            for qk in qi.chunks_exact(plane) {
                for (a, &v) in qsum.iter_mut().zip(qk) {
                    *a += v;
                }
            }
            for (sv, &a) in s.iter_mut().zip(&qsum) {
                *sv = a / *sv;
            }
            for ((gk, xk), qk) in gi
                .chunks_exact_mut(plane)
                .zip(xi.chunks_exact(plane))
                .zip(qi.chunks_exact(plane))
            {
                for p in 0..plane {
                    let c = ci[p];
                    gk[p] = if c == T::zero() {
                        T::zero()
                    } else {
                        c * ((xk[p] - m[p]).exp() * s[p] - qk[p])
                    };
                }
            }
        });
    Ok(())
}

/// Squared-error consistency loss between two maps; returns Σ_pixels w·Σ_k (a_k − b_k)² / D.
/// a, b: [N,K,H,W] (`shape.c` is K); mask: [N,H,W] or `None`.
pub fn squared_error_fwd<T: Real>(
    a: &[T],
    b: &[T],
    mask: Option<&[T]>,
    shape: Nchw,
    denominator: Denominator,
) -> Result<T, KernelError> {
    const K: &str = "squared_error_fwd";
    let inv_d = masked_prologue(K, ["a", "b"], a, b, mask, shape, denominator)?;
    let (plane, image) = (shape.plane(), shape.image());
    if shape.is_empty() {
        return Ok(T::zero());
    }
    let total = sum_images(shape.n, |n| {
        let ai = &a[n * image..(n + 1) * image];
        let bi = &b[n * image..(n + 1) * image];
        let mut sq = vec![0f64; plane];
        for (ak, bk) in ai.chunks_exact(plane).zip(bi.chunks_exact(plane)) {
            for ((acc, &x), &y) in sq.iter_mut().zip(ak).zip(bk) {
                let e = (x - y).f64();
                *acc += e * e;
            }
        }
        masked_image_sum(&sq, mask, n)
    });
    Ok(T::of(total * inv_d))
}

/// Gradients of [`squared_error_fwd`]: da = 2·dloss·w·(a − b)/D, db = −da, 0 where the mask is
/// 0. a, b: [N,K,H,W] (`shape.c` is K); mask: [N,H,W] or `None`; da, db: [N,K,H,W] or `None`
/// (skip an input that is held constant, e.g. the teacher), overwritten.
pub fn squared_error_bwd<T: Real>(
    a: &[T],
    b: &[T],
    mask: Option<&[T]>,
    shape: Nchw,
    denominator: Denominator,
    dloss: T,
    da: Option<&mut [T]>,
    db: Option<&mut [T]>,
) -> Result<(), KernelError> {
    const K: &str = "squared_error_bwd";
    let inv_d = masked_prologue(K, ["a", "b"], a, b, mask, shape, denominator)?;
    if let Some(g) = da.as_deref() {
        check_len(K, "da", g, shape.len())?;
    }
    if let Some(g) = db.as_deref() {
        check_len(K, "db", g, shape.len())?;
    }
    let (pixels, plane, image) = (shape.n * shape.plane(), shape.plane(), shape.image());
    if shape.is_empty() {
        return Ok(());
    }
    let two = 2.0 * dloss.f64() * inv_d;
    for (out, sign) in [(da, 1.0), (db, -1.0)] {
        let Some(out) = out else { continue };
        let coef = coefficients(pixels, mask, |_| false, sign * two);
        out.par_chunks_mut(image)
            .zip(a.par_chunks(image).zip(b.par_chunks(image)))
            .zip(coef.par_chunks(plane))
            .for_each(|((gi, (ai, bi)), ci)| {
                for ((gk, ak), bk) in gi
                    .chunks_exact_mut(plane)
                    .zip(ai.chunks_exact(plane))
                    .zip(bi.chunks_exact(plane))
                {
                    for p in 0..plane {
                        let c = ci[p];
                        gk[p] = if c == T::zero() {
                            T::zero()
                        } else {
                            c * (ak[p] - bk[p])
                        };
                    }
                }
            });
    }
    Ok(())
}

/// Binary cross entropy with logits, the mean over every element:
/// Σ (max(x, 0) − x·t + ln(1 + e^(−|x|))) / len, accumulated in f64; 0 for empty inputs.
/// logits, target: any shape, equal lengths (targets need not be 0/1).
pub fn binary_cross_entropy_fwd<T: Real>(logits: &[T], target: &[T]) -> Result<T, KernelError> {
    check_len("binary_cross_entropy_fwd", "target", target, logits.len())?;
    if logits.is_empty() {
        return Ok(T::zero());
    }
    let total: f64 = logits
        .iter()
        .zip(target)
        .map(|(&x, &t)| {
            let (x, t) = (x.f64(), t.f64());
            x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()
        })
        .sum();
    Ok(T::of(total / logits.len() as f64))
}

/// Gradient of [`binary_cross_entropy_fwd`]: dlogits = dloss·(σ(x) − t)/len, overwritten.
pub fn binary_cross_entropy_bwd<T: Real>(
    logits: &[T],
    target: &[T],
    dloss: T,
    dlogits: &mut [T],
) -> Result<(), KernelError> {
    check_len("binary_cross_entropy_bwd", "target", target, logits.len())?;
    check_len("binary_cross_entropy_bwd", "dlogits", dlogits, logits.len())?;
    if logits.is_empty() {
        return Ok(());
    }
    let coef = dloss / T::of(logits.len() as f64);
    for ((g, &x), &t) in dlogits.iter_mut().zip(logits).zip(target) {
        // σ(x) without overflow on either side: e^x/(1 + e^x) for x < 0, 1/(1 + e^−x) otherwise.
        let sigmoid = if x < T::zero() {
            x.exp() / (T::one() + x.exp())
        } else {
            (T::one() + (-x).exp()).recip()
        };
        *g = coef * (sigmoid - t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, rand_index, rand_vec};

    const S2: Nchw = Nchw::new(1, 2, 1, 2);
    /// [N=1,K=2,H=1,W=2] logits, layout [k0p0, k0p1, k1p0, k1p1]: pixel 0 is (0, ln 3), so
    /// softmax (1/4, 3/4); pixel 1 is (0, 0), softmax (1/2, 1/2).
    fn logits2() -> Vec<f64> {
        vec![0.0, 0.0, 3f64.ln(), 0.0]
    }

    fn ce(
        x: &[f64],
        t: &[i32],
        w: Option<&[f64]>,
        s: Nchw,
        ignore_index: i32,
        denominator: Denominator,
    ) -> f64 {
        let p = CrossEntropyParams {
            ignore_index,
            denominator,
        };
        cross_entropy_fwd(x, t, w, s, p, None).unwrap()
    }

    fn ce_grad(
        x: &[f64],
        t: &[i32],
        w: Option<&[f64]>,
        s: Nchw,
        ignore_index: i32,
        denominator: Denominator,
        dloss: f64,
    ) -> Vec<f64> {
        let p = CrossEntropyParams {
            ignore_index,
            denominator,
        };
        let mut g = vec![f64::NAN; x.len()];
        cross_entropy_bwd(x, t, w, s, p, dloss, &mut g).unwrap();
        g
    }

    #[test]
    fn cross_entropy_matches_torch_mean_by_hand() {
        // Targets (1, 0): losses −ln(3/4) = ln(4/3) and −ln(1/2) = ln 2. F.cross_entropy with
        // reduction='mean' averages them: (ln(4/3) + ln 2)/2 = ln(8/3)/2 ≈ 0.490415.
        let x = logits2();
        let l = ce(&x, &[1, 0], None, S2, -100, Denominator::ValidPixels);
        assert!((l - (8.0f64 / 3.0).ln() / 2.0).abs() < 1e-15, "{l}");
        // Defaults are torch's (ignore_index −100, mean); f32 agrees.
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let l32 = cross_entropy_fwd(&x32, &[1, 0], None, S2, Default::default(), None).unwrap();
        assert!((l32 as f64 - 0.4904146).abs() < 1e-6, "{l32}");
        // Shifting every logit by 1000 changes nothing, in f32 too.
        let x1k: Vec<f32> = x32.iter().map(|&v| v + 1000.0).collect();
        let l1k = cross_entropy_fwd(&x1k, &[1, 0], None, S2, Default::default(), None).unwrap();
        assert!((l1k as f64 - 0.4904146).abs() < 1e-4, "{l1k}");
        // Gradient (softmax − onehot)/2: pixel 0 (1/4, −1/4)/2, pixel 1 (−1/2, 1/2)/2.
        let g = ce_grad(&x, &[1, 0], None, S2, -100, Denominator::ValidPixels, 1.0);
        assert_close("dlogits", &g, &[0.125, -0.25, -0.125, 0.25], 1e-15, 0.0);
    }

    #[test]
    fn cross_entropy_in_f32_matches_f64_to_rounding() {
        // 2 images of 7 classes on 23×19 pixels: two 256-pixel blocks and a partial one per
        // image; logits up to ±30, every sixth pixel ignored, weights with zeros.
        let s = Nchw::new(2, 7, 23, 19);
        let pixels = s.n * s.plane();
        let x = rand_vec(71, s.len(), -30.0, 30.0);
        let t: Vec<i32> = rand_index(72, pixels, s.c)
            .into_iter()
            .enumerate()
            .map(|(p, v)| if p % 6 == 0 { 255 } else { v })
            .collect();
        let w: Vec<f64> = rand_vec(73, pixels, -0.5, 2.0)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32) = (f32s(&x), f32s(&w));
        // The f64 reference from the f32-rounded inputs, so only the arithmetic differs.
        let (x, w): (Vec<f64>, Vec<f64>) = (
            x32.iter().map(|&v| f64::from(v)).collect(),
            w32.iter().map(|&v| f64::from(v)).collect(),
        );
        let p = CrossEntropyParams {
            ignore_index: 255,
            denominator: Denominator::WeightSum,
        };
        let mut pl64 = vec![0.0; pixels];
        let l64 = cross_entropy_fwd(&x, &t, Some(&w), s, p, Some(&mut pl64)).unwrap();
        let mut pl32 = vec![f32::NAN; pixels];
        let l32 = cross_entropy_fwd(&x32, &t, Some(&w32), s, p, Some(&mut pl32)).unwrap();
        assert!(
            (f64::from(l32) - l64).abs() <= 1e-6 * l64.abs(),
            "{l32} vs {l64}"
        );
        let pl32: Vec<f64> = pl32.iter().map(|&v| f64::from(v)).collect();
        assert_close("pixel_loss", &pl32, &pl64, 2e-5, 1e-5);
        let g64 = ce_grad(&x, &t, Some(&w), s, 255, Denominator::WeightSum, 0.7);
        let mut g32 = vec![f32::NAN; s.len()];
        cross_entropy_bwd(&x32, &t, Some(&w32), s, p, 0.7, &mut g32).unwrap();
        let g32: Vec<f64> = g32.iter().map(|&v| f64::from(v)).collect();
        let scale = g64.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert_close("dlogits", &g32, &g64, 1e-6 * scale, 1e-5);
        // Ignored and zero-weight pixels: exactly 0 in every class.
        for (n, pix) in (0..s.n).flat_map(|n| (0..s.plane()).map(move |q| (n, q))) {
            let i = n * s.plane() + pix;
            if t[i] == 255 || w32[i] == 0.0 {
                assert!((0..s.c).all(|k| g32[s.at(n, k, 0, 0) + pix] == 0.0));
            }
        }
    }

    #[test]
    fn cross_entropy_ignore_weights_and_every_denominator() {
        // Pixel 1 ignored (255); weights (2, 3). Only pixel 0 counts: w·ℓ = 2·ln(4/3).
        let x = logits2();
        let (t, w) = ([1, 255], [2.0, 3.0]);
        let l43 = (4.0f64 / 3.0).ln();
        for (den, want) in [
            (Denominator::ValidPixels, 2.0 * l43),     // 1 valid pixel
            (Denominator::AllPixels, 2.0 * l43 / 2.0), // N·H·W = 2
            (Denominator::WeightSum, 2.0 * l43 / 2.0), // Σ w over valid = 2 (not 5)
            (Denominator::Constant(4.0), 2.0 * l43 / 4.0),
        ] {
            let l = ce(&x, &t, Some(&w), S2, 255, den);
            assert!((l - want).abs() < 1e-15, "{den:?}: {l} vs {want}");
        }
        // Unweighted per-pixel loss, 0 at the ignored pixel.
        let mut pl = [f64::NAN; 2];
        let p = CrossEntropyParams {
            ignore_index: 255,
            denominator: Denominator::ValidPixels,
        };
        cross_entropy_fwd(&x, &t, Some(&w), S2, p, Some(&mut pl)).unwrap();
        assert_close("pixel_loss", &pl, &[l43, 0.0], 1e-15, 0.0);
        // dlogits = dloss·w·(softmax − onehot)/D: pixel 0, D = 1, dloss = 3:
        // 3·2·(1/4, −1/4) = (1.5, −1.5); ignored pixel 1 exactly 0.
        let g = ce_grad(&x, &t, Some(&w), S2, 255, Denominator::ValidPixels, 3.0);
        assert_eq!(g, vec![1.5, 0.0, -1.5, 0.0]);
        // An ignore_index inside [0, K) just marks that class's pixels as ignored.
        let l = ce(&x, &[1, 0], None, S2, 0, Denominator::ValidPixels);
        assert!((l - l43).abs() < 1e-15, "{l}");
    }

    #[test]
    fn zero_denominator_gives_zero_not_nan() {
        let x = logits2();
        let w0 = [0.0, 0.0];
        for (t, w, den) in [
            ([255, 255], None, Denominator::ValidPixels),
            ([255, 255], None, Denominator::WeightSum),
            ([1, 0], Some(&w0[..]), Denominator::WeightSum),
            ([1, 0], None, Denominator::Constant(0.0)),
        ] {
            assert_eq!(ce(&x, &t, w, S2, 255, den), 0.0, "{den:?}");
            assert_eq!(
                ce_grad(&x, &t, w, S2, 255, den, 1.0),
                vec![0.0; 4],
                "{den:?}"
            );
        }
        let m0 = [0.0, 0.0];
        let (a, b) = (vec![1.0; 4], vec![0.0; 4]);
        let l = squared_error_fwd(&a, &b, Some(&m0), S2, Denominator::ValidPixels).unwrap();
        assert_eq!(l, 0.0);
        let l = soft_cross_entropy_fwd(&a, &b, Some(&m0), S2, Denominator::WeightSum).unwrap();
        assert_eq!(l, 0.0);
        let mut g = vec![f64::NAN; 4];
        squared_error_bwd(
            &a,
            &b,
            Some(&m0),
            S2,
            Denominator::ValidPixels,
            1.0,
            None,
            Some(&mut g),
        )
        .unwrap();
        assert_eq!(g, vec![0.0; 4]);
    }

    #[test]
    fn errors() {
        let x = logits2();
        let p = CrossEntropyParams {
            ignore_index: 255,
            denominator: Denominator::ValidPixels,
        };
        // Target 2 with K = 2 at pixel (0, 0, 1).
        let e = cross_entropy_fwd(&x, &[1, 2], None, S2, p, None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("pixel (n=0, y=0, x=1) is 2"), "{msg}");
        // Negative labels other than ignore_index are errors too, in the backward as well.
        let mut g = vec![0.0; 4];
        let e = cross_entropy_bwd(&x, &[-1, 0], None, S2, p, 1.0, &mut g).unwrap_err();
        assert!(e
            .to_string()
            .contains("cross_entropy_bwd: target at pixel (n=0, y=0, x=0) is -1"));
        // Lengths.
        let e = cross_entropy_fwd(&x, &[1, 0, 0], None, S2, p, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("`target` has 3 elements, expected 2"),
            "{e}"
        );
        let e = squared_error_fwd(&x, &x, Some(&[1.0]), S2, Denominator::AllPixels).unwrap_err();
        assert!(
            e.to_string().contains("`mask` has 1 elements, expected 2"),
            "{e}"
        );
        let mut short = vec![0.0; 3];
        let e = squared_error_bwd(
            &x,
            &x,
            None,
            S2,
            Denominator::AllPixels,
            1.0,
            Some(&mut short),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`da` has 3 elements"), "{e}");
        // A negative or non-finite constant denominator.
        for c in [-1.0, f64::NAN] {
            let e = soft_cross_entropy_fwd(&x, &x, None, S2, Denominator::Constant(c)).unwrap_err();
            assert!(e.to_string().contains("must be finite and >= 0"), "{e}");
        }
    }

    #[test]
    fn soft_cross_entropy_by_hand() {
        // q: pixel 0 (1/2, 1/2), pixel 1 (1, 0). ℓ0 = −(ln(1/4) + ln(3/4))/2 = ln(16/3)/2,
        // ℓ1 = −ln(1/2) = ln 2.
        let x = logits2();
        let q = [0.5, 1.0, 0.5, 0.0];
        let (l0, l1) = ((16.0f64 / 3.0).ln() / 2.0, 2f64.ln());
        let l = soft_cross_entropy_fwd(&x, &q, None, S2, Denominator::ValidPixels).unwrap();
        assert!((l - (l0 + l1) / 2.0).abs() < 1e-15, "{l}");
        // Mask (0.5, 0.25) with WeightSum: (0.5·ℓ0 + 0.25·ℓ1)/0.75; mask (1, 0) skips pixel 1.
        let m = [0.5, 0.25];
        let l = soft_cross_entropy_fwd(&x, &q, Some(&m), S2, Denominator::WeightSum).unwrap();
        assert!((l - (0.5 * l0 + 0.25 * l1) / 0.75).abs() < 1e-15, "{l}");
        let l = soft_cross_entropy_fwd(&x, &q, Some(&[1.0, 0.0]), S2, Denominator::ValidPixels);
        assert!((l.unwrap() - l0).abs() < 1e-15);
        // Gradient p·Σq − q: pixel 0 (1/4 − 1/2, 3/4 − 1/2), pixel 1 (1/2 − 1, 1/2 − 0); with
        // dloss = 2 and D = 2 the scale is 1.
        let mut g = vec![0.0; 4];
        soft_cross_entropy_bwd(&x, &q, None, S2, Denominator::ValidPixels, 2.0, &mut g).unwrap();
        assert_close("dlogits", &g, &[-0.25, -0.5, 0.25, 0.5], 1e-15, 0.0);
    }

    #[test]
    fn soft_cross_entropy_with_one_hot_q_is_cross_entropy() {
        let s = Nchw::new(2, 3, 5, 3);
        let x = rand_vec(21, s.len(), -4.0, 4.0);
        let t = rand_index(22, s.n * s.plane(), s.c);
        let mut q = vec![0.0; s.len()];
        for n in 0..s.n {
            for p in 0..s.plane() {
                q[s.at(n, t[n * s.plane() + p] as usize, 0, 0) + p] = 1.0;
            }
        }
        let d = Denominator::AllPixels;
        let want = ce(&x, &t, None, s, -1, d);
        let got = soft_cross_entropy_fwd(&x, &q, None, s, d).unwrap();
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        let mut g = vec![0.0; s.len()];
        soft_cross_entropy_bwd(&x, &q, None, s, d, 0.7, &mut g).unwrap();
        assert_close(
            "grad",
            &g,
            &ce_grad(&x, &t, None, s, -1, d, 0.7),
            1e-15,
            1e-12,
        );
    }

    #[test]
    fn squared_error_by_hand() {
        // a: pixel 0 (1/4, 3/4), pixel 1 (1, 0); b: pixel 0 (1/2, 1/2), pixel 1 (0, 1).
        // Per pixel Σ_k (a − b)²: 1/16 + 1/16 = 0.125 and 1 + 1 = 2. Mask (1, 0.5): Σ = 1.125.
        let a = [0.25f64, 1.0, 0.75, 0.0];
        let b = [0.5, 0.0, 0.5, 1.0];
        let m = [1.0, 0.5];
        for (den, want) in [
            (Denominator::ValidPixels, 1.125 / 2.0),
            (Denominator::AllPixels, 1.125 / 2.0),
            (Denominator::WeightSum, 1.125 / 1.5),
            (Denominator::Constant(0.5), 1.125 / 0.5),
        ] {
            let l = squared_error_fwd(&a, &b, Some(&m), S2, den).unwrap();
            assert!((l - want).abs() < 1e-15, "{den:?}: {l}");
        }
        // ValidPixels counts mask ≠ 0: mask (0, 0.5) has one valid pixel, loss 0.5·2/1.
        let l = squared_error_fwd(&a, &b, Some(&[0.0, 0.5]), S2, Denominator::ValidPixels);
        assert_eq!(l.unwrap(), 1.0);
        // da = 2·w·(a − b)/D with D = 2: pixel 0 2·1/2·(−1/4, 1/4), pixel 1 2·1/4·(1, −1).
        let (mut da, mut db) = (vec![0.0; 4], vec![0.0; 4]);
        let den = Denominator::ValidPixels;
        squared_error_bwd(&a, &b, Some(&m), S2, den, 1.0, Some(&mut da), Some(&mut db)).unwrap();
        assert_eq!(da, vec![-0.25, 0.5, 0.25, -0.5]);
        assert_eq!(db, vec![0.25, -0.5, -0.25, 0.5]);
    }

    /// Odd-size batch for the gradchecks.
    const S: Nchw = Nchw::new(2, 3, 5, 3);
    const DENS: [Denominator; 4] = [
        Denominator::ValidPixels,
        Denominator::AllPixels,
        Denominator::WeightSum,
        Denominator::Constant(7.0),
    ];

    /// A mask with some zeros and some fractional weights.
    fn mask(seed: u64) -> Vec<f64> {
        rand_vec(seed, S.n * S.plane(), -0.5, 1.5)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect()
    }

    #[test]
    fn cross_entropy_gradcheck_through_ignored_pixels_and_weights() {
        let x = rand_vec(31, S.len(), -3.0, 3.0);
        // Labels 0..K, with label K turned into ignore_index (≈ a quarter of the pixels).
        let t: Vec<i32> = rand_index(32, S.n * S.plane(), S.c + 1)
            .into_iter()
            .map(|v| if v == S.c as i32 { 255 } else { v })
            .collect();
        assert!(t.iter().filter(|&&v| v == 255).count() >= 3);
        let w = rand_vec(33, S.n * S.plane(), 0.1, 2.0);
        for den in DENS {
            for wt in [None, Some(&w[..])] {
                gradcheck(
                    &format!("cross_entropy {den:?} weighted={}", wt.is_some()),
                    std::slice::from_ref(&x),
                    |i| vec![ce(&i[0], &t, wt, S, 255, den)],
                    |i, dy| vec![ce_grad(&i[0], &t, wt, S, 255, den, dy[0])],
                );
            }
            // Ignored pixels get exactly 0 in every class.
            let g = ce_grad(&x, &t, Some(&w), S, 255, den, 1.0);
            for n in 0..S.n {
                for p in 0..S.plane() {
                    if t[n * S.plane() + p] == 255 {
                        assert!((0..S.c).all(|k| g[S.at(n, k, 0, 0) + p] == 0.0));
                    }
                }
            }
        }
    }

    #[test]
    fn soft_cross_entropy_gradcheck() {
        let x = rand_vec(41, S.len(), -3.0, 3.0);
        // Unnormalised q exercises the p·Σq term.
        let q = rand_vec(42, S.len(), 0.0, 1.0);
        let m = mask(43);
        for den in DENS {
            for mk in [None, Some(&m[..])] {
                gradcheck(
                    &format!("soft_cross_entropy {den:?} masked={}", mk.is_some()),
                    &[x.clone(), q.clone()],
                    |i| vec![soft_cross_entropy_fwd(&i[0], &i[1], mk, S, den).unwrap()],
                    |i, dy| {
                        let mut g = vec![0.0; S.len()];
                        soft_cross_entropy_bwd(&i[0], &i[1], mk, S, den, dy[0], &mut g).unwrap();
                        vec![g, vec![]]
                    },
                );
            }
        }
    }

    #[test]
    fn squared_error_gradcheck() {
        let a = rand_vec(51, S.len(), 0.0, 1.0);
        let b = rand_vec(52, S.len(), 0.0, 1.0);
        let m = mask(53);
        for den in DENS {
            for mk in [None, Some(&m[..])] {
                gradcheck(
                    &format!("squared_error {den:?} masked={}", mk.is_some()),
                    &[a.clone(), b.clone()],
                    |i| vec![squared_error_fwd(&i[0], &i[1], mk, S, den).unwrap()],
                    |i, dy| {
                        let (mut ga, mut gb) = (vec![0.0; S.len()], vec![0.0; S.len()]);
                        let (da, db) = (Some(&mut ga[..]), Some(&mut gb[..]));
                        squared_error_bwd(&i[0], &i[1], mk, S, den, dy[0], da, db).unwrap();
                        vec![ga, gb]
                    },
                );
            }
        }
    }

    #[test]
    fn binary_cross_entropy_hand_computed_and_gradcheck() {
        // x = 0, t = 1: ln 2. x = ln 3, t = 0: ln(1 + 3) = ln 4. x = −ln 3, t = 1: ln 4.
        let x = [0.0f64, 3f64.ln(), -(3f64.ln())];
        let t = [1.0, 0.0, 1.0];
        let l = binary_cross_entropy_fwd(&x, &t).unwrap();
        assert!(
            (l - (2f64.ln() + 2.0 * 4f64.ln()) / 3.0).abs() < 1e-12,
            "{l}"
        );
        // σ = (1/2, 3/4, 1/4): dx = 3·(σ − t)/3.
        let mut g = [0.0; 3];
        binary_cross_entropy_bwd(&x, &t, 3.0, &mut g).unwrap();
        assert_close("bce dx", &g, &[-0.5, 0.75, -0.75], 1e-12, 0.0);
        // Large logits stay finite.
        let big = binary_cross_entropy_fwd(&[1e4f32, -1e4], &[0.0, 1.0]).unwrap();
        assert_eq!(big, 1e4);
        let inputs = vec![rand_vec(5, 12, -3.0, 3.0), rand_vec(6, 12, 0.0, 1.0)];
        gradcheck(
            "binary_cross_entropy",
            &inputs,
            |i| vec![binary_cross_entropy_fwd(&i[0], &i[1]).unwrap()],
            |i, dy| {
                let mut g = vec![0.0; 12];
                binary_cross_entropy_bwd(&i[0], &i[1], dy[0], &mut g).unwrap();
                vec![g, vec![]]
            },
        );
    }
}
