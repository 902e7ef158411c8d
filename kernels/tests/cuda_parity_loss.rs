//! Parity of the CUDA losses (kernels/src/cuda/loss.rs: cross entropy on hard labels, soft cross
//! entropy, squared error, binary cross entropy, forward and backward) with kernels/src/loss.rs
//! on random inputs, at odd sizes and realistic ones (a VOC-like batch, 8×21×128×128 maps), for
//! every denominator, with and without weights or masks.
//!
//! Tolerances: loss values to f32 rounding (f64 totals in another order; CUDA's expf/logf, not
//! libm, where a softmax is involved); squared-error gradients bit-identical given the same D;
//! cross-entropy and soft-CE gradients a few ulp, scaled by the largest gradient. Each test
//! names its tolerance.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda::{self, DeviceBuf};
use flowseg_kernels::loss::{self, CrossEntropyParams, Denominator};
use flowseg_kernels::Nchw;

/// (shape, with weight, ignore fraction) cases: odd sizes and a realistic VOC-like batch.
fn ce_cases() -> Vec<(Nchw, bool, f32)> {
    vec![
        (Nchw::new(1, 1, 1, 1), false, 0.0),
        (Nchw::new(2, 19, 33, 47), false, 0.1),
        (Nchw::new(3, 21, 17, 29), true, 0.2),
        (Nchw::new(8, 21, 128, 128), true, 0.1),
        (Nchw::new(2, 5, 7, 9), true, 1.0),
    ]
}

#[test]
fn cross_entropy_fwd_and_bwd_match_cpu() {
    let Some(dev) = device() else { return };
    let ignore = 255;
    let denominators = [
        Denominator::ValidPixels,
        Denominator::AllPixels,
        Denominator::AllElements,
        Denominator::WeightSum,
        Denominator::Constant(123.0),
    ];
    for (shape, weighted, ignore_frac) in ce_cases() {
        let pixels = shape.n * shape.plane();
        let x = uniform(10, shape.len(), -8.0, 8.0);
        let t = labels(11, pixels, shape.c, ignore, ignore_frac);
        // Some zero weights: those pixels must contribute nothing.
        let w: Vec<f32> = uniform(12, pixels, -0.3, 1.0)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let (dx, dt, dw) = (up(&dev, &x), up(&dev, &t), up(&dev, &w));
        let weight_cpu = weighted.then_some(&w[..]);
        for d in denominators {
            let params = CrossEntropyParams {
                ignore_index: ignore,
                denominator: d,
            };
            let what = format!("{shape:?} weighted={weighted} {d:?}");
            let mut loss = up(&dev, &[0f32]);
            let mut pl = up(&dev, &vec![0f32; pixels]);
            let weight_gpu = weighted.then_some(&dw as &dyn cuda::DeviceBuf<f32>);
            cuda::loss::cross_entropy_fwd(
                &dev,
                &dx,
                &dt,
                weight_gpu,
                shape,
                params,
                Some(&mut pl),
                &mut loss,
            )
            .unwrap();
            let mut pl_cpu = vec![0f32; pixels];
            let l_cpu =
                loss::cross_entropy_fwd(&x, &t, weight_cpu, shape, params, Some(&mut pl_cpu))
                    .unwrap();
            close(
                &format!("ce_fwd loss {what}"),
                &down(&dev, &loss),
                &[l_cpu],
                1e-6,
                1e-5,
            );
            close(
                &format!("ce_fwd pixel_loss {what}"),
                &down(&dev, &pl),
                &pl_cpu,
                1e-5,
                1e-5,
            );

            let dloss = up(&dev, &[0.7f32]);
            let mut g = up(&dev, &vec![f32::NAN; shape.len()]);
            cuda::loss::cross_entropy_bwd(
                &dev, &dx, &dt, weight_gpu, shape, params, &dloss, &mut g,
            )
            .unwrap();
            let mut g_cpu = vec![0f32; shape.len()];
            loss::cross_entropy_bwd(&x, &t, weight_cpu, shape, params, 0.7, &mut g_cpu).unwrap();
            let scale = g_cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
            close(
                &format!("ce_bwd {what}"),
                &down(&dev, &g),
                &g_cpu,
                1e-6 * scale,
                1e-5,
            );
        }
    }
}

