//! `resize_bilinear`: `F.interpolate(x, size=(h, w), mode='bilinear', align_corners)` to an
//! output size given either as `size` or by another tensor (`like`, whose last two dims lend
//! [h, w]: a graph that resizes a head's logits to the decoder's need not spell the crop size,
//! so it runs at every `data.size`). Per axis with input extent `in` and output extent `out`,
//! output index d reads source position s = max((d + 0.5)·in/out − 0.5, 0) (align_corners false) or
//! s = d·(in − 1)/(out − 1) (true), and y blends the two nearest source pixels ⌊s⌋ and
//! ⌊s⌋ + 1 (clamped to the edge) with weights 1 − frac(s) and frac(s), along H then W.
//!
//! Shapes: `x` f32[N, C, H, W], `like` (optional) [N', C', h, w] or [N', h, w] of any dtype →
//! `y` f32[N, C, h, w]; H, W, h and w must be positive. Exactly one of `size` and `like`.
//!
//! Backward: `resize_bilinear_bwd` (below, unregistered) scatters dy back through the same taps
//! and weights (the adjoint of the blend); it needs only dy and the input's size. `like` lends a
//! shape, never values: where it depends on trainable state it gets an exact zero gradient
//! (`zero_grad_like`, below). Its kernels' CUDA twins exist (kernels/src/cuda); the engine does
//! not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, NoParams, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
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
    /// Output `[height, width]`, both positive (shapes are static, so a size is given, never a
    /// scale factor). Leave it out to take the size from the `like` input instead.
    #[serde(default)]
    pub size: Option<[NonZeroUsize; 2]>,
    /// PyTorch's `align_corners`: true maps the corner pixels' centres onto each other; default
    /// false (pixel areas aligned, as `F.interpolate` defaults).
    #[serde(default)]
    pub align_corners: bool,
}

