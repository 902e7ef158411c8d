//! Spatial resizing of NCHW tensors: bilinear (forward and backward) for activations and logits,
//! nearest for label maps. Semantics are PyTorch's `F.interpolate(x, size=(Ho, Wo), mode=...)`
//! on CPU, given an explicit output size (never a `scale_factor`).
//!
//! Bilinear (`mode='bilinear'`), per axis with input extent `in` and output extent `out`, in the
//! accumulation type T (PyTorch's `opmath_type`: f32 for f32, f64 for f64):
//! * `align_corners = false`: scale = in/out, src = max(scale·(dst + 0.5) − 0.5, 0);
//! * `align_corners = true`:  scale = (in−1)/(out−1) (0 when out = 1), src = scale·dst;
//! * i0 = min(⌊src⌋, in−1), i1 = min(i0+1, in−1), λ1 = clamp(src − i0, 0, 1), λ0 = 1 − λ1;
//! * when out = in the axis is copied (i0 = i1 = dst, λ1 = 0), as PyTorch does.
//!
//! These are `area_pixel_compute_scale`, `area_pixel_compute_source_index` and
//! `compute_source_index_and_lambda` from ATen's `UpSample.h`, evaluated once per row and once
//! per column into tables; a pixel is then y = (x[i0,j0]·λ0ʷ + x[i0,j1]·λ1ʷ)·λ0ʰ +
//! (x[i1,j0]·λ0ʷ + x[i1,j1]·λ1ʷ)·λ1ʰ. The backward sends dy·λʰ·λʷ into the four taps,
//! accumulating in T (each input pixel receives at most ⌈2·out/in⌉+1 taps per axis, so f32
//! accumulation loses nothing that matters).
//!
//! Speed: the forward interpolates every input row it needs across the width once (the
//! gathers), then blends two such rows per output row in a loop over contiguous columns; the
//! bits are those of the per-pixel formula above, since the width sums are the same values.
//! The backward runs the transpose (rows of dy·λʰ summed into their source rows, then scattered
//! across with λʷ), which groups the sums differently from a per-pixel scatter. Planes are
//! independent and spread over rayon's pool; nothing is summed across planes, so the result
//! does not depend on the thread count.
//!
//! Nearest (`mode='nearest'`, not `'nearest-exact'`): src = min(⌊dst·scale⌋, in−1) with
//! scale = in/out computed in f32 whatever the element type, exactly as ATen's `nearest_idx`
//! does; for some sizes this differs from exact rational arithmetic (26 → 22 maps output 11 to
//! input 12, not 13) and we keep PyTorch's answer so label maps line up with a PyTorch run.
//!
//! Not here: `scale_factor` arguments, antialiasing, bicubic, 'nearest-exact', and a nearest
//! backward: nearest resizing is only applied to integer label maps, which carry no gradient.

use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;

/// Smallest number of output elements one rayon task handles: below this the task's overhead
/// outweighs the work.
const MIN_TASK: usize = 16 * 1024;

/// Planes per rayon task for planes of `plane` elements (at least 1).
fn planes_per_task(plane: usize) -> usize {
    (MIN_TASK / plane.max(1)).max(1)
}

/// One output index's two source taps along an axis and their weights.
#[derive(Debug, Clone, Copy)]
struct Tap<T> {
    i0: usize,
    i1: usize,
    l0: T,
    l1: T,
}

/// ATen's `area_pixel_compute_scale` for an explicit output size, in T.
fn area_pixel_compute_scale<T: Real>(input: usize, output: usize, align_corners: bool) -> T {
    if align_corners {
        if output > 1 {
            T::of((input - 1) as f64) / T::of((output - 1) as f64)
        } else {
            T::zero()
        }
    } else {
        T::of(input as f64) / T::of(output as f64)
    }
}

/// ATen's `area_pixel_compute_source_index` (non-cubic), in T.
fn area_pixel_compute_source_index<T: Real>(scale: T, dst: usize, align_corners: bool) -> T {
    if align_corners {
        scale * T::of(dst as f64)
    } else {
        let half = T::of(0.5);
        let src = scale * (T::of(dst as f64) + half) - half;
        // Only linear modes clamp at 0; the left border is then replicated rather than
        // extrapolated.
        if src < T::zero() {
            T::zero()
        } else {
            src
        }
    }
}

