//! `relu`: y = max(x, 0) element-wise, `torch.relu(x)`. `x` and `y`: f32, any shape, the same.
//!
//! Backward: `relu_bwd` (below, unregistered) computes dx = dy·[y > 0] from the forward
//! *output* (y > 0 exactly where x > 0), so the gradient at x = 0 is 0, as in PyTorch — and the
//! forward's input need not outlive the forward, which lets the fusion pass fold a `relu` into
//! the op before it (`batch_norm`'s `relu`) and a `relu_bwd` into the backward after it
//! (`batch_norm_bwd`'s `relu_y`). Its kernels' CUDA twins exist (kernels/src/cuda); the engine
//! does not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::activation::{relu_bwd, relu_fwd};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;

/// The `relu` op (no params).
pub struct Relu;

impl Op for Relu {
    const NAME: &'static str = "relu";
    const SUMMARY: &'static str = "rectified linear unit, y = max(x, 0) element-wise";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the shape of `x`")];
    const EXAMPLE: &'static str = "name: act\nop: relu\ninputs: { x: conv.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::TrainableOffZero(&[2, 3, 5, 7]))],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

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
        Ok(relu_fwd(x, y)?)
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
        Ok(cuda::activation::relu_fwd(cx.dev, &x, &mut y)?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `relu`: one `relu_bwd` node, dx from y and dy.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let y = g.output(0);
    let dy = grad::grad_output(g, Relu::OUTPUTS, 0)?;
    let [dx] = grad::outputs(g.emit::<ReluBwd>(NoParams {}, vec![Some(y), Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `relu` (emitted by its VJP, not registered): dx = dy·[y > 0].
pub(crate) struct ReluBwd;

impl Op for ReluBwd {
    const NAME: &'static str = "relu_bwd";
    const SUMMARY: &'static str = "gradient of relu, dx = dy where y > 0, else 0";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "y",
            "f32, any shape: relu's output (or its input: the same signs)",
        ),
        Port::req("dy", "f32, the spec of `x`: the gradient of relu's `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32, the spec of `y`")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let y = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let dy = io::spec(Self::INPUTS, inputs, 1)?;
        if dy != y {
            return Err(format!("`dy` must match `y` ({y}), got {dy}"));
        }
        Ok(vec![y.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let y = io::f32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(relu_bwd(y, dy, dx)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let y = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::activation::relu_bwd(cx.dev, &y, &dy, &mut dx)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    const NODE: &str = "name: act\nop: relu\ninputs: { x: conv.y }\n";

    #[test]
    fn hand_computed() {
        let x = f32s(&[1, 1, 1, 5], &[-2.0, -0.5, 0.0, 0.5, 3.0]);
        let y = run(NODE, &[Some(x)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 1, 5]));
        assert_eq!(y[0].f32(), Some(&[0.0, 0.0, 0.0, 0.5, 3.0][..]));
    }

    #[test]
    fn infer_rejects_i32_and_missing_input() {
        let e = infer_err(NODE, &[Some(TensorSpec::i32(&[2, 3]))]);
        assert_eq!(e, "`x` must be f32, got i32[2, 3]");
        assert_eq!(infer_err(NODE, &[None]), "`x` is required");
    }

    #[test]
    fn any_param_is_rejected() {
        let e = try_configure("name: act\nop: relu\nparams: { slope: 0.1 }\n").unwrap_err();
        assert!(e.message.contains("unknown field `slope`"), "{e}");
        assert_eq!((e.loc.line, e.loc.col), (3, 11));
    }
}
