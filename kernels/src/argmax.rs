//! Argmax and max over the class axis of a [N,K,H,W] map: the label / confidence pair that
//! pseudo-labelling reads off a teacher's probabilities, and the backward that routes a gradient
//! on the max value back to the winning class.
//!
//! * argmax_fwd: idx = argmax_k x_k at each pixel (`torch.argmax(x, dim=1)`).
//! * max_fwd: (values, idx) = max over k in one pass (`torch.max(x, dim=1)`).
//! * max_bwd: dx_k = dy if k == idx else 0 (the autograd backward of `torch.max(x, dim=1)`).
//!
//! Ties: the first (lowest k) maximum wins, as in torch. NaN counts as larger than any number,
//! so a pixel with a NaN reports the first NaN and its index, again as torch does; this keeps a
//! diverged teacher visible instead of silently labelling it.
//!
//! Layout: each kernel walks one (n, k) plane at a time with the inner loop over contiguous H·W,
//! keeping the running best value and index in plane-sized buffers; images run in parallel.
//! Labels are `i32` (the label-map type of the losses).
//!
//! Not here: top-k, thresholding the confidence (an element-wise op on `values`), argmax over
//! any other axis.

use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;

/// Validates the shared arguments: K ≥ 1 unless the map is empty.
fn check_classes(kernel: &'static str, shape: Nchw) -> Result<(), KernelError> {
    if shape.c == 0 && shape.n * shape.plane() > 0 {
        return Err(KernelError::Shape {
            kernel,
            reason: "max over K = 0 classes is undefined".into(),
        });
    }
    Ok(())
}

/// Running max over the K planes of one image `x`; writes the winner's value and index per pixel.
fn image_max<T: Real>(x: &[T], best: &mut [T], idx: &mut [i32]) {
    let plane = best.len();
    best.copy_from_slice(&x[..plane]);
    idx.fill(0);
    for (k, xk) in x.chunks_exact(plane).enumerate().skip(1) {
        for ((b, i), &v) in best.iter_mut().zip(idx.iter_mut()).zip(xk) {
            // Strict `>` keeps the first maximum; the NaN clause makes the first NaN win and stay.
            if v > *b || (v.is_nan() && !b.is_nan()) {
                *b = v;
                *i = k as i32;
            }
        }
    }
}

