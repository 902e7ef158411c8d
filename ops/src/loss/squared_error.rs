//! `squared_error`: the consistency loss between two probability maps,
//! loss = Σ_pixels w_p · Σ_k (a_k − b_k)² / D, where w_p is the optional per-pixel `weight` (1
//! without it) and D is chosen by `denominator`. With the default `all_pixels` (D = N·H·W) and
//! no weight this is CutMix-Seg's / Mean Teacher's `((a − b)**2).sum(dim=1).mean()`;
//! `F.mse_loss(a, b)` (a mean over every element: CCT's and GCT's consistency) is
//! `all_elements` (D = N·K·H·W).
//!
//! Shapes: `a` f32[N, K, H, W] (e.g. student probabilities), `b` the spec of `a` (targets,
//! usually from a detached teacher branch), `weight` f32[N, H, W] (optional; e.g. a mixed
//! validity mask) → `loss` f32[] (a scalar).
//!
//! Denominators as in `cross_entropy`, where for this loss a pixel is *valid* when its weight is
//! ≠ 0 (every pixel without a weight): `valid_pixels` counts those, `weight_sum` is Σ weight,
//! `all_pixels` is N·H·W, `all_elements` is N·K·H·W, `{ constant: c }` is c. D = 0 gives loss 0 and zero gradients. Pixels
//! with weight 0 are skipped outright, so NaN there cannot leak into the loss.
//!
//! Backward: `squared_error_bwd` (below, unregistered) computes da = 2·dloss·w·(a − b)/D and db
//! = −da, each only when that input needs a gradient (`b` from a teacher needs none). The
//! `weight` is a constant, as in `cross_entropy`: one that depends on trainable state is an
//! error, to be made explicit with `detach`. Its kernels' CUDA twins exist (kernels/src/cuda);
//! the engine does not dispatch ops to them yet.

use crate::grad;
use crate::loss::cross_entropy::Denominator;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::loss::{squared_error_bwd, squared_error_fwd};
use serde::Deserialize;

/// The `squared_error` op.
pub struct SquaredError;

/// Params of `squared_error`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// What the weighted sum is divided by; default `all_pixels` (N·H·W), the mean over pixels
    /// of the class-summed squared error.
    #[serde(default = "all_pixels")]
    pub denominator: Denominator,
}

fn all_pixels() -> Denominator {
    Denominator::AllPixels
}

