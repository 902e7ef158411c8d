//! CUDA launchers of [`crate::optim`]: SGD (momentum, Nesterov, weight decay), AdamW and the EMA
//! update, in place over one flat parameter tensor per launch (`kernels/cuda/optim.cu`). The
//! hyper-parameters are validated, and every derived scalar computed, by the CPU's own code
//! (`sgd_step` on empty slices, [`AdamW::at`], [`EmaStep::new`]), so the errors are the CPU's
//! and the updates bit-identical.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: multi-tensor fusion, gradient clipping, AMSGrad.

use super::common::{expect, grid, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::OPTIM;
use super::CudaError;
use crate::optim::{AdamW, EmaStep, Sgd};
use cudarc::driver::PushKernelArg;

/// [`crate::optim::sgd_step`] in place. param, grad: same length; momentum_buf: same length, or
/// empty when `momentum = 0`.
pub fn sgd_step(
    dev: &Device,
    param: &mut impl DeviceBufMut<f32>,
    grad: &impl DeviceBuf<f32>,
    momentum_buf: &mut impl DeviceBufMut<f32>,
    cfg: &Sgd,
) -> Result<(), CudaError> {
    const K: &str = "sgd_step";
    // The CPU kernel on empty slices validates the hyper-parameters with its own messages.
    crate::optim::sgd_step::<f32>(&mut [], &[], &mut [], cfg)?;
    let n = param.elems();
    expect(K, "grad", grad, n)?;
    let use_buf = cfg.momentum != 0.0;
    if use_buf || momentum_buf.elems() != 0 {
        expect(K, "momentum_buf", momentum_buf, n)?;
    }
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pp, pg, n64) = (param.device_addr(s), grad.device_addr(s), n as u64);
    let pb = if use_buf {
        momentum_buf.device_addr(s)
    } else {
        0
    };
    // Rounded from f64 exactly as the CPU's `T::of`.
    let (lr, mu, wd) = (cfg.lr as f32, cfg.momentum as f32, cfg.weight_decay as f32);
    let (decay, use_buf, nesterov) = (
        i32::from(cfg.weight_decay != 0.0),
        i32::from(use_buf),
        i32::from(cfg.nesterov),
    );
    launch!(dev, OPTIM, "sgd_step", grid(n); pg, n64, lr, mu, wd, decay, use_buf, nesterov, pp, pb)
}

/// [`crate::optim::adamw_step`] in place; `step` is 1-based. param, grad, m, v: same length.
pub fn adamw_step(
    dev: &Device,
    param: &mut impl DeviceBufMut<f32>,
    grad: &impl DeviceBuf<f32>,
    m: &mut impl DeviceBufMut<f32>,
    v: &mut impl DeviceBufMut<f32>,
    cfg: &AdamW,
    step: u64,
) -> Result<(), CudaError> {
    const K: &str = "adamw_step";
    // Validated and derived by the CPU's own code (f64, then rounded once), so the updates are
    // bit-identical.
    let sc = cfg.at::<f32>(step)?;
    let n = param.elems();
    expect(K, "grad", grad, n)?;
    expect(K, "m", m, n)?;
    expect(K, "v", v, n)?;
    if n == 0 {
        return Ok(());
    }
    let (shrink, b1, b2, one_b1, one_b2) = (sc.shrink, sc.b1, sc.b2, sc.one_b1, sc.one_b2);
    let (step_size, bc2_sqrt, eps) = (sc.step_size, sc.bc2_sqrt, sc.eps);
    let s = dev.stream();
    let (pp, pg, pm, pv, n64) = (
        param.device_addr(s),
        grad.device_addr(s),
        m.device_addr(s),
        v.device_addr(s),
        n as u64,
    );
    launch!(dev, OPTIM, "adamw_step", grid(n);
        pg, n64, shrink, b1, b2, one_b1, one_b2, step_size, bc2_sqrt, eps, pp, pm, pv)
}

/// [`crate::optim::ema_update`]: target = α·target + (1−α)·source. Same length.
pub fn ema_update(
    dev: &Device,
    target: &mut impl DeviceBufMut<f32>,
    source: &impl DeviceBuf<f32>,
    alpha: f64,
) -> Result<(), CudaError> {
    let f = EmaStep::<f32>::new(alpha)?;
    let n = target.elems();
    expect("ema_update", "source", source, n)?;
    if n == 0 {
        return Ok(());
    }
    let (a, b) = (f.keep, f.take);
    let s = dev.stream();
    let (pt, ps, n64) = (target.device_addr(s), source.device_addr(s), n as u64);
    launch!(dev, OPTIM, "ema_update", grid(n); ps, n64, a, b, pt)
}
