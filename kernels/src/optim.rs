//! Optimizer updates, in place over flat parameter slices: SGD (with momentum, Nesterov and L2
//! weight decay), AdamW, and the exponential moving average used for mean-teacher weights and
//! batch-norm running statistics. `param`, `grad` and every state slice have the same length
//! (any shape, flattened); the engine calls a kernel once per parameter tensor.
//!
//! Update rules, exactly PyTorch's (`t` is the 1-based step):
//!
//! * [`sgd_step`], `torch.optim.SGD` with `dampening = 0`:
//!   `g = grad + wd·p`; if `momentum ≠ 0`: `buf = momentum·buf + g`, then
//!   `g = g + momentum·buf` (Nesterov) or `g = buf`; finally `p = p − lr·g`.
//!   PyTorch creates the buffer as `buf = g` on the first step; a zero-initialised buffer gives
//!   exactly that (`momentum·0 + g = g` in floating point), so the caller allocates zeros and
//!   there is no first-step special case.
//! * [`adamw_step`], `torch.optim.AdamW` (`amsgrad = false`):
//!   `p = p·(1 − lr·wd)`; `m = β1·m + (1−β1)·g`; `v = β2·v + (1−β2)·g²`;
//!   `m̂ = m/(1−β1ᵗ)`; `v̂ = v/(1−β2ᵗ)`; `p = p − lr·m̂/(√v̂ + eps)`. Evaluated as PyTorch's
//!   single-tensor path does: `p − (lr/(1−β1ᵗ))·m / (√v/√(1−β2ᵗ) + eps)`, with the bias
//!   corrections and step size computed in f64 (PyTorch's Python floats). PyTorch writes the `m`
//!   update as `lerp`, equal in exact arithmetic; the two may differ by an ulp in f32.
//! * [`ema_update`]: `target = α·target + (1−α)·source`, the mean-teacher update
//!   (`ema.mul_(α).add_(src, alpha=1−α)`). PyTorch's batch-norm running statistics are the same
//!   rule with `α = 1 − momentum`.
//!
//! AdamW and the EMA also come split in two: the per-step scalars, derived once in f64 and
//! rounded once ([`AdamW::at`] → [`AdamWStep`], [`EmaStep::new`]), and the per-element part
//! ([`adamw_apply`], [`ema_apply`]). The one-call kernels are exactly the two in sequence; the
//! split is for callers that feed the scalars from a buffer (a planned update, a CUDA launch),
//! so every device rounds the same way.
//!
//! Hyper-parameters are validated as PyTorch's constructors validate them (negative learning
//! rate, momentum, weight decay or eps, β outside [0, 1), Nesterov without momentum), and NaN is
//! rejected wherever a range is checked.
//!
//! Not here: `dampening`, `maximize`, AMSGrad, gradient clipping, learning-rate schedules (the
//! engine passes the current `lr`), or mixed-precision master weights. Per-element arithmetic is
//! in `T`; nothing is reduced, so there is no accumulation to widen.

use crate::{check_len, KernelError, Real};

/// Hyper-parameters of [`sgd_step`] (`torch.optim.SGD` with `dampening = 0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    /// Learning rate, ≥ 0.
    pub lr: f64,
    /// Momentum factor, ≥ 0; 0 disables the momentum buffer.
    pub momentum: f64,
    /// Nesterov momentum; requires `momentum > 0`.
    pub nesterov: bool,
    /// L2 penalty added to the gradient (`g = grad + wd·p`), ≥ 0.
    pub weight_decay: f64,
}

/// Hyper-parameters of [`adamw_step`] (`torch.optim.AdamW`, `amsgrad = false`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// Learning rate, ≥ 0.
    pub lr: f64,
    /// Decay of the first moment, in [0, 1).
    pub beta1: f64,
    /// Decay of the second moment, in [0, 1).
    pub beta2: f64,
    /// Added to √v̂ in the denominator, ≥ 0.
    pub eps: f64,
    /// Decoupled weight decay (`p = p·(1 − lr·wd)`), ≥ 0.
    pub weight_decay: f64,
}

/// An error naming the hyper-parameter unless `ok`.
fn check_hyper(kernel: &'static str, ok: bool, what: &str, v: f64) -> Result<(), KernelError> {
    if ok {
        Ok(())
    } else {
        Err(KernelError::Shape {
            kernel,
            reason: format!("invalid {what}: {v}"),
        })
    }
}

