//! `deeplab_lite`: a small DeepLabv3+ — a residual trunk, a light ASPP head and the v3+ decoder
//! — sized to train on a CPU and to be the default student/teacher of the method graphs.
//!
//! Architecture (C = `width`, K = `classes`, the input f32[N, 3, H, W]; every 3×3 conv is
//! padded to keep its size, so a stride-2 one maps a side s to ⌈s/2⌉, written s/2 below; every
//! conv but the classifier is bias-free, the BN after it supplying the shift):
//!
//! | module | what | output |
//! | --- | --- | --- |
//! | `stem` | conv 3×3 stride 2 → BN → relu | [N, C, H/2, W/2] |
//! | `layer1` | `depth` basic blocks, stride 1 | [N, C, H/2, W/2] |
//! | `layer2` | `depth` basic blocks, the first stride 2 | [N, 2C, H/4, W/4] = `low_level` |
//! | `layer3` | `depth` basic blocks, the first stride 2 | [N, 4C, H/8, W/8] |
//! | `layer4` | `output_stride: 16` only: as layer3 | [N, 8C, H/16, W/16] |
//! | `aspp` | 4 parallel conv-BN-relu branches of 2C channels, concatenated, then `project` (1×1 conv-BN-relu) | [N, 2C, H/OS, W/OS] = `features` |
//! | `decoder` | `reduce` (1×1 conv-BN-relu of `low_level` to C channels) ‖ `features` upsampled to H/4, then `fuse` (3×3 conv-BN-relu to 2C) | [N, 2C, H/4, W/4] |
//! | `classifier` | 1×1 conv with bias → bilinear upsample (align_corners false) to [H, W] | [N, K, H, W] = `logits` |
//!
//! A basic block (torchvision's `BasicBlock`) is conv3×3(stride)-BN-relu-conv3×3-BN, plus the
//! input — or, when the stride or the width changes, a 1×1 conv(stride)-BN projection of it —
//! then relu. The ASPP branches are a 1×1 conv and three 3×3 convs with dilations 1, 2 and 3
//! (padding = dilation). DeepLab's 6/12/18 (12/24/36 at OS 8) are rates for the 33×33–65×65
//! feature maps of 513-pixel crops; this model's maps are a few pixels to a few dozen (4×4 for
//! a 32×32 test image at OS 8), where a tap further out than the map reads only zero padding
//! and the branch degenerates into a costlier 1×1 conv. The same rates serve OS 16 (halving
//! them, as DeepLab does, would give fractions).
//!
//! The rates are not capped by the map size: taps that fall outside read zero padding, as in
//! PyTorch.
//!
//! No image-pooling branch: there is no global-pool op yet.
//! Widths are DeepLabv3+'s ratios scaled down: ASPP narrower than the trunk (256 vs 2048 there),
//! the reduced skip narrower than the ASPP output (48 vs 256).
//!
//! State, named by PyTorch module paths under the model's name (`student.stem.conv.weight`):
//! `stem.conv.weight`; `stem.bn.{weight, bias, running_mean, running_var}` (weight = γ,
//! bias = β, as `nn.BatchNorm2d` names them); in block j of stage i `layer<i>.<j>.conv1.weight`,
//! `.bn1.*`, `.conv2.weight`, `.bn2.*`, and for a projection `.downsample.0.weight` (conv) and
//! `.downsample.1.*` (BN), torchvision's ResNet names; `aspp.<b>.conv.weight` and
//! `aspp.<b>.bn.*` for branch b = 0 (1×1), 1, 2, 3 (dilation b); `aspp.project.conv.weight`,
//! `aspp.project.bn.*`; `decoder.reduce.{conv, bn}.*`, `decoder.fuse.{conv, bn}.*`;
//! `classifier.weight`, `classifier.bias`. Conv weights start Kaiming-normal (fan_in = Ci·k²),
//! γ at 1, β, biases and running means at 0, running variances at 1 (PyTorch's BN defaults).
//! Nodes are named `<forward node>/<module path>` (`s1/layer2.0.conv1`).
//!
//! Batch norm: in a `mode: train` forward every BN normalizes with batch statistics and its
//! running statistics are assigned the updated values after the iteration; in `mode: eval` it
//! reads them and assigns nothing. Both modes declare the same state.
//!
//! Not here: pretrained (ImageNet) weights, dropout, the image-pooling ASPP branch, separable
//! convs, multi-grid dilations.

use crate::models::layers::{
    basic_block, concat, conv, conv_bn_relu, image_size, resize, size_of, Bias, Conv, Fan,
};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Model, Tracer};
use flowseg_engine::Port;
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `deeplab_lite` architecture.
pub struct DeepLabLite;

/// Params of `deeplab_lite` (under `models: { <name>: { arch: deeplab_lite, params: ... } }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// C: channels of the stem and layer1 (layer2 has 2C, layer3 4C, layer4 8C; the ASPP output
    /// and the decoder 2C, the reduced skip C); default 32.
    #[serde(default = "default_width")]
    pub width: NonZeroUsize,
    /// Basic blocks per stage; default 1.
    #[serde(default = "one")]
    pub depth: NonZeroUsize,
    /// K: classes, the channels of `logits` (required).
    pub classes: NonZeroUsize,
    /// Input pixels per `features` pixel: 8 (default; three stages) or 16 (a fourth stage).
    #[serde(default)]
    pub output_stride: OutputStride,
}

fn default_width() -> NonZeroUsize {
    NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN)
}

fn one() -> NonZeroUsize {
    NonZeroUsize::MIN
}

/// `output_stride`, written as the number 8 or 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "u64")]
pub enum OutputStride {
    /// Three stages (strides 1, 2, 2 after the stem).
    #[default]
    Eight,
    /// Four stages (strides 1, 2, 2, 2 after the stem).
    Sixteen,
}

