//! `split_batch`: the inverse of `concat_batch`, `head = x[:Na]`, `tail = x[Na:]`, where Na is
//! the batch size of `like`. GCT (PixelSSL `ssl_gct.py`, `_task_model_iter`) computes the task
//! loss on the labeled part of a joint prediction (`pred[:lbs]`) and the detector's target on it;
//! `like: batch.image` lends lbs without writing a number into the graph, so one file runs at
//! every batch size.
//!
//! Shapes: `x` f32[N, C, H, W], `like` any tensor whose first dimension Na ≤ N (its values are
//! never read) → `head` f32[Na, C, H, W], `tail` f32[N − Na, C, H, W].
//!
//! Backward: one `split_batch_bwd` node (below, unregistered) from whichever of dhead, dtail
//! reached the node, zeros for the other part (`slice_batch_bwd` for one, `concat_batch_fwd` for
//! both). `like` gets no gradient: only its shape is used. Not here: splits into more than two
//! parts, other dtypes.

use crate::grad;
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::elementwise::{concat_batch_fwd, slice_batch_bwd, slice_batch_fwd};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `split_batch` op (no params).
pub struct SplitBatch;

/// Na: the first dimension of `like`.
fn head_len(inputs: &[Option<&TensorSpec>]) -> Result<usize, String> {
    let like = io::spec(SplitBatch::INPUTS, inputs, 1)?;
    like.shape
        .first()
        .copied()
        .ok_or_else(|| format!("`like` must have a batch dimension, got {like}"))
}