impl Op for ResizeBilinear {
    const NAME: &'static str = "resize_bilinear";
    const SUMMARY: &'static str =
        "bilinear resize of an NCHW map to a fixed [h, w] or another map's (PyTorch semantics)";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W], H and W positive"),
        Port::opt(
            "like",
            "[*, *, h, w] or [*, h, w], any dtype: lends the output size (values unread); \
             instead of `size`",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "y",
        "f32[N, C, h, w] with [h, w] = `size` or the last two dims of `like`",
    )];
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
        // The size from a trainable `like`, which gets a zero gradient.
        GradCase {
            params: "{ align_corners: true }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("like", Feed::Trainable(&[2, 1, 4, 6])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if x.h == 0 || x.w == 0 {
            return Err(format!(
                "`x` must have a positive height and width to resize, got {}",
                TensorSpec::nchw(x)
            ));
        }
        let [h, w] = out_size(p, inputs.get(1).copied().flatten())?;
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
        let like = inputs.get(1).copied().flatten().map(Tensor::spec);
        let [h, w] = out_size(p, like).map_err(|problem| OpError::Input {
            port: "like",
            problem,
        })?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(resize_bilinear_fwd(x, shape, h, w, p.align_corners, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let like = inputs.get(1).copied().flatten().map(|t| &t.spec);
        let [h, w] = out_size(p, like).map_err(|problem| OpError::Input {
            port: "like",
            problem,
        })?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::resize::resize_bilinear_fwd(
            cx.dev,
            &x,
            shape,
            h,
            w,
            p.align_corners,
            &mut y,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The output [h, w]: `size`, or the last two dims of `like`; exactly one of them.
fn out_size(p: &Params, like: Option<&TensorSpec>) -> Result<[usize; 2], String> {
    match (p.size, like) {
        (Some(size), None) => Ok(size.map(NonZeroUsize::get)),
        (None, Some(like)) => match like.shape[..] {
            [_, h, w] | [_, _, h, w] if h > 0 && w > 0 => Ok([h, w]),
            _ => Err(format!(
                "`like` must be [N, C, h, w] or [N, h, w] with h, w positive, got {like}"
            )),
        },
        (Some(_), Some(_)) => Err(
            "give the output size once: either `size` (a param) or `like` (an input), not both"
                .into(),
        ),
        (None, None) => Err(
            "the output size is missing: give `size: [h, w]` as a param or connect `like`".into(),
        ),
    }
}

/// The VJP of `resize_bilinear`: one `resize_bilinear_bwd` node reading only dy; the input's
/// [H, W] goes into its params, so x need not be kept for the backward. A `like` that needs a
/// gradient gets zeros (its values never reach `y`).
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if g.needs_grad(1) {
        let like = grad::input(g, ResizeBilinear::INPUTS, 1)?;
        let [zeros] = grad::outputs(g.emit::<ZeroGradLike>(NoParams {}, vec![Some(like)])?)?;
        g.set_grad(1, zeros);
    }
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

/// The gradient of `like` (emitted by the VJP, not registered): zeros of its spec, because only
/// its shape is read.
struct ZeroGradLike;

impl Op for ZeroGradLike {
    const NAME: &'static str = "zero_grad_like";
    const SUMMARY: &'static str = "the zero gradient of an input whose values are never read";
    const INPUTS: &'static [Port] = &[Port::req("like", "f32: the shape-only input")];
    const OUTPUTS: &'static [Port] = &[Port::req("dlike", "zeros like `like`")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        io::f32_out(Self::OUTPUTS, outputs, 0)?.fill(0.0);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        _: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cx.dev.zero::<f32>(&mut y)?)
    }
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

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

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
        let shape = Nchw::new(dys.n, dys.c, h, w);
        Ok(cuda::resize::resize_bilinear_bwd(
            cx.dev,
            &dy,
            shape,
            dys.h,
            dys.w,
            p.align_corners,
            &mut dx,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, i32s, infer_err, run, try_configure};
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
    fn like_lends_the_size() {
        let node = "name: r\nop: resize_bilinear\nparams: { align_corners: true }\n";
        let x = || Some(f32s(&[1, 1, 1, 2], &[0.0, 1.0]));
        // A label map [N, h, w] (i32) and a feature map [N, C, h, w] both lend [1, 4].
        for like in [i32s(&[3, 1, 4], &[0; 12]), f32s(&[1, 5, 1, 4], &[0.0; 20])] {
            let y = run(node, &[x(), Some(like)]);
            assert_eq!(y[0].spec(), &TensorSpec::f32(&[1, 1, 1, 4]));
            assert_close(y[0].f32().unwrap(), &[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0], 1e-6);
        }
    }

    #[test]
    fn exactly_one_of_size_and_like() {
        let x = Some(TensorSpec::f32(&[1, 2, 3, 3]));
        let like = Some(TensorSpec::f32(&[1, 2, 6, 6]));
        let e = infer_err("name: r\nop: resize_bilinear\n", &[x.clone(), None]);
        assert_eq!(
            e,
            "the output size is missing: give `size: [h, w]` as a param or connect `like`"
        );
        let both = "name: r\nop: resize_bilinear\nparams: { size: [4, 4] }\n";
        let e = infer_err(both, &[x.clone(), like]);
        assert_eq!(
            e,
            "give the output size once: either `size` (a param) or `like` (an input), not both"
        );
        let e = infer_err(
            "name: r\nop: resize_bilinear\n",
            &[x, Some(TensorSpec::f32(&[6]))],
        );
        assert_eq!(
            e,
            "`like` must be [N, C, h, w] or [N, h, w] with h, w positive, got f32[6]"
        );
    }

    #[test]
    fn size_is_positive() {
        let e =
            try_configure("name: r\nop: resize_bilinear\nparams: { size: [4, 0] }\n").unwrap_err();
        assert!(e.message.contains("nonzero"), "{e}");
        assert_eq!((e.loc.line, e.loc.col), (3, 21));
    }
}
