//! `flowseg graph --format dot|mermaid`: draws the *method* graph as written — its nodes (a
//! `forward` shows its model), batch fields and state it reads, data edges labelled with ports,
//! `after:` order edges dashed, and each optimizer — numbered in the order it steps — with the
//! losses it minimizes (dotted, with their weights) and the model calls whose parameters it
//! updates (bold: with several optimizers, as GCT's three, which one trains which network).
//! Not the traced op graph (hundreds of primitives for a real model); `flowseg plan` shows
//! that one.

use flowseg_engine::spec::GraphSpec;
use std::collections::BTreeSet;
use std::fmt::Write;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Graphviz DOT (`flowseg graph g.yaml | dot -Tsvg > g.svg`).
    Dot,
    /// Mermaid flowchart (renders in GitHub Markdown).
    Mermaid,
}

/// A source reference split into (producer id, shown name, port): `fwd.logits` →
/// ("n_fwd", "fwd", "logits"); `batch.image` → ("in_batch_image", "batch.image", "").
fn producer(r: &str) -> (String, String, String) {
    match r.split_once('.') {
        Some((head @ ("batch" | "state"), rest)) => (
            id(&format!("in_{head}_{rest}")),
            r.to_owned(),
            String::new(),
        ),
        Some((node, port)) => (id(&format!("n_{node}")), node.to_owned(), port.to_owned()),
        None => (id(&format!("n_{r}")), r.to_owned(), String::new()),
    }
}

/// An identifier both formats accept.
fn id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The model a `forward` node calls, if it is one.
fn called_model<'a>(op: &str, params: Option<&'a flowseg_engine::spec::Node>) -> Option<&'a str> {
    match op {
        "forward" => params.and_then(|p| p.get("model")).and_then(|m| m.as_str()),
        _ => None,
    }
}

/// The ids of the `forward` nodes that call `model`: what its optimizer updates.
fn calls_of<'a>(spec: &'a GraphSpec, model: &'a str) -> impl Iterator<Item = String> + 'a {
    spec.nodes
        .iter()
        .filter(move |n| called_model(&n.op, n.params.as_ref()) == Some(model))
        .map(|n| id(&format!("n_{}", n.name.value)))
}

fn label(op: &str, params: Option<&flowseg_engine::spec::Node>) -> String {
    let model = params.and_then(|p| p.get("model")).and_then(|m| m.as_str());
    match (op, model) {
        ("forward", Some(m)) => format!("forward({m})"),
        _ => op.to_owned(),
    }
}

