//! In-place state updates (`Op::IN_PLACE`, the contract optimizer steps and EMA updates will use
//! as graph nodes, docs/plans/device-seam.md): graph order is their meaning — a node above an
//! update reads the old value, a node below it the new one — and the planner keeps that order
//! with implicit edges, so single- and multi-stream plans, in plan order and under random
//! interleavings, update the state bit for bit as the reference executor does; the reference
//! leaves the caller's state alone; a plan executor refuses such a graph on read-only state;
//! an in-place port that is not a `state.` input, or one state updated twice by one node, is
//! FS0124; the calls a device would receive keep the updates' order under the device check.
//!
//! Not here: the optimizer and EMA ops themselves (not yet graph nodes), the trainer.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::device::{check_calls, drive, Call, Program, RecordingDevice};
use flowseg_engine::exec::{run_cpu, run_plan_in, run_plan_in_place, ExecOrder, Workspace};
use flowseg_engine::graph::{Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::op::io;
use flowseg_engine::plan::{plan, PlanOptions, BAD_IN_PLACE};
use flowseg_engine::spec;
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Registry, Tensor, TensorSpec};
use std::collections::BTreeMap;

mod common;
use common::*;

/// x ⊙= k in place; `sum` = Σ of the updated x (so the node has an output to keep).
struct ScaleState;
impl Op for ScaleState {
    const NAME: &'static str = "scale_state";
    const SUMMARY: &'static str = "x ⊙= k, in place";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32 state"), Port::req("k", "like x")];
    const OUTPUTS: &'static [Port] = &[Port::req("sum", "f32[]")];
    const EXAMPLE: &'static str = "";
    const IN_PLACE: &'static [&'static str] = &["x"];
    type Params = NoParams;
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        io::f32_spec(Self::INPUTS, ins, 0)?;
        Ok(vec![TensorSpec::f32(&[])])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Err(OpError::Input {
            port: "x",
            problem: "updated in place: the executors call cpu_in_place".into(),
        })
    }
    fn cpu_in_place(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        assert!(ins[0].is_none(), "the in-place port is not also an input");
        let k = io::f32(Self::INPUTS, ins, 1)?;
        let [x] = state else {
            return Err(OpError::Input {
                port: "x",
                problem: "one state tensor expected".into(),
            });
        };
        let x = x.f32_mut().ok_or(OpError::Input {
            port: "x",
            problem: "f32 expected".into(),
        })?;
        for (x, k) in x.iter_mut().zip(k) {
            *x *= k;
        }
        let sum: f32 = x.iter().sum();
        io::f32_out(Self::OUTPUTS, out, 0)?[0] = sum;
        Ok(())
    }
}

/// a, b ← b, a in place (two in-place ports: one node updating two tensors).
struct SwapState;
impl Op for SwapState {
    const NAME: &'static str = "swap_state";
    const SUMMARY: &'static str = "a, b ← b, a, in place";
    const INPUTS: &'static [Port] = &[Port::req("a", "f32 state"), Port::req("b", "like a")];
    const OUTPUTS: &'static [Port] = &[Port::req("done", "f32[]")];
    const EXAMPLE: &'static str = "";
    const IN_PLACE: &'static [&'static str] = &["a", "b"];
    type Params = NoParams;
    fn infer(_: &NoParams, _: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![TensorSpec::f32(&[])])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        unreachable!("updated in place")
    }
    fn cpu_in_place(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let [a, b] = state else {
            unreachable!("two ports")
        };
        std::mem::swap(*a, *b);
        io::f32_out(Self::OUTPUTS, out, 0)?[0] = 1.0;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add::<Mul>()
        .unwrap()
        .add::<ScaleState>()
        .unwrap()
        .add::<SwapState>()
        .unwrap();
    r
}

fn batch() -> BTreeMap<String, Tensor> {
    tensors(&[("x", vec_of(1, 0.5, 1.5)), ("t", vec_of(2, 0.5, 1.5))])
}

fn state() -> BTreeMap<String, Tensor> {
    tensors(&[
        ("net.w", vec_of(3, -1.0, 1.0)),
        ("net.v", vec_of(4, -1.0, 1.0)),
        ("teacher.w", vec_of(5, -1.0, 1.0)),
    ])
}

fn build(yaml: &str) -> Result<Graph, String> {
    let yaml = format!("{yaml}train: {{ iterations: 1 }}\n");
    let (spec, _) = spec::parse_graph(&yaml, &[]).unwrap();
    ir::build(&spec, &registry(), &env()).map_err(|e| format!("{e:?}"))
}

