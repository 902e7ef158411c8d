//! `conv2d`: 2-d cross-correlation with zero padding, stride, dilation and groups, PyTorch
//! `F.conv2d(x, weight, bias, stride, padding, dilation, groups)` with one value for both axes:
//!
//! y[n, o, i, j] = bias[o] + Σ_{c, a, b} weight[o, c, a, b] · x[n, g·Ci/groups + c,
//! i·stride − padding + a·dilation, j·stride − padding + b·dilation], g = o / (Co/groups),
//! out-of-image taps reading 0.
//!
//! Shapes: `x` f32[N, Ci, H, W], `weight` f32[Co, Ci/groups, kh, kw], `bias` f32[Co] (optional)
//! → `y` f32[N, Co, Ho, Wo] with Ho = (H + 2·padding − dilation·(kh − 1) − 1)/stride + 1 (Wo
//! likewise). The kernel extent and Co are read off `weight`'s shape, not given as params.
//!
//! Backward: one `conv2d_bwd` node (below, unregistered) produces whichever of dx, dweight and
//! dbias the graph needs. Its kernels' CUDA twins exist (kernels/src/cuda); the engine does not
//! dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::conv2d::{conv2d_bwd, conv2d_fwd, Conv2d as Geometry};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::KernelError;
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `conv2d` op.
pub struct Conv2d;

/// Params of `conv2d`; each spatial one applies to both axes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Step between output pixels, in input pixels; default 1.
    #[serde(default = "one")]
    pub stride: NonZeroUsize,
    /// Zeros added on every side of the input; default 0.
    #[serde(default)]
    pub padding: usize,
    /// Spacing between kernel taps (atrous rate); default 1.
    #[serde(default = "one")]
    pub dilation: NonZeroUsize,
    /// Channel groups: Ci and Co must both be divisible by it (Ci = Co = groups is depthwise);
    /// default 1.
    #[serde(default = "one")]
    pub groups: NonZeroUsize,
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

impl Params {
    /// The kernel's geometry for a kh×kw weight.
    fn geometry(&self, kh: usize, kw: usize) -> Geometry {
        let s = Geometry::square(1, self.stride.get(), self.padding, self.dilation.get())
            .with_groups(self.groups.get());
        Geometry { kh, kw, ..s }
    }
}

