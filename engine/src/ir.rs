//! ir: the validated op graph. Built from a [`GraphSpec`] and a [`Registry`]: every node's op is
//! looked up and configured (typed params), every input reference resolved, order edges added,
//! cycles rejected, and shapes inferred in topological order. Like the spec stage it reports every
//! problem in the file at once, each with a code, line:column, the node and a hint.
//!
//! | code | problem |
//! | --- | --- |
//! | FS0101 | unknown op (with the nearest registered names) |
//! | FS0102 | bad params for the op (unknown key, wrong type, missing field) |
//! | FS0103 | unknown input port, or a required input left unconnected |
//! | FS0104 | dangling reference: no such node, port or batch field |
//! | FS0105 | two nodes with one name |
//! | FS0106 | cycle through inputs and `after:` edges |
//! | FS0107 | shape or dtype mismatch found by shape inference |
//! | FS0108 | an output nothing consumes (warning; an error under `--strict`) |
//!
//! Not here yet: models traced into nodes, autodiff, state-conflict checks (they need the plan's
//! ordering), streams.

use crate::op::OpNode;
use crate::registry::Registry;
use crate::spec::{GraphError, GraphSpec, Loc, Sp};
use crate::tensor::TensorSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// FS0101: unknown op.
pub const UNKNOWN_OP: &str = "FS0101";
/// FS0102: bad params.
pub const BAD_PARAMS: &str = "FS0102";
/// FS0103: unknown or missing input port.
pub const BAD_PORT: &str = "FS0103";
/// FS0104: dangling reference.
pub const DANGLING: &str = "FS0104";
/// FS0105: duplicate node name.
pub const DUPLICATE_NODE: &str = "FS0105";
/// FS0106: cycle.
pub const CYCLE: &str = "FS0106";
/// FS0107: shape or dtype mismatch.
pub const SHAPE: &str = "FS0107";
/// FS0108: unused output.
pub const UNUSED_OUTPUT: &str = "FS0108";

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A field of the data batch (`batch.image`).
    Batch(String),
    /// A persistent tensor (`state.student.conv1.weight`): model parameters and buffers, which
    /// outlive an iteration and are what optimizers update.
    State(String),
    /// Output `port` of node `node` (index into [`Graph::nodes`]).
    Node {
        /// Producer index.
        node: usize,
        /// Output index of the producer.
        port: usize,
    },
}

/// What a graph can read besides node outputs: the data batch's fields and the persistent state,
/// each with its spec.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// Batch fields (`batch.<field>`).
    pub batch: BTreeMap<String, TensorSpec>,
    /// Persistent tensors (`state.<name>`).
    pub state: BTreeMap<String, TensorSpec>,
}

/// A validated node.
#[derive(Debug, Clone)]
pub struct IrNode {
    /// Name, with its location.
    pub name: Sp<String>,
    /// The configured op.
    pub op: Arc<dyn OpNode>,
    /// One entry per op input port, in the op's order; `None` = optional and unconnected.
    pub inputs: Vec<Option<Source>>,
    /// Inferred output specs, in the op's output order.
    pub outputs: Vec<TensorSpec>,
    /// Nodes that must run first without a data edge (`after:`).
    pub after: Vec<usize>,
    /// Stream pin, if any.
    pub stream: Option<String>,
}

/// The validated op graph, nodes in a topological order (file order where free).
#[derive(Debug, Clone)]
pub struct Graph {
    /// Nodes; every `Source::Node` and `after` index points to an earlier node.
    pub nodes: Vec<IrNode>,
    /// Batch fields the graph reads, with their specs.
    pub batch: BTreeMap<String, TensorSpec>,
    /// Persistent tensors the graph reads, with their specs.
    pub state: BTreeMap<String, TensorSpec>,
    /// Non-fatal findings (unused outputs).
    pub warnings: Vec<GraphError>,
}

impl Graph {
    /// The spec of a source.
    pub fn spec_of(&self, s: &Source) -> Option<&TensorSpec> {
        match s {
            Source::Batch(f) => self.batch.get(f),
            Source::State(f) => self.state.get(f),
            Source::Node { node, port } => self.nodes.get(*node)?.outputs.get(*port),
        }
    }
}

