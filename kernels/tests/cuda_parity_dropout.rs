//! Parity of the CUDA dropout (kernels/src/cuda/dropout.rs: element-wise and channel-wise,
//! forward and backward) with kernels/src/dropout.rs, at odd sizes and realistic ones: masks and
//! outputs bit-identical (the same Philox draws, the CPU's single f32 multiply).
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::philox::Philox;
use flowseg_kernels::{dropout, Nchw};

/// Odd shapes and a realistic one (the loss maps: 8 images, 21 classes, 128×128).
const SHAPES: &[Nchw] = &[
    Nchw::new(1, 1, 1, 1),
    Nchw::new(3, 5, 17, 23),
    Nchw::new(2, 19, 33, 47),
    Nchw::new(8, 21, 128, 128),
];

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