/// Reads of `net.w` around two updates of it, an independent update of `net.v` with its own
/// reader, and a read of `teacher.w` that no update touches. The node outputs every executor
/// must agree on are all of them.
const UPDATES: &str = "\
name: updates
nodes:
  - { name: before, op: mul, inputs: { a: batch.x, b: state.net.w } }
  - { name: up1, op: scale_state, inputs: { x: state.net.w, k: batch.t } }
  - { name: after, op: mul, inputs: { a: batch.x, b: state.net.w } }
  - { name: up2, op: scale_state, inputs: { x: state.net.w, k: before.y } }
  - { name: last, op: mul, inputs: { a: after.y, b: state.net.w } }
  - { name: v_up, op: scale_state, inputs: { x: state.net.v, k: batch.x } }
  - { name: v_read, op: mul, inputs: { a: batch.t, b: state.net.v } }
  - { name: teach, op: mul, inputs: { a: batch.t, b: state.teacher.w } }
";

fn outputs(g: &Graph) -> Vec<ValueRef> {
    (0..g.nodes.len())
        .map(|node| ValueRef::Node { node, port: 0 })
        .collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.f32().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn readers_above_an_update_see_the_old_value_and_readers_below_the_new() {
    let g = build(UPDATES).unwrap();
    let (b, s) = (batch(), state());
    let run = run_cpu(&g, &b, &s, 0, 0).unwrap();
    let f = |name: &str| {
        let node = g.nodes.iter().position(|n| n.name.value == name).unwrap();
        run.get(&ValueRef::Node { node, port: 0 })
            .unwrap()
            .f32()
            .unwrap()
            .to_vec()
    };
    let (x, t) = (
        batch()["x"].f32().unwrap().to_vec(),
        batch()["t"].f32().unwrap().to_vec(),
    );
    let w0 = s["net.w"].f32().unwrap().to_vec();
    let w1: Vec<f32> = w0.iter().zip(&t).map(|(w, t)| w * t).collect();
    let before: Vec<f32> = x.iter().zip(&w0).map(|(x, w)| x * w).collect();
    let w2: Vec<f32> = w1.iter().zip(&before).map(|(w, k)| w * k).collect();
    assert_eq!(f("before"), before);
    assert_eq!(
        f("after"),
        x.iter().zip(&w1).map(|(x, w)| x * w).collect::<Vec<_>>()
    );
    let after = f("after");
    assert_eq!(
        f("last"),
        after
            .iter()
            .zip(&w2)
            .map(|(a, w)| a * w)
            .collect::<Vec<_>>()
    );
    assert_eq!(f("up2"), vec![w2.iter().sum::<f32>()]);
    // The reference updated copies: the run reports them, the caller's map is untouched.
    assert_eq!(run.updated_state()["net.w"].f32().unwrap(), &w2[..]);
    assert_eq!(
        run.get(&ValueRef::State("net.w".into()))
            .unwrap()
            .f32()
            .unwrap(),
        &w2[..]
    );
    assert_eq!(s, state());
    assert!(!run.updated_state().contains_key("teacher.w"));
}

#[test]
fn every_plan_and_interleaving_updates_state_as_the_reference_does() {
    let g = build(UPDATES).unwrap();
    let keep = outputs(&g);
    let b = batch();
    let s0 = state();
    let reference = run_cpu(&g, &b, &s0, 0, 0).unwrap();
    let want_out: Vec<Vec<u32>> = keep
        .iter()
        .map(|v| bits(reference.get(v).unwrap()))
        .collect();
    let mut want_state = s0.clone();
    want_state.extend(reference.updated_state().clone());
    for streams in [1, 2, 3] {
        let p = plan(
            &g,
            &PlanOptions {
                streams,
                keep: keep.clone(),
            },
        )
        .unwrap();
        let orders = std::iter::once(ExecOrder::Sequential)
            .chain((0..20).map(|seed| ExecOrder::Interleaved { seed }));
        for order in orders {
            let mut s = state();
            let mut ws = Workspace::default();
            let run = run_plan_in_place(&mut ws, &g, &p, &b, &mut s, 0, 0, order).unwrap();
            let got: Vec<Vec<u32>> = keep.iter().map(|v| bits(run.get(v).unwrap())).collect();
            assert_eq!(got, want_out, "{streams} streams, {order:?}");
            drop(run);
            assert_eq!(s, want_state, "{streams} streams, {order:?}");
        }
    }
}

/// What a device would receive keeps the updates in graph order on every plan and
/// interleaving; a reader moved above the update it follows in the graph fails the check.
#[test]
fn recorded_device_calls_keep_in_place_updates_in_graph_order() {
    let g = build(UPDATES).unwrap();
    let keep = outputs(&g);
    for streams in [1, 2, 3] {
        let opts = PlanOptions {
            streams,
            keep: keep.clone(),
        };
        let p = plan(&g, &opts).unwrap();
        let program = Program::new(&g, &p).unwrap();
        let orders = std::iter::once(ExecOrder::Sequential)
            .chain((0..20).map(|seed| ExecOrder::Interleaved { seed }));
        for order in orders {
            let mut dev = RecordingDevice::default();
            drive(&mut dev, &program, &p, order).unwrap();
            check_calls(&g, &p, &program.arena, &dev.calls)
                .unwrap_or_else(|e| panic!("{streams} streams, {order:?}: {e}"));
            if streams > 1 || order != ExecOrder::Sequential {
                continue;
            }
            let at = |name: &str| {
                let n = g.nodes.iter().position(|n| n.name.value == name).unwrap();
                (dev.calls.iter())
                    .position(|c| matches!(c, Call::Launch(l) if l.node == n))
                    .unwrap()
            };
            let mut broken = dev.calls.clone();
            let reader = broken.remove(at("v_read"));
            broken.insert(at("v_up"), reader);
            let err = check_calls(&g, &p, &program.arena, &broken).unwrap_err();
            assert!(err.contains("`state.net.v`"), "{err}");
        }
    }
}

#[test]
fn a_plan_executor_refuses_in_place_updates_on_read_only_state() {
    let g = build(UPDATES).unwrap();
    let p = plan(
        &g,
        &PlanOptions {
            streams: 1,
            keep: outputs(&g),
        },
    )
    .unwrap();
    let (b, s) = (batch(), state());
    let mut ws = Workspace::default();
    let e = run_plan_in(&mut ws, &g, &p, &b, &s, 0, 0, ExecOrder::Sequential)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("node `up1` updates state in place"), "{e}");
    assert!(e.contains("run_plan_in_place"), "{e}");
}

