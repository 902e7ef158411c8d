//! The third pass of [`super::build`]: shape inference in topological order. An op node's
//! output specs come from its `infer`; a `forward` node is traced into its model's primitive
//! nodes (declaring the model's state); a `grad` node is expanded through autodiff into the
//! backward of the graph so far plus a stop-gradient copy. A node downstream of a failure is
//! skipped, not reported again. FS0107, FS0115.
//!
//! Not here: reference resolution (`names.rs`), warnings (`finish.rs`).

use super::{Kind, Pending, Ref, NO_GRADIENT, SHAPE};
use crate::graph::{Env, Graph, IrNode, StateDecl, ValueRef};
use crate::model::Tracer;
use crate::op::{Configured, NoParams, StopGradient};
use crate::registry::Registry;
use crate::spec::{GraphError, GraphSpec, Sp};
use crate::tensor::TensorSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What tracing produced: the primitive nodes and the state the models declared.
pub(super) struct Traced {
    /// Nodes in topological order.
    pub(super) nodes: Vec<IrNode>,
    /// Every state tensor's spec: the environment's and the models' declarations.
    pub(super) state_specs: BTreeMap<String, TensorSpec>,
    /// State the models declared, with initialisers.
    pub(super) decls: BTreeMap<String, StateDecl>,
    /// Buffers written at the end of an iteration.
    pub(super) assigns: Vec<(ValueRef, String)>,
    /// Per spec node (file order): the values of its outputs, once built.
    pub(super) produced: Vec<Option<Vec<ValueRef>>>,
}

/// Infers shapes and traces composites in `order`; records in `used` every (node, port) read.
pub(super) fn infer_and_trace(
    spec: &GraphSpec,
    registry: &Registry,
    env: &Env,
    pending: &[Option<Pending>],
    order: &[usize],
    used: &mut BTreeSet<(usize, usize)>,
    errors: &mut Vec<GraphError>,
) -> Traced {
    // Shape inference and model tracing in order. `produced[j]` holds the output sources of
    // spec node j once built; nodes downstream of a failure are skipped, not re-reported.
    let mut nodes: Vec<IrNode> = Vec::with_capacity(order.len());
    let mut state_specs = env.state.clone();
    let mut decls: BTreeMap<String, StateDecl> = BTreeMap::new();
    let mut assigns: Vec<(ValueRef, String)> = Vec::new();
    let mut produced: Vec<Option<Vec<ValueRef>>> = vec![None; pending.len()];
    // Index in `nodes` of the last node each spec node emitted, for `after:` edges.
    let mut last_emitted: Vec<Option<usize>> = vec![None; pending.len()];
    for &i in order {
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
                instance,
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
                    // An instance is the outermost module of the model's state names.
                    scope: instance.iter().cloned().collect(),
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
    Traced {
        nodes,
        state_specs,
        decls,
        assigns,
        produced,
    }
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
        outputs: BTreeMap::new(),
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
