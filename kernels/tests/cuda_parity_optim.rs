//! Parity of the CUDA optimizer updates (kernels/src/cuda/optim.rs: SGD, AdamW, EMA) with
//! kernels/src/optim.rs, at odd sizes and a realistic one: bit-identical (the CPU's f32
//! operations in the CPU's order, host-derived scalars rounded as the CPU rounds them).
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::optim::{self, AdamW, Sgd};

#[test]
fn optimizers_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    let sgds = [
        Sgd {
            lr: 0.1,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        Sgd {
            lr: 0.01,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        },
        Sgd {
            lr: 0.01,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        },
    ];
    let adam = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    for &n in SIZES {
        let p0 = uniform(20, n, -1.0, 1.0);
        for cfg in &sgds {
            let (mut p, mut b) = (p0.clone(), vec![0f32; n]);
            let mut dp = up(&dev, &p);
            let mut db = up(&dev, &b);
            for step in 0..3 {
                let g = uniform(21 + step, n, -1.0, 1.0);
                let dg = up(&dev, &g);
                cuda::optim::sgd_step(&dev, &mut dp, &dg, &mut db, cfg).unwrap();
                optim::sgd_step(&mut p, &g, &mut b, cfg).unwrap();
            }
            exact(&format!("sgd {cfg:?} n={n}"), &down(&dev, &dp), &p);
            exact(&format!("sgd buf {cfg:?} n={n}"), &down(&dev, &db), &b);
        }
        let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
        let (mut dp, mut dm, mut dv) = (up(&dev, &p), up(&dev, &m), up(&dev, &v));
        for step in 1..=4u64 {
            let g = uniform(30 + step, n, -1.0, 1.0);
            let dg = up(&dev, &g);
            cuda::optim::adamw_step(&dev, &mut dp, &dg, &mut dm, &mut dv, &adam, step).unwrap();
            optim::adamw_step(&mut p, &g, &mut m, &mut v, &adam, step).unwrap();
        }
        exact(&format!("adamw param n={n}"), &down(&dev, &dp), &p);
        exact(&format!("adamw m n={n}"), &down(&dev, &dm), &m);
        exact(&format!("adamw v n={n}"), &down(&dev, &dv), &v);

        let src = uniform(40, n, -1.0, 1.0);
        let (mut t, ds) = (p0.clone(), up(&dev, &src));
        let mut dt = up(&dev, &t);
        cuda::optim::ema_update(&dev, &mut dt, &ds, 0.999).unwrap();
        optim::ema_update(&mut t, &src, 0.999).unwrap();
        exact(&format!("ema_update n={n}"), &down(&dev, &dt), &t);
    }
    let mut p = up(&dev, &[0f32; 4]);
    let g = up(&dev, &[0f32; 4]);
    let bad = Sgd {
        lr: -1.0,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let err = cuda::optim::sgd_step(&dev, &mut p, &g, &mut up(&dev, &[0f32; 0]), &bad).unwrap_err();
    assert!(err.to_string().contains("invalid learning rate"), "{err}");
}
