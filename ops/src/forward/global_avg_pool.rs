//! `global_avg_pool`: the mean of each H×W plane, `F.adaptive_avg_pool2d(x, 1)` (equivalently
//! `x.mean((2, 3), keepdim=True)`): y[n, c, 0, 0] = Σ_{i, j} x[n, c, i, j] / (H·W), summed in
//! f64 and rounded once to f32 (PyTorch sums in f32, so the last bits may differ).
//!
//! Shapes: `x` f32[N, C, H, W] with H, W ≥ 1 → `y` f32[N, C, 1, 1] (the 1×1 dims kept, so a
//! 1×1 conv can follow, as in DeepLab's image-pooling branch).
//!
//! Backward: `global_avg_pool_bwd` (below, unregistered) broadcasts dy/(H·W) over each plane;
//! it reads only dy and the input's size. Its kernels' CUDA twins exist (kernels/src/cuda); the
//! engine does not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::pool::{global_avg_pool_bwd, global_avg_pool_fwd};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `global_avg_pool` op (no params).
pub struct GlobalAvgPool;

impl Op for GlobalAvgPool {
    const NAME: &'static str = "global_avg_pool";
    const SUMMARY: &'static str = "mean of each H×W plane, [N, C, H, W] → [N, C, 1, 1]";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W], H and W positive")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, C, 1, 1]: the plane means")];
    const EXAMPLE: &'static str = "name: pool\nop: global_avg_pool\ninputs: { x: layer4.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if x.h == 0 || x.w == 0 {
            return Err(format!(
                "`x` must have a positive height and width to average, got {}",
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![TensorSpec::nchw(Nchw::new(x.n, x.c, 1, 1))])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(global_avg_pool_fwd(x, shape, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::pool::global_avg_pool_fwd(cx.dev, &x, shape, &mut y)?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `global_avg_pool`: one `global_avg_pool_bwd` node reading only dy; the input's
/// [H, W] goes into its params.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let x = grad::input(g, GlobalAvgPool::INPUTS, 0)?;
    let x = g
        .spec(&x)
        .and_then(TensorSpec::as_nchw)
        .ok_or("`x` has no NCHW spec")?;
    let dy = grad::grad_output(g, GlobalAvgPool::OUTPUTS, 0)?;
    let params = BwdParams {
        in_size: [x.h, x.w],
    };
    let [dx] = grad::outputs(g.emit::<GlobalAvgPoolBwd>(params, vec![Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `global_avg_pool` (emitted by its VJP, not registered): dx = dy/(H·W) broadcast.
struct GlobalAvgPoolBwd;

/// Params of `global_avg_pool_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward input's `[H, W]`, both positive: the size of `dx`.
    in_size: [usize; 2],
}

impl Op for GlobalAvgPoolBwd {
    const NAME: &'static str = "global_avg_pool_bwd";
    const SUMMARY: &'static str = "gradient of global_avg_pool: dy/(H·W) over each plane";
    const INPUTS: &'static [Port] = &[Port::req(
        "dy",
        "f32[N, C, 1, 1]: the gradient of global_avg_pool's `y`",
    )];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W] with [H, W] = `in_size`")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let [h, w] = p.in_size;
        if dy.h != 1 || dy.w != 1 || h == 0 || w == 0 {
            return Err(format!(
                "`dy` must be f32[N, C, 1, 1] and in_size positive, got {} and [{h}, {w}]",
                TensorSpec::nchw(dy)
            ));
        }
        Ok(vec![TensorSpec::nchw(Nchw::new(dy.n, dy.c, h, w))])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let dys = io::nchw(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 0)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let [h, w] = p.in_size;
        Ok(global_avg_pool_bwd(dy, Nchw::new(dys.n, dys.c, h, w), dx)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let dys = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let [h, w] = p.in_size;
        let s = Nchw::new(dys.n, dys.c, h, w);
        Ok(cuda::pool::global_avg_pool_bwd(cx.dev, &dy, s, &mut dx)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    const NODE: &str = "name: pool\nop: global_avg_pool\n";

    #[test]
    fn hand_computed() {
        // Two 2×3 planes: mean(1..6) = 3.5, mean(7..12) = 9.5.
        let v: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let y = run(NODE, &[Some(f32s(&[1, 2, 2, 3], &v))]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 2, 1, 1]));
        assert_eq!(y[0].f32(), Some(&[3.5, 9.5][..]));
    }

    #[test]
    fn infer_rejects_empty_planes_and_wrong_rank() {
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[1, 2, 0, 3]))]);
        assert_eq!(
            e,
            "`x` must have a positive height and width to average, got f32[1, 2, 0, 3]"
        );
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[2, 3]))]);
        assert_eq!(e, "`x` must be f32[N, C, H, W], got f32[2, 3]");
    }

    #[test]
    fn any_param_is_rejected() {
        let e =
            try_configure("name: pool\nop: global_avg_pool\nparams: { size: 1 }\n").unwrap_err();
        assert!(e.message.contains("unknown field `size`"), "{e}");
    }
}
