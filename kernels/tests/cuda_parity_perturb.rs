//! Parity of the CUDA perturbation masks (kernels/src/cuda/perturb.rs: F-Drop's salient-region
//! mask, the foreground / background masks) with kernels/src/perturb.rs, bit for bit, at odd
//! sizes and the graph's, with NaN in the attention map.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::perturb;

#[test]
fn salient_drop_mask_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for (n, plane) in [(1, 1), (3, 257), (8, 64 * 64), (2, 1000)] {
        let mut a = uniform(31, n * plane, -1.0, 3.0);
        if n > 1 && plane > 2 {
            a[plane + 1] = f32::NAN; // the second sample is dropped whole
        }
        let mut g = zeros(&dev, a.len());
        let mut cpu = vec![0f32; a.len()];
        cuda::perturb::salient_drop_mask_fwd(&dev, &up(&dev, &a), n, 0.8, &mut g).unwrap();
        perturb::salient_drop_mask_fwd(&a, n, 0.8, &mut cpu).unwrap();
        exact(
            &format!("salient_drop_mask_fwd {n}x{plane}"),
            &down(&dev, &g),
            &cpu,
        );
    }
}

#[test]
fn foreground_masks_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let label = ints(32, n, 6);
        let gl = up(&dev, &label);
        for keep in [true, false] {
            let mut g = zeros(&dev, n);
            let mut cpu = vec![0f32; n];
            cuda::perturb::foreground_mask_fwd(&dev, &gl, 0, keep, &mut g).unwrap();
            perturb::foreground_mask_fwd(&label, 0, keep, &mut cpu).unwrap();
            exact(
                &format!("foreground_mask_fwd n={n} keep={keep}"),
                &down(&dev, &g),
                &cpu,
            );
        }
    }
}
