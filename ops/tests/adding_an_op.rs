//! Adding an op is one file plus one registration line: this test is that file. It defines
//! `halve` (y = x / 2) with everything an op declares about itself — ports, an EXAMPLE, params,
//! shape inference, the CPU reference, its VJP and its `GRAD_CASES` — registers it with one line
//! (`r.add::<Halve>()`), and every per-op check the built-in ops pass runs on it unchanged: the
//! EXAMPLE parses and configures, ports are documented, a misspelt param is rejected at its
//! location, and the backward matches finite differences on its declared cases. No other file
//! of the repository names `halve`.
//!
//! Not here: `flowseg ops` listing a plugin's ops (tests/plugins.rs).

mod suite;

use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_ops::builtin_registry;

/// `halve`: y = x · factor (factor 0.5 unless set).
struct Halve;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The scale; 0.5 halves.
    #[serde(default = "half")]
    factor: f32,
}

fn half() -> f32 {
    0.5
}

impl Op for Halve {
    const NAME: &'static str = "halve";
    const SUMMARY: &'static str = "y = factor · x (0.5 by default)";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str =
        "name: h\nop: halve\ninputs: { x: batch.image }\nparams: { factor: 0.5 }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        GradCase {
            params: "{}",
            feeds: &[("x", Feed::Trainable(&[2, 3, 4, 4]))],
        },
        GradCase {
            params: "{ factor: -3.0 }",
            feeds: &[("x", Feed::Trainable(&[2, 5]))],
        },
    ];
    type Params = Params;

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
        for (y, &v) in io::f32_out(Self::OUTPUTS, outputs, 0)?.iter_mut().zip(x) {
            *y = p.factor * v;
        }
        Ok(())
    }

    /// dx = factor · dy: the op itself, applied to the output gradient.
    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        let dy = g.grad_output(0)?;
        Some(
            g.emit::<Halve>(p.clone(), vec![Some(dy)])
                .map(|dx| g.set_grad(0, dx[0].clone())),
        )
    }
}

#[test]
fn a_new_op_passes_every_per_op_check_with_one_registration_line() {
    let mut r = builtin_registry().expect("built-in ops register");
    r.add::<Halve>().expect("`halve` registers");
    let op = r.get("halve").expect("registered");
    suite::registry::check_example(op);
    suite::registry::check_documented(op);
    suite::registry::check_misspelt_param(op);
    let r = suite::gradients::with_helpers(r);
    let op = r.get("halve").expect("registered");
    assert!(
        !suite::gradients::check_op(&r, op),
        "`halve` is differentiable"
    );
}

#[test]
fn a_wrong_vjp_is_caught_by_the_same_checks() {
    // The suite is not vacuous: the same op with a backward off by a factor fails it.
    struct BadHalve;
    impl Op for BadHalve {
        const NAME: &'static str = "bad_halve";
        const SUMMARY: &'static str = "y = x / 2 with a wrong backward";
        const INPUTS: &'static [Port] = Halve::INPUTS;
        const OUTPUTS: &'static [Port] = Halve::OUTPUTS;
        const EXAMPLE: &'static str = "name: h\nop: bad_halve\ninputs: { x: batch.image }\n";
        const GRAD_CASES: &'static [GradCase] = &[GradCase {
            params: "{}",
            feeds: &[("x", Feed::Trainable(&[2, 5]))],
        }];
        type Params = Params;
        fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
            Halve::infer(p, inputs)
        }
        fn cpu(
            p: &Params,
            cx: &ExecCx,
            inputs: &[Option<&Tensor>],
            outputs: &mut [Tensor],
        ) -> Result<(), OpError> {
            Halve::cpu(p, cx, inputs, outputs)
        }
        fn vjp(_: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
            let dy = g.grad_output(0)?;
            Some(
                g.emit::<Halve>(Params { factor: 1.0 }, vec![Some(dy)])
                    .map(|dx| g.set_grad(0, dx[0].clone())),
            )
        }
    }
    let mut r = builtin_registry().expect("built-in ops register");
    r.add::<BadHalve>().expect("registers");
    let r = suite::gradients::with_helpers(r);
    let op = r.get("bad_halve").expect("registered");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        suite::gradients::check_op(&r, op);
    }));
    assert!(
        caught.is_err(),
        "a backward off by 2× passed the gradient check"
    );
}
