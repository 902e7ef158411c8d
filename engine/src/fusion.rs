//! The planner's fusion pass: pairs of adjacent nodes whose ops say they can run as one
//! ([`crate::op::Op::fuse_consumer`], [`crate::op::Op::fuse_producer`]) become one node, so the
//! value between them is never written to memory and read back. It works on any graph and
//! knows no op: `batch_norm` taking the `relu` after it, and `batch_norm_bwd` taking the
//! `relu_bwd` in front of it, are declared in their op file.
//!
//! Two shapes of pair, both around a value v = output `k` of producer P read once, by consumer C
//! on input `j`, and by nothing else (not kept after the run, not assigned to state):
//! * **epilogue**: C's only input is v and its one output has v's spec: P's op returns a node
//!   that also computes C; it takes P's place, and C's output becomes its output `k`.
//! * **prologue**: P has one output (v): C's op returns a node that reads P's inputs instead of
//!   v (on `j` or on optional ports C left unconnected); it takes C's place.
//!
//! In both the fused node sits where its inputs are already computed and before every reader of
//! its outputs, so the node order stays topological. A fused node keeps the name of the node
//! whose op it is (its random stream: [`crate::graph::node_key`]). Nodes with `after:` edges, or
//! pinned to different streams, are left alone, and so are pairs whose absorbed node reads or
//! writes state (the planner orders state access by the nodes that declare it). The pass repeats until no pair fuses, so chains
//! fuse pairwise. Every fused node's specs are inferred again and must equal the old ones.
//!
//! Not here: the fused kernels (each op's file), fusing across more than two ops at once, or
//! ops that draw random numbers in both halves (the hooks decline those). Nor the `fuse/` op
//! family (ops/src/fuse/), which combines predictions into pseudo-labels: a different "fuse".

use crate::graph::{Access, Graph, IrNode, ValueRef};
use crate::tensor::TensorSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One pair fused: the node that remains and the node it absorbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fusion {
    /// The remaining node's name (now running the fused op).
    pub node: String,
    /// Its op.
    pub op: &'static str,
    /// The absorbed node's name.
    pub absorbed: String,
    /// The absorbed node's op.
    pub absorbed_op: &'static str,
}

/// A fused graph and how its values relate to the graph it came from.
#[derive(Debug, Clone)]
pub struct Fused {
    /// The graph after fusion.
    pub graph: Graph,
    /// The pairs fused, in the order the pass found them.
    pub fusions: Vec<Fusion>,
    /// Per node of the original graph, per output port: the same value in the fused graph, or
    /// `None` for a value that no longer exists (the one between a fused pair).
    map: Vec<Vec<Option<ValueRef>>>,
}

impl Fused {
    /// The value `v` of the original graph in the fused one. Batch and state references are
    /// unchanged; `None` for a value fusion removed (never one the pass was told to keep).
    pub fn remap(&self, v: &ValueRef) -> Option<ValueRef> {
        match v {
            ValueRef::Node { node, port } => self.map.get(*node)?.get(*port)?.clone(),
            other => Some(other.clone()),
        }
    }

    /// The graph as it was: no pair fused (`--no-fuse`).
    pub fn none(graph: Graph) -> Fused {
        let map = identity(&graph);
        Fused {
            graph,
            fusions: Vec::new(),
            map,
        }
    }
}

/// Counts of fused pairs by (op, absorbed op), for `flowseg plan` and the training log:
/// `28 × batch_norm + relu, 28 × batch_norm_bwd + relu_bwd`.
pub struct Summary<'a>(pub &'a [Fusion]);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for x in self.0 {
            *counts.entry((x.op, x.absorbed_op)).or_default() += 1;
        }
        if counts.is_empty() {
            return write!(f, "nothing fused");
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|((op, absorbed), n)| format!("{n} × {op} + {absorbed}"))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

fn identity(graph: &Graph) -> Vec<Vec<Option<ValueRef>>> {
    graph
        .nodes
        .iter()
        .enumerate()
        .map(|(node, n)| {
            (0..n.outputs.len())
                .map(|port| Some(ValueRef::Node { node, port }))
                .collect()
        })
        .collect()
}

/// Fuses every pair of `graph` whose ops allow it, never removing a value in `keep` (what the
/// run reads afterwards: losses, gradients, metrics) or one the graph assigns to state.
pub fn fuse(graph: Graph, keep: &[ValueRef]) -> Fused {
    let mut fused = Fused::none(graph);
    let mut keep: BTreeSet<ValueRef> = keep.iter().cloned().collect();
    while let Some((graph, step, fusions)) = sweep(&fused.graph, &keep) {
        for ports in &mut fused.map {
            for v in ports.iter_mut() {
                *v = v.as_ref().and_then(|v| remap_with(&step, v));
            }
        }
        keep = keep.iter().filter_map(|v| remap_with(&step, v)).collect();
        fused.graph = graph;
        fused.fusions.extend(fusions);
    }
    fused
}

