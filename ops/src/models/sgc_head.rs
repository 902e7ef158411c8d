//! `sgc_head`: PseudoSeg's self-attention Grad-CAM head (SGC): class activation maps refined by
//! attention among pixels whose similarity comes from a hypercolumn of features, a background
//! score prepended, then a learned per-pixel normalisation into K class logits
//! (googleinterns/wss core/train_utils_core.py `compute_self_att_v2`, `linformer=False`).
//!
//! Input: one map f32[N, Dh + K − 1, h, w], the hypercolumn (Dh channels) followed by the K − 1
//! normalised CAMs (`cam_normalize`), concatenated in the graph; the head splits it at Dh. Why
//! one input: a `forward` node feeds a model one `image` today; when multi-input models land
//! (the engine feature E2 of docs/plans/seed-methods.md), this becomes two inputs, `hyper` and
//! `cam`, with no change to the head itself ([`head`]). The split has no backward: both parts
//! are constants in the official code (`tf.stop_gradient` on the hypercolumn and the seed), so
//! the graph detaches them and a gradient reaching the split is an error, not a silent drop.
//!
//! The head, per image, with P = h·w positions:
//! * key, query = 1×1 convs of the hypercolumn to `attention_dim` channels, no bias
//!   (`hyper_column.key`, `hyper_column.query`);
//! * att = `self_attention`(query, key, v = cam), scale 1/√attention_dim, no mask (no padding);
//! * s = att + cam (the skip connection: scores in [0, 2]);
//! * `prepend_background` with offset 2 → K channels;
//! * logits = BN(1×1 conv to K, no bias) (`pixel_normalization`, BN in the forward's mode).
//!
//! Params: `classes` K (the data's), `attention_dim` (default 128, the official flag's).
//! Output `logits` f32[N, K, h, w].
//!
//! Not here: the padding mask (`valid`: the shipped crops have no padding), Linformer-style
//! down-sampling, the hypercolumn itself (built in the graph from the encoder's features).

use crate::forward::add::Add;
use crate::forward::prepend_background::{self, PrependBackground};
use crate::forward::self_attention::{self, SelfAttention};
use crate::models::layers::{bn, channels, conv, single, Conv};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Model, Tracer};
use flowseg_engine::op::io;
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::elementwise::slice_channels_fwd;
use flowseg_kernels::Nchw;
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `sgc_head` architecture.
pub struct SgcHead;

/// Params of `sgc_head`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// K: classes including the background (at least 2); the input carries K − 1 CAMs. A graph
    /// may leave it to the data source's class count.
    pub classes: NonZeroUsize,
    /// Channels of the keys and queries; default 128 (the official `attention_dim`).
    #[serde(default = "default_attention_dim")]
    pub attention_dim: NonZeroUsize,
}

fn default_attention_dim() -> NonZeroUsize {
    NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN)
}

impl Model for SgcHead {
    const NAME: &'static str = "sgc_head";
    const SUMMARY: &'static str =
        "PseudoSeg's self-attention Grad-CAM head: CAMs refined by hypercolumn attention → K logits";
    const OUTPUTS: &'static [Port] = &[Port::req(
        "logits",
        "f32[N, K, h, w]: class scores at the CAMs' size (class 0 the background)",
    )];
    type Params = Params;

    fn trace(p: &Params, t: &mut Tracer<'_>, input: ValueRef) -> Result<Vec<ValueRef>, String> {
        let cams = p.classes.get() - 1;
        if cams == 0 {
            return Err("`classes` must be at least 2 (background and one class)".into());
        }
        let total = channels(t, &input)?;
        if total <= cams {
            return Err(format!(
                "the input must hold a hypercolumn and then the {cams} CAMs (more than {cams} \
                 channels), got {total}"
            ));
        }
        let split = |t: &mut Tracer<'_>, leaf: &str, start: usize, end: usize| {
            let params = SplitParams { start, end };
            single(t.op::<SplitInput>(leaf, params, vec![Some(input.clone())])?)
        };
        let hyper = split(t, "hyper", 0, total - cams)?;
        let cam = split(t, "cam", total - cams, total)?;
        Ok(vec![head(p, t, hyper, cam)?])
    }
}

/// The head on its two inputs: the hypercolumn and the K − 1 CAMs (see the file header).
fn head(
    p: &Params,
    t: &mut Tracer<'_>,
    hyper: ValueRef,
    cam: ValueRef,
) -> Result<ValueRef, String> {
    let dim = p.attention_dim.get();
    let (key, query) = t.scope("hyper_column", |t| {
        let key = conv(t, "key", hyper.clone(), Conv::new(dim, 1))?;
        let query = conv(t, "query", hyper.clone(), Conv::new(dim, 1))?;
        Ok((key, query))
    })?;
    let attention = self_attention::Params { scale: None };
    let attended = single(t.op::<SelfAttention>(
        "attention",
        attention,
        vec![Some(query), Some(key), Some(cam.clone()), None],
    )?)?;
    let skipped = single(t.op::<Add>("skip", NoParams {}, vec![Some(attended), Some(cam)])?)?;
    let background = prepend_background::Params { offset: 2.0 };
    let scores =
        single(t.op::<PrependBackground>("background", background, vec![Some(skipped)])?)?;
    t.scope("pixel_normalization", |t| {
        let y = conv(t, "conv", scores, Conv::new(p.classes.get(), 1))?;
        bn(t, "bn", y)
    })
}

/// Channels `start..end` of the head's one input (unregistered; emitted by [`SgcHead::trace`]
/// only). No backward: see the file header.
struct SplitInput;

/// Params of the split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitParams {
    /// First channel.
    start: usize,
    /// One past the last channel.
    end: usize,
}

impl Op for SplitInput {
    const NAME: &'static str = "sgc_head_split";
    const SUMMARY: &'static str = "a channel range of sgc_head's input (no gradient passes)";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, h, w]")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[N, end − start, h, w]")];
    const EXAMPLE: &'static str = "";
    type Params = SplitParams;

    fn infer(p: &SplitParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if p.start > p.end || p.end > x.c {
            return Err(format!(
                "channels {}..{} are not inside {}",
                p.start,
                p.end,
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![TensorSpec::nchw(Nchw::new(
            x.n,
            p.end - p.start,
            x.h,
            x.w,
        ))])
    }

    fn cpu(
        p: &SplitParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(slice_channels_fwd(x, shape, p.start, p.end, y)?)
    }
}