/// One SGD step in place (rule in the module header).
///
/// * `param`, `grad`: same length, any shape flattened.
/// * `momentum_buf`: same length as `param`, zeros before the first step; it is neither read nor
///   written when `momentum = 0`, and may then be empty.
///
/// Errors on a length mismatch, a negative `lr`/`momentum`/`weight_decay`, or `nesterov` with
/// `momentum = 0` (PyTorch refuses it: Nesterov needs a momentum).
pub fn sgd_step<T: Real>(
    param: &mut [T],
    grad: &[T],
    momentum_buf: &mut [T],
    cfg: &Sgd,
) -> Result<(), KernelError> {
    const K: &str = "sgd_step";
    check_hyper(K, cfg.lr >= 0.0, "learning rate", cfg.lr)?;
    check_hyper(K, cfg.momentum >= 0.0, "momentum", cfg.momentum)?;
    check_hyper(K, cfg.weight_decay >= 0.0, "weight_decay", cfg.weight_decay)?;
    if cfg.nesterov && cfg.momentum == 0.0 {
        return Err(KernelError::Shape {
            kernel: K,
            reason: "nesterov momentum requires momentum > 0".into(),
        });
    }
    check_len(K, "grad", grad, param.len())?;
    let use_buf = cfg.momentum != 0.0;
    if use_buf || !momentum_buf.is_empty() {
        check_len(K, "momentum_buf", momentum_buf, param.len())?;
    }
    let lr = T::of(cfg.lr);
    let mu = T::of(cfg.momentum);
    let wd = T::of(cfg.weight_decay);
    let decay = cfg.weight_decay != 0.0;
    if !use_buf {
        for (p, &g0) in param.iter_mut().zip(grad) {
            let g = if decay { g0 + wd * *p } else { g0 };
            *p -= lr * g;
        }
        return Ok(());
    }
    for ((p, &g0), b) in param.iter_mut().zip(grad).zip(momentum_buf.iter_mut()) {
        // PyTorch skips the add when wd = 0; skipping keeps `g0 + 0·p` from turning an infinite
        // parameter into NaN.
        let g = if decay { g0 + wd * *p } else { g0 };
        *b = mu * *b + g;
        let step = if cfg.nesterov { g + mu * *b } else { *b };
        *p -= lr * step;
    }
    Ok(())
}

/// AdamW's scalars for one step, derived once on the host from the f64 hyper-parameters and
/// rounded to `T` once each: what [`adamw_apply`] (and the CUDA kernel) read per element. A
/// caller that feeds the update from a buffer (a captured device graph, a step planned as a
/// graph) computes these per step and passes them, so every device rounds identically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep<T> {
    /// `1 − lr·wd`, the decoupled weight decay's factor.
    pub shrink: T,
    /// β1.
    pub b1: T,
    /// β2.
    pub b2: T,
    /// 1 − β1.
    pub one_b1: T,
    /// 1 − β2.
    pub one_b2: T,
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: T,
    /// `√(1 − β2ᵗ)`.
    pub bc2_sqrt: T,
    /// ε.
    pub eps: T,
}

impl AdamW {
    /// The validated scalars of step `step` (1-based, PyTorch's `state["step"]` after its
    /// increment). Errors on `step = 0` (the bias correction would divide by zero), a negative
    /// `lr`/`eps`/`weight_decay`, or a β outside [0, 1).
    pub fn at<T: Real>(&self, step: u64) -> Result<AdamWStep<T>, KernelError> {
        const K: &str = "adamw_step";
        check_hyper(K, self.lr >= 0.0, "learning rate", self.lr)?;
        check_hyper(K, self.eps >= 0.0, "eps", self.eps)?;
        check_hyper(K, (0.0..1.0).contains(&self.beta1), "beta1", self.beta1)?;
        check_hyper(K, (0.0..1.0).contains(&self.beta2), "beta2", self.beta2)?;
        check_hyper(
            K,
            self.weight_decay >= 0.0,
            "weight_decay",
            self.weight_decay,
        )?;
        if step == 0 {
            return Err(KernelError::Shape {
                kernel: K,
                reason: "step is 1-based; 0 would divide by a zero bias correction".into(),
            });
        }
        // powi takes i32; beyond that βᵗ has long underflowed to 0, so saturating is exact.
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        Ok(AdamWStep {
            shrink: T::of(1.0 - self.lr * self.weight_decay),
            b1: T::of(self.beta1),
            b2: T::of(self.beta2),
            one_b1: T::of(1.0 - self.beta1),
            one_b2: T::of(1.0 - self.beta2),
            step_size: T::of(self.lr / bc1),
            bc2_sqrt: T::of(bc2.sqrt()),
            eps: T::of(self.eps),
        })
    }
}

