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

use crate::forward::add::Add;
use crate::forward::batch_norm::{self, BatchNorm};
use crate::forward::concat::Concat;
use crate::forward::conv2d::{self, Conv2d};
use crate::forward::relu::Relu;
use crate::forward::resize_bilinear::{self, ResizeBilinear};
use flowseg_engine::ir::Source;
use flowseg_engine::model::{Init, Model, Tracer};
use flowseg_engine::{DType, NoParams, Port, TensorSpec};
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

    fn trace(p: &Params, t: &mut Tracer<'_>, image: Source) -> Result<Vec<Source>, String> {
        let spec = t.spec(&image).ok_or("`image` has no spec")?;
        let size = match (spec.dtype, spec.as_nchw()) {
            (DType::F32, Some(s)) if s.c == 3 && s.h > 0 && s.w > 0 => [s.h, s.w],
            _ => return Err(format!("`image` must be f32[N, 3, H, W], got {spec}")),
        };
        let c = p.width.get();
        let depth = p.depth.get();

        let mut x = t.scope("stem", |t| conv_bn_relu(t, image, c, 3, 2, 1))?;
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
                    y = t.scope(&j.to_string(), |t| basic_block(t, y.clone(), co, s))?;
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
        let (weight, bias) = t.scope("classifier", |t| {
            let ci = channels(t, &decoded)?;
            let k = p.classes.get();
            let weight = t.param(
                "weight",
                TensorSpec::f32(&[k, ci, 1, 1]),
                Init::KaimingNormal { fan_in: ci },
            )?;
            let bias = t.param("bias", TensorSpec::f32(&[k]), Init::Zeros)?;
            Ok((weight, bias))
        })?;
        let logits = single(t.op::<Conv2d>(
            "classifier",
            conv_params(1, 0, 1),
            vec![Some(decoded), Some(weight), Some(bias)],
        )?)?;
        let logits = resize(t, "upsample", logits, size)?;
        Ok(vec![logits, features, low_level])
    }
}

/// The only output of an emitted node.
fn single(outs: Vec<Source>) -> Result<Source, String> {
    outs.into_iter()
        .next()
        .ok_or_else(|| "a node has no output".into())
}

/// C of an NCHW value.
fn channels(t: &Tracer<'_>, x: &Source) -> Result<usize, String> {
    t.spec(x)
        .and_then(|s| s.as_nchw())
        .map(|s| s.c)
        .ok_or_else(|| format!("{x:?} is not NCHW"))
}

/// [H, W] of an NCHW value.
fn size_of(t: &Tracer<'_>, x: &Source) -> Result<[usize; 2], String> {
    t.spec(x)
        .and_then(|s| s.as_nchw())
        .map(|s| [s.h, s.w])
        .ok_or_else(|| format!("{x:?} is not NCHW"))
}

fn nonzero(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN)
}

fn conv_params(stride: usize, padding: usize, dilation: usize) -> conv2d::Params {
    conv2d::Params {
        stride: nonzero(stride),
        padding,
        dilation: nonzero(dilation),
        groups: NonZeroUsize::MIN,
    }
}

