//! Parity of the network-layer CUDA kernels (kernels/src/cuda/{batch_norm,pool,resize,softmax}.rs) with their CPU references on random inputs, at odd sizes (N=3, C=5, H=17,
//! W=23) and a realistic one (16×64×64×64): |gpu − cpu| ≤ atol + rtol·|cpu|, or bit-identical
//! where the kernel performs the CPU's exact f32 operations in the same order (--fmad=false).
//! Each test names its tolerance and why.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1`, which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::batch_norm::{self, BatchNormParams};
use flowseg_kernels::cuda;
use flowseg_kernels::pool::{self, Pool2d};
use flowseg_kernels::resize;
use flowseg_kernels::softmax;
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
    let p = BatchNormParams {
        eps: 1e-5,
        momentum: 0.1,
    };
    for (i, &s) in SHAPES.iter().enumerate() {
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
        let tag = format!("{s:?}");
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
        // Same saved statistics on both sides, so only the backward's own sums differ.
        let (gsm_cpu, gsi_cpu) = (up(&dev, &sm), up(&dev, &si));
        cuda::batch_norm::batch_norm_train_bwd(
            &dev, &gx, &gg, &gsm_cpu, &gsi_cpu, &gdy, s, &mut gdx, &mut gdg, &mut gdb,
        )
        .unwrap();
        batch_norm::batch_norm_train_bwd(&x, &gamma, &sm, &si, &dy, s, &mut dx, &mut dg, &mut db)
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
        cuda::batch_norm::batch_norm_eval_bwd(
            &dev, &gx, &gg, &grm0, &grv0, &gdy, s, p, &mut gdx, &mut gdg, &mut gdb,
        )
        .unwrap();
        batch_norm::batch_norm_eval_bwd(
            &x, &gamma, &rm0, &rv0, &dy, s, p, &mut dx, &mut dg, &mut db,
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

/// Windows: overlapping with padding, non-overlapping, rectangular with unequal strides.
const WINDOWS: &[Pool2d] = &[
    Pool2d::square(3, 2, 1),
    Pool2d::square(2, 2, 0),
    Pool2d {
        kh: 3,
        kw: 2,
        sh: 1,
        sw: 3,
        ph: 1,
        pw: 0,
    },
];

/// Max and average pooling do the CPU's exact operations in the CPU's order (the backwards
/// gather in the order the CPU scatters), so everything is bit-identical. Inputs are quantised
/// to eighths so windows hold ties (first-of-ties rule), and one NaN must propagate.
#[test]
fn pooling_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for (i, &s) in SHAPES.iter().enumerate() {
        let mut x: Vec<f32> = uniform(100 + i as u64, s.len(), -2.0, 2.0)
            .iter()
            .map(|v| (v * 8.0).round() / 8.0)
            .collect();
        x[s.len() / 2] = f32::NAN;
        let gx = up(&dev, &x);
        for &p in WINDOWS {
            let Ok((ho, wo)) = p.out_hw(s.h, s.w) else {
                continue;
            };
            let out = s.n * s.c * ho * wo;
            let tag = format!("{s:?} {p:?}");
            let dy = uniform(200 + i as u64, out, -1.0, 1.0);
            let gdy = up(&dev, &dy);
            let (mut gy, mut ga) = (up(&dev, &vec![0f32; out]), up(&dev, &vec![0u32; out]));
            let (mut y, mut a) = (vec![0f32; out], vec![0u32; out]);
            cuda::pool::max_pool2d_fwd(&dev, &gx, s, p, &mut gy, &mut ga).unwrap();
            pool::max_pool2d_fwd(&x, s, p, &mut y, &mut a).unwrap();
            exact(&format!("max_pool2d_fwd y {tag}"), &down(&dev, &gy), &y);
            exact_int(
                &format!("max_pool2d_fwd argmax {tag}"),
                &down(&dev, &ga),
                &a,
            );

            let mut gdx = up(&dev, &vec![1f32; s.len()]);
            let mut dx = vec![0f32; s.len()];
            cuda::pool::max_pool2d_bwd(&dev, &gdy, &ga, s, p, &mut gdx).unwrap();
            pool::max_pool2d_bwd(&dy, &a, s, p, &mut dx).unwrap();
            exact(&format!("max_pool2d_bwd {tag}"), &down(&dev, &gdx), &dx);

            for cip in [true, false] {
                cuda::pool::avg_pool2d_fwd(&dev, &gx, s, p, cip, &mut gy).unwrap();
                pool::avg_pool2d_fwd(&x, s, p, cip, &mut y).unwrap();
                exact(
                    &format!("avg_pool2d_fwd cip={cip} {tag}"),
                    &down(&dev, &gy),
                    &y,
                );
                cuda::pool::avg_pool2d_bwd(&dev, &gdy, s, p, cip, &mut gdx).unwrap();
                pool::avg_pool2d_bwd(&dy, s, p, cip, &mut dx).unwrap();
                exact(
                    &format!("avg_pool2d_bwd cip={cip} {tag}"),
                    &down(&dev, &gdx),
                    &dx,
                );
            }
        }
    }
}

/// Global average: the forward's f64 sum runs in tree order, not the CPU's sequential order,
/// then rounds to f32 — at most an ulp apart (rtol 2.4e-7, atol 1e-12 for means near 0); the
/// backward is the CPU's single division per element, bit-identical.
#[test]
fn global_avg_pool_matches_cpu() {
    let Some(dev) = device() else { return };
    for (i, &s) in SHAPES.iter().enumerate() {
        let x = uniform(300 + i as u64, s.len(), -1.0, 1.0);
        let dy = uniform(301 + i as u64, s.n * s.c, -1.0, 1.0);
        let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
        let mut gy = up(&dev, &vec![0f32; s.n * s.c]);
        let mut y = vec![0f32; s.n * s.c];
        cuda::pool::global_avg_pool_fwd(&dev, &gx, s, &mut gy).unwrap();
        pool::global_avg_pool_fwd(&x, s, &mut y).unwrap();
        close(
            &format!("global_avg_pool_fwd {s:?}"),
            &down(&dev, &gy),
            &y,
            1e-12,
            2.4e-7,
        );
        let mut gdx = up(&dev, &vec![1f32; s.len()]);
        let mut dx = vec![0f32; s.len()];
        cuda::pool::global_avg_pool_bwd(&dev, &gdy, s, &mut gdx).unwrap();
        pool::global_avg_pool_bwd(&dy, s, &mut dx).unwrap();
        exact(
            &format!("global_avg_pool_bwd {s:?}"),
            &down(&dev, &gdx),
            &dx,
        );
    }
}

#[test]
fn pooling_rejects_what_the_cpu_rejects() {
    let Some(dev) = device() else { return };
    let s = Nchw::new(1, 1, 2, 2);
    let x = up(&dev, &[0f32; 4]);
    let (mut y, mut a) = (up(&dev, &[0f32; 1]), up(&dev, &[0u32; 1]));
    let err = cuda::pool::max_pool2d_fwd(&dev, &x, s, Pool2d::square(3, 1, 2), &mut y, &mut a)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("max_pool2d_fwd: padding must be at most half"),
        "{err}"
    );
    let err = cuda::pool::avg_pool2d_fwd(&dev, &x, s, Pool2d::square(1, 1, 0), true, &mut y)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`y` has 1 elements, expected 4"), "{err}");
}

