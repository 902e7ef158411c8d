//! CUDA launchers of [`crate::elementwise`] (`kernels/cuda/elementwise.cu`): add, mul, scale and
//! threshold, and the concat / slice copies along channels and along the batch, for f32 and i32
//! maps ([`Word32`]). Each kernel does the CPU's exact f32 operation (`--fmad=false`) or moves
//! 32-bit words untouched, so every result is bit-identical to the CPU.
//!
//! Every concat and slice is one of two gathers: `copy_rows` (concat forwards and backwards,
//! slice forwards; one launch per part) and `slice_bwd` (the slice backwards, zero outside the
//! window).
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: relu and leaky relu ([`super::activation`]), reductions ([`super::reduce`]),
//! broadcasting, strided views.

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::ELEMENTWISE;
use super::CudaError;
use crate::elementwise::{check_parts, check_range, Axis, Broadcast};
use crate::Nchw;
use cudarc::driver::PushKernelArg;

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

/// [`crate::elementwise::add_fwd`]: y = a + b. a, b, y: same length.
pub fn add_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    binary(dev, "add_fwd", a, b, y)
}

/// [`crate::elementwise::add_relu_fwd`]: y = max(a + b, 0). a, b, y: same length.
pub fn add_relu_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    binary(dev, "add_relu_fwd", a, b, y)
}

/// [`crate::elementwise::mul_fwd`]: y = a · b. a, b, y: same length.
pub fn mul_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    binary(dev, "mul_fwd", a, b, y)
}

fn binary(
    dev: &Device,
    kernel: &'static str,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = a.elems();
    expect(kernel, "b", b, n)?;
    expect(kernel, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pa, pb, py, n64) = (
        a.device_addr(s),
        b.device_addr(s),
        y.device_addr(s),
        n as u64,
    );
    match kernel {
        "add_fwd" => launch!(dev, ELEMENTWISE, "add_fwd", grid(n); pa, pb, n64, py),
        "add_relu_fwd" => launch!(dev, ELEMENTWISE, "add_relu_fwd", grid(n); pa, pb, n64, py),
        _ => launch!(dev, ELEMENTWISE, "mul_fwd", grid(n); pa, pb, n64, py),
    }
}

/// [`crate::elementwise::mul_bwd`]: da = dy · b, db = dy · a. All the same length.
pub fn mul_bwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    da: &mut impl DeviceBufMut<f32>,
    db: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "mul_bwd";
    let n = a.elems();
    expect(K, "b", b, n)?;
    expect(K, "dy", dy, n)?;
    expect(K, "da", da, n)?;
    expect(K, "db", db, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pa, pb, pdy, pda, pdb) = (
        a.device_addr(s),
        b.device_addr(s),
        dy.device_addr(s),
        da.device_addr(s),
        db.device_addr(s),
    );
    let n64 = n as u64;
    launch!(dev, ELEMENTWISE, "mul_bwd", grid(n); pa, pb, pdy, n64, pda, pdb)
}

/// [`crate::elementwise::scale_fwd`]: y = alpha · x. x, y: same length.
pub fn scale_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    alpha: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("scale_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64) = (x.device_addr(s), y.device_addr(s), n as u64);
    launch!(dev, ELEMENTWISE, "scale_fwd", grid(n); px, n64, alpha, py)
}

/// [`crate::elementwise::affine_fwd`]: y = alpha · x + beta, bit-identical (two roundings).
/// x, y: same length.
pub fn affine_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    alpha: f32,
    beta: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("affine_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64) = (x.device_addr(s), y.device_addr(s), n as u64);
    launch!(dev, ELEMENTWISE, "affine_fwd", grid(n); px, n64, alpha, beta, py)
}

/// [`crate::elementwise::mul_broadcast_fwd`]: y = x ⊙ m, m shared over the batch ([C, H, W]) or
/// over the channels ([N, H, W]); bit-identical. x, y: [N, C, H, W] (`shape`).
pub fn mul_broadcast_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    m: &impl DeviceBuf<f32>,
    shape: Nchw,
    over: Broadcast,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "mul_broadcast_fwd";
    expect(K, "x", x, shape.len())?;
    expect(K, "y", y, shape.len())?;
    let plane = shape.plane();
    let (m_len, over_channels) = match over {
        Broadcast::OverBatch => (shape.c * plane, 0i32),
        Broadcast::OverChannels => (shape.n * plane, 1i32),
    };
    expect(K, "m", m, m_len)?;
    let n = shape.len();
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pm, py) = (x.device_addr(s), m.device_addr(s), y.device_addr(s));
    let (len, image, plane) = (n as u64, (shape.c * plane) as u64, plane as u64);
    launch!(dev, ELEMENTWISE, "mul_broadcast_fwd", grid(n);
        px, pm, len, image, plane, over_channels, py)
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
    launch!(dev, ELEMENTWISE, "threshold_fwd", grid(n); px, n64, at, below, py)
}

// ---------------------------------------------------------------- concat and slice

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
    launch!(dev, ELEMENTWISE, "copy_rows", grid(n);
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
    launch!(dev, ELEMENTWISE, "slice_bwd", grid(n); pdy, rows, row_len, lo, hi, pdx)
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
