//! `concat_batch`: y = `torch.cat([a, b], dim=0)`, two tensors laid end to end along the batch:
//! y's images 0..Na are `a`'s, Na..Na+Nb are `b`'s. GCT (PixelSSL `ssl_gct.py`, `_train`) runs
//! each task model on the labeled and the unlabeled images as one batch, so batch-norm statistics
//! are those of the joint batch; `split_batch` takes the parts apart again.
//!
//! Shapes: `a` f32[Na, C, H, W], `b` f32[Nb, C, H, W] (the same C, H, W) → `y`
//! f32[Na + Nb, C, H, W].
//!
//! Backward: one `concat_batch_bwd` node (below, unregistered) with two outputs, da and db (the
//! kernel's `concat_batch_bwd`; one `slice_batch_fwd` when only one half is wanted, the other
//! output then empty, f32[0]). Not here: a variadic form, other dtypes (labels are concatenated
//! by no graph yet).

use crate::grad;
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::elementwise::{concat_batch_bwd, concat_batch_fwd, slice_batch_fwd};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `concat_batch` op (no params).
pub struct ConcatBatch;

impl Op for ConcatBatch {
    const NAME: &'static str = "concat_batch";
    const SUMMARY: &'static str = "concatenation of two NCHW tensors along the batch";
    const INPUTS: &'static [Port] = &[
        Port::req("a", "f32[Na, C, H, W]: y's first images"),
        Port::req("b", "f32[Nb, C, H, W]: y's last images (C, H, W as `a`)"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[Na + Nb, C, H, W]")];
    const EXAMPLE: &'static str =
        "name: x\nop: concat_batch\ninputs: { a: batch.image, b: batch.u_image }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Both halves of dy wanted (one concat_batch_bwd pass).
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 4, 5])),
                ("b", Feed::Trainable(&[1, 3, 4, 5])),
            ],
        },
        // Only b's half: a batch slice of dy.
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Constant(&[1, 2, 3, 5])),
                ("b", Feed::Trainable(&[2, 2, 3, 5])),
            ],
        },
    ];
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let b = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        if (a.c, a.h, a.w) != (b.c, b.h, b.w) {
            return Err(format!(
                "`b` must have the C, H, W of `a` ({}), got {}",
                TensorSpec::nchw(a),
                TensorSpec::nchw(b)
            ));
        }
        Ok(vec![TensorSpec::nchw(Nchw { n: a.n + b.n, ..a })])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let (sa, sb) = (
            io::nchw(Self::INPUTS, inputs, 0)?,
            io::nchw(Self::INPUTS, inputs, 1)?,
        );
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(concat_batch_fwd(
            &[(a, sa), (b, sb)],
            y,
            Nchw {
                n: sa.n + sb.n,
                ..sa
            },
        )?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `concat_batch`: one `concat_batch_bwd` node splitting dy at image Na.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    let (want_a, want_b) = (g.needs_grad(0), g.needs_grad(1));
    if !(want_a || want_b) {
        return Ok(());
    }
    let a = grad::input(g, ConcatBatch::INPUTS, 0)?;
    let split = g
        .spec(&a)
        .and_then(TensorSpec::as_nchw)
        .ok_or("`a` has no NCHW spec")?
        .n;
    let dy = grad::grad_output(g, ConcatBatch::OUTPUTS, 0)?;
    let params = BwdParams {
        split,
        want_a,
        want_b,
    };
    let [da, db] = grad::outputs(g.emit::<ConcatBatchBwd>(params, vec![Some(dy)])?)?;
    if want_a {
        g.set_grad(0, da);
    }
    if want_b {
        g.set_grad(1, db);
    }
    Ok(())
}

/// Backward of `concat_batch` (emitted by its VJP, not registered): dy split at image `split`.
struct ConcatBatchBwd;

/// Params of `concat_batch_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// Na, the images of the forward's `a`.
    split: usize,
    /// Produce da (else an empty output).
    want_a: bool,
    /// Produce db (else an empty output).
    want_b: bool,
}

