//! graphs/pseudoseg.yaml at the sizes it is run at, not only at the test suite's 16×16: as
//! shipped (64×64 synthetic images, batch 8 + 8, width 16) and at `data.size=32` (the
//! benchmark's quick mode), it opens, builds (every shape inferred: the bottleneck, the
//! hypercolumn resized to it, the heads' maps resized back with `like`), differentiates for its
//! three optimizers and plans — `Trainer::new` — with no size or class count spelt in the file;
//! and at 32 with synthetic's largest class count (9) in place of its default 6.
//!
//! Not here: training (tests/graphs.rs trains every graph at toy size; ops/tests/shipped_graphs.rs
//! steps it through the plan executor).

use flowseg_engine::graph::Env;
use flowseg_engine::open::open_graph;
use flowseg_engine::train::Trainer;
use flowseg_ops::builtin_registry;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn builds_with(sets: &[&str]) {
    let mut registry = builtin_registry().expect("built-in ops register");
    flowseg_sources::register_builtin_sources(&mut registry).expect("built-in sources register");
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../graphs/pseudoseg.yaml");
    let text = std::fs::read_to_string(&file).expect("graphs/pseudoseg.yaml is readable");
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    let (spec, _, source) =
        open_graph(&text, &sets, &registry).unwrap_or_else(|e| panic!("{sets:?}: {e:#?}"));
    let env = Env {
        batch: source.specs(),
        state: BTreeMap::new(),
        hidden: source.hidden_fields(),
    };
    let trainer = Trainer::new(&spec, &registry, &env, BTreeMap::new())
        .unwrap_or_else(|e| panic!("{sets:?}: {e:#?}"));
    // The three optimizers' parameters are all there.
    for prefix in ["student.", "cls.", "sgc."] {
        assert!(
            trainer.state.keys().any(|k| k.starts_with(prefix)),
            "{sets:?}: no `{prefix}*` state"
        );
    }
}

#[test]
fn pseudoseg_builds_as_shipped() {
    builds_with(&[]);
}

#[test]
fn pseudoseg_builds_at_32_and_with_nine_classes() {
    builds_with(&["data.size=32"]);
    builds_with(&["data.size=32", "data.classes=9"]);
}
