//! `dropout`: inverted dropout, element-wise (`F.dropout`) or per channel (`channels: true`,
//! `nn.Dropout2d`): each element (or each [n, c] plane) is zeroed with probability `p` and the
//! kept ones are scaled by 1/(1 − p), so the expectation is unchanged. UniMatch's feature
//! perturbation stream is `channels: true, p: 0.5` on the encoder's features before a second
//! decoding (graphs/unimatch.yaml).
//!
//! Always active: a node in a graph is a perturbation its author asked for; there is no eval
//! switch (a `forward` in eval mode does not emit dropout, and models have none built in).
//!
//! Shapes: `x` f32, any shape (f32[N, C, H, W] with `channels`) → `y` the spec of `x`, and
//! `mask` the multipliers (0 or 1/(1 − p)): the spec of `x`, or f32[N, C] with `channels`.
//!
//! Randomness: the node's Philox stream this iteration (`ExecCx::rng`), element i (plane
//! n·C + c) drawing counter i (`flowseg_kernels::dropout`), so a rerun draws the same mask.
//!
//! Backward: `dropout_bwd` (below, unregistered) multiplies dy by the recorded `mask`.
//!
//! Not here: alpha dropout, dropout in eval mode, drop-path.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::dropout::{dropout2d_bwd, dropout2d_fwd, dropout_bwd, dropout_fwd};
use flowseg_kernels::Nchw;
use serde::{Deserialize, Deserializer};

/// The `dropout` op.
pub struct Dropout;

/// Params of `dropout`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Drop probability in [0, 1] (required; UniMatch: 0.5).
    #[serde(deserialize_with = "probability")]
    pub p: f32,
    /// Drop whole [n, c] planes (`nn.Dropout2d`) instead of single elements; default false.
    #[serde(default)]
    pub channels: bool,
}

fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let p = f32::deserialize(d)?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(serde::de::Error::custom(format!(
            "`p` must be in [0, 1], got {p}"
        )))
    }
}

/// The NCHW shape of `x` when `channels` asks for planes.
fn planes(spec: &TensorSpec) -> Result<Nchw, String> {
    spec.as_nchw()
        .ok_or_else(|| format!("`x` must be f32[N, C, H, W] with `channels: true`, got {spec}"))
}

