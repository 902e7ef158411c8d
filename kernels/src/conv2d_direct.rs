//! The direct AVX-512 path of [`crate::conv2d`] (and its AVX2 + FMA twins, for CPUs without
//! AVX-512F: [`fwd_tile_avx2`], [`dw_tile_avx2`], the same FMA chains and so the same bits) for
//! f32 3×3 convolutions with stride 1 and
//! dilation 1 (any padding): the forward on maps at least 16 columns wide (and, through
//! conv2d.rs's `dx_as_forward`, the input gradient) and the weight gradient at any width,
//! reading the input where it lies — no panel copy, no `col` buffer, no `gemm`.
//!
//! Why: on the U-Net of the benchmark regime (width 16, 64×64 input, every conv 3×3 stride 1)
//! the panel path's gather cost more than half its tile math where Co is 16 (each gathered
//! [K, 32] panel served only two 8-row tiles), and dW was per-image im2col, a transpose of dY
//! and a skinny `gemm` with N = Co = 16 (50–100 GFLOP/s on 2 threads). With stride 1 a kernel
//! tap is a shifted row of the input, so a masked vector load at the right offset *is* the
//! panel row.
//!
//! Forward tile ([`fwd_image`]): MR = 8 output channels × up to three output rows × 16 output
//! columns (24 zmm accumulators). For each input channel and kernel column kj, the five input
//! rows the tile reads are loaded once (shifted by kj, masked where a lane falls outside the
//! image; tiles clear of the edges load without masks) and each serves up to three (output
//! row, kernel row) pairs: 15 loads and 72 broadcast weights per 216 FMAs. Every output is one
//! FMA chain over (c, kj, ki) in that order (the panel path sums over (c, ki, kj)), independent
//! of the thread count.
//!
//! Weight-gradient tile ([`dw_batch`]): the lanes run over 16 output channels, read from dY
//! transposed to [pixel, channel], and the other operand is an input pixel broadcast from x
//! (in place for padding 1, else from a zero-padded copy): per output pixel, one or two aligned
//! vector loads and 9 to 27 broadcasts per 18 to 27 FMAs (3 input channels × 9 taps × 16
//! output channels, or 1 × 9 × 32).
//! A first version with lanes along output columns (both operands vector loads, shifted ones
//! split across cache lines and masked at the edges) reached only half the FMA rate; this one
//! runs at ~90 % of it in isolation. Each dW entry is, per image, one FMA chain over the output
//! pixels in order, and those per-image sums are added in image order, all by one task whatever
//! the split (or, where transposing every image's dY on every thread would cost more, by one
//! task per fixed half of the batch, the halves added at the end): the result is the same for
//! any thread count.
//!
//! Not here: other kernel sizes, strides or dilations; the forward on maps narrower than 16
//! columns (half-empty vectors: the panel path packs several rows per panel there; a variant
//! with 16 row-major pixels per vector and per-lane masks only matched `gemm` on the 8×8
//! 128-channel layers and was slower for their dX); f64; CPUs without AVX-512F or AVX2 + FMA —
//! conv2d.rs's `Geom` sends all of those elsewhere. dW takes any width.

use crate::conv2d_panel::{available, lane_mask, PanelGeom, MR};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Output columns per vector.
const L: usize = 16;
/// Output rows of the largest forward tile.
const NV: usize = 3;

/// Whether a convolution of this geometry (stride, dilation and kernel as given) takes the
/// direct path's AVX-512 forward on this CPU.
pub(crate) fn applies(g: &PanelGeom) -> bool {
    is_3x3_stride1(g) && g.wo >= L && available()
}

/// Whether the forward takes the AVX2 twin of the direct path ([`fwd_tile_avx2`]): the same
/// geometries as [`applies`], on a CPU with AVX2 and FMA but without AVX-512F, where conv2d.rs
/// would otherwise fall back to im2col + `gemm` for every layer.
pub(crate) fn applies_avx2(g: &PanelGeom) -> bool {
    is_3x3_stride1(g) && g.wo >= L && !available() && avx2_available()
}

/// Whether [`dw_batch`] takes a convolution of this geometry on this CPU: as [`applies`], at
/// any width (its vectors run over output channels, not pixels), with AVX-512F or with AVX2 +
/// FMA ([`dw_tile_avx2`]).
pub(crate) fn applies_dw(g: &PanelGeom) -> bool {
    is_3x3_stride1(g) && (available() || avx2_available())
}

fn is_3x3_stride1(g: &PanelGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1
}

/// Whether this CPU has AVX2 and FMA (checked per call; `std` caches the CPUID).
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output height of a geometry [`applies`] accepts: H + 2·ph − 2.
fn out_h(g: &PanelGeom) -> usize {
    g.h + 2 * g.ph - 2
}

