//! `max_pool2d`: `F.max_pool2d(x, kernel, stride, padding, return_indices=True)` with one value
//! for both axes, dilation 1 and `ceil_mode=False`. Output (oy, ox) of plane (n, c) is the
//! maximum of input rows oy·stride − padding … + kernel − 1 (columns likewise), padding reading
//! −∞; Ho = ⌊(H + 2·padding − kernel)/stride⌋ + 1, Wo alike. PyTorch's limits apply: padding at
//! most kernel/2, and the padded input at least one window.
//!
//! Shapes: `x` f32[N, C, H, W] → `y` f32[N, C, Ho, Wo] and `argmax` i32[N, C, Ho, Wo].
//!
//! `argmax` is the winner's flat index iy·W + ix within its own H×W plane — PyTorch's
//! `return_indices` convention — kept for the backward. Differences from PyTorch: it is i32,
//! not int64 (the engine's integer dtype; a plane over i32::MAX cells is refused at build time),
//! and it is always produced, as a second output a graph may ignore. Ties keep the first winner
//! in row-major window order and a NaN wins, as in PyTorch (the kernel's doc,
//! `flowseg_kernels::pool`).
//!
//! Backward: `max_pool2d_bwd` (below, unregistered) routes dy to the recorded winners,
//! dx[argmax] += dy, summing where windows overlap; it reads `argmax` and dy, not x. Its
//! kernels' CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.
//!
//! Not here: dilation, `ceil_mode=True`, non-square windows (the kernel has them; no params
//! for them yet), max_unpool.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::pool::{max_pool2d_bwd, max_pool2d_fwd, Pool2d};
use flowseg_kernels::{KernelError, Nchw};
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `max_pool2d` op.
pub struct MaxPool2d;

/// Params of `max_pool2d`; each applies to both axes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Window side (required).
    pub kernel: NonZeroUsize,
    /// Step between windows; default `kernel`, as PyTorch's `stride=None`.
    #[serde(default)]
    pub stride: Option<NonZeroUsize>,
    /// −∞ padding on every side, at most kernel/2; default 0.
    #[serde(default)]
    pub padding: usize,
}

impl Params {
    /// The kernel's window.
    fn window(&self) -> Pool2d {
        let k = self.kernel.get();
        Pool2d::square(k, self.stride.map_or(k, NonZeroUsize::get), self.padding)
    }

    /// Output [N, C, Ho, Wo] for an input of shape `x`, or why there is none.
    fn out_shape(&self, x: Nchw) -> Result<Nchw, String> {
        let (ho, wo) = self.window().out_hw(x.h, x.w).map_err(|e| match e {
            KernelError::Shape { reason, .. } => reason,
            other => other.to_string(),
        })?;
        if x.h.saturating_mul(x.w) > i32::MAX as usize {
            return Err(format!(
                "a {}×{} plane overflows i32 argmax indices",
                x.h, x.w
            ));
        }
        Ok(Nchw::new(x.n, x.c, ho, wo))
    }
}

