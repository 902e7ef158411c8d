//! 2-d convolution (PyTorch `nn.Conv2d` semantics: cross-correlation, zero padding, stride,
//! dilation, groups), forward and backward, on contiguous NCHW.
//!
//! Strategy, per image (images are independent, so the batch is split across the rayon pool and
//! each GEMM runs single-threaded — on 2 cores this keeps both busy without relying on the GEMM's
//! own split heuristics, which do not scale on the weight-gradient shape):
//! * general case: im2col into `col` [Cg·kh·kw, Ho·Wo], then one GEMM per group
//!   `y_g = w_g · col` ([Co/g, Cg·kh·kw]·[Cg·kh·kw, Ho·Wo]);
//! * 1×1, stride 1, no padding: the image already *is* `col`, so it is a plain GEMM, no copy;
//! * depthwise (groups = Ci = Co): direct loops, one row-wise multiply-add per tap — a GEMM with
//!   one output row per group would waste the kernel.
//!
//! Backward rebuilds `col`: dW_gᵀ += col_g · dY_gᵀ (computed transposed so both GEMM operands are
//! row-major; see `bwd_image`), dcol = W_gᵀ · dY_g then col2im (the adjoint of im2col) into dX.
//! Per-chunk dW partials are summed in chunk order, so results are bitwise reproducible for a
//! given thread count.
//!
//! f32 on a CPU with AVX-512F takes faster paths where they apply (the choice is `Geom::panel`
//! and `Geom::direct`): conv2d_panel.rs (register tiles over gathered 32-pixel panels; stride-1
//! dX as a forward of dY) and, for 3×3 stride-1 convolutions on maps at least 16 wide,
//! conv2d_direct.rs (no gather; its dW is the same for any thread count).
//!
//! Not here: transposed convolution, channel multipliers other than 1 on the direct depthwise
//! path (they take the grouped-GEMM path), NHWC.

use crate::conv2d_direct as direct;
use crate::conv2d_panel::{self as panel, PanelGeom, MR, NR};
use crate::gemm::{gemm, transpose, Trans};
use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;
use std::cell::Cell;

/// Convolution hyper-parameters (kernel extent, stride, zero padding, dilation, groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Zero padding added above and below.
    pub ph: usize,
    /// Zero padding added left and right.
    pub pw: usize,
    /// Vertical dilation.
    pub dh: usize,
    /// Horizontal dilation.
    pub dw: usize,
    /// Groups: Ci and Co must both be divisible by it. 1 = dense; Ci = Co = groups = depthwise.
    pub groups: usize,
}

impl Conv2d {
    /// A square `k`×`k` dense convolution with the same stride, padding and dilation both ways.
    pub const fn square(k: usize, stride: usize, pad: usize, dilation: usize) -> Self {
        Conv2d {
            kh: k,
            kw: k,
            sh: stride,
            sw: stride,
            ph: pad,
            pw: pad,
            dh: dilation,
            dw: dilation,
            groups: 1,
        }
    }

    /// The same convolution with `groups` groups.
    pub const fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Output (Ho, Wo) for an H×W input: `(H + 2p − d·(k−1) − 1)/s + 1`.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), KernelError> {
        if self.kh == 0
            || self.kw == 0
            || self.sh == 0
            || self.sw == 0
            || self.dh == 0
            || self.dw == 0
        {
            return Err(shape_err("kernel, stride and dilation must be at least 1"));
        }
        let span_h = self.dh * (self.kh - 1) + 1;
        let span_w = self.dw * (self.kw - 1) + 1;
        if h + 2 * self.ph < span_h || w + 2 * self.pw < span_w {
            return Err(shape_err(format!(
                "input {h}×{w} with padding ({}, {}) is smaller than the dilated kernel {span_h}×{span_w}",
                self.ph, self.pw
            )));
        }
        Ok((
            (h + 2 * self.ph - span_h) / self.sh + 1,
            (w + 2 * self.pw - span_w) / self.sw + 1,
        ))
    }

    /// Output shape for input `x` and `co` output channels.
    pub fn out_shape(&self, x: Nchw, co: usize) -> Result<Nchw, KernelError> {
        let (ho, wo) = self.out_hw(x.h, x.w)?;
        Ok(Nchw::new(x.n, co, ho, wo))
    }

    /// Weight length: Co · (Ci/groups) · kh · kw.
    pub fn weight_len(&self, ci: usize, co: usize) -> usize {
        co * (ci / self.groups.max(1)) * self.kh * self.kw
    }

    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
}

fn shape_err(reason: impl Into<String>) -> KernelError {
    KernelError::Shape {
        kernel: "conv2d",
        reason: reason.into(),
    }
}

/// Everything derived from (input shape, Co, params) that the per-image loops need.
#[derive(Debug, Clone, Copy)]
struct Geom {
    x: Nchw,
    y: Nchw,
    p: Conv2d,
    /// Input / output channels per group.
    cig: usize,
    cog: usize,
    /// Rows of `col` per group: Cg·kh·kw.
    kg: usize,
    /// Output pixels per image: Ho·Wo.
    pix: usize,
    depthwise: bool,
    pointwise: bool,
    /// f32 calls take the AVX-512 panel path: the CPU has AVX-512F; not depthwise; not a plain
    /// 1×1 (already a bare GEMM on the input as stored, where the crate is 10–30 % faster than
    /// the tile); at most 64 output channels per group, where the `gemm` crate's packing and
    /// per-call cost dominate a product with few rows (`cargo bench --bench conv2d`: 32→32 at
    /// 64×64 5 % faster, 64→64 and 128→128 even, a 1×1 64→128 12 % slower on the panel path).
    /// `FLOWSEG_CONV_PANEL=0` or [`force_panel_path`] chooses im2col + `gemm` instead.
    panel: bool,
    /// The forward on the direct kernels of conv2d_direct.rs (taken where `panel` is): 3×3,
    /// stride 1, dilation 1 (any padding), at least 16 output columns — register tiles read the
    /// input rows in place instead of gathering panels (U-Net at 64×64, batch 8, 2 threads:
    /// forwards −33 %, docs/BENCHMARKS.md). The stride-1 dX, a forward of dY, takes them when
    /// its own geometry qualifies (the same one for a 3×3 padded ≤ 2), at any channel count
    /// (dX already took the panel path at any count). Narrower maps keep the panels, which pack
    /// several output rows per 32-pixel panel where a 16-lane row vector would run half empty
    /// (a row-major 16-pixel variant only matched `gemm` at 8×8). `FLOWSEG_CONV_DIRECT=0` or
    /// [`force_direct_path`] keeps the panel path's gathers (and dW on `gemm`).
    direct: bool,
    /// dW on conv2d_direct.rs: 3×3, stride 1, dilation 1, at any width and any number of output
    /// channels (its vectors run over output channels, so narrow maps fill them): no `col`, no
    /// `gemm`, the same bits for any thread count (U-Net dW −49 %, its 8×8 128-channel layers
    /// −45 %). Off with `direct`'s switches or the panel path's.
    direct_dw: bool,
    /// The forward (and the stride-1 dX through `dx_as_forward`) on the AVX2 twin of the direct
    /// 3×3 tile (conv2d_direct.rs), where the CPU has AVX2 + FMA but not AVX-512F: the same
    /// geometries as `direct`, taken where the AVX-512 path would take them
    /// (`avx2_forward`), the same bits (`direct_dw` takes the AVX2 twin of its tile there too). Without them such a CPU ran every convolution on im2col +
    /// `gemm` (the U-Net step of the benchmark regime: ~30 % slower, docs/BENCHMARKS.md). The
    /// panel path has no AVX2 twin: other geometries still take `gemm` there.
    direct_avx2: bool,
}

/// The widest output-channel group the panel path (and, without AVX-512F, the direct forward's
/// AVX2 twin) takes; wider ones run on `gemm`.
const PANEL_MAX_COG: usize = 64;
/// The widest output-channel group the direct weight gradient's AVX2 twin takes.
const DW_AVX2_MAX_COG: usize = 128;

