//! Parity of the second batch of CUDA twins (leaky relu, threshold, concat/slice, dropout, soft
//! CE / squared error / KL, dot, channel reductions) with their CPU
//! references on random inputs, at odd sizes (not multiples of the 256-thread block) and
//! realistic ones.
//!
//! Tolerances: bit-identical where the kernel does the CPU's exact f32 operations under
//! --fmad=false (leaky relu, threshold, every copy, dropout masks and outputs, channel sums and
//! means, squared-error gradients given the same D); f32 rounding for the f64 sums finished in
//! another order (every loss value, dot); a few ulp, scaled by the largest gradient, for the
//! soft-CE and KL gradients (CUDA's expf, not libm). Each test names its tolerance.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1`, which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda::{self, DeviceBuf, DeviceBufMut};
use flowseg_kernels::loss::Denominator;
use flowseg_kernels::philox::Philox;
use flowseg_kernels::{activation, dropout, elementwise, loss, reduce, Nchw};

/// Odd element counts around the block size, and one realistic activation (4×64×128×128).
const SIZES: &[usize] = &[1, 255, 257, 100_003, 4 * 64 * 128 * 128];

/// Odd shapes and a realistic one (the loss maps: 8 images, 21 classes, 128×128).
const SHAPES: &[Nchw] = &[
    Nchw::new(1, 1, 1, 1),
    Nchw::new(3, 5, 17, 23),
    Nchw::new(2, 19, 33, 47),
    Nchw::new(8, 21, 128, 128),
];

const DENOMINATORS: [Denominator; 4] = [
    Denominator::ValidPixels,
    Denominator::AllPixels,
    Denominator::WeightSum,
    Denominator::Constant(123.0),
];

fn zeros(
    dev: &flowseg_kernels::cuda::Device,
    n: usize,
) -> flowseg_kernels::cuda::cudarc_driver::CudaSlice<f32> {
    up(dev, &vec![0f32; n])
}

#[test]
fn leaky_relu_and_threshold_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let mut x = uniform(1, n, -3.0, 3.0);
        // The edges: exactly 0, exactly the threshold, NaN.
        x[0] = 0.0;
        if n > 2 {
            x[1] = 0.5;
            x[2] = f32::NAN;
        }
        let dy = uniform(2, n, -1.0, 1.0);
        let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
        let mut g = zeros(&dev, n);
        let mut cpu = vec![0f32; n];

        cuda::activation::leaky_relu_fwd(&dev, &gx, 0.01, &mut g).unwrap();
        activation::leaky_relu_fwd(&x, 0.01, &mut cpu).unwrap();
        exact(&format!("leaky_relu_fwd n={n}"), &down(&dev, &g), &cpu);

        cuda::activation::leaky_relu_bwd(&dev, &gx, 0.2, &gdy, &mut g).unwrap();
        activation::leaky_relu_bwd(&x, 0.2, &dy, &mut cpu).unwrap();
        exact(&format!("leaky_relu_bwd n={n}"), &down(&dev, &g), &cpu);

        for below in [false, true] {
            cuda::elementwise::threshold_fwd(&dev, &gx, 0.5, below, &mut g).unwrap();
            elementwise::threshold_fwd(&x, 0.5, below, &mut cpu).unwrap();
            exact(
                &format!("threshold_fwd below={below} n={n}"),
                &down(&dev, &g),
                &cpu,
            );
        }
    }
}

