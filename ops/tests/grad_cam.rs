//! PseudoSeg's Grad-CAM, two ways: `cam_normalize` of `cam_classifier`'s dense class map against
//! Grad-CAM computed literally with the engine's `grad` op (the gradient of one class logit with
//! respect to the feature map, its spatial mean as channel weights, ReLU of the weighted sum,
//! divided by its maximum), on a random toy feature map. They must agree to f32 rounding: the
//! identity ops/src/models/cam_classifier.rs argues (GAP + linear head ⇒ Grad-CAM = normalised
//! class activation map), which is what lets graphs/pseudoseg.yaml use one node for every class.
//!
//! Not here: the ops' own hand-computed values (in their files).

use flowseg_engine::graph::{Env, ValueRef};
use flowseg_engine::kernels::testing::rand_vec;
use flowseg_engine::{exec, ir, spec, Tensor};
use flowseg_ops::builtin_registry;
use std::collections::BTreeMap;

const N: usize = 2;
const D: usize = 5;
const H: usize = 3;
const W: usize = 4;
/// K = 4 classes: 3 foreground maps.
const CLASSES: usize = 4;
const FOREGROUND: usize = CLASSES - 1;

fn f32s(shape: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_f32(shape, v.into_iter().map(|x| x as f32).collect()).expect("shape matches")
}

/// Grad-CAM of class `c` both ways: (from `grad`, from `cam_normalize`), each [N, H·W].
fn both_ways(c: usize) -> (Vec<f32>, Vec<f32>) {
    let yaml = format!(
        "name: grad_cam\ntrain: {{ iterations: 1 }}\n\
         models:\n  cls: {{ arch: cam_classifier, params: {{ classes: {CLASSES} }} }}\n\
         nodes:\n\
         \x20 - {{ name: a, op: relu, inputs: {{ x: batch.x }} }}\n\
         \x20 - {{ name: fwd, op: forward, inputs: {{ features: a.y }}, params: {{ model: cls }} }}\n\
         \x20 - {{ name: pick, op: mul, inputs: {{ a: fwd.logits, b: batch.onehot }} }}\n\
         \x20 - {{ name: score, op: mean, inputs: {{ x: pick.y }} }}\n\
         \x20 - {{ name: g, op: grad, inputs: {{ of: score.y, wrt: a.y }} }}\n\
         \x20 - {{ name: cam, op: cam_normalize, inputs: {{ scores: fwd.scores, labels: batch.labels }} }}\n"
    );
    let (spec, _) = spec::parse_graph(&yaml, &[]).expect("the test graph parses");
    let mut batch = BTreeMap::new();
    batch.insert(
        "x".to_owned(),
        f32s(&[N, D, H, W], rand_vec(7, N * D * H * W, -1.0, 1.0)),
    );
    let onehot: Vec<f64> = (0..N * FOREGROUND)
        .map(|i| if i % FOREGROUND == c { 1.0 } else { 0.0 })
        .collect();
    batch.insert("onehot".to_owned(), f32s(&[N, FOREGROUND, 1, 1], onehot));
    batch.insert(
        "labels".to_owned(),
        f32s(&[N, FOREGROUND, 1, 1], vec![1.0; N * FOREGROUND]),
    );
    let env = Env {
        batch: batch
            .iter()
            .map(|(k, t)| (k.clone(), t.spec().clone()))
            .collect(),
        ..Env::default()
    };
    let registry = builtin_registry().expect("built-in ops register");
    let g = ir::build(&spec, &registry, &env).expect("the test graph builds");
    // Random classifier weights (a non-zero bias too: it must not matter).
    let state: BTreeMap<String, Tensor> = g
        .state
        .iter()
        .enumerate()
        .map(|(i, (name, s))| {
            let n = s.shape.iter().product();
            (
                name.clone(),
                f32s(&s.shape, rand_vec(20 + i as u64, n, -1.0, 1.0)),
            )
        })
        .collect();
    let run = exec::run_cpu(&g, &batch, &state, 0, 0).expect("the graph runs");
    let value = |name: &str| -> Vec<f32> {
        let v: &ValueRef = &g.outputs[name];
        run.get(v)
            .and_then(Tensor::f32)
            .expect("f32 value")
            .to_vec()
    };
    let (a, grad, cam) = (value("a.y"), value("g.grad"), value("cam.y"));
    let plane = H * W;
    let mut literal = Vec::with_capacity(N * plane);
    for n in 0..N {
        // α_k = mean over the plane of d score / d A_k; map = ReLU(Σ_k α_k·A_k) / its max.
        let mut map = vec![0f64; plane];
        for k in 0..D {
            let base = (n * D + k) * plane;
            let alpha: f64 = grad[base..base + plane]
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / plane as f64;
            for (m, &v) in map.iter_mut().zip(&a[base..base + plane]) {
                *m += alpha * f64::from(v);
            }
        }
        let map: Vec<f64> = map.into_iter().map(|v| v.max(0.0)).collect();
        let max = map.iter().copied().fold(0.0, f64::max);
        assert!(max > 0.0, "a degenerate test map for class {c}, image {n}");
        literal.extend(map.iter().map(|v| (v / max) as f32));
    }
    let ours: Vec<f32> = (0..N)
        .flat_map(|n| {
            let base = (n * FOREGROUND + c) * plane;
            cam[base..base + plane].to_vec()
        })
        .collect();
    (literal, ours)
}

#[test]
fn cam_normalize_of_the_class_map_is_grad_cam() {
    for c in 0..FOREGROUND {
        let (literal, ours) = both_ways(c);
        for (i, (l, o)) in literal.iter().zip(&ours).enumerate() {
            assert!(
                (l - o).abs() <= 1e-5,
                "class {c}, element {i}: Grad-CAM {l} vs cam_normalize {o}\n{literal:?}\n{ours:?}"
            );
        }
        // Not vacuous: each map has its maximum 1 and some pixel strictly between 0 and 1.
        assert!(ours.contains(&1.0), "{ours:?}");
        assert!(ours.iter().any(|&v| v > 0.0 && v < 1.0), "{ours:?}");
    }
}
