//! `prepend_background`: a background score put in front of the foreground class scores,
//! y = [offset − max_c x_c ; x] — PseudoSeg's self-attention head (googleinterns/wss
//! core/train_utils_core.py `compute_self_att_v2`: "Since the score range of a class is [0, 2]
//! after skip-connection, we use 2 minus the max class probability to set the initial
//! background score", `bg = 2 - tf.reduce_max(att_score, axis=3, keepdims=True)`,
//! `tf.concat([bg, att_score], axis=-1)`).
//!
//! Shapes: `x` f32[N, C, H, W] (C ≥ 1 foreground scores) → `y` f32[N, C + 1, H, W], channel 0
//! the background.
//!
//! Backward: `prepend_background_bwd` (below, unregistered): dx = dy[:, 1:] − onehot(argmax_c
//! x)·dy[:, 0] (ties go to the lowest class, as `torch.max` routes them). Kernels:
//! `argmax::max_fwd` / `max_bwd`, `elementwise::affine_fwd` (offset − max), `concat_channels_fwd`
//! / `slice_channels_fwd`, `scale_fwd`, `add_fwd` (no new kernel).
//!
//! Not here: a background from anything but the maximum (e.g. 1 − Σ).

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::argmax::{max_bwd, max_fwd};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{
    add_fwd, affine_fwd, concat_channels_fwd, scale_fwd, slice_channels_fwd,
};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `prepend_background` op.
pub struct PrependBackground;

/// Params of `prepend_background`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The background score is `offset` minus the largest class score; default 2.0 (the
    /// official head's: scores in [0, 1] plus a skip connection lie in [0, 2]).
    #[serde(default = "two")]
    pub offset: f32,
}

fn two() -> f32 {
    2.0
}

