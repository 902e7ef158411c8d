//! Parity of every CUDA kernel with its CPU reference on random inputs, at odd sizes (not
//! multiples of the 256-thread block) and realistic ones: |gpu − cpu| ≤ atol + rtol·|cpu|. On
//! success each test prints its maximum error; on failure the first mismatches.
//!
//! Tolerances: 0 (bit-identical) where the kernel does the CPU's exact f32 operations under
//! --fmad=false (element-wise, optimizers, Philox, argmax, confusion matrix); f32 rounding for
//! the f64-accumulated reductions; a few ulp for softmax-CE (CUDA's expf/logf, not libm).
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::loss::{CrossEntropyParams, Denominator};
use flowseg_kernels::optim::{AdamW, Sgd};
use flowseg_kernels::philox::Philox;
use flowseg_kernels::{activation, argmax, elementwise, loss, metrics, optim, reduce, Nchw};

/// Odd sizes around the block size, and one realistic activation (4×64×128×128).
const SIZES: &[usize] = &[1, 255, 257, 100_003, 4 * 64 * 128 * 128];

fn labels(seed: u64, n: usize, k: usize, ignore: i32, ignore_frac: f32) -> Vec<i32> {
    let g = Philox::new(seed, 0x1AB);
    (0..n)
        .map(|i| {
            if g.uniform_at(2 * i as u64) < ignore_frac {
                ignore
            } else {
                (g.u32_at(2 * i as u64 + 1) % k as u32) as i32
            }
        })
        .collect()
}

