//! Criterion benches for the CPU conv2d kernels at the shapes of a small segmentation network
//! (batch 16), next to the bare GEMM of the same product, so the im2col overhead is a ratio
//! measured in the same run. Throughput is reported in FLOP ("elements" = FLOP, so criterion's
//! Gelem/s reads as GFLOP/s). Numbers and the command live in docs/BENCHMARKS.md.
//!
//! Run: `cargo bench --bench conv2d` (release profile; uses every core rayon sees).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowseg_kernels::conv2d::{conv2d_bwd, conv2d_fwd, Conv2d};
use flowseg_kernels::gemm::{gemm, Trans};
use flowseg_kernels::testing::{rand_vec, to_f32};
use flowseg_kernels::Nchw;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

struct Case {
    name: &'static str,
    x: Nchw,
    co: usize,
    p: Conv2d,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "b16_32to32_64x64_k3",
            x: Nchw::new(16, 32, 64, 64),
            co: 32,
            p: Conv2d::square(3, 1, 1, 1),
        },
        Case {
            name: "b16_64to64_32x32_k3",
            x: Nchw::new(16, 64, 32, 32),
            co: 64,
            p: Conv2d::square(3, 1, 1, 1),
        },
        Case {
            name: "b16_128to128_16x16_k3",
            x: Nchw::new(16, 128, 16, 16),
            co: 128,
            p: Conv2d::square(3, 1, 1, 1),
        },
        Case {
            name: "b16_128to128_8x8_k3_dil2",
            x: Nchw::new(16, 128, 8, 8),
            co: 128,
            p: Conv2d::square(3, 1, 2, 2),
        },
        Case {
            name: "b16_64to128_32x32_k1",
            x: Nchw::new(16, 64, 32, 32),
            co: 128,
            p: Conv2d::square(1, 1, 0, 1),
        },
        Case {
            name: "b16_64to64_32x32_dw3",
            x: Nchw::new(16, 64, 32, 32),
            co: 64,
            p: Conv2d::square(3, 1, 1, 1).with_groups(64),
        },
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_f32");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for case in cases() {
        let Case { name, x: xs, co, p } = case;
        let ys = p.out_shape(xs, co).expect("bench shape");
        let x = to_f32(&rand_vec(1, xs.len(), -1.0, 1.0));
        let w = to_f32(&rand_vec(2, p.weight_len(xs.c, co), -0.1, 0.1));
        let dy = to_f32(&rand_vec(3, ys.len(), -1.0, 1.0));
        let k = (xs.c / p.groups) * p.kh * p.kw;
        let flops = 2 * ys.len() as u64 * k as u64;
        let mut y = vec![0f32; ys.len()];

        g.throughput(Throughput::Elements(flops));
        g.bench_function(BenchmarkId::new("conv2d_fwd", name), |b| {
            b.iter(|| conv2d_fwd(black_box(&x), xs, &w, None, co, &p, &mut y).expect("fwd"))
        });

        g.throughput(Throughput::Elements(2 * flops));
        let (mut dx, mut dw) = (vec![0f32; xs.len()], vec![0f32; w.len()]);
        g.bench_function(BenchmarkId::new("conv2d_bwd_dx_dw", name), |b| {
            b.iter(|| {
                conv2d_bwd(
                    black_box(&x),
                    xs,
                    &w,
                    co,
                    &p,
                    &dy,
                    Some(&mut dx),
                    Some(&mut dw),
                    None,
                )
                .expect("bwd")
            })
        });

        if p.groups > 1 {
            continue;
        }
        // The bare GEMM of the same product: W [Co×K] · col [K×Ho·Wo] per image, with `col`
        // already built, run the same way the conv runs (images split over the pool, each GEMM
        // single-threaded), and as one big product threaded by the GEMM itself.
        let pix = ys.plane();
        let col = to_f32(&rand_vec(4, k * pix, -1.0, 1.0));
        g.throughput(Throughput::Elements(flops));
        g.bench_function(BenchmarkId::new("gemm_per_image", name), |b| {
            b.iter(|| {
                y.par_chunks_mut(co * pix).for_each(|yn| {
                    gemm(
                        co,
                        pix,
                        k,
                        &w,
                        Trans::No,
                        black_box(&col),
                        Trans::No,
                        yn,
                        false,
                        1,
                    )
                    .expect("gemm")
                })
            })
        });
        let big = to_f32(&rand_vec(5, k * pix * xs.n, -1.0, 1.0));
        let threads = rayon::current_num_threads();
        g.bench_function(BenchmarkId::new("gemm_one_product", name), |b| {
            b.iter(|| {
                gemm(
                    co,
                    pix * xs.n,
                    k,
                    &w,
                    Trans::No,
                    black_box(&big),
                    Trans::No,
                    &mut y,
                    false,
                    threads,
                )
                .expect("gemm")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
