//! `squeeze`: drops the channel axis of a one-channel map, f32[N, 1, H, W] → f32[N, H, W]
//! (`x.squeeze(1)`). Masks that ops produce as one-channel maps (a thresholded flaw map in GCT,
//! `threshold` of a `[N, 1, H, W]` input) are read by `label_accuracy` and the losses as
//! `[N, H, W]` pixel masks; this is the reshape between them. The data is copied unchanged.
//!
//! Backward: `squeeze_bwd` (below, unregistered), the copy back to [N, 1, H, W]. Not here:
//! squeezing another axis, or several.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::Nchw;

/// The `squeeze` op (no params).
pub struct Squeeze;

impl Op for Squeeze {
    const NAME: &'static str = "squeeze";
    const SUMMARY: &'static str = "a one-channel map f32[N, 1, H, W] as f32[N, H, W]";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, 1, H, W]")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, H, W], x's values")];
    const EXAMPLE: &'static str = "name: bad_sq\nop: squeeze\ninputs: { x: bad_l.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::Trainable(&[2, 1, 3, 5]))],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if x.c != 1 {
            return Err(format!(
                "`x` must have one channel, got {}",
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![TensorSpec::f32(&[x.n, x.h, x.w])])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        io::f32_out(Self::OUTPUTS, outputs, 0)?.copy_from_slice(x);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cx.dev.copy(&x, &mut y)?)
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `squeeze`: dy back to [N, 1, H, W].
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let dy = grad::grad_output(g, Squeeze::OUTPUTS, 0)?;
    let [dx] = grad::outputs(g.emit::<SqueezeBwd>(NoParams {}, vec![Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `squeeze` (emitted by its VJP, not registered): f32[N, H, W] → f32[N, 1, H, W].
struct SqueezeBwd;

impl Op for SqueezeBwd {
    const NAME: &'static str = "squeeze_bwd";
    const SUMMARY: &'static str = "gradient of squeeze: dy with the channel axis back";
    const INPUTS: &'static [Port] = &[Port::req("dy", "f32[N, H, W]")];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, 1, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::f32_spec(Self::INPUTS, inputs, 0)?;
        match dy.shape[..] {
            [n, h, w] => Ok(vec![TensorSpec::nchw(Nchw::new(n, 1, h, w))]),
            _ => Err(format!("`dy` must be f32[N, H, W], got {dy}")),
        }
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let dy = io::f32(Self::INPUTS, inputs, 0)?;
        io::f32_out(Self::OUTPUTS, outputs, 0)?.copy_from_slice(dy);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let dy = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cx.dev.copy(&dy, &mut y)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed() {
        let x = f32s(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let y = run("name: s\nop: squeeze\n", &[Some(x)]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[2, 1, 2]));
        assert_eq!(y[0].f32(), Some(&[1.0, 2.0, 3.0, 4.0][..]));
    }

    #[test]
    fn infer_rejects_several_channels() {
        let e = infer_err(
            "name: s\nop: squeeze\n",
            &[Some(TensorSpec::f32(&[2, 3, 4, 4]))],
        );
        assert_eq!(e, "`x` must have one channel, got f32[2, 3, 4, 4]");
    }
}
