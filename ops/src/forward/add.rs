//! `add`: y = a + b element-wise, `torch.add(a, b)`. `a`, `b` and `y`: f32, any shape, all the
//! same spec (no broadcasting).
//!
//! `relu: true`: y = max(a + b, 0) in one pass — what the fusion pass makes of an `add` whose `y`
//! only a `relu` reads (a residual block's end, [`Op::fuse_consumer`]); bit-identical to `add`
//! then `relu` (ops/tests/fusion.rs), and, like batch norm's fused ReLU, without a
//! finite-difference case of its own (a central difference across the kink is meaningless).
//!
//! Backward: da = db = dy, the output gradient itself, so the VJP emits no node; with `relu`,
//! one `relu_bwd` on y first. Its kernels' CUDA twins exist (kernels/src/cuda); the engine does
//! not dispatch ops to them yet.

use crate::forward::relu::{Relu, ReluBwd};
use crate::grad;
use flowseg_engine::op::{self, io, Feed, GradCase, Vjp};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, OpNode, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{add_fwd, add_relu_fwd};
use serde::Deserialize;

/// The `add` op.
pub struct Add;

/// Params of `add`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Also apply a ReLU to `y` (default false; the fusion pass sets it when a `relu` follows).
    #[serde(default)]
    pub relu: bool,
}

impl Op for Add {
    const NAME: &'static str = "add";
    const SUMMARY: &'static str = "element-wise sum y = a + b of two same-shaped tensors";
    const INPUTS: &'static [Port] = &[
        Port::req("a", "f32, any shape"),
        Port::req("b", "f32, the spec of `a`"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the spec of `a`")];
    const EXAMPLE: &'static str = "name: skip\nop: add\ninputs: { a: block.y, b: shortcut.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("a", Feed::Trainable(&[2, 3, 5, 7])),
            ("b", Feed::Trainable(&[2, 3, 5, 7])),
        ],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let b = io::spec(Self::INPUTS, inputs, 1)?;
        if b != a {
            return Err(format!("`b` must match `a` ({a}), got {b}"));
        }
        Ok(vec![a.clone()])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        if p.relu {
            Ok(add_relu_fwd(a, b, y)?)
        } else {
            Ok(add_fwd(a, b, y)?)
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let a = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        if p.relu {
            Ok(cuda::elementwise::add_relu_fwd(cx.dev, &a, &b, &mut y)?)
        } else {
            Ok(cuda::elementwise::add_fwd(cx.dev, &a, &b, &mut y)?)
        }
    }

    /// da = db = dy: both inputs get the gradient of `y` as it is (no node), or with `relu` the
    /// gradient `relu_bwd` makes of it. When `a` and `b` are the same value, autodiff's fan-in
    /// sums the two into 2·dy.
    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }

    fn fuse_consumer(p: &Params, port: usize, consumer: &dyn OpNode) -> Option<Params> {
        (port == 0 && !p.relu && op::is::<Relu>(consumer)).then_some(Params { relu: true })
    }
}

fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !(g.needs_grad(0) || g.needs_grad(1)) {
        return Ok(());
    }
    let mut dy = grad::grad_output(g, Add::OUTPUTS, 0)?;
    if p.relu {
        let y = g.output(0);
        [dy] = grad::outputs(g.emit::<ReluBwd>(NoParams {}, vec![Some(y), Some(dy)])?)?;
    }
    for i in 0..Add::INPUTS.len() {
        if g.needs_grad(i) {
            g.set_grad(i, dy.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    const NODE: &str = "name: skip\nop: add\n";

    #[test]
    fn hand_computed() {
        let a = f32s(&[1, 3], &[1.0, -2.0, 0.5]);
        let b = f32s(&[1, 3], &[10.0, 2.0, 0.25]);
        let y = run(NODE, &[Some(a), Some(b)]);
        assert_eq!(y[0].f32(), Some(&[11.0, 0.0, 0.75][..]));
    }

    #[test]
    fn infer_rejects_mismatched_operands() {
        let e = infer_err(
            NODE,
            &[
                Some(TensorSpec::f32(&[2, 3])),
                Some(TensorSpec::f32(&[3, 2])),
            ],
        );
        assert_eq!(e, "`b` must match `a` (f32[2, 3]), got f32[3, 2]");
        let e = infer_err(
            NODE,
            &[Some(TensorSpec::f32(&[2])), Some(TensorSpec::i32(&[2]))],
        );
        assert_eq!(e, "`b` must match `a` (f32[2]), got i32[2]");
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[2])), None]);
        assert_eq!(e, "`b` is required");
    }
}