impl TryFrom<u64> for OutputStride {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        match v {
            8 => Ok(OutputStride::Eight),
            16 => Ok(OutputStride::Sixteen),
            other => Err(format!("output_stride must be 8 or 16, got {other}")),
        }
    }
}

impl Model for DeepLabLite {
    const NAME: &'static str = "deeplab_lite";
    const SUMMARY: &'static str =
        "small DeepLabv3+: residual trunk (OS 8 or 16), light ASPP, low-level decoder";
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "logits",
            "f32[N, K, H, W]: class scores at the input's size",
        ),
        Port::req(
            "features",
            "f32[N, 2C, H/OS, W/OS]: the ASPP output, where consistency heads attach",
        ),
        Port::req(
            "low_level",
            "f32[N, 2C, H/4, W/4]: layer2's output, the decoder's skip",
        ),
    ];
    type Params = Params;

    fn trace(p: &Params, t: &mut Tracer<'_>, image: ValueRef) -> Result<Vec<ValueRef>, String> {
        let size = image_size(t, &image)?;
        let c = p.width.get();
        let depth = p.depth.get();

        let mut x = t.scope("stem", |t| cbr(t, image, Conv::new(c, 3).stride(2)))?;
        // (channels, stride of the first block) per stage.
        let mut stages = vec![(c, 1), (2 * c, 2), (4 * c, 2)];
        if p.output_stride == OutputStride::Sixteen {
            stages.push((8 * c, 2));
        }
        let mut low_level = None;
        for (i, &(co, stride)) in stages.iter().enumerate() {
            x = t.scope(&format!("layer{}", i + 1), |t| {
                let mut y = x.clone();
                for j in 0..depth {
                    let s = if j == 0 { stride } else { 1 };
                    y = t.scope(&j.to_string(), |t| {
                        basic_block(t, y.clone(), co, s, 1, Fan::In)
                    })?;
                }
                Ok(y)
            })?;
            if i == 1 {
                low_level = Some(x.clone());
            }
        }
        let low_level = low_level.ok_or("no layer2")?;
        let features = t.scope("aspp", |t| aspp(t, x, 2 * c))?;
        let decoded = t.scope("decoder", |t| decoder(t, &features, &low_level, c, 2 * c))?;
        let classifier = Conv::new(p.classes.get(), 1).bias(Bias::Zeros);
        let logits = conv(t, "classifier", decoded, classifier)?;
        let logits = resize(t, "upsample", logits, size)?;
        Ok(vec![logits, features, low_level])
    }
}

/// In the current scope: `conv` → `bn` → `relu` (module names `conv`, `bn`, node `relu`).
fn cbr(t: &mut Tracer<'_>, x: ValueRef, c: Conv) -> Result<ValueRef, String> {
    conv_bn_relu(t, ["conv", "bn", "relu"], x, c)
}

/// The ASPP head in scope `aspp`: branches `0` (1×1) and `1`..`3` (3×3, dilation b) of `a`
/// channels each, joined by a chain of pairwise concats, then `project`.
fn aspp(t: &mut Tracer<'_>, x: ValueRef, a: usize) -> Result<ValueRef, String> {
    let mut joined = t.scope("0", |t| cbr(t, x.clone(), Conv::new(a, 1)))?;
    for b in 1..=3 {
        let branch = t.scope(&b.to_string(), |t| {
            cbr(t, x.clone(), Conv::new(a, 3).dilation(b))
        })?;
        joined = concat(t, &format!("cat{b}"), joined, branch)?;
    }
    t.scope("project", |t| cbr(t, joined, Conv::new(a, 1)))
}

/// The DeepLabv3+ decoder in scope `decoder`: `reduce` the skip to `r` channels, upsample the
/// ASPP output to the skip's size, concatenate, `fuse` with a 3×3 conv-BN-relu to `d` channels.
fn decoder(
    t: &mut Tracer<'_>,
    features: &ValueRef,
    low_level: &ValueRef,
    r: usize,
    d: usize,
) -> Result<ValueRef, String> {
    let skip = t.scope("reduce", |t| cbr(t, low_level.clone(), Conv::new(r, 1)))?;
    let size = size_of(t, low_level)?;
    let up = resize(t, "upsample", features.clone(), size)?;
    let joined = concat(t, "cat", up, skip)?;
    t.scope("fuse", |t| cbr(t, joined, Conv::new(d, 3)))
}

#[cfg(test)]
mod tests {
    use super::{OutputStride, Params};
    use flowseg_engine::spec::{from_node, parse_yaml};

    #[test]
    fn params_default_and_validate() {
        let p: Params = from_node(&parse_yaml("{ classes: 4 }").unwrap()).unwrap();
        assert_eq!(
            (
                p.width.get(),
                p.depth.get(),
                p.classes.get(),
                p.output_stride
            ),
            (32, 1, 4, OutputStride::Eight)
        );
        let p: Params =
            from_node(&parse_yaml("{ classes: 4, output_stride: 16 }").unwrap()).unwrap();
        assert_eq!(p.output_stride, OutputStride::Sixteen);
        let e = from_node::<Params>(&parse_yaml("{ classes: 4, output_stride: 32 }").unwrap())
            .unwrap_err();
        assert!(
            e.message.contains("output_stride must be 8 or 16, got 32"),
            "{e}"
        );
        assert_eq!(e.loc.line, 1);
        let e = from_node::<Params>(&parse_yaml("{ width: 8 }").unwrap()).unwrap_err();
        assert!(e.message.contains("missing field `classes`"), "{e}");
        let e = from_node::<Params>(&parse_yaml("{ classes: 0 }").unwrap()).unwrap_err();
        assert!(e.message.contains("nonzero"), "{e}");
    }
}
