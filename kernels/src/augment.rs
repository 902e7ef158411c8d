//! Photometric and cutout augmentations of RGB images in [0, 1]: colour jitter, random grayscale,
//! Gaussian blur and cutout — the strong view of FixMatch / UniMatch / PseudoSeg. Each comes as a
//! pair: a `draw_*` function that turns a Philox stream into per-sample parameters, and a `*_fwd`
//! kernel that applies parameters already drawn. Drawing and applying are separate so each can be
//! tested alone and so a CUDA twin can reproduce the CPU's output bit for bit from the same draws.
//!
//! # Counter layout
//!
//! Every `draw_*` reads sample `n`'s randomness from the counters
//! `n·16 .. n·16 + 15` ([`COUNTERS_PER_SAMPLE`] = 16, four Philox blocks) of the stream it is
//! given (the node's stream for this iteration, `ExecCx::rng`). A sample's draw therefore depends
//! only on (seed, stream, n): changing the batch size does not change sample 0. Within the block
//! (offset `k` is counter `n·16 + k`, a uniform `u = rng.uniform_at(n·16 + k)` in (0, 1)):
//!
//! | op | k = 0 | 1 | 2 | 3 | 4 | 5, 6, 7 |
//! |---|---|---|---|---|---|---|
//! | colour jitter | apply: u < p | brightness | contrast | saturation | hue | order (Fisher–Yates) |
//! | grayscale | apply: u < p | | | | | |
//! | Gaussian blur | apply: u < p | σ | | | | |
//! | cutout | apply: u < p | centre row | centre column | | | |
//!
//! Unused counters of a block are reserved (never read), so a later parameter can be added
//! without moving the others. A value from a range [lo, hi] is `lo + (hi − lo)·u`, evaluated in
//! f32 as written (no fused multiply-add). Every counter is read whether or not the sample is
//! applied, so the layout never depends on earlier outcomes.
//!
//! # Arithmetic a device twin must match
//!
//! The kernels use only `+ − × /`, `floor`, `fmod`, `min`/`max` and comparisons, evaluated in
//! f32 in the order the code writes them, without contraction into FMAs (compile CUDA with
//! `--fmad=false`). The two places where a sum over many pixels or a transcendental appears are
//! fixed: the contrast mean is an f64 sum per row (x ascending), then over rows (y ascending),
//! divided by H·W and rounded to f32 once; the Gaussian weights come from
//! [`gaussian_weights`], a host function (f64 `exp`) whose f32 results a device launcher uploads
//! as they are. Luma is `0.299·r + 0.587·g + 0.114·b` (ITU-R BT.601, as PIL's `convert("L")`;
//! torchvision's tensor path uses 0.2989 for red), summed left to right.
//!
//! Inputs are assumed finite and in [0, 1]; every kernel clamps its result to [0, 1] (NaN passes
//! through a clamp unchanged). Plain f32, not generic over `Real`: these transform data, which
//! no gradient check differentiates, and f32 is what a device twin must match.
//!
//! Not here: geometric augmentations (crop, flip, scale: the loader does them on the CPU), mixing
//! of two images (CutMix, ClassMix: a separate family), gradients (augmentations apply to data).

use crate::philox::Philox;
use crate::{check_len, KernelError, Nchw};
use rayon::prelude::*;

/// Counters each sample owns in the op's stream: sample `n` reads `n·16 .. n·16 + 15`.
pub const COUNTERS_PER_SAMPLE: u64 = 16;

/// The first counter of sample `n`'s block.
#[inline]
pub fn sample_counter(n: usize) -> u64 {
    n as u64 * COUNTERS_PER_SAMPLE
}

/// `lo + (hi − lo)·u`, the documented map of a uniform onto [lo, hi].
#[inline]
fn uniform_in(u: f32, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * u
}

#[inline]
fn clamp01(v: f32) -> f32 {
    v.clamp(0.0, 1.0)
}

/// `f·v + (1 − f)·m`: torchvision's `_blend` before its clamp.
#[inline]
fn blend(v: f32, m: f32, f: f32) -> f32 {
    f * v + (1.0 - f) * m
}

/// ITU-R BT.601 luma, `0.299·r + 0.587·g + 0.114·b`, summed left to right in f32.
#[inline]
pub fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

fn check_probability(kernel: &'static str, p: f32) -> Result<(), KernelError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(KernelError::Shape {
            kernel,
            reason: format!("probability must be in [0, 1], got {p}"),
        })
    }
}

/// Checks that the image has 3 channels (unless it is empty) and that `draws` has N entries.
fn check_rgb<D>(kernel: &'static str, shape: Nchw, draws: &[D]) -> Result<(), KernelError> {
    if shape.c != 3 && !shape.is_empty() {
        return Err(KernelError::Shape {
            kernel,
            reason: format!("expects RGB images (C = 3), got C = {}", shape.c),
        });
    }
    check_len(kernel, "draws", draws, shape.n)
}

// ---------------------------------------------------------------------------------------------
// Colour jitter

/// Strengths of [`draw_color_jitter`], with torchvision's `ColorJitter` meanings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitterParams {
    /// Probability that a sample is jittered at all (`RandomApply(ColorJitter, p)`), in [0, 1].
    pub p: f32,
    /// B ≥ 0: the brightness factor is drawn from [max(0, 1 − B), 1 + B].
    pub brightness: f32,
    /// C ≥ 0: the contrast factor is drawn from [max(0, 1 − C), 1 + C].
    pub contrast: f32,
    /// S ≥ 0: the saturation factor is drawn from [max(0, 1 − S), 1 + S].
    pub saturation: f32,
    /// H ∈ [0, 0.5]: the hue shift is drawn from [−H, H] (a fraction of the colour wheel).
    pub hue: f32,
}

/// One of the four colour-jitter adjustments, in the order [`JitterDraw::order`] applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterOp {
    /// x·b.
    Brightness,
    /// Blend with the image's mean luma.
    Contrast,
    /// Blend with each pixel's luma.
    Saturation,
    /// Rotate the hue.
    Hue,
}

impl JitterOp {
    /// The identity order (torchvision's op indices 0, 1, 2, 3).
    pub const ALL: [JitterOp; 4] = [
        JitterOp::Brightness,
        JitterOp::Contrast,
        JitterOp::Saturation,
        JitterOp::Hue,
    ];
}

/// One sample's colour jitter, drawn by [`draw_color_jitter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterDraw {
    /// False: the sample is copied unchanged.
    pub apply: bool,
    /// Brightness factor b ≥ 0 (1 = unchanged).
    pub brightness: f32,
    /// Contrast factor c ≥ 0 (1 = unchanged).
    pub contrast: f32,
    /// Saturation factor s ≥ 0 (1 = unchanged).
    pub saturation: f32,
    /// Hue shift h ∈ [−0.5, 0.5] (0 = unchanged).
    pub hue: f32,
    /// The order the four adjustments run in (a permutation of [`JitterOp::ALL`]).
    pub order: [JitterOp; 4],
}

impl JitterDraw {
    /// Applies nothing.
    pub const NONE: JitterDraw = JitterDraw {
        apply: false,
        brightness: 1.0,
        contrast: 1.0,
        saturation: 1.0,
        hue: 0.0,
        order: JitterOp::ALL,
    };
}

