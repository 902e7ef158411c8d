//! Parity of the CUDA metrics (kernels/src/cuda/metrics.rs: the confusion matrix, the label
//! agreement counts) with kernels/src/metrics.rs, with ignored and out-of-range labels: integer
//! counts, identical.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::metrics;

#[test]
fn label_agreement_matches_cpu() {
    let Some(dev) = device() else { return };
    // Odd sizes, a grid-stride size, with and without a mask (some NaN, some negative).
    let cases = [
        (1usize, false, None),
        (257, true, Some(0)),
        (8 * 512 * 512 + 3, true, None),
        (100_003, false, Some(3)),
    ];
    for (n, with_mask, skip) in cases {
        let pred = labels(80, n, 11, -1, 0.0);
        let label = labels(81, n, 11, 255, 0.1);
        let mut mask: Vec<f32> = uniform(82, n, -0.5, 1.0);
        if n > 10 {
            mask[7] = f32::NAN;
        }
        let m = with_mask.then_some(&mask[..]);
        let want = metrics::label_agreement_fwd(&pred, &label, m, 255, skip).unwrap();
        let mut counts = up(&dev, &[0u64; 2]);
        let mask_dev = up(&dev, &mask);
        let mask_arg: Option<&dyn cuda::DeviceBuf<f32>> = with_mask.then_some(&mask_dev as _);
        cuda::metrics::label_agreement_fwd(
            &dev,
            &up(&dev, &pred),
            &up(&dev, &label),
            mask_arg,
            255,
            skip,
            &mut counts,
        )
        .unwrap();
        exact_int(
            &format!("label_agreement_fwd n={n} mask={with_mask} skip={skip:?}"),
            &down(&dev, &counts),
            &want,
        );
    }
}

#[test]
fn confusion_matrix_matches_cpu() {
    let Some(dev) = device() else { return };
    // K = 21 uses the shared-memory histogram, K = 150 (ADE20K) the global-atomics path.
    for (k, n) in [
        (2usize, 1usize),
        (21, 257),
        (21, 8 * 512 * 512),
        (150, 100_003),
    ] {
        let pred = labels(70, n, k, -1, 0.0);
        let label = labels(71, n, k, 255, 0.1);
        let mut conf_cpu = vec![0u64; k * k];
        metrics::confusion_add(&pred, &label, k, 255, &mut conf_cpu).unwrap();
        let mut conf = up(&dev, &vec![0u64; k * k]);
        let mut bad = up(&dev, &[0u32]);
        cuda::metrics::confusion_add(
            &dev,
            &up(&dev, &pred),
            &up(&dev, &label),
            k,
            255,
            &mut conf,
            &mut bad,
        )
        .unwrap();
        exact_int(
            &format!("confusion_add K={k} n={n}"),
            &down(&dev, &conf),
            &conf_cpu,
        );
        assert_eq!(down(&dev, &bad), vec![0]);
    }
    let mut conf = up(&dev, &[0u64; 4]);
    let mut bad = up(&dev, &[0u32]);
    cuda::metrics::confusion_add(
        &dev,
        &up(&dev, &[0i32, 5, 1]),
        &up(&dev, &[0i32, 1, 9]),
        2,
        255,
        &mut conf,
        &mut bad,
    )
    .unwrap();
    assert_eq!(
        down(&dev, &bad),
        vec![2],
        "a bad prediction and a bad label"
    );
    assert_eq!(down(&dev, &conf), vec![1, 0, 0, 0]);
}

#[test]
fn image_labels_match_cpu_exactly() {
    let Some(dev) = device() else { return };
    for (n, plane, foreground, background) in [(1, 1, 1, 0), (3, 37, 5, 0), (8, 4096, 20, 3)] {
        // Ids in 0..=C with some ignored pixels; a sparse image so that some classes are absent.
        let label: Vec<i32> = labels(90, n * plane, foreground + 1, 255, 0.1)
            .iter()
            .enumerate()
            .map(|(i, &t)| if i % 3 == 0 { background } else { t })
            .collect();
        let mut y = up(&dev, &vec![f32::NAN; n * foreground]);
        let mut y_cpu = vec![0f32; n * foreground];
        cuda::metrics::image_labels_fwd(
            &dev,
            &up(&dev, &label),
            n,
            plane,
            foreground,
            background,
            255,
            &mut y,
        )
        .unwrap();
        metrics::image_labels_fwd(&label, n, plane, foreground, background, 255, &mut y_cpu)
            .unwrap();
        exact(
            &format!("image_labels_fwd n={n} plane={plane}"),
            &down(&dev, &y),
            &y_cpu,
        );
    }
}
