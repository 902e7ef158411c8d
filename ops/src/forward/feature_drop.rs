//! `feature_drop`: CCT's F-Drop perturbation (`FeatureDropDecoder.feature_dropout` in
//! yassouali/CCT models/decoders.py): the channel mean a = mean_c x is the attention map; with
//! γ ~ U(γ₀, γ₁) drawn once per call (`np.random.uniform(0.7, 0.9)`), each sample keeps the
//! pixels where a < γ·max_hw a and zeroes the most activated region: y = x ⊙ [a < γ·max a].
//!
//! Shapes: `x` f32[N, C, H, W] → `y` the spec of `x`, `mask` f32[N, H, W] (0 or 1).
//!
//! Randomness: γ = γ₀ + (γ₁ − γ₀)·U with U the node's Philox stream's counter 0 this iteration.
//! The official code draws γ once per call too (one scalar for the whole batch); its default
//! range differs between commits (0.6–0.9 in one, 0.7–0.9 in the later ones): 0.7–0.9 here.
//!
//! Backward: dx = dy ⊙ mask (`masked_bwd`, forward/perturb.rs): the mask comes from a comparison
//! and is a constant, as in CCT.
//!
//! Not here: a per-sample γ.

use crate::forward::perturb::{self, multiplier_spec, Over};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{mul_broadcast_fwd, Broadcast};
use flowseg_kernels::perturb::salient_drop_mask_fwd;
use flowseg_kernels::reduce::mean_channels_fwd;
use serde::{Deserialize, Deserializer};

/// The `feature_drop` op.
pub struct FeatureDrop;

/// Params of `feature_drop`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// [γ₀, γ₁] with 0 ≤ γ₀ ≤ γ₁ ≤ 1: the range of the threshold's fraction of the maximum;
    /// default [0.7, 0.9].
    #[serde(default = "default_gamma", deserialize_with = "gamma_range")]
    pub gamma: [f32; 2],
}

fn default_gamma() -> [f32; 2] {
    [0.7, 0.9]
}

fn gamma_range<'de, D: Deserializer<'de>>(d: D) -> Result<[f32; 2], D::Error> {
    let [lo, hi] = <[f32; 2]>::deserialize(d)?;
    if (0.0..=1.0).contains(&lo) && (lo..=1.0).contains(&hi) {
        Ok([lo, hi])
    } else {
        Err(serde::de::Error::custom(format!(
            "`gamma` must be [lo, hi] with 0 <= lo <= hi <= 1, got [{lo}, {hi}]"
        )))
    }
}

impl Op for FeatureDrop {
    const NAME: &'static str = "feature_drop";
    const SUMMARY: &'static str =
        "CCT's F-Drop: zero the pixels whose channel mean is ≥ γ·max (γ ~ U(gamma)), per sample";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W] features")];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "f32[N, C, H, W] perturbed features"),
        Port::req("mask", "f32[N, H, W]: 1 where kept, 0 where dropped"),
    ];
    const EXAMPLE: &'static str =
        "name: dropped\nop: feature_drop\ninputs: { x: u.decoded }\nparams: { gamma: [0.7, 0.9] }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        // One channel of distinct values 0.05 apart and γ = 1: only each sample's maximum is
        // dropped, and x ± eps (1e-2) never changes which element that is, so the mask is the
        // same on both sides of every difference (a γ < 1 threshold can fall within eps of a
        // value).
        params: "{ gamma: [1.0, 1.0] }",
        feeds: &[("x", Feed::TrainableDistinct(&[2, 1, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if x.c == 0 {
            return Err(format!(
                "`x` must have at least one channel, got {}",
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![
            TensorSpec::nchw(x),
            multiplier_spec(x, Over::Channels),
        ])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
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
        // The attention map goes into `mask` first, then the mask overwrites it.
        mean_channels_fwd(x, shape, mask)?;
        let attention = mask.to_vec();
        let [lo, hi] = p.gamma;
        let gamma = lo + (hi - lo) * cx.rng().uniform_at(0);
        salient_drop_mask_fwd(&attention, shape.n, gamma, mask)?;
        Ok(mul_broadcast_fwd(
            x,
            mask,
            shape,
            Broadcast::OverChannels,
            y,
        )?)
    }

    /// γ is drawn on the host from the node's stream (one number, the CPU's); the attention is
    /// kept in a copy while the mask is written (the CPU copies it too).
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
        let mut mask = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
        let dev = cx.dev;
        let mut scratch = dev_io::Scratch::new(dev);
        let mut attention = scratch.f32(mask.len())?;
        cuda::reduce::mean_channels_fwd(dev, &x, shape, &mut attention)?;
        let [lo, hi] = p.gamma;
        let gamma = lo + (hi - lo) * cx.exec.rng().uniform_at(0);
        cuda::perturb::salient_drop_mask_fwd(dev, &attention, shape.n, gamma, &mut mask)?;
        let over = flowseg_kernels::elementwise::Broadcast::OverChannels;
        Ok(cuda::elementwise::mul_broadcast_fwd(
            dev, &x, &mask, shape, over, &mut y,
        )?)
    }

    fn vjp(_: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(perturb::backward(g, Self::OUTPUTS, 1, Over::Channels))
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, run, try_configure};

    #[test]
    fn drops_the_salient_region_of_each_sample() {
        // Two samples, 2 channels, 1×4 pixels; channel means (1, 2, 9, 10) and (5, 1, 1, 1).
        // γ ∈ [0.5, 0.5]: thresholds 5 and 2.5.
        let x = [
            1.0, 2.0, 8.0, 10.0, 1.0, 2.0, 10.0, 10.0, // sample 0
            4.0, 1.0, 1.0, 1.0, 6.0, 1.0, 1.0, 1.0, // sample 1
        ];
        let out = run(
            "name: d\nop: feature_drop\nparams: { gamma: [0.5, 0.5] }\n",
            &[Some(f32s(&[2, 2, 1, 4], &x))],
        );
        assert_eq!(
            out[1].f32().unwrap(),
            &[1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        );
        let want = [
            1.0, 2.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, //
            0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0,
        ];
        assert_eq!(out[0].f32().unwrap(), &want);
    }

    #[test]
    fn gamma_is_checked_where_written() {
        let e = try_configure("name: d\nop: feature_drop\nparams: { gamma: [0.9, 0.7] }\n")
            .unwrap_err();
        assert!(e.message.contains("0 <= lo <= hi <= 1"), "{e}");
    }
}
