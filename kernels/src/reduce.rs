//! Reductions: the mean over all elements (`torch.mean(x)`) with its backward, the inner product
//! `torch.dot(a, b)` (Σ a·b: the gradient of a scalar factor), and the mean over the channel
//! axis (`torch.mean(x, dim=1, keepdim=True)`, forward only: feature-drop's attention map, which
//! takes no gradient).
//!
//! Formulas: `mean = Σᵢ xᵢ / len`; its backward fills `dx` with `dy / len`. Per channel:
//! `y[n, 0, h, w] = (1/C)·Σ_c x[n, c, h, w]`.
//!
//! Every sum accumulates in f64 and rounds to `T` once at the end, so an f32 loss or channel
//! mean does not drift with the element count (PyTorch's CPU sum uses cascade summation in the
//! input type instead; results agree to f32 rounding). An empty dot product is 0; a mean over
//! zero elements (or zero channels) is an error rather than PyTorch's NaN, since it always means
//! an upstream shape bug here.
//!
//! Also the per-row L2 normalisation [`l2_normalize_fwd`] (a reduction per row, then a scale):
//! the unit directions of VAT.
//!
//! Per-plane normalisation by the maximum (`cam_normalize_fwd`, PseudoSeg's class activation maps,
//! googleinterns/wss core/train_utils_core.py `compute_cam_v2`): x = ReLU(scores)·ℓ with ℓ the
//! per-(image, class) label, m = max over H·W of x, y = [m > 0]·x / max(m, 1e-5)
//! (`_div_maybe_zero`). No backward: the maps are stop-gradient seeds.
//!
//! Not here: plain sums (`sum`, `sum_channels`) and the channel mean's backward (no op uses
//! them), per-plane spatial means over H·W (that is `global_avg_pool` in `pool.rs`), arbitrary
//! axes, keepdim variants, or max/min reductions.

use crate::{check_len, KernelError, Nchw, Real};

/// Σ of a slice, accumulated in f64.
fn sum_f64<T: Real>(x: &[T]) -> f64 {
    x.iter().map(|v| v.f64()).sum()
}

/// The error for a mean over nothing.
fn empty_mean(kernel: &'static str, what: &str) -> KernelError {
    KernelError::Shape {
        kernel,
        reason: format!("mean over zero {what} is undefined"),
    }
}

/// Inner product Σᵢ aᵢ·bᵢ, accumulated in f64; 0 for empty slices. Its backward needs no kernel
/// of its own: d/da = dy·b, d/db = dy·a (`elementwise::scale_fwd`).
///
/// * `a`, `b`: any shape, flattened, same length.
pub fn dot_fwd<T: Real>(a: &[T], b: &[T]) -> Result<T, KernelError> {
    check_len("dot_fwd", "b", b, a.len())?;
    Ok(T::of(a.iter().zip(b).map(|(u, v)| u.f64() * v.f64()).sum()))
}

/// Mean of all elements, accumulated in f64. Errors on an empty slice.
///
/// * `x`: any shape, flattened.
pub fn mean_fwd<T: Real>(x: &[T]) -> Result<T, KernelError> {
    if x.is_empty() {
        return Err(empty_mean("mean_fwd", "elements"));
    }
    Ok(T::of(sum_f64(x) / x.len() as f64))
}

/// Backward of [`mean_fwd`]: every `dx[i] = dy / len(dx)`. Errors on an empty `dx`.
///
/// * `dx`: the shape of the forward's `x`.
pub fn mean_bwd<T: Real>(dy: T, dx: &mut [T]) -> Result<(), KernelError> {
    if dx.is_empty() {
        return Err(empty_mean("mean_bwd", "elements"));
    }
    dx.fill(T::of(dy.f64() / dx.len() as f64));
    Ok(())
}

/// Mean over channels: `y[n, 0, h, w] = (1/C)·Σ_c x[n, c, h, w]`, accumulated in f64. Errors
/// when C = 0.
///
/// * `x`: [N, C, H, W] (`shape`).
/// * `y`: [N, 1, H, W].
pub fn mean_channels_fwd<T: Real>(x: &[T], shape: Nchw, y: &mut [T]) -> Result<(), KernelError> {
    const K: &str = "mean_channels_fwd";
    if shape.c == 0 {
        return Err(empty_mean(K, "channels"));
    }
    let hw = shape.plane();
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.n * hw)?;
    if hw == 0 {
        return Ok(());
    }
    let scale = 1.0 / shape.c as f64;
    // Walking planes contiguously into an f64 row keeps the reads sequential.
    let mut acc = vec![0f64; hw];
    for (n, out) in y.chunks_exact_mut(hw).enumerate() {
        acc.fill(0.0);
        for c in 0..shape.c {
            let base = (n * shape.c + c) * hw;
            for (a, v) in acc.iter_mut().zip(&x[base..base + hw]) {
                *a += v.f64();
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = T::of(a * scale);
        }
    }
    Ok(())
}