thread_local! {
    static PANEL_OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
    static DIRECT_OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// On the calling thread, forces the direct 3×3 kernels on (`Some(true)`, wherever they apply
/// and the panel path is taken) or off (`Some(false)`: panel gathers, dW on `gemm`); `None` the
/// default (on unless `FLOWSEG_CONV_DIRECT=0`). Like [`force_panel_path`], for benchmarks and
/// tests.
#[doc(hidden)]
pub fn force_direct_path(choice: Option<bool>) {
    DIRECT_OVERRIDE.with(|c| c.set(choice));
}

/// On the calling thread, forces conv2d's f32 path: `Some(false)` im2col + `gemm`,
/// `Some(true)` the AVX-512 panel path wherever it applies (never on a CPU without AVX-512F),
/// `None` the default choice. For benchmarks and tests that compare the two paths in one process;
/// the choice is made when a call starts, so worker threads need no setting of their own.
#[doc(hidden)]
pub fn force_panel_path(choice: Option<bool>) {
    PANEL_OVERRIDE.with(|c| c.set(choice));
}

impl Geom {
    fn new(x: Nchw, co: usize, p: &Conv2d) -> Result<Self, KernelError> {
        let g = p.groups;
        if g == 0 || !x.c.is_multiple_of(g) || !co.is_multiple_of(g) {
            return Err(shape_err(format!(
                "groups = {g} must divide both Ci = {} and Co = {co}",
                x.c
            )));
        }
        let y = p.out_shape(x, co)?;
        let cig = x.c / g;
        let (depthwise, pointwise) = (g == x.c && g == co && g > 1, p.is_pointwise());
        let allowed = |cell: &'static std::thread::LocalKey<Cell<Option<bool>>>, var: &str| {
            cell.with(Cell::get)
                .unwrap_or_else(|| std::env::var_os(var).is_none_or(|v| v != "0"))
        };
        let mut geom = Geom {
            x,
            y,
            p: *p,
            cig,
            cog: co / g,
            kg: cig * p.kh * p.kw,
            pix: y.plane(),
            depthwise,
            pointwise,
            panel: !depthwise
                && !pointwise
                && co / g <= PANEL_MAX_COG
                && panel::available()
                && allowed(&PANEL_OVERRIDE, "FLOWSEG_CONV_PANEL"),
            direct: false,
            direct_dw: false,
            direct_avx2: false,
        };
        let on = !depthwise
            && !pointwise
            && allowed(&PANEL_OVERRIDE, "FLOWSEG_CONV_PANEL")
            && allowed(&DIRECT_OVERRIDE, "FLOWSEG_CONV_DIRECT");
        geom.direct = on && direct::applies(&geom.panel());
        // Without AVX-512F the direct tiles' AVX2 twins take the layers the AVX-512 path takes
        // (the same set, so the same bits on either CPU) where they beat `gemm` there: the
        // forward and dX up to 64 output channels, as the panel gate; dW up to 128 (at 256 and
        // 512 channels its AVX2 tile was 5–20 % slower than `gemm`, docs/BENCHMARKS.md).
        let avx512 = panel::available();
        geom.direct_dw =
            on && direct::applies_dw(&geom.panel()) && (avx512 || geom.cog <= DW_AVX2_MAX_COG);
        geom.direct_avx2 = on && direct::applies_avx2(&geom.panel());
        Ok(geom)
    }

    /// The per-group geometry the AVX-512 panel path works on.
    fn panel(&self) -> PanelGeom {
        let p = self.p;
        PanelGeom {
            cig: self.cig,
            h: self.x.h,
            w: self.x.w,
            wo: self.y.w,
            kh: p.kh,
            kw: p.kw,
            sh: p.sh,
            sw: p.sw,
            ph: p.ph,
            pw: p.pw,
            dh: p.dh,
            dw: p.dw,
        }
    }

    /// Whether this call takes the panel path (decided in [`Geom::new`], on the calling thread).
    fn use_panel(&self) -> bool {
        self.panel
    }

    /// Whether, without AVX-512F, this call's forward (or its dX as a forward of dY) takes the
    /// direct tile's AVX2 twin: the layers the panel gate would send to the direct path.
    fn avx2_forward(&self) -> bool {
        self.direct_avx2 && self.cog <= PANEL_MAX_COG
    }

    fn col_len(&self) -> usize {
        if self.depthwise || self.pointwise {
            0
        } else {
            self.kg * self.pix
        }
    }

    /// For kernel column `kj`: the range of output columns whose input column lies inside the
    /// image, and the input-column offset `ix = ox·sw + off`.
    fn valid_ox(&self, kj: usize) -> (usize, usize, isize) {
        let off = (kj * self.p.dw) as isize - self.p.pw as isize;
        valid_range(off, self.p.sw, self.x.w, self.y.w)
    }

    /// Input row for output row `oy` and kernel row `ki`, if inside the image.
    fn iy(&self, oy: usize, ki: usize) -> Option<usize> {
        let iy = (oy * self.p.sh + ki * self.p.dh) as isize - self.p.ph as isize;
        (iy >= 0 && (iy as usize) < self.x.h).then_some(iy as usize)
    }
}

/// Output indices o in [lo, hi) with `o·s + off` in [0, n), clipped to [0, out).
fn valid_range(off: isize, s: usize, n: usize, out: usize) -> (usize, usize, isize) {
    let s_i = s as isize;
    let lo = if off >= 0 {
        0
    } else {
        ((-off) + s_i - 1) / s_i
    };
    let last = n as isize - 1 - off;
    let hi = if last < 0 {
        0
    } else {
        (last / s_i + 1).min(out as isize)
    };
    let lo = (lo as usize).min(out);
    (lo, (hi.max(0) as usize).max(lo), off)
}

/// A convolution whose kernel has a border of taps that read only zero padding, as the same
/// convolution over the taps inside the border: DeepLab's ASPP at dilation 12 and 18 on an 8×8
/// map sees the map through its centre tap alone, so its 3×3 is a 1×1 with no padding, and
/// computing the eight dead taps spent 8/9 of the layer on products with zeros. Dead taps add
/// exact zeros to y and dX and have a zero dW, so the trimmed convolution is the same function
/// (its sums may run in another order: not the same bits as the untrimmed paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trimmed {
    /// The convolution over the live taps: kernel and padding shrunk, the rest as given.
    p: Conv2d,
    /// The live kernel rows and columns of the original kernel: `k0..k1`.
    rows: (usize, usize),
    cols: (usize, usize),
}

/// The live taps' convolution, where some border rows or columns of the kernel are dead (no
/// output pixel reads the image through them) and they cut the kernel symmetrically, so the
/// padding stays symmetric (what [`Conv2d`] can express); `None` otherwise, or when every tap
/// is dead, or when `FLOWSEG_CONV_TRIM=0`. Only dilated axes are trimmed: with dilation 1 a dead
/// border needs a map no wider than the padding (a 3×3 on a 1-pixel row), a layer too small to
/// matter, and leaving those alone keeps the direct 3×3 tiles (dilation 1) on every shape they
/// take, with their bits.
fn trim_dead_taps(xs: Nchw, p: &Conv2d) -> Option<Trimmed> {
    let (ho, wo) = p.out_hw(xs.h, xs.w).ok()?;
    // Live range of one kernel axis: every tap k with an output o for which o·s + k·d − pad is
    // inside [0, n).
    let live = |k: usize, s: usize, pad: usize, d: usize, n: usize, out: usize| {
        if d == 1 {
            return Some((0, k));
        }
        let alive = |t: usize| {
            let (lo, hi, _) = valid_range((t * d) as isize - pad as isize, s, n, out);
            lo < hi
        };
        let k0 = (0..k).find(|&t| alive(t))?;
        let k1 = (0..k).rev().find(|&t| alive(t))? + 1;
        let symmetric = k0 == k - k1 && pad >= k0 * d && (k0..k1).all(alive);
        symmetric.then_some((k0, k1))
    };
    let rows = live(p.kh, p.sh, p.ph, p.dh, xs.h, ho)?;
    let cols = live(p.kw, p.sw, p.pw, p.dw, xs.w, wo)?;
    if rows == (0, p.kh) && cols == (0, p.kw) {
        return None;
    }
    if std::env::var_os("FLOWSEG_CONV_TRIM").is_some_and(|v| v == "0") {
        return None;
    }
    let q = Conv2d {
        kh: rows.1 - rows.0,
        kw: cols.1 - cols.0,
        ph: p.ph - rows.0 * p.dh,
        pw: p.pw - cols.0 * p.dw,
        ..*p
    };
    (q.out_hw(xs.h, xs.w).ok()? == (ho, wo)).then_some(Trimmed { p: q, rows, cols })
}

impl Trimmed {
    /// The live taps of `w` [Co, Cg, kh, kw] as [Co, Cg, kh', kw'].
    fn weights<T: Real>(&self, w: &[T], kh: usize, kw: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(w.len() / (kh * kw) * self.p.kh * self.p.kw);
        for filter in w.chunks_exact(kh * kw) {
            for ki in self.rows.0..self.rows.1 {
                out.extend_from_slice(&filter[ki * kw + self.cols.0..ki * kw + self.cols.1]);
            }
        }
        out
    }

    /// Scatters the live taps' gradient `dw_live` [Co, Cg, kh', kw'] into `dw` [Co, Cg, kh, kw],
    /// zero at the dead taps.
    fn scatter<T: Real>(&self, dw_live: &[T], dw: &mut [T], kh: usize, kw: usize) {
        let live = self.p.kh * self.p.kw;
        for (filter, part) in dw.chunks_exact_mut(kh * kw).zip(dw_live.chunks_exact(live)) {
            filter.fill(T::zero());
            for (r, ki) in (self.rows.0..self.rows.1).enumerate() {
                let row = &part[r * self.p.kw..(r + 1) * self.p.kw];
                filter[ki * kw + self.cols.0..ki * kw + self.cols.1].copy_from_slice(row);
            }
        }
    }
}

