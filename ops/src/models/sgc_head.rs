//! `sgc_head`: PseudoSeg's self-attention Grad-CAM head (SGC): class activation maps refined by
//! attention among pixels whose similarity comes from a hypercolumn of features, a background
//! score prepended, then a learned per-pixel normalisation into K class logits
//! (googleinterns/wss core/train_utils_core.py `compute_self_att_v2`, `linformer=False`).
//!
//! Inputs: `hyper` f32[N, Dh, h, w], the hypercolumn, and `cam` f32[N, K − 1, h, w], the
//! normalised CAMs (`cam_normalize`). Both are constants in the official code
//! (`tf.stop_gradient` on the hypercolumn and the seed), so the graph detaches them.
//!
//! The head, per image, with P = h·w positions:
//! * key, query = 1×1 convs of the hypercolumn to `attention_dim` channels, no bias
//!   (`hyper_column.key`, `hyper_column.query`);
//! * att = `self_attention`(query, key, v = cam), scale 1/√attention_dim, no mask (no padding);
//! * s = att + cam (the skip connection: scores in [0, 2]);
//! * `prepend_background` with offset 2 → K channels;
//! * logits = BN(1×1 conv to K, no bias) (`pixel_normalization`, BN in the forward's mode).
//!   The official BN is TF-slim's default: no learned scale, ε 1e-3 (`bn: slim`, the default);
//!   `bn: torch` gives it `nn.BatchNorm2d`'s learned γ and ε 1e-5 instead.
//!
//! Params: `classes` K (the data's), `attention_dim` (default 128, the official flag's), `bn`.
//! Output `logits` f32[N, K, h, w].
//!
//! Not here: the padding mask (`valid`: the shipped crops have no padding), Linformer-style
//! down-sampling, the hypercolumn itself (built in the graph from the encoder's features).

use crate::forward::add::{self, Add};
use crate::forward::prepend_background::{self, PrependBackground};
use crate::forward::self_attention::{self, SelfAttention};
use crate::models::layers::{bn_with, channels, conv, single, BnSpec, Conv};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Model, Tracer};
use flowseg_engine::Port;
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
    /// The pixel normalisation's batch norm: `slim` (default, the official: no learned scale,
    /// ε 1e-3) or `torch` (learned γ, ε 1e-5).
    #[serde(default)]
    pub bn: BnKind,
}

/// Which batch norm normalises the head's logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnKind {
    /// TF-slim's `batch_norm` defaults, as the official code builds it.
    #[default]
    Slim,
    /// PyTorch's `nn.BatchNorm2d`.
    Torch,
}

fn default_attention_dim() -> NonZeroUsize {
    NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN)
}

impl Model for SgcHead {
    const NAME: &'static str = "sgc_head";
    const SUMMARY: &'static str =
        "PseudoSeg's self-attention Grad-CAM head: hypercolumn attention over CAMs → K logits";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "hyper",
            "f32[N, Dh, h, w]: the hypercolumn keys and queries are computed from",
        ),
        Port::req(
            "cam",
            "f32[N, K − 1, h, w]: the normalised CAMs (the values)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "logits",
        "f32[N, K, h, w]: class scores at the CAMs' size (class 0 the background)",
    )];
    type Params = Params;

    fn trace(_: &Params, _: &mut Tracer<'_>, _: ValueRef) -> Result<Vec<ValueRef>, String> {
        Err("`sgc_head` takes `hyper` and `cam`, not an image".into())
    }

    fn trace_inputs(
        p: &Params,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let [hyper, cam] = <[ValueRef; 2]>::try_from(inputs)
            .map_err(|got| format!("`sgc_head` takes 2 inputs, got {}", got.len()))?;
        let cams = p.classes.get() - 1;
        if cams == 0 {
            return Err("`classes` must be at least 2 (background and one class)".into());
        }
        let got = channels(t, &cam)?;
        if got != cams {
            return Err(format!(
                "`cam` must hold the {cams} foreground maps of K = {} classes, got {got} channels",
                p.classes
            ));
        }
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
    let skipped = single(t.op::<Add>(
        "skip",
        add::Params::default(),
        vec![Some(attended), Some(cam)],
    )?)?;
    let background = prepend_background::Params { offset: 2.0 };
    let scores =
        single(t.op::<PrependBackground>("background", background, vec![Some(skipped)])?)?;
    t.scope("pixel_normalization", |t| {
        let y = conv(t, "conv", scores, Conv::new(p.classes.get(), 1))?;
        let spec = match p.bn {
            BnKind::Slim => BnSpec::SLIM,
            BnKind::Torch => BnSpec::TORCH,
        };
        bn_with(t, "bn", y, spec)
    })
}
