//! conv2d's two f32 CPU paths side by side on deeplab_lite's convolutions (width 16, batch 16,
//! 64×64 input): the AVX-512 panel path (conv2d_panel.rs) against im2col + `gemm`, in one
//! process, alternating, min of `n` runs each (default 15) — the comparison in
//! docs/BENCHMARKS.md "CPU conv2d". Also prints the largest relative difference between the
//! two paths' outputs. Then the default path (what conv2d picks: the direct 3×3 kernels where
//! they apply, else the panel path or `gemm`) per layer in GFLOP/s and as a share of this
//! machine's `gemm` rate measured in the same process (square 1024³ products, best of 5): the
//! convolutions against the bare GEMM peak. Threads: `RAYON_NUM_THREADS` (the docs use 1 and 2).
//!
//! `cargo bench -p flowseg-kernels --bench conv_paths [-- n]`

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "a bench binary"
)]

use flowseg_kernels::conv2d::{conv2d_bwd, conv2d_fwd, Conv2d};
use flowseg_kernels::Nchw;
use std::time::Instant;

/// Switches conv2d between its paths on this thread (the choice is made when a call starts):
/// 0 = im2col + `gemm`, 1 = the panel path, 2 = the default choice.
fn use_path(path: usize) {
    flowseg_kernels::conv2d::force_panel_path(match path {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    });
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let sq = Conv2d::square;
    let shapes: Vec<(&str, Nchw, usize, Conv2d)> = vec![
        (
            "stem 3→16 s2, 64²",
            Nchw::new(16, 3, 64, 64),
            16,
            sq(3, 2, 1, 1),
        ),
        (
            "layer1 16→16, 32²",
            Nchw::new(16, 16, 32, 32),
            16,
            sq(3, 1, 1, 1),
        ),
        (
            "layer2.conv1 16→32 s2",
            Nchw::new(16, 16, 32, 32),
            32,
            sq(3, 2, 1, 1),
        ),
        (
            "layer2.conv2 32→32, 16²",
            Nchw::new(16, 32, 16, 16),
            32,
            sq(3, 1, 1, 1),
        ),
        (
            "downsample 1×1 s2 16→32",
            Nchw::new(16, 16, 32, 32),
            32,
            sq(1, 2, 0, 1),
        ),
        (
            "layer3.conv1 32→64 s2",
            Nchw::new(16, 32, 16, 16),
            64,
            sq(3, 2, 1, 1),
        ),
        (
            "layer3.conv2 64→64, 8²",
            Nchw::new(16, 64, 8, 8),
            64,
            sq(3, 1, 1, 1),
        ),
        (
            "aspp 1×1 64→32, 8²",
            Nchw::new(16, 64, 8, 8),
            32,
            sq(1, 1, 0, 1),
        ),
        (
            "aspp dil 6 64→32, 8² (×3)",
            Nchw::new(16, 64, 8, 8),
            32,
            sq(3, 1, 6, 6),
        ),
        (
            "aspp project 1×1 128→32",
            Nchw::new(16, 128, 8, 8),
            32,
            sq(1, 1, 0, 1),
        ),
        (
            "decoder fuse 48→32, 16²",
            Nchw::new(16, 48, 16, 16),
            32,
            sq(3, 1, 1, 1),
        ),
        (
            "classifier 1×1 32→6",
            Nchw::new(16, 32, 16, 16),
            6,
            sq(1, 1, 0, 1),
        ),
    ];
    println!(
        "threads {}, min of {n} runs each, ms (fwd; bwd = dX + dW)\n",
        rayon::current_num_threads()
    );
    println!("| conv (batch 16) | fwd gemm | fwd panel | bwd gemm | bwd panel | max rel diff |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut total = [[0.0f64; 2]; 2];
    // (name, forward GFLOP, default path's best fwd and bwd seconds)
    let mut default_rows: Vec<(&str, f64, [f64; 2])> = Vec::new();
    for (name, xs, co, p) in shapes {
        let fill = |len: usize, m: usize, scale: f32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * m) % 1000) as f32 * scale / 1000.0 - scale / 2.0)
                .collect()
        };
        let x = fill(xs.len(), 7919, 2.0);
        let w = fill(p.weight_len(xs.c, co), 104_729, 0.2);
        let ys = p.out_shape(xs, co).unwrap();
        let dy = fill(ys.len(), 31, 2.0);
        let mut best = [[f64::MAX; 2]; 3];
        let mut outs: Vec<Vec<f32>> = Vec::new();
        for round in 0..n {
            for (path, best) in best.iter_mut().enumerate() {
                use_path(path);
                let (mut y, mut dx, mut dw) = (
                    vec![0f32; ys.len()],
                    vec![0f32; xs.len()],
                    vec![0f32; w.len()],
                );
                let t = Instant::now();
                conv2d_fwd(&x, xs, &w, None, co, &p, &mut y).unwrap();
                best[0] = best[0].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                conv2d_bwd(&x, xs, &w, co, &p, &dy, Some(&mut dx), Some(&mut dw), None).unwrap();
                best[1] = best[1].min(t.elapsed().as_secs_f64());
                if round == 0 && path < 2 {
                    outs.extend([y, dx, dw]);
                }
            }
        }
        let rel = |a: &[f32], b: &[f32]| {
            let m = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
            a.iter().zip(b).fold(0f32, |d, (a, b)| d.max((a - b).abs())) / m
        };
        let diff = (0..3)
            .map(|i| rel(&outs[3 + i], &outs[i]))
            .fold(0f32, f32::max);
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {diff:.1e} |",
            best[0][0] * 1e3,
            best[1][0] * 1e3,
            best[0][1] * 1e3,
            best[1][1] * 1e3
        );
        for (t, b) in total.iter_mut().zip(best) {
            t[0] += b[0];
            t[1] += b[1];
        }
        // 2 FLOPs per multiply-add: N·Co·Ho·Wo outputs × Ci·kh·kw taps.
        let gflop = 2.0 * (ys.len() * xs.c * p.kh * p.kw) as f64 / 1e9;
        default_rows.push((name, gflop, best[2]));
    }
    println!(
        "| **total, one forward + backward of each** | **{:.2}** | **{:.2}** | **{:.2}** | **{:.2}** | |",
        total[0][0] * 1e3,
        total[1][0] * 1e3,
        total[0][1] * 1e3,
        total[1][1] * 1e3
    );
    use_path(2);
    let peak = flowseg_kernels::gemm::measured_gflops(1024, 5);
    println!(
        "\nthe default path against `gemm` on 1024³ ({peak:.0} GFLOP/s, best of 5, same \
         process); bwd = dX + dW, twice the forward's FLOPs\n"
    );
    println!("| conv (batch 16) | GFLOP fwd | fwd ms | fwd GFLOP/s | fwd / gemm | bwd ms | bwd GFLOP/s | bwd / gemm |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (mut flop, mut tf, mut tb) = (0.0, 0.0, 0.0);
    for (name, gflop, [f, b]) in default_rows {
        let (rf, rb) = (gflop / f, 2.0 * gflop / b);
        println!(
            "| {name} | {gflop:.3} | {:.3} | {rf:.0} | {:.0} % | {:.3} | {rb:.0} | {:.0} % |",
            f * 1e3,
            100.0 * rf / peak,
            b * 1e3,
            100.0 * rb / peak
        );
        (flop, tf, tb) = (flop + gflop, tf + f, tb + b);
    }
    println!(
        "| **all** | **{flop:.3}** | **{:.2}** | **{:.0}** | **{:.0} %** | **{:.2}** | **{:.0}** | **{:.0} %** |",
        tf * 1e3,
        flop / tf,
        100.0 * flop / tf / peak,
        tb * 1e3,
        2.0 * flop / tb,
        100.0 * 2.0 * flop / tb / peak
    );
}
