//! Parity of the CUDA element-wise kernels (kernels/src/cuda/elementwise.rs: add, mul, scale,
//! threshold, concat and slice along channels and batch) with kernels/src/elementwise.rs, at odd
//! sizes (not multiples of the 256-thread block) and realistic ones, and the CPU's errors for
//! bad lengths and ranges. Every comparison is bit-identical: the kernels do the CPU's exact f32
//! operation under --fmad=false or move 32-bit words untouched.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda::{self, DeviceBuf, DeviceBufMut};
use flowseg_kernels::elementwise::Broadcast;
use flowseg_kernels::{elementwise, Nchw};

#[test]
fn add_mul_and_scale_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let (a, b) = (uniform(1, n, -3.0, 3.0), uniform(2, n, -3.0, 3.0));
        let dy = uniform(3, n, -1.0, 1.0);
        let (da_, db_, dy_) = (up(&dev, &a), up(&dev, &b), up(&dev, &dy));
        let mut y = up(&dev, &vec![0f32; n]);
        let mut y2 = up(&dev, &vec![0f32; n]);
        let mut cpu = vec![0f32; n];
        let mut cpu2 = vec![0f32; n];

        cuda::elementwise::add_fwd(&dev, &da_, &db_, &mut y).unwrap();
        elementwise::add_fwd(&a, &b, &mut cpu).unwrap();
        exact(&format!("add_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::elementwise::add_relu_fwd(&dev, &da_, &db_, &mut y).unwrap();
        elementwise::add_relu_fwd(&a, &b, &mut cpu).unwrap();
        exact(&format!("add_relu_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::elementwise::mul_fwd(&dev, &da_, &db_, &mut y).unwrap();
        elementwise::mul_fwd(&a, &b, &mut cpu).unwrap();
        exact(&format!("mul_fwd n={n}"), &down(&dev, &y), &cpu);

        cuda::elementwise::mul_bwd(&dev, &da_, &db_, &dy_, &mut y, &mut y2).unwrap();
        elementwise::mul_bwd(&a, &b, &dy, &mut cpu, &mut cpu2).unwrap();
        exact(&format!("mul_bwd da n={n}"), &down(&dev, &y), &cpu);
        exact(&format!("mul_bwd db n={n}"), &down(&dev, &y2), &cpu2);

        cuda::elementwise::scale_fwd(&dev, &da_, 0.37, &mut y).unwrap();
        elementwise::scale_fwd(&a, 0.37, &mut cpu).unwrap();
        exact(&format!("scale_fwd n={n}"), &down(&dev, &y), &cpu);
    }
}

#[test]
fn length_mismatch_is_the_cpu_error() {
    let Some(dev) = device() else { return };
    let a = up(&dev, &[1f32, 2.0, 3.0]);
    let b = up(&dev, &[1f32, 2.0]);
    let mut y = up(&dev, &[0f32; 3]);
    let err = cuda::elementwise::add_fwd(&dev, &a, &b, &mut y)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "add_fwd: `b` has 2 elements, expected 3");
}

#[test]
fn threshold_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let mut x = uniform(1, n, -3.0, 3.0);
        // The edges: exactly 0, exactly the threshold, NaN.
        x[0] = 0.0;
        if n > 2 {
            x[1] = 0.5;
            x[2] = f32::NAN;
        }
        let gx = up(&dev, &x);
        let mut g = zeros(&dev, n);
        let mut cpu = vec![0f32; n];

        for below in [false, true] {
            cuda::elementwise::threshold_fwd(&dev, &gx, 0.5, below, &mut g).unwrap();
            elementwise::threshold_fwd(&x, 0.5, below, &mut cpu).unwrap();
            exact(
                &format!("threshold_fwd below={below} n={n}"),
                &down(&dev, &g),
                &cpu,
            );
        }
    }
}

