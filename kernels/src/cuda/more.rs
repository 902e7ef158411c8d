//! Launchers of the remaining CUDA twins: leaky relu, threshold, concat and slice (`shape.cu`),
//! dropout (`dropout.cu`), the masked probability-space losses (`loss.cu`), dot and the channel
//! reductions (`reduce_more.cu`). Each is named after its CPU reference and takes the same
//! arguments in the same order (inputs → shape → params → outputs), device buffers in place of
//! slices; a loss forward writes its scalar to a `[1]` device buffer instead of returning it, and
//! a loss backward reads `dloss` from one. Shapes, lengths and parameters are validated on the
//! host with the CPU kernel's own checks (so the errors read the same) before anything is
//! enqueued.
//!
//! Two launches reuse finishing kernels of other modules, so there is one implementation of each:
//! the losses finish with `softmax_ce.cu`'s `ce_finalize` (denominator and 1/D), `dot_fwd` with
//! `reduce.cu`'s `reduce_sum_finalize`. `dropout_bwd` is `elementwise.cu`'s `mul_fwd`.
//!
//! Launchers enqueue on [`Device::stream`] and return without waiting; scratch (partials, 1/D)
//! is allocated per call on the stream, as in [`super::launch`].
//!
//! Not here: conv (`conv.rs`), the other launchers ([`super::launch`], [`super::nn`],
//! [`super::augment_mix`]).

use super::common::{blocks, expect, grid, grid2, launch, one_block, scratch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::launch::{denominator_code, REDUCE_BLOCKS};
use super::nvrtc::{DROPOUT, ELEMENTWISE, LOSS, REDUCE, REDUCE_MORE, SHAPE, SOFTMAX_CE};
use super::CudaError;
use crate::elementwise::{check_parts, check_range, Axis};
use crate::loss::Denominator;
use crate::philox::Philox;
use crate::reduce;
use crate::{dropout, Nchw};
use cudarc::driver::{CudaSlice, PushKernelArg};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
    impl Sealed for u32 {}
}

/// A 4-byte element type the copy kernels move as raw words (f32 maps, i32 label maps), the
/// CUDA side of the CPU's `T: Copy` concat and slice kernels. Sealed.
pub trait Word32: sealed::Sealed {}
impl Word32 for f32 {}
impl Word32 for i32 {}
impl Word32 for u32 {}

// ---------------------------------------------------------------- shape.cu: activations

/// [`crate::activation::leaky_relu_fwd`]: y = x if x > 0 else slope·x. x, y: same length.
pub fn leaky_relu_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    slope: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("leaky_relu_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64) = (x.device_addr(s), y.device_addr(s), n as u64);
    launch!(dev, SHAPE, "leaky_relu_fwd", grid(n); px, n64, slope, py)
}

/// [`crate::activation::leaky_relu_bwd`]: dx = dy if x > 0 else slope·dy. x, dy, dx: same
/// length.
pub fn leaky_relu_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    slope: f32,
    dy: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("leaky_relu_bwd", "dy", dy, n)?;
    expect("leaky_relu_bwd", "dx", dx, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pdy, pdx, n64) = (
        x.device_addr(s),
        dy.device_addr(s),
        dx.device_addr(s),
        n as u64,
    );
    launch!(dev, SHAPE, "leaky_relu_bwd", grid(n); px, slope, pdy, n64, pdx)
}

/// [`crate::elementwise::threshold_fwd`]: y = 1 where x ≥ at (with `below`: x < at), else 0;
/// NaN gives 0. x, y: same length.
pub fn threshold_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    at: f32,
    below: bool,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("threshold_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64, below) = (
        x.device_addr(s),
        y.device_addr(s),
        n as u64,
        i32::from(below),
    );
    launch!(dev, SHAPE, "threshold_fwd", grid(n); px, n64, at, below, py)
}

// ---------------------------------------------------------------- shape.cu: concat and slice

