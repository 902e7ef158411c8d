//! PseudoSeg's two heads, `cam_classifier` and `sgc_head`, traced through a real graph (the
//! classifier on a feature map, its CAMs normalised, the SGC head on a hypercolumn and those
//! CAMs): the shapes of their ports, their state names and shapes (the official module paths),
//! the error for CAMs that do not match the class count, and a whole-head finite-difference
//! check of a few parameters of each (`ir::build` → `autodiff::differentiate` → `exec::run_cpu`):
//! the SGC head through its attention, background, 1×1 conv and batch norm (TF-slim's, without a
//! learned scale, by default; PyTorch's with `bn: torch`); the classifier through its pooled
//! logits.
//!
//! Not here: the Grad-CAM identity (grad_cam.rs), the ops' own checks (their files and the
//! gradient suite), the whole method (tests/graphs.rs trains graphs/pseudoseg.yaml).

mod suite;

use flowseg_engine::graph::{Env, Graph, ValueRef};
use flowseg_engine::kernels::testing::{rand_index, rand_vec};
use flowseg_engine::op::params_of;
use flowseg_engine::{ir, spec, Tensor, TensorSpec};
use flowseg_ops::builtin_registry;
use flowseg_ops::forward::batch_norm::BatchNorm;
use std::collections::BTreeMap;
use suite::picked::{check_picked_gradients, Tolerance};

/// K = 4 classes (3 CAMs), 2 images of 4×5 positions, 6 feature and 7 hypercolumn channels.
const K: usize = 4;
const N: usize = 2;
const H: usize = 4;
const W: usize = 5;
const D: usize = 6;
const DH: usize = 7;

const EPS: f32 = 1e-2;
const ATOL: f64 = 3e-4;
const RTOL: f64 = 2e-2;

fn yaml(cam_channels_from: &str) -> String {
    yaml_bn(cam_channels_from, "slim")
}

/// The test graph with the SGC head's batch norm of kind `bn` (`slim` or `torch`).
fn yaml_bn(cam_channels_from: &str, bn: &str) -> String {
    format!(
        "name: heads\ntrain: {{ iterations: 1 }}\nmodels:\n\
         \x20 cls: {{ arch: cam_classifier, params: {{ classes: {K} }} }}\n\
         \x20 sgc: {{ arch: sgc_head, params: {{ classes: {K}, attention_dim: 3, bn: {bn} }} }}\n\
         nodes:\n\
         \x20 - {{ name: f, op: forward, inputs: {{ features: batch.feat }}, params: {{ model: cls }} }}\n\
         \x20 - {{ name: cam, op: cam_normalize, inputs: {{ scores: f.scores, labels: batch.labels }} }}\n\
         \x20 - {{ name: s, op: forward, inputs: {{ hyper: batch.hyper, cam: {cam_channels_from} }}, params: {{ model: sgc }} }}\n\
         \x20 - {{ name: ce, op: cross_entropy, inputs: {{ logits: s.logits, target: batch.target }} }}\n\
         \x20 - {{ name: bce, op: binary_cross_entropy, inputs: {{ logits: f.logits, target: batch.labels }} }}\n"
    )
}

fn batch() -> BTreeMap<String, Tensor> {
    let f32s = |shape: &[usize], seed: u64, lo: f64, hi: f64| {
        let n = shape.iter().product();
        let v = rand_vec(seed, n, lo, hi).into_iter().map(|x| x as f32);
        Tensor::from_f32(shape, v.collect()).expect("shape")
    };
    // Labels: image 0 has classes 1 and 3, image 1 has class 2.
    let labels = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
    BTreeMap::from([
        ("feat".to_owned(), f32s(&[N, D, H, W], 1, -1.0, 1.0)),
        ("hyper".to_owned(), f32s(&[N, DH, H, W], 2, -1.0, 1.0)),
        (
            "labels".to_owned(),
            Tensor::from_f32(&[N, K - 1, 1, 1], labels.to_vec()).expect("shape"),
        ),
        ("other".to_owned(), f32s(&[N, K - 2, H, W], 3, 0.0, 1.0)),
        (
            "target".to_owned(),
            Tensor::from_i32(&[N, H, W], rand_index(4, N * H * W, K)).expect("shape"),
        ),
    ])
}

fn env(batch: &BTreeMap<String, Tensor>) -> Env {
    Env {
        batch: batch
            .iter()
            .map(|(k, t)| (k.clone(), t.spec().clone()))
            .collect(),
        ..Env::default()
    }
}

fn build(yaml: &str) -> Result<Graph, String> {
    let (spec, _) = spec::parse_graph(yaml, &[]).unwrap_or_else(|e| panic!("{yaml}\n{e:#?}"));
    ir::build(
        &spec,
        &builtin_registry().expect("registers"),
        &env(&batch()),
    )
    .map_err(|e| format!("{e:#?}"))
}

fn value(g: &Graph, name: &str) -> ValueRef {
    g.outputs
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("no value `{name}`"))
}

