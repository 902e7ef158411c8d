//! Parity of the CUDA mixing kernels (kernels/src/cuda/mix.rs: box and class masks, the mix of
//! images and label maps, its backward) with kernels/src/mix.rs, from the same host draws, at odd
//! sizes and realistic ones. Every comparison is bit-identical: the kernels do the CPU's f32
//! operations in the CPU's order under --fmad=false, and the backward gathers in the CPU's order.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::mix::{
    self, Area, AspectSampling, BoxParams, ClassCount, Combine, MixSource, Partner,
};
use flowseg_kernels::philox::Philox;
use flowseg_kernels::Nchw;

/// Odd shapes, one image taller than a 256-thread block, and a realistic batch.
const SHAPES: &[Nchw] = &[
    Nchw::new(3, 3, 17, 23),
    Nchw::new(2, 3, 300, 7),
    Nchw::new(16, 3, 64, 64),
];

fn partners(n: usize, mode: Partner) -> Vec<i32> {
    let mut p = vec![0i32; n];
    mix::draw_partners(&Philox::new(11, 4), mode, &mut p).unwrap();
    p
}

#[test]
fn box_masks_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    let params = BoxParams {
        boxes: 3,
        area: Area::Uniform { lo: 0.1, hi: 0.6 },
        aspect: [0.3, 1.0 / 0.3],
        aspect_sampling: AspectSampling::LogUniform,
        p: 0.8,
    };
    for &s in SHAPES {
        let boxes = mix::draw_boxes(&Philox::new(13, 5), s.n, s.h, s.w, &params).unwrap();
        for combine in [Combine::Union, Combine::Xor] {
            let mut cpu = vec![7f32; s.n * s.plane()];
            mix::box_mask_fwd(&boxes, s.n, s.h, s.w, 3, combine, &mut cpu).unwrap();
            let mut m = up(&dev, &vec![7f32; cpu.len()]);
            cuda::mix::box_mask_fwd(&dev, &boxes, s.n, s.h, s.w, 3, combine, &mut m).unwrap();
            let got = down(&dev, &m);
            exact(&format!("box_mask_fwd {s:?} {combine:?}"), &got, &cpu);
            assert!(
                got.contains(&1.0) && got.contains(&0.0),
                "a mask with both values"
            );
        }
    }
}

#[test]
fn class_masks_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &s in SHAPES {
        let pixels = s.n * s.plane();
        // 6 classes and the ignore label 255 (one pixel in 8).
        let label: Vec<i32> = ints(41, pixels, 48)
            .into_iter()
            .map(|v| if v >= 42 { 255 } else { v % 6 })
            .collect();
        let partner = partners(s.n, Partner::Permute);
        for count in [ClassCount::HalfDown, ClassCount::HalfUp] {
            let chosen = mix::draw_classes(
                &label,
                &partner,
                s.n,
                s.h,
                s.w,
                255,
                count,
                &Philox::new(17, 6),
            )
            .unwrap();
            let mut cpu = vec![7f32; pixels];
            mix::class_mask_fwd(&label, &partner, &chosen, s.n, s.h, s.w, &mut cpu).unwrap();
            let mut m = up(&dev, &vec![7f32; pixels]);
            cuda::mix::class_mask_fwd(
                &dev,
                &up(&dev, &label),
                &partner,
                &chosen,
                s.n,
                s.h,
                s.w,
                &mut m,
            )
            .unwrap();
            exact(
                &format!("class_mask_fwd {s:?} {count:?}"),
                &down(&dev, &m),
                &cpu,
            );
        }
    }
}

/// Shapes for the mix itself: any C (1 for label maps, 3 images, 19 logits).
const MIX_SHAPES: &[Nchw] = &[
    Nchw::new(3, 1, 17, 23),
    Nchw::new(3, 19, 17, 23),
    Nchw::new(16, 3, 64, 64),
];

/// A mask in {0, 1} with a few fractional values, so both branches and the blend are covered.
fn mask(seed: u64, len: usize) -> Vec<f32> {
    uniform(seed, len, 0.0, 1.0)
        .into_iter()
        .map(|u| {
            if u < 0.45 {
                0.0
            } else if u < 0.9 {
                1.0
            } else {
                u
            }
        })
        .collect()
}

