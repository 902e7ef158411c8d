//! `concat`: y = `torch.cat([a, b], dim)`, two NCHW tensors joined along one axis, param `axis`:
//! `channels` (dim 1, the default) or `batch` (dim 0). Along channels, y's channels 0..Ca are
//! `a`'s and Ca..Ca+Cb are `b`'s; along the batch, y's images 0..Na are `a`'s and Na..Na+Nb are
//! `b`'s. Also holds [`Axis`], shared with `split` (the inverse).
//!
//! Shapes: `axis: channels`: `a` f32[N, Ca, H, W], `b` f32[N, Cb, H, W] (the same N, H, W) →
//! `y` f32[N, Ca + Cb, H, W]. `axis: batch`: `a` f32[Na, C, H, W], `b` f32[Nb, C, H, W] (the
//! same C, H, W) → `y` f32[Na + Nb, C, H, W].
//!
//! Why each axis: along channels, the decoder's skip connection (upsampled ASPP output ‖ reduced
//! low-level features) and GCT's IBNorm rejoining its batch-norm and instance-norm halves (the
//! `flaw_detector` architecture). Along the batch, GCT (PixelSSL `ssl_gct.py`, `_train`) runs
//! each task model on the labeled and the unlabeled images as one batch, so batch-norm statistics
//! are those of the joint batch; `split` with `axis: batch` takes the parts apart again.
//!
//! Two inputs, not a list: a skip connection is a pair, and a wider join (ASPP's branches) is a
//! chain of pairs, whose extra copies are small beside the convolutions around them. Ports are
//! fixed per op, so a variadic concat would need optional ports `c`, `d`, ...; that can come when
//! a graph needs it.
//!
//! Backward: one `concat_bwd` node (below, unregistered) carrying the axis, with two outputs, da
//! and db, rather than two slice nodes: the split is one pass over dy (the kernel's
//! `concat_channels_bwd` / `concat_batch_bwd`), one node to plan, and a skip connection needs
//! both halves anyway. An input that needs no gradient gets an empty (f32[0]) output, and the
//! other half is then a plain slice (`slice_channels_fwd` / `slice_batch_fwd`). Its kernels' CUDA
//! twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet. Not here: other
//! dtypes (labels are concatenated by no graph yet), the H and W axes.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{
    concat_batch_bwd, concat_batch_fwd, concat_channels_bwd, concat_channels_fwd, slice_batch_bwd,
    slice_batch_fwd, slice_channels_bwd, slice_channels_fwd,
};
use flowseg_kernels::{KernelError, Nchw};
use serde::Deserialize;

/// The `concat` op.
pub struct Concat;

/// Params of `concat`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The axis to join along; default `channels`.
    #[serde(default)]
    pub axis: Axis,
}

/// The NCHW axis `concat` joins along and `split` cuts, as written in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// C, `dim=1`.
    #[default]
    Channels,
    /// N, `dim=0`.
    Batch,
}

impl Axis {
    /// `s`'s extent along the axis.
    pub(crate) fn len(self, s: Nchw) -> usize {
        match self {
            Axis::Channels => s.c,
            Axis::Batch => s.n,
        }
    }

    /// The axis's index in an NCHW shape: 1 for channels, 0 for the batch.
    pub(crate) fn dim(self) -> usize {
        match self {
            Axis::Channels => 1,
            Axis::Batch => 0,
        }
    }

    /// `s` with its extent along the axis set to `k`.
    pub(crate) fn with_len(self, s: Nchw, k: usize) -> Nchw {
        match self {
            Axis::Channels => Nchw { c: k, ..s },
            Axis::Batch => Nchw { n: k, ..s },
        }
    }

