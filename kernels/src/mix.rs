//! Mixing two images by a binary mask, as CutMix-Seg, ClassMix, UniMatch and AugSeg do: drawing
//! the masks (boxes or classes) and the partner of each sample from Philox, rasterising them, and
//! the mix itself with its backward.
//!
//! Convention, everywhere: a mix mask `m` is f32[N, H, W] with values in {0, 1}, 1 meaning "this
//! pixel comes from the partner"; `partner` is i32[N], the index of sample n's partner; the mix is
//! `out[n] = (1 − m[n])·a[n] + m[n]·src[partner[n]]`, where `src` is a second batch `b` when there
//! is one and `a` itself otherwise (a permutation within the batch). Label maps (i32) take the
//! partner's label where m ≥ 0.5.
//!
//! * [`draw_partners`]: `roll` (partner[n] = (n+1) mod N, so `src[partner]` is
//!   `torch.roll(src, shifts=-1, dims=0)`: ClassMix's "next sample"), `permute` (a random
//!   permutation, fixed points allowed, as `torch.randperm`) or `same` (partner[n] = n: the
//!   two-batch form, where `src = b`).
//! * [`draw_boxes`] + [`box_mask_fwd`]: rectangles per sample (CutMix-Seg's `BoxMaskGenerator`,
//!   UniMatch's `obtain_cutmix_box`, AugSeg's Beta-sized boxes), combined by union or xor.
//! * [`draw_classes`] + [`class_mask_fwd`]: ClassMix — half of the classes present in the
//!   partner's label map, m = 1 on their pixels.
//! * [`mix_fwd`], [`mix_labels_fwd`], [`mix_bwd`].
//!
//! Box geometry. `area` is the fraction of the image the boxes cover before overlap; each of the
//! B boxes of a sample gets `a = area / B` (CutMix-Seg's `n_boxes` split). The aspect ρ is the
//! box's height over width measured in fractions of the image's height and width, ρ =
//! (h/H)/(w/W) — the pixel aspect on square crops, which UniMatch always uses; CutMix-Seg's
//! random aspect is this ρ log-uniform on [a, 1/a]. The requested aspect range is clamped to
//! [a, 1/a], the aspects at which a box of area a fits inside the image, so the area is kept
//! exactly (up to rounding) and no draw is rejected: with area 0.5 and the default range [0.3,
//! 1/0.3] this is CutMix-Seg's size distribution exactly. Then h = round(√(aρ)·H), w = round(√(a/ρ)·W)
//! (half up, capped at H and W), and the top-left corner is uniform over the positions where the
//! box fits entirely (CutMix-Seg's `within_bounds`; the distribution UniMatch's rejection loop
//! converges to for a given size). Differences from the originals, on purpose: UniMatch floors the
//! sides and redraws an aspect that does not fit (here it is clamped); AugSeg draws one λ per
//! batch and clips a box whose centre lies near the border (here each sample draws its own size
//! and the box always fits); CutMix-Seg rounds half to even, places with `round((H−h)·u)`, and
//! with several boxes draws the aspect on [area, 1/area] before shrinking each side by √(1/B)
//! (here each box's aspect range is [a, 1/a]).
//!
//! Counter layout (Philox words `rng.u32_at(i)`, uniforms `rng.uniform_at(i)`; a CUDA twin
//! reproduces the draws bit for bit from these indices). Sample n owns words
//! [n·2^32, (n+1)·2^32), base(n) = n·2^32:
//!
//! * base(n) + 0: the gate uniform; the sample gets boxes iff it is < p.
//! * box b of sample n, slot s = base(n) + 64·(b + 1): word s + 0 the aspect uniform, s + 1 and
//!   s + 2 the raw words of the row and column of the corner, s + 3 … the area: none for a fixed
//!   area, one uniform for a range, α + β − 1 uniforms for Beta(α, β).
//! * ClassMix, sample n: word base(n) + j is step j of the partial Fisher–Yates shuffle that
//!   picks the classes.
//! * The `permute` partner: words 2^48 + i, i = N−1 down to 1, one Fisher–Yates step each.
//!
//! Integers are drawn from a raw word by Lemire's multiply-shift, `(word · k) >> 32`, uniform on
//! [0, k) up to a bias of k/2^32; floats use only exactly rounded operations (`+ − × ÷ √`,
//! `mul_add`, and the portable `ln`/`exp`), as in [`crate::philox`]: compile a CUDA twin with
//! `--fmad=false`.
//!
//! Backward order, for a bit-identical twin: da[k] = (1 − m[k])·dout[k] then + m[n]·dout[n] for
//! every n with partner[n] = k, n ascending (one thread per element of da gathering over n
//! reproduces it); db[k] = 0 + the same partner sum.
//!
//! Not here: CowMix masks, soft (non-binary) mask generators, AugSeg's confidence-dependent
//! label injection (a per-sample gate computed from data), the op-level tensors and params.

use crate::philox::{ln_portable, Philox};
use crate::{check_len, KernelError, Nchw, Real};

/// Most boxes per sample (each owns a 64-word slot below 2^32).
pub const MAX_BOXES: usize = 64;
/// Most samples in a batch (each owns 2^32 counters below 2^48).
pub const MAX_BATCH: usize = 1 << 16;
/// First Philox word of the `permute` partner draw.
pub const PERMUTE_WORDS: u64 = 1 << 48;
/// Words of a box's slot.
const SLOT: u64 = 64;
/// Offset of the area uniforms within a slot.
const AREA_WORDS: u64 = 3;

/// How each sample's partner is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partner {
    /// partner[n] = (n + 1) mod N.
    Roll,
    /// A uniform random permutation (Fisher–Yates on words [`PERMUTE_WORDS`] + i).
    Permute,
    /// partner[n] = n (mix with the same index of a second batch).
    Same,
}

/// How the boxes of one sample combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// m = 1 inside any box.
    Union,
    /// Each box flips the pixels it covers (CutMix-Seg's multi-box masks).
    Xor,
}

/// The distribution of the boxes' total area, as a fraction of the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Area {
    /// Always this fraction (CutMix-Seg: 0.5).
    Fixed(f32),
    /// Uniform on [lo, hi] (UniMatch: [0.02, 0.4]): `lo + u·(hi − lo)`.
    Uniform {
        /// Smallest fraction.
        lo: f32,
        /// Largest fraction.
        hi: f32,
    },
    /// Beta(alpha, beta) with integer parameters, drawn exactly as the alpha-th smallest of
    /// alpha + beta − 1 uniforms (AugSeg: a box of area 1 − λ, λ ~ Beta(4, 4), is Beta(4, 4);
    /// its labeled-box λ ~ Beta(8, 2) is an area ~ Beta(2, 8)).
    Beta {
        /// α ≥ 1.
        alpha: u32,
        /// β ≥ 1, α + β ≤ 62.
        beta: u32,
    },
}

