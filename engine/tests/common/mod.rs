//! Test ops and fixtures shared by the engine's integration tests (each test file includes this
//! module): `mul` with its VJP, `mse` with its backward, `detach`, `mul_nograd` (no VJP), the
//! 7-element environment and deterministic inputs, and the small training graph the planner and
//! device tests share ([`TRAIN`], [`differentiate_train`]). The engine is tested without
//! flowseg-ops.

#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "each test file uses a subset; a panic in a test helper is the report"
)]

use flowseg_engine::graph::Env;
use flowseg_engine::op::io;
use flowseg_engine::op::Vjp;
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use std::collections::BTreeMap;

/// y = a ⊙ b.
pub struct Mul;
impl Op for Mul {
    const NAME: &'static str = "mul";
    const SUMMARY: &'static str = "y = a ⊙ b";
    const INPUTS: &'static [Port] = &[Port::req("a", "f32"), Port::req("b", "like a")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like a")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let (a, b) = (
            io::f32(Self::INPUTS, ins, 0)?,
            io::f32(Self::INPUTS, ins, 1)?,
        );
        Ok(flowseg_engine::kernels::elementwise::mul_fwd(
            a,
            b,
            io::f32_out(Self::OUTPUTS, out, 0)?,
        )?)
    }
    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        let dy = g.grad_output(0)?;
        let (a, b) = (g.input(0)?, g.input(1)?);
        // d/da = dy ⊙ b, d/db = dy ⊙ a: the same op again.
        if g.needs_grad(0) {
            match g.emit::<Mul>(NoParams {}, vec![Some(dy.clone()), Some(b.clone())]) {
                Ok(o) => g.set_grad(0, o[0].clone()),
                Err(e) => return Some(Err(e)),
            }
        }
        if g.needs_grad(1) {
            match g.emit::<Mul>(NoParams {}, vec![Some(dy), Some(a)]) {
                Ok(o) => g.set_grad(1, o[0].clone()),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(()))
    }
}

/// loss = mean((x − t)²), t constant.
pub struct MseLoss;
impl Op for MseLoss {
    const NAME: &'static str = "mse";
    const SUMMARY: &'static str = "mean squared error";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32"), Port::req("t", "like x")];
    const OUTPUTS: &'static [Port] = &[Port::req("loss", "f32[]")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;
    fn infer(_: &NoParams, _: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![TensorSpec::scalar()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let (x, t) = (
            io::f32(Self::INPUTS, ins, 0)?,
            io::f32(Self::INPUTS, ins, 1)?,
        );
        let s: f64 = x.iter().zip(t).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        io::f32_out(Self::OUTPUTS, out, 0)?[0] = (s / x.len() as f64) as f32;
        Ok(())
    }
    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        let dl = g.grad_output(0)?;
        let r = g.emit::<MseBwd>(NoParams {}, vec![g.input(0), g.input(1), Some(dl)]);
        Some(r.map(|o| g.set_grad(0, o[0].clone())))
    }
}

/// dx = dloss · 2(x − t)/n.
pub struct MseBwd;
impl Op for MseBwd {
    const NAME: &'static str = "mse_bwd";
    const SUMMARY: &'static str = "gradient of mse";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32"),
        Port::req("t", "like x"),
        Port::req("dloss", "f32[]"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "like x")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let (x, t) = (
            io::f32(Self::INPUTS, ins, 0)?,
            io::f32(Self::INPUTS, ins, 1)?,
        );
        let dl = io::f32(Self::INPUTS, ins, 2)?[0];
        let n = x.len() as f32;
        for ((o, a), b) in io::f32_out(Self::OUTPUTS, out, 0)?.iter_mut().zip(x).zip(t) {
            *o = dl * 2.0 * (a - b) / n;
        }
        Ok(())
    }
}

