//! Segmentation metrics: the confusion matrix of predicted against true labels, and what it
//! gives — per-class IoU, mIoU, pixel accuracy. Counts are u64 so a whole validation set of
//! large images accumulates without overflow.
//!
//! Also the image-level labels a label map implies (`image_labels_fwd`: which foreground classes
//! occur in each image — PseudoSeg's classifier targets, the `cls_label` derived from pixels).
//!
//! Not here: argmax (argmax.rs), sliding-window or flip evaluation (the eval pipeline).

use crate::{check_len, KernelError, Real};
use std::cmp::Ordering;

/// Adds predictions to a K×K confusion matrix, row = true class, column = predicted class.
/// Pixels whose label is `ignore_index` are skipped; a label or prediction outside [0, K) that is
/// not ignored is an error naming the pixel.
///
/// * `pred`, `label`: [N, H, W] (any flat length, equal).
/// * `confusion`: [K, K], accumulated.
pub fn confusion_add(
    pred: &[i32],
    label: &[i32],
    k: usize,
    ignore_index: i32,
    confusion: &mut [u64],
) -> Result<(), KernelError> {
    check_len("confusion_add", "label", label, pred.len())?;
    check_len("confusion_add", "confusion", confusion, k * k)?;
    for (i, (&p, &t)) in pred.iter().zip(label).enumerate() {
        if t == ignore_index {
            continue;
        }
        let (Ok(pu), Ok(tu)) = (usize::try_from(p), usize::try_from(t)) else {
            return Err(bad(i, p, t, k));
        };
        if pu >= k || tu >= k {
            return Err(bad(i, p, t, k));
        }
        confusion[tu * k + pu] += 1;
    }
    Ok(())
}

/// How often a predicted label map agrees with a reference: (agreeing pixels, counted pixels).
/// A pixel counts when its `target` is neither `ignore_index` nor `skip` (e.g. the background
/// class, to measure objects only) and, with a `mask`, its mask value is positive (e.g. only
/// confident pixels). Integer counts, so the result is exact in any order. The accuracy of
/// pseudo-labels is `agree / counted` (undefined when nothing is counted).
///
/// * `pred`, `target`: [N, H, W] i32 (any flat length, equal).
/// * `mask`: [N, H, W] f32, optional.
pub fn label_agreement_fwd(
    pred: &[i32],
    target: &[i32],
    mask: Option<&[f32]>,
    ignore_index: i32,
    skip: Option<i32>,
) -> Result<[u64; 2], KernelError> {
    check_len("label_agreement_fwd", "target", target, pred.len())?;
    if let Some(m) = mask {
        check_len("label_agreement_fwd", "mask", m, pred.len())?;
    }
    let (mut agree, mut counted) = (0u64, 0u64);
    for (i, (&p, &t)) in pred.iter().zip(target).enumerate() {
        // Not `m <= 0`: a NaN mask value must not count either.
        let masked_out = mask.is_some_and(|m| m[i].partial_cmp(&0.0) != Some(Ordering::Greater));
        if t == ignore_index || skip == Some(t) || masked_out {
            continue;
        }
        counted += 1;
        agree += u64::from(p == t);
    }
    Ok([agree, counted])
}

fn bad(i: usize, p: i32, t: i32, k: usize) -> KernelError {
    KernelError::Shape {
        kernel: "confusion_add",
        reason: format!("pixel {i}: label {t} / prediction {p} outside the {k} classes"),
    }
}

/// Scores from a K×K confusion matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// IoU per class, TP / (TP + FP + FN); `None` for a class absent from both labels and
    /// predictions (it does not enter the mean, as in mmsegmentation).
    pub iou: Vec<Option<f64>>,
    /// Mean of the defined IoUs.
    pub miou: f64,
    /// Correct pixels / counted pixels.
    pub pixel_acc: f64,
    /// The confusion matrix scored, K×K pixel counts, row = truth, column = prediction: which
    /// classes a model mistakes for which (`flowseg eval` prints the largest mix-ups).
    pub confusion: Vec<u64>,
}

