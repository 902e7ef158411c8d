//! The planner and the plan executors on small test ops (the engine is tested without the
//! built-in op crate): independent branches land on different streams with an event at the join;
//! vector clocks drop an implied wait; buffers are reused when the old value's accesses are
//! ordered before the new producer and refused when only a missing event would order them; the
//! printed plan of a small graph is pinned; single- and multi-stream plans give bit-identical
//! losses and gradients in plan order and under 20 random interleavings; removing any wait, or
//! forcing the refused reuse, is caught by the interleaving simulator; state conflicts without
//! an order are FS0114; the trainer steps through its single-stream plan; a workspace keeps one
//! allocation per buffer across runs; an op that leaves part of its output unwritten, or reads
//! it, is caught by the simulator's poisoned outputs.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::exec::{run_cpu, run_plan, run_plan_in, ExecError, ExecOrder, Workspace};
use flowseg_engine::graph::{Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::op::io;
use flowseg_engine::plan::{pin_stream, plan, Plan, PlanOptions, Step};
use flowseg_engine::spec;
use flowseg_engine::{Access, ExecCx, Op, OpError, Port, Registry, Tensor, TensorSpec};
use std::collections::BTreeMap;

mod common;
use common::*;

/// y = x, declaring that it writes the state named in its params (an EMA update, say).
struct Bump;
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BumpParams {
    writes: String,
}
impl Op for Bump {
    const NAME: &'static str = "bump";
    const SUMMARY: &'static str = "y = x; writes state";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str = "";
    type Params = BumpParams;
    fn infer(_: &BumpParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn access(p: &BumpParams) -> Access {
        Access {
            reads: Vec::new(),
            writes: vec![p.writes.clone()],
        }
    }
    fn cpu(
        _: &BumpParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, ins, 0)?;
        io::f32_out(Self::OUTPUTS, out, 0)?.copy_from_slice(x);
        Ok(())
    }
}

/// Breaks the `Op::cpu` contract: y = x except the last element, left as the buffer held it.
struct Partial;
impl Op for Partial {
    const NAME: &'static str = "partial";
    const SUMMARY: &'static str = "y = x but the last element";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str = "";
    type Params = flowseg_engine::NoParams;
    fn infer(_: &Self::Params, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        _: &Self::Params,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, ins, 0)?;
        let y = io::f32_out(Self::OUTPUTS, out, 0)?;
        let n = y.len() - 1;
        y[..n].copy_from_slice(&x[..n]);
        Ok(())
    }
}

/// Breaks the `Op::cpu` contract: y += x, reading its output.
struct Accumulate;
impl Op for Accumulate {
    const NAME: &'static str = "accumulate";
    const SUMMARY: &'static str = "y += x";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str = "";
    type Params = flowseg_engine::NoParams;
    fn infer(_: &Self::Params, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        _: &Self::Params,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, ins, 0)?;
        for (y, x) in io::f32_out(Self::OUTPUTS, out, 0)?.iter_mut().zip(x) {
            *y += x;
        }
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add::<Mul>()
        .unwrap()
        .add::<MseLoss>()
        .unwrap()
        .add::<Bump>()
        .unwrap()
        .add::<Partial>()
        .unwrap()
        .add::<Accumulate>()
        .unwrap();
    r
}

fn batch() -> BTreeMap<String, Tensor> {
    tensors(&[("x", vec_of(1, 0.5, 1.5)), ("t", vec_of(2, -1.0, 1.0))])
}

fn state() -> BTreeMap<String, Tensor> {
    tensors(&[
        ("net.w", vec_of(3, -1.0, 1.0)),
        ("net.v", vec_of(4, -1.0, 1.0)),
        ("teacher.w", vec_of(5, -1.0, 1.0)),
    ])
}

/// The graph of `yaml` (a `train:` section is appended: the spec requires one).
fn build(yaml: &str) -> Graph {
    let yaml = format!("{yaml}train: {{ iterations: 1 }}\n");
    let (spec, _) = spec::parse_graph(&yaml, &[]).unwrap();
    ir::build(&spec, &registry(), &env()).unwrap()
}

fn node(g: &Graph, name: &str) -> usize {
    g.nodes.iter().position(|n| n.name.value == name).unwrap()
}

fn out(g: &Graph, name: &str) -> ValueRef {
    ValueRef::Node {
        node: node(g, name),
        port: 0,
    }
}