/// One `copy_rows` launch: `rows` rows of `row_len` words from `src` (row stride, offset) to
/// `dst` (row stride, offset), addresses already taken.
#[allow(clippy::too_many_arguments)]
fn copy_rows(
    dev: &Device,
    src: u64,
    rows: usize,
    row_len: usize,
    src_stride: usize,
    src_off: usize,
    dst_stride: usize,
    dst_off: usize,
    dst: u64,
) -> Result<(), CudaError> {
    let n = rows * row_len;
    if n == 0 {
        return Ok(());
    }
    let (rows, row_len) = (rows as u64, row_len as u64);
    let (src_stride, src_off) = (src_stride as u64, src_off as u64);
    let (dst_stride, dst_off) = (dst_stride as u64, dst_off as u64);
    launch!(dev, SHAPE, "copy_rows", grid(n);
        src, rows, row_len, src_stride, src_off, dst_stride, dst_off, dst)
}

/// How one part of a concat sits in the whole along `axis`: (rows, row length, the whole's row
/// stride). Channels: N rows of the part's C·H·W, strided by the whole's image; batch: the
/// part's elements as one row.
fn part_rows(axis: Axis, part: Nchw, whole: Nchw) -> (usize, usize, usize) {
    match axis {
        Axis::Channels => (whole.n, part.image(), whole.image()),
        Axis::Batch => (1, part.len(), 0),
    }
}

/// Both concat forwards: one `copy_rows` per input, at its offset along `axis`.
fn concat_fwd<T: Word32>(
    dev: &Device,
    kernel: &'static str,
    axis: Axis,
    inputs: &[(&dyn DeviceBuf<T>, Nchw)],
    y: &mut impl DeviceBufMut<T>,
    y_shape: Nchw,
) -> Result<(), CudaError> {
    expect(kernel, "y", y, y_shape.len())?;
    check_parts(
        kernel,
        inputs.iter().map(|(x, s)| (x.elems(), *s)),
        y_shape,
        axis,
    )?;
    let st = dev.stream();
    let py = y.device_addr(st);
    let mut off = 0;
    for (x, s) in inputs {
        let (rows, len, stride) = part_rows(axis, *s, y_shape);
        copy_rows(dev, x.device_addr(st), rows, len, len, 0, stride, off, py)?;
        off += len;
    }
    Ok(())
}

/// Both concat backwards: dy split into the inputs' gradients, the forward's copies reversed.
fn concat_bwd<T: Word32>(
    dev: &Device,
    kernel: &'static str,
    axis: Axis,
    dy: &impl DeviceBuf<T>,
    y_shape: Nchw,
    outputs: &mut [(&mut dyn DeviceBufMut<T>, Nchw)],
) -> Result<(), CudaError> {
    expect(kernel, "dy", dy, y_shape.len())?;
    check_parts(
        kernel,
        outputs.iter().map(|(x, s)| (x.elems(), *s)),
        y_shape,
        axis,
    )?;
    let st = dev.stream();
    let pdy = dy.device_addr(st);
    let mut off = 0;
    for (dx, s) in outputs.iter_mut() {
        let (rows, len, stride) = part_rows(axis, *s, y_shape);
        copy_rows(dev, pdy, rows, len, stride, off, len, 0, dx.device_addr(st))?;
        off += len;
    }
    Ok(())
}

/// [`crate::elementwise::concat_channels_fwd`] (`torch.cat(.., dim=1)`): one copy per input.
///
/// inputs: each a buffer [N, Ci, H, W] with its shape (all share N, H, W); y: [N, C, H, W]
/// described by `y_shape`, C = Σ Ci. f32 or i32.
pub fn concat_channels_fwd<T: Word32>(
    dev: &Device,
    inputs: &[(&dyn DeviceBuf<T>, Nchw)],
    y: &mut impl DeviceBufMut<T>,
    y_shape: Nchw,
) -> Result<(), CudaError> {
    concat_fwd(
        dev,
        "concat_channels_fwd",
        Axis::Channels,
        inputs,
        y,
        y_shape,
    )
}

