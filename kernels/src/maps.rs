//! Per-pixel maps that guide training rather than predict: what GCT (Ke et al., "Guided
//! Collaborative Training for Pixel-wise Semi-Supervised Learning", PixelSSL
//! `pixelssl/ssl_algorithm/ssl_gct.py`) builds from predictions, flaw maps and labels.
//!
//! * error_map_fwd: y = μ·Σ_k |onehot_k − p_k| per pixel (`FDGTGenerator`'s first step), with
//!   the one-hot of an ignored or out-of-range label all zeros (PixelSSL's
//!   `sslgct_prepare_task_gt_for_fdgt` multiplies it by `label != ignore_index`).
//! * separable_blur_fwd: a blur by a given symmetric 1-D filter along rows then columns, with
//!   reflect padding (`nn.ReflectionPad2d` + a depthwise conv with an outer-product kernel, as
//!   `GaussianBlurLayer`); no clamp, unlike the image augmentation `augment::gaussian_blur_fwd`.
//!   Its taps come from [`scipy_gaussian_taps`] (a host function) with [`opencv_sigma`].
//! * minmax_normalize_fwd: per sample, y = (x·g − m)/(M − m + eps) with m, M the sample's min
//!   and max and g = [M > min_peak] (`FlawmapHandler`, `FDGTGenerator`).
//! * select_by_key_fwd: per pixel, take `a` where key_b ≥ key_a, else `b` (`DCGTGenerator`).
//!
//! f32 only: none has a backward (the methods use these maps as constants), so there is no f64
//! gradient check to serve. Images run in parallel; every output element is written.
//!
//! Not here: the dilation between the two blurs of the flaw detector's target (it is
//! `pool::max_pool2d_fwd` with kernel 3, stride 1, padding 1), thresholds (`elementwise`).

use crate::augment::reflect_index;
use crate::{check_len, KernelError, Nchw};
use rayon::prelude::*;

/// y = μ·Σ_k |[label = k] − p_k| at each pixel; a label equal to `ignore_index` or outside
/// 0..K has an all-zero one-hot, so its pixel gives μ·Σ_k p_k.
///
/// * `probs`: [N, K, H, W] described by `shape`.
/// * `label`: [N, H, W].
/// * `y`: [N, 1, H, W]; overwritten.
pub fn error_map_fwd(
    probs: &[f32],
    shape: Nchw,
    label: &[i32],
    mu: f32,
    ignore_index: i32,
    y: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "error_map_fwd";
    check_len(K, "probs", probs, shape.len())?;
    check_len(K, "label", label, shape.n * shape.plane())?;
    check_len(K, "y", y, shape.n * shape.plane())?;
    let plane = shape.plane();
    if plane == 0 {
        return Ok(());
    }
    y.par_chunks_mut(plane)
        .zip(label.par_chunks(plane))
        .enumerate()
        .for_each(|(n, (yn, ln))| {
            let image = &probs[n * shape.image()..(n + 1) * shape.image()];
            yn.fill(0.0);
            // Classes in ascending order, as the reference sums over dim 1.
            for (k, pk) in image.chunks_exact(plane).enumerate() {
                for ((o, &p), &l) in yn.iter_mut().zip(pk).zip(ln) {
                    let hot = if l != ignore_index && l == k as i32 {
                        1.0
                    } else {
                        0.0
                    };
                    *o += (hot - p).abs();
                }
            }
            yn.iter_mut().for_each(|o| *o *= mu);
        });
    Ok(())
}

/// OpenCV's σ for a Gaussian of odd size `kernel`: 0.3·((kernel − 1)/2 − 1) + 0.8, the rule
/// PixelSSL's `GaussianBlurLayer._init_kernel` uses (1.1 for 5, 1.7 for 9, 2.9 for 17).
pub fn opencv_sigma(kernel: usize) -> f64 {
    0.3 * ((kernel as f64 - 1.0) * 0.5 - 1.0) + 0.8
}

