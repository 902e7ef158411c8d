//! Rust launchers, one per CUDA kernel, each named after its CPU reference and taking the same
//! arguments in the same order (inputs → shape → params → outputs), with device buffers in place
//! of slices. Lengths and hyper-parameters are validated on the host with the CPU kernel's own
//! error (a `KernelError` naming the kernel and argument) before anything is enqueued.
//!
//! Launchers enqueue on [`Device::stream`] and return without waiting. Where a device kernel
//! cannot report an error (a bad class label), the result says so in-band: the cross-entropy
//! loss becomes NaN, `confusion_add` counts the pixel in `bad`.
//!
//! Scratch (reduction partials) is allocated per call on the stream (stream-ordered, freed after
//! the launches that use it); moving it into the plan's arena is later work.
//!
//! Not here: batch norm, pooling, resize, softmax (`nn.rs`), augment/mix (`augment_mix.rs`);
//! conv and the soft losses (issue 5, later).

use super::common::{blocks, expect, grid, launch, one_block, scratch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::{ARGMAX, ELEMENTWISE, METRICS, OPTIM, PHILOX, REDUCE, SOFTMAX_CE};
use super::CudaError;
use crate::loss::{CrossEntropyParams, Denominator};
use crate::optim::{AdamW, Sgd};
use crate::{KernelError, Nchw};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Blocks of the two-pass reductions: enough to fill a GPU, few enough for one finishing block.
pub(crate) const REDUCE_BLOCKS: usize = 1024;

// ---------------------------------------------------------------- elementwise.cu

/// [`crate::elementwise::add_fwd`]: y = a + b. a, b, y: same length.
pub fn add_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    binary(dev, "add_fwd", a, b, y)
}

/// [`crate::elementwise::mul_fwd`]: y = a · b. a, b, y: same length.
pub fn mul_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    binary(dev, "mul_fwd", a, b, y)
}

fn binary(
    dev: &Device,
    kernel: &'static str,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = a.elems();
    expect(kernel, "b", b, n)?;
    expect(kernel, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pa, pb, py, n64) = (
        a.device_addr(s),
        b.device_addr(s),
        y.device_addr(s),
        n as u64,
    );
    match kernel {
        "add_fwd" => launch!(dev, ELEMENTWISE, "add_fwd", grid(n); pa, pb, n64, py),
        _ => launch!(dev, ELEMENTWISE, "mul_fwd", grid(n); pa, pb, n64, py),
    }
}

/// [`crate::elementwise::mul_bwd`]: da = dy · b, db = dy · a. All the same length.
pub fn mul_bwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    b: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    da: &mut impl DeviceBufMut<f32>,
    db: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "mul_bwd";
    let n = a.elems();
    expect(K, "b", b, n)?;
    expect(K, "dy", dy, n)?;
    expect(K, "da", da, n)?;
    expect(K, "db", db, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pa, pb, pdy, pda, pdb) = (
        a.device_addr(s),
        b.device_addr(s),
        dy.device_addr(s),
        da.device_addr(s),
        db.device_addr(s),
    );
    let n64 = n as u64;
    launch!(dev, ELEMENTWISE, "mul_bwd", grid(n); pa, pb, pdy, n64, pda, pdb)
}

/// [`crate::elementwise::scale_fwd`]: y = alpha · x. x, y: same length.
pub fn scale_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    alpha: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("scale_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64) = (x.device_addr(s), y.device_addr(s), n as u64);
    launch!(dev, ELEMENTWISE, "scale_fwd", grid(n); px, n64, alpha, py)
}

/// [`crate::activation::relu_fwd`]: y = max(x, 0). x, y: same length.
pub fn relu_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("relu_fwd", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, py, n64) = (x.device_addr(s), y.device_addr(s), n as u64);
    launch!(dev, ELEMENTWISE, "relu_fwd", grid(n); px, n64, py)
}

/// [`crate::activation::relu_bwd`]: dx = dy · [x > 0]. x, dy, dx: same length.
pub fn relu_bwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    dy: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    expect("relu_bwd", "dy", dy, n)?;
    expect("relu_bwd", "dx", dx, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pdy, pdx, n64) = (
        x.device_addr(s),
        dy.device_addr(s),
        dx.device_addr(s),
        n as u64,
    );
    launch!(dev, ELEMENTWISE, "relu_bwd", grid(n); px, pdy, n64, pdx)
}

