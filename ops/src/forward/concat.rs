//! `concat`: y = `torch.cat([a, b], dim=1)`, two NCHW tensors joined along channels: y's
//! channels 0..Ca are `a`'s, Ca..Ca+Cb are `b`'s.
//!
//! Shapes: `a` f32[N, Ca, H, W], `b` f32[N, Cb, H, W] (the same N, H, W) → `y`
//! f32[N, Ca + Cb, H, W].
//!
//! Two inputs, not a list: the decoder's skip connection (upsampled ASPP output ‖ reduced
//! low-level features) is a pair, and a wider join (ASPP's branches) is a chain of pairs, whose
//! extra copies are small beside the convolutions around them. Ports are fixed per op, so a
//! variadic concat would need optional ports `c`, `d`, ...; that can come when a graph needs it.
//!
//! Backward: one `concat_bwd` node (below, unregistered) with two outputs, da and db, rather
//! than two channel-slice nodes: the split is one pass over dy (the kernel's
//! `concat_channels_bwd`), one node to plan, and a skip connection needs both halves anyway. An
//! input that needs no gradient gets an empty (f32[0]) output, and the other half is then a
//! plain channel slice. Its kernels' CUDA twins exist (kernels/src/cuda); the engine does not
//! dispatch ops to them yet.

use crate::grad;
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::elementwise::{concat_channels_bwd, concat_channels_fwd, slice_channels_fwd};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `concat` op (no params).
pub struct Concat;

impl Op for Concat {
    const NAME: &'static str = "concat";
    const SUMMARY: &'static str = "concatenation of two NCHW tensors along channels";
    const INPUTS: &'static [Port] = &[
        Port::req("a", "f32[N, Ca, H, W]: y's first channels"),
        Port::req("b", "f32[N, Cb, H, W]: y's last channels (N, H, W as `a`)"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, Ca + Cb, H, W]")];
    const EXAMPLE: &'static str =
        "name: skip\nop: concat\ninputs: { a: upsample.y, b: reduce.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Both halves of dy wanted (one concat_channels_bwd pass).
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
                ("b", Feed::Trainable(&[2, 2, 5, 7])),
            ],
        },
        // Only b's half: a channel slice of dy.
        GradCase {
            params: "{}",
            feeds: &[
                ("a", Feed::Constant(&[2, 1, 5, 7])),
                ("b", Feed::Trainable(&[2, 3, 5, 7])),
            ],
        },
    ];
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let b = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        if (a.n, a.h, a.w) != (b.n, b.h, b.w) {
            return Err(format!(
                "`b` must have the N, H, W of `a` ({}), got {}",
                TensorSpec::nchw(a),
                TensorSpec::nchw(b)
            ));
        }
        Ok(vec![TensorSpec::nchw(Nchw::new(a.n, a.c + b.c, a.h, a.w))])
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
        let ys = Nchw::new(sa.n, sa.c + sb.c, sa.h, sa.w);
        Ok(concat_channels_fwd(&[(a, sa), (b, sb)], y, ys)?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `concat`: one `concat_bwd` node splitting dy at channel Ca.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    let (want_a, want_b) = (g.needs_grad(0), g.needs_grad(1));
    if !(want_a || want_b) {
        return Ok(());
    }
    let a = grad::input(g, Concat::INPUTS, 0)?;
    let split = g
        .spec(&a)
        .and_then(TensorSpec::as_nchw)
        .ok_or("`a` has no NCHW spec")?
        .c;
    let dy = grad::grad_output(g, Concat::OUTPUTS, 0)?;
    let params = BwdParams {
        split,
        want_a,
        want_b,
    };
    let [da, db] = grad::outputs(g.emit::<ConcatBwd>(params, vec![Some(dy)])?)?;
    if want_a {
        g.set_grad(0, da);
    }
    if want_b {
        g.set_grad(1, db);
    }
    Ok(())
}

