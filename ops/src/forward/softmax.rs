//! `softmax`: probabilities over the class axis, y_k = exp(x_k − m) / Σ_j exp(x_j − m) at
//! every pixel with m = max_k x_k; `torch.softmax(x, dim=1)`. `x` and `y`: f32[N, K, H, W].
//!
//! Backward: `softmax_bwd` (below, unregistered) computes dx = y·(dy − Σ_k dy·y) from the
//! forward *output* y, so x need not be kept for it. Its kernels' CUDA twins exist
//! (kernels/src/cuda); the engine does not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::softmax::{softmax_bwd, softmax_fwd};

/// The `softmax` op (no params).
pub struct Softmax;

impl Op for Softmax {
    const NAME: &'static str = "softmax";
    const SUMMARY: &'static str = "softmax over the class (channel) axis at every pixel";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, K, H, W] logits")];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "y",
        "f32[N, K, H, W] probabilities, summing to 1 over K",
    )];
    const EXAMPLE: &'static str = "name: probs\nop: softmax\ninputs: { x: head.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        Ok(vec![TensorSpec::nchw(x)])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(softmax_fwd(x, shape, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::softmax::softmax_fwd(cx.dev, &x, shape, &mut y)?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `softmax`: one `softmax_bwd` node, dx from the output y and dy.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let y = g.output(0);
    let dy = grad::grad_output(g, Softmax::OUTPUTS, 0)?;
    let [dx] = grad::outputs(g.emit::<SoftmaxBwd>(NoParams {}, vec![Some(y), Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `softmax` (emitted by its VJP, not registered): dx = y·(dy − Σ_k dy·y) at every
/// pixel.
struct SoftmaxBwd;

impl Op for SoftmaxBwd {
    const NAME: &'static str = "softmax_bwd";
    const SUMMARY: &'static str = "gradient of softmax over K, dx = y·(dy − Σ_k dy·y)";
    const INPUTS: &'static [Port] = &[
        Port::req("y", "f32[N, K, H, W]: softmax's output"),
        Port::req("dy", "f32[N, K, H, W]: the gradient of `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, K, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let y = TensorSpec::nchw(io::nchw_f32(Self::INPUTS, inputs, 0)?);
        let dy = io::spec(Self::INPUTS, inputs, 1)?;
        if *dy != y {
            return Err(format!("`dy` must match `y` ({y}), got {dy}"));
        }
        Ok(vec![y])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let y = io::f32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(softmax_bwd(y, dy, shape, dx)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let y = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::softmax::softmax_bwd(cx.dev, &y, &dy, shape, &mut dx)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    const NODE: &str = "name: probs\nop: softmax\n";

    #[test]
    fn hand_computed() {
        // [N=1, K=2, H=1, W=2], class-major: pixel 0 is (0, ln 3) → (1/4, 3/4); pixel 1 is
        // (0, 0) → (1/2, 1/2).
        let x = f32s(&[1, 2, 1, 2], &[0.0, 0.0, 3f32.ln(), 0.0]);
        let y = run(NODE, &[Some(x)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 2, 1, 2]));
        assert_close(y[0].f32().unwrap(), &[0.25, 0.5, 0.75, 0.5], 1e-6);
    }

    #[test]
    fn infer_needs_nchw() {
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[2, 3, 4]))]);
        assert_eq!(e, "`x` must be f32[N, C, H, W], got f32[2, 3, 4]");
    }
}