/// A copy that blocks gradients.
pub struct Detach;
impl Op for Detach {
    const NAME: &'static str = "detach";
    const SUMMARY: &'static str = "y = x, no gradient";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str = "";
    const STOP_GRAD: bool = true;
    type Params = NoParams;
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, ins, 0)?;
        io::f32_out(Self::OUTPUTS, out, 0)?.copy_from_slice(x);
        Ok(())
    }
}

/// Like `mul` but without a VJP.
pub struct MulNoGrad;
impl Op for MulNoGrad {
    const NAME: &'static str = "mul_nograd";
    const SUMMARY: &'static str = "y = a ⊙ b, not differentiable";
    const INPUTS: &'static [Port] = Mul::INPUTS;
    const OUTPUTS: &'static [Port] = Mul::OUTPUTS;
    const EXAMPLE: &'static str = "";
    type Params = NoParams;
    fn infer(p: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Mul::infer(p, ins)
    }
    fn cpu(
        p: &NoParams,
        cx: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        Mul::cpu(p, cx, ins, out)
    }
}

pub const N: usize = 7;

pub fn env() -> Env {
    let s = TensorSpec::f32(&[N]);
    Env {
        batch: BTreeMap::from([("x".into(), s.clone()), ("t".into(), s.clone())]),
        state: BTreeMap::from([
            ("net.w".into(), s.clone()),
            ("net.v".into(), s.clone()),
            ("teacher.w".into(), s),
        ]),
        hidden: Default::default(),
    }
}

pub fn vec_of(seed: u64, lo: f64, hi: f64) -> Vec<f32> {
    flowseg_engine::kernels::testing::to_f32(&flowseg_engine::kernels::testing::rand_vec(
        seed, N, lo, hi,
    ))
}

pub fn tensors(entries: &[(&str, Vec<f32>)]) -> BTreeMap<String, Tensor> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), Tensor::from_f32(&[N], v.clone()).unwrap()))
        .collect()
}

/// Forward of a graph with a student (two parameters, fan-out) and an independent teacher
/// branch, two `mse` losses `l1` and `l2` (no `train:` section: callers add it). With its
/// backward ([`differentiate_train`]) it has enough nodes for two or three streams, events and
/// buffer reuse.
pub const TRAIN: &str = "\
name: train
nodes:
  - { name: y1, op: mul, inputs: { a: batch.x, b: state.net.w } }
  - { name: y2, op: mul, inputs: { a: y1.y, b: state.net.v } }
  - { name: y3, op: mul, inputs: { a: y1.y, b: state.net.w } }
  - { name: tw, op: mul, inputs: { a: batch.x, b: state.teacher.w } }
  - { name: tw2, op: mul, inputs: { a: tw.y, b: tw.y } }
  - { name: mix, op: mul, inputs: { a: y3.y, b: tw2.y } }
  - { name: l1, op: mse, inputs: { x: y2.y, t: batch.t } }
  - { name: l2, op: mse, inputs: { x: mix.y, t: tw.y } }
";

/// Appends [`TRAIN`]'s backward (loss `l1` + 0.5·`l2` w.r.t. `net.w` and `net.v`) to `g`, built
/// from it; returns what a plan keeps: the losses, then the gradients.
pub fn differentiate_train(
    g: &mut flowseg_engine::graph::Graph,
) -> Vec<flowseg_engine::graph::ValueRef> {
    use flowseg_engine::graph::ValueRef;
    let at = |g: &flowseg_engine::graph::Graph, name: &str| ValueRef::Node {
        node: g.nodes.iter().position(|n| n.name.value == name).unwrap(),
        port: 0,
    };
    let losses = vec![(at(g, "l1"), 1.0f32), (at(g, "l2"), 0.5)];
    let wrt: std::collections::BTreeSet<String> = ["net.w".into(), "net.v".into()].into();
    let grads = flowseg_engine::autodiff::differentiate(g, &losses, &wrt).unwrap();
    losses
        .into_iter()
        .map(|(s, _)| s)
        .chain(grads.into_values())
        .collect()
}