/// One AdamW step in place (rule in the module header); `step` is the 1-based count of updates
/// including this one (PyTorch's `state["step"]` after its increment).
///
/// * `param`, `grad`, `m` (first moment), `v` (second moment): same length, any shape
///   flattened; `m` and `v` are zeros before the first step.
///
/// Errors on a length mismatch or what [`AdamW::at`] refuses.
pub fn adamw_step<T: Real>(
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
    cfg: &AdamW,
    step: u64,
) -> Result<(), KernelError> {
    let scalars = cfg.at::<T>(step)?;
    adamw_apply(param, grad, m, v, &scalars)
}

/// The per-element part of [`adamw_step`], from scalars derived by [`AdamW::at`].
///
/// * `param`, `grad`, `m`, `v`: same length, any shape flattened.
///
/// Errors on a length mismatch.
pub fn adamw_apply<T: Real>(
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
    s: &AdamWStep<T>,
) -> Result<(), KernelError> {
    const K: &str = "adamw_step";
    check_len(K, "grad", grad, param.len())?;
    check_len(K, "m", m, param.len())?;
    check_len(K, "v", v, param.len())?;
    for (((p, &g), m), v) in param
        .iter_mut()
        .zip(grad)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        *p *= s.shrink;
        *m = s.b1 * *m + s.one_b1 * g;
        *v = s.b2 * *v + s.one_b2 * g * g;
        *p -= s.step_size * *m / (v.sqrt() / s.bc2_sqrt + s.eps);
    }
    Ok(())
}

/// The EMA's two factors, α and 1 − α, each rounded to `T` once from the f64 α.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmaStep<T> {
    /// α, the weight of the target's old value.
    pub keep: T,
    /// 1 − α, the weight of the source.
    pub take: T,
}

impl<T: Real> EmaStep<T> {
    /// The validated factors; errors on `alpha` outside [0, 1].
    pub fn new(alpha: f64) -> Result<Self, KernelError> {
        check_hyper("ema_update", (0.0..=1.0).contains(&alpha), "alpha", alpha)?;
        Ok(EmaStep {
            keep: T::of(alpha),
            take: T::of(1.0 - alpha),
        })
    }
}

/// `target = α·target + (1−α)·source` in place.
///
/// * `target`, `source`: same length, any shape flattened.
///
/// Errors on a length mismatch or `alpha` outside [0, 1].
pub fn ema_update<T: Real>(target: &mut [T], source: &[T], alpha: f64) -> Result<(), KernelError> {
    ema_apply(target, source, &EmaStep::new(alpha)?)
}