fn remap_with(map: &[Vec<Option<ValueRef>>], v: &ValueRef) -> Option<ValueRef> {
    match v {
        ValueRef::Node { node, port } => map.get(*node)?.get(*port)?.clone(),
        other => Some(other.clone()),
    }
}

/// What one fusion does to the graph.
enum Pair {
    /// P (`keep`) takes over C (`gone`), whose output becomes P's output `port`.
    Epilogue {
        keep: usize,
        gone: usize,
        port: usize,
        op: std::sync::Arc<dyn crate::graph::OpNode>,
    },
    /// C (`keep`) takes over P (`gone`) and reads `inputs`.
    Prologue {
        keep: usize,
        gone: usize,
        inputs: Vec<Option<ValueRef>>,
        op: std::sync::Arc<dyn crate::graph::OpNode>,
    },
}

/// One pass over the graph: every pair that fuses, no node in two pairs. `None` when none does.
#[allow(clippy::type_complexity)]
fn sweep(
    graph: &Graph,
    keep: &BTreeSet<ValueRef>,
) -> Option<(Graph, Vec<Vec<Option<ValueRef>>>, Vec<Fusion>)> {
    let n = graph.nodes.len();
    let mut readers: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for node in &graph.nodes {
        for input in node.inputs.iter().flatten() {
            if let ValueRef::Node { node, port } = input {
                *readers.entry((*node, *port)).or_default() += 1;
            }
        }
    }
    let assigned: BTreeSet<&ValueRef> = graph.assigns.iter().map(|(v, _)| v).collect();
    let mut ordered = vec![false; n];
    for node in &graph.nodes {
        for &a in &node.after {
            if let Some(o) = ordered.get_mut(a) {
                *o = true;
            }
        }
    }
    let free = |i: usize| graph.nodes[i].after.is_empty() && !ordered[i];
    let mut busy = vec![false; n];
    let mut pairs = Vec::new();
    for (c, consumer) in graph.nodes.iter().enumerate() {
        for (j, input) in consumer.inputs.iter().enumerate() {
            let Some(v @ ValueRef::Node { node: p, port: k }) = input else {
                continue;
            };
            let (p, k) = (*p, *k);
            if busy[p] || busy[c] || !free(p) || !free(c) {
                continue;
            }
            if keep.contains(v) || assigned.contains(v) || readers.get(&(p, k)) != Some(&1) {
                continue;
            }
            let producer = &graph.nodes[p];
            if let (Some(a), Some(b)) = (&producer.stream, &consumer.stream) {
                if a != b {
                    continue;
                }
            }
            if let Some(pair) = epilogue(graph, p, k, c).or_else(|| prologue(graph, p, c, j)) {
                busy[p] = true;
                busy[c] = true;
                pairs.push(pair);
            }
        }
    }
    if pairs.is_empty() {
        return None;
    }
    Some(apply(graph, pairs))
}

fn specs_of(graph: &Graph, inputs: &[Option<ValueRef>]) -> Vec<Option<TensorSpec>> {
    inputs
        .iter()
        .map(|s| s.as_ref().and_then(|s| graph.spec_of(s).cloned()))
        .collect()
}

/// The fused op infers exactly the outputs the node it replaces had.
fn infers(
    graph: &Graph,
    op: &dyn crate::graph::OpNode,
    inputs: &[Option<ValueRef>],
    outputs: &[TensorSpec],
) -> bool {
    let specs = specs_of(graph, inputs);
    let refs: Vec<Option<&TensorSpec>> = specs.iter().map(Option::as_ref).collect();
    op.infer(&refs).is_ok_and(|o| o == outputs)
}

/// The planner orders nodes that touch state by their declared access: a pair fuses only when
/// the absorbed node touches none and the fused op declares what the kept node did, so no
/// access is lost or invented.
fn keeps_access(kept: &IrNode, absorbed: &IrNode, fused: &dyn crate::graph::OpNode) -> bool {
    absorbed.op.access() == Access::default() && fused.access() == kept.op.access()
}

fn epilogue(graph: &Graph, p: usize, k: usize, c: usize) -> Option<Pair> {
    let (producer, consumer) = (&graph.nodes[p], &graph.nodes[c]);
    if consumer.inputs.iter().flatten().count() != 1
        || consumer.outputs.len() != 1
        || Some(&consumer.outputs[0]) != producer.outputs.get(k)
    {
        return None;
    }
    let op = producer.op.fuse_consumer(k, consumer.op.as_ref())?;
    if !keeps_access(producer, consumer, op.as_ref()) {
        return None;
    }
    infers(graph, op.as_ref(), &producer.inputs, &producer.outputs).then_some(Pair::Epilogue {
        keep: p,
        gone: c,
        port: k,
        op,
    })
}

