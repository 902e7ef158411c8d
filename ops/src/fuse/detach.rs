//! `detach`: the explicit stop-gradient of the design (DESIGN.md §2: autodiff flows along data
//! edges from trainable state to the losses, cut at stop-grads). `y` is an identical copy of
//! `x`, `x.detach()` in PyTorch, and no gradient flows back through it: write it where a value
//! that depends on trainable state must act as a constant (a pseudo-label or weight computed by
//! the student itself, a target in a consistency loss). Autodiff refuses to guess: a gradient
//! that would have to cross an op without a vector-Jacobian rule is FS0109, whose hint points
//! here.
//!
//! Shapes: `x` f32 of any shape → `y` the same spec.
//!
//! Not here: the CUDA launcher (a device copy, or an alias once the memory plan allows it).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};

/// The `detach` op (no params).
pub struct Detach;

impl Op for Detach {
    const NAME: &'static str = "detach";
    const SUMMARY: &'static str = "stop-gradient: y is a copy of x through which no gradient flows";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the spec of `x`, a copy")];
    const EXAMPLE: &'static str = "name: target\nop: detach\ninputs: { x: student_probs.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    /// The whole point of the op: its output carries no gradient.
    const STOP_GRAD: bool = true;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        if y.len() != x.len() {
            return Err(OpError::Output {
                port: "y",
                problem: format!("has {} elements, `x` has {}", y.len(), x.len()),
            });
        }
        y.copy_from_slice(x);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cx.dev.copy(&x, &mut y)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{configure, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    const NODE: &str = "name: target\nop: detach\n";

    #[test]
    fn copies_and_stops_the_gradient() {
        let x = f32s(&[2, 2], &[1.0, -2.0, f32::INFINITY, 0.5]);
        let y = run(NODE, &[Some(x.clone())]);
        assert_eq!(y[0].spec(), x.spec());
        assert_eq!(y[0].f32(), x.f32());
        assert!(configure(NODE).stop_grad());
    }

    #[test]
    fn infer_rejects_i32() {
        let e = infer_err(NODE, &[Some(TensorSpec::i32(&[4]))]);
        assert_eq!(e, "`x` must be f32, got i32[4]");
    }
}
