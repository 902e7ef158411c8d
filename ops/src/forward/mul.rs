//! `mul`: y = a · b element-wise, `torch.mul(a, b)`, in two forms: `b` of the same spec as `a`
//! (a mask times a validity map), or `b` an f32 scalar `f32[]` broadcast over `a` (a loss times
//! the fraction of confident pixels, CutMix-Seg). No other broadcasting.
//!
//! Shapes: `a` f32 of any shape, `b` the spec of `a` or f32[] → `y` the spec of `a`.
//!
//! Backward: `mul_bwd` (below, unregistered) computes da = dy·b (dy scaled by b in the scalar
//! form) and db = dy·a, or Σ dy·a for a scalar `b`, each only when that input needs a gradient;
//! it reads `b` only for da and `a` only for db, so a constant operand's partner is not kept
//! alive for the backward. Its kernels' CUDA twins exist (kernels/src/cuda); the engine does
//! not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{mul_bwd, mul_fwd, scale_fwd};
use flowseg_kernels::reduce::dot_fwd;
use serde::Deserialize;

/// The `mul` op (no params).
pub struct Mul;

impl Op for Mul {
    const NAME: &'static str = "mul";
    const SUMMARY: &'static str =
        "element-wise product y = a · b, `b` of the spec of `a` or an f32[] scalar";
    const INPUTS: &'static [Port] = &[
        Port::req("a", "f32, any shape"),
        Port::req(
            "b",
            "f32, the spec of `a`, or f32[] (a scalar broadcast over `a`)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the spec of `a`")];
    const EXAMPLE: &'static str =
        "name: weighted_loss\nop: mul\ninputs: { a: unsup_loss.loss, b: confident_fraction.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Same-spec operands, both wanted (one mul_bwd pass).
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
                ("b", Feed::Trainable(&[2, 3, 5, 7])),
            ],
        },
        // Only db, fed `a` alone.
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Constant(&[2, 3, 5, 7])),
                ("b", Feed::Trainable(&[2, 3, 5, 7])),
            ],
        },
        // A scalar `b`: da = dy·b, db = Σ dy·a.
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
                ("b", Feed::Trainable(&[])),
            ],
        },
        // A constant scalar `b` (a confident fraction): only da, fed `b` alone.
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
                ("b", Feed::Constant(&[])),
            ],
        },
    ];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let b = io::spec(Self::INPUTS, inputs, 1)?;
        if b != a && *b != TensorSpec::scalar() {
            return Err(format!(
                "`b` must match `a` ({a}) or be a scalar f32[], got {b}"
            ));
        }
        Ok(vec![a.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        // Equal lengths take the element-wise path even for a scalar `b` beside a one-element
        // `a`: the numbers are the same.
        match b {
            [s] if a.len() != 1 => Ok(scale_fwd(a, *s, y)?),
            _ => Ok(mul_fwd(a, b, y)?),
        }
    }

    /// A scalar `b` broadcast over `a` is read back to the host first (the scale launcher
    /// takes it there): one four-byte copy.
    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let a = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let (na, nb) = (
            cuda::DeviceBuf::<f32>::elems(&a),
            cuda::DeviceBuf::<f32>::elems(&b),
        );
        if nb == 1 && na != 1 {
            let mut s = [0f32];
            cx.dev.download_into(&b, &mut s)?;
            return Ok(cuda::elementwise::scale_fwd(cx.dev, &a, s[0], &mut y)?);
        }
        Ok(cuda::elementwise::mul_fwd(cx.dev, &a, &b, &mut y)?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `mul`: one `mul_bwd` node for whichever of da, db is needed, fed only the operand
/// each one reads.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    let (want_a, want_b) = (g.needs_grad(0), g.needs_grad(1));
    if !(want_a || want_b) {
        return Ok(());
    }
    let a = grad::input(g, Mul::INPUTS, 0)?;
    let b = grad::input(g, Mul::INPUTS, 1)?;
    let (a_spec, b_spec) = match (g.spec(&a), g.spec(&b)) {
        (Some(sa), Some(sb)) => (sa, sb),
        _ => return Err("`a` or `b` has no spec".into()),
    };
    let params = BwdParams {
        want_a,
        want_b,
        scalar_b: a_spec != b_spec,
    };
    let dy = grad::grad_output(g, Mul::OUTPUTS, 0)?;
    let inputs = vec![want_b.then_some(a), want_a.then_some(b), Some(dy)];
    let [da, db] = grad::outputs(g.emit::<MulBwd>(params, inputs)?)?;
    if want_a {
        g.set_grad(0, da);
    }
    if want_b {
        g.set_grad(1, db);
    }
    Ok(())
}

/// Backward of `mul` (emitted by its VJP, not registered): da = dy·b, db = dy·a (Σ dy·a for a
/// scalar `b`).
struct MulBwd;

/// Params of `mul_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// Produce da (needs `b`; else an empty output).
    want_a: bool,
    /// Produce db (needs `a`; else an empty output).
    want_b: bool,
    /// The forward's `b` was an f32[] scalar broadcast over an `a` of another spec.
    scalar_b: bool,
}

