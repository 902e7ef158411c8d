//! The AVX-512 path of [`crate::conv2d`] for f32: the forward and the input gradient as GEMMs
//! over 32-pixel panels, without an image-sized `col` buffer and without the `gemm` crate's
//! packing.
//!
//! Why: deeplab_lite's convolutions are small GEMMs (Co 16–64 rows, K = Ci·9 up to 576, 64–1024
//! pixels per image). Through im2col + `gemm` each one writes the whole `col` [K, P] to memory,
//! the crate packs it again, and per-call overhead is paid on products of a few MFLOP; the
//! forward ran at ~50 % of the bare GEMM rate in the network (docs/BENCHMARKS.md). Here a panel
//! of 32 output pixels is gathered straight into an L1-sized [K, 32] buffer and an 8×32
//! register tile streams over it: 16 zmm accumulators, one broadcast weight and two panel loads
//! per k. Plain 1×1 convolutions and layers over 64 channels per group stay on `gemm` (see
//! conv2d.rs `use_panel`).
//!
//! Summation order: every output is Σ_k in increasing k, one f32 FMA chain — different last bits
//! from the `gemm` crate, identical for any thread count. The weight gradient goes through
//! `gemm` (conv2d.rs), except for the 3×3 stride-1 convolutions that conv2d_direct.rs takes.
//!
//! Not here: f64 (the gradient-check oracle keeps the reference path), depthwise convolution
//! (conv2d.rs's direct loops), other instruction sets (the caller falls back to im2col +
//! `gemm` when AVX-512F is absent).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the register tile (output channels in the forward, `col` rows in dX).
pub(crate) const MR: usize = 8;
/// Pixels of a panel: two zmm vectors.
pub(crate) const NR: usize = 32;

/// Whether this CPU runs the panel path (checked once per call; `std` caches the CPUID).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Geometry of one group's product, as conv2d.rs's `Geom` gives it (copied so that this file
/// does not reach into conv2d.rs's private types).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PanelGeom {
    /// Input channels of the group, input height and width.
    pub cig: usize,
    pub h: usize,
    pub w: usize,
    /// Output width.
    pub wo: usize,
    /// Kernel extent, stride, padding, dilation.
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
}

impl PanelGeom {
    /// For output row `oy` and kernel row `ki`: the input row, if inside the image.
    fn iy(&self, oy: usize, ki: usize) -> Option<usize> {
        let iy = (oy * self.sh + ki * self.dh) as isize - self.ph as isize;
        (iy >= 0 && (iy as usize) < self.h).then_some(iy as usize)
    }
    /// For kernel column `kj`: output columns [lo, hi) whose input column `ox·sw + off` is
    /// inside the image.
    fn valid_ox(&self, kj: usize) -> (usize, usize, isize) {
        let off = (kj * self.dw) as isize - self.pw as isize;
        let s = self.sw as isize;
        let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
        let last = self.w as isize - 1 - off;
        let hi = if last < 0 {
            0
        } else {
            (last / s + 1).min(self.wo as isize)
        };
        let lo = (lo as usize).min(self.wo);
        (lo, (hi.max(0) as usize).max(lo), off)
    }
    /// The runs of output rows covered by the pixels [p0, p0 + np), at most NR pixels each:
    /// (oy, ox0, ox1, j0) with column j0 holding pixel (oy, ox0).
    fn segments(&self, p0: usize, np: usize, out: &mut Vec<(usize, usize, usize, usize)>) {
        out.clear();
        let mut p = p0;
        while p < p0 + np {
            let (oy, ox0) = (p / self.wo, p % self.wo);
            // A run covers at most NR pixels (two vectors), also when a whole image is gathered.
            let ox1 = (ox0 + (p0 + np - p)).min(self.wo).min(ox0 + NR);
            out.push((oy, ox0, ox1, p - p0));
            p += ox1 - ox0;
        }
    }
}

