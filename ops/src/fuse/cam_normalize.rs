//! `cam_normalize`: class activation maps from a classifier's dense class scores, each map
//! gated by its image-level label and scaled to [0, 1] — PseudoSeg's Grad-CAM seeds
//! (googleinterns/wss core/train_utils_core.py `compute_cam_v2`: `tf.nn.relu(...)`,
//! `cams = cls_label * cams`, `_div_maybe_zero(cams, tf.reduce_max(cams, axis=(1, 2)))`,
//! `tf.stop_gradient`).
//!
//! y[n, c] = [m > 0]·x / max(m, 1e-5) with x = ReLU(scores[n, c])·labels[n, c] and m = max over
//! H·W of x. With `scores` the bias-free dense map W∗A of a GAP + linear classifier
//! (`cam_classifier`'s `scores`), this is Grad-CAM exactly: ∂logit_c/∂A_k(h, w) = W_ck/(h·w), so
//! Grad-CAM's channel weights are W_ck/(h·w) and its map ReLU(Σ_k W_ck A_k)/(h·w); the positive
//! factor 1/(h·w) cancels in the division by the max (ops/tests/grad_cam.rs checks it against the
//! engine's `grad` op).
//!
//! Shapes: `scores` f32[N, C, h, w], `labels` f32[N, C, 1, 1] (usually 0/1: the classes present
//! or predicted) → `y` f32[N, C, h, w]. Kernel: `reduce::cam_normalize_fwd`.
//!
//! A stop-gradient (`Op::STOP_GRAD`), as in the official code. Not here: the background map
//! (`prepend_background` builds one), Grad-CAM of other classifiers (a `grad` node per class).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, NoParams};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::reduce::cam_normalize_fwd;

/// The `cam_normalize` op.
pub struct CamNormalize;

impl Op for CamNormalize {
    const NAME: &'static str = "cam_normalize";
    const SUMMARY: &'static str =
        "class activation maps ReLU(scores)·label scaled to [0, 1] (Grad-CAM); stop-gradient";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "scores",
            "f32[N, C, h, w] dense class scores (e.g. cam_classifier's `scores`)",
        ),
        Port::req(
            "labels",
            "f32[N, C, 1, 1] per-image class labels (0/1) gating each map",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, C, h, w] in [0, 1]")];
    const EXAMPLE: &'static str = "name: cam\nop: cam_normalize\n\
        inputs: { scores: cls.scores, labels: present.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("scores", Feed::Trainable(&[2, 3, 5, 7])),
            ("labels", Feed::Binary(&[2, 3, 1, 1])),
        ],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    /// Seeds for the self-attention head, constant as in the official code.
    const STOP_GRAD: bool = true;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let s = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let labels = io::spec(Self::INPUTS, inputs, 1)?;
        let want = TensorSpec::f32(&[s.n, s.c, 1, 1]);
        if *labels != want {
            return Err(format!(
                "`labels` must be {want} (N, C of `scores`), got {labels}"
            ));
        }
        Ok(vec![TensorSpec::nchw(s)])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let scores = io::f32(Self::INPUTS, inputs, 0)?;
        let labels = io::f32(Self::INPUTS, inputs, 1)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cam_normalize_fwd(scores, labels, shape, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let scores = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let labels = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::reduce::cam_normalize_fwd(
            cx.dev, &scores, &labels, shape, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_gating_and_scaling() {
        // [1, 2, 1, 3]: class 0 (−1, 2, 4) present → (0, 0.5, 1); class 1 (3, 6, 0) absent → 0.
        let scores = f32s(&[1, 2, 1, 3], &[-1.0, 2.0, 4.0, 3.0, 6.0, 0.0]);
        let labels = f32s(&[1, 2, 1, 1], &[1.0, 0.0]);
        let y = run(
            "name: c\nop: cam_normalize\n",
            &[Some(scores), Some(labels)],
        );
        assert_eq!(y[0].f32(), Some(&[0.0, 0.5, 1.0, 0.0, 0.0, 0.0][..]));
    }

    #[test]
    fn infer_checks_labels_against_scores() {
        let e = infer_err(
            "name: c\nop: cam_normalize\n",
            &[
                Some(TensorSpec::f32(&[2, 5, 8, 8])),
                Some(TensorSpec::f32(&[2, 5])),
            ],
        );
        assert_eq!(
            e,
            "`labels` must be f32[2, 5, 1, 1] (N, C of `scores`), got f32[2, 5]"
        );
    }
}