/// For the 16-column segment at output column `ox0`: the lanes inside the output row and, per
/// kernel column kj, those whose input column `ox0 + lane + kj − pw` lies inside the image.
fn col_masks(g: &PanelGeom, ox0: usize) -> (u16, [u16; 3]) {
    let out = lane_mask(0, (g.wo - ox0).min(L), 0);
    let cm = std::array::from_fn(|kj| {
        let first = ox0 as isize + kj as isize - g.pw as isize;
        let lo = (-first).clamp(0, L as isize) as usize;
        let hi = (g.w as isize - first).clamp(0, L as isize) as usize;
        lane_mask(lo, hi, 0) & out
    });
    (out, cm)
}

/// Output rows per forward tile from `left` rows onward: threes, with a remainder of 4 split
/// 2 + 2 and smaller remainders as they come (no tile computes rows past the image).
fn tile_rows(left: usize) -> usize {
    if left == 4 {
        2
    } else {
        left.min(NV)
    }
}

/// One image's forward for one group: `yg` [Cog, Ho, Wo] = bias + Σ `pack` · taps of `xg`
/// [Cg, H, W]; `pack` is [`crate::conv2d_panel::pack_taps`] of the group's weights with all
/// nine taps live ([ceil(Cog/MR)][Cg·9][MR]). Every element of `yg` is written.
pub(crate) fn fwd_image(
    g: &PanelGeom,
    xg: &[f32],
    pack: &[f32],
    cog: usize,
    bias: Option<&[f32]>,
    yg: &mut [f32],
) {
    let (ho, wo, plane) = (out_h(g), g.wo, g.h * g.w);
    let opix = ho * wo;
    let kp = g.cig * 9;
    let avx512 = applies(g);
    assert!((avx512 || applies_avx2(g)) && cog > 0);
    assert!(xg.len() >= g.cig * plane && yg.len() >= cog * opix);
    assert!(pack.len() >= cog.div_ceil(MR) * kp * MR);
    assert!(bias.is_none_or(|b| b.len() >= cog));
    for ox0 in (0..wo).step_by(L) {
        let (out, cm) = col_masks(g, ox0);
        let mut oy0 = 0;
        while oy0 < ho {
            let nv = tile_rows(ho - oy0);
            // Per input row r of the tile (row oy0 − ph + r) and kj: the lanes to load, none
            // for a row outside the image.
            let mut masks = [[0u16; 3]; NV + 2];
            let mut rows_inside = true;
            for (r, m) in masks.iter_mut().enumerate().take(nv + 2) {
                let iy = (oy0 + r) as isize - g.ph as isize;
                if iy >= 0 && (iy as usize) < g.h {
                    *m = cm;
                } else {
                    rows_inside = false;
                }
            }
            // The kernel columns whose loads need masks (bit kj): a masked load costs an extra
            // vector µop on the FMA ports, so tiles inside the image load plainly.
            let need = if rows_inside {
                (0..3)
                    .filter(|&kj| cm[kj] != 0xffff)
                    .fold(0u8, |b, kj| b | 1 << kj)
            } else {
                7
            };
            let xoff = (oy0 as isize - g.ph as isize) * g.w as isize + ox0 as isize - g.pw as isize;
            for (b, r0) in (0..cog).step_by(MR).enumerate() {
                let rows = MR.min(cog - r0);
                let mut init = [0.0f32; MR];
                if let Some(bias) = bias {
                    init[..rows].copy_from_slice(&bias[r0..r0 + rows]);
                }
                let t = FwdTile {
                    cig: g.cig,
                    plane,
                    w: g.w,
                    masks: &masks,
                    init,
                    ys: opix,
                    wo,
                    rows,
                    out,
                };
                // SAFETY: AVX-512F was checked by `applies`; `x` + xoff + c·plane + r·W + kj
                // + lane is read only under `masks[r][kj]`, which holds just the lanes whose
                // input row and column lie inside plane c < Cg of `xg` (asserted length);
                // `a` holds Cg·9·MR weights of block b (asserted); `y` + m·opix + v·Wo + lane
                // is written for m < rows ≤ Cog − r0, v < nv ≤ Ho − oy0, lanes under `out`
                // (< Wo − ox0), inside `yg`.
                unsafe {
                    let x = xg.as_ptr().wrapping_offset(xoff);
                    let a = pack.as_ptr().add(b * kp * MR);
                    let y = yg.as_mut_ptr().add(r0 * opix + oy0 * wo + ox0);
                    if !avx512 {
                        // AVX2 and FMA were checked by `applies_avx2`; the same lanes as below.
                        match (nv, need) {
                            (3, 0) => fwd_tile_avx2::<3, 0, 2>(&t, x, a, y),
                            (3, _) => fwd_tile_avx2::<3, 7, 2>(&t, x, a, y),
                            (2, 0) => fwd_tile_avx2::<2, 0, 4>(&t, x, a, y),
                            (2, _) => fwd_tile_avx2::<2, 7, 4>(&t, x, a, y),
                            _ => fwd_tile_avx2::<1, 7, 4>(&t, x, a, y),
                        }
                        continue;
                    }
                    match (nv, need) {
                        (3, 0) => fwd_tile::<3, 0>(&t, x, a, y),
                        (3, 1) => fwd_tile::<3, 1>(&t, x, a, y),
                        (3, 4) => fwd_tile::<3, 4>(&t, x, a, y),
                        (3, 5) => fwd_tile::<3, 5>(&t, x, a, y),
                        (3, _) => fwd_tile::<3, 7>(&t, x, a, y),
                        (2, 0) => fwd_tile::<2, 0>(&t, x, a, y),
                        (2, 1) => fwd_tile::<2, 1>(&t, x, a, y),
                        (2, 4) => fwd_tile::<2, 4>(&t, x, a, y),
                        (2, 5) => fwd_tile::<2, 5>(&t, x, a, y),
                        (2, _) => fwd_tile::<2, 7>(&t, x, a, y),
                        _ => fwd_tile::<1, 7>(&t, x, a, y),
                    }
                }
            }
            oy0 += nv;
        }
    }
}