    /// What one step along the axis is called in messages: "channels" or "images".
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Axis::Channels => "channels",
            Axis::Batch => "images",
        }
    }

    /// The other three extents, named, for messages: "N, H, W" or "C, H, W".
    fn others(self) -> &'static str {
        match self {
            Axis::Channels => "N, H, W",
            Axis::Batch => "C, H, W",
        }
    }

    /// `concat_channels_fwd` or `concat_batch_fwd`.
    pub(crate) fn concat_fwd(
        self,
        inputs: &[(&[f32], Nchw)],
        y: &mut [f32],
        y_shape: Nchw,
    ) -> Result<(), KernelError> {
        match self {
            Axis::Channels => concat_channels_fwd(inputs, y, y_shape),
            Axis::Batch => concat_batch_fwd(inputs, y, y_shape),
        }
    }

    /// `concat_channels_bwd` or `concat_batch_bwd`.
    fn concat_bwd(
        self,
        dy: &[f32],
        y_shape: Nchw,
        outputs: &mut [(&mut [f32], Nchw)],
    ) -> Result<(), KernelError> {
        match self {
            Axis::Channels => concat_channels_bwd(dy, y_shape, outputs),
            Axis::Batch => concat_batch_bwd(dy, y_shape, outputs),
        }
    }

    /// [`Axis::slice_fwd`] on the device.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_slice_fwd(
        self,
        dev: &cuda::Device,
        x: &cuda::RawBuf<f32>,
        shape: Nchw,
        start: usize,
        end: usize,
        y: &mut cuda::RawBuf<f32>,
    ) -> Result<(), cuda::CudaError> {
        match self {
            Axis::Channels => cuda::elementwise::slice_channels_fwd(dev, x, shape, start, end, y),
            Axis::Batch => cuda::elementwise::slice_batch_fwd(dev, x, shape, start, end, y),
        }
    }

    /// [`Axis::slice_bwd`] on the device.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_slice_bwd(
        self,
        dev: &cuda::Device,
        dy: &cuda::RawBuf<f32>,
        shape: Nchw,
        start: usize,
        end: usize,
        dx: &mut cuda::RawBuf<f32>,
    ) -> Result<(), cuda::CudaError> {
        match self {
            Axis::Channels => cuda::elementwise::slice_channels_bwd(dev, dy, shape, start, end, dx),
            Axis::Batch => cuda::elementwise::slice_batch_bwd(dev, dy, shape, start, end, dx),
        }
    }

    /// [`Axis::concat_fwd`] on the device.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_concat_fwd(
        self,
        dev: &cuda::Device,
        inputs: &[(&dyn cuda::DeviceBuf<f32>, Nchw)],
        y: &mut cuda::RawBuf<f32>,
        y_shape: Nchw,
    ) -> Result<(), cuda::CudaError> {
        match self {
            Axis::Channels => cuda::elementwise::concat_channels_fwd(dev, inputs, y, y_shape),
            Axis::Batch => cuda::elementwise::concat_batch_fwd(dev, inputs, y, y_shape),
        }
    }

    /// `slice_channels_fwd` or `slice_batch_fwd`: y = x[start..end] along the axis.
    pub(crate) fn slice_fwd(
        self,
        x: &[f32],
        shape: Nchw,
        start: usize,
        end: usize,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        match self {
            Axis::Channels => slice_channels_fwd(x, shape, start, end, y),
            Axis::Batch => slice_batch_fwd(x, shape, start, end, y),
        }
    }

    /// `slice_channels_bwd` or `slice_batch_bwd`: dx = dy in start..end along the axis, zeros
    /// elsewhere.
    pub(crate) fn slice_bwd(
        self,
        dy: &[f32],
        shape: Nchw,
        start: usize,
        end: usize,
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        match self {
            Axis::Channels => slice_channels_bwd(dy, shape, start, end, dx),
            Axis::Batch => slice_batch_bwd(dy, shape, start, end, dx),
        }
    }
}

