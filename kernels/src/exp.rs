//! e^x over a slice of f32, written so the compiler vectorises it: the libm `expf` that
//! `f32::exp` calls is one opaque call per element, which keeps the softmax inside the pixel
//! losses scalar (the cross-entropy pair was 3.6× PyTorch's vectorised one).
//!
//! Method (Cephes' `expf`): x = n·ln 2 + r with n = round(x·log₂e) and |r| ≤ ln 2 / 2; e^r from
//! a degree-5 minimax polynomial; 2ⁿ built from exponent bits, in two halves so results down in
//! the subnormal range round correctly. Branch-free (selects), no fused multiply-add, so every
//! target — SSE2 to AVX-512 (picked at run time), vectorised or not — gives the same bits.
//! Error against the exact e^x: under 1 ulp (0.97 at worst over a dense sweep of the whole
//! range, tested below against f64; libm's `expf` is correctly rounded, so the two differ in the
//! last bit now and then); e^0 = 1 exactly.
//! Edges: x < ln 2⁻¹⁵⁰ gives 0, x > ln(f32::MAX) gives +∞, −∞ gives 0, NaN stays NaN.
//!
//! Hand-written on purpose, not taken from a math crate: the same bits on every CPU target are
//! what lets a CUDA twin (same polynomial, `--fmad=false`) reproduce the CPU's losses.
//!
//! Not here: other functions (ln stays libm's), an f64 version (the f64 gradchecks use
//! `f64::exp`, see `Real::exp_in_place`).

/// log₂ e.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two: `LN2_HI` has few significant bits, so n·LN2_HI is exact for |n| ≤ 150.
const LN2_HI: f32 = 0.693_359_4;
/// ln 2 − `LN2_HI`.
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding it rounds a float of magnitude < 2²² to an integer (ties to even), which then
/// sits in the low mantissa bits (`ROUND_BITS` + n).
const ROUND: f32 = 12_582_912.0;
/// Bits of `ROUND`.
const ROUND_BITS: i32 = 0x4B40_0000;
/// Below ln 2⁻¹⁵⁰ the result rounds to 0.
const LO: f32 = -103.972_08;
/// Above ln(f32::MAX) the result is +∞.
const HI: f32 = 88.722_84;

/// Replaces every element x of `v` by e^x (see the module header for the accuracy). On x86-64
/// the loop is compiled three times — AVX-512, AVX2 and the SSE2 baseline — and the widest one
/// the CPU has runs; they give the same bits (no FMA, the same operations per element).
pub fn exp_f32_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked on the line above).
            unsafe { exp_loop_avx512(v) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked on the line above).
            unsafe { exp_loop_avx2(v) };
            return;
        }
    }
    exp_loop(v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_loop_avx512(v: &mut [f32]) {
    exp_loop(v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_loop_avx2(v: &mut [f32]) {
    exp_loop(v);
}

/// The loop every variant compiles.
#[inline(always)]
fn exp_loop(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = exp_f32(*x);
    }
}

/// e^x for one value; inlined into [`exp_f32_in_place`]'s loop.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // Clamped so n stays in [−150, 128]; NaN passes through as NaN.
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = (p * r) * r + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_BITS);
    let half = ni >> 1;
    let pow2 = |e: i32| f32::from_bits(((e + 127) << 23) as u32);
    let y = er * pow2(half) * pow2(ni - half);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between an f32 and the exact value (as f64).
    fn ulps(got: f32, exact: f64) -> f64 {
        let rounded = exact as f32;
        let ulp = if rounded == 0.0 || !rounded.is_normal() {
            f64::from(f32::from_bits(1)) // subnormal spacing
        } else {
            let next = f32::from_bits(rounded.abs().to_bits() + 1);
            f64::from(next) - f64::from(rounded.abs())
        };
        (f64::from(got) - exact).abs() / ulp
    }

    #[test]
    fn matches_the_exact_exponential_within_one_ulp() {
        // A dense sweep of the whole finite range, plus the softmax range [−20, 0] denser.
        let mut xs: Vec<f32> = (0..400_000)
            .map(|i| LO + (HI - LO) * i as f32 / 400_000.0)
            .collect();
        xs.extend((0..200_000).map(|i| -20.0 * i as f32 / 200_000.0));
        let mut ys = xs.clone();
        exp_f32_in_place(&mut ys);
        let mut worst = (0.0, 0.0f32);
        for (&x, &y) in xs.iter().zip(&ys) {
            let u = ulps(y, f64::from(x).exp());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 1.0, "{} ulp at x = {}", worst.0, worst.1);
        // And it is no copy of libm: some values differ from `f32::exp` (else this file is moot).
        assert!(xs.iter().zip(&ys).any(|(x, y)| x.exp() != *y));
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let xs: Vec<f32> = (0..100_003)
            .map(|i| -110.0 + 200.0 * i as f32 / 100_003.0)
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0])
            .collect();
        let mut want = xs.clone();
        exp_loop(&mut want);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut got = xs.clone();
        exp_f32_in_place(&mut got);
        assert_eq!(bits(&got), bits(&want));
        #[cfg(target_arch = "x86_64")]
        for (name, has) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if !has {
                continue;
            }
            let mut got = xs.clone();
            // SAFETY: the CPU supports the instruction set (checked above).
            unsafe {
                if name == "avx2" {
                    exp_loop_avx2(&mut got);
                } else {
                    exp_loop_avx512(&mut got);
                }
            }
            assert_eq!(bits(&got), bits(&want), "{name}");
        }
    }

    #[test]
    fn edges() {
        let mut v = [
            0.0,
            -0.0,
            1.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -200.0,
            200.0,
            -103.0,
            88.7,
        ];
        exp_f32_in_place(&mut v);
        assert_eq!((v[0], v[1], v[3], v[4]), (1.0, 1.0, 0.0, f32::INFINITY));
        assert!(ulps(v[2], std::f64::consts::E) <= 1.0, "{}", v[2]);
        assert!(v[5].is_nan());
        assert_eq!((v[6], v[7]), (0.0, f32::INFINITY));
        // Subnormal and near-overflow results, correctly rounded to within an ulp.
        assert!(v[8] > 0.0 && !v[8].is_normal());
        assert!(ulps(v[8], (-103.0f64).exp()) <= 1.0, "{}", v[8]);
        let near_max = f64::from(88.7f32).exp();
        assert!(v[9].is_finite() && ulps(v[9], near_max) <= 1.0, "{}", v[9]);
    }
}
