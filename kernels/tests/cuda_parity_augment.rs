//! Parity of the CUDA augmentations (kernels/src/cuda/augment.rs: colour jitter, grayscale,
//! Gaussian blur, cutout) with kernels/src/augment.rs, from the same host draws, at odd sizes
//! (3×3×17×23, a 300-row image for the contrast mean's row loop) and a realistic one
//! (16×3×64×64). Every comparison is bit-identical: the kernels do the CPU's f32 operations in
//! the CPU's order under --fmad=false, the contrast mean is summed in the CPU's f64
//! row-then-total order, and the Gaussian weights come from the same host function.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::augment::{self, BlurParams, ColorJitterParams, CutoutSize};
use flowseg_kernels::cuda;
use flowseg_kernels::philox::Philox;
use flowseg_kernels::Nchw;

/// Odd shapes, one image taller than a 256-thread block, and a realistic batch.
const SHAPES: &[Nchw] = &[
    Nchw::new(3, 3, 17, 23),
    Nchw::new(2, 3, 300, 7),
    Nchw::new(16, 3, 64, 64),
];

#[test]
fn color_jitter_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    // p = 0.8 leaves some samples untouched; the second set disables saturation (identity
    // factor, skipped) and forces every sample.
    let params = [
        ColorJitterParams {
            p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
        },
        ColorJitterParams {
            p: 1.0,
            brightness: 0.8,
            contrast: 0.9,
            saturation: 0.0,
            hue: 0.5,
        },
    ];
    for (i, &s) in SHAPES.iter().enumerate() {
        let x = uniform(i as u64, s.len(), 0.0, 1.0);
        let dx = up(&dev, &x);
        for (j, p) in params.iter().enumerate() {
            let mut draws = augment::draw_color_jitter(&Philox::new(7, j as u64), s.n, p).unwrap();
            both(&mut draws, |d| &mut d.apply);
            let mut cpu = vec![0f32; s.len()];
            augment::color_jitter_fwd(&x, s, &draws, &mut cpu).unwrap();
            let mut y = up(&dev, &vec![-1f32; s.len()]);
            cuda::augment::color_jitter_fwd(&dev, &dx, s, &draws, &mut y).unwrap();
            exact(
                &format!("color_jitter_fwd {s:?} params {j}"),
                &down(&dev, &y),
                &cpu,
            );
        }
    }
}

#[test]
fn grayscale_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for (i, &s) in SHAPES.iter().enumerate() {
        let x = uniform(10 + i as u64, s.len(), 0.0, 1.0);
        let mut apply = augment::draw_grayscale(&Philox::new(3, 1), s.n, 0.5).unwrap();
        both(&mut apply, |a| a);
        let mut cpu = vec![0f32; s.len()];
        augment::grayscale_fwd(&x, s, &apply, &mut cpu).unwrap();
        let mut y = up(&dev, &vec![-1f32; s.len()]);
        cuda::augment::grayscale_fwd(&dev, &up(&dev, &x), s, &apply, &mut y).unwrap();
        exact(&format!("grayscale_fwd {s:?}"), &down(&dev, &y), &cpu);
    }
}

#[test]
fn gaussian_blur_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    let params = BlurParams {
        p: 0.7,
        sigma_min: 0.1,
        sigma_max: 2.0,
    };
    // 13 covers ±3σ; 41 is wider than the 17×23 image, so reflect folds more than once.
    for kernel in [augment::default_blur_kernel(2.0), 41] {
        for (i, &s) in SHAPES.iter().enumerate() {
            let x = uniform(20 + i as u64, s.len(), 0.0, 1.0);
            let mut draws = augment::draw_gaussian_blur(&Philox::new(5, 2), s.n, &params).unwrap();
            both(&mut draws, |d| &mut d.apply);
            let mut cpu = vec![0f32; s.len()];
            augment::gaussian_blur_fwd(&x, s, &draws, kernel, &mut cpu).unwrap();
            let mut y = up(&dev, &vec![-1f32; s.len()]);
            cuda::augment::gaussian_blur_fwd(&dev, &up(&dev, &x), s, &draws, kernel, &mut y)
                .unwrap();
            exact(
                &format!("gaussian_blur_fwd {s:?} kernel {kernel}"),
                &down(&dev, &y),
                &cpu,
            );
        }
    }
}