impl BwdParams {
    /// The spec of the forward's `b`, given that of its `a` (= that of `dy`).
    fn b_spec(&self, a: &TensorSpec) -> TensorSpec {
        if self.scalar_b {
            TensorSpec::scalar()
        } else {
            a.clone()
        }
    }
}

impl Op for MulBwd {
    const NAME: &'static str = "mul_bwd";
    const SUMMARY: &'static str = "gradient of mul: da = dy·b, db = dy·a (Σ dy·a for a scalar b)";
    const INPUTS: &'static [Port] = &[
        Port::opt("a", "f32, the spec of `dy`: mul's `a`, needed for db"),
        Port::opt(
            "b",
            "f32, the spec of `dy` or f32[]: mul's `b`, needed for da",
        ),
        Port::req("dy", "f32: the gradient of mul's `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("da", "f32, the spec of `dy`, or f32[0] when not wanted"),
        Port::req(
            "db",
            "f32, the spec of mul's `b`, or f32[0] when not wanted",
        ),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::f32_spec(Self::INPUTS, inputs, 2)?;
        let b_spec = p.b_spec(dy);
        let check = |i: usize, want: &TensorSpec, needed: bool| -> Result<(), String> {
            match inputs.get(i).copied().flatten() {
                Some(s) if s != want => Err(format!(
                    "`{}` must be {want}, got {s}",
                    Self::INPUTS[i].name
                )),
                None if needed => Err(format!("`{}` is required", Self::INPUTS[i].name)),
                _ => Ok(()),
            }
        };
        check(0, dy, p.want_b)?;
        check(1, &b_spec, p.want_a)?;
        let empty = || TensorSpec::f32(&[0]);
        Ok(vec![
            if p.want_a { dy.clone() } else { empty() },
            if p.want_b { b_spec } else { empty() },
        ])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let dy = io::f32(Self::INPUTS, inputs, 2)?;
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
        let a = || io::f32(Self::INPUTS, inputs, 0);
        let b = || io::f32(Self::INPUTS, inputs, 1);
        match (da, db) {
            // One pass for both when neither is a reduction.
            (Some(da), Some(db)) if !p.scalar_b => mul_bwd(a()?, b()?, dy, da, db)?,
            (da, db) => {
                if let Some(da) = da {
                    match (p.scalar_b, b()?) {
                        (false, b) => mul_fwd(dy, b, da)?,
                        (true, [s]) => scale_fwd(dy, *s, da)?,
                        (true, other) => {
                            return Err(OpError::Input {
                                port: "b",
                                problem: format!("expected a scalar, got {} elements", other.len()),
                            })
                        }
                    }
                }
                if let Some(db) = db {
                    match p.scalar_b {
                        false => mul_fwd(dy, a()?, db)?,
                        true => scalar_grad(dy, a()?, db)?,
                    }
                }
            }
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let dev = cx.dev;
        let dy = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let out = |want: bool, k: usize| match want {
            true => dev_io::f32_out(Self::OUTPUTS, outputs, k).map(Some),
            false => Ok(None),
        };
        let (da, db) = (out(p.want_a, 0)?, out(p.want_b, 1)?);
        let a = || dev_io::f32(Self::INPUTS, inputs, 0);
        let b = || dev_io::f32(Self::INPUTS, inputs, 1);
        match (da, db) {
            (Some(mut da), Some(mut db)) if !p.scalar_b => {
                cuda::elementwise::mul_bwd(dev, &a()?, &b()?, &dy, &mut da, &mut db)?
            }
            (da, db) => {
                if let Some(mut da) = da {
                    if p.scalar_b {
                        let mut s = [0f32];
                        dev.download_into(&b()?, &mut s)?;
                        cuda::elementwise::scale_fwd(dev, &dy, s[0], &mut da)?;
                    } else {
                        cuda::elementwise::mul_fwd(dev, &dy, &b()?, &mut da)?;
                    }
                }
                if let Some(mut db) = db {
                    if p.scalar_b {
                        cuda::reduce::dot_fwd(dev, &dy, &a()?, &mut db)?;
                    } else {
                        cuda::elementwise::mul_fwd(dev, &dy, &a()?, &mut db)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// db = Σ dy·a into the one-element gradient of a scalar `b`.
fn scalar_grad(dy: &[f32], a: &[f32], db: &mut [f32]) -> Result<(), OpError> {
    match db {
        [out] => {
            *out = dot_fwd(dy, a)?;
            Ok(())
        }
        other => Err(OpError::Output {
            port: "db",
            problem: format!("expected a scalar, got {} elements", other.len()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, MulBwd};
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const NODE: &str = "name: m\nop: mul\n";

    /// Runs `mul_bwd` directly (it is not registered, so not through YAML).
    fn bwd(p: BwdParams, a: Option<Tensor>, b: Option<Tensor>, dy: Tensor) -> [Vec<f32>; 2] {
        let inputs = [a, b, Some(dy)];
        let specs: Vec<Option<&TensorSpec>> = inputs
            .iter()
            .map(|t| t.as_ref().map(Tensor::spec))
            .collect();
        let mut out: Vec<Tensor> = MulBwd::infer(&p, &specs)
            .unwrap()
            .iter()
            .map(Tensor::zeros)
            .collect();
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        MulBwd::cpu(&p, &ExecCx::default(), &refs, &mut out).unwrap();
        [
            out[0].f32().unwrap().to_vec(),
            out[1].f32().unwrap().to_vec(),
        ]
    }

    fn params(want_a: bool, want_b: bool, scalar_b: bool) -> BwdParams {
        BwdParams {
            want_a,
            want_b,
            scalar_b,
        }
    }

    #[test]
    fn same_shape_hand_computed() {
        let a = f32s(&[1, 3], &[1.0, -2.0, 0.5]);
        let b = f32s(&[1, 3], &[3.0, 4.0, -8.0]);
        let y = run(NODE, &[Some(a.clone()), Some(b.clone())]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 3]));
        assert_eq!(y[0].f32(), Some(&[3.0, -8.0, -4.0][..]));
        // dy = (1, 2, 3): da = dy·b = (3, 8, −24), db = dy·a = (1, −4, 1.5), alone or together.
        let dy = f32s(&[1, 3], &[1.0, 2.0, 3.0]);
        let (da, db) = (vec![3.0, 8.0, -24.0], vec![1.0, -4.0, 1.5]);
        let both = bwd(
            params(true, true, false),
            Some(a.clone()),
            Some(b.clone()),
            dy.clone(),
        );
        assert_eq!(both, [da.clone(), db.clone()]);
        let only_a = bwd(params(true, false, false), None, Some(b), dy.clone());
        assert_eq!(only_a, [da, vec![]]);
        let only_b = bwd(params(false, true, false), Some(a), None, dy);
        assert_eq!(only_b, [vec![], db]);
    }

    #[test]
    fn scalar_b_hand_computed() {
        let a = f32s(&[2, 2], &[1.0, -2.0, 0.5, 4.0]);
        let b = f32s(&[], &[0.25]);
        let y = run(NODE, &[Some(a.clone()), Some(b.clone())]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[2, 2]));
        assert_eq!(y[0].f32(), Some(&[0.25, -0.5, 0.125, 1.0][..]));
        // dy = (1, 2, 3, 4): da = dy·0.25; db = Σ dy·a = 1 − 4 + 1.5 + 16 = 14.5.
        let dy = f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let [da, db] = bwd(
            params(true, true, true),
            Some(a.clone()),
            Some(b),
            dy.clone(),
        );
        assert_eq!(da, [0.25, 0.5, 0.75, 1.0]);
        assert_eq!(db, [14.5]);
        let [da, db] = bwd(params(false, true, true), Some(a), None, dy);
        assert_eq!((da, db), (vec![], vec![14.5]));
    }

    #[test]
    fn infer_rejects_mismatched_operands() {
        let e = infer_err(
            NODE,
            &[
                Some(TensorSpec::f32(&[2, 3])),
                Some(TensorSpec::f32(&[3, 2])),
            ],
        );
        assert_eq!(
            e,
            "`b` must match `a` (f32[2, 3]) or be a scalar f32[], got f32[3, 2]"
        );
        // A one-element tensor is not the scalar f32[]; an i32 scalar is not f32.
        let a = Some(TensorSpec::f32(&[2, 3]));
        let e = infer_err(NODE, &[a.clone(), Some(TensorSpec::f32(&[1]))]);
        assert!(e.ends_with("got f32[1]"), "{e}");
        let e = infer_err(NODE, &[a.clone(), Some(TensorSpec::i32(&[]))]);
        assert!(e.ends_with("got i32[]"), "{e}");
        // The scalar goes in `b`.
        let e = infer_err(NODE, &[Some(TensorSpec::scalar()), a.clone()]);
        assert!(e.ends_with("got f32[2, 3]"), "{e}");
        let e = infer_err(NODE, &[Some(TensorSpec::i32(&[2, 3])), a]);
        assert_eq!(e, "`a` must be f32, got i32[2, 3]");
    }

    #[test]
    fn backward_infer_needs_the_operand_it_reads() {
        let dy = TensorSpec::f32(&[2, 3]);
        let e = MulBwd::infer(&params(true, false, true), &[None, None, Some(&dy)]).unwrap_err();
        assert_eq!(e, "`b` is required");
        let wrong = TensorSpec::f32(&[2, 3]);
        let e = MulBwd::infer(&params(true, false, true), &[None, Some(&wrong), Some(&dy)])
            .unwrap_err();
        assert_eq!(e, "`b` must be f32[], got f32[2, 3]");
    }
}