/// The 1-D response of `scipy.ndimage.gaussian_filter1d(δ, σ)` to a centred delta of odd length
/// `kernel` (scipy's defaults: truncate 4.0, so radius ⌊4σ + 0.5⌋, and mode `reflect`, which
/// repeats the edge: the Gaussian's tails beyond the array fold back onto it). The 2-D kernel
/// PixelSSL builds with `gaussian_filter` on a centred 2-D delta is the outer product of this
/// with itself. The taps sum to 1 and are symmetric. Computed in f64, rounded once.
pub fn scipy_gaussian_taps(kernel: usize, sigma: f64) -> Vec<f32> {
    let radius = (4.0 * sigma + 0.5).floor().max(0.0) as isize;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|j| (-0.5 * (j as f64 / sigma).powi(2)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let n = kernel as isize;
    let centre = n / 2;
    // scipy's `reflect` (half-sample symmetric: d c b a | a b c d | d c b a), period 2n.
    let fold = |q: isize| {
        let m = q.rem_euclid(2 * n);
        if m < n {
            m
        } else {
            2 * n - 1 - m
        }
    };
    let mut taps = vec![0f64; kernel];
    for (p, tap) in taps.iter_mut().enumerate() {
        for (w, j) in weights.iter().zip(-radius..=radius) {
            // Correlation: out[p] = Σ_j w_j · δ[fold(p + j)].
            if fold(p as isize + j) == centre {
                *tap += w / total;
            }
        }
    }
    taps.into_iter().map(|t| t as f32).collect()
}

/// One 1-D pass over every plane: `dst[p] = Σ_j taps_j · src[reflect(p + j − r)]` along rows
/// (`horizontal`) or columns, summed in f32 for j ascending.
fn pass(src: &[f32], h: usize, w: usize, taps: &[f32], horizontal: bool, dst: &mut [f32]) {
    let r = (taps.len() / 2) as isize;
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for (j, &t) in taps.iter().enumerate() {
                let o = j as isize - r;
                let v = if horizontal {
                    src[y * w + reflect_index(x as isize + o, w)]
                } else {
                    src[reflect_index(y as isize + o, h) * w + x]
                };
                acc += t * v;
            }
            dst[y * w + x] = acc;
        }
    }
}

/// Blur of every plane by the separable filter `taps` ⊗ `taps`: a horizontal pass into a
/// temporary, then a vertical pass into `y`, both with reflect padding that does not repeat the
/// edge (`augment::reflect_index`, PyTorch's `ReflectionPad2d`). No clamp.
///
/// * `x`, `y`: [N, C, H, W] (`shape`).
/// * `taps`: odd length, ≥ 1 (e.g. [`scipy_gaussian_taps`]).
pub fn separable_blur_fwd(
    x: &[f32],
    shape: Nchw,
    taps: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "separable_blur_fwd";
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.len())?;
    if taps.len().is_multiple_of(2) {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("the filter must have an odd length, got {}", taps.len()),
        });
    }
    let plane = shape.plane();
    if plane == 0 || shape.is_empty() {
        return Ok(());
    }
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .for_each(|(yp, xp)| {
            let mut tmp = vec![0f32; plane];
            pass(xp, shape.h, shape.w, taps, true, &mut tmp);
            pass(&tmp, shape.h, shape.w, taps, false, yp);
        });
    Ok(())
}

/// Per sample (each run of `x.len() / n` elements): m = min, M = max, g = [M > min_peak] (1 when
/// `min_peak` is `None`), y = (x·g − m)/(M − m + eps). NaN propagates.
///
/// * `x`, `y`: [N, …], `n` samples of equal length.
pub fn minmax_normalize_fwd(
    x: &[f32],
    n: usize,
    min_peak: Option<f32>,
    eps: f32,
    y: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "minmax_normalize_fwd";
    check_len(K, "y", y, x.len())?;
    if n == 0 {
        return check_len(K, "x", x, 0);
    }
    if !x.len().is_multiple_of(n) {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("{} elements do not split into {n} samples", x.len()),
        });
    }
    let per = x.len() / n;
    if per == 0 {
        return Ok(());
    }
    y.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(yn, xn)| {
            let (lo, hi) = min_max(xn);
            let gate = match min_peak {
                Some(t) if hi > t => 1.0,
                Some(_) => 0.0,
                None => 1.0,
            };
            let span = hi - lo + eps;
            for (o, &v) in yn.iter_mut().zip(xn) {
                *o = (v * gate - lo) / span;
            }
        });
    Ok(())
}

/// (min, max) of a non-empty slice; a NaN anywhere makes both NaN (as `torch.max` reports it).
fn min_max(v: &[f32]) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &x in v {
        if x.is_nan() {
            return (f32::NAN, f32::NAN);
        }
        lo = lo.min(x);
        hi = hi.max(x);
    }
    (lo, hi)
}