/// Per-row L2 normalisation, `scale · x / (‖x‖₂ + eps)` over each of `rows` equal rows (one
/// row per sample: CCT's `_l2_normalize`, `d / (torch.norm(d.view(N, -1), dim=1) + 1e-8)`).
/// The norm accumulates in f64; the factor scale/(‖x‖ + eps) is formed in f64 and each element
/// rounds once. A zero row stays zero (also with eps = 0).
///
/// * `x`, `y`: [rows, len / rows], flattened; `x.len()` must divide into `rows` (rows = 0 only
///   for an empty slice).
pub fn l2_normalize_fwd<T: Real>(
    x: &[T],
    rows: usize,
    scale: f64,
    eps: f64,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "l2_normalize_fwd";
    check_len(K, "y", y, x.len())?;
    if rows == 0 || !x.len().is_multiple_of(rows) {
        if x.is_empty() {
            return Ok(());
        }
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("{} elements do not split into {rows} equal rows", x.len()),
        });
    }
    let per = x.len() / rows;
    if per == 0 {
        return Ok(());
    }
    for (xr, yr) in x.chunks_exact(per).zip(y.chunks_exact_mut(per)) {
        let norm = xr.iter().map(|v| v.f64() * v.f64()).sum::<f64>().sqrt();
        // A zero row with eps = 0 would be 0/0: it stays zero instead.
        let factor = if norm + eps == 0.0 {
            0.0
        } else {
            scale / (norm + eps)
        };
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = T::of(v.f64() * factor);
        }
    }
    Ok(())
}

/// The floor of the maximum a map is divided by (`_div_maybe_zero`'s `tf.maximum(1e-5, ·)`).
const CAM_MAX_FLOOR: f64 = 1e-5;