/// The weights of one group, `wg` [Cog, Cg·taps] (the weight layout), restricted to the kernel
/// taps `live` and packed for [`tile`]: [ceil(Cog/MR)][Cg·|live|][MR], column c·|live| + i
/// holding tap live[i] of channel c (the row order [`gather_panel`] writes), rows past Cog zero.
pub(crate) fn pack_taps(
    wg: &[f32],
    cog: usize,
    cig: usize,
    taps: usize,
    live: &[usize],
) -> Vec<f32> {
    let (nl, kg) = (live.len(), cig * taps);
    let kp = cig * nl;
    let mut out = vec![0.0f32; cog.div_ceil(MR) * kp * MR];
    if kp == 0 {
        return out;
    }
    for (b, block) in out.chunks_exact_mut(kp * MR).enumerate() {
        let rows = MR.min(cog - b * MR);
        for (k, dst) in block.chunks_exact_mut(MR).enumerate() {
            let col = (k / nl) * taps + live[k % nl];
            for (r, d) in dst.iter_mut().enumerate().take(rows) {
                *d = wg[(b * MR + r) * kg + col];
            }
        }
    }
    out
}

/// `panel` [Cg·|live|, ld] ← the `col` columns of output pixels [p0, p0 + np) of one group's
/// input `xg` [Cg, H, W] for the kernel taps `live` (ki·kw + kj, increasing; all taps for a
/// whole `col`), into columns [0, np) of rows of stride `ld` (NR for a panel, Ho·Wo for a whole
/// `col` with `panel` starting at column p0); row c·|live| + i holds tap live[i] of channel c;
/// out-of-image taps are zero, other columns are left as they were.
pub(crate) fn gather_panel(
    g: &PanelGeom,
    xg: &[f32],
    p0: usize,
    np: usize,
    segs: &mut Vec<(usize, usize, usize, usize)>,
    panel: &mut [f32],
    ld: usize,
    live: &[usize],
) {
    g.segments(p0, np, segs);
    let plane = g.h * g.w;
    let mut k = 0;
    for c in 0..g.cig {
        let xc = &xg[c * plane..(c + 1) * plane];
        for &tap in live {
            let (ki, kj) = (tap / g.kw, tap % g.kw);
            {
                let row = &mut panel[k * ld..k * ld + np];
                k += 1;
                let (lo, hi, off) = g.valid_ox(kj);
                for &(oy, ox0, ox1, j0) in segs.iter() {
                    let dst = &mut row[j0..j0 + (ox1 - ox0)];
                    let Some(iy) = g.iy(oy, ki) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let (a, b) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
                    dst[..a - ox0].fill(0.0);
                    dst[b - ox0..].fill(0.0);
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    if g.sw == 1 {
                        if b > a {
                            let s0 = (a as isize + off) as usize;
                            dst[a - ox0..b - ox0].copy_from_slice(&src[s0..s0 + (b - a)]);
                        }
                    } else {
                        for ox in a..b {
                            dst[ox - ox0] = src[(ox as isize * g.sw as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// One run of a panel row for one kernel tap: pixels written at panel columns [j0, j0 + 32)
/// under `out` masks, read from input offset `src` (row·W + first input column, possibly
/// negative) under `load` masks (the window lanes inside the image); `src = None`: the input
/// row is outside (zeros).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    j0: usize,
    src: Option<isize>,
    out: [u16; 2],
    load: [u16; 4],
}

/// [`gather_panel`] for strides 1 and 2 with AVX-512 masked loads: per (tap, run) one masked
/// window load (two for stride 1, four + two permutes for stride 2) and one store, instead of
/// per-element work. Same values as [`gather_panel`].
pub(crate) fn gather_panel_fast(
    g: &PanelGeom,
    xg: &[f32],
    p0: usize,
    np: usize,
    segs: &mut Vec<(usize, usize, usize, usize)>,
    runs: &mut Vec<Run>,
    panel: &mut [f32],
    ld: usize,
    live: &[usize],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if g.sw <= 2 && available() {
            g.segments(p0, np, segs);
            let (plane, nl) = (g.h * g.w, live.len());
            assert!(ld >= np && xg.len() >= g.cig * plane);
            assert!(g.cig * nl == 0 || panel.len() >= (g.cig * nl - 1) * ld + np);
            assert!(live.iter().all(|&t| t < g.kh * g.kw));
            for (slot, &tap) in live.iter().enumerate() {
                tap_runs(g, segs, tap / g.kw, tap % g.kw, runs);
                // SAFETY: AVX-512F detected; the asserts above cover every channel plane and
                // panel row the loop reaches (rows c·|live| + slot < Cg·|live|).
                unsafe { gather_tap(g, xg.as_ptr(), runs, slot, nl, panel.as_mut_ptr(), ld) };
            }
            return;
        }
    }
    gather_panel(g, xg, p0, np, segs, panel, ld, live);
}

/// The kernel taps (ki·kw + kj, increasing) that read at least one in-image input pixel for
/// output pixels [p0, p0 + np). The others contribute exact zeros to every output of the panel
/// (a dilated ASPP conv on an 8×8 map reads outside for most taps), so the panel path skips
/// them: an FMA with a zero operand leaves a finite sum unchanged (up to the sign of an exact
/// zero), so the result is the same.
pub(crate) fn live_taps(
    g: &PanelGeom,
    p0: usize,
    np: usize,
    segs: &mut Vec<(usize, usize, usize, usize)>,
    runs: &mut Vec<Run>,
) -> Vec<usize> {
    g.segments(p0, np, segs);
    (0..g.kh * g.kw)
        .filter(|&tap| {
            tap_runs(g, segs, tap / g.kw, tap % g.kw, runs);
            runs.iter()
                .any(|r| r.src.is_some() && r.load.iter().any(|&m| m != 0))
        })
        .collect()
}

/// The runs of kernel tap (ki, kj) over the panel's row segments `segs`.
fn tap_runs(
    g: &PanelGeom,
    segs: &[(usize, usize, usize, usize)],
    ki: usize,
    kj: usize,
    runs: &mut Vec<Run>,
) {
    runs.clear();
    let off = (kj * g.dw) as isize - g.pw as isize;
    for &(oy, ox0, ox1, j0) in segs {
        let len = ox1 - ox0;
        let first = (ox0 * g.sw) as isize + off;
        let span = (len * g.sw) as isize;
        let (lo, hi) = (
            (-first).clamp(0, span) as usize,
            (g.w as isize - first).clamp(0, span) as usize,
        );
        runs.push(Run {
            j0,
            src: g.iy(oy, ki).map(|iy| (iy * g.w) as isize + first),
            out: [lane_mask(0, len, 0), lane_mask(0, len, 16)],
            load: [0, 16, 32, 48].map(|base| lane_mask(lo, hi, base)),
        });
    }
}

/// Bits [lo, hi) ∩ [base, base + 16) of a lane mask, shifted down by `base`.
#[inline(always)]
pub(crate) fn lane_mask(lo: usize, hi: usize, base: usize) -> u16 {
    let (a, b) = (lo.max(base).min(base + 16), hi.max(base).min(base + 16));
    if b <= a {
        0
    } else {
        (((1u32 << (b - a)) - 1) << (a - base)) as u16
    }
}

/// One kernel tap of every channel: panel rows c·slots + slot from the runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_tap(
    g: &PanelGeom,
    xg: *const f32,
    runs: &[Run],
    slot: usize,
    slots: usize,
    panel: *mut f32,
    ld: usize,
) {
    let plane = g.h * g.w;
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for c in 0..g.cig {
        // SAFETY: see the caller; lanes read are input columns inside row `iy` of plane c;
        // lanes written are panel columns [j0, j0 + len) ⊆ [0, np) of row c·slots + slot.
        let (xc, row) = unsafe { (xg.add(c * plane), panel.add((c * slots + slot) * ld)) };
        for run in runs {
            // SAFETY: as above.
            unsafe { gather_run(xc, g.sw, run, row, even) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_run(xc: *const f32, stride: usize, run: &Run, row: *mut f32, even: __m512i) {
    // SAFETY: see the caller; masked-off lanes are not accessed, so window addresses before
    // the row or past it are never dereferenced (hence `wrapping_offset`).
    unsafe {
        let dst = row.add(run.j0);
        let Some(src) = run.src else {
            _mm512_mask_storeu_ps(dst, run.out[0], _mm512_setzero_ps());
            _mm512_mask_storeu_ps(dst.wrapping_add(16), run.out[1], _mm512_setzero_ps());
            return;
        };
        let win = xc.wrapping_offset(src);
        let load = |i: usize| _mm512_maskz_loadu_ps(run.load[i], win.wrapping_add(16 * i));
        if stride == 1 {
            _mm512_mask_storeu_ps(dst, run.out[0], load(0));
            _mm512_mask_storeu_ps(dst.wrapping_add(16), run.out[1], load(1));
        } else {
            // Even lanes of the 64-column window → 32 outputs.
            let lo = _mm512_permutex2var_ps(load(0), even, load(1));
            _mm512_mask_storeu_ps(dst, run.out[0], lo);
            if run.out[1] != 0 {
                let hi = _mm512_permutex2var_ps(load(2), even, load(3));
                _mm512_mask_storeu_ps(dst.wrapping_add(16), run.out[1], hi);
            }
        }
    }
}

/// One 8×32 tile: `c[r, j] = init[r] + Σ_{k<t} a[k·MR + r] · b[k·bs + j]` for r < rows,
/// j < cols; lanes j ≥ cols of `b` are not read.
///
/// * `a`: [t, MR] packed (see [`pack_taps`]), at least t·MR elements.
/// * `b`: rows of stride `bs`; row k's columns [0, cols) are read.
/// * `c`: rows of stride `cs`; row r < rows, columns [0, cols) are written.
pub(crate) fn tile(
    t: usize,
    a: &[f32],
    b: &[f32],
    bs: usize,
    init: [f32; MR],
    c: &mut [f32],
    cs: usize,
    rows: usize,
    cols: usize,
) {
    assert!(rows <= MR && cols <= NR && rows > 0 && cols > 0);
    assert!(a.len() >= t * MR);
    assert!(t == 0 || b.len() >= (t - 1) * bs + cols);
    assert!(c.len() >= (rows - 1) * cs + cols);
    #[cfg(target_arch = "x86_64")]
    {
        if available() {
            // SAFETY: AVX-512F was detected; the asserts above bound every element read
            // (a: k·MR + r < t·MR; b: k·bs + j with j < cols, masked loads for j ≥ cols) and
            // written (c: r·cs + j, r < rows, j < cols, masked stores).
            unsafe {
                tile_avx512(
                    t,
                    a.as_ptr(),
                    b.as_ptr(),
                    bs,
                    init,
                    c.as_mut_ptr(),
                    cs,
                    rows,
                    cols,
                )
            };
            return;
        }
    }
    // Portable fallback with the same summation order (used only where AVX-512 is absent, e.g.
    // when the tests of this file run on such a machine).
    for r in 0..rows {
        for j in 0..cols {
            let mut acc = init[r];
            for k in 0..t {
                acc = a[k * MR + r].mul_add(b[k * bs + j], acc);
            }
            c[r * cs + j] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, reason = "a register tile's operands")]
unsafe fn tile_avx512(
    t: usize,
    a: *const f32,
    b: *const f32,
    bs: usize,
    init: [f32; MR],
    c: *mut f32,
    cs: usize,
    rows: usize,
    cols: usize,
) {
    // SAFETY: the caller (`tile`) checked the bounds of every unmasked lane; masked-off lanes
    // (mask bit 0) are neither read nor written, so their addresses may lie past the end.
    unsafe {
        let m0: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u32 << cols) as u16 - 1
        };
        let m1: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols > 16 {
            (1u32 << (cols - 16)) as u16 - 1
        } else {
            0
        };
        let mut acc0 = [_mm512_setzero_ps(); MR];
        let mut acc1 = [_mm512_setzero_ps(); MR];
        for r in 0..MR {
            acc0[r] = _mm512_set1_ps(init[r]);
            acc1[r] = acc0[r];
        }
        for k in 0..t {
            let bk = b.add(k * bs);
            let b0 = _mm512_maskz_loadu_ps(m0, bk);
            let b1 = _mm512_maskz_loadu_ps(m1, bk.wrapping_add(16));
            let ak = a.add(k * MR);
            for r in 0..MR {
                let av = _mm512_set1_ps(*ak.add(r));
                acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
            }
        }
        for r in 0..rows {
            let cr = c.add(r * cs);
            _mm512_mask_storeu_ps(cr, m0, acc0[r]);
            _mm512_mask_storeu_ps(cr.wrapping_add(16), m1, acc1[r]);
        }
    }
}
