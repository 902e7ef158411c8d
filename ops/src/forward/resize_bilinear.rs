//! `resize_bilinear`: `F.interpolate(x, size=(h, w), mode='bilinear', align_corners)` to an
//! explicit output size. Per axis with input extent `in` and output extent `out`, output index
//! d reads source position s = max((d + 0.5)·in/out − 0.5, 0) (align_corners false) or
//! s = d·(in − 1)/(out − 1) (true), and y blends the two nearest source pixels ⌊s⌋ and
//! ⌊s⌋ + 1 (clamped to the edge) with weights 1 − frac(s) and frac(s), along H then W.
//!
//! Shapes: `x` f32[N, C, H, W] → `y` f32[N, C, h, w]; H, W, h and w must be positive.
//!
//! Forward only: the vector-Jacobian rule (the adjoint scatter) and the CUDA launcher come later.

use flowseg_engine::op::io;
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::resize::resize_bilinear_fwd;
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
