//! Parity of the CUDA resizing (kernels/src/cuda/resize.rs: bilinear forward and backward,
//! nearest for label maps) with kernels/src/resize.rs on random inputs, up and down at odd sizes
//! and a realistic one, align_corners false and true: bit-identical. Also the CPU's errors for
//! what it rejects.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::{resize, Nchw};

/// Odd sizes (not multiples of anything) and one realistic activation.
const SHAPES: &[Nchw] = &[
    Nchw::new(3, 5, 17, 23),
    Nchw::new(1, 3, 1, 2),
    Nchw::new(16, 64, 64, 64),
];

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
