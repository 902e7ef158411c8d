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
//! | FS0108 | a node none of whose outputs is consumed (warning; an error under `--strict`) |
//! | FS0112 | a `forward` names no model, or a model has no known architecture |
//!
//! `forward` nodes are composites: the named model's architecture traces its primitive nodes into
//! the graph in place of the `forward` node (see `model.rs`), declaring its parameters as state.
//!
//! Not here: state-conflict checks and streams (`plan.rs`, which has the ordering).

use crate::graph::{Env, Graph, IrNode, OpNode, Port, StateDecl, ValueRef};
use crate::model::{Net, Stage, Tracer};
use crate::op::{Configured, NoParams, StopGradient};
use crate::registry::{Registry, FORWARD, GRAD};
use crate::spec::{from_node, GraphError, GraphSpec, Loc, Sp};
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
/// FS0112: bad model reference.
pub const BAD_MODEL: &str = "FS0112";
const GRAD_INPUTS: &[Port] = &[
    Port::req("of", "f32[] (a scalar, usually a loss)"),
    Port::req("wrt", "f32, any shape (an activation or input)"),
];
const GRAD_OUTPUTS: &[Port] = &[Port::req("grad", "like wrt: d(of)/d(wrt), a stop-gradient")];
/// FS0115: a `grad` whose `of` does not depend on its `wrt`.
pub const NO_GRADIENT: &str = "FS0115";
const FORWARD_INPUTS: &[Port] = &[Port::req("image", "f32[N, 3, H, W]")];

/// Params of a `forward` node.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardParams {
    /// The model (a key of `models:`).
    model: Sp<String>,
    /// `train` (batch statistics, updated running statistics) or `eval`.
    #[serde(default)]
    mode: Mode,
    /// `whole` (default), `encoder` or `decoder`: which part of a split architecture runs.
    #[serde(default)]
    stage: Stage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Train,
    Eval,
}

/// FS0108: unused output.
pub const UNUSED_OUTPUT: &str = "FS0108";

/// A node between resolution and ordering.
struct Pending {
    file_index: usize,
    name: Sp<String>,
    kind: Kind,
    /// Per input port: the reference as written (name, port), or a batch field.
    inputs: Vec<Option<(Ref, Loc)>>,
    after: Vec<usize>,
    stream: Option<String>,
    /// An error was already reported for this node: skip its shape inference.
    broken: bool,
}

/// A primitive op, or a model call to expand.
enum Kind {
    Op(Arc<dyn OpNode>),
    Forward {
        net: Arc<dyn Net>,
        model: String,
        train: bool,
        stage: Stage,
    },
    Grad,
}

/// What a spec node offers: its input and output ports, when known.
struct Ports {
    inputs: &'static [Port],
    outputs: &'static [Port],
}

#[derive(Clone)]
enum Ref {
    Batch(String),
    State(String),
    Node(usize, usize),
}

