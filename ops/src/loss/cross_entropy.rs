//! `cross_entropy`: pixel-wise cross entropy of logits against hard labels,
//! loss = Σ_valid w_p · (−log softmax(logits_p)_{t_p}) / D, where a pixel is valid unless its
//! target is `ignore_index`, w_p is the optional per-pixel `weight` (1 without it), and D is
//! chosen by `denominator`. With no weight and `valid_pixels` this is
//! `F.cross_entropy(logits, target, ignore_index=255)`. D = 0 (nothing valid) gives loss 0.
//!
//! Shapes: `logits` f32[N, K, H, W], `target` i32[N, H, W] (each in [0, K) or `ignore_index`,
//! checked at run time), `weight` f32[N, H, W] (optional) → `loss` f32[] (a scalar).
//!
//! Backward: `cross_entropy_bwd` (below, unregistered) computes dlogits = dloss·w·(softmax −
//! onehot)/D. Only `logits` gets a gradient: `target` is i32, and the per-pixel `weight` is
//! treated as a constant (it is a mask or a confidence from a detached branch; with
//! `weight_sum` D would depend on it too). A `weight` that depends on trainable state is an
//! error rather than a silently dropped gradient: pass it through `detach` to say it is
//! constant. Its kernels' CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops
//! to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::loss::{self, cross_entropy_bwd, cross_entropy_fwd, CrossEntropyParams};
use serde::{Deserialize, Deserializer};

/// The `cross_entropy` op.
pub struct CrossEntropy;

/// Params of `cross_entropy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Target value marking a pixel to skip; default 255, the segmentation datasets' "void"
    /// (PyTorch's own default is −100).
    #[serde(default = "default_ignore_index")]
    pub ignore_index: i32,
    /// What the weighted sum is divided by; default `valid_pixels`.
    #[serde(default)]
    pub denominator: Denominator,
}

fn default_ignore_index() -> i32 {
    255
}

/// The denominator D, as written in YAML: `valid_pixels`, `all_pixels`, `all_elements`,
/// `weight_sum` or `{ constant: 123.0 }`. Shared by the pixel losses (`squared_error` too), each saying what
/// makes a pixel valid.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Denominator {
    /// Number of valid pixels: not ignored here (PyTorch's `reduction='mean'`), weight ≠ 0 for
    /// `squared_error`.
    #[default]
    ValidPixels,
    /// N·H·W, ignored pixels included (FixMatch's mean over all unlabeled pixels).
    AllPixels,
    /// N·K·H·W, every element of the class maps (`F.mse_loss`'s mean), whatever K is.
    AllElements,
    /// Σ of `weight` over non-ignored pixels (the valid count without a weight).
    WeightSum,
    /// A fixed value, finite and ≥ 0.
    Constant(#[serde(deserialize_with = "finite_non_negative")] f64),
}

/// Rejects a constant the kernel would refuse at run time, now and at its line:column.
fn finite_non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let c = f64::deserialize(d)?;
    if c.is_finite() && c >= 0.0 {
        Ok(c)
    } else {
        Err(serde::de::Error::custom(format!(
            "the constant denominator must be finite and >= 0, got {c}"
        )))
    }
}

impl From<Denominator> for loss::Denominator {
    fn from(d: Denominator) -> Self {
        match d {
            Denominator::ValidPixels => loss::Denominator::ValidPixels,
            Denominator::AllPixels => loss::Denominator::AllPixels,
            Denominator::AllElements => loss::Denominator::AllElements,
            Denominator::WeightSum => loss::Denominator::WeightSum,
            Denominator::Constant(c) => loss::Denominator::Constant(c),
        }
    }
}

impl Params {
    /// The kernel's view of the params.
    fn kernel(&self) -> CrossEntropyParams {
        CrossEntropyParams {
            ignore_index: self.ignore_index,
            denominator: self.denominator.into(),
        }
    }
}