/// Draws `n` samples' colour jitter: counter `n·16 + 0` apply (u < p), `+1` brightness, `+2`
/// contrast, `+3` saturation (each `lo + (hi − lo)·u` on [max(0, 1 − S), 1 + S]), `+4` hue
/// (`−H + 2H·u`), `+5, +6, +7` the order: a Fisher–Yates shuffle of [brightness, contrast,
/// saturation, hue] that for i = 3, 2, 1 (reading counters +5, +6, +7 in turn) swaps entry i
/// with entry j = min(⌊u·(i + 1)⌋, i).
///
/// A strength of 0 draws the identity factor exactly (1, or 0 for hue), which the kernel skips:
/// a disabled adjustment is left out, as torchvision's `ColorJitter` leaves out a `None` one.
///
/// Errors when `p` is outside [0, 1], a strength is negative or not finite, or hue > 0.5.
pub fn draw_color_jitter(
    rng: &Philox,
    n: usize,
    params: &ColorJitterParams,
) -> Result<Vec<JitterDraw>, KernelError> {
    const K: &str = "draw_color_jitter";
    check_probability(K, params.p)?;
    for (name, s) in [
        ("brightness", params.brightness),
        ("contrast", params.contrast),
        ("saturation", params.saturation),
    ] {
        if !(s.is_finite() && s >= 0.0) {
            return Err(KernelError::Shape {
                kernel: K,
                reason: format!("{name} strength must be finite and >= 0, got {s}"),
            });
        }
    }
    if !(0.0..=0.5).contains(&params.hue) {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("hue strength must be in [0, 0.5], got {}", params.hue),
        });
    }
    let factor = |u: f32, s: f32| uniform_in(u, (1.0 - s).max(0.0), 1.0 + s);
    Ok((0..n)
        .map(|i| {
            let base = sample_counter(i);
            let u = |k: u64| rng.uniform_at(base + k);
            let mut order = JitterOp::ALL;
            for (k, i) in [3usize, 2, 1].into_iter().enumerate() {
                let j = ((u(5 + k as u64) * (i + 1) as f32) as usize).min(i);
                order.swap(i, j);
            }
            JitterDraw {
                apply: u(0) < params.p,
                brightness: factor(u(1), params.brightness),
                contrast: factor(u(2), params.contrast),
                saturation: factor(u(3), params.saturation),
                hue: uniform_in(u(4), -params.hue, params.hue),
                order,
            }
        })
        .collect())
}

/// torchvision's `_rgb2hsv` for one pixel: (h, s, v) with h ∈ [0, 1), the same branches and
/// operation order (h from the channel holding the max, red first, then green).
#[inline]
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let grey = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if grey { 1.0 } else { maxc };
    let div = if grey { 1.0 } else { cr };
    let rc = (maxc - r) / div;
    let gc = (maxc - g) / div;
    let bc = (maxc - b) / div;
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    ((h / 6.0 + 1.0) % 1.0, s, maxc)
}

/// torchvision's `_hsv2rgb` for one pixel: sector i = ⌊6h⌋ mod 6, f = 6h − ⌊6h⌋, with p, q, t
/// clamped to [0, 1] as there.
#[inline]
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let p = clamp01(v * (1.0 - s));
    let q = clamp01(v * (1.0 - s * f));
    let t = clamp01(v * (1.0 - s * (1.0 - f)));
    match (i as i64).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// `x mod 1` into [0, 1) the way `torch.remainder` does: fmod, then + 1 when negative.
#[inline]
fn wrap_unit(x: f32) -> f32 {
    let r = x % 1.0;
    if r < 0.0 {
        r + 1.0
    } else {
        r
    }
}

/// Rotates one pixel's hue by `shift` (torchvision's `adjust_hue` on a float pixel).
#[inline]
pub fn rotate_hue(r: f32, g: f32, b: f32, shift: f32) -> (f32, f32, f32) {
    let (h, s, v) = rgb_to_hsv(r, g, b);
    hsv_to_rgb(wrap_unit(h + shift), s, v)
}

/// The mean luma of one image (3 planes of `plane` = H·W pixels, rows of `w`), summed in the
/// documented order: f64 per row, rows in order, one rounding to f32 at the end.
fn mean_luma(img: &[f32], w: usize) -> f32 {
    let plane = img.len() / 3;
    let (r, rest) = img.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let mut total = 0f64;
    for ((rr, gr), br) in r.chunks(w).zip(g.chunks(w)).zip(b.chunks(w)) {
        let mut row = 0f64;
        for ((&r, &g), &b) in rr.iter().zip(gr).zip(br) {
            row += luma(r, g, b) as f64;
        }
        total += row;
    }
    (total / plane as f64) as f32
}

/// Applies `f(r, g, b) -> (r', g', b')` to every pixel of one RGB image in place.
fn map_pixels(img: &mut [f32], f: impl Fn(f32, f32, f32) -> (f32, f32, f32)) {
    let plane = img.len() / 3;
    let (r, rest) = img.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (nr, ng, nb) = f(*r, *g, *b);
        (*r, *g, *b) = (nr, ng, nb);
    }
}

/// One sample's jitter, in place on its [3, H, W] image (already a copy of the input).
fn jitter_image(img: &mut [f32], w: usize, d: &JitterDraw) {
    for op in d.order {
        match op {
            JitterOp::Brightness if d.brightness != 1.0 => {
                let f = d.brightness;
                img.iter_mut().for_each(|v| *v = clamp01(f * *v));
            }
            JitterOp::Contrast if d.contrast != 1.0 => {
                let (f, m) = (d.contrast, mean_luma(img, w));
                img.iter_mut().for_each(|v| *v = clamp01(blend(*v, m, f)));
            }
            JitterOp::Saturation if d.saturation != 1.0 => {
                let f = d.saturation;
                map_pixels(img, |r, g, b| {
                    let m = luma(r, g, b);
                    (
                        clamp01(blend(r, m, f)),
                        clamp01(blend(g, m, f)),
                        clamp01(blend(b, m, f)),
                    )
                });
            }
            JitterOp::Hue if d.hue != 0.0 => {
                let shift = d.hue;
                map_pixels(img, |r, g, b| {
                    let (r, g, b) = rotate_hue(r, g, b, shift);
                    (clamp01(r), clamp01(g), clamp01(b))
                });
            }
            // The factor is the identity: torchvision leaves a disabled adjustment out.
            _ => {}
        }
    }
}

/// Colour jitter as torchvision's `ColorJitter` on float images: for each sample with
/// `apply`, the four adjustments in `order`, each followed by a clamp to [0, 1]:
/// brightness `x·b`; contrast `c·x + (1 − c)·mean` with `mean` the image's mean luma (recomputed
/// from the image as it is at that step); saturation `s·x + (1 − s)·luma(pixel)`; hue: RGB → HSV,
/// `h ← (h + shift) mod 1`, HSV → RGB. An adjustment at its identity factor (1, hue 0) is
/// skipped. Samples without `apply` are copied.
///
/// * `x`, `y`: [N, 3, H, W] (`shape`), values in [0, 1].
/// * `draws`: [N], from [`draw_color_jitter`].
pub fn color_jitter_fwd(
    x: &[f32],
    shape: Nchw,
    draws: &[JitterDraw],
    y: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "color_jitter_fwd";
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.len())?;
    check_rgb(K, shape, draws)?;
    if shape.is_empty() {
        return Ok(());
    }
    let image = shape.image();
    y.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(draws.par_iter())
        .for_each(|((yi, xi), d)| {
            yi.copy_from_slice(xi);
            if d.apply {
                jitter_image(yi, shape.w, d);
            }
        });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Random grayscale

