//! Rust launchers for `conv2d.cu`: [`conv2d_fwd`] and [`conv2d_bwd`], the CUDA twins of
//! [`crate::conv2d::conv2d_fwd`] and [`crate::conv2d::conv2d_bwd`] with the same arguments in the
//! same order (device buffers in place of slices) and the CPU kernels' errors for bad shapes and
//! lengths, checked on the host before anything is enqueued.
//!
//! Dense and grouped convolutions run as implicit GEMMs (see the header of `kernels/cuda/conv2d.cu`);
//! depthwise ones (groups = Ci = Co > 1, the CPU's direct path) run direct kernels. The tile height
//! is picked per launch from the GEMM's row count. The weight gradient is split along the batch's
//! pixels into a number of slices that depends on the shape only, and the slices' partials are
//! added in a fixed order: results are deterministic for a shape.
//!
//! Launchers enqueue on [`Device::stream`] and return without waiting; dW's partials are per-call
//! scratch, as elsewhere.
//!
//! Not here: cuBLAS (the benchmark compares against it, nothing calls it), NHWC, TF32.

use super::common::{expect, grid, launch, scratch, shape_err, THREADS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::CONV2D;
use super::CudaError;
use crate::conv2d::Conv2d;
use crate::Nchw;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

/// Output columns per GEMM tile (`CONV_BN` in conv2d.cu).
const TILE_COLS: usize = 128;
/// dW slices are made until about this many blocks are in flight (a few per SM on current GPUs).
const DW_TARGET_BLOCKS: usize = 512;
/// A dW slice covers at least this many pixels (32 K-steps), so partials stay a small overhead.
const DW_MIN_SLICE: usize = 256;

/// The shape and hyper-parameters as `conv2d.cu`'s `ConvGeom` (same fields, same order).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    n: i32,
    ci: i32,
    h: i32,
    w: i32,
    co: i32,
    ho: i32,
    wo: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    dh: i32,
    dw: i32,
    groups: i32,
    cig: i32,
    cog: i32,
}

// SAFETY: a plain `#[repr(C)]` struct of i32s, laid out exactly as `ConvGeom` in conv2d.cu.
unsafe impl DeviceRepr for ConvGeom {}

/// Checks the shape exactly as the CPU kernel does (same errors), plus the kernels' 32-bit
/// indexing; returns the geometry and the output shape.
fn geometry(
    kernel: &'static str,
    xs: Nchw,
    co: usize,
    p: &Conv2d,
) -> Result<(ConvGeom, Nchw), CudaError> {
    let g = p.groups;
    if g == 0 || !xs.c.is_multiple_of(g) || !co.is_multiple_of(g) {
        return Err(shape_err(
            "conv2d",
            format!("groups = {g} must divide both Ci = {} and Co = {co}", xs.c),
        ));
    }
    let ys = p.out_shape(xs, co)?;
    let limit = i32::MAX as usize;
    let weight = p.weight_len(xs.c, co);
    if xs.len() > limit || ys.len() > limit || weight > limit {
        return Err(shape_err(
            kernel,
            format!(
                "x {xs:?} / y {ys:?} / w ({weight}) have 2^31 elements or more: the CUDA kernels \
                 index with 32 bits"
            ),
        ));
    }
    let i = |v: usize| v as i32;
    Ok((
        ConvGeom {
            n: i(xs.n),
            ci: i(xs.c),
            h: i(xs.h),
            w: i(xs.w),
            co: i(co),
            ho: i(ys.h),
            wo: i(ys.w),
            kh: i(p.kh),
            kw: i(p.kw),
            sh: i(p.sh),
            sw: i(p.sw),
            ph: i(p.ph),
            pw: i(p.pw),
            dh: i(p.dh),
            dw: i(p.dw),
            groups: i(g),
            cig: i(xs.c / g),
            cog: i(co / g),
        },
        ys,
    ))
}

/// The CPU kernel's depthwise test: its direct path, and ours.
fn is_depthwise(xs: Nchw, co: usize, p: &Conv2d) -> bool {
    p.groups == xs.c && p.groups == co && p.groups > 1
}

/// Tile height for a GEMM with `rows` rows: the smallest of 16/32/64/128 covering it, else 128.
fn tile_rows(rows: usize) -> usize {
    match rows {
        0..=16 => 16,
        17..=32 => 32,
        33..=64 => 64,
        _ => 128,
    }
}

