//! The built-in `deeplab_lite` model, traced through real graphs: the shapes of its three ports
//! at output strides 8 and 16, its state names and count, train vs eval tracing, a short
//! deterministic training run through `Trainer`, and a whole-model finite-difference check of a
//! few parameters' gradients (`ir::build` → `autodiff::differentiate` → `exec::run_cpu`).

mod suite;

use flowseg_engine::autodiff;
use flowseg_engine::graph::{Env, Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::kernels::testing::{rand_index, rand_vec};
use flowseg_engine::model::Init;
use flowseg_engine::spec;
use flowseg_engine::train::Trainer;
use flowseg_engine::{Tensor, TensorSpec};
use flowseg_ops::builtin_registry;
use std::collections::{BTreeMap, BTreeSet};
use suite::picked::{check_picked_gradients, trainable, Tolerance};

/// A graph calling `student` (arch deeplab_lite with `model_params`) once as `s` in `mode`,
/// followed by `nodes` (YAML flow mappings, one a line) and an optional `optim` block.
fn graph_yaml(model_params: &str, mode: &str, optim: &str, nodes: &[&str]) -> String {
    let mut y = format!(
        "name: deeplab\ntrain: {{ iterations: 15, seed: 7 }}\nmodels:\n  student: {{ arch: \
         deeplab_lite, params: {model_params} }}\n{optim}nodes:\n  - {{ name: s, op: forward, \
         inputs: {{ image: batch.image }}, params: {{ model: student, mode: {mode} }} }}\n"
    );
    for n in nodes {
        y.push_str(&format!("  - {n}\n"));
    }
    y
}

/// Batch specs: `image` f32[n, 3, h, w] and `target` i32[n, h, w].
fn env(n: usize, h: usize, w: usize) -> Env {
    Env {
        batch: BTreeMap::from([
            ("image".into(), TensorSpec::f32(&[n, 3, h, w])),
            ("target".into(), TensorSpec::i32(&[n, h, w])),
        ]),
        state: BTreeMap::new(),
        hidden: Default::default(),
    }
}

fn build(yaml: &str, env: &Env) -> Graph {
    let (spec, _) = spec::parse_graph(yaml, &[]).unwrap_or_else(|e| panic!("{yaml}\n{e:#?}"));
    ir::build(&spec, &builtin_registry().expect("registers"), env)
        .unwrap_or_else(|e| panic!("{yaml}\n{e:#?}"))
}

fn node(g: &Graph, name: &str) -> usize {
    g.nodes
        .iter()
        .position(|n| n.name.value == name)
        .unwrap_or_else(|| panic!("no node `{name}`"))
}

/// The specs of the model's three ports, read off `detach` nodes tapping them.
fn port_specs(model_params: &str, n: usize, h: usize, w: usize) -> [TensorSpec; 3] {
    let taps = [
        "{ name: logits, op: detach, inputs: { x: s.logits } }",
        "{ name: features, op: detach, inputs: { x: s.features } }",
        "{ name: low_level, op: detach, inputs: { x: s.low_level } }",
    ];
    let g = build(&graph_yaml(model_params, "train", "", &taps), &env(n, h, w));
    ["logits", "features", "low_level"].map(|t| g.nodes[node(&g, t)].outputs[0].clone())
}

#[test]
fn ports_have_the_documented_shapes() {
    // 32 → stem 16 → layer2 8 (low_level, 2C = 64) → layer3 4 (OS 8) → layer4 2 (OS 16);
    // features are the ASPP's 2C = 64 channels.
    let [logits, features, low_level] = port_specs("{ classes: 4 }", 2, 32, 32);
    assert_eq!(logits, TensorSpec::f32(&[2, 4, 32, 32]));
    assert_eq!(features, TensorSpec::f32(&[2, 64, 4, 4]));
    assert_eq!(low_level, TensorSpec::f32(&[2, 64, 8, 8]));
    let [logits, features, low_level] = port_specs("{ classes: 4, output_stride: 16 }", 2, 32, 32);
    assert_eq!(logits, TensorSpec::f32(&[2, 4, 32, 32]));
    assert_eq!(features, TensorSpec::f32(&[2, 64, 2, 2]));
    assert_eq!(low_level, TensorSpec::f32(&[2, 64, 8, 8]));
    // Odd sizes round up at each stride (⌈s/2⌉), and logits come back to the input's size.
    let [logits, features, low_level] = port_specs("{ classes: 3, width: 4 }", 1, 30, 21);
    assert_eq!(logits, TensorSpec::f32(&[1, 3, 30, 21]));
    assert_eq!(features, TensorSpec::f32(&[1, 8, 4, 3]));
    assert_eq!(low_level, TensorSpec::f32(&[1, 8, 8, 6]));
}

/// (trainable values, buffer values) declared by a graph.
fn counts(g: &Graph) -> (usize, usize) {
    g.params.values().fold((0, 0), |(p, b), d| {
        if d.trainable {
            (p + d.spec.len(), b)
        } else {
            (p, b + d.spec.len())
        }
    })
}

#[test]
fn state_names_inits_and_count() {
    let g = build(
        &graph_yaml("{ classes: 4 }", "train", "", &[]),
        &env(2, 32, 32),
    );
    let d = |name: &str| {
        g.params
            .get(&format!("student.{name}"))
            .unwrap_or_else(|| panic!("no `student.{name}` in {:?}", g.params.keys()))
    };
    for (name, shape, init, trainable) in [
        (
            "stem.conv.weight",
            &[32, 3, 3, 3][..],
            Init::KaimingNormal { fan_in: 27 },
            true,
        ),
        ("stem.bn.weight", &[32], Init::Ones, true),
        ("stem.bn.bias", &[32], Init::Zeros, true),
        ("stem.bn.running_mean", &[32], Init::Zeros, false),
        ("stem.bn.running_var", &[32], Init::Ones, false),
        (
            "layer1.0.conv1.weight",
            &[32, 32, 3, 3],
            Init::KaimingNormal { fan_in: 288 },
            true,
        ),
        ("layer1.0.bn2.running_var", &[32], Init::Ones, false),
        (
            "layer2.0.downsample.0.weight",
            &[64, 32, 1, 1],
            Init::KaimingNormal { fan_in: 32 },
            true,
        ),
        ("layer3.0.downsample.1.weight", &[128], Init::Ones, true),
        (
            "aspp.0.conv.weight",
            &[64, 128, 1, 1],
            Init::KaimingNormal { fan_in: 128 },
            true,
        ),
        (
            "aspp.3.conv.weight",
            &[64, 128, 3, 3],
            Init::KaimingNormal { fan_in: 1152 },
            true,
        ),
        (
            "aspp.project.conv.weight",
            &[64, 256, 1, 1],
            Init::KaimingNormal { fan_in: 256 },
            true,
        ),
        (
            "decoder.reduce.conv.weight",
            &[32, 64, 1, 1],
            Init::KaimingNormal { fan_in: 64 },
            true,
        ),
        (
            "decoder.fuse.conv.weight",
            &[64, 96, 3, 3],
            Init::KaimingNormal { fan_in: 864 },
            true,
        ),
        (
            "classifier.weight",
            &[4, 64, 1, 1],
            Init::KaimingNormal { fan_in: 64 },
            true,
        ),
        ("classifier.bias", &[4], Init::Zeros, true),
    ] {
        let decl = d(name);
        assert_eq!(
            (&decl.spec, decl.init, decl.trainable),
            (&TensorSpec::f32(shape), init, trainable),
            "{name}"
        );
    }
    assert!(!g.params.keys().any(|k| k.contains("layer4")));
    assert!(!g
        .params
        .contains_key("student.layer1.0.downsample.0.weight"));

    // Trainable values, width C = 32, depth 1, K = 4, OS 8 (convs bias-free; a BN has 2C):
    //   stem        conv 32·3·9 = 864, bn 64                                          =     928
    //   layer1.0    conv1 32·32·9 = 9216, bn1 64, conv2 9216, bn2 64                  =  18,560
    //   layer2.0    conv1 64·32·9 = 18432, bn1 128, conv2 64·64·9 = 36864, bn2 128,
    //               downsample 64·32 = 2048 + bn 128                                  =  57,728
    //   layer3.0    conv1 128·64·9 = 73728, bn1 256, conv2 128·128·9 = 147456, bn2 256,
    //               downsample 128·64 = 8192 + bn 256                                 = 230,144
    //   aspp        0: 64·128 + 128 = 8320; 1..3: 3·(64·128·9 + 128) = 221568;
    //               project 64·256 + 128 = 16512                                      = 246,400
    //   decoder     reduce 32·64 + 64 = 2112; fuse 64·96·9 + 128 = 55424              =  57,536
    //   classifier  4·64 + 4                                                          =     260
    //   total                                                                           611,556
    // Buffers: 2 per BN channel; BN channels 32 + 64 + 192 + 384 + 5·64 + 32 + 64 = 1088.
    assert_eq!(counts(&g), (611_556, 2 * 1088));

    // OS 16 adds layer4 (conv1 256·128·9 = 294912, conv2 256·256·9 = 589824, downsample
    // 256·128 = 32768, three BNs of 512: 919,040) and widens the ASPP's input to 256 (0:
    // 64·256 + 128 = 16512; 1..3: 3·(64·256·9 + 128) = 442752; project 16512: 475,776 instead
    // of 246,400): 611,556 + 919,040 + 229,376 = 1,759,972.
    let g16 = build(
        &graph_yaml("{ classes: 4, output_stride: 16 }", "train", "", &[]),
        &env(2, 32, 32),
    );
    assert_eq!(counts(&g16).0, 1_759_972);
}

#[test]
fn eval_declares_the_same_state_and_assigns_nothing() {
    let e = env(2, 16, 16);
    let train = build(&graph_yaml("{ classes: 4 }", "train", "", &[]), &e);
    let eval = build(&graph_yaml("{ classes: 4 }", "eval", "", &[]), &e);
    assert_eq!(train.params, eval.params);
    assert!(eval.assigns.is_empty(), "{:?}", eval.assigns);
    // Train: each of the 16 BNs assigns its two running statistics, from its own node.
    assert_eq!(train.assigns.len(), 32);
    let assigned: BTreeSet<&str> = train.assigns.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(assigned.len(), 32);
    assert!(assigned.contains("student.aspp.project.bn.running_var"));
    for (src, state) in &train.assigns {
        let ValueRef::Node { node, .. } = src else {
            panic!("{state} assigned from {src:?}")
        };
        assert_eq!(train.nodes[*node].op.name(), "batch_norm", "{state}");
    }
    // Same primitive nodes in both modes, named by module path.
    let names = |g: &Graph| {
        g.nodes
            .iter()
            .map(|n| n.name.value.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&train), names(&eval));
    for want in [
        "s/stem.conv",
        "s/layer2.0.downsample.1",
        "s/aspp.cat3",
        "s/upsample",
    ] {
        assert!(names(&train).iter().any(|n| n == want), "no node {want}");
    }
}

/// A fixed batch of two 16×16 images made of 4×4 blocks of one random colour each, labelled
/// with the block's strongest channel (K = 3): learnable at the decoder's 1/4 resolution.
fn blocks_batch() -> BTreeMap<String, Tensor> {
    let (n, s, b) = (2, 16, 4);
    let colours = rand_vec(11, n * 3 * (s / b) * (s / b), -1.0, 1.0);
    let colour = |i: usize, c: usize, y: usize, x: usize| {
        colours[((i * 3 + c) * (s / b) + y / b) * (s / b) + x / b] as f32
    };
    let mut image = Vec::with_capacity(n * 3 * s * s);
    let mut target = Vec::with_capacity(n * s * s);
    for i in 0..n {
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    image.push(colour(i, c, y, x));
                }
            }
        }
        for y in 0..s {
            for x in 0..s {
                let best = (0..3)
                    .max_by(|&a, &c| colour(i, a, y, x).total_cmp(&colour(i, c, y, x)))
                    .unwrap_or(0);
                target.push(best as i32);
            }
        }
    }
    BTreeMap::from([
        (
            "image".into(),
            Tensor::from_f32(&[n, 3, s, s], image).expect("shape"),
        ),
        (
            "target".into(),
            Tensor::from_i32(&[n, s, s], target).expect("shape"),
        ),
    ])
}