/// Draws `n` grayscale decisions: sample `i` is converted iff `rng.uniform_at(i·16) < p`.
///
/// Errors when `p` is outside [0, 1].
pub fn draw_grayscale(rng: &Philox, n: usize, p: f32) -> Result<Vec<bool>, KernelError> {
    check_probability("draw_grayscale", p)?;
    Ok((0..n)
        .map(|i| rng.uniform_at(sample_counter(i)) < p)
        .collect())
}

/// Random grayscale (torchvision's `RandomGrayscale` with 3 output channels): for each sample
/// with `apply`, every channel becomes the pixel's luma `0.299·r + 0.587·g + 0.114·b`, clamped
/// to [0, 1] (white can round an ulp above 1); other samples are copied.
///
/// * `x`, `y`: [N, 3, H, W] (`shape`).
/// * `apply`: [N].
pub fn grayscale_fwd(
    x: &[f32],
    shape: Nchw,
    apply: &[bool],
    y: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "grayscale_fwd";
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.len())?;
    check_rgb(K, shape, apply)?;
    if shape.is_empty() {
        return Ok(());
    }
    let image = shape.image();
    y.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(apply.par_iter())
        .for_each(|((yi, xi), &a)| {
            yi.copy_from_slice(xi);
            if a {
                map_pixels(yi, |r, g, b| {
                    let l = clamp01(luma(r, g, b));
                    (l, l, l)
                });
            }
        });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Gaussian blur

/// Parameters of [`draw_gaussian_blur`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlurParams {
    /// Probability that a sample is blurred, in [0, 1].
    pub p: f32,
    /// Smallest σ in pixels, > 0.
    pub sigma_min: f32,
    /// Largest σ in pixels, ≥ `sigma_min`.
    pub sigma_max: f32,
}

/// One sample's blur, drawn by [`draw_gaussian_blur`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlurDraw {
    /// False: the sample is copied unchanged.
    pub apply: bool,
    /// Standard deviation of the Gaussian, in pixels (> 0).
    pub sigma: f32,
}

/// Draws `n` samples' blur: counter `i·16 + 0` apply (u < p), `+1` σ = `min + (max − min)·u`.
///
/// Errors when `p` is outside [0, 1] or not 0 < `sigma_min` ≤ `sigma_max` < ∞.
pub fn draw_gaussian_blur(
    rng: &Philox,
    n: usize,
    params: &BlurParams,
) -> Result<Vec<BlurDraw>, KernelError> {
    const K: &str = "draw_gaussian_blur";
    check_probability(K, params.p)?;
    let (lo, hi) = (params.sigma_min, params.sigma_max);
    if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("sigma range must satisfy 0 < min <= max < inf, got [{lo}, {hi}]"),
        });
    }
    Ok((0..n)
        .map(|i| {
            let base = sample_counter(i);
            BlurDraw {
                apply: rng.uniform_at(base) < params.p,
                sigma: uniform_in(rng.uniform_at(base + 1), lo, hi),
            }
        })
        .collect())
}

/// The kernel size that covers ±3σ: `2·⌈3σ⌉ + 1` (13 for σ = 2).
pub fn default_blur_kernel(sigma_max: f32) -> usize {
    2 * (3.0 * sigma_max as f64).ceil().max(0.0) as usize + 1
}

/// The normalised 1-D Gaussian of odd size `kernel`: `w_j ∝ exp(−½((j − r)/σ)²)` for
/// j = 0 .. kernel − 1, r = kernel / 2, computed in f64 and rounded to f32 after normalising
/// (torchvision's `_get_gaussian_kernel1d`). A host function: a device launcher uploads its
/// output, so the device never evaluates `exp`.
pub fn gaussian_weights(sigma: f32, kernel: usize) -> Vec<f32> {
    let r = (kernel / 2) as f64;
    let sigma = sigma as f64;
    let pdf: Vec<f64> = (0..kernel)
        .map(|j| {
            let t = (j as f64 - r) / sigma;
            (-0.5 * t * t).exp()
        })
        .collect();
    let sum: f64 = pdf.iter().sum();
    pdf.iter().map(|&p| (p / sum) as f32).collect()
}

/// Reflect padding's source index for position `i` of an axis of length `n ≥ 1`: mirror at the
/// edges without repeating them (`torch`'s `reflect`: −1 → 1, n → n − 2), folded again for
/// offsets beyond one reflection, so any kernel works on any image size.
#[inline]
pub fn reflect_index(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m < n as isize {
        m as usize
    } else {
        (period - m) as usize
    }
}

/// One 1-D pass of the blur over `src` (planes of `h` rows × `w` columns) into `dst`:
/// `dst[p] = Σ_j w_j · src[reflect(p + j − r)]` along rows (`horizontal`) or columns, the sum
/// taken in f32 for j ascending from 0.
///
/// Each tap is one multiply-add over a whole contiguous row (the horizontal pass reads a
/// reflect-padded copy of the row, the vertical pass the reflected source row), so the inner
/// loops vectorise; every output still sums its taps in the same order, so the bits are those
/// of the per-pixel loop (the unit test `blur_pass_matches_the_per_pixel_definition`).
fn blur_pass(src: &[f32], h: usize, w: usize, weights: &[f32], horizontal: bool, dst: &mut [f32]) {
    let r = (weights.len() / 2) as isize;
    let mut padded = Vec::new();
    for (sp, dp) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
        for (y, out) in dp.chunks_exact_mut(w).enumerate() {
            out.fill(0.0);
            if horizontal {
                let row = &sp[y * w..(y + 1) * w];
                padded.clear();
                padded.extend((-r..w as isize + r).map(|i| row[reflect_index(i, w)]));
                for (j, &wj) in weights.iter().enumerate() {
                    for (o, &v) in out.iter_mut().zip(&padded[j..j + w]) {
                        *o += wj * v;
                    }
                }
            } else {
                for (j, &wj) in weights.iter().enumerate() {
                    let sy = reflect_index(y as isize + j as isize - r, h);
                    for (o, &v) in out.iter_mut().zip(&sp[sy * w..(sy + 1) * w]) {
                        *o += wj * v;
                    }
                }
            }
        }
    }
}

/// Gaussian blur (torchvision's `GaussianBlur` with a square `kernel`), separable: for each
/// sample with `apply`, a horizontal pass with [`gaussian_weights`]`(σ, kernel)` into a
/// temporary, then a vertical pass into `y`, both with reflect padding ([`reflect_index`]), then
/// a clamp to [0, 1]; other samples are copied. Every channel is blurred the same way.
///
/// * `x`, `y`: [N, C, H, W] (`shape`), any C.
/// * `draws`: [N], from [`draw_gaussian_blur`].
/// * `kernel`: odd, ≥ 1 (e.g. [`default_blur_kernel`]).
pub fn gaussian_blur_fwd(
    x: &[f32],
    shape: Nchw,
    draws: &[BlurDraw],
    kernel: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "gaussian_blur_fwd";
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.len())?;
    check_len(K, "draws", draws, shape.n)?;
    if kernel.is_multiple_of(2) {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("kernel size must be odd and >= 1, got {kernel}"),
        });
    }
    if let Some(d) = draws
        .iter()
        .find(|d| d.apply && (d.sigma.is_nan() || d.sigma <= 0.0))
    {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("sigma must be > 0, got {}", d.sigma),
        });
    }
    if shape.is_empty() {
        return Ok(());
    }
    let image = shape.image();
    y.par_chunks_mut(image)
        .zip(x.par_chunks(image))
        .zip(draws.par_iter())
        .for_each(|((yi, xi), d)| {
            if !d.apply {
                yi.copy_from_slice(xi);
                return;
            }
            let weights = gaussian_weights(d.sigma, kernel);
            let mut tmp = vec![0f32; image];
            blur_pass(xi, shape.h, shape.w, &weights, true, &mut tmp);
            blur_pass(&tmp, shape.h, shape.w, &weights, false, yi);
            yi.iter_mut().for_each(|v| *v = clamp01(*v));
        });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cutout

