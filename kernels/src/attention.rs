//! Dot-product self-attention over the pixels of a feature map, forward and backward: the
//! refinement step of PseudoSeg's self-attention Grad-CAM (googleinterns/wss
//! core/train_utils_core.py `compute_self_att_v2`, `linformer=False`).
//!
//! Per image, with P = H·W positions, queries and keys q, k: [d, P], values v: [c, P] (NCHW
//! planes, so each channel is a contiguous row of P):
//!
//! * S[i, j] = scale·Σ_d q[d, i]·k[d, j] where valid_i·valid_j ≠ 0, else −1e9 (no mask: valid ≡
//!   1);
//! * A[i, ·] = softmax_j S[i, ·];
//! * y[c, i] = Σ_j A[i, j]·v[c, j].
//!
//! Backward (dy: [c, P]): dv = dy·A, dA = dyᵀ·v, dS = A ⊙ (dA − rowsum(dA ⊙ A)), dq = scale·k·dSᵀ,
//! dk = scale·q·dS, with dS = 0 at excluded pairs (their score is a constant). The mask is a
//! constant too (no gradient).
//!
//! Masking: the official code *adds* −1e9·(1 − valid_i·valid_j) to the score; here an excluded
//! pair's score *is* −1e9. In f32 the two agree for every score below 32 in magnitude (the
//! spacing of f32 at 1e9 is 64, so the sum rounds to −1e9): a valid row gives excluded pairs
//! weight exactly 0, and a row with no valid pair (a padding query) attends uniformly. They
//! differ only in the gradient of such a padding row, which the official code passes through
//! the rounded-away scores and which is 0 here; the shipped graphs have no padding.
//!
//! Layout: the scores are held transposed, Sᵀ[j][i] ([P, P] row-major), so that the softmax over
//! j is [`crate::softmax::softmax_fwd`] over the "channel" axis of a [1, P, 1, P] map, and its
//! backward is `softmax_bwd`; the four products are [`crate::gemm::gemm`] calls on the stored
//! planes. Images run in parallel (one GEMM thread each), so the result does not depend on the
//! thread count. Nothing is saved between forward and backward: the backward recomputes A.
//!
//! Not here: multiple heads, the key/query projections (1×1 convs in the model), the skip
//! connection (an `add` in the model), Linformer-style down-sampling of keys and values.

use crate::gemm::{gemm, Trans};
use crate::softmax::{softmax_bwd, softmax_fwd};
use crate::{check_len, KernelError, Nchw, Real};
use rayon::prelude::*;

/// The extents of one attention call: `n` images of `positions` pixels, `d`-dimensional queries
/// and keys, `c` value channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Images.
    pub n: usize,
    /// Query / key channels.
    pub d: usize,
    /// Value channels.
    pub c: usize,
    /// Positions per image (H·W).
    pub positions: usize,
}

/// The score of an excluded pair, the official code's mask value.
const MASKED: f64 = -1e9;

/// Whether the pair (query i, key j) is excluded: one of them is padding.
fn excluded<T: Real>(valid: Option<&[T]>, i: usize, j: usize) -> bool {
    valid.is_some_and(|m| m[i] * m[j] == T::zero())
}

fn check<T: Real>(
    kernel: &'static str,
    q: &[T],
    k: &[T],
    v: &[T],
    valid: Option<&[T]>,
    s: AttentionShape,
) -> Result<(), KernelError> {
    check_len(kernel, "q", q, s.n * s.d * s.positions)?;
    check_len(kernel, "k", k, s.n * s.d * s.positions)?;
    check_len(kernel, "v", v, s.n * s.c * s.positions)?;
    if let Some(m) = valid {
        check_len(kernel, "valid", m, s.n * s.positions)?;
    }
    Ok(())
}

/// Aᵀ of image `i` ([P, P], `at[j·P + i]` = A[i, j]) from its q, k and optional validity.
fn weights_t<T: Real>(
    q: &[T],
    k: &[T],
    valid: Option<&[T]>,
    s: AttentionShape,
    scale: T,
    st: &mut [T],
    at: &mut [T],
) -> Result<(), KernelError> {
    let p = s.positions;
    // Sᵀ[j, i] = Σ_d k[d, j]·q[d, i]: kᵀ (stored [d, P]) times q.
    gemm(p, p, s.d, k, Trans::Yes, q, Trans::No, st, false, 1)?;
    for (j, row) in st.chunks_exact_mut(p).enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            *v = if excluded(valid, i, j) {
                T::of(MASKED)
            } else {
                *v * scale
            };
        }
    }
    softmax_fwd(st, Nchw::new(1, p, 1, p), at)
}

