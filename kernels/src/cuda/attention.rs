//! CUDA launchers of [`crate::attention`]: pixel self-attention forward and backward
//! (`kernels/cuda/attention.cu`). The attention weights of one call live in a [N, P, P] scratch
//! buffer allocated per call on the stream; the sums run in another order than the CPU's GEMMs
//! and exp is CUDA's, so results agree to f32 rounding, not bit for bit.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: several heads, tiled GEMMs (the P of PseudoSeg's head is a bottleneck's pixels).

use super::common::{expect, grid, launch, scratch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::ATTENTION;
use super::CudaError;
use crate::attention::AttentionShape;
use cudarc::driver::{CudaSlice, PushKernelArg};

fn check(
    kernel: &'static str,
    q: &impl DeviceBuf<f32>,
    k: &impl DeviceBuf<f32>,
    v: &impl DeviceBuf<f32>,
    valid: Option<&dyn DeviceBuf<f32>>,
    s: AttentionShape,
) -> Result<(), CudaError> {
    expect(kernel, "q", q, s.n * s.d * s.positions)?;
    expect(kernel, "k", k, s.n * s.d * s.positions)?;
    expect(kernel, "v", v, s.n * s.c * s.positions)?;
    if let Some(m) = valid {
        expect(kernel, "valid", m, s.n * s.positions)?;
    }
    Ok(())
}

/// The [N, P, P] weights A (row i: softmax over keys j) in fresh scratch.
fn weights(
    dev: &Device,
    q: &impl DeviceBuf<f32>,
    k: &impl DeviceBuf<f32>,
    valid: Option<&dyn DeviceBuf<f32>>,
    s: AttentionShape,
    scale: f32,
) -> Result<CudaSlice<f32>, CudaError> {
    let a = scratch::<f32>(dev, s.n * s.positions * s.positions)?;
    let st = dev.stream();
    let (pq, pk, pa) = (q.device_addr(st), k.device_addr(st), a.device_addr(st));
    let pm = valid.map_or(0, |m| m.device_addr(st));
    let (n64, d, p64) = (s.n as u64, s.d as u32, s.positions as u64);
    launch!(dev, ATTENTION, "attention_weights", grid(s.n * s.positions);
        pq, pk, pm, n64, d, p64, scale, pa)?;
    Ok(a)
}

/// [`crate::attention::attention_fwd`]: y[c, i] = Σ_j softmax_j(scale·q_i·k_j, −1e9 at excluded
/// pairs)·v[c, j]. q, k: [N, d, P]; v, y: [N, c, P]; valid: [N, P] or `None`.
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd(
    dev: &Device,
    q: &impl DeviceBuf<f32>,
    k: &impl DeviceBuf<f32>,
    v: &impl DeviceBuf<f32>,
    valid: Option<&dyn DeviceBuf<f32>>,
    s: AttentionShape,
    scale: f32,
    y: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "attention_fwd";
    check(K, q, k, v, valid, s)?;
    expect(K, "y", y, s.n * s.c * s.positions)?;
    if s.n == 0 || s.positions == 0 || s.c == 0 {
        return Ok(());
    }
    let a = weights(dev, q, k, valid, s, scale)?;
    let st = dev.stream();
    let (pa, pv, py) = (a.device_addr(st), v.device_addr(st), y.device_addr(st));
    let (n64, c, p64) = (s.n as u64, s.c as u32, s.positions as u64);
    launch!(dev, ATTENTION, "attention_apply", grid(s.n * s.c * s.positions);
        pa, pv, n64, c, p64, py)
}

/// [`crate::attention::attention_bwd`]: dq, dk, dv of [`attention_fwd`], each written only when
/// given. q, k, dq, dk: [N, d, P]; v, dy, dv: [N, c, P]; valid: [N, P] or `None`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dev: &Device,
    q: &impl DeviceBuf<f32>,
    k: &impl DeviceBuf<f32>,
    v: &impl DeviceBuf<f32>,
    valid: Option<&dyn DeviceBuf<f32>>,
    s: AttentionShape,
    scale: f32,
    dy: &impl DeviceBuf<f32>,
    dq: Option<&mut dyn DeviceBufMut<f32>>,
    dk: Option<&mut dyn DeviceBufMut<f32>>,
    dv: Option<&mut dyn DeviceBufMut<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "attention_bwd";
    check(K, q, k, v, valid, s)?;
    let (qk, vc) = (s.n * s.d * s.positions, s.n * s.c * s.positions);
    expect(K, "dy", dy, vc)?;
    if let Some(g) = dq.as_deref() {
        expect(K, "dq", g, qk)?;
    }
    if let Some(g) = dk.as_deref() {
        expect(K, "dk", g, qk)?;
    }
    if let Some(g) = dv.as_deref() {
        expect(K, "dv", g, vc)?;
    }
    if s.n == 0 || s.positions == 0 {
        return Ok(());
    }
    let a = weights(dev, q, k, valid, s, scale)?;
    let st = dev.stream();
    let (pq, pk, pv, pdy, pa) = (
        q.device_addr(st),
        k.device_addr(st),
        v.device_addr(st),
        dy.device_addr(st),
        a.device_addr(st),
    );
    let pm = valid.map_or(0, |m| m.device_addr(st));
    let (n64, d, c, p64) = (s.n as u64, s.d as u32, s.c as u32, s.positions as u64);
    if let Some(g) = dv {
        let pg = g.device_addr(st);
        launch!(dev, ATTENTION, "attention_dv", grid(vc); pa, pdy, n64, c, p64, pg)?;
    }
    if dq.is_none() && dk.is_none() {
        return Ok(());
    }
    // A becomes dS in place (after dv has read A).
    launch!(dev, ATTENTION, "attention_dscores", grid(s.n * s.positions);
        pv, pdy, pm, n64, c, p64, pa)?;
    if let Some(g) = dq {
        let pg = g.device_addr(st);
        launch!(dev, ATTENTION, "attention_dq", grid(qk); pa, pk, n64, d, p64, scale, pg)?;
    }
    if let Some(g) = dk {
        let pg = g.device_addr(st);
        launch!(dev, ATTENTION, "attention_dk", grid(qk); pa, pq, n64, d, p64, scale, pg)?;
    }
    Ok(())
}