impl Op for ConcatBatchBwd {
    const NAME: &'static str = "concat_batch_bwd";
    const SUMMARY: &'static str = "gradient of concat_batch: dy split back along the batch";
    const INPUTS: &'static [Port] = &[Port::req(
        "dy",
        "f32[Na + Nb, C, H, W]: the gradient of concat_batch's `y`",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req("da", "f32[Na, C, H, W], or f32[0] when not wanted"),
        Port::req("db", "f32[Nb, C, H, W], or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if p.split > dy.n {
            return Err(format!(
                "`dy` must have at least split = {} images, got {}",
                p.split,
                TensorSpec::nchw(dy)
            ));
        }
        let part = |wanted: bool, n: usize| {
            if wanted {
                TensorSpec::nchw(Nchw { n, ..dy })
            } else {
                TensorSpec::f32(&[0])
            }
        };
        Ok(vec![
            part(p.want_a, p.split),
            part(p.want_b, dy.n - p.split),
        ])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 0)?;
        let n = outputs.len();
        let [da, db] = outputs else {
            return Err(OpError::Output {
                port: "da",
                problem: format!("expected 2 outputs, got {n}"),
            });
        };
        let one = std::slice::from_mut;
        let (na, nb) = (p.split, s.n.saturating_sub(p.split));
        match (p.want_a, p.want_b) {
            (true, true) => {
                let da = io::f32_out(Self::OUTPUTS, one(da), 0)?;
                let db = io::f32_out(&Self::OUTPUTS[1..], one(db), 0)?;
                concat_batch_bwd(
                    dy,
                    s,
                    &mut [(da, Nchw { n: na, ..s }), (db, Nchw { n: nb, ..s })],
                )?;
            }
            (true, false) => {
                let da = io::f32_out(Self::OUTPUTS, one(da), 0)?;
                slice_batch_fwd(dy, s, 0, na, da)?;
            }
            (false, true) => {
                let db = io::f32_out(&Self::OUTPUTS[1..], one(db), 0)?;
                slice_batch_fwd(dy, s, na, s.n, db)?;
            }
            (false, false) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, ConcatBatchBwd};
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const NODE: &str = "name: x\nop: concat_batch\n";

    #[test]
    fn hand_computed() {
        // C = 1, H·W = 2: a holds one image, b two; y is a's image then b's.
        let a = f32s(&[1, 1, 1, 2], &[1.0, 2.0]);
        let b = f32s(&[2, 1, 1, 2], &[10.0, 11.0, 20.0, 21.0]);
        let y = run(NODE, &[Some(a), Some(b)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[3, 1, 1, 2]));
        assert_eq!(y[0].f32(), Some(&[1.0, 2.0, 10.0, 11.0, 20.0, 21.0][..]));
    }

    #[test]
    fn infer_rejects_mismatched_c_h_w() {
        let e = infer_err(
            NODE,
            &[
                Some(TensorSpec::f32(&[2, 3, 8, 8])),
                Some(TensorSpec::f32(&[2, 3, 4, 8])),
            ],
        );
        assert_eq!(
            e,
            "`b` must have the C, H, W of `a` (f32[2, 3, 8, 8]), got f32[2, 3, 4, 8]"
        );
    }

    #[test]
    fn backward_splits_dy_and_skips_unwanted_halves() {
        let dy = f32s(&[3, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ins = [Some(&dy)];
        let run = |want_a, want_b| {
            let p = BwdParams {
                split: 1,
                want_a,
                want_b,
            };
            let specs = ConcatBatchBwd::infer(&p, &[Some(dy.spec())]).unwrap();
            let mut outs: Vec<Tensor> = specs.iter().map(Tensor::zeros).collect();
            ConcatBatchBwd::cpu(&p, &ExecCx::default(), &ins, &mut outs).unwrap();
            outs
        };
        let both = run(true, true);
        assert_eq!(both[0].f32(), Some(&[1.0, 2.0][..]));
        assert_eq!(both[1].f32(), Some(&[3.0, 4.0, 5.0, 6.0][..]));
        let b_only = run(false, true);
        assert_eq!(b_only[0].spec(), &TensorSpec::f32(&[0]));
        assert_eq!(b_only[1], both[1]);
        let a_only = run(true, false);
        assert_eq!(a_only[0], both[0]);
        assert_eq!(a_only[1].spec(), &TensorSpec::f32(&[0]));
    }
}
