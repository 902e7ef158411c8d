//! `gaussian_blur`: with probability `p` per sample, a Gaussian blur with σ drawn uniformly
//! from `sigma` = [min, max] (torchvision's `RandomApply([GaussianBlur(kernel, sigma)], p)`),
//! separable, with reflect padding, clamped to [0, 1]. UniMatch's strong view: `p: 0.5,
//! sigma: [0.1, 2.0]` (it blurs with PIL's box approximation; this is the exact Gaussian).
//!
//! Shapes: `image` f32[N, C, H, W] (any C; every channel is blurred alike) → `image_out`, the
//! same. The square kernel is `kernel` wide, by default 2·⌈3·max σ⌉ + 1 (13 for σ ≤ 2), the
//! same for every sample; any image size works (reflection folds again past the border).
//!
//! Randomness: the node's Philox stream this iteration (`ExecCx::rng`), sample n reading
//! counters n·16 (apply) and n·16 + 1 (σ) (`flowseg_kernels::augment::draw_gaussian_blur`). A
//! stop-gradient: augmentations apply to data. Its kernels' CUDA twins exist
//! (kernels/src/cuda); the engine does not dispatch ops to them yet. Its twin takes the
//! host-computed `gaussian_weights`, so CPU and GPU sum the same f32 taps.
//!
//! Not here: anisotropic kernels (σx ≠ σy), other padding modes.

use super::common::{image_spec, probability};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::augment::{
    default_blur_kernel, draw_gaussian_blur, gaussian_blur_fwd, BlurParams,
};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use serde::{Deserialize, Deserializer};

/// The `gaussian_blur` op.
pub struct GaussianBlur;

/// Params of `gaussian_blur`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Probability that a sample is blurred, in [0, 1] (required).
    #[serde(deserialize_with = "probability")]
    pub p: f32,
    /// [min, max] of σ in pixels, 0 < min ≤ max; default [0.1, 2.0] (torchvision's).
    #[serde(default = "default_sigma", deserialize_with = "sigma_range")]
    pub sigma: [f32; 2],
    /// Kernel width and height, odd; default 2·⌈3·max σ⌉ + 1.
    #[serde(default, deserialize_with = "odd_kernel")]
    pub kernel: Option<usize>,
}

fn default_sigma() -> [f32; 2] {
    [0.1, 2.0]
}

/// A σ range the draw can use: 0 < min ≤ max < ∞.
fn sigma_range<'de, D: Deserializer<'de>>(d: D) -> Result<[f32; 2], D::Error> {
    let [lo, hi] = <[f32; 2]>::deserialize(d)?;
    if lo > 0.0 && lo <= hi && hi.is_finite() {
        Ok([lo, hi])
    } else {
        Err(serde::de::Error::custom(format!(
            "sigma must be [min, max] with 0 < min <= max, got [{lo}, {hi}]"
        )))
    }
}

/// A kernel size with a centre tap: odd.
fn odd_kernel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let k = usize::deserialize(d)?;
    if !k.is_multiple_of(2) {
        Ok(Some(k))
    } else {
        Err(serde::de::Error::custom(format!(
            "kernel must be odd (a centre tap and equal sides), got {k}"
        )))
    }
}

impl Params {
    fn kernel_size(&self) -> usize {
        self.kernel
            .unwrap_or_else(|| default_blur_kernel(self.sigma[1]))
    }
}

