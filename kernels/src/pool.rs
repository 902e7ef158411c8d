//! 2-d pooling over each (n, c) plane, forward and backward: max and global average.
//! PyTorch equivalents: `torch.nn.functional.max_pool2d` (dilation 1, return_indices=True,
//! ceil_mode=False) and `adaptive_avg_pool2d(x, 1)` for the global average.
//!
//! Window geometry ([`Pool2d`]): output (oy, ox) covers input rows oy·sh − ph … oy·sh − ph + kh − 1
//! and the columns likewise; Ho = ⌊(H + 2·ph − kh)/sh⌋ + 1, Wo alike. PyTorch's limits apply
//! (ph ≤ kh/2, pw ≤ kw/2, Ho, Wo ≥ 1) and under them every window overlaps the real input: the
//! first starts at −ph > −kh and the last starts at most at H + ph − kh < H. So no window is
//! all padding and a max always has a real winner.
//!
//! * max: y = max of the window with padding as −∞. `argmax` holds the winner's flat index
//!   iy·W + ix in its input plane (PyTorch's return_indices convention). Ties keep the first in
//!   row-major window order; a NaN wins, as in PyTorch, so it propagates. Backward: dx[argmax]
//!   += dy, summing where windows overlap.
//! * global avg: y[n, c] = mean of the H·W plane; backward broadcasts dy/(H·W).
//!
//! Sums accumulate in f64. Planes are independent and are spread over rayon's pool.
//!
//! Not here: windowed average pooling (`avg_pool2d`: no op uses it), ceil_mode=True, dilation,
//! 1-d and 3-d pooling, adaptive pooling to sizes other than 1×1, max_unpool.

use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;

/// Window of a 2-d pooling: extent, stride and zero/−∞ padding on each side, per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    /// Window height.
    pub kh: usize,
    /// Window width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Padding above and below, at most kh/2.
    pub ph: usize,
    /// Padding left and right, at most kw/2.
    pub pw: usize,
}

/// One axis of one window: the real input cells [lo, hi).
#[derive(Debug, Clone, Copy)]
struct Span {
    lo: usize,
    hi: usize,
}

/// Span of output index `o` on an axis of input length `len`, window `k`, stride `s`, pad `p`.
/// Works in padded coordinates, where the real input is [p, p + len), so nothing goes negative;
/// the geometry checks guarantee the window meets the real input.
fn span(o: usize, k: usize, s: usize, p: usize, len: usize) -> Span {
    let start = o * s;
    let end = (start + k).min(len + 2 * p);
    Span {
        lo: start.saturating_sub(p),
        hi: (end - p).min(len),
    }
}

impl Pool2d {
    /// Square window: kernel `k`, stride `s`, padding `p` on both axes.
    pub const fn square(k: usize, s: usize, p: usize) -> Self {
        Pool2d {
            kh: k,
            kw: k,
            sh: s,
            sw: s,
            ph: p,
            pw: p,
        }
    }

    /// Output extent (Ho, Wo) for an H×W input: Ho = ⌊(H + 2·ph − kh)/sh⌋ + 1, Wo alike.
    /// Errors on a zero kernel or stride, padding over half the kernel, an empty input plane or
    /// an input smaller than the window even with padding — the cases PyTorch refuses.
    pub fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), KernelError> {
        self.geometry("Pool2d::out_hw", h, w)
    }

    fn geometry(
        &self,
        kernel: &'static str,
        h: usize,
        w: usize,
    ) -> Result<(usize, usize), KernelError> {
        let fail = |reason: String| Err(KernelError::Shape { kernel, reason });
        if self.kh == 0 || self.kw == 0 || self.sh == 0 || self.sw == 0 {
            return fail(format!("kernel and stride must be positive, got {self:?}"));
        }
        if self.ph > self.kh / 2 || self.pw > self.kw / 2 {
            return fail(format!(
                "padding must be at most half the kernel, got {self:?}"
            ));
        }
        if h == 0 || w == 0 {
            return fail(format!("empty input plane {h}×{w}"));
        }
        if h + 2 * self.ph < self.kh || w + 2 * self.pw < self.kw {
            return fail(format!(
                "input {h}×{w} padded by ({}, {}) is smaller than the {}×{} window: \
                 output would be empty",
                self.ph, self.pw, self.kh, self.kw
            ));
        }
        Ok((
            (h + 2 * self.ph - self.kh) / self.sh + 1,
            (w + 2 * self.pw - self.kw) / self.sw + 1,
        ))
    }

    fn rows(&self, oy: usize, h: usize) -> Span {
        span(oy, self.kh, self.sh, self.ph, h)
    }

    fn cols(&self, ox: usize, w: usize) -> Span {
        span(ox, self.kw, self.sw, self.pw, w)
    }
}

