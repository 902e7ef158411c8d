//! CUDA launchers of [`crate::conv2d`]: [`conv2d_fwd`] and [`conv2d_bwd`]
//! (`kernels/cuda/conv2d.cu`), with the CPU kernels' arguments in the same order (device buffers
//! in place of slices) and the CPU kernels' errors for bad shapes and lengths, checked on the host
//! before anything is enqueued.
//!
//! Dense and grouped convolutions run as implicit GEMMs (see the header of `kernels/cuda/conv2d.cu`);
//! depthwise ones (groups = Ci = Co > 1, the CPU's direct path) run direct kernels. The tile height
//! is picked per launch from the GEMM's row count. Where the output has too few tiles to fill the
//! GPU, the reduction is split into slices (the forward's Ci·kh·kw, the weight gradient's N·Ho·Wo)
//! whose number depends on the shape only, and the slices' partials are added in a fixed order:
//! results are deterministic for a shape.
//!
//! Launchers enqueue on [`Device::stream`] and return without waiting; split-K partials are
//! per-call scratch, as in every launcher file (see [`super`]).
//!
//! Not here: cuBLAS (the benchmark compares against it, nothing calls it), NHWC, TF32.

use super::common::{expect, grid, launch, scratch, shape_err, THREADS};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::CONV2D;
use super::CudaError;
use crate::conv2d::Conv2d;
use crate::Nchw;
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};

/// Output columns per GEMM tile (`CONV_BN` in conv2d.cu).
const TILE_COLS: usize = 128;
/// Split-K slices are made until about this many blocks are in flight (a few per SM on current
/// GPUs).
const SPLIT_TARGET_BLOCKS: usize = 512;
/// A forward slice covers at least this much of K (8 K-steps), so the extra pass over the
/// partials stays small next to the GEMM.
const FWD_MIN_SLICE: usize = 64;
/// A dW slice covers at least this many pixels (32 K-steps).
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