/// Builds and validates the op graph against what the data source provides (`env`; state the
/// models declare is added as they are traced). Returns every error found; warnings ride along
/// in [`Graph::warnings`].
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

    // What each node is, and its ports (needed to resolve references to it).
    let mut kinds: Vec<Option<(Kind, Ports)>> = Vec::with_capacity(spec.nodes.len());
    for n in &spec.nodes {
        let node_err = |code, msg: String, loc| GraphError::new(code, msg, loc).in_node(&n.name);
        if n.op.value == GRAD {
            let empty = crate::spec::Node::detached(crate::spec::Value::Map(Vec::new()));
            match from_node::<NoParams>(n.params.as_ref().unwrap_or(&empty)) {
                Ok(_) => kinds.push(Some((
                    Kind::Grad,
                    Ports {
                        inputs: GRAD_INPUTS,
                        outputs: GRAD_OUTPUTS,
                    },
                ))),
                Err(e) => {
                    errors.push(node_err(
                        BAD_PARAMS,
                        format!("`grad` takes no params: {}", e.message),
                        e.loc,
                    ));
                    kinds.push(None);
                }
            }
            continue;
        }
        if n.op.value == FORWARD {
            kinds.push(
                match forward_kind(spec, registry, n.params.as_ref(), n.op.loc) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        errors.push(e.in_node(&n.name));
                        None
                    }
                },
            );
            continue;
        }
        let Some(def) = registry.get(&n.op) else {
            let near = registry.suggest(&n.op);
            let help = if near.is_empty() {
                "`flowseg ops` lists the registered ops; plugins add more".to_owned()
            } else {
                let names: Vec<String> = near.iter().map(|s| format!("`{s}`")).collect();
                format!("did you mean {}?", names.join(", "))
            };
            errors.push(
                node_err(UNKNOWN_OP, format!("unknown op `{}`", n.op.value), n.op.loc).help(help),
            );
            kinds.push(None);
            continue;
        };
        match def.configure(n.params.as_ref()) {
            Ok(op) => kinds.push(Some((
                Kind::Op(op),
                Ports {
                    inputs: def.inputs(),
                    outputs: def.outputs(),
                },
            ))),
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
                kinds.push(None);
            }
        }
    }
    let out_ports: Vec<Option<&'static [Port]>> = kinds
        .iter()
        .map(|k| k.as_ref().map(|(_, p)| p.outputs))
        .collect();
    let outputs_of = |j: usize| out_ports[j];

    // Ports and references.
    let mut pending: Vec<Option<Pending>> = Vec::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let errors_before = errors.len();
        let node_err = |code, msg: String, loc| GraphError::new(code, msg, loc).in_node(&n.name);
        let Some((_, ports)) = &kinds[i] else {
            pending.push(None);
            continue;
        };
        let what = if n.op.value == FORWARD {
            "a model call"
        } else {
            n.op.as_str()
        };
        for (port, r) in &n.inputs {
            if !ports.inputs.iter().any(|p| p.name == port) {
                errors.push(
                    node_err(BAD_PORT, format!("`{what}` has no input `{port}`"), r.loc)
                        .help(port_list("inputs", ports.inputs.iter().map(|p| p.name))),
                );
            }
        }
        let mut inputs = Vec::with_capacity(ports.inputs.len());
        for p in ports.inputs {
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
            match resolve(r, &index, &outputs_of, env) {
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
            kind: match kinds[i].take() {
                Some((k, _)) => k,
                None => unreachable!("checked above"),
            },
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

    // Shape inference and model tracing in order. `produced[j]` holds the output sources of
    // spec node j once built; nodes downstream of a failure are skipped, not re-reported.
    let mut nodes: Vec<IrNode> = Vec::with_capacity(order.len());
    let mut state_specs = env.state.clone();
    let mut decls: BTreeMap<String, StateDecl> = BTreeMap::new();
    let mut assigns: Vec<(ValueRef, String)> = Vec::new();
    let mut produced: Vec<Option<Vec<ValueRef>>> = vec![None; pending.len()];
    // Index in `nodes` of the last node each spec node emitted, for `after:` edges.
    let mut last_emitted: Vec<Option<usize>> = vec![None; pending.len()];
    let mut used: BTreeSet<(usize, usize)> = BTreeSet::new();
    // An output an optimizer minimizes is used (by the optimizer); a bad reference there is the
    // trainer's error to report (FS0111).
    // So is a logged metric.
    let logged = spec.optim.iter().flat_map(|(_, o)| o.minimize.keys());
    for r in logged.chain(spec.metrics.iter().map(|(_, r)| r)) {
        if let Ok(Ref::Node(j, k)) = resolve(r, &index, &outputs_of, env) {
            used.insert((j, k));
        }
    }
    for &i in &order {
        let Some(p) = pending[i].as_ref() else {
            continue;
        };
        let mut sources = Vec::with_capacity(p.inputs.len());
        let mut upstream_failed = false;
        for inp in &p.inputs {
            sources.push(match inp {
                None => None,
                Some((Ref::Batch(f), _)) => Some(ValueRef::Batch(f.clone())),
                Some((Ref::State(f), _)) => Some(ValueRef::State(f.clone())),
                Some((Ref::Node(j, port), _)) => {
                    used.insert((*j, *port));
                    match produced[*j].as_ref().and_then(|outs| outs.get(*port)) {
                        Some(s) => Some(s.clone()),
                        None => {
                            upstream_failed = true;
                            None
                        }
                    }
                }
            });
        }
        if upstream_failed || p.broken {
            continue;
        }
        let spec_of = |s: &ValueRef, nodes: &[IrNode], state: &BTreeMap<String, TensorSpec>| match s
        {
            ValueRef::Batch(f) => env.batch.get(f).cloned(),
            ValueRef::State(f) => state.get(f).cloned(),
            ValueRef::Node { node, port } => nodes.get(*node)?.outputs.get(*port).cloned(),
        };
        let after: Vec<usize> = p.after.iter().filter_map(|&a| last_emitted[a]).collect();
        let first_new = nodes.len();
        match &p.kind {
            Kind::Op(op) => {
                let specs: Vec<Option<TensorSpec>> = sources
                    .iter()
                    .map(|s| s.as_ref().and_then(|s| spec_of(s, &nodes, &state_specs)))
                    .collect();
                let refs: Vec<Option<&TensorSpec>> = specs.iter().map(Option::as_ref).collect();
                match op.infer(&refs) {
                    Ok(outputs) => {
                        let k = nodes.len();
                        produced[i] = Some(
                            (0..outputs.len())
                                .map(|port| ValueRef::Node { node: k, port })
                                .collect(),
                        );
                        nodes.push(IrNode {
                            name: p.name.clone(),
                            op: op.clone(),
                            inputs: sources,
                            outputs,
                            after,
                            stream: p.stream.clone(),
                        });
                    }
                    Err(msg) => {
                        let ports = registry.get(op.name()).map_or(&[][..], |d| d.inputs());
                        let shapes: Vec<String> = ports
                            .iter()
                            .zip(&refs)
                            .filter_map(|(port, s)| s.map(|s| format!("{} = {s}", port.name)))
                            .collect();
                        errors.push(
                            GraphError::new(SHAPE, msg, spec.nodes[p.file_index].op.loc)
                                .in_node(&p.name)
                                .help(format!("inputs here: {}", shapes.join(", "))),
                        );
                    }
                }
            }
            Kind::Forward {
                net,
                model,
                train,
                stage,
            } => {
                // Every port of a forward is required: a missing one was reported already.
                let Some(inputs) = sources.iter().cloned().collect::<Option<Vec<ValueRef>>>()
                else {
                    continue;
                };
                let mut tracer = Tracer {
                    nodes: &mut nodes,
                    batch: &env.batch,
                    state: &mut state_specs,
                    decls: &mut decls,
                    assigns: &mut assigns,
                    model: model.clone(),
                    node: p.name.clone(),
                    train: *train,
                    scope: Vec::new(),
                };
                match net.trace_stage(*stage, &mut tracer, inputs) {
                    Ok(outs) => produced[i] = Some(outs),
                    Err(msg) => errors.push(
                        GraphError::new(
                            SHAPE,
                            format!("model `{model}`: {msg}"),
                            spec.nodes[p.file_index].op.loc,
                        )
                        .in_node(&p.name),
                    ),
                }
                // The first traced node waits for the `after:` nodes.
                if let Some(n) = nodes.get_mut(first_new) {
                    n.after.extend(after);
                }
            }
            Kind::Grad => {
                let (Some(Some(of)), Some(Some(wrt))) = (sources.first(), sources.get(1)) else {
                    continue;
                };
                match grad_of(&mut nodes, env, &state_specs, of, wrt, &p.name) {
                    Ok(g) => produced[i] = Some(vec![g]),
                    Err(e) => errors.push(e.in_node(&p.name)),
                }
            }
        }
        if nodes.len() > first_new {
            last_emitted[i] = Some(nodes.len() - 1);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Unused outputs: warnings.
    let mut warnings = Vec::new();
    for p in pending.iter().flatten() {
        let outputs = match &p.kind {
            Kind::Op(op) => registry.get(op.name()).map_or(&[][..], |d| d.outputs()),
            // A model's ports are optional taps (features, low_level): not all are used.
            Kind::Forward { .. } | Kind::Grad => &[][..],
        };
        // A node whose work is needed for one output may leave the others unread (the
        // confidence of `max_confidence` without its label): only a dead node is suspicious.
        let unused: Vec<&str> = (0..outputs.len())
            .filter(|&k| !used.contains(&(p.file_index, k)))
            .map(|k| outputs[k].name)
            .collect();
        if !outputs.is_empty() && unused.len() == outputs.len() {
            let message = match unused[..] {
                [port] => format!("output `{}.{port}` is never used", p.name.value),
                _ => format!("no output of `{}` is used", p.name.value),
            };
            let mut w = GraphError::new(UNUSED_OUTPUT, message, p.name.loc).in_node(&p.name);
            w.warning = true;
            warnings.push(w);
        }
    }
    let (mut batch, mut state) = (BTreeMap::new(), BTreeMap::new());
    for s in nodes.iter().flat_map(|n| n.inputs.iter().flatten()) {
        match s {
            ValueRef::Batch(f) => {
                if let Some(spec) = env.batch.get(f) {
                    batch.insert(f.clone(), spec.clone());
                }
            }
            ValueRef::State(f) => {
                if let Some(spec) = state_specs.get(f) {
                    state.insert(f.clone(), spec.clone());
                }
            }
            ValueRef::Node { .. } => {}
        }
    }
    for name in decls.keys() {
        if let Some(spec) = state_specs.get(name) {
            state.insert(name.clone(), spec.clone());
        }
    }
    Ok(Graph {
        nodes,
        batch,
        state,
        params: decls,
        assigns,
        warnings,
    })
}

/// Appends d(of)/d(wrt) to `nodes` (a backward pass of the graph so far) followed by a
/// stop-gradient copy, whose output is the `grad` node's value: later passes treat the
/// gradient as data (no second-order terms), as Grad-CAM and VAT use it.
fn grad_of(
    nodes: &mut Vec<IrNode>,
    env: &Env,
    state: &BTreeMap<String, TensorSpec>,
    of: &ValueRef,
    wrt: &ValueRef,
    name: &Sp<String>,
) -> Result<ValueRef, GraphError> {
    let mut partial = Graph {
        nodes: std::mem::take(nodes),
        batch: env.batch.clone(),
        state: state.clone(),
        params: BTreeMap::new(),
        assigns: Vec::new(),
        warnings: Vec::new(),
    };
    let wanted: BTreeSet<ValueRef> = [wrt.clone()].into();
    let result = crate::autodiff::differentiate_sources(
        &mut partial,
        &[(of.clone(), crate::spec::LossWeight::Fixed(1.0))],
        &wanted,
    );
    let g = match result {
        Ok(mut grads) => grads.remove(wrt),
        Err(errs) => {
            *nodes = partial.nodes;
            let first = errs
                .into_iter()
                .next()
                .map_or_else(|| "no gradient".to_owned(), |e| e.message);
            return Err(GraphError::new(NO_GRADIENT, first, name.loc));
        }
    };
    let Some(g) = g else {
        *nodes = partial.nodes;
        return Err(GraphError::new(
            NO_GRADIENT,
            "`of` does not depend on `wrt`: the gradient would be zero",
            name.loc,
        )
        .help("check that `wrt` feeds the computation of `of` through differentiable ops"));
    };
    let spec = partial.spec_of(&g).cloned();
    *nodes = partial.nodes;
    let index = nodes.len();
    nodes.push(IrNode {
        name: name.clone(),
        op: Arc::new(Configured::<StopGradient> {
            params: NoParams {},
        }),
        inputs: vec![Some(g)],
        outputs: spec.into_iter().collect(),
        after: Vec::new(),
        stream: None,
    });
    Ok(ValueRef::Node {
        node: index,
        port: 0,
    })
}

/// Looks up the model a `forward` node calls and configures its architecture.
fn forward_kind(
    spec: &GraphSpec,
    registry: &Registry,
    params: Option<&crate::spec::Node>,
    op_loc: Loc,
) -> Result<(Kind, Ports), GraphError> {
    let empty = crate::spec::Node::detached(crate::spec::Value::Map(Vec::new()));
    let fp: ForwardParams = from_node(params.unwrap_or(&empty)).map_err(|e| {
        let loc = if e.loc.is_known() { e.loc } else { op_loc };
        GraphError::new(
            BAD_PARAMS,
            format!("params of `forward`: {}", e.message),
            loc,
        )
        .help("write `params: { model: <name>, mode: train | eval, stage: whole | encoder | decoder }`")
    })?;
    let find = |name: &str| {
        spec.models
            .iter()
            .find(|(k, _)| k.value == name)
            .map(|(_, m)| m)
    };
    let Some(m) = find(&fp.model) else {
        let names = spec.models.iter().map(|(k, _)| k.as_str());
        return Err(GraphError::new(
            BAD_MODEL,
            format!("no model named `{}`", fp.model.value),
            fp.model.loc,
        )
        .help(nearest_names(&fp.model, names)));
    };
    // An EMA copy has its source's architecture (one level: `ema_of` an `ema_of` is refused).
    let (arch_model, arch) = match (&m.arch, &m.ema_of) {
        (Some(a), _) => (m, a),
        (None, Some(src)) => match find(src) {
            Some(s) => match &s.arch {
                Some(a) => (s, a),
                None => {
                    return Err(GraphError::new(
                        BAD_MODEL,
                        format!("`{}` is an EMA of a model without `arch`", fp.model.value),
                        src.loc,
                    ))
                }
            },
            None => {
                return Err(GraphError::new(
                    BAD_MODEL,
                    format!("`ema_of` names no model `{}`", src.value),
                    src.loc,
                ))
            }
        },
        (None, None) => {
            return Err(GraphError::new(
                BAD_MODEL,
                format!("model `{}` has neither `arch` nor `ema_of`", fp.model.value),
                fp.model.loc,
            ))
        }
    };
    let Some(def) = registry.model(arch) else {
        let names: Vec<&str> = registry.models().map(|m| m.name()).collect();
        return Err(GraphError::new(
            BAD_MODEL,
            format!("unknown architecture `{}`", arch.value),
            arch.loc,
        )
        .help(port_list("architectures", names.into_iter())));
    };
    let net = def.configure(arch_model.params.as_ref()).map_err(|e| {
        let loc = if e.loc.is_known() { e.loc } else { arch.loc };
        GraphError::new(
            BAD_PARAMS,
            format!("params of `{}`: {}", def.name(), e.message),
            loc,
        )
    })?;
    if fp.stage != Stage::Whole && def.encoded().is_empty() {
        let split: Vec<&str> = (registry.models())
            .filter(|m| !m.encoded().is_empty())
            .map(|m| m.name())
            .collect();
        return Err(GraphError::new(
            BAD_PARAMS,
            format!(
                "architecture `{}` has no encoder/decoder stages; `stage` must be `whole`",
                def.name()
            ),
            op_loc,
        )
        .help(port_list("split architectures", split.into_iter())));
    }
    let ports = match fp.stage {
        Stage::Whole => Ports {
            inputs: FORWARD_INPUTS,
            outputs: def.outputs(),
        },
        Stage::Encoder => Ports {
            inputs: FORWARD_INPUTS,
            outputs: def.encoded(),
        },
        Stage::Decoder => Ports {
            inputs: def.encoded(),
            outputs: def.outputs(),
        },
    };
    Ok((
        Kind::Forward {
            net,
            model: fp.model.value.clone(),
            train: fp.mode == Mode::Train,
            stage: fp.stage,
        },
        ports,
    ))
}

/// Resolves `batch.<field>`, `state.<name>` or `<node>.<port>`.
fn resolve(
    r: &Sp<String>,
    index: &BTreeMap<&str, usize>,
    outputs_of: &dyn Fn(usize) -> Option<&'static [Port]>,
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
        // Model parameters are declared while tracing, after references are resolved; a
        // `state.` reference must name a tensor the environment provides.
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
    // A producer whose op or model is unknown was reported already: accept the reference.
    let Some(outputs) = outputs_of(j) else {
        return Ok(Ref::Node(j, 0));
    };
    match outputs.iter().position(|p| p.name == port) {
        Some(k) => Ok(Ref::Node(j, k)),
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
        .map(|n| (strsim::levenshtein(name, n), n))
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