#[test]
fn an_in_place_port_must_be_a_state_tensor_updated_once_per_node() {
    let codes = |yaml: &str| -> Vec<String> {
        let g = build(yaml).unwrap();
        match plan(&g, &PlanOptions::default()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect(),
        }
    };
    let on_batch = codes(
        "name: on_batch\nnodes:\n  - { name: up, op: scale_state, inputs: { x: batch.x, k: batch.t } }\n",
    );
    assert_eq!(on_batch.len(), 1, "{on_batch:?}");
    assert!(on_batch[0].starts_with(BAD_IN_PLACE), "{on_batch:?}");
    assert!(on_batch[0].contains("`batch.x`"), "{on_batch:?}");
    let on_node = codes(
        "name: on_node\nnodes:\n  - { name: m, op: mul, inputs: { a: batch.x, b: batch.t } }\n  \
         - { name: up, op: scale_state, inputs: { x: m.y, k: batch.t } }\n",
    );
    assert!(
        on_node.iter().any(|e| e.contains("a node output")),
        "{on_node:?}"
    );
    let twice = codes(
        "name: twice\nnodes:\n  - { name: sw, op: swap_state, inputs: { a: state.net.w, b: state.net.w } }\n",
    );
    assert_eq!(twice.len(), 1, "{twice:?}");
    assert!(
        twice[0].contains("updates state `net.w` in place twice"),
        "{twice:?}"
    );
    // Two different tensors are fine, and both are updated.
    let g = build(
        "name: swap\nnodes:\n  - { name: sw, op: swap_state, inputs: { a: state.net.w, b: state.net.v } }\n",
    )
    .unwrap();
    let (b, s) = (batch(), state());
    let run = run_cpu(&g, &b, &s, 0, 0).unwrap();
    assert_eq!(run.updated_state()["net.w"], s["net.v"]);
    assert_eq!(run.updated_state()["net.v"], s["net.w"]);
    // A graph without in-place ops plans as before.
    assert!(codes(
        "name: plain\nnodes:\n  - { name: m, op: mul, inputs: { a: batch.x, b: state.net.w } }\n"
    )
    .is_empty());
}
