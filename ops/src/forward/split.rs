//! `split`: the inverse of `concat`, x cut in two along param `axis` (`channels`, the default,
//! or `batch`): `head = x[:, :k]`, `tail = x[:, k:]` along channels, `head = x[:k]`,
//! `tail = x[k:]` along the batch. The head's size k comes from exactly one of param `at` or
//! the optional input `like`, whose extent along the axis (its shape[1] for channels, shape[0]
//! for the batch) is k; `like`'s values are never read.
//!
//! Why each axis: GCT's IBNorm (PixelSSL `ssl_gct.py`, `IBNorm.forward`) normalises its first
//! ⌊C/2 + 0.5⌋ channels with batch norm and the rest with instance norm; the `flaw_detector`
//! architecture splits with `at`. GCT (`_task_model_iter`) computes the task loss on the labeled
//! part of a joint prediction (`pred[:lbs]`, after `concat` with `axis: batch`) and the
//! detector's target on it; `like: batch.image` lends lbs without writing a number into the
//! graph, so one file runs at every batch size.
//!
//! Shapes: `x` f32[N, C, H, W], k ≤ the extent of x along the axis → channels: `head`
//! f32[N, k, H, W], `tail` f32[N, C − k, H, W]; batch: `head` f32[k, C, H, W], `tail`
//! f32[N − k, C, H, W].
//!
//! Backward: one `split_bwd` node (below, unregistered) carrying the axis, from whichever of
//! dhead, dtail reached the node, zeros for the other part (`slice_channels_bwd` /
//! `slice_batch_bwd` for one, `concat_channels_fwd` / `concat_batch_fwd` for both). `like` gets
//! no gradient: only its shape is used. Not here: splits into more than two parts, other
//! dtypes, the H and W axes.

use crate::forward::concat::Axis;
use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `split` op.
pub struct Split;

/// Params of `split`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The axis to cut along; default `channels`.
    #[serde(default)]
    pub axis: Axis,
    /// The head's size along the axis (head = 0..at, tail = the rest). Exactly one of `at` and
    /// the input `like` gives it.
    #[serde(default)]
    pub at: Option<usize>,
}

/// k, the head's size along the axis, from `at` or `like` (exactly one), checked against `x`.
fn head_len(p: &Params, x: Nchw, inputs: &[Option<&TensorSpec>]) -> Result<usize, String> {
    let ax = p.axis;
    let like = inputs.get(1).copied().flatten();
    match (p.at, like) {
        (Some(at), None) => {
            if at > ax.len(x) {
                return Err(format!(
                    "`x` must have at least at = {at} {}, got {}",
                    ax.unit(),
                    TensorSpec::nchw(x)
                ));
            }
            Ok(at)
        }
        (None, Some(like)) => {
            let k = like.shape.get(ax.dim()).copied().ok_or_else(|| {
                let what = match ax {
                    Axis::Channels => "a channel dimension (its shape[1])",
                    Axis::Batch => "a batch dimension",
                };
                format!("`like` must have {what}, got {like}")
            })?;
            if k > ax.len(x) {
                return Err(format!(
                    "`like` has {k} {} but `x` only {} ({})",
                    ax.unit(),
                    ax.len(x),
                    TensorSpec::nchw(x)
                ));
            }
            Ok(k)
        }
        (Some(at), Some(like)) => Err(format!(
            "the head's size must come from param `at` or input `like`, not both (at = {at}, \
             like {like})"
        )),
        (None, None) => {
            Err("the head's size must come from param `at` or input `like`; neither is set".into())
        }
    }
}

