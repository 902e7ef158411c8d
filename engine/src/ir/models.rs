//! The pass before every other of [`super::build`]: each entry of `models:` configured once —
//! its architecture looked up (an `ema_of` copy takes its source's) and its params decoded — so
//! a mistake in a model is reported once, at its place in `models:` (FS0112 unknown
//! architecture, FS0102 bad params), whether one node, several or none use it. `forward` nodes
//! then find their model here and never report a model's own mistake again.
//!
//! Also here: `eval.models` may name only models whose architecture takes an image alone
//! (FS0123): evaluation feeds held-out images, nothing else.
//!
//! Not here: whether a `forward` node's `model:` names a model and its `stage:` fits the
//! architecture (names.rs: those are the node's mistakes).

use super::{BAD_PARAMS, NOT_EVALUABLE};
use crate::graph::Port;
use crate::model::{Net, IMAGE_INPUTS};
use crate::registry::Registry;
use crate::spec::{GraphError, GraphSpec, BAD_MODEL};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A configured model: its network and the architecture's ports.
#[derive(Clone)]
pub(super) struct Configured {
    /// The network, params decoded.
    pub(super) net: Arc<dyn Net>,
    /// The architecture's name.
    pub(super) arch: &'static str,
    /// Inputs of a whole forward (`image` for most; several for a multi-input model).
    pub(super) inputs: &'static [Port],
    /// Outputs of a whole forward.
    pub(super) outputs: &'static [Port],
    /// The ports between encoder and decoder (empty: no stages).
    pub(super) encoded: &'static [Port],
}

/// Model name → its configuration, `None` where an error was reported.
pub(super) type Models = BTreeMap<String, Option<Configured>>;

/// Configures every model of the spec; reports each mistake once.
pub(super) fn configure_models(
    spec: &GraphSpec,
    registry: &Registry,
    errors: &mut Vec<GraphError>,
) -> Models {
    let find = |name: &str| spec.models.iter().find(|(k, _)| k.value == name);
    let mut out = Models::new();
    for (name, m) in &spec.models {
        // An EMA copy has its source's architecture and params (one level: the spec checked
        // that `ema_of` names a model with `arch:`).
        let source = match (&m.arch, &m.ema_of) {
            (Some(_), _) => Some((name, m)),
            (None, Some(src)) => find(src)
                .filter(|(_, s)| s.arch.is_some())
                .map(|(k, s)| (k, s)),
            (None, None) => None,
        };
        let Some((_, arch_model)) = source else {
            if m.arch.is_none() && m.ema_of.is_none() {
                errors.push(GraphError::new(
                    BAD_MODEL,
                    format!("model `{}` has neither `arch` nor `ema_of`", name.value),
                    name.loc,
                ));
            }
            // (A dangling `ema_of` was reported when the file was read.)
            out.insert(name.value.clone(), None);
            continue;
        };
        let Some(arch_sp) = &arch_model.arch else {
            out.insert(name.value.clone(), None);
            continue;
        };
        // An EMA copy's mistakes are its source's: report them once, there.
        let own = m.arch.is_some();
        let Some(def) = registry.model(arch_sp) else {
            if own {
                let names: Vec<String> = registry
                    .models()
                    .map(|m| format!("`{}`", m.name()))
                    .collect();
                errors.push(
                    GraphError::new(
                        BAD_MODEL,
                        format!("unknown architecture `{}`", arch_sp.value),
                        arch_sp.loc,
                    )
                    .help(format!("architectures: {}", names.join(", "))),
                );
            }
            out.insert(name.value.clone(), None);
            continue;
        };
        match def.configure(arch_model.params.as_ref()) {
            Ok(net) => {
                out.insert(
                    name.value.clone(),
                    Some(Configured {
                        net,
                        arch: def.name(),
                        inputs: def.inputs(),
                        outputs: def.outputs(),
                        encoded: def.encoded(),
                    }),
                );
            }
            Err(e) => {
                if own {
                    let loc = if e.loc.is_located() {
                        e.loc
                    } else {
                        arch_sp.loc
                    };
                    errors.push(
                        GraphError::new(
                            BAD_PARAMS,
                            format!(
                                "params of `{}` (model `{}`): {}",
                                def.name(),
                                name.value,
                                e.message
                            ),
                            loc,
                        )
                        .help(format!(
                            "`flowseg ops` shows the params of `{}`",
                            def.name()
                        )),
                    );
                }
                out.insert(name.value.clone(), None);
            }
        }
    }
    out
}

/// FS0123 for every `eval.models` entry whose model takes inputs other than one `image` (a
/// multi-input model such as GCT's flaw detector): evaluation has nothing to feed them. An
/// entry naming no model was reported when the file was read (FS0112); a model with its own
/// mistake, where it is defined.
pub(super) fn check_eval_models(spec: &GraphSpec, models: &Models, errors: &mut Vec<GraphError>) {
    for name in spec.eval.models.iter().flatten() {
        let Some(Some(model)) = models.get(&name.value) else {
            continue;
        };
        if model
            .inputs
            .iter()
            .map(|p| p.name)
            .eq(IMAGE_INPUTS.iter().map(|p| p.name))
        {
            continue;
        }
        let ports: Vec<String> = model
            .inputs
            .iter()
            .map(|p| format!("`{}`", p.name))
            .collect();
        errors.push(
            GraphError::new(
                NOT_EVALUABLE,
                format!(
                    "`eval.models` names `{}`, whose architecture `{}` takes {}: evaluation \
                     feeds an image only",
                    name.value,
                    model.arch,
                    ports.join(", ")
                ),
                name.loc,
            )
            .help(
                "list the segmentation models that take `image` alone; a model that reads \
                 other inputs (a flaw detector, a head on features) is trained, not evaluated",
            ),
        );
    }
}