// ---------------------------------------------------------------- philox.cu

/// `out[j] = Philox::new(seed, stream).u32_at(offset + j)`.
pub fn philox_u32(
    dev: &Device,
    seed: u64,
    stream: u64,
    offset: u64,
    out: &mut impl DeviceBufMut<u32>,
) -> Result<(), CudaError> {
    let n = out.elems();
    if n == 0 {
        return Ok(());
    }
    let (po, n64) = (out.device_addr(dev.stream()), n as u64);
    launch!(dev, PHILOX, "philox_u32", grid(n); seed, stream, offset, n64, po)
}

/// [`crate::philox::Philox::fill_uniform`] of `Philox::new(seed, stream)`, bit-identical.
pub fn fill_uniform(
    dev: &Device,
    seed: u64,
    stream: u64,
    offset: u64,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = out.elems();
    if n == 0 {
        return Ok(());
    }
    let (po, n64) = (out.device_addr(dev.stream()), n as u64);
    launch!(dev, PHILOX, "philox_uniform", grid(n); seed, stream, offset, n64, po)
}

/// [`crate::philox::Philox::fill_normal`] of `Philox::new(seed, stream)`, bit-identical.
pub fn fill_normal(
    dev: &Device,
    seed: u64,
    stream: u64,
    offset: u64,
    mean: f32,
    std: f32,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = out.elems();
    if n == 0 {
        return Ok(());
    }
    let (po, n64) = (out.device_addr(dev.stream()), n as u64);
    launch!(dev, PHILOX, "philox_normal", grid(n); seed, stream, offset, n64, mean, std, po)
}

// ---------------------------------------------------------------- softmax_ce.cu

/// (mode, constant) of a denominator as `ce_finalize` reads them; rejects a bad constant with
/// the CPU's message. Also used by the masked losses in `more.rs`.
pub(crate) fn denominator_code(
    kernel: &'static str,
    d: Denominator,
) -> Result<(i32, f64), CudaError> {
    Ok(match d {
        Denominator::ValidPixels => (0, 0.0),
        Denominator::AllPixels => (1, 0.0),
        Denominator::WeightSum => (2, 0.0),
        Denominator::Constant(c) if c.is_finite() && c >= 0.0 => (3, c),
        Denominator::Constant(c) => {
            return Err(KernelError::Shape {
                kernel,
                reason: format!("Denominator::Constant({c}) must be finite and >= 0"),
            }
            .into())
        }
    })
}

fn check_ce_common(
    kernel: &'static str,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<i32>,
    weight: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect(kernel, "logits", logits, shape.len())?;
    expect(kernel, "target", target, pixels)?;
    if let Some(w) = weight {
        expect(kernel, "weight", w, pixels)?;
    }
    Ok(())
}

/// [`crate::loss::cross_entropy_fwd`]: loss[0] = Σ_valid w·(−log softmax(x)_t) / D.
///
/// logits: [N,K,H,W]; target: [N,H,W] i32; weight: [N,H,W] or `None`; pixel_loss: [N,H,W] or
/// `None`; loss: [1]. A target neither `ignore_index` nor in [0, K) makes the loss NaN (the CPU
/// returns an error).
pub fn cross_entropy_fwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<i32>,
    weight: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    params: CrossEntropyParams,
    pixel_loss: Option<&mut dyn DeviceBufMut<f32>>,
    loss: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "cross_entropy_fwd";
    check_ce_common(K, logits, target, weight, shape)?;
    let pixels = shape.n * shape.plane();
    if let Some(pl) = pixel_loss.as_deref() {
        expect(K, "pixel_loss", pl, pixels)?;
    }
    expect(K, "loss", loss, 1)?;
    let (mode, constant) = denominator_code(K, params.denominator)?;
    if shape.c == 0 && pixels > 0 {
        return Err(KernelError::Shape {
            kernel: K,
            reason: "cross entropy over K = 0 classes is undefined".into(),
        }
        .into());
    }
    let s = dev.stream();
    let nblocks = blocks(pixels, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let (px, pt) = (logits.device_addr(s), target.device_addr(s));
    let pw = weight.map_or(0, |w| w.device_addr(s));
    let ppl = pixel_loss.map_or(0, |p| p.device_addr(s));
    let (pp, pinv, ploss) = (
        partials.device_addr(s),
        inv_d.device_addr(s),
        loss.device_addr(s),
    );
    let (pixels64, k, plane, ignore) = (
        pixels as u64,
        shape.c as u32,
        shape.plane() as u64,
        params.ignore_index,
    );
    let cfg = LaunchConfig {
        grid_dim: (nblocks, 1, 1),
        ..grid(pixels)
    };
    launch!(dev, SOFTMAX_CE, "ce_fwd_partials", cfg;
        px, pt, pw, pixels64, k, plane, ignore, ppl, pp)?;
    launch!(dev, SOFTMAX_CE, "ce_finalize", one_block();
        pp, nblocks, mode, constant, pixels64, ploss, pinv)
}