#[test]
fn cross_entropy_bad_target_gives_nan_loss() {
    let Some(dev) = device() else { return };
    let shape = Nchw::new(1, 3, 1, 4);
    let x = uniform(1, shape.len(), -1.0, 1.0);
    let (dx, dt) = (up(&dev, &x), up(&dev, &[0i32, 1, 7, 2]));
    let mut loss = up(&dev, &[0f32]);
    cuda::loss::cross_entropy_fwd(
        &dev,
        &dx,
        &dt,
        None,
        shape,
        CrossEntropyParams::default(),
        None,
        &mut loss,
    )
    .unwrap();
    assert!(down(&dev, &loss)[0].is_nan());
}

/// Odd shapes and a realistic one (the loss maps: 8 images, 21 classes, 128×128).
const SHAPES: &[Nchw] = &[
    Nchw::new(1, 1, 1, 1),
    Nchw::new(3, 5, 17, 23),
    Nchw::new(2, 19, 33, 47),
    Nchw::new(8, 21, 128, 128),
];

const DENOMINATORS: [Denominator; 5] = [
    Denominator::ValidPixels,
    Denominator::AllPixels,
    Denominator::AllElements,
    Denominator::WeightSum,
    Denominator::Constant(123.0),
];

/// A [N,H,W] mask in [0, 1] with about a quarter exact zeros.
fn mask_for(seed: u64, pixels: usize) -> Vec<f32> {
    uniform(seed, pixels, -0.33, 1.0)
        .into_iter()
        .map(|v| v.max(0.0))
        .collect()
}

/// Largest |v|, so gradient tolerances scale with the gradients.
fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Soft CE and squared error, forward and backward, with and without a mask, for every
/// denominator. Loss values: rtol 1e-5 (f64 totals in another order; soft CE also through CUDA's
/// expf/log). Gradients: squared error bit-identical when D is an exact count or constant, rtol
/// 1e-6 with WeightSum (Σ mask in another order); soft CE atol 1e-6·max|g| + rtol 1e-5.
#[test]
fn masked_losses_match_cpu() {
    let Some(dev) = device() else { return };
    for (i, &s) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let pixels = s.n * s.plane();
        let logits = uniform(seed, s.len(), -8.0, 8.0);
        let q = uniform(seed + 1, s.len(), 0.0, 1.0);
        let a = uniform(seed + 2, s.len(), -1.0, 1.0);
        let b = uniform(seed + 3, s.len(), -1.0, 1.0);
        let m = mask_for(seed + 6, pixels);
        let g = |v: &[f32]| up(&dev, v);
        let (glogits, gq, ga, gb, gm) = (g(&logits), g(&q), g(&a), g(&b), g(&m));
        let dloss_host = 0.7f32;
        let dloss = up(&dev, &[dloss_host]);
        for masked in [false, true] {
            let mask_cpu = masked.then_some(&m[..]);
            let mask_gpu = masked.then_some(&gm as &dyn DeviceBuf<f32>);
            for d in DENOMINATORS {
                let tag = format!("{s:?} masked={masked} {d:?}");
                let mut gl = zeros(&dev, 1);

                cuda::loss::soft_cross_entropy_fwd(&dev, &glogits, &gq, mask_gpu, s, d, &mut gl)
                    .unwrap();
                let l = loss::soft_cross_entropy_fwd(&logits, &q, mask_cpu, s, d).unwrap();
                close(
                    &format!("soft_ce_fwd {tag}"),
                    &down(&dev, &gl),
                    &[l],
                    1e-6,
                    1e-5,
                );
                let mut gg = up(&dev, &vec![f32::NAN; s.len()]);
                cuda::loss::soft_cross_entropy_bwd(
                    &dev, &glogits, &gq, mask_gpu, s, d, &dloss, &mut gg,
                )
                .unwrap();
                let mut gc = vec![0f32; s.len()];
                loss::soft_cross_entropy_bwd(&logits, &q, mask_cpu, s, d, dloss_host, &mut gc)
                    .unwrap();
                close(
                    &format!("soft_ce_bwd {tag}"),
                    &down(&dev, &gg),
                    &gc,
                    1e-6 * max_abs(&gc),
                    1e-5,
                );

                cuda::loss::squared_error_fwd(&dev, &ga, &gb, mask_gpu, s, d, &mut gl).unwrap();
                let l = loss::squared_error_fwd(&a, &b, mask_cpu, s, d).unwrap();
                close(
                    &format!("squared_error_fwd {tag}"),
                    &down(&dev, &gl),
                    &[l],
                    1e-6,
                    1e-5,
                );
                let (mut gda, mut gdb) = (zeros(&dev, s.len()), zeros(&dev, s.len()));
                cuda::loss::squared_error_bwd(
                    &dev,
                    &ga,
                    &gb,
                    mask_gpu,
                    s,
                    d,
                    &dloss,
                    Some(&mut gda),
                    Some(&mut gdb),
                )
                .unwrap();
                let (mut da, mut db) = (vec![0f32; s.len()], vec![0f32; s.len()]);
                loss::squared_error_bwd(
                    &a,
                    &b,
                    mask_cpu,
                    s,
                    d,
                    dloss_host,
                    Some(&mut da),
                    Some(&mut db),
                )
                .unwrap();
                let inexact_d = masked && d == Denominator::WeightSum;
                for (name, gpu, cpu) in [("da", &gda, &da), ("db", &gdb, &db)] {
                    let what = format!("squared_error_bwd {name} {tag}");
                    if inexact_d {
                        close(&what, &down(&dev, gpu), cpu, 0.0, 1e-6);
                    } else {
                        exact(&what, &down(&dev, gpu), cpu);
                    }
                }
            }
        }
    }
}

