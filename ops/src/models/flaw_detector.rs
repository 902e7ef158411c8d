//! `flaw_detector`: GCT's flaw detector (Ke et al., 2020; PixelSSL `ssl_gct.py`, `FlawDetector`
//! and `IBNorm`), a fully convolutional discriminator that reads an image and a task model's
//! class probabilities and predicts, per pixel, how wrong that prediction is. A two-input
//! architecture (`Model::INPUTS`: `image`, `probs`), so it cannot be evaluated (FS0123).
//!
//! Architecture (C = `width`, the official ndf = 64; every conv 4×4 with padding 1 and a bias,
//! each but the last followed by IBNorm and leaky relu 0.2):
//!
//! | module | what | side |
//! | --- | --- | --- |
//! | `cat` | image ‖ probs along channels (3 + K) | H |
//! | `conv1`, `ibn1` | stride 2 to C | ⌊H/2⌋ |
//! | `conv<i>`, `ibn<i>`, i = 2 .. 1 + `stages` | stride 2 to C·2^(i−1) | halved |
//! | `conv<i>_1`, `ibn<i>_1` | stride 1, same width | minus 1 |
//! | `classifier` | stride 2 to 1 channel | halved |
//! | `resize` | bilinear, align_corners true, to H × W | H |
//!
//! IBNorm(c): batch norm (affine, running statistics: `ibn<i>.bnorm.*`) on the first
//! ⌊c/2 + 0.5⌋ channels, instance norm without affine on the rest, concatenated
//! (`split` → `bn` | `instance_norm` → `concat`).
//!
//! The official network has `stages: 3` (conv2..conv4 pairs); on a 321-pixel crop its map is
//! 9×9 before the resize, but on 64 pixels it would be 1×1. `stages: 1` keeps 7×7 at 64 px (3×3
//! at 32). Weights start as `nn.Conv2d`'s default, U(±1/√fan_in) for weight and bias (PyTorch's
//! `kaiming_uniform_(a = √5)` bound), BN at PyTorch's defaults. The output is the raw map (the
//! official code does not activate it: its criterion is an MSE against a target in [0, 1]).
//!
//! Not here: the task models, the flaw map's post-processing (`blur_map`, `minmax_normalize`
//! in the graph), evaluation.

use crate::forward::concat::{self, Concat};
use crate::forward::conv2d::{self, Conv2d};
use crate::forward::instance_norm::{self, InstanceNorm};
use crate::forward::leaky_relu::{self, LeakyRelu};
use crate::forward::resize_bilinear::{self, ResizeBilinear};
use crate::forward::split::{self, Split};
use crate::models::layers::{bn, channels, image_size, nonzero, single};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Init, Model, Tracer};
use flowseg_engine::{Port, TensorSpec};
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `flaw_detector` architecture.
pub struct FlawDetector;

/// Params of `flaw_detector`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// K, the channels of `probs` (filled in from the data source when left out, like every
    /// model's `classes`); checked against the input.
    #[serde(default)]
    pub classes: Option<NonZeroUsize>,
    /// C, the first conv's channels (the official ndf); default 64.
    #[serde(default = "default_width")]
    pub width: NonZeroUsize,
    /// Stride-2 / stride-1 conv pairs after `conv1`; default 3 (the official network).
    #[serde(default = "default_stages")]
    pub stages: usize,
}

fn default_width() -> NonZeroUsize {
    NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN)
}

fn default_stages() -> usize {
    3
}

/// Module `name`: a 4×4 conv with padding 1 and a bias to `co` channels, `nn.Conv2d`'s default
/// init (weight and bias U(±1/√(Ci·16))).
fn conv4(
    t: &mut Tracer<'_>,
    name: &str,
    x: ValueRef,
    co: usize,
    stride: usize,
) -> Result<ValueRef, String> {
    let ci = channels(t, &x)?;
    let bound = 1.0 / ((ci * 16) as f32).sqrt();
    let (w, b) = t.scope(name, |t| {
        Ok((
            t.param(
                "weight",
                TensorSpec::f32(&[co, ci, 4, 4]),
                Init::Uniform { bound },
            )?,
            t.param("bias", TensorSpec::f32(&[co]), Init::Uniform { bound })?,
        ))
    })?;
    let params = conv2d::Params {
        stride: nonzero(stride),
        padding: 1,
        dilation: NonZeroUsize::MIN,
        groups: NonZeroUsize::MIN,
    };
    single(t.op::<Conv2d>(name, params, vec![Some(x), Some(w), Some(b)])?)
}