/// Source taps for every output index along one axis (ATen's `compute_source_index_and_lambda`).
fn linear_taps<T: Real>(input: usize, output: usize, align_corners: bool) -> Vec<Tap<T>> {
    let scale = area_pixel_compute_scale::<T>(input, output, align_corners);
    (0..output)
        .map(|dst| {
            if input == output {
                // PyTorch copies this axis outright instead of trusting the float arithmetic.
                return Tap {
                    i0: dst,
                    i1: dst,
                    l0: T::one(),
                    l1: T::zero(),
                };
            }
            let src = area_pixel_compute_source_index(scale, dst, align_corners);
            // src ≥ 0 and finite, so the saturating float-to-int cast is a plain floor.
            let i0 = (src.floor().f64() as usize).min(input - 1);
            let l1 = (src - T::of(i0 as f64)).max(T::zero()).min(T::one());
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                l0: T::one() - l1,
                l1,
            }
        })
        .collect()
}

/// Rejects empty spatial extents (PyTorch: "Input and output sizes should be greater than 0").
fn check_sizes(
    kernel: &'static str,
    shape: Nchw,
    out_h: usize,
    out_w: usize,
) -> Result<(), KernelError> {
    if shape.h == 0 || shape.w == 0 || out_h == 0 || out_w == 0 {
        return Err(KernelError::Shape {
            kernel,
            reason: format!(
                "input and output sizes must be greater than 0, got input (H, W) = ({}, {}) and \
                 output (Ho, Wo) = ({out_h}, {out_w})",
                shape.h, shape.w
            ),
        });
    }
    Ok(())
}

/// Bilinear resize, `F.interpolate(x, size=(out_h, out_w), mode='bilinear', align_corners)`.
///
/// * `x`: [N, C, H, W], described by `shape`.
/// * `y`: [N, C, Ho, Wo] with Ho = `out_h`, Wo = `out_w`; overwritten.
///
/// H, W, Ho and Wo must be positive; N or C may be 0 (nothing to do).
pub fn resize_bilinear_fwd<T: Real>(
    x: &[T],
    shape: Nchw,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "resize_bilinear_fwd";
    check_sizes(K, shape, out_h, out_w)?;
    let planes = shape.n * shape.c;
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, planes * out_h * out_w)?;
    let rows = linear_taps::<T>(shape.h, out_h, align_corners);
    let cols = linear_taps::<T>(shape.w, out_w, align_corners);
    // Input rows some output row reads; the others need no width pass.
    let mut needed = vec![false; shape.h];
    for r in &rows {
        needed[r.i0] = true;
        needed[r.i1] = true;
    }
    let (w, plane_out) = (shape.w, out_h * out_w);
    if planes == 0 {
        return Ok(());
    }
    y.par_chunks_mut(plane_out)
        .zip(x.par_chunks(shape.plane()))
        .with_min_len(planes_per_task(plane_out))
        .for_each_init(
            || vec![T::zero(); shape.h * out_w],
            |across, (yp, xp)| {
                // Width first, then height: the operand order of ATen's `Interpolate<2>`. Each
                // needed input row is interpolated across once (the gathers), then every output
                // row blends two of those rows, a loop over contiguous columns that vectorises.
                for ((arow, xrow), _) in across
                    .chunks_exact_mut(out_w)
                    .zip(xp.chunks_exact(w))
                    .zip(&needed)
                    .filter(|(_, &n)| n)
                {
                    for (o, c) in arow.iter_mut().zip(&cols) {
                        *o = xrow[c.i0] * c.l0 + xrow[c.i1] * c.l1;
                    }
                }
                for (yrow, r) in yp.chunks_exact_mut(out_w).zip(&rows) {
                    let top = &across[r.i0 * out_w..(r.i0 + 1) * out_w];
                    let bottom = &across[r.i1 * out_w..(r.i1 + 1) * out_w];
                    for ((o, &t), &b) in yrow.iter_mut().zip(top).zip(bottom) {
                        *o = t * r.l0 + b * r.l1;
                    }
                }
            },
        );
    Ok(())
}

