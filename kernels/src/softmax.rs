//! Softmax over the class axis of a [N,K,H,W] map, forward and backward.
//!
//! At each pixel (n, y, x), with m = max_k x_k and s = Σ_k exp(x_k − m):
//!
//! * softmax: y_k = exp(x_k − m) / s; backward dx_k = y_k·(dy_k − Σ_j dy_j·y_j).
//!
//! This is `torch.softmax(x, dim=1)` and its autograd backward. Subtracting the per-pixel max
//! keeps exp from overflowing, so logits in the thousands are fine.
//!
//! Layout and speed: classes are H·W apart, so a per-pixel loop over k would stride through
//! memory. Instead each kernel walks one (n, k) plane at a time with the inner loop over the
//! contiguous H·W pixels, keeping per-pixel running max / sum in plane-sized scratch buffers.
//! Images are independent and run in parallel (rayon); nothing is reduced across images, so the
//! result does not depend on the thread count. The forward's exponentials go through
//! [`Real::exp_in_place`] a class plane at a time (for f32 the vectorised polynomial of
//! [`crate::exp`], within 1 ulp of libm's `expf`). The per-pixel sums over K run in `T`: K is small
//! (tens) and every term of s lies in (0, 1], so f32 loses nothing worth an f64 widen.
//!
//! * sharpen (of probabilities p, temperature T): y_k = p_k^(1/T) / Σ_j p_j^(1/T), computed as
//!   (p_k/m)^(1/T) / Σ_j (p_j/m)^(1/T) with m = max_j p_j so that small p with a large 1/T do not
//!   underflow to an all-zero pixel; negative p count as 0, and a pixel whose p are all ≤ 0
//!   gives y = 0 (PseudoSeg's `tf.pow(prob, 1/T)` then `/ reduce_sum`, which would give NaN
//!   there). No backward: the sharpened map is a pseudo-label target.
//!
//! Not here: log-softmax (no op uses it; the cross-entropy losses in `loss` fuse it), softmax
//! over any other axis, temperature of logits (scale the logits first), and masking.

use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;

/// Writes into `m` the per-pixel max over classes of one image `x` (K planes of `m.len()`).
fn plane_max<T: Real>(x: &[T], m: &mut [T]) {
    let plane = m.len();
    m.copy_from_slice(&x[..plane]);
    for xk in x.chunks_exact(plane).skip(1) {
        for (mv, &v) in m.iter_mut().zip(xk) {
            if v > *mv {
                *mv = v;
            }
        }
    }
}

/// Per-pixel max `m` and Σ_k exp(x_k − m) `s` over the K planes of one image `x`; `m` and `s`
/// have one plane's length. Shared with the fused losses in `loss`.
pub(crate) fn max_sumexp<T: Real>(x: &[T], m: &mut [T], s: &mut [T]) {
    plane_max(x, m);
    s.fill(T::zero());
    for xk in x.chunks_exact(m.len()) {
        for ((sv, &v), &mv) in s.iter_mut().zip(xk).zip(m.iter()) {
            *sv += (v - mv).exp();
        }
    }
}