/// Two independent branches (student a1 → a2, teacher b1 → b2) joined, then a loss.
const BRANCHES: &str = "\
name: branches
nodes:
  - { name: s1, op: mul, inputs: { a: batch.x, b: state.net.w } }
  - { name: s2, op: mul, inputs: { a: s1.y, b: s1.y } }
  - { name: t1, op: mul, inputs: { a: batch.x, b: state.teacher.w } }
  - { name: t2, op: mul, inputs: { a: t1.y, b: t1.y } }
  - { name: join, op: mul, inputs: { a: s2.y, b: t2.y } }
  - { name: loss, op: mse, inputs: { x: join.y, t: batch.t } }
";

fn opts(streams: usize, keep: Vec<ValueRef>) -> PlanOptions {
    PlanOptions { streams, keep }
}

/// Waits on `stream`, in order, as the producers of their events.
fn waits_on(p: &Plan, stream: usize) -> Vec<&str> {
    p.steps
        .iter()
        .filter_map(|s| match *s {
            Step::Wait { stream: st, event } if st == stream => {
                Some(p.nodes[p.events[event]].name.as_str())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn independent_branches_run_on_two_streams_with_an_event_at_the_join() {
    let g = build(BRANCHES);
    let p = plan(&g, &opts(2, vec![out(&g, "loss")])).unwrap();
    let s = |name: &str| p.nodes[node(&g, name)].stream;
    assert_eq!(s("s1"), s("s2"));
    assert_eq!(s("t1"), s("t2"));
    assert_ne!(s("s1"), s("t1"), "{p}");
    // The join continues one branch and waits for the other's last node, once.
    let other = if s("join") == s("s2") { "t2" } else { "s2" };
    assert_eq!(waits_on(&p, s("join")), [other], "{p}");
    assert_eq!((p.stats.waits, p.stats.waits_dropped), (1, 0));
    assert_eq!(p.stats.streams_used, 2);
    // The wait sits right before the join's run, the record right after the producer's.
    let at = |step: Step| p.steps.iter().position(|x| *x == step).unwrap();
    let join = at(Step::Run {
        node: node(&g, "join"),
        stream: s("join"),
    });
    let before_join = p.steps[..join]
        .iter()
        .rev()
        .find(|s| !matches!(s, Step::Free { .. }));
    assert!(matches!(before_join, Some(Step::Wait { .. })), "{p}");
    let producer = at(Step::Run {
        node: node(&g, other),
        stream: s(other),
    });
    assert!(matches!(p.steps[producer + 1], Step::Record { .. }), "{p}");

    // One stream: the same nodes, no events.
    let p1 = plan(&g, &opts(1, vec![out(&g, "loss")])).unwrap();
    assert!(p1.nodes.iter().all(|n| n.stream == 0));
    assert!(p1.events.is_empty() && p1.stats.waits == 0);
    assert!(p1
        .steps
        .iter()
        .all(|s| matches!(s, Step::Run { .. } | Step::Free { .. })));
}

/// Names from `s0, s1, ...` that pin to `k` different streams (the first found for each).
fn pins(k: usize) -> Vec<String> {
    let mut by_stream: BTreeMap<usize, String> = BTreeMap::new();
    for i in 0.. {
        let name = format!("s{i}");
        by_stream.entry(pin_stream(&name, k)).or_insert(name);
        if by_stream.len() == k {
            break;
        }
    }
    by_stream.into_values().collect()
}

#[test]
fn vector_clocks_drop_a_wait_implied_through_a_third_stream() {
    // a1 on A; b1 on B reads a1 (waits for it); c1 on C reads b1 (waits for b1, and so knows
    // a1 finished); c2 on C reads c1 and a1: its wait for a1 is implied and dropped.
    let [a, b, c] = <[String; 3]>::try_from(pins(3)).unwrap();
    let yaml = format!(
        "name: clocks
nodes:
  - {{ name: a1, op: mul, inputs: {{ a: batch.x, b: state.net.w }}, stream: {a} }}
  - {{ name: b1, op: mul, inputs: {{ a: a1.y, b: state.net.v }}, stream: {b} }}
  - {{ name: c1, op: mul, inputs: {{ a: b1.y, b: b1.y }}, stream: {c} }}
  - {{ name: c2, op: mul, inputs: {{ a: c1.y, b: a1.y }}, stream: {c} }}
  - {{ name: loss, op: mse, inputs: {{ x: c2.y, t: batch.t }}, stream: {c} }}
"
    );
    let g = build(&yaml);
    let p = plan(&g, &opts(3, vec![out(&g, "loss")])).unwrap();
    let sc = pin_stream(&c, 3);
    assert_eq!(p.nodes[node(&g, "c2")].stream, sc);
    assert_eq!(waits_on(&p, sc), ["b1"], "{p}");
    assert_eq!(waits_on(&p, pin_stream(&b, 3)), ["a1"], "{p}");
    assert_eq!((p.stats.waits, p.stats.waits_dropped), (2, 1), "{p}");
    // Dropping it is safe: every interleaving still gives the reference loss.
    let (batch, state) = (batch(), state());
    let want = run_cpu(&g, &batch, &state, 0, 0)
        .unwrap()
        .scalar(&out(&g, "loss"))
        .unwrap();
    for seed in 0..20 {
        let run = run_plan(
            &g,
            &p,
            &batch,
            &state,
            0,
            0,
            ExecOrder::Interleaved { seed },
        )
        .unwrap();
        assert_eq!(
            run.scalar(&out(&g, "loss")).unwrap().to_bits(),
            want.to_bits()
        );
    }
}

/// Branch A: a1 → a2 (a1 dies at a2). Branch B, pinned to another stream: b1 has a1's size.
fn reuse_graph(order_b_after_a: bool) -> (Graph, Plan) {
    let [a, b] = <[String; 2]>::try_from(pins(2)).unwrap();
    let after = if order_b_after_a { ", after: [a2]" } else { "" };
    let yaml = format!(
        "name: reuse
nodes:
  - {{ name: a1, op: mul, inputs: {{ a: batch.x, b: state.net.w }}, stream: {a} }}
  - {{ name: a2, op: mul, inputs: {{ a: a1.y, b: a1.y }}, stream: {a} }}
  - {{ name: b1, op: mul, inputs: {{ a: batch.x, b: state.net.v }}, stream: {b}{after} }}
  - {{ name: b2, op: mul, inputs: {{ a: b1.y, b: b1.y }}, stream: {b} }}
  - {{ name: join, op: mul, inputs: {{ a: a2.y, b: b2.y }}, stream: {a} }}
  - {{ name: loss, op: mse, inputs: {{ x: join.y, t: batch.t }}, stream: {a} }}
"
    );
    let g = build(&yaml);
    let p = plan(&g, &opts(2, vec![out(&g, "loss")])).unwrap();
    (g, p)
}

fn loss_bits(g: &Graph, p: &Plan, order: ExecOrder) -> Result<u32, ExecError> {
    let (batch, state) = (batch(), state());
    let run = run_plan(g, p, &batch, &state, 0, 0, order)?;
    Ok(run.scalar(&out(g, "loss")).unwrap().to_bits())
}

#[test]
fn buffers_are_reused_only_when_the_old_value_is_ordered_before_the_new_producer() {
    // One stream: a chain reuses a dead value's buffer (s1 dies at s2; t1 takes its buffer).
    let g = build(BRANCHES);
    let p = plan(&g, &opts(1, vec![out(&g, "loss")])).unwrap();
    let buf = |p: &Plan, name: &str| p.buffer_of(node(&g, name), 0).unwrap();
    assert_eq!(buf(&p, "t1"), buf(&p, "s1"), "{p}");
    assert!(p.stats.peak_bytes < p.stats.peak_bytes_no_reuse);
    // The loss is kept: its buffer is its own.
    assert!(p.buffers[buf(&p, "loss")].kept);
    assert_eq!(p.buffers[buf(&p, "loss")].tenants.len(), 1);

    // Two streams, nothing orders a2 before b1: b1 must not take a1's buffer.
    let (g, unordered) = reuse_graph(false);
    let buf = |p: &Plan, name: &str| p.buffer_of(node(&g, name), 0).unwrap();
    assert_ne!(
        unordered.nodes[node(&g, "a1")].stream,
        unordered.nodes[node(&g, "b1")].stream
    );
    assert_ne!(buf(&unordered, "b1"), buf(&unordered, "a1"), "{unordered}");
    assert!(unordered.stats.reuse_refused >= 1, "{unordered}");
    // With `after: [a2]` the wait orders them, and the buffer is shared.
    let (g2, ordered) = reuse_graph(true);
    assert_eq!(
        ordered.buffer_of(node(&g2, "b1"), 0),
        ordered.buffer_of(node(&g2, "a1"), 0),
        "{ordered}"
    );
    let want = loss_bits(&g, &unordered, ExecOrder::Sequential).unwrap();
    for seed in 0..20 {
        let order = ExecOrder::Interleaved { seed };
        assert_eq!(loss_bits(&g, &unordered, order).unwrap(), want);
        assert_eq!(loss_bits(&g2, &ordered, order).unwrap(), want);
    }

    // Forcing the refused reuse is a race the simulator catches: b1 overwrites a1 while a2 may
    // still have to read it.
    let mut forced = unordered.clone();
    let (a1, b1) = (node(&g, "a1"), node(&g, "b1"));
    let (from, to) = (buf(&forced, "b1"), buf(&forced, "a1"));
    forced.nodes[b1].outputs[0] = to;
    let moved = forced.buffers[from].tenants.remove(0);
    forced.buffers[to].tenants.push(moved);
    assert_eq!(forced.buffer_of(a1, 0), forced.buffer_of(b1, 0));
    let caught = (0..40)
        .filter(|&seed| {
            !matches!(loss_bits(&g, &forced, ExecOrder::Interleaved { seed }), Ok(b) if b == want)
        })
        .count();
    assert!(caught > 0, "no interleaving exposed the unsafe reuse");
}

#[test]
fn the_printed_plan_of_a_small_graph_is_stable() {
    let g = build(BRANCHES);
    let p = plan(&g, &opts(2, vec![out(&g, "loss")])).unwrap();
    let shown = p.to_string();
    assert_eq!(shown, SNAPSHOT, "\n{shown}");
}

const SNAPSHOT: &str = "6 nodes on 2 of 2 streams, 1 event, 1 wait, 0 redundant waits dropped; cost model (output elements): span 22 of 36 work
 step  stream 0       stream 1
    0  s1 (mul) → b0
    1  s2 (mul) → b1
    2  record e0
    3                 t1 (mul) → b2
    4                 t2 (mul) → b3
    5                 free b2
    6                 wait e0 (s2)
    7                 free b0
    8                 join (mul) → b0
    9                 free b1
   10                 free b3
   11                 loss (mse) → b4
   12                 free b0
buffers (value spec: step of its producer – step of its last reader):
  b0         28 B  s1.0 f32[7]: 0–1 · join.0 f32[7]: 8–11
  b1         28 B  s2.0 f32[7]: 1–8
  b2         28 B  t1.0 f32[7]: 3–4
  b3         28 B  t2.0 f32[7]: 4–8
  b4          4 B  loss.0 f32[]: 11–11, kept
peak memory: 116 B in 5 buffers with reuse, 144 B in 6 outputs without; 4 B kept after the step; 2 reuses refused for lack of ordering
";

/// [`TRAIN`] with its backward; keeps the losses and the gradients.
fn training_graph() -> (Graph, Vec<ValueRef>) {
    let mut g = build(TRAIN);
    let keep = differentiate_train(&mut g);
    (g, keep)
}

/// Bits of every kept value, in `keep` order.
fn kept_bits(
    g: &Graph,
    p: &Plan,
    keep: &[ValueRef],
    order: ExecOrder,
) -> Result<Vec<Vec<u32>>, ExecError> {
    let (batch, state) = (batch(), state());
    let run = run_plan(g, p, &batch, &state, 7, 3, order)?;
    Ok(keep
        .iter()
        .map(|s| {
            run.get(s)
                .unwrap()
                .f32()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect())
}

#[test]
fn every_plan_and_interleaving_gives_bit_identical_losses_and_gradients() {
    let (g, keep) = training_graph();
    let (batch, state) = (batch(), state());
    let reference: Vec<Vec<u32>> = {
        let run = run_cpu(&g, &batch, &state, 7, 3).unwrap();
        keep.iter()
            .map(|s| {
                let t = run.get(s).unwrap().f32().unwrap();
                t.iter().map(|x| x.to_bits()).collect()
            })
            .collect()
    };
    for streams in 1..=3 {
        let p = plan(&g, &opts(streams, keep.clone())).unwrap();
        if streams > 1 {
            assert!(p.stats.streams_used > 1 && p.stats.waits > 0, "{p}");
        }
        assert!(p.stats.peak_bytes < p.stats.peak_bytes_no_reuse, "{p}");
        assert_eq!(
            kept_bits(&g, &p, &keep, ExecOrder::Sequential).unwrap(),
            reference,
            "{streams} streams, plan order"
        );
        for seed in 0..20 {
            assert_eq!(
                kept_bits(&g, &p, &keep, ExecOrder::Interleaved { seed }).unwrap(),
                reference,
                "{streams} streams, interleaving {seed}"
            );
        }
    }
}

#[test]
fn the_simulator_catches_every_missing_wait() {
    let (g, keep) = training_graph();
    let (batch, state) = (batch(), state());
    let run = run_cpu(&g, &batch, &state, 7, 3).unwrap();
    let reference: Vec<Vec<u32>> = keep
        .iter()
        .map(|s| {
            let t = run.get(s).unwrap().f32().unwrap();
            t.iter().map(|x| x.to_bits()).collect()
        })
        .collect();
    let p = plan(&g, &opts(2, keep.clone())).unwrap();
    let waits: Vec<usize> = (0..p.steps.len())
        .filter(|&i| matches!(p.steps[i], Step::Wait { .. }))
        .collect();
    assert!(!waits.is_empty(), "{p}");
    for &w in &waits {
        let mut broken = p.clone();
        broken.steps.remove(w);
        let (mut poisoned, mut wrong) = (0, 0);
        for seed in 0..40 {
            match kept_bits(&g, &broken, &keep, ExecOrder::Interleaved { seed }) {
                Err(ExecError::Poisoned { .. }) => poisoned += 1,
                Ok(bits) if bits != reference => wrong += 1,
                Ok(_) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(
            poisoned + wrong > 0,
            "removing step {w} ({:?}) went unnoticed in 40 interleavings",
            p.steps[w]
        );
        // In plan order the broken plan still runs: the global order was valid on its own.
        assert_eq!(
            kept_bits(&g, &broken, &keep, ExecOrder::Sequential).unwrap(),
            reference
        );
    }
}

#[test]
fn state_conflicts_without_an_order_are_fs0114() {
    let yaml = "\
name: conflict
nodes:
  - { name: ema, op: bump, inputs: { x: batch.x }, params: { writes: teacher } }
  - { name: tw, op: mul, inputs: { a: batch.x, b: state.teacher.w } }
  - { name: loss, op: mse, inputs: { x: tw.y, t: ema.y } }
";
    let g = build(yaml);
    let errs = plan(&g, &PlanOptions::default()).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert_eq!(e.code, "FS0114");
    assert_eq!(e.node.as_deref(), Some("tw"));
    assert_eq!(e.loc.line, 4);
    assert!(
        e.message.contains("`ema` writes state `teacher`") && e.message.contains("`tw` reads"),
        "{}",
        e.message
    );
    assert!(e.help.as_deref().unwrap().contains("after: [ema]"), "{e:?}");
    // `after:` orders them; a data path does too.
    for fixed in [
        yaml.replace("state.teacher.w } }", "state.teacher.w }, after: [ema] }"),
        yaml.replace("a: batch.x, b: state.teacher", "a: ema.y, b: state.teacher"),
    ] {
        let g = build(&fixed);
        assert!(plan(&g, &PlanOptions::default()).is_ok(), "{fixed}");
    }
    // Two writers of one tensor conflict too; disjoint names do not.
    let two = "\
name: two
nodes:
  - { name: w1, op: bump, inputs: { x: batch.x }, params: { writes: net.w } }
  - { name: w2, op: bump, inputs: { x: batch.x }, params: { writes: net } }
  - { name: w3, op: bump, inputs: { x: batch.x }, params: { writes: net.v } }
  - { name: l, op: mse, inputs: { x: w1.y, t: w2.y } }
  - { name: l3, op: mse, inputs: { x: w3.y, t: batch.t } }
";
    let errs = plan(&build(two), &PlanOptions::default()).unwrap_err();
    let pairs: Vec<(&str, &str)> = errs
        .iter()
        .map(|e| {
            (
                e.message.split('`').nth(1).unwrap(),
                e.node.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs, [("w1", "w2"), ("w2", "w3")], "{errs:#?}");
}

#[test]
fn the_trainer_steps_through_its_single_stream_plan() {
    let yaml = TRAIN.replace(
        "nodes:\n",
        "optim:\n  net: { kind: sgd, lr: 0.1, minimize: { l1.loss: 1.0, l2.loss: 0.5 } }\n\
         train: { iterations: 2, seed: 7 }\nnodes:\n",
    );
    let (spec, _) = spec::parse_graph(&yaml, &[]).unwrap();
    let mut t = flowseg_engine::train::Trainer::new(&spec, &registry(), &env(), state()).unwrap();
    assert_eq!(t.plan.streams, 1);
    // Losses and both gradients are kept; everything else may share buffers.
    assert_eq!(t.plan.keep.len(), 4, "{}", t.plan);
    assert!(t.plan.stats.peak_bytes < t.plan.stats.peak_bytes_no_reuse);
    let batch = batch();
    let want = run_cpu(&t.graph, &batch, &t.state, 7, 0)
        .unwrap()
        .scalar(&out(&t.graph, "l1"))
        .unwrap();
    let got = t.step(&batch, 0).unwrap();
    assert_eq!(got[0].0, "l1.loss");
    assert_eq!(got[0].1.to_bits(), want.to_bits());
}

#[test]
fn a_workspace_keeps_one_allocation_per_buffer_across_runs() {
    let (g, keep) = training_graph();
    let p = plan(&g, &opts(1, keep.clone())).unwrap();
    let (batch, state) = (batch(), state());
    let want: Vec<Vec<u32>> = {
        let run = run_cpu(&g, &batch, &state, 7, 3).unwrap();
        keep.iter()
            .map(|s| {
                run.get(s)
                    .unwrap()
                    .f32()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect()
    };
    let mut ws = Workspace::default();
    let mut addresses = Vec::new();
    for _ in 0..3 {
        let run =
            run_plan_in(&mut ws, &g, &p, &batch, &state, 7, 3, ExecOrder::Sequential).unwrap();
        let got: Vec<Vec<u32>> = keep
            .iter()
            .map(|s| {
                run.get(s)
                    .unwrap()
                    .f32()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect();
        assert_eq!(got, want);
        addresses.push(
            keep.iter()
                .map(|s| run.get(s).unwrap().f32().unwrap().as_ptr() as usize)
                .collect::<Vec<_>>(),
        );
        drop(run);
        // Every buffer allocated once, at its planned size (all values here are f32).
        assert_eq!(4 * ws.allocated_elements(), p.stats.peak_bytes, "{p}");
        // Batch and state are not buffers; kept values stay readable from the workspace.
        assert!(ws.get(&keep[0]).is_some() && ws.get(&ValueRef::Batch("x".into())).is_none());
    }
    assert!(addresses.windows(2).all(|w| w[0] == w[1]), "{addresses:?}");
}

#[test]
fn the_simulator_catches_an_op_that_does_not_overwrite_its_outputs() {
    for op in ["partial", "accumulate"] {
        let yaml = format!(
            "name: contract
nodes:
  - {{ name: prod, op: mul, inputs: {{ a: batch.x, b: state.net.w }} }}
  - {{ name: bad, op: {op}, inputs: {{ x: prod.y }} }}
  - {{ name: loss, op: mse, inputs: {{ x: bad.y, t: batch.t }} }}
"
        );
        let g = build(&yaml);
        let p = plan(&g, &opts(1, vec![out(&g, "loss")])).unwrap();
        let (batch, state) = (batch(), state());
        // Freshly allocated (zeroed) buffers hide the bug in plan order ...
        let want = loss_bits(&g, &p, ExecOrder::Sequential).unwrap();
        let reference = run_cpu(&g, &batch, &state, 0, 0).unwrap();
        assert_eq!(reference.scalar(&out(&g, "loss")).unwrap().to_bits(), want);
        // ... and the poisoned simulator shows it on every interleaving: the unwritten element
        // is poison, and so is poison + x where the CPU keeps the NaN's payload (else a NaN).
        for seed in 0..3 {
            match loss_bits(&g, &p, ExecOrder::Interleaved { seed }) {
                Err(ExecError::Poisoned { producer, .. }) => assert_eq!(producer, "bad"),
                Ok(bits) if op == "accumulate" => assert!(f32::from_bits(bits).is_nan()),
                other => panic!("{op}: {other:?}"),
            }
        }
        // In a reused workspace the second plan-order run sees the first's leftovers.
        if op == "accumulate" {
            let mut ws = Workspace::default();
            let mut losses = Vec::new();
            for _ in 0..2 {
                let run = run_plan_in(&mut ws, &g, &p, &batch, &state, 0, 0, ExecOrder::Sequential)
                    .unwrap();
                losses.push(run.scalar(&out(&g, "loss")).unwrap().to_bits());
            }
            assert_eq!(losses[0], want);
            assert_ne!(losses[1], want);
        }
    }
}
