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
//! | FS0123 | `eval.models` names a model that takes inputs other than `image` |
//!
//! `forward` nodes are composites: the named model's architecture traces its primitive nodes into
//! the graph in place of the `forward` node (see `model.rs`), declaring its parameters as state.
//!
//! `build` runs named passes, one file each, every one testable alone:
//!
//! 0. [`models`]: configure each entry of `models:` once (FS0112 unknown architecture, FS0102
//!    bad params), reported at the model, not at each node that uses it; `eval.models` entries
//!    that are not image-input models (FS0123);
//! 1. [`names`]: index the node names (FS0105), configure each node's op or model call
//!    (FS0101, FS0102, FS0112), resolve every input reference against the ports (FS0103,
//!    FS0104);
//! 2. [`order`]: a topological order over data and `after:` edges, file order where free
//!    (FS0106);
//! 3. [`infer`]: shape inference in that order, tracing each `forward` into its model's
//!    primitive nodes and expanding each `grad` through autodiff (FS0107, FS0115);
//! 4. [`finish`]: warnings for nodes whose outputs nobody reads (FS0108), and the batch fields
//!    and state the graph reads.
//!
//! Not here: state-conflict checks and streams (`plan.rs`, which has the ordering).

mod finish;
mod infer;
mod models;
mod names;
mod order;

use crate::graph::{Env, Graph, OpNode, Port};
use crate::model::{Net, Stage};
use crate::registry::Registry;
use crate::spec::{GraphError, GraphSpec, Loc, Sp};
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
/// FS0112: bad model reference (defined with the spec, which checks references between
/// sections first).
pub use crate::spec::BAD_MODEL;
pub(super) const GRAD_INPUTS: &[Port] = &[
    Port::req("of", "f32[] (a scalar, usually a loss)"),
    Port::req("wrt", "f32, any shape (an activation or input)"),
];
pub(super) const GRAD_OUTPUTS: &[Port] =
    &[Port::req("grad", "like wrt: d(of)/d(wrt), a stop-gradient")];
/// FS0115: a `grad` whose `of` does not depend on its `wrt`.
pub const NO_GRADIENT: &str = "FS0115";
/// The input of an encoder stage (the default input of every image-input model).
pub(super) const FORWARD_INPUTS: &[Port] = crate::model::IMAGE_INPUTS;
/// FS0123: `eval.models` names a model whose inputs are not just `image`.
pub const NOT_EVALUABLE: &str = "FS0123";

/// FS0108: unused output.
pub const UNUSED_OUTPUT: &str = "FS0108";

/// A node between resolution and ordering.
pub(super) struct Pending {
    pub(super) file_index: usize,
    pub(super) name: Sp<String>,
    pub(super) kind: Kind,
    /// Per input port: the reference as written (name, port), or a batch field.
    pub(super) inputs: Vec<Option<(Ref, Loc)>>,
    pub(super) after: Vec<usize>,
    pub(super) stream: Option<String>,
    /// An error was already reported for this node: skip its shape inference.
    pub(super) broken: bool,
}

/// A primitive op, or a model call to expand.
pub(super) enum Kind {
    Op(Arc<dyn OpNode>),
    Forward {
        net: Arc<dyn Net>,
        model: String,
        train: bool,
        stage: Stage,
        /// The parameter set (`<model>.<instance>.…`), when the node names one.
        instance: Option<String>,
    },
    Grad,
}

/// What a spec node offers: its input and output ports, when known.
pub(super) struct Ports {
    pub(super) inputs: &'static [Port],
    outputs: &'static [Port],
}

#[derive(Clone)]
pub(super) enum Ref {
    Batch(String),
    State(String),
    Node(usize, usize),
}

/// Builds and validates the op graph against what the data source provides (`env`; state the
/// models declare is added as they are traced). Returns every error found; warnings ride along
/// in [`Graph::warnings`].
pub fn build(spec: &GraphSpec, registry: &Registry, env: &Env) -> Result<Graph, Vec<GraphError>> {
    let mut errors = Vec::new();
    let index = names::index_names(spec, &mut errors);
    let models = models::configure_models(spec, registry, &mut errors);
    models::check_eval_models(spec, &models, &mut errors);
    let kinds = names::configure_nodes(spec, registry, &models, &mut errors);
    let out_ports = names::output_ports(&kinds);
    let pending = names::resolve_references(spec, env, &index, &out_ports, kinds, &mut errors);
    let order = match order::topo_order(&pending) {
        Ok(o) => o,
        Err(cycle) => {
            errors.push(order::cycle_error(spec, &cycle));
            return Err(errors);
        }
    };
    let mut used = names::read_by_trainer(spec, env, &index, &out_ports);
    let traced = infer::infer_and_trace(
        spec,
        registry,
        env,
        &pending,
        &order,
        &mut used,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let warnings = finish::unused_outputs(&pending, registry, &used);
    let (batch, state) = finish::reads(&traced, env);
    let outputs = finish::named_outputs(spec, &out_ports, &traced.produced);
    Ok(Graph {
        nodes: traced.nodes,
        batch,
        state,
        params: traced.decls,
        assigns: traced.assigns,
        outputs,
        warnings,
    })
}

/// The checks of [`build`] that need no data — models, ops and their params, references between
/// nodes, order — for a graph whose data source could not be opened, so that its other
/// mistakes are reported in the same pass. Every `batch.<field>` a node names is taken as
/// given (the data would say whether it exists); shapes are not inferred.
pub fn check_without_data(spec: &GraphSpec, registry: &Registry) -> Vec<GraphError> {
    let mut env = Env::default();
    for r in spec.nodes.iter().flat_map(|n| n.inputs.values()) {
        if let Some(field) = r.strip_prefix("batch.") {
            env.batch
                .insert(field.to_owned(), crate::tensor::TensorSpec::scalar());
        } else if let Some(name) = r.strip_prefix("state.") {
            env.state
                .insert(name.to_owned(), crate::tensor::TensorSpec::scalar());
        }
    }
    let mut errors = Vec::new();
    let index = names::index_names(spec, &mut errors);
    let models = models::configure_models(spec, registry, &mut errors);
    models::check_eval_models(spec, &models, &mut errors);
    let kinds = names::configure_nodes(spec, registry, &models, &mut errors);
    let out_ports = names::output_ports(&kinds);
    let pending = names::resolve_references(spec, &env, &index, &out_ports, kinds, &mut errors);
    if let Err(cycle) = order::topo_order(&pending) {
        errors.push(order::cycle_error(spec, &cycle));
    }
    errors
}