fn gemm_grid(cols: usize, rows: usize, bm: usize, z: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(TILE_COLS) as u32,
            rows.div_ceil(bm) as u32,
            z as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// dW slices for a GEMM of `tiles` output tiles over `pixels` pixels, and the pixels per slice
/// (a multiple of the K step, 8). A function of the shape only.
fn dw_slices(tiles: usize, pixels: usize) -> (usize, usize) {
    let wanted = DW_TARGET_BLOCKS.div_ceil(tiles.max(1));
    let most = pixels.div_ceil(DW_MIN_SLICE).max(1);
    let slices = wanted.clamp(1, most);
    let chunk = pixels.div_ceil(slices).next_multiple_of(8).max(8);
    (pixels.div_ceil(chunk).max(1), chunk)
}

/// [`crate::conv2d::conv2d_fwd`]: y = conv(x, w) + bias.
///
/// x: [N, Ci, H, W] with shape `xs`; w: [Co, Ci/groups, kh, kw]; bias: [Co] or `None`;
/// y: [N, Co, Ho, Wo] with (Ho, Wo) = `p.out_hw(H, W)`, overwritten.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    xs: Nchw,
    w: &impl DeviceBuf<f32>,
    bias: Option<&dyn DeviceBuf<f32>>,
    co: usize,
    p: &Conv2d,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "conv2d_fwd";
    let (geom, ys) = geometry(K, xs, co, p)?;
    expect(K, "x", x, xs.len())?;
    expect(K, "w", w, p.weight_len(xs.c, co))?;
    if let Some(b) = bias {
        expect(K, "bias", b, co)?;
    }
    expect(K, "y", y, ys.len())?;
    if ys.is_empty() {
        return Ok(());
    }
    let st = dev.stream();
    let (px, pw, py) = (x.device_addr(st), w.device_addr(st), y.device_addr(st));
    let pb = bias.map_or(0u64, |b| b.device_addr(st));
    if is_depthwise(xs, co, p) {
        return launch!(dev, CONV2D, "conv2d_depthwise_fwd", grid(ys.len()); px, pw, pb, geom, py);
    }
    let (rows, cols) = (co / p.groups, ys.n * ys.plane());
    let bm = tile_rows(rows);
    let cfg = gemm_grid(cols, rows, bm, p.groups);
    match bm {
        16 => launch!(dev, CONV2D, "conv2d_fwd_m16", cfg; px, pw, pb, geom, py),
        32 => launch!(dev, CONV2D, "conv2d_fwd_m32", cfg; px, pw, pb, geom, py),
        64 => launch!(dev, CONV2D, "conv2d_fwd_m64", cfg; px, pw, pb, geom, py),
        _ => launch!(dev, CONV2D, "conv2d_fwd_m128", cfg; px, pw, pb, geom, py),
    }
}

