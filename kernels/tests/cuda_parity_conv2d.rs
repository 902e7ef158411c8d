//! Parity of the CUDA convolution (kernels/src/cuda/conv2d.rs) with the CPU kernel
//! (kernels/src/conv2d.rs) on random inputs in [-1, 1): odd sizes (N=3, Ci=5, Co=7, 13×11,
//! stride 2, pad 1, dilation 2; dense, grouped, depthwise; a 7×7 stem; rows beyond one 128-row
//! tile; a dilation wider than the map) and deeplab_lite's shapes at batch 16 — forward with and
//! without bias, and each of dx / dw / db. Outputs start as NaN, so an element a kernel fails to
//! write shows up as a mismatch.
//!
//! Tolerance of the GEMM paths: |gpu − cpu| ≤ 4·K·eps + 1e-5·|cpu| with K the length of each dot
//! product (Cg·kh·kw for y, Og·kh·kw for dx, N·Ho·Wo for dw and db) and eps = f32::EPSILON. Both
//! sides accumulate K products of values of size ≤ 1 in f32, in different orders (the CPU's
//! blocked GEMM, the GPU's K-order FMA chain per thread and, for dw, slice partials); each
//! rounding error is ≤ eps/2 times a partial sum whose typical size is √K/√3 for such inputs,
//! and the K errors add like a random walk, so the difference is ~K·eps/3 typically. 4·K·eps is
//! 12 times that: room for the tail over 10^5 elements, yet it fails on any indexing error (one
//! wrong tap changes an output by ~0.3). The depthwise forward and dx do the CPU's exact f32
//! operations in the CPU's order (--fmad=false) and must be bit-identical.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1`, which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::conv2d::{self, Conv2d};
use flowseg_kernels::cuda::cudarc_driver::CudaSlice;
use flowseg_kernels::cuda::{self, CudaError, Device};
use flowseg_kernels::Nchw;

/// A named case: input shape, output channels, parameters.
type Case = (&'static str, Nchw, usize, Conv2d);

fn odd_cases() -> Vec<Case> {
    let sq = Conv2d::square;
    vec![
        (
            "odd dense s2 p1 d2",
            Nchw::new(3, 5, 13, 11),
            7,
            sq(3, 2, 1, 2),
        ),
        (
            "odd depthwise s2 p1 d2",
            Nchw::new(3, 5, 13, 11),
            5,
            sq(3, 2, 1, 2).with_groups(5),
        ),
        (
            "groups 2",
            Nchw::new(2, 6, 9, 7),
            4,
            sq(3, 1, 1, 1).with_groups(2),
        ),
        (
            "7x7 s2 p3 stem",
            Nchw::new(2, 3, 11, 10),
            20,
            sq(7, 2, 3, 1),
        ),
        ("130 rows", Nchw::new(2, 130, 5, 4), 130, sq(3, 1, 1, 1)),
        (
            "dilation 3 on 2x3",
            Nchw::new(2, 3, 2, 3),
            5,
            sq(3, 1, 3, 3),
        ),
        (
            "rect 3x2 s(2,1) p(1,0) d(1,2)",
            Nchw::new(2, 4, 8, 7),
            3,
            Conv2d {
                kh: 3,
                kw: 2,
                sh: 2,
                sw: 1,
                ph: 1,
                pw: 0,
                dh: 1,
                dw: 2,
                groups: 1,
            },
        ),
        ("1x1 stride 2", Nchw::new(3, 6, 9, 7), 9, sq(1, 2, 0, 1)),
    ]
}

/// deeplab_lite's convolution shapes at batch 16 (width 16).
fn deeplab_cases() -> Vec<Case> {
    let sq = Conv2d::square;
    vec![
        (
            "dl 16->16 3x3 32x32",
            Nchw::new(16, 16, 32, 32),
            16,
            sq(3, 1, 1, 1),
        ),
        (
            "dl 64->32 3x3 d6 8x8",
            Nchw::new(16, 64, 8, 8),
            32,
            sq(3, 1, 6, 6),
        ),
        (
            "dl 48->32 3x3 16x16",
            Nchw::new(16, 48, 16, 16),
            32,
            sq(3, 1, 1, 1),
        ),
        (
            "dl 64->32 1x1 16x16",
            Nchw::new(16, 64, 16, 16),
            32,
            sq(1, 1, 0, 1),
        ),
    ]
}

fn is_depthwise(xs: Nchw, co: usize, p: &Conv2d) -> bool {
    p.groups == xs.c && p.groups == co && p.groups > 1
}

/// `close` with the K-dependent tolerance of the module header.
fn close_k(what: &str, gpu: &[f32], cpu: &[f32], k: usize) {
    close(what, gpu, cpu, 4.0 * k as f32 * f32::EPSILON, 1e-5);
}

fn nans(dev: &Device, n: usize) -> CudaSlice<f32> {
    up(dev, &vec![f32::NAN; n])
}

fn check_case(dev: &Device, seed: u64, (name, xs, co, p): Case) {
    let ys = p.out_shape(xs, co).unwrap();
    let x = uniform(seed, xs.len(), -1.0, 1.0);
    let w = uniform(seed + 1, p.weight_len(xs.c, co), -1.0, 1.0);
    let b = uniform(seed + 2, co, -1.0, 1.0);
    let dy = uniform(seed + 3, ys.len(), -1.0, 1.0);
    let (gx, gw, gb, gdy) = (up(dev, &x), up(dev, &w), up(dev, &b), up(dev, &dy));
    let depthwise = is_depthwise(xs, co, &p);
    let (cig, cog) = (xs.c / p.groups, co / p.groups);
    let pixels = ys.n * ys.plane();

    for with_bias in [true, false] {
        let mut y = vec![0f32; ys.len()];
        let bias = with_bias.then_some(b.as_slice());
        conv2d::conv2d_fwd(&x, xs, &w, bias, co, &p, &mut y).unwrap();
        let mut gy = nans(dev, ys.len());
        let gbias = with_bias.then_some(&gb as &dyn cuda::DeviceBuf<f32>);
        cuda::conv2d::conv2d_fwd(dev, &gx, xs, &gw, gbias, co, &p, &mut gy).unwrap();
        let what = format!("conv2d_fwd {name} bias={with_bias}");
        if depthwise {
            exact(&what, &down(dev, &gy), &y);
        } else {
            close_k(&what, &down(dev, &gy), &y, cig * p.kh * p.kw);
        }
    }

    let (mut dx, mut dw, mut db) = (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; co]);
    conv2d::conv2d_bwd(
        &x,
        xs,
        &w,
        co,
        &p,
        &dy,
        Some(&mut dx),
        Some(&mut dw),
        Some(&mut db),
    )
    .unwrap();
    let (mut gdx, mut gdw, mut gdb) = (nans(dev, x.len()), nans(dev, w.len()), nans(dev, co));
    cuda::conv2d::conv2d_bwd(
        dev,
        &gx,
        xs,
        &gw,
        co,
        &p,
        &gdy,
        Some(&mut gdx),
        Some(&mut gdw),
        Some(&mut gdb),
    )
    .unwrap();
    let (gdx_h, gdw_h) = (down(dev, &gdx), down(dev, &gdw));
    if depthwise {
        exact(&format!("conv2d_bwd dx {name}"), &gdx_h, &dx);
    } else {
        close_k(
            &format!("conv2d_bwd dx {name}"),
            &gdx_h,
            &dx,
            cog * p.kh * p.kw,
        );
    }
    close_k(&format!("conv2d_bwd dw {name}"), &gdw_h, &dw, pixels);
    close_k(
        &format!("conv2d_bwd db {name}"),
        &down(dev, &gdb),
        &db,
        pixels,
    );

    // Each output alone equals the full backward, bit for bit (same kernels, fixed orders), and
    // a second run repeats the first: dW's split-K partials are added in a fixed order.
    let mut only_dx = nans(dev, x.len());
    cuda::conv2d::conv2d_bwd(
        dev,
        &gx,
        xs,
        &gw,
        co,
        &p,
        &gdy,
        Some(&mut only_dx),
        None,
        None,
    )
    .unwrap();
    exact(&format!("dx alone {name}"), &down(dev, &only_dx), &gdx_h);
    let mut only_dw = nans(dev, w.len());
    cuda::conv2d::conv2d_bwd(
        dev,
        &gx,
        xs,
        &gw,
        co,
        &p,
        &gdy,
        None,
        Some(&mut only_dw),
        None,
    )
    .unwrap();
    exact(
        &format!("dw alone, rerun {name}"),
        &down(dev, &only_dw),
        &gdw_h,
    );
}