impl Op for GaussianBlur {
    const NAME: &'static str = "gaussian_blur";
    const SUMMARY: &'static str =
        "with probability p per sample, Gaussian blur with sigma drawn from [min, max]";
    const INPUTS: &'static [Port] = &[Port::req("image", "f32[N, C, H, W] in [0, 1]")];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "image_out",
        "f32[N, C, H, W] blurred (or copied), in [0, 1]",
    )];
    const EXAMPLE: &'static str =
        "name: blur\nop: gaussian_blur\ninputs: { image: grey.image_out }\n\
        params: { p: 0.5, sigma: [0.1, 2.0] }\n";
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
            false,
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
        let params = BlurParams {
            p: p.p,
            sigma_min: p.sigma[0],
            sigma_max: p.sigma[1],
        };
        let draws = draw_gaussian_blur(&cx.rng(), shape.n, &params)?;
        Ok(gaussian_blur_fwd(x, shape, &draws, p.kernel_size(), y)?)
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
        let params = BlurParams {
            p: p.p,
            sigma_min: p.sigma[0],
            sigma_max: p.sigma[1],
        };
        let draws = draw_gaussian_blur(&cx.exec.rng(), shape.n, &params)?;
        let k = p.kernel_size();
        Ok(cuda::augment::gaussian_blur_fwd(
            cx.dev, &x, shape, &draws, k, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::{random_images, run_at};
    use crate::support::test::{assert_close, configure, f32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, TensorSpec};

    #[test]
    fn constants_stay_and_an_impulse_spreads_its_unit_mass_symmetrically() {
        let node = "name: b\nop: gaussian_blur\nparams: { p: 1, sigma: [0.5, 1.5], kernel: 7 }\n";
        let y = run(node, &[Some(f32s(&[2, 1, 5, 6], &[0.7; 60]))]);
        assert_close(y[0].f32().unwrap(), &[0.7; 60], 1e-6);
        // Impulses in the middle of two 9 × 9 images (one channel each).
        let mut x = vec![0.0; 162];
        x[40] = 1.0;
        x[81 + 40] = 1.0;
        let y = run(node, &[Some(f32s(&[2, 1, 9, 9], &x))]);
        let y = y[0].f32().unwrap();
        for img in y.chunks(81) {
            let sum: f32 = img.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{sum}");
            for r in 0..9 {
                for c in 0..9 {
                    assert_eq!(img[r * 9 + c], img[(8 - r) * 9 + c]);
                    assert_eq!(img[r * 9 + c], img[c * 9 + r]);
                }
            }
            // The 7-tap kernel reaches 3 pixels out and no further.
            assert!(img[40 - 3] > 0.0 && img[40 - 4] == 0.0, "{img:?}");
        }
        assert_ne!(y[..81], y[81..], "each sample draws its own sigma");
    }

    #[test]
    fn p_zero_copies_p_one_blurs_and_draws_follow_the_iteration() {
        let x = random_images(4, &[8, 3, 6, 6], 0.0, 1.0);
        let none = "name: b\nop: gaussian_blur\nparams: { p: 0 }\n";
        assert_eq!(run(none, &[Some(x.clone())])[0], x);
        let all = "name: b\nop: gaussian_blur\nparams: { p: 1 }\n";
        let y = run(all, &[Some(x.clone())]);
        let (xs, ys) = (x.f32().unwrap(), y[0].f32().unwrap());
        for (a, b) in xs.chunks(108).zip(ys.chunks(108)) {
            assert_ne!(a, b);
        }
        assert!(ys.iter().all(|v| (0.0..=1.0).contains(v)));
        let cx = |iteration| ExecCx {
            seed: 9,
            iteration,
            node_key: 1,
        };
        let half = "name: b\nop: gaussian_blur\nparams: { p: 0.5 }\n";
        let a = run_at(half, &[Some(x.clone())], cx(0));
        assert_eq!(a, run_at(half, &[Some(x.clone())], cx(0)));
        assert_ne!(a, run_at(half, &[Some(x.clone())], cx(1)));
    }

    #[test]
    fn default_kernel_covers_three_sigma() {
        let node = "name: b\nop: gaussian_blur\nparams: { p: 1, sigma: [2.0, 2.0] }\n";
        // 13 taps for σ = 2: an impulse at column 6 of a 1 × 13 row reaches both ends.
        let mut x = vec![0.0; 13];
        x[6] = 1.0;
        let y = run(node, &[Some(f32s(&[1, 1, 1, 13], &x))]);
        let y = y[0].f32().unwrap();
        assert!(y[0] > 0.0 && y[12] > 0.0, "{y:?}");
        assert!(configure(node)
            .infer(&[Some(&TensorSpec::f32(&[1, 5, 2, 2]))])
            .is_ok());
    }

    #[test]
    fn infer_and_params_errors() {
        let node = "name: b\nop: gaussian_blur\nparams: { p: 0.5 }\n";
        let e = infer_err(node, &[Some(TensorSpec::f32(&[4, 4]))]);
        assert_eq!(e, "`image` must be f32[N, C, H, W], got f32[4, 4]");
        let e = try_configure("name: b\nop: gaussian_blur\nparams: { p: 0.5, kernel: 4 }\n")
            .unwrap_err();
        assert!(e.message.contains("kernel must be odd"), "{e}");
        for bad in ["[0, 1]", "[2, 1]", "[-1, 1]", "[0.5, 1e39]"] {
            let yaml = format!("name: b\nop: gaussian_blur\nparams: {{ p: 0.5, sigma: {bad} }}\n");
            let e = try_configure(&yaml).unwrap_err();
            assert!(
                e.message
                    .contains("sigma must be [min, max] with 0 < min <= max"),
                "{bad}: {e}"
            );
        }
        let e = try_configure("name: b\nop: gaussian_blur\nparams: { p: 2 }\n").unwrap_err();
        assert!(e.message.contains("p must be a probability"), "{e}");
    }
}
