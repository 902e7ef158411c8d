//! Every built-in op's backward, checked end to end through the engine: a graph in YAML →
//! `ir::build` → `autodiff::differentiate` → `exec::run_cpu`, against central differences of the
//! scalar loss.
//!
//! Which ops are differentiable is not listed here but found out: every registered built-in op
//! must declare at least one case in its own file (`Op::GRAD_CASES`: the params and how each
//! input is fed; a new op without one fails the test), each case is
//! differentiated with respect to the op's trainable inputs, and an op that yields no gradient
//! must declare `STOP_GRAD`, while one that is neither differentiable nor a stop-gradient is
//! FS0109 and fails. Today the stop-gradients are `detach`, `max_confidence`, `threshold`,
//! `box_mask` and `class_mask`; every other built-in op is checked.
//!
//! Every differentiated graph also runs through the plan executor's poisoned simulator
//! (`ExecOrder::Interleaved`, one and two streams), which hands each node poisoned output
//! buffers: its losses and gradients must equal `run_cpu`'s (zeroed outputs) bit for bit, so an op
//! that leaves an output element unwritten, or reads its outputs, fails here (the `Op::cpu`
//! contract: outputs are overwritten).
//!
//! Tolerances: the forward runs in f32, so a central difference with eps 1e-2 is coarse (round-off
//! in the loss divided by 2·eps, plus O(eps²) truncation); it is compared with atol 2e-3 + rtol
//! 2e-2. The tight checks are the kernels' own f64 gradchecks (`flowseg_kernels::testing`);
//! what this file checks is the wiring: ports, which forward value feeds which backward input,
//! params passed on, the seed's weight, and the summing of fan-out.

mod suite;

use flowseg_engine::autodiff::NOT_DIFFERENTIABLE;
use flowseg_engine::exec;
use flowseg_engine::op::Feed;
use flowseg_ops::builtin_registry;
use std::collections::BTreeSet;
use suite::gradients::*;

#[test]
fn every_differentiable_op_matches_finite_differences() {
    let r = registry();
    let (mut checked, mut skipped) = (BTreeSet::new(), BTreeSet::new());
    for op in builtin_registry().expect("built-in ops register").iter() {
        assert!(
            !op.grad_cases().is_empty(),
            "`{}` declares no `GRAD_CASES`: add one in its file (its params and input feeds)",
            op.name()
        );
        for case in op.grad_cases() {
            if check_case(&r, op.name(), case) {
                skipped.insert(op.name());
            } else {
                checked.insert(op.name());
            }
        }
    }
    assert!(
        checked.is_disjoint(&skipped),
        "{checked:?} vs {skipped:?}: an op is a stop-gradient in one case only"
    );
    assert!(!checked.is_empty(), "no differentiable op was checked");
}

// ---- graph-level behaviour ---------------------------------------------------------------------

