//! The fusion pass (engine/src/fusion.rs) with the built-in fusions (`batch_norm` + `relu`,
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
use flowseg_engine::fusion;
use flowseg_engine::graph::{Graph, ValueRef};
use flowseg_engine::op::Feed;
use flowseg_engine::train::{Trainer, TrainerOptions};
use flowseg_engine::Tensor;
use std::collections::BTreeMap;
use suite::gradients::*;
use suite::shipped::{full_registry, graph_files, open_shrunk};

fn bits_of(t: &Tensor) -> Vec<u32> {
    bits(t)
}

/// Runs the fusion pass on `bwd` keeping `keep`, checks it fused exactly `pairs` (op, absorbed
/// op) and removed one node per pair, and that every kept value has the same bits before and
/// after.
fn assert_fuses_to_the_same_bits(
    bwd: &Graph,
    inputs: &Inputs,
    keep: &[ValueRef],
    pairs: &[(&str, &str)],
    what: &str,
) {
    let fused = fusion::fuse(bwd.clone(), keep);
    let got: Vec<(&str, &str)> = fused
        .fusions
        .iter()
        .map(|f| (f.op, f.absorbed_op))
        .collect();
    assert_eq!(got, pairs, "{what}");
    assert_eq!(
        fused.graph.nodes.len(),
        bwd.nodes.len() - pairs.len(),
        "{what}"
    );
    let before = exec::run_cpu(bwd, &inputs.batch, &inputs.state, 0, 0).expect("runs");
    let after = exec::run_cpu(&fused.graph, &inputs.batch, &inputs.state, 0, 0).expect("runs");
    for v in keep {
        let moved = fused.remap(v).expect("kept values survive");
        assert_eq!(
            bits_of(after.get(&moved).expect("kept")),
            bits_of(before.get(v).expect("kept")),
            "{what}: {v:?}"
        );
    }
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
        let pairs = [("batch_norm", "relu"), ("batch_norm_bwd", "relu_bwd")];
        assert_fuses_to_the_same_bits(&bwd, &inputs, &keep, &pairs, mode);
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
    assert_fuses_to_the_same_bits(&bwd, &inputs, &keep, &[("add", "relu")], "add");
}

#[test]
fn every_shipped_graph_trains_identically_with_and_without_fusion() {
    let registry = full_registry();
    let mut fused_any = 0;
    for file in &graph_files() {
        let what = file.display();
        let (gspec, mut source, env) = open_shrunk(file, &registry);
        let build = |fuse: bool| {
            Trainer::with_options(
                &gspec,
                &registry,
                &env,
                BTreeMap::new(),
                TrainerOptions {
                    fuse,
                    ..TrainerOptions::default()
                },
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