#[test]
fn a_short_sgd_run_lowers_the_loss_deterministically() {
    let yaml = graph_yaml(
        "{ classes: 3 }",
        "train",
        "optim:\n  student: { kind: sgd, lr: 0.05, momentum: 0.9, minimize: { ce.loss: 1.0 } }\n",
        &["{ name: ce, op: cross_entropy, inputs: { logits: s.logits, target: batch.target } }"],
    );
    let (spec, _) = spec::parse_graph(&yaml, &[]).expect("parses");
    let registry = builtin_registry().expect("registers");
    let batch = blocks_batch();
    let e = env(2, 16, 16);
    let run = || {
        let mut t = Trainer::new(&spec, &registry, &e, BTreeMap::new()).expect("trainer");
        let losses: Vec<f32> = (0..15)
            .map(|it| t.step(&batch, it).expect("step")[0].1)
            .collect();
        (losses, t.state)
    };
    let (a, state) = run();
    assert!(a[14] <= 0.7 * a[0], "loss {} -> {}: {a:?}", a[0], a[14]);
    // The running statistics moved (train-mode BN assigned them).
    let rv = state["student.stem.bn.running_var"].f32().expect("f32");
    assert!(rv.iter().any(|&v| v != 1.0));
    let (b, _) = run();
    assert_eq!(a, b, "same seed, same losses");
}

