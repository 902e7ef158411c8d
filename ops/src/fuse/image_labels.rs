//! `image_labels`: which foreground classes occur in each image of a label map, as a 0/1
//! vector — the image-level labels PseudoSeg trains its classifier on when only pixel labels
//! exist (googleinterns/wss train_wss.py `_build_pseudo_seg`, non-weakly setting: the
//! `cls_label` of the pixel-labelled samples, which core/data_generator.py `_preprocess_image`
//! derives from the cropped label map — the unique ids below the ignore label, each id c ≥ 1 a
//! one-hot row c − 1, id 0 a zero row), and the truth its predicted labels are measured against.
//!
//! y[n, c] = 1 when some pixel of image n carries the c-th foreground class: the ids other than
//! `background`, in increasing order (with background 0, id c + 1 → c); pixels at `ignore_index`
//! are skipped, any other id outside the K = C + 1 classes is a run-time error naming the pixel.
//!
//! Shapes: `label` i32[N, H, W], `like` f32[N, C, *, *] (lends C, the foreground class count:
//! e.g. a classifier's logits, so the graph never spells K) → `y` f32[N, C, 1, 1]. Kernel:
//! `metrics::image_labels_fwd`.
//!
//! A stop-gradient (`Op::STOP_GRAD`): labels are data. Not here: label smoothing, a minimum
//! pixel count per class.

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::metrics::image_labels_fwd;
use serde::Deserialize;

/// The `image_labels` op.
pub struct ImageLabels;

/// Params of `image_labels`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The class id that is not a foreground class; default 0.
    #[serde(default)]
    pub background: u32,
    /// Label value to skip; default 255.
    #[serde(default = "default_ignore_index")]
    pub ignore_index: i32,
}

fn default_ignore_index() -> i32 {
    255
}

impl Op for ImageLabels {
    const NAME: &'static str = "image_labels";
    const SUMMARY: &'static str =
        "per-image 0/1 vector of the foreground classes present in a label map; stop-gradient";
    const INPUTS: &'static [Port] = &[
        Port::req("label", "i32[N, H, W] class ids or ignore_index"),
        Port::req(
            "like",
            "f32[N, C, *, *]: lends C, the number of foreground classes (values unread)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, C, 1, 1], each 0 or 1")];
    const EXAMPLE: &'static str = "name: present\nop: image_labels\n\
        inputs: { label: batch.label, like: cls.logits }\nparams: { background: 0 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("label", Feed::Labels(&[2, 5, 7])),
            ("like", Feed::Trainable(&[2, 2, 1, 1])),
        ],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// Labels are data.
    const STOP_GRAD: bool = true;

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let label = io::spec(Self::INPUTS, inputs, 0)?;
        let [n, _, _] = match (label.dtype, &label.shape[..]) {
            (DType::I32, &[n, h, w]) => [n, h, w],
            _ => return Err(format!("`label` must be i32[N, H, W], got {label}")),
        };
        let like = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        if like.n != n {
            return Err(format!(
                "`like` must have the batch of `label` ({n}), got {}",
                TensorSpec::nchw(like)
            ));
        }
        if p.background as usize > like.c {
            return Err(format!(
                "`background` {} is not one of the {} classes (C = {} foreground + 1)",
                p.background,
                like.c + 1,
                like.c
            ));
        }
        Ok(vec![TensorSpec::f32(&[n, like.c, 1, 1])])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let label = io::i32(Self::INPUTS, inputs, 0)?;
        let like = io::nchw(Self::INPUTS, inputs, 1)?;
        let plane = label.len().checked_div(like.n).unwrap_or(0);
        let background = i32::try_from(p.background).unwrap_or(i32::MAX);
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(image_labels_fwd(
            label,
            like.n,
            plane,
            like.c,
            background,
            p.ignore_index,
            y,
        )?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let label = dev_io::i32(Self::INPUTS, inputs, 0)?;
        let like = dev_io::nchw(Self::INPUTS, inputs, 1)?;
        let plane = label.len().checked_div(like.n).unwrap_or(0);
        let background = i32::try_from(p.background).unwrap_or(i32::MAX);
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::metrics::image_labels_fwd(
            cx.dev,
            &label,
            like.n,
            plane,
            like.c,
            background,
            p.ignore_index,
            &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, i32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_presence() {
        // Two images of 2×2 pixels, K = 4 (C = 3): image 0 holds 0, 2, 255; image 1 holds 3, 1.
        let label = i32s(&[2, 2, 2], &[0, 2, 2, 255, 3, 1, 0, 0]);
        let like = f32s(&[2, 3, 1, 1], &[0.0; 6]);
        let y = run("name: l\nop: image_labels\n", &[Some(label), Some(like)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[2, 3, 1, 1]));
        assert_eq!(y[0].f32(), Some(&[0.0, 1.0, 0.0, 1.0, 0.0, 1.0][..]));
    }

    #[test]
    fn infer_checks_label_like_and_background() {
        let node = "name: l\nop: image_labels\n";
        let like = Some(TensorSpec::f32(&[2, 3, 1, 1]));
        let e = infer_err(node, &[Some(TensorSpec::f32(&[2, 4, 4])), like.clone()]);
        assert_eq!(e, "`label` must be i32[N, H, W], got f32[2, 4, 4]");
        let e = infer_err(node, &[Some(TensorSpec::i32(&[3, 4, 4])), like.clone()]);
        assert_eq!(
            e,
            "`like` must have the batch of `label` (3), got f32[2, 3, 1, 1]"
        );
        let e = infer_err(
            "name: l\nop: image_labels\nparams: { background: 4 }\n",
            &[Some(TensorSpec::i32(&[2, 4, 4])), like],
        );
        assert_eq!(
            e,
            "`background` 4 is not one of the 4 classes (C = 3 foreground + 1)"
        );
    }
}
