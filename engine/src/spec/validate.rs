//! Checks across the sections of a decoded graph, before any op, model or data source is
//! looked up: names that cannot be used (FS0005) and references between sections that name no
//! usable model (FS0112): an `ema_of:` or `eval.models` entry naming no model, an optimizer on
//! an EMA copy. Every error points at the offending name or value.
//!
//! Names: the run's `name:` becomes the folder `runs/<name>/`, so it must be one safe path
//! segment (`../x`, `/tmp/x`, `""` and `.` would write outside `runs/` or into it); node and
//! model names appear in references (`<node>.<port>`, `state.<model>.<param>`), so they are
//! identifiers: a dot would make `a.b.c` ambiguous, and a model `a.b` would share model `a`'s
//! state prefix.
//!
//! Not here: ranges of single values (range.rs, while decoding), references that need the
//! registry or the data (ir, open.rs).

use super::graph::GraphSpec;
use super::{GraphError, Sp, BAD_MODEL, BAD_NAME};

/// The run name: letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 100.
fn is_run_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.len() <= 100
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A node or model name: an identifier (letters, digits, `_`, `-`; not starting with a digit
/// or `-`), and not a reference head or a reserved composite.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        && !matches!(s, "batch" | "state")
}

/// Every problem found, in file order of the sections checked.
pub(super) fn check(spec: &GraphSpec) -> Vec<GraphError> {
    let mut errors = Vec::new();
    if !is_run_name(&spec.name.value) {
        errors.push(
            GraphError::new(
                BAD_NAME,
                format!(
                    "the run name `{}` cannot be a folder name under runs/",
                    spec.name.value
                ),
                spec.name.loc,
            )
            .help(
                "the run is written to `runs/<name>/`: use letters, digits, `.`, `_`, `-`, \
                 starting with a letter or digit",
            ),
        );
    }
    let identifier = |what: &str, name: &Sp<String>| {
        GraphError::new(
            BAD_NAME,
            format!("`{}` cannot name a {what}", name.value),
            name.loc,
        )
        .help(format!(
            "a {what} name is an identifier (letters, digits, `_`, `-`, not starting with a \
             digit), and not `batch` or `state`: it appears in references such as `<node>.<port>`"
        ))
    };
    for (name, _) in &spec.models {
        if !is_identifier(&name.value) {
            errors.push(identifier("model", name));
        }
    }
    for n in &spec.nodes {
        if !is_identifier(&n.name.value) {
            errors.push(identifier("node", &n.name));
        }
    }

    let model = |name: &str| spec.models.iter().find(|(k, _)| k.value == name);
    let models = || spec.models.iter().map(|(k, _)| k.as_str());
    let unknown = |what: String, name: &Sp<String>| {
        let help = match super::nearest(name, models(), 2) {
            Some(near) => format!("did you mean `{near}`?"),
            None => {
                let all: Vec<String> = models().map(|m| format!("`{m}`")).collect();
                format!("models: {}", all.join(", "))
            }
        };
        GraphError::new(BAD_MODEL, what, name.loc).help(help)
    };
    for (name, m) in &spec.models {
        let Some(src) = &m.ema_of else { continue };
        match model(src) {
            None => errors.push(unknown(
                format!(
                    "`{}` is an EMA of `{}`, which is not a model",
                    name.value, src.value
                ),
                src,
            )),
            Some((_, s)) if s.arch.is_none() => errors.push(GraphError::new(
                BAD_MODEL,
                format!(
                    "`{}` is an EMA of `{}`, which has no `arch:` (an EMA of an EMA is not \
                     supported)",
                    name.value, src.value
                ),
                src.loc,
            )),
            Some(_) => {}
        }
    }
    // An `optim:` key that names no model may still name state the environment provides (the
    // engine's own tests train bare tensors); the trainer reports one that names nothing.
    for (name, _) in &spec.optim {
        match model(name) {
            None => {}
            Some((_, m)) if m.ema_of.is_some() => errors.push(
                GraphError::new(
                    BAD_MODEL,
                    format!(
                        "`{}` is an EMA copy: an optimizer cannot train it",
                        name.value
                    ),
                    name.loc,
                )
                .help(format!(
                    "its weights follow `{}` after every step, so an optimizer's update would \
                     be overwritten: remove this optimizer, or drop `ema_of` to train it",
                    m.ema_of.as_ref().map_or("?", |s| s.as_str())
                )),
            ),
            Some(_) => {}
        }
    }
    for name in spec.eval.models.iter().flatten() {
        if model(name).is_none() {
            errors.push(unknown(
                format!("`eval.models` names `{}`, which is not a model", name.value),
                name,
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::{is_identifier, is_run_name};

    #[test]
    fn run_names_are_one_safe_path_segment() {
        for ok in ["supervised", "cps_a.v2", "m2", "FixMatch-1"] {
            assert!(is_run_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "/tmp/x", "a/b", "a\\b", ".hidden", "-x", "a b",
        ] {
            assert!(!is_run_name(bad), "{bad}");
        }
        assert!(!is_run_name(&"a".repeat(101)));
    }

    #[test]
    fn node_and_model_names_are_identifiers() {
        for ok in ["fwd", "sup_loss", "_x", "weak-fp", "s1"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "sup.loss", "1x", "-x", "a/b", "batch", "state", "a b"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
