//! CUDA launchers of [`crate::reduce`] (`kernels/cuda/reduce.cu`): the mean over all elements and
//! its backward, the dot product, the mean over channels, the per-row L2 normalisation and the
//! CAM normalisation. The all-element mean and dot accumulate in f64 in two launches (per-block
//! partials, then one block adds them in a fixed order), so they are deterministic and agree with
//! the CPU to f32 rounding; the channel mean and the backward are the CPU's exact operations,
//! bit-identical.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: max over classes ([`super::argmax`]), spatial means (global average pooling,
//! [`super::pool`]), the losses' reductions ([`super::loss`]).

use super::common::{blocks, expect, grid, grid2, launch, one_block, scratch, REDUCE_BLOCKS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::REDUCE;
use super::CudaError;
use crate::{reduce, Nchw};
use cudarc::driver::{LaunchConfig, PushKernelArg};

fn reduce_sum(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    divisor: f64,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    let nblocks = blocks(n, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, nblocks as usize)?;
    let s = dev.stream();
    let (px, pp, po, n64) = (
        x.device_addr(s),
        partials.device_addr(s),
        out.device_addr(s),
        n as u64,
    );
    let cfg = LaunchConfig {
        grid_dim: (nblocks, 1, 1),
        ..grid(n)
    };
    launch!(dev, REDUCE, "reduce_sum_partials", cfg; px, n64, pp)?;
    launch!(dev, REDUCE, "reduce_sum_finalize", one_block(); pp, nblocks, divisor, po)
}

/// [`crate::reduce::mean_fwd`]: out[0] = Σ x / len. Errors on an empty `x`. out: [1].
pub fn mean_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("mean_fwd", "out", out, 1)?;
    if x.elems() == 0 {
        crate::reduce::mean_fwd::<f32>(&[])?;
    }
    reduce_sum(dev, x, x.elems() as f64, out)
}

fn fill_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    divisor: f64,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = dx.elems();
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pdy, pdx, n64) = (dy.device_addr(s), dx.device_addr(s), n as u64);
    launch!(dev, REDUCE, "reduce_fill_bwd", grid(n); pdy, n64, divisor, pdx)
}

/// [`crate::reduce::mean_bwd`]: every dx[i] = dy[0] / len(dx). Errors on an empty `dx`.
pub fn mean_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("mean_bwd", "dy", dy, 1)?;
    if dx.elems() == 0 {
        crate::reduce::mean_bwd::<f32>(0.0, &mut [])?;
    }
    fill_bwd(dev, dy, dx.elems() as f64, dx)
}

// ---------------------------------------------------------------- dot and the channel mean

/// [`crate::reduce::dot_fwd`]: out[0] = Σ a·b, accumulated in f64 (0 when empty). a, b: same
/// length; out: [1].
pub fn dot_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = a.elems();
    expect("dot_fwd", "b", b, n)?;
    expect("dot_fwd", "out", out, 1)?;
    let nblocks = blocks(n, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, nblocks as usize)?;
    let st = dev.stream();
    let (pa, pb, pp, po, n64) = (
        a.device_addr(st),
        b.device_addr(st),
        partials.device_addr(st),
        out.device_addr(st),
        n as u64,
    );
    let divisor = 1.0f64;
    launch!(dev, REDUCE, "dot_partials", grid2(nblocks, 1); pa, pb, n64, pp)?;
    launch!(dev, REDUCE, "reduce_sum_finalize", one_block(); pp, nblocks, divisor, po)
}

/// [`crate::reduce::mean_channels_fwd`]: y[n, 0] = (1/C)·Σ_c x[n, c], in f64; errors when C = 0;
/// bit-identical to the CPU. x: [N, C, H, W] (`shape`); y: [N, 1, H, W].
pub fn mean_channels_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "mean_channels_fwd";
    if shape.c == 0 {
        // The CPU kernel on empty slices reports it with its own message.
        reduce::mean_channels_fwd::<f32>(&[], shape, &mut [])?;
    }
    let pixels = shape.n * shape.plane();
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, pixels)?;
    if pixels == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py) = (x.device_addr(st), y.device_addr(st));
    let (pixels64, c, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    let scale = 1.0 / shape.c as f64;
    launch!(dev, REDUCE, "channels_fwd", grid(pixels); px, pixels64, c, plane, scale, py)
}

/// [`crate::reduce::l2_normalize_fwd`]: each of `rows` equal rows scaled by
/// scale / (‖row‖₂ + eps) (a zero row stays zero); one block per row, the norm in f64, so
/// results agree with the CPU to f32 rounding. x, y: [rows, len / rows].
pub fn l2_normalize_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    rows: usize,
    scale: f64,
    eps: f64,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "l2_normalize_fwd";
    let n = x.elems();
    expect(K, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    // The CPU's shape error, from the CPU itself (no data is read for it).
    if rows == 0 || !n.is_multiple_of(rows) {
        reduce::l2_normalize_fwd::<f32>(&vec![0.0; n], rows, scale, eps, &mut vec![0.0; n])?;
    }
    let s = dev.stream();
    let (px, py, per) = (x.device_addr(s), y.device_addr(s), (n / rows) as u64);
    launch!(dev, REDUCE, "l2_normalize_rows", grid2(rows as u32, 1); px, per, scale, eps, py)
}

/// [`crate::reduce::cam_normalize_fwd`]: per (image, class) plane, x = max(scores, 0)·label,
/// y = x/max(m, 1e-5) where m = max x > 0, else 0; bit-identical to the CPU.
/// scores, y: [N,C,H,W]; labels: [N,C].
pub fn cam_normalize_fwd(
    dev: &Device,
    scores: &impl DeviceBuf<f32>,
    labels: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("cam_normalize_fwd", "scores", scores, shape.len())?;
    expect("cam_normalize_fwd", "labels", labels, shape.n * shape.c)?;
    expect("cam_normalize_fwd", "y", y, shape.len())?;
    let planes = shape.n * shape.c;
    if planes == 0 || shape.plane() == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (ps, pl, py) = (
        scores.device_addr(st),
        labels.device_addr(st),
        y.device_addr(st),
    );
    let (planes64, plane) = (planes as u64, shape.plane() as u64);
    launch!(dev, REDUCE, "cam_normalize_fwd", grid(planes); ps, pl, planes64, plane, py)
}
