//! Parity of the CUDA batch norm (kernels/src/cuda/batch_norm.rs: training and evaluation,
//! forward and backward) with kernels/src/batch_norm.rs on random inputs, at odd sizes (N=3, C=5,
//! H=17, W=23) and a realistic one (16×64×64×64), plain and with the fused ReLU (`relu` forward,
//! `relu_y` backward), and the CPU's errors for what it rejects. The test names its tolerance and
//! why.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::batch_norm::{self, BatchNormParams};
use flowseg_kernels::cuda;
use flowseg_kernels::cuda::DeviceBuf;
use flowseg_kernels::Nchw;

/// Odd sizes (not multiples of anything) and one realistic activation.
const SHAPES: &[Nchw] = &[
    Nchw::new(3, 5, 17, 23),
    Nchw::new(1, 3, 1, 2),
    Nchw::new(16, 64, 64, 64),
];

/// Batch-norm statistics are f64 sums in another order than the CPU's, rounded to f32: the
/// per-channel values may differ by an ulp, which the affine step then scales. Tolerance:
/// rtol 1e-5 and atol 1e-5 (outputs are O(1); dgamma/dbeta sums of up to 65536 terms get
/// rtol 1e-5 + atol 1e-3, their f32 rounding of an f64 sum is the only difference).
#[test]
fn batch_norm_matches_cpu() {
    let Some(dev) = device() else { return };
    for (i, s, relu) in SHAPES
        .iter()
        .enumerate()
        .flat_map(|(i, s)| [(i, *s, false), (i, *s, true)])
    {
        let p = BatchNormParams {
            eps: 1e-5,
            momentum: 0.1,
            relu,
        };
        let seed = 10 * i as u64;
        let x = uniform(seed, s.len(), -2.0, 3.0);
        let dy = uniform(seed + 1, s.len(), -1.0, 1.0);
        let gamma = uniform(seed + 2, s.c, 0.5, 1.5);
        let beta = uniform(seed + 3, s.c, -0.5, 0.5);
        let rm0 = uniform(seed + 4, s.c, -0.1, 0.1);
        let rv0 = uniform(seed + 5, s.c, 0.5, 2.0);
        let (gx, gg, gb, gdy) = (
            up(&dev, &x),
            up(&dev, &gamma),
            up(&dev, &beta),
            up(&dev, &dy),
        );
        let (mut grm, mut grv) = (up(&dev, &rm0), up(&dev, &rv0));
        let mut gy = up(&dev, &vec![0f32; s.len()]);
        let (mut gsm, mut gsi) = (up(&dev, &vec![0f32; s.c]), up(&dev, &vec![0f32; s.c]));
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let mut y = vec![0f32; s.len()];
        let (mut sm, mut si) = (vec![0f32; s.c], vec![0f32; s.c]);

        cuda::batch_norm::batch_norm_train_fwd(
            &dev, &gx, &gg, &gb, s, p, &mut grm, &mut grv, &mut gy, &mut gsm, &mut gsi,
        )
        .unwrap();
        batch_norm::batch_norm_train_fwd(
            &x, &gamma, &beta, s, p, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
        )
        .unwrap();
        let tag = format!("{s:?} relu {relu}");
        close(
            &format!("bn train y {tag}"),
            &down(&dev, &gy),
            &y,
            1e-5,
            1e-5,
        );
        close(
            &format!("bn save_mean {tag}"),
            &down(&dev, &gsm),
            &sm,
            1e-7,
            1e-6,
        );
        close(
            &format!("bn save_invstd {tag}"),
            &down(&dev, &gsi),
            &si,
            0.0,
            1e-6,
        );
        close(
            &format!("bn running_mean {tag}"),
            &down(&dev, &grm),
            &rm,
            1e-7,
            1e-6,
        );
        close(
            &format!("bn running_var {tag}"),
            &down(&dev, &grv),
            &rv,
            0.0,
            1e-6,
        );

        let (mut gdx, mut gdg, mut gdb) = (
            up(&dev, &vec![0f32; s.len()]),
            up(&dev, &vec![0f32; s.c]),
            up(&dev, &vec![0f32; s.c]),
        );
        let (mut dx, mut dg, mut db) = (vec![0f32; s.len()], vec![0f32; s.c], vec![0f32; s.c]);
        // Same saved statistics on both sides, so only the backward's own sums differ; behind
        // the fused ReLU, the CPU forward's output is both sides' mask (a value within an ulp of
        // zero could otherwise pass on one side only).
        let (gsm_cpu, gsi_cpu) = (up(&dev, &sm), up(&dev, &si));
        let relu_y = relu.then(|| y.clone());
        let g_relu_y = relu_y.as_ref().map(|v| up(&dev, v));
        let g_relu_y = g_relu_y.as_ref().map(|b| b as &dyn DeviceBuf<f32>);
        cuda::batch_norm::batch_norm_train_bwd(
            &dev, &gx, &gg, &gsm_cpu, &gsi_cpu, &gdy, g_relu_y, s, &mut gdx, &mut gdg, &mut gdb,
        )
        .unwrap();
        batch_norm::batch_norm_train_bwd(
            &x,
            &gamma,
            &sm,
            &si,
            &dy,
            relu_y.as_deref(),
            s,
            &mut dx,
            &mut dg,
            &mut db,
        )
        .unwrap();
        close(
            &format!("bn train dx {tag}"),
            &down(&dev, &gdx),
            &dx,
            1e-5,
            1e-5,
        );
        close(
            &format!("bn train dgamma {tag}"),
            &down(&dev, &gdg),
            &dg,
            1e-3,
            1e-5,
        );
        close(
            &format!("bn train dbeta {tag}"),
            &down(&dev, &gdb),
            &db,
            1e-3,
            1e-5,
        );

        // Eval: the coefficients are computed the CPU's way from the same inputs, so y and dx
        // are bit-identical; dgamma/dbeta are sums (tolerance as above).
        let (grm0, grv0) = (up(&dev, &rm0), up(&dev, &rv0));
        cuda::batch_norm::batch_norm_eval_fwd(&dev, &gx, &gg, &gb, &grm0, &grv0, s, p, &mut gy)
            .unwrap();
        batch_norm::batch_norm_eval_fwd(&x, &gamma, &beta, &rm0, &rv0, s, p, &mut y).unwrap();
        exact(&format!("bn eval y {tag}"), &down(&dev, &gy), &y);
        let relu_y = relu.then(|| y.clone());
        let g_relu_y = relu_y.as_ref().map(|v| up(&dev, v));
        let g_relu_y = g_relu_y.as_ref().map(|b| b as &dyn DeviceBuf<f32>);
        cuda::batch_norm::batch_norm_eval_bwd(
            &dev, &gx, &gg, &grm0, &grv0, &gdy, g_relu_y, s, p, &mut gdx, &mut gdg, &mut gdb,
        )
        .unwrap();
        batch_norm::batch_norm_eval_bwd(
            &x,
            &gamma,
            &rm0,
            &rv0,
            &dy,
            relu_y.as_deref(),
            s,
            p,
            &mut dx,
            &mut dg,
            &mut db,
        )
        .unwrap();
        exact(&format!("bn eval dx {tag}"), &down(&dev, &gdx), &dx);
        close(
            &format!("bn eval dgamma {tag}"),
            &down(&dev, &gdg),
            &dg,
            1e-3,
            1e-5,
        );
        close(
            &format!("bn eval dbeta {tag}"),
            &down(&dev, &gdb),
            &db,
            1e-3,
            1e-5,
        );
    }
}