/// The scalar operands of one forward tile.
struct FwdTile<'a> {
    cig: usize,
    plane: usize,
    w: usize,
    masks: &'a [[u16; 3]; NV + 2],
    init: [f32; MR],
    ys: usize,
    wo: usize,
    rows: usize,
    out: u16,
}

/// MR × V output rows × 16 columns: `y[m·ys + v·wo + lane] = init[m] + Σ_c Σ_kj Σ_ki
/// a[(c·9 + ki·3 + kj)·MR + m] · x[c·plane + (v + ki)·w + kj + lane]`, input lanes under
/// `masks[v + ki][kj]` (zero elsewhere), output lanes under `out`, rows m < `rows`. Loads of
/// kernel column kj are masked where bit kj of `M` is set; the caller clears it only where
/// every mask of that column is full.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_tile<const V: usize, const M: u8>(
    t: &FwdTile<'_>,
    x: *const f32,
    a: *const f32,
    y: *mut f32,
) {
    // SAFETY: the caller guarantees that every lane read under its mask and every lane written
    // lies inside its slice; masked-off lanes are not accessed, so their addresses may lie
    // outside (hence `wrapping_*`).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for (m, row) in acc.iter_mut().enumerate() {
            *row = [_mm512_set1_ps(t.init[m]); V];
        }
        for c in 0..t.cig {
            let xc = x.wrapping_add(c * t.plane);
            let ac = a.add(c * 9 * MR);
            for kj in 0..3 {
                let mut xv = [_mm512_setzero_ps(); NV + 2];
                for r in 0..V + 2 {
                    let p = xc.wrapping_add(r * t.w + kj);
                    xv[r] = if M & (1 << kj) != 0 {
                        _mm512_maskz_loadu_ps(t.masks[r][kj], p)
                    } else {
                        _mm512_loadu_ps(p)
                    };
                }
                for ki in 0..3 {
                    for m in 0..MR {
                        let av = _mm512_set1_ps(*ac.add((ki * 3 + kj) * MR + m));
                        for v in 0..V {
                            acc[m][v] = _mm512_fmadd_ps(av, xv[v + ki], acc[m][v]);
                        }
                    }
                }
            }
        }
        for (m, row) in acc.iter().enumerate().take(t.rows) {
            for (v, &r) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(y.add(m * t.ys + v * t.wo), t.out, r);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn fwd_tile<const V: usize, const M: u8>(
    _: &FwdTile<'_>,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
) {
    unreachable!("the direct path needs AVX-512F (`applies` is false here)")
}

/// [`fwd_tile`] on AVX2 + FMA: the same outputs, each the same FMA chain over (c, kj, ki), so
/// the same bits as the AVX-512 tile. Eight lanes per ymm and 16 registers: the 16 columns are
/// two 8-lane halves and the MR rows blocks of `CB`, each (half, block) its own pass over the
/// input with CB × V accumulators and V + 2 input rows in registers. Loads of kernel column kj
/// are masked where bit kj of `M` is set, as in [`fwd_tile`] (an AVX `maskload` never faults
/// on a masked-off lane).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_tile_avx2<const V: usize, const M: u8, const CB: usize>(
    t: &FwdTile<'_>,
    x: *const f32,
    a: *const f32,
    y: *mut f32,
) {
    // SAFETY: as `fwd_tile`: lanes are read only under `masks`, written only under `out`.
    unsafe {
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        for half in 0..2 {
            let out8 = ((t.out >> (8 * half)) & 0xff) as i32;
            if out8 == 0 {
                continue;
            }
            let lanes =
                |b: i32| _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(b), bits), bits);
            let out_mask = lanes(out8);
            let mut masks = [[_mm256_setzero_si256(); 3]; NV + 2];
            if M != 0 {
                for (r, row) in masks.iter_mut().enumerate().take(V + 2) {
                    for (kj, m) in row.iter_mut().enumerate() {
                        *m = lanes(((t.masks[r][kj] >> (8 * half)) & 0xff) as i32);
                    }
                }
            }
            let xh = x.wrapping_add(8 * half);
            for m0 in (0..t.rows).step_by(CB) {
                let mut acc = [[_mm256_setzero_ps(); V]; CB];
                for (m, row) in acc.iter_mut().enumerate() {
                    *row = [_mm256_set1_ps(t.init[(m0 + m) % MR]); V];
                }
                for c in 0..t.cig {
                    let xc = xh.wrapping_add(c * t.plane);
                    let ac = a.add(c * 9 * MR + m0);
                    for kj in 0..3 {
                        let mut xv = [_mm256_setzero_ps(); NV + 2];
                        for (r, v) in xv.iter_mut().enumerate().take(V + 2) {
                            let p = xc.wrapping_add(r * t.w + kj);
                            *v = if M & (1 << kj) != 0 {
                                _mm256_maskload_ps(p, masks[r][kj])
                            } else {
                                _mm256_loadu_ps(p)
                            };
                        }
                        for ki in 0..3 {
                            for (m, row) in acc.iter_mut().enumerate() {
                                let av = _mm256_set1_ps(*ac.add((ki * 3 + kj) * MR + m));
                                for (v, r) in row.iter_mut().enumerate() {
                                    *r = _mm256_fmadd_ps(av, xv[v + ki], *r);
                                }
                            }
                        }
                    }
                }
                for (m, row) in acc.iter().enumerate().take(t.rows - m0) {
                    for (v, &r) in row.iter().enumerate() {
                        let p = y.add((m0 + m) * t.ys + v * t.wo + 8 * half);
                        if out8 == 0xff {
                            _mm256_storeu_ps(p, r);
                        } else {
                            _mm256_maskstore_ps(p, out_mask, r);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn fwd_tile_avx2<const V: usize, const M: u8, const CB: usize>(
    _: &FwdTile<'_>,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
) {
    unreachable!("the AVX2 direct path needs x86-64 (`applies_avx2` is false here)")
}

/// The weight gradient of one group over a batch: `dwg` [Cog, Cg, 3, 3] (overwritten) = Σ over
/// images n and output pixels of dY[n, co, oy, ox] · x[n, c, oy + ki − ph, ox + kj − pw].
///
/// * `x`: the batch's input, image n's group at `x[n·x_img + xg0..]` ([Cg, H, W]).
/// * `dy`: the output gradient, image n's group at `dy[n·y_img + yg0..]` ([Cog, Ho, Wo]).
///
/// The input channels are split into one contiguous range per rayon thread. Per image, a
/// thread transposes dY to [Ho·Wo, Cop] (Cop = Cog rounded up to 16, zero lanes past Cog; every
/// thread its own copy) and, unless the padding is 1 on both sides (the tiles then read x in
/// place), copies its channels of x into zero-padded planes [(Ho + 2)·(Wo + 2)] (no masks, no
/// branches at the borders); then it runs its tasks: (block of
/// input channels, block of output-channel vectors), each adding its image's sums into its rows
/// of the transposed gradient dWt [Cg·9, Cop], which is transposed into `dwg` at the end. The
/// copies and transposes are a few per cent of the tile work; their buffers are per-thread
/// scratch kept across calls.
pub(crate) fn dw_batch(
    g: &PanelGeom,
    n: usize,
    x: &[f32],
    x_img: usize,
    xg0: usize,
    dy: &[f32],
    y_img: usize,
    yg0: usize,
    cog: usize,
    dwg: &mut [f32],
) {
    use rayon::prelude::*;
    let (ho, wo, plane) = (out_h(g), g.wo, g.h * g.w);
    let opix = ho * wo;
    assert!(applies_dw(g) && n > 0 && cog > 0);
    assert!(x.len() >= (n - 1) * x_img + xg0 + g.cig * plane);
    assert!(dy.len() >= (n - 1) * y_img + yg0 + cog * opix);
    assert!(dwg.len() == cog * g.cig * 9);
    let cop = cog.next_multiple_of(L);
    let nvec = cop / L;
    let avx512 = available();
    let (hp, wp) = (ho + 2, wo + 2);
    // Padding 1 on both sides (W = Wo, H = Ho): the tiles read x where it lies, a row above or
    // below the image from a row of zeros and the column left or right of it as an explicit
    // zero; other paddings read zero-padded copies of the planes.
    let in_place = g.ph == 1 && g.pw == 1;
    let t = DwTile {
        ho,
        wo,
        wp: if in_place { g.w } else { wp },
        xs: if in_place { plane } else { hp * wp },
        cop,
        in_place,
    };
    // Tasks of a channel range: one output-channel vector per tile needs three channels to fill
    // 27 accumulators; two vectors fill 18 with one channel.
    let tasks_of = |c0: usize, c1: usize| -> Vec<DwTask> {
        let mut tasks = Vec::new();
        if nvec == 1 {
            for c in (c0..c1).step_by(3) {
                let nc = 3.min(c1 - c);
                tasks.push(DwTask {
                    c,
                    nc,
                    v0: 0,
                    nv: 1,
                });
            }
        } else {
            for v0 in (0..nvec).step_by(2) {
                for c in c0..c1 {
                    let nv = 2.min(nvec - v0);
                    tasks.push(DwTask { c, nc: 1, v0, nv });
                }
            }
        }
        tasks
    };
    let k9 = g.cig * 9;
    // Parts (channels c0..c1, images n0..n1, rows of dWt [Cg·9, Cop] to overwrite — the first
    // image stores, the others add): either one channel range per rayon thread, each thread
    // transposing every image's dY, or two fixed halves of the batch over all channels, each
    // transposing only its images, with a second dWt to add at the end. Halves where the
    // repeated transposes (Cog·Ho·Wo per image) outweigh that addition (2·Cg·9·Cop) — the
    // 16- and 32-channel layers at 32² and 64² — and with at most three input channels (one
    // task); the choice depends on the shape alone, so the sums are the same on any thread
    // count.
    let halves = n >= 2 && (g.cig <= 3 || cog * opix * n > 2 * k9 * cop);
    let parts = if halves {
        2
    } else {
        rayon::current_num_threads().clamp(1, g.cig)
    };
    let rows = if halves { 2 * k9 } else { k9 };
    with_scratch(&DWT, rows * cop, |dwt| {
        let mut slices = Vec::with_capacity(parts);
        let mut rest = &mut dwt[..];
        for i in 0..parts {
            let (c0, c1, n0, n1) = if halves {
                (0, g.cig, i * n / 2, (i + 1) * n / 2)
            } else {
                (i * g.cig / parts, (i + 1) * g.cig / parts, 0, n)
            };
            let (head, tail) = rest.split_at_mut((c1 - c0) * 9 * cop);
            slices.push((c0, c1, n0, n1, head));
            rest = tail;
        }
        slices.into_par_iter().for_each(|(c0, c1, n0, n1, out)| {
            let tasks = tasks_of(c0, c1);
            let zeros = vec![0.0f32; wo + 2];
            with_scratch(&DYT, opix * cop, |dyt| {
                let pads = if in_place { 0 } else { (c1 - c0) * hp * wp };
                with_scratch(&XPAD, pads, |xpad| {
                    for img in n0..n1 {
                        let dyn_ = &dy[img * y_img + yg0..img * y_img + yg0 + cog * opix];
                        transpose(dyn_, cog, opix, opix, dyt, cop, cop);
                        let xn = &x[img * x_img + xg0..];
                        if !in_place {
                            for (c, xc) in (c0..c1).zip(xpad.chunks_exact_mut(hp * wp)) {
                                pad_plane(g, &xn[c * plane..(c + 1) * plane], xc, wp);
                            }
                        }
                        for task in &tasks {
                            let DwTask { c, nc, v0, nv } = *task;
                            // SAFETY: AVX-512F was checked by `applies_dw`; the tile reads
                            // planes c .. c + nc of image img of `x` (in place: at input rows
                            // < H, columns < W, asserted lengths) or c − c0 .. c − c0 + nc of
                            // `xpad` ((Ho + 2)·(Wo + 2) floats each), and `zeros` (Wo + 2);
                            // `dyt` holds Ho·Wo rows of Cop floats, 64-byte aligned
                            // (`with_scratch`), and the tile reads vectors v0 .. v0 + nv ≤
                            // Cop/16 of each; `out` holds rows (c − c0)·9 .. (c − c0 + nc)·9 of
                            // Cop floats, the tile writing columns v0·16 .. (v0 + nv)·16.
                            unsafe {
                                let xc = if in_place {
                                    xn.as_ptr().add(c * plane)
                                } else {
                                    xpad.as_ptr().add((c - c0) * hp * wp)
                                };
                                let z = zeros.as_ptr();
                                let d = dyt.as_ptr().add(v0 * L);
                                let o = out.as_mut_ptr().add((c - c0) * 9 * cop + v0 * L);
                                let first = img == n0;
                                if !avx512 {
                                    // AVX2 + FMA were checked by `applies_dw`; the same reads
                                    // and writes.
                                    dw_tile_avx2(&t, nc, nv, xc, z, d, o, first);
                                    continue;
                                }
                                match (nc, nv) {
                                    (3, _) => dw_tile::<3, 1>(&t, xc, z, d, o, first),
                                    (2, _) => dw_tile::<2, 1>(&t, xc, z, d, o, first),
                                    (_, 1) => dw_tile::<1, 1>(&t, xc, z, d, o, first),
                                    _ => dw_tile::<1, 2>(&t, xc, z, d, o, first),
                                }
                            }
                        }
                    }
                });
            });
        });
        if halves {
            let (a, b) = dwt.split_at_mut(k9 * cop);
            a.iter_mut().zip(&b[..k9 * cop]).for_each(|(a, b)| *a += b);
        }
        // dW [Cog, Cg·9] = the first Cog columns of dWt, transposed.
        transpose(dwt, k9, cog, cop, dwg, k9, k9);
    });
}

thread_local! {
    /// Per thread, the transposed weight gradient, the transposed dY and the padded x planes:
    /// reused across calls (grow-only; every element read is written first), so that a call
    /// neither zero-fills nor page-faults them in — on two threads at once that cost a quarter of
    /// an 8×8 layer's dW.
    static DWT: RefCell<Vec<Al>> = const { RefCell::new(Vec::new()) };
    static DYT: RefCell<Vec<Al>> = const { RefCell::new(Vec::new()) };
    static XPAD: RefCell<Vec<Al>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's buffer `key`, at least `len` floats, 64-byte aligned; contents are
/// whatever the last user left. A buffer already in use on this thread (a call nested in
/// another through rayon work stealing) is replaced by a fresh one for the inner call.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<Al>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let vecs = len.div_ceil(L);
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < vecs {
                *buf = vec![Al([0.0; L]); vecs];
            }
            f(&mut Al::floats(&mut buf)[..len])
        }
        Err(_) => f(&mut Al::floats(&mut vec![Al([0.0; L]); vecs])[..len]),
    })
}

/// `dst[j·ldd + r] = src[r·lds + j]` for j < `cols` and r < `lanes`, zero for r ≥ `rows`:
/// the transpose of the `rows` × `cols` block of `src`, its rows padded with zeros to `lanes`.
fn transpose(
    src: &[f32],
    rows: usize,
    cols: usize,
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
    lanes: usize,
) {
    assert!(rows <= lanes && cols <= lds && lanes <= ldd);
    assert!(rows == 0 || src.len() >= (rows - 1) * lds + cols);
    assert!(cols == 0 || dst.len() >= (cols - 1) * ldd + lanes);
    #[cfg(target_arch = "x86_64")]
    {
        if available() {
            // SAFETY: AVX-512F detected; lengths asserted above.
            unsafe { transpose_avx512(src, rows, cols, lds, dst, ldd, lanes) };
            return;
        }
    }
    for j in 0..cols {
        for r in 0..lanes {
            dst[j * ldd + r] = if r < rows { src[r * lds + j] } else { 0.0 };
        }
    }
}

/// [`transpose`] in 16×16 register blocks (4 shuffle rounds of 16 per block).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(
    src: &[f32],
    rows: usize,
    cols: usize,
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
    lanes: usize,
) {
    // SAFETY: rows r < `rows` of `src` are read at columns j0 + i < `cols` (masked loads); rows
    // j < `cols` of `dst` are written at columns r0 + i < `lanes` (masked stores).
    unsafe {
        for r0 in (0..lanes).step_by(L) {
            let sm = lane_mask(0, L.min(lanes - r0), 0);
            for j0 in (0..cols).step_by(L) {
                let nj = L.min(cols - j0);
                let m = lane_mask(0, nj, 0);
                let mut r = [_mm512_setzero_ps(); L];
                for (i, v) in r.iter_mut().enumerate() {
                    if r0 + i < rows {
                        *v = _mm512_maskz_loadu_ps(m, src.as_ptr().add((r0 + i) * lds + j0));
                    }
                }
                let mut t = [_mm512_setzero_ps(); L];
                for i in 0..8 {
                    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
                }
                let mut u = [_mm512_setzero_ps(); L];
                for q in 0..4 {
                    let (a0, a1, b0, b1) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
                    let pd = _mm512_castps_pd;
                    u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
                    u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
                    u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
                    u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
                }
                // u[4q + k] holds columns k, k + 4, k + 8, k + 12 (one per 128-bit block) of
                // rows 4q .. 4q + 4.
                let mut v = [_mm512_setzero_ps(); L];
                for h in 0..2 {
                    for k in 0..4 {
                        let (a, b) = (u[8 * h + k], u[8 * h + 4 + k]);
                        v[8 * h + k] = _mm512_shuffle_f32x4::<0x88>(a, b);
                        v[8 * h + 4 + k] = _mm512_shuffle_f32x4::<0xdd>(a, b);
                    }
                }
                // v[8h + k] (k < 8) holds columns k and k + 8 of rows 8h .. 8h + 8, so the
                // last round gives whole columns k and k + 8.
                for k in 0..8 {
                    let (a, b) = (v[k], v[8 + k]);
                    let lo = _mm512_shuffle_f32x4::<0x88>(a, b);
                    let hi = _mm512_shuffle_f32x4::<0xdd>(a, b);
                    if k < nj {
                        _mm512_mask_storeu_ps(dst.as_mut_ptr().add((j0 + k) * ldd + r0), sm, lo);
                    }
                    if k + 8 < nj {
                        let d = dst.as_mut_ptr().add((j0 + k + 8) * ldd + r0);
                        _mm512_mask_storeu_ps(d, sm, hi);
                    }
                }
            }
        }
    }
}

/// `xc` [H + 2·ph, W + 2·pw] (= [Ho + 2, Wo + 2]) ← the plane `src` [H, W] at row ph, column
/// pw, zeros around: padded (oy + ki, ox + kj) holds x[oy + ki − ph, ox + kj − pw]. Every
/// element is written (the buffer is reused, not cleared).
fn pad_plane(g: &PanelGeom, src: &[f32], xc: &mut [f32], wp: usize) {
    let (top, body) = xc.split_at_mut(g.ph * wp);
    top.fill(0.0);
    let (body, bottom) = body.split_at_mut(g.h * wp);
    bottom.fill(0.0);
    for (row, xr) in src.chunks_exact(g.w).zip(body.chunks_exact_mut(wp)) {
        let (left, rest) = xr.split_at_mut(g.pw);
        left.fill(0.0);
        rest[..g.w].copy_from_slice(row);
        rest[g.w..].fill(0.0);
    }
}

/// One weight-gradient task: input channels c .. c + nc and output-channel vectors
/// v0 .. v0 + nv (16 channels each), nc·9·nv ≤ 27 accumulators.
#[derive(Debug, Clone, Copy)]
struct DwTask {
    c: usize,
    nc: usize,
    v0: usize,
    nv: usize,
}

/// 16 floats on a 64-byte boundary: one cache line, one aligned zmm load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Al([f32; L]);

impl Al {
    fn floats(v: &mut [Al]) -> &mut [f32] {
        // SAFETY: `Al` is `repr(C)` over 16 f32 with no padding (size 64 = 16·4).
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<f32>(), v.len() * L) }
    }
}