/// How large a cutout box is asked to be, before clipping at the image border.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CutoutSize {
    /// Each side a fraction of the image's side, in (0, 1]: round(f·H) × round(f·W).
    Side(f32),
    /// A fraction of the image's area, in (0, 1], with the image's aspect ratio:
    /// round(√a·H) × round(√a·W).
    Area(f32),
    /// A fixed box, height × width in pixels (PseudoSeg: 100 × 100).
    Pixels(usize, usize),
}

impl CutoutSize {
    /// The box's (height, width) in pixels for an H × W image, each at most the image's side.
    /// Rounding is half away from zero, in f64.
    pub fn pixels(&self, h: usize, w: usize) -> (usize, usize) {
        let scaled = |f: f64| {
            let side = |n: usize| ((f * n as f64).round() as usize).min(n);
            (side(h), side(w))
        };
        match *self {
            CutoutSize::Side(f) => scaled(f as f64),
            CutoutSize::Area(a) => scaled((a as f64).sqrt()),
            CutoutSize::Pixels(bh, bw) => (bh.min(h), bw.min(w)),
        }
    }

    fn check(&self) -> Result<(), KernelError> {
        let f = match *self {
            CutoutSize::Side(f) | CutoutSize::Area(f) => f,
            CutoutSize::Pixels(..) => return Ok(()),
        };
        if f > 0.0 && f <= 1.0 {
            Ok(())
        } else {
            Err(KernelError::Shape {
                kernel: "draw_cutout",
                reason: format!("box fraction must be in (0, 1], got {f}"),
            })
        }
    }
}

/// One sample's cutout box, drawn by [`draw_cutout`]: rows `top..bottom` × columns
/// `left..right` (half-open, already clipped to the image, possibly empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutoutDraw {
    /// False: the sample is copied unchanged.
    pub apply: bool,
    /// First row of the box.
    pub top: usize,
    /// One past the last row.
    pub bottom: usize,
    /// First column.
    pub left: usize,
    /// One past the last column.
    pub right: usize,
}

impl CutoutDraw {
    /// Pixels inside the box (whether or not it is applied).
    pub fn area(&self) -> usize {
        (self.bottom - self.top) * (self.right - self.left)
    }
}

/// Draws `n` cutout boxes for H × W images (Cutout, DeVries & Taylor 2017, as PseudoSeg uses
/// it): counter `i·16 + 0` apply (u < p), `+1` centre row cy = min(⌊u·H⌋, H − 1), `+2` centre
/// column cx likewise (products in f64). With the box's height × width bh × bw from
/// [`CutoutSize::pixels`], rows run from cy − ⌊bh/2⌋ to cy − ⌊bh/2⌋ + bh, columns likewise, then
/// clipped to the image: a box centred near a border loses what lies outside, so its area is
/// the requested one only when it fits.
///
/// Errors when `p` is outside [0, 1] or a fraction is outside (0, 1].
pub fn draw_cutout(
    rng: &Philox,
    n: usize,
    h: usize,
    w: usize,
    p: f32,
    size: CutoutSize,
) -> Result<Vec<CutoutDraw>, KernelError> {
    check_probability("draw_cutout", p)?;
    size.check()?;
    let (bh, bw) = size.pixels(h, w);
    // Start and end of a box of `len` centred at ⌊u·n⌋, clipped to [0, n].
    let span = |u: f32, n: usize, len: usize| {
        let centre = ((u as f64 * n as f64) as usize).min(n.saturating_sub(1));
        let start = centre as i64 - (len / 2) as i64;
        let end = start + len as i64;
        (
            start.clamp(0, n as i64) as usize,
            end.clamp(0, n as i64) as usize,
        )
    };
    Ok((0..n)
        .map(|i| {
            let base = sample_counter(i);
            let (top, bottom) = span(rng.uniform_at(base + 1), h, bh);
            let (left, right) = span(rng.uniform_at(base + 2), w, bw);
            CutoutDraw {
                apply: rng.uniform_at(base) < p,
                top,
                bottom,
                left,
                right,
            }
        })
        .collect())
}

