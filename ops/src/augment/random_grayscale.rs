//! `random_grayscale`: torchvision's `RandomGrayscale(p)` on RGB float images: with probability
//! `p` per sample, every channel becomes the pixel's luma 0.299·r + 0.587·g + 0.114·b (ITU-R
//! BT.601, as PIL's `convert("L")`), so the output keeps 3 channels. UniMatch's strong view uses
//! `p: 0.2`.
//!
//! Shapes: `image` f32[N, 3, H, W] → `image_out` f32[N, 3, H, W].
//!
//! Randomness: the node's Philox stream this iteration (`ExecCx::rng`), sample n converted iff
//! uniform counter n·16 < p (`flowseg_kernels::augment::draw_grayscale`). A stop-gradient:
//! augmentations apply to data. Its kernels' CUDA twins exist (kernels/src/cuda); the engine
//! does not dispatch ops to them yet.
//!
//! Not here: a 1-channel output (use the first channel of `image_out`).

use super::common::{image_spec, probability};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::augment::{draw_grayscale, grayscale_fwd};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use serde::Deserialize;

/// The `random_grayscale` op.
pub struct RandomGrayscale;

/// Params of `random_grayscale`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Probability that a sample is converted, in [0, 1] (required).
    #[serde(deserialize_with = "probability")]
    pub p: f32,
}

impl Op for RandomGrayscale {
    const NAME: &'static str = "random_grayscale";
    const SUMMARY: &'static str =
        "with probability p per sample, replace RGB by its luma in all three channels";
    const INPUTS: &'static [Port] = &[Port::req("image", "f32[N, 3, H, W] RGB in [0, 1]")];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "image_out",
        "f32[N, 3, H, W], grey samples have three equal channels",
    )];
    const EXAMPLE: &'static str =
        "name: grey\nop: random_grayscale\ninputs: { image: jitter.image_out }\nparams: { p: 0.2 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ p: 1.0 }",
        feeds: &[("image", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
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
        let apply = draw_grayscale(&cx.rng(), shape.n, p.p)?;
        Ok(grayscale_fwd(x, shape, &apply, y)?)
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
        let apply = draw_grayscale(&cx.exec.rng(), shape.n, p.p)?;
        Ok(cuda::augment::grayscale_fwd(
            cx.dev, &x, shape, &apply, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::{random_images, run_at};
    use crate::support::test::{assert_close, f32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, Tensor, TensorSpec};

    fn node(p: f32) -> String {
        format!("name: grey\nop: random_grayscale\nparams: {{ p: {p} }}\n")
    }

    /// Indices of the samples whose three channels are equal everywhere.
    fn grey_samples(y: &Tensor) -> Vec<usize> {
        let s = y.spec().as_nchw().unwrap();
        let v = y.f32().unwrap();
        (0..s.n)
            .filter(|&n| {
                let img = &v[n * s.image()..(n + 1) * s.image()];
                let (r, rest) = img.split_at(s.plane());
                let (g, b) = rest.split_at(s.plane());
                r == g && g == b
            })
            .collect()
    }

    #[test]
    fn hand_computed_luma() {
        // Pixels (0.2, 0.4, 0.6) → 0.0598 + 0.2348 + 0.0684 = 0.363 and (1, 0, 0) → 0.299.
        let x = f32s(&[1, 3, 1, 2], &[0.2, 1.0, 0.4, 0.0, 0.6, 0.0]);
        let y = run(&node(1.0), &[Some(x)]);
        assert_close(
            y[0].f32().unwrap(),
            &[0.363, 0.299, 0.363, 0.299, 0.363, 0.299],
            1e-6,
        );
    }

    #[test]
    fn p_zero_copies_p_one_greys_all_and_p_half_some() {
        let x = random_images(3, &[32, 3, 3, 3], 0.0, 1.0);
        assert_eq!(run(&node(0.0), &[Some(x.clone())])[0], x);
        let all = run(&node(1.0), &[Some(x.clone())]);
        assert_eq!(grey_samples(&all[0]), (0..32).collect::<Vec<_>>());
        let cx = |iteration| ExecCx {
            seed: 1,
            iteration,
            node_key: 2,
        };
        let half = run_at(&node(0.5), &[Some(x.clone())], cx(0));
        let greys = grey_samples(&half[0]);
        assert!((8..=24).contains(&greys.len()), "{greys:?}");
        // Untouched samples are copies.
        let s = x.spec().as_nchw().unwrap();
        let (xs, ys) = (x.f32().unwrap(), half[0].f32().unwrap());
        for n in (0..32).filter(|n| !greys.contains(n)) {
            let r = n * s.image()..(n + 1) * s.image();
            assert_eq!(xs[r.clone()], ys[r]);
        }
        assert_eq!(run_at(&node(0.5), &[Some(x.clone())], cx(0)), half);
        let other = run_at(&node(0.5), &[Some(x.clone())], cx(1));
        assert_ne!(grey_samples(&other[0]), greys);
    }

    #[test]
    fn infer_and_params_errors() {
        let e = infer_err(&node(0.2), &[Some(TensorSpec::f32(&[2, 4, 8, 8]))]);
        assert_eq!(
            e,
            "`image` must be f32[N, 3, H, W] (RGB), got f32[2, 4, 8, 8]"
        );
        let e = infer_err(&node(0.2), &[Some(TensorSpec::f32(&[3, 8, 8]))]);
        assert_eq!(e, "`image` must be f32[N, C, H, W], got f32[3, 8, 8]");
        let e = try_configure(&node(-0.1)).unwrap_err();
        assert!(
            e.message
                .contains("p must be a probability in [0, 1], got -0.1"),
            "{e}"
        );
        let e = try_configure("name: grey\nop: random_grayscale\n").unwrap_err();
        assert!(e.message.contains("missing field `p`"), "{e}");
    }
}