/// [`crate::conv2d::conv2d_bwd`]: any of `dx`, `dw`, `db` may be `None` to skip it.
///
/// x: [N, Ci, H, W] (the forward input), shape `xs`; w: [Co, Ci/groups, kh, kw];
/// dy: [N, Co, Ho, Wo]; dx: [N, Ci, H, W]; dw: [Co, Ci/groups, kh, kw]; db: [Co] — each
/// overwritten.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    xs: Nchw,
    w: &impl DeviceBuf<f32>,
    co: usize,
    p: &Conv2d,
    dy: &impl DeviceBuf<f32>,
    dx: Option<&mut dyn DeviceBufMut<f32>>,
    dw: Option<&mut dyn DeviceBufMut<f32>>,
    db: Option<&mut dyn DeviceBufMut<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "conv2d_bwd";
    let (geom, ys) = geometry(K, xs, co, p)?;
    let w_len = p.weight_len(xs.c, co);
    expect(K, "x", x, xs.len())?;
    expect(K, "w", w, w_len)?;
    expect(K, "dy", dy, ys.len())?;
    if let Some(d) = dx.as_deref() {
        expect(K, "dx", d, xs.len())?;
    }
    if let Some(d) = dw.as_deref() {
        expect(K, "dw", d, w_len)?;
    }
    if let Some(d) = db.as_deref() {
        expect(K, "db", d, co)?;
    }
    let st = dev.stream();
    let (px, pw, pdy) = (x.device_addr(st), w.device_addr(st), dy.device_addr(st));
    let depthwise = is_depthwise(xs, co, p);
    let pixels = ys.n * ys.plane();
    if let Some(db) = db {
        // With no output pixels the sums are empty: the kernel writes zeros.
        let pdb = db.device_addr(st);
        if co > 0 {
            let cfg = LaunchConfig {
                grid_dim: (co as u32, 1, 1),
                ..grid(1)
            };
            launch!(dev, CONV2D, "conv2d_db", cfg; pdy, geom, pdb)?;
        }
    }
    if let Some(dx) = dx {
        let pdx = dx.device_addr(st);
        if xs.is_empty() {
            // nothing to write
        } else if depthwise {
            launch!(dev, CONV2D, "conv2d_depthwise_dx", grid(xs.len()); pw, pdy, geom, pdx)?;
        } else {
            let rows = xs.c / p.groups;
            let bm = tile_rows(rows);
            let cfg = gemm_grid(xs.n * xs.plane(), rows, bm, p.groups);
            match bm {
                16 => launch!(dev, CONV2D, "conv2d_dx_m16", cfg; pw, pdy, geom, pdx),
                32 => launch!(dev, CONV2D, "conv2d_dx_m32", cfg; pw, pdy, geom, pdx),
                64 => launch!(dev, CONV2D, "conv2d_dx_m64", cfg; pw, pdy, geom, pdx),
                _ => launch!(dev, CONV2D, "conv2d_dx_m128", cfg; pw, pdy, geom, pdx),
            }?;
        }
    }
    if let Some(dw) = dw {
        let pdw = dw.device_addr(st);
        if w_len == 0 {
            // nothing to write
        } else if depthwise {
            let cfg = LaunchConfig {
                grid_dim: (w_len as u32, 1, 1),
                ..grid(1)
            };
            launch!(dev, CONV2D, "conv2d_depthwise_dw", cfg; px, pdy, geom, pdw)?;
        } else {
            let (rows, cols) = (co / p.groups, w_len / co);
            let bm = tile_rows(rows);
            let tiles = cols.div_ceil(TILE_COLS) * rows.div_ceil(bm) * p.groups;
            let (slices, chunk) = dw_slices(tiles, pixels);
            if slices.saturating_mul(w_len) > i32::MAX as usize {
                return Err(shape_err(
                    K,
                    format!("dW partials ({slices} × {w_len}) exceed 32-bit indexing"),
                ));
            }
            let partials = if slices > 1 {
                Some(scratch::<f32>(dev, slices * w_len)?)
            } else {
                None
            };
            let pout = partials.as_ref().map_or(pdw, |s| s.device_addr(st));
            let chunk32 = chunk as i32;
            let cfg = gemm_grid(cols, rows, bm, p.groups * slices);
            match bm {
                16 => launch!(dev, CONV2D, "conv2d_dw_m16", cfg; px, pdy, geom, chunk32, pout),
                32 => launch!(dev, CONV2D, "conv2d_dw_m32", cfg; px, pdy, geom, chunk32, pout),
                64 => launch!(dev, CONV2D, "conv2d_dw_m64", cfg; px, pdy, geom, chunk32, pout),
                _ => launch!(dev, CONV2D, "conv2d_dw_m128", cfg; px, pdy, geom, chunk32, pout),
            }?;
            if slices > 1 {
                let (s32, len32) = (slices as i32, w_len as i32);
                launch!(dev, CONV2D, "conv2d_dw_reduce", grid(w_len); pout, s32, len32, pdw)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_rows_covers_the_rows() {
        assert_eq!(tile_rows(1), 16);
        assert_eq!(tile_rows(16), 16);
        assert_eq!(tile_rows(17), 32);
        assert_eq!(tile_rows(64), 64);
        assert_eq!(tile_rows(65), 128);
        assert_eq!(tile_rows(1000), 128);
    }

    #[test]
    fn dw_slices_cover_every_pixel_once() {
        for (tiles, pixels) in [
            (1, 1),
            (1, 7),
            (2, 16384),
            (36, 131072),
            (600, 5000),
            (1, 100),
        ] {
            let (slices, chunk) = dw_slices(tiles, pixels);
            assert_eq!(chunk % 8, 0, "{tiles} {pixels}");
            assert!(slices * chunk >= pixels, "{tiles} {pixels}");
            assert!(
                (slices - 1) * chunk < pixels,
                "{tiles} {pixels}: empty last slice"
            );
            assert!(slices == 1 || chunk >= DW_MIN_SLICE, "{tiles} {pixels}");
        }
        // Enough tiles already: no split.
        assert_eq!(dw_slices(600, 5000).0, 1);
        // One tile over 16384 pixels: split up to the block target.
        assert_eq!(dw_slices(2, 16384).0, 64);
    }

    #[test]
    fn bad_groups_are_the_cpu_error() {
        let e = geometry(
            "conv2d_fwd",
            Nchw::new(1, 3, 5, 5),
            2,
            &Conv2d::square(3, 1, 0, 1).with_groups(2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("groups = 2 must divide"), "{e}");
        let e = geometry(
            "conv2d_fwd",
            Nchw::new(1, 1, 2, 2),
            1,
            &Conv2d::square(3, 1, 0, 1),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("smaller than the dilated kernel"),
            "{e}"
        );
    }
}