/// Every output pixel of one row for the dW tiles: `$pixel!(rows, drow, ox, edge)` with EDGE
/// bit 0 / bit 2 set where kernel column 0 / 2 reads outside the image (in place only). A macro,
/// so the tiles' per-pixel bodies stay inside their `target_feature` functions.
macro_rules! each_pixel {
    ($t:expr, $pixel:ident, $rows:expr, $drow:expr) => {
        if !$t.in_place {
            for ox in 0..$t.wo {
                $pixel!($rows, $drow, ox, 0);
            }
        } else if $t.wo == 1 {
            $pixel!($rows, $drow, 0, 5);
        } else {
            $pixel!($rows, $drow, 0, 1);
            for ox in 1..$t.wo - 1 {
                $pixel!($rows, $drow, ox, 0);
            }
            $pixel!($rows, $drow, $t.wo - 1, 4);
        }
    };
}

impl DwTile {
    /// Row pointers of input channel `c`'s three kernel rows for output row `oy` (element
    /// ox + kj of row ki is tap (ki, kj) of output column ox): rows of the padded planes, or in
    /// place rows of x starting one column left of the image, `zeros` above and below it.
    ///
    /// # Safety
    /// `x` holds the tile's planes as [`dw_tile`] requires.
    #[inline(always)]
    unsafe fn kernel_rows(
        &self,
        x: *const f32,
        zeros: *const f32,
        c: usize,
        oy: usize,
    ) -> [*const f32; 3] {
        let mut rows = [zeros; 3];
        for (ki, row) in rows.iter_mut().enumerate() {
            // SAFETY: the caller's planes hold these rows (see `dw_tile`).
            *row = unsafe {
                if !self.in_place {
                    x.add(c * self.xs + (oy + ki) * self.wp)
                } else if (1..=self.ho).contains(&(oy + ki)) {
                    x.add(c * self.xs + (oy + ki - 1) * self.wp).wrapping_sub(1)
                } else {
                    zeros
                }
            };
        }
        rows
    }
}