#[test]
fn concat_and_slice_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    // (channel parts, batch parts) of a [N, C, H, W] whole: odd extents, and a realistic decoder
    // skip connection (48 + 256 channels at 129×129).
    let cases: [(Nchw, Vec<usize>, Vec<usize>); 3] = [
        (Nchw::new(3, 6, 5, 7), vec![1, 3, 2], vec![2, 1]),
        (Nchw::new(1, 2, 1, 1), vec![2], vec![1]),
        (Nchw::new(4, 304, 129, 129), vec![48, 256], vec![1, 3]),
    ];
    for (i, (whole, cparts, nparts)) in cases.iter().enumerate() {
        let whole = *whole;
        let tag = format!("{whole:?}");
        let x = uniform(10 + i as u64, whole.len(), -2.0, 2.0);
        let gx = up(&dev, &x);

        // Channel concat of f32 parts, then its backward.
        let cshapes: Vec<Nchw> = cparts
            .iter()
            .map(|&c| Nchw::new(whole.n, c, whole.h, whole.w))
            .collect();
        let cdata: Vec<Vec<f32>> = cshapes
            .iter()
            .enumerate()
            .map(|(j, s)| uniform(20 + j as u64, s.len(), -1.0, 1.0))
            .collect();
        let gparts: Vec<_> = cdata.iter().map(|d| up(&dev, d)).collect();
        let inputs: Vec<(&dyn DeviceBuf<f32>, Nchw)> = gparts
            .iter()
            .zip(&cshapes)
            .map(|(g, s)| (g as &dyn DeviceBuf<f32>, *s))
            .collect();
        let mut gy = zeros(&dev, whole.len());
        cuda::elementwise::concat_channels_fwd(&dev, &inputs, &mut gy, whole).unwrap();
        let cpu_inputs: Vec<(&[f32], Nchw)> = cdata
            .iter()
            .zip(&cshapes)
            .map(|(d, s)| (&d[..], *s))
            .collect();
        let mut y = vec![0f32; whole.len()];
        elementwise::concat_channels_fwd(&cpu_inputs, &mut y, whole).unwrap();
        exact(&format!("concat_channels_fwd {tag}"), &down(&dev, &gy), &y);

        let mut gouts: Vec<_> = cshapes.iter().map(|s| zeros(&dev, s.len())).collect();
        let mut outs: Vec<(&mut dyn DeviceBufMut<f32>, Nchw)> = gouts
            .iter_mut()
            .zip(&cshapes)
            .map(|(g, s)| (g as &mut dyn DeviceBufMut<f32>, *s))
            .collect();
        cuda::elementwise::concat_channels_bwd(&dev, &gx, whole, &mut outs).unwrap();
        let mut cpu_outs: Vec<Vec<f32>> = cshapes.iter().map(|s| vec![0f32; s.len()]).collect();
        let mut cpu_refs: Vec<(&mut [f32], Nchw)> = cpu_outs
            .iter_mut()
            .zip(&cshapes)
            .map(|(d, s)| (&mut d[..], *s))
            .collect();
        elementwise::concat_channels_bwd(&x, whole, &mut cpu_refs).unwrap();
        for (j, (g, c)) in gouts.iter().zip(&cpu_outs).enumerate() {
            exact(
                &format!("concat_channels_bwd part {j} {tag}"),
                &down(&dev, g),
                c,
            );
        }

        // Batch concat of i32 label maps (the copies move words, any 4-byte type), then the
        // f32 backward.
        let nshapes: Vec<Nchw> = nparts
            .iter()
            .map(|&n| Nchw::new(n, whole.c, whole.h, whole.w))
            .collect();
        let ldata: Vec<Vec<i32>> = nshapes
            .iter()
            .enumerate()
            .map(|(j, s)| (0..s.len()).map(|v| (v * 7 + j) as i32 - 3).collect())
            .collect();
        let glabels: Vec<_> = ldata.iter().map(|d| up(&dev, d)).collect();
        let linputs: Vec<(&dyn DeviceBuf<i32>, Nchw)> = glabels
            .iter()
            .zip(&nshapes)
            .map(|(g, s)| (g as &dyn DeviceBuf<i32>, *s))
            .collect();
        let mut gl = up(&dev, &vec![0i32; whole.len()]);
        cuda::elementwise::concat_batch_fwd(&dev, &linputs, &mut gl, whole).unwrap();
        let cpu_l: Vec<(&[i32], Nchw)> = ldata
            .iter()
            .zip(&nshapes)
            .map(|(d, s)| (&d[..], *s))
            .collect();
        let mut l = vec![0i32; whole.len()];
        elementwise::concat_batch_fwd(&cpu_l, &mut l, whole).unwrap();
        exact_int(&format!("concat_batch_fwd i32 {tag}"), &down(&dev, &gl), &l);

        let mut gouts: Vec<_> = nshapes.iter().map(|s| zeros(&dev, s.len())).collect();
        let mut outs: Vec<(&mut dyn DeviceBufMut<f32>, Nchw)> = gouts
            .iter_mut()
            .zip(&nshapes)
            .map(|(g, s)| (g as &mut dyn DeviceBufMut<f32>, *s))
            .collect();
        cuda::elementwise::concat_batch_bwd(&dev, &gx, whole, &mut outs).unwrap();
        let mut cpu_outs: Vec<Vec<f32>> = nshapes.iter().map(|s| vec![0f32; s.len()]).collect();
        let mut cpu_refs: Vec<(&mut [f32], Nchw)> = cpu_outs
            .iter_mut()
            .zip(&nshapes)
            .map(|(d, s)| (&mut d[..], *s))
            .collect();
        elementwise::concat_batch_bwd(&x, whole, &mut cpu_refs).unwrap();
        for (j, (g, c)) in gouts.iter().zip(&cpu_outs).enumerate() {
            exact(
                &format!("concat_batch_bwd part {j} {tag}"),
                &down(&dev, g),
                c,
            );
        }

        // Slices: a middle range, the full range and an empty one; backward from NaN-filled dx
        // so a missed zero shows.
        let crange = [
            (1.min(whole.c), whole.c - whole.c / 3),
            (0, whole.c),
            (1, 1),
        ];
        for (c0, c1) in crange {
            // A view of `part` elements of a non-empty buffer: an empty range allocates nothing.
            let part = whole.n * (c1 - c0) * whole.plane();
            let mut gy = zeros(&dev, part.max(1));
            cuda::elementwise::slice_channels_fwd(
                &dev,
                &gx,
                whole,
                c0,
                c1,
                &mut gy.slice_mut(0..part),
            )
            .unwrap();
            let mut y = vec![0f32; part];
            elementwise::slice_channels_fwd(&x, whole, c0, c1, &mut y).unwrap();
            let what = format!("slice_channels_fwd {c0}..{c1} {tag}");
            exact(&what, &down(&dev, &gy)[..part], &y);
            let mut gdx = up(&dev, &vec![f32::NAN; whole.len()]);
            cuda::elementwise::slice_channels_bwd(
                &dev,
                &gy.slice(0..part),
                whole,
                c0,
                c1,
                &mut gdx,
            )
            .unwrap();
            let mut dx = vec![0f32; whole.len()];
            elementwise::slice_channels_bwd(&y, whole, c0, c1, &mut dx).unwrap();
            exact(
                &format!("slice_channels_bwd {c0}..{c1} {tag}"),
                &down(&dev, &gdx),
                &dx,
            );
        }
        let nrange = [(whole.n / 2, whole.n), (0, whole.n), (0, 0)];
        for (n0, n1) in nrange {
            let part = (n1 - n0) * whole.image();
            let mut gy = zeros(&dev, part.max(1));
            cuda::elementwise::slice_batch_fwd(
                &dev,
                &gx,
                whole,
                n0,
                n1,
                &mut gy.slice_mut(0..part),
            )
            .unwrap();
            let mut y = vec![0f32; part];
            elementwise::slice_batch_fwd(&x, whole, n0, n1, &mut y).unwrap();
            let what = format!("slice_batch_fwd {n0}..{n1} {tag}");
            exact(&what, &down(&dev, &gy)[..part], &y);
            let mut gdx = up(&dev, &vec![f32::NAN; whole.len()]);
            cuda::elementwise::slice_batch_bwd(&dev, &gy.slice(0..part), whole, n0, n1, &mut gdx)
                .unwrap();
            let mut dx = vec![0f32; whole.len()];
            elementwise::slice_batch_bwd(&y, whole, n0, n1, &mut dx).unwrap();
            exact(
                &format!("slice_batch_bwd {n0}..{n1} {tag}"),
                &down(&dev, &gdx),
                &dx,
            );
        }
    }
}