#[test]
fn concat_and_slice_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    // (channel parts, batch parts) of a [N, C, H, W] whole: odd extents, and a realistic decoder
    // skip connection (48 + 256 channels at 129×129).
    let cases: [(Nchw, Vec<usize>, Vec<usize>); 3] = [
        (Nchw::new(3, 6, 5, 7), vec![1, 3, 2], vec![2, 1]),
        (Nchw::new(1, 2, 1, 1), vec![2], vec![1]),
        (Nchw::new(4, 304, 129, 129), vec![48, 256], vec![1, 3]),
    ];
    for (i, (whole, cparts, nparts)) in cases.iter().enumerate() {
        let whole = *whole;
        let tag = format!("{whole:?}");
        let x = uniform(10 + i as u64, whole.len(), -2.0, 2.0);
        let gx = up(&dev, &x);

        // Channel concat of f32 parts, then its backward.
        let cshapes: Vec<Nchw> = cparts
            .iter()
            .map(|&c| Nchw::new(whole.n, c, whole.h, whole.w))
            .collect();
        let cdata: Vec<Vec<f32>> = cshapes
            .iter()
            .enumerate()
            .map(|(j, s)| uniform(20 + j as u64, s.len(), -1.0, 1.0))
            .collect();
        let gparts: Vec<_> = cdata.iter().map(|d| up(&dev, d)).collect();
        let inputs: Vec<(&dyn DeviceBuf<f32>, Nchw)> = gparts
            .iter()
            .zip(&cshapes)
            .map(|(g, s)| (g as &dyn DeviceBuf<f32>, *s))
            .collect();
        let mut gy = zeros(&dev, whole.len());
        cuda::elementwise::concat_channels_fwd(&dev, &inputs, &mut gy, whole).unwrap();
        let cpu_inputs: Vec<(&[f32], Nchw)> = cdata
            .iter()
            .zip(&cshapes)
            .map(|(d, s)| (&d[..], *s))
            .collect();
        let mut y = vec![0f32; whole.len()];
        elementwise::concat_channels_fwd(&cpu_inputs, &mut y, whole).unwrap();
        exact(&format!("concat_channels_fwd {tag}"), &down(&dev, &gy), &y);

        let mut gouts: Vec<_> = cshapes.iter().map(|s| zeros(&dev, s.len())).collect();
        let mut outs: Vec<(&mut dyn DeviceBufMut<f32>, Nchw)> = gouts
            .iter_mut()
            .zip(&cshapes)
            .map(|(g, s)| (g as &mut dyn DeviceBufMut<f32>, *s))
            .collect();
        cuda::elementwise::concat_channels_bwd(&dev, &gx, whole, &mut outs).unwrap();
        let mut cpu_outs: Vec<Vec<f32>> = cshapes.iter().map(|s| vec![0f32; s.len()]).collect();
        let mut cpu_refs: Vec<(&mut [f32], Nchw)> = cpu_outs
            .iter_mut()
            .zip(&cshapes)
            .map(|(d, s)| (&mut d[..], *s))
            .collect();
        elementwise::concat_channels_bwd(&x, whole, &mut cpu_refs).unwrap();
        for (j, (g, c)) in gouts.iter().zip(&cpu_outs).enumerate() {
            exact(
                &format!("concat_channels_bwd part {j} {tag}"),
                &down(&dev, g),
                c,
            );
        }

        // Batch concat of i32 label maps (the copies move words, any 4-byte type), then the
        // f32 backward.
        let nshapes: Vec<Nchw> = nparts
            .iter()
            .map(|&n| Nchw::new(n, whole.c, whole.h, whole.w))
            .collect();
        let ldata: Vec<Vec<i32>> = nshapes
            .iter()
            .enumerate()
            .map(|(j, s)| (0..s.len()).map(|v| (v * 7 + j) as i32 - 3).collect())
            .collect();
        let glabels: Vec<_> = ldata.iter().map(|d| up(&dev, d)).collect();
        let linputs: Vec<(&dyn DeviceBuf<i32>, Nchw)> = glabels
            .iter()
            .zip(&nshapes)
            .map(|(g, s)| (g as &dyn DeviceBuf<i32>, *s))
            .collect();
        let mut gl = up(&dev, &vec![0i32; whole.len()]);
        cuda::elementwise::concat_batch_fwd(&dev, &linputs, &mut gl, whole).unwrap();
        let cpu_l: Vec<(&[i32], Nchw)> = ldata
            .iter()
            .zip(&nshapes)
            .map(|(d, s)| (&d[..], *s))
            .collect();
        let mut l = vec![0i32; whole.len()];
        elementwise::concat_batch_fwd(&cpu_l, &mut l, whole).unwrap();
        exact_int(&format!("concat_batch_fwd i32 {tag}"), &down(&dev, &gl), &l);

        let mut gouts: Vec<_> = nshapes.iter().map(|s| zeros(&dev, s.len())).collect();
        let mut outs: Vec<(&mut dyn DeviceBufMut<f32>, Nchw)> = gouts
            .iter_mut()
            .zip(&nshapes)
            .map(|(g, s)| (g as &mut dyn DeviceBufMut<f32>, *s))
            .collect();
        cuda::elementwise::concat_batch_bwd(&dev, &gx, whole, &mut outs).unwrap();
        let mut cpu_outs: Vec<Vec<f32>> = nshapes.iter().map(|s| vec![0f32; s.len()]).collect();
        let mut cpu_refs: Vec<(&mut [f32], Nchw)> = cpu_outs
            .iter_mut()
            .zip(&nshapes)
            .map(|(d, s)| (&mut d[..], *s))
            .collect();
        elementwise::concat_batch_bwd(&x, whole, &mut cpu_refs).unwrap();
        for (j, (g, c)) in gouts.iter().zip(&cpu_outs).enumerate() {
            exact(
                &format!("concat_batch_bwd part {j} {tag}"),
                &down(&dev, g),
                c,
            );
        }

        // Slices: a middle range, the full range and an empty one; backward from NaN-filled dx
        // so a missed zero shows.
        let crange = [
            (1.min(whole.c), whole.c - whole.c / 3),
            (0, whole.c),
            (1, 1),
        ];
        for (c0, c1) in crange {
            // A view of `part` elements of a non-empty buffer: an empty range allocates nothing.
            let part = whole.n * (c1 - c0) * whole.plane();
            let mut gy = zeros(&dev, part.max(1));
            cuda::elementwise::slice_channels_fwd(
                &dev,
                &gx,
                whole,
                c0,
                c1,
                &mut gy.slice_mut(0..part),
            )
            .unwrap();
            let mut y = vec![0f32; part];
            elementwise::slice_channels_fwd(&x, whole, c0, c1, &mut y).unwrap();
            let what = format!("slice_channels_fwd {c0}..{c1} {tag}");
            exact(&what, &down(&dev, &gy)[..part], &y);
            let mut gdx = up(&dev, &vec![f32::NAN; whole.len()]);
            cuda::elementwise::slice_channels_bwd(
                &dev,
                &gy.slice(0..part),
                whole,
                c0,
                c1,
                &mut gdx,
            )
            .unwrap();
            let mut dx = vec![0f32; whole.len()];
            elementwise::slice_channels_bwd(&y, whole, c0, c1, &mut dx).unwrap();
            exact(
                &format!("slice_channels_bwd {c0}..{c1} {tag}"),
                &down(&dev, &gdx),
                &dx,
            );
        }
        let nrange = [(whole.n / 2, whole.n), (0, whole.n), (0, 0)];
        for (n0, n1) in nrange {
            let part = (n1 - n0) * whole.image();
            let mut gy = zeros(&dev, part.max(1));
            cuda::elementwise::slice_batch_fwd(
                &dev,
                &gx,
                whole,
                n0,
                n1,
                &mut gy.slice_mut(0..part),
            )
            .unwrap();
            let mut y = vec![0f32; part];
            elementwise::slice_batch_fwd(&x, whole, n0, n1, &mut y).unwrap();
            let what = format!("slice_batch_fwd {n0}..{n1} {tag}");
            exact(&what, &down(&dev, &gy)[..part], &y);
            let mut gdx = up(&dev, &vec![f32::NAN; whole.len()]);
            cuda::elementwise::slice_batch_bwd(&dev, &gy.slice(0..part), whole, n0, n1, &mut gdx)
                .unwrap();
            let mut dx = vec![0f32; whole.len()];
            elementwise::slice_batch_bwd(&y, whole, n0, n1, &mut dx).unwrap();
            exact(
                &format!("slice_batch_bwd {n0}..{n1} {tag}"),
                &down(&dev, &gdx),
                &dx,
            );
        }
    }
}

