//! The first pass of [`super::build`]: what each node is and what its inputs refer to. Node
//! names are indexed first (FS0105), so references resolve in any order; each node's op is
//! configured from its params, or its `forward` / `grad` composite set up (FS0101, FS0102,
//! FS0112); then every input reference is resolved against the ports (FS0103, FS0104).
//!
//! Not here: ordering (`order.rs`), shapes (`infer.rs`).

use super::models::Models;
use super::{
    Kind, Pending, Ports, Ref, BAD_MODEL, BAD_PARAMS, BAD_PORT, DANGLING, DUPLICATE_NODE,
    FORWARD_INPUTS, GRAD_INPUTS, GRAD_OUTPUTS, UNKNOWN_OP,
};
use crate::graph::{Env, Port};
use crate::model::Stage;
use crate::op::NoParams;
use crate::registry::{Registry, FORWARD, GRAD};
use crate::spec::{from_node, GraphError, GraphSpec, Loc, Sp};
use std::collections::{BTreeMap, BTreeSet};

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
    /// One of several independent parameter sets of the model: its state is declared under
    /// `<model>.<instance>.…` (CCT's auxiliary decoders: one architecture, K parameter sets, one
    /// optimizer over `<model>.*`). Forwards naming the same instance share its parameters.
    #[serde(default)]
    instance: Option<Sp<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Train,
    Eval,
}

/// Node name → index in the file; a repeated name is FS0105 (the first one stays).
pub(super) fn index_names<'a>(
    spec: &'a GraphSpec,
    errors: &mut Vec<GraphError>,
) -> BTreeMap<&'a str, usize> {
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
    index
}

/// Each node's kind (op, model call or gradient) and ports; `None` where an error was reported.
pub(super) fn configure_nodes(
    spec: &GraphSpec,
    registry: &Registry,
    models: &Models,
    errors: &mut Vec<GraphError>,
) -> Vec<Option<(Kind, Ports)>> {
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
                match forward_kind(spec, registry, models, n.params.as_ref(), n.op.loc) {
                    Ok(k) => Some(k),
                    Err(Some(e)) => {
                        errors.push(e.in_node(&n.name));
                        None
                    }
                    Err(None) => None,
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
                let loc = if e.loc.is_located() { e.loc } else { n.op.loc };
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
    kinds
}

/// The output ports of each configured node (what `<node>.<port>` references resolve against).
pub(super) fn output_ports(kinds: &[Option<(Kind, Ports)>]) -> Vec<Option<&'static [Port]>> {
    kinds
        .iter()
        .map(|k| k.as_ref().map(|(_, p)| p.outputs))
        .collect()
}