/// Max pooling forward; records each output's winner for the backward.
///
/// Shapes: x [N,C,H,W] (`s`); y, argmax [N,C,Ho,Wo] with (Ho, Wo) = `p.out_hw(H, W)`; argmax
/// entries are iy·W + ix within the input plane. Errors on bad geometry (see
/// [`Pool2d::out_hw`]), a plane too large for u32 indices, or a length mismatch.
pub fn max_pool2d_fwd<T: Real>(
    x: &[T],
    s: Nchw,
    p: Pool2d,
    y: &mut [T],
    argmax: &mut [u32],
) -> Result<(), KernelError> {
    const K: &str = "max_pool2d_fwd";
    let (ho, wo) = p.geometry(K, s.h, s.w)?;
    plane_fits_u32(K, s)?;
    let out = s.n * s.c * ho * wo;
    check_len(K, "x", x, s.len())?;
    check_len(K, "y", y, out)?;
    check_len(K, "argmax", argmax, out)?;
    // The U-Net's 2×2 stride-2 pooling: the same comparisons in the same order, without the
    // per-window span arithmetic (measured ~8× faster on [8, 16, 64, 64]).
    let pairs = p.kh == 2 && p.kw == 2 && p.sh == 2 && p.sw == 2 && p.ph == 0 && p.pw == 0;
    x.par_chunks(s.plane())
        .zip(
            y.par_chunks_mut(ho * wo)
                .zip(argmax.par_chunks_mut(ho * wo)),
        )
        .for_each(|(xp, (yp, ap))| {
            if pairs {
                max_pool_2x2(xp, s.w, ho, wo, yp, ap);
                return;
            }
            for oy in 0..ho {
                let r = p.rows(oy, s.h);
                for ox in 0..wo {
                    let c = p.cols(ox, s.w);
                    let mut best = T::neg_infinity();
                    let mut at = r.lo * s.w + c.lo;
                    for iy in r.lo..r.hi {
                        for ix in c.lo..c.hi {
                            let v = xp[iy * s.w + ix];
                            // Strict `>` keeps the first of ties; NaN replaces anything (PyTorch).
                            if v > best || v.is_nan() {
                                best = v;
                                at = iy * s.w + ix;
                            }
                        }
                    }
                    yp[oy * wo + ox] = best;
                    ap[oy * wo + ox] = at as u32;
                }
            }
        });
    Ok(())
}

/// One plane of 2×2 stride-2 max pooling without padding: `xp` [H, W] (H ≥ 2·ho, W ≥ 2·wo),
/// `yp`, `ap` [ho, wo]. The general loop's rule, window in row-major order: a strictly larger
/// value or a NaN takes over, so ties keep the first and the last NaN wins.
fn max_pool_2x2<T: Real>(xp: &[T], w: usize, ho: usize, wo: usize, yp: &mut [T], ap: &mut [u32]) {
    for oy in 0..ho {
        let (r0, r1) = (2 * oy * w, (2 * oy + 1) * w);
        let (top, bottom) = (&xp[r0..r0 + 2 * wo], &xp[r1..r1 + 2 * wo]);
        let (yr, ar) = (
            &mut yp[oy * wo..(oy + 1) * wo],
            &mut ap[oy * wo..(oy + 1) * wo],
        );
        for ox in 0..wo {
            let c = 2 * ox;
            let mut best = T::neg_infinity();
            let mut at = r0 + c;
            for (v, i) in [
                (top[c], r0 + c),
                (top[c + 1], r0 + c + 1),
                (bottom[c], r1 + c),
                (bottom[c + 1], r1 + c + 1),
            ] {
                if v > best || v.is_nan() {
                    best = v;
                    at = i;
                }
            }
            yr[ox] = best;
            ar[ox] = at as u32;
        }
    }
}

