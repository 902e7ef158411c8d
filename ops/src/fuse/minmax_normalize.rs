//! `minmax_normalize`: each sample rescaled by its own extremes, y = (x·g − m)/(M − m + eps),
//! m and M the sample's min and max over every non-batch element, g = [M > min_peak] (1 without
//! `min_peak`). GCT normalises its flaw maps this way (PixelSSL `ssl_gct.py`):
//! `FlawmapHandler.forward` with `min_peak: 0.1` (`clip_threshold`: a map whose peak is below
//! it is zeroed before the shift, so it becomes −m/(M − m) ≤ 0, "no flaw"), and
//! `FDGTGenerator.forward` without a gate (`eps` 1e-9 in both).
//!
//! Shapes: `x` f32[N, …] (any rank ≥ 1) → `y` like x.
//!
//! A stop-gradient (`Op::STOP_GRAD`): both uses are targets computed without a graph
//! (`torch.no_grad()`, `.data`). Not here: normalisation per channel.

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::maps::minmax_normalize_fwd;
use serde::Deserialize;

/// The `minmax_normalize` op.
pub struct MinmaxNormalize;

/// Params of `minmax_normalize`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Added to M − m; default 1e-9 (PixelSSL's), so a constant sample gives 0, not NaN.
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// When set, a sample whose max is not above it is zeroed before the shift
    /// (`FlawmapHandler`'s `clip_threshold`, 0.1). Default: no gate.
    #[serde(default)]
    pub min_peak: Option<f32>,
}

fn default_eps() -> f32 {
    1e-9
}

impl Op for MinmaxNormalize {
    const NAME: &'static str = "minmax_normalize";
    const SUMMARY: &'static str =
        "per-sample (x·[max > min_peak] − min)/(max − min + eps); a stop-gradient";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, …]")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x, each sample in [0, 1]")];
    const EXAMPLE: &'static str = "name: hl\nop: minmax_normalize\n\
        inputs: { x: hl_blur.y }\nparams: { min_peak: 0.1 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ min_peak: 0.1 }",
        feeds: &[("x", Feed::Trainable(&[2, 1, 4, 5]))],
    }];
    const STOP_GRAD: bool = true;
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::f32_spec(Self::INPUTS, inputs, 0)?;
        if x.shape.is_empty() {
            return Err(format!("`x` must have a batch dimension, got {x}"));
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
        let n = (inputs.first().copied().flatten())
            .map_or(0, |t| t.spec().shape.first().copied().unwrap_or(0));
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(minmax_normalize_fwd(x, n, p.min_peak, p.eps, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let n = (inputs.first().copied().flatten())
            .map_or(0, |t| t.spec.shape.first().copied().unwrap_or(0));
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::maps::minmax_normalize_fwd(
            cx.dev, &x, n, p.min_peak, p.eps, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed() {
        // Sample 0 [1, 2, 3] → [0, ½, 1]; sample 1 peaks at 0.05 < 0.1 → gated: −0/(…) = 0.
        let x = f32s(&[2, 1, 1, 3], &[1.0, 2.0, 3.0, 0.05, 0.0, 0.02]);
        let y = run(
            "name: m\nop: minmax_normalize\nparams: { min_peak: 0.1 }\n",
            &[Some(x)],
        );
        assert_close(y[0].f32().unwrap(), &[0.0, 0.5, 1.0, 0.0, 0.0, 0.0], 1e-6);
        // No gate: sample 1 → [1, 0, 0.4].
        let x = f32s(&[2, 3], &[1.0, 2.0, 3.0, 0.05, 0.0, 0.02]);
        let y = run("name: m\nop: minmax_normalize\n", &[Some(x)]);
        assert_close(y[0].f32().unwrap(), &[0.0, 0.5, 1.0, 1.0, 0.0, 0.4], 1e-6);
    }

    #[test]
    fn infer_rejects_a_scalar() {
        let e = infer_err(
            "name: m\nop: minmax_normalize\n",
            &[Some(TensorSpec::scalar())],
        );
        assert_eq!(e, "`x` must have a batch dimension, got f32[]");
    }
}