/// Per pixel, m = [key_b ≥ key_a] (ties keep `a`; a NaN key keeps `b`): y = a where m, else b,
/// over every channel; `mask` = m.
///
/// * `a`, `b`, `y`: [N, C, H, W] (`shape`).
/// * `key_a`, `key_b`: [N, 1, H, W].
/// * `mask`: [N, H, W]; overwritten.
pub fn select_by_key_fwd(
    a: &[f32],
    b: &[f32],
    key_a: &[f32],
    key_b: &[f32],
    shape: Nchw,
    y: &mut [f32],
    mask: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "select_by_key_fwd";
    let pixels = shape.n * shape.plane();
    check_len(K, "a", a, shape.len())?;
    check_len(K, "b", b, shape.len())?;
    check_len(K, "key_a", key_a, pixels)?;
    check_len(K, "key_b", key_b, pixels)?;
    check_len(K, "y", y, shape.len())?;
    check_len(K, "mask", mask, pixels)?;
    for ((m, &ka), &kb) in mask.iter_mut().zip(key_a).zip(key_b) {
        *m = if kb >= ka { 1.0 } else { 0.0 };
    }
    let plane = shape.plane();
    if plane == 0 {
        return Ok(());
    }
    for (i, yp) in y.chunks_exact_mut(plane).enumerate() {
        let n = i / shape.c.max(1);
        let mp = &mask[n * plane..(n + 1) * plane];
        let (ap, bp) = (
            &a[i * plane..(i + 1) * plane],
            &b[i * plane..(i + 1) * plane],
        );
        for (((o, &m), &av), &bv) in yp.iter_mut().zip(mp).zip(ap).zip(bp) {
            *o = if m > 0.0 { av } else { bv };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn error_map_by_hand() {
        // K = 2, one image of 1×3: labels 0, 1, 255 (ignored); μ = 0.5.
        let probs = [0.8, 0.3, 0.6, /* class 1 */ 0.2, 0.7, 0.4];
        let mut y = [f32::NAN; 3];
        error_map_fwd(
            &probs,
            Nchw::new(1, 2, 1, 3),
            &[0, 1, 255],
            0.5,
            255,
            &mut y,
        )
        .unwrap();
        // px0: |1−0.8| + |0−0.2| = 0.4 → 0.2; px1: |0−0.3| + |1−0.7| = 0.6 → 0.3;
        // px2 (ignored): 0.6 + 0.4 = 1.0 → 0.5.
        close(&y, &[0.2, 0.3, 0.5], 1e-6);
    }

    #[test]
    fn opencv_sigma_and_scipy_taps_by_hand() {
        assert!((opencv_sigma(5) - 1.1).abs() < 1e-12);
        assert!((opencv_sigma(9) - 1.7).abs() < 1e-12);
        assert!((opencv_sigma(17) - 2.9).abs() < 1e-12);
        // k = 3, σ = 0.8: radius ⌊4·0.8 + 0.5⌋ = 3, w_j = exp(−j²/(2σ²)), the delta at 1, and
        // scipy's reflect folds q into 0..3 with period 6 (−1 → 0, −2 → 1, 3 → 2, 4 → 1):
        //   p = 0 collects j = 1 and j = −2 (fold(−2) = 1): w1 + w2;
        //   p = 1 collects j = 0 and j = ±3 (fold(−2) = fold(4) = 1): w0 + 2·w3;
        //   p = 2 mirrors p = 0.
        let w = |s: f64, j: f64| (-j * j / (2.0 * s * s)).exp();
        let total = w(0.8, 0.0) + 2.0 * (w(0.8, 1.0) + w(0.8, 2.0) + w(0.8, 3.0));
        let side = ((w(0.8, 1.0) + w(0.8, 2.0)) / total) as f32;
        let mid = ((w(0.8, 0.0) + 2.0 * w(0.8, 3.0)) / total) as f32;
        close(&scipy_gaussian_taps(3, 0.8), &[side, mid, side], 1e-7);
        // k = 5, σ = 1.1 (the 64-px flaw-map blur): radius 4, period 10 (−1 → 0, −3 → 2, 5 → 4,
        // 6 → 3): p = 0 gets w2 + w3, p = 1 gets w1 + w4, p = 2 gets w0 alone.
        let s = 1.1;
        let total = w(s, 0.0) + 2.0 * (1..=4).map(|j| w(s, j as f64)).sum::<f64>();
        let t0 = ((w(s, 2.0) + w(s, 3.0)) / total) as f32;
        let t1 = ((w(s, 1.0) + w(s, 4.0)) / total) as f32;
        let t2 = (w(s, 0.0) / total) as f32;
        let t = scipy_gaussian_taps(5, 1.1);
        close(&t, &[t0, t1, t2, t1, t0], 1e-7);
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{t:?}");
    }

    #[test]
    fn separable_blur_by_hand() {
        // Taps [0.25, 0.5, 0.25] on a 5×5 plane with a 1 in the centre: the outer product
        // around it (the reflected borders hold zeros).
        let mut x = [0f32; 25];
        x[12] = 1.0;
        let mut y = [f32::NAN; 25];
        separable_blur_fwd(&x, Nchw::new(1, 1, 5, 5), &[0.25, 0.5, 0.25], &mut y).unwrap();
        let t = [0.25f32, 0.5, 0.25];
        let mut want = [0f32; 25];
        for dy in 0..3 {
            for dx in 0..3 {
                want[(1 + dy) * 5 + 1 + dx] = t[dy] * t[dx];
            }
        }
        close(&y, &want, 1e-7);
        // On a 3×3 plane the centre's reflection (−1 → 1) lands on the centre itself: the
        // blur of the centred delta is 0.25 everywhere (row pass [0.5, 0.5, 0.5], then columns).
        let mut x = [0f32; 9];
        x[4] = 1.0;
        let mut y = [f32::NAN; 9];
        separable_blur_fwd(&x, Nchw::new(1, 1, 3, 3), &[0.25, 0.5, 0.25], &mut y).unwrap();
        close(&y, &[0.25; 9], 1e-7);
        // A 1 in the corner: reflect padding (−1 → 1) mirrors the 1's neighbour, not the 1.
        let mut x = [0f32; 9];
        x[0] = 1.0;
        separable_blur_fwd(&x, Nchw::new(1, 1, 3, 3), &[0.25, 0.5, 0.25], &mut y).unwrap();
        // Row pass of row 0: [0.5, 0.25, 0] (x = 0 reads −1 → 1 which is 0); col pass likewise.
        close(
            &y,
            &[0.25, 0.125, 0.0, 0.125, 0.0625, 0.0, 0.0, 0.0, 0.0],
            1e-7,
        );
        assert!(separable_blur_fwd(&x, Nchw::new(1, 1, 3, 3), &[0.5, 0.5], &mut y).is_err());
    }

    #[test]
    fn minmax_normalize_by_hand() {
        // Two samples of 3: [1, 2, 3] → [0, ½, 1]; [0.05, 0, 0.02] with min_peak 0.1 → gate 0:
        // (0 − 0)/(0.05 + eps) = 0 everywhere.
        let x = [1.0, 2.0, 3.0, 0.05, 0.0, 0.02];
        let mut y = [f32::NAN; 6];
        minmax_normalize_fwd(&x, 2, Some(0.1), 1e-9, &mut y).unwrap();
        close(&y, &[0.0, 0.5, 1.0, 0.0, 0.0, 0.0], 1e-6);
        // A gated map with a positive minimum becomes −m/(M − m): ≤ 0, as FlawmapHandler gives.
        let x = [0.02, 0.04];
        let mut y = [f32::NAN; 2];
        minmax_normalize_fwd(&x, 1, Some(0.1), 1e-9, &mut y).unwrap();
        close(&y, &[-1.0, -1.0], 1e-5);
        // Without min_peak: no gate.
        minmax_normalize_fwd(&x, 1, None, 1e-9, &mut y).unwrap();
        close(&y, &[0.0, 1.0], 1e-5);
    }

    #[test]
    fn select_by_key_by_hand() {
        // One image, C = 2, two pixels: key_b ≥ key_a at pixel 0 (tie), not at pixel 1.
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [10.0, 20.0, 30.0, 40.0];
        let (ka, kb) = ([0.5, 0.5], [0.5, 0.4]);
        let (mut y, mut m) = ([f32::NAN; 4], [f32::NAN; 2]);
        select_by_key_fwd(&a, &b, &ka, &kb, Nchw::new(1, 2, 1, 2), &mut y, &mut m).unwrap();
        assert_eq!(m, [1.0, 0.0]);
        assert_eq!(y, [1.0, 20.0, 3.0, 40.0]);
    }
}