impl Op for Concat {
    const NAME: &'static str = "concat";
    const SUMMARY: &'static str =
        "concatenation of two NCHW tensors along channels (default) or the batch (`axis: batch`)";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "a",
            "f32[N, Ca, H, W] (channels) or f32[Na, C, H, W] (batch): y's first part",
        ),
        Port::req(
            "b",
            "f32[N, Cb, H, W] or f32[Nb, C, H, W]: y's last part (the other three extents as `a`)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "y",
        "f32[N, Ca + Cb, H, W] (channels) or f32[Na + Nb, C, H, W] (batch)",
    )];
    const EXAMPLE: &'static str =
        "name: skip\nop: concat\ninputs: { a: upsample.y, b: reduce.y }\n\
         params: { axis: channels }\n";
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
            params: "{ axis: channels }",
            feeds: &[
                ("a", Feed::Constant(&[2, 1, 5, 7])),
                ("b", Feed::Trainable(&[2, 3, 5, 7])),
            ],
        },
        // Both halves along the batch (one concat_batch_bwd pass).
        GradCase {
            params: "{ axis: batch }",
            feeds: &[
                ("a", Feed::Trainable(&[2, 3, 4, 5])),
                ("b", Feed::Trainable(&[1, 3, 4, 5])),
            ],
        },
        // Only b's half: a batch slice of dy.
        GradCase {
            params: "{ axis: batch }",
            feeds: &[
                ("a", Feed::Constant(&[1, 2, 3, 5])),
                ("b", Feed::Trainable(&[2, 2, 3, 5])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let b = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        let ax = p.axis;
        // The other three extents agree when b, resized along the axis to a's, equals a.
        if ax.with_len(b, ax.len(a)) != a {
            return Err(format!(
                "`b` must have the {} of `a` ({}), got {}",
                ax.others(),
                TensorSpec::nchw(a),
                TensorSpec::nchw(b)
            ));
        }
        Ok(vec![TensorSpec::nchw(
            ax.with_len(a, ax.len(a) + ax.len(b)),
        )])
    }

    fn cpu(
        p: &Params,
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
        let ax = p.axis;
        let ys = ax.with_len(sa, ax.len(sa) + ax.len(sb));
        Ok(ax.concat_fwd(&[(a, sa), (b, sb)], y, ys)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let (sa, sb) = (
            dev_io::nchw(Self::INPUTS, inputs, 0)?,
            dev_io::nchw(Self::INPUTS, inputs, 1)?,
        );
        let a = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let ax = p.axis;
        let ys = ax.with_len(sa, ax.len(sa) + ax.len(sb));
        let parts: [(&dyn cuda::DeviceBuf<f32>, Nchw); 2] = [(&a, sa), (&b, sb)];
        match ax {
            Axis::Channels => cuda::elementwise::concat_channels_fwd(cx.dev, &parts, &mut y, ys)?,
            Axis::Batch => cuda::elementwise::concat_batch_fwd(cx.dev, &parts, &mut y, ys)?,
        }
        Ok(())
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `concat`: one `concat_bwd` node splitting dy at `a`'s extent along the axis.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    let (want_a, want_b) = (g.needs_grad(0), g.needs_grad(1));
    if !(want_a || want_b) {
        return Ok(());
    }
    let a = grad::input(g, Concat::INPUTS, 0)?;
    let a = g
        .spec(&a)
        .and_then(TensorSpec::as_nchw)
        .ok_or("`a` has no NCHW spec")?;
    let dy = grad::grad_output(g, Concat::OUTPUTS, 0)?;
    let params = BwdParams {
        axis: p.axis,
        split: p.axis.len(a),
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

/// Backward of `concat` (emitted by its VJP, not registered): dy split at `split` along `axis`.
struct ConcatBwd;

/// Params of `concat_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward's axis.
    axis: Axis,
    /// Ca or Na, the forward `a`'s extent along the axis.
    split: usize,
    /// Produce da (else an empty output).
    want_a: bool,
    /// Produce db (else an empty output).
    want_b: bool,
}

impl Op for ConcatBwd {
    const NAME: &'static str = "concat_bwd";
    const SUMMARY: &'static str = "gradient of concat: dy split back along the forward's axis";
    const INPUTS: &'static [Port] = &[Port::req(
        "dy",
        "f32[N, Ca + Cb, H, W] or f32[Na + Nb, C, H, W]: the gradient of concat's `y`",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req("da", "`a`'s shape, or f32[0] when not wanted"),
        Port::req("db", "`b`'s shape, or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let ax = p.axis;
        if p.split > ax.len(dy) {
            return Err(format!(
                "`dy` must have at least split = {} {}, got {}",
                p.split,
                ax.unit(),
                TensorSpec::nchw(dy)
            ));
        }
        let part = |wanted: bool, k: usize| {
            if wanted {
                TensorSpec::nchw(ax.with_len(dy, k))
            } else {
                TensorSpec::f32(&[0])
            }
        };
        Ok(vec![
            part(p.want_a, p.split),
            part(p.want_b, ax.len(dy) - p.split),
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
        let ax = p.axis;
        let (whole, ka) = (ax.len(s), p.split);
        let kb = whole.saturating_sub(ka);
        match (p.want_a, p.want_b) {
            (true, true) => {
                let da = io::f32_out(Self::OUTPUTS, one(da), 0)?;
                let db = io::f32_out(&Self::OUTPUTS[1..], one(db), 0)?;
                ax.concat_bwd(
                    dy,
                    s,
                    &mut [(da, ax.with_len(s, ka)), (db, ax.with_len(s, kb))],
                )?;
            }
            (true, false) => {
                let da = io::f32_out(Self::OUTPUTS, one(da), 0)?;
                ax.slice_fwd(dy, s, 0, ka, da)?;
            }
            (false, true) => {
                let db = io::f32_out(&Self::OUTPUTS[1..], one(db), 0)?;
                ax.slice_fwd(dy, s, ka, whole, db)?;
            }
            (false, false) => {}
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
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let ax = p.axis;
        let (whole, ka) = (ax.len(s), p.split);
        let kb = whole.saturating_sub(ka);
        let dev = cx.dev;
        let slice = |start: usize, end: usize, y: &mut cuda::RawBuf<f32>| match ax {
            Axis::Channels => cuda::elementwise::slice_channels_fwd(dev, &dy, s, start, end, y),
            Axis::Batch => cuda::elementwise::slice_batch_fwd(dev, &dy, s, start, end, y),
        };
        match (p.want_a, p.want_b) {
            (true, true) => {
                let mut da = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
                let mut db = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
                let mut parts: [(&mut dyn cuda::DeviceBufMut<f32>, Nchw); 2] =
                    [(&mut da, ax.with_len(s, ka)), (&mut db, ax.with_len(s, kb))];
                match ax {
                    Axis::Channels => {
                        cuda::elementwise::concat_channels_bwd(dev, &dy, s, &mut parts)?
                    }
                    Axis::Batch => cuda::elementwise::concat_batch_bwd(dev, &dy, s, &mut parts)?,
                }
            }
            (true, false) => slice(0, ka, &mut dev_io::f32_out(Self::OUTPUTS, outputs, 0)?)?,
            (false, true) => slice(ka, whole, &mut dev_io::f32_out(Self::OUTPUTS, outputs, 1)?)?,
            (false, false) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Axis, BwdParams, ConcatBwd, Params};
    use crate::support::test::{configure, f32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const NODE: &str = "name: skip\nop: concat\n";
    const BATCH: &str = "name: x\nop: concat\nparams: { axis: batch }\n";

    #[test]
    fn hand_computed_along_channels() {
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
    fn hand_computed_along_the_batch() {
        // C = 1, H·W = 2: a holds one image, b two; y is a's image then b's.
        let a = f32s(&[1, 1, 1, 2], &[1.0, 2.0]);
        let b = f32s(&[2, 1, 1, 2], &[10.0, 11.0, 20.0, 21.0]);
        let y = run(BATCH, &[Some(a), Some(b)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[3, 1, 1, 2]));
        assert_eq!(y[0].f32(), Some(&[1.0, 2.0, 10.0, 11.0, 20.0, 21.0][..]));
    }

    #[test]
    fn axis_defaults_to_channels_and_rejects_others() {
        assert_eq!(Params::default().axis, Axis::Channels);
        let specs = [
            TensorSpec::f32(&[2, 1, 3, 3]),
            TensorSpec::f32(&[2, 2, 3, 3]),
        ];
        let specs = [Some(&specs[0]), Some(&specs[1])];
        let explicit = "name: skip\nop: concat\nparams: { axis: channels }\n";
        let implicit = configure(NODE).infer(&specs);
        assert_eq!(implicit, configure(explicit).infer(&specs));
        assert_eq!(implicit, Ok(vec![TensorSpec::f32(&[2, 3, 3, 3])]));
        assert!(try_configure("name: x\nop: concat\nparams: { axis: height }\n").is_err());
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
    fn infer_rejects_mismatched_c_h_w_along_the_batch() {
        let e = infer_err(
            BATCH,
            &[
                Some(TensorSpec::f32(&[2, 3, 8, 8])),
                Some(TensorSpec::f32(&[2, 3, 4, 8])),
            ],
        );
        assert_eq!(
            e,
            "`b` must have the C, H, W of `a` (f32[2, 3, 8, 8]), got f32[2, 3, 4, 8]"
        );
        // Channel counts that differ are fine along channels, not along the batch.
        let e = infer_err(
            BATCH,
            &[
                Some(TensorSpec::f32(&[2, 3, 8, 8])),
                Some(TensorSpec::f32(&[2, 5, 8, 8])),
            ],
        );
        assert_eq!(
            e,
            "`b` must have the C, H, W of `a` (f32[2, 3, 8, 8]), got f32[2, 5, 8, 8]"
        );
    }

    /// concat_bwd on dy with three parts of two values along `axis`, split after the first.
    fn bwd(axis: Axis, shape: &[usize]) -> impl Fn(bool, bool) -> Vec<Tensor> {
        let dy = f32s(shape, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        move |want_a, want_b| {
            let p = BwdParams {
                axis,
                split: 1,
                want_a,
                want_b,
            };
            let specs = ConcatBwd::infer(&p, &[Some(dy.spec())]).unwrap();
            let mut outs: Vec<Tensor> = specs.iter().map(Tensor::zeros).collect();
            ConcatBwd::cpu(&p, &ExecCx::default(), &[Some(&dy)], &mut outs).unwrap();
            outs
        }
    }

    #[test]
    fn backward_splits_dy_and_skips_unwanted_halves() {
        for (axis, shape, a_shape) in [
            (Axis::Channels, [1, 3, 1, 2], [1, 1, 1, 2]),
            (Axis::Batch, [3, 1, 1, 2], [1, 1, 1, 2]),
        ] {
            let run = bwd(axis, &shape);
            let both = run(true, true);
            assert_eq!(both[0].spec(), &TensorSpec::f32(&a_shape), "{axis:?}");
            assert_eq!(both[0].f32(), Some(&[1.0, 2.0][..]), "{axis:?}");
            assert_eq!(both[1].f32(), Some(&[3.0, 4.0, 5.0, 6.0][..]), "{axis:?}");
            let b_only = run(false, true);
            assert_eq!(b_only[0].spec(), &TensorSpec::f32(&[0]), "{axis:?}");
            assert_eq!(b_only[1], both[1], "{axis:?}");
            let a_only = run(true, false);
            assert_eq!(a_only[0], both[0], "{axis:?}");
            assert_eq!(a_only[1].spec(), &TensorSpec::f32(&[0]), "{axis:?}");
        }
    }

    #[test]
    fn backward_along_channels_interleaves_images() {
        // N = 2, C = 2 (split 1), H·W = 1: dy = [img0: c0 c1, img1: c0 c1].
        let dy = f32s(&[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
        let p = BwdParams {
            axis: Axis::Channels,
            split: 1,
            want_a: true,
            want_b: true,
        };
        let specs = ConcatBwd::infer(&p, &[Some(dy.spec())]).unwrap();
        let mut outs: Vec<Tensor> = specs.iter().map(Tensor::zeros).collect();
        ConcatBwd::cpu(&p, &ExecCx::default(), &[Some(&dy)], &mut outs).unwrap();
        assert_eq!(outs[0].f32(), Some(&[1.0, 3.0][..]));
        assert_eq!(outs[1].f32(), Some(&[2.0, 4.0][..]));
    }
}