/// [`crate::elementwise::concat_channels_bwd`]: splits dy into the inputs' gradients.
///
/// dy: [N, C, H, W] described by `y_shape`; outputs: each a buffer [N, Ci, H, W] with its shape,
/// in the forward's input order, Σ Ci = C. f32 or i32.
pub fn concat_channels_bwd<T: Word32>(
    dev: &Device,
    dy: &impl DeviceBuf<T>,
    y_shape: Nchw,
    outputs: &mut [(&mut dyn DeviceBufMut<T>, Nchw)],
) -> Result<(), CudaError> {
    concat_bwd(
        dev,
        "concat_channels_bwd",
        Axis::Channels,
        dy,
        y_shape,
        outputs,
    )
}

/// [`crate::elementwise::concat_batch_fwd`] (`torch.cat(.., dim=0)`): the inputs end to end.
///
/// inputs: each a buffer [Ni, C, H, W] with its shape (all share C, H, W); y: [N, C, H, W]
/// described by `y_shape`, N = Σ Ni. f32 or i32.
pub fn concat_batch_fwd<T: Word32>(
    dev: &Device,
    inputs: &[(&dyn DeviceBuf<T>, Nchw)],
    y: &mut impl DeviceBufMut<T>,
    y_shape: Nchw,
) -> Result<(), CudaError> {
    concat_fwd(dev, "concat_batch_fwd", Axis::Batch, inputs, y, y_shape)
}

/// [`crate::elementwise::concat_batch_bwd`]: splits dy into the inputs' gradients.
///
/// dy: [N, C, H, W] described by `y_shape`; outputs: each a buffer [Ni, C, H, W] with its shape,
/// in the forward's input order, Σ Ni = N. f32 or i32.
pub fn concat_batch_bwd<T: Word32>(
    dev: &Device,
    dy: &impl DeviceBuf<T>,
    y_shape: Nchw,
    outputs: &mut [(&mut dyn DeviceBufMut<T>, Nchw)],
) -> Result<(), CudaError> {
    concat_bwd(dev, "concat_batch_bwd", Axis::Batch, dy, y_shape, outputs)
}

/// [`crate::elementwise::slice_channels_fwd`]: `x[:, c_start:c_end]`, copied contiguously.
///
/// x: [N, C, H, W] (`shape`); y: [N, c_end − c_start, H, W]. f32 or i32.
pub fn slice_channels_fwd<T: Word32>(
    dev: &Device,
    x: &impl DeviceBuf<T>,
    shape: Nchw,
    c_start: usize,
    c_end: usize,
    y: &mut impl DeviceBufMut<T>,
) -> Result<(), CudaError> {
    const K: &str = "slice_channels_fwd";
    check_range(K, "channel", c_start, c_end, shape.c)?;
    let chunk = (c_end - c_start) * shape.plane();
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.n * chunk)?;
    let st = dev.stream();
    let (px, py) = (x.device_addr(st), y.device_addr(st));
    let skip = c_start * shape.plane();
    copy_rows(dev, px, shape.n, chunk, shape.image(), skip, chunk, 0, py)
}

/// One `slice_bwd` launch: rows of `row_len` from dy's rows of `hi − lo`, zero outside.
fn slice_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    rows: usize,
    row_len: usize,
    lo: usize,
    hi: usize,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = rows * row_len;
    if n == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pdx) = (dy.device_addr(st), dx.device_addr(st));
    let (rows, row_len, lo, hi) = (rows as u64, row_len as u64, lo as u64, hi as u64);
    launch!(dev, SHAPE, "slice_bwd", grid(n); pdy, rows, row_len, lo, hi, pdx)
}

/// [`crate::elementwise::slice_channels_bwd`]: dx = dy inside the channel range, 0 outside.
///
/// dy: [N, c_end − c_start, H, W]; shape: the forward input's [N, C, H, W]; dx: [N, C, H, W].
pub fn slice_channels_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    c_start: usize,
    c_end: usize,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "slice_channels_bwd";
    check_range(K, "channel", c_start, c_end, shape.c)?;
    let chunk = (c_end - c_start) * shape.plane();
    expect(K, "dy", dy, shape.n * chunk)?;
    expect(K, "dx", dx, shape.len())?;
    let lo = c_start * shape.plane();
    slice_bwd(dev, dy, shape.n, shape.image(), lo, lo + chunk, dx)
}