/// The graph in `format`.
pub fn render(spec: &GraphSpec, format: Format) -> String {
    let mut inputs = BTreeSet::new();
    for n in &spec.nodes {
        for r in n.inputs.values() {
            if matches!(r.split_once('.'), Some(("batch" | "state", _))) {
                inputs.insert(r.value.clone());
            }
        }
    }
    let mut s = String::new();
    match format {
        Format::Dot => {
            let _ = writeln!(s, "digraph {:?} {{", spec.name.value);
            let _ = writeln!(
                s,
                "  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];"
            );
            for i in &inputs {
                let _ = writeln!(s, "  {} [label={i:?}, shape=ellipse];", producer(i).0);
            }
            for n in &spec.nodes {
                let l = format!("{}\\n{}", n.name.value, label(&n.op, n.params.as_ref()));
                let _ = writeln!(
                    s,
                    "  {} [label=\"{l}\"];",
                    id(&format!("n_{}", n.name.value))
                );
            }
            for n in &spec.nodes {
                let to = id(&format!("n_{}", n.name.value));
                for (port, r) in &n.inputs {
                    let (from, _, out) = producer(r);
                    let l = if out.is_empty() {
                        port.clone()
                    } else {
                        format!("{out} → {port}")
                    };
                    let _ = writeln!(s, "  {from} -> {to} [label={l:?}];");
                }
                for a in &n.after {
                    let _ = writeln!(
                        s,
                        "  {} -> {to} [style=dashed, label=\"after\"];",
                        id(&format!("n_{}", a.value))
                    );
                }
            }
            for (step, (model, o)) in spec.optim.iter().enumerate() {
                let oid = id(&format!("opt_{}", model.value));
                let _ = writeln!(
                    s,
                    "  {oid} [label=\"{}. optimize {}\\n{:?}\", shape=hexagon];",
                    step + 1,
                    model.value,
                    o.kind
                );
                for (r, w) in &o.minimize {
                    let (from, _, _) = producer(r);
                    let _ = writeln!(s, "  {from} -> {oid} [style=dotted, label=\"× {w}\"];");
                }
                // Drawn against the data flow without moving the layout.
                for call in calls_of(spec, &model.value) {
                    let _ = writeln!(
                        s,
                        "  {oid} -> {call} [style=bold, label=\"updates\", constraint=false];"
                    );
                }
            }
            s.push_str("}\n");
        }
        Format::Mermaid => {
            s.push_str("flowchart LR\n");
            for i in &inputs {
                let _ = writeln!(s, "  {}([\"{i}\"])", producer(i).0);
            }
            for n in &spec.nodes {
                let _ = writeln!(
                    s,
                    "  {}[\"{}<br/>{}\"]",
                    id(&format!("n_{}", n.name.value)),
                    n.name.value,
                    label(&n.op, n.params.as_ref())
                );
            }
            for n in &spec.nodes {
                let to = id(&format!("n_{}", n.name.value));
                for (port, r) in &n.inputs {
                    let (from, _, out) = producer(r);
                    let l = if out.is_empty() {
                        port.clone()
                    } else {
                        format!("{out} → {port}")
                    };
                    let _ = writeln!(s, "  {from} -->|{l}| {to}");
                }
                for a in &n.after {
                    let _ = writeln!(s, "  {} -.->|after| {to}", id(&format!("n_{}", a.value)));
                }
            }
            for (step, (model, o)) in spec.optim.iter().enumerate() {
                let oid = id(&format!("opt_{}", model.value));
                let _ = writeln!(
                    s,
                    "  {oid}{{{{\"{}. optimize {}<br/>{:?}\"}}}}",
                    step + 1,
                    model.value,
                    o.kind
                );
                for (r, w) in &o.minimize {
                    let _ = writeln!(s, "  {} -.->|× {w}| {oid}", producer(r).0);
                }
                for call in calls_of(spec, &model.value) {
                    let _ = writeln!(s, "  {oid} ==>|updates| {call}");
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "name: t\ntrain: { iterations: 1 }\noptim:\n  student: { kind: sgd, lr: 0.1, minimize: { loss.loss: 1.0 } }\nnodes:\n  - { name: fwd, op: forward, inputs: { image: batch.image }, params: { model: student } }\n  - { name: loss, op: cross_entropy, inputs: { logits: fwd.logits, target: batch.label }, after: [fwd] }\n";

    #[test]
    fn dot_and_mermaid_snapshots() {
        let (spec, _) = flowseg_engine::spec::parse_graph(&G.replace("\\n", "\n"), &[]).unwrap();
        let dot = render(&spec, Format::Dot);
        assert_eq!(
            dot,
            "digraph \"t\" {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n  \
             in_batch_image [label=\"batch.image\", shape=ellipse];\n  \
             in_batch_label [label=\"batch.label\", shape=ellipse];\n  \
             n_fwd [label=\"fwd\\nforward(student)\"];\n  \
             n_loss [label=\"loss\\ncross_entropy\"];\n  \
             in_batch_image -> n_fwd [label=\"image\"];\n  \
             n_fwd -> n_loss [label=\"logits → logits\"];\n  \
             in_batch_label -> n_loss [label=\"target\"];\n  \
             n_fwd -> n_loss [style=dashed, label=\"after\"];\n  \
             opt_student [label=\"1. optimize student\\nSgd\", shape=hexagon];\n  \
             n_loss -> opt_student [style=dotted, label=\"× 1\"];\n  \
             opt_student -> n_fwd [style=bold, label=\"updates\", constraint=false];\n}\n"
        );
        let mm = render(&spec, Format::Mermaid);
        assert!(mm.starts_with("flowchart LR\n"), "{mm}");
        assert!(mm.contains("  n_fwd -->|logits → logits| n_loss\n"), "{mm}");
        assert!(mm.contains("  in_batch_image([\"batch.image\"])\n"), "{mm}");
        assert!(mm.contains("  n_fwd -.->|after| n_loss\n"), "{mm}");
        assert!(
            mm.contains("  opt_student{{\"1. optimize student<br/>Sgd\"}}\n"),
            "{mm}"
        );
        assert!(mm.contains("  opt_student ==>|updates| n_fwd\n"), "{mm}");
    }
}
