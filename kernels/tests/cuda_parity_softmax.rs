//! Parity of the CUDA softmax (kernels/src/cuda/softmax.rs, forward and backward) and sharpening
//! with kernels/src/softmax.rs on random inputs, at odd sizes and a realistic one, and the CPU's
//! errors for what it rejects. Each test names its tolerances.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::{softmax, Nchw};

/// Odd sizes (not multiples of anything) and one realistic activation.
const SHAPES: &[Nchw] = &[
    Nchw::new(3, 5, 17, 23),
    Nchw::new(1, 3, 1, 2),
    Nchw::new(16, 64, 64, 64),
];

/// softmax_bwd does the CPU's exact f32 operations: bit-identical. softmax_fwd uses CUDA's expf
/// (≤ 2 ulp) instead of libm: rtol 1e-5 + atol 1e-7 (probabilities in (0, 1]). Logits span ±30
/// so exp underflows for some classes, and one pixel gets a logit near 1000 (the max
/// subtraction must hold).
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
    }
}

#[test]
fn softmax_rejects_what_the_cpu_rejects() {
    let Some(dev) = device() else { return };
    let x = up(&dev, &[0f32; 6]);
    let mut y = up(&dev, &[0f32; 5]);
    let err = cuda::softmax::softmax_fwd(&dev, &x, Nchw::new(1, 3, 1, 2), &mut y)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("softmax_fwd: `y` has 5 elements, expected 6"),
        "{err}"
    );
}

#[test]
fn sharpen_matches_cpu() {
    let Some(dev) = device() else { return };
    for (shape, t) in [
        (Nchw::new(1, 1, 1, 1), 0.5),
        (Nchw::new(3, 7, 13, 11), 0.5),
        (Nchw::new(8, 21, 64, 64), 0.3),
    ] {
        // Probabilities with exact zeros (every 7th) and one all-zero pixel.
        let mut p: Vec<f32> = uniform(70, shape.len(), 0.0, 1.0)
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 7 == 0 { 0.0 } else { v })
            .collect();
        for c in 0..shape.c {
            p[c * shape.plane()] = 0.0;
        }
        let mut y = up(&dev, &vec![f32::NAN; shape.len()]);
        let mut y_cpu = vec![0f32; shape.len()];
        cuda::softmax::sharpen_fwd(&dev, &up(&dev, &p), shape, t, &mut y).unwrap();
        softmax::sharpen_fwd(&p, shape, t, &mut y_cpu).unwrap();
        close(
            &format!("sharpen_fwd {shape:?}"),
            &down(&dev, &y),
            &y_cpu,
            1e-7,
            1e-5,
        );
    }
}
