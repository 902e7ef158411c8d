//! `soft_cross_entropy`: pixel-wise cross entropy of logits against soft target probabilities,
//! loss = Σ_pixels w_p · (−Σ_k q_k · log softmax(logits_p)_k) / D, where w_p is the optional
//! per-pixel `weight` (1 without it) and D is chosen by `denominator`.
//!
//! Used by PseudoSeg's unlabeled loss (googleinterns/wss train_wss.py `_build_pseudo_seg`:
//! `tf.nn.softmax_cross_entropy_with_logits_v2(labels=pseudo_label, logits=logits_strong)` ×
//! the valid mask, summed and divided by the mask's sum — `{ denominator: weight_sum }` with the
//! validity mask as `weight`) and by CCT's I-VAT surrogate (∇ KL(p₀‖softmax z) = ∇ softCE(z,
//! p₀), because the entropy of p₀ is a constant).
//!
//! Shapes: `logits` f32[N, K, H, W], `target` the spec of `logits` (probabilities; need not sum
//! to 1), `weight` f32[N, H, W] (optional) → `loss` f32[] (a scalar).
//!
//! Denominators as in `squared_error`: a pixel is *valid* when its weight is ≠ 0 (every pixel
//! without a weight); `valid_pixels` (the default) counts those, `weight_sum` is Σ weight,
//! `all_pixels` is N·H·W, `{ constant: c }` is c. D = 0 gives loss 0 and zero gradients. Pixels
//! with weight 0 are skipped outright, so NaN there cannot leak into the loss.
//!
//! Backward: `soft_cross_entropy_bwd` (below, unregistered) computes dlogits = dloss·w·(p·Σ_k q_k
//! − q)/D. Only `logits` gets a gradient: the `target` and the `weight` are constants (a
//! pseudo-label and a mask from detached branches); one that depends on trainable state is an
//! error, to be made explicit with `detach`. Its kernels' CUDA twins exist (kernels/src/cuda);
//! the engine does not dispatch ops to them yet.
//!
//! Not here: a gradient with respect to the soft target (no method here trains through it).

use crate::grad;
use crate::loss::cross_entropy::Denominator;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::loss::{soft_cross_entropy_bwd, soft_cross_entropy_fwd};
use serde::Deserialize;

/// The `soft_cross_entropy` op.
pub struct SoftCrossEntropy;

/// Params of `soft_cross_entropy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// What the weighted sum is divided by; default `valid_pixels` (pixels with weight ≠ 0,
    /// every pixel without a weight).
    #[serde(default)]
    pub denominator: Denominator,
}

