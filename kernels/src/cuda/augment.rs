//! CUDA launchers of [`crate::augment`]: colour jitter, grayscale, Gaussian blur and cutout
//! (`kernels/cuda/augment.cu`). The per-sample draws (`draw_*`, O(N) scalars) stay on the host: a
//! launcher takes them as the CPU kernel does and uploads them as small arrays; the kernels apply
//! them per pixel, bit-identical to the CPU (same f32 operations in the same order,
//! `--fmad=false`; Gaussian weights from [`gaussian_weights`] on the host; the contrast mean
//! summed on the device in the CPU's f64 row-then-total order).
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`]. Uploaded
//! draws and scratch are per-call stream-ordered allocations.
//!
//! Not here: the draws themselves (host functions in [`crate::augment`]), mixing
//! ([`super::mix`]), geometric augmentations.

use super::common::{expect, grid, launch, shape_err, upload, MAX_BLOCKS, THREADS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::AUGMENT;
use super::{driver_err, CudaError};
use crate::augment::{gaussian_weights, BlurDraw, CutoutDraw, JitterDraw, JitterOp};
use crate::{KernelError, Nchw};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

fn check_rgb(kernel: &'static str, shape: Nchw, draws: usize) -> Result<(), CudaError> {
    if shape.c != 3 && !shape.is_empty() {
        return Err(shape_err(
            kernel,
            format!("expects RGB images (C = 3), got C = {}", shape.c),
        ));
    }
    if draws != shape.n {
        return Err(KernelError::Len {
            kernel,
            arg: "draws",
            expected: shape.n,
            got: draws,
        }
        .into());
    }
    Ok(())
}

/// Op code of `augment.cu` for a step that does nothing.
const JITTER_SKIP: i32 = -1;

/// [`crate::augment::color_jitter_fwd`]: each applied sample's four adjustments in its drawn
/// order, each clamped; others copied. Four step launches, each preceded by a contrast-mean
/// launch when some sample adjusts contrast at that step.
///
/// * `x`, `y`: [N, 3, H, W] (`shape`). `draws`: [N] host draws from
///   [`crate::augment::draw_color_jitter`].
pub fn color_jitter_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    draws: &[JitterDraw],
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "color_jitter_fwd";
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.len())?;
    check_rgb(K, shape, draws.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let mut ops = Vec::with_capacity(4 * shape.n);
    let mut factors = Vec::with_capacity(4 * shape.n);
    for d in draws {
        for op in d.order {
            // The CPU skips an adjustment at its identity factor, and everything when !apply.
            let active = d.apply
                && match op {
                    JitterOp::Brightness => d.brightness != 1.0,
                    JitterOp::Contrast => d.contrast != 1.0,
                    JitterOp::Saturation => d.saturation != 1.0,
                    JitterOp::Hue => d.hue != 0.0,
                };
            ops.push(if active { op as i32 } else { JITTER_SKIP });
        }
        factors.extend_from_slice(&[d.brightness, d.contrast, d.saturation, d.hue]);
    }
    let ops_dev = upload(dev, &ops)?;
    let factors_dev = upload(dev, &factors)?;
    let s = dev.stream();
    let rows: CudaSlice<f64> = s
        .alloc_zeros(shape.n * shape.h)
        .map_err(driver_err("cuMemAlloc"))?;
    let mean: CudaSlice<f32> = s.alloc_zeros(shape.n).map_err(driver_err("cuMemAlloc"))?;
    let (px, py) = (x.device_addr(s), y.device_addr(s));
    let (pops, pfac, prows, pmean) = (
        ops_dev.device_addr(s),
        factors_dev.device_addr(s),
        rows.device_addr(s),
        mean.device_addr(s),
    );
    let (n, h, w, plane) = (
        shape.n as u64,
        shape.h as u64,
        shape.w as u64,
        shape.plane() as u64,
    );
    let mean_cfg = LaunchConfig {
        grid_dim: (shape.n.min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    for step in 0..4i32 {
        let src = if step == 0 { px } else { py };
        let contrast = JitterOp::Contrast as i32;
        if ops.chunks_exact(4).any(|o| o[step as usize] == contrast) {
            launch!(dev, AUGMENT, "color_jitter_contrast_mean", mean_cfg;
                src, pops, n, h, w, step, prows, pmean)?;
        }
        launch!(dev, AUGMENT, "color_jitter_step", grid(shape.n * shape.plane());
            src, pops, pfac, pmean, n, plane, step, py)?;
    }
    Ok(())
}

/// [`crate::augment::grayscale_fwd`]: applied samples become clamp01(luma) in all 3 channels.
///
/// * `x`, `y`: [N, 3, H, W] (`shape`). `apply`: [N] host flags.
pub fn grayscale_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    apply: &[bool],
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "grayscale_fwd";
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.len())?;
    check_rgb(K, shape, apply.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let flags: Vec<u8> = apply.iter().map(|&a| a as u8).collect();
    let flags_dev = upload(dev, &flags)?;
    let s = dev.stream();
    let (px, pa, py) = (x.device_addr(s), flags_dev.device_addr(s), y.device_addr(s));
    let (n, plane) = (shape.n as u64, shape.plane() as u64);
    launch!(dev, AUGMENT, "grayscale_fwd", grid(shape.n * shape.plane()); px, pa, n, plane, py)
}

/// [`crate::augment::gaussian_blur_fwd`]: separable blur with reflect padding, weights from
/// [`gaussian_weights`] computed here on the host, then a clamp; samples without apply copied.
///
/// * `x`, `y`: [N, C, H, W] (`shape`). `draws`: [N] host draws. `kernel`: odd, ≥ 1.
pub fn gaussian_blur_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    draws: &[BlurDraw],
    kernel: usize,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "gaussian_blur_fwd";
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.len())?;
    if draws.len() != shape.n {
        return Err(KernelError::Len {
            kernel: K,
            arg: "draws",
            expected: shape.n,
            got: draws.len(),
        }
        .into());
    }
    if kernel.is_multiple_of(2) {
        return Err(shape_err(
            K,
            format!("kernel size must be odd and >= 1, got {kernel}"),
        ));
    }
    if let Some(d) = draws
        .iter()
        .find(|d| d.apply && (d.sigma.is_nan() || d.sigma <= 0.0))
    {
        return Err(shape_err(K, format!("sigma must be > 0, got {}", d.sigma)));
    }
    if shape.is_empty() {
        return Ok(());
    }
    let mut weights = Vec::with_capacity(shape.n * kernel);
    for d in draws {
        if d.apply {
            weights.extend(gaussian_weights(d.sigma, kernel));
        } else {
            weights.extend(std::iter::repeat_n(0f32, kernel));
        }
    }
    let flags: Vec<u8> = draws.iter().map(|d| d.apply as u8).collect();
    let weights_dev = upload(dev, &weights)?;
    let flags_dev = upload(dev, &flags)?;
    let s = dev.stream();
    let tmp: CudaSlice<f32> = s
        .alloc_zeros(shape.len())
        .map_err(driver_err("cuMemAlloc"))?;
    let (px, pt, py) = (x.device_addr(s), tmp.device_addr(s), y.device_addr(s));
    let (pw, pa) = (weights_dev.device_addr(s), flags_dev.device_addr(s));
    let (n, c, h, w, k) = (
        shape.n as u64,
        shape.c as u64,
        shape.h as u64,
        shape.w as u64,
        kernel as u64,
    );
    launch!(dev, AUGMENT, "gaussian_blur_h", grid(shape.len()); px, pw, pa, n, c, h, w, k, pt)?;
    launch!(dev, AUGMENT, "gaussian_blur_v", grid(shape.len()); pt, pw, pa, n, c, h, w, k, py)
}

/// [`crate::augment::cutout_fwd`]: box pixels of applied samples become `fill[c]` /
/// `ignore_index` / 0; everything else is copied (validity from `valid`, or ones).
///
/// * `image`, `image_out`: [N, C, H, W] (`shape`); `label`, `label_out`: [N, H, W], both or
///   neither; `valid`: [N, H, W] or `None`; `valid_out`: [N, H, W] or `None` (then `valid` must
///   be `None`). `draws`: [N] host boxes inside H × W; `fill`: [C] (host).
#[allow(clippy::too_many_arguments)]
pub fn cutout_fwd(
    dev: &Device,
    image: &impl DeviceBuf<f32>,
    label: Option<&dyn DeviceBuf<i32>>,
    valid: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    draws: &[CutoutDraw],
    fill: &[f32],
    ignore_index: i32,
    image_out: &mut impl DeviceBufMut<f32>,
    label_out: Option<&mut dyn DeviceBufMut<i32>>,
    valid_out: Option<&mut dyn DeviceBufMut<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "cutout_fwd";
    let pixels = shape.n * shape.plane();
    expect(K, "image", image, shape.len())?;
    expect(K, "image_out", image_out, shape.len())?;
    if draws.len() != shape.n {
        return Err(KernelError::Len {
            kernel: K,
            arg: "draws",
            expected: shape.n,
            got: draws.len(),
        }
        .into());
    }
    if fill.len() != shape.c {
        return Err(KernelError::Len {
            kernel: K,
            arg: "fill",
            expected: shape.c,
            got: fill.len(),
        }
        .into());
    }
    let pair = |what: &str| {
        shape_err(
            K,
            format!("`{what}` and `{what}_out` must be given together"),
        )
    };
    match (&label, &label_out) {
        (Some(l), Some(o)) => {
            expect(K, "label", *l, pixels)?;
            expect(K, "label_out", &**o, pixels)?;
        }
        (None, None) => {}
        _ => return Err(pair("label")),
    }
    match (&valid, &valid_out) {
        (v, Some(o)) => {
            if let Some(v) = v {
                expect(K, "valid", *v, pixels)?;
            }
            expect(K, "valid_out", &**o, pixels)?;
        }
        (None, None) => {}
        (Some(_), None) => return Err(pair("valid")),
    }
    if let Some(d) = draws
        .iter()
        .find(|d| d.top > d.bottom || d.left > d.right || d.bottom > shape.h || d.right > shape.w)
    {
        return Err(shape_err(
            K,
            format!(
                "box rows {}..{} × columns {}..{} is not inside the {} × {} image",
                d.top, d.bottom, d.left, d.right, shape.h, shape.w
            ),
        ));
    }
    if pixels == 0 {
        return Ok(());
    }
    let boxes: Vec<i32> = draws
        .iter()
        .flat_map(|d| [d.apply as usize, d.top, d.bottom, d.left, d.right].map(|v| v as i32))
        .collect();
    let boxes_dev = upload(dev, &boxes)?;
    // C = 0 still copies labels and validity; the kernel then never reads `fill`.
    let fill_dev = upload(dev, if fill.is_empty() { &[0.0] } else { fill })?;
    let s = dev.stream();
    let (pimg, pbox, pfill, pout) = (
        image.device_addr(s),
        boxes_dev.device_addr(s),
        fill_dev.device_addr(s),
        image_out.device_addr(s),
    );
    let plabel = label.map_or(0u64, |l| l.device_addr(s));
    let pvalid = valid.map_or(0u64, |v| v.device_addr(s));
    let plabel_out = label_out.map_or(0u64, |l| l.device_addr(s));
    let pvalid_out = valid_out.map_or(0u64, |v| v.device_addr(s));
    let (n, c, h, w) = (
        shape.n as u64,
        shape.c as u64,
        shape.h as u64,
        shape.w as u64,
    );
    launch!(dev, AUGMENT, "cutout_fwd", grid(pixels);
        pimg, plabel, pvalid, pbox, pfill, n, c, h, w, ignore_index, pout, plabel_out, pvalid_out)
}
