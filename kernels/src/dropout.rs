//! Inverted dropout, element-wise (`torch.nn.functional.dropout`) and channel-wise
//! (`torch.nn.functional.dropout2d`), forward and backward, drawing from the counter-based
//! [`Philox`] stream so every element's decision is a pure function of (seed, stream, index).
//!
//! Element-wise: element `i` is dropped iff `rng.bernoulli_at(offset + i, p)`; the multiplier is
//! `mask[i] = 0` when dropped and `1/(1−p)` when kept, `y = x·mask`, `dx = dy·mask`. The scale
//! keeps E[y] = x, so evaluation needs no rescaling. Channel-wise: one draw per (n, c), index
//! `offset + n·C + c`, and the whole H×W plane shares its multiplier.
//!
//! `p` is an `f32` because it is the threshold handed to [`Philox::bernoulli_at`] as is, the
//! same value a CUDA twin compares against; `1/(1−p)` is computed in f64 from it. `p = 1` drops
//! everything (mask 0, the scale is never formed), `p = 0` is the identity (mask 1): uniforms lie
//! in the open interval (0, 1), so neither edge needs a special case to be exact.
//!
//! The caller owns the counter bookkeeping: `offset` (and the rng's stream) must differ between
//! calls that should draw independently; the forward consumes `len(x)` counters (dropout) or
//! N·C counters (dropout2d) starting at `offset`.
//!
//! Not here: the train/eval switch (in eval the op does not call the kernel), alpha dropout,
//! in-place variants, or dropout of 3-D (unbatched) inputs.

use crate::philox::Philox;
use crate::{check_len, KernelError, Nchw, Real};

/// Checks `p ∈ [0, 1]` (NaN fails) and that `count` counters from `offset` fit in u64; returns
/// the kept multiplier 1/(1−p) (unused when p = 1). Shared with the CUDA launchers.
pub(crate) fn prepare<T: Real>(
    kernel: &'static str,
    p: f32,
    offset: u64,
    count: usize,
) -> Result<T, KernelError> {
    if !(0.0..=1.0).contains(&p) {
        return Err(KernelError::Shape {
            kernel,
            reason: format!("dropout probability must be in [0, 1], got {p}"),
        });
    }
    if offset.checked_add(count as u64).is_none() {
        return Err(KernelError::Shape {
            kernel,
            reason: format!("offset {offset} + {count} counters overflows u64"),
        });
    }
    Ok(if p < 1.0 {
        T::of(1.0 / (1.0 - p as f64))
    } else {
        T::zero()
    })
}

/// The multiplier of draw `i`: 0 if dropped, `scale` if kept.
#[inline]
fn multiplier<T: Real>(rng: &Philox, i: u64, p: f32, scale: T) -> T {
    if rng.bernoulli_at(i, p) {
        T::zero()
    } else {
        scale
    }
}

/// Element-wise dropout: `mask[i] = 0` if `rng.bernoulli_at(offset + i, p)` else `1/(1−p)`;
/// `y = x·mask`.
///
/// * `x`, `y`, `mask`: same length, any shape flattened.
///
/// Errors on a length mismatch, `p` outside [0, 1], or `offset + len(x)` overflowing u64.
pub fn dropout_fwd<T: Real>(
    x: &[T],
    p: f32,
    rng: &Philox,
    offset: u64,
    y: &mut [T],
    mask: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "dropout_fwd";
    check_len(K, "y", y, x.len())?;
    check_len(K, "mask", mask, x.len())?;
    let scale = prepare::<T>(K, p, offset, x.len())?;
    for (i, ((o, mk), &v)) in y.iter_mut().zip(mask.iter_mut()).zip(x).enumerate() {
        *mk = multiplier(rng, offset + i as u64, p, scale);
        *o = v * *mk;
    }
    Ok(())
}

