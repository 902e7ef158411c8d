//! Philox4x32-10 (Salmon et al., SC'11): a counter-based RNG. Random numbers are a pure function
//! of (seed, stream, counter), so any element can be drawn independently, in any order, on any
//! device — the property that lets a CUDA kernel reproduce the CPU's augmentations bit for bit.
//!
//! Keying used throughout flowseg: `key = seed` (64 bits split into two words), counter words
//! `[block_lo, block_hi, stream_lo, stream_hi]`, where `block = element / 4` and the element
//! takes word `element % 4` of the block. The engine derives `stream` from the iteration and the node's name
//! (`flowseg_engine::graph::ExecCx::rng`).
//!
//! Conversions are written with operations that IEEE 754 rounds exactly the same way everywhere
//! (`+ - * /`, `sqrt`, and explicit `mul_add`): no libm `ln`/`cos`, which differ by an ulp
//! between CPU and CUDA. A CUDA twin must be compiled with `--fmad=false` (or use `__fmaf_rn`
//! exactly where this file calls `mul_add`) to stay bit-identical.
//!
//! Hand-written on purpose, not taken from the `rand` ecosystem: the exact counter layout and
//! conversions are a contract with the CUDA twins (`kernels/cuda/philox.cu`), which must draw
//! the same numbers bit for bit.
//!
//! Not here: stateful generators, or sequences longer than 2^66 elements per stream.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32 block with 10 rounds: the published Random123 function.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// A Philox stream: a seed and a stream id. Cheap to copy; holds no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Philox {
    key: [u32; 2],
    stream: u64,
}

impl Philox {
    /// The stream `stream` of generator `seed`.
    pub const fn new(seed: u64, stream: u64) -> Self {
        Philox {
            key: [seed as u32, (seed >> 32) as u32],
            stream,
        }
    }

    /// The seed this stream was made from (what a CUDA twin passes to its kernel).
    pub const fn seed(&self) -> u64 {
        self.key[0] as u64 | (self.key[1] as u64) << 32
    }

    /// The stream id.
    pub const fn stream(&self) -> u64 {
        self.stream
    }

    /// The 4 words of block `block`.
    #[inline]
    pub fn block(&self, block: u64) -> [u32; 4] {
        philox4x32_10(
            [
                block as u32,
                (block >> 32) as u32,
                self.stream as u32,
                (self.stream >> 32) as u32,
            ],
            self.key,
        )
    }

    /// Raw 32-bit word number `i` of the stream.
    #[inline]
    pub fn u32_at(&self, i: u64) -> u32 {
        self.block(i / 4)[(i % 4) as usize]
    }

    /// Uniform in the open interval (0, 1), 23 random bits: element `i` of the stream.
    #[inline]
    pub fn uniform_at(&self, i: u64) -> f32 {
        u32_to_uniform(self.u32_at(i))
    }

    /// True with probability `p` (uniform < p), element `i` of the stream.
    #[inline]
    pub fn bernoulli_at(&self, i: u64, p: f32) -> bool {
        self.uniform_at(i) < p
    }

    /// Standard normal, element `i` of the stream. Elements `2j` and `2j+1` are the cosine and
    /// sine halves of one Box–Muller pair drawn from words `2j`, `2j+1` of the same block.
    #[inline]
    pub fn normal_at(&self, i: u64) -> f32 {
        let b = self.block(i / 4);
        let pair = ((i % 4) / 2) as usize * 2;
        let (z0, z1) = box_muller(b[pair], b[pair + 1]);
        if i.is_multiple_of(2) {
            z0
        } else {
            z1
        }
    }

    /// `out[j] = uniform_at(offset + j)`.
    pub fn fill_uniform(&self, offset: u64, out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.uniform_at(offset + j as u64);
        }
    }

    /// `out[j] = mean + std · normal_at(offset + j)`.
    pub fn fill_normal(&self, offset: u64, mean: f32, std: f32, out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = std.mul_add(self.normal_at(offset + j as u64), mean);
        }
    }
}