/// Grid of a GEMM launch: column tiles × row tiles × `z` (groups × slices); the driver allows at
/// most 65535 in y and z.
fn gemm_grid(
    kernel: &'static str,
    cols: usize,
    rows: usize,
    bm: usize,
    z: usize,
) -> Result<LaunchConfig, CudaError> {
    let (x, y) = (cols.div_ceil(TILE_COLS), rows.div_ceil(bm));
    if x > i32::MAX as usize || y > 65535 || z > 65535 {
        return Err(shape_err(
            kernel,
            format!("grid {x}×{y}×{z} exceeds the CUDA limits (2^31−1 × 65535 × 65535)"),
        ));
    }
    Ok(LaunchConfig {
        grid_dim: (x as u32, y as u32, z as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Split-K for a GEMM of `tiles` output tiles over a reduction of length `k`: the number of
/// slices and the k per slice (a multiple of the K step, 8; every slice non-empty). A function
/// of the shape only, so results are reproducible.
fn split_k(tiles: usize, k: usize, min_slice: usize) -> (usize, usize) {
    let wanted = SPLIT_TARGET_BLOCKS.div_ceil(tiles.max(1));
    let most = (k / min_slice).max(1);
    let slices = wanted.clamp(1, most);
    let chunk = k.div_ceil(slices).next_multiple_of(8).max(8);
    (k.div_ceil(chunk).max(1), chunk)
}

/// Per-call scratch for `slices` partials of `len` elements (none for one slice), after checking
/// that they stay within 32-bit indexing.
fn partials(
    dev: &Device,
    kernel: &'static str,
    slices: usize,
    len: usize,
) -> Result<Option<CudaSlice<f32>>, CudaError> {
    if slices.saturating_mul(len) > i32::MAX as usize {
        return Err(shape_err(
            kernel,
            format!("split-K partials ({slices} × {len}) exceed 32-bit indexing"),
        ));
    }
    if slices > 1 {
        Ok(Some(scratch::<f32>(dev, slices * len)?))
    } else {
        Ok(None)
    }
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
    let k = (xs.c / p.groups) * p.kh * p.kw;
    let bm = tile_rows(rows);
    let tiles = cols.div_ceil(TILE_COLS) * rows.div_ceil(bm) * p.groups;
    let (slices, chunk) = split_k(tiles, k, FWD_MIN_SLICE);
    let scratch = partials(dev, K, slices, ys.len())?;
    // One slice: the GEMM writes y with the bias; several: partials, then the bias in the sum.
    let (pout, pbias_gemm) = match &scratch {
        Some(s) => (s.device_addr(st), 0u64),
        None => (py, pb),
    };
    let chunk32 = chunk as i32;
    let cfg = gemm_grid(K, cols, rows, bm, p.groups * slices)?;
    match bm {
        16 => launch!(dev, CONV2D, "conv2d_fwd_m16", cfg; px, pw, pbias_gemm, geom, chunk32, pout),
        32 => launch!(dev, CONV2D, "conv2d_fwd_m32", cfg; px, pw, pbias_gemm, geom, chunk32, pout),
        64 => launch!(dev, CONV2D, "conv2d_fwd_m64", cfg; px, pw, pbias_gemm, geom, chunk32, pout),
        _ => launch!(dev, CONV2D, "conv2d_fwd_m128", cfg; px, pw, pbias_gemm, geom, chunk32, pout),
    }?;
    if scratch.is_some() {
        let (s32, len32, plane, ch) =
            (slices as i32, ys.len() as i32, ys.plane() as i32, co as i32);
        launch!(dev, CONV2D, "conv2d_sum_slices", grid(ys.len());
            pout, s32, len32, pb, plane, ch, py)?;
    }
    Ok(())
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
            let cfg = gemm_grid(K, xs.n * xs.plane(), rows, bm, p.groups)?;
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
            let (slices, chunk) = split_k(tiles, pixels, DW_MIN_SLICE);
            let scratch = partials(dev, K, slices, w_len)?;
            let pout = scratch.as_ref().map_or(pdw, |s| s.device_addr(st));
            let chunk32 = chunk as i32;
            let cfg = gemm_grid(K, cols, rows, bm, p.groups * slices)?;
            match bm {
                16 => launch!(dev, CONV2D, "conv2d_dw_m16", cfg; px, pdy, geom, chunk32, pout),
                32 => launch!(dev, CONV2D, "conv2d_dw_m32", cfg; px, pdy, geom, chunk32, pout),
                64 => launch!(dev, CONV2D, "conv2d_dw_m64", cfg; px, pdy, geom, chunk32, pout),
                _ => launch!(dev, CONV2D, "conv2d_dw_m128", cfg; px, pdy, geom, chunk32, pout),
            }?;
            if scratch.is_some() {
                let (s32, len32, no_bias, one) = (slices as i32, w_len as i32, 0u64, 1i32);
                launch!(dev, CONV2D, "conv2d_sum_slices", grid(w_len);
                    pout, s32, len32, no_bias, one, one, pdw)?;
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
    fn split_k_covers_every_k_once() {
        for min_slice in [FWD_MIN_SLICE, DW_MIN_SLICE] {
            for (tiles, k) in [
                (1, 1),
                (1, 7),
                (2, 16384),
                (36, 131072),
                (600, 5000),
                (1, 100),
            ] {
                let (slices, chunk) = split_k(tiles, k, min_slice);
                assert_eq!(chunk % 8, 0, "{tiles} {k}");
                assert!(slices * chunk >= k, "{tiles} {k}");
                assert!((slices - 1) * chunk < k, "{tiles} {k}: empty last slice");
                assert!(slices == 1 || chunk >= min_slice, "{tiles} {k}");
            }
        }
        // Enough tiles already: no split.
        assert_eq!(split_k(600, 5000, DW_MIN_SLICE).0, 1);
        // One tile over 16384 pixels: split up to the block target.
        assert_eq!(split_k(2, 16384, DW_MIN_SLICE).0, 64);
        // deeplab_lite's 64→32 3×3 at 8×8, batch 16: 8 tiles, K = 576 → 9 slices of 64.
        assert_eq!(split_k(8, 576, FWD_MIN_SLICE), (9, 64));
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
