//! The masks of CCT's feature perturbations (Ouali et al., CVPR 2020; `models/decoders.py` of
//! yassouali/CCT): the salient-region drop of F-Drop, the foreground / background masks of
//! context and object masking, and the boxes of guided cutout, all computed from a feature map's
//! channel mean or from the main decoder's predicted labels. The masks multiply features through
//! [`crate::elementwise::mul_broadcast_fwd`] (shared over channels), which is also their
//! backward: a mask from a comparison is a constant.
//!
//! [`guided_cutout_boxes`] is a host-side draw like [`crate::mix::draw_boxes`]: connected
//! components are a sequential flood fill over a small label map, not a kernel; the boxes it
//! returns are rasterised by [`crate::mix::box_mask_fwd`], which has its CUDA twin.
//!
//! Not here: the multiplications themselves (`elementwise.rs`), the uniform noise of F-Noise
//! (Philox fills, `philox.rs`, mapped by `elementwise::affine_fwd`), the VAT direction
//! (`reduce::l2_normalize_fwd`), spatial dropout (`dropout.rs`).

use crate::mix::{word_below, MixBox};
use crate::philox::Philox;
use crate::{check_len, KernelError, Real};

/// F-Drop's mask (`FeatureDropDecoder.feature_dropout`): per sample, m = [a < γ·max_hw a], where
/// `a` is the feature map's channel mean. Drops the most activated (salient) region. A NaN in
/// `a` gives 0 there (comparisons with NaN are false); a NaN maximum drops the whole sample.
///
/// * `attention`: [N, H·W] (the channel mean, [N, 1, H, W]).
/// * `gamma`: the threshold's fraction of the maximum, drawn once per call by the caller.
/// * `mask`: [N, H·W], overwritten with 0 or 1.
pub fn salient_drop_mask_fwd<T: Real>(
    attention: &[T],
    n: usize,
    gamma: T,
    mask: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "salient_drop_mask_fwd";
    check_len(K, "mask", mask, attention.len())?;
    if n == 0 || !attention.len().is_multiple_of(n) {
        if attention.is_empty() {
            return Ok(());
        }
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("{} elements do not split into {n} samples", attention.len()),
        });
    }
    let plane = attention.len() / n;
    if plane == 0 {
        return Ok(());
    }
    for (a, m) in attention
        .chunks_exact(plane)
        .zip(mask.chunks_exact_mut(plane))
    {
        // torch.max propagates NaN; so does this fold (a NaN, once met, stays).
        let max = a.iter().copied().fold(T::of(f64::NEG_INFINITY), |acc, v| {
            if acc.f64().is_nan() {
                acc
            } else if v.f64().is_nan() || v > acc {
                v
            } else {
                acc
            }
        });
        let threshold = max * gamma;
        for (o, &v) in m.iter_mut().zip(a) {
            *o = if v < threshold {
                T::of(1.0)
            } else {
                T::of(0.0)
            };
        }
    }
    Ok(())
}

/// Context / object masks (`guided_masking`): m = 1 where the label is not `background`
/// (`keep_foreground`, context masking keeps the objects) or where it is (object masking keeps
/// the context), 0 elsewhere.
///
/// * `label`: i32[N, H, W] (the main decoder's argmax).
/// * `mask`: f32[N, H, W], overwritten.
pub fn foreground_mask_fwd(
    label: &[i32],
    background: i32,
    keep_foreground: bool,
    mask: &mut [f32],
) -> Result<(), KernelError> {
    check_len("foreground_mask_fwd", "mask", mask, label.len())?;
    for (o, &l) in mask.iter_mut().zip(label) {
        *o = if (l != background) == keep_foreground {
            1.0
        } else {
            0.0
        };
    }
    Ok(())
}

/// What guided cutout erases, as `guided_cutout` does it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidedCutout {
    /// The label that is not an object (CCT: `argmax > 0`, background 0).
    pub background: i32,
    /// Side fraction of each object's bounding box that is erased (CCT `erase: 0.4`), in [0, 1].
    /// f64 so that ⌊bb·(1 − erase)⌋ rounds as Python's float arithmetic does.
    pub erase: f64,
    /// Objects whose boundary has at most this many pixels are left alone (CCT: more than 50
    /// contour points at a 320-pixel crop).
    pub min_boundary: usize,
}