/// The scalar operands of one weight-gradient tile.
struct DwTile {
    ho: usize,
    wo: usize,
    /// Row and plane stride of the x planes: the padded copies' Wo + 2 and (Ho + 2)·(Wo + 2),
    /// or in place W and H·W.
    wp: usize,
    xs: usize,
    /// Transposed dY row stride (floats per output pixel).
    cop: usize,
    /// x read in place (padding 1 across, W = Wo, H = Ho), not from padded copies.
    in_place: bool,
}

/// NC input channels × nine taps × V vectors of 16 output channels (`dyt` + v·16 of each
/// transposed dY row), over one image: `out[(c·9 + ki·3 + kj)·cop + v·16 + lane]` = (`first`:
/// 0, else itself) + Σ over (oy, ox) of X[c, oy + ki, ox + kj] ·
/// `dyt[(oy·Wo + ox)·cop + v·16 + lane]`, X the zero-padded input (from padded planes at `x`,
/// or in place: rows outside read from `zeros`, columns outside replaced by zero). The sum is
/// one FMA chain per dW entry in order of oy, then ox, its weight broadcast from x (never split
/// across cache lines, never masked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dw_tile<const NC: usize, const V: usize>(
    t: &DwTile,
    x: *const f32,
    zeros: *const f32,
    dyt: *const f32,
    out: *mut f32,
    first: bool,
) {
    // SAFETY: the caller guarantees the planes, `zeros`, `dyt` and `out` (64-byte aligned); in
    // place, element ox + kj of row pointer (c, ki) is input column ox + kj − 1, read only for
    // columns 0 .. W (the pixel body's EDGE zeroes the others).
    unsafe {
        // Fresh sums per image, added to the running ones at the end: chains of at most Ho·Wo
        // terms, as the per-image products of im2col + `gemm` had (one chain over the whole
        // batch measured 10× the rounding difference to that path on deeplab_lite's layer1).
        let mut acc = [[[_mm512_setzero_ps(); V]; 9]; NC];
        // One output pixel; EDGE bit 0 / bit 2: kernel column 0 / 2 reads outside the image
        // (in place only) and multiplies a zero instead, as the padded copy would. A macro, not
        // a closure: closures would not inherit this function's target features.
        macro_rules! pixel {
            ($rows:expr, $drow:expr, $ox:expr, $edge:expr) => {{
                let ox: usize = $ox;
                let mut d = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    d[v] = _mm512_load_ps($drow.add(ox * t.cop + v * L));
                }
                for c in 0..NC {
                    for ki in 0..3 {
                        for kj in 0..3 {
                            let a = if ($edge as u8) & (1 << kj) != 0 {
                                _mm512_setzero_ps()
                            } else {
                                _mm512_set1_ps(*$rows[c][ki].wrapping_add(ox + kj))
                            };
                            for v in 0..V {
                                acc[c][ki * 3 + kj][v] =
                                    _mm512_fmadd_ps(a, d[v], acc[c][ki * 3 + kj][v]);
                            }
                        }
                    }
                }
            }};
        }
        for oy in 0..t.ho {
            let mut rows = [[x; 3]; NC];
            for (c, r) in rows.iter_mut().enumerate() {
                *r = t.kernel_rows(x, zeros, c, oy);
            }
            let drow = dyt.add(oy * t.wo * t.cop);
            each_pixel!(t, pixel, rows, drow);
        }
        for c in 0..NC {
            for tap in 0..9 {
                for v in 0..V {
                    let o = out.add((c * 9 + tap) * t.cop + v * L);
                    let sum = if first {
                        acc[c][tap][v]
                    } else {
                        _mm512_add_ps(_mm512_load_ps(o), acc[c][tap][v])
                    };
                    _mm512_store_ps(o, sum);
                }
            }
        }
    }
}

