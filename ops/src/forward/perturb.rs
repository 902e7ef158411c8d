//! What CCT's feature perturbations (`feature_noise`, `feature_drop`, `guided_mask`) share: the
//! backward of y = x ⊙ m with a constant multiplier m broadcast over the batch or the channels,
//! dx = dy ⊙ m — the noise of F-Noise and the masks of F-Drop and the guided masks are constants
//! (drawn, or from comparisons; CCT computes them without gradient too).
//!
//! Not here: the perturbations themselves (one file each), dropout (`dropout.rs`, its own
//! backward).

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{mul_broadcast_fwd, Broadcast};
use serde::Deserialize;

/// Which axis the multiplier is shared over (the kernel's [`Broadcast`], in YAML form for the
/// backward node's params).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Over {
    /// m: [C, H, W].
    Batch,
    /// m: [N, H, W].
    Channels,
}

impl From<Over> for Broadcast {
    fn from(o: Over) -> Self {
        match o {
            Over::Batch => Broadcast::OverBatch,
            Over::Channels => Broadcast::OverChannels,
        }
    }
}

/// The spec of the multiplier of `x` shared over `over`.
pub(crate) fn multiplier_spec(x: flowseg_kernels::Nchw, over: Over) -> TensorSpec {
    match over {
        Over::Batch => TensorSpec::f32(&[x.c, x.h, x.w]),
        Over::Channels => TensorSpec::f32(&[x.n, x.h, x.w]),
    }
}

/// The VJP shared by the perturbations: one `masked_bwd` node reading dy and the forward's
/// multiplier (its output `mask_port`).
pub(crate) fn backward(
    g: &mut Vjp<'_>,
    outputs: &[Port],
    mask_port: usize,
    over: Over,
) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let dy = grad::grad_output(g, outputs, 0)?;
    let mask = g.output(mask_port);
    let [dx] = grad::outputs(g.emit::<MaskedBwd>(BwdParams { over }, vec![Some(mask), Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of a constant-multiplier perturbation (emitted by the VJPs, not registered):
/// dx = dy ⊙ m, m broadcast as in the forward.
pub(crate) struct MaskedBwd;

/// Params of `masked_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BwdParams {
    over: Over,
}

impl Op for MaskedBwd {
    const NAME: &'static str = "masked_bwd";
    const SUMMARY: &'static str = "gradient of a constant-multiplier perturbation: dx = dy ⊙ m";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "mask",
            "f32[C, H, W] or f32[N, H, W]: the forward's multiplier",
        ),
        Port::req(
            "dy",
            "f32[N, C, H, W]: the gradient of the perturbed features",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32[N, C, H, W]")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        let want = multiplier_spec(dy, p.over);
        let mask = io::spec(Self::INPUTS, inputs, 0)?;
        if *mask != want {
            return Err(format!("`mask` must be {want}, got {mask}"));
        }
        Ok(vec![TensorSpec::nchw(dy)])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 1)?;
        let mask = io::f32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(mul_broadcast_fwd(dy, mask, shape, p.over.into(), dx)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 1)?;
        let mask = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let over = p.over.into();
        Ok(cuda::elementwise::mul_broadcast_fwd(
            cx.dev, &dy, &mask, shape, over, &mut dx,
        )?)
    }
}