impl Op for Conv2d {
    const NAME: &'static str = "conv2d";
    const SUMMARY: &'static str =
        "2-d convolution (cross-correlation) with stride, zero padding, dilation and groups";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, Ci, H, W] input"),
        Port::req("weight", "f32[Co, Ci/groups, kh, kw] filters"),
        Port::opt("bias", "f32[Co], added to every output pixel"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, Co, Ho, Wo]")];
    const EXAMPLE: &'static str = "name: stem\nop: conv2d\n\
        inputs: { x: batch.image, weight: stem_w.y, bias: stem_b.y }\n\
        params: { stride: 2, padding: 1 }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // im2col path, stride and padding, with a bias.
        GradCase {
            params: "{ stride: 2, padding: 1 }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("weight", Feed::Trainable(&[4, 3, 3, 3])),
                ("bias", Feed::Trainable(&[4])),
            ],
        },
        // Depthwise path with dilation, no bias.
        GradCase {
            params: "{ padding: 2, dilation: 2, groups: 3 }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("weight", Feed::Trainable(&[3, 1, 3, 3])),
            ],
        },
        // 1×1 path on a constant input: only dweight and dbias are asked for.
        GradCase {
            params: "{}",
            feeds: &[
                ("x", Feed::Constant(&[2, 3, 5, 7])),
                ("weight", Feed::Trainable(&[2, 3, 1, 1])),
                ("bias", Feed::Trainable(&[2])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let w_spec = io::spec(Self::INPUTS, inputs, 1)?;
        let w = match (w_spec.dtype, w_spec.as_nchw()) {
            (DType::F32, Some(w)) => w,
            _ => {
                return Err(format!(
                    "`weight` must be f32[Co, Ci/groups, kh, kw], got {w_spec}"
                ))
            }
        };
        let (co, groups) = (w.n, p.groups.get());
        if !x.c.is_multiple_of(groups) {
            return Err(format!(
                "`x` has Ci = {} channels, not divisible by groups = {groups}",
                x.c
            ));
        }
        if !co.is_multiple_of(groups) {
            return Err(format!(
                "`weight` has Co = {co} filters, not divisible by groups = {groups}: got {w_spec}"
            ));
        }
        if w.c != x.c / groups {
            return Err(format!(
                "`weight` must have Ci/groups = {} input channels, got {w_spec}",
                x.c / groups
            ));
        }
        if w.h == 0 || w.w == 0 {
            return Err(format!(
                "`weight` must have a kernel of at least 1×1, got {w_spec}"
            ));
        }
        if let Some(b) = inputs.get(2).copied().flatten() {
            let want = TensorSpec::f32(&[co]);
            if *b != want {
                return Err(format!("`bias` must be {want} (Co of `weight`), got {b}"));
            }
        }
        let y = p.geometry(w.h, w.w).out_shape(x, co).map_err(|e| {
            let reason = match e {
                KernelError::Shape { reason, .. } => reason,
                other => other.to_string(),
            };
            format!("`x` is too small for a {}×{} kernel: {reason}", w.h, w.w)
        })?;
        Ok(vec![TensorSpec::nchw(y)])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let xs = io::nchw(Self::INPUTS, inputs, 0)?;
        // The weight is rank 4 too: (n, c, h, w) read as (Co, Ci/groups, kh, kw).
        let ws = io::nchw(Self::INPUTS, inputs, 1)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let w = io::f32(Self::INPUTS, inputs, 1)?;
        let bias = io::f32_opt(Self::INPUTS, inputs, 2)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(conv2d_fwd(
            x,
            xs,
            w,
            bias,
            ws.n,
            &p.geometry(ws.h, ws.w),
            y,
        )?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let xs = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let ws = dev_io::nchw(Self::INPUTS, inputs, 1)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let w = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let bias = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let bias = bias.as_ref().map(|b| b as &dyn cuda::DeviceBuf<f32>);
        let geometry = p.geometry(ws.h, ws.w);
        Ok(cuda::conv2d::conv2d_fwd(
            cx.dev, &x, xs, &w, bias, ws.n, &geometry, &mut y,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `conv2d`: one `conv2d_bwd` node, asked (by flags in its params) for exactly the
/// gradients whose inputs need one.
///
/// One node with flags rather than a node per gradient: it is one call of the kernel, whose
/// `Option` outputs exist for exactly this (a frozen layer needs only dx, the first layer no
/// dx), and one launcher for the CUDA twin; separate nodes would each need x, weight and dy all
/// the same (the kernel reads both) and buy nothing until the planner has streams. Unwanted
/// outputs are empty (f32[0]) rather than absent, so the ports keep their positions. When the
/// planner wants dX ‖ dW on two streams (DESIGN §2), the split is made here: emit this op twice
/// with disjoint flags.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    let want = Wanted {
        dx: g.needs_grad(0),
        dweight: g.needs_grad(1),
        dbias: g.needs_grad(2),
    };
    if !(want.dx || want.dweight || want.dbias) {
        return Ok(());
    }
    let x = grad::input(g, Conv2d::INPUTS, 0)?;
    let w = grad::input(g, Conv2d::INPUTS, 1)?;
    let dy = grad::grad_output(g, Conv2d::OUTPUTS, 0)?;
    let params = BwdParams {
        conv: p.clone(),
        want,
    };
    let [dx, dw, db] =
        grad::outputs(g.emit::<Conv2dBwd>(params, vec![Some(x), Some(w), Some(dy)])?)?;
    for (i, wanted, grad) in [(0, want.dx, dx), (1, want.dweight, dw), (2, want.dbias, db)] {
        if wanted {
            g.set_grad(i, grad);
        }
    }
    Ok(())
}

/// Backward of `conv2d` (emitted by its VJP, not registered): any of dx, dweight, dbias, as
/// its params ask.
struct Conv2dBwd;

/// Which gradients a `conv2d_bwd` node produces; the others are empty outputs.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wanted {
    /// The input gradient.
    dx: bool,
    /// The filter gradient.
    dweight: bool,
    /// The bias gradient (the forward had a bias).
    dbias: bool,
}

/// Params of `conv2d_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward's params.
    conv: Params,
    /// The gradients to produce.
    want: Wanted,
}

impl Op for Conv2dBwd {
    const NAME: &'static str = "conv2d_bwd";
    const SUMMARY: &'static str = "gradient of conv2d: any of dx, dweight, dbias from dy";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, Ci, H, W]: conv2d's input"),
        Port::req("weight", "f32[Co, Ci/groups, kh, kw]: conv2d's filters"),
        Port::req("dy", "f32[N, Co, Ho, Wo]: the gradient of conv2d's `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("dx", "f32[N, Ci, H, W], or f32[0] when not wanted"),
        Port::req(
            "dweight",
            "f32[Co, Ci/groups, kh, kw], or f32[0] when not wanted",
        ),
        Port::req("dbias", "f32[Co], or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        // The forward's checks on x and weight, and the y they give, which dy must match.
        let y = Conv2d::infer(&p.conv, &inputs[..inputs.len().min(2)])?;
        let dy = io::spec(Self::INPUTS, inputs, 2)?;
        if Some(dy) != y.first() {
            let want = y.first().map_or("?".into(), ToString::to_string);
            return Err(format!("`dy` must be {want} (conv2d's `y`), got {dy}"));
        }
        let x = io::spec(Self::INPUTS, inputs, 0)?;
        let w = io::spec(Self::INPUTS, inputs, 1)?;
        let co = w.shape.first().copied().unwrap_or(0);
        let pick = |wanted: bool, spec: TensorSpec| {
            if wanted {
                spec
            } else {
                TensorSpec::f32(&[0])
            }
        };
        Ok(vec![
            pick(p.want.dx, x.clone()),
            pick(p.want.dweight, w.clone()),
            pick(p.want.dbias, TensorSpec::f32(&[co])),
        ])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let xs = io::nchw(Self::INPUTS, inputs, 0)?;
        let ws = io::nchw(Self::INPUTS, inputs, 1)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let w = io::f32(Self::INPUTS, inputs, 1)?;
        let dy = io::f32(Self::INPUTS, inputs, 2)?;
        let n = outputs.len();
        let [dx, dw, db] = outputs else {
            return Err(OpError::Output {
                port: "dx",
                problem: format!("expected 3 outputs, got {n}"),
            });
        };
        let dx = wanted_output(p.want.dx, 0, dx)?;
        let dw = wanted_output(p.want.dweight, 1, dw)?;
        let db = wanted_output(p.want.dbias, 2, db)?;
        Ok(conv2d_bwd(
            x,
            xs,
            w,
            ws.n,
            &p.conv.geometry(ws.h, ws.w),
            dy,
            dx,
            dw,
            db,
        )?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let xs = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let ws = dev_io::nchw(Self::INPUTS, inputs, 1)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let w = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let out = |wanted: bool, k: usize| match wanted {
            true => dev_io::f32_out(Self::OUTPUTS, outputs, k).map(Some),
            false => Ok(None),
        };
        let (mut dx, mut dw, mut db) = (
            out(p.want.dx, 0)?,
            out(p.want.dweight, 1)?,
            out(p.want.dbias, 2)?,
        );
        Ok(cuda::conv2d::conv2d_bwd(
            cx.dev,
            &x,
            xs,
            &w,
            ws.n,
            &p.conv.geometry(ws.h, ws.w),
            &dy,
            dev_io::opt_out(&mut dx),
            dev_io::opt_out(&mut dw),
            dev_io::opt_out(&mut db),
        )?)
    }
}

/// `conv2d_bwd`'s output `k` as an f32 slice if it is wanted, else `None` (the kernel then
/// skips that gradient).
fn wanted_output(wanted: bool, k: usize, t: &mut Tensor) -> Result<Option<&mut [f32]>, OpError> {
    if !wanted {
        return Ok(None);
    }
    // A one-tensor slice and the ports from `k` on, so the helper's message names port `k`.
    let ports = Conv2dBwd::OUTPUTS.get(k..).unwrap_or(&[]);
    io::f32_out(ports, std::slice::from_mut(t), 0).map(Some)
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;
    use std::num::NonZeroUsize;

    /// x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]] as [1, 1, 3, 3]; weight [[1, 0], [0, 1]] sums each
    /// 2×2 window's main diagonal.
    fn x_and_diag() -> Vec<Option<flowseg_engine::Tensor>> {
        let x = f32s(
            &[1, 1, 3, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        );
        let w = f32s(&[1, 1, 2, 2], &[1.0, 0.0, 0.0, 1.0]);
        vec![Some(x), Some(w), Some(f32s(&[1], &[10.0]))]
    }

    #[test]
    fn hand_computed_defaults() {
        // Windows' diagonals: 1+5, 2+6, 4+8, 5+9; plus bias 10.
        let y = run("name: c\nop: conv2d\n", &x_and_diag());
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 2, 2]));
        assert_eq!(y[0].f32(), Some(&[16.0, 18.0, 22.0, 24.0][..]));
    }

    #[test]
    fn hand_computed_stride_padding_no_bias() {
        // Padded to 5×5, stride 2: output (i, j) adds x[2i−1, 2j−1] (zero outside) and
        // x[2i, 2j]: (0 + 1), (0 + 3), (0 + 7), (5 + 9).
        let mut inputs = x_and_diag();
        inputs[2] = None;
        let y = run(
            "name: c\nop: conv2d\nparams: { stride: 2, padding: 1 }\n",
            &inputs,
        );
        assert_eq!(y[0].f32(), Some(&[1.0, 3.0, 7.0, 14.0][..]));
    }

    #[test]
    fn hand_computed_depthwise() {
        // Two groups of one channel each: y = (2·3, 5·4).
        let x = f32s(&[1, 2, 1, 1], &[3.0, 4.0]);
        let w = f32s(&[2, 1, 1, 1], &[2.0, 5.0]);
        let y = run(
            "name: c\nop: conv2d\nparams: { groups: 2 }\n",
            &[Some(x), Some(w), None],
        );
        assert_eq!(y[0].f32(), Some(&[6.0, 20.0][..]));
    }

    #[test]
    fn infer_names_the_port_and_both_specs() {
        let node = "name: c\nop: conv2d\nparams: { padding: 1 }\n";
        let x = Some(TensorSpec::f32(&[1, 3, 8, 8]));
        let e = infer_err(
            node,
            &[x.clone(), Some(TensorSpec::f32(&[8, 4, 3, 3])), None],
        );
        assert_eq!(
            e,
            "`weight` must have Ci/groups = 3 input channels, got f32[8, 4, 3, 3]"
        );
        let w = Some(TensorSpec::f32(&[8, 3, 3, 3]));
        let e = infer_err(node, &[x.clone(), w.clone(), Some(TensorSpec::f32(&[4]))]);
        assert_eq!(e, "`bias` must be f32[8] (Co of `weight`), got f32[4]");
        let e = infer_err(
            "name: c\nop: conv2d\nparams: { groups: 2 }\n",
            &[x.clone(), w.clone(), None],
        );
        assert_eq!(e, "`x` has Ci = 3 channels, not divisible by groups = 2");
        let e = infer_err(
            "name: c\nop: conv2d\n",
            &[Some(TensorSpec::f32(&[1, 3, 2, 2])), w, None],
        );
        assert!(e.starts_with("`x` is too small for a 3×3 kernel: "), "{e}");
    }

    #[test]
    fn backward_outputs_only_the_wanted_gradients() {
        use super::{BwdParams, Conv2dBwd, Params, Wanted};
        use flowseg_engine::{ExecCx, Op, Tensor};
        let conv = Params {
            stride: NonZeroUsize::MIN,
            padding: 0,
            dilation: NonZeroUsize::MIN,
            groups: NonZeroUsize::MIN,
        };
        let p = |dx, dweight, dbias| BwdParams {
            conv: conv.clone(),
            want: Wanted { dx, dweight, dbias },
        };
        let inputs = x_and_diag();
        let dy = f32s(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let ins: Vec<Option<&Tensor>> = vec![inputs[0].as_ref(), inputs[1].as_ref(), Some(&dy)];
        let specs: Vec<Option<&TensorSpec>> = ins.iter().map(|t| t.map(Tensor::spec)).collect();
        let run = |p: &BwdParams| {
            let specs = Conv2dBwd::infer(p, &specs).unwrap();
            let mut outs: Vec<Tensor> = specs.iter().map(Tensor::zeros).collect();
            Conv2dBwd::cpu(p, &ExecCx::default(), &ins, &mut outs).unwrap();
            outs
        };
        let all = run(&p(true, true, true));
        let dw_only = run(&p(false, true, false));
        let empty = TensorSpec::f32(&[0]);
        assert_eq!(dw_only[0].spec(), &empty);
        assert_eq!(dw_only[2].spec(), &empty);
        assert_eq!(dw_only[1].spec(), &TensorSpec::f32(&[1, 1, 2, 2]));
        assert_eq!(dw_only[1].f32(), all[1].f32());
        // dW[a, b] = Σ_ij dy[i, j]·x[i + a, j + b]: 1·1 + 2·2 + 3·4 + 4·5 = 37, ...
        assert_eq!(all[1].f32(), Some(&[37.0, 47.0, 67.0, 77.0][..]));
        assert_eq!(all[2].f32(), Some(&[10.0][..]));
    }

    #[test]
    fn zero_stride_is_rejected_where_written() {
        let e = try_configure("name: c\nop: conv2d\nparams:\n  stride: 0\n").unwrap_err();
        assert!(e.message.contains("nonzero"), "{e}");
        assert_eq!((e.loc.line, e.loc.col), (4, 11));
    }
}