#[test]
fn two_train_forwards_chain_their_running_statistics() {
    // One train-mode forward moves a running statistic r0 → 0.9·r0 + 0.1·μ (momentum 0.1). Two
    // forwards of the same batch in one iteration must apply that twice, in order, as PyTorch
    // does: 0.81·r0 + 0.19·μ — not keep only the last one's 0.9·r0 + 0.1·μ. (Train-mode outputs
    // do not depend on the running statistics, so μ is the same in both graphs.)
    let ce = "{ name: ce, op: cross_entropy, inputs: { logits: s.logits, target: batch.target } }";
    // The running statistics move in the forward, before any update: the rate hardly matters.
    let optim = "optim:\n  student: { kind: sgd, lr: 1.0e-12, minimize: { ce.loss: 1.0 } }\n";
    let once = graph_yaml("{ classes: 3, width: 4 }", "train", optim, &[ce]);
    let twice = graph_yaml(
        "{ classes: 3, width: 4 }",
        "train",
        &optim.replace("ce.loss: 1.0", "ce.loss: 1.0, ce2.loss: 1.0"),
        &[
            ce,
            "{ name: s2, op: forward, inputs: { image: batch.image }, params: { model: student } }",
            "{ name: ce2, op: cross_entropy, inputs: { logits: s2.logits, target: batch.target } }",
        ],
    );
    let registry = builtin_registry().expect("registers");
    let (batch, e) = (blocks_batch(), env(2, 16, 16));
    let step = |yaml: &str| {
        let (spec, _) = spec::parse_graph(yaml, &[]).expect("parses");
        let mut t = Trainer::new(&spec, &registry, &e, BTreeMap::new()).expect("trainer");
        let before = t.state.clone();
        t.step(&batch, 0).expect("step");
        (before, t.state)
    };
    let (r0, one) = step(&once);
    let (_, two) = step(&twice);
    let mut checked = 0;
    for name in r0.keys().filter(|k| k.contains("running_")) {
        let (a, b, c) = (
            r0[name].f32().expect("f32"),
            one[name].f32().expect("f32"),
            two[name].f32().expect("f32"),
        );
        for ((&r, &r1), &r2) in a.iter().zip(b).zip(c) {
            let mu = (f64::from(r1) - 0.9 * f64::from(r)) / 0.1;
            let want = 0.81 * f64::from(r) + 0.19 * mu;
            assert!(
                (f64::from(r2) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{name}: {r2} vs {want}"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}

/// The whole-model check's central-difference step and tolerances. The forward runs in f32
/// through ~60 nodes, so the loss carries round-off of ~1e-7 that the difference divides by
/// 2·EPS, and the step may cross a relu kink or feel batch-norm curvature: EPS = 1e-2 keeps
/// round-off near 1e-5 while truncation stays small, and the tolerances are loose beside the
/// errors observed (at most 8e-5 absolute, 4e-4 relative, on gradients of 1e-4 to 0.3). The
/// tight checks are the kernels' own f64 gradchecks and the per-op cases in `gradients.rs`;
/// this one checks the model's wiring: each parameter reaches the loss through the right ports.
const EPS: f32 = 1e-2;
const ATOL: f64 = 3e-4;
const RTOL: f64 = 2e-2;

/// Width 4, 2 classes, two 8×8 images, train-mode BN: every trainable parameter gets a gradient,
/// and a few from each module (classifier back to the stem) match central differences of the
/// cross entropy.
#[test]
fn whole_model_gradients_match_finite_differences() {
    let yaml = graph_yaml(
        "{ classes: 2, width: 4 }",
        "train",
        "",
        &["{ name: ce, op: cross_entropy, inputs: { logits: s.logits, target: batch.target } }"],
    );
    let e = env(2, 8, 8);
    let forward = build(&yaml, &e);
    let loss = ValueRef::Node {
        node: node(&forward, "ce"),
        port: 0,
    };
    let mut state: BTreeMap<String, Tensor> = forward
        .params
        .iter()
        .enumerate()
        .map(|(i, (name, d))| (name.clone(), d.init.tensor(&d.spec, 3, i as u64)))
        .collect();
    let image: Vec<f32> = rand_vec(21, 2 * 3 * 64, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let batch = BTreeMap::from([
        (
            "image".to_owned(),
            Tensor::from_f32(&[2, 3, 8, 8], image).expect("shape"),
        ),
        (
            "target".to_owned(),
            Tensor::from_i32(&[2, 8, 8], rand_index(22, 128, 2)).expect("shape"),
        ),
    ]);
    let wrt = trainable(&forward);
    let mut backward = forward.clone();
    let grads = autodiff::differentiate(&mut backward, &[(loss.clone(), 1.0)], &wrt)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(grads.keys().cloned().collect::<BTreeSet<_>>(), wrt);
    let picks: &[(&str, &[usize])] = &[
        ("classifier.bias", &[0, 1]),
        ("classifier.weight", &[0, 5]),
        ("decoder.fuse.bn.weight", &[0, 3]),
        ("decoder.fuse.conv.weight", &[7]),
        ("decoder.reduce.conv.weight", &[1]),
        ("aspp.project.conv.weight", &[0, 17]),
        ("aspp.2.conv.weight", &[4]),
        ("layer3.0.bn2.bias", &[0]),
        ("layer2.0.downsample.0.weight", &[3]),
        ("layer1.0.conv2.weight", &[10]),
        ("stem.bn.weight", &[2]),
        ("stem.conv.weight", &[0, 13]),
    ];
    let picks: Vec<(String, &[usize])> = picks
        .iter()
        .map(|(name, idx)| (format!("student.{name}"), *idx))
        .collect();
    let tol = Tolerance {
        eps: EPS,
        atol: ATOL,
        rtol: RTOL,
    };
    check_picked_gradients(&forward, &batch, &mut state, &loss, &picks, tol);
}