/// `dx = dy·mask`, with the mask written by [`dropout_fwd`].
///
/// * `dy`, `mask`, `dx`: same length, any shape flattened.
pub fn dropout_bwd<T: Real>(dy: &[T], mask: &[T], dx: &mut [T]) -> Result<(), KernelError> {
    const K: &str = "dropout_bwd";
    check_len(K, "mask", mask, dy.len())?;
    check_len(K, "dx", dx, dy.len())?;
    for ((o, &g), &mk) in dx.iter_mut().zip(dy).zip(mask) {
        *o = g * mk;
    }
    Ok(())
}

/// Channel-wise dropout (`nn.Dropout2d`): `mask[n, c] = 0` if
/// `rng.bernoulli_at(offset + n·C + c, p)` else `1/(1−p)`; `y[n, c, :, :] = x[n, c, :, :]·mask[n, c]`.
///
/// * `x`, `y`: [N, C, H, W] (`shape`).
/// * `mask`: [N, C].
///
/// Errors on a length mismatch, `p` outside [0, 1], or `offset + N·C` overflowing u64.
pub fn dropout2d_fwd<T: Real>(
    x: &[T],
    shape: Nchw,
    p: f32,
    rng: &Philox,
    offset: u64,
    y: &mut [T],
    mask: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "dropout2d_fwd";
    let planes = shape.n * shape.c;
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.len())?;
    check_len(K, "mask", mask, planes)?;
    let scale = prepare::<T>(K, p, offset, planes)?;
    let hw = shape.plane();
    for (j, mk) in mask.iter_mut().enumerate() {
        *mk = multiplier(rng, offset + j as u64, p, scale);
        let r = j * hw..(j + 1) * hw;
        for (o, &v) in y[r.clone()].iter_mut().zip(&x[r]) {
            *o = v * *mk;
        }
    }
    Ok(())
}