/// Output sizes around each input: up (×2, odd), down (÷2, odd), identity on one axis, 1×1,
/// and the 26 → 22 nearest case where f32 scale arithmetic differs from exact rationals.
fn resize_targets(s: Nchw) -> Vec<(usize, usize)> {
    vec![
        (2 * s.h, 2 * s.w),
        (2 * s.h + 3, s.w + 5),
        (s.h.div_ceil(2), s.w / 2 + 1),
        (s.h, 2 * s.w - 1),
        (1, 1),
        (22, 22),
    ]
}

/// Bilinear forward and backward (a gather in the CPU's scatter order) and nearest do the
/// CPU's exact f32 operations in its order: bit-identical, align_corners false and true.
#[test]
fn resize_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    let shapes = [
        SHAPES[0],
        SHAPES[1],
        Nchw::new(2, 3, 26, 26),
        Nchw::new(4, 64, 64, 64),
    ];
    for (i, &s) in shapes.iter().enumerate() {
        let x = uniform(400 + i as u64, s.len(), -3.0, 3.0);
        let labels: Vec<i32> = (0..s.len()).map(|j| (j % 251) as i32 - 1).collect();
        let (gx, gl) = (up(&dev, &x), up(&dev, &labels));
        for (ho, wo) in resize_targets(s) {
            let out = s.n * s.c * ho * wo;
            let dy = uniform(500 + i as u64, out, -1.0, 1.0);
            let gdy = up(&dev, &dy);
            let mut gy = up(&dev, &vec![0f32; out]);
            let mut y = vec![0f32; out];
            let mut gdx = up(&dev, &vec![1f32; s.len()]);
            let mut dx = vec![0f32; s.len()];
            for ac in [false, true] {
                let tag = format!("{s:?} -> {ho}x{wo} align_corners={ac}");
                cuda::resize::resize_bilinear_fwd(&dev, &gx, s, ho, wo, ac, &mut gy).unwrap();
                resize::resize_bilinear_fwd(&x, s, ho, wo, ac, &mut y).unwrap();
                exact(&format!("resize_bilinear_fwd {tag}"), &down(&dev, &gy), &y);
                cuda::resize::resize_bilinear_bwd(&dev, &gdy, s, ho, wo, ac, &mut gdx).unwrap();
                resize::resize_bilinear_bwd(&dy, s, ho, wo, ac, &mut dx).unwrap();
                exact(
                    &format!("resize_bilinear_bwd {tag}"),
                    &down(&dev, &gdx),
                    &dx,
                );
            }
            let mut gyl = up(&dev, &vec![0i32; out]);
            let mut yl = vec![0i32; out];
            cuda::resize::resize_nearest_fwd(&dev, &gl, s, ho, wo, &mut gyl).unwrap();
            resize::resize_nearest_fwd(&labels, s, ho, wo, &mut yl).unwrap();
            exact_int(
                &format!("resize_nearest_fwd {s:?} -> {ho}x{wo}"),
                &down(&dev, &gyl),
                &yl,
            );
        }
    }
}