impl Op for Dropout {
    const NAME: &'static str = "dropout";
    const SUMMARY: &'static str =
        "inverted dropout of elements or (channels: true) whole channel planes, always active";
    const INPUTS: &'static [Port] = &[Port::req(
        "x",
        "f32, any shape; f32[N, C, H, W] with `channels`",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "f32, the spec of `x`"),
        Port::req(
            "mask",
            "f32: the multipliers, 0 or 1/(1 − p): the spec of `x`, or [N, C] with `channels`",
        ),
    ];
    const EXAMPLE: &'static str =
        "name: fp_features\nop: dropout\ninputs: { x: enc.features }\nparams: { p: 0.5, channels: true }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Whole planes (UniMatch's feature perturbation) and single elements: the mask is a pure
        // function of the node's stream, so the differences see the same mask.
        GradCase {
            params: "{ p: 0.5, channels: true }",
            feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
        },
        GradCase {
            params: "{ p: 0.3 }",
            feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let mask = if p.channels {
            let s = planes(x)?;
            TensorSpec::f32(&[s.n, s.c])
        } else {
            x.clone()
        };
        Ok(vec![x.clone(), mask])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = inputs
            .first()
            .copied()
            .flatten()
            .and_then(|t| t.spec().as_nchw());
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let [y, mask] = outputs else {
            return Err(OpError::Output {
                port: "y",
                problem: format!("expected 2 outputs, got {}", outputs.len()),
            });
        };
        let one = std::slice::from_mut;
        let y = io::f32_out(Self::OUTPUTS, one(y), 0)?;
        let mask = io::f32_out(&Self::OUTPUTS[1..], one(mask), 0)?;
        let rng = cx.rng();
        match (p.channels, shape) {
            (true, Some(s)) => Ok(dropout2d_fwd(x, s, p.p, &rng, 0, y, mask)?),
            (true, None) => Err(OpError::Output {
                port: "x",
                problem: "`channels: true` needs f32[N, C, H, W]".into(),
            }),
            (false, _) => Ok(dropout_fwd(x, p.p, &rng, 0, y, mask)?),
        }
    }

    /// The mask comes from the node's Philox stream on the device: the CPU's draws.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = inputs
            .first()
            .copied()
            .flatten()
            .and_then(|t| t.spec.as_nchw());
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let mut mask = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
        let rng = cx.exec.rng();
        match (p.channels, shape) {
            (true, Some(s)) => Ok(cuda::dropout::dropout2d_fwd(
                cx.dev, &x, s, p.p, &rng, 0, &mut y, &mut mask,
            )?),
            (true, None) => Err(OpError::Output {
                port: "x",
                problem: "`channels: true` needs f32[N, C, H, W]".into(),
            }),
            (false, _) => Ok(cuda::dropout::dropout_fwd(
                cx.dev, &x, p.p, &rng, 0, &mut y, &mut mask,
            )?),
        }
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `dropout`: one `dropout_bwd` node reading the recorded mask and dy.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let dy = grad::grad_output(g, Dropout::OUTPUTS, 0)?;
    let params = BwdParams {
        channels: p.channels,
    };
    let [dx] = grad::outputs(g.emit::<DropoutBwd>(params, vec![Some(g.output(1)), Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `dropout` (emitted by its VJP, not registered): dx = dy · mask.
struct DropoutBwd;

/// Params of `dropout_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward dropped planes (mask [N, C]).
    channels: bool,
}

impl Op for DropoutBwd {
    const NAME: &'static str = "dropout_bwd";
    const SUMMARY: &'static str = "gradient of dropout: dx = dy · mask";
    const INPUTS: &'static [Port] = &[
        Port::req("mask", "f32: the forward's multipliers"),
        Port::req("dy", "f32: the gradient of dropout's `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32, the spec of `dy`")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let mask = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let dy = io::f32_spec(Self::INPUTS, inputs, 1)?;
        let want = if p.channels {
            let s = planes(dy)?;
            TensorSpec::f32(&[s.n, s.c])
        } else {
            dy.clone()
        };
        if *mask != want {
            return Err(format!("`mask` must be {want}, got {mask}"));
        }
        Ok(vec![dy.clone()])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = inputs
            .get(1)
            .copied()
            .flatten()
            .and_then(|t| t.spec().as_nchw());
        let mask = io::f32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        match (p.channels, shape) {
            (true, Some(s)) => Ok(dropout2d_bwd(dy, mask, s, dx)?),
            (true, None) => Err(OpError::Output {
                port: "dx",
                problem: "`channels: true` needs f32[N, C, H, W]".into(),
            }),
            (false, _) => Ok(dropout_bwd(dy, mask, dx)?),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = inputs
            .get(1)
            .copied()
            .flatten()
            .and_then(|t| t.spec.as_nchw());
        let mask = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        match (p.channels, shape) {
            (true, Some(s)) => Ok(cuda::dropout::dropout2d_bwd(
                cx.dev, &dy, &mask, s, &mut dx,
            )?),
            (true, None) => Err(OpError::Output {
                port: "dx",
                problem: "`channels: true` needs f32[N, C, H, W]".into(),
            }),
            (false, _) => Ok(cuda::dropout::dropout_bwd(cx.dev, &dy, &mask, &mut dx)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    #[test]
    fn channels_drop_whole_planes_and_scale_the_rest() {
        let x: Vec<f32> = (0..2 * 8 * 3 * 3).map(|i| 1.0 + i as f32).collect();
        let y = run(
            "name: d\nop: dropout\nparams: { p: 0.5, channels: true }\n",
            &[Some(f32s(&[2, 8, 3, 3], &x))],
        );
        let (out, mask) = (y[0].f32().unwrap(), y[1].f32().unwrap());
        assert_eq!(y[1].spec(), &TensorSpec::f32(&[2, 8]));
        let mut dropped = 0;
        for (j, &m) in mask.iter().enumerate() {
            assert!(m == 0.0 || m == 2.0, "{m}");
            dropped += usize::from(m == 0.0);
            for k in 0..9 {
                assert_eq!(out[j * 9 + k], x[j * 9 + k] * m);
            }
        }
        // 16 fair coins: all kept or all dropped would mean the draws are not per plane.
        assert!((1..16).contains(&dropped), "{dropped} of 16 planes dropped");
    }

    #[test]
    fn elements_and_the_edges_of_p() {
        let x = vec![3.0f32; 64];
        let y = run(
            "name: d\nop: dropout\nparams: { p: 0.25 }\n",
            &[Some(f32s(&[64], &x))],
        );
        let kept = y[1].f32().unwrap().iter().filter(|&&m| m > 0.0).count();
        assert!((32..64).contains(&kept), "{kept}");
        for (o, m) in y[0].f32().unwrap().iter().zip(y[1].f32().unwrap()) {
            assert!(*m == 0.0 || (*m - 4.0 / 3.0).abs() < 1e-6);
            assert_eq!(*o, 3.0 * m);
        }
        let y = run(
            "name: d\nop: dropout\nparams: { p: 0 }\n",
            &[Some(f32s(&[64], &x))],
        );
        assert_eq!(y[0].f32().unwrap(), &x[..]);
        let y = run(
            "name: d\nop: dropout\nparams: { p: 1 }\n",
            &[Some(f32s(&[64], &x))],
        );
        assert!(y[0].f32().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn params_and_shapes_are_checked() {
        let e = try_configure("name: d\nop: dropout\nparams: { p: 1.5 }\n").unwrap_err();
        assert!(e.message.contains("`p` must be in [0, 1], got 1.5"), "{e}");
        let e = try_configure("name: d\nop: dropout\n").unwrap_err();
        assert!(e.message.contains("missing field `p`"), "{e}");
        let e = infer_err(
            "name: d\nop: dropout\nparams: { p: 0.5, channels: true }\n",
            &[Some(TensorSpec::f32(&[4, 5]))],
        );
        assert!(e.contains("f32[N, C, H, W]"), "{e}");
    }
}