/// Forward convolution.
///
/// * `x`: [N, Ci, H, W] with shape `xs`.
/// * `w`: [Co, Ci/groups, kh, kw].
/// * `bias`: [Co] or `None`.
/// * `y`: [N, Co, Ho, Wo] with (Ho, Wo) = `p.out_hw(H, W)`.
pub fn conv2d_fwd<T: Real>(
    x: &[T],
    xs: Nchw,
    w: &[T],
    bias: Option<&[T]>,
    co: usize,
    p: &Conv2d,
    y: &mut [T],
) -> Result<(), KernelError> {
    let g = Geom::new(xs, co, p)?;
    check_len("conv2d_fwd", "x", x, xs.len())?;
    check_len("conv2d_fwd", "w", w, p.weight_len(xs.c, co))?;
    if let Some(b) = bias {
        check_len("conv2d_fwd", "bias", b, co)?;
    }
    check_len("conv2d_fwd", "y", y, g.y.len())?;
    if g.y.is_empty() {
        return Ok(());
    }
    if let Some(t) = trim_dead_taps(xs, p) {
        let live = t.weights(w, p.kh, p.kw);
        return conv2d_fwd(x, xs, &live, bias, co, &t.p, y);
    }
    if g.use_panel() || g.avx2_forward() {
        if let (Some(x), Some(w), Some(y)) = (T::as_f32(x), T::as_f32(w), T::as_f32_mut(y)) {
            return fwd_panel(&g, x, w, bias.and_then(T::as_f32), y);
        }
    }
    let threads = rayon::current_num_threads();
    let col_len = g.col_len();
    if xs.n > 1 && threads > 1 {
        y.par_chunks_mut(g.y.image())
            .zip(x.par_chunks(xs.image()))
            .try_for_each_init(
                || vec![T::zero(); col_len],
                |col, (yn, xn)| fwd_image(&g, xn, w, bias, yn, col, 1),
            )
    } else {
        let mut col = vec![T::zero(); col_len];
        for (yn, xn) in y.chunks_mut(g.y.image()).zip(x.chunks(xs.image())) {
            fwd_image(&g, xn, w, bias, yn, &mut col, threads)?;
        }
        Ok(())
    }
}

/// The forward on the AVX-512 panel path (see conv2d_panel.rs): weights packed once per call,
/// images split over the rayon pool, each output pixel a single FMA chain over k.
fn fwd_panel(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    if g.direct || g.direct_avx2 {
        return fwd_direct(g, x, w, bias, y);
    }
    let pg = g.panel();
    let (kg, pix, cog, cig) = (g.kg, g.pix, g.cog, g.cig);
    let taps = g.p.kh * g.p.kw;
    // Per panel, the taps that read inside the image (the same for every image); per distinct
    // set, the weights of those taps packed per group.
    let (mut segs, mut runs) = (Vec::new(), Vec::new());
    let mut sets: Vec<Vec<usize>> = Vec::new();
    let set_of: Vec<usize> = (0..pix)
        .step_by(NR)
        .map(|p0| {
            let live = panel::live_taps(&pg, p0, NR.min(pix - p0), &mut segs, &mut runs);
            sets.iter().position(|s| *s == live).unwrap_or_else(|| {
                sets.push(live);
                sets.len() - 1
            })
        })
        .collect();
    // Packing is the serial part of the call: one pass per (set, group), sets in parallel.
    let packs: Vec<Vec<Vec<f32>>> = sets
        .par_iter()
        .map(|live| {
            w.chunks_exact(cog * kg)
                .map(|wg| panel::pack_taps(wg, cog, cig, taps, live))
                .collect()
        })
        .collect();
    let xg_len = g.cig * g.x.plane();
    let image = |(yn, xn): (&mut [f32], &[f32]), buf: &mut (Vec<f32>, Vec<_>, Vec<_>)| {
        let (pbuf, segs, runs) = buf;
        for grp in 0..g.p.groups {
            let xg = &xn[grp * xg_len..(grp + 1) * xg_len];
            let yg = &mut yn[grp * cog * pix..(grp + 1) * cog * pix];
            for (pi, p0) in (0..pix).step_by(NR).enumerate() {
                let np = NR.min(pix - p0);
                let live = &sets[set_of[pi]];
                let pack = &packs[set_of[pi]][grp];
                let kp = cig * live.len();
                panel::gather_panel_fast(&pg, xg, p0, np, segs, runs, pbuf, NR, live);
                for r0 in (0..cog).step_by(MR) {
                    let rows = MR.min(cog - r0);
                    let a = &pack[r0 * kp..];
                    let mut init = [0.0; MR];
                    if let Some(bias) = bias {
                        let bg = &bias[grp * cog + r0..grp * cog + r0 + rows];
                        init[..rows].copy_from_slice(bg);
                    }
                    panel::tile(
                        kp,
                        a,
                        pbuf,
                        NR,
                        init,
                        &mut yg[r0 * pix + p0..],
                        pix,
                        rows,
                        np,
                    );
                }
            }
        }
    };
    let new_buf = || (vec![0.0f32; kg * NR], Vec::new(), Vec::new());
    if g.x.n > 1 && rayon::current_num_threads() > 1 {
        y.par_chunks_mut(g.y.image())
            .zip(x.par_chunks(g.x.image()))
            .for_each_init(new_buf, |buf, pair| image(pair, buf));
    } else {
        let mut buf = new_buf();
        for pair in y.chunks_mut(g.y.image()).zip(x.chunks(g.x.image())) {
            image(pair, &mut buf);
        }
    }
    Ok(())
}

/// The forward on the direct 3×3 path (conv2d_direct.rs): weights packed once per call (all
/// nine taps), images split over the rayon pool.
fn fwd_direct(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let pg = g.panel();
    let (cog, cig) = (g.cog, g.cig);
    let all: Vec<usize> = (0..9).collect();
    let packs: Vec<Vec<f32>> = w
        .par_chunks_exact(cog * g.kg)
        .map(|wg| panel::pack_taps(wg, cog, cig, 9, &all))
        .collect();
    let (xg_len, yg_len) = (cig * g.x.plane(), cog * g.pix);
    let image = |(yn, xn): (&mut [f32], &[f32])| {
        for (grp, pack) in packs.iter().enumerate() {
            direct::fwd_image(
                &pg,
                &xn[grp * xg_len..(grp + 1) * xg_len],
                pack,
                cog,
                bias.map(|b| &b[grp * cog..(grp + 1) * cog]),
                &mut yn[grp * yg_len..(grp + 1) * yg_len],
            );
        }
    };
    if g.x.n > 1 && rayon::current_num_threads() > 1 {
        y.par_chunks_mut(g.y.image())
            .zip(x.par_chunks(g.x.image()))
            .for_each(image);
    } else {
        y.chunks_mut(g.y.image())
            .zip(x.chunks(g.x.image()))
            .for_each(image);
    }
    Ok(())
}