/// Self-attention forward: y[c, i] = Σ_j softmax_j(scale·q_i·k_j − 1e9·(1 − valid_i·valid_j))
/// ·v[c, j] per image. q, k: [N, d, P]; v, y: [N, c, P]; valid: [N, P] or `None`.
pub fn attention_fwd<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    valid: Option<&[T]>,
    s: AttentionShape,
    scale: T,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "attention_fwd";
    check(K, q, k, v, valid, s)?;
    check_len(K, "y", y, s.n * s.c * s.positions)?;
    let (p, qk, vc) = (s.positions, s.d * s.positions, s.c * s.positions);
    if s.n == 0 || p == 0 || s.c == 0 {
        return Ok(());
    }
    y.par_chunks_mut(vc)
        .enumerate()
        .try_for_each(|(n, yn)| -> Result<(), KernelError> {
            let mut st = vec![T::zero(); p * p];
            let mut at = vec![T::zero(); p * p];
            let (qn, kn) = (&q[n * qk..(n + 1) * qk], &k[n * qk..(n + 1) * qk]);
            let mn = valid.map(|m| &m[n * p..(n + 1) * p]);
            weights_t(qn, kn, mn, s, scale, &mut st, &mut at)?;
            // y[c, i] = Σ_j v[c, j]·Aᵀ[j, i].
            gemm(
                s.c,
                p,
                p,
                &v[n * vc..(n + 1) * vc],
                Trans::No,
                &at,
                Trans::No,
                yn,
                false,
                1,
            )
        })
}