/// `dx[n, c, :, :] = dy[n, c, :, :]·mask[n, c]`, with the mask written by [`dropout2d_fwd`].
///
/// * `dy`, `dx`: [N, C, H, W] (`shape`).
/// * `mask`: [N, C].
pub fn dropout2d_bwd<T: Real>(
    dy: &[T],
    mask: &[T],
    shape: Nchw,
    dx: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "dropout2d_bwd";
    check_len(K, "dy", dy, shape.len())?;
    check_len(K, "mask", mask, shape.n * shape.c)?;
    check_len(K, "dx", dx, shape.len())?;
    let hw = shape.plane();
    for (j, &mk) in mask.iter().enumerate() {
        let r = j * hw..(j + 1) * hw;
        for (o, &g) in dx[r.clone()].iter_mut().zip(&dy[r]) {
            *o = g * mk;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gradcheck, rand_vec};

    fn drop1(x: &[f64], p: f32, rng: &Philox, offset: u64) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; x.len()];
        let mut mask = vec![0.0; x.len()];
        dropout_fwd(x, p, rng, offset, &mut y, &mut mask).unwrap();
        (y, mask)
    }

    fn drop2(x: &[f64], s: Nchw, p: f32, rng: &Philox, offset: u64) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; x.len()];
        let mut mask = vec![0.0; s.n * s.c];
        dropout2d_fwd(x, s, p, rng, offset, &mut y, &mut mask).unwrap();
        (y, mask)
    }

    #[test]
    fn hand_computed_against_the_rng() {
        // p = 0.5: each multiplier is 0 (uniform < 0.5) or 1/(1 − 0.5) = 2, so y ∈ {0, 2x}.
        let rng = Philox::new(7, 3);
        let x = [1.0f64, -2.0, 3.0, 0.5, -1.5, 4.0, 2.5, -0.25];
        let (y, mask) = drop1(&x, 0.5, &rng, 10);
        for i in 0..x.len() {
            let u = rng.uniform_at(10 + i as u64);
            let want = if u < 0.5 { 0.0 } else { 2.0 };
            assert_eq!(mask[i], want, "mask[{i}], u = {u}");
            assert_eq!(y[i], want * x[i], "y[{i}]");
        }
        assert!(mask.contains(&0.0) && mask.contains(&2.0), "{mask:?}");
        // f32 uses the same decisions and the f32-rounded scale 1/(1 − 0.25).
        let x32 = [1.0f32; 8];
        let (mut y32, mut m32) = ([0f32; 8], [0f32; 8]);
        dropout_fwd(&x32, 0.25, &rng, 10, &mut y32, &mut m32).unwrap();
        for i in 0..8 {
            let kept = !rng.bernoulli_at(10 + i as u64, 0.25);
            assert_eq!(m32[i], if kept { 4.0 / 3.0 } else { 0.0 }, "{i}");
            assert_eq!(y32[i], m32[i]);
        }
    }

    #[test]
    fn deterministic_per_stream_and_offset() {
        let x = vec![1.0; 256];
        let a = Philox::new(11, 5);
        let (_, m1) = drop1(&x, 0.4, &a, 0);
        let (_, m2) = drop1(&x, 0.4, &a, 0);
        assert_eq!(m1, m2);
        let (_, other_stream) = drop1(&x, 0.4, &Philox::new(11, 6), 0);
        assert_ne!(m1, other_stream);
        let (_, other_seed) = drop1(&x, 0.4, &Philox::new(12, 5), 0);
        assert_ne!(m1, other_seed);
        // Counter-based: a window at offset 100 is the tail of the full draw.
        let (_, tail) = drop1(&x[..156], 0.4, &a, 100);
        assert_eq!(&m1[100..], &tail[..]);
    }

    #[test]
    fn keep_rate_and_mean_are_preserved() {
        let n = 100_000;
        let x = rand_vec(3, n, 0.5, 1.5);
        for p in [0.1f32, 0.5, 0.8] {
            let (y, mask) = drop1(&x, p, &Philox::new(21, 0), 0);
            let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
            assert!(
                (kept - (1.0 - p as f64)).abs() < 0.01,
                "p {p}: keep rate {kept}"
            );
            let scale = 1.0 / (1.0 - p as f64);
            assert!(mask.iter().all(|&m| m == 0.0 || m == scale), "p {p}");
            let mx = x.iter().sum::<f64>() / n as f64;
            let my = y.iter().sum::<f64>() / n as f64;
            assert!((my - mx).abs() < 0.02 * mx, "p {p}: mean {my} vs {mx}");
        }
    }

    #[test]
    fn dropout2d_drops_whole_channels() {
        let s = Nchw::new(2, 3, 7, 5);
        let x = rand_vec(4, s.len(), 0.5, 1.5);
        let rng = Philox::new(8, 1);
        let (y, mask) = drop2(&x, s, 0.5, &rng, 40);
        // The per-channel draws are the element-wise draws of N·C counters at the same offset.
        let (_, flat) = drop1(&[1.0; 6], 0.5, &rng, 40);
        assert_eq!(mask, flat);
        assert!(mask.contains(&0.0) && mask.contains(&2.0), "{mask:?}");
        for n in 0..s.n {
            for c in 0..s.c {
                let m = mask[n * s.c + c];
                for yy in 0..s.h {
                    for xx in 0..s.w {
                        let i = s.at(n, c, yy, xx);
                        assert_eq!(y[i], x[i] * m, "({n},{c},{yy},{xx})");
                    }
                }
            }
        }
        // Keep rate over many channels.
        let s = Nchw::new(50, 400, 1, 1);
        let (_, mask) = drop2(&vec![1.0; s.len()], s, 0.3, &Philox::new(2, 2), 0);
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / mask.len() as f64;
        assert!((kept - 0.7).abs() < 0.02, "keep rate {kept}");
    }

    #[test]
    fn p_zero_is_identity_and_p_one_drops_everything() {
        let s = Nchw::new(2, 3, 4, 5);
        let x = rand_vec(5, s.len(), -2.0, 2.0);
        let rng = Philox::new(1, 1);
        let (y, mask) = drop1(&x, 0.0, &rng, 0);
        assert_eq!(y, x);
        assert!(mask.iter().all(|&m| m == 1.0));
        let (y, mask) = drop1(&x, 1.0, &rng, 0);
        assert!(y.iter().all(|&v| v == 0.0) && mask.iter().all(|&m| m == 0.0));
        let (y, mask) = drop2(&x, s, 0.0, &rng, 0);
        assert_eq!(y, x);
        assert_eq!(mask, vec![1.0; 6]);
        let (y, mask) = drop2(&x, s, 1.0, &rng, 0);
        assert!(y.iter().all(|&v| v == 0.0) && mask.iter().all(|&m| m == 0.0));
    }

    #[test]
    fn gradients_match_finite_differences() {
        // The mask is a fixed function of (rng, offset), so the forward is linear in x and the
        // gradient check sees one fixed mask at every perturbation.
        let s = Nchw::new(2, 3, 7, 5);
        let x = rand_vec(6, s.len(), -1.0, 1.0);
        let rng = Philox::new(13, 4);
        for p in [0.0f32, 0.3, 0.7] {
            let (_, mask) = drop1(&x, p, &rng, 9);
            gradcheck(
                &format!("dropout p={p}"),
                std::slice::from_ref(&x),
                |i| drop1(&i[0], p, &rng, 9).0,
                |_, dy| {
                    let mut dx = vec![0.0; dy.len()];
                    dropout_bwd(dy, &mask, &mut dx).unwrap();
                    vec![dx]
                },
            );
            let (_, mask) = drop2(&x, s, p, &rng, 9);
            gradcheck(
                &format!("dropout2d p={p}"),
                std::slice::from_ref(&x),
                |i| drop2(&i[0], s, p, &rng, 9).0,
                |_, dy| {
                    let mut dx = vec![0.0; dy.len()];
                    dropout2d_bwd(dy, &mask, s, &mut dx).unwrap();
                    vec![dx]
                },
            );
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let rng = Philox::new(0, 0);
        let x = [1.0f32; 4];
        let (mut y, mut m) = ([0f32; 4], [0f32; 4]);
        let mut short = [0f32; 3];
        for p in [-0.1f32, 1.5, f32::NAN] {
            let e = dropout_fwd(&x, p, &rng, 0, &mut y, &mut m).unwrap_err();
            assert!(
                e.to_string().contains("probability must be in [0, 1]"),
                "{e}"
            );
        }
        let e = dropout_fwd(&x, 0.5, &rng, 0, &mut short, &mut m).unwrap_err();
        assert!(
            e.to_string()
                .contains("dropout_fwd: `y` has 3 elements, expected 4"),
            "{e}"
        );
        let e = dropout_fwd(&x, 0.5, &rng, 0, &mut y, &mut short).unwrap_err();
        assert!(e.to_string().contains("`mask` has 3"), "{e}");
        let e = dropout_fwd(&x, 0.5, &rng, u64::MAX - 2, &mut y, &mut m).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = dropout_bwd(&x, &short, &mut y).unwrap_err();
        assert!(e.to_string().contains("dropout_bwd: `mask` has 3"), "{e}");

        let s = Nchw::new(1, 2, 1, 2);
        let e = dropout2d_fwd(&x, s, 0.5, &rng, 0, &mut y, &mut short).unwrap_err();
        assert!(
            e.to_string()
                .contains("dropout2d_fwd: `mask` has 3 elements, expected 2"),
            "{e}"
        );
        let e = dropout2d_fwd(&x[..3], s, 0.5, &rng, 0, &mut y, &mut m[..2]).unwrap_err();
        assert!(e.to_string().contains("`x` has 3"), "{e}");
        let e = dropout2d_fwd(&x, s, 2.0, &rng, 0, &mut y, &mut m[..2]).unwrap_err();
        assert!(e.to_string().contains("probability"), "{e}");
        let e = dropout2d_bwd(&x, &m[..2], s, &mut short).unwrap_err();
        assert!(e.to_string().contains("dropout2d_bwd: `dx` has 3"), "{e}");
        // Nothing was written by the failed calls.
        assert_eq!((y, m), ([0.0; 4], [0.0; 4]));
    }
}