/// [`crate::loss::cross_entropy_bwd`]: dlogits = dloss·w·(softmax − onehot)/D at valid pixels,
/// 0 elsewhere. logits, dlogits: [N,K,H,W]; target, weight: [N,H,W]; dloss: [1] on the device.
pub fn cross_entropy_bwd(
    dev: &Device,
    logits: &impl DeviceBuf<f32>,
    target: &impl DeviceBuf<i32>,
    weight: Option<&dyn DeviceBuf<f32>>,
    shape: Nchw,
    params: CrossEntropyParams,
    dloss: &impl DeviceBuf<f32>,
    dlogits: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "cross_entropy_bwd";
    check_ce_common(K, logits, target, weight, shape)?;
    expect(K, "dloss", dloss, 1)?;
    expect(K, "dlogits", dlogits, shape.len())?;
    let (mode, constant) = denominator_code(K, params.denominator)?;
    let pixels = shape.n * shape.plane();
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let nblocks = blocks(pixels, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, 4 * nblocks as usize)?;
    let inv_d = scratch::<f64>(dev, 1)?;
    let unused_loss = scratch::<f32>(dev, 1)?;
    let (px, pt) = (logits.device_addr(s), target.device_addr(s));
    let pw = weight.map_or(0, |w| w.device_addr(s));
    let (pp, pinv, ploss) = (
        partials.device_addr(s),
        inv_d.device_addr(s),
        unused_loss.device_addr(s),
    );
    let (pdl, pg) = (dloss.device_addr(s), dlogits.device_addr(s));
    let (pixels64, k, plane, ignore) = (
        pixels as u64,
        shape.c as u32,
        shape.plane() as u64,
        params.ignore_index,
    );
    let cfg = LaunchConfig {
        grid_dim: (nblocks, 1, 1),
        ..grid(pixels)
    };
    launch!(dev, SOFTMAX_CE, "ce_stats_partials", cfg; pt, pw, pixels64, k, ignore, pp)?;
    launch!(dev, SOFTMAX_CE, "ce_finalize", one_block();
        pp, nblocks, mode, constant, pixels64, ploss, pinv)?;
    launch!(dev, SOFTMAX_CE, "ce_bwd", grid(pixels);
        px, pt, pw, pdl, pinv, pixels64, k, plane, ignore, pg)
}

// ---------------------------------------------------------------- optim.cu

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
    crate::optim::adamw_step::<f32>(&mut [], &[], &mut [], &mut [], cfg, step)?;
    let n = param.elems();
    expect(K, "grad", grad, n)?;
    expect(K, "m", m, n)?;
    expect(K, "v", v, n)?;
    if n == 0 {
        return Ok(());
    }
    // Scalars exactly as the CPU kernel derives them (f64, then rounded once).
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let bc1 = 1.0 - cfg.beta1.powi(t);
    let bc2 = 1.0 - cfg.beta2.powi(t);
    let step_size = (cfg.lr / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let shrink = (1.0 - cfg.lr * cfg.weight_decay) as f32;
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let (one_b1, one_b2) = ((1.0 - cfg.beta1) as f32, (1.0 - cfg.beta2) as f32);
    let eps = cfg.eps as f32;
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
    crate::optim::ema_update::<f32>(&mut [], &[], alpha)?;
    let n = target.elems();
    expect("ema_update", "source", source, n)?;
    if n == 0 {
        return Ok(());
    }
    let (a, b) = (alpha as f32, (1.0 - alpha) as f32);
    let s = dev.stream();
    let (pt, ps, n64) = (target.device_addr(s), source.device_addr(s), n as u64);
    launch!(dev, OPTIM, "ema_update", grid(n); ps, n64, a, b, pt)
}