#[test]
fn cutout_matches_cpu_with_and_without_label_and_valid() {
    let Some(dev) = device() else { return };
    for (i, &s) in SHAPES.iter().enumerate() {
        let pixels = s.n * s.plane();
        let image = uniform(30 + i as u64, s.len(), 0.0, 1.0);
        let label = ints(31 + i as u64, pixels, 19);
        let valid = uniform(32 + i as u64, pixels, 0.0, 1.0);
        let fill = [0.5f32, 0.25, 0.125];
        let mut draws = augment::draw_cutout(
            &Philox::new(9, 3),
            s.n,
            s.h,
            s.w,
            0.8,
            CutoutSize::Area(0.3),
        )
        .unwrap();
        both(&mut draws, |d| &mut d.apply);
        let (dimg, dlabel, dvalid) = (up(&dev, &image), up(&dev, &label), up(&dev, &valid));
        // (with label, with valid in, with valid out)
        for (use_label, use_valid, use_valid_out) in [
            (true, true, true),
            (true, false, true),
            (false, false, true),
            (true, false, false),
            (false, false, false),
        ] {
            let mut cpu_img = vec![0f32; s.len()];
            let mut cpu_label = vec![0i32; pixels];
            let mut cpu_valid = vec![0f32; pixels];
            augment::cutout_fwd(
                &image,
                use_label.then_some(&label[..]),
                use_valid.then_some(&valid[..]),
                s,
                &draws,
                &fill,
                255,
                &mut cpu_img,
                use_label.then_some(&mut cpu_label[..]),
                use_valid_out.then_some(&mut cpu_valid[..]),
            )
            .unwrap();
            let mut img_out = up(&dev, &vec![-1f32; s.len()]);
            let mut label_out = up(&dev, &vec![0i32; pixels]);
            let mut valid_out = up(&dev, &vec![0f32; pixels]);
            cuda::augment::cutout_fwd(
                &dev,
                &dimg,
                use_label.then_some(&dlabel as _),
                use_valid.then_some(&dvalid as _),
                s,
                &draws,
                &fill,
                255,
                &mut img_out,
                use_label.then_some(&mut label_out as _),
                use_valid_out.then_some(&mut valid_out as _),
            )
            .unwrap();
            let what =
                format!("cutout_fwd {s:?} label {use_label} valid {use_valid}/{use_valid_out}");
            exact(&what, &down(&dev, &img_out), &cpu_img);
            exact_int(&what, &down(&dev, &label_out), &cpu_label);
            exact(&what, &down(&dev, &valid_out), &cpu_valid);
        }
    }
}

#[test]
fn augment_length_errors_are_the_cpu_errors() {
    let Some(dev) = device() else { return };
    let s = Nchw::new(1, 3, 2, 2);
    let x = up(&dev, &[0f32; 12]);
    let mut y = up(&dev, &[0f32; 11]);
    let err = cuda::augment::grayscale_fwd(&dev, &x, s, &[true], &mut y).unwrap_err();
    let mut cpu = [0f32; 11];
    let cpu_err = augment::grayscale_fwd(&[0f32; 12], s, &[true], &mut cpu).unwrap_err();
    assert_eq!(err.to_string(), cpu_err.to_string());
    let mut y = up(&dev, &[0f32; 12]);
    let draws = [augment::BlurDraw {
        apply: true,
        sigma: 1.0,
    }];
    let err = cuda::augment::gaussian_blur_fwd(&dev, &x, s, &draws, 4, &mut y).unwrap_err();
    assert!(err.to_string().contains("odd"), "{err}");
}