/// How the aspect ρ is drawn from its (clamped) range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AspectSampling {
    /// ln ρ uniform (CutMix-Seg).
    LogUniform,
    /// ρ uniform (UniMatch's `np.random.uniform(0.3, 1/0.3)`).
    Uniform,
}

/// Parameters of [`draw_boxes`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxParams {
    /// Boxes per sample, 1 ..= [`MAX_BOXES`].
    pub boxes: usize,
    /// Total area of a sample's boxes (each gets area / boxes).
    pub area: Area,
    /// [lo, hi] of the aspect ρ = (h/H)/(w/W), 0 < lo ≤ hi, finite.
    pub aspect: [f32; 2],
    /// How ρ is drawn.
    pub aspect_sampling: AspectSampling,
    /// Probability that a sample gets any box (else its boxes are empty), in [0, 1].
    pub p: f32,
}

/// One rectangle: rows y0 .. y0 + h, columns x0 .. x0 + w. Empty when h or w is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MixBox {
    /// Top row.
    pub y0: usize,
    /// Left column.
    pub x0: usize,
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
}

/// How many of the k classes present ClassMix picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassCount {
    /// ⌊k/2⌋: ClassMix's `trainSSL.py`, `int((nclasses - nclasses % 2) / 2)`.
    HalfDown,
    /// ⌈k/2⌉: DACS's `int((nclasses + nclasses % 2) / 2)`.
    HalfUp,
}

/// The classes chosen per sample, CSR-style: sample n's are
/// `classes[starts[n] .. starts[n + 1]]`, ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassChoice {
    /// All samples' chosen classes, concatenated.
    pub classes: Vec<i32>,
    /// N + 1 offsets into `classes`, starting at 0.
    pub starts: Vec<usize>,
}

impl ClassChoice {
    /// Sample n's chosen classes (empty when out of range).
    pub fn of(&self, n: usize) -> &[i32] {
        match (self.starts.get(n), self.starts.get(n + 1)) {
            (Some(&s), Some(&e)) if s <= e && e <= self.classes.len() => &self.classes[s..e],
            _ => &[],
        }
    }
}

/// Which batch the partner's pixels come from, for [`mix_bwd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixSource {
    /// `src = a` (no second batch): the partner's share flows back into da.
    A,
    /// `src = b`: the partner's share flows into db.
    B,
}

fn shape_err(kernel: &'static str, reason: String) -> KernelError {
    KernelError::Shape { kernel, reason }
}

/// Uniform integer in [0, k) from a raw word (Lemire's multiply-shift, no rejection).
#[inline]
pub fn word_below(word: u32, k: u64) -> u64 {
    (u64::from(word) * k) >> 32
}

/// First Philox word of sample n.
#[inline]
fn sample_base(n: usize) -> u64 {
    (n as u64) << 32
}

/// e^x for |x| ≤ 80, to about 1 ulp of f32, using only exactly rounded operations (the
/// counterpart of [`ln_portable`]): x = k·ln 2 + r with |r| ≤ ln 2 / 2 (Cody–Waite split of ln 2),
/// e^r from its Taylor series to r⁷ (truncation < 6e-9), times 2^k built from its bits.
#[inline]
pub fn exp_portable(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-80.0, 80.0);
    let k = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = k.mul_add(-LN2_HI, x);
    let r = k.mul_add(-LN2_LO, r);
    let mut p = 1.0 / 5040.0f32;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// Checks that every partner index lies in [0, N).
fn check_partner(kernel: &'static str, partner: &[i32], n: usize) -> Result<(), KernelError> {
    check_len(kernel, "partner", partner, n)?;
    match partner.iter().position(|&p| p < 0 || p as usize >= n) {
        Some(i) => Err(shape_err(
            kernel,
            format!("partner[{i}] = {} is outside [0, {n})", partner[i]),
        )),
        None => Ok(()),
    }
}

/// Fills `partner` (i32[N]) as `mode` says; `permute` draws from words [`PERMUTE_WORDS`] + i of
/// `rng`: for i = N−1 down to 1, j = ⌊word·(i+1) / 2^32⌋, swap(partner[i], partner[j]), starting
/// from the identity.
pub fn draw_partners(rng: &Philox, mode: Partner, partner: &mut [i32]) -> Result<(), KernelError> {
    let n = partner.len();
    if n > MAX_BATCH {
        return Err(shape_err(
            "draw_partners",
            format!("a batch of {n} exceeds the {MAX_BATCH} samples the counter layout allows"),
        ));
    }
    for (i, p) in partner.iter_mut().enumerate() {
        *p = match mode {
            Partner::Roll => ((i + 1) % n) as i32,
            Partner::Permute | Partner::Same => i as i32,
        };
    }
    if mode == Partner::Permute {
        for i in (1..n).rev() {
            let j = word_below(rng.u32_at(PERMUTE_WORDS + i as u64), i as u64 + 1) as usize;
            partner.swap(i, j);
        }
    }
    Ok(())
}

/// Validates `params` against an image of H×W in a batch of N.
fn check_box_params(p: &BoxParams, n: usize, h: usize, w: usize) -> Result<(), KernelError> {
    const K: &str = "draw_boxes";
    let unit = |v: f32| (0.0..=1.0).contains(&v);
    if !(1..=MAX_BOXES).contains(&p.boxes) {
        return Err(shape_err(
            K,
            format!("boxes must be in 1..={MAX_BOXES}, got {}", p.boxes),
        ));
    }
    match p.area {
        Area::Fixed(a) if !unit(a) => {
            return Err(shape_err(K, format!("area must be in [0, 1], got {a}")))
        }
        Area::Uniform { lo, hi } if !(unit(lo) && unit(hi) && lo <= hi) => {
            return Err(shape_err(
                K,
                format!("the area range must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]"),
            ))
        }
        Area::Beta { alpha, beta } if alpha < 1 || beta < 1 || alpha + beta > 62 => {
            return Err(shape_err(
                K,
                format!("Beta({alpha}, {beta}) needs alpha, beta >= 1 and alpha + beta <= 62"),
            ))
        }
        _ => {}
    }
    let [lo, hi] = p.aspect;
    if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
        return Err(shape_err(
            K,
            format!("the aspect range must satisfy 0 < lo <= hi, finite, got [{lo}, {hi}]"),
        ));
    }
    if !unit(p.p) {
        return Err(shape_err(K, format!("p must be in [0, 1], got {}", p.p)));
    }
    if n > MAX_BATCH || h >= 1 << 24 || w >= 1 << 24 {
        return Err(shape_err(
            K,
            format!("[{n}, {h}, {w}] exceeds {MAX_BATCH} samples or 2^24 rows or columns"),
        ));
    }
    Ok(())
}