/// [`crate::elementwise::slice_batch_fwd`]: `x[n_start:n_end]`.
///
/// x: [N, C, H, W] (`shape`); y: [n_end − n_start, C, H, W]. f32 or i32.
pub fn slice_batch_fwd<T: Word32>(
    dev: &Device,
    x: &impl DeviceBuf<T>,
    shape: Nchw,
    n_start: usize,
    n_end: usize,
    y: &mut impl DeviceBufMut<T>,
) -> Result<(), CudaError> {
    const K: &str = "slice_batch_fwd";
    check_range(K, "batch", n_start, n_end, shape.n)?;
    expect(K, "x", x, shape.len())?;
    let len = (n_end - n_start) * shape.image();
    expect(K, "y", y, len)?;
    let st = dev.stream();
    let (px, py) = (x.device_addr(st), y.device_addr(st));
    copy_rows(dev, px, 1, len, 0, n_start * shape.image(), 0, 0, py)
}

/// [`crate::elementwise::slice_batch_bwd`]: dx = dy for images n_start..n_end, 0 for the others.
///
/// dy: [n_end − n_start, C, H, W]; shape: the forward input's [N, C, H, W]; dx: [N, C, H, W].
pub fn slice_batch_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    n_start: usize,
    n_end: usize,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "slice_batch_bwd";
    check_range(K, "batch", n_start, n_end, shape.n)?;
    expect(K, "dy", dy, (n_end - n_start) * shape.image())?;
    expect(K, "dx", dx, shape.len())?;
    let (lo, hi) = (n_start * shape.image(), n_end * shape.image());
    slice_bwd(dev, dy, 1, shape.len(), lo, hi, dx)
}

// ---------------------------------------------------------------- dropout.cu

/// [`crate::dropout::dropout_fwd`]: `mask[i] = 0` if `rng.bernoulli_at(offset + i, p)` else
/// `1/(1−p)`, `y = x·mask`; bit-identical to the CPU. x, y, mask: same length.
pub fn dropout_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    p: f32,
    rng: &Philox,
    offset: u64,
    y: &mut impl DeviceBufMut<f32>,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout_fwd";
    let n = x.elems();
    expect(K, "y", y, n)?;
    expect(K, "mask", mask, n)?;
    let scale = dropout::prepare::<f32>(K, p, offset, n)?;
    if n == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, pm, n64) = (
        x.device_addr(st),
        y.device_addr(st),
        mask.device_addr(st),
        n as u64,
    );
    let (seed, stream) = (rng.seed(), rng.stream());
    launch!(dev, DROPOUT, "dropout_fwd", grid(n); px, n64, p, scale, seed, stream, offset, py, pm)
}

/// [`crate::dropout::dropout_bwd`]: dx = dy·mask. dy, mask, dx: same length.
pub fn dropout_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    mask: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout_bwd";
    let n = dy.elems();
    expect(K, "mask", mask, n)?;
    expect(K, "dx", dx, n)?;
    if n == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pm, pdx, n64) = (
        dy.device_addr(st),
        mask.device_addr(st),
        dx.device_addr(st),
        n as u64,
    );
    launch!(dev, ELEMENTWISE, "mul_fwd", grid(n); pdy, pm, n64, pdx)
}

/// `dropout2d_apply`: y[n, c, :, :] = x[n, c, :, :]·mask[n, c].
fn dropout2d_apply(dev: &Device, x: u64, mask: u64, shape: Nchw, y: u64) -> Result<(), CudaError> {
    let (len, plane) = (shape.len() as u64, shape.plane() as u64);
    launch!(dev, DROPOUT, "dropout2d_apply", grid(shape.len()); x, mask, len, plane, y)
}