/// [`dw_tile`] on AVX2 + FMA for `nc` channels and `nv` vectors of 16 output channels: the
/// same sums, each dW entry the same FMA chain over (oy, ox) added to the running one the same
/// way, so the same bits. One pass per (channel, 16-lane vector, 8-lane half): nine
/// accumulators, one dY vector and one broadcast in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(
    clippy::too_many_arguments,
    reason = "dw_tile's operands with its two counts"
)]
unsafe fn dw_tile_avx2(
    t: &DwTile,
    nc: usize,
    nv: usize,
    x: *const f32,
    zeros: *const f32,
    dyt: *const f32,
    out: *mut f32,
    first: bool,
) {
    // SAFETY: as `dw_tile`: the same planes, rows and columns are read and written.
    unsafe {
        for c in 0..nc {
            for lane0 in (0..nv * L).step_by(8) {
                let mut acc = [_mm256_setzero_ps(); 9];
                macro_rules! pixel {
                    ($rows:expr, $drow:expr, $ox:expr, $edge:expr) => {{
                        let ox: usize = $ox;
                        let d = _mm256_load_ps($drow.add(ox * t.cop + lane0));
                        for ki in 0..3 {
                            for kj in 0..3 {
                                let a = if ($edge as u8) & (1 << kj) != 0 {
                                    _mm256_setzero_ps()
                                } else {
                                    _mm256_set1_ps(*$rows[ki].wrapping_add(ox + kj))
                                };
                                acc[ki * 3 + kj] = _mm256_fmadd_ps(a, d, acc[ki * 3 + kj]);
                            }
                        }
                    }};
                }
                for oy in 0..t.ho {
                    let rows = t.kernel_rows(x, zeros, c, oy);
                    let drow = dyt.add(oy * t.wo * t.cop);
                    each_pixel!(t, pixel, rows, drow);
                }
                for (tap, &a) in acc.iter().enumerate() {
                    let o = out.add((c * 9 + tap) * t.cop + lane0);
                    let sum = if first {
                        a
                    } else {
                        _mm256_add_ps(_mm256_load_ps(o), a)
                    };
                    _mm256_store_ps(o, sum);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(
    clippy::too_many_arguments,
    reason = "dw_tile's operands with its two counts"
)]
unsafe fn dw_tile_avx2(
    _: &DwTile,
    _: usize,
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: bool,
) {
    unreachable!("the AVX2 direct path needs x86-64 (`applies_dw` is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn dw_tile<const NC: usize, const V: usize>(
    _: &DwTile,
    _: *const f32,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: bool,
) {
    unreachable!("the direct path needs AVX-512F (`applies` is false here)")
}