/// The total area drawn for the box whose slot starts at word `slot`.
fn draw_area(rng: &Philox, area: Area, slot: u64) -> f32 {
    match area {
        Area::Fixed(a) => a,
        Area::Uniform { lo, hi } => lo + rng.uniform_at(slot + AREA_WORDS) * (hi - lo),
        Area::Beta { alpha, beta } => {
            let k = u64::from(alpha + beta - 1);
            let mut u: Vec<f32> = (0..k)
                .map(|i| rng.uniform_at(slot + AREA_WORDS + i))
                .collect();
            u.sort_by(f32::total_cmp);
            u[alpha as usize - 1]
        }
    }
}

/// Box `b` of sample `s` of an H×W image: area, aspect, size and position from its slot.
fn draw_box(rng: &Philox, p: &BoxParams, sample: usize, b: usize, h: usize, w: usize) -> MixBox {
    let slot = sample_base(sample) + SLOT * (b as u64 + 1);
    let a = draw_area(rng, p.area, slot) / p.boxes as f32;
    if a <= 0.0 || h == 0 || w == 0 {
        return MixBox::default();
    }
    // Aspects at which a box of area a fits: h/H = √(aρ) ≤ 1 and w/W = √(a/ρ) ≤ 1.
    let (fit_lo, fit_hi) = (a, 1.0 / a);
    let lo = p.aspect[0].clamp(fit_lo, fit_hi);
    let hi = p.aspect[1].clamp(fit_lo, fit_hi);
    let u = rng.uniform_at(slot);
    let rho = if lo == hi {
        lo
    } else {
        match p.aspect_sampling {
            AspectSampling::LogUniform => {
                let (l, r) = (ln_portable(lo), ln_portable(hi));
                exp_portable(l + u * (r - l))
            }
            AspectSampling::Uniform => lo + u * (hi - lo),
        }
    }
    .clamp(lo, hi);
    let side = |frac: f32, extent: usize| {
        let frac = frac.min(1.0);
        ((frac * extent as f32 + 0.5).floor() as usize).min(extent)
    };
    let bh = side((a * rho).sqrt(), h);
    let bw = side((a / rho).sqrt(), w);
    MixBox {
        y0: word_below(rng.u32_at(slot + 1), (h - bh + 1) as u64) as usize,
        x0: word_below(rng.u32_at(slot + 2), (w - bw + 1) as u64) as usize,
        h: bh,
        w: bw,
    }
}

/// Draws `params.boxes` boxes for each of N samples of H×W images (layout in the module doc);
/// returns them sample-major, [N, boxes]. A sample that loses its gate (probability 1 − p) gets
/// empty boxes.
pub fn draw_boxes(
    rng: &Philox,
    n: usize,
    h: usize,
    w: usize,
    params: &BoxParams,
) -> Result<Vec<MixBox>, KernelError> {
    check_box_params(params, n, h, w)?;
    let mut out = Vec::with_capacity(n * params.boxes);
    for s in 0..n {
        let boxed = rng.uniform_at(sample_base(s)) < params.p;
        for b in 0..params.boxes {
            out.push(if boxed {
                draw_box(rng, params, s, b, h, w)
            } else {
                MixBox::default()
            });
        }
    }
    Ok(out)
}

/// Rasterises boxes into a mask: m[n] = 1 inside sample n's boxes (union), or where an odd number
/// of them overlap (xor), 0 elsewhere.
///
/// * `boxes`: [N, per_sample], each inside the H×W image.
/// * `mask`: f32[N, H, W], overwritten.
pub fn box_mask_fwd(
    boxes: &[MixBox],
    n: usize,
    h: usize,
    w: usize,
    per_sample: usize,
    combine: Combine,
    mask: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "box_mask_fwd";
    check_len(K, "boxes", boxes, n * per_sample)?;
    check_len(K, "mask", mask, n * h * w)?;
    if let Some(b) = boxes.iter().find(|b| b.y0 + b.h > h || b.x0 + b.w > w) {
        return Err(shape_err(
            K,
            format!("box {b:?} does not fit inside a {h}x{w} image"),
        ));
    }
    mask.fill(0.0);
    if per_sample == 0 || h * w == 0 {
        return Ok(());
    }
    for (m, bs) in mask
        .chunks_exact_mut(h * w)
        .zip(boxes.chunks_exact(per_sample))
    {
        for b in bs {
            for row in m[b.y0 * w..(b.y0 + b.h) * w].chunks_exact_mut(w) {
                for v in &mut row[b.x0..b.x0 + b.w] {
                    *v = match combine {
                        Combine::Union => 1.0,
                        Combine::Xor => 1.0 - *v,
                    };
                }
            }
        }
    }
    Ok(())
}

/// The distinct labels of one map other than `ignore`, ascending.
fn present_classes(label: &[i32], ignore: i32) -> Vec<i32> {
    let mut seen = Vec::new();
    let mut last = None;
    for &v in label {
        // Label maps come in runs: skipping repeats keeps the sort small.
        if Some(v) != last && v != ignore {
            seen.push(v);
        }
        last = Some(v);
    }
    seen.sort_unstable();
    seen.dedup();
    seen
}

/// ClassMix's draw: for each sample n, the k classes present in `label[partner[n]]` (ignore
/// excluded, ascending), of which ⌊k/2⌋ or ⌈k/2⌉ are chosen uniformly without replacement by a
/// partial Fisher–Yates shuffle: step j swaps entry j with entry j + ⌊word·(k − j) / 2^32⌋, word
/// `rng.u32_at(n·2^32 + j)`. The chosen classes are returned ascending.
///
/// * `label`: i32[N, H, W]; `partner`: i32[N] in [0, N).
pub fn draw_classes(
    label: &[i32],
    partner: &[i32],
    n: usize,
    h: usize,
    w: usize,
    ignore: i32,
    count: ClassCount,
    rng: &Philox,
) -> Result<ClassChoice, KernelError> {
    const K: &str = "draw_classes";
    check_len(K, "label", label, n * h * w)?;
    check_partner(K, partner, n)?;
    if n > MAX_BATCH {
        return Err(shape_err(
            K,
            format!("a batch of {n} exceeds the {MAX_BATCH} samples the counter layout allows"),
        ));
    }
    let hw = h * w;
    let mut choice = ClassChoice {
        classes: Vec::new(),
        starts: vec![0],
    };
    for (s, &p) in partner.iter().enumerate() {
        let p = p as usize;
        let mut classes = present_classes(&label[p * hw..(p + 1) * hw], ignore);
        let k = classes.len();
        let take = match count {
            ClassCount::HalfDown => k / 2,
            ClassCount::HalfUp => k.div_ceil(2),
        };
        for j in 0..take {
            let word = rng.u32_at(sample_base(s) + j as u64);
            let r = j + word_below(word, (k - j) as u64) as usize;
            classes.swap(j, r);
        }
        let chosen = &mut classes[..take];
        chosen.sort_unstable();
        choice.classes.extend_from_slice(chosen);
        choice.starts.push(choice.classes.len());
    }
    Ok(choice)
}