#[test]
fn fan_out_gradients_are_summed() {
    // x reaches the loss along relu, softmax, an identity skip and (through v = u + u) twice
    // over: d loss/dx sums every path, via `grad_add` nodes.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::TrainableOffZero(X));
    inputs.add("reduce_w", Feed::Trainable(X));
    let nodes = [
        "{ name: r, op: relu, inputs: { x: state.x } }",
        "{ name: s, op: softmax, inputs: { x: state.x } }",
        "{ name: t, op: add, inputs: { a: r.y, b: s.y } }",
        "{ name: u, op: add, inputs: { a: t.y, b: state.x } }",
        "{ name: v, op: add, inputs: { a: u.y, b: u.y } }",
        "{ name: loss, op: weighted_sum, inputs: { x: v.y, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "loss", "loss");
    let wrt = inputs.trainable();
    let (grads, bwd) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    // x has three consumers (two adds), u.y is both operands of v (one add).
    let adds = bwd
        .nodes
        .iter()
        .filter(|n| n.op.name() == "grad_add")
        .count();
    assert_eq!(adds, 3, "grad_add nodes");
    check_against_differences("fan-out", &g, &mut inputs, &loss, "x", &grads["x"]);
}

#[test]
fn max_confidence_cuts_the_gradient() {
    // FixMatch-style self-training on one tensor: pseudo-labels and confidences from softmax(x)
    // are the target and weight of a cross entropy on x itself.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("reduce_w", Feed::Trainable(PIXELS));
    let nodes = [
        "{ name: p, op: softmax, inputs: { x: state.x } }",
        "{ name: pseudo, op: max_confidence, inputs: { probs: p.y } }",
        "{ name: ce, op: cross_entropy, inputs: { logits: state.x, target: pseudo.label, \
         weight: pseudo.confidence }, params: { denominator: weight_sum } }",
        "{ name: conf, op: weighted_sum, inputs: { x: pseudo.confidence, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let (ce, conf) = (output(&r, &g, "ce", "loss"), output(&r, &g, "conf", "loss"));
    let wrt = inputs.trainable();

    // A loss reached only through max_confidence: no gradient, no backward node but the seed.
    let (grads, bwd) =
        gradients(&g, &inputs, std::slice::from_ref(&conf), &wrt).expect("differentiates");
    assert!(grads.is_empty(), "{:?}", grads.keys());
    let emitted: Vec<&str> = bwd.nodes[g.nodes.len()..]
        .iter()
        .map(|n| n.op.name())
        .collect();
    assert_eq!(emitted, ["grad_seed"]);

    // Both losses: x's gradient is the cross entropy's with target and weight held constant,
    // i.e. that of the same loss with them as batch fields.
    let (grads, bwd) = gradients(&g, &inputs, &[ce, conf], &wrt).expect("differentiates");
    assert!(
        bwd.nodes
            .iter()
            .all(|n| !n.name.value.starts_with("pseudo/")
                && !n.name.value.starts_with("p/")
                && !n.name.value.starts_with("conf/")),
        "backward nodes behind max_confidence"
    );
    let run = exec::run_cpu(&g, &inputs.batch, &inputs.state, 0, 0).expect("forward runs");
    let label = run.get(&output(&r, &g, "pseudo", "label")).cloned();
    let confidence = run.get(&output(&r, &g, "pseudo", "confidence")).cloned();
    drop(run);
    let mut fixed = Inputs::default();
    fixed.insert("x", true, inputs.state["x"].clone());
    fixed.insert("target", false, label.expect("label computed"));
    fixed.insert("weight", false, confidence.expect("confidence computed"));
    let g = build(
        &r,
        &[
            "{ name: ce, op: cross_entropy, inputs: { logits: state.x, target: batch.target, \
           weight: batch.weight }, params: { denominator: weight_sum } }"
                .to_owned(),
        ],
        &fixed,
    );
    let ce = output(&r, &g, "ce", "loss");
    check_against_differences("self-training", &g, &mut fixed, &ce, "x", &grads["x"]);
}

#[test]
fn cross_entropy_weight_must_be_detached_to_be_constant() {
    // cross_entropy treats its per-pixel weight as a constant: one that depends on trainable
    // state is refused rather than its gradient dropped, and `detach` says it is intended.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("target", Feed::Labels(PIXELS));
    inputs.add("w", Feed::Trainable(PIXELS));
    let ce = |weight: &str| {
        format!(
            "{{ name: ce, op: cross_entropy, inputs: {{ logits: state.x, target: batch.target, \
             weight: {weight} }} }}"
        )
    };
    let wrt = inputs.trainable();

    let g = build(&r, &[ce("state.w")], &inputs);
    let loss = output(&r, &g, "ce", "loss");
    let errs = gradients(&g, &inputs, &[loss], &wrt).expect_err("a trainable weight is refused");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].code, NOT_DIFFERENTIABLE);
    assert_eq!(errs[0].node.as_deref(), Some("ce"));
    assert!(errs[0].message.contains("`detach`"), "{}", errs[0].message);

    let nodes = [
        "{ name: frozen, op: detach, inputs: { x: state.w } }".to_owned(),
        ce("frozen.y"),
    ];
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "ce", "loss");
    let (grads, _) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    assert_eq!(grads.keys().collect::<Vec<_>>(), ["x"]);
    check_against_differences("detached weight", &g, &mut inputs, &loss, "x", &grads["x"]);
}

#[test]
fn cutmix_mixes_logits_and_labels_with_one_mask() {
    // A box mask drawn beside the logits mixes them (f32, within the batch) and the labels (i32)
    // alike; the gradient flows through the logits' mix only. The mask is drawn from the node's
    // stream, so every finite-difference run sees the same boxes.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("target", Feed::Labels(PIXELS));
    let nodes = [
        "{ name: cut, op: box_mask, inputs: { like: state.x }, params: { partner: roll } }",
        "{ name: mixed, op: mix, inputs: { mask: cut.mask, partner: cut.partner, a: state.x } }",
        "{ name: labels, op: mix, inputs: { mask: cut.mask, partner: cut.partner, \
         a: batch.target } }",
        "{ name: ce, op: cross_entropy, inputs: { logits: mixed.out, target: labels.out } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "ce", "loss");
    let wrt = inputs.trainable();
    let (grads, bwd) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    let emitted: Vec<&str> = bwd.nodes[g.nodes.len()..]
        .iter()
        .map(|n| n.op.name())
        .collect();
    assert_eq!(emitted, ["grad_seed", "cross_entropy_bwd", "mix_bwd"]);
    check_against_differences("cutmix", &g, &mut inputs, &loss, "x", &grads["x"]);

    // A mask that depends on trainable state is refused, not silently held constant.
    inputs.add("m", Feed::Trainable(PIXELS));
    inputs.add("reduce_w", Feed::Trainable(X));
    let nodes = [
        "{ name: cut, op: box_mask, inputs: { like: state.x }, params: { partner: roll } }",
        "{ name: mixed, op: mix, inputs: { mask: state.m, partner: cut.partner, a: state.x } }",
        "{ name: loss, op: weighted_sum, inputs: { x: mixed.out, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "loss", "loss");
    let errs = gradients(&g, &inputs, &[loss], &inputs.trainable()).expect_err("refused");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].code, errs[0].node.as_deref()),
        (NOT_DIFFERENTIABLE, Some("mixed"))
    );
    assert!(errs[0].message.contains("`detach`"), "{}", errs[0].message);
}

