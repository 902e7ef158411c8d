//! Loader throughput (numbers in docs/BENCHMARKS.md): a generated Pascal VOC tree (JPEG images
//! at quality 90, palette PNG masks) opened through `Voc::open` with batch 16 and crop = image
//! size (default geometry: random rescale in [0.5, 2], flip), timed through `Dataset::batch` for
//! 0, 1 and 2 worker threads: decode, mask checks, rescale, crop and batch assembly, with the
//! files in the page cache. Two sets: 64 images of 64×64 and 32 of 512×512. Then the default
//! `synthetic` source (generated, no files) at 64×64 with 16 labeled + 16 unlabeled per batch.
//!
//! Run: `cargo bench --bench loader`. A plain timing harness printing a table (median of 3
//! timed passes after a warm-up), not criterion: the result is a rate to compare with the
//! trainer's step rate.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a bench binary"
)]

use flowseg_engine::data::{DataSource, Dataset};
use flowseg_kernels::philox::Philox;
use flowseg_sources::files::{Crop, Geometry, WithGeometry};
use flowseg_sources::loader::{Batching, WithBatching};
use flowseg_sources::palette::write_index_png;
use flowseg_sources::split::Labeled;
use flowseg_sources::synthetic::{Synthetic, SyntheticParams};
use flowseg_sources::voc::{Voc, VocParams};
use std::path::Path;
use std::time::Instant;

const BATCH: usize = 16;

/// `n` images of `side`×`side` with masks: a smooth background plus a few class-coloured
/// rectangles and pixel noise, so the JPEGs are of realistic size.
fn make_voc(root: &Path, n: usize, side: usize) {
    for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut ids = String::new();
    for i in 0..n {
        let rng = Philox::new(17, i as u64);
        let mut ctr = 0u64;
        let mut u = || {
            ctr += 1;
            rng.uniform_at(ctr)
        };
        let mut ids_px = vec![0u8; side * side];
        let mut rgb = image::RgbImage::new(side as u32, side as u32);
        let base = [u() * 255.0, u() * 255.0, u() * 255.0];
        for (x, y, p) in rgb.enumerate_pixels_mut() {
            let t = (x + y) as f32 / (2 * side) as f32;
            *p = image::Rgb(base.map(|b| (b * (1.0 - t) + 128.0 * t) as u8));
        }
        for _ in 0..4 {
            let class = 1 + (u() * 20.0) as u8;
            let colour = [u(), u(), u()].map(|c| (c * 255.0) as u8);
            let (y0, x0) = ((u() * side as f32) as usize, (u() * side as f32) as usize);
            let (hh, ww) = (
                (u() * side as f32 / 2.0) as usize,
                (u() * side as f32 / 2.0) as usize,
            );
            for y in y0..(y0 + hh).min(side) {
                for x in x0..(x0 + ww).min(side) {
                    ids_px[y * side + x] = class;
                    rgb.put_pixel(x as u32, y as u32, image::Rgb(colour));
                }
            }
        }
        for p in rgb.pixels_mut() {
            let noise = (u() * 24.0) as u8;
            p.0 = p.0.map(|v| v.saturating_add(noise));
        }
        let id = format!("{side}_{i:04}");
        let file = std::fs::File::create(root.join(format!("JPEGImages/{id}.jpg"))).unwrap();
        let mut out = std::io::BufWriter::new(file);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&rgb)
            .unwrap();
        let mask = root.join(format!("SegmentationClass/{id}.png"));
        write_index_png(&mask, &ids_px, side, side).unwrap();
        ids.push_str(&id);
        ids.push('\n');
    }
    for list in ["train", "val"] {
        std::fs::write(
            root.join(format!("ImageSets/Segmentation/{list}.txt")),
            &ids,
        )
        .unwrap();
    }
}

/// The VOC tree at `root` opened with batch 16, crop = `side`, default geometry.
fn voc(root: &Path, side: usize, workers: usize) -> Box<dyn Dataset> {
    let params = WithBatching {
        batching: Batching {
            batch: BATCH,
            workers,
            ..Batching::default()
        },
        params: WithGeometry {
            geometry: Geometry::new(Crop { h: side, w: side }),
            params: VocParams::at(root),
        },
    };
    Voc::open(&params, 0).unwrap()
}

/// The default `synthetic` set at `side`, batch 16 labeled + 16 unlabeled (two sets' worth of
/// generation per iteration, as the semi-supervised graphs ask).
fn synthetic(side: usize, workers: usize) -> Box<dyn Dataset> {
    let params = WithBatching {
        batching: Batching {
            batch: BATCH,
            unlabeled_batch: BATCH,
            labeled: Labeled::Fraction { num: 1, den: 16 },
            workers,
            ..Batching::default()
        },
        params: SyntheticParams {
            size: side,
            ..SyntheticParams::default()
        },
    };
    Synthetic::open(&params, 0).unwrap()
}

/// Images per second through `Dataset::batch` (every image of a batch, labeled or not): median
/// of 3 passes of `iters` batches, after a warm-up of 2 (which also starts the worker threads).
fn images_per_second(mut src: Box<dyn Dataset>, iters: u64) -> f64 {
    let per_batch: usize = src
        .specs()
        .iter()
        .filter(|(k, _)| k.ends_with("image"))
        .map(|(_, s)| s.shape[0])
        .sum();
    let mut it = 0;
    for _ in 0..2 {
        src.batch(it).unwrap();
        it += 1;
    }
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..iters {
            src.batch(it).unwrap();
            it += 1;
        }
        rates.push((iters as usize * per_batch) as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[1]
}

fn main() {
    let root = std::env::temp_dir().join(format!("flowseg-bench-loader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let sets = [(64usize, 64usize, 40u64), (512, 32, 4)];
    println!("| images | workers | images/s | batches/s (batch {BATCH}) |");
    println!("| --- | ---: | ---: | ---: |");
    let mut small = Vec::new();
    for (side, n, iters) in sets {
        let dir = root.join(format!("voc{side}"));
        make_voc(&dir, n, side);
        for workers in [0, 1, 2] {
            let r = images_per_second(voc(&dir, side, workers), iters);
            if side == 64 {
                small.push((workers, r));
            }
            println!(
                "| {n} × {side}×{side} JPEG | {workers} | {r:.0} | {:.1} |",
                r / BATCH as f64
            );
        }
    }
    for workers in [0, 1, 2] {
        let r = images_per_second(synthetic(64, workers), 40);
        println!(
            "| synthetic 64×64 (16 labeled + 16 unlabeled) | {workers} | {r:.0} | {:.1} |",
            r / 32.0
        );
    }
    // The default graph's step rate at batch 16 of 64×64 is ~25 steps/s = 400 images/s.
    for (workers, r) in small {
        println!(
            "64×64, {workers} workers: {:.1}× the trainer's 400 images/s",
            r / (BATCH as f64 * 25.0)
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
