//! CUDA launchers of [`crate::metrics`]: the confusion matrix for mIoU and the label agreement
//! counts (`kernels/cuda/metrics.cu`). Counts are integers, exact whatever the order of the
//! atomics. A label or prediction outside [0, K) cannot raise an error on the device:
//! [`confusion_add`] counts such pixels in `bad` for the caller to check (the CPU errors).
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: IoU, mIoU and accuracy from the matrix (host side, [`crate::metrics`]).

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::METRICS;
use super::CudaError;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Largest K whose K·K u32 histogram goes in shared memory (48 KiB, the default limit).
const SHARED_HIST_MAX_CELLS: usize = 48 * 1024 / 4;

/// [`crate::metrics::label_agreement_fwd`]: counts[0] += pixels where pred == label, counts[1]
/// += pixels counted (label ≠ `ignore_index`, label ≠ `skip` when given, and mask > 0 where a
/// mask is given). pred, label:
/// [N,H,W] i32; mask: [N,H,W] f32 or none; counts: [2] u64, accumulated (zero it first for a
/// fresh count).
pub fn label_agreement_fwd(
    dev: &Device,
    pred: &impl DeviceBuf<i32>,
    label: &impl DeviceBuf<i32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    ignore_index: i32,
    skip: Option<i32>,
    counts: &mut impl DeviceBufMut<u64>,
) -> Result<(), CudaError> {
    const K: &str = "label_agreement_fwd";
    let n = pred.elems();
    expect(K, "label", label, n)?;
    if let Some(m) = mask {
        expect(K, "mask", m, n)?;
    }
    expect(K, "counts", counts, 2)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pp, pl, pc) = (
        pred.device_addr(s),
        label.device_addr(s),
        counts.device_addr(s),
    );
    let pm = mask.map_or(0, |m| m.device_addr(s));
    let has_mask = i32::from(mask.is_some());
    let (has_skip, skip) = (i32::from(skip.is_some()), skip.unwrap_or(0));
    let n64 = n as u64;
    launch!(dev, METRICS, "label_agreement", grid(n);
        pp, pl, pm, has_mask, n64, ignore_index, has_skip, skip, pc)
}

/// [`crate::metrics::confusion_add`]: confusion[t·K + p] += 1 per pixel not `ignore_index`.
/// pred, label: [N,H,W] i32; confusion: [K,K] u64, accumulated; bad: [1] u32, accumulated with
/// the number of pixels whose label or prediction lies outside [0, K) (the CPU errors instead).
pub fn confusion_add(
    dev: &Device,
    pred: &impl DeviceBuf<i32>,
    label: &impl DeviceBuf<i32>,
    k: usize,
    ignore_index: i32,
    confusion: &mut impl DeviceBufMut<u64>,
    bad: &mut impl DeviceBufMut<u32>,
) -> Result<(), CudaError> {
    const K: &str = "confusion_add";
    let n = pred.elems();
    expect(K, "label", label, n)?;
    expect(K, "confusion", confusion, k * k)?;
    expect(K, "bad", bad, 1)?;
    if n == 0 {
        return Ok(());
    }
    let cells = k * k;
    let use_shared = i32::from(cells <= SHARED_HIST_MAX_CELLS);
    let cfg = LaunchConfig {
        shared_mem_bytes: if use_shared != 0 {
            (cells * 4) as u32
        } else {
            0
        },
        ..grid(n)
    };
    let s = dev.stream();
    let (pp, pl, pc, pb) = (
        pred.device_addr(s),
        label.device_addr(s),
        confusion.device_addr(s),
        bad.device_addr(s),
    );
    let (n64, k32) = (n as u64, k as i32);
    launch!(dev, METRICS, "confusion_add", cfg; pp, pl, n64, k32, ignore_index, use_shared, pc, pb)
}

/// [`crate::metrics::image_labels_fwd`]: y[n, c] = 1 when the c-th foreground class occurs in
/// image n. label: [N, H, W] i32 (`n` images of `plane` pixels); y: [N, C]. The background is
/// checked here with the CPU's error; unlike the CPU, a label outside the classes (and not
/// `ignore_index`) is not reported: it matches no column.
#[allow(clippy::too_many_arguments)]
pub fn image_labels_fwd(
    dev: &Device,
    label: &impl DeviceBuf<i32>,
    n: usize,
    plane: usize,
    foreground: usize,
    background: i32,
    ignore_index: i32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("image_labels_fwd", "label", label, n * plane)?;
    expect("image_labels_fwd", "y", y, n * foreground)?;
    if !usize::try_from(background).is_ok_and(|b| b <= foreground) {
        // The CPU kernel's own error.
        crate::metrics::image_labels_fwd::<f32>(&[], 0, 0, foreground, background, 0, &mut [])?;
    }
    if n * foreground == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (pl, py) = (label.device_addr(st), y.device_addr(st));
    let (n64, plane64, fg) = (n as u64, plane as u64, foreground as u32);
    launch!(dev, METRICS, "image_labels_fwd", grid(n * foreground);
        pl, n64, plane64, fg, background, ignore_index, py)
}