#[test]
fn mix_fwd_and_labels_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for (i, &s) in MIX_SHAPES.iter().enumerate() {
        let seed = 50 + 10 * i as u64;
        let (a, b) = (
            uniform(seed, s.len(), -2.0, 2.0),
            uniform(seed + 1, s.len(), -2.0, 2.0),
        );
        let (la, lb) = (ints(seed + 2, s.len(), 21), ints(seed + 3, s.len(), 21));
        let m = mask(seed + 4, s.n * s.plane());
        let (da, db, dm) = (up(&dev, &a), up(&dev, &b), up(&dev, &m));
        let (dla, dlb) = (up(&dev, &la), up(&dev, &lb));
        for mode in [Partner::Roll, Partner::Permute, Partner::Same] {
            let partner = partners(s.n, mode);
            // Within one batch (src = a) and with a second batch (src = b).
            for with_b in [false, true] {
                let (src, dsrc) = if with_b { (&b, &db) } else { (&a, &da) };
                let mut cpu = vec![0f32; s.len()];
                mix::mix_fwd(&a, src, &m, &partner, s, &mut cpu).unwrap();
                let mut out = up(&dev, &vec![-9f32; s.len()]);
                cuda::mix::mix_fwd(&dev, &da, dsrc, &dm, &partner, s, &mut out).unwrap();
                let what = format!("mix_fwd {s:?} {mode:?} b {with_b}");
                exact(&what, &down(&dev, &out), &cpu);

                let (lsrc, dlsrc) = if with_b { (&lb, &dlb) } else { (&la, &dla) };
                let mut cpu = vec![0i32; s.len()];
                mix::mix_labels_fwd(&la, lsrc, &m, &partner, s, &mut cpu).unwrap();
                let mut out = up(&dev, &vec![-9i32; s.len()]);
                cuda::mix::mix_labels_fwd(&dev, &dla, dlsrc, &dm, &partner, s, &mut out).unwrap();
                exact_int(
                    &format!("mix_labels_fwd {s:?} {mode:?} b {with_b}"),
                    &down(&dev, &out),
                    &cpu,
                );
            }
        }
    }
}

#[test]
fn mix_bwd_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for (i, &s) in MIX_SHAPES.iter().enumerate() {
        let seed = 90 + 10 * i as u64;
        let g = uniform(seed, s.len(), -1.0, 1.0);
        let m = mask(seed + 1, s.n * s.plane());
        let (dg, dm) = (up(&dev, &g), up(&dev, &m));
        // A partner list where sample 0 is the partner of several samples, so shares add up.
        let crowded: Vec<i32> = (0..s.n)
            .map(|n| if n % 2 == 0 { 0 } else { n as i32 })
            .collect();
        for (name, partner) in [
            ("roll", partners(s.n, Partner::Roll)),
            ("permute", partners(s.n, Partner::Permute)),
            ("crowded", crowded),
        ] {
            // (source, da given, db given)
            for (source, with_da, with_db) in [
                (MixSource::A, true, false),
                (MixSource::B, true, true),
                (MixSource::B, false, true),
                (MixSource::B, true, false),
            ] {
                let mut cpu_da = vec![5f32; s.len()];
                let mut cpu_db = vec![5f32; s.len()];
                mix::mix_bwd(
                    &g,
                    &m,
                    &partner,
                    s,
                    source,
                    with_da.then_some(&mut cpu_da[..]),
                    with_db.then_some(&mut cpu_db[..]),
                )
                .unwrap();
                let mut da = up(&dev, &vec![5f32; s.len()]);
                let mut db = up(&dev, &vec![5f32; s.len()]);
                cuda::mix::mix_bwd(
                    &dev,
                    &dg,
                    &dm,
                    &partner,
                    s,
                    source,
                    with_da.then_some(&mut da as _),
                    with_db.then_some(&mut db as _),
                )
                .unwrap();
                let what = format!("mix_bwd {s:?} {name} {source:?} da {with_da} db {with_db}");
                exact(&format!("{what} da"), &down(&dev, &da), &cpu_da);
                exact(&format!("{what} db"), &down(&dev, &db), &cpu_db);
            }
        }
    }
}

#[test]
fn mix_errors_are_the_cpu_errors() {
    let Some(dev) = device() else { return };
    let s = Nchw::new(2, 1, 2, 2);
    let (a, m) = (up(&dev, &[0f32; 8]), up(&dev, &[0f32; 8]));
    let mut out = up(&dev, &[0f32; 8]);
    let bad = [0, 2];
    let err = cuda::mix::mix_fwd(&dev, &a, &a, &m, &bad, s, &mut out).unwrap_err();
    let mut cpu = [0f32; 8];
    let cpu_err = mix::mix_fwd(&[0f32; 8], &[0f32; 8], &[0f32; 8], &bad, s, &mut cpu).unwrap_err();
    assert_eq!(err.to_string(), cpu_err.to_string());
    let mut db = up(&dev, &[0f32; 8]);
    let err = cuda::mix::mix_bwd(
        &dev,
        &a,
        &m,
        &[0, 1],
        s,
        MixSource::A,
        None,
        Some(&mut db as _),
    )
    .unwrap_err();
    assert!(err.to_string().contains("source A"), "{err}");
}
