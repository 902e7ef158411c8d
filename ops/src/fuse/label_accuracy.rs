//! `label_accuracy`: the fraction of pixels where a predicted label map agrees with a reference,
//! y = #{pred = target} / #{counted}, a pixel counted when `target` ≠ `ignore_index` and, when
//! `mask` is connected, its mask value is positive. The instrument of method work: with the
//! hidden ground truth of unlabeled images (`batch.u_label`, `unlabeled_truth: true`) and a
//! teacher's pseudo-labels it is the pseudo-label accuracy; with the confidence mask it is the
//! accuracy of the pixels a loss actually trains on. Logged through a graph's `metrics:`.
//!
//! `skip: <class>` leaves that class's target pixels out too (`skip: 0`: objects only);
//! `only: <class>` counts that class's target pixels alone (`only: 0`: the background).
//!
//! `recall: true` keeps the pixels outside `mask` in the count, where they never agree:
//! y = #{pred = target, mask > 0} / #{counted without the mask}, the share of the reference
//! that the masked labels recover. With a confidence mask and `skip: 0` it says how much of the
//! objects a thresholded loss trains on correctly; with `only: 0`, how much of the background.
//! The two side by side show whether a threshold keeps one class and drops another.
//!
//! Shapes: `pred` i32[N, H, W], `target` i32[N, H, W], `mask` f32[N, H, W] (optional) → `y`
//! f32[] — NaN when no pixel is counted (logged as null), so "no confident pixel" never reads
//! as 0 % or 100 % accuracy.
//!
//! A stop-gradient: labels carry no gradient, and the result is a diagnostic.
//!
//! Not here: a whole per-class table or IoU of pseudo-labels (the evaluator scores models on
//! held-out images).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
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
    /// The one class whose target pixels are counted (`only: 0`: the background); not with
    /// `skip`.
    #[serde(default)]
    pub only: Option<i32>,
    /// Count the pixels outside `mask` too, as disagreeing: the recall of the masked labels.
    #[serde(default)]
    pub recall: bool,
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

    fn has_cuda(_: &Params) -> bool {
        true
    }

    const STOP_GRAD: bool = true;

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        if let (Some(skip), Some(only)) = (p.skip, p.only) {
            return Err(format!(
                "`skip: {skip}` and `only: {only}` together: `only` already leaves every other class out"
            ));
        }
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
        // `only: c` is all classes minus "all but c", so the one kernel serves both.
        let count = |mask: Option<&[f32]>| -> Result<[u64; 2], OpError> {
            let i = p.ignore_index;
            Ok(match p.only {
                None => label_agreement_fwd(pred, target, mask, i, p.skip)?,
                Some(c) => {
                    let [a, n] = label_agreement_fwd(pred, target, mask, i, None)?;
                    let [a_rest, n_rest] = label_agreement_fwd(pred, target, mask, i, Some(c))?;
                    [a - a_rest, n - n_rest]
                }
            })
        };
        let [agree, mut counted] = count(mask)?;
        if p.recall {
            counted = count(None)?[1];
        }
        let y = if counted == 0 {
            f32::NAN
        } else {
            (agree as f64 / counted as f64) as f32
        };
        io::f32_out(Self::OUTPUTS, outputs, 0)?.fill(y);
        Ok(())
    }

    /// The counts are made on the device and read back (an instrument: one small synchronous
    /// copy per node), the ratio written as on the CPU.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let pred = dev_io::i32(Self::INPUTS, inputs, 0)?;
        let target = dev_io::i32(Self::INPUTS, inputs, 1)?;
        let mask = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let dev = cx.dev;
        let count = |mask: Option<&cuda::RawBuf<f32>>,
                     skip: Option<i32>|
         -> Result<[u64; 2], OpError> {
            // Fresh (zeroed) counts per call: the kernel adds to them, and `only` and `recall`
            // count up to four times.
            let scratch = dev.alloc_bytes(16)?;
            let mask = mask.map(|m| m as &dyn cuda::DeviceBuf<f32>);
            let at = cuda::DeviceBuf::<u8>::device_addr(&scratch, dev.stream());
            // SAFETY: `scratch` holds 16 bytes, two u64, and outlives the launch and the copy.
            let mut counts = unsafe { cuda::RawBuf::<u64>::new(at, 2) };
            let i = p.ignore_index;
            cuda::metrics::label_agreement_fwd(dev, &pred, &target, mask, i, skip, &mut counts)?;
            let mut host = [0u64; 2];
            dev.download_into(&counts, &mut host)?;
            Ok(host)
        };
        let both = |mask: Option<&cuda::RawBuf<f32>>| -> Result<[u64; 2], OpError> {
            Ok(match p.only {
                None => count(mask, p.skip)?,
                Some(c) => {
                    let [a, n] = count(mask, None)?;
                    let [a_rest, n_rest] = count(mask, Some(c))?;
                    [a - a_rest, n - n_rest]
                }
            })
        };
        let [agree, mut counted] = both(mask.as_ref())?;
        if p.recall {
            counted = both(None)?[1];
        }
        let y = if counted == 0 {
            f32::NAN
        } else {
            (agree as f64 / counted as f64) as f32
        };
        let mut out = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        dev.fill32::<f32>(&mut out, y.to_bits())?;
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
    fn recall_counts_the_masked_out_pixels_and_only_selects_one_class() {
        // target:  1  2  0 | 255  5  1     pred: 1 2 3 | 4 5 0     mask: 1 0 1 | 1 0 1
        let pred = Some(i32s(&[1, 2, 3], &[1, 2, 3, 4, 5, 0]));
        let target = Some(i32s(&[1, 2, 3], &[1, 2, 0, 255, 5, 1]));
        let mask = Some(f32s(&[1, 2, 3], &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]));
        let y = |params: &str| {
            let node = format!("name: a\nop: label_accuracy\nparams: {params}\n");
            run(&node, &[pred.clone(), target.clone(), mask.clone()])[0]
                .f32()
                .unwrap()[0]
        };
        // Counted (non-ignored) pixels 0, 1, 2, 4, 5; masked-in 0, 2, 5; agreeing there: 0.
        assert_eq!(y("{}"), 1.0 / 3.0);
        assert_eq!(y("{ recall: true }"), 1.0 / 5.0);
        // Objects (target ≠ 0): pixels 0, 1, 4, 5, of which 0 agrees under the mask.
        assert_eq!(y("{ skip: 0, recall: true }"), 1.0 / 4.0);
        // Class 1 only: pixels 0 and 5, both masked in, 0 agrees.
        assert_eq!(y("{ only: 1 }"), 0.5);
        // Background only: pixel 2, masked in, disagreeing.
        assert_eq!(y("{ only: 0, recall: true }"), 0.0);
        // Class 5 only: pixel 4 agrees but is masked out.
        assert!(y("{ only: 5 }").is_nan());
        assert_eq!(y("{ only: 5, recall: true }"), 0.0);
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
        let both = "name: a\nop: label_accuracy\nparams: { skip: 0, only: 1 }\n";
        let l = Some(TensorSpec::i32(&[2, 4, 4]));
        let e = infer_err(both, &[l.clone(), l, None]);
        assert!(e.contains("`skip: 0` and `only: 1` together"), "{e}");
    }
}
