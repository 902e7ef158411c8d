//! Parity of the CUDA activations (kernels/src/cuda/activation.rs: relu, leaky relu) with their
//! CPU references in kernels/src/activation.rs, at odd sizes (not multiples of the 256-thread
//! block) and a realistic one (4×64×128×128), with the edges 0 and NaN. Every comparison is
//! bit-identical: the kernels do the CPU's exact f32 operations under --fmad=false.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::activation;
use flowseg_kernels::cuda;

#[test]
fn relu_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let a = uniform(1, n, -3.0, 3.0);
        let dy = uniform(3, n, -1.0, 1.0);
        let (da_, dy_) = (up(&dev, &a), up(&dev, &dy));
        let mut y = up(&dev, &vec![0f32; n]);
        let mut cpu = vec![0f32; n];

        cuda::activation::relu_fwd(&dev, &da_, &mut y).unwrap();
        activation::relu_fwd(&a, &mut cpu).unwrap();
        exact(&format!("relu_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::activation::relu_bwd(&dev, &da_, &dy_, &mut y).unwrap();
        activation::relu_bwd(&a, &dy, &mut cpu).unwrap();
        exact(&format!("relu_bwd n={n}"), &down(&dev, &y), &cpu);
    }
}

#[test]
fn leaky_relu_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let mut x = uniform(1, n, -3.0, 3.0);
        // The edges: exactly 0 and NaN.
        x[0] = 0.0;
        if n > 2 {
            x[1] = 0.5;
            x[2] = f32::NAN;
        }
        let dy = uniform(2, n, -1.0, 1.0);
        let (gx, gdy) = (up(&dev, &x), up(&dev, &dy));
        let mut g = zeros(&dev, n);
        let mut cpu = vec![0f32; n];

        cuda::activation::leaky_relu_fwd(&dev, &gx, 0.01, &mut g).unwrap();
        activation::leaky_relu_fwd(&x, 0.01, &mut cpu).unwrap();
        exact(&format!("leaky_relu_fwd n={n}"), &down(&dev, &g), &cpu);

        cuda::activation::leaky_relu_bwd(&dev, &gx, 0.2, &gdy, &mut g).unwrap();
        activation::leaky_relu_bwd(&x, 0.2, &dy, &mut cpu).unwrap();
        exact(&format!("leaky_relu_bwd n={n}"), &down(&dev, &g), &cpu);
    }
}