/// A node between resolution and ordering.
struct Pending {
    file_index: usize,
    name: Sp<String>,
    op: Arc<dyn OpNode>,
    /// Per input port: the reference as written (name, port), or a batch field.
    inputs: Vec<Option<(Ref, Loc)>>,
    after: Vec<usize>,
    stream: Option<String>,
    /// An error was already reported for this node: skip its shape inference.
    broken: bool,
}

#[derive(Clone)]
enum Ref {
    Batch(String),
    State(String),
    Node(usize, usize),
}

/// Builds and validates the op graph against what the data source and the models provide
/// (`env`). Returns every error found; warnings ride along in [`Graph::warnings`].
pub fn build(spec: &GraphSpec, registry: &Registry, env: &Env) -> Result<Graph, Vec<GraphError>> {
    let mut errors = Vec::new();

    // Names first, so references can be resolved in any order.
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        if let Some(&first) = index.get(n.name.as_str()) {
            errors.push(
                GraphError::new(
                    DUPLICATE_NODE,
                    format!("a node named `{}` already exists", n.name.value),
                    n.name.loc,
                )
                .in_node(&n.name)
                .help(format!(
                    "the first one is at {}",
                    spec.nodes[first].name.loc
                )),
            );
        } else {
            index.insert(n.name.as_str(), i);
        }
    }

    // Ops, params, ports, references.
    let mut pending: Vec<Option<Pending>> = Vec::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let errors_before = errors.len();
        let node_err = |code, msg: String, loc| GraphError::new(code, msg, loc).in_node(&n.name);
        let Some(def) = registry.get(&n.op) else {
            let near = registry.suggest(&n.op);
            let help = if near.is_empty() {
                "`flowseg ops` lists the registered ops; plugins add more".to_owned()
            } else {
                format!(
                    "did you mean {}?",
                    near.iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            errors.push(
                node_err(UNKNOWN_OP, format!("unknown op `{}`", n.op.value), n.op.loc).help(help),
            );
            pending.push(None);
            continue;
        };
        let op = match def.configure(n.params.as_ref()) {
            Ok(op) => op,
            Err(e) => {
                let loc = if e.loc.is_known() { e.loc } else { n.op.loc };
                errors.push(
                    node_err(
                        BAD_PARAMS,
                        format!("params of `{}`: {}", def.name(), e.message),
                        loc,
                    )
                    .help(format!(
                        "`flowseg ops` shows the params of `{}`",
                        def.name()
                    )),
                );
                pending.push(None);
                continue;
            }
        };
        let ports = def.inputs();
        for (port, r) in &n.inputs {
            if !ports.iter().any(|p| p.name == port) {
                errors.push(
                    node_err(
                        BAD_PORT,
                        format!("`{}` has no input `{port}`", def.name()),
                        r.loc,
                    )
                    .help(port_list("inputs", ports.iter().map(|p| p.name))),
                );
            }
        }
        let mut inputs = Vec::with_capacity(ports.len());
        for p in ports {
            let Some(r) = n.inputs.get(p.name) else {
                if !p.optional {
                    errors.push(
                        node_err(
                            BAD_PORT,
                            format!("required input `{}` is not connected", p.name),
                            n.name.loc,
                        )
                        .help(format!(
                            "add `inputs: {{ {}: <node>.<port> }}` ({})",
                            p.name, p.doc
                        )),
                    );
                }
                inputs.push(None);
                continue;
            };
            match resolve(r, spec, registry, &index, env) {
                Ok(x) => inputs.push(Some((x, r.loc))),
                Err(e) => {
                    errors.push(e.in_node(&n.name));
                    inputs.push(None);
                }
            }
        }
        let mut after = Vec::new();
        for a in &n.after {
            match index.get(a.as_str()) {
                Some(&j) => after.push(j),
                None => errors.push(
                    node_err(
                        DANGLING,
                        format!("`after` names no node `{}`", a.value),
                        a.loc,
                    )
                    .help(nearest_names(a, index.keys().copied())),
                ),
            }
        }
        pending.push(Some(Pending {
            file_index: i,
            name: n.name.clone(),
            op,
            inputs,
            after,
            stream: n.stream.as_ref().map(|s| s.value.clone()),
            broken: errors.len() > errors_before,
        }));
    }

    // Topological order over data and order edges (Kahn; ties in file order).
    let order = match topo_order(&pending) {
        Ok(o) => o,
        Err(cycle) => {
            let names: Vec<&str> = cycle.iter().map(|&i| spec.nodes[i].name.as_str()).collect();
            let first = &spec.nodes[cycle[0]];
            errors.push(
                GraphError::new(
                    CYCLE,
                    format!("cycle through {}", names.join(" → ")),
                    first.name.loc,
                )
                .in_node(&first.name)
                .help("a node cannot depend on its own output; break the loop or drop an `after:`"),
            );
            return Err(errors);
        }
    };

    // Shape inference in order; nodes after a failure are skipped rather than re-reported.
    let mut position = vec![usize::MAX; pending.len()];
    for (pos, &i) in order.iter().enumerate() {
        position[i] = pos;
    }
    let mut nodes: Vec<IrNode> = Vec::with_capacity(order.len());
    let mut failed = vec![false; pending.len()];
    let mut used: BTreeSet<(usize, usize)> = BTreeSet::new();
    for &i in &order {
        let Some(p) = pending[i].as_ref() else {
            failed[i] = true;
            continue;
        };
        let mut sources = Vec::with_capacity(p.inputs.len());
        let mut specs: Vec<Option<TensorSpec>> = Vec::with_capacity(p.inputs.len());
        let mut upstream_failed = false;
        for inp in &p.inputs {
            match inp {
                None => {
                    sources.push(None);
                    specs.push(None);
                }
                Some((Ref::Batch(f), _)) => {
                    sources.push(Some(Source::Batch(f.clone())));
                    specs.push(env.batch.get(f).cloned());
                }
                Some((Ref::State(f), _)) => {
                    sources.push(Some(Source::State(f.clone())));
                    specs.push(env.state.get(f).cloned());
                }
                Some((Ref::Node(j, port), _)) => {
                    used.insert((*j, *port));
                    if failed[*j] || pending[*j].is_none() {
                        upstream_failed = true;
                        sources.push(None);
                        specs.push(None);
                        continue;
                    }
                    let producer = &nodes[position[*j]];
                    sources.push(Some(Source::Node {
                        node: position[*j],
                        port: *port,
                    }));
                    specs.push(producer.outputs.get(*port).cloned());
                }
            }
        }
        if upstream_failed || p.broken {
            failed[i] = true;
            continue;
        }
        let refs: Vec<Option<&TensorSpec>> = specs.iter().map(Option::as_ref).collect();
        match p.op.infer(&refs) {
            Ok(outputs) => nodes.push(IrNode {
                name: p.name.clone(),
                op: p.op.clone(),
                inputs: sources,
                outputs,
                after: p.after.iter().map(|&a| position[a]).collect(),
                stream: p.stream.clone(),
            }),
            Err(msg) => {
                failed[i] = true;
                let loc = spec.nodes[p.file_index].op.loc;
                let shapes: Vec<String> = p
                    .inputs
                    .iter()
                    .zip(&refs)
                    .zip(registry.get(p.op.name()).map_or(&[][..], |d| d.inputs()))
                    .filter(|((inp, _), _)| inp.is_some())
                    .map(|((_, s), port)| {
                        format!(
                            "{} = {}",
                            port.name,
                            s.map_or("?".into(), |s| s.to_string())
                        )
                    })
                    .collect();
                errors.push(
                    GraphError::new(SHAPE, msg, loc)
                        .in_node(&p.name)
                        .help(format!("inputs here: {}", shapes.join(", "))),
                );
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Unused outputs: warnings.
    let mut warnings = Vec::new();
    for p in pending.iter().flatten() {
        let Some(def) = registry.get(p.op.name()) else {
            continue;
        };
        for (k, port) in def.outputs().iter().enumerate() {
            if !used.contains(&(p.file_index, k)) {
                let mut w = GraphError::new(
                    UNUSED_OUTPUT,
                    format!("output `{}.{}` is never used", p.name.value, port.name),
                    p.name.loc,
                )
                .in_node(&p.name);
                w.warning = true;
                warnings.push(w);
            }
        }
    }
    let (mut batch, mut state) = (BTreeMap::new(), BTreeMap::new());
    for s in nodes.iter().flat_map(|n| n.inputs.iter().flatten()) {
        match s {
            Source::Batch(f) => {
                batch.insert(f.clone(), env.batch[f].clone());
            }
            Source::State(f) => {
                state.insert(f.clone(), env.state[f].clone());
            }
            Source::Node { .. } => {}
        }
    }
    Ok(Graph {
        nodes,
        batch,
        state,
        warnings,
    })
}

/// Resolves `batch.<field>`, `state.<name>` or `<node>.<port>`.
fn resolve(
    r: &Sp<String>,
    spec: &GraphSpec,
    registry: &Registry,
    index: &BTreeMap<&str, usize>,
    env: &Env,
) -> Result<Ref, GraphError> {
    let Some((head, port)) = r.split_once('.') else {
        return Err(
            GraphError::new(DANGLING, format!("`{}` is not a reference", r.value), r.loc)
                .help("write `<node>.<output>`, `batch.<field>` or `state.<name>`"),
        );
    };
    if head == "batch" {
        return if env.batch.contains_key(port) {
            Ok(Ref::Batch(port.to_owned()))
        } else {
            Err(
                GraphError::new(DANGLING, format!("the batch has no field `{port}`"), r.loc).help(
                    port_list("batch fields", env.batch.keys().map(String::as_str)),
                ),
            )
        };
    }
    if head == "state" {
        return if env.state.contains_key(port) {
            Ok(Ref::State(port.to_owned()))
        } else {
            Err(GraphError::new(
                DANGLING,
                format!("there is no state tensor `{port}`"),
                r.loc,
            )
            .help(nearest_names(port, env.state.keys().map(String::as_str))))
        };
    }
    let Some(&j) = index.get(head) else {
        return Err(
            GraphError::new(DANGLING, format!("no node named `{head}`"), r.loc)
                .help(nearest_names(head, index.keys().copied())),
        );
    };
    // The producer's output ports come from its op; an unknown op was reported already.
    let outputs = registry
        .get(&spec.nodes[j].op)
        .map_or(&[][..], |d| d.outputs());
    match outputs.iter().position(|p| p.name == port) {
        Some(k) => Ok(Ref::Node(j, k)),
        None if outputs.is_empty() => Ok(Ref::Node(j, 0)),
        None => Err(GraphError::new(
            DANGLING,
            format!("node `{head}` has no output `{port}`"),
            r.loc,
        )
        .help(port_list("outputs", outputs.iter().map(|p| p.name)))),
    }
}

fn port_list<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        format!("there are no {what}")
    } else {
        format!("{what}: {}", v.join(", "))
    }
}

fn nearest_names<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> String {
    let mut near: Vec<(usize, &str)> = names
        .map(|n| (crate::registry::edit_distance(name, n), n))
        .filter(|(d, _)| *d <= 2)
        .collect();
    near.sort();
    match near.first() {
        Some((_, n)) => format!("did you mean `{n}`?"),
        None => "node names are the `name:` of each entry under `nodes:`".to_owned(),
    }
}

/// Kahn's algorithm over data and `after` edges, smallest file index first. `Err` holds the
/// nodes of one cycle, in order.
fn topo_order(pending: &[Option<Pending>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = pending.len();
    let mut preds: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (i, p) in pending.iter().enumerate() {
        let Some(p) = p else { continue };
        for (r, _) in p.inputs.iter().flatten() {
            if let Ref::Node(j, _) = r {
                preds[i].insert(*j);
            }
        }
        preds[i].extend(p.after.iter().copied());
    }
    let mut indeg: Vec<usize> = preds.iter().map(BTreeSet::len).collect();
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ps) in preds.iter().enumerate() {
        for &j in ps {
            succs[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &s in &succs[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.insert(s);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk predecessors among the unfinished nodes until one repeats: that loop is a cycle.
    let left: BTreeSet<usize> = (0..n).filter(|i| !order.contains(i)).collect();
    let mut path = Vec::new();
    let mut cur = *left.iter().next().unwrap_or(&0);
    loop {
        if let Some(pos) = path.iter().position(|&x| x == cur) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        path.push(cur);
        match preds[cur].iter().find(|p| left.contains(p)) {
            Some(&p) => cur = p,
            None => return Err(path),
        }
    }
}