/// Every input and `after:` reference resolved; a node with an error is kept but marked
/// `broken`, so later passes skip it without reporting again.
pub(super) fn resolve_references(
    spec: &GraphSpec,
    env: &Env,
    index: &BTreeMap<&str, usize>,
    out_ports: &[Option<&'static [Port]>],
    mut kinds: Vec<Option<(Kind, Ports)>>,
    errors: &mut Vec<GraphError>,
) -> Vec<Option<Pending>> {
    let outputs_of = |j: usize| out_ports[j];
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
                let names = || ports.inputs.iter().map(|p| p.name);
                errors.push(
                    node_err(BAD_PORT, format!("`{what}` has no input `{port}`"), r.loc)
                        .help(nearest_or(port, names(), || port_list("inputs", names()))),
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
            match resolve(r, index, &outputs_of, env) {
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
    pending
}

/// Outputs the trainer reads — minimized losses and logged metrics — count as used. A bad
/// reference there is the trainer's error to report (FS0111).
pub(super) fn read_by_trainer(
    spec: &GraphSpec,
    env: &Env,
    index: &BTreeMap<&str, usize>,
    out_ports: &[Option<&'static [Port]>],
) -> BTreeSet<(usize, usize)> {
    let outputs_of = |j: usize| out_ports[j];
    let mut used = BTreeSet::new();

    let logged = spec.optim.iter().flat_map(|(_, o)| o.minimize.keys());
    for r in logged.chain(spec.metrics.iter().map(|(_, r)| r)) {
        if let Ok(Ref::Node(j, k)) = resolve(r, index, &outputs_of, env) {
            used.insert((j, k));
        }
    }
    used
}

/// The kind and ports of a `forward` node: its params decoded, its model looked up among the
/// configured ones. `Err(None)`: the model's own mistake, already reported (models.rs).
pub(super) fn forward_kind(
    spec: &GraphSpec,
    registry: &Registry,
    models: &Models,
    params: Option<&crate::spec::Node>,
    op_loc: Loc,
) -> Result<(Kind, Ports), Option<GraphError>> {
    let empty = crate::spec::Node::detached(crate::spec::Value::Map(Vec::new()));
    let fp: ForwardParams = from_node(params.unwrap_or(&empty))
        .map_err(|e| {
            let loc = if e.loc.is_located() { e.loc } else { op_loc };
            GraphError::new(
                BAD_PARAMS,
                format!("params of `forward`: {}", e.message),
                loc,
            )
            .help(
                "write `params: { model: <name>, mode: train | eval, stage: whole | encoder | \
             decoder, instance: <name> }` (`mode`, `stage`, `instance` optional)",
            )
        })
        .map_err(Some)?;
    if let Some(inst) = &fp.instance {
        if !crate::spec::is_identifier(&inst.value) {
            return Err(Some(
                GraphError::new(
                    BAD_PARAMS,
                    format!("`instance: {}` is not a usable name", inst.value),
                    inst.loc,
                )
                .help(
                    "an instance names a parameter set inside the model's state \
                     (`<model>.<instance>.…`): letters, digits, `_`, `-`, not starting with a \
                     digit or `-`",
                ),
            ));
        }
    }
    let find = |name: &str| {
        spec.models
            .iter()
            .find(|(k, _)| k.value == name)
            .map(|(_, m)| m)
    };
    if find(&fp.model).is_none() {
        let names = spec.models.iter().map(|(k, _)| k.as_str());
        return Err(Some(
            GraphError::new(
                BAD_MODEL,
                format!("no model named `{}`", fp.model.value),
                fp.model.loc,
            )
            .help(nearest_or(&fp.model, names, || {
                port_list("models", spec.models.iter().map(|(k, _)| k.as_str()))
            })),
        ));
    }
    // The model was configured once (models.rs), its mistakes reported there.
    let Some(Some(model)) = models.get(&fp.model.value) else {
        return Err(None);
    };
    let (net, def_name, inputs, outputs, encoded) = (
        model.net.clone(),
        model.arch,
        model.inputs,
        model.outputs,
        model.encoded,
    );
    if fp.stage != Stage::Whole && encoded.is_empty() {
        let split: Vec<&str> = (registry.models())
            .filter(|m| !m.encoded().is_empty())
            .map(|m| m.name())
            .collect();
        return Err(Some(
            GraphError::new(
                BAD_PARAMS,
                format!(
                    "architecture `{def_name}` has no encoder/decoder stages; `stage` must be \
                     `whole`"
                ),
                op_loc,
            )
            .help(port_list("split architectures", split.into_iter())),
        ));
    }
    // A whole model takes its architecture's inputs (one `image` for most); the encoder
    // stage takes the image only (model.rs: stages are for image-input models).
    let ports = match fp.stage {
        Stage::Whole => Ports { inputs, outputs },
        Stage::Encoder => Ports {
            inputs: FORWARD_INPUTS,
            outputs: encoded,
        },
        Stage::Decoder => Ports {
            inputs: encoded,
            outputs,
        },
    };
    Ok((
        Kind::Forward {
            net,
            model: fp.model.value.clone(),
            train: fp.mode == Mode::Train,
            stage: fp.stage,
            instance: fp.instance.map(|i| i.value),
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

pub(super) fn port_list<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        format!("there are no {what}")
    } else {
        format!("{what}: {}", v.join(", "))
    }
}

/// "did you mean `x`?" for the nearest of `names`, else the node-name reminder.
pub(super) fn nearest_names<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> String {
    nearest_or(name, names, || {
        "node names are the `name:` of each entry under `nodes:`".to_owned()
    })
}

/// "did you mean `x`?" for the nearest of `names` (within two edits), else `fallback()`.
pub(super) fn nearest_or<'a>(
    name: &str,
    names: impl Iterator<Item = &'a str>,
    fallback: impl FnOnce() -> String,
) -> String {
    match crate::spec::nearest(name, names, 2) {
        Some(n) => format!("did you mean `{n}`?"),
        None => fallback(),
    }
}