/// The input gradient of a stride-1 convolution as a forward convolution of `dy` (the panel
/// path, no col2im scatter): dX[ci, iy, ix] = Σ W[co, ci, ki, kj] · dY[co, iy + ph − ki·dh,
/// ix + pw − kj·dw], i.e. the same kernel flipped and transposed per group, padding
/// dh·(kh−1) − ph. `None` when this convolution has no such form (strided, or padded past the
/// dilated kernel) — the caller then takes im2col + `gemm`.
fn dx_as_forward(
    g: &Geom,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Option<Result<(), KernelError>> {
    let p = g.p;
    let (span_h, span_w) = (p.dh * (p.kh - 1), p.dw * (p.kw - 1));
    if p.sh != 1 || p.sw != 1 || p.ph > span_h || p.pw > span_w {
        return None;
    }
    let flipped = Conv2d {
        ph: span_h - p.ph,
        pw: span_w - p.pw,
        ..p
    };
    let gt = match Geom::new(g.y, g.x.c, &flipped) {
        Ok(gt) if gt.y == g.x => gt,
        Ok(_) => return None,
        Err(e) => return Some(Err(e)),
    };
    // Without AVX-512F only the direct tile's AVX2 twin can run the forward of dY.
    if !panel::available() && !gt.direct_avx2 {
        return None;
    }
    // W [G][Cog, Cig, kh, kw] → W' [G][Cig, Cog, kh, kw] with both taps reversed.
    let (kk, cig, cog) = (p.kh * p.kw, g.cig, g.cog);
    let mut wt = vec![0.0f32; w.len()];
    for grp in 0..p.groups {
        let base = grp * cog * cig * kk;
        for co in 0..cog {
            for ci in 0..cig {
                for t in 0..kk {
                    wt[base + (ci * cog + co) * kk + (kk - 1 - t)] =
                        w[base + (co * cig + ci) * kk + t];
                }
            }
        }
    }
    Some(fwd_panel(&gt, dy, &wt, None, dx))
}

/// One image: `xn` [Ci, H, W] → `yn` [Co, Ho, Wo].
fn fwd_image<T: Real>(
    g: &Geom,
    xn: &[T],
    w: &[T],
    bias: Option<&[T]>,
    yn: &mut [T],
    col: &mut [T],
    threads: usize,
) -> Result<(), KernelError> {
    if g.depthwise {
        depthwise_fwd_image(g, xn, w, bias, yn);
        return Ok(());
    }
    let xg_len = g.cig * g.x.plane();
    for grp in 0..g.p.groups {
        let xg = &xn[grp * xg_len..(grp + 1) * xg_len];
        let wg = &w[grp * g.cog * g.kg..(grp + 1) * g.cog * g.kg];
        let yg = &mut yn[grp * g.cog * g.pix..(grp + 1) * g.cog * g.pix];
        let colg: &[T] = if g.pointwise {
            xg
        } else {
            im2col(g, xg, col);
            col
        };
        gemm(
            g.cog,
            g.pix,
            g.kg,
            wg,
            Trans::No,
            colg,
            Trans::No,
            yg,
            false,
            threads,
        )?;
    }
    if let Some(b) = bias {
        for (plane, &bv) in yn.chunks_mut(g.pix).zip(b) {
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
    Ok(())
}

/// `xg` [Cg, H, W] → `col` [Cg·kh·kw, Ho·Wo]; out-of-image taps are zero.
fn im2col<T: Real>(g: &Geom, xg: &[T], col: &mut [T]) {
    let (h, w, wo, p) = (g.x.h, g.x.w, g.y.w, g.p);
    let mut rows = col.chunks_exact_mut(g.pix);
    for c in 0..g.cig {
        let xc = &xg[c * h * w..(c + 1) * h * w];
        for ki in 0..p.kh {
            for kj in 0..p.kw {
                let Some(row) = rows.next() else { return };
                let (lo, hi, off) = g.valid_ox(kj);
                for (oy, dst) in row.chunks_exact_mut(wo).enumerate() {
                    let Some(iy) = g.iy(oy, ki) else {
                        dst.fill(T::zero());
                        continue;
                    };
                    dst[..lo].fill(T::zero());
                    dst[hi..].fill(T::zero());
                    let src = &xc[iy * w..(iy + 1) * w];
                    // `hi > lo` first: with no valid column (a dilation wider than the map) the
                    // start offset below would be negative.
                    if p.sw == 1 && hi > lo {
                        let s0 = (lo as isize + off) as usize;
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for ox in lo..hi {
                            dst[ox] = src[(ox as isize * p.sw as isize + off) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] through the panel path's vector gather when this call takes it (same values).
fn im2col_fast<T: Real>(g: &Geom, xg: &[T], col: &mut [T]) {
    if g.use_panel() {
        if let (Some(xg), Some(col)) = (T::as_f32(xg), T::as_f32_mut(col)) {
            let pg = g.panel();
            let (mut segs, mut runs) = (Vec::new(), Vec::new());
            let all: Vec<usize> = (0..g.p.kh * g.p.kw).collect();
            // One "panel" as wide as the image: rows are written front to back (panels of 32
            // columns would hit one L1 set per row when Ho·Wo is a multiple of 1024).
            panel::gather_panel_fast(&pg, xg, 0, g.pix, &mut segs, &mut runs, col, g.pix, &all);
            return;
        }
    }
    im2col(g, xg, col);
}

/// Adjoint of [`im2col`]: `dxg` [Cg, H, W] = Σ of `dcol` [Cg·kh·kw, Ho·Wo] over the taps that
/// read each input pixel. Overwrites `dxg`.
fn col2im<T: Real>(g: &Geom, dcol: &[T], dxg: &mut [T]) {
    let (h, w, wo, p) = (g.x.h, g.x.w, g.y.w, g.p);
    dxg.fill(T::zero());
    let mut rows = dcol.chunks_exact(g.pix);
    for c in 0..g.cig {
        let dxc = &mut dxg[c * h * w..(c + 1) * h * w];
        for ki in 0..p.kh {
            for kj in 0..p.kw {
                let Some(row) = rows.next() else { return };
                let (lo, hi, off) = g.valid_ox(kj);
                for (oy, src) in row.chunks_exact(wo).enumerate() {
                    let Some(iy) = g.iy(oy, ki) else { continue };
                    let dst = &mut dxc[iy * w..(iy + 1) * w];
                    if p.sw == 1 && hi > lo {
                        let d0 = (lo as isize + off) as usize;
                        for (d, &s) in dst[d0..d0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += s;
                        }
                    } else {
                        for ox in lo..hi {
                            dst[(ox as isize * p.sw as isize + off) as usize] += src[ox];
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise forward, one image: `y[c] = Σ_taps w[c, ki, kj] · shifted x[c]` (+ bias).
fn depthwise_fwd_image<T: Real>(g: &Geom, xn: &[T], w: &[T], bias: Option<&[T]>, yn: &mut [T]) {
    let (h, wd, wo, p) = (g.x.h, g.x.w, g.y.w, g.p);
    let kk = p.kh * p.kw;
    for c in 0..g.x.c {
        let xc = &xn[c * h * wd..(c + 1) * h * wd];
        let yc = &mut yn[c * g.pix..(c + 1) * g.pix];
        yc.fill(bias.map_or(T::zero(), |b| b[c]));
        for ki in 0..p.kh {
            for kj in 0..p.kw {
                let wv = w[c * kk + ki * p.kw + kj];
                let (lo, hi, off) = g.valid_ox(kj);
                for (oy, dst) in yc.chunks_exact_mut(wo).enumerate() {
                    let Some(iy) = g.iy(oy, ki) else { continue };
                    let src = &xc[iy * wd..(iy + 1) * wd];
                    for ox in lo..hi {
                        dst[ox] += wv * src[(ox as isize * p.sw as isize + off) as usize];
                    }
                }
            }
        }
    }
}

/// Depthwise backward, one image: `dxn` is overwritten, `dw` [C, kh, kw] accumulated.
fn depthwise_bwd_image<T: Real>(
    g: &Geom,
    xn: &[T],
    w: &[T],
    dyn_: &[T],
    mut dxn: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
) {
    let (h, wd, wo, p) = (g.x.h, g.x.w, g.y.w, g.p);
    let kk = p.kh * p.kw;
    if let Some(dx) = dxn.as_deref_mut() {
        dx.fill(T::zero());
    }
    for c in 0..g.x.c {
        let xc = &xn[c * h * wd..(c + 1) * h * wd];
        let dyc = &dyn_[c * g.pix..(c + 1) * g.pix];
        for ki in 0..p.kh {
            for kj in 0..p.kw {
                let tap = c * kk + ki * p.kw + kj;
                let wv = w[tap];
                let (lo, hi, off) = g.valid_ox(kj);
                let mut dw_acc = T::zero();
                for (oy, dyr) in dyc.chunks_exact(wo).enumerate() {
                    let Some(iy) = g.iy(oy, ki) else { continue };
                    let row = iy * wd;
                    for ox in lo..hi {
                        let ix = row + (ox as isize * p.sw as isize + off) as usize;
                        dw_acc += dyr[ox] * xc[ix];
                        if let Some(dx) = dxn.as_deref_mut() {
                            dx[c * h * wd + ix] += wv * dyr[ox];
                        }
                    }
                }
                if let Some(dwv) = dw.as_deref_mut() {
                    dwv[tap] += dw_acc;
                }
            }
        }
    }
}

/// Backward convolution: any of `dx`, `dw`, `db` may be `None` to skip it (a frozen layer needs
/// only `dx`; the first layer needs no `dx`).
///
/// * `x`: [N, Ci, H, W] (the forward input), shape `xs`.
/// * `w`: [Co, Ci/groups, kh, kw].
/// * `dy`: [N, Co, Ho, Wo].
/// * `dx`: [N, Ci, H, W], overwritten.
/// * `dw`: [Co, Ci/groups, kh, kw], overwritten.
/// * `db`: [Co], overwritten.
pub fn conv2d_bwd<T: Real>(
    x: &[T],
    xs: Nchw,
    w: &[T],
    co: usize,
    p: &Conv2d,
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: Option<&mut [T]>,
    db: Option<&mut [T]>,
) -> Result<(), KernelError> {
    let g = Geom::new(xs, co, p)?;
    check_len("conv2d_bwd", "x", x, xs.len())?;
    check_len("conv2d_bwd", "w", w, p.weight_len(xs.c, co))?;
    check_len("conv2d_bwd", "dy", dy, g.y.len())?;
    if let Some(d) = dx.as_deref() {
        check_len("conv2d_bwd", "dx", d, xs.len())?;
    }
    if let Some(d) = dw.as_deref() {
        check_len("conv2d_bwd", "dw", d, w.len())?;
    }
    if let Some(t) = trim_dead_taps(xs, p).filter(|_| !g.y.is_empty()) {
        let live = t.weights(w, p.kh, p.kw);
        let mut dw_live = dw.as_ref().map(|_| vec![T::zero(); live.len()]);
        conv2d_bwd(x, xs, &live, co, &t.p, dy, dx, dw_live.as_deref_mut(), db)?;
        if let (Some(d), Some(part)) = (dw, dw_live) {
            t.scatter(&part, d, p.kh, p.kw);
        }
        return Ok(());
    }
    if let Some(d) = db {
        check_len("conv2d_bwd", "db", d, co)?;
        d.fill(T::zero());
        for dyn_ in dy.chunks(g.y.image().max(1)) {
            for (acc, plane) in d.iter_mut().zip(dyn_.chunks(g.pix.max(1))) {
                *acc += plane.iter().copied().sum::<T>();
            }
        }
    }
    // Stride-1 input gradients on the panel path are a forward convolution of dY.
    let dx = match dx {
        Some(d) if (g.use_panel() || g.avx2_forward()) && !g.y.is_empty() => {
            let as_f32 = (T::as_f32(w), T::as_f32(dy));
            match as_f32 {
                (Some(w32), Some(dy32)) => {
                    match T::as_f32_mut(&mut *d).and_then(|d32| dx_as_forward(&g, w32, dy32, d32)) {
                        Some(done) => {
                            done?;
                            None
                        }
                        None => Some(d),
                    }
                }
                _ => Some(d),
            }
        }
        other => other,
    };
    // dW on the direct path: one pass over the batch per group, no `col`, no partials.
    let dw = match dw {
        Some(d) if g.direct_dw && !g.y.is_empty() => {
            match (T::as_f32(x), T::as_f32(dy), T::as_f32_mut(&mut *d)) {
                (Some(x32), Some(dy32), Some(dw32)) => {
                    let pg = g.panel();
                    let (xg_len, yg_len) = (g.cig * g.x.plane(), g.cog * g.pix);
                    for (grp, dwg) in dw32.chunks_exact_mut(g.cog * g.kg).enumerate() {
                        direct::dw_batch(
                            &pg,
                            xs.n,
                            x32,
                            xs.image(),
                            grp * xg_len,
                            dy32,
                            g.y.image(),
                            grp * yg_len,
                            g.cog,
                            dwg,
                        );
                    }
                    None
                }
                _ => Some(d),
            }
        }
        other => other,
    };
    let want_dw = dw.is_some();
    let dx_wanted = dx.is_some();
    if !dx_wanted && !want_dw {
        return Ok(());
    }
    let n = xs.n;
    let threads = rayon::current_num_threads();
    let chunks = if n > 1 && threads > 1 {
        threads.min(n)
    } else {
        1
    };
    let per = n.div_ceil(chunks.max(1)).max(1);
    let nchunks = n.div_ceil(per);
    let dx_parts: Vec<Option<&mut [T]>> = match dx {
        Some(d) => d.chunks_mut(per * xs.image().max(1)).map(Some).collect(),
        None => (0..nchunks).map(|_| None).collect(),
    };
    let gemm_threads = if nchunks > 1 { 1 } else { threads };
    let run_chunk = |t: usize, mut dxc: Option<&mut [T]>| -> Result<Vec<T>, KernelError> {
        let mut dw_local = vec![T::zero(); if want_dw { w.len() } else { 0 }];
        let mut col = vec![T::zero(); g.col_len()];
        let mut dy_t = vec![T::zero(); if want_dw { g.cog * g.pix } else { 0 }];
        let mut dcol = vec![T::zero(); if dx_wanted { g.col_len() } else { 0 }];
        for i in 0..per {
            let img = t * per + i;
            if img >= n {
                break;
            }
            let xn = &x[img * xs.image()..(img + 1) * xs.image()];
            let dyn_ = &dy[img * g.y.image()..(img + 1) * g.y.image()];
            let dxn = dxc
                .as_deref_mut()
                .map(|d| &mut d[i * xs.image()..(i + 1) * xs.image()]);
            let dwl = want_dw.then_some(dw_local.as_mut_slice());
            bwd_image(
                &g,
                xn,
                w,
                dyn_,
                dxn,
                dwl,
                &mut col,
                &mut dy_t,
                &mut dcol,
                gemm_threads,
            )?;
        }
        if want_dw && !g.depthwise {
            // [groups][Kg, Cog] → [groups][Cog, Kg], the weight layout.
            let mut dw = vec![T::zero(); dw_local.len()];
            let wg_len = g.cog * g.kg;
            for (src, dst) in dw_local.chunks(wg_len).zip(dw.chunks_mut(wg_len)) {
                transpose(src, g.kg, g.cog, dst)?;
            }
            return Ok(dw);
        }
        Ok(dw_local)
    };
    let partials: Vec<Vec<T>> = if nchunks > 1 {
        dx_parts
            .into_par_iter()
            .enumerate()
            .map(|(t, dxc)| run_chunk(t, dxc))
            .collect::<Result<_, _>>()?
    } else {
        dx_parts
            .into_iter()
            .enumerate()
            .map(|(t, dxc)| run_chunk(t, dxc))
            .collect::<Result<_, _>>()?
    };
    if let Some(dw) = dw {
        dw.fill(T::zero());
        for part in &partials {
            for (a, &b) in dw.iter_mut().zip(part) {
                *a += b;
            }
        }
    }
    Ok(())
}

/// One image of the backward: `dxn` [Ci, H, W] overwritten; `dw_t` accumulates the weight
/// gradient *transposed* per group, [groups][Kg, Cog] (except on the depthwise path, which
/// accumulates [C, kh, kw] directly); the caller transposes once per chunk.
fn bwd_image<T: Real>(
    g: &Geom,
    xn: &[T],
    w: &[T],
    dyn_: &[T],
    mut dxn: Option<&mut [T]>,
    mut dw_t: Option<&mut [T]>,
    col: &mut [T],
    dy_t: &mut [T],
    dcol: &mut [T],
    threads: usize,
) -> Result<(), KernelError> {
    if g.depthwise {
        // The direct path accumulates dW in its natural [C, kh, kw] layout.
        depthwise_bwd_image(g, xn, w, dyn_, dxn, dw_t);
        return Ok(());
    }
    let xg_len = g.cig * g.x.plane();
    let wg_len = g.cog * g.kg;
    for grp in 0..g.p.groups {
        let xg = &xn[grp * xg_len..(grp + 1) * xg_len];
        let wg = &w[grp * wg_len..(grp + 1) * wg_len];
        let dyg = &dyn_[grp * g.cog * g.pix..(grp + 1) * g.cog * g.pix];
        if let Some(dw_t) = dw_t.as_deref_mut() {
            let colg: &[T] = if g.pointwise {
                xg
            } else {
                im2col_fast(g, xg, col);
                col
            };
            // dW_gᵀ [Kg, Cog] += col_g [Kg, P] · dY_gᵀ [P, Cog]. Both operands row-major: the
            // `gemm` crate runs 3–5× slower when it reads a transpose through strides, and
            // transposing dY (Cog·P) is far cheaper than transposing col (Kg·P).
            transpose(dyg, g.cog, g.pix, dy_t)?;
            let dwg_t = &mut dw_t[grp * wg_len..(grp + 1) * wg_len];
            gemm(
                g.kg,
                g.cog,
                g.pix,
                colg,
                Trans::No,
                dy_t,
                Trans::No,
                dwg_t,
                true,
                threads,
            )?;
        }
        if let Some(dx) = dxn.as_deref_mut() {
            let dxg = &mut dx[grp * xg_len..(grp + 1) * xg_len];
            if g.pointwise {
                // dX_g [Cig, P] = W_gᵀ [Cig, Cog] · dY_g [Cog, P]
                gemm(
                    g.cig,
                    g.pix,
                    g.cog,
                    wg,
                    Trans::Yes,
                    dyg,
                    Trans::No,
                    dxg,
                    false,
                    threads,
                )?;
            } else {
                // dcol [Kg, P] = W_gᵀ [Kg, Cog] · dY_g [Cog, P], then scatter back.
                gemm(
                    g.kg,
                    g.pix,
                    g.cog,
                    wg,
                    Trans::Yes,
                    dyg,
                    Trans::No,
                    dcol,
                    false,
                    threads,
                )?;
                col2im(g, dcol, dxg);
            }
        }
    }
    Ok(())
}

/// Direct 7-loop convolution, the reference the fast paths are tested against.
#[cfg(test)]
pub(crate) fn conv2d_naive(
    x: &[f64],
    xs: Nchw,
    w: &[f64],
    bias: Option<&[f64]>,
    co: usize,
    p: &Conv2d,
) -> Vec<f64> {
    let (ho, wo) = p.out_hw(xs.h, xs.w).unwrap();
    let (cig, cog) = (xs.c / p.groups, co / p.groups);
    let mut y = vec![0.0; xs.n * co * ho * wo];
    for n in 0..xs.n {
        for o in 0..co {
            let grp = o / cog;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias.map_or(0.0, |b| b[o]);
                    for c in 0..cig {
                        let ci = grp * cig + c;
                        for ki in 0..p.kh {
                            for kj in 0..p.kw {
                                let iy = (oy * p.sh + ki * p.dh) as isize - p.ph as isize;
                                let ix = (ox * p.sw + kj * p.dw) as isize - p.pw as isize;
                                if iy < 0 || ix < 0 || iy >= xs.h as isize || ix >= xs.w as isize {
                                    continue;
                                }
                                acc += w[((o * cig + c) * p.kh + ki) * p.kw + kj]
                                    * x[xs.at(n, ci, iy as usize, ix as usize)];
                            }
                        }
                    }
                    y[((n * co + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, rand_vec};

    #[test]
    fn hand_computed_3x3() {
        // x = 1..9 as a 3×3 image, w = all ones 2×2, stride 1, no padding:
        // y[0,0] = 1+2+4+5 = 12, y[0,1] = 2+3+5+6 = 16, y[1,0] = 24, y[1,1] = 28; bias 0.5.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let p = Conv2d {
            kh: 2,
            kw: 2,
            ..Conv2d::square(1, 1, 0, 1)
        };
        let mut y = [0f32; 4];
        conv2d_fwd(
            &x,
            Nchw::new(1, 1, 3, 3),
            &[1.0; 4],
            Some(&[0.5]),
            1,
            &p,
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [12.5, 16.5, 24.5, 28.5]);
        // Padding 1, stride 2, 3×3 kernel of ones: corners sum their 2×2 neighbourhoods.
        // y = [[1+2+4+5, 2+3+5+6], [4+5+7+8, 5+6+8+9]] = [[12, 16], [24, 28]].
        let p = Conv2d::square(3, 2, 1, 1);
        conv2d_fwd(&x, Nchw::new(1, 1, 3, 3), &[1.0; 9], None, 1, &p, &mut y).unwrap();
        assert_eq!(y, [12.0, 16.0, 24.0, 28.0]);
    }

    fn cases() -> Vec<(&'static str, Nchw, usize, Conv2d)> {
        vec![
            (
                "3x3 s1 p1",
                Nchw::new(2, 3, 7, 5),
                4,
                Conv2d::square(3, 1, 1, 1),
            ),
            (
                "3x3 s2 p1 odd input",
                Nchw::new(2, 3, 7, 9),
                2,
                Conv2d::square(3, 2, 1, 1),
            ),
            (
                "3x3 dilation 2 p2",
                Nchw::new(2, 2, 9, 7),
                3,
                Conv2d::square(3, 1, 2, 2),
            ),
            (
                "1x1 pointwise",
                Nchw::new(3, 5, 4, 3),
                6,
                Conv2d::square(1, 1, 0, 1),
            ),
            (
                "1x1 stride 2",
                Nchw::new(2, 3, 5, 5),
                2,
                Conv2d::square(1, 2, 0, 1),
            ),
            (
                "rect 3x2 s(2,1) p(1,0) d(1,2)",
                Nchw::new(2, 2, 8, 7),
                3,
                Conv2d {
                    kh: 3,
                    kw: 2,
                    sh: 2,
                    sw: 1,
                    ph: 1,
                    pw: 0,
                    dh: 1,
                    dw: 2,
                    groups: 1,
                },
            ),
            (
                "depthwise 3x3 s2",
                Nchw::new(2, 4, 7, 6),
                4,
                Conv2d::square(3, 2, 1, 1).with_groups(4),
            ),
            (
                "depthwise dil 2",
                Nchw::new(3, 3, 6, 7),
                3,
                Conv2d::square(3, 1, 2, 2).with_groups(3),
            ),
            (
                "groups 2",
                Nchw::new(2, 4, 5, 6),
                6,
                Conv2d::square(3, 1, 1, 1).with_groups(2),
            ),
            (
                "7x7 s2 p3 stem",
                Nchw::new(2, 3, 11, 10),
                2,
                Conv2d::square(7, 2, 3, 1),
            ),
            // Dilation wider than the map: some tap columns see no pixel at all (ASPP on a
            // tiny feature map).
            (
                "dilation 3 on 2x3",
                Nchw::new(2, 2, 2, 3),
                2,
                Conv2d::square(3, 1, 3, 3),
            ),
            (
                "dilation 5 on 2x2",
                Nchw::new(1, 2, 2, 2),
                3,
                Conv2d::square(3, 1, 5, 5),
            ),
            // Dead tap borders, trimmed (`trim_dead_taps`): ASPP's dilation 12 on 8×8 (the
            // centre tap alone), a 5×5 whose outer ring is dead (a 3×3 remains), stride 2, rows
            // only, and a grouped one.
            (
                "aspp dilation 12 on 8x8",
                Nchw::new(2, 3, 8, 8),
                4,
                Conv2d::square(3, 1, 12, 12),
            ),
            (
                "5x5 dilation 4 on 6x6",
                Nchw::new(1, 2, 6, 6),
                3,
                Conv2d::square(5, 1, 8, 4),
            ),
            (
                "dilation 6 stride 2 on 5x5",
                Nchw::new(2, 2, 5, 5),
                2,
                Conv2d::square(3, 2, 6, 6),
            ),
            (
                "rows dead 3x1 d8 on 4x5",
                Nchw::new(1, 2, 4, 5),
                2,
                Conv2d {
                    kh: 3,
                    kw: 1,
                    sh: 1,
                    sw: 1,
                    ph: 8,
                    pw: 0,
                    dh: 8,
                    dw: 1,
                    groups: 1,
                },
            ),
            (
                "groups 2 dilation 9 on 4x4",
                Nchw::new(1, 4, 4, 4),
                6,
                Conv2d::square(3, 1, 9, 9).with_groups(2),
            ),
        ]
    }

    /// Which kernels lose their dead border, and to what.
    #[test]
    fn dead_tap_borders_are_trimmed_symmetrically() {
        let t = trim_dead_taps(Nchw::new(2, 3, 8, 8), &Conv2d::square(3, 1, 12, 12)).unwrap();
        assert_eq!(
            (t.p, t.rows, t.cols),
            (Conv2d::square(1, 1, 0, 12), (1, 2), (1, 2))
        );
        let t = trim_dead_taps(Nchw::new(1, 2, 6, 6), &Conv2d::square(5, 1, 8, 4)).unwrap();
        assert_eq!(
            (t.p, t.rows, t.cols),
            (Conv2d::square(3, 1, 4, 4), (1, 4), (1, 4))
        );
        // Every tap reads the map somewhere: nothing to trim (the U-Net's 3×3s, ASPP's
        // dilation 6 on 8×8, whose outer taps reach rows 6–7 and 0–1).
        for (xs, p) in [
            (Nchw::new(8, 16, 8, 8), Conv2d::square(3, 1, 1, 1)),
            (Nchw::new(8, 64, 8, 8), Conv2d::square(3, 1, 6, 6)),
            (Nchw::new(1, 1, 1, 1), Conv2d::square(1, 1, 0, 1)),
        ] {
            assert_eq!(trim_dead_taps(xs, &p), None, "{p:?}");
        }
        // A dead border on one side only would need asymmetric padding: left alone. (A 2×1
        // kernel, dilation 2, padding 2, stride 3 on a 1-row map: tap 0 reads row −2, tap 1 row 0.)
        let one_sided = Conv2d {
            kh: 2,
            kw: 1,
            sh: 3,
            sw: 1,
            ph: 2,
            pw: 0,
            dh: 2,
            dw: 1,
            groups: 1,
        };
        assert_eq!(trim_dead_taps(Nchw::new(1, 1, 1, 4), &one_sided), None);
        // Dilation 1 keeps its border (a 3×3 on a 1-row map), for the direct tiles' sake.
        assert_eq!(
            trim_dead_taps(Nchw::new(1, 3, 1, 16), &Conv2d::square(3, 1, 1, 1)),
            None
        );
    }

    #[test]
    fn forward_matches_direct_loops() {
        for (name, xs, co, p) in cases() {
            let x = rand_vec(1, xs.len(), -1.0, 1.0);
            let w = rand_vec(2, p.weight_len(xs.c, co), -1.0, 1.0);
            let b = rand_vec(3, co, -1.0, 1.0);
            let ys = p.out_shape(xs, co).unwrap();
            let mut y = vec![0.0; ys.len()];
            conv2d_fwd(&x, xs, &w, Some(&b), co, &p, &mut y).unwrap();
            assert_close(
                name,
                &y,
                &conv2d_naive(&x, xs, &w, Some(&b), co, &p),
                1e-12,
                1e-12,
            );
            // The f32 instance agrees with the f64 one to f32 precision.
            let (x32, w32, b32) = (
                crate::testing::to_f32(&x),
                crate::testing::to_f32(&w),
                crate::testing::to_f32(&b),
            );
            let mut y32 = vec![0f32; ys.len()];
            conv2d_fwd(&x32, xs, &w32, Some(&b32), co, &p, &mut y32).unwrap();
            let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
            assert_close(name, &y32, &y, 1e-5, 1e-5);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (name, xs, co, p) in cases() {
            let x = rand_vec(4, xs.len(), -1.0, 1.0);
            let w = rand_vec(5, p.weight_len(xs.c, co), -1.0, 1.0);
            let b = rand_vec(6, co, -1.0, 1.0);
            let ys = p.out_shape(xs, co).unwrap();
            gradcheck(
                name,
                &[x, w, b],
                |i| {
                    let mut y = vec![0.0; ys.len()];
                    conv2d_fwd(&i[0], xs, &i[1], Some(&i[2]), co, &p, &mut y).unwrap();
                    y
                },
                |i, dy| {
                    let (mut dx, mut dw, mut db) =
                        (vec![0.0; i[0].len()], vec![0.0; i[1].len()], vec![0.0; co]);
                    conv2d_bwd(
                        &i[0],
                        xs,
                        &i[1],
                        co,
                        &p,
                        dy,
                        Some(&mut dx),
                        Some(&mut dw),
                        Some(&mut db),
                    )
                    .unwrap();
                    vec![dx, dw, db]
                },
            );
        }
    }

    /// The f32 fast paths (AVX-512 panels and direct 3×3 kernels where the CPU has them, else
    /// im2col + `gemm`) against the f64 path on shapes that reach their edges: more than 32
    /// pixels and not a multiple of 32, output rows wider than a panel (split runs) and narrower
    /// (several rows per panel), Co not a multiple of the 8-row tile, K in the hundreds, stride
    /// 2 (permuted gathers), stride 3 (the scalar gather), dilation with padding past the image,
    /// groups, 1×1 with and without stride, a padding larger than the dilated kernel (dX then
    /// takes im2col + col2im); for the direct kernels: Wo exactly 16, a last segment of one
    /// column, Ho of 1, 4 (tiles 2 + 2) and 5 (3 + 2), no padding, padding 2 and 3 (rows and
    /// columns wholly outside), unequal padding, Co of 1, 16, 33 (one, two and a half dY
    /// vectors per dW tile), 64 and 130, one to five input channels per dW task run, one image,
    /// dW at widths under 16.
    #[test]
    fn f32_fast_path_matches_f64_on_panel_edges() {
        // Every f32 path: im2col + `gemm` (what CPUs without AVX-512F run), the panel path with
        // its gathers, and the default (the direct kernels where they apply).
        for (panel, direct) in [(Some(false), None), (None, Some(false)), (None, None)] {
            force_panel_path(panel);
            force_direct_path(direct);
            f32_paths_match_f64();
        }
        force_panel_path(None);
        force_direct_path(None);
    }

    /// The direct 3×3 forward (the AVX-512 tile, or its AVX2 twin on a CPU without AVX-512F)
    /// computes every output as one f32 FMA chain over (c, kj, ki) from the bias, input taps
    /// outside the image read as zeros: bit for bit a scalar `mul_add` chain in that order, so
    /// the two tiles give the same bits. Edges: Wo of 16, 17, 33 and 40 (a half-empty and a
    /// one-column last 8-lane half), Ho of 1, 4 and 5, padding 0, 1 and 2, Co of 3, 8, 13 (a
    /// partial block of rows). On a CPU with neither, says so and checks nothing.
    #[test]
    fn direct_forward_is_one_fma_chain_in_c_kj_ki_order() {
        let cases = [
            (Nchw::new(2, 5, 9, 33), 13, 1),
            (Nchw::new(1, 3, 1, 16), 8, 1),
            (Nchw::new(2, 4, 6, 19), 9, 0),
            (Nchw::new(1, 2, 4, 17), 3, 1),
            (Nchw::new(1, 2, 3, 36), 5, 2),
        ];
        for (xs, co, pad) in cases {
            let p = Conv2d::square(3, 1, pad, 1);
            let g = Geom::new(xs, co, &p).unwrap();
            if !(g.use_panel() && g.direct || g.avx2_forward()) {
                crate::testing::skip(&format!(
                    "{xs:?}: this CPU has neither AVX-512F nor AVX2 + FMA"
                ));
                continue;
            }
            let x = crate::testing::to_f32(&rand_vec(31, xs.len(), -1.0, 1.0));
            let w = crate::testing::to_f32(&rand_vec(32, p.weight_len(xs.c, co), -1.0, 1.0));
            let b = crate::testing::to_f32(&rand_vec(33, co, -1.0, 1.0));
            let ys = p.out_shape(xs, co).unwrap();
            let mut y = vec![0f32; ys.len()];
            conv2d_fwd(&x, xs, &w, Some(&b), co, &p, &mut y).unwrap();
            let inside = |i: usize, k: usize, n: usize| (i + k).checked_sub(pad).filter(|&v| v < n);
            for (i, &got) in y.iter().enumerate() {
                let (ox, oy) = (i % ys.w, i / ys.w % ys.h);
                let (o, n) = (i / ys.plane() % co, i / ys.image());
                let mut acc = b[o];
                for c in 0..xs.c {
                    for kj in 0..3 {
                        for ki in 0..3 {
                            let xv = match (inside(oy, ki, xs.h), inside(ox, kj, xs.w)) {
                                (Some(iy), Some(ix)) => x[((n * xs.c + c) * xs.h + iy) * xs.w + ix],
                                _ => 0.0,
                            };
                            acc = w[((o * xs.c + c) * 3 + ki) * 3 + kj].mul_add(xv, acc);
                        }
                    }
                }
                assert_eq!(got.to_bits(), acc.to_bits(), "{xs:?} pad {pad}: output {i}");
            }
        }
    }

    /// The direct 3×3 weight gradient (the AVX-512 tile, or its AVX2 twin) sums each dW entry
    /// per image as one f32 FMA chain over the output pixels in order (oy, then ox) from zero,
    /// and adds the images' sums in image order: bit for bit that scalar computation, so the
    /// two tiles agree. Shapes with the batch not split in halves, read in place (padding 1)
    /// and from padded copies (padding 0 and 2); one thread. On a CPU with neither tile, says
    /// so and checks nothing.
    #[test]
    fn direct_weight_gradient_is_one_fma_chain_per_image_in_pixel_order() {
        for (xs, co, pad) in [
            (Nchw::new(2, 8, 4, 16), 16, 1),
            (Nchw::new(2, 8, 6, 18), 16, 0),
            (Nchw::new(3, 5, 2, 3), 7, 2),
        ] {
            let p = Conv2d::square(3, 1, pad, 1);
            let g = Geom::new(xs, co, &p).unwrap();
            if !g.direct_dw {
                crate::testing::skip(&format!(
                    "{xs:?}: this CPU has neither AVX-512F nor AVX2 + FMA"
                ));
                continue;
            }
            let x = crate::testing::to_f32(&rand_vec(41, xs.len(), -1.0, 1.0));
            let w = crate::testing::to_f32(&rand_vec(42, p.weight_len(xs.c, co), -1.0, 1.0));
            let ys = p.out_shape(xs, co).unwrap();
            let dy = crate::testing::to_f32(&rand_vec(43, ys.len(), -1.0, 1.0));
            let mut dw = vec![0f32; w.len()];
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| {
                    conv2d_bwd(&x, xs, &w, co, &p, &dy, None, Some(&mut dw), None).unwrap()
                });
            let inside = |i: usize, k: usize, n: usize| (i + k).checked_sub(pad).filter(|&v| v < n);
            for (i, &got) in dw.iter().enumerate() {
                let (kj, ki, c, o) = (i % 3, i / 3 % 3, i / 9 % xs.c, i / (9 * xs.c));
                let mut total = 0f32;
                for n in 0..xs.n {
                    let mut acc = 0f32;
                    for oy in 0..ys.h {
                        for ox in 0..ys.w {
                            let xv = match (inside(oy, ki, xs.h), inside(ox, kj, xs.w)) {
                                (Some(iy), Some(ix)) => x[((n * xs.c + c) * xs.h + iy) * xs.w + ix],
                                _ => 0.0,
                            };
                            let d = dy[((n * co + o) * ys.h + oy) * ys.w + ox];
                            acc = xv.mul_add(d, acc);
                        }
                    }
                    total = if n == 0 { acc } else { total + acc };
                }
                assert_eq!(
                    got.to_bits(),
                    total.to_bits(),
                    "{xs:?} pad {pad}: dW entry {i}"
                );
            }
        }
    }

    /// The direct 3×3 kernels give the same bits on 1 and 3 threads (dW included: each dW
    /// entry is one task's sum, whatever the split — its channel ranges (the last shape) or
    /// its two fixed halves of the batch added in order (the first two)), with AVX-512F or with
    /// the AVX2 twins; on a CPU with neither, nothing is checked (said so).
    #[test]
    fn direct_path_results_do_not_depend_on_threads() {
        let shapes = [
            (Nchw::new(5, 7, 9, 33), 19),
            (Nchw::new(5, 3, 6, 16), 40),
            (Nchw::new(3, 20, 4, 16), 40),
        ];
        for (xs, co) in shapes {
            let p = Conv2d::square(3, 1, 1, 1);
            let x = crate::testing::to_f32(&rand_vec(21, xs.len(), -1.0, 1.0));
            let w = crate::testing::to_f32(&rand_vec(22, p.weight_len(xs.c, co), -1.0, 1.0));
            let ys = p.out_shape(xs, co).unwrap();
            let dy = crate::testing::to_f32(&rand_vec(23, ys.len(), -1.0, 1.0));
            let run = || {
                let mut y = vec![0f32; ys.len()];
                conv2d_fwd(&x, xs, &w, None, co, &p, &mut y).unwrap();
                let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
                conv2d_bwd(&x, xs, &w, co, &p, &dy, Some(&mut dx), Some(&mut dw), None).unwrap();
                (y, dx, dw)
            };
            let on = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(run)
            };
            let g = Geom::new(xs, co, &p).unwrap();
            let (one, three) = (on(1), on(3));
            if g.direct_dw {
                assert_eq!(one, three, "{xs:?}");
            } else {
                crate::testing::skip(&format!("{xs:?}: no direct 3×3 path on this CPU"));
            }
        }
    }

    fn f32_paths_match_f64() {
        let cases = [
            (
                "3x3 wide rows",
                Nchw::new(2, 5, 9, 70),
                11,
                Conv2d::square(3, 1, 1, 1),
            ),
            (
                "3x3 K=180 Co=13",
                Nchw::new(2, 20, 11, 13),
                13,
                Conv2d::square(3, 1, 1, 1),
            ),
            (
                "3x3 s2 odd",
                Nchw::new(3, 7, 17, 37),
                9,
                Conv2d::square(3, 2, 1, 1),
            ),
            (
                "3x3 d3 p3 8x8",
                Nchw::new(2, 16, 8, 8),
                10,
                Conv2d::square(3, 1, 3, 3),
            ),
            (
                "3x3 d6 p6 on 8x8",
                Nchw::new(2, 8, 8, 8),
                8,
                Conv2d::square(3, 1, 6, 6),
            ),
            (
                "1x1",
                Nchw::new(2, 12, 9, 7),
                17,
                Conv2d::square(1, 1, 0, 1),
            ),
            (
                "1x1 s2",
                Nchw::new(2, 6, 9, 66),
                5,
                Conv2d::square(1, 2, 0, 1),
            ),
            (
                "3x3 s3 (scalar gather)",
                Nchw::new(2, 5, 40, 101),
                7,
                Conv2d::square(3, 3, 1, 1),
            ),
            (
                "3x3 groups 2",
                Nchw::new(2, 6, 10, 9),
                4,
                Conv2d::square(3, 1, 1, 1).with_groups(2),
            ),
            (
                "5x3 p(3,0)",
                Nchw::new(2, 3, 9, 40),
                9,
                Conv2d {
                    kh: 5,
                    kw: 3,
                    ph: 3,
                    pw: 0,
                    ..Conv2d::square(1, 1, 0, 1)
                },
            ),
            (
                "3x3 p2 > span",
                Nchw::new(2, 3, 6, 35),
                4,
                Conv2d::square(3, 1, 3, 1),
            ),
            (
                "3x3 Wo 16, Ho 5, Co 16",
                Nchw::new(3, 5, 5, 16),
                16,
                Conv2d::square(3, 1, 1, 1),
            ),
            (
                "3x3 Wo 17, Co 33",
                Nchw::new(2, 2, 7, 17),
                33,
                Conv2d::square(3, 1, 1, 1),
            ),
            (
                "3x3 p0, Ho 4",
                Nchw::new(2, 4, 6, 20),
                3,
                Conv2d::square(3, 1, 0, 1),
            ),
            (
                "3x3 p2, Wo 16",
                Nchw::new(2, 2, 3, 14),
                5,
                Conv2d::square(3, 1, 2, 1),
            ),
            (
                "3x3 p(1,0), Ci 1",
                Nchw::new(2, 1, 4, 18),
                8,
                Conv2d {
                    pw: 0,
                    ..Conv2d::square(3, 1, 1, 1)
                },
            ),
            (
                "3x3 Ho 1, Co 1, one image",
                Nchw::new(1, 3, 1, 32),
                1,
                Conv2d::square(3, 1, 1, 1),
            ),
            (
                "3x3 groups 2, Wo 16",
                Nchw::new(2, 4, 3, 16),
                6,
                Conv2d::square(3, 1, 1, 1).with_groups(2),
            ),
            (
                "3x3 Co 64, 16x16",
                Nchw::new(2, 3, 16, 16),
                64,
                Conv2d::square(3, 1, 1, 1),
            ),
            (
                "3x3 Co 130, 8x8 (dW direct, the rest on gemm)",
                Nchw::new(2, 2, 8, 8),
                130,
                Conv2d::square(3, 1, 1, 1),
            ),
        ];
        for (name, xs, co, p) in cases {
            let x = rand_vec(11, xs.len(), -1.0, 1.0);
            let w = rand_vec(12, p.weight_len(xs.c, co), -1.0, 1.0);
            let b = rand_vec(13, co, -1.0, 1.0);
            let ys = p.out_shape(xs, co).unwrap();
            let dy = rand_vec(14, ys.len(), -1.0, 1.0);
            let mut y = vec![0.0; ys.len()];
            conv2d_fwd(&x, xs, &w, Some(&b), co, &p, &mut y).unwrap();
            let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
            conv2d_bwd(&x, xs, &w, co, &p, &dy, Some(&mut dx), Some(&mut dw), None).unwrap();
            let f32s = |v: &[f64]| crate::testing::to_f32(v);
            let widen = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let mut y32 = vec![7f32; ys.len()];
            conv2d_fwd(&f32s(&x), xs, &f32s(&w), Some(&f32s(&b)), co, &p, &mut y32).unwrap();
            // Poisoned outputs: every element must be overwritten.
            let (mut dx32, mut dw32) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
            let (x32, w32, dy32) = (f32s(&x), f32s(&w), f32s(&dy));
            conv2d_bwd(
                &x32,
                xs,
                &w32,
                co,
                &p,
                &dy32,
                Some(&mut dx32),
                Some(&mut dw32),
                None,
            )
            .unwrap();
            // f32 sums of up to a few hundred products of numbers in [-1, 1].
            assert_close(&format!("{name}: y"), &widen(&y32), &y, 1e-5, 1e-5);
            assert_close(&format!("{name}: dx"), &widen(&dx32), &dx, 1e-5, 1e-5);
            assert_close(&format!("{name}: dw"), &widen(&dw32), &dw, 1e-4, 1e-5);
            // dX alone and dW alone give the same bits as together.
            let mut dx_only = vec![0f32; x.len()];
            conv2d_bwd(
                &x32,
                xs,
                &w32,
                co,
                &p,
                &dy32,
                Some(&mut dx_only),
                None,
                None,
            )
            .unwrap();
            assert_eq!(dx_only, dx32, "{name}");
        }
    }

    #[test]
    fn partial_backward_equals_full_backward() {
        let (xs, co, p) = (Nchw::new(3, 3, 6, 5), 4, Conv2d::square(3, 1, 1, 1));
        let x = rand_vec(7, xs.len(), -1.0, 1.0);
        let w = rand_vec(8, p.weight_len(xs.c, co), -1.0, 1.0);
        let dy = rand_vec(9, p.out_shape(xs, co).unwrap().len(), -1.0, 1.0);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        conv2d_bwd(&x, xs, &w, co, &p, &dy, Some(&mut dx), Some(&mut dw), None).unwrap();
        let (mut dx2, mut dw2) = (vec![7.0; x.len()], vec![7.0; w.len()]);
        conv2d_bwd(&x, xs, &w, co, &p, &dy, Some(&mut dx2), None, None).unwrap();
        conv2d_bwd(&x, xs, &w, co, &p, &dy, None, Some(&mut dw2), None).unwrap();
        assert_eq!(dx, dx2);
        assert_eq!(dw, dw2);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let p = Conv2d::square(3, 1, 0, 1);
        let mut y = vec![0f32; 4];
        // Input smaller than the kernel.
        let e = conv2d_fwd(
            &[0f32; 4],
            Nchw::new(1, 1, 2, 2),
            &[0.0; 9],
            None,
            1,
            &p,
            &mut y,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("smaller than the dilated kernel"),
            "{e}"
        );
        // Groups that do not divide the channels.
        let e = conv2d_fwd(
            &[0f32; 75],
            Nchw::new(1, 3, 5, 5),
            &[0.0; 18],
            None,
            2,
            &p.with_groups(2),
            &mut y,
        )
        .unwrap_err();
        assert!(e.to_string().contains("groups = 2 must divide"), "{e}");
        // Wrong weight length.
        let e = conv2d_fwd(
            &[0f32; 25],
            Nchw::new(1, 1, 5, 5),
            &[0.0; 8],
            None,
            1,
            &p,
            &mut [0.0; 9],
        )
        .unwrap_err();
        assert!(matches!(e, KernelError::Len { arg: "w", .. }), "{e}");
    }
}
