//! `blur_map`: a Gaussian blur of a map (a flaw map, an error map), as GCT's `GaussianBlurLayer`
//! (PixelSSL `pixelssl/nn/module/gaussian_blur.py`): reflect padding of k/2
//! (`nn.ReflectionPad2d`), then a depthwise k×k convolution whose kernel is scipy's
//! `gaussian_filter` of a centred delta, σ = 0.3·((k − 1)/2 − 1) + 0.8 (OpenCV's rule). That
//! kernel is the outer product of a 1-D filter with itself, so the blur runs as two 1-D passes
//! (`maps::separable_blur_fwd`; the 2-D convolution sums in another order, so values differ
//! from PyTorch's in the last bits). Unlike the image augmentation `gaussian_blur`, no clamp.
//!
//! Size: `kernel: k` (odd), or `divisor: d` for PixelSSL's rule k = ⌊H/d⌋, plus 1 if even
//! (`FlawmapHandler`: im_size/16; `FDGTGenerator`: /8 and /4), so one graph blurs alike at
//! every image size: 5, 9, 17 at 64 px; 3, 5, 9 at 32.
//!
//! Taps: `scipy` (default) — the 1-D response of `scipy.ndimage.gaussian_filter1d` (truncate 4,
//! mode `reflect`) to a centred delta of length k, so the Gaussian's tails beyond ±k/2 fold back
//! (`maps::scipy_gaussian_taps`); `truncated` — the Gaussian cut at ±k/2 and renormalised
//! (torchvision's, `augment::gaussian_weights`).
//!
//! Shapes: `x` f32[N, C, H, W] → `y` like x. A stop-gradient (`Op::STOP_GRAD`): GCT blurs only
//! targets and detached maps. Not here: a differentiable blur.

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::augment::gaussian_weights;
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::maps::{opencv_sigma, scipy_gaussian_taps, separable_blur_fwd};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `blur_map` op.
pub struct BlurMap;

/// How the 1-D filter is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Taps {
    /// scipy's `gaussian_filter` of a delta (tails folded back), as PixelSSL.
    #[default]
    Scipy,
    /// The Gaussian truncated at ±k/2 and renormalised.
    Truncated,
}

/// Params of `blur_map`: exactly one of `kernel` and `divisor`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The filter size k, odd.
    #[serde(default)]
    pub kernel: Option<usize>,
    /// k from the map's height: ⌊H / divisor⌋, plus 1 if even (PixelSSL's rule).
    #[serde(default)]
    pub divisor: Option<usize>,
    /// σ; default OpenCV's rule 0.3·((k − 1)/2 − 1) + 0.8.
    #[serde(default)]
    pub sigma: Option<f64>,
    /// `scipy` (default) or `truncated`.
    #[serde(default)]
    pub taps: Taps,
}

impl Params {
    /// The filter size for a map of height `h`, or why the params are wrong.
    fn size(&self, h: usize) -> Result<usize, String> {
        match (self.kernel, self.divisor) {
            (Some(k), None) if k % 2 == 1 => Ok(k),
            (Some(k), None) => Err(format!("`kernel` must be odd, got {k}")),
            (None, Some(0)) => Err("`divisor` must be at least 1".into()),
            (None, Some(d)) => {
                let k = h / d;
                Ok(if k.is_multiple_of(2) { k + 1 } else { k })
            }
            _ => Err("give exactly one of `kernel` (an odd size) and `divisor`".into()),
        }
    }

    /// The 1-D filter for a map of height `h`.
    fn taps(&self, h: usize) -> Result<Vec<f32>, String> {
        let k = self.size(h)?;
        let sigma = self.sigma.unwrap_or_else(|| opencv_sigma(k));
        if sigma.is_nan() || sigma <= 0.0 {
            return Err(format!("σ must be > 0, got {sigma} (kernel {k})"));
        }
        Ok(match self.taps {
            Taps::Scipy => scipy_gaussian_taps(k, sigma),
            Taps::Truncated => gaussian_weights(sigma as f32, k),
        })
    }
}

impl Op for BlurMap {
    const NAME: &'static str = "blur_map";
    const SUMMARY: &'static str =
        "Gaussian blur of a map with reflect padding, sized by `kernel` or H/`divisor`; a stop-gradient";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W]")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str =
        "name: hl_blur\nop: blur_map\ninputs: { x: hl_pos.y }\nparams: { divisor: 16 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ kernel: 3 }",
        feeds: &[("x", Feed::Trainable(&[2, 1, 5, 6]))],
    }];
    const STOP_GRAD: bool = true;
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        p.taps(x.h)?;
        Ok(vec![TensorSpec::nchw(x)])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s: Nchw = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let taps = p
            .taps(s.h)
            .map_err(|problem| OpError::Input { port: "x", problem })?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(separable_blur_fwd(x, s, &taps, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let taps = p
            .taps(s.h)
            .map_err(|problem| OpError::Input { port: "x", problem })?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::maps::separable_blur_fwd(
            cx.dev, &x, s, &taps, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::Params;
    use crate::support::test::{assert_close, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;
    use flowseg_kernels::maps::scipy_gaussian_taps;

    #[test]
    fn the_size_rule_is_pixelssls() {
        let p = |d| Params {
            kernel: None,
            divisor: Some(d),
            sigma: None,
            taps: super::Taps::Scipy,
        };
        // 64 px: /16 → 4 → 5, /8 → 8 → 9, /4 → 16 → 17; 32 px: 3, 5, 9; 321 px (VOC): 21 → 21.
        assert_eq!(
            [p(16).size(64), p(8).size(64), p(4).size(64)],
            [Ok(5), Ok(9), Ok(17)]
        );
        assert_eq!(
            [p(16).size(32), p(8).size(32), p(4).size(32)],
            [Ok(3), Ok(5), Ok(9)]
        );
        assert_eq!(p(16).size(321), Ok(21));
    }

    #[test]
    fn a_delta_becomes_the_outer_product_of_the_taps() {
        // 5×5 map with a 1 in the middle, k = 3 (σ 0.8 by the rule): y = t ⊗ t around it.
        let mut v = vec![0.0; 25];
        v[12] = 1.0;
        let y = run(
            "name: b\nop: blur_map\nparams: { kernel: 3 }\n",
            &[Some(f32s(&[1, 1, 5, 5], &v))],
        );
        let t = scipy_gaussian_taps(3, 0.8);
        let mut want = vec![0.0; 25];
        for dy in 0..3 {
            for dx in 0..3 {
                want[(1 + dy) * 5 + 1 + dx] = t[dy] * t[dx];
            }
        }
        assert_close(y[0].f32().unwrap(), &want, 1e-7);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let x = Some(TensorSpec::f32(&[1, 1, 8, 8]));
        let e = infer_err(
            "name: b\nop: blur_map\nparams: { kernel: 4 }\n",
            std::slice::from_ref(&x),
        );
        assert_eq!(e, "`kernel` must be odd, got 4");
        let e = infer_err(
            "name: b\nop: blur_map\nparams: {}\n",
            std::slice::from_ref(&x),
        );
        assert_eq!(
            e,
            "give exactly one of `kernel` (an odd size) and `divisor`"
        );
        let e = infer_err(
            "name: b\nop: blur_map\nparams: { kernel: 3, divisor: 4 }\n",
            &[x],
        );
        assert_eq!(
            e,
            "give exactly one of `kernel` (an odd size) and `divisor`"
        );
    }
}