/// Module `name`: IBNorm — BN on the first ⌊c/2 + 0.5⌋ channels (`name.bnorm`), instance norm
/// on the rest (`name.inorm`), joined.
fn ibn(t: &mut Tracer<'_>, name: &str, x: ValueRef) -> Result<ValueRef, String> {
    let c = channels(t, &x)?;
    // int(c·0.5 + 0.5) = ⌈c/2⌉.
    let at = c.div_ceil(2);
    t.scope(name, |t| {
        if at == c {
            return bn(t, "bnorm", x);
        }
        let params = split::Params {
            at: Some(at),
            ..split::Params::default()
        };
        let halves = t.op::<Split>("split", params, vec![Some(x), None])?;
        let [head, tail] = <[ValueRef; 2]>::try_from(halves).map_err(|_| "two halves")?;
        let b = bn(t, "bnorm", head)?;
        let params = instance_norm::Params { eps: 1e-5 };
        let i = single(t.op::<InstanceNorm>("inorm", params, vec![Some(tail)])?)?;
        single(t.op::<Concat>("cat", concat::Params::default(), vec![Some(b), Some(i)])?)
    })
}

/// conv → IBNorm → leaky relu 0.2, as modules `conv<suffix>` / `ibn<suffix>`.
fn block(
    t: &mut Tracer<'_>,
    suffix: &str,
    x: ValueRef,
    co: usize,
    stride: usize,
) -> Result<ValueRef, String> {
    let y = conv4(t, &format!("conv{suffix}"), x, co, stride)?;
    let y = ibn(t, &format!("ibn{suffix}"), y)?;
    let slope = leaky_relu::Params { slope: 0.2 };
    single(t.op::<LeakyRelu>(&format!("act{suffix}"), slope, vec![Some(y)])?)
}

impl Model for FlawDetector {
    const NAME: &'static str = "flaw_detector";
    const SUMMARY: &'static str =
        "GCT's flaw detector: image ‖ probabilities → per-pixel flaw map (4×4 convs, IBNorm)";
    const INPUTS: &'static [Port] = &[
        Port::req("image", "f32[N, 3, H, W]"),
        Port::req(
            "probs",
            "f32[N, K, H, W]: a task model's class probabilities",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req(
        "flawmap",
        "f32[N, 1, H, W]: the predicted flaw of each pixel (raw, trained towards [0, 1])",
    )];
    type Params = Params;

    fn trace(_: &Params, _: &mut Tracer<'_>, _: ValueRef) -> Result<Vec<ValueRef>, String> {
        Err("`flaw_detector` reads `image` and `probs`".into())
    }

    fn trace_inputs(
        p: &Params,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let [image, probs] = <[ValueRef; 2]>::try_from(inputs).map_err(|_| "two inputs")?;
        let [h, w] = image_size(t, &image)?;
        let ps = t
            .spec(&probs)
            .and_then(|s| s.as_nchw())
            .ok_or("`probs` must be f32[N, K, H, W]")?;
        let is = t.spec(&image).and_then(|s| s.as_nchw());
        if is.map(|s| (s.n, s.h, s.w)) != Some((ps.n, ps.h, ps.w)) {
            return Err(format!(
                "`probs` must have the N, H, W of `image` ({}), got {}",
                t.spec(&image).map_or_else(String::new, |s| s.to_string()),
                TensorSpec::nchw(ps)
            ));
        }
        if let Some(k) = p.classes {
            if k.get() != ps.c {
                return Err(format!(
                    "`probs` has {} channels but `classes` is {k}",
                    ps.c
                ));
            }
        }
        let c = p.width.get();
        let x = single(t.op::<Concat>(
            "cat",
            concat::Params::default(),
            vec![Some(image), Some(probs)],
        )?)?;
        let mut x = block(t, "1", x, c, 2)?;
        for i in 2..2 + p.stages {
            let co = c << (i - 1);
            x = block(t, &i.to_string(), x, co, 2)?;
            x = block(t, &format!("{i}_1"), x, co, 1)?;
        }
        let x = conv4(t, "classifier", x, 1, 2)?;
        let params = resize_bilinear::Params {
            size: Some([nonzero(h), nonzero(w)]),
            align_corners: true,
        };
        Ok(vec![single(t.op::<ResizeBilinear>(
            "resize",
            params,
            vec![Some(x)],
        )?)?])
    }
}

