//! `random_direction`: a random unit direction per sample, the starting point of virtual
//! adversarial training (CCT's I-VAT, `get_r_adv` in yassouali/CCT models/decoders.py:
//! `d = torch.rand(x.shape).sub(0.5)`, then `_l2_normalize`): u ~ U(range) element-wise, then
//! y_n = scale · u_n / (‖u_n‖₂ + eps) over each sample's elements.
//!
//! Shapes: `like` f32[N, ...] (only its spec is read) → `y` the same spec.
//!
//! Randomness: the node's Philox stream this iteration, element j drawing counter j
//! (`Philox::fill_uniform`), mapped by `elementwise::affine_fwd` onto the range.
//!
//! A stop-gradient (`Op::STOP_GRAD`): the draw does not depend on `like`'s values.
//!
//! Not here: the power iteration (a `grad` node and `l2_normalize`, written in the graph).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::affine_fwd;
use flowseg_kernels::reduce::l2_normalize_fwd;
use serde::{Deserialize, Deserializer};

/// The `random_direction` op.
pub struct RandomDirection;

/// Params of `random_direction`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// [lo, hi] of the uniform draws, lo < hi; default [−0.5, 0.5] (`torch.rand(..) − 0.5`).
    #[serde(default = "default_range", deserialize_with = "range")]
    pub range: [f32; 2],
    /// The norm of each sample's direction; default 1 (VAT's ξ·d is `scale: ξ`).
    #[serde(default = "one")]
    pub scale: f64,
    /// Added to the norm before dividing; default 1e-8 (CCT's `_l2_normalize`).
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_range() -> [f32; 2] {
    [-0.5, 0.5]
}

fn one() -> f64 {
    1.0
}

fn default_eps() -> f64 {
    1e-8
}

fn range<'de, D: Deserializer<'de>>(d: D) -> Result<[f32; 2], D::Error> {
    let [lo, hi] = <[f32; 2]>::deserialize(d)?;
    if lo < hi {
        Ok([lo, hi])
    } else {
        Err(serde::de::Error::custom(format!(
            "`range` must be [lo, hi] with lo < hi, got [{lo}, {hi}]"
        )))
    }
}

impl Op for RandomDirection {
    const NAME: &'static str = "random_direction";
    const SUMMARY: &'static str =
        "a random direction per sample, scale·u/(‖u‖ + eps) with u ~ U(range), shaped like `like`";
    const INPUTS: &'static [Port] = &[Port::req(
        "like",
        "f32[N, ...]: lends its spec (its values are not read)",
    )];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "y",
        "f32, the spec of `like`, each sample of norm `scale`",
    )];
    const EXAMPLE: &'static str = "name: vat_d\nop: random_direction\n\
        inputs: { like: h_det.y }\nparams: { scale: 1.0e-6 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("like", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// The direction is drawn, not computed from `like`.
    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let like = io::f32_spec(Self::INPUTS, inputs, 0)?;
        if like.shape.is_empty() {
            return Err(format!(
                "`like` must have a batch axis (f32[N, ...]), got {like}"
            ));
        }
        Ok(vec![like.clone()])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let rows = inputs
            .first()
            .copied()
            .flatten()
            .and_then(|t| t.spec().shape.first().copied())
            .unwrap_or(0);
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        cx.rng().fill_uniform(0, y);
        let [lo, hi] = p.range;
        let draws = y.to_vec();
        affine_fwd(&draws, hi - lo, lo, y)?;
        let u = y.to_vec();
        Ok(l2_normalize_fwd(&u, rows, p.scale, p.eps, y)?)
    }

    /// The draws come from the node's Philox stream on the device (the CPU's values), mapped
    /// in place, then normalised from a copy (a row's reduction must not read its own output).
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let rows = (inputs.first().copied().flatten())
            .and_then(|t| t.spec.shape.first().copied())
            .unwrap_or(0);
        let dev = cx.dev;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let (seed, stream) = (cx.exec.seed, cx.exec.node_key ^ cx.exec.iteration);
        cuda::philox::fill_uniform(dev, seed, stream, 0, &mut y)?;
        let [lo, hi] = p.range;
        cuda::elementwise::affine_fwd(dev, &dev_io::alias(&y), hi - lo, lo, &mut y)?;
        let mut scratch = dev_io::Scratch::new(dev);
        let mut u = scratch.f32(y.len())?;
        dev.copy(&y, &mut u)?;
        Ok(cuda::reduce::l2_normalize_fwd(
            dev, &u, rows, p.scale, p.eps, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, run, try_configure};

    #[test]
    fn each_sample_has_the_asked_norm_and_varies() {
        let like = f32s(&[3, 2, 4, 4], &[0.0; 96]);
        let out = run(
            "name: d\nop: random_direction\nparams: { scale: 2.0 }\n",
            &[Some(like)],
        );
        let y = out[0].f32().unwrap();
        for s in y.chunks(32) {
            let norm = s.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 2.0).abs() < 1e-5, "{norm}");
        }
        assert!(y.iter().any(|&v| v > 0.0) && y.iter().any(|&v| v < 0.0));
        assert_ne!(y[..32], y[32..64]);
    }

    #[test]
    fn range_is_checked() {
        let e = try_configure("name: d\nop: random_direction\nparams: { range: [1, 1] }\n")
            .unwrap_err();
        assert!(e.message.contains("lo < hi"), "{e}");
    }
}