impl Op for CrossEntropy {
    const NAME: &'static str = "cross_entropy";
    const SUMMARY: &'static str =
        "pixel-wise cross entropy against hard labels (ignore_index, pixel weights, denominator)";
    const INPUTS: &'static [Port] = &[
        Port::req("logits", "f32[N, K, H, W] unnormalised class scores"),
        Port::req("target", "i32[N, H, W] labels in [0, K) or ignore_index"),
        Port::opt(
            "weight",
            "f32[N, H, W] per-pixel weights (e.g. a confidence mask)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("loss", "f32[] scalar")];
    const EXAMPLE: &'static str = "name: sup_loss\nop: cross_entropy\n\
        inputs: { logits: student_fwd.logits, target: batch.label }\n\
        params: { ignore_index: 255, denominator: valid_pixels }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        GradCase {
            params: "{}",
            feeds: &[
                ("logits", Feed::Trainable(&[2, 3, 5, 7])),
                ("target", Feed::Labels(&[2, 5, 7])),
            ],
        },
        GradCase {
            params: "{ denominator: weight_sum }",
            feeds: &[
                ("logits", Feed::Trainable(&[2, 3, 5, 7])),
                ("target", Feed::Labels(&[2, 5, 7])),
                ("weight", Feed::Constant(&[2, 5, 7])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let l = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if l.c == 0 {
            return Err(format!(
                "`logits` must have at least one class (K ≥ 1), got {}",
                TensorSpec::nchw(l)
            ));
        }
        let pixels = [l.n, l.h, l.w];
        let target = io::spec(Self::INPUTS, inputs, 1)?;
        if *target != TensorSpec::i32(&pixels) {
            return Err(format!(
                "`target` must be {} (N, H, W of `logits`), got {target}",
                TensorSpec::i32(&pixels)
            ));
        }
        if let Some(w) = inputs.get(2).copied().flatten() {
            if w.dtype != DType::F32 || w.shape != pixels {
                return Err(format!(
                    "`weight` must be {} (N, H, W of `logits`), got {w}",
                    TensorSpec::f32(&pixels)
                ));
            }
        }
        Ok(vec![TensorSpec::scalar()])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let logits = io::f32(Self::INPUTS, inputs, 0)?;
        let target = io::i32(Self::INPUTS, inputs, 1)?;
        let weight = io::f32_opt(Self::INPUTS, inputs, 2)?;
        let value = cross_entropy_fwd(logits, target, weight, shape, p.kernel(), None)?;
        match io::f32_out(Self::OUTPUTS, outputs, 0)? {
            [out] => {
                *out = value;
                Ok(())
            }
            other => Err(OpError::Output {
                port: "loss",
                problem: format!("expected a scalar output, got {} elements", other.len()),
            }),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let logits = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let target = dev_io::i32(Self::INPUTS, inputs, 1)?;
        let weight = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let weight = weight.as_ref().map(|w| w as &dyn cuda::DeviceBuf<f32>);
        let mut loss = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::loss::cross_entropy_fwd(
            cx.dev,
            &logits,
            &target,
            weight,
            shape,
            p.kernel(),
            None,
            &mut loss,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `cross_entropy`: one `cross_entropy_bwd` node for dlogits; `target` (i32) never
/// needs a gradient and a `weight` that would need one is refused (see the file header).
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    grad::constant_input(
        g,
        CrossEntropy::INPUTS,
        2,
        CrossEntropy::NAME,
        "the per-pixel weight",
    )?;
    if !g.needs_grad(0) {
        return Ok(());
    }
    let logits = grad::input(g, CrossEntropy::INPUTS, 0)?;
    let target = grad::input(g, CrossEntropy::INPUTS, 1)?;
    let dloss = grad::grad_output(g, CrossEntropy::OUTPUTS, 0)?;
    let inputs = vec![Some(logits), Some(target), g.input(2), Some(dloss)];
    let [dlogits] = grad::outputs(g.emit::<CrossEntropyBwd>(p.clone(), inputs)?)?;
    g.set_grad(0, dlogits);
    Ok(())
}

/// Backward of `cross_entropy` (emitted by its VJP, not registered): dlogits = dloss·w·(softmax
/// − onehot)/D at valid pixels, 0 at ignored ones, with the forward's params.
struct CrossEntropyBwd;

impl Op for CrossEntropyBwd {
    const NAME: &'static str = "cross_entropy_bwd";
    const SUMMARY: &'static str =
        "gradient of cross_entropy w.r.t. the logits, dloss·w·(softmax − onehot)/D";
    const INPUTS: &'static [Port] = &[
        Port::req("logits", "f32[N, K, H, W]: cross_entropy's logits"),
        Port::req("target", "i32[N, H, W]: its target"),
        Port::opt(
            "weight",
            "f32[N, H, W]: its per-pixel weight, if it had one",
        ),
        Port::req(
            "dloss",
            "f32[]: the gradient of its `loss`, read at run time",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dlogits", "f32[N, K, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        // The forward's checks on logits, target and weight.
        CrossEntropy::infer(p, &inputs[..inputs.len().min(3)])?;
        io::scalar_spec(Self::INPUTS, inputs, 3)?;
        Ok(vec![TensorSpec::nchw(io::nchw_f32(
            Self::INPUTS,
            inputs,
            0,
        )?)])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let logits = io::f32(Self::INPUTS, inputs, 0)?;
        let target = io::i32(Self::INPUTS, inputs, 1)?;
        let weight = io::f32_opt(Self::INPUTS, inputs, 2)?;
        let dloss = match io::f32(Self::INPUTS, inputs, 3)? {
            [v] => *v,
            other => {
                return Err(OpError::Input {
                    port: "dloss",
                    problem: format!("expected a scalar, got {} elements", other.len()),
                })
            }
        };
        let dlogits = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cross_entropy_bwd(
            logits,
            target,
            weight,
            shape,
            p.kernel(),
            dloss,
            dlogits,
        )?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let logits = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let target = dev_io::i32(Self::INPUTS, inputs, 1)?;
        let weight = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let weight = weight.as_ref().map(|w| w as &dyn cuda::DeviceBuf<f32>);
        let dloss = dev_io::f32(Self::INPUTS, inputs, 3)?;
        let mut dlogits = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::loss::cross_entropy_bwd(
            cx.dev,
            &logits,
            &target,
            weight,
            shape,
            p.kernel(),
            &dloss,
            &mut dlogits,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, i32s, infer_err, run, try_configure};
    use flowseg_engine::{Tensor, TensorSpec};

    /// [N=1, K=2, H=1, W=2], class-major: pixel 0 is (0, ln 3), softmax (1/4, 3/4); pixel 1 is
    /// (0, 0), softmax (1/2, 1/2).
    fn logits() -> Option<Tensor> {
        Some(f32s(&[1, 2, 1, 2], &[0.0, 0.0, 3f32.ln(), 0.0]))
    }

    fn loss(yaml: &str, target: &[i32], weight: Option<&[f32]>) -> f32 {
        let inputs = [
            logits(),
            Some(i32s(&[1, 1, 2], target)),
            weight.map(|w| f32s(&[1, 1, 2], w)),
        ];
        let out = run(yaml, &inputs);
        assert_eq!(out[0].spec(), &TensorSpec::scalar());
        out[0].f32().unwrap()[0]
    }

    fn close(got: f32, want: f64) {
        assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn hand_computed_denominators() {
        let (l0, l1) = ((4.0f64 / 3.0).ln(), 2f64.ln()); // −log(3/4), −log(1/2)
        let node = |params: &str| format!("name: l\nop: cross_entropy\nparams: {params}\n");
        close(loss(&node("{}"), &[1, 0], None), (l0 + l1) / 2.0);
        // Default ignore_index 255 skips pixel 1; valid_pixels divides by 1, all_pixels by 2.
        close(loss(&node("{}"), &[1, 255], None), l0);
        close(
            loss(&node("{ denominator: all_pixels }"), &[1, 255], None),
            l0 / 2.0,
        );
        // all_elements divides by N·K·H·W = 1·2·1·2.
        close(
            loss(&node("{ denominator: all_elements }"), &[1, 255], None),
            l0 / 4.0,
        );
        // Weights (2, 0.5): weight_sum divides by 2.5; a constant by itself.
        let w = Some(&[2.0f32, 0.5][..]);
        close(
            loss(&node("{ denominator: weight_sum }"), &[1, 0], w),
            (2.0 * l0 + 0.5 * l1) / 2.5,
        );
        close(
            loss(&node("{ denominator: { constant: 10 } }"), &[1, 0], w),
            (2.0 * l0 + 0.5 * l1) / 10.0,
        );
        close(loss(&node("{ ignore_index: 0 }"), &[1, 0], None), l0);
    }

    #[test]
    fn infer_checks_target_and_weight_against_logits() {
        let node = "name: l\nop: cross_entropy\n";
        let l = Some(TensorSpec::f32(&[2, 4, 8, 8]));
        let e = infer_err(node, &[l.clone(), Some(TensorSpec::f32(&[2, 8, 8])), None]);
        assert_eq!(
            e,
            "`target` must be i32[2, 8, 8] (N, H, W of `logits`), got f32[2, 8, 8]"
        );
        let t = Some(TensorSpec::i32(&[2, 8, 8]));
        let e = infer_err(node, &[l, t, Some(TensorSpec::f32(&[2, 1, 8, 8]))]);
        assert_eq!(
            e,
            "`weight` must be f32[2, 8, 8] (N, H, W of `logits`), got f32[2, 1, 8, 8]"
        );
    }

    #[test]
    fn bad_denominators_are_rejected_where_written() {
        let e = try_configure(
            "name: l\nop: cross_entropy\nparams:\n  denominator: { constant: -1.0 }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("finite and >= 0"), "{e}");
        // Points at the value inside the variant, not at the enclosing mapping.
        assert_eq!((e.loc.line, e.loc.col), (4, 28));
        let e = try_configure("name: l\nop: cross_entropy\nparams:\n  denominator: mean\n")
            .unwrap_err();
        assert!(e.message.contains("unknown variant `mean`"), "{e}");
        assert_eq!((e.loc.line, e.loc.col), (4, 16));
    }
}