/// Guided cutout's boxes (`guided_cutout`): for every 8-connected object (pixels whose label is
/// not `background`) whose boundary — its pixels with a 4-neighbour outside it or on the image
/// edge — has more than `min_boundary` pixels, with bounding box columns min_w..=max_w and rows
/// min_h..=max_h and bb_w = max_w − min_w, bb_h = max_h − min_h (differences, as the official
/// code takes them): s_w uniform in 0..=⌊bb_w·(1 − erase)⌋ and s_h likewise, and the box of
/// rows min_h + s_h .. + ⌊bb_h·erase⌋ and columns min_w + s_w .. + ⌊bb_w·erase⌋.
///
/// Draws: object j of sample n (objects in raster order of their first pixel) takes s_w from
/// word `rng.u32_at(n·2^32 + 2j)` and s_h from the next, each `word_below(word, k + 1)`.
///
/// * `label`: i32[N, H, W].
/// * returns one list of boxes per sample (possibly empty), each inside the H×W image.
///
/// Deviation: OpenCV counts the points of the simplified external contour
/// (`CHAIN_APPROX_SIMPLE`), which is at most the boundary pixel count and depends on the shape's
/// straight runs; the pixel count is defined without a contour tracer.
pub fn guided_cutout_boxes(
    label: &[i32],
    n: usize,
    h: usize,
    w: usize,
    params: GuidedCutout,
    rng: &Philox,
) -> Result<Vec<Vec<MixBox>>, KernelError> {
    const K: &str = "guided_cutout_boxes";
    check_len(K, "label", label, n * h * w)?;
    if !(0.0..=1.0).contains(&params.erase) {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("erase must be in [0, 1], got {}", params.erase),
        });
    }
    let mut out = Vec::with_capacity(n);
    let mut seen = vec![false; h * w];
    let mut stack = Vec::new();
    let mut member = vec![usize::MAX; h * w];
    for s in 0..n {
        let map = &label[s * h * w..(s + 1) * h * w];
        let fg = |i: usize| map[i] != params.background;
        seen.fill(false);
        let mut boxes = Vec::new();
        let mut object = 0u64;
        for start in 0..h * w {
            if seen[start] || !fg(start) {
                continue;
            }
            // Flood fill one 8-connected object, recording its pixels' membership.
            let mut pixels = Vec::new();
            seen[start] = true;
            stack.push(start);
            while let Some(i) = stack.pop() {
                pixels.push(i);
                member[i] = start;
                let (y, x) = (i / w, i % w);
                for dy in -1isize..=1 {
                    for dx in -1isize..=1 {
                        let (yy, xx) = (y as isize + dy, x as isize + dx);
                        if (dy, dx) == (0, 0)
                            || yy < 0
                            || xx < 0
                            || yy >= h as isize
                            || xx >= w as isize
                        {
                            continue;
                        }
                        let j = yy as usize * w + xx as usize;
                        if !seen[j] && fg(j) {
                            seen[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
            let inside = |yy: isize, xx: isize| {
                yy >= 0
                    && xx >= 0
                    && yy < h as isize
                    && xx < w as isize
                    && member[yy as usize * w + xx as usize] == start
            };
            let boundary = pixels
                .iter()
                .filter(|&&i| {
                    let (y, x) = ((i / w) as isize, (i % w) as isize);
                    !(inside(y - 1, x) && inside(y + 1, x) && inside(y, x - 1) && inside(y, x + 1))
                })
                .count();
            let j = object;
            object += 1;
            if boundary <= params.min_boundary {
                continue;
            }
            let (mut min_h, mut max_h, mut min_w, mut max_w) = (h, 0, w, 0);
            for &i in &pixels {
                let (y, x) = (i / w, i % w);
                (min_h, max_h) = (min_h.min(y), max_h.max(y));
                (min_w, max_w) = (min_w.min(x), max_w.max(x));
            }
            let (bb_w, bb_h) = ((max_w - min_w) as f64, (max_h - min_h) as f64);
            let base = ((s as u64) << 32) + 2 * j;
            let span = |bb: f64| (bb * (1.0 - params.erase)).floor() as u64 + 1;
            let s_w = word_below(rng.u32_at(base), span(bb_w)) as usize;
            let s_h = word_below(rng.u32_at(base + 1), span(bb_h)) as usize;
            boxes.push(MixBox {
                y0: min_h + s_h,
                x0: min_w + s_w,
                h: (bb_h * params.erase).floor() as usize,
                w: (bb_w * params.erase).floor() as usize,
            });
        }
        out.push(boxes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salient_drop_keeps_what_is_below_gamma_of_the_maximum() {
        // Two samples of 4 pixels; maxima 4 and 10, γ = 0.5 → thresholds 2 and 5.
        let a = [1.0f32, 2.0, 4.0, 1.9, 10.0, 5.0, 4.9, -3.0];
        let mut m = [9f32; 8];
        salient_drop_mask_fwd(&a, 2, 0.5, &mut m).unwrap();
        assert_eq!(m, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        // A NaN maximum drops the whole sample; a NaN pixel is dropped.
        let a = [1.0f32, f32::NAN, 0.5, 0.2];
        salient_drop_mask_fwd(&a, 2, 0.5, &mut m[..4]).unwrap();
        assert_eq!(&m[..4], &[0.0, 0.0, 0.0, 1.0]);
        // The NaN before other pixels still makes the maximum NaN: nothing is kept (the fold
        // once let the next pixel replace it, keeping 0.1 below half of 1.0).
        salient_drop_mask_fwd(&[f32::NAN, 1.0, 0.1], 1, 0.5, &mut m[..3]).unwrap();
        assert_eq!(&m[..3], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn foreground_and_background_masks() {
        let mut m = [9f32; 4];
        foreground_mask_fwd(&[0, 3, 0, 1], 0, true, &mut m).unwrap();
        assert_eq!(m, [0.0, 1.0, 0.0, 1.0]);
        foreground_mask_fwd(&[0, 3, 0, 1], 0, false, &mut m).unwrap();
        assert_eq!(m, [1.0, 0.0, 1.0, 0.0]);
    }

    /// A 10×12 map with one 6×9 object (boundary 26 pixels), a diagonal pair that is one
    /// 8-connected object of 2 pixels, and background elsewhere.
    fn two_objects() -> Vec<i32> {
        let (h, w) = (10, 12);
        let mut l = vec![0i32; h * w];
        for y in 2..8 {
            for x in 1..10 {
                l[y * w + x] = if x < 5 { 1 } else { 2 }; // two classes, one object
            }
        }
        l[10] = 3; // (0, 10)
        l[w + 11] = 3; // (1, 11): diagonal neighbour of (0, 10), not touching the rectangle
        l
    }

    #[test]
    fn guided_cutout_erases_a_fraction_of_each_large_objects_box() {
        let l = two_objects();
        let rng = Philox::new(7, 3);
        let p = GuidedCutout {
            background: 0,
            erase: 0.4,
            min_boundary: 2,
        };
        let boxes = guided_cutout_boxes(&l, 1, 10, 12, p, &rng).unwrap();
        // Raster order: the diagonal pair (first pixel (0, 10)) is object 0, the rectangle
        // (first pixel (2, 1)) object 1. The pair's 2 boundary pixels are not more than 2: skipped.
        assert_eq!(boxes[0].len(), 1);
        let b = boxes[0][0];
        // bb_w = 9 − 1 = 8, bb_h = 7 − 2 = 5: erased ⌊8·0.4⌋ = 3 columns, ⌊5·0.4⌋ = 2 rows,
        // starts s_w in 0..=⌊8·0.6⌋ = 4, s_h in 0..=⌊5·0.6⌋ = 3, drawn from object 1's words.
        let s_w = word_below(rng.u32_at(2), 5) as usize;
        let s_h = word_below(rng.u32_at(3), 4) as usize;
        assert_eq!(
            b,
            MixBox {
                y0: 2 + s_h,
                x0: 1 + s_w,
                h: 2,
                w: 3
            }
        );
        // With a threshold above the rectangle's 26 boundary pixels nothing is erased; at 1 the
        // diagonal pair (2 boundary pixels) is erased too, with empty sides (bb 1: ⌊0.4⌋ = 0).
        let none = GuidedCutout {
            min_boundary: 26,
            ..p
        };
        assert!(guided_cutout_boxes(&l, 1, 10, 12, none, &rng).unwrap()[0].is_empty());
        let all = GuidedCutout {
            min_boundary: 1,
            ..p
        };
        let both = guided_cutout_boxes(&l, 1, 10, 12, all, &rng).unwrap();
        assert_eq!(both[0].len(), 2);
        assert_eq!((both[0][0].h, both[0][0].w), (0, 0));
        assert_eq!(both[0][1], b);
    }

    #[test]
    fn guided_cutout_checks_its_inputs() {
        let rng = Philox::new(0, 0);
        let p = GuidedCutout {
            background: 0,
            erase: 1.5,
            min_boundary: 0,
        };
        let e = guided_cutout_boxes(&[0; 4], 1, 2, 2, p, &rng).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guided_cutout_boxes: erase must be in [0, 1], got 1.5"
        );
        let e = guided_cutout_boxes(&[0; 3], 1, 2, 2, p, &rng).unwrap_err();
        assert!(e.to_string().contains("`label` has 3 elements"), "{e}");
    }
}
