//! `resize_bilinear`: `F.interpolate(x, size=(h, w), mode='bilinear', align_corners)` to an
//! explicit output size. Per axis with input extent `in` and output extent `out`, output index
//! d reads source position s = max((d + 0.5)·in/out − 0.5, 0) (align_corners false) or
//! s = d·(in − 1)/(out − 1) (true), and y blends the two nearest source pixels ⌊s⌋ and
//! ⌊s⌋ + 1 (clamped to the edge) with weights 1 − frac(s) and frac(s), along H then W.
//!
//! Shapes: `x` f32[N, C, H, W] → `y` f32[N, C, h, w]; H, W, h and w must be positive.
//!
//! Backward: `resize_bilinear_bwd` (below, unregistered) scatters dy back through the same taps
//! and weights (the adjoint of the blend); it needs only dy and the input's size. Its kernels'
//! CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.

use crate::grad;
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::resize::{resize_bilinear_bwd, resize_bilinear_fwd};
use flowseg_kernels::Nchw;
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `resize_bilinear` op.
pub struct ResizeBilinear;

/// Params of `resize_bilinear`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Output `[height, width]`, both positive (required: shapes are static, so the size is
    /// given, never a scale factor).
    pub size: [NonZeroUsize; 2],
    /// PyTorch's `align_corners`: true maps the corner pixels' centres onto each other; default
    /// false (pixel areas aligned, as `F.interpolate` defaults).
    #[serde(default)]
    pub align_corners: bool,
}

impl Op for ResizeBilinear {
    const NAME: &'static str = "resize_bilinear";
    const SUMMARY: &'static str =
        "bilinear resize of an NCHW map to a fixed [h, w] (PyTorch semantics)";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W], H and W positive")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, C, h, w] with [h, w] = `size`")];
    const EXAMPLE: &'static str = "name: upsample\nop: resize_bilinear\ninputs: { x: head.y }\n\
        params: { size: [512, 512], align_corners: false }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        GradCase {
            params: "{ size: [4, 9] }",
            feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
        },
        GradCase {
            params: "{ size: [8, 3], align_corners: true }",
            feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
        },
    ];
    type Params = Params;

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if x.h == 0 || x.w == 0 {
            return Err(format!(
                "`x` must have a positive height and width to resize, got {}",
                TensorSpec::nchw(x)
            ));
        }
        let [h, w] = p.size.map(NonZeroUsize::get);
        Ok(vec![TensorSpec::nchw(Nchw::new(x.n, x.c, h, w))])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let [h, w] = p.size.map(NonZeroUsize::get);
        Ok(resize_bilinear_fwd(x, shape, h, w, p.align_corners, y)?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `resize_bilinear`: one `resize_bilinear_bwd` node reading only dy; the input's
/// [H, W] goes into its params, so x need not be kept for the backward.
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let x = grad::input(g, ResizeBilinear::INPUTS, 0)?;
    let x = g
        .spec(&x)
        .and_then(TensorSpec::as_nchw)
        .ok_or("`x` has no NCHW spec")?;
    let dy = grad::grad_output(g, ResizeBilinear::OUTPUTS, 0)?;
    let params = BwdParams {
        in_size: [x.h, x.w],
        align_corners: p.align_corners,
    };
    let [dx] = grad::outputs(g.emit::<ResizeBilinearBwd>(params, vec![Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `resize_bilinear` (emitted by its VJP, not registered): dx = the adjoint of the
/// bilinear blend applied to dy.
struct ResizeBilinearBwd;

/// Params of `resize_bilinear_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward input's `[H, W]`, both positive: the size of `dx`.
    in_size: [usize; 2],
    /// The forward's `align_corners`.
    align_corners: bool,
}

impl Op for ResizeBilinearBwd {
    const NAME: &'static str = "resize_bilinear_bwd";
    const SUMMARY: &'static str = "gradient of resize_bilinear: dy scattered back to the input";
    const INPUTS: &'static [Port] = &[Port::req(
        "dy",
        "f32[N, C, h, w]: the gradient of resize_bilinear's `y`",
    )];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W] with [H, W] = `in_size`")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let [h, w] = p.in_size;
        if h == 0 || w == 0 || dy.h == 0 || dy.w == 0 {
            return Err(format!(
                "sizes must be positive: `dy` is {}, in_size [{h}, {w}]",
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
        let shape = Nchw::new(dys.n, dys.c, h, w);
        Ok(resize_bilinear_bwd(
            dy,
            shape,
            dys.h,
            dys.w,
            p.align_corners,
            dx,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_both_alignments() {
        let x = || Some(f32s(&[1, 1, 1, 2], &[0.0, 1.0]));
        // Half-pixel centres: sources max(0.5·(d + 0.5) − 0.5, 0) = 0, 0.25, 0.75, 1.25 (clamped
        // to the last pixel); the height axis (1 → 1) is copied.
        let y = run(
            "name: r\nop: resize_bilinear\nparams: { size: [1, 4] }\n",
            &[x()],
        );
        assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 1, 4]));
        assert_close(y[0].f32().unwrap(), &[0.0, 0.25, 0.75, 1.0], 1e-6);
        // Corners aligned: sources d/3.
        let y = run(
            "name: r\nop: resize_bilinear\nparams: { size: [1, 4], align_corners: true }\n",
            &[x()],
        );
        assert_close(y[0].f32().unwrap(), &[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0], 1e-6);
    }

    #[test]
    fn infer_rejects_empty_input_and_wrong_rank() {
        let node = "name: r\nop: resize_bilinear\nparams: { size: [4, 4] }\n";
        let e = infer_err(node, &[Some(TensorSpec::f32(&[1, 2, 0, 3]))]);
        assert_eq!(
            e,
            "`x` must have a positive height and width to resize, got f32[1, 2, 0, 3]"
        );
        let e = infer_err(node, &[Some(TensorSpec::f32(&[2, 8, 8]))]);
        assert_eq!(e, "`x` must be f32[N, C, H, W], got f32[2, 8, 8]");
    }

    #[test]
    fn size_is_required_and_positive() {
        let e = try_configure("name: r\nop: resize_bilinear\n").unwrap_err();
        assert!(e.message.contains("missing field `size`"), "{e}");
        let e =
            try_configure("name: r\nop: resize_bilinear\nparams: { size: [4, 0] }\n").unwrap_err();
        assert!(e.message.contains("nonzero"), "{e}");
        assert_eq!((e.loc.line, e.loc.col), (3, 21));
    }
}
