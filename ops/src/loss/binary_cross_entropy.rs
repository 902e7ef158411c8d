//! `binary_cross_entropy`: multi-label classification loss on logits, the mean over every
//! element of max(x, 0) − x·t + ln(1 + e^(−|x|)) — PseudoSeg's classifier loss
//! (googleinterns/wss train_wss.py `_build_pseudo_seg`: `tf.nn.sigmoid_cross_entropy_with_logits(
//! labels=cls_label, logits=logits_cls)` then `tf.reduce_mean`), PyTorch's
//! `F.binary_cross_entropy_with_logits(x, t)`.
//!
//! Shapes: `logits` f32 of any shape (e.g. [N, C, 1, 1] class logits), `target` the same spec
//! (0/1 labels or probabilities; a constant) → `loss` f32[].
//!
//! Backward: `binary_cross_entropy_bwd` (below, unregistered) computes dlogits = dloss·(σ(x) −
//! t)/len. The target is a constant: one that depends on trainable state is an error, to be
//! made explicit with `detach`. Kernels: `loss::binary_cross_entropy_fwd/bwd`.
//!
//! Not here: per-element weights, `pos_weight`, a sum or other denominators.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, NoParams, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::loss::{binary_cross_entropy_bwd, binary_cross_entropy_fwd};

/// The `binary_cross_entropy` op.
pub struct BinaryCrossEntropy;

impl Op for BinaryCrossEntropy {
    const NAME: &'static str = "binary_cross_entropy";
    const SUMMARY: &'static str =
        "multi-label sigmoid cross entropy on logits, mean over every element";
    const INPUTS: &'static [Port] = &[
        Port::req("logits", "f32, any shape (e.g. [N, C, 1, 1] class logits)"),
        Port::req(
            "target",
            "f32, the spec of `logits`: labels in [0, 1] (a constant)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("loss", "f32[] scalar")];
    const EXAMPLE: &'static str = "name: cls_loss\nop: binary_cross_entropy\n\
        inputs: { logits: cls.logits, target: present.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("logits", Feed::Trainable(&[2, 3, 1, 1])),
            ("target", Feed::Binary(&[2, 3, 1, 1])),
        ],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let logits = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let target = io::spec(Self::INPUTS, inputs, 1)?;
        if target != logits {
            return Err(format!(
                "`target` must match `logits` ({logits}), got {target}"
            ));
        }
        Ok(vec![TensorSpec::scalar()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let logits = io::f32(Self::INPUTS, inputs, 0)?;
        let target = io::f32(Self::INPUTS, inputs, 1)?;
        let value = binary_cross_entropy_fwd(logits, target)?;
        match io::f32_out(Self::OUTPUTS, outputs, 0)? {
            [out] => {
                *out = value;
                Ok(())
            }
            other => Err(OpError::Output {
                port: "loss",
                problem: format!("expected a scalar output, got {} elements", other.len()),
            }),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let logits = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let target = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut loss = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::loss::binary_cross_entropy_fwd(
            cx.dev, &logits, &target, &mut loss,
        )?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `binary_cross_entropy`: one `binary_cross_entropy_bwd` node for dlogits; a target
/// that would need a gradient is refused.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    let ports = BinaryCrossEntropy::INPUTS;
    grad::constant_input(g, ports, 1, BinaryCrossEntropy::NAME, "the target")?;
    if !g.needs_grad(0) {
        return Ok(());
    }
    let logits = grad::input(g, ports, 0)?;
    let target = grad::input(g, ports, 1)?;
    let dloss = grad::grad_output(g, BinaryCrossEntropy::OUTPUTS, 0)?;
    let inputs = vec![Some(logits), Some(target), Some(dloss)];
    let [dlogits] = grad::outputs(g.emit::<BinaryCrossEntropyBwd>(NoParams {}, inputs)?)?;
    g.set_grad(0, dlogits);
    Ok(())
}

/// Backward of `binary_cross_entropy` (emitted by its VJP, not registered): dlogits =
/// dloss·(σ(x) − t)/len.
struct BinaryCrossEntropyBwd;

impl Op for BinaryCrossEntropyBwd {
    const NAME: &'static str = "binary_cross_entropy_bwd";
    const SUMMARY: &'static str = "gradient of binary_cross_entropy: dloss·(σ(x) − t)/len";
    const INPUTS: &'static [Port] = &[
        Port::req("logits", "f32: binary_cross_entropy's logits"),
        Port::req("target", "f32: its target"),
        Port::req(
            "dloss",
            "f32[]: the gradient of its `loss`, read at run time",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dlogits", "f32, the spec of `logits`")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(p: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        BinaryCrossEntropy::infer(p, &inputs[..inputs.len().min(2)])?;
        io::scalar_spec(Self::INPUTS, inputs, 2)?;
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let logits = io::f32(Self::INPUTS, inputs, 0)?;
        let target = io::f32(Self::INPUTS, inputs, 1)?;
        let dloss = match io::f32(Self::INPUTS, inputs, 2)? {
            [v] => *v,
            other => {
                return Err(OpError::Input {
                    port: "dloss",
                    problem: format!("expected a scalar, got {} elements", other.len()),
                })
            }
        };
        let dlogits = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(binary_cross_entropy_bwd(logits, target, dloss, dlogits)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let logits = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let target = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let dloss = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let mut dlogits = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let dev = cx.dev;
        Ok(cuda::loss::binary_cross_entropy_bwd(
            dev,
            &logits,
            &target,
            &dloss,
            &mut dlogits,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_mean() {
        // x = 0, t = 1: ln 2; x = ln 3, t = 0: ln 4. Mean: (ln 2 + ln 4)/2 = 1.5·ln 2.
        let x = f32s(&[1, 2, 1, 1], &[0.0, 3f32.ln()]);
        let t = f32s(&[1, 2, 1, 1], &[1.0, 0.0]);
        let out = run("name: l\nop: binary_cross_entropy\n", &[Some(x), Some(t)]);
        let got = out[0].f32().unwrap()[0];
        assert!((f64::from(got) - 1.5 * 2f64.ln()).abs() < 1e-6, "{got}");
    }

    #[test]
    fn infer_checks_target() {
        let e = infer_err(
            "name: l\nop: binary_cross_entropy\n",
            &[
                Some(TensorSpec::f32(&[2, 3, 1, 1])),
                Some(TensorSpec::f32(&[2, 3])),
            ],
        );
        assert_eq!(
            e,
            "`target` must match `logits` (f32[2, 3, 1, 1]), got f32[2, 3]"
        );
    }
}
