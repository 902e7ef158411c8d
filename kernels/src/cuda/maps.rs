//! CUDA launchers of [`crate::maps`]: GCT's per-pixel guidance maps — the error map, the
//! separable blur with host-computed taps, per-sample min–max normalisation and selection by
//! key (`kernels/cuda/maps.cu`), bit-identical to the CPU (the same f32 operations in the same
//! order; min and max are exact in any order).
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`]. The
//! blur's taps and the min–max statistics live in per-call stream-ordered allocations.
//!
//! Not here: computing the taps ([`crate::maps::scipy_gaussian_taps`], a host function), the
//! dilation ([`super::pool`]).

use super::common::{expect, grid, launch, scratch, shape_err, upload};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::MAPS;
use super::CudaError;
use crate::Nchw;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// [`crate::maps::error_map_fwd`]: y = μ·Σ_k |onehot − p|. probs: [N,K,H,W]; label: [N,H,W];
/// y: [N,1,H,W].
pub fn error_map_fwd(
    dev: &Device,
    probs: &impl DeviceBuf<f32>,
    shape: Nchw,
    label: &impl DeviceBuf<i32>,
    mu: f32,
    ignore_index: i32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "error_map_fwd";
    let pixels = shape.n * shape.plane();
    expect(K, "probs", probs, shape.len())?;
    expect(K, "label", label, pixels)?;
    expect(K, "y", y, pixels)?;
    if pixels == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pp, pl, py) = (probs.device_addr(s), label.device_addr(s), y.device_addr(s));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, MAPS, "error_map_fwd", grid(pixels); pp, pl, p64, k, plane, mu, ignore_index, py)
}

/// [`crate::maps::separable_blur_fwd`]: a horizontal then a vertical pass of `taps` with
/// reflect padding. x, y: [N,C,H,W]; taps: odd length (host).
pub fn separable_blur_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    taps: &[f32],
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "separable_blur_fwd";
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.len())?;
    if taps.len().is_multiple_of(2) {
        return Err(shape_err(
            K,
            format!("the filter must have an odd length, got {}", taps.len()),
        ));
    }
    if shape.is_empty() {
        return Ok(());
    }
    let taps_dev = upload(dev, taps)?;
    let tmp = scratch::<f32>(dev, shape.len())?;
    let s = dev.stream();
    let (px, pt, py, pw) = (
        x.device_addr(s),
        tmp.device_addr(s),
        y.device_addr(s),
        taps_dev.device_addr(s),
    );
    let (total, h, w, k) = (
        shape.len() as u64,
        shape.h as u64,
        shape.w as u64,
        taps.len() as u64,
    );
    launch!(dev, MAPS, "separable_blur_h", grid(shape.len()); px, pw, total, w, k, pt)?;
    launch!(dev, MAPS, "separable_blur_v", grid(shape.len()); pt, pw, total, h, w, k, py)
}

/// [`crate::maps::minmax_normalize_fwd`]: per sample (x.len() / n elements), y = (x·g − m)/(M − m
/// + eps). One block per sample finds (m, M), then an element-wise pass.
pub fn minmax_normalize_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    n: usize,
    min_peak: Option<f32>,
    eps: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "minmax_normalize_fwd";
    let total = x.elems();
    expect(K, "y", y, total)?;
    if n == 0 {
        return expect(K, "x", x, 0);
    }
    if !total.is_multiple_of(n) {
        return Err(shape_err(
            K,
            format!("{total} elements do not split into {n} samples"),
        ));
    }
    let per = total / n;
    if per == 0 {
        return Ok(());
    }
    let stats = scratch::<f32>(dev, 2 * n)?;
    let s = dev.stream();
    let (px, ps, py) = (x.device_addr(s), stats.device_addr(s), y.device_addr(s));
    let per64 = per as u64;
    let blocks = u32::try_from(n).map_err(|_| shape_err(K, format!("{n} samples")))?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        ..grid(1)
    };
    launch!(dev, MAPS, "minmax_reduce", cfg; px, per64, ps)?;
    let (total64, has_peak, peak) = (
        total as u64,
        i32::from(min_peak.is_some()),
        min_peak.unwrap_or(0.0),
    );
    launch!(dev, MAPS, "minmax_apply", grid(total); px, ps, total64, per64, has_peak, peak, eps, py)
}

/// [`crate::maps::select_by_key_fwd`]: y = a where key_b ≥ key_a, else b; mask = that choice.
/// a, b, y: [N,C,H,W]; key_a, key_b: [N,1,H,W]; mask: [N,H,W].
#[allow(
    clippy::too_many_arguments,
    reason = "mirrors the CPU kernel's signature"
)]
pub fn select_by_key_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    key_a: &impl DeviceBuf<f32>,
    key_b: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "select_by_key_fwd";
    let pixels = shape.n * shape.plane();
    expect(K, "a", a, shape.len())?;
    expect(K, "b", b, shape.len())?;
    expect(K, "key_a", key_a, pixels)?;
    expect(K, "key_b", key_b, pixels)?;
    expect(K, "y", y, shape.len())?;
    expect(K, "mask", mask, pixels)?;
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let (pa, pb, pka, pkb) = (
        a.device_addr(s),
        b.device_addr(s),
        key_a.device_addr(s),
        key_b.device_addr(s),
    );
    let (py, pm) = (y.device_addr(s), mask.device_addr(s));
    let (total, c, plane) = (shape.len() as u64, shape.c as u64, shape.plane() as u64);
    launch!(dev, MAPS, "select_by_key_fwd", grid(shape.len()); pa, pb, pka, pkb, total, c, plane, py, pm)
}