impl Scores {
    /// The off-diagonal cells as (truth, prediction, share of the truth class's pixels), largest
    /// share first, at most `top` of them and none below `min_share`.
    pub fn mixups(&self, top: usize, min_share: f64) -> Vec<(usize, usize, f64)> {
        let k = self.iou.len();
        let mut out: Vec<(usize, usize, f64)> = (0..k)
            .flat_map(|t| {
                let row = self.confusion.get(t * k..(t + 1) * k).unwrap_or(&[]);
                let total = row.iter().sum::<u64>() as f64;
                row.iter()
                    .enumerate()
                    .filter(move |&(p, &v)| p != t && v > 0 && total > 0.0)
                    .map(move |(p, &v)| (t, p, v as f64 / total))
            })
            .filter(|&(_, _, share)| share >= min_share)
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        out.truncate(top);
        out
    }
}

/// IoU per class, mIoU and pixel accuracy of `confusion` [K, K].
pub fn scores(confusion: &[u64], k: usize) -> Scores {
    let at = |t: usize, p: usize| confusion.get(t * k + p).copied().unwrap_or(0) as f64;
    let iou: Vec<Option<f64>> = (0..k)
        .map(|c| {
            let tp = at(c, c);
            let row: f64 = (0..k).map(|p| at(c, p)).sum();
            let col: f64 = (0..k).map(|t| at(t, c)).sum();
            let union = row + col - tp;
            (union > 0.0).then(|| tp / union)
        })
        .collect();
    let defined: Vec<f64> = iou.iter().flatten().copied().collect();
    let total: f64 = confusion.iter().map(|&v| v as f64).sum();
    let correct: f64 = (0..k).map(|c| at(c, c)).sum();
    Scores {
        miou: if defined.is_empty() {
            0.0
        } else {
            defined.iter().sum::<f64>() / defined.len() as f64
        },
        pixel_acc: if total > 0.0 { correct / total } else { 0.0 },
        iou,
        confusion: (0..k * k)
            .map(|i| confusion.get(i).copied().unwrap_or(0))
            .collect(),
    }
}

