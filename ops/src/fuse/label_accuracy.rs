//! `label_accuracy`: the fraction of pixels where a predicted label map agrees with a reference,
//! y = #{pred = target} / #{counted}, a pixel counted when `target` ≠ `ignore_index` and, when
//! `mask` is connected, its mask value is positive. The instrument of method work: with the
//! hidden ground truth of unlabeled images (`batch.u_label`, `unlabeled_truth: true`) and a
//! teacher's pseudo-labels it is the pseudo-label accuracy; with the confidence mask it is the
//! accuracy of the pixels a loss actually trains on. Logged through a graph's `metrics:`.
//!
//! `skip: <class>` leaves that class's target pixels out too (`skip: 0`: objects only).
//!
//! Shapes: `pred` i32[N, H, W], `target` i32[N, H, W], `mask` f32[N, H, W] (optional) → `y`
//! f32[] — NaN when no pixel is counted (logged as null), so "no confident pixel" never reads
//! as 0 % or 100 % accuracy.
//!
//! A stop-gradient: labels carry no gradient, and the result is a diagnostic.
//!
//! Not here: per-class accuracy or IoU of pseudo-labels (the evaluator scores models on
//! held-out images).

use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::metrics::label_agreement_fwd;
use serde::Deserialize;

/// The `label_accuracy` op.
pub struct LabelAccuracy;

/// Params of `label_accuracy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Target value of pixels not counted; default 255.
    #[serde(default = "default_ignore_index")]
    pub ignore_index: i32,
    /// A class whose pixels are not counted either: `skip: 0` measures the objects only, where
    /// a background-dominated image would read ~95 % accurate whatever the objects get.
    #[serde(default)]
    pub skip: Option<i32>,
}

fn default_ignore_index() -> i32 {
    255
}

impl Op for LabelAccuracy {
    const NAME: &'static str = "label_accuracy";
    const SUMMARY: &'static str =
        "fraction of (masked, non-ignored) pixels where two label maps agree: pseudo-label accuracy";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "pred",
            "i32[N, H, W]: predicted labels (e.g. pseudo-labels)",
        ),
        Port::req(
            "target",
            "i32[N, H, W]: reference labels (e.g. `batch.u_label`)",
        ),
        Port::opt("mask", "f32[N, H, W]: count only pixels where it is > 0"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "y",
        "f32[]: agreeing / counted pixels, NaN when none is counted",
    )];
    const EXAMPLE: &'static str = "name: pseudo_acc\nop: label_accuracy\n\
        inputs: { pred: pseudo.label, target: batch.u_label, mask: confident.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("pred", Feed::Labels(&[2, 5, 7])),
            ("target", Feed::Labels(&[2, 5, 7])),
            ("mask", Feed::Trainable(&[2, 5, 7])),
        ],
    }];
    type Params = Params;

    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let pred = io::spec(Self::INPUTS, inputs, 0)?;
        let target = io::spec(Self::INPUTS, inputs, 1)?;
        if pred.dtype != DType::I32 || pred.shape.len() != 3 {
            return Err(format!("`pred` must be i32[N, H, W], got {pred}"));
        }
        if target != pred {
            return Err(format!("`target` must be {pred} like `pred`, got {target}"));
        }
        if let Some(mask) = inputs.get(2).copied().flatten() {
            if mask.dtype != DType::F32 || mask.shape != pred.shape {
                return Err(format!(
                    "`mask` must be f32{:?} like `pred`, got {mask}",
                    pred.shape
                ));
            }
        }
        Ok(vec![TensorSpec::scalar()])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let pred = io::i32(Self::INPUTS, inputs, 0)?;
        let target = io::i32(Self::INPUTS, inputs, 1)?;
        let mask = io::f32_opt(Self::INPUTS, inputs, 2)?;
        let [agree, counted] = label_agreement_fwd(pred, target, mask, p.ignore_index, p.skip)?;
        let y = if counted == 0 {
            f32::NAN
        } else {
            (agree as f64 / counted as f64) as f32
        };
        io::f32_out(Self::OUTPUTS, outputs, 0)?.fill(y);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, i32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn agreement_over_counted_pixels_and_nan_over_none() {
        let node = "name: a\nop: label_accuracy\n";
        let pred = Some(i32s(&[1, 2, 3], &[1, 2, 3, 4, 5, 0]));
        let target = Some(i32s(&[1, 2, 3], &[1, 2, 0, 255, 5, 1]));
        let y = run(node, &[pred.clone(), target.clone(), None]);
        assert_eq!(y[0].f32(), Some(&[0.6f32][..]));
        let mask = Some(f32s(&[1, 2, 3], &[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]));
        let y = run(node, &[pred.clone(), target.clone(), mask]);
        assert_eq!(y[0].f32(), Some(&[0.5f32][..]));
        let none = Some(f32s(&[1, 2, 3], &[0.0; 6]));
        let y = run(node, &[pred.clone(), target.clone(), none]);
        assert!(y[0].f32().unwrap()[0].is_nan());
        // Without class 0: pixel 2 (target 0) leaves the count.
        let y = run(
            "name: a\nop: label_accuracy\nparams: { skip: 0 }\n",
            &[pred, target, None],
        );
        assert_eq!(y[0].f32(), Some(&[0.75f32][..]));
    }

    #[test]
    fn shapes_are_checked() {
        let node = "name: a\nop: label_accuracy\n";
        let l = Some(TensorSpec::i32(&[2, 4, 4]));
        let e = infer_err(node, &[l.clone(), Some(TensorSpec::i32(&[2, 4, 5])), None]);
        assert!(e.contains("`target` must be"), "{e}");
        let e = infer_err(node, &[Some(TensorSpec::f32(&[2, 4, 4])), l.clone(), None]);
        assert!(e.contains("`pred` must be i32[N, H, W]"), "{e}");
        let e = infer_err(node, &[l.clone(), l, Some(TensorSpec::f32(&[2, 4]))]);
        assert!(e.contains("`mask` must be"), "{e}");
    }
}