impl Op for PrependBackground {
    const NAME: &'static str = "prepend_background";
    const SUMMARY: &'static str =
        "prepends a background channel offset − max_c x to class scores (PseudoSeg's SGC head)";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W] foreground scores, C ≥ 1")];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "y",
        "f32[N, C + 1, H, W]: channel 0 = offset − max_c x, then x",
    )];
    const EXAMPLE: &'static str = "name: with_bg\nop: prepend_background\n\
        inputs: { x: refined.y }\nparams: { offset: 2.0 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::TrainableDistinct(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if x.c == 0 {
            return Err(format!(
                "`x` must have at least one class, got {}",
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![TensorSpec::nchw(Nchw::new(x.n, x.c + 1, x.h, x.w))])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let pixels = s.n * s.plane();
        let (mut top, mut idx) = (vec![0f32; pixels], vec![0i32; pixels]);
        max_fwd(x, s, &mut top, &mut idx)?;
        let mut bg = vec![0f32; pixels];
        affine_fwd(&top, -1.0, p.offset, &mut bg)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let bg_shape = Nchw::new(s.n, 1, s.h, s.w);
        let y_shape = Nchw::new(s.n, s.c + 1, s.h, s.w);
        Ok(concat_channels_fwd(&[(&bg, bg_shape), (x, s)], y, y_shape)?)
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
        let (dev, pixels) = (cx.dev, s.n * s.plane());
        let mut scratch = dev_io::Scratch::new(dev);
        let (mut top, mut idx, mut bg) = (
            scratch.f32(pixels)?,
            scratch.i32(pixels)?,
            scratch.f32(pixels)?,
        );
        cuda::argmax::max_fwd(dev, &x, s, &mut top, &mut idx)?;
        cuda::elementwise::affine_fwd(dev, &top, -1.0, p.offset, &mut bg)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let bg_shape = Nchw::new(s.n, 1, s.h, s.w);
        let y_shape = Nchw::new(s.n, s.c + 1, s.h, s.w);
        let parts: [(&dyn cuda::DeviceBuf<f32>, Nchw); 2] = [(&bg, bg_shape), (&x, s)];
        Ok(cuda::elementwise::concat_channels_fwd(
            dev, &parts, &mut y, y_shape,
        )?)
    }

    fn vjp(_: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `prepend_background`: one `prepend_background_bwd` node reading x (for the
/// argmax) and dy.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let x = grad::input(g, PrependBackground::INPUTS, 0)?;
    let dy = grad::grad_output(g, PrependBackground::OUTPUTS, 0)?;
    let [dx] = grad::outputs(
        g.emit::<PrependBackgroundBwd>(flowseg_engine::NoParams {}, vec![Some(x), Some(dy)])?,
    )?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `prepend_background` (emitted by its VJP, not registered): dx = dy[:, 1:] −
/// onehot(argmax x)·dy[:, 0].
struct PrependBackgroundBwd;

impl Op for PrependBackgroundBwd {
    const NAME: &'static str = "prepend_background_bwd";
    const SUMMARY: &'static str =
        "gradient of prepend_background: dy[:, 1:] − onehot(argmax x)·dy[:, 0]";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W]: prepend_background's input"),
        Port::req("dy", "f32[N, C + 1, H, W]: the gradient of its `y`"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = flowseg_engine::NoParams;

    fn has_cuda(_: &flowseg_engine::NoParams) -> bool {
        true
    }

    fn infer(
        _: &flowseg_engine::NoParams,
        inputs: &[Option<&TensorSpec>],
    ) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let dy = io::spec(Self::INPUTS, inputs, 1)?;
        let want = TensorSpec::nchw(Nchw::new(x.n, x.c + 1, x.h, x.w));
        if *dy != want {
            return Err(format!("`dy` must be {want}, got {dy}"));
        }
        Ok(vec![TensorSpec::nchw(x)])
    }

    fn cpu(
        _: &flowseg_engine::NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dy_shape = Nchw::new(s.n, s.c + 1, s.h, s.w);
        let pixels = s.n * s.plane();
        let (mut top, mut idx) = (vec![0f32; pixels], vec![0i32; pixels]);
        max_fwd(x, s, &mut top, &mut idx)?;
        // dbg = dy[:, 0], routed to the winning class with a minus sign.
        let mut dbg = vec![0f32; pixels];
        slice_channels_fwd(dy, dy_shape, 0, 1, &mut dbg)?;
        let mut routed = vec![0f32; s.len()];
        max_bwd(&dbg, &idx, s, &mut routed)?;
        let mut negated = vec![0f32; s.len()];
        scale_fwd(&routed, -1.0, &mut negated)?;
        let mut direct = vec![0f32; s.len()];
        slice_channels_fwd(dy, dy_shape, 1, s.c + 1, &mut direct)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(add_fwd(&direct, &negated, dx)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &flowseg_engine::NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let dy_shape = Nchw::new(s.n, s.c + 1, s.h, s.w);
        let (dev, pixels) = (cx.dev, s.n * s.plane());
        let mut scratch = dev_io::Scratch::new(dev);
        let (mut top, mut idx) = (scratch.f32(pixels)?, scratch.i32(pixels)?);
        cuda::argmax::max_fwd(dev, &x, s, &mut top, &mut idx)?;
        let mut dbg = scratch.f32(pixels)?;
        cuda::elementwise::slice_channels_fwd(dev, &dy, dy_shape, 0, 1, &mut dbg)?;
        let (mut routed, mut negated) = (scratch.f32(s.len())?, scratch.f32(s.len())?);
        cuda::argmax::max_bwd(dev, &dbg, &idx, s, &mut routed)?;
        cuda::elementwise::scale_fwd(dev, &routed, -1.0, &mut negated)?;
        let mut direct = scratch.f32(s.len())?;
        cuda::elementwise::slice_channels_fwd(dev, &dy, dy_shape, 1, s.c + 1, &mut direct)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::elementwise::add_fwd(dev, &direct, &negated, &mut dx)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_background() {
        // [1, 2, 1, 2]: pixel 0 (0.5, 1.5) → bg 2 − 1.5 = 0.5; pixel 1 (0.2, 0.1) → 1.8.
        let x = f32s(&[1, 2, 1, 2], &[0.5, 0.2, 1.5, 0.1]);
        let y = run("name: b\nop: prepend_background\n", &[Some(x.clone())]);
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 3, 1, 2]));
        assert_close(y[0].f32().unwrap(), &[0.5, 1.8, 0.5, 0.2, 1.5, 0.1], 1e-6);
        let y = run(
            "name: b\nop: prepend_background\nparams: { offset: 1.0 }\n",
            &[Some(x)],
        );
        assert_close(&y[0].f32().unwrap()[..2], &[-0.5, 0.8], 1e-6);
    }

    #[test]
    fn infer_rejects_no_classes() {
        let e = infer_err(
            "name: b\nop: prepend_background\n",
            &[Some(TensorSpec::f32(&[1, 0, 2, 2]))],
        );
        assert_eq!(e, "`x` must have at least one class, got f32[1, 0, 2, 2]");
    }
}
