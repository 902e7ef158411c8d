//! `cam_classifier`: PseudoSeg's image classifier head on a shared feature map, with its class
//! activation map beside the logits (googleinterns/wss train_wss.py `_build_pseudo_seg`: the
//! backbone's `global_pool=True, num_classes=K−1` logits; core/train_utils_core.py
//! `compute_cam_v2` takes Grad-CAM of them at the last feature map).
//!
//! Input `features`: the feature map A f32[N, D, h, w] (e.g. the U-Net's bottleneck `features`;
//! not an image, so evaluation never runs this model). Params: `classes` K (the data's class
//! count, background included: the head scores the K − 1 foreground classes).
//!
//! Outputs, with W `cls.weight` [K−1, D, 1, 1] and b `cls.bias` [K−1]:
//! * `logits` f32[N, K−1, 1, 1] = W·GAP(A) + b (the multi-label logits; slim's `logits` conv);
//! * `scores` f32[N, K−1, h, w] = W∗A (the same 1×1 conv on every position, no bias).
//!
//! Why `scores` is Grad-CAM: for logit_c = Σ_k W_ck·mean_hw A_k + b_c, ∂logit_c/∂A_k(y, x) =
//! W_ck/(h·w), so Grad-CAM's channel weights (the spatial mean of that gradient) are W_ck/(h·w)
//! and its map ReLU(Σ_k W_ck·A_k)/(h·w) = ReLU(scores_c)/(h·w); `cam_normalize` divides each map
//! by its maximum, which cancels the positive factor. One dense map instead of K − 1 backward
//! passes, so a graph need not know K (ops/tests/grad_cam.rs checks the identity against the
//! engine's `grad` op).
//!
//! Not here: the official Xception's pre-logit dropout (keep 0.5 in its train-mode classifier
//! pass; none here), the backbone (the graph passes the student's encoder features in).

use crate::forward::conv2d::{self, Conv2d};
use crate::forward::global_avg_pool::GlobalAvgPool;
use crate::models::layers::{channels, single};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Init, Model, Tracer};
use flowseg_engine::{NoParams, Port, TensorSpec};
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `cam_classifier` architecture.
pub struct CamClassifier;

/// Params of `cam_classifier`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// K: classes including the background (at least 2); the head scores K − 1. A graph may
    /// leave it to the data source's class count.
    pub classes: NonZeroUsize,
}

impl Model for CamClassifier {
    const NAME: &'static str = "cam_classifier";
    const SUMMARY: &'static str =
        "multi-label classifier head (GAP + 1×1 conv) on a feature map, with its dense class map";
    const INPUTS: &'static [Port] = &[Port::req(
        "features",
        "f32[N, D, h, w]: the feature map the classifier pools (A of Grad-CAM)",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "logits",
            "f32[N, K−1, 1, 1]: foreground class logits W·GAP(A) + b",
        ),
        Port::req(
            "scores",
            "f32[N, K−1, h, w]: W∗A, the class activation map (Grad-CAM up to a factor 1/(h·w))",
        ),
    ];
    type Params = Params;

    fn trace(_: &Params, _: &mut Tracer<'_>, _: ValueRef) -> Result<Vec<ValueRef>, String> {
        Err("`cam_classifier` takes `features`, not an image".into())
    }

    fn trace_inputs(
        p: &Params,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let features = single(inputs)?;
        let spec = t.spec(&features).ok_or("`features` has no spec")?;
        if spec.as_nchw().is_none_or(|s| s.h == 0 || s.w == 0) {
            return Err(format!(
                "the input must be a feature map f32[N, D, h, w] with h, w ≥ 1, got {spec}"
            ));
        }
        let foreground = p.classes.get() - 1;
        if foreground == 0 {
            return Err("`classes` must be at least 2 (background and one class)".into());
        }
        let d = channels(t, &features)?;
        let (weight, bias) = t.scope("cls", |t| {
            let weight = t.param(
                "weight",
                TensorSpec::f32(&[foreground, d, 1, 1]),
                Init::KaimingNormal { fan_in: d },
            )?;
            let bias = t.param("bias", TensorSpec::f32(&[foreground]), Init::Zeros)?;
            Ok((weight, bias))
        })?;
        let one_by_one = conv2d::Params {
            stride: NonZeroUsize::MIN,
            padding: 0,
            dilation: NonZeroUsize::MIN,
            groups: NonZeroUsize::MIN,
        };
        let pooled =
            single(t.op::<GlobalAvgPool>("pool", NoParams {}, vec![Some(features.clone())])?)?;
        let logits = single(t.op::<Conv2d>(
            "logits",
            one_by_one.clone(),
            vec![Some(pooled), Some(weight.clone()), Some(bias)],
        )?)?;
        let scores = single(t.op::<Conv2d>(
            "scores",
            one_by_one,
            vec![Some(features), Some(weight), None],
        )?)?;
        Ok(vec![logits, scores])
    }
}
