//! `color_jitter`: torchvision's `RandomApply([ColorJitter(b, c, s, h)], p)` on RGB float images
//! in [0, 1], per sample: with probability `p`, brightness, contrast, saturation and hue are
//! adjusted in a random order, each by a factor drawn for that sample, each followed by a clamp
//! to [0, 1]. UniMatch's strong view: `p: 0.8, brightness: 0.5, contrast: 0.5, saturation: 0.5,
//! hue: 0.25`; PseudoSeg's: the same strengths with `p: 1`.
//!
//! Shapes: `image` f32[N, 3, H, W] → `image_out` f32[N, 3, H, W].
//!
//! Randomness: the node's Philox stream this iteration (`ExecCx::rng`), sample n reading
//! counters n·16 .. n·16 + 7 as `flowseg_kernels::augment::draw_color_jitter` documents (apply,
//! the four factors, then the order). A stop-gradient: augmentations apply to data. Its
//! kernels' CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.
//!
//! Not here: torchvision's `[min, max]` form of each strength (only the symmetric one), PIL's
//! uint8 rounding between steps, TensorFlow's additive brightness.

use super::common::{image_spec, probability};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::augment::{color_jitter_fwd, draw_color_jitter, ColorJitterParams};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use serde::{Deserialize, Deserializer};

/// The `color_jitter` op.
pub struct ColorJitter;

/// Params of `color_jitter`, with torchvision's names; a strength left out (or 0) disables its
/// adjustment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Probability that a sample is jittered at all, in [0, 1] (required).
    #[serde(deserialize_with = "probability")]
    pub p: f32,
    /// B ≥ 0: brightness factor from [max(0, 1 − B), 1 + B], x·b. Default 0.
    #[serde(default, deserialize_with = "strength")]
    pub brightness: f32,
    /// C ≥ 0: contrast factor from [max(0, 1 − C), 1 + C], blending with the image's mean luma.
    /// Default 0.
    #[serde(default, deserialize_with = "strength")]
    pub contrast: f32,
    /// S ≥ 0: saturation factor from [max(0, 1 − S), 1 + S], blending with each pixel's luma.
    /// Default 0.
    #[serde(default, deserialize_with = "strength")]
    pub saturation: f32,
    /// H ∈ [0, 0.5]: hue shift from [−H, H] of a full turn. Default 0.
    #[serde(default, deserialize_with = "hue")]
    pub hue: f32,
}

/// A brightness, contrast or saturation strength: finite and ≥ 0.
fn strength<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let s = f32::deserialize(d)?;
    if s.is_finite() && s >= 0.0 {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "a jitter strength must be finite and >= 0, got {s}"
        )))
    }
}

/// A hue strength: in [0, 0.5] (half a turn either way covers the wheel).
fn hue<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let h = f32::deserialize(d)?;
    if (0.0..=0.5).contains(&h) {
        Ok(h)
    } else {
        Err(serde::de::Error::custom(format!(
            "hue must be in [0, 0.5], got {h}"
        )))
    }
}

impl Params {
    fn kernel(&self) -> ColorJitterParams {
        ColorJitterParams {
            p: self.p,
            brightness: self.brightness,
            contrast: self.contrast,
            saturation: self.saturation,
            hue: self.hue,
        }
    }
}