#[test]
fn batch_norm_rejects_what_the_cpu_rejects() {
    let Some(dev) = device() else { return };
    let s = Nchw::new(1, 2, 1, 1);
    let z = |n: usize| up(&dev, &vec![0f32; n]);
    let (x, g, b) = (z(2), z(2), z(2));
    let (mut rm, mut rv, mut y, mut sm, mut si) = (z(2), z(2), z(2), z(2), z(2));
    let err = cuda::batch_norm::batch_norm_train_fwd(
        &dev,
        &x,
        &g,
        &b,
        s,
        BatchNormParams::default(),
        &mut rm,
        &mut rv,
        &mut y,
        &mut sm,
        &mut si,
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than 1 value"), "{err}");
    let (x4, mut short) = (z(4), z(1));
    let err = cuda::batch_norm::batch_norm_train_fwd(
        &dev,
        &x4,
        &g,
        &b,
        Nchw::new(2, 2, 1, 1),
        BatchNormParams::default(),
        &mut rm,
        &mut rv,
        &mut short,
        &mut sm,
        &mut si,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("`y` has 1 elements, expected 4"),
        "{err}"
    );
}

/// The eval-mode statistics a reader sees: bit for bit (one f64 division and square root per
/// channel, rounded once, on both sides).
#[test]
fn eval_stats_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for c in [1usize, 3, 257] {
        let mean = uniform(60, c, -1.0, 1.0);
        let var = uniform(61, c, 0.0, 2.0);
        let (mut sm, mut si) = (vec![0f32; c], vec![0f32; c]);
        batch_norm::batch_norm_eval_stats_fwd(&mean, &var, 1e-5, &mut sm, &mut si).unwrap();
        let (dm, dv) = (up(&dev, &mean), up(&dev, &var));
        let (mut dsm, mut dsi) = (up(&dev, &vec![7f32; c]), up(&dev, &vec![7f32; c]));
        cuda::batch_norm::batch_norm_eval_stats_fwd(&dev, &dm, &dv, 1e-5, &mut dsm, &mut dsi)
            .unwrap();
        exact(&format!("save_mean C={c}"), &down(&dev, &dsm), &sm);
        exact(&format!("save_invstd C={c}"), &down(&dev, &dsi), &si);
    }
}
