//! `split_channels`: `head = x[:, :at]`, `tail = x[:, at:]`, the inverse of `concat`. GCT's
//! IBNorm (PixelSSL `ssl_gct.py`, `IBNorm.forward`) normalises its first ⌊C/2 + 0.5⌋ channels
//! with batch norm and the rest with instance norm; the `flaw_detector` architecture splits
//! with this op.
//!
//! Shapes: `x` f32[N, C, H, W], param `at` ≤ C → `head` f32[N, at, H, W], `tail`
//! f32[N, C − at, H, W].
//!
//! Backward: one `split_channels_bwd` node (below, unregistered) from whichever of dhead, dtail
//! reached the node, zeros for the other part (`slice_channels_bwd` for one,
//! `concat_channels_fwd` for both). Not here: splits into more than two parts.

use crate::grad;
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::elementwise::{concat_channels_fwd, slice_channels_bwd, slice_channels_fwd};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `split_channels` op.
pub struct SplitChannels;

/// Params of `split_channels`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The head's channel count (required): head = channels 0..at, tail = at..C.
    pub at: usize,
}

impl Op for SplitChannels {
    const NAME: &'static str = "split_channels";
    const SUMMARY: &'static str = "splits the channels in two: the first `at` and the rest";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W], C ≥ at")];
    const OUTPUTS: &'static [Port] = &[
        Port::req("head", "f32[N, at, H, W]: channels 0..at"),
        Port::req("tail", "f32[N, C − at, H, W]: channels at..C"),
    ];
    const EXAMPLE: &'static str =
        "name: halves\nop: split_channels\ninputs: { x: conv1.y }\nparams: { at: 8 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ at: 1 }",
        feeds: &[("x", Feed::Trainable(&[2, 3, 4, 5]))],
    }];
    type Params = Params;

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if p.at > x.c {
            return Err(format!(
                "`x` must have at least at = {} channels, got {}",
                p.at,
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![
            TensorSpec::nchw(Nchw { c: p.at, ..x }),
            TensorSpec::nchw(Nchw { c: x.c - p.at, ..x }),
        ])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let n = outputs.len();
        let [head, tail] = outputs else {
            return Err(OpError::Output {
                port: "head",
                problem: format!("expected 2 outputs, got {n}"),
            });
        };
        let one = std::slice::from_mut;
        let at = p.at.min(s.c);
        slice_channels_fwd(x, s, 0, at, io::f32_out(Self::OUTPUTS, one(head), 0)?)?;
        slice_channels_fwd(
            x,
            s,
            at,
            s.c,
            io::f32_out(&Self::OUTPUTS[1..], one(tail), 0)?,
        )?;
        Ok(())
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `split_channels`: dx from the parts' gradients, zeros where none arrived.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let (dhead, dtail) = (g.grad_output(0), g.grad_output(1));
    if dhead.is_none() && dtail.is_none() {
        return Ok(());
    }
    let x = grad::input(g, SplitChannels::INPUTS, 0)?;
    let channels = g
        .spec(&x)
        .and_then(TensorSpec::as_nchw)
        .ok_or("`x` has no NCHW spec")?
        .c;
    let params = BwdParams { at: p.at, channels };
    let [dx] = grad::outputs(g.emit::<SplitChannelsBwd>(params, vec![dhead, dtail])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `split_channels` (emitted by its VJP, not registered).
struct SplitChannelsBwd;

/// Params of `split_channels_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The head's channels.
    at: usize,
    /// C, the forward input's channels.
    channels: usize,
}

impl SplitChannelsBwd {
    /// dx's shape from whichever gradient is connected.
    fn dx_shape(p: &BwdParams, dhead: Option<Nchw>, dtail: Option<Nchw>) -> Option<Nchw> {
        dhead.or(dtail).map(|s| Nchw { c: p.channels, ..s })
    }
}

impl Op for SplitChannelsBwd {
    const NAME: &'static str = "split_channels_bwd";
    const SUMMARY: &'static str = "gradient of split_channels: the parts' gradients joined";
    const INPUTS: &'static [Port] = &[
        Port::opt(
            "dhead",
            "f32[N, at, H, W]: the gradient of `head` (zeros if absent)",
        ),
        Port::opt(
            "dtail",
            "f32[N, C − at, H, W]: the gradient of `tail` (zeros if absent)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let part = |i: usize| match inputs.get(i).copied().flatten() {
            Some(_) => io::nchw_f32(Self::INPUTS, inputs, i).map(Some),
            None => Ok(None),
        };
        let (dh, dt) = (part(0)?, part(1)?);
        let s = Self::dx_shape(p, dh, dt).ok_or("`dhead` or `dtail` is required")?;
        Ok(vec![TensorSpec::nchw(s)])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let dh = io::f32_opt(Self::INPUTS, inputs, 0)?;
        let dt = io::f32_opt(Self::INPUTS, inputs, 1)?;
        let shape_of = |i: usize| {
            inputs
                .get(i)
                .copied()
                .flatten()
                .and_then(|t| t.spec().as_nchw())
        };
        let s = Self::dx_shape(p, shape_of(0), shape_of(1)).ok_or(OpError::Input {
            port: "dhead",
            problem: "neither gradient is connected".into(),
        })?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        match (dh, dt) {
            (Some(dh), Some(dt)) => concat_channels_fwd(
                &[
                    (dh, Nchw { c: p.at, ..s }),
                    (dt, Nchw { c: s.c - p.at, ..s }),
                ],
                dx,
                s,
            )?,
            (Some(dh), None) => slice_channels_bwd(dh, s, 0, p.at, dx)?,
            (None, Some(dt)) => slice_channels_bwd(dt, s, p.at, s.c, dx)?,
            (None, None) => dx.fill(0.0),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, SplitChannelsBwd};
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    #[test]
    fn hand_computed() {
        // One image, three channels of 1×2; at = 1 → head = channel 0, tail = channels 1, 2.
        let x = f32s(&[1, 3, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let y = run(
            "name: s\nop: split_channels\nparams: { at: 1 }\n",
            &[Some(x)],
        );
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 1, 2]));
        assert_eq!(y[0].f32(), Some(&[1.0, 2.0][..]));
        assert_eq!(y[1].f32(), Some(&[3.0, 4.0, 5.0, 6.0][..]));
    }

    #[test]
    fn infer_rejects_at_beyond_the_channels() {
        let e = infer_err(
            "name: s\nop: split_channels\nparams: { at: 4 }\n",
            &[Some(TensorSpec::f32(&[2, 3, 4, 4]))],
        );
        assert_eq!(
            e,
            "`x` must have at least at = 4 channels, got f32[2, 3, 4, 4]"
        );
    }

    #[test]
    fn backward_fills_zeros_where_no_gradient_arrived() {
        // N = 2, C = 2 (at = 1), H·W = 1.
        let dh = f32s(&[2, 1, 1, 1], &[1.0, 2.0]);
        let dt = f32s(&[2, 1, 1, 1], &[3.0, 4.0]);
        let p = BwdParams { at: 1, channels: 2 };
        let go = |dh: Option<&Tensor>, dt: Option<&Tensor>| {
            let specs =
                SplitChannelsBwd::infer(&p, &[dh.map(Tensor::spec), dt.map(Tensor::spec)]).unwrap();
            let mut outs: Vec<Tensor> = specs
                .iter()
                .map(|s| Tensor::from_f32(&s.shape, vec![f32::NAN; s.len()]).unwrap())
                .collect();
            SplitChannelsBwd::cpu(&p, &ExecCx::default(), &[dh, dt], &mut outs).unwrap();
            outs.remove(0)
        };
        assert_eq!(
            go(Some(&dh), Some(&dt)).f32(),
            Some(&[1.0, 3.0, 2.0, 4.0][..])
        );
        assert_eq!(go(Some(&dh), None).f32(), Some(&[1.0, 0.0, 2.0, 0.0][..]));
        assert_eq!(go(None, Some(&dt)).f32(), Some(&[0.0, 3.0, 0.0, 4.0][..]));
    }
}