/// An all-zero mask makes D = 0 for ValidPixels and WeightSum: loss 0 and gradients exactly 0,
/// as on the CPU; a bad constant is the CPU's error.
#[test]
fn masked_losses_zero_denominator_and_errors() {
    let Some(dev) = device() else { return };
    let s = Nchw::new(2, 3, 5, 7);
    let (ga, gb) = (
        up(&dev, &uniform(1, s.len(), -1.0, 1.0)),
        up(&dev, &uniform(2, s.len(), -1.0, 1.0)),
    );
    let gm = zeros(&dev, s.n * s.plane());
    let mask = Some(&gm as &dyn DeviceBuf<f32>);
    let dloss = up(&dev, &[1f32]);
    for d in [Denominator::ValidPixels, Denominator::WeightSum] {
        let mut gl = up(&dev, &[f32::NAN]);
        cuda::loss::squared_error_fwd(&dev, &ga, &gb, mask, s, d, &mut gl).unwrap();
        exact(&format!("zero-D loss {d:?}"), &down(&dev, &gl), &[0.0]);
        let mut gg = up(&dev, &vec![f32::NAN; s.len()]);
        cuda::loss::soft_cross_entropy_bwd(&dev, &ga, &gb, mask, s, d, &dloss, &mut gg).unwrap();
        exact(
            &format!("zero-D grad {d:?}"),
            &down(&dev, &gg),
            &vec![0f32; s.len()],
        );
    }
    let mut gl = zeros(&dev, 1);
    let err = cuda::loss::squared_error_fwd(
        &dev,
        &ga,
        &gb,
        None,
        s,
        Denominator::Constant(-1.0),
        &mut gl,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Denominator::Constant(-1) must be finite"),
        "{err}"
    );
}

#[test]
fn binary_cross_entropy_matches_cpu() {
    let Some(dev) = device() else { return };
    for len in [1, 255, 257, 8 * 20, 100_003] {
        let x = uniform(100, len, -20.0, 20.0);
        let t: Vec<f32> = uniform(101, len, 0.0, 1.0)
            .iter()
            .map(|&u| if u < 0.5 { 1.0 } else { 0.0 })
            .collect();
        let (dx_, dt) = (up(&dev, &x), up(&dev, &t));
        let mut l = up(&dev, &[f32::NAN]);
        cuda::loss::binary_cross_entropy_fwd(&dev, &dx_, &dt, &mut l).unwrap();
        let want = loss::binary_cross_entropy_fwd(&x, &t).unwrap();
        close(
            &format!("binary_cross_entropy_fwd len={len}"),
            &down(&dev, &l),
            &[want],
            0.0,
            1e-6,
        );
        let mut g = up(&dev, &vec![f32::NAN; len]);
        let mut g_cpu = vec![0f32; len];
        cuda::loss::binary_cross_entropy_bwd(&dev, &dx_, &dt, &up(&dev, &[1.5f32]), &mut g)
            .unwrap();
        loss::binary_cross_entropy_bwd(&x, &t, 1.5, &mut g_cpu).unwrap();
        close(
            &format!("binary_cross_entropy_bwd len={len}"),
            &down(&dev, &g),
            &g_cpu,
            1e-9,
            1e-5,
        );
    }
}
