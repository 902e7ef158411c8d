//! Parity of the CUDA optimizer updates (kernels/src/cuda/optim.rs: SGD, AdamW, EMA, and their
//! guarded forms with device-side scalars, assign and finite_and) with
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

/// The guarded updates of the step's update nodes (scalars and guard read on the device)
/// against the CPU kernels fed the same scalars: bit for bit with the guard at 1 or absent,
/// and nothing written with the guard at 0; `finite_and` against the CPU's rule.
#[test]
fn guarded_updates_match_cpu_and_a_zero_guard_writes_nothing() {
    let Some(dev) = device() else { return };
    let adam = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let one = up(&dev, &[1.0f32]);
    let zero = up(&dev, &[0.0f32]);
    for &n in SIZES {
        let p0 = uniform(50, n, -1.0, 1.0);
        let g = uniform(51, n, -1.0, 1.0);
        let dg = up(&dev, &g);
        for (guard, name) in [
            (None, "no guard"),
            (Some(&one), "guard 1"),
            (Some(&zero), "guard 0"),
        ] {
            let ok = guard.map(|o| o as &dyn cuda::DeviceBuf<f32>);
            let open = guard.is_none_or(|o| std::ptr::eq(o, &one));
            // AdamW at step 3: slots [pad, step_size, shrink, bc2_sqrt].
            let s = adam.at::<f32>(3).unwrap();
            let scalars = up(&dev, &[9.0f32, s.step_size, s.shrink, s.bc2_sqrt]);
            let (mut p, mut m, mut v) = (p0.clone(), vec![0.1f32; n], vec![0.01f32; n]);
            let (mut dp, mut dm, mut dv) = (up(&dev, &p), up(&dev, &m), up(&dev, &v));
            cuda::optim::adamw_step_guarded(
                &dev,
                &mut dp,
                &dg,
                &mut dm,
                &mut dv,
                &scalars,
                1,
                (0.9, 0.999),
                1e-8,
                ok,
            )
            .unwrap();
            if open {
                optim::adamw_apply(&mut p, &g, &mut m, &mut v, &s).unwrap();
            }
            exact(&format!("adamw guarded {name} n={n}"), &down(&dev, &dp), &p);
            exact(
                &format!("adamw guarded m {name} n={n}"),
                &down(&dev, &dm),
                &m,
            );
            exact(
                &format!("adamw guarded v {name} n={n}"),
                &down(&dev, &dv),
                &v,
            );
            // SGD with momentum, lr from slot 2.
            let cfg = Sgd {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
            };
            let lrs = up(&dev, &[0.0f32, 0.0, 0.05f32]);
            let (mut p, mut b) = (p0.clone(), vec![0.3f32; n]);
            let (mut dp, mut db) = (up(&dev, &p), up(&dev, &b));
            cuda::optim::sgd_step_guarded(&dev, &mut dp, &dg, &mut db, &lrs, 2, &cfg, ok).unwrap();
            if open {
                optim::sgd_step(
                    &mut p,
                    &g,
                    &mut b,
                    &Sgd {
                        lr: f64::from(0.05f32),
                        ..cfg
                    },
                )
                .unwrap();
            }
            exact(&format!("sgd guarded {name} n={n}"), &down(&dev, &dp), &p);
            exact(
                &format!("sgd guarded buf {name} n={n}"),
                &down(&dev, &db),
                &b,
            );
            // EMA with α, 1 − α in slots 0, 1; assign.
            let f = optim::EmaStep::<f32>::new(0.99).unwrap();
            let fs = up(&dev, &[f.keep, f.take]);
            let mut t = p0.clone();
            let mut dt = up(&dev, &t);
            cuda::optim::ema_update_guarded(&dev, &mut dt, &dg, &fs, 0, ok).unwrap();
            if open {
                optim::ema_apply(&mut t, &g, &f).unwrap();
            }
            exact(&format!("ema guarded {name} n={n}"), &down(&dev, &dt), &t);
            let mut da = up(&dev, &p0);
            cuda::optim::assign_guarded(&dev, &mut da, &dg, ok).unwrap();
            let want = if open { g.clone() } else { p0.clone() };
            exact(
                &format!("assign guarded {name} n={n}"),
                &down(&dev, &da),
                &want,
            );
        }
        // finite_and: 1 for finite values, 0 with one NaN, 0 when the incoming guard is 0.
        let mut bad = g.clone();
        bad[n / 2] = f32::NAN;
        for (x, ok_in, want) in [
            (&g, None, 1.0f32),
            (&bad, None, 0.0),
            (&g, Some(&zero), 0.0),
        ] {
            let dx = up(&dev, x);
            let mut out = up(&dev, &[7.0f32]);
            let ok_in = ok_in.map(|o| o as &dyn cuda::DeviceBuf<f32>);
            cuda::optim::finite_and(&dev, &dx, ok_in, &mut out).unwrap();
            exact(&format!("finite_and n={n}"), &down(&dev, &out), &[want]);
        }
    }
}