#[test]
fn concat_and_slice_errors_are_the_cpu_errors() {
    let Some(dev) = device() else { return };
    let whole = Nchw::new(2, 3, 2, 2);
    let a = zeros(&dev, 2 * 2 * 4);
    let mut y = zeros(&dev, whole.len());
    let parts: [(&dyn DeviceBuf<f32>, Nchw); 1] = [(&a, Nchw::new(2, 2, 2, 2))];
    let err = cuda::elementwise::concat_channels_fwd(&dev, &parts, &mut y, whole)
        .unwrap_err()
        .to_string();
    let cpu = elementwise::concat_channels_fwd(
        &[(&[0f32; 16][..], Nchw::new(2, 2, 2, 2))],
        &mut [0f32; 24],
        whole,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, cpu);
    let err = cuda::elementwise::slice_channels_fwd(&dev, &y, whole, 2, 4, &mut a.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("channel range 2..4 is not within 0..3"),
        "{err}"
    );
}

#[test]
fn dropout_masks_and_outputs_are_bit_identical() {
    let Some(dev) = device() else { return };
    let rng = Philox::new(0x5eed_1234_abcd, 77);
    for &n in SIZES {
        let x = uniform(30, n, -2.0, 2.0);
        let dy = uniform(31, n, -1.0, 1.0);
        let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
        for (p, offset) in [(0.0f32, 0u64), (0.1, 3), (0.5, 1 << 33), (0.9, 5), (1.0, 0)] {
            let (mut gy, mut gm) = (zeros(&dev, n), zeros(&dev, n));
            cuda::dropout::dropout_fwd(&dev, &gx, p, &rng, offset, &mut gy, &mut gm).unwrap();
            let (mut y, mut m) = (vec![0f32; n], vec![0f32; n]);
            dropout::dropout_fwd(&x, p, &rng, offset, &mut y, &mut m).unwrap();
            let tag = format!("p={p} offset={offset} n={n}");
            exact(&format!("dropout_fwd mask {tag}"), &down(&dev, &gm), &m);
            exact(&format!("dropout_fwd y {tag}"), &down(&dev, &gy), &y);
            let mut gdx = zeros(&dev, n);
            cuda::dropout::dropout_bwd(&dev, &gdy, &gm, &mut gdx).unwrap();
            let mut dx = vec![0f32; n];
            dropout::dropout_bwd(&dy, &m, &mut dx).unwrap();
            exact(&format!("dropout_bwd {tag}"), &down(&dev, &gdx), &dx);
        }
    }
    for &s in SHAPES {
        let x = uniform(32, s.len(), -2.0, 2.0);
        let dy = uniform(33, s.len(), -1.0, 1.0);
        let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
        for (p, offset) in [(0.3f32, 11u64), (0.5, 0), (1.0, 2)] {
            let (mut gy, mut gm) = (zeros(&dev, s.len()), zeros(&dev, s.n * s.c));
            cuda::dropout::dropout2d_fwd(&dev, &gx, s, p, &rng, offset, &mut gy, &mut gm).unwrap();
            let (mut y, mut m) = (vec![0f32; s.len()], vec![0f32; s.n * s.c]);
            dropout::dropout2d_fwd(&x, s, p, &rng, offset, &mut y, &mut m).unwrap();
            let tag = format!("p={p} offset={offset} {s:?}");
            exact(&format!("dropout2d_fwd mask {tag}"), &down(&dev, &gm), &m);
            exact(&format!("dropout2d_fwd y {tag}"), &down(&dev, &gy), &y);
            let mut gdx = zeros(&dev, s.len());
            cuda::dropout::dropout2d_bwd(&dev, &gdy, &gm, s, &mut gdx).unwrap();
            let mut dx = vec![0f32; s.len()];
            dropout::dropout2d_bwd(&dy, &m, s, &mut dx).unwrap();
            exact(&format!("dropout2d_bwd {tag}"), &down(&dev, &gdx), &dx);
        }
    }
    // The CPU's parameter errors.
    let (gx, mut gy, mut gm) = (zeros(&dev, 4), zeros(&dev, 4), zeros(&dev, 4));
    let err = cuda::dropout::dropout_fwd(&dev, &gx, 1.5, &rng, 0, &mut gy, &mut gm)
        .unwrap_err()
        .to_string();
    assert!(err.contains("probability must be in [0, 1]"), "{err}");
    let err = cuda::dropout::dropout_fwd(&dev, &gx, 0.5, &rng, u64::MAX - 2, &mut gy, &mut gm)
        .unwrap_err()
        .to_string();
    assert!(err.contains("overflows"), "{err}");
}

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