/// Max pooling backward: dx = 0, then dx[argmax] += dy per output. Overwrites dx.
///
/// Shapes: dy, argmax [N,C,Ho,Wo] as in [`max_pool2d_fwd`]; dx [N,C,H,W] (`s`). Errors on bad
/// geometry, a length mismatch or an argmax entry outside the H·W plane (checked before any
/// write).
pub fn max_pool2d_bwd<T: Real>(
    dy: &[T],
    argmax: &[u32],
    s: Nchw,
    p: Pool2d,
    dx: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "max_pool2d_bwd";
    let (ho, wo) = p.geometry(K, s.h, s.w)?;
    plane_fits_u32(K, s)?;
    let out = s.n * s.c * ho * wo;
    check_len(K, "dy", dy, out)?;
    check_len(K, "argmax", argmax, out)?;
    check_len(K, "dx", dx, s.len())?;
    let plane = s.plane();
    if let Some((i, &a)) = argmax
        .iter()
        .enumerate()
        .find(|(_, &a)| a as usize >= plane)
    {
        return Err(KernelError::Shape {
            kernel: K,
            reason: format!(
                "argmax[{i}] = {a} is outside the {}×{} input plane",
                s.h, s.w
            ),
        });
    }
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(ho * wo).zip(argmax.par_chunks(ho * wo)))
        .for_each(|(dxp, (dyp, ap))| {
            dxp.fill(T::zero());
            for (&g, &a) in dyp.iter().zip(ap) {
                dxp[a as usize] += g;
            }
        });
    Ok(())
}

/// Global average pooling forward: y[n, c] = Σ plane / (H·W), summed in f64.
///
/// Shapes: x [N,C,H,W] (`s`); y [N,C] (that is [N,C,1,1]). Errors on an empty plane or a length
/// mismatch.
pub fn global_avg_pool_fwd<T: Real>(x: &[T], s: Nchw, y: &mut [T]) -> Result<(), KernelError> {
    const K: &str = "global_avg_pool_fwd";
    nonempty_plane(K, s)?;
    check_len(K, "x", x, s.len())?;
    check_len(K, "y", y, s.n * s.c)?;
    let area = s.plane() as f64;
    x.par_chunks(s.plane())
        .zip(y.par_iter_mut())
        .for_each(|(xp, o)| *o = T::of(xp.iter().map(|v| v.f64()).sum::<f64>() / area));
    Ok(())
}

/// Global average pooling backward: dx[n, c, ·, ·] = dy[n, c] / (H·W). Overwrites dx.
///
/// Shapes: dy [N,C]; dx [N,C,H,W] (`s`). Errors on an empty plane or a length mismatch.
pub fn global_avg_pool_bwd<T: Real>(dy: &[T], s: Nchw, dx: &mut [T]) -> Result<(), KernelError> {
    const K: &str = "global_avg_pool_bwd";
    nonempty_plane(K, s)?;
    check_len(K, "dy", dy, s.n * s.c)?;
    check_len(K, "dx", dx, s.len())?;
    let area = s.plane() as f64;
    dx.par_chunks_mut(s.plane())
        .zip(dy.par_iter())
        .for_each(|(dxp, &g)| dxp.fill(T::of(g.f64() / area)));
    Ok(())
}

/// argmax is u32: refuse planes whose indices it cannot hold.
fn plane_fits_u32(kernel: &'static str, s: Nchw) -> Result<(), KernelError> {
    if s.plane() > u32::MAX as usize {
        return Err(KernelError::Shape {
            kernel,
            reason: format!("a {}×{} plane overflows u32 argmax indices", s.h, s.w),
        });
    }
    Ok(())
}

