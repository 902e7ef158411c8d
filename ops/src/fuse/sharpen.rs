//! `sharpen`: temperature sharpening of probability maps, y_k = p_k^(1/T) / Σ_j p_j^(1/T) at
//! each pixel — PseudoSeg's soft pseudo-label (googleinterns/wss train_wss.py
//! `_build_pseudo_seg`: `prob_weak = tf.pow(prob_weak, 1. / FLAGS.temperature)`, then
//! `/= tf.reduce_sum(prob_weak, axis=-1, keepdims=True)`, flag `temperature` 0.5).
//!
//! Shapes: `probs` f32[N, K, H, W] (non-negative; each pixel need not sum to 1) → `y` the same
//! spec. Computed max-normalised so that a large 1/T cannot underflow a pixel to zeros; a pixel
//! whose probabilities are all 0 gives 0 (the official division would give NaN there). Kernel:
//! `softmax::sharpen_fwd`.
//!
//! A stop-gradient (`Op::STOP_GRAD`): the sharpened map is a target, held constant by the loss
//! it feeds (the official code wraps the pseudo-label in `tf.stop_gradient`). Not here: a
//! differentiable sharpening (MixMatch-style targets through which gradients flow).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::softmax::sharpen_fwd;
use serde::{Deserialize, Deserializer};

/// The `sharpen` op.
pub struct Sharpen;

/// Params of `sharpen`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// T, finite and > 0; default 0.5 (PseudoSeg's). T < 1 sharpens, T = 1 only renormalises.
    #[serde(default = "half", deserialize_with = "positive")]
    pub temperature: f32,
}

fn half() -> f32 {
    0.5
}

/// Rejects a temperature the kernel would refuse at run time, now and at its line:column.
fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let t = f32::deserialize(d)?;
    if t.is_finite() && t > 0.0 {
        Ok(t)
    } else {
        Err(serde::de::Error::custom(format!(
            "the temperature must be finite and > 0, got {t}"
        )))
    }
}

impl Op for Sharpen {
    const NAME: &'static str = "sharpen";
    const SUMMARY: &'static str =
        "temperature sharpening of probabilities p^(1/T)/Σp^(1/T) per pixel; a stop-gradient";
    const INPUTS: &'static [Port] = &[Port::req(
        "probs",
        "f32[N, K, H, W] probabilities (≥ 0) over the K classes",
    )];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, K, H, W], each pixel sums to 1")];
    const EXAMPLE: &'static str = "name: target\nop: sharpen\n\
        inputs: { probs: fused.y }\nparams: { temperature: 0.5 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("probs", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// A pseudo-label target: constant for the loss that reads it.
    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![TensorSpec::nchw(io::nchw_f32(
            Self::INPUTS,
            inputs,
            0,
        )?)])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let probs = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(sharpen_fwd(probs, shape, p.temperature, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let probs = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::softmax::sharpen_fwd(
            cx.dev,
            &probs,
            shape,
            p.temperature,
            &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_default_temperature() {
        // [1, 2, 1, 2], class-major: pixel 0 (1/4, 3/4) → squares (1/16, 9/16) → (0.1, 0.9);
        // pixel 1 (1/2, 1/2) stays.
        let p = f32s(&[1, 2, 1, 2], &[0.25, 0.5, 0.75, 0.5]);
        let y = run("name: s\nop: sharpen\n", &[Some(p)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 2, 1, 2]));
        assert_close(y[0].f32().unwrap(), &[0.1, 0.5, 0.9, 0.5], 1e-6);
    }

    #[test]
    fn temperature_is_checked_where_written() {
        let e = try_configure("name: s\nop: sharpen\nparams:\n  temperature: 0\n").unwrap_err();
        assert!(e.message.contains("finite and > 0"), "{e}");
        assert_eq!(e.loc.line, 4);
        let e = infer_err("name: s\nop: sharpen\n", &[Some(TensorSpec::f32(&[2, 3]))]);
        assert_eq!(e, "`probs` must be f32[N, C, H, W], got f32[2, 3]");
    }
}