/// Backward of `concat` (emitted by its VJP, not registered): dy's channels split at `split`.
struct ConcatBwd;

/// Params of `concat_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// Ca, the channels of the forward's `a`.
    split: usize,
    /// Produce da (else an empty output).
    want_a: bool,
    /// Produce db (else an empty output).
    want_b: bool,
}

impl Op for ConcatBwd {
    const NAME: &'static str = "concat_bwd";
    const SUMMARY: &'static str = "gradient of concat: dy split back along channels";
    const INPUTS: &'static [Port] = &[Port::req(
        "dy",
        "f32[N, Ca + Cb, H, W]: the gradient of concat's `y`",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req("da", "f32[N, Ca, H, W], or f32[0] when not wanted"),
        Port::req("db", "f32[N, Cb, H, W], or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if p.split > dy.c {
            return Err(format!(
                "`dy` must have at least split = {} channels, got {}",
                p.split,
                TensorSpec::nchw(dy)
            ));
        }
        let part = |wanted: bool, c: usize| {
            if wanted {
                TensorSpec::nchw(Nchw { c, ..dy })
            } else {
                TensorSpec::f32(&[0])
            }
        };
        Ok(vec![
            part(p.want_a, p.split),
            part(p.want_b, dy.c - p.split),
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
        let (ca, cb) = (p.split, s.c.saturating_sub(p.split));
        match (p.want_a, p.want_b) {
            (true, true) => {
                let da = io::f32_out(Self::OUTPUTS, one(da), 0)?;
                let db = io::f32_out(&Self::OUTPUTS[1..], one(db), 0)?;
                concat_channels_bwd(
                    dy,
                    s,
                    &mut [(da, Nchw { c: ca, ..s }), (db, Nchw { c: cb, ..s })],
                )?;
            }
            (true, false) => {
                let da = io::f32_out(Self::OUTPUTS, one(da), 0)?;
                slice_channels_fwd(dy, s, 0, ca, da)?;
            }
            (false, true) => {
                let db = io::f32_out(&Self::OUTPUTS[1..], one(db), 0)?;
                slice_channels_fwd(dy, s, ca, s.c, db)?;
            }
            (false, false) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, ConcatBwd};
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const NODE: &str = "name: skip\nop: concat\n";

    #[test]
    fn hand_computed() {
        // N = 2, H·W = 2: a has one channel, b two; each image is a's plane then b's planes.
        let a = f32s(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = f32s(
            &[2, 2, 1, 2],
            &[10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0],
        );
        let y = run(NODE, &[Some(a), Some(b)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[2, 3, 1, 2]));
        assert_eq!(
            y[0].f32(),
            Some(&[1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 3.0, 4.0, 20.0, 21.0, 22.0, 23.0][..])
        );
    }

    #[test]
    fn infer_rejects_mismatched_n_h_w() {
        let e = infer_err(
            NODE,
            &[
                Some(TensorSpec::f32(&[2, 3, 8, 8])),
                Some(TensorSpec::f32(&[2, 5, 4, 4])),
            ],
        );
        assert_eq!(
            e,
            "`b` must have the N, H, W of `a` (f32[2, 3, 8, 8]), got f32[2, 5, 4, 4]"
        );
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[2, 3, 8, 8])), None]);
        assert_eq!(e, "`b` is required");
    }

    #[test]
    fn backward_splits_dy_and_skips_unwanted_halves() {
        let dy = f32s(&[1, 3, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ins = [Some(&dy)];
        let run = |want_a, want_b| {
            let p = BwdParams {
                split: 1,
                want_a,
                want_b,
            };
            let specs = ConcatBwd::infer(&p, &[Some(dy.spec())]).unwrap();
            let mut outs: Vec<Tensor> = specs.iter().map(Tensor::zeros).collect();
            ConcatBwd::cpu(&p, &ExecCx::default(), &ins, &mut outs).unwrap();
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