#[cfg(test)]
mod tests {
    use flowseg_engine::graph::Env;
    use flowseg_engine::spec::parse_graph;
    use flowseg_engine::{ir, TensorSpec};
    use std::collections::BTreeMap;

    fn build(side: usize, params: &str) -> Result<flowseg_engine::graph::Graph, String> {
        let yaml = format!(
            "name: t\ntrain: {{ iterations: 1, seed: 0 }}\nmodels:\n  fd: {{ arch: flaw_detector, params: {params} }}\n\
             nodes:\n  - {{ name: d, op: forward, inputs: {{ image: batch.image, probs: batch.p }}, params: {{ model: fd }} }}\n"
        );
        let (spec, _) = parse_graph(&yaml, &[]).map_err(|e| format!("{e:?}"))?;
        let env = Env {
            batch: BTreeMap::from([
                ("image".to_owned(), TensorSpec::f32(&[2, 3, side, side])),
                ("p".to_owned(), TensorSpec::f32(&[2, 5, side, side])),
            ]),
            state: BTreeMap::new(),
            hidden: Default::default(),
        };
        let r = crate::builtin_registry().map_err(|e| e.to_string())?;
        ir::build(&spec, &r, &env).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn shapes_and_state_names_follow_the_official_network() {
        // width 16, one stage pair at 64 px: 32 (conv1), 16 (conv2), 15 (conv2_1), 7 (classifier).
        let g = build(64, "{ width: 16, stages: 1 }").unwrap();
        let out = g.spec_of(&g.outputs["d.flawmap"]).cloned();
        assert_eq!(out, Some(TensorSpec::f32(&[2, 1, 64, 64])));
        let shape = |name: &str| g.params.get(name).map(|d| d.spec.shape.clone());
        assert_eq!(shape("fd.conv1.weight"), Some(vec![16, 8, 4, 4]));
        assert_eq!(shape("fd.conv2.weight"), Some(vec![32, 16, 4, 4]));
        assert_eq!(shape("fd.conv2_1.weight"), Some(vec![32, 32, 4, 4]));
        assert_eq!(shape("fd.classifier.weight"), Some(vec![1, 32, 4, 4]));
        // IBNorm: BN on ⌈c/2⌉ channels, instance norm (no parameters) on the rest.
        assert_eq!(shape("fd.ibn1.bnorm.weight"), Some(vec![8]));
        assert_eq!(shape("fd.ibn2_1.bnorm.running_var"), Some(vec![16]));
        assert!(
            g.params.keys().all(|k| !k.contains("inorm")),
            "{:?}",
            g.params.keys()
        );
        let side = |node: &str| {
            let k = g.nodes.iter().position(|n| n.name.value == node).unwrap();
            g.nodes[k].outputs[0].shape.clone()
        };
        assert_eq!(side("d/conv1"), vec![2, 16, 32, 32]);
        assert_eq!(side("d/conv2"), vec![2, 32, 16, 16]);
        assert_eq!(side("d/conv2_1"), vec![2, 32, 15, 15]);
        assert_eq!(side("d/classifier"), vec![2, 1, 7, 7]);
    }

    #[test]
    fn the_class_count_is_checked_against_probs() {
        let e = build(32, "{ classes: 4, width: 8, stages: 1 }").unwrap_err();
        assert!(
            e.contains("`probs` has 5 channels but `classes` is 4"),
            "{e}"
        );
        build(32, "{ classes: 5, width: 8, stages: 1 }").unwrap();
    }
}