#[test]
fn elementwise_and_relu_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let (a, b) = (uniform(1, n, -3.0, 3.0), uniform(2, n, -3.0, 3.0));
        let dy = uniform(3, n, -1.0, 1.0);
        let (da_, db_, dy_) = (up(&dev, &a), up(&dev, &b), up(&dev, &dy));
        let mut y = up(&dev, &vec![0f32; n]);
        let mut y2 = up(&dev, &vec![0f32; n]);
        let mut cpu = vec![0f32; n];
        let mut cpu2 = vec![0f32; n];

        cuda::elementwise::add_fwd(&dev, &da_, &db_, &mut y).unwrap();
        elementwise::add_fwd(&a, &b, &mut cpu).unwrap();
        exact(&format!("add_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::elementwise::mul_fwd(&dev, &da_, &db_, &mut y).unwrap();
        elementwise::mul_fwd(&a, &b, &mut cpu).unwrap();
        exact(&format!("mul_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::elementwise::mul_bwd(&dev, &da_, &db_, &dy_, &mut y, &mut y2).unwrap();
        elementwise::mul_bwd(&a, &b, &dy, &mut cpu, &mut cpu2).unwrap();
        exact(&format!("mul_bwd da n={n}"), &down(&dev, &y), &cpu);
        exact(&format!("mul_bwd db n={n}"), &down(&dev, &y2), &cpu2);

        cuda::elementwise::scale_fwd(&dev, &da_, 0.37, &mut y).unwrap();
        elementwise::scale_fwd(&a, 0.37, &mut cpu).unwrap();
        exact(&format!("scale_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::activation::relu_fwd(&dev, &da_, &mut y).unwrap();
        activation::relu_fwd(&a, &mut cpu).unwrap();
        exact(&format!("relu_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::activation::relu_bwd(&dev, &da_, &dy_, &mut y).unwrap();
        activation::relu_bwd(&a, &dy, &mut cpu).unwrap();
        exact(&format!("relu_bwd n={n}"), &down(&dev, &y), &cpu);
    }
}

#[test]
fn length_mismatch_is_the_cpu_error() {
    let Some(dev) = device() else { return };
    let a = up(&dev, &[1f32, 2.0, 3.0]);
    let b = up(&dev, &[1f32, 2.0]);
    let mut y = up(&dev, &[0f32; 3]);
    let err = cuda::elementwise::add_fwd(&dev, &a, &b, &mut y)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "add_fwd: `b` has 2 elements, expected 3");
}

#[test]
fn philox_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &(seed, stream) in &[
        (0u64, 0u64),
        (0xDEAD_BEEF_1234_5678, 77),
        (u64::MAX, u64::MAX),
    ] {
        for &n in SIZES {
            for offset in [0u64, 3, (1 << 32) + 1] {
                let g = Philox::new(seed, stream);
                let mut words = up(&dev, &vec![0u32; n]);
                cuda::philox::philox_u32(&dev, seed, stream, offset, &mut words).unwrap();
                let cpu: Vec<u32> = (0..n as u64).map(|j| g.u32_at(offset + j)).collect();
                exact_int(
                    &format!("philox_u32 n={n} off={offset}"),
                    &down(&dev, &words),
                    &cpu,
                );

                let mut out = up(&dev, &vec![0f32; n]);
                let mut cpu = vec![0f32; n];
                cuda::philox::fill_uniform(&dev, seed, stream, offset, &mut out).unwrap();
                g.fill_uniform(offset, &mut cpu);
                exact(
                    &format!("fill_uniform n={n} off={offset}"),
                    &down(&dev, &out),
                    &cpu,
                );

                cuda::philox::fill_normal(&dev, seed, stream, offset, 0.5, 2.0, &mut out).unwrap();
                g.fill_normal(offset, 0.5, 2.0, &mut cpu);
                exact(
                    &format!("fill_normal n={n} off={offset}"),
                    &down(&dev, &out),
                    &cpu,
                );
            }
        }
    }
}

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
            let weight_gpu = weighted.then_some(&dw as &dyn flowseg_kernels::cuda::DeviceBuf<f32>);
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

#[test]
fn optimizers_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    let sgds = [
        Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        Sgd {
            lr: 0.01,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        },
        Sgd {
            lr: 0.01,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        },
    ];
    let adam = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    for &n in SIZES {
        let p0 = uniform(20, n, -1.0, 1.0);
        for cfg in &sgds {
            let (mut p, mut b) = (p0.clone(), vec![0f32; n]);
            let mut dp = up(&dev, &p);
            let mut db = up(&dev, &b);
            for step in 0..3 {
                let g = uniform(21 + step, n, -1.0, 1.0);
                let dg = up(&dev, &g);
                cuda::optim::sgd_step(&dev, &mut dp, &dg, &mut db, cfg).unwrap();
                optim::sgd_step(&mut p, &g, &mut b, cfg).unwrap();
            }
            exact(&format!("sgd {cfg:?} n={n}"), &down(&dev, &dp), &p);
            exact(&format!("sgd buf {cfg:?} n={n}"), &down(&dev, &db), &b);
        }
        let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
        let (mut dp, mut dm, mut dv) = (up(&dev, &p), up(&dev, &m), up(&dev, &v));
        for step in 1..=4u64 {
            let g = uniform(30 + step, n, -1.0, 1.0);
            let dg = up(&dev, &g);
            cuda::optim::adamw_step(&dev, &mut dp, &dg, &mut dm, &mut dv, &adam, step).unwrap();
            optim::adamw_step(&mut p, &g, &mut m, &mut v, &adam, step).unwrap();
        }
        exact(&format!("adamw param n={n}"), &down(&dev, &dp), &p);
        exact(&format!("adamw m n={n}"), &down(&dev, &dm), &m);
        exact(&format!("adamw v n={n}"), &down(&dev, &dv), &v);

        let src = uniform(40, n, -1.0, 1.0);
        let (mut t, ds) = (p0.clone(), up(&dev, &src));
        let mut dt = up(&dev, &t);
        cuda::optim::ema_update(&dev, &mut dt, &ds, 0.999).unwrap();
        optim::ema_update(&mut t, &src, 0.999).unwrap();
        exact(&format!("ema_update n={n}"), &down(&dev, &dt), &t);
    }
    let mut p = up(&dev, &[0f32; 4]);
    let g = up(&dev, &[0f32; 4]);
    let bad = Sgd {
        lr: -1.0,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let err = cuda::optim::sgd_step(&dev, &mut p, &g, &mut up(&dev, &[0f32; 0]), &bad).unwrap_err();
    assert!(err.to_string().contains("invalid learning rate"), "{err}");
}

#[test]
fn sum_and_mean_match_cpu() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let x = uniform(50, n, -1.0, 2.0);
        let dx_ = up(&dev, &x);
        let mut out = up(&dev, &[0f32]);
        cuda::reduce::sum_fwd(&dev, &dx_, &mut out).unwrap();
        close(
            &format!("sum_fwd n={n}"),
            &down(&dev, &out),
            &[reduce::sum_fwd(&x).unwrap()],
            0.0,
            1.2e-7,
        );
        cuda::reduce::mean_fwd(&dev, &dx_, &mut out).unwrap();
        close(
            &format!("mean_fwd n={n}"),
            &down(&dev, &out),
            &[reduce::mean_fwd(&x).unwrap()],
            0.0,
            1.2e-7,
        );

        let dy = up(&dev, &[0.3f32]);
        let mut g = up(&dev, &vec![0f32; n]);
        let mut cpu = vec![0f32; n];
        cuda::reduce::sum_bwd(&dev, &dy, &mut g).unwrap();
        reduce::sum_bwd(0.3, &mut cpu).unwrap();
        exact(&format!("sum_bwd n={n}"), &down(&dev, &g), &cpu);
        cuda::reduce::mean_bwd(&dev, &dy, &mut g).unwrap();
        reduce::mean_bwd(0.3, &mut cpu).unwrap();
        exact(&format!("mean_bwd n={n}"), &down(&dev, &g), &cpu);
    }
}

#[test]
fn argmax_and_max_match_cpu_with_ties_and_nan() {
    let Some(dev) = device() else { return };
    for shape in [
        Nchw::new(1, 1, 1, 1),
        Nchw::new(3, 19, 31, 37),
        Nchw::new(8, 21, 128, 128),
    ] {
        let pixels = shape.n * shape.plane();
        // Quantised values make ties common; a few NaNs test the NaN rule.
        let mut x: Vec<f32> = uniform(60, shape.len(), 0.0, 8.0)
            .iter()
            .map(|v| v.floor())
            .collect();
        for i in (0..x.len()).step_by(997) {
            x[i] = f32::NAN;
        }
        let dxx = up(&dev, &x);
        let mut idx = up(&dev, &vec![0i32; pixels]);
        let mut vals = up(&dev, &vec![0f32; pixels]);
        let (mut idx_cpu, mut vals_cpu) = (vec![0i32; pixels], vec![0f32; pixels]);
        cuda::argmax::argmax_fwd(&dev, &dxx, shape, &mut idx).unwrap();
        argmax::argmax_fwd(&x, shape, &mut idx_cpu).unwrap();
        exact_int(
            &format!("argmax_fwd {shape:?}"),
            &down(&dev, &idx),
            &idx_cpu,
        );
        cuda::argmax::max_fwd(&dev, &dxx, shape, &mut vals, &mut idx).unwrap();
        argmax::max_fwd(&x, shape, &mut vals_cpu, &mut idx_cpu).unwrap();
        exact_int(
            &format!("max_fwd idx {shape:?}"),
            &down(&dev, &idx),
            &idx_cpu,
        );
        close(
            &format!("max_fwd values {shape:?}"),
            &down(&dev, &vals),
            &vals_cpu,
            0.0,
            0.0,
        );

        let dy = uniform(61, pixels, -1.0, 1.0);
        let mut g = up(&dev, &vec![f32::NAN; shape.len()]);
        let mut g_cpu = vec![0f32; shape.len()];
        cuda::argmax::max_bwd(&dev, &up(&dev, &dy), &up(&dev, &idx_cpu), shape, &mut g).unwrap();
        argmax::max_bwd(&dy, &idx_cpu, shape, &mut g_cpu).unwrap();
        exact(&format!("max_bwd {shape:?}"), &down(&dev, &g), &g_cpu);
    }
}

#[test]
fn label_agreement_matches_cpu() {
    let Some(dev) = device() else { return };
    // Odd sizes, a grid-stride size, with and without a mask (some NaN, some negative).
    let cases = [
        (1usize, false, None),
        (257, true, Some(0)),
        (8 * 512 * 512 + 3, true, None),
        (100_003, false, Some(3)),
    ];
    for (n, with_mask, skip) in cases {
        let pred = labels(80, n, 11, -1, 0.0);
        let label = labels(81, n, 11, 255, 0.1);
        let mut mask: Vec<f32> = uniform(82, n, -0.5, 1.0);
        if n > 10 {
            mask[7] = f32::NAN;
        }
        let m = with_mask.then_some(&mask[..]);
        let want = metrics::label_agreement_fwd(&pred, &label, m, 255, skip).unwrap();
        let mut counts = up(&dev, &[0u64; 2]);
        let mask_dev = up(&dev, &mask);
        let mask_arg: Option<&dyn flowseg_kernels::cuda::DeviceBuf<f32>> =
            with_mask.then_some(&mask_dev as _);
        cuda::metrics::label_agreement_fwd(
            &dev,
            &up(&dev, &pred),
            &up(&dev, &label),
            mask_arg,
            255,
            skip,
            &mut counts,
        )
        .unwrap();
        exact_int(
            &format!("label_agreement_fwd n={n} mask={with_mask} skip={skip:?}"),
            &down(&dev, &counts),
            &want,
        );
    }
}

#[test]
fn confusion_matrix_matches_cpu() {
    let Some(dev) = device() else { return };
    // K = 21 uses the shared-memory histogram, K = 150 (ADE20K) the global-atomics path.
    for (k, n) in [
        (2usize, 1usize),
        (21, 257),
        (21, 8 * 512 * 512),
        (150, 100_003),
    ] {
        let pred = labels(70, n, k, -1, 0.0);
        let label = labels(71, n, k, 255, 0.1);
        let mut conf_cpu = vec![0u64; k * k];
        metrics::confusion_add(&pred, &label, k, 255, &mut conf_cpu).unwrap();
        let mut conf = up(&dev, &vec![0u64; k * k]);
        let mut bad = up(&dev, &[0u32]);
        cuda::metrics::confusion_add(
            &dev,
            &up(&dev, &pred),
            &up(&dev, &label),
            k,
            255,
            &mut conf,
            &mut bad,
        )
        .unwrap();
        exact_int(
            &format!("confusion_add K={k} n={n}"),
            &down(&dev, &conf),
            &conf_cpu,
        );
        assert_eq!(down(&dev, &bad), vec![0]);
    }
    let mut conf = up(&dev, &[0u64; 4]);
    let mut bad = up(&dev, &[0u32]);
    cuda::metrics::confusion_add(
        &dev,
        &up(&dev, &[0i32, 5, 1]),
        &up(&dev, &[0i32, 1, 9]),
        2,
        255,
        &mut conf,
        &mut bad,
    )
    .unwrap();
    assert_eq!(
        down(&dev, &bad),
        vec![2],
        "a bad prediction and a bad label"
    );
    assert_eq!(down(&dev, &conf), vec![1, 0, 0, 0]);
}

#[test]
fn arena_hands_out_aligned_disjoint_buffers() {
    let Some(dev) = device() else { return };
    let mut arena = dev.arena(4096).unwrap();
    {
        let a = arena.alloc::<f32>(3).unwrap();
        let mut b = arena.alloc::<f32>(3).unwrap();
        let s = dev.stream();
        use flowseg_kernels::cuda::DeviceBuf;
        assert_eq!(b.device_addr(s) - a.device_addr(s), 256);
        assert!(arena.alloc::<u8>(4096).is_err());
        cuda::philox::fill_uniform(&dev, 1, 2, 0, &mut b).unwrap();
    }
    arena.reset();
    assert_eq!(arena.used(), 0);
}
