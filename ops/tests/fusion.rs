//! The fusion pass (engine/src/fuse.rs) with the built-in fusions (`batch_norm` + `relu`,
//! `batch_norm_bwd` + `relu_bwd`, `add` + `relu`): fused and unfused steps give the same bits.
//! (The ResNet's residual adds: ops/tests/resnet.rs, `resnet18_deeplabv3plus_trains`.)
//!
//! * `batch_norm { relu: true }` written by hand is `batch_norm` then `relu`, forward and
//!   gradients, in both modes (its VJP feeds `relu_y`); the pass turns the second into the first
//!   (two pairs fused) without changing a bit.
//! * Every shipped graph (shrunk as in shipped_graphs.rs) trains three steps with the pass on
//!   and off to the same weights, buffers and losses, bit for bit; the graphs built on a U-Net
//!   or DeepLab fuse every batch norm that a ReLU follows.
//!
//! Not here: the kernels' own fused-vs-unfused check (kernels/src/batch_norm.rs).

mod suite;

use flowseg_engine::exec;
use flowseg_engine::fuse;
use flowseg_engine::graph::{Env, ValueRef};
use flowseg_engine::op::Feed;
use flowseg_engine::open::open_graph;
use flowseg_engine::train::{Trainer, TrainerOptions};
use flowseg_engine::Tensor;
use flowseg_ops::builtin_registry;
use std::collections::BTreeMap;
use std::path::PathBuf;
use suite::gradients::*;

fn bits_of(t: &Tensor) -> Vec<u32> {
    bits(t)
}

#[test]
fn batch_norm_with_relu_is_batch_norm_then_relu_bit_for_bit() {
    let r = registry();
    for mode in ["train", "eval"] {
        let mut inputs = Inputs::default();
        let x = inputs.add("x", Feed::Trainable(&[2, 3, 5, 7]));
        let gamma = inputs.add("gamma", Feed::Trainable(&[3]));
        let beta = inputs.add("beta", Feed::Trainable(&[3]));
        let rm = inputs.add("rm", Feed::Constant(&[3]));
        let rv = inputs.add("rv", Feed::Constant(&[3]));
        let w = inputs.add("reduce_w", Feed::Constant(&[2, 3, 5, 7]));
        let bn = |relu: bool| {
            format!(
                "{{ name: bn, op: batch_norm, inputs: {{ x: {x}, gamma: {gamma}, beta: {beta}, \
                 running_mean: {rm}, running_var: {rv} }}, params: {{ mode: {mode}, relu: {relu} }} }}"
            )
        };
        let fused_by_hand = build(
            &r,
            &[
                bn(true),
                format!("{{ name: reduce, op: weighted_sum, inputs: {{ x: bn.y, w: {w} }} }}"),
            ],
            &inputs,
        );
        let op_by_op = build(
            &r,
            &[
                bn(false),
                "{ name: act, op: relu, inputs: { x: bn.y } }".to_owned(),
                format!("{{ name: reduce, op: weighted_sum, inputs: {{ x: act.y, w: {w} }} }}"),
            ],
            &inputs,
        );
        let wrt = inputs.trainable();
        let loss = |g| output(&r, g, "reduce", "loss");
        let (a, _) = gradients(&fused_by_hand, &inputs, &[loss(&fused_by_hand)], &wrt).unwrap();
        let (b, bwd) = gradients(&op_by_op, &inputs, &[loss(&op_by_op)], &wrt).unwrap();
        assert_eq!(a.keys().collect::<Vec<_>>(), ["beta", "gamma", "x"]);
        for (name, ga) in &a {
            let gb = &b[name];
            let same = ga.iter().zip(gb).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(
                same,
                "{mode}: d/d{name} differs between relu: true and batch_norm → relu"
            );
        }
        // Some gradient is cut by the ReLU, some passes: the mask is exercised.
        assert!(b["x"].contains(&0.0) && b["x"].iter().any(|&v| v != 0.0));

        // The pass on the op-by-op backward graph: two pairs, the same loss and gradients.
        let keep: Vec<ValueRef> = std::iter::once(loss(&bwd))
            .chain(
                bwd.nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.op.name() == "batch_norm_bwd")
                    .flat_map(|(node, _)| (0..3).map(move |port| ValueRef::Node { node, port })),
            )
            .collect();
        let fused = fuse::fuse(bwd.clone(), &keep);
        let pairs: Vec<(&str, &str)> = fused
            .fusions
            .iter()
            .map(|f| (f.op, f.absorbed_op))
            .collect();
        assert_eq!(
            pairs,
            [("batch_norm", "relu"), ("batch_norm_bwd", "relu_bwd")],
            "{mode}"
        );
        assert_eq!(fused.graph.nodes.len(), bwd.nodes.len() - 2);
        let before = exec::run_cpu(&bwd, &inputs.batch, &inputs.state, 0, 0).unwrap();
        let after = exec::run_cpu(&fused.graph, &inputs.batch, &inputs.state, 0, 0).unwrap();
        for v in &keep {
            let moved = fused.remap(v).expect("kept values survive");
            assert_eq!(
                bits_of(after.get(&moved).unwrap()),
                bits_of(before.get(v).unwrap()),
                "{mode}: {v:?}"
            );
        }
    }
}

