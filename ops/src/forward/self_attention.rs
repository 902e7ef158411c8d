//! `self_attention`: dot-product attention among the pixels of one image, y_i = Σ_j A_ij·v_j
//! with A_i = softmax_j(scale·q_i·k_j − 1e9·(1 − valid_i·valid_j)) — the refinement of
//! PseudoSeg's self-attention Grad-CAM head (googleinterns/wss core/train_utils_core.py
//! `compute_self_att_v2` with `linformer=False`, as `compute_cam_v2` calls it:
//! `tf.matmul(q, k, transpose_b=True) / math.sqrt(attention_dim)`, `+= (1 - final_mask) *
//! -1e9`, `tf.nn.softmax`, `tf.matmul(att_weights, value)`).
//!
//! Shapes: `q`, `k` f32[N, d, H, W], `v` f32[N, c, H, W], `valid` f32[N, H, W] (optional; 1 where
//! a pixel is real, 0 at padding: excluded pairs get weight 0) → `y` f32[N, c, H, W]. No skip
//! connection (the model adds one) and no projections (1×1 convs in the model).
//!
//! Backward: `self_attention_bwd` (below, unregistered) recomputes A and emits dq, dk, dv, each
//! only where needed. `valid` is a constant (a padding mask): one that depends on trainable
//! state is an error. Kernels: `attention::attention_fwd/bwd` (GEMMs and the channel softmax).
//!
//! Not here: multiple heads, Linformer-style down-sampled keys and values.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::attention::{attention_bwd, attention_fwd, AttentionShape};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use serde::Deserialize;

/// The `self_attention` op.
pub struct SelfAttention;

/// Params of `self_attention`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The factor on q·k; default 1/√d (d = the channels of `q`), the official code's.
    #[serde(default)]
    pub scale: Option<f32>,
}

/// The extents and scale of a call, checked: q, k [N, d, H, W]; v [N, c, H, W]; valid [N, H, W].
fn extents(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<(AttentionShape, f32), String> {
    let ports = SelfAttention::INPUTS;
    let q = io::nchw_f32(ports, inputs, 0)?;
    let k = io::spec(ports, inputs, 1)?;
    if *k != TensorSpec::nchw(q) {
        return Err(format!(
            "`k` must match `q` ({}), got {k}",
            TensorSpec::nchw(q)
        ));
    }
    let v = io::nchw_f32(ports, inputs, 2)?;
    if (v.n, v.h, v.w) != (q.n, q.h, q.w) {
        return Err(format!(
            "`v` must have the N, H, W of `q` ({}), got {}",
            TensorSpec::nchw(q),
            TensorSpec::nchw(v)
        ));
    }
    if let Some(m) = inputs.get(3).copied().flatten() {
        if m.dtype != DType::F32 || m.shape != [q.n, q.h, q.w] {
            return Err(format!(
                "`valid` must be {} (N, H, W of `q`), got {m}",
                TensorSpec::f32(&[q.n, q.h, q.w])
            ));
        }
    }
    if q.c == 0 {
        return Err(format!(
            "`q` must have at least one channel, got {}",
            TensorSpec::nchw(q)
        ));
    }
    let scale = p.scale.unwrap_or(1.0 / (q.c as f32).sqrt());
    let shape = AttentionShape {
        n: q.n,
        d: q.c,
        c: v.c,
        positions: q.h * q.w,
    };
    Ok((shape, scale))
}

/// The specs of run-time inputs.
fn specs<'a>(inputs: &[Option<&'a Tensor>]) -> Vec<Option<&'a TensorSpec>> {
    inputs.iter().map(|t| t.map(Tensor::spec)).collect()
}

/// [`specs`] of device inputs.
#[cfg(feature = "cuda")]
fn dev_specs<'a>(inputs: &[Option<&'a DeviceTensor>]) -> Vec<Option<&'a TensorSpec>> {
    inputs.iter().map(|t| t.map(|t| &t.spec)).collect()
}

