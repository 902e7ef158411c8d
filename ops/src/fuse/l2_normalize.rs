//! `l2_normalize`: each sample scaled to a given norm, y_n = scale · x_n / (‖x_n‖₂ + eps) over the
//! sample's elements — VAT's adversarial perturbation r_adv = ε · d/‖d‖ from the gradient d of
//! the divergence (CCT's `get_r_adv`: `d = _l2_normalize(d.grad)`, `r_adv = d * eps`).
//!
//! Shapes: `x` f32[N, ...] → `y` the same spec.
//!
//! A stop-gradient (`Op::STOP_GRAD`): its input in VAT is a `grad` value, itself a constant, and
//! CCT computes r_adv without a graph; a differentiable normalisation would be another op.
//!
//! Not here: normalisation over other axes (per pixel, per channel).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::reduce::l2_normalize_fwd;
use serde::Deserialize;

/// The `l2_normalize` op.
pub struct L2Normalize;

/// Params of `l2_normalize`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The norm of each output sample; default 1 (VAT's ε is `scale: ε`).
    #[serde(default = "one")]
    pub scale: f64,
    /// Added to the norm before dividing; default 1e-8 (CCT's `_l2_normalize`). A zero sample
    /// stays zero.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn one() -> f64 {
    1.0
}

fn default_eps() -> f64 {
    1e-8
}

impl Op for L2Normalize {
    const NAME: &'static str = "l2_normalize";
    const SUMMARY: &'static str =
        "each sample scaled to norm `scale`: scale·x/(‖x‖ + eps); a stop-gradient";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, ...] (e.g. a `grad` value)")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the spec of `x`")];
    const EXAMPLE: &'static str = "name: vat_r\nop: l2_normalize\n\
        inputs: { x: vat_g.grad }\nparams: { scale: 2.0 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// Used on constants (gradients) only; see the file header.
    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::f32_spec(Self::INPUTS, inputs, 0)?;
        if x.shape.is_empty() {
            return Err(format!("`x` must have a batch axis (f32[N, ...]), got {x}"));
        }
        Ok(vec![x.clone()])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let rows = inputs
            .first()
            .copied()
            .flatten()
            .and_then(|t| t.spec().shape.first().copied())
            .unwrap_or(0);
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(l2_normalize_fwd(x, rows, p.scale, p.eps, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let rows = (inputs.first().copied().flatten())
            .and_then(|t| t.spec.shape.first().copied())
            .unwrap_or(0);
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::reduce::l2_normalize_fwd(
            cx.dev, &x, rows, p.scale, p.eps, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn samples_are_scaled_to_the_norm() {
        let out = run(
            "name: r\nop: l2_normalize\nparams: { scale: 2.0, eps: 0 }\n",
            &[Some(f32s(&[2, 2], &[3.0, 4.0, 0.0, 0.0]))],
        );
        assert_eq!(out[0].f32().unwrap(), &[1.2, 1.6, 0.0, 0.0]);
        let e = infer_err("name: r\nop: l2_normalize\n", &[Some(TensorSpec::scalar())]);
        assert!(e.contains("batch axis"), "{e}");
    }
}
