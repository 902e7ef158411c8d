//! CCT's I-VAT direction (graphs/cct.yaml, the `vat1_*` nodes) against a central finite-difference
//! estimate: the `grad` of KL(p₀ ‖ softmax(aux(h + r))) — written as `soft_cross_entropy` against
//! the detached p₀ — with respect to the perturbed features h + r, and its `l2_normalize`d
//! direction, both compared with the gradient obtained by nudging each element of r by ±ε and
//! re-running the forward graph. The auxiliary decoder is the shipped `cct_head` with random
//! weights. A sign error, a missing softmax term or a normalisation over the wrong axis in the
//! composite would each fail here.
//!
//! Why r is a batch input and not `random_direction`: the finite difference must perturb exactly
//! the value the gradient is taken against, with p₀ held at the unperturbed features; r is drawn
//! once in the test (random_direction's draws have their own test in its file).
//! r is large (norm ~1 per element, not CCT's xi): the direction is a property of the composite
//! at any point, and a large r keeps the loss far above f32 rounding so the estimate is sharp.
//!
//! Not here: the xi-scale numerics (graphs/cct.yaml's header has the measurement), the op's own
//! gradient case (ops/tests/gradients.rs).

use flowseg_engine::graph::Env;
use flowseg_engine::kernels::testing::rand_vec;
use flowseg_engine::{exec, ir, spec, Tensor};
use flowseg_ops::builtin_registry;
use std::collections::BTreeMap;

const N: usize = 2;
const C: usize = 4;
const H: usize = 3;
const W: usize = 3;
const CLASSES: usize = 3;
/// The direction's norm per sample, as `l2_normalize { scale }` in the graph.
const SCALE: f64 = 2.0;

fn f32s(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f32(shape, v.iter().map(|&x| x as f32).collect()).expect("shape matches")
}

struct Composite {
    graph: flowseg_engine::graph::Graph,
    state: BTreeMap<String, Tensor>,
    h: Vec<f64>,
}

impl Composite {
    fn new() -> Self {
        let yaml = format!(
            "name: ivat\ntrain: {{ iterations: 1 }}\n\
             models:\n  aux: {{ arch: cct_head, params: {{ classes: {CLASSES} }} }}\n\
             nodes:\n\
             \x20 - {{ name: f0, op: forward, inputs: {{ features: batch.h }}, params: {{ model: aux }} }}\n\
             \x20 - {{ name: s0, op: softmax, inputs: {{ x: f0.logits }} }}\n\
             \x20 - {{ name: p0, op: detach, inputs: {{ x: s0.y }} }}\n\
             \x20 - {{ name: hx, op: add, inputs: {{ a: batch.h, b: batch.r }} }}\n\
             \x20 - {{ name: f1, op: forward, inputs: {{ features: hx.y }}, params: {{ model: aux }} }}\n\
             \x20 - {{ name: kl, op: soft_cross_entropy, inputs: {{ logits: f1.logits, target: p0.y }} }}\n\
             \x20 - {{ name: g, op: grad, inputs: {{ of: kl.loss, wrt: hx.y }} }}\n\
             \x20 - {{ name: dir, op: l2_normalize, inputs: {{ x: g.grad }}, params: {{ scale: {SCALE} }} }}\n"
        );
        let (spec, _) = spec::parse_graph(&yaml, &[]).expect("the test graph parses");
        let features = [N, C, H, W];
        let probe = BTreeMap::from([
            ("h".to_owned(), f32s(&features, &vec![0.0; N * C * H * W])),
            ("r".to_owned(), f32s(&features, &vec![0.0; N * C * H * W])),
        ]);
        let env = Env {
            batch: probe
                .iter()
                .map(|(k, t)| (k.clone(), t.spec().clone()))
                .collect(),
            ..Env::default()
        };
        let registry = builtin_registry().expect("built-in ops register");
        let graph = ir::build(&spec, &registry, &env).expect("the test graph builds");
        let state = graph
            .state
            .iter()
            .enumerate()
            .map(|(i, (name, s))| {
                let n = s.shape.iter().product();
                let w = rand_vec(40 + i as u64, n, -1.5, 1.5);
                (name.clone(), f32s(&s.shape, &w))
            })
            .collect();
        let h = rand_vec(3, N * C * H * W, -1.0, 1.0);
        Composite { graph, state, h }
    }

    /// The values of `outputs` for perturbation `r`.
    fn run(&self, r: &[f64], outputs: &[&str]) -> Vec<Vec<f32>> {
        let features = [N, C, H, W];
        let batch = BTreeMap::from([
            ("h".to_owned(), f32s(&features, &self.h)),
            ("r".to_owned(), f32s(&features, r)),
        ]);
        let run = exec::run_cpu(&self.graph, &batch, &self.state, 0, 0).expect("the graph runs");
        outputs
            .iter()
            .map(|name| {
                run.get(&self.graph.outputs[*name])
                    .and_then(Tensor::f32)
                    .expect("an f32 value")
                    .to_vec()
            })
            .collect()
    }
}

#[test]
fn ivat_direction_matches_a_finite_difference_estimate() {
    let c = Composite::new();
    let r = rand_vec(5, N * C * H * W, -1.0, 1.0);
    let got = c.run(&r, &["kl.loss", "g.grad", "dir.y"]);
    let (loss, grad, dir) = (got[0][0], &got[1], &got[2]);
    // Not vacuous: the perturbed prediction differs from p₀ by a margin far above rounding.
    assert!(loss.is_finite() && loss > 0.05, "KL surrogate {loss}");

    let eps = 1e-2;
    let fd: Vec<f64> = (0..r.len())
        .map(|i| {
            let mut plus = r.clone();
            plus[i] += eps;
            let mut minus = r.clone();
            minus[i] -= eps;
            let up = f64::from(c.run(&plus, &["kl.loss"])[0][0]);
            let down = f64::from(c.run(&minus, &["kl.loss"])[0][0]);
            (up - down) / (2.0 * eps)
        })
        .collect();

    let largest = fd.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        largest > 1e-3,
        "a degenerate test point: FD gradient {fd:?}"
    );
    for (i, (&g, &e)) in grad.iter().zip(&fd).enumerate() {
        assert!(
            (f64::from(g) - e).abs() <= 2e-3 * largest + 1e-5,
            "element {i}: grad op {g} vs finite difference {e}\ngrad {grad:?}\nfd {fd:?}"
        );
    }

    // The direction: per sample, the finite-difference gradient scaled to norm SCALE.
    let per_sample = C * H * W;
    for n in 0..N {
        let part = &fd[n * per_sample..(n + 1) * per_sample];
        let norm = part.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(norm > 1e-4, "sample {n}: FD gradient norm {norm}");
        let mut cos = 0.0;
        for (j, &e) in part.iter().enumerate() {
            let want = SCALE * e / norm;
            let have = f64::from(dir[n * per_sample + j]);
            cos += have * want / (SCALE * SCALE);
            assert!(
                (have - want).abs() <= 5e-3 * SCALE,
                "sample {n}, element {j}: direction {have} vs finite difference {want}"
            );
        }
        assert!(cos > 0.9999, "sample {n}: cosine {cos}");
    }
}