impl Op for MaxPool2d {
    const NAME: &'static str = "max_pool2d";
    const SUMMARY: &'static str =
        "2-d max pooling (PyTorch semantics, ceil_mode false), with the winners' indices";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W]")];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "f32[N, C, Ho, Wo]: each window's maximum"),
        Port::req(
            "argmax",
            "i32[N, C, Ho, Wo]: the winner's flat index iy·W + ix in its input plane",
        ),
    ];
    const EXAMPLE: &'static str = "name: pool\nop: max_pool2d\ninputs: { x: stem.y }\n\
        params: { kernel: 3, stride: 2, padding: 1 }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Overlapping windows with padding (ResNet's stem pool): overlaps sum in the backward.
        GradCase {
            params: "{ kernel: 3, stride: 2, padding: 1 }",
            feeds: &[("x", Feed::TrainableDistinct(&[2, 3, 5, 7]))],
        },
        // Default stride (= kernel), a 5×7 plane that leaves a row and a column unpooled.
        GradCase {
            params: "{ kernel: 2 }",
            feeds: &[("x", Feed::TrainableDistinct(&[2, 3, 5, 7]))],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let y = p.out_shape(x).map_err(|reason| {
            format!(
                "`x` ({}) does not fit a {}-pixel window: {reason}",
                TensorSpec::nchw(x),
                p.kernel
            )
        })?;
        Ok(vec![
            TensorSpec::nchw(y),
            TensorSpec::i32(&[y.n, y.c, y.h, y.w]),
        ])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        // The kernel writes u32 indices; the engine's integer tensors are i32 (every index fits,
        // `infer` checked the plane size).
        let mut winners = vec![0u32; outputs.get(1).map_or(0, |t| t.spec().len())];
        max_pool2d_fwd(
            x,
            shape,
            p.window(),
            io::f32_out(Self::OUTPUTS, outputs, 0)?,
            &mut winners,
        )?;
        let argmax = io::i32_out(Self::OUTPUTS, outputs, 1)?;
        for (a, &w) in argmax.iter_mut().zip(&winners) {
            *a = i32::try_from(w).map_err(|_| OpError::Output {
                port: "argmax",
                problem: format!("index {w} overflows i32"),
            })?;
        }
        Ok(())
    }

    /// The kernel's u32 winners are written straight into the i32 `argmax` (every index is
    /// below 2^31: `infer` checked the plane size).
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let argmax = dev_io::i32_out(Self::OUTPUTS, outputs, 1)?;
        let at = cuda::DeviceBuf::<i32>::device_addr(&argmax, cx.dev.stream());
        // SAFETY: the i32 output's memory viewed as u32, element for element.
        let mut winners =
            unsafe { cuda::RawBuf::<u32>::new(at, cuda::DeviceBuf::<i32>::elems(&argmax)) };
        Ok(cuda::pool::max_pool2d_fwd(
            cx.dev,
            &x,
            shape,
            p.window(),
            &mut y,
            &mut winners,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `max_pool2d`: one `max_pool2d_bwd` node reading `argmax` and dy; the input's
/// [H, W] goes into its params.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let x = grad::input(g, MaxPool2d::INPUTS, 0)?;
    let x = g
        .spec(&x)
        .and_then(TensorSpec::as_nchw)
        .ok_or("`x` has no NCHW spec")?;
    let dy = grad::grad_output(g, MaxPool2d::OUTPUTS, 0)?;
    let params = BwdParams {
        pool: p.clone(),
        in_size: [x.h, x.w],
    };
    let [dx] = grad::outputs(g.emit::<MaxPool2dBwd>(params, vec![Some(g.output(1)), Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `max_pool2d` (emitted by its VJP, not registered): dx[argmax] += dy.
struct MaxPool2dBwd;

/// Params of `max_pool2d_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward's params.
    pool: Params,
    /// The forward input's `[H, W]`: the size of `dx`.
    in_size: [usize; 2],
}

impl Op for MaxPool2dBwd {
    const NAME: &'static str = "max_pool2d_bwd";
    const SUMMARY: &'static str = "gradient of max_pool2d: dy routed to each window's winner";
    const INPUTS: &'static [Port] = &[
        Port::req("argmax", "i32[N, C, Ho, Wo]: max_pool2d's `argmax`"),
        Port::req("dy", "f32[N, C, Ho, Wo]: the gradient of max_pool2d's `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W] with [H, W] = `in_size`")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        let [h, w] = p.in_size;
        let x = Nchw::new(dy.n, dy.c, h, w);
        let y = p.pool.out_shape(x)?;
        if y != dy {
            return Err(format!(
                "`dy` must be {} (max_pool2d's `y` for a {h}×{w} input), got {}",
                TensorSpec::nchw(y),
                TensorSpec::nchw(dy)
            ));
        }
        let argmax = io::spec(Self::INPUTS, inputs, 0)?;
        let want = TensorSpec::i32(&[y.n, y.c, y.h, y.w]);
        if *argmax != want {
            return Err(format!("`argmax` must be {want}, got {argmax}"));
        }
        Ok(vec![TensorSpec::nchw(x)])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let dys = io::nchw(Self::INPUTS, inputs, 1)?;
        let argmax = io::i32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        // A negative index wraps to ≥ 2^31, past any plane `infer` admits: the kernel refuses
        // it as outside the plane before writing anything.
        let winners: Vec<u32> = argmax.iter().map(|&a| a as u32).collect();
        let [h, w] = p.in_size;
        Ok(max_pool2d_bwd(
            dy,
            &winners,
            Nchw::new(dys.n, dys.c, h, w),
            p.pool.window(),
            dx,
        )?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let dys = dev_io::nchw(Self::INPUTS, inputs, 1)?;
        let argmax = dev_io::i32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let at = cuda::DeviceBuf::<i32>::device_addr(&argmax, cx.dev.stream());
        // SAFETY: the i32 input's memory viewed as u32, element for element.
        let winners =
            unsafe { cuda::RawBuf::<u32>::new(at, cuda::DeviceBuf::<i32>::elems(&argmax)) };
        let [h, w] = p.in_size;
        let shape = Nchw::new(dys.n, dys.c, h, w);
        Ok(cuda::pool::max_pool2d_bwd(
            cx.dev,
            &dy,
            &winners,
            shape,
            p.pool.window(),
            &mut dx,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, MaxPool2dBwd, Params};
    use crate::support::test::{f32s, i32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};
    use std::num::NonZeroUsize;

    /// The 4×4 plane
    ///   3  1 | 0  2
    ///   4  0 | 7  7
    ///   -----+-----
    ///  -1 -5 | 8  6
    ///  -2 -1 | 9  6
    fn plane() -> Tensor {
        f32s(
            &[1, 1, 4, 4],
            &[
                3.0, 1.0, 0.0, 2.0, 4.0, 0.0, 7.0, 7.0, -1.0, -5.0, 8.0, 6.0, -2.0, -1.0, 9.0, 6.0,
            ],
        )
    }

    #[test]
    fn hand_computed_default_stride() {
        // stride defaults to the kernel: four 2×2 windows. Ties keep the first (7 at 6, not 7;
        // −1 at 8, not 13).
        let y = run(
            "name: p\nop: max_pool2d\nparams: { kernel: 2 }\n",
            &[Some(plane())],
        );
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 2, 2]));
        assert_eq!(y[0].f32(), Some(&[4.0, 7.0, -1.0, 9.0][..]));
        assert_eq!(y[1].spec(), &TensorSpec::i32(&[1, 1, 2, 2]));
        assert_eq!(y[1].i32(), Some(&[4, 6, 8, 14][..]));
    }

    #[test]
    fn hand_computed_resnet_stem_window() {
        // kernel 3, stride 2, padding 1 (torchvision's ResNet maxpool): Ho = (4 + 2 − 3)/2 + 1
        // = 2; windows rows/cols {−1, 0, 1} and {1, 2, 3}, padding as −∞.
        let y = run(
            "name: p\nop: max_pool2d\nparams: { kernel: 3, stride: 2, padding: 1 }\n",
            &[Some(plane())],
        );
        // (0,0): max{3, 1, 4, 0} = 4 at 4; (0,1): cols 1..3 rows 0..1: max{1,0,2,0,7,7} = 7 at 6;
        // (1,0): rows 1..3 cols 0..1: max{4,0,−1,−5,−2,−1} = 4 at 4; (1,1): 9 at 14.
        assert_eq!(y[0].f32(), Some(&[4.0, 7.0, 4.0, 9.0][..]));
        assert_eq!(y[1].i32(), Some(&[4, 6, 4, 14][..]));
    }

    #[test]
    fn backward_sums_overlapping_winners() {
        let p = BwdParams {
            pool: Params {
                kernel: NonZeroUsize::new(3).unwrap(),
                stride: NonZeroUsize::new(2),
                padding: 1,
            },
            in_size: [4, 4],
        };
        let argmax = i32s(&[1, 1, 2, 2], &[4, 6, 4, 14]);
        let dy = f32s(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let ins = [Some(&argmax), Some(&dy)];
        let specs: Vec<Option<&TensorSpec>> = ins.iter().map(|t| t.map(Tensor::spec)).collect();
        let out = MaxPool2dBwd::infer(&p, &specs).unwrap();
        assert_eq!(out, [TensorSpec::f32(&[1, 1, 4, 4])]);
        let mut outs = vec![Tensor::zeros(&out[0])];
        MaxPool2dBwd::cpu(&p, &ExecCx::default(), &ins, &mut outs).unwrap();
        let mut want = [0.0; 16];
        (want[4], want[6], want[14]) = (1.0 + 3.0, 2.0, 4.0);
        assert_eq!(outs[0].f32(), Some(&want[..]));
        // A negative index is refused, not wrapped.
        let bad = i32s(&[1, 1, 2, 2], &[4, -1, 4, 14]);
        let e = MaxPool2dBwd::cpu(&p, &ExecCx::default(), &[Some(&bad), Some(&dy)], &mut outs)
            .unwrap_err();
        assert!(e.to_string().contains("outside the 4×4 input plane"), "{e}");
    }

    #[test]
    fn infer_rejects_bad_geometry() {
        let node = "name: p\nop: max_pool2d\nparams: { kernel: 3, padding: 2 }\n";
        let e = infer_err(node, &[Some(TensorSpec::f32(&[1, 2, 8, 8]))]);
        assert!(
            e.starts_with("`x` (f32[1, 2, 8, 8]) does not fit a 3-pixel window: ")
                && e.contains("at most half the kernel"),
            "{e}"
        );
        let node = "name: p\nop: max_pool2d\nparams: { kernel: 5 }\n";
        let e = infer_err(node, &[Some(TensorSpec::f32(&[1, 2, 4, 9]))]);
        assert!(e.contains("output would be empty"), "{e}");
        let e = infer_err(node, &[Some(TensorSpec::f32(&[2, 8, 8]))]);
        assert_eq!(e, "`x` must be f32[N, C, H, W], got f32[2, 8, 8]");
    }

    #[test]
    fn kernel_is_required_and_positive() {
        let e = try_configure("name: p\nop: max_pool2d\n").unwrap_err();
        assert!(e.message.contains("missing field `kernel`"), "{e}");
        let e = try_configure("name: p\nop: max_pool2d\nparams: { kernel: 2, stride: 0 }\n")
            .unwrap_err();
        assert!(e.message.contains("nonzero"), "{e}");
    }
}
