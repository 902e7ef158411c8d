//! GCT's flaw-detector target (PixelSSL `ssl_gct.py`, `FDGTGenerator`) as graphs/gct.yaml
//! builds it — `error_map` → `blur_map { divisor: 8 }` → `max_pool2d { 3, 1, 1 }` (the dilation)
//! → `blur_map { divisor: 4 }` → `minmax_normalize` — on a hand-computed 8×8 example, and the
//! dilation identity the graph relies on: `nn.ReflectionPad2d(1)` + `MaxPool2d(3)` equals
//! `max_pool2d` with padding 1 (−∞ padding), because the reflected border repeats row 1, which
//! the window already holds.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::exec::run_cpu;
use flowseg_engine::graph::Env;
use flowseg_engine::ir;
use flowseg_engine::kernels::augment::reflect_index;
use flowseg_engine::kernels::testing::rand_vec;
use flowseg_engine::spec;
use flowseg_engine::{Tensor, TensorSpec};
use flowseg_ops::builtin_registry;
use std::collections::BTreeMap;

const TARGET: &str = "\
name: t
train: { iterations: 1, seed: 0 }
nodes:
  - { name: el, op: error_map, inputs: { probs: batch.probs, label: batch.label }, params: { mu: 0.5 } }
  - { name: el_blur, op: blur_map, inputs: { x: el.y }, params: { divisor: 8 } }
  - { name: el_dilate, op: max_pool2d, inputs: { x: el_blur.y }, params: { kernel: 3, stride: 1, padding: 1 } }
  - { name: el_reblur, op: blur_map, inputs: { x: el_dilate.y }, params: { divisor: 4 } }
  - { name: gt, op: minmax_normalize, inputs: { x: el_reblur.y } }
";

#[test]
fn the_flaw_target_of_one_wrong_pixel_by_hand() {
    // One 8×8 image, K = 2: the prediction is certain class 0 everywhere (p = [1, 0]); the label
    // is 0 except at (3, 3), where it is 1. Error map: μ·(|0 − 1| + |1 − 0|) = 1 at (3, 3), 0
    // elsewhere. Blur 8/8 = 1 → k = 1 (σ 0.5): scipy's one-tap filter is [1], the identity.
    // Dilation: a 3×3 block of ones at rows and columns 2..=4. Reblur 8/4 = 2 → k = 3, σ = 0.8:
    // scipy's taps [a, b, a] with radius ⌊4σ + 0.5⌋ = 3 and the tails folded back (reflect,
    // period 6): a = (w1 + w2)/T, b = (w0 + 2·w3)/T, w_j = exp(−j²/(2σ²)), T = w0 + 2(w1+w2+w3).
    // The block stays two pixels from every border, so the padding only reads zeros, and the
    // separable blur of the block is R(i)·R(j) with R = [0, a, a+b, 2a+b = 1, a+b, a, 0, 0].
    // Min 0, max 1 (at (3, 3)): the min–max normalisation divides by 1 + 1e-9.
    let (h, w) = (8usize, 8usize);
    let mut probs = vec![0f32; 2 * h * w];
    probs[..h * w].fill(1.0);
    let mut label = vec![0i32; h * w];
    label[3 * w + 3] = 1;
    let batch = BTreeMap::from([
        (
            "probs".to_owned(),
            Tensor::from_f32(&[1, 2, h, w], probs).unwrap(),
        ),
        (
            "label".to_owned(),
            Tensor::from_i32(&[1, h, w], label).unwrap(),
        ),
    ]);
    let env = Env {
        batch: batch
            .iter()
            .map(|(k, t)| (k.clone(), t.spec().clone()))
            .collect(),
        state: BTreeMap::new(),
        hidden: Default::default(),
    };
    let (spec, _) = spec::parse_graph(TARGET, &[]).unwrap();
    let g = ir::build(&spec, &builtin_registry().unwrap(), &env).unwrap();
    let state = BTreeMap::new();
    let run = run_cpu(&g, &batch, &state, 0, 0).unwrap();
    let got = run.get(&g.outputs["gt.y"]).unwrap().f32().unwrap().to_vec();

    let wj = |j: f64| (-j * j / (2.0 * 0.8f64 * 0.8)).exp();
    let total = wj(0.0) + 2.0 * (wj(1.0) + wj(2.0) + wj(3.0));
    let a = (wj(1.0) + wj(2.0)) / total;
    let b = (wj(0.0) + 2.0 * wj(3.0)) / total;
    let r = [0.0, a, a + b, 2.0 * a + b, a + b, a, 0.0, 0.0];
    assert!((r[3] - 1.0f64).abs() < 1e-12, "taps sum to 1");
    let mut want = vec![0f32; h * w];
    for i in 0..h {
        for j in 0..w {
            want[i * w + j] = (r[i] * r[j] / (1.0 + 1e-9)) as f32;
        }
    }
    for (k, (g, e)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - e).abs() <= 1e-6,
            "pixel ({}, {}): got {g}, want {e}\n{got:?}",
            k / w,
            k % w
        );
    }
    // The intermediate maps, as described: the identity blur and the 3×3 dilation.
    let dilated = run.get(&g.outputs["el_dilate.y"]).unwrap().f32().unwrap();
    for i in 0..h {
        for j in 0..w {
            let inside = (2..=4).contains(&i) && (2..=4).contains(&j);
            assert_eq!(
                dilated[i * w + j],
                f32::from(u8::from(inside)),
                "({i}, {j})"
            );
        }
    }
}

#[test]
fn the_dilation_is_reflection_pad_then_max_pool() {
    // max_pool2d { kernel: 3, stride: 1, padding: 1 } against the definition: ReflectionPad2d(1)
    // (index −1 → 1, H → H − 2) then the 3×3 maximum, on random maps of odd and even sizes.
    for (h, w) in [(5usize, 7usize), (8, 8), (2, 3)] {
        let x: Vec<f32> = rand_vec(7, 2 * h * w, -1.0, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let batch = BTreeMap::from([(
            "x".to_owned(),
            Tensor::from_f32(&[2, 1, h, w], x.clone()).unwrap(),
        )]);
        let env = Env {
            batch: BTreeMap::from([("x".to_owned(), TensorSpec::f32(&[2, 1, h, w]))]),
            state: BTreeMap::new(),
            hidden: Default::default(),
        };
        let yaml = "name: t\ntrain: { iterations: 1, seed: 0 }\nnodes:\n  - { name: d, op: max_pool2d, inputs: { x: batch.x }, params: { kernel: 3, stride: 1, padding: 1 } }\n";
        let (spec, _) = spec::parse_graph(yaml, &[]).unwrap();
        let g = ir::build(&spec, &builtin_registry().unwrap(), &env).unwrap();
        let state = BTreeMap::new();
        let run = run_cpu(&g, &batch, &state, 0, 0).unwrap();
        let got = run.get(&g.outputs["d.y"]).unwrap().f32().unwrap();
        for n in 0..2 {
            let plane = &x[n * h * w..(n + 1) * h * w];
            for i in 0..h {
                for j in 0..w {
                    let mut m = f32::NEG_INFINITY;
                    for di in -1isize..=1 {
                        for dj in -1isize..=1 {
                            let (ii, jj) = (
                                reflect_index(i as isize + di, h),
                                reflect_index(j as isize + dj, w),
                            );
                            m = m.max(plane[ii * w + jj]);
                        }
                    }
                    assert_eq!(got[n * h * w + i * w + j], m, "{h}×{w} ({n}, {i}, {j})");
                }
            }
        }
    }
}
