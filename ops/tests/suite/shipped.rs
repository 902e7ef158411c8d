//! The shipped method graphs (`graphs/*.yaml`) shrunk for tests: 16×16 images, batch 2 (and 2
//! unlabeled), width 8 for every model that sets a width (CPS names its two U-Nets `a` and `b`;
//! CCT's auxiliary heads and PseudoSeg's heads have none), opened on their own data.
//!
//! Not here: what a test does with them (shipped_graphs.rs, fusion.rs, debug_checks.rs).
//! `state_bits` is the one comparison they share.

use flowseg_engine::data::Dataset;
use flowseg_engine::graph::Env;
use flowseg_engine::open::open_graph;
use flowseg_engine::spec::GraphSpec;
use flowseg_engine::{Registry, Tensor};
use flowseg_ops::builtin_registry;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The built-in ops and data sources.
pub fn full_registry() -> Registry {
    let mut registry = builtin_registry().expect("built-in ops register");
    flowseg_sources::register_builtin_sources(&mut registry).expect("built-in sources register");
    registry
}

/// Every `graphs/*.yaml`, sorted (at least three).
pub fn graph_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../graphs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("graphs/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

/// One shipped graph, shrunk and opened: its spec, its data and the environment a trainer
/// builds against.
pub fn open_shrunk(file: &PathBuf, registry: &Registry) -> (GraphSpec, Box<dyn Dataset>, Env) {
    let text = std::fs::read_to_string(file).expect("readable graph");
    let mut sets: Vec<String> = ["data.size=16", "data.batch=2"].map(String::from).to_vec();
    let (plain, _) = flowseg_engine::spec::parse_graph(&text, &[]).expect("parses");
    for (name, m) in &plain.models {
        if m.params.as_ref().is_some_and(|p| p.get("width").is_some()) {
            sets.push(format!("models.{}.params.width=8", name.value));
        }
    }
    if text.contains("unlabeled_batch") {
        sets.push("data.unlabeled_batch=2".into());
    }
    let what = file.display();
    let (gspec, _, source) =
        open_graph(&text, &sets, registry).unwrap_or_else(|e| panic!("{what}: {e:#?}"));
    let env = Env {
        batch: source.specs(),
        state: BTreeMap::new(),
        hidden: source.hidden_fields(),
    };
    (gspec, source, env)
}

/// Bits of every tensor of a state map, by name: what "the same state" means in the step tests.
#[allow(
    dead_code,
    reason = "used by some of the test binaries that include the suite"
)]
pub fn state_bits(state: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<u32>> {
    (state.iter())
        .map(|(k, t)| {
            let bits = match (t.f32(), t.i32()) {
                (Some(v), _) => v.iter().map(|x| x.to_bits()).collect(),
                (_, Some(v)) => v.iter().map(|&x| x as u32).collect(),
                _ => Vec::new(),
            };
            (k.clone(), bits)
        })
        .collect()
}