/// y = softmax over K at every pixel. x, y: [N,K,H,W] (`shape.c` is K).
pub fn softmax_fwd<T: Real>(x: &[T], shape: Nchw, y: &mut [T]) -> Result<(), KernelError> {
    check_len("softmax_fwd", "x", x, shape.len())?;
    check_len("softmax_fwd", "y", y, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let plane = shape.plane();
    y.par_chunks_mut(shape.image())
        .zip(x.par_chunks(shape.image()))
        .for_each(|(yi, xi)| {
            let mut m = vec![T::zero(); plane];
            let mut s = vec![T::zero(); plane];
            plane_max(xi, &mut m);
            // x − m into y, e^ in place (vectorised for f32, see `Real::exp_in_place`), then
            // summed: three loops over contiguous pixels instead of one scalar `exp` call each.
            for (yk, xk) in yi.chunks_exact_mut(plane).zip(xi.chunks_exact(plane)) {
                for ((o, &v), &mv) in yk.iter_mut().zip(xk).zip(&m) {
                    *o = v - mv;
                }
                T::exp_in_place(yk);
                for (sv, &e) in s.iter_mut().zip(yk.iter()) {
                    *sv += e;
                }
            }
            // One division per pixel, then a multiply per element.
            for sv in s.iter_mut() {
                *sv = sv.recip();
            }
            for yk in yi.chunks_exact_mut(plane) {
                for (o, &r) in yk.iter_mut().zip(&s) {
                    *o *= r;
                }
            }
        });
    Ok(())
}

/// dx = y·(dy − Σ_k dy·y) at every pixel, from the softmax *output* y.
/// y, dy, dx: [N,K,H,W] (`shape.c` is K).
pub fn softmax_bwd<T: Real>(
    y: &[T],
    dy: &[T],
    shape: Nchw,
    dx: &mut [T],
) -> Result<(), KernelError> {
    check_len("softmax_bwd", "y", y, shape.len())?;
    check_len("softmax_bwd", "dy", dy, shape.len())?;
    check_len("softmax_bwd", "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let (plane, image) = (shape.plane(), shape.image());
    dx.par_chunks_mut(image)
        .zip(y.par_chunks(image))
        .zip(dy.par_chunks(image))
        .for_each(|((dxi, yi), dyi)| {
            let mut dot = vec![T::zero(); plane];
            for (yk, gk) in yi.chunks_exact(plane).zip(dyi.chunks_exact(plane)) {
                for ((d, &yv), &g) in dot.iter_mut().zip(yk).zip(gk) {
                    *d += yv * g;
                }
            }
            for ((ok, yk), gk) in dxi
                .chunks_exact_mut(plane)
                .zip(yi.chunks_exact(plane))
                .zip(dyi.chunks_exact(plane))
            {
                for (((o, &yv), &g), &d) in ok.iter_mut().zip(yk).zip(gk).zip(&dot) {
                    *o = yv * (g - d);
                }
            }
        });
    Ok(())
}

/// y = p^(1/T) / Σ_k p_k^(1/T) at every pixel (see the module docs: max-normalised, negative p
/// as 0, an all-zero pixel gives 0). p, y: [N,K,H,W] (`shape.c` is K); `temperature` finite > 0.
pub fn sharpen_fwd<T: Real>(
    p: &[T],
    shape: Nchw,
    temperature: T,
    y: &mut [T],
) -> Result<(), KernelError> {
    check_len("sharpen_fwd", "p", p, shape.len())?;
    check_len("sharpen_fwd", "y", y, shape.len())?;
    if !(temperature.is_finite() && temperature > T::zero()) {
        return Err(KernelError::Shape {
            kernel: "sharpen_fwd",
            reason: format!("the temperature must be finite and > 0, got {temperature:?}"),
        });
    }
    if shape.is_empty() {
        return Ok(());
    }
    let (plane, power) = (shape.plane(), temperature.recip());
    y.par_chunks_mut(shape.image())
        .zip(p.par_chunks(shape.image()))
        .for_each(|(yi, pi)| {
            let mut m = vec![T::zero(); plane];
            let mut s = vec![T::zero(); plane];
            plane_max(pi, &mut m);
            for (yk, pk) in yi.chunks_exact_mut(plane).zip(pi.chunks_exact(plane)) {
                for (((o, &v), &mv), sv) in yk.iter_mut().zip(pk).zip(&m).zip(s.iter_mut()) {
                    *o = if mv > T::zero() && v > T::zero() {
                        (v / mv).powf(power)
                    } else {
                        T::zero()
                    };
                    *sv += *o;
                }
            }
            for yk in yi.chunks_exact_mut(plane) {
                for (o, &sv) in yk.iter_mut().zip(&s) {
                    if sv > T::zero() {
                        *o /= sv;
                    }
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, rand_vec, to_f32};

    /// Per-pixel softmax with the obvious strided loop, as an independent oracle for the
    /// plane-wise kernels.
    fn naive_softmax(x: &[f64], s: Nchw) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for n in 0..s.n {
            for r in 0..s.h {
                for c in 0..s.w {
                    let m = (0..s.c)
                        .map(|k| x[s.at(n, k, r, c)])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = (0..s.c).map(|k| (x[s.at(n, k, r, c)] - m).exp()).sum();
                    for k in 0..s.c {
                        y[s.at(n, k, r, c)] = (x[s.at(n, k, r, c)] - m).exp() / z;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn hand_computed() {
        // [N=1,K=2,H=1,W=2]; pixel 0 has logits (0, ln 3), pixel 1 has (0, 0).
        // softmax: pixel 0 → (1/4, 3/4), pixel 1 → (1/2, 1/2). Layout is [k0p0, k0p1, k1p0, k1p1].
        let s = Nchw::new(1, 2, 1, 2);
        let x = [0.0, 0.0, 3f64.ln(), 0.0];
        let mut y = [0.0; 4];
        softmax_fwd(&x, s, &mut y).unwrap();
        assert_close("softmax", &y, &[0.25, 0.5, 0.75, 0.5], 1e-15, 0.0);

        // softmax_bwd at pixel 0 with dy = (1, 0): Σ dy·y = 1/4, so
        // dx = (1/4·(1 − 1/4), 3/4·(0 − 1/4)) = (3/16, −3/16). Pixel 1, dy = (2, 2): dx = 0.
        let yv = [0.25, 0.5, 0.75, 0.5];
        let dy = [1.0, 2.0, 0.0, 2.0];
        let mut dx = [9.0; 4];
        softmax_bwd(&yv, &dy, s, &mut dx).unwrap();
        assert_close("softmax_bwd", &dx, &[0.1875, 0.0, -0.1875, 0.0], 1e-15, 0.0);
    }

    #[test]
    fn huge_logits_are_stable() {
        // Logits (1000, 1001) and (−1000, −1001): exp would overflow/underflow without the max
        // shift; the result must equal softmax of (0, 1) and (0, −1).
        let s = Nchw::new(1, 2, 1, 2);
        let x = [1000.0f32, -1000.0, 1001.0, -1001.0];
        let mut y = [0f32; 4];
        softmax_fwd(&x, s, &mut y).unwrap();
        let e = 1f64.exp();
        let want = [
            1.0 / (1.0 + e),
            e / (1.0 + e),
            e / (1.0 + e),
            1.0 / (1.0 + e),
        ];
        assert_close("softmax", &y.map(f64::from), &want, 1e-6, 0.0);
    }

    #[test]
    fn matches_naive_per_pixel_loop_in_f32_and_f64() {
        let s = Nchw::new(2, 5, 7, 3);
        let x = rand_vec(3, s.len(), -6.0, 6.0);
        let want = naive_softmax(&x, s);
        let mut y = vec![0.0; s.len()];
        softmax_fwd(&x, s, &mut y).unwrap();
        assert_close("softmax f64", &y, &want, 1e-14, 1e-12);

        let mut y32 = vec![0f32; s.len()];
        softmax_fwd(&to_f32(&x), s, &mut y32).unwrap();
        let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
        assert_close("softmax f32", &y32, &want, 1e-6, 1e-5);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let s = Nchw::new(1, 2, 1, 2);
        let mut y = [0f32; 3];
        let e = softmax_fwd(&[0f32; 4], s, &mut y).unwrap_err();
        assert!(
            e.to_string()
                .contains("softmax_fwd: `y` has 3 elements, expected 4"),
            "{e}"
        );
        let mut dx = [0f32; 4];
        let e = softmax_bwd(&[0f32; 4], &[0f32; 5], s, &mut dx).unwrap_err();
        assert!(e.to_string().contains("softmax_bwd: `dy` has 5"), "{e}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s = Nchw::new(2, 3, 5, 3);
        let x = rand_vec(7, s.len(), -3.0, 3.0);
        gradcheck(
            "softmax",
            &[x],
            |i| {
                let mut y = vec![0.0; s.len()];
                softmax_fwd(&i[0], s, &mut y).unwrap();
                y
            },
            |i, dy| {
                let mut y = vec![0.0; s.len()];
                softmax_fwd(&i[0], s, &mut y).unwrap();
                let mut dx = vec![0.0; s.len()];
                softmax_bwd(&y, dy, s, &mut dx).unwrap();
                vec![dx]
            },
        );
    }

    #[test]
    fn sharpen_hand_computed() {
        // [N=1, K=2, H=1, W=3], class-major. Pixel 0: (1/4, 3/4), T = 1/2 → squares 1/16, 9/16
        // → (0.1, 0.9). Pixel 1: (0, 0) → 0. Pixel 2: (−1, 0.5): the negative counts as 0 →
        // (0, 1).
        let s = Nchw::new(1, 2, 1, 3);
        let p = [0.25f64, 0.0, -1.0, 0.75, 0.0, 0.5];
        let mut y = [f64::NAN; 6];
        sharpen_fwd(&p, s, 0.5, &mut y).unwrap();
        assert_close("sharpen", &y, &[0.1, 0.0, 0.0, 0.9, 0.0, 1.0], 1e-12, 0.0);
        // T = 1 renormalises: (1, 3) → (1/4, 3/4).
        sharpen_fwd(&[1.0, 3.0], Nchw::new(1, 2, 1, 1), 1.0, &mut y[..2]).unwrap();
        assert_close("sharpen T=1", &y[..2], &[0.25, 0.75], 1e-12, 0.0);
        // Tiny probabilities with a large power still sharpen instead of underflowing.
        let mut z = [0f32; 2];
        sharpen_fwd(&[1e-30f32, 2e-30], Nchw::new(1, 2, 1, 1), 0.05, &mut z).unwrap();
        assert!(z[1] > 0.99 && (z[0] + z[1] - 1.0).abs() < 1e-6, "{z:?}");
        let e = sharpen_fwd(&[1.0f32], Nchw::new(1, 1, 1, 1), 0.0, &mut z[..1]).unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
    }
}