impl Op for ColorJitter {
    const NAME: &'static str = "color_jitter";
    const SUMMARY: &'static str =
        "random brightness, contrast, saturation and hue in a random order, per sample (torchvision ColorJitter)";
    const INPUTS: &'static [Port] = &[Port::req("image", "f32[N, 3, H, W] RGB in [0, 1]")];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "image_out",
        "f32[N, 3, H, W] jittered, in [0, 1]",
    )];
    const EXAMPLE: &'static str =
        "name: jitter\nop: color_jitter\ninputs: { image: batch.image }\n\
        params: { p: 0.8, brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.25 }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Augmentations act on data: stop-gradients, checked on 3-channel images.
        GradCase {
            params: "{ p: 1.0, brightness: 0.5, hue: 0.1 }",
            feeds: &[("image", Feed::Trainable(&[2, 3, 5, 7]))],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// Augmentations transform data; no gradient flows back to the images.
    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![TensorSpec::nchw(image_spec(
            Self::INPUTS,
            inputs,
            0,
            true,
        )?)])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let draws = draw_color_jitter(&cx.rng(), shape.n, &p.kernel())?;
        Ok(color_jitter_fwd(x, shape, &draws, y)?)
    }

    /// The per-sample draws are made on the host from the node's random stream, as on the CPU.
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
        let draws = draw_color_jitter(&cx.exec.rng(), shape.n, &p.kernel())?;
        Ok(cuda::augment::color_jitter_fwd(
            cx.dev, &x, shape, &draws, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::{random_images, run_at};
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, TensorSpec};

    const UNIMATCH: &str = "name: jitter\nop: color_jitter\n\
        params: { p: 0.8, brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.25 }\n";

    fn cx(iteration: u64) -> ExecCx {
        ExecCx {
            seed: 3,
            iteration,
            node_key: 5,
        }
    }

    #[test]
    fn brightness_alone_scales_each_sample_by_its_own_factor() {
        // A grey 0.4 image: brightness multiplies every pixel of a sample by one b ∈ [0.5, 1.5].
        let node = "name: j\nop: color_jitter\nparams: { p: 1, brightness: 0.5 }\n";
        let x = f32s(&[8, 3, 2, 2], &[0.4; 96]);
        let y = run(node, &[Some(x)]);
        let y = y[0].f32().unwrap();
        let mut factors = Vec::new();
        for img in y.chunks(12) {
            let b = img[0] / 0.4;
            assert!((0.5..=1.5).contains(&b), "{b}");
            assert!(img.iter().all(|&v| v == img[0]), "{img:?}");
            factors.push(b);
        }
        factors.dedup();
        assert_eq!(factors.len(), 8, "each sample draws its own factor");
    }

    #[test]
    fn p_zero_copies_and_p_one_changes_every_sample() {
        let x = random_images(1, &[6, 3, 4, 5], 0.0, 1.0);
        let none = "name: j\nop: color_jitter\nparams: { p: 0, brightness: 0.5, hue: 0.5 }\n";
        assert_eq!(run(none, &[Some(x.clone())])[0].f32(), x.f32());
        let all = "name: j\nop: color_jitter\nparams: { p: 1, brightness: 0.5, hue: 0.5 }\n";
        let y = run(all, &[Some(x.clone())]);
        let (xs, ys) = (x.f32().unwrap(), y[0].f32().unwrap());
        for (a, b) in xs.chunks(60).zip(ys.chunks(60)) {
            assert_ne!(a, b);
        }
        // No strength at all: p = 1 still leaves the images bit-exact.
        let nothing = "name: j\nop: color_jitter\nparams: { p: 1 }\n";
        assert_eq!(run(nothing, &[Some(x.clone())])[0].f32(), x.f32());
    }

    #[test]
    fn deterministic_per_iteration_and_in_the_unit_interval() {
        let x = random_images(2, &[16, 3, 6, 6], 0.0, 1.0);
        let a = run_at(UNIMATCH, &[Some(x.clone())], cx(7));
        let b = run_at(UNIMATCH, &[Some(x.clone())], cx(7));
        assert_eq!(a, b);
        let c = run_at(UNIMATCH, &[Some(x.clone())], cx(8));
        assert_ne!(a, c);
        let d = run_at(
            UNIMATCH,
            &[Some(x.clone())],
            ExecCx {
                node_key: 6,
                ..cx(7)
            },
        );
        assert_ne!(a, d);
        for out in [&a, &c, &d] {
            assert_eq!(out[0].spec(), x.spec());
            assert!(out[0]
                .f32()
                .unwrap()
                .iter()
                .all(|v| (0.0..=1.0).contains(v)));
        }
        // p = 0.8: some of the 16 samples are untouched, most are not.
        let (xs, ys) = (x.f32().unwrap(), a[0].f32().unwrap());
        let same = xs
            .chunks(108)
            .zip(ys.chunks(108))
            .filter(|(p, q)| p == q)
            .count();
        assert!((1..=8).contains(&same), "{same} of 16 untouched");
    }

    #[test]
    fn infer_wants_rgb_f32() {
        let e = infer_err(UNIMATCH, &[Some(TensorSpec::f32(&[2, 1, 8, 8]))]);
        assert_eq!(
            e,
            "`image` must be f32[N, 3, H, W] (RGB), got f32[2, 1, 8, 8]"
        );
        let e = infer_err(UNIMATCH, &[Some(TensorSpec::i32(&[2, 3, 8, 8]))]);
        assert_eq!(e, "`image` must be f32[N, C, H, W], got i32[2, 3, 8, 8]");
        assert_eq!(infer_err(UNIMATCH, &[None]), "`image` is required");
    }

    #[test]
    fn bad_params_are_rejected_at_their_value() {
        let e =
            try_configure("name: j\nop: color_jitter\nparams:\n  p: 1\n  hue: 0.7\n").unwrap_err();
        assert!(
            e.message.contains("hue must be in [0, 0.5], got 0.7"),
            "{e}"
        );
        assert_eq!((e.loc.line, e.loc.col), (5, 8));
        let e = try_configure("name: j\nop: color_jitter\nparams: { p: 1.2 }\n").unwrap_err();
        assert!(
            e.message
                .contains("p must be a probability in [0, 1], got 1.2"),
            "{e}"
        );
        let e = try_configure("name: j\nop: color_jitter\nparams: { p: 1, contrast: -0.5 }\n")
            .unwrap_err();
        assert!(
            e.message.contains("must be finite and >= 0, got -0.5"),
            "{e}"
        );
        let e =
            try_configure("name: j\nop: color_jitter\nparams: { brightness: 0.5 }\n").unwrap_err();
        assert!(e.message.contains("missing field `p`"), "{e}");
    }
}
