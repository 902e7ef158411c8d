//! `max_confidence`: the pseudo-label primitive. At every pixel, `confidence` = max_k probs_k
//! and `label` = argmax_k probs_k (the first maximum on ties; a NaN wins, so a diverged teacher
//! stays visible), i.e. `conf, label = torch.max(probs, dim=1)`.
//!
//! Shapes: `probs` f32[N, K, H, W] with K ≥ 1 → `confidence` f32[N, H, W] and `label`
//! i32[N, H, W]. Thresholding the confidence into a mask is a separate element-wise op.
//!
//! A stop-gradient (`Op::STOP_GRAD`): neither output carries a gradient back to `probs`. Its
//! kernels' CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::argmax::max_fwd;
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;

/// The `max_confidence` op (no params).
pub struct MaxConfidence;

impl Op for MaxConfidence {
    const NAME: &'static str = "max_confidence";
    const SUMMARY: &'static str =
        "per-pixel max probability and its class: a pseudo-label and its confidence";
    const INPUTS: &'static [Port] = &[Port::req(
        "probs",
        "f32[N, K, H, W] class probabilities (or any scores), K ≥ 1",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req("confidence", "f32[N, H, W], max over K"),
        Port::req("label", "i32[N, H, W], the class attaining it, in [0, K)"),
    ];
    const EXAMPLE: &'static str =
        "name: pseudo\nop: max_confidence\ninputs: { probs: teacher_probs.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("probs", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    /// The pseudo-label primitive: its label and confidence are targets and weights for another
    /// branch's loss, constants by definition (FixMatch, UniMatch and kin detach them), so
    /// autodiff stops here. (`confidence` does have a gradient — routed to the winning class —
    /// but no method wants it; a method that did would need its own op.)
    const STOP_GRAD: bool = true;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let p = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if p.c == 0 {
            return Err(format!(
                "`probs` must have at least one class (K ≥ 1), got {}",
                TensorSpec::nchw(p)
            ));
        }
        let pixels = [p.n, p.h, p.w];
        Ok(vec![TensorSpec::f32(&pixels), TensorSpec::i32(&pixels)])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let probs = io::f32(Self::INPUTS, inputs, 0)?;
        // Two outputs borrowed at once: split so each helper sees its own slice and port.
        let (conf, label) = outputs.split_at_mut(1);
        let conf = io::f32_out(&Self::OUTPUTS[..1], conf, 0)?;
        let label = io::i32_out(&Self::OUTPUTS[1..], label, 0)?;
        Ok(max_fwd(probs, shape, conf, label)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let probs = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut conf = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let mut label = dev_io::i32_out(Self::OUTPUTS, outputs, 1)?;
        Ok(cuda::argmax::max_fwd(
            cx.dev, &probs, shape, &mut conf, &mut label,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    const NODE: &str = "name: pseudo\nop: max_confidence\n";

    #[test]
    fn hand_computed() {
        // [N=1, K=3, H=1, W=3], class-major. Pixels: (0.2, 0.5, 0.3) → 0.5 @ 1;
        // (0.6, 0.1, 0.3) → 0.6 @ 0; (0.4, 0.2, 0.4) → tie, the first wins: 0.4 @ 0.
        let probs = f32s(
            &[1, 3, 1, 3],
            &[0.2, 0.6, 0.4, 0.5, 0.1, 0.2, 0.3, 0.3, 0.4],
        );
        let out = run(NODE, &[Some(probs)]);
        assert_eq!(out[0].spec(), &TensorSpec::f32(&[1, 1, 3]));
        assert_eq!(out[0].f32(), Some(&[0.5, 0.6, 0.4][..]));
        assert_eq!(out[1].spec(), &TensorSpec::i32(&[1, 1, 3]));
        assert_eq!(out[1].i32(), Some(&[1, 0, 0][..]));
    }

    #[test]
    fn infer_rejects_labels_and_zero_classes() {
        let e = infer_err(NODE, &[Some(TensorSpec::i32(&[2, 4, 8, 8]))]);
        assert_eq!(e, "`probs` must be f32[N, C, H, W], got i32[2, 4, 8, 8]");
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[2, 0, 8, 8]))]);
        assert_eq!(
            e,
            "`probs` must have at least one class (K ≥ 1), got f32[2, 0, 8, 8]"
        );
    }
}
