//! `error_map`: how wrong a prediction is at each pixel, y = μ·Σ_k |onehot(label)_k − p_k| — the
//! first step of GCT's flaw-detector target (PixelSSL `ssl_gct.py`, `FDGTGenerator.forward`:
//! `torch.abs_(gt - pred.detach())`, summed over classes, times `mu`). The one-hot of an ignored
//! label (and of a label outside 0..K) is all zeros (`sslgct_prepare_task_gt_for_fdgt`
//! multiplies by `label != ignore_index`), so such a pixel gives μ·Σp = μ for probabilities.
//!
//! Shapes: `probs` f32[N, K, H, W], `label` i32[N, H, W] → `y` f32[N, 1, H, W].
//!
//! A stop-gradient (`Op::STOP_GRAD`): a target, computed from a detached prediction in the
//! official code. Not here: the blurs and the dilation that follow (`blur_map`, `max_pool2d`),
//! the CUDA launcher (`cuda::maps::error_map_fwd` exists; the engine does not dispatch yet).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::maps::error_map_fwd;
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `error_map` op.
pub struct ErrorMap;

/// Params of `error_map`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// μ, the factor on the per-pixel sum; default 0.5 (PixelSSL's `mu` for segmentation:
    /// the sum of |onehot − p| is at most 2, so μ = 0.5 maps it into [0, 1]).
    #[serde(default = "default_mu")]
    pub mu: f32,
    /// Label value whose one-hot is all zeros; default 255.
    #[serde(default = "default_ignore")]
    pub ignore_index: i32,
}

fn default_mu() -> f32 {
    0.5
}

fn default_ignore() -> i32 {
    255
}

impl Op for ErrorMap {
    const NAME: &'static str = "error_map";
    const SUMMARY: &'static str =
        "μ·Σ_k |onehot(label) − probs| per pixel (GCT's flaw target); a stop-gradient";
    const INPUTS: &'static [Port] = &[
        Port::req("probs", "f32[N, K, H, W]: class probabilities"),
        Port::req(
            "label",
            "i32[N, H, W]: class indices (ignore_index: all-zero one-hot)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, 1, H, W]")];
    const EXAMPLE: &'static str = "name: el\nop: error_map\n\
        inputs: { probs: pl0_lab.head, label: batch.label }\nparams: { mu: 0.5 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("probs", Feed::Trainable(&[2, 3, 4, 5])),
            ("label", Feed::Labels(&[2, 4, 5])),
        ],
    }];
    const STOP_GRAD: bool = true;
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let p = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let l = io::spec(Self::INPUTS, inputs, 1)?;
        if l.dtype != DType::I32 || l.shape != [p.n, p.h, p.w] {
            return Err(format!(
                "`label` must be i32[{}, {}, {}] (N, H, W of `probs`), got {l}",
                p.n, p.h, p.w
            ));
        }
        Ok(vec![TensorSpec::nchw(Nchw { c: 1, ..p })])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let probs = io::f32(Self::INPUTS, inputs, 0)?;
        let label = io::i32(Self::INPUTS, inputs, 1)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(error_map_fwd(probs, s, label, p.mu, p.ignore_index, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let probs = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let label = dev_io::i32(Self::INPUTS, inputs, 1)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let dev = cx.dev;
        Ok(cuda::maps::error_map_fwd(
            dev,
            &probs,
            s,
            &label,
            p.mu,
            p.ignore_index,
            &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, i32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed() {
        // K = 2, one image of 1×3, labels 0, 1, 255; μ = 1: 0.4, 0.6, and Σp = 1 when ignored.
        let probs = f32s(&[1, 2, 1, 3], &[0.8, 0.3, 0.6, 0.2, 0.7, 0.4]);
        let label = i32s(&[1, 1, 3], &[0, 1, 255]);
        let y = run(
            "name: e\nop: error_map\nparams: { mu: 1.0 }\n",
            &[Some(probs), Some(label)],
        );
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 1, 3]));
        assert_close(y[0].f32().unwrap(), &[0.4, 0.6, 1.0], 1e-6);
    }

    #[test]
    fn infer_rejects_a_label_of_another_size() {
        let e = infer_err(
            "name: e\nop: error_map\n",
            &[
                Some(TensorSpec::f32(&[2, 3, 4, 4])),
                Some(TensorSpec::i32(&[2, 4, 5])),
            ],
        );
        assert_eq!(
            e,
            "`label` must be i32[2, 4, 4] (N, H, W of `probs`), got i32[2, 4, 5]"
        );
    }
}
