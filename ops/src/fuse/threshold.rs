//! `threshold`: a 0/1 mask from a comparison, y = 1 where x ≥ `at` else 0 (`(x >= at).float()`),
//! or with `below: true` y = 1 where x < `at` else 0. A NaN in `x` gives 0 in both modes, so a
//! diverged teacher never passes a confidence mask. FixMatch / UniMatch build their confidence
//! mask this way from `max_confidence`'s `confidence`.
//!
//! Shapes: `x` f32 of any shape → `y` f32, the same spec.
//!
//! A stop-gradient (`Op::STOP_GRAD`): the mask is piecewise constant, so its true gradient is 0
//! almost everywhere, and the methods use it as a constant weight. Not here: soft (sigmoid)
//! thresholds, per-class thresholds (FlexMatch-style), and the CUDA launcher.

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::threshold_fwd;
use serde::Deserialize;

/// The `threshold` op.
pub struct Threshold;

/// Params of `threshold`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The threshold t (required; the graph parser admits only finite numbers): y = 1 where
    /// x ≥ t. FixMatch uses 0.95 on confidences.
    pub at: f32,
    /// Flip the comparison to x < t (a mask of the *un*confident pixels); default false.
    #[serde(default)]
    pub below: bool,
}

impl Op for Threshold {
    const NAME: &'static str = "threshold";
    const SUMMARY: &'static str =
        "0/1 mask y = [x ≥ at] (or [x < at] with below), NaN → 0; a stop-gradient";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape (e.g. confidences)")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the spec of `x`, each 0 or 1")];
    const EXAMPLE: &'static str = "name: confident\nop: threshold\n\
        inputs: { x: pseudo.confidence }\nparams: { at: 0.95 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ at: 0.0 }",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// A mask is a constant of the loss it weights (FixMatch's confidence mask), not something
    /// to train through.
    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(threshold_fwd(x, p.at, p.below, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::elementwise::threshold_fwd(
            cx.dev, &x, p.at, p.below, &mut y,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    /// Values around t = 0.95: below, exactly at, above, NaN, and the extremes.
    fn x() -> Option<flowseg_engine::Tensor> {
        let v = [0.5, 0.95, 0.96, f32::NAN, -f32::INFINITY, f32::INFINITY];
        Some(f32s(&[1, 2, 3], &v))
    }

    #[test]
    fn equality_passes_at_or_above_and_nan_never_passes() {
        let y = run("name: m\nop: threshold\nparams: { at: 0.95 }\n", &[x()]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 2, 3]));
        assert_eq!(y[0].f32(), Some(&[0.0, 1.0, 1.0, 0.0, 0.0, 1.0][..]));
    }

    #[test]
    fn below_flips_the_comparison_but_not_nan() {
        let node = "name: m\nop: threshold\nparams: { at: 0.95, below: true }\n";
        let y = run(node, &[x()]);
        assert_eq!(y[0].f32(), Some(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0][..]));
    }

    #[test]
    fn params_are_checked_where_written() {
        let e = try_configure("name: m\nop: threshold\n").unwrap_err();
        assert!(e.message.contains("missing field `at`"), "{e}");
        let e = try_configure("name: m\nop: threshold\nparams:\n  at: high\n").unwrap_err();
        assert!(e.message.contains("invalid type"), "{e}");
        assert_eq!((e.loc.line, e.loc.col), (4, 7));
        let e =
            try_configure("name: m\nop: threshold\nparams: { at: 1, above: true }\n").unwrap_err();
        assert!(e.message.contains("unknown field `above`"), "{e}");
    }

    #[test]
    fn infer_rejects_labels() {
        let e = infer_err(
            "name: m\nop: threshold\nparams: { at: 0.5 }\n",
            &[Some(TensorSpec::i32(&[2, 4, 4]))],
        );
        assert_eq!(e, "`x` must be f32, got i32[2, 4, 4]");
    }
}