impl Op for SelfAttention {
    const NAME: &'static str = "self_attention";
    const SUMMARY: &'static str =
        "pixel self-attention y_i = Σ_j softmax_j(scale·q_i·k_j)·v_j per image (PseudoSeg's SGC)";
    const INPUTS: &'static [Port] = &[
        Port::req("q", "f32[N, d, H, W] queries"),
        Port::req("k", "f32[N, d, H, W] keys"),
        Port::req("v", "f32[N, c, H, W] values"),
        Port::opt(
            "valid",
            "f32[N, H, W] 1 at real pixels, 0 at padding (a constant)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, c, H, W]")];
    const EXAMPLE: &'static str = "name: attend\nop: self_attention\n\
        inputs: { q: query.y, k: key.y, v: cam.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        GradCase {
            params: "{}",
            feeds: &[
                ("q", Feed::Trainable(&[2, 3, 2, 3])),
                ("k", Feed::Trainable(&[2, 3, 2, 3])),
                ("v", Feed::Trainable(&[2, 2, 2, 3])),
            ],
        },
        // A padding mask and an explicit scale; v a constant (only dq, dk).
        GradCase {
            params: "{ scale: 0.5 }",
            feeds: &[
                ("q", Feed::Trainable(&[2, 3, 2, 3])),
                ("k", Feed::Trainable(&[2, 3, 2, 3])),
                ("v", Feed::Constant(&[2, 2, 2, 3])),
                ("valid", Feed::Binary(&[2, 2, 3])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        extents(p, inputs)?;
        Ok(vec![TensorSpec::nchw(io::nchw_f32(
            Self::INPUTS,
            inputs,
            2,
        )?)])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let (shape, scale) =
            extents(p, &specs(inputs)).map_err(|problem| OpError::Input { port: "q", problem })?;
        let q = io::f32(Self::INPUTS, inputs, 0)?;
        let k = io::f32(Self::INPUTS, inputs, 1)?;
        let v = io::f32(Self::INPUTS, inputs, 2)?;
        let valid = io::f32_opt(Self::INPUTS, inputs, 3)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(attention_fwd(q, k, v, valid, shape, scale, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let (shape, scale) = extents(p, &dev_specs(inputs))
            .map_err(|problem| OpError::Input { port: "q", problem })?;
        let q = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let k = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let v = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let valid = dev_io::f32_opt(Self::INPUTS, inputs, 3)?;
        let valid = valid.as_ref().map(|m| m as &dyn cuda::DeviceBuf<f32>);
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let dev = cx.dev;
        Ok(cuda::attention::attention_fwd(
            dev, &q, &k, &v, valid, shape, scale, &mut y,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `self_attention`: one `self_attention_bwd` node for whichever of dq, dk, dv is
/// needed; a `valid` that would need a gradient is refused.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    let ports = SelfAttention::INPUTS;
    grad::constant_input(g, ports, 3, SelfAttention::NAME, "the validity mask")?;
    let want = [g.needs_grad(0), g.needs_grad(1), g.needs_grad(2)];
    if !want.iter().any(|&w| w) {
        return Ok(());
    }
    let q = grad::input(g, ports, 0)?;
    let k = grad::input(g, ports, 1)?;
    let v = grad::input(g, ports, 2)?;
    let dy = grad::grad_output(g, SelfAttention::OUTPUTS, 0)?;
    let params = BwdParams {
        scale: p.scale,
        want,
    };
    let inputs = vec![Some(q), Some(k), Some(v), g.input(3), Some(dy)];
    let grads: [_; 3] = grad::outputs(g.emit::<SelfAttentionBwd>(params, inputs)?)?;
    for (i, (gi, wanted)) in grads.into_iter().zip(want).enumerate() {
        if wanted {
            g.set_grad(i, gi);
        }
    }
    Ok(())
}

/// Backward of `self_attention` (emitted by its VJP, not registered).
struct SelfAttentionBwd;

/// Params of `self_attention_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward's scale.
    scale: Option<f32>,
    /// Produce dq, dk, dv (else an empty output).
    want: [bool; 3],
}

impl Op for SelfAttentionBwd {
    const NAME: &'static str = "self_attention_bwd";
    const SUMMARY: &'static str = "gradients of self_attention w.r.t. q, k and v";
    const INPUTS: &'static [Port] = &[
        Port::req("q", "f32[N, d, H, W]: self_attention's q"),
        Port::req("k", "f32[N, d, H, W]: its k"),
        Port::req("v", "f32[N, c, H, W]: its v"),
        Port::opt("valid", "f32[N, H, W]: its mask, if it had one"),
        Port::req("dy", "f32[N, c, H, W]: the gradient of its `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("dq", "f32[N, d, H, W], or f32[0] when not wanted"),
        Port::req("dk", "f32[N, d, H, W], or f32[0] when not wanted"),
        Port::req("dv", "f32[N, c, H, W], or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let forward = Params { scale: p.scale };
        extents(&forward, &inputs[..inputs.len().min(4)])?;
        let q = TensorSpec::nchw(io::nchw_f32(Self::INPUTS, inputs, 0)?);
        let v = TensorSpec::nchw(io::nchw_f32(Self::INPUTS, inputs, 2)?);
        let dy = io::spec(Self::INPUTS, inputs, 4)?;
        if *dy != v {
            return Err(format!("`dy` must match `v` ({v}), got {dy}"));
        }
        let part = |wanted: bool, spec: &TensorSpec| match wanted {
            true => spec.clone(),
            false => TensorSpec::f32(&[0]),
        };
        Ok(vec![
            part(p.want[0], &q),
            part(p.want[1], &q),
            part(p.want[2], &v),
        ])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let forward = Params { scale: p.scale };
        let (shape, scale) = extents(&forward, &specs(&inputs[..inputs.len().min(4)]))
            .map_err(|problem| OpError::Input { port: "q", problem })?;
        let q = io::f32(Self::INPUTS, inputs, 0)?;
        let k = io::f32(Self::INPUTS, inputs, 1)?;
        let v = io::f32(Self::INPUTS, inputs, 2)?;
        let valid = io::f32_opt(Self::INPUTS, inputs, 3)?;
        let dy = io::f32(Self::INPUTS, inputs, 4)?;
        let n = outputs.len();
        let [dq, dk, dv] = outputs else {
            return Err(OpError::Output {
                port: "dq",
                problem: format!("expected 3 outputs, got {n}"),
            });
        };
        let one = std::slice::from_mut;
        let dq = match p.want[0] {
            true => Some(io::f32_out(Self::OUTPUTS, one(dq), 0)?),
            false => None,
        };
        let dk = match p.want[1] {
            true => Some(io::f32_out(&Self::OUTPUTS[1..], one(dk), 0)?),
            false => None,
        };
        let dv = match p.want[2] {
            true => Some(io::f32_out(&Self::OUTPUTS[2..], one(dv), 0)?),
            false => None,
        };
        Ok(attention_bwd(q, k, v, valid, shape, scale, dy, dq, dk, dv)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let forward = Params { scale: p.scale };
        let (shape, scale) = extents(&forward, &dev_specs(&inputs[..inputs.len().min(4)]))
            .map_err(|problem| OpError::Input { port: "q", problem })?;
        let q = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let k = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let v = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let valid = dev_io::f32_opt(Self::INPUTS, inputs, 3)?;
        let valid = valid.as_ref().map(|m| m as &dyn cuda::DeviceBuf<f32>);
        let dy = dev_io::f32(Self::INPUTS, inputs, 4)?;
        let out = |want: bool, k: usize| match want {
            true => dev_io::f32_out(Self::OUTPUTS, outputs, k).map(Some),
            false => Ok(None),
        };
        let (mut dq, mut dk, mut dv) = (out(p.want[0], 0)?, out(p.want[1], 1)?, out(p.want[2], 2)?);
        Ok(cuda::attention::attention_bwd(
            cx.dev,
            &q,
            &k,
            &v,
            valid,
            shape,
            scale,
            &dy,
            dev_io::opt_out(&mut dq),
            dev_io::opt_out(&mut dk),
            dev_io::opt_out(&mut dv),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_default_scale() {
        // One image, d = 4, c = 1, two positions. q = (1, 1, 1, 1) at pixel 0 and 0 at pixel 1;
        // k = (ln 3)/2 per channel at pixel 0, 0 at pixel 1. Default scale 1/√4: row 0 scores
        // (½·4·(ln 3)/2, 0) = (ln 3, 0) → A = (3/4, 1/4); row 1 (0, 0) → (1/2, 1/2).
        // v = (4, 8): y = (5, 6).
        let h = 3f32.ln() / 2.0;
        let q = f32s(&[1, 4, 1, 2], &[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        let k = f32s(&[1, 4, 1, 2], &[h, 0.0, h, 0.0, h, 0.0, h, 0.0]);
        let v = f32s(&[1, 1, 1, 2], &[4.0, 8.0]);
        let y = run(
            "name: a\nop: self_attention\n",
            &[Some(q), Some(k), Some(v), None],
        );
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 1, 2]));
        assert_close(y[0].f32().unwrap(), &[5.0, 6.0], 1e-5);
    }

    #[test]
    fn infer_checks_k_v_and_valid() {
        let node = "name: a\nop: self_attention\n";
        let q = Some(TensorSpec::f32(&[2, 8, 4, 4]));
        let v = Some(TensorSpec::f32(&[2, 5, 4, 4]));
        let e = infer_err(
            node,
            &[
                q.clone(),
                Some(TensorSpec::f32(&[2, 4, 4, 4])),
                v.clone(),
                None,
            ],
        );
        assert_eq!(
            e,
            "`k` must match `q` (f32[2, 8, 4, 4]), got f32[2, 4, 4, 4]"
        );
        let e = infer_err(
            node,
            &[
                q.clone(),
                q.clone(),
                Some(TensorSpec::f32(&[2, 5, 2, 2])),
                None,
            ],
        );
        assert_eq!(
            e,
            "`v` must have the N, H, W of `q` (f32[2, 8, 4, 4]), got f32[2, 5, 2, 2]"
        );
        let e = infer_err(node, &[q.clone(), q, v, Some(TensorSpec::f32(&[2, 16]))]);
        assert_eq!(
            e,
            "`valid` must be f32[2, 4, 4] (N, H, W of `q`), got f32[2, 16]"
        );
    }
}
