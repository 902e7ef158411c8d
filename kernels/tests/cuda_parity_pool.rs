//! Parity of the CUDA pooling (kernels/src/cuda/pool.rs: max and global average pooling, forward
//! and backward) with kernels/src/pool.rs on random inputs, at odd sizes and a realistic one, and
//! the CPU's errors for what it rejects. Max pooling is bit-identical; the global mean agrees to
//! f32 rounding. Each test names its tolerance.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::pool::{self, Pool2d};
use flowseg_kernels::Nchw;

/// Odd sizes (not multiples of anything) and one realistic activation.
const SHAPES: &[Nchw] = &[
    Nchw::new(3, 5, 17, 23),
    Nchw::new(1, 3, 1, 2),
    Nchw::new(16, 64, 64, 64),
];

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

/// Max pooling does the CPU's exact operations in the CPU's order (the backward gathers in the
/// order the CPU scatters), so everything is bit-identical. Inputs are quantised to eighths so
/// windows hold ties (first-of-ties rule), and one NaN must propagate.
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
    let err = cuda::pool::max_pool2d_fwd(&dev, &x, s, Pool2d::square(1, 1, 0), &mut y, &mut a)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`y` has 1 elements, expected 4"), "{err}");
}