/// Module `name`: a bias-free k×k conv to `co` channels (`name.weight`, Kaiming normal).
fn conv(
    t: &mut Tracer<'_>,
    name: &str,
    x: Source,
    co: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Result<Source, String> {
    let ci = channels(t, &x)?;
    let weight = t.scope(name, |t| {
        t.param(
            "weight",
            TensorSpec::f32(&[co, ci, k, k]),
            Init::KaimingNormal { fan_in: ci * k * k },
        )
    })?;
    // "Same" padding for odd k: the dilated kernel's half-extent.
    let padding = dilation * (k - 1) / 2;
    single(t.op::<Conv2d>(
        name,
        conv_params(stride, padding, dilation),
        vec![Some(x), Some(weight), None],
    )?)
}

/// Module `name`: `nn.BatchNorm2d` — γ (`weight`), β (`bias`) and the two running buffers; in
/// train mode the buffers are assigned the op's updated statistics.
fn bn(t: &mut Tracer<'_>, name: &str, x: Source) -> Result<Source, String> {
    let c = TensorSpec::f32(&[channels(t, &x)?]);
    let [gamma, beta, mean, var] = t.scope(name, |t| {
        Ok([
            t.param("weight", c.clone(), Init::Ones)?,
            t.param("bias", c.clone(), Init::Zeros)?,
            t.buffer("running_mean", c.clone(), Init::Zeros)?,
            t.buffer("running_var", c.clone(), Init::Ones)?,
        ])
    })?;
    let train = t.train();
    let params = batch_norm::Params {
        eps: 1e-5,
        momentum: 0.1,
        mode: if train {
            batch_norm::Mode::Train
        } else {
            batch_norm::Mode::Eval
        },
    };
    let outs = t.op::<BatchNorm>(
        name,
        params,
        vec![
            Some(x),
            Some(gamma),
            Some(beta),
            Some(mean.clone()),
            Some(var.clone()),
        ],
    )?;
    let [y, new_mean, new_var, _, _] =
        <[Source; 5]>::try_from(outs).map_err(|_| "batch_norm has 5 outputs")?;
    if train {
        t.assign(new_mean, &mean)?;
        t.assign(new_var, &var)?;
    }
    Ok(y)
}

fn relu(t: &mut Tracer<'_>, name: &str, x: Source) -> Result<Source, String> {
    single(t.op::<Relu>(name, NoParams {}, vec![Some(x)])?)
}

fn resize(t: &mut Tracer<'_>, name: &str, x: Source, size: [usize; 2]) -> Result<Source, String> {
    let params = resize_bilinear::Params {
        size: size.map(nonzero),
        align_corners: false,
    };
    single(t.op::<ResizeBilinear>(name, params, vec![Some(x)])?)
}

/// In the current scope: `conv` → `bn` → `relu`.
fn conv_bn_relu(
    t: &mut Tracer<'_>,
    x: Source,
    co: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Result<Source, String> {
    let y = conv(t, "conv", x, co, k, stride, dilation)?;
    let y = bn(t, "bn", y)?;
    relu(t, "relu", y)
}

/// torchvision's `BasicBlock` in the current scope (`layer<i>.<j>`).
fn basic_block(t: &mut Tracer<'_>, x: Source, co: usize, stride: usize) -> Result<Source, String> {
    let ci = channels(t, &x)?;
    let y = conv(t, "conv1", x.clone(), co, 3, stride, 1)?;
    let y = bn(t, "bn1", y)?;
    let y = relu(t, "relu1", y)?;
    let y = conv(t, "conv2", y, co, 3, 1, 1)?;
    let y = bn(t, "bn2", y)?;
    let shortcut = if stride != 1 || ci != co {
        t.scope("downsample", |t| {
            let s = conv(t, "0", x, co, 1, stride, 1)?;
            bn(t, "1", s)
        })?
    } else {
        x
    };
    let y = single(t.op::<Add>("add", NoParams {}, vec![Some(y), Some(shortcut)])?)?;
    relu(t, "relu2", y)
}

/// The ASPP head in scope `aspp`: branches `0` (1×1) and `1`..`3` (3×3, dilation b) of `a`
/// channels each, joined by a chain of pairwise concats, then `project`.
fn aspp(t: &mut Tracer<'_>, x: Source, a: usize) -> Result<Source, String> {
    let mut joined = t.scope("0", |t| conv_bn_relu(t, x.clone(), a, 1, 1, 1))?;
    for b in 1..=3 {
        let branch = t.scope(&b.to_string(), |t| conv_bn_relu(t, x.clone(), a, 3, 1, b))?;
        joined = single(t.op::<Concat>(
            &format!("cat{b}"),
            NoParams {},
            vec![Some(joined), Some(branch)],
        )?)?;
    }
    t.scope("project", |t| conv_bn_relu(t, joined, a, 1, 1, 1))
}

/// The DeepLabv3+ decoder in scope `decoder`: `reduce` the skip to `r` channels, upsample the
/// ASPP output to the skip's size, concatenate, `fuse` with a 3×3 conv-BN-relu to `d` channels.
fn decoder(
    t: &mut Tracer<'_>,
    features: &Source,
    low_level: &Source,
    r: usize,
    d: usize,
) -> Result<Source, String> {
    let skip = t.scope("reduce", |t| conv_bn_relu(t, low_level.clone(), r, 1, 1, 1))?;
    let size = size_of(t, low_level)?;
    let up = resize(t, "upsample", features.clone(), size)?;
    let joined = single(t.op::<Concat>("cat", NoParams {}, vec![Some(up), Some(skip)])?)?;
    t.scope("fuse", |t| conv_bn_relu(t, joined, d, 3, 1, 1))
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
