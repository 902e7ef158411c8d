//! Parity of the augmentation and mixing CUDA kernels (`augment.cu`, `mix.cu`) with their CPU
//! references in `augment` / `mix`, from the same host draws, at odd sizes (3×3×17×23, a 300-row
//! image for the contrast mean's row loop) and a realistic one (16×3×64×64). Every comparison is
//! bit-identical: the kernels do the CPU's f32 operations in the CPU's order under --fmad=false,
//! the contrast mean is summed in the CPU's f64 row-then-total order, and the Gaussian weights
//! come from the same host function.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1`, which makes it fail.
#![cfg(feature = "cuda")]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::augment::{self, BlurParams, ColorJitterParams, CutoutSize};
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

fn ints(seed: u64, n: usize, k: u32) -> Vec<i32> {
    let g = Philox::new(seed, 0x1AB);
    (0..n).map(|i| (g.u32_at(i as u64) % k) as i32).collect()
}

/// Makes sure a small batch has both an applied sample (the first) and a copied one (the last).
fn both<D>(draws: &mut [D], apply: impl Fn(&mut D) -> &mut bool) {
    *apply(&mut draws[0]) = true;
    if draws.len() > 1 {
        let last = draws.len() - 1;
        *apply(&mut draws[last]) = false;
    }
}

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