/// [`ema_update`] from factors derived by [`EmaStep::new`].
///
/// * `target`, `source`: same length, any shape flattened.
pub fn ema_apply<T: Real>(
    target: &mut [T],
    source: &[T],
    f: &EmaStep<T>,
) -> Result<(), KernelError> {
    check_len("ema_update", "source", source, target.len())?;
    for (t, &s) in target.iter_mut().zip(source) {
        *t = f.keep * *t + f.take * s;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, rand_vec, to_f32};

    fn sgd(lr: f64, momentum: f64, nesterov: bool, weight_decay: f64) -> Sgd {
        Sgd {
            lr,
            momentum,
            nesterov,
            weight_decay,
        }
    }

    const ADAM: AdamW = AdamW {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };

    /// PyTorch's `_single_tensor_sgd` transcribed, in f64, with the buffer created on the first
    /// step (`None` → clone of g) rather than zero-initialised.
    fn sgd_reference(p: &mut [f64], g: &[f64], buf: &mut Option<Vec<f64>>, c: &Sgd) {
        let mut d: Vec<f64> = g
            .iter()
            .zip(p.iter())
            .map(|(g, p)| {
                if c.weight_decay != 0.0 {
                    g + c.weight_decay * p
                } else {
                    *g
                }
            })
            .collect();
        if c.momentum != 0.0 {
            let b = match buf.take() {
                None => d.clone(),
                Some(b) => b.iter().zip(&d).map(|(b, d)| c.momentum * b + d).collect(),
            };
            if c.nesterov {
                d = d.iter().zip(&b).map(|(d, b)| d + c.momentum * b).collect();
            } else {
                d = b.clone();
            }
            *buf = Some(b);
        }
        for (p, d) in p.iter_mut().zip(&d) {
            *p -= c.lr * d;
        }
    }

    /// The textbook AdamW with explicit m̂ and v̂, in f64.
    fn adamw_reference(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], c: &AdamW, t: u64) {
        let bc1 = 1.0 - c.beta1.powf(t as f64);
        let bc2 = 1.0 - c.beta2.powf(t as f64);
        for i in 0..p.len() {
            p[i] *= 1.0 - c.lr * c.weight_decay;
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
            let mh = m[i] / bc1;
            let vh = v[i] / bc2;
            p[i] -= c.lr * mh / (vh.sqrt() + c.eps);
        }
    }

    #[test]
    fn sgd_hand_computed() {
        // Plain: p = 1 − 0.1·0.5 = 0.95; with wd 0.1: g = 0.5 + 0.1·1 = 0.6, p = 0.94.
        let mut p = [1.0f64, -2.0];
        let mut none: [f64; 0] = [];
        sgd_step(&mut p, &[0.5, 0.25], &mut none, &sgd(0.1, 0.0, false, 0.0)).unwrap();
        assert_close("plain", &p, &[0.95, -2.025], 1e-15, 0.0);
        let mut p = [1.0f64];
        sgd_step(&mut p, &[0.5], &mut none, &sgd(0.1, 0.0, false, 0.1)).unwrap();
        assert_close("wd", &p, &[0.94], 1e-15, 0.0);

        // Momentum 0.9, lr 0.1, grads 0.5 then 0.25 on p = 1:
        //   step 1: buf = 0.5,              p = 1 − 0.05 = 0.95
        //   step 2: buf = 0.45 + 0.25 = 0.7, p = 0.95 − 0.07 = 0.88
        let c = sgd(0.1, 0.9, false, 0.0);
        let (mut p, mut b) = ([1.0f64], [0.0f64]);
        sgd_step(&mut p, &[0.5], &mut b, &c).unwrap();
        assert_close("mom 1", &[p[0], b[0]], &[0.95, 0.5], 1e-15, 0.0);
        sgd_step(&mut p, &[0.25], &mut b, &c).unwrap();
        assert_close("mom 2", &[p[0], b[0]], &[0.88, 0.7], 1e-15, 0.0);

        // Nesterov, same inputs: step 1: buf = 0.5, g = 0.5 + 0.45 = 0.95, p = 0.905;
        //   step 2: buf = 0.7, g = 0.25 + 0.63 = 0.88, p = 0.905 − 0.088 = 0.817.
        let c = sgd(0.1, 0.9, true, 0.0);
        let (mut p, mut b) = ([1.0f64], [0.0f64]);
        sgd_step(&mut p, &[0.5], &mut b, &c).unwrap();
        assert_close("nesterov 1", &[p[0], b[0]], &[0.905, 0.5], 1e-15, 0.0);
        sgd_step(&mut p, &[0.25], &mut b, &c).unwrap();
        assert_close("nesterov 2", &[p[0], b[0]], &[0.817, 0.7], 1e-15, 0.0);

        // Nesterov + wd 0.1 on p = 1, g = 0.5: g' = 0.6, buf = 0.6, step = 0.6 + 0.54 = 1.14,
        // p = 1 − 0.114 = 0.886.
        let (mut p, mut b) = ([1.0f64], [0.0f64]);
        sgd_step(&mut p, &[0.5], &mut b, &sgd(0.1, 0.9, true, 0.1)).unwrap();
        assert_close("nesterov wd", &[p[0], b[0]], &[0.886, 0.6], 1e-15, 0.0);
    }

    #[test]
    fn sgd_trajectories_match_pytorch_rule() {
        let n = 23;
        for c in [
            sgd(0.05, 0.0, false, 0.0),
            sgd(0.05, 0.0, false, 1e-2),
            sgd(0.05, 0.9, false, 0.0),
            sgd(0.05, 0.9, false, 5e-4),
            sgd(0.05, 0.8, true, 0.0),
            sgd(0.05, 0.8, true, 1e-2),
        ] {
            let mut want = rand_vec(1, n, -1.0, 1.0);
            let mut p64 = want.clone();
            let mut p32 = to_f32(&want);
            let mut want_buf = None;
            let mut b64 = vec![0f64; n];
            let mut b32 = vec![0f32; n];
            for step in 0..6 {
                let g = rand_vec(100 + step, n, -2.0, 2.0);
                sgd_reference(&mut want, &g, &mut want_buf, &c);
                sgd_step(&mut p64, &g, &mut b64, &c).unwrap();
                sgd_step(&mut p32, &to_f32(&g), &mut b32, &c).unwrap();
                let what = format!("{c:?} step {}", step + 1);
                assert_close(&what, &p64, &want, 1e-14, 1e-13);
                let got32: Vec<f64> = p32.iter().map(|&x| x as f64).collect();
                assert_close(&format!("{what} f32"), &got32, &want, 1e-6, 1e-5);
                if let Some(b) = &want_buf {
                    assert_close(&format!("{what} buf"), &b64, b, 1e-14, 1e-13);
                }
            }
            // The trajectory moved, so the comparison was not vacuous.
            assert!(
                (p64[0] - rand_vec(1, n, -1.0, 1.0)[0]).abs() > 1e-3,
                "{c:?}"
            );
        }
    }

    #[test]
    fn adamw_hand_computed() {
        // p = 1, g = 0.5, lr 0.1, β = (0.9, 0.999), eps 1e-8, wd 0.01.
        // Step 1: p = 1·(1 − 0.001) = 0.999; m = 0.05; v = 0.001·0.25 = 2.5e-4;
        //   m̂ = 0.05/0.1 = 0.5; v̂ = 2.5e-4/0.001 = 0.25; p = 0.999 − 0.1·0.5/(0.5 + 1e-8)
        //   = 0.899 + 2e-9 (to first order in eps).
        let (mut p, mut m, mut v) = ([1.0f64], [0.0f64], [0.0f64]);
        adamw_step(&mut p, &[0.5], &mut m, &mut v, &ADAM, 1).unwrap();
        assert_close("m1", &m, &[0.05], 1e-15, 0.0);
        assert_close("v1", &v, &[2.5e-4], 1e-18, 0.0);
        assert_close("p1", &p, &[0.899 + 2e-9], 1e-15, 0.0);
        // Step 2, g = −0.25: p = 0.899000002·0.999 = 0.898101001998;
        //   m = 0.045 − 0.025 = 0.02; v = 2.4975e-4 + 6.25e-5 = 3.1225e-4;
        //   bias corrections 1 − 0.81 = 0.19 and 1 − 0.998001 = 0.001999;
        //   m̂ = 0.105263157894737, v̂ = 0.156203101550778, √v̂ = 0.395225380701667;
        //   p = 0.898101001998 − 0.1·0.105263157894737/(0.395225380701667 + 1e-8)
        //     = 0.898101001998 − 0.026633703292154 = 0.871467298705846.
        adamw_step(&mut p, &[-0.25], &mut m, &mut v, &ADAM, 2).unwrap();
        assert_close("m2", &m, &[0.02], 1e-15, 0.0);
        assert_close("v2", &v, &[3.1225e-4], 1e-18, 0.0);
        let mh = 0.02 / 0.19;
        let vh: f64 = 3.1225e-4 / 0.001999;
        let want = 0.899000002 * 0.999 - 0.1 * mh / (vh.sqrt() + 1e-8);
        assert_close("p2", &p, &[want], 1e-14, 0.0);
        assert!((p[0] - 0.871467298705846).abs() < 1e-14, "{}", p[0]);
    }

    #[test]
    fn adamw_first_step_is_sign_times_lr() {
        // At t = 1 the bias correction makes m̂ = g and v̂ = g², so without decay and eps the
        // update is exactly lr·sign(g) whatever |g| is (no bias toward zero from m = v = 0).
        let c = AdamW {
            eps: 0.0,
            weight_decay: 0.0,
            ..ADAM
        };
        let g = [3.0f64, -1e-3, 0.25];
        let mut p = [0.0f64; 3];
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        adamw_step(&mut p, &g, &mut m, &mut v, &c, 1).unwrap();
        assert_close("sign", &p, &[-0.1, 0.1, -0.1], 1e-15, 1e-12);
    }

    #[test]
    fn adamw_trajectories_match_textbook_rule() {
        let n = 19;
        for c in [
            ADAM,
            AdamW {
                weight_decay: 0.0,
                ..ADAM
            },
            AdamW {
                lr: 1e-3,
                beta1: 0.5,
                beta2: 0.9,
                eps: 1e-3,
                weight_decay: 0.05,
            },
        ] {
            let p0 = rand_vec(2, n, -1.0, 1.0);
            let (mut want, mut p64, mut p32) = (p0.clone(), p0.clone(), to_f32(&p0));
            let (mut wm, mut wv) = (vec![0f64; n], vec![0f64; n]);
            let (mut m64, mut v64) = (vec![0f64; n], vec![0f64; n]);
            let (mut m32, mut v32) = (vec![0f32; n], vec![0f32; n]);
            for t in 1..=7u64 {
                let g = rand_vec(200 + t, n, -2.0, 2.0);
                adamw_reference(&mut want, &g, &mut wm, &mut wv, &c, t);
                adamw_step(&mut p64, &g, &mut m64, &mut v64, &c, t).unwrap();
                adamw_step(&mut p32, &to_f32(&g), &mut m32, &mut v32, &c, t).unwrap();
                let what = format!("{c:?} step {t}");
                assert_close(&what, &p64, &want, 1e-13, 1e-12);
                assert_close(&format!("{what} m"), &m64, &wm, 1e-14, 1e-12);
                assert_close(&format!("{what} v"), &v64, &wv, 1e-14, 1e-12);
                let got32: Vec<f64> = p32.iter().map(|&x| x as f64).collect();
                assert_close(&format!("{what} f32"), &got32, &want, 1e-6, 1e-5);
            }
            assert!(
                (p64[0] - p0[0]).abs() > 1e-3,
                "{c:?}: parameters did not move"
            );
        }
    }

    #[test]
    fn ema_hand_computed() {
        // α = 0.75: 0.75·4 + 0.25·8 = 5; 0.75·(−1) + 0.25·3 = 0. α = 1 keeps, α = 0 copies.
        let mut t = [4.0f64, -1.0];
        ema_update(&mut t, &[8.0, 3.0], 0.75).unwrap();
        assert_eq!(t, [5.0, 0.0]);
        ema_update(&mut t, &[8.0, 3.0], 1.0).unwrap();
        assert_eq!(t, [5.0, 0.0]);
        ema_update(&mut t, &[8.0, 3.0], 0.0).unwrap();
        assert_eq!(t, [8.0, 3.0]);
        // Two steps against the closed form αⁿ·t₀ + (1 − αⁿ)·s for a constant source.
        let mut t = [2.0f32];
        ema_update(&mut t, &[10.0], 0.9).unwrap();
        ema_update(&mut t, &[10.0], 0.9).unwrap();
        let want = 0.81 * 2.0 + 0.19 * 10.0;
        assert!((t[0] as f64 - want).abs() < 1e-5, "{} vs {want}", t[0]);
    }

    #[test]
    fn bad_lengths_and_hyper_parameters_are_errors() {
        let mut p = [1f32, 2.0, 3.0];
        let mut b = [0f32; 3];
        let mut short = [0f32; 2];
        let ok = sgd(0.1, 0.9, false, 0.0);
        let e = sgd_step(&mut p, &[0.0; 2], &mut b, &ok).unwrap_err();
        assert!(
            e.to_string()
                .contains("sgd_step: `grad` has 2 elements, expected 3"),
            "{e}"
        );
        let e = sgd_step(&mut p, &[0.0; 3], &mut short, &ok).unwrap_err();
        assert!(e.to_string().contains("`momentum_buf` has 2"), "{e}");
        // An empty buffer is fine without momentum, a missing one is not with it.
        let mut none: [f32; 0] = [];
        assert!(sgd_step(&mut p, &[0.0; 3], &mut none, &sgd(0.1, 0.0, false, 0.0)).is_ok());
        assert!(sgd_step(&mut p, &[0.0; 3], &mut none, &ok).is_err());
        let e = sgd_step(&mut p, &[0.0; 3], &mut b, &sgd(0.1, 0.0, true, 0.0)).unwrap_err();
        assert!(e.to_string().contains("nesterov"), "{e}");
        for bad in [
            sgd(-0.1, 0.0, false, 0.0),
            sgd(0.1, -0.5, false, 0.0),
            sgd(0.1, 0.0, false, -1e-4),
            sgd(f64::NAN, 0.0, false, 0.0),
        ] {
            assert!(
                sgd_step(&mut p, &[0.0; 3], &mut b, &bad).is_err(),
                "{bad:?}"
            );
        }

        let (mut m, mut v) = ([0f32; 3], [0f32; 3]);
        let e = adamw_step(&mut p, &[0.0; 3], &mut m, &mut v, &ADAM, 0).unwrap_err();
        assert!(e.to_string().contains("step is 1-based"), "{e}");
        let e = adamw_step(&mut p, &[0.0; 3], &mut short, &mut v, &ADAM, 1).unwrap_err();
        assert!(
            e.to_string().contains("adamw_step: `m` has 2 elements"),
            "{e}"
        );
        let e = adamw_step(&mut p, &[0.0; 3], &mut m, &mut short, &ADAM, 1).unwrap_err();
        assert!(e.to_string().contains("`v` has 2"), "{e}");
        let e = adamw_step(&mut p, &[0.0; 4], &mut m, &mut v, &ADAM, 1).unwrap_err();
        assert!(e.to_string().contains("`grad` has 4"), "{e}");
        for bad in [
            AdamW { lr: -1.0, ..ADAM },
            AdamW { beta1: 1.0, ..ADAM },
            AdamW {
                beta2: -0.1,
                ..ADAM
            },
            AdamW { eps: -1e-8, ..ADAM },
            AdamW {
                weight_decay: -0.1,
                ..ADAM
            },
            AdamW {
                beta1: f64::NAN,
                ..ADAM
            },
        ] {
            let e = adamw_step(&mut p, &[0.0; 3], &mut m, &mut v, &bad, 1).unwrap_err();
            assert!(e.to_string().starts_with("adamw_step: invalid"), "{e}");
        }

        let e = ema_update(&mut p, &[0.0; 2], 0.5).unwrap_err();
        assert!(e.to_string().contains("ema_update: `source` has 2"), "{e}");
        for a in [-0.01, 1.01, f64::NAN] {
            let e = ema_update(&mut p, &[0.0; 3], a).unwrap_err();
            assert!(e.to_string().contains("invalid alpha"), "{e}");
        }
        // Validation precedes any write (the accepted calls above had zero gradients).
        assert_eq!(p, [1.0, 2.0, 3.0]);
        assert_eq!((b, m, v), ([0.0; 3], [0.0; 3], [0.0; 3]));
    }

    /// The split a planned update uses — scalars from [`AdamW::at`] / [`EmaStep::new`], then
    /// the per-element part — is the one-call kernel bit for bit, over several steps.
    #[test]
    fn split_updates_are_the_one_call_kernels_bit_for_bit() {
        let n = 33;
        let mut p1 = to_f32(&rand_vec(1, n, -1.0, 1.0));
        let (mut m1, mut v1) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (mut p2, mut m2, mut v2) = (p1.clone(), m1.clone(), v1.clone());
        for step in 1..=4 {
            let g = to_f32(&rand_vec(10 + step, n, -2.0, 2.0));
            let cfg = AdamW {
                lr: 0.1 / step as f64,
                ..ADAM
            };
            adamw_step(&mut p1, &g, &mut m1, &mut v1, &cfg, step).unwrap();
            let sc = cfg.at::<f32>(step).unwrap();
            adamw_apply(&mut p2, &g, &mut m2, &mut v2, &sc).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p1), bits(&p2), "step {step}");
            assert_eq!(
                (bits(&m1), bits(&v1)),
                (bits(&m2), bits(&v2)),
                "step {step}"
            );
            let alpha = 0.9 + 0.01 * step as f64;
            ema_update(&mut m1, &g, alpha).unwrap();
            ema_apply(&mut m2, &g, &EmaStep::new(alpha).unwrap()).unwrap();
            assert_eq!(bits(&m1), bits(&m2), "ema step {step}");
        }
        // The scalars are validated where they are derived.
        assert!(ADAM.at::<f32>(0).is_err());
        assert!(AdamW { beta1: 1.0, ..ADAM }.at::<f32>(1).is_err());
        assert!(AdamW { lr: -1.0, ..ADAM }.at::<f32>(1).is_err());
        assert!(EmaStep::<f32>::new(1.5).is_err());
        assert!(EmaStep::<f32>::new(f64::NAN).is_err());
    }
}