/// ClassMix's mask: m[n, y, x] = 1 where `label[partner[n], y, x]` is one of sample n's chosen
/// classes, else 0.
///
/// * `label`: i32[N, H, W]; `partner`: i32[N] in [0, N); `chosen`: N samples' classes.
/// * `mask`: f32[N, H, W], overwritten.
pub fn class_mask_fwd(
    label: &[i32],
    partner: &[i32],
    chosen: &ClassChoice,
    n: usize,
    h: usize,
    w: usize,
    mask: &mut [f32],
) -> Result<(), KernelError> {
    const K: &str = "class_mask_fwd";
    let hw = h * w;
    check_len(K, "label", label, n * hw)?;
    check_len(K, "mask", mask, n * hw)?;
    check_partner(K, partner, n)?;
    check_len(K, "chosen.starts", &chosen.starts, n + 1)?;
    let ordered = chosen.starts.first() == Some(&0)
        && chosen.starts.windows(2).all(|s| s[0] <= s[1])
        && chosen.starts.last() == Some(&chosen.classes.len());
    if !ordered {
        return Err(shape_err(
            K,
            format!(
                "chosen.starts {:?} must rise from 0 to {}",
                chosen.starts,
                chosen.classes.len()
            ),
        ));
    }
    for (s, (m, &p)) in mask.chunks_exact_mut(hw.max(1)).zip(partner).enumerate() {
        let classes = chosen.of(s);
        let src = &label[p as usize * hw..(p as usize + 1) * hw];
        for (v, l) in m.iter_mut().zip(src) {
            *v = if classes.contains(l) { 1.0 } else { 0.0 };
        }
    }
    Ok(())
}

/// out[n, c] = (1 − m[n])·a[n, c] + m[n]·src[partner[n], c].
///
/// * `a`, `src`, `out`: [N, C, H, W] (`shape`; C = 1 covers [N, H, W]). Pass `a` as `src` for a
///   mix within one batch.
/// * `mask`: [N, H, W]; `partner`: i32[N] in [0, N).
pub fn mix_fwd<T: Real>(
    a: &[T],
    src: &[T],
    mask: &[T],
    partner: &[i32],
    shape: Nchw,
    out: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "mix_fwd";
    check_len(K, "a", a, shape.len())?;
    check_len(K, "src", src, shape.len())?;
    check_len(K, "mask", mask, shape.n * shape.plane())?;
    check_len(K, "out", out, shape.len())?;
    check_partner(K, partner, shape.n)?;
    let (hw, img) = (shape.plane(), shape.image());
    if hw == 0 || img == 0 {
        return Ok(());
    }
    for (n, o) in out.chunks_exact_mut(img).enumerate() {
        let m = &mask[n * hw..(n + 1) * hw];
        let p = partner[n] as usize;
        let (ai, si) = (&a[n * img..(n + 1) * img], &src[p * img..(p + 1) * img]);
        for ((oc, ac), sc) in o
            .chunks_exact_mut(hw)
            .zip(ai.chunks_exact(hw))
            .zip(si.chunks_exact(hw))
        {
            for (((o, &av), &sv), &mv) in oc.iter_mut().zip(ac).zip(sc).zip(m) {
                *o = (T::one() - mv) * av + mv * sv;
            }
        }
    }
    Ok(())
}

/// Label maps: out[n] = src[partner[n]] where m[n] ≥ 0.5, else a[n].
///
/// * `a`, `src`, `out`: i32[N, C, H, W] (`shape`; C = 1 for [N, H, W] label maps).
/// * `mask`: f32[N, H, W]; `partner`: i32[N] in [0, N).
pub fn mix_labels_fwd(
    a: &[i32],
    src: &[i32],
    mask: &[f32],
    partner: &[i32],
    shape: Nchw,
    out: &mut [i32],
) -> Result<(), KernelError> {
    const K: &str = "mix_labels_fwd";
    check_len(K, "a", a, shape.len())?;
    check_len(K, "src", src, shape.len())?;
    check_len(K, "mask", mask, shape.n * shape.plane())?;
    check_len(K, "out", out, shape.len())?;
    check_partner(K, partner, shape.n)?;
    let (hw, img) = (shape.plane(), shape.image());
    if hw == 0 || img == 0 {
        return Ok(());
    }
    for (n, o) in out.chunks_exact_mut(img).enumerate() {
        let m = &mask[n * hw..(n + 1) * hw];
        let p = partner[n] as usize;
        let (ai, si) = (&a[n * img..(n + 1) * img], &src[p * img..(p + 1) * img]);
        for ((oc, ac), sc) in o
            .chunks_exact_mut(hw)
            .zip(ai.chunks_exact(hw))
            .zip(si.chunks_exact(hw))
        {
            for (((o, &av), &sv), &mv) in oc.iter_mut().zip(ac).zip(sc).zip(m) {
                *o = if mv >= 0.5 { sv } else { av };
            }
        }
    }
    Ok(())
}