/// idx = index of the largest class at every pixel; first maximum wins on ties.
/// x: [N,K,H,W] (`shape.c` is K); idx: [N,H,W].
pub fn argmax_fwd<T: Real>(x: &[T], shape: Nchw, idx: &mut [i32]) -> Result<(), KernelError> {
    check_len("argmax_fwd", "x", x, shape.len())?;
    check_len("argmax_fwd", "idx", idx, shape.n * shape.plane())?;
    check_classes("argmax_fwd", shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let plane = shape.plane();
    idx.par_chunks_mut(plane)
        .zip(x.par_chunks(shape.image()))
        .for_each(|(ii, xi)| {
            let mut best = vec![T::zero(); plane];
            image_max(xi, &mut best, ii);
        });
    Ok(())
}

/// values = max over K, idx = its class (first maximum wins), in one pass: the confidence and
/// label of a pseudo-label. x: [N,K,H,W] (`shape.c` is K); values, idx: [N,H,W].
pub fn max_fwd<T: Real>(
    x: &[T],
    shape: Nchw,
    values: &mut [T],
    idx: &mut [i32],
) -> Result<(), KernelError> {
    let pixels = shape.n * shape.plane();
    check_len("max_fwd", "x", x, shape.len())?;
    check_len("max_fwd", "values", values, pixels)?;
    check_len("max_fwd", "idx", idx, pixels)?;
    check_classes("max_fwd", shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let plane = shape.plane();
    values
        .par_chunks_mut(plane)
        .zip(idx.par_chunks_mut(plane))
        .zip(x.par_chunks(shape.image()))
        .for_each(|((vi, ii), xi)| image_max(xi, vi, ii));
    Ok(())
}

/// dx[n, idx, y, x] = dy[n, y, x], 0 for every other class: the gradient of `max_fwd`'s values.
/// dy, idx: [N,H,W]; dx: [N,K,H,W] (`shape.c` is K), overwritten. An index outside [0, K) is a
/// `KernelError::Shape` naming the pixel.
pub fn max_bwd<T: Real>(
    dy: &[T],
    idx: &[i32],
    shape: Nchw,
    dx: &mut [T],
) -> Result<(), KernelError> {
    let pixels = shape.n * shape.plane();
    check_len("max_bwd", "dy", dy, pixels)?;
    check_len("max_bwd", "idx", idx, pixels)?;
    check_len("max_bwd", "dx", dx, shape.len())?;
    let plane = shape.plane();
    if let Some(p) = idx.iter().position(|&i| i < 0 || i as usize >= shape.c) {
        let (n, y, x) = (p / plane, (p % plane) / shape.w, p % shape.w);
        return Err(KernelError::Shape {
            kernel: "max_bwd",
            reason: format!(
                "idx at pixel (n={n}, y={y}, x={x}) is {}, outside [0, {})",
                idx[p], shape.c
            ),
        });
    }
    if shape.is_empty() {
        return Ok(());
    }
    dx.par_chunks_mut(shape.image())
        .zip(dy.par_chunks(plane))
        .zip(idx.par_chunks(plane))
        .for_each(|((dxi, gi), ii)| {
            for (k, dk) in dxi.chunks_exact_mut(plane).enumerate() {
                let k = k as i32;
                for ((o, &g), &i) in dk.iter_mut().zip(gi).zip(ii) {
                    *o = if i == k { g } else { T::zero() };
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gradcheck, rand_vec};

    #[test]
    fn hand_computed_with_ties() {
        // [N=1,K=3,H=1,W=4]; per pixel the classes (k0, k1, k2) are
        //   p0: (1, 1, 0)  tie at the top → 0
        //   p1: (0, 2, 2)  tie at the top → 1
        //   p2: (−1, −3, −0.5)            → 2
        //   p3: (5, 5, 5)  all equal      → 0
        let s = Nchw::new(1, 3, 1, 4);
        let x = [
            1.0f32, 0.0, -1.0, 5.0, 1.0, 2.0, -3.0, 5.0, 0.0, 2.0, -0.5, 5.0,
        ];
        let mut idx = [9i32; 4];
        argmax_fwd(&x, s, &mut idx).unwrap();
        assert_eq!(idx, [0, 1, 2, 0]);
        let mut v = [0f32; 4];
        let mut idx = [9i32; 4];
        max_fwd(&x, s, &mut v, &mut idx).unwrap();
        assert_eq!(v, [1.0, 2.0, -0.5, 5.0]);
        assert_eq!(idx, [0, 1, 2, 0]);

        // Route dy = (1, 2, 3, 4) to those classes; everything else is overwritten with 0.
        let mut dx = [7f32; 12];
        max_bwd(&[1.0, 2.0, 3.0, 4.0], &idx, s, &mut dx).unwrap();
        assert_eq!(
            dx,
            [1.0, 0.0, 0.0, 4.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0]
        );
    }

    #[test]
    fn nan_wins_like_torch() {
        // [N=1,K=3,H=1,W=2]: p0 = (1, NaN, NaN) → first NaN, index 1; p1 = (NaN, 9, 1) → 0.
        let s = Nchw::new(1, 3, 1, 2);
        let x = [1.0f64, f64::NAN, f64::NAN, 9.0, f64::NAN, 1.0];
        let mut v = [0.0; 2];
        let mut idx = [9; 2];
        max_fwd(&x, s, &mut v, &mut idx).unwrap();
        assert_eq!(idx, [1, 0]);
        assert!(v[0].is_nan() && v[1].is_nan());
    }

    #[test]
    fn multi_image_indexing() {
        // [N=2,K=2,H=1,W=1]: image 0 = (3, 4) → 1, image 1 = (6, 5) → 0.
        let s = Nchw::new(2, 2, 1, 1);
        let mut idx = [9; 2];
        argmax_fwd(&[3.0f32, 4.0, 6.0, 5.0], s, &mut idx).unwrap();
        assert_eq!(idx, [1, 0]);
    }

    #[test]
    fn errors() {
        let s = Nchw::new(1, 2, 1, 2);
        let mut idx = [0i32; 3];
        let e = argmax_fwd(&[0f32; 4], s, &mut idx).unwrap_err();
        assert!(
            e.to_string()
                .contains("argmax_fwd: `idx` has 3 elements, expected 2"),
            "{e}"
        );

        let mut dx = [0f32; 4];
        let e = max_bwd(&[1f32; 2], &[0, 2], s, &mut dx).unwrap_err();
        assert!(
            e.to_string()
                .contains("idx at pixel (n=0, y=0, x=1) is 2, outside [0, 2)"),
            "{e}"
        );

        let mut v = [0f32; 1];
        let mut idx = [0i32; 1];
        let e = max_fwd(&[0f32; 0], Nchw::new(1, 0, 1, 1), &mut v, &mut idx).unwrap_err();
        assert!(e.to_string().contains("K = 0"), "{e}");
    }

    #[test]
    fn max_gradient_matches_finite_differences() {
        let s = Nchw::new(2, 3, 5, 3);
        let x = rand_vec(11, s.len(), -1.0, 1.0);
        // The check is only valid where the argmax cannot flip under a ±1e-6 step.
        for n in 0..s.n {
            for p in 0..s.plane() {
                let mut col: Vec<f64> = (0..s.c).map(|k| x[s.at(n, k, 0, 0) + p]).collect();
                col.sort_by(|a, b| b.total_cmp(a));
                assert!(col[0] - col[1] > 1e-4, "near-tie at n={n} p={p}");
            }
        }
        let pixels = s.n * s.plane();
        gradcheck(
            "max",
            &[x],
            |i| {
                let mut v = vec![0.0; pixels];
                let mut idx = vec![0; pixels];
                max_fwd(&i[0], s, &mut v, &mut idx).unwrap();
                v
            },
            |i, dy| {
                let mut v = vec![0.0; pixels];
                let mut idx = vec![0; pixels];
                max_fwd(&i[0], s, &mut v, &mut idx).unwrap();
                let mut dx = vec![0.0; s.len()];
                max_bwd(dy, &idx, s, &mut dx).unwrap();
                vec![dx]
            },
        );
    }
}
