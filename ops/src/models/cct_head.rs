//! `cct_head`: CCT's auxiliary decoder at upscale 1 (yassouali/CCT models/decoders.py
//! `upsample(conv_in_ch, num_classes, upscale=1)`): one 1×1 convolution from the features to the
//! K classes, without bias, its weight Kaiming-normal over the fan-in (`nonlinearity='relu'`).
//! CCT's decoders upsample by PixelShuffle stages when the encoder's output is strided; here a
//! graph resizes the logits instead (graphs/cct.yaml: heads on the U-Net's stride-8 bottleneck,
//! `resize_bilinear` to the main decoder's output).
//!
//! A graph declares one `cct_head` model and gives each auxiliary decoder its own parameter set
//! with `forward`'s `instance:` (graphs/cct.yaml), so one optimizer trains all of them.
//!
//! Input: `features` f32[N, C, H, W] (any C). Output: `logits` f32[N, K, H, W]. State:
//! `<model>[.<instance>].conv.weight` [K, C, 1, 1].
//!
//! Not here: PixelShuffle upsampling stages, the main decoder (the U-Net's own `head`).

use crate::models::layers::{conv, single, Conv};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Model, Tracer};
use flowseg_engine::Port;
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `cct_head` architecture.
pub struct CctHead;

/// Params of `cct_head`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// K: classes, the channels of `logits` (required; a graph may leave it to the data
    /// source's class count).
    pub classes: NonZeroUsize,
}

impl Model for CctHead {
    const NAME: &'static str = "cct_head";
    const SUMMARY: &'static str =
        "CCT's auxiliary decoder at upscale 1: a bias-free 1×1 conv from features to classes";
    const INPUTS: &'static [Port] = &[Port::req("features", "f32[N, C, H, W] features")];
    const OUTPUTS: &'static [Port] = &[Port::req("logits", "f32[N, K, H, W] class scores")];
    type Params = Params;

    fn trace(_: &Params, _: &mut Tracer<'_>, _: ValueRef) -> Result<Vec<ValueRef>, String> {
        Err("`cct_head` takes `features`, not an image".into())
    }

    fn trace_inputs(
        p: &Params,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let features = single(inputs)?;
        Ok(vec![conv(
            t,
            "conv",
            features,
            Conv::new(p.classes.get(), 1),
        )?])
    }
}