#[test]
fn ports_and_state_have_the_documented_shapes() {
    for bn in ["slim", "torch"] {
        ports_and_state_of(bn);
    }
}

fn ports_and_state_of(bn: &str) {
    let g = build(&yaml_bn("cam.y", bn)).expect("builds");
    let spec = |name: &str| g.spec_of(&value(&g, name)).cloned().expect("spec");
    assert_eq!(spec("f.logits"), TensorSpec::f32(&[N, K - 1, 1, 1]));
    assert_eq!(spec("f.scores"), TensorSpec::f32(&[N, K - 1, H, W]));
    assert_eq!(spec("s.logits"), TensorSpec::f32(&[N, K, H, W]));
    let state: BTreeMap<&str, (&[usize], bool)> = g
        .params
        .iter()
        .map(|(k, d)| (k.as_str(), (&d.spec.shape[..], d.trainable)))
        .collect();
    let want: BTreeMap<&str, (&[usize], bool)> = BTreeMap::from([
        ("cls.cls.weight", (&[K - 1, D, 1, 1][..], true)),
        ("cls.cls.bias", (&[K - 1][..], true)),
        ("sgc.hyper_column.key.weight", (&[3, DH, 1, 1][..], true)),
        ("sgc.hyper_column.query.weight", (&[3, DH, 1, 1][..], true)),
        (
            "sgc.pixel_normalization.conv.weight",
            (&[K, K, 1, 1][..], true),
        ),
        // TF-slim's default batch norm has no learned scale: γ is a constant buffer of ones.
        (
            "sgc.pixel_normalization.bn.weight",
            (&[K][..], bn == "torch"),
        ),
        ("sgc.pixel_normalization.bn.bias", (&[K][..], true)),
        ("sgc.pixel_normalization.bn.running_mean", (&[K][..], false)),
        ("sgc.pixel_normalization.bn.running_var", (&[K][..], false)),
    ]);
    assert_eq!(state, want);
}

#[test]
fn cams_that_do_not_match_the_classes_are_refused() {
    let e = build(&yaml("batch.other")).expect_err("2 maps for K = 4");
    assert!(
        e.contains("`cam` must hold the 3 foreground maps of K = 4 classes, got 2 channels"),
        "{e}"
    );
}

/// The batch norm's ε in the SGC head's graph, per `bn` kind.
#[test]
fn the_slim_batch_norm_uses_its_epsilon() {
    for (bn, want) in [("slim", 1e-3), ("torch", 1e-5)] {
        let g = build(&yaml_bn("cam.y", bn)).expect("builds");
        let eps: Vec<f64> = g
            .nodes
            .iter()
            .filter_map(|n| params_of::<BatchNorm>(n.op.as_ref()).map(|p| p.eps))
            .collect();
        assert_eq!(eps, [want], "{bn}");
    }
}

/// d `loss` / d each picked parameter entry, analytic against central differences.
fn check(loss_node: &str, picks: &[(&str, &[usize])]) {
    check_bn(loss_node, "slim", picks)
}

fn check_bn(loss_node: &str, bn: &str, picks: &[(&str, &[usize])]) {
    let forward = build(&yaml_bn("cam.y", bn)).expect("builds");
    let loss = value(&forward, &format!("{loss_node}.loss"));
    let batch = batch();
    let mut state: BTreeMap<String, Tensor> = forward
        .params
        .iter()
        .enumerate()
        .map(|(i, (name, d))| (name.clone(), d.init.tensor(&d.spec, 3, i as u64)))
        .collect();
    let picks: Vec<(String, &[usize])> = picks.iter().map(|(n, i)| ((*n).to_owned(), *i)).collect();
    let tol = Tolerance {
        eps: EPS,
        atol: ATOL,
        rtol: RTOL,
    };
    let nonzero = check_picked_gradients(&forward, &batch, &mut state, &loss, &picks, tol);
    assert!(nonzero > 0, "every checked gradient of {loss_node} is 0");
}

#[test]
fn sgc_head_gradients_match_finite_differences() {
    check(
        "ce",
        &[
            ("sgc.hyper_column.key.weight", &[0, 10, 20]),
            ("sgc.hyper_column.query.weight", &[1, 9, 19]),
            ("sgc.pixel_normalization.conv.weight", &[0, 5, 15]),
            ("sgc.pixel_normalization.bn.bias", &[1, 2]),
        ],
    );
    check_bn(
        "ce",
        "torch",
        &[
            ("sgc.pixel_normalization.conv.weight", &[0, 5, 15]),
            ("sgc.pixel_normalization.bn.weight", &[0, 3]),
            ("sgc.pixel_normalization.bn.bias", &[1, 2]),
        ],
    );
}

#[test]
fn cam_classifier_gradients_match_finite_differences() {
    check(
        "bce",
        &[
            ("cls.cls.weight", &[0, 7, 17]),
            ("cls.cls.bias", &[0, 1, 2]),
        ],
    );
}