/// Backward of [`resize_bilinear_fwd`]: dx = Σ over output pixels of dy·λʰ·λʷ at their taps.
///
/// * `dy`: [N, C, Ho, Wo] with Ho = `out_h`, Wo = `out_w`.
/// * `shape`: the forward input's shape [N, C, H, W].
/// * `dx`: [N, C, H, W]; overwritten (zeroed, then scattered into).
pub fn resize_bilinear_bwd<T: Real>(
    dy: &[T],
    shape: Nchw,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
    dx: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "resize_bilinear_bwd";
    check_sizes(K, shape, out_h, out_w)?;
    let planes = shape.n * shape.c;
    check_len(K, "dy", dy, planes * out_h * out_w)?;
    check_len(K, "dx", dx, shape.len())?;
    let rows = linear_taps::<T>(shape.h, out_h, align_corners);
    let cols = linear_taps::<T>(shape.w, out_w, align_corners);
    let (w, plane_out) = (shape.w, out_h * out_w);
    if planes == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(shape.plane())
        .zip(dy.par_chunks(plane_out))
        .with_min_len(planes_per_task(plane_out))
        .for_each_init(
            || vec![T::zero(); shape.h * out_w],
            |down, (dp, gp)| {
                // The forward's two passes transposed: each output row's dy·λʰ is added into its
                // two source rows (contiguous columns, vectorised), then each of those rows is
                // scattered across into its columns' taps with λʷ. i0 may equal i1 on either
                // axis (clamped border, identity axis): the taps then add into the same
                // element, which is what the forward's sum differentiates to.
                down.fill(T::zero());
                for (grow, r) in gp.chunks_exact(out_w).zip(&rows) {
                    let (d0, d1) = (r.i0 * out_w, r.i1 * out_w);
                    for (j, &g) in grow.iter().enumerate() {
                        down[d0 + j] += r.l0 * g;
                    }
                    for (j, &g) in grow.iter().enumerate() {
                        down[d1 + j] += r.l1 * g;
                    }
                }
                dp.fill(T::zero());
                for (drow, arow) in dp.chunks_exact_mut(w).zip(down.chunks_exact(out_w)) {
                    for (&g, c) in arow.iter().zip(&cols) {
                        drow[c.i0] += c.l0 * g;
                        drow[c.i1] += c.l1 * g;
                    }
                }
            },
        );
    Ok(())
}

/// ATen's `nearest_idx` for an explicit output size: min(⌊dst·(in/out)⌋, in−1) in f32. Its
/// shortcuts for out = in and out = 2·in agree with this formula (the scales 1 and 0.5 are exact).
fn nearest_indices(input: usize, output: usize) -> Vec<usize> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| (((dst as f32) * scale).floor() as usize).min(input - 1))
        .collect()
}