/// Class activation maps normalised to [0, 1] per (image, class) plane: x = max(scores, 0)·ℓ,
/// y = x / max(m, 1e-5) where m = max_hw x > 0, else 0. scores, y: [N,C,H,W] (`shape`);
/// labels: [N,C] (one factor per plane, usually 0 or 1).
pub fn cam_normalize_fwd<T: Real>(
    scores: &[T],
    labels: &[T],
    shape: Nchw,
    y: &mut [T],
) -> Result<(), KernelError> {
    check_len("cam_normalize_fwd", "scores", scores, shape.len())?;
    check_len("cam_normalize_fwd", "labels", labels, shape.n * shape.c)?;
    check_len("cam_normalize_fwd", "y", y, shape.len())?;
    let plane = shape.plane();
    if plane == 0 {
        return Ok(());
    }
    for ((yp, sp), &l) in y
        .chunks_exact_mut(plane)
        .zip(scores.chunks_exact(plane))
        .zip(labels)
    {
        let mut m = T::zero();
        for (o, &v) in yp.iter_mut().zip(sp) {
            *o = v.max(T::zero()) * l;
            if *o > m {
                m = *o;
            }
        }
        if m > T::zero() {
            let inv = m.max(T::of(CAM_MAX_FLOOR)).recip();
            for o in yp.iter_mut() {
                *o *= inv;
            }
        } else {
            yp.fill(T::zero());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, rand_vec};

    #[test]
    fn l2_normalize_rows_by_hand() {
        // Rows (3, 4) and (0, 0): norms 5 and 0.
        let mut y = [0f32; 4];
        l2_normalize_fwd(&[3.0f32, 4.0, 0.0, 0.0], 2, 2.0, 0.0, &mut y).unwrap();
        assert_eq!(y, [1.2, 1.6, 0.0, 0.0]);
        l2_normalize_fwd(&[3.0f32, 4.0, 0.0, 0.0], 2, 1.0, 1.0, &mut y).unwrap();
        assert_eq!(y, [0.5, 4.0 / 6.0, 0.0, 0.0]);
        let e = l2_normalize_fwd(&[1.0f32; 5], 2, 1.0, 0.0, &mut [0f32; 5]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "l2_normalize_fwd: 5 elements do not split into 2 equal rows"
        );
    }

    #[test]
    fn hand_computed_totals() {
        // 1 + 2 + 3 + 4 + 5 − 3 = 12; mean 12/6 = 2. Backward: dy/6 = 0.5 for dy = 3.
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, -3.0];
        assert_eq!(mean_fwd(&x).unwrap(), 2.0);
        let mut dx = [0f32; 6];
        mean_bwd(3.0, &mut dx).unwrap();
        assert_eq!(dx, [0.5; 6]);
        // 1·2 + 2·(−1) + 3·0.5 + 4·0 + 5·1 + (−3)·2 = 0.5.
        let b = [2.0f32, -1.0, 0.5, 0.0, 1.0, 2.0];
        assert_eq!(dot_fwd(&x, &b).unwrap(), 0.5);
        let e = dot_fwd(&x, &b[1..]).unwrap_err();
        assert!(
            e.to_string()
                .contains("dot_fwd: `b` has 5 elements, expected 6"),
            "{e}"
        );
    }

    #[test]
    fn accumulates_in_f64() {
        // In f32, 1e8 + 1 rounds back to 1e8, so a naive f32 sum of [1e8, 1, −1e8] is 0.
        let x = [1e8f32, 1.0, -1e8];
        assert_eq!(mean_fwd(&x).unwrap(), 1.0 / 3.0);
        let s = Nchw::new(1, 3, 1, 1);
        let mut y = [0f32];
        mean_channels_fwd(&x, s, &mut y).unwrap();
        assert_eq!(y, [1.0 / 3.0]);
    }

    #[test]
    fn hand_computed_channels() {
        // N = 2, C = 3, H = 1, W = 2; x[n, c, 0, w] = 10n + c + w/2 (so channel sums differ).
        //   n = 0: w = 0: 0 + 1 + 2 = 3;      w = 1: 0.5 + 1.5 + 2.5 = 4.5
        //   n = 1: w = 0: 10 + 11 + 12 = 33;  w = 1: 34.5
        // Means: the sums / 3.
        let s = Nchw::new(2, 3, 1, 2);
        let x: Vec<f64> = (0..s.len())
            .map(|i| {
                let (n, c, w) = (i / 6, (i / 2) % 3, i % 2);
                10.0 * n as f64 + c as f64 + 0.5 * w as f64
            })
            .collect();
        let mut y = [0f64; 4];
        mean_channels_fwd(&x, s, &mut y).unwrap();
        assert_close("mean", &y, &[1.0, 1.5, 11.0, 11.5], 1e-15, 0.0);
    }

    #[test]
    fn empty_inputs() {
        let e: [f32; 0] = [];
        assert_eq!(dot_fwd(&e, &e).unwrap(), 0.0);
        let err = mean_fwd(&e).unwrap_err();
        assert!(
            err.to_string()
                .contains("mean_fwd: mean over zero elements"),
            "{err}"
        );
        let mut dx: [f32; 0] = [];
        assert!(mean_bwd(1.0, &mut dx).is_err());
        // C = 0: an error. H·W = 0: nothing to do, but still valid.
        let s = Nchw::new(2, 0, 2, 2);
        let mut y = [7f32; 8];
        let err = mean_channels_fwd(&e, s, &mut y).unwrap_err();
        assert!(err.to_string().contains("zero channels"), "{err}");
        let s = Nchw::new(2, 3, 0, 4);
        let mut y: [f32; 0] = [];
        assert!(mean_channels_fwd(&e, s, &mut y).is_ok());
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = rand_vec(1, 37, -1.0, 1.0);
        let b = rand_vec(3, 37, -1.0, 1.0);
        gradcheck(
            "dot",
            &[x.clone(), b],
            |i| vec![dot_fwd(&i[0], &i[1]).unwrap()],
            |i, dy| {
                let scaled = |v: &[f64]| v.iter().map(|u| dy[0] * u).collect();
                vec![scaled(&i[1]), scaled(&i[0])]
            },
        );
        gradcheck(
            "mean",
            &[x],
            |i| vec![mean_fwd(&i[0]).unwrap()],
            |i, dy| {
                let mut dx = vec![0.0; i[0].len()];
                mean_bwd(dy[0], &mut dx).unwrap();
                vec![dx]
            },
        );
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let s = Nchw::new(2, 3, 2, 2);
        let x = vec![0f32; s.len()];
        let mut y = vec![0f32; 8];
        let mut short = vec![0f32; 7];
        let e = mean_channels_fwd(&x[1..], s, &mut y).unwrap_err();
        assert!(
            e.to_string()
                .contains("mean_channels_fwd: `x` has 23 elements, expected 24"),
            "{e}"
        );
        let e = mean_channels_fwd(&x, s, &mut short).unwrap_err();
        assert!(
            e.to_string()
                .contains("mean_channels_fwd: `y` has 7 elements, expected 8"),
            "{e}"
        );
    }

    #[test]
    fn cam_normalize_hand_computed() {
        // [N=1, C=3, H=1, W=3]. Class 0: (−1, 2, 4), label 1 → ReLU (0, 2, 4) / 4. Class 1:
        // (5, 1, 0), label 0 → 0. Class 2: (−3, −1, 0), label 1 → all ≤ 0 → 0. The floor: a
        // maximum of 1e-6 divides by 1e-5.
        let s = Nchw::new(1, 3, 1, 3);
        let scores = [-1.0f64, 2.0, 4.0, 5.0, 1.0, 0.0, -3.0, -1.0, 0.0];
        let mut y = [f64::NAN; 9];
        cam_normalize_fwd(&scores, &[1.0, 0.0, 1.0], s, &mut y).unwrap();
        let want = [0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_close("cam_normalize", &y, &want, 0.0, 0.0);
        let mut z = [0.0f64; 2];
        cam_normalize_fwd(&[1e-6, 5e-7], &[1.0], Nchw::new(1, 1, 1, 2), &mut z).unwrap();
        assert_close("cam_normalize floor", &z, &[0.1, 0.05], 1e-12, 0.0);
        let e = cam_normalize_fwd(&scores, &[1.0], s, &mut y).unwrap_err();
        assert!(e.to_string().contains("`labels`"), "{e}");
    }
}