/// Self-attention backward: the gradients of [`attention_fwd`]'s y with respect to q, k and v,
/// each written only when given (`None` skips it). q, k, dq, dk: [N, d, P]; v, dy, dv: [N, c, P];
/// valid: [N, P] or `None` (a constant).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    valid: Option<&[T]>,
    s: AttentionShape,
    scale: T,
    dy: &[T],
    mut dq: Option<&mut [T]>,
    mut dk: Option<&mut [T]>,
    mut dv: Option<&mut [T]>,
) -> Result<(), KernelError> {
    const K: &str = "attention_bwd";
    check(K, q, k, v, valid, s)?;
    let (p, qk, vc) = (s.positions, s.d * s.positions, s.c * s.positions);
    check_len(K, "dy", dy, s.n * vc)?;
    if let Some(g) = dq.as_deref() {
        check_len(K, "dq", g, s.n * qk)?;
    }
    if let Some(g) = dk.as_deref() {
        check_len(K, "dk", g, s.n * qk)?;
    }
    if let Some(g) = dv.as_deref() {
        check_len(K, "dv", g, s.n * vc)?;
    }
    if s.n == 0 || p == 0 {
        return Ok(());
    }
    // Each image's gradients, computed in parallel into per-image buffers, then copied out in
    // image order (the outputs are optional, so they cannot be zipped into one parallel walk).
    let per_image: Vec<Result<[Vec<T>; 3], KernelError>> = (0..s.n)
        .into_par_iter()
        .map(|n| {
            let (qn, kn) = (&q[n * qk..(n + 1) * qk], &k[n * qk..(n + 1) * qk]);
            let (vn, dyn_) = (&v[n * vc..(n + 1) * vc], &dy[n * vc..(n + 1) * vc]);
            let mn = valid.map(|m| &m[n * p..(n + 1) * p]);
            let mut st = vec![T::zero(); p * p];
            let mut at = vec![T::zero(); p * p];
            weights_t(qn, kn, mn, s, scale, &mut st, &mut at)?;
            // dv[c, j] = Σ_i dy[c, i]·Aᵀ[j, i].
            let mut dvn = vec![T::zero(); vc];
            gemm(
                s.c,
                p,
                p,
                dyn_,
                Trans::No,
                &at,
                Trans::Yes,
                &mut dvn,
                false,
                1,
            )?;
            // dAᵀ[j, i] = Σ_c v[c, j]·dy[c, i]; then dSᵀ through the softmax over j.
            let mut dat = vec![T::zero(); p * p];
            gemm(
                p,
                p,
                s.c,
                vn,
                Trans::Yes,
                dyn_,
                Trans::No,
                &mut dat,
                false,
                1,
            )?;
            softmax_bwd(&at, &dat, Nchw::new(1, p, 1, p), &mut st)?;
            let mut dst = st;
            if mn.is_some() {
                for (j, row) in dst.chunks_exact_mut(p).enumerate() {
                    for (i, g) in row.iter_mut().enumerate() {
                        if excluded(mn, i, j) {
                            *g = T::zero();
                        }
                    }
                }
            }
            // dq[d, i] = scale·Σ_j k[d, j]·dSᵀ[j, i]; dk[d, j] = scale·Σ_i q[d, i]·dSᵀ[j, i].
            let mut dqn = vec![T::zero(); qk];
            let mut dkn = vec![T::zero(); qk];
            gemm(
                s.d,
                p,
                p,
                kn,
                Trans::No,
                &dst,
                Trans::No,
                &mut dqn,
                false,
                1,
            )?;
            gemm(
                s.d,
                p,
                p,
                qn,
                Trans::No,
                &dst,
                Trans::Yes,
                &mut dkn,
                false,
                1,
            )?;
            for g in dqn.iter_mut().chain(dkn.iter_mut()) {
                *g *= scale;
            }
            Ok([dqn, dkn, dvn])
        })
        .collect();
    for (n, grads) in per_image.into_iter().enumerate() {
        let [dqn, dkn, dvn] = grads?;
        if let Some(g) = dq.as_deref_mut() {
            g[n * qk..(n + 1) * qk].copy_from_slice(&dqn);
        }
        if let Some(g) = dk.as_deref_mut() {
            g[n * qk..(n + 1) * qk].copy_from_slice(&dkn);
        }
        if let Some(g) = dv.as_deref_mut() {
            g[n * vc..(n + 1) * vc].copy_from_slice(&dvn);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, gradcheck, rand_vec};

    #[test]
    fn hand_computed_two_positions() {
        // One image, d = 1, c = 1, P = 2: q = (1, 0), k = (ln 3, 0), scale 1.
        // Row i = 0: S = (ln 3, 0) → A = (3/4, 1/4); row i = 1: S = (0, 0) → A = (1/2, 1/2).
        // v = (4, 8): y = (3 + 2, 2 + 4) = (5, 6).
        let s = AttentionShape {
            n: 1,
            d: 1,
            c: 1,
            positions: 2,
        };
        let (q, k, v) = ([1.0f64, 0.0], [3f64.ln(), 0.0], [4.0f64, 8.0]);
        let mut y = [0.0f64; 2];
        attention_fwd(&q, &k, &v, None, s, 1.0, &mut y).unwrap();
        assert_close("attention y", &y, &[5.0, 6.0], 1e-12, 0.0);
        // Position 1 invalid: position 0 attends only to itself (y = 4); position 1's row is
        // all excluded (every score −1e9), so it averages: (4 + 8)/2.
        attention_fwd(&q, &k, &v, Some(&[1.0, 0.0]), s, 1.0, &mut y).unwrap();
        assert_close("masked attention y", &y, &[4.0, 6.0], 1e-12, 0.0);
    }

    #[test]
    fn gradcheck_with_and_without_mask() {
        let s = AttentionShape {
            n: 2,
            d: 3,
            c: 2,
            positions: 5,
        };
        let (qk, vc) = (s.n * s.d * s.positions, s.n * s.c * s.positions);
        let mask = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        for valid in [None, Some(&mask[..])] {
            let inputs = vec![
                rand_vec(1, qk, -1.0, 1.0),
                rand_vec(2, qk, -1.0, 1.0),
                rand_vec(3, vc, -1.0, 1.0),
            ];
            gradcheck(
                &format!("attention masked={}", valid.is_some()),
                &inputs,
                |i| {
                    let mut y = vec![0.0; vc];
                    attention_fwd(&i[0], &i[1], &i[2], valid, s, 0.7, &mut y).unwrap();
                    y
                },
                |i, dy| {
                    let (mut dq, mut dk, mut dv) = (vec![0.0; qk], vec![0.0; qk], vec![0.0; vc]);
                    attention_bwd(
                        &i[0],
                        &i[1],
                        &i[2],
                        valid,
                        s,
                        0.7,
                        dy,
                        Some(&mut dq),
                        Some(&mut dk),
                        Some(&mut dv),
                    )
                    .unwrap();
                    vec![dq, dk, dv]
                },
            );
        }
    }

    #[test]
    fn lengths_are_checked() {
        let s = AttentionShape {
            n: 1,
            d: 2,
            c: 1,
            positions: 3,
        };
        let mut y = [0.0f32; 3];
        let e = attention_fwd(&[0.0; 6], &[0.0; 5], &[0.0; 3], None, s, 1.0, &mut y).unwrap_err();
        assert_eq!(
            e.to_string(),
            "attention_fwd: `k` has 5 elements, expected 6"
        );
    }
}