impl Op for Split {
    const NAME: &'static str = "split";
    const SUMMARY: &'static str = "splits in two along channels (default) or the batch \
                                   (`axis: batch`): the first `at` (or as many as `like` has) \
                                   and the rest";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W]"),
        Port::opt(
            "like",
            "any tensor whose extent along the axis (shape[1] for channels, shape[0] for the \
             batch) is the head's size k (values unread); exactly one of `like` and param `at`",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "head",
            "f32[N, k, H, W] (channels) or f32[k, C, H, W] (batch): x's first k",
        ),
        Port::req(
            "tail",
            "f32[N, C − k, H, W] or f32[N − k, C, H, W]: the rest",
        ),
    ];
    const EXAMPLE: &'static str = "name: logits_l\nop: split\n\
                                   inputs: { x: fwd_l.logits, like: batch.image }\n\
                                   params: { axis: batch }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        GradCase {
            params: "{ at: 1 }",
            feeds: &[("x", Feed::Trainable(&[2, 3, 4, 5]))],
        },
        GradCase {
            params: "{ axis: batch }",
            feeds: &[
                ("x", Feed::Trainable(&[3, 2, 3, 5])),
                ("like", Feed::Constant(&[2, 1])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let k = head_len(p, x, inputs)?;
        let ax = p.axis;
        Ok(vec![
            TensorSpec::nchw(ax.with_len(x, k)),
            TensorSpec::nchw(ax.with_len(x, ax.len(x) - k)),
        ])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let ax = p.axis;
        // k as inferred (from `at` or `like`): the head's extent along the axis.
        let k = outputs
            .first()
            .and_then(|t| t.spec().shape.get(ax.dim()).copied())
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
        ax.slice_fwd(x, s, 0, k, io::f32_out(Self::OUTPUTS, one(head), 0)?)?;
        ax.slice_fwd(
            x,
            s,
            k,
            ax.len(s),
            io::f32_out(&Self::OUTPUTS[1..], one(tail), 0)?,
        )?;
        Ok(())
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
        let ax = p.axis;
        let k = (outputs.first())
            .and_then(|t| t.spec.shape.get(ax.dim()).copied())
            .ok_or(OpError::Output {
                port: "head",
                problem: "missing".into(),
            })?;
        let mut head = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let mut tail = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
        ax.cuda_slice_fwd(cx.dev, &x, s, 0, k, &mut head)?;
        ax.cuda_slice_fwd(cx.dev, &x, s, k, ax.len(s), &mut tail)?;
        Ok(())
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `split`: dx from the parts' gradients, zeros where none arrived.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let (dhead, dtail) = (g.grad_output(0), g.grad_output(1));
    if dhead.is_none() && dtail.is_none() {
        return Ok(());
    }
    let len = |k: usize| {
        g.spec(&g.output(k))
            .and_then(TensorSpec::as_nchw)
            .map(|s| p.axis.len(s))
            .ok_or_else(|| format!("output {k} has no NCHW spec"))
    };
    let params = BwdParams {
        axis: p.axis,
        head: len(0)?,
        tail: len(1)?,
    };
    let [dx] = grad::outputs(g.emit::<SplitBwd>(params, vec![dhead, dtail])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `split` (emitted by its VJP, not registered).
struct SplitBwd;

/// Params of `split_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward's axis.
    axis: Axis,
    /// k, the head's extent along the axis.
    head: usize,
    /// The tail's extent along the axis.
    tail: usize,
}

impl SplitBwd {
    /// dx's shape from whichever gradient is connected.
    fn dx_shape(p: &BwdParams, dhead: Option<Nchw>, dtail: Option<Nchw>) -> Option<Nchw> {
        dhead.or(dtail).map(|s| p.axis.with_len(s, p.head + p.tail))
    }
}

impl Op for SplitBwd {
    const NAME: &'static str = "split_bwd";
    const SUMMARY: &'static str = "gradient of split: the parts' gradients joined";
    const INPUTS: &'static [Port] = &[
        Port::opt(
            "dhead",
            "`head`'s shape: the gradient of `head` (zeros if absent)",
        ),
        Port::opt(
            "dtail",
            "`tail`'s shape: the gradient of `tail` (zeros if absent)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

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
        let ax = p.axis;
        match (dh, dt) {
            (Some(dh), Some(dt)) => ax.concat_fwd(
                &[(dh, ax.with_len(s, p.head)), (dt, ax.with_len(s, p.tail))],
                dx,
                s,
            )?,
            (Some(dh), None) => ax.slice_bwd(dh, s, 0, p.head, dx)?,
            (None, Some(dt)) => ax.slice_bwd(dt, s, p.head, ax.len(s), dx)?,
            (None, None) => dx.fill(0.0),
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
        let dh = dev_io::f32_opt(Self::INPUTS, inputs, 0)?;
        let dt = dev_io::f32_opt(Self::INPUTS, inputs, 1)?;
        let shape_of = |i: usize| {
            inputs
                .get(i)
                .copied()
                .flatten()
                .and_then(|t| t.spec.as_nchw())
        };
        let s = Self::dx_shape(p, shape_of(0), shape_of(1)).ok_or(OpError::Input {
            port: "dhead",
            problem: "neither gradient is connected".into(),
        })?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let (ax, dev) = (p.axis, cx.dev);
        match (dh, dt) {
            (Some(dh), Some(dt)) => {
                let parts: [(&dyn cuda::DeviceBuf<f32>, Nchw); 2] =
                    [(&dh, ax.with_len(s, p.head)), (&dt, ax.with_len(s, p.tail))];
                ax.cuda_concat_fwd(dev, &parts, &mut dx, s)?
            }
            (Some(dh), None) => ax.cuda_slice_bwd(dev, &dh, s, 0, p.head, &mut dx)?,
            (None, Some(dt)) => ax.cuda_slice_bwd(dev, &dt, s, p.head, ax.len(s), &mut dx)?,
            (None, None) => dev.zero::<f32>(&mut dx)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Axis, BwdParams, SplitBwd};
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const BATCH: &str = "name: s\nop: split\nparams: { axis: batch }\n";

    #[test]
    fn hand_computed_along_channels() {
        // One image, three channels of 1×2; at = 1 → head = channel 0, tail = channels 1, 2.
        let x = f32s(&[1, 3, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let y = run("name: s\nop: split\nparams: { at: 1 }\n", &[Some(x)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 1, 2]));
        assert_eq!(y[0].f32(), Some(&[1.0, 2.0][..]));
        assert_eq!(y[1].f32(), Some(&[3.0, 4.0, 5.0, 6.0][..]));
    }

    #[test]
    fn hand_computed_along_the_batch() {
        // Three images of one channel, H·W = 2; `like` has 2 → head = images 0, 1; tail = 2.
        let x = f32s(&[3, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let like = f32s(&[2, 3], &[0.0; 6]);
        let y = run(BATCH, &[Some(x), Some(like)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[2, 1, 1, 2]));
        assert_eq!(y[0].f32(), Some(&[1.0, 2.0, 3.0, 4.0][..]));
        assert_eq!(y[1].f32(), Some(&[5.0, 6.0][..]));
    }

    #[test]
    fn at_and_like_give_the_same_split_along_either_axis() {
        // N = 2, C = 3, H·W = 1; k = 1 along channels from `at` or from like's shape[1], and
        // along the batch from `at` or from like's shape[0].
        let x = f32s(&[2, 3, 1, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let by_at = run(
            "name: s\nop: split\nparams: { at: 1 }\n",
            &[Some(x.clone())],
        );
        let like = f32s(&[4, 1], &[0.0; 4]);
        let by_like = run("name: s\nop: split\n", &[Some(x.clone()), Some(like)]);
        assert_eq!(by_at, by_like);
        assert_eq!(by_at[0].f32(), Some(&[1.0, 4.0][..]));
        assert_eq!(by_at[1].f32(), Some(&[2.0, 3.0, 5.0, 6.0][..]));
        let by_at = run(
            "name: s\nop: split\nparams: { axis: batch, at: 1 }\n",
            &[Some(x.clone())],
        );
        let like = f32s(&[1, 7], &[0.0; 7]);
        let by_like = run(BATCH, &[Some(x), Some(like)]);
        assert_eq!(by_at, by_like);
        assert_eq!(by_at[0].f32(), Some(&[1.0, 2.0, 3.0][..]));
        assert_eq!(by_at[1].f32(), Some(&[4.0, 5.0, 6.0][..]));
    }

    #[test]
    fn infer_rejects_at_beyond_the_channels() {
        let e = infer_err(
            "name: s\nop: split\nparams: { at: 4 }\n",
            &[Some(TensorSpec::f32(&[2, 3, 4, 4]))],
        );
        assert_eq!(
            e,
            "`x` must have at least at = 4 channels, got f32[2, 3, 4, 4]"
        );
    }

    #[test]
    fn infer_rejects_a_like_larger_than_x() {
        let e = infer_err(
            BATCH,
            &[
                Some(TensorSpec::f32(&[2, 3, 4, 4])),
                Some(TensorSpec::i32(&[3, 4, 4])),
            ],
        );
        assert_eq!(e, "`like` has 3 images but `x` only 2 (f32[2, 3, 4, 4])");
        let e = infer_err(
            "name: s\nop: split\n",
            &[
                Some(TensorSpec::f32(&[2, 3, 4, 4])),
                Some(TensorSpec::f32(&[2, 4])),
            ],
        );
        assert_eq!(e, "`like` has 4 channels but `x` only 3 (f32[2, 3, 4, 4])");
        let e = infer_err(
            "name: s\nop: split\n",
            &[
                Some(TensorSpec::f32(&[2, 3, 4, 4])),
                Some(TensorSpec::f32(&[2])),
            ],
        );
        assert_eq!(
            e,
            "`like` must have a channel dimension (its shape[1]), got f32[2]"
        );
    }

    #[test]
    fn infer_wants_exactly_one_of_at_and_like() {
        let x = TensorSpec::f32(&[2, 3, 4, 4]);
        let e = infer_err(
            "name: s\nop: split\nparams: { at: 1 }\n",
            &[Some(x.clone()), Some(TensorSpec::f32(&[2, 1]))],
        );
        assert_eq!(
            e,
            "the head's size must come from param `at` or input `like`, not both (at = 1, like \
             f32[2, 1])"
        );
        let e = infer_err(BATCH, &[Some(x), None]);
        assert_eq!(
            e,
            "the head's size must come from param `at` or input `like`; neither is set"
        );
    }

    /// split_bwd's dx from (dhead, dtail), its outputs poisoned first: it must write them all.
    fn go(p: &BwdParams, dh: Option<&Tensor>, dt: Option<&Tensor>) -> Tensor {
        let specs = SplitBwd::infer(p, &[dh.map(Tensor::spec), dt.map(Tensor::spec)]).unwrap();
        let mut outs: Vec<Tensor> = specs
            .iter()
            .map(|s| Tensor::from_f32(&s.shape, vec![f32::NAN; s.len()]).unwrap())
            .collect();
        SplitBwd::cpu(p, &ExecCx::default(), &[dh, dt], &mut outs).unwrap();
        outs.remove(0)
    }

    #[test]
    fn backward_fills_zeros_where_no_gradient_arrived_along_channels() {
        // N = 2, C = 2 (at = 1), H·W = 1.
        let dh = f32s(&[2, 1, 1, 1], &[1.0, 2.0]);
        let dt = f32s(&[2, 1, 1, 1], &[3.0, 4.0]);
        let p = BwdParams {
            axis: Axis::Channels,
            head: 1,
            tail: 1,
        };
        assert_eq!(
            go(&p, Some(&dh), Some(&dt)).f32(),
            Some(&[1.0, 3.0, 2.0, 4.0][..])
        );
        assert_eq!(
            go(&p, Some(&dh), None).f32(),
            Some(&[1.0, 0.0, 2.0, 0.0][..])
        );
        assert_eq!(
            go(&p, None, Some(&dt)).f32(),
            Some(&[0.0, 3.0, 0.0, 4.0][..])
        );
    }

    #[test]
    fn backward_fills_zeros_where_no_gradient_arrived_along_the_batch() {
        let dh = f32s(&[1, 1, 1, 2], &[1.0, 2.0]);
        let dt = f32s(&[2, 1, 1, 2], &[3.0, 4.0, 5.0, 6.0]);
        let p = BwdParams {
            axis: Axis::Batch,
            head: 1,
            tail: 2,
        };
        let both = go(&p, Some(&dh), Some(&dt));
        assert_eq!(both.f32(), Some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
        let head = go(&p, Some(&dh), None);
        assert_eq!(head.f32(), Some(&[1.0, 2.0, 0.0, 0.0, 0.0, 0.0][..]));
        let tail = go(&p, None, Some(&dt));
        assert_eq!(tail.f32(), Some(&[0.0, 0.0, 3.0, 4.0, 5.0, 6.0][..]));
    }
}