#[test]
fn add_with_relu_is_add_then_relu_bit_for_bit() {
    let r = registry();
    let mut inputs = Inputs::default();
    let a = inputs.add("a", Feed::Trainable(&[2, 3, 5, 7]));
    let b = inputs.add("b", Feed::Trainable(&[2, 3, 5, 7]));
    let w = inputs.add("reduce_w", Feed::Constant(&[2, 3, 5, 7]));
    let add = |relu: bool| {
        format!(
            "{{ name: sum, op: add, inputs: {{ a: {a}, b: {b} }}, params: {{ relu: {relu} }} }}"
        )
    };
    let fused_by_hand = build(
        &r,
        &[
            add(true),
            format!("{{ name: reduce, op: weighted_sum, inputs: {{ x: sum.y, w: {w} }} }}"),
        ],
        &inputs,
    );
    let op_by_op = build(
        &r,
        &[
            add(false),
            "{ name: act, op: relu, inputs: { x: sum.y } }".to_owned(),
            format!("{{ name: reduce, op: weighted_sum, inputs: {{ x: act.y, w: {w} }} }}"),
        ],
        &inputs,
    );
    let wrt = inputs.trainable();
    let loss = |g| output(&r, g, "reduce", "loss");
    let (x, _) = gradients(&fused_by_hand, &inputs, &[loss(&fused_by_hand)], &wrt).unwrap();
    let (y, bwd) = gradients(&op_by_op, &inputs, &[loss(&op_by_op)], &wrt).unwrap();
    assert_eq!(x.keys().collect::<Vec<_>>(), ["a", "b"]);
    for (name, gx) in &x {
        let same = gx
            .iter()
            .zip(&y[name])
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "d/d{name} differs between relu: true and add → relu");
    }
    assert!(y["a"].contains(&0.0) && y["a"].iter().any(|&v| v != 0.0));
    // The pass on the op-by-op graph: add takes the relu; the same loss and gradients.
    let keep: Vec<ValueRef> = std::iter::once(loss(&bwd))
        .chain(
            bwd.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.op.name() == "relu_bwd")
                .map(|(node, _)| ValueRef::Node { node, port: 0 }),
        )
        .collect();
    let fused = fuse::fuse(bwd.clone(), &keep);
    let pairs: Vec<(&str, &str)> = fused
        .fusions
        .iter()
        .map(|f| (f.op, f.absorbed_op))
        .collect();
    assert_eq!(pairs, [("add", "relu")]);
    let before = exec::run_cpu(&bwd, &inputs.batch, &inputs.state, 0, 0).unwrap();
    let after = exec::run_cpu(&fused.graph, &inputs.batch, &inputs.state, 0, 0).unwrap();
    for v in &keep {
        let moved = fused.remap(v).expect("kept values survive");
        assert_eq!(
            bits_of(after.get(&moved).unwrap()),
            bits_of(before.get(v).unwrap()),
            "{v:?}"
        );
    }
}

fn graphs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../graphs")
}

#[test]
fn every_shipped_graph_trains_identically_with_and_without_fusion() {
    let mut registry = builtin_registry().expect("built-in ops register");
    flowseg_sources::register_builtin_sources(&mut registry).expect("built-in sources register");
    let mut files: Vec<PathBuf> = std::fs::read_dir(graphs_dir())
        .expect("graphs/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut fused_any = 0;
    for file in &files {
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
        let (gspec, _, mut source) =
            open_graph(&text, &sets, &registry).unwrap_or_else(|e| panic!("{what}: {e:#?}"));
        let env = Env {
            batch: source.specs(),
            state: BTreeMap::new(),
            hidden: source.hidden_fields(),
        };
        let build = |fuse: bool| {
            Trainer::with_options(
                &gspec,
                &registry,
                &env,
                BTreeMap::new(),
                TrainerOptions { fuse },
            )
            .unwrap_or_else(|e| panic!("{what}: {e:#?}"))
        };
        let (mut on, mut off) = (build(true), build(false));
        assert!(off.fusions.is_empty());
        // Every batch norm or add a ReLU follows, forward and (where trained) backward.
        let relus_after_bn = off
            .graph
            .nodes
            .iter()
            .filter(|n| n.op.name() == "relu")
            .filter(|n| {
                matches!(&n.inputs[0], Some(ValueRef::Node { node, .. })
                    if ["batch_norm", "add"].contains(&off.graph.nodes[*node].op.name()))
            })
            .count();
        let forward_pairs = on
            .fusions
            .iter()
            .filter(|f| f.absorbed_op == "relu")
            .count();
        assert_eq!(forward_pairs, relus_after_bn, "{what}");
        assert_eq!(
            on.graph.nodes.len() + on.fusions.len(),
            off.graph.nodes.len(),
            "{what}"
        );
        fused_any += usize::from(!on.fusions.is_empty());
        for it in 0..3 {
            let batch = source.batch(it).expect("a batch");
            let lon = on
                .step(&batch, it)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let loff = off
                .step(&batch, it)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let l = |v: &[(String, f32)]| {
                v.iter()
                    .map(|(n, x)| (n.clone(), x.to_bits()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(l(&lon), l(&loff), "{what}: losses at iteration {it}");
        }
        assert_eq!(
            on.state.keys().collect::<Vec<_>>(),
            off.state.keys().collect::<Vec<_>>()
        );
        for (name, t) in &on.state {
            assert!(
                bits_of(t) == bits_of(&off.state[name]),
                "{what}: `{name}` differs after 3 steps with and without fusion"
            );
        }
    }
    assert!(fused_any >= 8, "only {fused_any} graphs fused anything");
}
