//! conv2d on the U-Net of the benchmark regime (`unet`, width 16, 64×64 input, batch 8) or, with
//! the word `resnet18`, on the peer benchmark's resnet18_deeplabv3plus (batch 8 of 128×128,
//! output stride 16): per distinct layer the forward, the input gradient alone and the weight
//! gradient alone, min of `n` runs (default 11), with each one's GFLOP/s and how many times the
//! network has that layer — where a training step's convolution time goes.
//!
//! `cargo bench -p flowseg-kernels --bench conv_unet [-- n] [resnet18] [gemm|panel|direct]
//! [layer]`; threads: `RAYON_NUM_THREADS`. A path name forces conv2d's f32 path for every call
//! (`panel`: the panel gathers without the direct 3×3 kernels; `direct`: the default choice);
//! without one the default runs. With `ab`, each layer runs the default path and im2col +
//! `gemm` alternately, round by round in one process (min of `n` rounds each), so that the
//! machine's drift weighs on both alike. Any other word keeps only the layers whose name
//! contains it. The sums weigh each layer by its count.

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

fn min_ms(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(11);
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && a != "--bench")
        .collect();
    let mut only = None;
    let mut resnet = false;
    let mut ab = false;
    for w in &words {
        match w.as_str() {
            "resnet18" => resnet = true,
            "ab" => ab = true,
            "gemm" => flowseg_kernels::conv2d::force_panel_path(Some(false)),
            "panel" => flowseg_kernels::conv2d::force_direct_path(Some(false)),
            "direct" => flowseg_kernels::conv2d::force_direct_path(Some(true)),
            other => only = Some(other.to_string()),
        }
    }
    let layers = if resnet {
        resnet18_layers()
    } else {
        unet_layers()
    };
    println!(
        "{:<34} {:>3} {:>8} {:>8} {:>8}   GFLOP/s fwd / dx / dw",
        "layer", "×", "fwd ms", "dx ms", "dw ms"
    );
    let (mut tf, mut tx, mut tw) = (0.0, 0.0, 0.0);
    for Layer {
        name,
        x: xs,
        co,
        p,
        count,
    } in layers
    {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let x: Vec<f32> = (0..xs.len())
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let wl = p.weight_len(xs.c, co);
        let w: Vec<f32> = (0..wl)
            .map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let ys = p.out_shape(xs, co).unwrap();
        let dy: Vec<f32> = (0..ys.len())
            .map(|i| ((i * 31) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let mut y = vec![0f32; ys.len()];
        let mut dx = vec![0f32; xs.len()];
        let mut dw = vec![0f32; wl];
        let mut time3 = |rounds: usize| {
            let fwd = min_ms(rounds, || {
                conv2d_fwd(&x, xs, &w, None, co, &p, &mut y).unwrap()
            });
            let dxt = min_ms(rounds, || {
                conv2d_bwd(&x, xs, &w, co, &p, &dy, Some(&mut dx), None, None).unwrap()
            });
            let dwt = min_ms(rounds, || {
                conv2d_bwd(&x, xs, &w, co, &p, &dy, None, Some(&mut dw), None).unwrap()
            });
            [fwd, dxt, dwt]
        };
        let gflop = 2.0 * (ys.len() * xs.c / p.groups * p.kh * p.kw) as f64 * 1e-9;
        let row = |label: &str, [fwd, dxt, dwt]: [f64; 3]| {
            println!(
                "{label:<34} {count:>3} {fwd:>8.3} {dxt:>8.3} {dwt:>8.3}   {:>5.0} / {:>5.0} / {:>5.0}",
                gflop / fwd * 1e3,
                gflop / dxt * 1e3,
                gflop / dwt * 1e3
            );
        };
        let [fwd, dxt, dwt] = if ab {
            let (mut best, mut gemm) = ([f64::INFINITY; 3], [f64::INFINITY; 3]);
            for _ in 0..n {
                for (path, acc) in [(None, &mut best), (Some(false), &mut gemm)] {
                    flowseg_kernels::conv2d::force_panel_path(path);
                    for (a, t) in acc.iter_mut().zip(time3(1)) {
                        *a = a.min(t);
                    }
                }
            }
            flowseg_kernels::conv2d::force_panel_path(None);
            row(name, best);
            row("  the same on im2col + gemm", gemm);
            best
        } else {
            let t = time3(n);
            row(name, t);
            t
        };
        let k = count as f64;
        (tf, tx, tw) = (tf + k * fwd, tx + k * dxt, tw + k * dwt);
    }
    println!(
        "{:<38} {tf:>8.3} {tx:>8.3} {tw:>8.3}",
        "sum (weighted by count)"
    );
}

/// One distinct convolution of a network and how many times the network has it.
struct Layer {
    name: &'static str,
    x: Nchw,
    co: usize,
    p: Conv2d,
    count: usize,
}

fn layer(name: &'static str, x: Nchw, co: usize, p: Conv2d, count: usize) -> Layer {
    Layer {
        name,
        x,
        co,
        p,
        count,
    }
}

/// Every 3×3 conv of the U-Net, stride 1, padding 1, batch 8 of 64×64.
fn unet_layers() -> Vec<Layer> {
    let b = 8;
    let p = Conv2d::square(3, 1, 1, 1);
    [
        ("down0.conv1 3→16 @64", Nchw::new(b, 3, 64, 64), 16),
        ("down0.conv2 16→16 @64", Nchw::new(b, 16, 64, 64), 16),
        ("down1.conv1 16→32 @32", Nchw::new(b, 16, 32, 32), 32),
        ("down1.conv2 32→32 @32", Nchw::new(b, 32, 32, 32), 32),
        ("down2.conv1 32→64 @16", Nchw::new(b, 32, 16, 16), 64),
        ("down2.conv2 64→64 @16", Nchw::new(b, 64, 16, 16), 64),
        ("down3.conv1 64→128 @8", Nchw::new(b, 64, 8, 8), 128),
        ("down3.conv2 128→128 @8", Nchw::new(b, 128, 8, 8), 128),
        ("up2.conv1 192→64 @16", Nchw::new(b, 192, 16, 16), 64),
        ("up2.conv2 64→64 @16", Nchw::new(b, 64, 16, 16), 64),
        ("up1.conv1 96→32 @32", Nchw::new(b, 96, 32, 32), 32),
        ("up1.conv2 32→32 @32", Nchw::new(b, 32, 32, 32), 32),
        ("up0.conv1 48→16 @64", Nchw::new(b, 48, 64, 64), 16),
        ("up0.conv2 16→16 @64", Nchw::new(b, 16, 64, 64), 16),
    ]
    .into_iter()
    .map(|(name, x, co)| layer(name, x, co, p, 1))
    .collect()
}

/// resnet18_deeplabv3plus at output stride 16 (ops/src/models/resnet.rs): batch 8 of 128×128,
/// layer4's first block at dilation 1 and its second at 2 (torchvision's rule), ASPP rates 6/12/18 on the 8×8 map.
fn resnet18_layers() -> Vec<Layer> {
    let b = 8;
    let sq = Conv2d::square;
    vec![
        layer(
            "conv1 7×7 s2 3→64 @128",
            Nchw::new(b, 3, 128, 128),
            64,
            sq(7, 2, 3, 1),
            1,
        ),
        layer(
            "layer1 64→64 @32",
            Nchw::new(b, 64, 32, 32),
            64,
            sq(3, 1, 1, 1),
            4,
        ),
        layer(
            "layer2.0.conv1 s2 64→128 @32",
            Nchw::new(b, 64, 32, 32),
            128,
            sq(3, 2, 1, 1),
            1,
        ),
        layer(
            "layer2 128→128 @16",
            Nchw::new(b, 128, 16, 16),
            128,
            sq(3, 1, 1, 1),
            3,
        ),
        layer(
            "layer2 down 1×1 s2 64→128",
            Nchw::new(b, 64, 32, 32),
            128,
            sq(1, 2, 0, 1),
            1,
        ),
        layer(
            "layer3.0.conv1 s2 128→256 @16",
            Nchw::new(b, 128, 16, 16),
            256,
            sq(3, 2, 1, 1),
            1,
        ),
        layer(
            "layer3 256→256 @8",
            Nchw::new(b, 256, 8, 8),
            256,
            sq(3, 1, 1, 1),
            3,
        ),
        layer(
            "layer3 down 1×1 s2 128→256",
            Nchw::new(b, 128, 16, 16),
            256,
            sq(1, 2, 0, 1),
            1,
        ),
        layer(
            "layer4.0.conv1 256→512 @8",
            Nchw::new(b, 256, 8, 8),
            512,
            sq(3, 1, 1, 1),
            1,
        ),
        layer(
            "layer4.0.conv2 512→512 @8",
            Nchw::new(b, 512, 8, 8),
            512,
            sq(3, 1, 1, 1),
            1,
        ),
        layer(
            "layer4.1 d2 512→512 @8",
            Nchw::new(b, 512, 8, 8),
            512,
            sq(3, 1, 2, 2),
            2,
        ),
        layer(
            "layer4 down 1×1 256→512 @8",
            Nchw::new(b, 256, 8, 8),
            512,
            sq(1, 1, 0, 1),
            1,
        ),
        layer(
            "aspp 1×1 512→256 @8",
            Nchw::new(b, 512, 8, 8),
            256,
            sq(1, 1, 0, 1),
            1,
        ),
        layer(
            "aspp d6 512→256 @8",
            Nchw::new(b, 512, 8, 8),
            256,
            sq(3, 1, 6, 6),
            1,
        ),
        layer(
            "aspp d12 512→256 @8",
            Nchw::new(b, 512, 8, 8),
            256,
            sq(3, 1, 12, 12),
            1,
        ),
        layer(
            "aspp d18 512→256 @8",
            Nchw::new(b, 512, 8, 8),
            256,
            sq(3, 1, 18, 18),
            1,
        ),
        layer(
            "aspp project 1×1 1280→256 @8",
            Nchw::new(b, 1280, 8, 8),
            256,
            sq(1, 1, 0, 1),
            1,
        ),
        layer(
            "low-level 1×1 64→48 @32",
            Nchw::new(b, 64, 32, 32),
            48,
            sq(1, 1, 0, 1),
            1,
        ),
        layer(
            "fuse.0 304→256 @32",
            Nchw::new(b, 304, 32, 32),
            256,
            sq(3, 1, 1, 1),
            1,
        ),
        layer(
            "fuse.3 256→256 @32",
            Nchw::new(b, 256, 32, 32),
            256,
            sq(3, 1, 1, 1),
            1,
        ),
        layer(
            "classifier 1×1 256→6 @32",
            Nchw::new(b, 256, 32, 32),
            6,
            sq(1, 1, 0, 1),
            1,
        ),
    ]
}