impl Op for SquaredError {
    const NAME: &'static str = "squared_error";
    const SUMMARY: &'static str =
        "consistency loss Σ_pixels w·Σ_k (a_k − b_k)² / D between two probability maps";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "a",
            "f32[N, K, H, W] predictions (e.g. student probabilities)",
        ),
        Port::req(
            "b",
            "f32[N, K, H, W] targets (e.g. detached teacher probabilities)",
        ),
        Port::opt(
            "weight",
            "f32[N, H, W] per-pixel weights (e.g. a validity mask); a constant",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("loss", "f32[] scalar")];
    const EXAMPLE: &'static str = "name: cons_loss\nop: squared_error\n\
        inputs: { a: student_probs.y, b: teacher_probs.y, weight: mixed_mask.y }\n\
        params: { denominator: all_pixels }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Both maps trainable, default denominator (N·H·W), no weight.
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
                ("b", Feed::Trainable(&[2, 3, 5, 7])),
            ],
        },
        // A teacher-like constant target and a per-pixel weight: only da.
        GradCase {
            params: "{ denominator: weight_sum }",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
                ("b", Feed::Constant(&[2, 3, 5, 7])),
                ("weight", Feed::Constant(&[2, 5, 7])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let a_spec = TensorSpec::nchw(a);
        let b = io::spec(Self::INPUTS, inputs, 1)?;
        if *b != a_spec {
            return Err(format!("`b` must match `a` ({a_spec}), got {b}"));
        }
        let pixels = [a.n, a.h, a.w];
        if let Some(w) = inputs.get(2).copied().flatten() {
            if w.dtype != DType::F32 || w.shape != pixels {
                return Err(format!(
                    "`weight` must be {} (N, H, W of `a`), got {w}",
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
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
        let weight = io::f32_opt(Self::INPUTS, inputs, 2)?;
        let value = squared_error_fwd(a, b, weight, shape, p.denominator.into())?;
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
        let a = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let weight = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let weight = weight.as_ref().map(|w| w as &dyn cuda::DeviceBuf<f32>);
        let mut loss = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let den = p.denominator.into();
        Ok(cuda::loss::squared_error_fwd(
            cx.dev, &a, &b, weight, shape, den, &mut loss,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `squared_error`: one `squared_error_bwd` node for whichever of da, db is needed;
/// a `weight` that would need a gradient is refused (see the file header).
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    grad::constant_input(
        g,
        SquaredError::INPUTS,
        2,
        SquaredError::NAME,
        "the per-pixel weight",
    )?;
    let (want_a, want_b) = (g.needs_grad(0), g.needs_grad(1));
    if !(want_a || want_b) {
        return Ok(());
    }
    let a = grad::input(g, SquaredError::INPUTS, 0)?;
    let b = grad::input(g, SquaredError::INPUTS, 1)?;
    let dloss = grad::grad_output(g, SquaredError::OUTPUTS, 0)?;
    let params = BwdParams {
        denominator: p.denominator,
        want_a,
        want_b,
    };
    let inputs = vec![Some(a), Some(b), g.input(2), Some(dloss)];
    let [da, db] = grad::outputs(g.emit::<SquaredErrorBwd>(params, inputs)?)?;
    if want_a {
        g.set_grad(0, da);
    }
    if want_b {
        g.set_grad(1, db);
    }
    Ok(())
}

/// Backward of `squared_error` (emitted by its VJP, not registered): da = 2·dloss·w·(a − b)/D,
/// db = −da.
struct SquaredErrorBwd;

/// Params of `squared_error_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward's denominator.
    denominator: Denominator,
    /// Produce da (else an empty output).
    want_a: bool,
    /// Produce db (else an empty output).
    want_b: bool,
}

impl Op for SquaredErrorBwd {
    const NAME: &'static str = "squared_error_bwd";
    const SUMMARY: &'static str = "gradients of squared_error: da = 2·dloss·w·(a − b)/D, db = −da";
    const INPUTS: &'static [Port] = &[
        Port::req("a", "f32[N, K, H, W]: squared_error's `a`"),
        Port::req("b", "f32[N, K, H, W]: its `b`"),
        Port::opt(
            "weight",
            "f32[N, H, W]: its per-pixel weight, if it had one",
        ),
        Port::req(
            "dloss",
            "f32[]: the gradient of its `loss`, read at run time",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("da", "f32[N, K, H, W], or f32[0] when not wanted"),
        Port::req("db", "f32[N, K, H, W], or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        // The forward's checks on a, b and weight.
        let forward = Params {
            denominator: p.denominator,
        };
        SquaredError::infer(&forward, &inputs[..inputs.len().min(3)])?;
        io::scalar_spec(Self::INPUTS, inputs, 3)?;
        let a = TensorSpec::nchw(io::nchw_f32(Self::INPUTS, inputs, 0)?);
        let part = |wanted: bool| {
            if wanted {
                a.clone()
            } else {
                TensorSpec::f32(&[0])
            }
        };
        Ok(vec![part(p.want_a), part(p.want_b)])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
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
        let n = outputs.len();
        let [da, db] = outputs else {
            return Err(OpError::Output {
                port: "da",
                problem: format!("expected 2 outputs, got {n}"),
            });
        };
        let one = std::slice::from_mut;
        let da = match p.want_a {
            true => Some(io::f32_out(Self::OUTPUTS, one(da), 0)?),
            false => None,
        };
        let db = match p.want_b {
            true => Some(io::f32_out(&Self::OUTPUTS[1..], one(db), 0)?),
            false => None,
        };
        let den = p.denominator.into();
        Ok(squared_error_bwd(a, b, weight, shape, den, dloss, da, db)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let a = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let weight = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let weight = weight.as_ref().map(|w| w as &dyn cuda::DeviceBuf<f32>);
        let dloss = dev_io::f32(Self::INPUTS, inputs, 3)?;
        let out = |want: bool, k: usize| match want {
            true => dev_io::f32_out(Self::OUTPUTS, outputs, k).map(Some),
            false => Ok(None),
        };
        let (mut da, mut db) = (out(p.want_a, 0)?, out(p.want_b, 1)?);
        let (da, db) = (dev_io::opt_out(&mut da), dev_io::opt_out(&mut db));
        let den = p.denominator.into();
        Ok(cuda::loss::squared_error_bwd(
            cx.dev, &a, &b, weight, shape, den, &dloss, da, db,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, SquaredErrorBwd};
    use crate::loss::cross_entropy::Denominator;
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    // [N=1, K=2, H=1, W=2], class-major. a: pixel 0 (1/4, 3/4), pixel 1 (1, 0); b: pixel 0
    // (1/2, 1/2), pixel 1 (0, 1). Per pixel Σ_k (a − b)²: 1/16 + 1/16 = 0.125 and 1 + 1 = 2.
    fn a() -> Tensor {
        f32s(&[1, 2, 1, 2], &[0.25, 1.0, 0.75, 0.0])
    }
    fn b() -> Tensor {
        f32s(&[1, 2, 1, 2], &[0.5, 0.0, 0.5, 1.0])
    }

    fn loss(params: &str, weight: Option<&[f32]>) -> f32 {
        let node = format!("name: l\nop: squared_error\nparams: {params}\n");
        let out = run(
            &node,
            &[Some(a()), Some(b()), weight.map(|w| f32s(&[1, 1, 2], w))],
        );
        assert_eq!(out[0].spec(), &TensorSpec::scalar());
        out[0].f32().unwrap()[0]
    }

    #[test]
    fn hand_computed_denominators() {
        // Default all_pixels: (0.125 + 2) / 2.
        assert_eq!(loss("{}", None), 1.0625);
        // Weight (1, 0.5): Σ = 0.125 + 1 = 1.125; all 2 pixels valid, weight sum 1.5.
        let w = Some(&[1.0f32, 0.5][..]);
        assert_eq!(loss("{}", w), 0.5625);
        assert_eq!(loss("{ denominator: valid_pixels }", w), 0.5625);
        assert_eq!(loss("{ denominator: weight_sum }", w), 0.75);
        assert_eq!(loss("{ denominator: { constant: 4 } }", w), 0.28125);
        // all_elements: N·K·H·W = 4, whatever the weights.
        assert_eq!(loss("{ denominator: all_elements }", None), 0.53125);
        assert_eq!(loss("{ denominator: all_elements }", w), 0.28125);
        // Weight (0, 0.5): a NaN at the masked pixel is skipped; valid_pixels counts one.
        let node = "name: l\nop: squared_error\nparams: { denominator: valid_pixels }\n";
        let nan_a = f32s(&[1, 2, 1, 2], &[f32::NAN, 1.0, 0.75, 0.0]);
        let out = run(
            node,
            &[Some(nan_a), Some(b()), Some(f32s(&[1, 1, 2], &[0.0, 0.5]))],
        );
        assert_eq!(out[0].f32(), Some(&[1.0][..]));
    }

    /// Runs `squared_error_bwd` directly (it is not registered, so not through YAML).
    fn bwd(want_a: bool, want_b: bool, weight: &[f32], dloss: f32) -> [Vec<f32>; 2] {
        let p = BwdParams {
            denominator: Denominator::AllPixels,
            want_a,
            want_b,
        };
        let inputs = [
            Some(a()),
            Some(b()),
            Some(f32s(&[1, 1, 2], weight)),
            Some(f32s(&[], &[dloss])),
        ];
        let specs: Vec<Option<&TensorSpec>> = inputs
            .iter()
            .map(|t| t.as_ref().map(Tensor::spec))
            .collect();
        let mut out: Vec<Tensor> = SquaredErrorBwd::infer(&p, &specs)
            .unwrap()
            .iter()
            .map(Tensor::zeros)
            .collect();
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        SquaredErrorBwd::cpu(&p, &ExecCx::default(), &refs, &mut out).unwrap();
        [
            out[0].f32().unwrap().to_vec(),
            out[1].f32().unwrap().to_vec(),
        ]
    }

    #[test]
    fn backward_hand_computed() {
        // da = 2·dloss·w·(a − b)/D with dloss = 3, D = 2, w = (1, 0.5):
        // pixel 0: 3·(−1/4, 1/4) per class, pixel 1: 1.5·(1, −1). Class-major layout.
        let da = vec![-0.75, 1.5, 0.75, -1.5];
        let db: Vec<f32> = da.iter().map(|v| -v).collect();
        assert_eq!(bwd(true, true, &[1.0, 0.5], 3.0), [da.clone(), db.clone()]);
        assert_eq!(bwd(true, false, &[1.0, 0.5], 3.0), [da, vec![]]);
        assert_eq!(bwd(false, true, &[1.0, 0.5], 3.0), [vec![], db]);
    }

    #[test]
    fn infer_checks_b_and_weight_against_a() {
        let node = "name: l\nop: squared_error\n";
        let a = Some(TensorSpec::f32(&[2, 4, 8, 8]));
        let e = infer_err(
            node,
            &[a.clone(), Some(TensorSpec::f32(&[2, 4, 8, 4])), None],
        );
        assert_eq!(
            e,
            "`b` must match `a` (f32[2, 4, 8, 8]), got f32[2, 4, 8, 4]"
        );
        let e = infer_err(
            node,
            &[a.clone(), a.clone(), Some(TensorSpec::i32(&[2, 8, 8]))],
        );
        assert_eq!(
            e,
            "`weight` must be f32[2, 8, 8] (N, H, W of `a`), got i32[2, 8, 8]"
        );
        let e = infer_err(node, &[Some(TensorSpec::f32(&[4, 8, 8])), None, None]);
        assert_eq!(e, "`a` must be f32[N, C, H, W], got f32[4, 8, 8]");
    }

    #[test]
    fn bad_denominators_are_rejected_where_written() {
        let e = try_configure(
            "name: l\nop: squared_error\nparams:\n  denominator: { constant: -1.0 }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("finite and >= 0"), "{e}");
        let e = try_configure("name: l\nop: squared_error\nparams: { denominator: mean }\n")
            .unwrap_err();
        assert!(e.message.contains("unknown variant `mean`"), "{e}");
    }
}
