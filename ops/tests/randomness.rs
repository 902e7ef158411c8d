//! A node's random draws depend on its name, the seed and the iteration only: inserting,
//! removing or reordering other nodes of a graph leaves them as they were (the rule is
//! `flowseg_engine::graph::ExecCx::rng`). Checked on a graph of two random augmentations, run
//! as written and with a third random node inserted in front of them.
//!
//! Not here: the draws themselves (each op's unit tests), CUDA parity (kernels/tests).

use flowseg_engine::exec;
use flowseg_engine::graph::{Env, Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::spec::parse_graph;
use flowseg_engine::{Tensor, TensorSpec};
use flowseg_ops::builtin_registry;
use std::collections::BTreeMap;

const JITTER: &str = "{ name: jitter, op: color_jitter, inputs: { image: batch.image }, params: { p: 0.8, brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.25 } }";
const CUTOUT: &str = "{ name: cut, op: cutout, inputs: { image: jitter.image_out }, params: { p: 1.0, size: { area: 0.25 }, fill: 0.5 } }";
const OTHER: &str =
    "{ name: other, op: random_grayscale, inputs: { image: batch.image }, params: { p: 0.5 } }";

fn build(nodes: &[&str]) -> Graph {
    let yaml = format!(
        "name: t\ntrain: {{ iterations: 1 }}\nnodes:\n{}",
        nodes
            .iter()
            .map(|n| format!("  - {n}\n"))
            .collect::<String>()
    );
    let (spec, _) = parse_graph(&yaml, &[]).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
    let spec_of = TensorSpec::f32(&[2, 3, 8, 8]);
    let env = Env {
        batch: [("image".to_owned(), spec_of)].into(),
        ..Env::default()
    };
    ir::build(
        &spec,
        &builtin_registry().expect("built-in ops register"),
        &env,
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Bits of every output of the node named `name`.
fn outputs_of(graph: &Graph, name: &str, seed: u64, iteration: u64) -> Vec<Vec<u32>> {
    let image = Tensor::from_f32(
        &[2, 3, 8, 8],
        (0..384).map(|v| (v % 17) as f32 / 17.0).collect(),
    )
    .expect("length matches shape");
    let batch: BTreeMap<String, Tensor> = [("image".to_owned(), image)].into();
    let state = BTreeMap::new();
    let run = exec::run_cpu(graph, &batch, &state, seed, iteration).expect("the graph runs");
    let node = graph
        .nodes
        .iter()
        .position(|n| n.name.value == name)
        .expect("the node exists");
    (0..graph.nodes[node].outputs.len())
        .map(|port| {
            let t = run
                .get(&ValueRef::Node { node, port })
                .expect("outputs are kept");
            match (t.f32(), t.i32()) {
                (Some(v), _) => v.iter().map(|x| x.to_bits()).collect(),
                (_, Some(v)) => v.iter().map(|&x| x as u32).collect(),
                _ => Vec::new(),
            }
        })
        .collect()
}

#[test]
fn inserting_a_node_leaves_the_others_draws_unchanged() {
    let plain = build(&[JITTER, CUTOUT]);
    let inserted = build(&[OTHER, JITTER, CUTOUT]);
    for name in ["jitter", "cut"] {
        assert_eq!(
            outputs_of(&plain, name, 7, 3),
            outputs_of(&inserted, name, 7, 3),
            "`{name}` drew differently once a node was inserted before it"
        );
    }
}

#[test]
fn draws_change_with_the_name_the_seed_and_the_iteration() {
    let g = build(&[JITTER, CUTOUT]);
    let renamed = build(&[
        &JITTER.replace("name: jitter", "name: jitter2"),
        &CUTOUT.replace("jitter.image_out", "jitter2.image_out"),
    ]);
    let base = outputs_of(&g, "jitter", 7, 3);
    assert_ne!(
        base,
        outputs_of(&renamed, "jitter2", 7, 3),
        "a renamed node drew the same"
    );
    assert_ne!(
        base,
        outputs_of(&g, "jitter", 8, 3),
        "another seed drew the same"
    );
    assert_ne!(
        base,
        outputs_of(&g, "jitter", 7, 4),
        "another iteration drew the same"
    );
}