/// [`crate::dropout::dropout2d_fwd`]: `mask[n, c] = 0` if `rng.bernoulli_at(offset + n·C + c,
/// p)` else `1/(1−p)`; `y[n, c] = x[n, c]·mask[n, c]`; bit-identical to the CPU.
///
/// x, y: [N, C, H, W] (`shape`); mask: [N, C].
#[allow(clippy::too_many_arguments)]
pub fn dropout2d_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    p: f32,
    rng: &Philox,
    offset: u64,
    y: &mut impl DeviceBufMut<f32>,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout2d_fwd";
    let planes = shape.n * shape.c;
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.len())?;
    expect(K, "mask", mask, planes)?;
    let scale = dropout::prepare::<f32>(K, p, offset, planes)?;
    if planes == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py, pm, planes64) = (
        x.device_addr(st),
        y.device_addr(st),
        mask.device_addr(st),
        planes as u64,
    );
    let (seed, stream) = (rng.seed(), rng.stream());
    launch!(dev, DROPOUT, "dropout2d_mask", grid(planes);
        planes64, p, scale, seed, stream, offset, pm)?;
    if shape.is_empty() {
        return Ok(());
    }
    dropout2d_apply(dev, px, pm, shape, py)
}

/// [`crate::dropout::dropout2d_bwd`]: `dx[n, c] = dy[n, c]·mask[n, c]`.
///
/// dy, dx: [N, C, H, W] (`shape`); mask: [N, C].
pub fn dropout2d_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    mask: &impl DeviceBuf<f32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "dropout2d_bwd";
    expect(K, "dy", dy, shape.len())?;
    expect(K, "mask", mask, shape.n * shape.c)?;
    expect(K, "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pm, pdx) = (dy.device_addr(st), mask.device_addr(st), dx.device_addr(st));
    dropout2d_apply(dev, pdy, pm, shape, pdx)
}

// ---------------------------------------------------------------- loss.cu

/// The per-pixel forward of a masked loss (`loss.cu`'s `*_fwd_partials`).
#[derive(Clone, Copy)]
enum MaskedLoss {
    SoftCrossEntropy,
    SquaredError,
    KlDiv,
}