fn prologue(graph: &Graph, p: usize, c: usize, j: usize) -> Option<Pair> {
    let (producer, consumer) = (&graph.nodes[p], &graph.nodes[c]);
    if producer.outputs.len() != 1 {
        return None;
    }
    let (op, ports) = consumer.op.fuse_producer(j, producer.op.as_ref())?;
    if ports.len() != producer.inputs.len() || !keeps_access(consumer, producer, op.as_ref()) {
        return None;
    }
    let mut inputs = consumer.inputs.clone();
    inputs[j] = None;
    for (&q, from) in ports.iter().zip(&producer.inputs) {
        match inputs.get_mut(q) {
            Some(slot @ None) => *slot = from.clone(),
            _ => return None,
        }
    }
    infers(graph, op.as_ref(), &inputs, &consumer.outputs).then_some(Pair::Prologue {
        keep: c,
        gone: p,
        inputs,
        op,
    })
}

#[allow(clippy::type_complexity)]
fn apply(graph: &Graph, pairs: Vec<Pair>) -> (Graph, Vec<Vec<Option<ValueRef>>>, Vec<Fusion>) {
    let n = graph.nodes.len();
    let mut gone = vec![false; n];
    for pair in &pairs {
        match pair {
            Pair::Epilogue { gone: g, .. } | Pair::Prologue { gone: g, .. } => gone[*g] = true,
        }
    }
    // Old node → new index; then old value → new value.
    let mut index = vec![usize::MAX; n];
    let mut next = 0;
    for (i, slot) in index.iter_mut().enumerate() {
        if !gone[i] {
            *slot = next;
            next += 1;
        }
    }
    let mut map: Vec<Vec<Option<ValueRef>>> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            (0..node.outputs.len())
                .map(|port| {
                    (!gone[i]).then(|| ValueRef::Node {
                        node: index[i],
                        port,
                    })
                })
                .collect()
        })
        .collect();
    let mut nodes: Vec<IrNode> = graph.nodes.clone();
    let mut fusions = Vec::new();
    for pair in pairs {
        match pair {
            Pair::Epilogue {
                keep,
                gone,
                port,
                op,
            } => {
                // The kept node's output `port` now holds the consumer's value; its old value
                // (the one between the pair) exists no more.
                map[gone][0] = Some(ValueRef::Node {
                    node: index[keep],
                    port,
                });
                map[keep][port] = None;
                fusions.push(fusion(graph, keep, gone));
                let absorbed = &graph.nodes[gone];
                let node = &mut nodes[keep];
                node.op = op;
                node.stream = node.stream.take().or_else(|| absorbed.stream.clone());
            }
            Pair::Prologue {
                keep,
                gone,
                inputs,
                op,
            } => {
                fusions.push(fusion(graph, keep, gone));
                let absorbed = &graph.nodes[gone];
                let node = &mut nodes[keep];
                node.op = op;
                node.inputs = inputs;
                node.stream = node.stream.take().or_else(|| absorbed.stream.clone());
            }
        }
    }
    let re = |v: &ValueRef| remap_with(&map, v);
    let nodes: Vec<IrNode> = nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !gone[*i])
        .map(|(_, mut node)| {
            // A value read by a surviving node is never the removed one (it had one reader,
            // the node that absorbed it), so every input maps.
            node.inputs = node
                .inputs
                .iter()
                .map(|s| s.as_ref().and_then(re))
                .collect();
            node.after = node.after.iter().map(|&a| index[a]).collect();
            node
        })
        .collect();
    let out = Graph {
        nodes,
        batch: graph.batch.clone(),
        state: graph.state.clone(),
        params: graph.params.clone(),
        assigns: graph
            .assigns
            .iter()
            .filter_map(|(v, s)| Some((re(v)?, s.clone())))
            .collect(),
        outputs: graph
            .outputs
            .iter()
            .filter_map(|(name, v)| Some((name.clone(), re(v)?)))
            .collect(),
        warnings: graph.warnings.clone(),
    };
    (out, map, fusions)
}

fn fusion(graph: &Graph, keep: usize, gone: usize) -> Fusion {
    let (k, g) = (&graph.nodes[keep], &graph.nodes[gone]);
    Fusion {
        node: k.name.value.clone(),
        op: k.op.name(),
        absorbed: g.name.value.clone(),
        absorbed_op: g.op.name(),
    }
}