/// Cutout: for each sample with `apply`, the pixels of its box become `fill[c]` in channel c of
/// the image, `ignore_index` in the label map and 0 in the validity map; everything else is
/// copied. The validity map starts from `valid` when given, from all ones otherwise (so
/// `valid_out` alone is PseudoSeg's "not cut out" mask).
///
/// * `image`, `image_out`: [N, C, H, W] (`shape`).
/// * `label`, `label_out`: [N, H, W], both or neither.
/// * `valid`: [N, H, W] or `None` (ones); `valid_out`: [N, H, W] or `None` (not written; then
///   `valid` must be `None` too).
/// * `draws`: [N], from [`draw_cutout`], boxes inside H × W.
/// * `fill`: [C].
pub fn cutout_fwd(
    image: &[f32],
    label: Option<&[i32]>,
    valid: Option<&[f32]>,
    shape: Nchw,
    draws: &[CutoutDraw],
    fill: &[f32],
    ignore_index: i32,
    image_out: &mut [f32],
    label_out: Option<&mut [i32]>,
    valid_out: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    const K: &str = "cutout_fwd";
    let (image_len, pixels) = (shape.len(), shape.n * shape.plane());
    check_len(K, "image", image, image_len)?;
    check_len(K, "image_out", image_out, image_len)?;
    check_len(K, "draws", draws, shape.n)?;
    check_len(K, "fill", fill, shape.c)?;
    let pair = |what: &str| KernelError::Shape {
        kernel: K,
        reason: format!("`{what}` and `{what}_out` must be given together"),
    };
    let label = match (label, label_out) {
        (Some(l), Some(o)) => {
            check_len(K, "label", l, pixels)?;
            check_len(K, "label_out", o, pixels)?;
            Some((l, o))
        }
        (None, None) => None,
        _ => return Err(pair("label")),
    };
    let valid = match (valid, valid_out) {
        (v, Some(o)) => {
            if let Some(v) = v {
                check_len(K, "valid", v, pixels)?;
            }
            check_len(K, "valid_out", o, pixels)?;
            Some((v, o))
        }
        (None, None) => None,
        (Some(_), None) => return Err(pair("valid")),
    };
    if let Some(d) = draws
        .iter()
        .find(|d| d.top > d.bottom || d.left > d.right || d.bottom > shape.h || d.right > shape.w)
    {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!(
                "box rows {}..{} × columns {}..{} is not inside the {} × {} image",
                d.top, d.bottom, d.left, d.right, shape.h, shape.w
            ),
        });
    }

    image_out.copy_from_slice(image);
    let mut label_out = label.map(|(l, o)| {
        o.copy_from_slice(l);
        o
    });
    let mut valid_out = valid.map(|(v, o)| {
        match v {
            Some(v) => o.copy_from_slice(v),
            None => o.fill(1.0),
        }
        o
    });
    let (w, plane) = (shape.w, shape.plane());
    for (n, d) in draws.iter().enumerate().filter(|(_, d)| d.apply) {
        for y in d.top..d.bottom {
            let cols = d.left..d.right;
            for (c, &f) in fill.iter().enumerate() {
                let row = shape.at(n, c, y, 0);
                image_out[row + cols.start..row + cols.end].fill(f);
            }
            let row = n * plane + y * w;
            if let Some(o) = label_out.as_deref_mut() {
                o[row + cols.start..row + cols.end].fill(ignore_index);
            }
            if let Some(o) = valid_out.as_deref_mut() {
                o[row + cols.start..row + cols.end].fill(0.0);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rand_vec, to_f32};

    /// Two pixels, A = (0.2, 0.4, 0.6) and B = (0.8, 0.1, 0.5), as one [1, 3, 1, 2] image.
    const AB: [f32; 6] = [0.2, 0.8, 0.4, 0.1, 0.6, 0.5];
    const AB_SHAPE: Nchw = Nchw::new(1, 3, 1, 2);

    fn jitter(x: &[f32], shape: Nchw, d: JitterDraw) -> Vec<f32> {
        let mut y = vec![-1.0; x.len()];
        color_jitter_fwd(x, shape, &vec![d; shape.n], &mut y).unwrap();
        y
    }

    /// A draw that applies only the given factors (others at identity), in the given order.
    fn only(f: impl FnOnce(&mut JitterDraw)) -> JitterDraw {
        let mut d = JitterDraw {
            apply: true,
            ..JitterDraw::NONE
        };
        f(&mut d);
        d
    }

    fn assert_near(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "[{i}] got {g} want {w}\n{got:?}\n{want:?}"
            );
        }
    }

    /// A random RGB batch in [0, 1].
    fn batch(seed: u64, s: Nchw) -> Vec<f32> {
        to_f32(&rand_vec(seed, s.len(), 0.0, 1.0))
    }

    #[test]
    fn brightness_contrast_saturation_by_hand() {
        // Brightness 1.5: x·1.5, B's red 1.2 clamps to 1.
        let y = jitter(&AB, AB_SHAPE, only(|d| d.brightness = 1.5));
        assert_near(&y, &[0.3, 1.0, 0.6, 0.15, 0.9, 0.75], 1e-6);
        // Contrast 0.5: luma A = 0.0598 + 0.2348 + 0.0684 = 0.363, luma B = 0.2392 + 0.0587 +
        // 0.057 = 0.3549, mean 0.35895; y = 0.5·x + 0.5·0.35895.
        let y = jitter(&AB, AB_SHAPE, only(|d| d.contrast = 0.5));
        let want = AB.map(|v| 0.5 * v + 0.179475);
        assert_near(&y, &want, 1e-6);
        // Saturation 0: every channel is the pixel's luma. Saturation 2: 2x − luma, clamped.
        let y = jitter(&AB, AB_SHAPE, only(|d| d.saturation = 0.0));
        assert_near(&y, &[0.363, 0.3549, 0.363, 0.3549, 0.363, 0.3549], 1e-6);
        let y = jitter(&AB, AB_SHAPE, only(|d| d.saturation = 2.0));
        assert_near(&y, &[0.037, 1.0, 0.437, 0.0, 0.837, 0.6451], 1e-6);
    }

    #[test]
    fn hue_rotation_by_a_third_permutes_the_channels() {
        // +120° sends red to green: (r, g, b) → (b, r, g); −120° → (g, b, r). By hand for A:
        // max is blue, h = (4 + 0.5 − 1)/6 = 210°, s = 2/3, v = 0.6; 330° gives (0.6, 0.2, 0.4).
        let (h, s, v) = rgb_to_hsv(0.2, 0.4, 0.6);
        assert_near(&[h, s, v], &[210.0 / 360.0, 2.0 / 3.0, 0.6], 1e-6);
        let y = jitter(&AB, AB_SHAPE, only(|d| d.hue = 1.0 / 3.0));
        assert_near(&y, &[0.6, 0.5, 0.2, 0.8, 0.4, 0.1], 1e-6);
        let y = jitter(&AB, AB_SHAPE, only(|d| d.hue = -1.0 / 3.0));
        assert_near(&y, &[0.4, 0.1, 0.6, 0.5, 0.2, 0.8], 1e-6);
        // Grey pixels have no hue: unchanged by any shift.
        let grey = [0.3f32; 3];
        let y = jitter(&grey, Nchw::new(1, 3, 1, 1), only(|d| d.hue = 0.37));
        assert_near(&y, &grey, 1e-7);
    }

    #[test]
    fn hue_by_zero_and_by_half_twice_are_identities() {
        let s = Nchw::new(2, 3, 5, 7);
        let x = batch(1, s);
        // The kernel skips a zero shift, so that is exact; the HSV round trip itself is close.
        assert_eq!(jitter(&x, s, only(|d| d.hue = 0.0)), x);
        let plane = s.plane();
        for i in 0..plane {
            let (r, g, b) = (x[i], x[plane + i], x[2 * plane + i]);
            let (r0, g0, b0) = rotate_hue(r, g, b, 0.0);
            assert_near(&[r0, g0, b0], &[r, g, b], 1e-6);
        }
        for (a, b) in [(0.5f32, 0.5f32), (-0.5, -0.5), (0.5, -0.5)] {
            let once = jitter(&x, s, only(|d| d.hue = a));
            assert_ne!(once, x);
            let twice = jitter(&once, s, only(|d| d.hue = b));
            assert_near(&twice, &x, 1e-6);
        }
    }

    #[test]
    fn the_order_of_adjustments_matters_and_is_followed() {
        use JitterOp::*;
        let bc = only(|d| {
            d.brightness = 2.0;
            d.contrast = 0.5;
            d.order = [Brightness, Contrast, Saturation, Hue];
        });
        let cb = JitterDraw {
            order: [Contrast, Hue, Saturation, Brightness],
            ..bc
        };
        // Brightness first: A → (0.4, 0.8, 1), B → (1, 0.2, 1); lumas 0.7032, 0.5304, mean
        // 0.6168; then 0.5·x + 0.3084.
        let y = jitter(&AB, AB_SHAPE, bc);
        assert_near(&y, &[0.5084, 0.8084, 0.7084, 0.4084, 0.8084, 0.8084], 1e-6);
        // Contrast first (mean 0.35895), then ×2, B's red clamping at 1.
        let y = jitter(&AB, AB_SHAPE, cb);
        assert_near(
            &y,
            &[0.55895, 1.0, 0.75895, 0.45895, 0.95895, 0.85895],
            1e-6,
        );
    }

    #[test]
    fn jitter_is_per_sample_and_stays_in_the_unit_interval() {
        let s = Nchw::new(3, 3, 4, 6);
        let x = batch(2, s);
        let rng = Philox::new(3, 4);
        let params = ColorJitterParams {
            p: 1.0,
            brightness: 0.9,
            contrast: 0.9,
            saturation: 0.9,
            hue: 0.5,
        };
        let mut draws = draw_color_jitter(&rng, 3, &params).unwrap();
        draws[1].apply = false;
        let mut y = vec![0.0; s.len()];
        color_jitter_fwd(&x, s, &draws, &mut y).unwrap();
        assert!(y.iter().all(|v| (0.0..=1.0).contains(v)));
        let img = s.image();
        assert_eq!(y[img..2 * img], x[img..2 * img], "sample 1 is not applied");
        // Sample 2 alone, as a batch of one, gives the same image.
        let alone = jitter(&x[2 * img..], Nchw::new(1, 3, 4, 6), draws[2]);
        assert_eq!(y[2 * img..], alone[..]);
        assert_ne!(y[..img], x[..img]);
    }

    #[test]
    fn jitter_draws_follow_the_counter_layout() {
        let rng = Philox::new(17, 99);
        let params = ColorJitterParams {
            p: 0.8,
            brightness: 0.5,
            contrast: 0.4,
            saturation: 0.3,
            hue: 0.25,
        };
        let draws = draw_color_jitter(&rng, 5, &params).unwrap();
        for (i, d) in draws.iter().enumerate() {
            let u = |k: u64| rng.uniform_at(16 * i as u64 + k);
            assert_eq!(d.apply, u(0) < 0.8);
            assert_eq!(d.brightness, 0.5 + 1.0 * u(1));
            assert_eq!(d.contrast, 0.6 + (1.4 - 0.6) * u(2));
            assert_eq!(d.saturation, 0.7 + (1.3 - 0.7) * u(3));
            assert_eq!(d.hue, -0.25 + 0.5 * u(4));
            let mut order = JitterOp::ALL;
            order.swap(3, ((u(5) * 4.0) as usize).min(3));
            order.swap(2, ((u(6) * 3.0) as usize).min(2));
            order.swap(1, ((u(7) * 2.0) as usize).min(1));
            assert_eq!(d.order, order);
        }
        // Sample 0's draw does not depend on the batch size; sample 3 reads only its block.
        assert_eq!(draw_color_jitter(&rng, 1, &params).unwrap()[0], draws[0]);
        assert_eq!(draw_color_jitter(&rng, 4, &params).unwrap()[3], draws[3]);
        // Deterministic per stream, different across streams.
        assert_eq!(draw_color_jitter(&rng, 5, &params).unwrap(), draws);
        assert_ne!(
            draw_color_jitter(&Philox::new(17, 100), 5, &params).unwrap(),
            draws
        );
    }

    #[test]
    fn jitter_draws_cover_ranges_and_all_orders() {
        let rng = Philox::new(5, 6);
        let params = ColorJitterParams {
            p: 0.5,
            brightness: 1.5,
            contrast: 0.5,
            saturation: 0.0,
            hue: 0.1,
        };
        let draws = draw_color_jitter(&rng, 4800, &params).unwrap();
        let mut orders = std::collections::BTreeMap::new();
        for d in &draws {
            assert!((0.0..=2.5).contains(&d.brightness), "{d:?}");
            assert!((0.5..=1.5).contains(&d.contrast), "{d:?}");
            assert_eq!(d.saturation, 1.0, "strength 0 is the identity exactly");
            assert!((-0.1..=0.1).contains(&d.hue), "{d:?}");
            let mut sorted = d.order.map(|o| o as usize);
            *orders.entry(sorted).or_insert(0) += 1;
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3], "{d:?} is not a permutation");
        }
        // 24 permutations, 200 expected each.
        assert_eq!(orders.len(), 24);
        assert!(
            orders.values().all(|&c| (140..=260).contains(&c)),
            "{orders:?}"
        );
        let applied = draws.iter().filter(|d| d.apply).count();
        assert!((2200..=2600).contains(&applied), "{applied}");
        for p in [0.0, 1.0] {
            let d = draw_color_jitter(&rng, 200, &ColorJitterParams { p, ..params }).unwrap();
            assert!(d.iter().all(|d| d.apply == (p == 1.0)), "p = {p}");
        }
    }

    #[test]
    fn strength_zero_and_unapplied_samples_copy_exactly() {
        let s = Nchw::new(2, 3, 3, 4);
        let x = batch(3, s);
        let zero = ColorJitterParams {
            p: 1.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
        };
        let draws = draw_color_jitter(&Philox::new(1, 2), 2, &zero).unwrap();
        assert!(draws.iter().all(|d| d.apply));
        let mut y = vec![0.0; s.len()];
        color_jitter_fwd(&x, s, &draws, &mut y).unwrap();
        assert_eq!(y, x);
        let strong = ColorJitterParams {
            p: 0.0,
            brightness: 0.5,
            contrast: 0.5,
            saturation: 0.5,
            hue: 0.25,
        };
        let draws = draw_color_jitter(&Philox::new(1, 2), 2, &strong).unwrap();
        color_jitter_fwd(&x, s, &draws, &mut y).unwrap();
        assert_eq!(y, x);
    }

    #[test]
    fn grayscale_by_hand_and_by_draw() {
        let mut y = [0.0; 6];
        grayscale_fwd(&AB, AB_SHAPE, &[true], &mut y).unwrap();
        assert_near(&y, &[0.363, 0.3549, 0.363, 0.3549, 0.363, 0.3549], 1e-6);
        grayscale_fwd(&AB, AB_SHAPE, &[false], &mut y).unwrap();
        assert_eq!(y, AB);
        // White stays at most 1.
        let mut w = [0.0; 3];
        grayscale_fwd(&[1.0; 3], Nchw::new(1, 3, 1, 1), &[true], &mut w).unwrap();
        assert!(
            w.iter().all(|&v| (v - 1.0).abs() < 1e-6 && v <= 1.0),
            "{w:?}"
        );

        let rng = Philox::new(8, 8);
        let d = draw_grayscale(&rng, 2000, 0.2).unwrap();
        for (i, &a) in d.iter().enumerate().take(20) {
            assert_eq!(a, rng.uniform_at(16 * i as u64) < 0.2);
        }
        let rate = d.iter().filter(|&&a| a).count() as f64 / 2000.0;
        assert!((rate - 0.2).abs() < 0.03, "{rate}");
        assert_eq!(draw_grayscale(&rng, 3, 0.2).unwrap(), d[..3]);
        assert!(draw_grayscale(&rng, 50, 0.0).unwrap().iter().all(|&a| !a));
        assert!(draw_grayscale(&rng, 50, 1.0).unwrap().iter().all(|&a| a));
    }

    #[test]
    fn reflect_index_mirrors_without_repeating_the_edge() {
        let got: Vec<usize> = (-9..=13).map(|i| reflect_index(i, 5)).collect();
        // Period 8: … 1 0 1 2 3 4 3 2 1 0 1 …
        let want = [
            1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3,
        ];
        assert_eq!(got, want);
        assert!((-5..5).all(|i| reflect_index(i, 1) == 0));
        assert_eq!([reflect_index(-1, 2), reflect_index(2, 2)], [1, 0]);
    }

    #[test]
    fn gaussian_weights_are_normalised_and_gaussian() {
        assert_eq!(default_blur_kernel(2.0), 13);
        assert_eq!(default_blur_kernel(0.1), 3);
        let w = gaussian_weights(1.5, 9);
        assert_eq!(w.len(), 9);
        let sum: f64 = w.iter().map(|&v| v as f64).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        for j in 0..9 {
            assert_eq!(w[j], w[8 - j], "symmetric");
        }
        // w[r + 1] / w[r] = exp(−1/(2σ²)).
        let ratio = w[5] as f64 / w[4] as f64;
        assert!((ratio - (-1.0 / (2.0 * 1.5 * 1.5f64)).exp()).abs() < 1e-6);
        assert_eq!(gaussian_weights(0.7, 1), vec![1.0]);
    }

    fn blur(x: &[f32], s: Nchw, sigma: f32, kernel: usize) -> Vec<f32> {
        let d = vec![BlurDraw { apply: true, sigma }; s.n];
        let mut y = vec![-1.0; x.len()];
        gaussian_blur_fwd(x, s, &d, kernel, &mut y).unwrap();
        y
    }

    #[test]
    fn blur_keeps_constants_and_spreads_an_impulse_symmetrically() {
        let s = Nchw::new(1, 2, 6, 7);
        let y = blur(&vec![0.4; s.len()], s, 1.3, 9);
        assert_near(&y, &vec![0.4; s.len()], 1e-6);
        // An impulse at (3, 3) of a 7 × 7 image: the output is the outer product of the weights,
        // sums to 1 and is symmetric under flips and the transpose.
        let s = Nchw::new(1, 1, 7, 7);
        let mut x = vec![0.0; 49];
        x[3 * 7 + 3] = 1.0;
        let w = gaussian_weights(0.8, 5);
        let y = blur(&x, s, 0.8, 5);
        let sum: f32 = y.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        for r in 0..7 {
            for c in 0..7 {
                let at = |r: usize, c: usize| y[r * 7 + c];
                assert_eq!(at(r, c), at(6 - r, c));
                assert_eq!(at(r, c), at(r, 6 - c));
                assert_eq!(at(r, c), at(c, r));
                let (dr, dc) = (r as isize - 3, c as isize - 3);
                let want = if dr.abs() <= 2 && dc.abs() <= 2 {
                    w[(dr + 2) as usize] * w[(dc + 2) as usize]
                } else {
                    0.0
                };
                assert_eq!(at(r, c), want, "({r}, {c})");
            }
        }
    }

    #[test]
    fn blur_pass_matches_the_per_pixel_definition() {
        // The definition, one output at a time: Σ_j w_j · src[reflect(p + j − r)], j ascending.
        fn per_pixel(src: &[f32], h: usize, w: usize, wt: &[f32], horizontal: bool) -> Vec<f32> {
            let r = (wt.len() / 2) as isize;
            let mut dst = vec![0.0; src.len()];
            for (sp, dp) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
                for y in 0..h {
                    for x in 0..w {
                        let mut acc = 0f32;
                        for (j, &wj) in wt.iter().enumerate() {
                            let o = j as isize - r;
                            acc += wj
                                * if horizontal {
                                    sp[y * w + reflect_index(x as isize + o, w)]
                                } else {
                                    sp[reflect_index(y as isize + o, h) * w + x]
                                };
                        }
                        dp[y * w + x] = acc;
                    }
                }
            }
            dst
        }
        // Kernels wider than the image reflect more than once; 1-pixel axes read one value.
        for (planes, h, w, kernel) in [(3, 9, 13, 5), (2, 4, 3, 13), (1, 1, 7, 9), (2, 6, 1, 3)] {
            let x: Vec<f32> = crate::testing::rand_vec(11, planes * h * w, 0.0, 1.0)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let wt = gaussian_weights(1.7, kernel);
            for horizontal in [true, false] {
                let mut got = vec![f32::NAN; x.len()];
                blur_pass(&x, h, w, &wt, horizontal, &mut got);
                let want = per_pixel(&x, h, w, &wt, horizontal);
                // Bit for bit: the row-wise loops keep each output's order of taps.
                let (g, e): (Vec<u32>, Vec<u32>) = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a.to_bits(), b.to_bits()))
                    .unzip();
                assert_eq!(
                    g, e,
                    "{planes}×{h}×{w}, kernel {kernel}, horizontal {horizontal}"
                );
            }
        }
    }

    #[test]
    fn blur_reflects_at_the_border() {
        // One row [1, 0, 0, 0], kernel 3 with weights (a, b, a): x = 0 reads [x1, x0, x1] =
        // [0, 1, 0] → b; x = 1 reads [1, 0, 0] → a. The single-row vertical pass reads the row
        // three times, scaling by 2a + b (= 1 up to rounding).
        let w = gaussian_weights(1.0, 3);
        let (a, b) = (w[0], w[1]);
        let y = blur(&[1.0, 0.0, 0.0, 0.0], Nchw::new(1, 1, 1, 4), 1.0, 3);
        let k = a + b + a;
        assert_near(&y, &[b * k, a * k, 0.0, 0.0], 1e-7);
    }

    #[test]
    fn blur_draws_and_applies_per_sample() {
        let rng = Philox::new(2, 7);
        let params = BlurParams {
            p: 0.5,
            sigma_min: 0.1,
            sigma_max: 2.0,
        };
        let d = draw_gaussian_blur(&rng, 400, &params).unwrap();
        for (i, b) in d.iter().enumerate() {
            assert_eq!(b.apply, rng.uniform_at(16 * i as u64) < 0.5);
            assert_eq!(b.sigma, 0.1 + 1.9 * rng.uniform_at(16 * i as u64 + 1));
        }
        let applied = d.iter().filter(|b| b.apply).count();
        assert!((160..=240).contains(&applied), "{applied}");
        assert_eq!(draw_gaussian_blur(&rng, 1, &params).unwrap()[0], d[0]);

        let s = Nchw::new(2, 3, 5, 6);
        let x = batch(4, s);
        let draws = [
            BlurDraw {
                apply: false,
                sigma: 1.0,
            },
            BlurDraw {
                apply: true,
                sigma: 1.0,
            },
        ];
        let mut y = vec![0.0; s.len()];
        gaussian_blur_fwd(&x, s, &draws, 7, &mut y).unwrap();
        let img = s.image();
        assert_eq!(y[..img], x[..img]);
        assert_ne!(y[img..], x[img..]);
        assert!(y.iter().all(|v| (0.0..=1.0).contains(v)));
        for p in [0.0, 1.0] {
            let d = draw_gaussian_blur(&rng, 50, &BlurParams { p, ..params }).unwrap();
            assert!(d.iter().all(|b| b.apply == (p == 1.0)));
        }
    }

    #[test]
    fn cutout_sizes_in_pixels() {
        assert_eq!(CutoutSize::Side(0.5).pixels(10, 21), (5, 11));
        // √0.25 = 0.5 of each side; area 0.1 of 40 × 40: √0.1·40 = 12.65 → 13.
        assert_eq!(CutoutSize::Area(0.25).pixels(10, 20), (5, 10));
        assert_eq!(CutoutSize::Area(0.1).pixels(40, 40), (13, 13));
        assert_eq!(CutoutSize::Pixels(100, 100).pixels(513, 60), (100, 60));
        assert_eq!(CutoutSize::Side(1.0).pixels(7, 9), (7, 9));
    }

    #[test]
    fn cutout_boxes_follow_the_counters_and_clip_at_borders() {
        let rng = Philox::new(11, 12);
        let (h, w) = (32, 48);
        let area = 0.09f32;
        let draws = draw_cutout(&rng, 500, h, w, 0.5, CutoutSize::Area(area)).unwrap();
        let (bh, bw) = (10usize, 14usize); // round(0.3·32) = round(9.6), round(0.3·48) = round(14.4)
        let (mut clipped, mut full) = (0, 0);
        for (i, d) in draws.iter().enumerate() {
            let u = |k: u64| rng.uniform_at(16 * i as u64 + k) as f64;
            assert_eq!(d.apply, u(0) < 0.5);
            let (cy, cx) = ((u(1) * 32.0) as i64, (u(2) * 48.0) as i64);
            assert_eq!(d.top as i64, (cy - 5).max(0), "{d:?}");
            assert_eq!(d.bottom as i64, (cy + 5).min(32), "{d:?}");
            assert_eq!(d.left as i64, (cx - 7).max(0), "{d:?}");
            assert_eq!(d.right as i64, (cx + 7).min(48), "{d:?}");
            if d.area() == bh * bw {
                full += 1;
                // The requested area, up to one row and one column of rounding.
                let want = area as f64 * (h * w) as f64;
                let slack = (bh + bw + 1) as f64;
                assert!((d.area() as f64 - want).abs() <= slack, "{d:?}");
            } else {
                assert!(d.area() < bh * bw);
                clipped += 1;
            }
        }
        assert!(
            full > 100 && clipped > 100,
            "{full} full, {clipped} clipped"
        );
        assert_eq!(
            draw_cutout(&rng, 2, h, w, 0.5, CutoutSize::Area(area)).unwrap(),
            draws[..2]
        );
    }

    #[test]
    fn cutout_edits_image_label_and_valid_in_the_same_pixels() {
        let s = Nchw::new(3, 3, 9, 11);
        let x = to_f32(&rand_vec(6, s.len(), 0.1, 0.4));
        let pixels = s.n * s.plane();
        let label: Vec<i32> = (0..pixels as i32).map(|i| i % 21).collect();
        let valid = to_f32(&rand_vec(7, pixels, 0.5, 1.0));
        let draws = draw_cutout(&Philox::new(4, 4), 3, 9, 11, 1.0, CutoutSize::Side(0.5)).unwrap();
        let mut draws = draws;
        draws[1].apply = false;
        let fill = [0.5, 0.6, 0.7];
        let (mut y, mut lo, mut vo) = (vec![0.0; s.len()], vec![0; pixels], vec![0.0; pixels]);
        cutout_fwd(
            &x,
            Some(&label),
            Some(&valid),
            s,
            &draws,
            &fill,
            255,
            &mut y,
            Some(&mut lo),
            Some(&mut vo),
        )
        .unwrap();
        for n in 0..3 {
            let d = draws[n];
            let mut cut = 0;
            for r in 0..9 {
                for c in 0..11 {
                    let inside =
                        d.apply && (d.top..d.bottom).contains(&r) && (d.left..d.right).contains(&c);
                    let p = n * 99 + r * 11 + c;
                    for ch in 0..3 {
                        let i = s.at(n, ch, r, c);
                        let want = if inside { fill[ch] } else { x[i] };
                        assert_eq!(y[i], want, "image ({n}, {ch}, {r}, {c})");
                    }
                    assert_eq!(lo[p], if inside { 255 } else { label[p] });
                    assert_eq!(vo[p], if inside { 0.0 } else { valid[p] });
                    cut += inside as usize;
                }
            }
            assert_eq!(cut, if d.apply { d.area() } else { 0 });
        }
        assert!(draws[0].area() > 0 && draws[2].area() > 0);

        // Without `valid`, the validity map is ones outside the box; without label maps, only
        // the image and validity are written.
        let mut vo2 = vec![-1.0; pixels];
        cutout_fwd(
            &x,
            None,
            None,
            s,
            &draws,
            &fill,
            255,
            &mut y,
            None,
            Some(&mut vo2),
        )
        .unwrap();
        let want: Vec<f32> = vo
            .iter()
            .zip(&valid)
            .map(|(&o, &v)| if o == v { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(vo2, want);
    }

    #[test]
    fn cutout_p_zero_copies_and_bad_arguments_are_errors() {
        let s = Nchw::new(2, 1, 4, 4);
        let x = vec![0.3; 32];
        let draws = draw_cutout(&Philox::new(1, 1), 2, 4, 4, 0.0, CutoutSize::Side(0.5)).unwrap();
        let mut y = vec![0.0; 32];
        cutout_fwd(&x, None, None, s, &draws, &[0.0], 255, &mut y, None, None).unwrap();
        assert_eq!(y, x);

        let e = cutout_fwd(
            &x,
            None,
            None,
            s,
            &draws,
            &[0.0, 1.0],
            255,
            &mut y,
            None,
            None,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("`fill` has 2 elements, expected 1"));
        let label = vec![0; 32];
        let e = cutout_fwd(
            &x,
            Some(&label),
            None,
            s,
            &draws,
            &[0.0],
            255,
            &mut y,
            None,
            None,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("`label` and `label_out` must be given together"));
        let mut bad = draws.clone();
        bad[1].bottom = 5;
        let e = cutout_fwd(&x, None, None, s, &bad, &[0.0], 255, &mut y, None, None);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("not inside the 4 × 4 image"));
        let e = draw_cutout(&Philox::new(1, 1), 2, 4, 4, 0.5, CutoutSize::Area(1.5)).unwrap_err();
        assert!(
            e.to_string().contains("box fraction must be in (0, 1]"),
            "{e}"
        );
        let e = draw_cutout(&Philox::new(1, 1), 2, 4, 4, 1.5, CutoutSize::Area(0.5)).unwrap_err();
        assert!(
            e.to_string().contains("probability must be in [0, 1]"),
            "{e}"
        );
    }

    #[test]
    fn kernels_reject_bad_shapes_and_params() {
        let s = Nchw::new(1, 1, 2, 2);
        let x = [0.5f32; 4];
        let mut y = [0.0f32; 4];
        let e = color_jitter_fwd(&x, s, &[JitterDraw::NONE], &mut y).unwrap_err();
        assert!(
            e.to_string()
                .contains("expects RGB images (C = 3), got C = 1"),
            "{e}"
        );
        let e = grayscale_fwd(&x, s, &[true], &mut y).unwrap_err();
        assert!(e.to_string().contains("C = 1"), "{e}");
        let e = gaussian_blur_fwd(&x, s, &[], 3, &mut y).unwrap_err();
        assert!(
            e.to_string().contains("`draws` has 0 elements, expected 1"),
            "{e}"
        );
        let d = [BlurDraw {
            apply: true,
            sigma: 1.0,
        }];
        let e = gaussian_blur_fwd(&x, s, &d, 4, &mut y).unwrap_err();
        assert!(e.to_string().contains("kernel size must be odd"), "{e}");
        let rng = Philox::new(0, 0);
        let jp = ColorJitterParams {
            p: 1.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.6,
        };
        let e = draw_color_jitter(&rng, 1, &jp).unwrap_err();
        assert!(
            e.to_string().contains("hue strength must be in [0, 0.5]"),
            "{e}"
        );
        let e = draw_color_jitter(
            &rng,
            1,
            &ColorJitterParams {
                hue: 0.0,
                contrast: -1.0,
                ..jp
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("contrast strength must be finite and >= 0"),
            "{e}"
        );
        let bp = BlurParams {
            p: 0.5,
            sigma_min: 2.0,
            sigma_max: 1.0,
        };
        let e = draw_gaussian_blur(&rng, 1, &bp).unwrap_err();
        assert!(e.to_string().contains("sigma range"), "{e}");
        assert!(draw_grayscale(&rng, 1, -0.1).is_err());
    }
}