impl Op for SoftCrossEntropy {
    const NAME: &'static str = "soft_cross_entropy";
    const SUMMARY: &'static str =
        "pixel-wise cross entropy against soft targets Σ_px w·(−Σ_k q_k log softmax(x)_k) / D";
    const INPUTS: &'static [Port] = &[
        Port::req("logits", "f32[N, K, H, W] unnormalised class scores"),
        Port::req(
            "target",
            "f32[N, K, H, W] target probabilities (a constant, e.g. a sharpened pseudo-label)",
        ),
        Port::opt(
            "weight",
            "f32[N, H, W] per-pixel weights (e.g. a validity mask); a constant",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("loss", "f32[] scalar")];
    const EXAMPLE: &'static str = "name: unsup_loss\nop: soft_cross_entropy\n\
        inputs: { logits: strong.logits, target: pseudo.y, weight: cut.valid_out }\n\
        params: { denominator: weight_sum }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Default denominator, no weight.
        GradCase {
            params: "{}",
            feeds: &[
                ("logits", Feed::Trainable(&[2, 3, 5, 7])),
                ("target", Feed::Constant(&[2, 3, 5, 7])),
            ],
        },
        // A per-pixel weight and its sum as the denominator (PseudoSeg's unlabeled loss).
        GradCase {
            params: "{ denominator: weight_sum }",
            feeds: &[
                ("logits", Feed::Trainable(&[2, 3, 5, 7])),
                ("target", Feed::Constant(&[2, 3, 5, 7])),
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
        let l_spec = TensorSpec::nchw(l);
        let target = io::spec(Self::INPUTS, inputs, 1)?;
        if *target != l_spec {
            return Err(format!(
                "`target` must match `logits` ({l_spec}), got {target}"
            ));
        }
        let pixels = [l.n, l.h, l.w];
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
        let target = io::f32(Self::INPUTS, inputs, 1)?;
        let weight = io::f32_opt(Self::INPUTS, inputs, 2)?;
        let value = soft_cross_entropy_fwd(logits, target, weight, shape, p.denominator.into())?;
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
        let target = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let weight = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let weight = weight.as_ref().map(|w| w as &dyn cuda::DeviceBuf<f32>);
        let mut loss = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let den = p.denominator.into();
        let dev = cx.dev;
        Ok(cuda::loss::soft_cross_entropy_fwd(
            dev, &logits, &target, weight, shape, den, &mut loss,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `soft_cross_entropy`: one `soft_cross_entropy_bwd` node for dlogits; a `target`
/// or `weight` that would need a gradient is refused (see the file header).
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    let ports = SoftCrossEntropy::INPUTS;
    grad::constant_input(g, ports, 1, SoftCrossEntropy::NAME, "the soft target")?;
    grad::constant_input(g, ports, 2, SoftCrossEntropy::NAME, "the per-pixel weight")?;
    if !g.needs_grad(0) {
        return Ok(());
    }
    let logits = grad::input(g, ports, 0)?;
    let target = grad::input(g, ports, 1)?;
    let dloss = grad::grad_output(g, SoftCrossEntropy::OUTPUTS, 0)?;
    let inputs = vec![Some(logits), Some(target), g.input(2), Some(dloss)];
    let [dlogits] = grad::outputs(g.emit::<SoftCrossEntropyBwd>(p.clone(), inputs)?)?;
    g.set_grad(0, dlogits);
    Ok(())
}

/// Backward of `soft_cross_entropy` (emitted by its VJP, not registered): dlogits =
/// dloss·w·(softmax·Σq − q)/D, 0 where the weight is 0.
struct SoftCrossEntropyBwd;

impl Op for SoftCrossEntropyBwd {
    const NAME: &'static str = "soft_cross_entropy_bwd";
    const SUMMARY: &'static str =
        "gradient of soft_cross_entropy w.r.t. the logits, dloss·w·(softmax·Σq − q)/D";
    const INPUTS: &'static [Port] = &[
        Port::req("logits", "f32[N, K, H, W]: soft_cross_entropy's logits"),
        Port::req("target", "f32[N, K, H, W]: its target"),
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
        SoftCrossEntropy::infer(p, &inputs[..inputs.len().min(3)])?;
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
        let target = io::f32(Self::INPUTS, inputs, 1)?;
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
        let den = p.denominator.into();
        Ok(soft_cross_entropy_bwd(
            logits, target, weight, shape, den, dloss, dlogits,
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
        let target = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let weight = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let weight = weight.as_ref().map(|w| w as &dyn cuda::DeviceBuf<f32>);
        let dloss = dev_io::f32(Self::INPUTS, inputs, 3)?;
        let mut dlogits = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let den = p.denominator.into();
        Ok(cuda::loss::soft_cross_entropy_bwd(
            cx.dev,
            &logits,
            &target,
            weight,
            shape,
            den,
            &dloss,
            &mut dlogits,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::{Tensor, TensorSpec};

    /// [N=1, K=2, H=1, W=2], class-major: pixel 0 is (0, ln 3), softmax (1/4, 3/4); pixel 1 is
    /// (0, 0), softmax (1/2, 1/2).
    fn logits() -> Option<Tensor> {
        Some(f32s(&[1, 2, 1, 2], &[0.0, 0.0, 3f32.ln(), 0.0]))
    }

    /// Targets: pixel 0 (1/2, 1/2), pixel 1 (1, 0).
    fn target() -> Option<Tensor> {
        Some(f32s(&[1, 2, 1, 2], &[0.5, 1.0, 0.5, 0.0]))
    }

    fn loss(params: &str, weight: Option<&[f32]>) -> f32 {
        let node = format!("name: l\nop: soft_cross_entropy\nparams: {params}\n");
        let out = run(
            &node,
            &[logits(), target(), weight.map(|w| f32s(&[1, 1, 2], w))],
        );
        assert_eq!(out[0].spec(), &TensorSpec::scalar());
        out[0].f32().unwrap()[0]
    }

    fn close(got: f32, want: f64) {
        assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn hand_computed_denominators() {
        // Pixel 0: −(½ ln ¼ + ½ ln ¾) = ½ ln(16/3); pixel 1: −ln ½ = ln 2.
        let (l0, l1) = (0.5 * (16.0f64 / 3.0).ln(), 2f64.ln());
        close(loss("{}", None), (l0 + l1) / 2.0);
        // Weights (2, 0.5): valid_pixels divides by 2, weight_sum by 2.5.
        let w = Some(&[2.0f32, 0.5][..]);
        close(loss("{}", w), (2.0 * l0 + 0.5 * l1) / 2.0);
        close(
            loss("{ denominator: weight_sum }", w),
            (2.0 * l0 + 0.5 * l1) / 2.5,
        );
        // Weight 0 at pixel 1: valid_pixels counts only pixel 0; all_pixels still 2.
        let w = Some(&[1.0f32, 0.0][..]);
        close(loss("{}", w), l0);
        close(loss("{ denominator: all_pixels }", w), l0 / 2.0);
        close(
            loss("{ denominator: { constant: 4 } }", None),
            (l0 + l1) / 4.0,
        );
    }

    #[test]
    fn infer_checks_target_and_weight_against_logits() {
        let node = "name: l\nop: soft_cross_entropy\n";
        let l = Some(TensorSpec::f32(&[2, 4, 8, 8]));
        let e = infer_err(node, &[l.clone(), Some(TensorSpec::i32(&[2, 8, 8])), None]);
        assert_eq!(
            e,
            "`target` must match `logits` (f32[2, 4, 8, 8]), got i32[2, 8, 8]"
        );
        let e = infer_err(node, &[l.clone(), l, Some(TensorSpec::f32(&[2, 1, 8, 8]))]);
        assert_eq!(
            e,
            "`weight` must be f32[2, 8, 8] (N, H, W of `logits`), got f32[2, 1, 8, 8]"
        );
    }

    #[test]
    fn bad_denominators_are_rejected_where_written() {
        let e = try_configure("name: l\nop: soft_cross_entropy\nparams: { denominator: mean }\n")
            .unwrap_err();
        assert!(e.message.contains("unknown variant `mean`"), "{e}");
    }
}