#[test]
fn squared_error_weight_must_be_detached_to_be_constant() {
    // The same rule as cross_entropy's weight, through the shared helper.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("a", Feed::Trainable(X));
    inputs.add("b", Feed::Constant(X));
    inputs.add("w", Feed::Trainable(PIXELS));
    let node = |weight: &str| {
        format!(
            "{{ name: cons, op: squared_error, inputs: {{ a: state.a, b: batch.b, weight: \
             {weight} }} }}"
        )
    };
    let wrt = inputs.trainable();

    let g = build(&r, &[node("state.w")], &inputs);
    let loss = output(&r, &g, "cons", "loss");
    let errs = gradients(&g, &inputs, &[loss], &wrt).expect_err("a trainable weight is refused");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].code, errs[0].node.as_deref()),
        (NOT_DIFFERENTIABLE, Some("cons"))
    );
    assert!(
        errs[0].message.contains("`weight`") && errs[0].message.contains("`detach`"),
        "{}",
        errs[0].message
    );

    let nodes = [
        "{ name: frozen, op: detach, inputs: { x: state.w } }".to_owned(),
        node("frozen.y"),
    ];
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "cons", "loss");
    let (grads, _) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    assert_eq!(grads.keys().collect::<Vec<_>>(), ["a"]);
    check_against_differences("detached weight", &g, &mut inputs, &loss, "a", &grads["a"]);
}

#[test]
fn an_op_without_vjp_on_the_path_is_fs0109() {
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("image", Feed::Constant(X));
    inputs.add("reduce_w", Feed::Trainable(X));
    let nodes = [
        "{ name: hidden, op: opaque, inputs: { x: state.x } }",
        "{ name: loss, op: weighted_sum, inputs: { x: hidden.y, w: state.reduce_w } }",
        // Off the trainable path: no gradient is needed through it, so no error.
        "{ name: aside, op: opaque, inputs: { x: batch.image } }",
        "{ name: loss2, op: weighted_sum, inputs: { x: aside.y, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let losses = [
        output(&r, &g, "loss", "loss"),
        output(&r, &g, "loss2", "loss"),
    ];
    let errs =
        gradients(&g, &inputs, &losses, &inputs.trainable()).expect_err("differentiation fails");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].code, NOT_DIFFERENTIABLE);
    assert_eq!(errs[0].node.as_deref(), Some("hidden"));
    assert!(errs[0].message.contains("`opaque`"), "{}", errs[0].message);
    assert!(
        errs[0]
            .help
            .as_deref()
            .is_some_and(|h| h.contains("detach")),
        "{:?}",
        errs[0].help
    );
}

#[test]
fn batch_norm_statistics_carry_no_gradient() {
    // The running statistics are buffers (assigned, never trained), and the statistics outputs
    // feed assigns: a gradient through either is refused, not dropped.
    let r = registry();
    let inputs = |mean: Feed| {
        let mut i = Inputs::default();
        i.add("x", Feed::Trainable(X));
        i.add("gamma", Feed::Constant(&[3]));
        i.add("beta", Feed::Constant(&[3]));
        let mean = i.add("running_mean", mean);
        i.add("running_var", Feed::Constant(&[3]));
        i.add("reduce_w", Feed::Trainable(X));
        i.add("reduce_wc", Feed::Trainable(&[3]));
        (i, mean)
    };
    let refused = |port: &str, mean: Feed| {
        let (inputs, mean) = inputs(mean);
        let w = if port == "y" { "reduce_w" } else { "reduce_wc" };
        let nodes = [
            format!(
                "{{ name: bn, op: batch_norm, inputs: {{ x: state.x, gamma: batch.gamma, beta: \
                 batch.beta, running_mean: {mean}, running_var: batch.running_var }} }}"
            ),
            format!("{{ name: loss, op: weighted_sum, inputs: {{ x: bn.{port}, w: state.{w} }} }}"),
        ];
        let g = build(&r, &nodes, &inputs);
        let loss = output(&r, &g, "loss", "loss");
        let errs = gradients(&g, &inputs, &[loss], &inputs.trainable()).expect_err("refused");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(
            (errs[0].code, errs[0].node.as_deref()),
            (NOT_DIFFERENTIABLE, Some("bn"))
        );
        errs[0].message.clone()
    };
    // A trainable running mean, even with the loss on `y` (train mode does not read it there).
    let m = refused("y", Feed::Trainable(&[3]));
    assert!(m.contains("`running_mean`") && m.contains("buffers"), "{m}");
    // A loss on `new_mean`, which depends on x through the batch mean.
    let m = refused("new_mean", Feed::Constant(&[3]));
    assert!(m.contains("`new_mean`") && m.contains("detach"), "{m}");
}
