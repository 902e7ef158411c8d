//! Parity of the CUDA reductions (kernels/src/cuda/reduce.rs: the mean over all elements and its
//! backward, dot, the channel mean, L2 and CAM normalisation) with kernels/src/reduce.rs, at odd
//! sizes and realistic ones. The f64 sums over all elements (mean and dot) are finished in another
//! order than the CPU's and agree to f32 rounding; the channel mean and the backward are
//! bit-identical. Each test names its tolerance.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::{reduce, Nchw};

#[test]
fn mean_matches_cpu() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let x = uniform(50, n, -1.0, 2.0);
        let dx_ = up(&dev, &x);
        let mut out = up(&dev, &[0f32]);
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
        cuda::reduce::mean_bwd(&dev, &dy, &mut g).unwrap();
        reduce::mean_bwd(0.3, &mut cpu).unwrap();
        exact(&format!("mean_bwd n={n}"), &down(&dev, &g), &cpu);
    }
}

/// Odd shapes and a realistic one (the loss maps: 8 images, 21 classes, 128×128).
const SHAPES: &[Nchw] = &[
    Nchw::new(1, 1, 1, 1),
    Nchw::new(3, 5, 17, 23),
    Nchw::new(2, 19, 33, 47),
    Nchw::new(8, 21, 128, 128),
];

/// dot: rtol 1.2e-7 (an f64 sum in another order, rounded once). Channel mean: bit-identical
/// (the CPU's f64 channel-order sum, rounded once).
#[test]
fn dot_and_channel_mean_match_cpu() {
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
        let gx = up(&dev, &x);
        let mut gy = up(&dev, &vec![f32::NAN; pixels]);
        let mut y = vec![0f32; pixels];
        cuda::reduce::mean_channels_fwd(&dev, &gx, s, &mut gy).unwrap();
        reduce::mean_channels_fwd(&x, s, &mut y).unwrap();
        exact(&format!("mean_channels_fwd {s:?}"), &down(&dev, &gy), &y);
    }
}

#[test]
fn l2_normalize_matches_cpu_to_f32_rounding() {
    let Some(dev) = device() else { return };
    for (rows, per) in [(1, 1), (3, 1000), (8, 16 * 64 * 64), (2, 257)] {
        let mut x = uniform(21, rows * per, -0.5, 0.5);
        // A zero row stays zero on both sides.
        x[..per].fill(0.0);
        let mut g = zeros(&dev, x.len());
        let mut cpu = vec![0f32; x.len()];
        cuda::reduce::l2_normalize_fwd(&dev, &up(&dev, &x), rows, 2.0, 1e-8, &mut g).unwrap();
        reduce::l2_normalize_fwd(&x, rows, 2.0, 1e-8, &mut cpu).unwrap();
        close(
            &format!("l2_normalize_fwd {rows}x{per}"),
            &down(&dev, &g),
            &cpu,
            1e-7,
            1e-6,
        );
    }
}

#[test]
fn cam_normalize_matches_cpu_exactly() {
    let Some(dev) = device() else { return };
    for shape in [
        Nchw::new(1, 1, 1, 1),
        Nchw::new(3, 5, 7, 9),
        Nchw::new(8, 20, 33, 33),
    ] {
        let scores = uniform(80, shape.len(), -1.0, 1.0);
        // Labels 0/1, and one present class whose map is all negative (→ 0).
        let mut labels: Vec<f32> = uniform(81, shape.n * shape.c, 0.0, 1.0)
            .iter()
            .map(|&u| if u < 0.6 { 1.0 } else { 0.0 })
            .collect();
        labels[0] = 1.0;
        let mut scores = scores;
        for v in &mut scores[..shape.plane()] {
            *v = -v.abs();
        }
        let mut y = up(&dev, &vec![f32::NAN; shape.len()]);
        let mut y_cpu = vec![0f32; shape.len()];
        cuda::reduce::cam_normalize_fwd(
            &dev,
            &up(&dev, &scores),
            &up(&dev, &labels),
            shape,
            &mut y,
        )
        .unwrap();
        reduce::cam_normalize_fwd(&scores, &labels, shape, &mut y_cpu).unwrap();
        exact(
            &format!("cam_normalize_fwd {shape:?}"),
            &down(&dev, &y),
            &y_cpu,
        );
    }
}
