//! Parity of the CUDA argmax / max over classes and max's backward
//! (kernels/src/cuda/argmax.rs) with kernels/src/argmax.rs, on quantised inputs (frequent ties)
//! with NaNs: identical, comparisons and copies only.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::{argmax, Nchw};

#[test]
fn argmax_and_max_match_cpu_with_ties_and_nan() {
    let Some(dev) = device() else { return };
    for shape in [
        Nchw::new(1, 1, 1, 1),
        Nchw::new(3, 19, 31, 37),
        Nchw::new(8, 21, 128, 128),
    ] {
        let pixels = shape.n * shape.plane();
        // Quantised values make ties common; a few NaNs test the NaN rule.
        let mut x: Vec<f32> = uniform(60, shape.len(), 0.0, 8.0)
            .iter()
            .map(|v| v.floor())
            .collect();
        for i in (0..x.len()).step_by(997) {
            x[i] = f32::NAN;
        }
        let dxx = up(&dev, &x);
        let mut idx = up(&dev, &vec![0i32; pixels]);
        let mut vals = up(&dev, &vec![0f32; pixels]);
        let (mut idx_cpu, mut vals_cpu) = (vec![0i32; pixels], vec![0f32; pixels]);
        cuda::argmax::argmax_fwd(&dev, &dxx, shape, &mut idx).unwrap();
        argmax::argmax_fwd(&x, shape, &mut idx_cpu).unwrap();
        exact_int(
            &format!("argmax_fwd {shape:?}"),
            &down(&dev, &idx),
            &idx_cpu,
        );
        cuda::argmax::max_fwd(&dev, &dxx, shape, &mut vals, &mut idx).unwrap();
        argmax::max_fwd(&x, shape, &mut vals_cpu, &mut idx_cpu).unwrap();
        exact_int(
            &format!("max_fwd idx {shape:?}"),
            &down(&dev, &idx),
            &idx_cpu,
        );
        close(
            &format!("max_fwd values {shape:?}"),
            &down(&dev, &vals),
            &vals_cpu,
            0.0,
            0.0,
        );

        let dy = uniform(61, pixels, -1.0, 1.0);
        let mut g = up(&dev, &vec![f32::NAN; shape.len()]);
        let mut g_cpu = vec![0f32; shape.len()];
        cuda::argmax::max_bwd(&dev, &up(&dev, &dy), &up(&dev, &idx_cpu), shape, &mut g).unwrap();
        argmax::max_bwd(&dy, &idx_cpu, shape, &mut g_cpu).unwrap();
        exact(&format!("max_bwd {shape:?}"), &down(&dev, &g), &g_cpu);
    }
}