// ---------------------------------------------------------------- reduce.cu

fn reduce_sum(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    divisor: f64,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = x.elems();
    let nblocks = blocks(n, REDUCE_BLOCKS);
    let partials = scratch::<f64>(dev, nblocks as usize)?;
    let s = dev.stream();
    let (px, pp, po, n64) = (
        x.device_addr(s),
        partials.device_addr(s),
        out.device_addr(s),
        n as u64,
    );
    let cfg = LaunchConfig {
        grid_dim: (nblocks, 1, 1),
        ..grid(n)
    };
    launch!(dev, REDUCE, "reduce_sum_partials", cfg; px, n64, pp)?;
    launch!(dev, REDUCE, "reduce_sum_finalize", one_block(); pp, nblocks, divisor, po)
}

/// [`crate::reduce::sum_fwd`]: out[0] = Σ x, accumulated in f64 (0 when empty). out: [1].
pub fn sum_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("sum_fwd", "out", out, 1)?;
    reduce_sum(dev, x, 1.0, out)
}

/// [`crate::reduce::mean_fwd`]: out[0] = Σ x / len. Errors on an empty `x`. out: [1].
pub fn mean_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("mean_fwd", "out", out, 1)?;
    if x.elems() == 0 {
        crate::reduce::mean_fwd::<f32>(&[])?;
    }
    reduce_sum(dev, x, x.elems() as f64, out)
}

fn fill_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    divisor: f64,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = dx.elems();
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pdy, pdx, n64) = (dy.device_addr(s), dx.device_addr(s), n as u64);
    launch!(dev, REDUCE, "reduce_fill_bwd", grid(n); pdy, n64, divisor, pdx)
}

/// [`crate::reduce::sum_bwd`]: every dx[i] = dy[0]. dy: [1] on the device.
pub fn sum_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("sum_bwd", "dy", dy, 1)?;
    fill_bwd(dev, dy, 1.0, dx)
}

/// [`crate::reduce::mean_bwd`]: every dx[i] = dy[0] / len(dx). Errors on an empty `dx`.
pub fn mean_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    expect("mean_bwd", "dy", dy, 1)?;
    if dx.elems() == 0 {
        crate::reduce::mean_bwd::<f32>(0.0, &mut [])?;
    }
    fill_bwd(dev, dy, dx.elems() as f64, dx)
}

// ---------------------------------------------------------------- argmax.cu

fn check_classes(kernel: &'static str, shape: Nchw) -> Result<(), CudaError> {
    if shape.c == 0 && shape.n * shape.plane() > 0 {
        return Err(KernelError::Shape {
            kernel,
            reason: "max over K = 0 classes is undefined".into(),
        }
        .into());
    }
    Ok(())
}

/// [`crate::argmax::argmax_fwd`]: idx = argmax over K. x: [N,K,H,W]; idx: [N,H,W] i32.
pub fn argmax_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    idx: &mut impl DeviceBufMut<i32>,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect("argmax_fwd", "x", x, shape.len())?;
    expect("argmax_fwd", "idx", idx, pixels)?;
    check_classes("argmax_fwd", shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pi) = (x.device_addr(s), idx.device_addr(s));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, ARGMAX, "argmax_fwd", grid(pixels); px, p64, k, plane, pi)
}