/// Nearest resize, `F.interpolate(x, size=(out_h, out_w), mode='nearest')`, for any element
/// type (label maps are `i32`). No backward: labels carry no gradient.
///
/// * `x`: [N, C, H, W], described by `shape`.
/// * `y`: [N, C, Ho, Wo] with Ho = `out_h`, Wo = `out_w`; overwritten.
///
/// H, W, Ho and Wo must be positive; N or C may be 0 (nothing to do).
pub fn resize_nearest_fwd<L: Copy>(
    x: &[L],
    shape: Nchw,
    out_h: usize,
    out_w: usize,
    y: &mut [L],
) -> Result<(), KernelError> {
    const K: &str = "resize_nearest_fwd";
    check_sizes(K, shape, out_h, out_w)?;
    let planes = shape.n * shape.c;
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, planes * out_h * out_w)?;
    let rows = nearest_indices(shape.h, out_h);
    let cols = nearest_indices(shape.w, out_w);
    let w = shape.w;
    for (xp, yp) in x
        .chunks_exact(shape.plane())
        .zip(y.chunks_exact_mut(out_h * out_w))
    {
        for (yrow, &r) in yp.chunks_exact_mut(out_w).zip(&rows) {
            let xrow = &xp[r * w..(r + 1) * w];
            for (o, &c) in yrow.iter_mut().zip(&cols) {
                *o = xrow[c];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, rand_index, rand_vec, to_f32};

    fn bilinear(x: &[f64], s: Nchw, oh: usize, ow: usize, ac: bool) -> Vec<f64> {
        let mut y = vec![0.0; s.n * s.c * oh * ow];
        resize_bilinear_fwd(x, s, oh, ow, ac, &mut y).unwrap();
        y
    }

    #[test]
    fn pytorch_known_answer_upsample_2x2_to_4x4() {
        // Per axis scale = 2/4: dst 0..4 → src = max(0.5·(d+0.5) − 0.5, 0) = 0, 0.25, 0.75, 1.25;
        // the last clamps to i0 = i1 = 1. Row 1 = 0.75·row(0) + 0.25·row(1) of the width-resized
        // rows [1, 1.25, 1.75, 2] and [3, 3.25, 3.75, 4].
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut y = [0f32; 16];
        resize_bilinear_fwd(&x, Nchw::new(1, 1, 2, 2), 4, 4, false, &mut y).unwrap();
        #[rustfmt::skip]
        let want = [
            1.0, 1.25, 1.75, 2.0,
            1.5, 1.75, 2.25, 2.5,
            2.5, 2.75, 3.25, 3.5,
            3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(y, want);
    }

    #[test]
    fn pytorch_known_answer_align_corners_2x2_to_3x3() {
        // scale = (2−1)/(3−1) = 0.5: src = 0, 0.5, 1 on both axes.
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut y = [0f32; 9];
        resize_bilinear_fwd(&x, Nchw::new(1, 1, 2, 2), 3, 3, true, &mut y).unwrap();
        assert_eq!(y, [1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]);
    }

    #[test]
    fn single_output_pixel_picks_corner_or_centre() {
        // 3×3 → 1×1: align_corners scale is 0, so src = 0 (the corner); otherwise
        // src = 3·0.5 − 0.5 = 1 (the centre).
        let x: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let s = Nchw::new(1, 1, 3, 3);
        let mut y = [0f32; 1];
        resize_bilinear_fwd(&x, s, 1, 1, true, &mut y).unwrap();
        assert_eq!(y, [0.0]);
        resize_bilinear_fwd(&x, s, 1, 1, false, &mut y).unwrap();
        assert_eq!(y, [4.0]);
    }

    #[test]
    fn matches_per_pixel_formula_in_both_modes() {
        // Independent oracle: the interpolation formula evaluated per pixel, no tables.
        let axis = |d: usize, i: usize, o: usize, ac: bool| -> (usize, usize, f64) {
            let src = if ac {
                if o > 1 {
                    d as f64 * (i - 1) as f64 / (o - 1) as f64
                } else {
                    0.0
                }
            } else {
                ((d as f64 + 0.5) * i as f64 / o as f64 - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(i - 1);
            (i0, (i0 + 1).min(i - 1), (src - i0 as f64).min(1.0))
        };
        for &(h, w, oh, ow) in &[(7, 5, 3, 2), (5, 3, 11, 8), (4, 6, 4, 9)] {
            for ac in [false, true] {
                let s = Nchw::new(2, 3, h, w);
                let x = rand_vec(3, s.len(), -2.0, 2.0);
                let mut want = Vec::new();
                for p in 0..s.n * s.c {
                    for oy in 0..oh {
                        let (y0, y1, ly) = axis(oy, h, oh, ac);
                        for ox in 0..ow {
                            let (x0, x1, lx) = axis(ox, w, ow, ac);
                            let at = |r: usize, c: usize| x[p * h * w + r * w + c];
                            want.push(
                                (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
                                    + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1)),
                            );
                        }
                    }
                }
                let what = format!("{h}x{w}->{oh}x{ow} align_corners={ac}");
                assert_close(&what, &bilinear(&x, s, oh, ow, ac), &want, 1e-12, 0.0);
                // The f32 instance computes its tables in f32, as PyTorch does: close, not equal.
                let mut y32 = vec![0f32; want.len()];
                resize_bilinear_fwd(&to_f32(&x), s, oh, ow, ac, &mut y32).unwrap();
                let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
                assert_close(&format!("{what} f32"), &y32, &want, 1e-5, 1e-5);
            }
        }
    }

    #[test]
    fn identity_resize_returns_input() {
        let s = Nchw::new(2, 3, 5, 3);
        let x = to_f32(&rand_vec(4, s.len(), -1.0, 1.0));
        for ac in [false, true] {
            let mut y = vec![0f32; s.len()];
            resize_bilinear_fwd(&x, s, 5, 3, ac, &mut y).unwrap();
            assert_eq!(y, x);
        }
    }

    #[test]
    fn backward_hand_case_overwrites_dx() {
        // 1×2 → 1×4 (height is an identity axis). Width taps: d0 → x0·1, d1 → x0·0.75 + x1·0.25,
        // d2 → x0·0.25 + x1·0.75, d3 → x1·1. With dy = [1, 10, 100, 1000]:
        // dx0 = 1 + 7.5 + 25 = 33.5, dx1 = 2.5 + 75 + 1000 = 1077.5. dx starts as garbage.
        let mut dx = [7.0f32; 2];
        let dy = [1.0f32, 10.0, 100.0, 1000.0];
        resize_bilinear_bwd(&dy, Nchw::new(1, 1, 1, 2), 1, 4, false, &mut dx).unwrap();
        assert_eq!(dx, [33.5, 1077.5]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        for &(h, w, oh, ow) in &[(7, 5, 3, 2), (5, 3, 11, 8)] {
            for ac in [false, true] {
                let s = Nchw::new(2, 3, h, w);
                let x = rand_vec(5, s.len(), -1.0, 1.0);
                gradcheck(
                    &format!("resize_bilinear {h}x{w}->{oh}x{ow} align_corners={ac}"),
                    &[x],
                    |i| bilinear(&i[0], s, oh, ow, ac),
                    |_, dy| {
                        let mut dx = vec![0.0; s.len()];
                        resize_bilinear_bwd(dy, s, oh, ow, ac, &mut dx).unwrap();
                        vec![dx]
                    },
                );
            }
        }
    }

    #[test]
    fn bad_lengths_and_sizes_are_errors() {
        let s = Nchw::new(1, 2, 3, 3);
        let x = [0f32; 18];
        let mut y = [0f32; 7];
        let e = resize_bilinear_fwd(&x, s, 2, 2, false, &mut y).unwrap_err();
        assert!(
            e.to_string()
                .contains("resize_bilinear_fwd: `y` has 7 elements, expected 8"),
            "{e}"
        );
        let mut dx = [0f32; 17];
        let e = resize_bilinear_bwd(&[0f32; 8], s, 2, 2, true, &mut dx).unwrap_err();
        assert!(matches!(e, KernelError::Len { arg: "dx", .. }), "{e}");
        let e = resize_bilinear_fwd(&x, s, 0, 2, false, &mut []).unwrap_err();
        assert!(matches!(e, KernelError::Shape { .. }), "{e}");
        let mut yl = [0i32; 8];
        let e = resize_nearest_fwd(&[0i32; 17], s, 2, 2, &mut yl).unwrap_err();
        assert!(matches!(e, KernelError::Len { arg: "x", .. }), "{e}");
    }

    fn nearest(x: &[i32], s: Nchw, oh: usize, ow: usize) -> Vec<i32> {
        let mut y = vec![-1; s.n * s.c * oh * ow];
        resize_nearest_fwd(x, s, oh, ow, &mut y).unwrap();
        y
    }

    #[test]
    fn nearest_hand_cases() {
        // 2×2 → 4×4: scale 0.5, src = ⌊d/2⌋, every label repeated in a 2×2 block.
        #[rustfmt::skip]
        assert_eq!(
            nearest(&[1, 2, 3, 4], Nchw::new(1, 1, 2, 2), 4, 4),
            [1, 1, 2, 2,
             1, 1, 2, 2,
             3, 3, 4, 4,
             3, 3, 4, 4]
        );
        // 5 → 2: scale 2.5, src = ⌊0⌋, ⌊2.5⌋ = 0, 2 on both axes.
        let x: Vec<i32> = (0..25).collect();
        assert_eq!(nearest(&x, Nchw::new(1, 1, 5, 5), 2, 2), [0, 2, 10, 12]);
        // 3 → 5: scale 0.6, src = ⌊0, 0.6, 1.2, 1.8, 2.4⌋ = 0, 0, 1, 1, 2.
        assert_eq!(
            nearest(&[7, 8, 9], Nchw::new(1, 1, 1, 3), 1, 5),
            [7, 7, 8, 8, 9]
        );
        // PyTorch's f32 scale: 26/22 rounds to 1.18181813 in f32, and 11·that rounds to
        // 12.999999 in f32, so output 11 reads input 12 (exact arithmetic would say 13).
        let x: Vec<i32> = (0..26).collect();
        let y = nearest(&x, Nchw::new(1, 1, 1, 26), 1, 22);
        assert_eq!(y[10..13], [11, 12, 14]);
        // Planes stay separate: N=2, C=3 of 3×3 labels down to 2×1 (rows 0, 1; column 0 since
        // 3/1 scale gives ⌊0⌋ = 0).
        let s = Nchw::new(2, 3, 3, 3);
        let x = rand_index(6, s.len(), 19);
        let y = nearest(&x, s, 2, 1);
        let want: Vec<i32> = (0..6).flat_map(|p| [x[p * 9], x[p * 9 + 3]]).collect();
        assert_eq!(y, want);
        // Identity.
        assert_eq!(nearest(&x, s, 3, 3), x);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // 12 planes of 48×40 output: several rayon tasks; up- and downsampling on each axis.
        let s = Nchw::new(3, 4, 12, 50);
        let x: Vec<f32> = to_f32(&rand_vec(7, s.len(), -1.0, 1.0));
        let (oh, ow) = (48, 40);
        let dy: Vec<f32> = to_f32(&rand_vec(8, s.n * s.c * oh * ow, -1.0, 1.0));
        let run = || {
            let mut y = vec![0f32; dy.len()];
            resize_bilinear_fwd(&x, s, oh, ow, false, &mut y).unwrap();
            let mut dx = vec![0f32; x.len()];
            resize_bilinear_bwd(&dy, s, oh, ow, false, &mut dx).unwrap();
            (y, dx)
        };
        let pool = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        };
        let (y1, dx1) = pool(1).install(run);
        let (y3, dx3) = pool(3).install(run);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y1), bits(&y3));
        assert_eq!(bits(&dx1), bits(&dx3));
    }
}
