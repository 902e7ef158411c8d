//! The fusion pass's rules (engine/src/fusion.rs) on two small test ops: `scale` (y = f·x, and
//! y = (f·x)² once it has absorbed a `square`) and `square` (y = x², optionally declaring a state
//! read). A pair fuses only around a value read once, not kept, not assigned, between nodes
//! with no `after:` edges, on compatible stream pins, whose absorbed node touches no state; the
//! fused graph computes the same values. The built-in fusions: ops/tests/fusion.rs.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::exec::run_cpu;
use flowseg_engine::fusion::{self, Fused};
use flowseg_engine::graph::{self, Access, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::op::{self, io};
use flowseg_engine::spec;
use flowseg_engine::{ExecCx, Op, OpError, OpNode, Port, Registry, Tensor, TensorSpec};
use serde::Deserialize;
use std::collections::BTreeMap;

struct Scale;
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleParams {
    factor: f32,
    #[serde(default)]
    square: bool,
}
impl Op for Scale {
    const NAME: &'static str = "scale";
    const SUMMARY: &'static str = "y = factor · x, squared with `square`";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str =
        "name: s\nop: scale\ninputs: { x: batch.x }\nparams: { factor: 2 }\n";
    type Params = ScaleParams;
    fn infer(_: &ScaleParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        p: &ScaleParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        outs: &mut [Tensor],
    ) -> Result<(), OpError> {
        map_one(ins, outs, |v| {
            let t = p.factor * v;
            if p.square {
                t * t
            } else {
                t
            }
        })
    }
    fn fuse_consumer(p: &ScaleParams, port: usize, consumer: &dyn OpNode) -> Option<ScaleParams> {
        (port == 0 && !p.square && op::is::<Square>(consumer)).then(|| ScaleParams {
            square: true,
            ..p.clone()
        })
    }
}

struct Square;
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SquareParams {
    /// A state tensor this node declares it reads (the access test).
    #[serde(default)]
    touch: Option<String>,
}
impl Op for Square {
    const NAME: &'static str = "square";
    const SUMMARY: &'static str = "y = x²";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str = "name: q\nop: square\ninputs: { x: batch.x }\n";
    type Params = SquareParams;
    fn infer(_: &SquareParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn access(p: &SquareParams) -> Access {
        Access {
            reads: p.touch.iter().cloned().collect(),
            writes: Vec::new(),
        }
    }
    fn cpu(
        _: &SquareParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        outs: &mut [Tensor],
    ) -> Result<(), OpError> {
        map_one(ins, outs, |v| v * v)
    }
}

/// The element-wise body both test ops share: `y[i] = f(x[i])` over port 0.
fn map_one(
    ins: &[Option<&Tensor>],
    outs: &mut [Tensor],
    f: impl Fn(f32) -> f32,
) -> Result<(), OpError> {
    const X: &[Port] = &[Port::req("x", "f32")];
    const Y: &[Port] = &[Port::req("y", "like x")];
    let x = io::f32(X, ins, 0)?.to_vec();
    for (o, v) in io::f32_out(Y, outs, 0)?.iter_mut().zip(x) {
        *o = f(v);
    }
    Ok(())
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add::<Scale>().unwrap().add::<Square>().unwrap();
    r
}

fn env() -> graph::Env {
    graph::Env {
        batch: BTreeMap::from([("x".to_owned(), TensorSpec::f32(&[2, 3]))]),
        state: BTreeMap::from([("net.w".to_owned(), TensorSpec::f32(&[1]))]),
        hidden: Default::default(),
    }
}

/// The graph of `nodes` (YAML flow mappings), fused keeping the named outputs.
fn fused(nodes: &[&str], keep: &[&str]) -> (graph::Graph, Fused, Vec<ValueRef>) {
    let yaml = format!(
        "name: t\ntrain: {{ iterations: 1 }}\nnodes:\n{}",
        nodes
            .iter()
            .map(|n| format!("  - {n}\n"))
            .collect::<String>()
    );
    let (s, _) = spec::parse_graph(&yaml, &[]).unwrap();
    let g = ir::build(&s, &registry(), &env()).unwrap();
    let keep: Vec<ValueRef> = keep.iter().map(|k| g.outputs[*k].clone()).collect();
    let f = fusion::fuse(g.clone(), &keep);
    (g, f, keep)
}

fn values(g: &graph::Graph, v: &ValueRef) -> Vec<f32> {
    let batch = BTreeMap::from([(
        "x".to_owned(),
        Tensor::from_f32(&[2, 3], vec![-1.5, 0.5, 2.0, 3.0, -0.25, 1.0]).unwrap(),
    )]);
    let state = BTreeMap::from([(
        "net.w".to_owned(),
        Tensor::from_f32(&[1], vec![1.0]).unwrap(),
    )]);
    let run = run_cpu(g, &batch, &state, 0, 0).unwrap();
    run.get(v).and_then(Tensor::f32).unwrap().to_vec()
}

const SCALE: &str = "{ name: s, op: scale, inputs: { x: batch.x }, params: { factor: 2 } }";
const SQUARE: &str = "{ name: q, op: square, inputs: { x: s.y } }";

#[test]
fn a_pair_fuses_into_one_node_with_the_same_values() {
    let (g, f, keep) = fused(&[SCALE, SQUARE], &["q.y"]);
    assert_eq!(f.fusions.len(), 1);
    let one = &f.fusions[0];
    assert_eq!(
        (
            one.node.as_str(),
            one.op,
            one.absorbed.as_str(),
            one.absorbed_op
        ),
        ("s", "scale", "q", "square")
    );
    assert_eq!(f.graph.nodes.len(), 1);
    let moved = f.remap(&keep[0]).unwrap();
    assert_eq!(values(&f.graph, &moved), values(&g, &keep[0]));
    // The value between them is gone; the graph's names follow the move.
    assert_eq!(f.remap(&g.outputs["s.y"]), None);
    assert_eq!(f.graph.outputs["q.y"], moved);
    assert_eq!(
        fusion::Summary(&f.fusions).to_string(),
        "1 × scale + square"
    );
    assert_eq!(fusion::Summary(&[]).to_string(), "nothing fused");
}

#[test]
fn a_kept_or_twice_read_value_is_not_fused() {
    // Kept: the run reads `s.y` afterwards.
    let (_, f, _) = fused(&[SCALE, SQUARE], &["q.y", "s.y"]);
    assert!(f.fusions.is_empty(), "{:?}", f.fusions);
    // Read twice: fusing would hide it from the second reader.
    let other = "{ name: r, op: square, inputs: { x: s.y } }";
    let (_, f, _) = fused(&[SCALE, SQUARE, other], &["q.y", "r.y"]);
    assert!(f.fusions.is_empty(), "{:?}", f.fusions);
}

#[test]
fn an_absorbed_node_that_touches_state_is_not_fused() {
    let touching = "{ name: q, op: square, inputs: { x: s.y }, params: { touch: net.w } }";
    let (_, f, _) = fused(&[SCALE, touching], &["q.y"]);
    assert!(f.fusions.is_empty(), "{:?}", f.fusions);
}

#[test]
fn after_edges_and_different_stream_pins_keep_nodes_apart() {
    let after = "{ name: q, op: square, inputs: { x: s.y }, after: [s] }";
    let (_, f, _) = fused(&[SCALE, after], &["q.y"]);
    assert!(f.fusions.is_empty(), "{:?}", f.fusions);
    let pinned_a =
        "{ name: s, op: scale, inputs: { x: batch.x }, params: { factor: 2 }, stream: a }";
    let pinned_b = "{ name: q, op: square, inputs: { x: s.y }, stream: b }";
    let (_, f, _) = fused(&[pinned_a, pinned_b], &["q.y"]);
    assert!(f.fusions.is_empty(), "{:?}", f.fusions);
    // One pin is no conflict: the fused node keeps it.
    let (_, f, _) = fused(&[pinned_a, SQUARE], &["q.y"]);
    assert_eq!(f.fusions.len(), 1);
    assert_eq!(f.graph.nodes[0].stream.as_deref(), Some("a"));
}

#[test]
fn chains_fuse_pairwise_until_nothing_is_left() {
    // scale → square → square: the first pair fuses; the fused scale (square: true) absorbs no
    // second square, so the chain ends with two nodes and the same values.
    let second = "{ name: q2, op: square, inputs: { x: q.y } }";
    let (g, f, keep) = fused(&[SCALE, SQUARE, second], &["q2.y"]);
    assert_eq!(f.fusions.len(), 1);
    assert_eq!(f.graph.nodes.len(), 2);
    let moved = f.remap(&keep[0]).unwrap();
    assert_eq!(values(&f.graph, &moved), values(&g, &keep[0]));
    // `Fused::none` maps every value to itself.
    let none = Fused::none(g.clone());
    assert_eq!(none.remap(&keep[0]), Some(keep[0].clone()));
}