fn nonempty_plane(kernel: &'static str, s: Nchw) -> Result<(), KernelError> {
    if s.plane() == 0 {
        return Err(KernelError::Shape {
            kernel,
            reason: format!("empty input plane {}×{}", s.h, s.w),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gradcheck, rand_vec};

    fn max_fwd(s: Nchw, p: Pool2d, x: &[f64]) -> (Vec<f64>, Vec<u32>) {
        let (ho, wo) = p.out_hw(s.h, s.w).unwrap();
        let mut y = vec![0.0; s.n * s.c * ho * wo];
        let mut a = vec![0u32; y.len()];
        max_pool2d_fwd(x, s, p, &mut y, &mut a).unwrap();
        (y, a)
    }

    /// 1, 2, …, n.
    fn ramp(n: usize) -> Vec<f64> {
        (1..=n).map(|v| v as f64).collect()
    }

    /// The 2×2 stride-2 fast path against the rule written out: odd planes (the last row and
    /// column unpooled), ties, −∞ windows and NaNs (the last NaN of a window wins).
    #[test]
    fn pairs_fast_path_matches_the_rule() {
        let (h, w) = (7usize, 9usize);
        let s = Nchw::new(2, 3, h, w);
        let mut x: Vec<f32> = (0..s.len()).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        for (i, v) in [
            (0, f32::NAN),
            (10, f32::NAN),
            (1, f32::NAN),
            (70, f32::NEG_INFINITY),
        ] {
            x[i] = v;
        }
        for i in [63 + 20, 63 + 21, 63 + 29, 63 + 30] {
            x[i] = f32::NEG_INFINITY;
        }
        let (ho, wo) = (3, 4);
        let mut y = vec![0f32; s.n * s.c * ho * wo];
        let mut a = vec![0u32; y.len()];
        max_pool2d_fwd(&x, s, Pool2d::square(2, 2, 0), &mut y, &mut a).unwrap();
        for plane in 0..s.n * s.c {
            let xp = &x[plane * h * w..(plane + 1) * h * w];
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut best, mut at) = (f32::NEG_INFINITY, 2 * oy * w + 2 * ox);
                    for iy in 2 * oy..2 * oy + 2 {
                        for ix in 2 * ox..2 * ox + 2 {
                            let v = xp[iy * w + ix];
                            if v > best || v.is_nan() {
                                (best, at) = (v, iy * w + ix);
                            }
                        }
                    }
                    let o = plane * ho * wo + oy * wo + ox;
                    assert_eq!(y[o].to_bits(), best.to_bits(), "plane {plane} ({oy}, {ox})");
                    assert_eq!(a[o] as usize, at, "plane {plane} ({oy}, {ox})");
                }
            }
        }
    }

    #[test]
    fn out_hw_follows_the_floor_formula() {
        // (7 + 2 − 3)/2 + 1 = 4 rows, (5 + 2 − 3)/2 + 1 = 3 columns.
        assert_eq!(Pool2d::square(3, 2, 1).out_hw(7, 5), Ok((4, 3)));
        // (4 − 2)/2 + 1 = 2; the window exactly fits: 1.
        assert_eq!(Pool2d::square(2, 2, 0).out_hw(4, 4), Ok((2, 2)));
        assert_eq!(Pool2d::square(3, 1, 0).out_hw(3, 3), Ok((1, 1)));
        // Non-square: rows (6 + 0 − 2)/2 + 1 = 3, columns (5 + 2 − 3)/1 + 1 = 5.
        let p = Pool2d {
            kh: 2,
            kw: 3,
            sh: 2,
            sw: 1,
            ph: 0,
            pw: 1,
        };
        assert_eq!(p.out_hw(6, 5), Ok((3, 5)));
    }

    #[test]
    fn hand_computed_4x4_to_2x2() {
        // Plane (row-major):
        //   3  1 | 0  2
        //   4  0 | 7  7
        //   -----+-----
        //  -1 -5 | 8  6
        //  -2 -1 | 9  6
        // Ties: the top-right window's 7s at flat 6 and 7 → the first, 6; the bottom-left
        // window's −1s at 8 and 13 → 8.
        let s = Nchw::new(1, 1, 4, 4);
        let x = [
            3.0, 1.0, 0.0, 2.0, 4.0, 0.0, 7.0, 7.0, -1.0, -5.0, 8.0, 6.0, -2.0, -1.0, 9.0, 6.0,
        ];
        let p = Pool2d::square(2, 2, 0);
        let (y, a) = max_fwd(s, p, &x);
        assert_eq!(y, [4.0, 7.0, -1.0, 9.0]);
        assert_eq!(a, [4, 6, 8, 14]);

        // Backward: max sends each dy to its argmax.
        let dy = [1.0, 2.0, 3.0, 4.0];
        let mut dx = vec![9.0; 16];
        max_pool2d_bwd(&dy, &a, s, p, &mut dx).unwrap();
        let mut want = [0.0; 16];
        for (&g, &i) in dy.iter().zip(&a) {
            want[i as usize] = g;
        }
        assert_eq!(dx, want);

        // The f32 instance on the same case.
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let (mut y32, mut a32) = ([0f32; 4], [0u32; 4]);
        max_pool2d_fwd(&x32, s, p, &mut y32, &mut a32).unwrap();
        assert_eq!((y32, a32), ([4.0, 7.0, -1.0, 9.0], [4, 6, 8, 14]));
    }

    #[test]
    fn hand_computed_padding() {
        // 3×3 plane 1..9, k=3, s=1, p=1 → 3×3 output.
        //   1 2 3
        //   4 5 6
        //   7 8 9
        let s = Nchw::new(1, 1, 3, 3);
        let p = Pool2d::square(3, 1, 1);
        let x = ramp(9);
        // Max with all-negative input: padding must act as −∞, not 0.
        let neg: Vec<f64> = x.iter().map(|v| -v).collect();
        let (y, a) = max_fwd(s, p, &neg);
        assert_eq!(y, [-1.0, -1.0, -2.0, -1.0, -1.0, -2.0, -4.0, -4.0, -5.0]);
        assert_eq!(a, [0, 0, 1, 0, 0, 1, 3, 3, 4]);
    }

    #[test]
    fn hand_computed_global_average() {
        // Two planes of 2×3: mean(1..6) = 3.5, mean(7..12) = 9.5.
        let s = Nchw::new(2, 1, 2, 3);
        let mut y = [0.0; 2];
        global_avg_pool_fwd(&ramp(12), s, &mut y).unwrap();
        assert_eq!(y, [3.5, 9.5]);
        let mut dx = vec![9.0; 12];
        global_avg_pool_bwd(&[6.0, -12.0], s, &mut dx).unwrap();
        let want: Vec<f64> = (0..12).map(|i| if i < 6 { 1.0 } else { -2.0 }).collect();
        assert_eq!(dx, want);
    }

    /// Oracle for odd shapes: materializes the padded plane (a mask of real cells) and scans
    /// full kh×kw windows, independently of `span`.
    fn naive(s: Nchw, p: Pool2d, x: &[f64]) -> (Vec<f64>, Vec<u32>) {
        let (ho, wo) = p.out_hw(s.h, s.w).unwrap();
        let (hp, wp) = (s.h + 2 * p.ph, s.w + 2 * p.pw);
        let (mut mx, mut am) = (vec![], vec![]);
        for plane in x.chunks(s.plane()) {
            let mut padded = vec![None; hp * wp];
            for i in 0..s.h {
                for j in 0..s.w {
                    padded[(i + p.ph) * wp + j + p.pw] = Some((plane[i * s.w + j], i * s.w + j));
                }
            }
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut best, mut at) = (f64::NEG_INFINITY, 0);
                    for dy in 0..p.kh {
                        for dx in 0..p.kw {
                            if let Some((v, i)) = padded[(oy * p.sh + dy) * wp + ox * p.sw + dx] {
                                if v > best {
                                    (best, at) = (v, i);
                                }
                            }
                        }
                    }
                    mx.push(best);
                    am.push(at as u32);
                }
            }
        }
        (mx, am)
    }

    #[test]
    fn odd_sizes_match_a_padded_oracle() {
        let s = Nchw::new(2, 3, 7, 5);
        let x = rand_vec(7, s.len(), -3.0, 3.0);
        for p in [
            Pool2d::square(3, 2, 1),
            Pool2d::square(2, 2, 1),
            Pool2d {
                kh: 3,
                kw: 2,
                sh: 2,
                sw: 3,
                ph: 0,
                pw: 1,
            },
        ] {
            let (mx, am) = naive(s, p, &x);
            let (y, a) = max_fwd(s, p, &x);
            assert_eq!(y, mx, "{p:?}");
            assert_eq!(a, am, "{p:?}");
        }
    }

    #[test]
    fn max_pool_gradients_match_finite_differences() {
        let s = Nchw::new(2, 3, 7, 5);
        // A scaled permutation: distinct values 0.01 apart, so no ±1e-6 step flips a winner.
        let keys = rand_vec(40, s.len(), 0.0, 1.0);
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
        let mut x = vec![0.0; s.len()];
        for (rank, &i) in order.iter().enumerate() {
            x[i] = rank as f64 * 0.01 - 1.0;
        }
        for p in [Pool2d::square(3, 2, 1), Pool2d::square(2, 1, 0)] {
            gradcheck(
                &format!("max_pool2d {p:?}"),
                std::slice::from_ref(&x),
                |i| max_fwd(s, p, &i[0]).0,
                |i, dy| {
                    let (_, a) = max_fwd(s, p, &i[0]);
                    let mut dx = vec![0.0; s.len()];
                    max_pool2d_bwd(dy, &a, s, p, &mut dx).unwrap();
                    vec![dx]
                },
            );
        }
    }

    #[test]
    fn global_avg_pool_gradients_match_finite_differences() {
        let s = Nchw::new(2, 3, 7, 5);
        gradcheck(
            "global_avg_pool",
            &[rand_vec(42, s.len(), -2.0, 2.0)],
            |i| {
                let mut y = vec![0.0; s.n * s.c];
                global_avg_pool_fwd(&i[0], s, &mut y).unwrap();
                y
            },
            |_, dy| {
                let mut dx = vec![0.0; s.len()];
                global_avg_pool_bwd(dy, s, &mut dx).unwrap();
                vec![dx]
            },
        );
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let shape_err = |r: Result<(usize, usize), KernelError>, what: &str| match r {
            Err(KernelError::Shape { reason, .. }) => assert!(reason.contains(what), "{reason}"),
            other => panic!("expected a Shape error containing {what:?}, got {other:?}"),
        };
        // Padding over half the kernel (PyTorch: pad ≤ kernel/2).
        shape_err(Pool2d::square(3, 1, 2).out_hw(8, 8), "at most half");
        shape_err(Pool2d::square(1, 1, 1).out_hw(8, 8), "at most half");
        // Window larger than the padded input: (2 + 2 − 5) < 0.
        shape_err(
            Pool2d::square(5, 1, 1).out_hw(2, 9),
            "output would be empty",
        );
        shape_err(Pool2d::square(0, 1, 0).out_hw(4, 4), "positive");
        shape_err(Pool2d::square(2, 0, 0).out_hw(4, 4), "positive");
        shape_err(Pool2d::square(2, 2, 1).out_hw(0, 4), "empty input plane");
        // The kernels carry their own name.
        let (mut y, mut a) = ([0.0; 1], [0u32; 1]);
        let e = max_pool2d_fwd(
            &[0.0; 4],
            Nchw::new(1, 1, 2, 2),
            Pool2d::square(3, 1, 0),
            &mut y,
            &mut a,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("max_pool2d_fwd: "), "{e}");
        let e = global_avg_pool_fwd(&[0.0f64; 0], Nchw::new(1, 1, 0, 3), &mut y).unwrap_err();
        assert!(e.to_string().contains("empty input plane"), "{e}");
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let s = Nchw::new(1, 2, 4, 4);
        let p = Pool2d::square(2, 2, 0);
        let x = vec![0.0f32; s.len()];
        let (mut y, mut a) = (vec![0f32; 8], vec![0u32; 7]);
        let e = max_pool2d_fwd(&x, s, p, &mut y, &mut a).unwrap_err();
        assert!(
            e.to_string()
                .contains("max_pool2d_fwd: `argmax` has 7 elements, expected 8"),
            "{e}"
        );
        let mut dx = vec![0f32; 31];
        let e = max_pool2d_bwd(&y, &[0u32; 8], s, p, &mut dx).unwrap_err();
        assert!(
            e.to_string()
                .contains("max_pool2d_bwd: `dx` has 31 elements, expected 32"),
            "{e}"
        );
        let e = global_avg_pool_bwd(&[1f32; 3], s, &mut [0f32; 32]).unwrap_err();
        assert!(
            e.to_string().contains("`dy` has 3 elements, expected 2"),
            "{e}"
        );
    }

    #[test]
    fn out_of_plane_argmax_is_an_error_and_writes_nothing() {
        let s = Nchw::new(1, 1, 4, 4);
        let p = Pool2d::square(2, 2, 0);
        let mut dx = vec![5.0f64; 16];
        let e = max_pool2d_bwd(&[1.0; 4], &[0, 2, 16, 3], s, p, &mut dx).unwrap_err();
        assert!(e.to_string().contains("argmax[2] = 16"), "{e}");
        assert_eq!(dx, vec![5.0; 16]);
    }
}
