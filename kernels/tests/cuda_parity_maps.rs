//! Parity of the CUDA guidance-map kernels (kernels/src/cuda/maps.rs) with kernels/src/maps.rs:
//! the error map (with ignored and out-of-range labels), the separable blur with scipy taps,
//! per-sample min–max normalisation (with and without a peak gate, one gated sample) and
//! selection by key (with ties) — identical bits, at odd sizes.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::{maps, Nchw};

const SHAPES: [Nchw; 3] = [
    Nchw::new(1, 1, 1, 1),
    Nchw::new(3, 5, 17, 23),
    Nchw::new(4, 11, 64, 64),
];

#[test]
fn error_map_matches_cpu() {
    let Some(dev) = device() else { return };
    for shape in SHAPES {
        let pixels = shape.n * shape.plane();
        let probs = uniform(70, shape.len(), 0.0, 1.0);
        let mut label = labels(71, pixels, shape.c, 255, 0.1);
        // An out-of-range label counts as all-zero one-hot, as an ignored one.
        if let Some(l) = label.get_mut(pixels / 2) {
            *l = shape.c as i32 + 3;
        }
        let mut y = up(&dev, &vec![f32::NAN; pixels]);
        let mut y_cpu = vec![0f32; pixels];
        cuda::maps::error_map_fwd(
            &dev,
            &up(&dev, &probs),
            shape,
            &up(&dev, &label),
            0.5,
            255,
            &mut y,
        )
        .unwrap();
        maps::error_map_fwd(&probs, shape, &label, 0.5, 255, &mut y_cpu).unwrap();
        exact(&format!("error_map_fwd {shape:?}"), &down(&dev, &y), &y_cpu);
    }
}

#[test]
fn separable_blur_matches_cpu() {
    let Some(dev) = device() else { return };
    for (shape, k) in SHAPES.into_iter().zip([1usize, 5, 17]) {
        let x = uniform(72, shape.len(), -1.0, 1.0);
        let taps = maps::scipy_gaussian_taps(k, maps::opencv_sigma(k));
        let mut y = up(&dev, &vec![f32::NAN; shape.len()]);
        let mut y_cpu = vec![0f32; shape.len()];
        cuda::maps::separable_blur_fwd(&dev, &up(&dev, &x), shape, &taps, &mut y).unwrap();
        maps::separable_blur_fwd(&x, shape, &taps, &mut y_cpu).unwrap();
        exact(
            &format!("separable_blur_fwd {shape:?} k={k}"),
            &down(&dev, &y),
            &y_cpu,
        );
    }
}

#[test]
fn minmax_normalize_matches_cpu() {
    let Some(dev) = device() else { return };
    for shape in SHAPES {
        let mut x = uniform(73, shape.len(), 0.0, 1.0);
        // The last sample peaks below the gate.
        let per = shape.image();
        for v in &mut x[(shape.n - 1) * per..] {
            *v *= 0.05;
        }
        for peak in [None, Some(0.1f32)] {
            let mut y = up(&dev, &vec![f32::NAN; x.len()]);
            let mut y_cpu = vec![0f32; x.len()];
            cuda::maps::minmax_normalize_fwd(&dev, &up(&dev, &x), shape.n, peak, 1e-9, &mut y)
                .unwrap();
            maps::minmax_normalize_fwd(&x, shape.n, peak, 1e-9, &mut y_cpu).unwrap();
            exact(
                &format!("minmax_normalize_fwd {shape:?} {peak:?}"),
                &down(&dev, &y),
                &y_cpu,
            );
        }
    }
}

#[test]
fn select_by_key_matches_cpu() {
    let Some(dev) = device() else { return };
    for shape in SHAPES {
        let pixels = shape.n * shape.plane();
        let a = uniform(74, shape.len(), 0.0, 1.0);
        let b = uniform(75, shape.len(), 0.0, 1.0);
        // Quantised keys: ties are common.
        let ka: Vec<f32> = uniform(76, pixels, 0.0, 4.0)
            .iter()
            .map(|v| v.floor())
            .collect();
        let kb: Vec<f32> = uniform(77, pixels, 0.0, 4.0)
            .iter()
            .map(|v| v.floor())
            .collect();
        let mut y = up(&dev, &vec![f32::NAN; shape.len()]);
        let mut m = up(&dev, &vec![f32::NAN; pixels]);
        let (mut y_cpu, mut m_cpu) = (vec![0f32; shape.len()], vec![0f32; pixels]);
        cuda::maps::select_by_key_fwd(
            &dev,
            &up(&dev, &a),
            &up(&dev, &b),
            &up(&dev, &ka),
            &up(&dev, &kb),
            shape,
            &mut y,
            &mut m,
        )
        .unwrap();
        maps::select_by_key_fwd(&a, &b, &ka, &kb, shape, &mut y_cpu, &mut m_cpu).unwrap();
        exact(
            &format!("select_by_key_fwd y {shape:?}"),
            &down(&dev, &y),
            &y_cpu,
        );
        exact(
            &format!("select_by_key_fwd mask {shape:?}"),
            &down(&dev, &m),
            &m_cpu,
        );
    }
}