/// Backward of [`mix_fwd`]: da = (1 − m)·dout, and the partner's share m·dout is summed into
/// the sample it came from — in da when `source` is [`MixSource::A`] (several samples may share
/// one partner: their shares add up), in db when it is [`MixSource::B`]. Summation order in the
/// module doc. An output passed as `None` is skipped; db must be `None` with `MixSource::A`.
///
/// * `dout`, `da`, `db`: [N, C, H, W] (`shape`; C = 1 covers [N, H, W]).
/// * `mask`: [N, H, W]; `partner`: i32[N] in [0, N).
pub fn mix_bwd<T: Real>(
    dout: &[T],
    mask: &[T],
    partner: &[i32],
    shape: Nchw,
    source: MixSource,
    mut da: Option<&mut [T]>,
    mut db: Option<&mut [T]>,
) -> Result<(), KernelError> {
    const K: &str = "mix_bwd";
    check_len(K, "dout", dout, shape.len())?;
    check_len(K, "mask", mask, shape.n * shape.plane())?;
    check_partner(K, partner, shape.n)?;
    if let Some(da) = da.as_deref() {
        check_len(K, "da", da, shape.len())?;
    }
    if let Some(db) = db.as_deref() {
        check_len(K, "db", db, shape.len())?;
        if source == MixSource::A {
            return Err(shape_err(
                K,
                "db was given, but the mix had no second batch (source A)".into(),
            ));
        }
    }
    let (hw, img) = (shape.plane(), shape.image());
    if hw == 0 || img == 0 {
        return Ok(());
    }
    if let Some(da) = da.as_deref_mut() {
        for (n, d) in da.chunks_exact_mut(img).enumerate() {
            let m = &mask[n * hw..(n + 1) * hw];
            let g = &dout[n * img..(n + 1) * img];
            for (dc, gc) in d.chunks_exact_mut(hw).zip(g.chunks_exact(hw)) {
                for ((d, &gv), &mv) in dc.iter_mut().zip(gc).zip(m) {
                    *d = (T::one() - mv) * gv;
                }
            }
        }
    }
    let target = match source {
        MixSource::A => da,
        MixSource::B => {
            if let Some(db) = db.as_deref_mut() {
                db.fill(T::zero());
            }
            db
        }
    };
    if let Some(t) = target {
        for (n, &p) in partner.iter().enumerate() {
            let m = &mask[n * hw..(n + 1) * hw];
            let g = &dout[n * img..(n + 1) * img];
            let p = p as usize;
            let d = &mut t[p * img..(p + 1) * img];
            for (dc, gc) in d.chunks_exact_mut(hw).zip(g.chunks_exact(hw)) {
                for ((d, &gv), &mv) in dc.iter_mut().zip(gc).zip(m) {
                    *d += mv * gv;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gradcheck, rand_vec};

    const CUTMIX_SEG: BoxParams = BoxParams {
        boxes: 1,
        area: Area::Fixed(0.5),
        aspect: [0.3, 1.0 / 0.3],
        aspect_sampling: AspectSampling::LogUniform,
        p: 1.0,
    };

    fn mask_of(boxes: &[MixBox], n: usize, h: usize, w: usize, combine: Combine) -> Vec<f32> {
        let mut m = vec![7.0; n * h * w];
        box_mask_fwd(boxes, n, h, w, boxes.len() / n, combine, &mut m).unwrap();
        m
    }

    /// ρ = (h/H)/(w/W) of a box.
    fn aspect(b: &MixBox, h: usize, w: usize) -> f64 {
        (b.h as f64 / h as f64) / (b.w as f64 / w as f64)
    }

    #[test]
    fn exp_portable_matches_libm() {
        let mut worst = 0f64;
        for k in 0..20_001 {
            let x = -20.0 + k as f32 * 0.002;
            let want = (x as f64).exp();
            worst = worst.max((exp_portable(x) as f64 - want).abs() / want);
        }
        assert!(worst < 3e-7, "exp rel err {worst}");
        assert_eq!(exp_portable(0.0), 1.0);
    }

    #[test]
    fn word_below_spans_the_range() {
        assert_eq!(word_below(0, 7), 0);
        assert_eq!(word_below(u32::MAX, 7), 6);
        assert_eq!(word_below(u32::MAX, 1), 0);
        assert_eq!(word_below(1 << 31, 10), 5);
    }

    #[test]
    fn fixed_half_box_covers_half_the_image_within_rounding() {
        for (h, w) in [(32, 32), (24, 40), (321, 321)] {
            let rng = Philox::new(3, h as u64);
            let n = 64;
            let boxes = draw_boxes(&rng, n, h, w, &CUTMIX_SEG).unwrap();
            let mask = mask_of(&boxes, n, h, w, Combine::Union);
            for (s, b) in boxes.iter().enumerate() {
                let count = mask[s * h * w..(s + 1) * h * w]
                    .iter()
                    .filter(|&&v| v == 1.0)
                    .count();
                assert_eq!(count, b.h * b.w, "sample {s}: {b:?}");
                assert!(b.y0 + b.h <= h && b.x0 + b.w <= w, "{b:?} outside {h}x{w}");
                // |h·w − a·H·W| ≤ 0.5·(h + w) + 0.25 when each side is rounded to the nearest.
                let err = (count as f64 - 0.5 * (h * w) as f64).abs();
                assert!(
                    err <= 0.5 * (b.h + b.w) as f64 + 0.25,
                    "sample {s}: {count} pixels of {h}x{w}, {b:?}"
                );
                // CutMix-Seg's aspect: log-uniform on [a, 1/a] = [0.5, 2], within rounding.
                let rho = aspect(b, h, w);
                let slack = 1.0 + 1.5 / b.h.min(b.w) as f64;
                assert!(
                    rho >= 0.5 / slack && rho <= 2.0 * slack,
                    "sample {s}: ρ = {rho}, {b:?}"
                );
            }
            let only = mask.iter().all(|&v| v == 0.0 || v == 1.0);
            assert!(only, "mask values outside {{0, 1}}");
        }
    }

    #[test]
    fn a_square_half_box_is_hand_computed() {
        // ρ = 1 forced: side = round(√0.5·32) = round(22.63) = 23.
        let p = BoxParams {
            aspect: [1.0, 1.0],
            ..CUTMIX_SEG
        };
        let rng = Philox::new(5, 5);
        let boxes = draw_boxes(&rng, 3, 32, 32, &p).unwrap();
        for (s, b) in boxes.iter().enumerate() {
            assert_eq!((b.h, b.w), (23, 23), "{b:?}");
            let base = (s as u64) << 32;
            let y0 = word_below(rng.u32_at(base + 64 + 1), 10) as usize;
            let x0 = word_below(rng.u32_at(base + 64 + 2), 10) as usize;
            assert_eq!((b.y0, b.x0), (y0, x0), "the documented counters");
        }
    }

    #[test]
    fn area_ranges_and_beta_areas_lie_in_range() {
        let (h, w) = (400, 400);
        let p = BoxParams {
            area: Area::Uniform { lo: 0.02, hi: 0.4 },
            ..CUTMIX_SEG
        };
        let boxes = draw_boxes(&Philox::new(1, 1), 300, h, w, &p).unwrap();
        let fractions: Vec<f64> = boxes
            .iter()
            .map(|b| (b.h * b.w) as f64 / (h * w) as f64)
            .collect();
        for (f, b) in fractions.iter().zip(&boxes) {
            let slack = 0.5 * (b.h + b.w) as f64 / (h * w) as f64 + 1e-6;
            assert!(*f >= 0.02 - slack && *f <= 0.4 + slack, "{f} from {b:?}");
        }
        let lo = fractions.iter().cloned().fold(1.0, f64::min);
        let hi = fractions.iter().cloned().fold(0.0, f64::max);
        assert!(lo < 0.05 && hi > 0.37, "range not covered: [{lo}, {hi}]");

        // Beta(2, 8) has mean 0.2; Beta(α, β) from order statistics stays in [0, 1].
        let p = BoxParams {
            area: Area::Beta { alpha: 2, beta: 8 },
            aspect: [1.0, 1.0],
            ..CUTMIX_SEG
        };
        let boxes = draw_boxes(&Philox::new(2, 2), 2000, h, w, &p).unwrap();
        let mean = boxes
            .iter()
            .map(|b| (b.h * b.w) as f64 / (h * w) as f64)
            .sum::<f64>()
            / 2000.0;
        assert!((mean - 0.2).abs() < 0.01, "Beta(2, 8) area mean {mean}");
    }

    #[test]
    fn aspect_is_respected_and_sampled_as_asked() {
        let (h, w) = (400, 600);
        let fixed = |sampling| BoxParams {
            area: Area::Fixed(0.05),
            aspect: [0.3, 1.0 / 0.3],
            aspect_sampling: sampling,
            ..CUTMIX_SEG
        };
        let below_one = |sampling| {
            let boxes = draw_boxes(&Philox::new(8, 1), 4000, h, w, &fixed(sampling)).unwrap();
            for b in &boxes {
                let rho = aspect(b, h, w);
                let slack = 1.0 + 1.5 / b.h.min(b.w) as f64;
                assert!(
                    rho >= 0.3 / slack && rho <= slack / 0.3,
                    "ρ = {rho} from {b:?}"
                );
            }
            boxes.iter().filter(|b| aspect(b, h, w) < 1.0).count() as f64 / 4000.0
        };
        // Log-uniform on [0.3, 1/0.3]: P(ρ < 1) = 1/2; uniform: (1 − 0.3)/(1/0.3 − 0.3) ≈ 0.23.
        let log = below_one(AspectSampling::LogUniform);
        let lin = below_one(AspectSampling::Uniform);
        assert!((log - 0.5).abs() < 0.03, "log-uniform P(ρ<1) = {log}");
        assert!((lin - 0.231).abs() < 0.03, "uniform P(ρ<1) = {lin}");

        // A range that cannot fit is clamped to [a, 1/a]: area 0.5 and ρ ≥ 3 gives ρ = 2.
        let p = BoxParams {
            aspect: [3.0, 4.0],
            ..CUTMIX_SEG
        };
        for b in draw_boxes(&Philox::new(9, 9), 20, 100, 100, &p).unwrap() {
            assert_eq!((b.h, b.w, b.y0), (100, 50, 0), "{b:?}");
        }
    }

    #[test]
    fn union_and_xor_are_hand_computed() {
        // 1 sample, 3×4 image; boxes rows 0..2 × cols 0..2 and rows 1..3 × cols 1..4.
        let boxes = [
            MixBox {
                y0: 0,
                x0: 0,
                h: 2,
                w: 2,
            },
            MixBox {
                y0: 1,
                x0: 1,
                h: 2,
                w: 3,
            },
        ];
        #[rustfmt::skip]
        let union = [
            1.0, 1.0, 0.0, 0.0,
            1.0, 1.0, 1.0, 1.0,
            0.0, 1.0, 1.0, 1.0,
        ];
        #[rustfmt::skip]
        let xor = [
            1.0, 1.0, 0.0, 0.0,
            1.0, 0.0, 1.0, 1.0,
            0.0, 1.0, 1.0, 1.0,
        ];
        assert_eq!(mask_of(&boxes, 1, 3, 4, Combine::Union), union);
        assert_eq!(mask_of(&boxes, 1, 3, 4, Combine::Xor), xor);
        // The same box twice: xor cancels it.
        let twice = [boxes[0], boxes[0]];
        assert_eq!(mask_of(&twice, 1, 3, 4, Combine::Xor), [0.0; 12]);
        let outside = [MixBox {
            y0: 2,
            x0: 0,
            h: 2,
            w: 1,
        }];
        let e = box_mask_fwd(&outside, 1, 3, 4, 1, Combine::Union, &mut [0.0; 12]).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    #[test]
    fn gate_p_zero_gives_empty_masks_and_p_one_boxes_everyone() {
        let rng = Philox::new(4, 4);
        let p0 = BoxParams {
            p: 0.0,
            ..CUTMIX_SEG
        };
        let boxes = draw_boxes(&rng, 16, 8, 8, &p0).unwrap();
        assert!(mask_of(&boxes, 16, 8, 8, Combine::Union)
            .iter()
            .all(|&v| v == 0.0));
        let boxes = draw_boxes(&rng, 16, 8, 8, &CUTMIX_SEG).unwrap();
        assert!(boxes.iter().all(|b| b.h * b.w > 0), "{boxes:?}");
        // p = 0.5: the samples boxed are exactly those whose gate uniform is below 0.5.
        let half = BoxParams {
            p: 0.5,
            ..CUTMIX_SEG
        };
        let boxes = draw_boxes(&rng, 64, 8, 8, &half).unwrap();
        for (s, b) in boxes.iter().enumerate() {
            let gate = rng.uniform_at((s as u64) << 32) < 0.5;
            assert_eq!(b.h * b.w > 0, gate, "sample {s}");
        }
        let boxed = boxes.iter().filter(|b| b.h > 0).count();
        assert!((16..=48).contains(&boxed), "{boxed} of 64 boxed at p = 0.5");
    }

    #[test]
    fn several_boxes_split_the_area() {
        // Two boxes of area 0.5/2 each, square: side round(0.5·20) = 10.
        let p = BoxParams {
            boxes: 2,
            aspect: [1.0, 1.0],
            ..CUTMIX_SEG
        };
        let boxes = draw_boxes(&Philox::new(6, 0), 5, 20, 20, &p).unwrap();
        assert_eq!(boxes.len(), 10);
        assert!(boxes.iter().all(|b| (b.h, b.w) == (10, 10)), "{boxes:?}");
    }

    #[test]
    fn partners_roll_same_and_permute() {
        let rng = Philox::new(1, 2);
        let mut p = [0i32; 5];
        draw_partners(&rng, Partner::Roll, &mut p).unwrap();
        assert_eq!(p, [1, 2, 3, 4, 0]);
        draw_partners(&rng, Partner::Same, &mut p).unwrap();
        assert_eq!(p, [0, 1, 2, 3, 4]);
        let mut seen_non_identity = false;
        for stream in 0..20 {
            let rng = Philox::new(1, stream);
            let mut p = [0i32; 7];
            draw_partners(&rng, Partner::Permute, &mut p).unwrap();
            let mut sorted = p;
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3, 4, 5, 6], "not a permutation: {p:?}");
            seen_non_identity |= p != [0, 1, 2, 3, 4, 5, 6];
            // Hand-run Fisher–Yates on the documented words.
            let mut want = [0, 1, 2, 3, 4, 5, 6];
            for i in (1..7).rev() {
                let j = word_below(rng.u32_at(PERMUTE_WORDS + i as u64), i as u64 + 1);
                want.swap(i, j as usize);
            }
            assert_eq!(p, want);
        }
        assert!(seen_non_identity);
        let mut one = [9];
        draw_partners(&rng, Partner::Roll, &mut one).unwrap();
        assert_eq!(one, [0]);
    }

    #[test]
    fn classmix_picks_half_of_the_present_classes() {
        // Sample 1's map holds classes {0, 2, 5} and 255 (ignored); sample 0's holds {1, 3}.
        let (n, h, w) = (2, 2, 4);
        #[rustfmt::skip]
        let label = [
            1, 1, 3, 3,
            3, 1, 1, 1,
            0, 2, 2, 5,
            255, 5, 0, 0,
        ];
        let partner = [1, 0];
        for stream in 0..30 {
            let rng = Philox::new(11, stream);
            for (count, k0, k1) in [(ClassCount::HalfDown, 1, 1), (ClassCount::HalfUp, 2, 1)] {
                let chosen = draw_classes(&label, &partner, n, h, w, 255, count, &rng).unwrap();
                // Sample 0 mixes from sample 1 (3 classes), sample 1 from sample 0 (2 classes).
                let (c0, c1) = (chosen.of(0), chosen.of(1));
                assert_eq!((c0.len(), c1.len()), (k0, k1), "{chosen:?}");
                assert!(c0.iter().all(|c| [0, 2, 5].contains(c)), "{c0:?}");
                assert!(c1.iter().all(|c| [1, 3].contains(c)), "{c1:?}");
                assert!(c0.windows(2).all(|p| p[0] < p[1]), "{c0:?}");
                let mut mask = [9.0; 16];
                class_mask_fwd(&label, &partner, &chosen, n, h, w, &mut mask).unwrap();
                for i in 0..8 {
                    let from1 = label[8 + i];
                    assert_eq!(mask[i] == 1.0, c0.contains(&from1), "pixel {i}");
                    assert_eq!(
                        mask[8 + i] == 1.0,
                        c1.contains(&label[i]),
                        "pixel {}",
                        8 + i
                    );
                }
                assert_eq!(mask[4], 0.0, "the ignored pixel is never mixed");
            }
        }
        // Ignore 255 is never a class even when it is all there is; k = 1 rounds down to none.
        let only_ignore = [255; 4];
        let rng = Philox::new(0, 0);
        let c = draw_classes(&only_ignore, &[0], 1, 2, 2, 255, ClassCount::HalfUp, &rng).unwrap();
        assert_eq!(c.of(0), &[] as &[i32]);
        let one = [7, 7, 255, 7];
        let c = draw_classes(&one, &[0], 1, 2, 2, 255, ClassCount::HalfDown, &rng).unwrap();
        assert!(c.of(0).is_empty());
        let c = draw_classes(&one, &[0], 1, 2, 2, 255, ClassCount::HalfUp, &rng).unwrap();
        assert_eq!(c.of(0), &[7]);
    }

    #[test]
    fn classmix_subsets_are_uniform() {
        // 4 classes, 2 chosen: each of the 6 pairs about 1/6 of the time.
        let label = [0, 1, 2, 3];
        let mut counts = std::collections::BTreeMap::new();
        for stream in 0..3000 {
            let rng = Philox::new(12, stream);
            let c = draw_classes(&label, &[0], 1, 1, 4, 255, ClassCount::HalfDown, &rng).unwrap();
            *counts.entry(c.of(0).to_vec()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 6, "{counts:?}");
        assert!(
            counts.values().all(|&k| (400..600).contains(&k)),
            "{counts:?}"
        );
    }

    #[test]
    fn mix_is_hand_computed() {
        // N = 2, C = 2, H·W = 2; mask [[0, 1], [1, 0]]; partner roll = [1, 0].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let b = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0];
        let mask = [0.0, 1.0, 1.0, 0.0];
        let s = Nchw::new(2, 2, 1, 2);
        let mut out = [0.0; 8];
        mix_fwd(&a, &a, &mask, &[1, 0], s, &mut out).unwrap();
        assert_eq!(out, [1.0, 6.0, 3.0, 8.0, 1.0, 6.0, 3.0, 8.0]);
        mix_fwd(&a, &b, &mask, &[1, 0], s, &mut out).unwrap();
        assert_eq!(out, [1.0, 60.0, 3.0, 80.0, 10.0, 6.0, 30.0, 8.0]);
        // Partner `same` with b: CutMix-Seg's two-batch form.
        mix_fwd(&a, &b, &mask, &[0, 1], s, &mut out).unwrap();
        assert_eq!(out, [1.0, 20.0, 3.0, 40.0, 50.0, 6.0, 70.0, 8.0]);
        // [N, H, W] (C = 1), both samples taking from sample 1.
        let mut out = [0.0; 4];
        mix_fwd(
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 2.0, 3.0, 4.0],
            &mask,
            &[1, 1],
            Nchw::new(2, 1, 1, 2),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [1.0, 4.0, 3.0, 4.0]);
        // Labels: the partner's where m ≥ 0.5.
        let la = [0, 1, 2, 3];
        let lb = [10, 11, 12, 13];
        let mut lo = [0; 4];
        let soft = [0.49, 0.5, 1.0, 0.0];
        mix_labels_fwd(&la, &lb, &soft, &[1, 0], Nchw::new(2, 1, 1, 2), &mut lo).unwrap();
        assert_eq!(lo, [0, 13, 10, 3]);
        mix_labels_fwd(&la, &la, &soft, &[1, 0], Nchw::new(2, 1, 1, 2), &mut lo).unwrap();
        assert_eq!(lo, [0, 3, 0, 3]);
        let e = mix_fwd(&a, &a, &mask, &[2, 0], s, &mut [0.0; 8]).unwrap_err();
        assert!(
            e.to_string().contains("partner[0] = 2 is outside [0, 2)"),
            "{e}"
        );
    }

    #[test]
    fn mix_bwd_is_hand_computed_with_shared_partners() {
        // N = 3, C = 1, H·W = 2; every sample takes from sample 2 where m = 1.
        let dout = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mask = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
        let partner = [2, 2, 2];
        let s = Nchw::new(3, 1, 1, 2);
        let mut da = [9.0; 6];
        mix_bwd(&dout, &mask, &partner, s, MixSource::A, Some(&mut da), None).unwrap();
        // Own shares (1 − m)·dout = [0, 2, 0, 0, 5, 0]; sample 2 also receives m·dout of
        // samples 0, 1 and 2: pixel 0: 1 + 3 + 0 = 4, pixel 1: 0 + 4 + 6 = 10.
        assert_eq!(da, [0.0, 2.0, 0.0, 0.0, 5.0 + 4.0, 10.0]);
        let (mut da, mut db) = ([9.0; 6], [9.0; 6]);
        mix_bwd(
            &dout,
            &mask,
            &partner,
            s,
            MixSource::B,
            Some(&mut da),
            Some(&mut db),
        )
        .unwrap();
        assert_eq!(da, [0.0, 2.0, 0.0, 0.0, 5.0, 0.0]);
        assert_eq!(db, [0.0, 0.0, 0.0, 0.0, 4.0, 10.0]);
        // Only db wanted.
        let mut db2 = [9.0; 6];
        mix_bwd(
            &dout,
            &mask,
            &partner,
            s,
            MixSource::B,
            None,
            Some(&mut db2),
        )
        .unwrap();
        assert_eq!(db2, db);
        let e = mix_bwd(
            &dout,
            &mask,
            &partner,
            s,
            MixSource::A,
            None,
            Some(&mut db2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no second batch"), "{e}");
    }

    #[test]
    fn mix_gradients_match_finite_differences() {
        let s = Nchw::new(3, 2, 3, 4);
        let mask: Vec<f64> = rand_vec(1, s.n * s.plane(), 0.0, 1.0)
            .into_iter()
            .map(|u| if u < 0.5 { 1.0 } else { 0.0 })
            .collect();
        let a = rand_vec(2, s.len(), -1.0, 1.0);
        let b = rand_vec(3, s.len(), -1.0, 1.0);
        for partner in [[1, 2, 0], [2, 2, 0], [0, 0, 0]] {
            gradcheck(
                &format!("mix within a batch, partner {partner:?}"),
                std::slice::from_ref(&a),
                |i| {
                    let mut out = vec![0.0; s.len()];
                    mix_fwd(&i[0], &i[0], &mask, &partner, s, &mut out).unwrap();
                    out
                },
                |_, dy| {
                    let mut da = vec![0.0; s.len()];
                    mix_bwd(dy, &mask, &partner, s, MixSource::A, Some(&mut da), None).unwrap();
                    vec![da]
                },
            );
            gradcheck(
                &format!("mix of two batches, partner {partner:?}"),
                &[a.clone(), b.clone()],
                |i| {
                    let mut out = vec![0.0; s.len()];
                    mix_fwd(&i[0], &i[1], &mask, &partner, s, &mut out).unwrap();
                    out
                },
                |_, dy| {
                    let (mut da, mut db) = (vec![0.0; s.len()], vec![0.0; s.len()]);
                    mix_bwd(
                        dy,
                        &mask,
                        &partner,
                        s,
                        MixSource::B,
                        Some(&mut da),
                        Some(&mut db),
                    )
                    .unwrap();
                    vec![da, db]
                },
            );
        }
    }

    #[test]
    fn draws_are_deterministic_per_stream() {
        let p = BoxParams {
            area: Area::Uniform { lo: 0.02, hi: 0.4 },
            p: 0.5,
            ..CUTMIX_SEG
        };
        let a = draw_boxes(&Philox::new(1, 7), 8, 33, 47, &p).unwrap();
        assert_eq!(a, draw_boxes(&Philox::new(1, 7), 8, 33, 47, &p).unwrap());
        assert_ne!(a, draw_boxes(&Philox::new(1, 8), 8, 33, 47, &p).unwrap());
        assert_ne!(a, draw_boxes(&Philox::new(2, 7), 8, 33, 47, &p).unwrap());
        // Counter-based: sample s's boxes do not depend on how many samples are drawn.
        let longer = draw_boxes(&Philox::new(1, 7), 12, 33, 47, &p).unwrap();
        assert_eq!(&longer[..8], &a[..]);
    }

    #[test]
    fn bad_params_are_errors() {
        let rng = Philox::new(0, 0);
        let bad = [
            (
                BoxParams {
                    boxes: 0,
                    ..CUTMIX_SEG
                },
                "boxes must be in",
            ),
            (
                BoxParams {
                    area: Area::Fixed(1.5),
                    ..CUTMIX_SEG
                },
                "area must be in [0, 1]",
            ),
            (
                BoxParams {
                    area: Area::Uniform { lo: 0.4, hi: 0.1 },
                    ..CUTMIX_SEG
                },
                "0 <= lo <= hi <= 1",
            ),
            (
                BoxParams {
                    area: Area::Beta { alpha: 0, beta: 2 },
                    ..CUTMIX_SEG
                },
                "Beta(0, 2)",
            ),
            (
                BoxParams {
                    aspect: [0.0, 1.0],
                    ..CUTMIX_SEG
                },
                "aspect range",
            ),
            (
                BoxParams {
                    aspect: [2.0, 1.0],
                    ..CUTMIX_SEG
                },
                "aspect range",
            ),
            (
                BoxParams {
                    p: f32::NAN,
                    ..CUTMIX_SEG
                },
                "p must be in [0, 1]",
            ),
        ];
        for (p, want) in bad {
            let e = draw_boxes(&rng, 2, 8, 8, &p).unwrap_err();
            assert!(e.to_string().contains(want), "{p:?}: {e}");
        }
        let e = draw_classes(&[0; 4], &[1], 1, 2, 2, 255, ClassCount::HalfUp, &rng).unwrap_err();
        assert!(e.to_string().contains("partner[0] = 1"), "{e}");
        let bad_choice = ClassChoice {
            classes: vec![1],
            starts: vec![0, 2],
        };
        let e = class_mask_fwd(&[0; 4], &[0], &bad_choice, 1, 2, 2, &mut [0.0; 4]).unwrap_err();
        assert!(e.to_string().contains("must rise from 0 to 1"), "{e}");
    }
}
