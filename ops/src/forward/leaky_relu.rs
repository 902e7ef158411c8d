//! `leaky_relu`: y = x if x > 0 else slope·x, element-wise; `F.leaky_relu(x, negative_slope)`.
//! `x` and `y`: f32, any shape, the same.
//!
//! Backward: `leaky_relu_bwd` (below, unregistered) computes dx = dy if x > 0 else slope·dy
//! from the forward input (slope·dy at x = 0, as in PyTorch). Its kernels' CUDA twins exist
//! (kernels/src/cuda); the engine does not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::activation::{leaky_relu_bwd, leaky_relu_fwd};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use serde::Deserialize;

/// The `leaky_relu` op.
pub struct LeakyRelu;

/// Params of `leaky_relu`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Multiplier applied to non-positive inputs (PyTorch's `negative_slope`); default 0.01.
    #[serde(default = "default_slope")]
    pub slope: f32,
}

fn default_slope() -> f32 {
    0.01
}

impl Op for LeakyRelu {
    const NAME: &'static str = "leaky_relu";
    const SUMMARY: &'static str = "leaky rectifier, y = x if x > 0 else slope·x, element-wise";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the shape of `x`")];
    const EXAMPLE: &'static str =
        "name: act\nop: leaky_relu\ninputs: { x: conv.y }\nparams: { slope: 0.1 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ slope: 0.2 }",
        feeds: &[("x", Feed::TrainableOffZero(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(leaky_relu_fwd(x, p.slope, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::activation::leaky_relu_fwd(
            cx.dev, &x, p.slope, &mut y,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `leaky_relu`: one `leaky_relu_bwd` node (same params), dx from x and dy.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let x = grad::input(g, LeakyRelu::INPUTS, 0)?;
    let dy = grad::grad_output(g, LeakyRelu::OUTPUTS, 0)?;
    let [dx] = grad::outputs(g.emit::<LeakyReluBwd>(p.clone(), vec![Some(x), Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `leaky_relu` (emitted by its VJP, not registered): dx = dy if x > 0 else
/// slope·dy, with the forward's params.
struct LeakyReluBwd;

impl Op for LeakyReluBwd {
    const NAME: &'static str = "leaky_relu_bwd";
    const SUMMARY: &'static str = "gradient of leaky_relu, dx = dy if x > 0 else slope·dy";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32, any shape: leaky_relu's input"),
        Port::req(
            "dy",
            "f32, the spec of `x`: the gradient of leaky_relu's `y`",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32, the spec of `x`")];
    const EXAMPLE: &'static str = "";
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let dy = io::spec(Self::INPUTS, inputs, 1)?;
        if dy != x {
            return Err(format!("`dy` must match `x` ({x}), got {dy}"));
        }
        Ok(vec![x.clone()])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(leaky_relu_bwd(x, p.slope, dy, dx)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::activation::leaky_relu_bwd(
            cx.dev, &x, p.slope, &dy, &mut dx,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed() {
        let x = || Some(f32s(&[5], &[-2.0, -0.5, 0.0, 0.5, 3.0]));
        let y = run("name: a\nop: leaky_relu\nparams: { slope: 0.1 }\n", &[x()]);
        assert_eq!(y[0].f32(), Some(&[-0.2, -0.05, 0.0, 0.5, 3.0][..]));
        // Default slope 0.01, also when `params` is absent.
        let y = run("name: a\nop: leaky_relu\n", &[x()]);
        assert_eq!(y[0].f32(), Some(&[-0.02, -0.005, 0.0, 0.5, 3.0][..]));
    }

    #[test]
    fn infer_rejects_i32() {
        let e = infer_err("name: a\nop: leaky_relu\n", &[Some(TensorSpec::i32(&[4]))]);
        assert_eq!(e, "`x` must be f32, got i32[4]");
    }

    #[test]
    fn slope_must_be_a_number() {
        let e = try_configure("name: a\nop: leaky_relu\nparams:\n  slope: steep\n").unwrap_err();
        assert!(e.message.contains("expected f32"), "{e}");
        assert_eq!((e.loc.line, e.loc.col), (4, 10));
    }
}