/// Maps a word to (0, 1): `((x >> 9) + 0.5) · 2^-23`, 23 random bits. Every step is exact in
/// f32 (a 24-bit `(x >> 8) + 0.5` would round up to 2^24 and reach 1.0).
#[inline(always)]
pub fn u32_to_uniform(x: u32) -> f32 {
    ((x >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Box–Muller on two words: `r = sqrt(-2 ln u1)`, returns `(r cos 2πu2, r sin 2πu2)`.
#[inline]
pub fn box_muller(a: u32, b: u32) -> (f32, f32) {
    let u1 = u32_to_uniform(a);
    let u2 = u32_to_uniform(b);
    let r = (-2.0 * ln_portable(u1)).sqrt();
    let (s, c) = sincos_2pi_portable(u2);
    (r * c, r * s)
}

/// Natural log for finite x > 0, to about 1 ulp of f32, using only exactly-rounded operations.
/// x = m · 2^e with m in [√½, √2); ln m = 2·atanh(s), s = (m−1)/(m+1), |s| ≤ 0.172.
#[inline]
pub fn ln_portable(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // atanh(s)/s = 1 + s²/3 + s⁴/5 + …; truncation error < 0.172^12/13 ≈ 5e-11.
    let mut p = 1.0 / 11.0f32;
    p = p.mul_add(s2, 1.0 / 9.0);
    p = p.mul_add(s2, 1.0 / 7.0);
    p = p.mul_add(s2, 1.0 / 5.0);
    p = p.mul_add(s2, 1.0 / 3.0);
    p = p.mul_add(s2, 1.0);
    let ln_m = 2.0 * s * p;
    (e as f32).mul_add(std::f32::consts::LN_2, ln_m)
}

/// (sin 2πu, cos 2πu) for u in [0, 1), using only exactly-rounded operations: the quadrant comes
/// from 4u, the remainder angle φ in [0, π/2) from Taylor series to φ¹³ (error < 1e-9).
#[inline]
pub fn sincos_2pi_portable(u: f32) -> (f32, f32) {
    let t = u * 4.0; // exact
    let q = t.floor();
    let phi = (t - q) * std::f32::consts::FRAC_PI_2;
    let p2 = phi * phi;
    let mut s = 1.0 / 6_227_020_800.0f32; // 1/13!
    s = s.mul_add(p2, -1.0 / 39_916_800.0);
    s = s.mul_add(p2, 1.0 / 362_880.0);
    s = s.mul_add(p2, -1.0 / 5040.0);
    s = s.mul_add(p2, 1.0 / 120.0);
    s = s.mul_add(p2, -1.0 / 6.0);
    s = s.mul_add(p2, 1.0);
    let sin_phi = phi * s;
    let mut c = 1.0 / 479_001_600.0f32; // 1/12!
    c = c.mul_add(p2, -1.0 / 3_628_800.0);
    c = c.mul_add(p2, 1.0 / 40_320.0);
    c = c.mul_add(p2, -1.0 / 720.0);
    c = c.mul_add(p2, 1.0 / 24.0);
    c = c.mul_add(p2, -0.5);
    c = c.mul_add(p2, 1.0);
    let cos_phi = c;
    match q as u32 & 3 {
        0 => (sin_phi, cos_phi),
        1 => (cos_phi, -sin_phi),
        2 => (-sin_phi, -cos_phi),
        _ => (-cos_phi, sin_phi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors).
    #[test]
    fn known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn keying_layout_is_the_documented_one() {
        let seed = 0x0123_4567_89ab_cdef_u64;
        let g = Philox::new(seed, 0x1111_2222_3333_4444);
        let want = philox4x32_10([7, 0, 0x3333_4444, 0x1111_2222], [0x89ab_cdef, 0x0123_4567]);
        for w in 0..4 {
            assert_eq!(g.u32_at(7 * 4 + w), want[w as usize]);
        }
        assert_eq!((g.seed(), g.stream()), (seed, 0x1111_2222_3333_4444));
        let rebuilt = Philox::new(g.seed(), g.stream());
        assert_eq!(rebuilt, g);
    }

    #[test]
    fn streams_and_seeds_differ_and_repeat() {
        let a = Philox::new(1, 0);
        let mut x = [0f32; 64];
        let mut y = [0f32; 64];
        a.fill_uniform(0, &mut x);
        a.fill_uniform(0, &mut y);
        assert_eq!(x, y);
        Philox::new(1, 1).fill_uniform(0, &mut y);
        assert_ne!(x, y);
        Philox::new(2, 0).fill_uniform(0, &mut y);
        assert_ne!(x, y);
        // Counter-based: an offset window equals the tail of a longer draw.
        let mut z = [0f32; 10];
        a.fill_uniform(54, &mut z);
        assert_eq!(&x[54..], &z[..]);
    }

    #[test]
    fn uniform_is_open_and_has_uniform_moments() {
        assert!(u32_to_uniform(0) > 0.0);
        assert!(u32_to_uniform(u32::MAX) < 1.0);
        let g = Philox::new(42, 3);
        let n = 200_000;
        let (mut s, mut s2) = (0f64, 0f64);
        for i in 0..n {
            let u = g.uniform_at(i) as f64;
            assert!(u > 0.0 && u < 1.0);
            s += u;
            s2 += u * u;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "var {var}");
    }

    #[test]
    fn bernoulli_frequency_matches_p() {
        let g = Philox::new(9, 9);
        let hits = (0..100_000).filter(|&i| g.bernoulli_at(i, 0.3)).count();
        assert!((hits as f64 / 1e5 - 0.3).abs() < 0.01, "{hits}");
    }

    #[test]
    fn normal_has_standard_moments() {
        let g = Philox::new(5, 0);
        let n = 200_000u64;
        let mut m = [0f64; 4];
        for i in 0..n {
            let z = g.normal_at(i) as f64;
            assert!(z.is_finite());
            m[0] += z;
            m[1] += z * z;
            m[2] += z * z * z;
            m[3] += z * z * z * z;
        }
        let mean = m[0] / n as f64;
        let var = m[1] / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
        assert!((m[2] / n as f64).abs() < 0.03, "skew");
        assert!((m[3] / n as f64 - 3.0).abs() < 0.06, "kurtosis");
    }

    #[test]
    fn portable_transcendentals_match_libm() {
        let mut worst_ln = 0f64;
        let mut worst_trig = 0f64;
        for k in 0..100_000u32 {
            let u = u32_to_uniform(k.wrapping_mul(2_654_435_761));
            let l = ln_portable(u) as f64;
            let want = (u as f64).ln();
            worst_ln = worst_ln.max((l - want).abs() / want.abs().max(1e-3));
            let (s, c) = sincos_2pi_portable(u);
            let a = 2.0 * std::f64::consts::PI * u as f64;
            worst_trig = worst_trig
                .max((s as f64 - a.sin()).abs())
                .max((c as f64 - a.cos()).abs());
        }
        assert!(worst_ln < 1e-6, "ln rel err {worst_ln}");
        assert!(worst_trig < 1e-6, "sincos abs err {worst_trig}");
    }
}