#[test]
fn concat_and_slice_errors_are_the_cpu_errors() {
    let Some(dev) = device() else { return };
    let whole = Nchw::new(2, 3, 2, 2);
    let a = zeros(&dev, 2 * 2 * 4);
    let mut y = zeros(&dev, whole.len());
    let parts: [(&dyn DeviceBuf<f32>, Nchw); 1] = [(&a, Nchw::new(2, 2, 2, 2))];
    let err = cuda::elementwise::concat_channels_fwd(&dev, &parts, &mut y, whole)
        .unwrap_err()
        .to_string();
    let cpu = elementwise::concat_channels_fwd(
        &[(&[0f32; 16][..], Nchw::new(2, 2, 2, 2))],
        &mut [0f32; 24],
        whole,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, cpu);
    let err = cuda::elementwise::slice_channels_fwd(&dev, &y, whole, 2, 4, &mut a.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("channel range 2..4 is not within 0..3"),
        "{err}"
    );
}

#[test]
fn affine_and_broadcast_products_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &n in SIZES {
        let x = uniform(11, n, -3.0, 3.0);
        let gx = up(&dev, &x);
        let mut g = zeros(&dev, n);
        let mut cpu = vec![0f32; n];
        cuda::elementwise::affine_fwd(&dev, &gx, 0.6, 0.7, &mut g).unwrap();
        elementwise::affine_fwd(&x, 0.6, 0.7, &mut cpu).unwrap();
        exact(&format!("affine_fwd n={n}"), &down(&dev, &g), &cpu);
    }
    for shape in [
        Nchw::new(3, 5, 7, 9),
        Nchw::new(2, 16, 64, 64),
        Nchw::new(1, 1, 1, 1),
    ] {
        let x = uniform(12, shape.len(), -2.0, 2.0);
        let gx = up(&dev, &x);
        for over in [Broadcast::OverBatch, Broadcast::OverChannels] {
            let m_len = match over {
                Broadcast::OverBatch => shape.c * shape.plane(),
                Broadcast::OverChannels => shape.n * shape.plane(),
            };
            let m = uniform(13, m_len, 0.0, 2.0);
            let mut g = zeros(&dev, shape.len());
            let mut cpu = vec![0f32; shape.len()];
            cuda::elementwise::mul_broadcast_fwd(&dev, &gx, &up(&dev, &m), shape, over, &mut g)
                .unwrap();
            elementwise::mul_broadcast_fwd(&x, &m, shape, over, &mut cpu).unwrap();
            exact(
                &format!("mul_broadcast_fwd {shape:?} {over:?}"),
                &down(&dev, &g),
                &cpu,
            );
        }
    }
}
