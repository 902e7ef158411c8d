//! The last pass of [`super::build`]: warnings for nodes none of whose outputs is read
//! (FS0108; an error under `--strict`), the batch fields and state tensors the finished graph
//! reads, with their specs, and the value of every output a graph file can name.
//!
//! Not here: errors (every earlier pass reports its own).

use super::infer::Traced;
use super::{Kind, Pending, UNUSED_OUTPUT};
use crate::graph::{Env, Port, ValueRef};
use crate::registry::Registry;
use crate::spec::GraphError;
use crate::spec::GraphSpec;
use crate::tensor::TensorSpec;
use std::collections::{BTreeMap, BTreeSet};

/// FS0108 warnings: a node whose outputs are all unread.
pub(super) fn unused_outputs(
    pending: &[Option<Pending>],
    registry: &Registry,
    used: &BTreeSet<(usize, usize)>,
) -> Vec<GraphError> {
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
    warnings
}

/// The batch fields and state tensors the graph reads (its inputs, and every declared state).
pub(super) fn reads(
    traced: &Traced,
    env: &Env,
) -> (BTreeMap<String, TensorSpec>, BTreeMap<String, TensorSpec>) {
    let Traced {
        nodes,
        state_specs,
        decls,
        ..
    } = traced;
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
    (batch, state)
}

/// `<node>.<port>` → value for every output of every spec node that was built.
pub(super) fn named_outputs(
    spec: &GraphSpec,
    out_ports: &[Option<&'static [Port]>],
    produced: &[Option<Vec<ValueRef>>],
) -> BTreeMap<String, ValueRef> {
    let mut out = BTreeMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let (Some(Some(ports)), Some(Some(values))) = (out_ports.get(i), produced.get(i)) else {
            continue;
        };
        for (port, value) in ports.iter().zip(values) {
            out.insert(format!("{}.{}", n.name.value, port.name), value.clone());
        }
    }
    out
}