/// The checks every masked loss shares (the CPU's `masked_prologue` without the statistics,
/// which are computed on the device): two [N,K,H,W] maps, an [N,H,W] mask, the denominator.
/// Returns `ce_finalize`'s (mode, constant).
fn masked_check(
    kernel: &'static str,
    names: [&'static str; 2],
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
) -> Result<(i32, f64), CudaError> {
    expect(kernel, names[0], a, shape.len())?;
    expect(kernel, names[1], b, shape.len())?;
    if let Some(m) = mask {
        expect(kernel, "mask", m, shape.n * shape.plane())?;
    }
    denominator_code(kernel, denominator)
}

/// `ce_finalize` over `nblocks` rows of partials: loss[0] = Σ w·ℓ / D, inv_d[0] = 1/D.
fn finalize(
    dev: &Device,
    partials: &CudaSlice<f64>,
    nblocks: u32,
    (mode, constant): (i32, f64),
    pixels: usize,
    loss: u64,
    inv_d: &CudaSlice<f64>,
) -> Result<(), CudaError> {
    let st = dev.stream();
    let (pp, pinv, pixels64) = (
        partials.device_addr(st),
        inv_d.device_addr(st),
        pixels as u64,
    );
    launch!(dev, SOFTMAX_CE, "ce_finalize", one_block();
        pp, nblocks, mode, constant, pixels64, loss, pinv)
}

/// The forward of a masked loss: per-block partials, then `ce_finalize` into loss[0].
#[allow(clippy::too_many_arguments)]
fn masked_fwd(
    dev: &Device,
    which: MaskedLoss,
    kernel: &'static str,
    names: [&'static str; 2],
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let code = masked_check(kernel, names, a, b, mask, shape, denominator)?;
    expect(kernel, "loss", loss, 1)?;
    let pixels = shape.n * shape.plane();
    // An empty map (K = 0 included) sums to 0 like the CPU's early return: no pixel is visited.
    let visited = if shape.is_empty() { 0 } else { pixels };
    let nblocks = blocks(visited, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let st = dev.stream();
    let (pa, pb, pp) = (
        a.device_addr(st),
        b.device_addr(st),
        partials.device_addr(st),
    );
    let pm = mask.map_or(0, |m| m.device_addr(st));
    let (visited64, k, plane) = (visited as u64, shape.c as u32, shape.plane() as u64);
    let cfg = grid2(nblocks, 1);
    match which {
        MaskedLoss::SoftCrossEntropy => launch!(dev, LOSS, "soft_ce_fwd_partials", cfg;
            pa, pb, pm, visited64, k, plane, pp),
        MaskedLoss::SquaredError => launch!(dev, LOSS, "squared_error_fwd_partials", cfg;
            pa, pb, pm, visited64, k, plane, pp),
        MaskedLoss::KlDiv => launch!(dev, LOSS, "kl_div_fwd_partials", cfg;
            pa, pb, pm, visited64, k, plane, pp),
    }?;
    finalize(
        dev,
        &partials,
        nblocks,
        code,
        pixels,
        loss.device_addr(st),
        &inv_d,
    )
}

/// 1/D of a masked loss on the device ([1], f64; 0 when D = 0), from the mask's statistics.
fn masked_inv_d(
    dev: &Device,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    code: (i32, f64),
) -> Result<CudaSlice<f64>, CudaError> {
    let pixels = shape.n * shape.plane();
    let nblocks = blocks(pixels, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let unused_loss = scratch::<f32>(dev, 1)?;
    let st = dev.stream();
    let pm = mask.map_or(0, |m| m.device_addr(st));
    let (pp, pixels64) = (partials.device_addr(st), pixels as u64);
    launch!(dev, LOSS, "masked_stats_partials", grid2(nblocks, 1); pm, pixels64, pp)?;
    finalize(
        dev,
        &partials,
        nblocks,
        code,
        pixels,
        unused_loss.device_addr(st),
        &inv_d,
    )?;
    Ok(inv_d)
}

/// [`crate::loss::soft_cross_entropy_fwd`]: loss[0] = Σ_pixels w·(−Σ_k q_k log softmax(x)_k)/D.
///
/// logits, q: [N,K,H,W] (`shape.c` is K); mask: [N,H,W] or `None`; loss: [1].
pub fn soft_cross_entropy_fwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    q: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    masked_fwd(
        dev,
        MaskedLoss::SoftCrossEntropy,
        "soft_cross_entropy_fwd",
        ["logits", "q"],
        logits,
        q,
        mask,
        shape,
        denominator,
        loss,
    )
}

/// [`crate::loss::soft_cross_entropy_bwd`]: dlogits = dloss·w·(p·Σ_k q_k − q)/D, 0 where the
/// mask is 0. logits, q, dlogits: [N,K,H,W]; mask: [N,H,W] or `None`; dloss: [1].
#[allow(clippy::too_many_arguments)]
pub fn soft_cross_entropy_bwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    q: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    dloss: &impl DeviceBuf<f32>,
    dlogits: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "soft_cross_entropy_bwd";
    let code = masked_check(K, ["logits", "q"], logits, q, mask, shape, denominator)?;
    expect(K, "dloss", dloss, 1)?;
    expect(K, "dlogits", dlogits, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let inv_d = masked_inv_d(dev, mask, shape, code)?;
    let st = dev.stream();
    let (px, pq, pm) = (
        logits.device_addr(st),
        q.device_addr(st),
        mask.map_or(0, |m| m.device_addr(st)),
    );
    let (pdl, pinv, pg) = (
        dloss.device_addr(st),
        inv_d.device_addr(st),
        dlogits.device_addr(st),
    );
    let pixels = shape.n * shape.plane();
    let (pixels64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, LOSS, "soft_ce_bwd", grid(pixels); px, pq, pm, pdl, pinv, pixels64, k, plane, pg)
}

/// [`crate::loss::squared_error_fwd`]: loss[0] = Σ_pixels w·Σ_k (a_k − b_k)²/D.
///
/// a, b: [N,K,H,W] (`shape.c` is K); mask: [N,H,W] or `None`; loss: [1].
pub fn squared_error_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    masked_fwd(
        dev,
        MaskedLoss::SquaredError,
        "squared_error_fwd",
        ["a", "b"],
        a,
        b,
        mask,
        shape,
        denominator,
        loss,
    )
}

/// [`crate::loss::squared_error_bwd`]: da = 2·dloss·w·(a − b)/D, db = −da, 0 where the mask is
/// 0; bit-identical to the CPU given the same D. a, b: [N,K,H,W]; mask: [N,H,W] or `None`;
/// dloss: [1]; da, db: [N,K,H,W] or `None` (skipped).
#[allow(clippy::too_many_arguments)]
pub fn squared_error_bwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    dloss: &impl DeviceBuf<f32>,
    da: Option<&mut dyn DeviceBufMut<f32>>,
    db: Option<&mut dyn DeviceBufMut<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "squared_error_bwd";
    let code = masked_check(K, ["a", "b"], a, b, mask, shape, denominator)?;
    expect(K, "dloss", dloss, 1)?;
    if let Some(g) = da.as_deref() {
        expect(K, "da", g, shape.len())?;
    }
    if let Some(g) = db.as_deref() {
        expect(K, "db", g, shape.len())?;
    }
    if shape.is_empty() || (da.is_none() && db.is_none()) {
        return Ok(());
    }
    let inv_d = masked_inv_d(dev, mask, shape, code)?;
    let st = dev.stream();
    let (pa, pb, pm) = (
        a.device_addr(st),
        b.device_addr(st),
        mask.map_or(0, |m| m.device_addr(st)),
    );
    let (pdl, pinv) = (dloss.device_addr(st), inv_d.device_addr(st));
    let (len, k, plane) = (shape.len() as u64, shape.c as u32, shape.plane() as u64);
    let outs = [
        (da.map(|g| g.device_addr(st)), 1.0f64),
        (db.map(|g| g.device_addr(st)), -1.0),
    ];
    for (pg, sign) in outs {
        let Some(pg) = pg else { continue };
        launch!(dev, LOSS, "squared_error_bwd", grid(shape.len());
            pa, pb, pm, pdl, pinv, sign, len, k, plane, pg)?;
    }
    Ok(())
}

/// [`crate::loss::kl_div_fwd`]: loss[0] = Σ_pixels w·Σ_k p_k (log p_k − log q_k)/D, p = exp(log p),
/// a class with p_k = 0 contributing 0.
///
/// log_p (target), log_q (input): [N,K,H,W] (`shape.c` is K); mask: [N,H,W] or `None`; loss: [1].
pub fn kl_div_fwd(
    dev: &Device,
    log_p: &impl DeviceBuf<f32>,
    log_q: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    masked_fwd(
        dev,
        MaskedLoss::KlDiv,
        "kl_div_fwd",
        ["log_p", "log_q"],
        log_p,
        log_q,
        mask,
        shape,
        denominator,
        loss,
    )
}

/// [`crate::loss::kl_div_bwd`]: dlog_q = −dloss·w·p/D, dlog_p = dloss·w·p·(log p − log q + 1)/D,
/// 0 where the mask or p is 0. log_p, log_q: [N,K,H,W]; mask: [N,H,W] or `None`; dloss: [1];
/// dlog_p, dlog_q: [N,K,H,W] or `None` (skipped).
#[allow(clippy::too_many_arguments)]
pub fn kl_div_bwd(
    dev: &Device,
    log_p: &impl DeviceBuf<f32>,
    log_q: &impl DeviceBuf<f32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    denominator: Denominator,
    dloss: &impl DeviceBuf<f32>,
    dlog_p: Option<&mut dyn DeviceBufMut<f32>>,
    dlog_q: Option<&mut dyn DeviceBufMut<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "kl_div_bwd";
    let code = masked_check(
        K,
        ["log_p", "log_q"],
        log_p,
        log_q,
        mask,
        shape,
        denominator,
    )?;
    expect(K, "dloss", dloss, 1)?;
    if let Some(g) = dlog_p.as_deref() {
        expect(K, "dlog_p", g, shape.len())?;
    }
    if let Some(g) = dlog_q.as_deref() {
        expect(K, "dlog_q", g, shape.len())?;
    }
    if shape.is_empty() || (dlog_p.is_none() && dlog_q.is_none()) {
        return Ok(());
    }
    let inv_d = masked_inv_d(dev, mask, shape, code)?;
    let st = dev.stream();
    let (pp, pq, pm) = (
        log_p.device_addr(st),
        log_q.device_addr(st),
        mask.map_or(0, |m| m.device_addr(st)),
    );
    let (pdl, pinv) = (dloss.device_addr(st), inv_d.device_addr(st));
    let (len, k, plane) = (shape.len() as u64, shape.c as u32, shape.plane() as u64);
    let outs = [
        (dlog_p.map(|g| g.device_addr(st)), 1i32),
        (dlog_q.map(|g| g.device_addr(st)), 0),
    ];
    for (pg, wrt_p) in outs {
        let Some(pg) = pg else { continue };
        launch!(dev, LOSS, "kl_div_bwd", grid(shape.len());
            pp, pq, pm, pdl, pinv, wrt_p, len, k, plane, pg)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- reduce_more.cu

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
    launch!(dev, REDUCE_MORE, "dot_partials", grid2(nblocks, 1); pa, pb, n64, pp)?;
    launch!(dev, REDUCE, "reduce_sum_finalize", one_block(); pp, nblocks, divisor, po)
}

/// `channels_fwd`: y = (float)(scale·Σ_c x) per pixel.
fn channels_fwd(
    dev: &Device,
    kernel: &'static str,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    scale: f64,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect(kernel, "x", x, shape.len())?;
    expect(kernel, "y", y, pixels)?;
    if pixels == 0 {
        return Ok(());
    }
    let st = dev.stream();
    let (px, py) = (x.device_addr(st), y.device_addr(st));
    let (pixels64, c, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, REDUCE_MORE, "channels_fwd", grid(pixels); px, pixels64, c, plane, scale, py)
}

/// `channels_bwd`: dx[n, c] = dy[n] (scale `None`) or dy[n]·scale.
fn channels_bwd(
    dev: &Device,
    kernel: &'static str,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    scale: Option<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect(kernel, "dy", dy, shape.n * shape.plane())?;
    expect(kernel, "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (pdy, pdx) = (dy.device_addr(st), dx.device_addr(st));
    let (len, c, plane) = (shape.len() as u64, shape.c as u32, shape.plane() as u64);
    let (use_scale, s) = (i32::from(scale.is_some()), scale.unwrap_or(1.0));
    launch!(dev, REDUCE_MORE, "channels_bwd", grid(shape.len());
        pdy, len, c, plane, use_scale, s, pdx)
}

/// The CPU's error for a mean over zero channels.
fn no_channels(kernel: &'static str, shape: Nchw) -> Result<(), CudaError> {
    if shape.c == 0 {
        // The CPU kernel on empty slices reports it with its own message.
        match kernel {
            "mean_channels_fwd" => reduce::mean_channels_fwd::<f32>(&[], shape, &mut [])?,
            _ => reduce::mean_channels_bwd::<f32>(&[], shape, &mut [])?,
        }
    }
    Ok(())
}

/// [`crate::reduce::sum_channels_fwd`]: y[n, 0] = Σ_c x[n, c], in f64 (zeros when C = 0);
/// bit-identical to the CPU. x: [N, C, H, W] (`shape`); y: [N, 1, H, W].
pub fn sum_channels_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    channels_fwd(dev, "sum_channels_fwd", x, shape, 1.0, y)
}

/// [`crate::reduce::sum_channels_bwd`]: dx[n, c] = dy[n, 0]. dy: [N, 1, H, W]; dx: [N, C, H, W].
pub fn sum_channels_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    channels_bwd(dev, "sum_channels_bwd", dy, shape, None, dx)
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
    no_channels(K, shape)?;
    channels_fwd(dev, K, x, shape, 1.0 / shape.c as f64, y)
}

/// [`crate::reduce::mean_channels_bwd`]: dx[n, c] = dy[n, 0]·(1/C); errors when C = 0.
/// dy: [N, 1, H, W]; dx: [N, C, H, W] (`shape`).
pub fn mean_channels_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "mean_channels_bwd";
    no_channels(K, shape)?;
    channels_bwd(dev, K, dy, shape, Some((1.0 / shape.c as f64) as f32), dx)
}
