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

// ---- Guarded updates with device-side per-step scalars (the step's update nodes) ------------

/// The guard's device address, or 0 (null: always update).
fn guard_addr(dev: &Device, ok: Option<&dyn DeviceBuf<f32>>) -> Result<u64, CudaError> {
    match ok {
        None => Ok(0),
        Some(o) => {
            expect("guard", "ok", o, 1)?;
            Ok(o.device_addr(dev.stream()))
        }
    }
}

/// `scalars[at..at + k]` exists.
fn check_slots(
    kernel: &'static str,
    scalars: &impl DeviceBuf<f32>,
    at: usize,
    k: usize,
) -> Result<(), CudaError> {
    if at + k > scalars.elems() {
        return Err(super::common::shape_err(
            kernel,
            format!("slots {at}..{} of {} step scalars", at + k, scalars.elems()),
        ));
    }
    Ok(())
}

/// SGD in place with its learning rate read on the device from `scalars[at]`, skipped when the
/// guard `ok` is 0 (engine/src/update.rs `sgd_step`; `cfg.lr` is ignored, the rest validated as
/// the CPU validates it).
#[allow(clippy::too_many_arguments, reason = "the update node's inputs")]
pub fn sgd_step_guarded(
    dev: &Device,
    param: &mut impl DeviceBufMut<f32>,
    grad: &impl DeviceBuf<f32>,
    momentum_buf: &mut impl DeviceBufMut<f32>,
    scalars: &impl DeviceBuf<f32>,
    at: usize,
    cfg: &Sgd,
    ok: Option<&dyn DeviceBuf<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "sgd_step";
    crate::optim::sgd_step::<f32>(&mut [], &[], &mut [], &Sgd { lr: 0.0, ..*cfg })?;
    check_slots(K, scalars, at, 1)?;
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
    let (pp, pg, ps, n64, at64) = (
        param.device_addr(s),
        grad.device_addr(s),
        scalars.device_addr(s),
        n as u64,
        at as u64,
    );
    let pb = if use_buf {
        momentum_buf.device_addr(s)
    } else {
        0
    };
    let pok = guard_addr(dev, ok)?;
    let (mu, wd) = (cfg.momentum as f32, cfg.weight_decay as f32);
    let (decay, use_buf, nesterov) = (
        i32::from(cfg.weight_decay != 0.0),
        i32::from(use_buf),
        i32::from(cfg.nesterov),
    );
    launch!(dev, OPTIM, "sgd_step_guarded", grid(n);
        pg, n64, ps, at64, mu, wd, decay, use_buf, nesterov, pok, pp, pb)
}

/// AdamW in place with step size, shrink and √(1 − β2ᵗ) read on the device from
/// `scalars[at..at + 3]` (as [`crate::optim::AdamW::at`] derives them), skipped when the guard
/// is 0 (engine/src/update.rs `adamw_step`).
#[allow(clippy::too_many_arguments, reason = "the update node's inputs")]
pub fn adamw_step_guarded(
    dev: &Device,
    param: &mut impl DeviceBufMut<f32>,
    grad: &impl DeviceBuf<f32>,
    m: &mut impl DeviceBufMut<f32>,
    v: &mut impl DeviceBufMut<f32>,
    scalars: &impl DeviceBuf<f32>,
    at: usize,
    betas: (f64, f64),
    eps: f64,
    ok: Option<&dyn DeviceBuf<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "adamw_step";
    check_slots(K, scalars, at, 3)?;
    let n = param.elems();
    expect(K, "grad", grad, n)?;
    expect(K, "m", m, n)?;
    expect(K, "v", v, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pp, pg, pm, pv, ps, n64, at64) = (
        param.device_addr(s),
        grad.device_addr(s),
        m.device_addr(s),
        v.device_addr(s),
        scalars.device_addr(s),
        n as u64,
        at as u64,
    );
    let pok = guard_addr(dev, ok)?;
    // Rounded from f64 exactly as `AdamW::at` rounds them.
    let (b1, b2) = (betas.0 as f32, betas.1 as f32);
    let (ob1, ob2, e) = ((1.0 - betas.0) as f32, (1.0 - betas.1) as f32, eps as f32);
    launch!(dev, OPTIM, "adamw_step_guarded", grid(n);
        pg, n64, ps, at64, b1, b2, ob1, ob2, e, pok, pp, pm, pv)
}

/// EMA in place with α, 1 − α read on the device from `scalars[at..at + 2]`, skipped when the
/// guard is 0 (engine/src/update.rs `ema_update`).
pub fn ema_update_guarded(
    dev: &Device,
    target: &mut impl DeviceBufMut<f32>,
    source: &impl DeviceBuf<f32>,
    scalars: &impl DeviceBuf<f32>,
    at: usize,
    ok: Option<&dyn DeviceBuf<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "ema_update";
    check_slots(K, scalars, at, 2)?;
    let n = target.elems();
    expect(K, "source", source, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pt, psrc, ps, n64, at64) = (
        target.device_addr(s),
        source.device_addr(s),
        scalars.device_addr(s),
        n as u64,
        at as u64,
    );
    let pok = guard_addr(dev, ok)?;
    launch!(dev, OPTIM, "ema_update_guarded", grid(n); psrc, n64, ps, at64, pok, pt)
}

/// `target = value`, 4-byte word for word (f32 or i32), skipped when the guard is 0
/// (engine/src/update.rs `assign`).
pub fn assign_guarded<T>(
    dev: &Device,
    target: &mut impl DeviceBufMut<T>,
    value: &impl DeviceBuf<T>,
    ok: Option<&dyn DeviceBuf<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "assign";
    if std::mem::size_of::<T>() != 4 {
        return Err(super::common::shape_err(K, "4-byte elements only".into()));
    }
    let n = target.elems();
    expect(K, "value", value, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pt, pv, n64) = (target.device_addr(s), value.device_addr(s), n as u64);
    let pok = guard_addr(dev, ok)?;
    launch!(dev, OPTIM, "assign_guarded", grid(n); pv, n64, pok, pt)
}

/// `ok_out = ok_in ∧ every x finite` (ok_in absent: 1), two launches on the current stream
/// (engine/src/update.rs `finite_and`).
pub fn finite_and(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    ok_in: Option<&dyn DeviceBuf<f32>>,
    ok_out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("finite_and", "ok", ok_out, 1)?;
    let s = dev.stream();
    let (pin, pout) = (guard_addr(dev, ok_in)?, ok_out.device_addr(s));
    launch!(dev, OPTIM, "finite_and_init", super::common::one_block(); pin, pout)?;
    let n = x.elems();
    if n == 0 {
        return Ok(());
    }
    let (px, n64) = (x.device_addr(s), n as u64);
    launch!(dev, OPTIM, "finite_and_scan", grid(n); px, n64, pout)
}
