//! `feature_noise`: CCT's F-Noise perturbation (`FeatureNoiseDecoder.feature_based_noise` in
//! yassouali/CCT models/decoders.py): y = x + x ⊙ u = x ⊙ (1 + u), with u ~ U(−range, range) of
//! shape [C, H, W] drawn once per call and shared by every sample of the batch
//! (`Uniform(-r, r).sample(x.shape[1:]).unsqueeze(0)`; config `uniform_range: 0.3`).
//!
//! Shapes: `x` f32[N, C, H, W] → `y` the spec of `x`, `noise` f32[C, H, W] (the multiplier
//! 1 + u).
//!
//! Randomness: the node's Philox stream this iteration (`ExecCx::rng`), element j of the
//! [C, H, W] noise drawing counter j (`Philox::fill_uniform`), mapped by
//! `elementwise::affine_fwd` to 2r·U + (1 − r).
//!
//! Backward: dx = dy ⊙ (1 + u) (`masked_bwd`, forward/perturb.rs); the noise is a constant.
//!
//! Not here: Gaussian noise, per-sample noise.

use crate::forward::perturb::{self, multiplier_spec, Over};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{affine_fwd, mul_broadcast_fwd, Broadcast};
use serde::{Deserialize, Deserializer};

/// The `feature_noise` op.
pub struct FeatureNoise;

/// Params of `feature_noise`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// r in u ~ U(−r, r), in [0, 1]; default 0.3 (CCT's `uniform_range`).
    #[serde(default = "default_range", deserialize_with = "unit")]
    pub range: f32,
}

fn default_range() -> f32 {
    0.3
}

fn unit<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let r = f32::deserialize(d)?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(serde::de::Error::custom(format!(
            "`range` must be in [0, 1], got {r}"
        )))
    }
}

impl Op for FeatureNoise {
    const NAME: &'static str = "feature_noise";
    const SUMMARY: &'static str =
        "CCT's F-Noise: y = x ⊙ (1 + u), u ~ U(−range, range) of [C, H, W] shared by the batch";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W] features")];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "f32[N, C, H, W] perturbed features"),
        Port::req("noise", "f32[C, H, W]: the multiplier 1 + u"),
    ];
    const EXAMPLE: &'static str =
        "name: noised\nop: feature_noise\ninputs: { x: u.decoded }\nparams: { range: 0.3 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ range: 0.3 }",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        Ok(vec![TensorSpec::nchw(x), multiplier_spec(x, Over::Batch)])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let [y, noise] = outputs else {
            return Err(OpError::Output {
                port: "y",
                problem: format!("expected 2 outputs, got {}", outputs.len()),
            });
        };
        let one = std::slice::from_mut;
        let y = io::f32_out(Self::OUTPUTS, one(y), 0)?;
        let noise = io::f32_out(&Self::OUTPUTS[1..], one(noise), 0)?;
        cx.rng().fill_uniform(0, noise);
        let r = p.range;
        // In place: affine_fwd reads each element before writing it.
        let draws = noise.to_vec();
        affine_fwd(&draws, 2.0 * r, 1.0 - r, noise)?;
        Ok(mul_broadcast_fwd(x, noise, shape, Broadcast::OverBatch, y)?)
    }

    /// The noise comes from the node's Philox stream on the device (the CPU's values).
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let mut noise = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
        let dev = cx.dev;
        let (seed, stream) = (cx.exec.seed, cx.exec.node_key ^ cx.exec.iteration);
        cuda::philox::fill_uniform(dev, seed, stream, 0, &mut noise)?;
        let r = p.range;
        cuda::elementwise::affine_fwd(dev, &dev_io::alias(&noise), 2.0 * r, 1.0 - r, &mut noise)?;
        let over = flowseg_kernels::elementwise::Broadcast::OverBatch;
        Ok(cuda::elementwise::mul_broadcast_fwd(
            dev, &x, &noise, shape, over, &mut y,
        )?)
    }

    fn vjp(_: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(perturb::backward(g, Self::OUTPUTS, 1, Over::Batch))
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    #[test]
    fn noise_is_one_draw_per_feature_shared_by_the_batch() {
        let x: Vec<f32> = (0..2 * 3 * 4 * 5).map(|i| 1.0 + i as f32).collect();
        let out = run(
            "name: fnoise\nop: feature_noise\nparams: { range: 0.3 }\n",
            &[Some(f32s(&[2, 3, 4, 5], &x))],
        );
        assert_eq!(out[1].spec(), &TensorSpec::f32(&[3, 4, 5]));
        let (y, m) = (out[0].f32().unwrap(), out[1].f32().unwrap());
        assert!(m.iter().all(|&v| (0.7..=1.3).contains(&v)), "{m:?}");
        // Not a constant: 60 draws spread over the range.
        let spread = m.iter().fold(0f32, |a, &v| a.max(v)) - m.iter().fold(2f32, |a, &v| a.min(v));
        assert!(spread > 0.3, "{spread}");
        for (i, (&yi, &xi)) in y.iter().zip(&x).enumerate() {
            assert_eq!(yi, xi * m[i % 60], "element {i}");
        }
        // range 0: the identity.
        let out = run(
            "name: fnoise\nop: feature_noise\nparams: { range: 0 }\n",
            &[Some(f32s(&[2, 3, 4, 5], &x))],
        );
        assert_eq!(out[0].f32().unwrap(), &x[..]);
    }

    #[test]
    fn params_and_shapes_are_checked() {
        let e =
            try_configure("name: fnoise\nop: feature_noise\nparams: { range: 2 }\n").unwrap_err();
        assert!(
            e.message.contains("`range` must be in [0, 1], got 2"),
            "{e}"
        );
        let e = infer_err(
            "name: fnoise\nop: feature_noise\n",
            &[Some(TensorSpec::f32(&[4, 5]))],
        );
        assert!(e.contains("f32[N, C, H, W]"), "{e}");
    }
}