/// Soft CE, squared error and KL, forward and backward, with and without a mask, for every
/// denominator. Loss values: rtol 1e-5 (f64 totals in another order; soft CE and KL also through
/// CUDA's expf/log). Gradients: squared error bit-identical when D is an exact count or constant,
/// rtol 1e-6 with WeightSum (Σ mask in another order); soft CE / KL atol 1e-6·max|g| + rtol 1e-5.
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
        // Log-probabilities with a few classes at p = 0 exactly (log p = −∞).
        let mut log_p = vec![0f32; s.len()];
        flowseg_kernels::softmax::log_softmax_fwd(
            &uniform(seed + 4, s.len(), -4.0, 4.0),
            s,
            &mut log_p,
        )
        .unwrap();
        for v in log_p.iter_mut().step_by(37) {
            *v = f32::NEG_INFINITY;
        }
        let mut log_q = vec![0f32; s.len()];
        flowseg_kernels::softmax::log_softmax_fwd(
            &uniform(seed + 5, s.len(), -4.0, 4.0),
            s,
            &mut log_q,
        )
        .unwrap();
        let m = mask_for(seed + 6, pixels);
        let g = |v: &[f32]| up(&dev, v);
        let (glogits, gq, ga, gb, glp, glq, gm) =
            (g(&logits), g(&q), g(&a), g(&b), g(&log_p), g(&log_q), g(&m));
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

                cuda::loss::kl_div_fwd(&dev, &glp, &glq, mask_gpu, s, d, &mut gl).unwrap();
                let l = loss::kl_div_fwd(&log_p, &log_q, mask_cpu, s, d).unwrap();
                close(
                    &format!("kl_div_fwd {tag}"),
                    &down(&dev, &gl),
                    &[l],
                    1e-6,
                    1e-5,
                );
                let (mut gdp, mut gdq) = (zeros(&dev, s.len()), zeros(&dev, s.len()));
                cuda::loss::kl_div_bwd(
                    &dev,
                    &glp,
                    &glq,
                    mask_gpu,
                    s,
                    d,
                    &dloss,
                    Some(&mut gdp),
                    Some(&mut gdq),
                )
                .unwrap();
                let (mut dp, mut dq) = (vec![0f32; s.len()], vec![0f32; s.len()]);
                loss::kl_div_bwd(
                    &log_p,
                    &log_q,
                    mask_cpu,
                    s,
                    d,
                    dloss_host,
                    Some(&mut dp),
                    Some(&mut dq),
                )
                .unwrap();
                for (name, gpu, cpu) in [("dlog_p", &gdp, &dp), ("dlog_q", &gdq, &dq)] {
                    close(
                        &format!("kl_div_bwd {name} {tag}"),
                        &down(&dev, gpu),
                        cpu,
                        1e-6 * max_abs(cpu),
                        1e-5,
                    );
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
    let err = cuda::loss::kl_div_fwd(
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

/// dot: rtol 1.2e-7 (an f64 sum in another order, rounded once). Channel sums and means and
/// their backwards: bit-identical (the CPU's f64 channel-order sums and f32 products).
#[test]
fn dot_and_channel_reductions_match_cpu() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let (a, b) = (uniform(40, n, -1.0, 2.0), uniform(41, n, -1.0, 1.0));
        let mut out = zeros(&dev, 1);
        cuda::reduce::dot_fwd(&dev, &up(&dev, &a), &up(&dev, &b), &mut out).unwrap();
        close(
            &format!("dot_fwd n={n}"),
            &down(&dev, &out),
            &[reduce::dot_fwd(&a, &b).unwrap()],
            0.0,
            1.2e-7,
        );
    }
    // Mean over zero channels is the CPU's error (checked before any length).
    let (one, mut one_out) = (zeros(&dev, 1), zeros(&dev, 1));
    let err = cuda::reduce::mean_channels_fwd(&dev, &one, Nchw::new(2, 0, 3, 3), &mut one_out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mean over zero channels"), "{err}");
    for &s in SHAPES {
        let pixels = s.n * s.plane();
        let x = uniform(42, s.len(), -3.0, 3.0);
        let dy = uniform(43, pixels, -1.0, 1.0);
        let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
        let mut gy = zeros(&dev, pixels);
        let mut y = vec![0f32; pixels];
        cuda::reduce::sum_channels_fwd(&dev, &gx, s, &mut gy).unwrap();
        reduce::sum_channels_fwd(&x, s, &mut y).unwrap();
        exact(&format!("sum_channels_fwd {s:?}"), &down(&dev, &gy), &y);
        let mut gdx = up(&dev, &vec![f32::NAN; s.len()]);
        let mut dx = vec![0f32; s.len()];
        cuda::reduce::sum_channels_bwd(&dev, &gdy, s, &mut gdx).unwrap();
        reduce::sum_channels_bwd(&dy, s, &mut dx).unwrap();
        exact(&format!("sum_channels_bwd {s:?}"), &down(&dev, &gdx), &dx);
        cuda::reduce::mean_channels_fwd(&dev, &gx, s, &mut gy).unwrap();
        reduce::mean_channels_fwd(&x, s, &mut y).unwrap();
        exact(&format!("mean_channels_fwd {s:?}"), &down(&dev, &gy), &y);
        cuda::reduce::mean_channels_bwd(&dev, &gdy, s, &mut gdx).unwrap();
        reduce::mean_channels_bwd(&dy, s, &mut dx).unwrap();
        exact(&format!("mean_channels_bwd {s:?}"), &down(&dev, &gdx), &dx);
    }
}