/// [`crate::argmax::max_fwd`]: values, idx = max over K and its class (max_confidence).
/// x: [N,K,H,W]; values: [N,H,W]; idx: [N,H,W] i32.
pub fn max_fwd(
    dev: &Device,
    x: &impl DeviceBuf<f32>,
    shape: Nchw,
    values: &mut impl DeviceBufMut<f32>,
    idx: &mut impl DeviceBufMut<i32>,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect("max_fwd", "x", x, shape.len())?;
    expect("max_fwd", "values", values, pixels)?;
    expect("max_fwd", "idx", idx, pixels)?;
    check_classes("max_fwd", shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let (px, pv, pi) = (x.device_addr(s), values.device_addr(s), idx.device_addr(s));
    let (p64, k, plane) = (pixels as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, ARGMAX, "max_fwd", grid(pixels); px, p64, k, plane, pv, pi)
}

/// [`crate::argmax::max_bwd`]: dx[n,k,y,x] = dy[n,y,x] where idx = k, else 0. dy, idx:
/// [N,H,W]; dx: [N,K,H,W]. Unlike the CPU, an idx outside [0, K) is not reported (dx = 0).
pub fn max_bwd(
    dev: &Device,
    dy: &impl DeviceBuf<f32>,
    idx: &impl DeviceBuf<i32>,
    shape: Nchw,
    dx: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let pixels = shape.n * shape.plane();
    expect("max_bwd", "dy", dy, pixels)?;
    expect("max_bwd", "idx", idx, pixels)?;
    expect("max_bwd", "dx", dx, shape.len())?;
    if shape.is_empty() {
        return Ok(());
    }
    let s = dev.stream();
    let (pdy, pi, pdx) = (dy.device_addr(s), idx.device_addr(s), dx.device_addr(s));
    let (len, k, plane) = (shape.len() as u64, shape.c as u32, shape.plane() as u64);
    launch!(dev, ARGMAX, "max_bwd", grid(shape.len()); pdy, pi, len, k, plane, pdx)
}

// ---------------------------------------------------------------- metrics.cu

/// Largest K whose K·K u32 histogram goes in shared memory (48 KiB, the default limit).
const SHARED_HIST_MAX_CELLS: usize = 48 * 1024 / 4;

/// [`crate::metrics::label_agreement_fwd`]: counts[0] += pixels where pred == label, counts[1]
/// += pixels counted (label ≠ `ignore_index`, label ≠ `skip` when given, and mask > 0 where a
/// mask is given). pred, label:
/// [N,H,W] i32; mask: [N,H,W] f32 or none; counts: [2] u64, accumulated (zero it first for a
/// fresh count).
pub fn label_agreement_fwd(
    dev: &Device,
    pred: &impl DeviceBuf<i32>,
    label: &impl DeviceBuf<i32>,
    mask: Option<&dyn DeviceBuf<f32>>,
    ignore_index: i32,
    skip: Option<i32>,
    counts: &mut impl DeviceBufMut<u64>,
) -> Result<(), CudaError> {
    const K: &str = "label_agreement_fwd";
    let n = pred.elems();
    expect(K, "label", label, n)?;
    if let Some(m) = mask {
        expect(K, "mask", m, n)?;
    }
    expect(K, "counts", counts, 2)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pp, pl, pc) = (
        pred.device_addr(s),
        label.device_addr(s),
        counts.device_addr(s),
    );
    let pm = mask.map_or(0, |m| m.device_addr(s));
    let has_mask = i32::from(mask.is_some());
    let (has_skip, skip) = (i32::from(skip.is_some()), skip.unwrap_or(0));
    let n64 = n as u64;
    launch!(dev, METRICS, "label_agreement", grid(n);
        pp, pl, pm, has_mask, n64, ignore_index, has_skip, skip, pc)
}

/// [`crate::metrics::confusion_add`]: confusion[t·K + p] += 1 per pixel not `ignore_index`.
/// pred, label: [N,H,W] i32; confusion: [K,K] u64, accumulated; bad: [1] u32, accumulated with
/// the number of pixels whose label or prediction lies outside [0, K) (the CPU errors instead).
pub fn confusion_add(
    dev: &Device,
    pred: &impl DeviceBuf<i32>,
    label: &impl DeviceBuf<i32>,
    k: usize,
    ignore_index: i32,
    confusion: &mut impl DeviceBufMut<u64>,
    bad: &mut impl DeviceBufMut<u32>,
) -> Result<(), CudaError> {
    const K: &str = "confusion_add";
    let n = pred.elems();
    expect(K, "label", label, n)?;
    expect(K, "confusion", confusion, k * k)?;
    expect(K, "bad", bad, 1)?;
    if n == 0 {
        return Ok(());
    }
    let cells = k * k;
    let use_shared = i32::from(cells <= SHARED_HIST_MAX_CELLS);
    let cfg = LaunchConfig {
        shared_mem_bytes: if use_shared != 0 {
            (cells * 4) as u32
        } else {
            0
        },
        ..grid(n)
    };
    let s = dev.stream();
    let (pp, pl, pc, pb) = (
        pred.device_addr(s),
        label.device_addr(s),
        confusion.device_addr(s),
        bad.device_addr(s),
    );
    let (n64, k32) = (n as u64, k as i32);
    launch!(dev, METRICS, "confusion_add", cfg; pp, pl, n64, k32, ignore_index, use_shared, pc, pb)
}