impl Op for SplitBatch {
    const NAME: &'static str = "split_batch";
    const SUMMARY: &'static str =
        "splits a batch in two: the first images (as many as `like` has) and the rest";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W]"),
        Port::req(
            "like",
            "any tensor whose first dimension Na ≤ N is the head's batch size (values unread)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("head", "f32[Na, C, H, W]: x's first Na images"),
        Port::req("tail", "f32[N − Na, C, H, W]: the others"),
    ];
    const EXAMPLE: &'static str =
        "name: fl_lab\nop: split_batch\ninputs: { x: fl.logits, like: batch.image }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("x", Feed::Trainable(&[3, 2, 3, 5])),
            ("like", Feed::Constant(&[2, 1])),
        ],
    }];
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let na = head_len(inputs)?;
        if na > x.n {
            return Err(format!(
                "`like` has {na} images but `x` only {} ({})",
                x.n,
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![
            TensorSpec::nchw(Nchw { n: na, ..x }),
            TensorSpec::nchw(Nchw { n: x.n - na, ..x }),
        ])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let na = outputs
            .first()
            .and_then(|t| t.spec().shape.first().copied())
            .ok_or(OpError::Output {
                port: "head",
                problem: "missing".into(),
            })?;
        let n = outputs.len();
        let [head, tail] = outputs else {
            return Err(OpError::Output {
                port: "head",
                problem: format!("expected 2 outputs, got {n}"),
            });
        };
        let one = std::slice::from_mut;
        slice_batch_fwd(x, s, 0, na, io::f32_out(Self::OUTPUTS, one(head), 0)?)?;
        slice_batch_fwd(
            x,
            s,
            na,
            s.n,
            io::f32_out(&Self::OUTPUTS[1..], one(tail), 0)?,
        )?;
        Ok(())
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `split_batch`: dx from the parts' gradients, zeros where none arrived.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let (dhead, dtail) = (g.grad_output(0), g.grad_output(1));
    if dhead.is_none() && dtail.is_none() {
        return Ok(());
    }
    let spec = |k: usize| {
        g.spec(&g.output(k))
            .and_then(TensorSpec::as_nchw)
            .ok_or_else(|| format!("output {k} has no NCHW spec"))
    };
    let params = BwdParams {
        head: spec(0)?.n,
        tail: spec(1)?.n,
    };
    let [dx] = grad::outputs(g.emit::<SplitBatchBwd>(params, vec![dhead, dtail])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `split_batch` (emitted by its VJP, not registered).
struct SplitBatchBwd;

/// Params of `split_batch_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// Na, the head's images.
    head: usize,
    /// N − Na, the tail's images.
    tail: usize,
}

impl SplitBatchBwd {
    /// dx's shape from whichever gradient is connected.
    fn dx_shape(p: &BwdParams, dhead: Option<Nchw>, dtail: Option<Nchw>) -> Option<Nchw> {
        dhead.or(dtail).map(|s| Nchw {
            n: p.head + p.tail,
            ..s
        })
    }
}

impl Op for SplitBatchBwd {
    const NAME: &'static str = "split_batch_bwd";
    const SUMMARY: &'static str = "gradient of split_batch: the parts' gradients joined";
    const INPUTS: &'static [Port] = &[
        Port::opt(
            "dhead",
            "f32[Na, C, H, W]: the gradient of `head` (zeros if absent)",
        ),
        Port::opt(
            "dtail",
            "f32[N − Na, C, H, W]: the gradient of `tail` (zeros if absent)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let part = |i: usize| match inputs.get(i).copied().flatten() {
            Some(_) => io::nchw_f32(Self::INPUTS, inputs, i).map(Some),
            None => Ok(None),
        };
        let (dh, dt) = (part(0)?, part(1)?);
        let s = Self::dx_shape(p, dh, dt).ok_or("`dhead` or `dtail` is required")?;
        Ok(vec![TensorSpec::nchw(s)])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let dh = io::f32_opt(Self::INPUTS, inputs, 0)?;
        let dt = io::f32_opt(Self::INPUTS, inputs, 1)?;
        let shape_of = |i: usize| {
            inputs
                .get(i)
                .copied()
                .flatten()
                .and_then(|t| t.spec().as_nchw())
        };
        let s = Self::dx_shape(p, shape_of(0), shape_of(1)).ok_or(OpError::Input {
            port: "dhead",
            problem: "neither gradient is connected".into(),
        })?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        match (dh, dt) {
            (Some(dh), Some(dt)) => concat_batch_fwd(
                &[(dh, Nchw { n: p.head, ..s }), (dt, Nchw { n: p.tail, ..s })],
                dx,
                s,
            )?,
            (Some(dh), None) => slice_batch_bwd(dh, s, 0, p.head, dx)?,
            (None, Some(dt)) => slice_batch_bwd(dt, s, p.head, s.n, dx)?,
            (None, None) => dx.fill(0.0),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, SplitBatchBwd};
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const NODE: &str = "name: s\nop: split_batch\n";

    #[test]
    fn hand_computed() {
        // Three images of one channel, H·W = 2; `like` has 2 → head = images 0, 1; tail = 2.
        let x = f32s(&[3, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let like = f32s(&[2, 3], &[0.0; 6]);
        let y = run(NODE, &[Some(x), Some(like)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[2, 1, 1, 2]));
        assert_eq!(y[0].f32(), Some(&[1.0, 2.0, 3.0, 4.0][..]));
        assert_eq!(y[1].f32(), Some(&[5.0, 6.0][..]));
    }

    #[test]
    fn infer_rejects_a_like_larger_than_x() {
        let e = infer_err(
            NODE,
            &[
                Some(TensorSpec::f32(&[2, 3, 4, 4])),
                Some(TensorSpec::i32(&[3, 4, 4])),
            ],
        );
        assert_eq!(e, "`like` has 3 images but `x` only 2 (f32[2, 3, 4, 4])");
    }

    #[test]
    fn backward_fills_zeros_where_no_gradient_arrived() {
        let dh = f32s(&[1, 1, 1, 2], &[1.0, 2.0]);
        let dt = f32s(&[2, 1, 1, 2], &[3.0, 4.0, 5.0, 6.0]);
        let p = BwdParams { head: 1, tail: 2 };
        let go = |dh: Option<&Tensor>, dt: Option<&Tensor>| {
            let specs =
                SplitBatchBwd::infer(&p, &[dh.map(Tensor::spec), dt.map(Tensor::spec)]).unwrap();
            // Poisoned outputs: the op must write every element.
            let mut outs: Vec<Tensor> = specs
                .iter()
                .map(|s| Tensor::from_f32(&s.shape, vec![f32::NAN; s.len()]).unwrap())
                .collect();
            SplitBatchBwd::cpu(&p, &ExecCx::default(), &[dh, dt], &mut outs).unwrap();
            outs.remove(0)
        };
        let both = go(Some(&dh), Some(&dt));
        assert_eq!(both.f32(), Some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
        let head = go(Some(&dh), None);
        assert_eq!(head.f32(), Some(&[1.0, 2.0, 0.0, 0.0, 0.0, 0.0][..]));
        let tail = go(None, Some(&dt));
        assert_eq!(tail.f32(), Some(&[0.0, 0.0, 3.0, 4.0, 5.0, 6.0][..]));
    }
}
