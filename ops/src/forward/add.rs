//! `add`: y = a + b element-wise, `torch.add(a, b)`. `a`, `b` and `y`: f32, any shape, all the
//! same spec (no broadcasting).
//!
//! Backward: da = db = dy, the output gradient itself, so the VJP emits no node. Its kernels'
//! CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.

use crate::grad;
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::elementwise::add_fwd;

/// The `add` op (no params).
pub struct Add;

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
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let b = io::spec(Self::INPUTS, inputs, 1)?;
        if b != a {
            return Err(format!("`b` must match `a` ({a}), got {b}"));
        }
        Ok(vec![a.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(add_fwd(a, b, y)?)
    }

    /// da = db = dy: both inputs get the gradient of `y` as it is (no node). When `a` and `b`
    /// are the same value, autodiff's fan-in sums the two into 2·dy.
    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        let dy = match grad::grad_output(g, Self::OUTPUTS, 0) {
            Ok(dy) => dy,
            Err(e) => return Some(Err(e)),
        };
        for i in 0..Self::INPUTS.len() {
            if g.needs_grad(i) {
                g.set_grad(i, dy.clone());
            }
        }
        Some(Ok(()))
    }
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