#[test]
fn conv_matches_cpu_at_odd_sizes() {
    let Some(dev) = device() else { return };
    for (i, case) in odd_cases().into_iter().enumerate() {
        check_case(&dev, 100 * i as u64, case);
    }
}

#[test]
fn conv_matches_cpu_at_deeplab_lite_shapes() {
    let Some(dev) = device() else { return };
    for (i, case) in deeplab_cases().into_iter().enumerate() {
        check_case(&dev, 1000 + 100 * i as u64, case);
    }
}

#[test]
fn conv_rejects_what_the_cpu_rejects() {
    let Some(dev) = device() else { return };
    let p = Conv2d::square(3, 1, 0, 1);
    let mut y = nans(&dev, 4);
    // Input smaller than the kernel.
    let (x4, w9) = (nans(&dev, 4), nans(&dev, 9));
    let e = cuda::conv2d::conv2d_fwd(&dev, &x4, Nchw::new(1, 1, 2, 2), &w9, None, 1, &p, &mut y)
        .unwrap_err();
    assert!(
        e.to_string().contains("smaller than the dilated kernel"),
        "{e}"
    );
    // Groups that do not divide the channels.
    let (x75, w18) = (nans(&dev, 75), nans(&dev, 18));
    let e = cuda::conv2d::conv2d_fwd(
        &dev,
        &x75,
        Nchw::new(1, 3, 5, 5),
        &w18,
        None,
        2,
        &p.with_groups(2),
        &mut y,
    )
    .unwrap_err();
    assert!(e.to_string().contains("groups = 2 must divide"), "{e}");
    // Wrong lengths, named as the CPU names them.
    let (x25, w8) = (nans(&dev, 25), nans(&dev, 8));
    let mut y9 = nans(&dev, 9);
    let e = cuda::conv2d::conv2d_fwd(&dev, &x25, Nchw::new(1, 1, 5, 5), &w8, None, 1, &p, &mut y9)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            CudaError::Kernel(flowseg_kernels::KernelError::Len { arg: "w", .. })
        ),
        "{e}"
    );
    let mut db2 = nans(&dev, 2);
    let e = cuda::conv2d::conv2d_bwd(
        &dev,
        &x25,
        Nchw::new(1, 1, 5, 5),
        &w9,
        1,
        &p,
        &y9,
        None,
        None,
        Some(&mut db2),
    )
    .unwrap_err();
    assert!(
        matches!(
            &e,
            CudaError::Kernel(flowseg_kernels::KernelError::Len { arg: "db", .. })
        ),
        "{e}"
    );
    println!("conv2d launchers reject bad shapes and lengths with the CPU's errors");
}