/// Which foreground classes occur in each image: y[n, c] = 1 when some pixel of image n carries
/// the c-th foreground class, else 0. The foreground classes are the ids 0..=C except
/// `background`, in increasing order (with `background` 0: id c + 1 → column c). Pixels equal
/// to `ignore_index` are skipped; any other id outside 0..=C is an error naming the pixel.
///
/// * `label`: [N, H, W] i32 (`n` images of `plane` pixels).
/// * `y`: [N, C] (C = `foreground` classes), overwritten.
pub fn image_labels_fwd<T: Real>(
    label: &[i32],
    n: usize,
    plane: usize,
    foreground: usize,
    background: i32,
    ignore_index: i32,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "image_labels_fwd";
    check_len(K, "label", label, n * plane)?;
    check_len(K, "y", y, n * foreground)?;
    if !usize::try_from(background).is_ok_and(|b| b <= foreground) {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!("the background id {background} is not in 0..={foreground}"),
        });
    }
    y.fill(T::zero());
    for (i, &t) in label.iter().enumerate() {
        if t == ignore_index || t == background {
            continue;
        }
        let column = usize::try_from(t)
            .ok()
            .filter(|&id| id <= foreground)
            .map(|id| if t > background { id - 1 } else { id });
        let Some(c) = column else {
            return Err(KernelError::Shape {
                kernel: K,
                reason: format!(
                    "label {t} at pixel {} of image {} is not in 0..={foreground} (background \
                     {background}) nor the ignore index {ignore_index}",
                    i % plane.max(1),
                    i / plane.max(1)
                ),
            });
        };
        y[(i / plane) * foreground + c] = T::one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_agreement_counts_only_valid_masked_pixels() {
        let pred = [1, 2, 3, 0, 5, 7];
        let target = [1, 2, 0, 255, 5, 7];
        assert_eq!(
            super::label_agreement_fwd(&pred, &target, None, 255, None).unwrap(),
            [4, 5]
        );
        // Skipping class 0 drops pixel 2 (target 0).
        assert_eq!(
            super::label_agreement_fwd(&pred, &target, None, 255, Some(0)).unwrap(),
            [4, 4]
        );
        let mask = [1.0, 0.0, 0.7, 1.0, f32::NAN, -1.0];
        // Counted: pixel 0 (agrees) and 2 (does not); 1, 4, 5 masked out, 3 ignored.
        assert_eq!(
            super::label_agreement_fwd(&pred, &target, Some(&mask), 255, None).unwrap(),
            [1, 2]
        );
        assert!(super::label_agreement_fwd(&pred, &target[..5], None, 255, None).is_err());
    }

    use super::*;

    #[test]
    fn hand_computed_confusion_and_miou() {
        // K = 3. label: 0 0 1 1 2 255, pred: 0 1 1 1 0 2.
        let label = [0, 0, 1, 1, 2, 255];
        let pred = [0, 1, 1, 1, 0, 2];
        let mut c = vec![0u64; 9];
        confusion_add(&pred, &label, 3, 255, &mut c).unwrap();
        // rows = truth: 0 → [1,1,0], 1 → [0,2,0], 2 → [1,0,0]
        assert_eq!(c, [1, 1, 0, 0, 2, 0, 1, 0, 0]);
        let s = scores(&c, 3);
        // IoU0 = 1/(2+2−1) = 1/3, IoU1 = 2/(2+3−2) = 2/3, IoU2 = 0/(1+0−0) = 0.
        assert_eq!(s.iou, [Some(1.0 / 3.0), Some(2.0 / 3.0), Some(0.0)]);
        assert!((s.miou - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.pixel_acc - 3.0 / 5.0).abs() < 1e-12);
        assert_eq!(s.confusion, c);
        // Truth 2 is always called 0; half of truth 0 is called 1; truth 1 never mixed up.
        assert_eq!(s.mixups(5, 0.0), [(2, 0, 1.0), (0, 1, 0.5)]);
        assert_eq!(s.mixups(1, 0.0), [(2, 0, 1.0)]);
        assert_eq!(s.mixups(5, 0.6), [(2, 0, 1.0)]);
        // Accumulates.
        confusion_add(&[2], &[2], 3, 255, &mut c).unwrap();
        assert_eq!(c[8], 1);
    }

    #[test]
    fn absent_classes_do_not_enter_the_mean() {
        let c = [3u64, 0, 0, 0]; // K = 2, class 1 never seen nor predicted
        let s = scores(&c, 2);
        assert_eq!(s.iou, [Some(1.0), None]);
        assert_eq!(s.miou, 1.0);
    }

    #[test]
    fn out_of_range_labels_are_errors() {
        let mut c = vec![0u64; 4];
        let e = confusion_add(&[0, 5], &[0, 1], 2, 255, &mut c).unwrap_err();
        assert!(e.to_string().contains("pixel 1"), "{e}");
        assert!(confusion_add(&[0], &[-1], 2, 255, &mut c).is_err());
        assert!(confusion_add(&[0], &[0, 1], 2, 255, &mut c).is_err());
    }

    #[test]
    fn image_labels_hand_computed() {
        // Two images of 4 pixels, ids 0..=3 (3 foreground classes), background 0, ignore 255.
        let label = [0, 2, 2, 255, 3, 1, 0, 0];
        let mut y = [f32::NAN; 6];
        image_labels_fwd(&label, 2, 4, 3, 0, 255, &mut y).unwrap();
        assert_eq!(y, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        // Background 2: the foreground ids are 0, 1, 3 → columns 0, 1, 2.
        image_labels_fwd(&label, 2, 4, 3, 2, 255, &mut y).unwrap();
        assert_eq!(y, [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let e = image_labels_fwd(&[4], 1, 1, 3, 0, 255, &mut y[..3]).unwrap_err();
        assert!(
            e.to_string().contains("label 4 at pixel 0 of image 0"),
            "{e}"
        );
    }
}