#[test]
fn resize_rejects_what_the_cpu_rejects() {
    let Some(dev) = device() else { return };
    let x = up(&dev, &[0f32; 4]);
    let mut y = up(&dev, &[0f32; 4]);
    let err =
        cuda::resize::resize_bilinear_fwd(&dev, &x, Nchw::new(1, 1, 2, 2), 0, 2, false, &mut y)
            .unwrap_err()
            .to_string();
    assert!(
        err.starts_with("resize_bilinear_fwd: input and output sizes must be greater than 0"),
        "{err}"
    );
    let err =
        cuda::resize::resize_bilinear_fwd(&dev, &x, Nchw::new(1, 1, 2, 2), 3, 3, false, &mut y)
            .unwrap_err()
            .to_string();
    assert!(err.contains("`y` has 4 elements, expected 9"), "{err}");
}

/// softmax_bwd does the CPU's exact f32 operations: bit-identical. The others use CUDA's
/// expf/logf (≤ 2 ulp) instead of libm. Tolerances: softmax_fwd rtol 1e-5 + atol 1e-7
/// (probabilities in (0, 1]); log_softmax_fwd rtol 1e-5 + atol 1e-6 (ln s ≤ ln K is off by a
/// few ulp of itself, which is absolute in y); log_softmax_bwd rtol 1e-5 + atol 1e-6·K
/// (exp(y)·Σdy with |Σdy| ≤ K). Logits span ±30 so exp underflows for some classes, and one
/// pixel gets a logit near 1000 (the max subtraction must hold).
#[test]
fn softmax_matches_cpu() {
    let Some(dev) = device() else { return };
    let shapes = [SHAPES[0], Nchw::new(2, 1, 3, 3), Nchw::new(4, 21, 128, 128)];
    for (i, &s) in shapes.iter().enumerate() {
        let mut x = uniform(600 + i as u64, s.len(), -30.0, 30.0);
        x[0] = 1000.0;
        let dy = uniform(601 + i as u64, s.len(), -1.0, 1.0);
        let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
        let mut gy = up(&dev, &vec![0f32; s.len()]);
        let mut gdx = up(&dev, &vec![0f32; s.len()]);
        let (mut y, mut dx) = (vec![0f32; s.len()], vec![0f32; s.len()]);
        let tag = format!("{s:?}");

        cuda::softmax::softmax_fwd(&dev, &gx, s, &mut gy).unwrap();
        softmax::softmax_fwd(&x, s, &mut y).unwrap();
        close(
            &format!("softmax_fwd {tag}"),
            &down(&dev, &gy),
            &y,
            1e-7,
            1e-5,
        );
        // The backward from the CPU's y on both sides, so only the backward is compared.
        let gy_cpu = up(&dev, &y);
        cuda::softmax::softmax_bwd(&dev, &gy_cpu, &gdy, s, &mut gdx).unwrap();
        softmax::softmax_bwd(&y, &dy, s, &mut dx).unwrap();
        exact(&format!("softmax_bwd {tag}"), &down(&dev, &gdx), &dx);

        cuda::softmax::log_softmax_fwd(&dev, &gx, s, &mut gy).unwrap();
        softmax::log_softmax_fwd(&x, s, &mut y).unwrap();
        close(
            &format!("log_softmax_fwd {tag}"),
            &down(&dev, &gy),
            &y,
            1e-6,
            1e-5,
        );
        let gy_cpu = up(&dev, &y);
        cuda::softmax::log_softmax_bwd(&dev, &gy_cpu, &gdy, s, &mut gdx).unwrap();
        softmax::log_softmax_bwd(&y, &dy, s, &mut dx).unwrap();
        let atol = 1e-6 * s.c as f32;
        close(
            &format!("log_softmax_bwd {tag}"),
            &down(&dev, &gdx),
            &dx,
            atol,
            1e-5,
        );
    }
}

#[test]
fn softmax_rejects_what_the_cpu_rejects() {
    let Some(dev) = device() else { return };
    let x = up(&dev, &[0f32; 6]);
    let mut y = up(&dev, &[0f32; 5]);
    let err = cuda::softmax::log_softmax_fwd(&dev, &x, Nchw::new(1, 3, 1, 2), &mut y)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("log_softmax_fwd: `y` has 5 elements, expected 6"),
        "{err}"
    );
}
