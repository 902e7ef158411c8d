//! `resnet18_deeplabv3plus` and `resnet50_deeplabv3plus`: DeepLabv3+ on torchvision's ResNet-18
//! and ResNet-50, the backbone's state named exactly as torchvision names it so ImageNet weights
//! match by name and shape.
//!
//! Backbone (torchvision `resnet18` / `resnet50`, v1.5, without `avgpool` and `fc`), input
//! f32[N, 3, H, W]; every conv is bias-free and followed by a BN; a side s becomes ⌈s/2⌉ at each
//! stride 2, written s/2:
//!
//! | module | what | output (OS 16) |
//! | --- | --- | --- |
//! | `conv1`, `bn1`, relu | 7×7 conv stride 2 padding 3, 3 → 64 | [N, 64, H/2, W/2] |
//! | maxpool | `max_pool2d` kernel 3 stride 2 padding 1 | [N, 64, H/4, W/4] |
//! | `layer1` | 2 (18) / 3 (50) blocks, 64 planes, stride 1 | [N, 64·e, H/4, W/4] = `low_level` |
//! | `layer2` | 2 / 4 blocks, 128 planes, stride 2 | [N, 128·e, H/8, W/8] |
//! | `layer3` | 2 / 6 blocks, 256 planes, stride 2 (OS 8: dilation 2) | [N, 256·e, H/16, W/16] |
//! | `layer4` | 2 / 3 blocks, 512 planes, stride 2 → dilation 2 (OS 8: 4) | [N, 512·e, H/16, W/16] |
//!
//! with expansion e = 1 (ResNet-18's `BasicBlock`: conv1 3×3(stride)-bn1-relu-conv2 3×3-bn2)
//! or 4 (ResNet-50's `Bottleneck`, v1.5 — the stride on the 3×3: conv1 1×1-bn1-relu-conv2
//! 3×3(stride)-bn2-relu-conv3 1×1 to 4·planes-bn3), plus the input or, for the first block of a
//! stage whose stride or width changes, `downsample` (1×1 conv(stride) `.0` + BN `.1`), then
//! relu. `output_stride` (8 or 16) follows torchvision's `replace_stride_with_dilation`
//! ([False, False, True] for 16, [False, True, True] for 8): a replaced stage keeps stride 1
//! (its downsample too) and multiplies the running dilation by 2; its first block uses the
//! *previous* dilation and the others the new one, and a 3×3 conv's padding equals its
//! dilation (so OS 8: layer3 dilations 1, 2, 2, …; layer4 2, 4, 4).
//!
//! Head (DeepLabv3+, Chen et al. 2018; torchvision's `ASPP` module for the encoder part), every
//! conv but the classifier bias-free with BN and relu:
//! * ASPP on layer4's output: a 1×1 branch, three 3×3 branches with dilation (= padding) 6, 12,
//!   18 at OS 16 (12, 24, 36 at OS 8), and an image-pooling branch (`global_avg_pool` → 1×1 →
//!   BN → relu → bilinear upsample to the feature size, a broadcast); each 256 channels,
//!   concatenated (1280) and projected by a 1×1 to 256 = `features`. torchvision's projection
//!   ends in `Dropout(0.5)`: **omitted** here (no dropout op wired into models yet).
//! * Decoder: layer1's output reduced by a 1×1 to 48 channels; `features` bilinearly upsampled
//!   (align_corners false) to layer1's size; concatenated as [upsampled ASPP ‖ reduced skip]
//!   (the TF reference's order; VainF's PyTorch port puts the skip first — which only permutes
//!   the next conv's input channels); two 3×3 convs to 256; the classifier, a 1×1 conv with bias
//!   to K = `classes`; bilinear upsample (align_corners false) to [H, W] = `logits`.
//!
//! State, under the model's name (`student.`):
//! * backbone, **at the top level, with torchvision's names**: `conv1.weight`,
//!   `bn1.{weight, bias, running_mean, running_var}`, `layer<i>.<j>.conv<k>.weight`,
//!   `layer<i>.<j>.bn<k>.*`, `layer<i>.<j>.downsample.0.weight`, `layer<i>.<j>.downsample.1.*`;
//!   the trainable counts are torchvision's without `fc` (11,176,512 and 23,508,032; the tests
//!   recompute them by hand).
//! * head, under `head.`: `head.aspp.convs.<b>.0.weight` and `.1.*` for the 1×1 (b = 0) and
//!   3×3 (b = 1..3) branches, `head.aspp.convs.4.1.weight` and `.2.*` for the pooling branch
//!   (index 0 is the parameter-free pool), `head.aspp.project.0.weight` and `.1.*` — the names of
//!   torchvision's `ASPP` module, so a torchvision DeepLabv3 `classifier.0.*` maps onto
//!   `head.aspp.*` by renaming the prefix; `head.reduce.{0.weight, 1.*}` (the 48-channel skip),
//!   `head.fuse.{0.weight, 1.*, 3.weight, 4.*}` (the two 3×3 convs, as an `nn.Sequential` with
//!   relus at 2 and 5 would number them), `head.classifier.{weight, bias}`.
//!
//! Loading ImageNet weights: the backbone names and shapes equal torchvision's `state_dict()`
//! keys, prefixed with `<model>.`. What does not carry over, and must be dropped when converting
//! the state dict to safetensors: `fc.weight` and `fc.bias` (no classifier here), and every
//! `*.num_batches_tracked` (int64, and only read by `momentum=None` BN, which this model does
//! not use). The model does not normalize its input: feed ImageNet-normalized images.
//!
//! Init: backbone convs as torchvision, Kaiming normal in `fan_out` mode, N(0, 2/(Co·k²)) —
//! expressed as `Init::KaimingNormal { fan_in: Co·k² }`, the engine's only Kaiming variant, whose
//! field then carries fan_out; head convs Kaiming normal `fan_in`, N(0, 2/(Ci·k²)), as VainF's
//! DeepLabV3Plus-Pytorch; classifier bias U(−1/√256, 1/√256), `nn.Conv2d`'s default; BN γ 1,
//! β 0, running mean 0, running var 1. Not torchvision's `zero_init_residual` (off by default
//! there too).
//!
//! Batch norm as in `deeplab_lite`: `mode: train` normalizes with batch statistics and assigns
//! the running statistics after the iteration; `mode: eval` reads them. As in PyTorch, a
//! train-mode BN needs two values per channel, and the image-pooling branch has one per image:
//! a train-mode forward needs N ≥ 2 (refused at build time otherwise).
//!
//! Differences from PyTorch beyond the above: torchvision's `BasicBlock` refuses dilation > 1
//! (so `deeplabv3plus` on ResNet-18 has no torchvision original); here both of its 3×3 convs
//! take the block's dilation, the same rule as the Bottleneck's 3×3 (timm dilates the first
//! block's conv2 with the new dilation instead, mmseg only conv1). Parameter shapes are
//! unaffected. Numerics are f32 with the engine's own kernels, not bit-identical to cuDNN.
//!
//! Not here: dropout, `fc`/`avgpool`, multi-grid dilations, separable convs (the Xception
//! variant), ResNet-34/101/152 (another `Arch` line each), frozen BN, `strict=False` loading.

use crate::forward::global_avg_pool::GlobalAvgPool;
use crate::forward::max_pool2d::{self, MaxPool2d};
use crate::models::deeplab_lite::OutputStride;
use crate::models::layers::{
    add, basic_block, bn, concat, conv, conv_bn_relu, image_size, nonzero, relu, resize, shortcut,
    single, size_of, Bias, Conv, Fan,
};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Model, Tracer};
use flowseg_engine::{NoParams, Port};
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `resnet18_deeplabv3plus` architecture.
pub struct Resnet18DeepLabV3Plus;

/// The `resnet50_deeplabv3plus` architecture.
pub struct Resnet50DeepLabV3Plus;

/// Params of both architectures (`models: { <name>: { arch: ..., params: ... } }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// K: classes, the channels of `logits` (required).
    pub classes: NonZeroUsize,
    /// Input pixels per `features` pixel: 16 (default; layer4 dilated) or 8 (layer3 and layer4
    /// dilated).
    #[serde(default = "sixteen")]
    pub output_stride: OutputStride,
}

fn sixteen() -> OutputStride {
    OutputStride::Sixteen
}

/// A residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// torchvision's `BasicBlock`: two 3×3 convs, expansion 1.
    Basic,
    /// torchvision's `Bottleneck` (v1.5): 1×1, 3×3 (stride), 1×1 to 4·planes.
    Bottleneck,
}

impl Block {
    fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// A ResNet depth: block type and blocks per stage.
#[derive(Debug, Clone, Copy)]
struct Arch {
    block: Block,
    layers: [usize; 4],
}

const RESNET18: Arch = Arch {
    block: Block::Basic,
    layers: [2, 2, 2, 2],
};

const RESNET50: Arch = Arch {
    block: Block::Bottleneck,
    layers: [3, 4, 6, 3],
};

/// Channels of the ASPP branches, its projection and the decoder's 3×3 convs.
const ASPP: usize = 256;
/// Channels of the reduced low-level skip.
const SKIP: usize = 48;

impl Model for Resnet18DeepLabV3Plus {
    const NAME: &'static str = "resnet18_deeplabv3plus";
    const SUMMARY: &'static str =
        "DeepLabv3+ (ASPP with image pooling, 48-channel skip) on torchvision-named ResNet-18";
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "logits",
            "f32[N, K, H, W]: class scores at the input's size",
        ),
        Port::req(
            "features",
            "f32[N, 256, H/OS, W/OS]: the ASPP output, where consistency heads attach",
        ),
        Port::req(
            "low_level",
            "f32[N, 64, H/4, W/4]: layer1's output, the decoder's skip",
        ),
    ];
    type Params = Params;

    fn trace(p: &Params, t: &mut Tracer<'_>, image: ValueRef) -> Result<Vec<ValueRef>, String> {
        trace(RESNET18, p, t, image)
    }
}

impl Model for Resnet50DeepLabV3Plus {
    const NAME: &'static str = "resnet50_deeplabv3plus";
    const SUMMARY: &'static str =
        "DeepLabv3+ (ASPP with image pooling, 48-channel skip) on torchvision-named ResNet-50";
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "logits",
            "f32[N, K, H, W]: class scores at the input's size",
        ),
        Port::req(
            "features",
            "f32[N, 256, H/OS, W/OS]: the ASPP output, where consistency heads attach",
        ),
        Port::req(
            "low_level",
            "f32[N, 256, H/4, W/4]: layer1's output, the decoder's skip",
        ),
    ];
    type Params = Params;

    fn trace(p: &Params, t: &mut Tracer<'_>, image: ValueRef) -> Result<Vec<ValueRef>, String> {
        trace(RESNET50, p, t, image)
    }
}

/// Backbone, then head; returns [logits, features, low_level].
fn trace(
    arch: Arch,
    p: &Params,
    t: &mut Tracer<'_>,
    image: ValueRef,
) -> Result<Vec<ValueRef>, String> {
    let size = image_size(t, &image)?;
    let (replace, rates) = match p.output_stride {
        OutputStride::Sixteen => ([false, false, true], [6, 12, 18]),
        OutputStride::Eight => ([false, true, true], [12, 24, 36]),
    };

    // Stem.
    let x = conv(t, "conv1", image, Conv::new(64, 7).stride(2).fan(Fan::Out))?;
    let x = bn(t, "bn1", x)?;
    let x = relu(t, "relu", x)?;
    let pool = max_pool2d::Params {
        kernel: nonzero(3),
        stride: Some(nonzero(2)),
        padding: 1,
    };
    let [mut x, _argmax] =
        <[ValueRef; 2]>::try_from(t.op::<MaxPool2d>("maxpool", pool, vec![Some(x)])?)
            .map_err(|_| "max_pool2d has 2 outputs")?;

    // torchvision's `_make_layer`, with `self.dilation` as `dilation`.
    let mut dilation = 1;
    let mut low_level = None;
    for (i, (&blocks, planes)) in arch.layers.iter().zip([64, 128, 256, 512]).enumerate() {
        let mut stride = if i == 0 { 1 } else { 2 };
        let previous = dilation;
        if i > 0 && replace[i - 1] {
            dilation *= stride;
            stride = 1;
        }
        x = t.scope(&format!("layer{}", i + 1), |t| {
            let mut y = x.clone();
            for j in 0..blocks {
                let (s, d) = if j == 0 {
                    (stride, previous)
                } else {
                    (1, dilation)
                };
                y = t.scope(&j.to_string(), |t| match arch.block {
                    Block::Basic => basic_block(t, y.clone(), planes, s, d, Fan::Out),
                    Block::Bottleneck => bottleneck(t, y.clone(), planes, s, d),
                })?;
            }
            Ok(y)
        })?;
        if i == 0 {
            low_level = Some(x.clone());
        }
    }
    let low_level = low_level.ok_or("no layer1")?;

    t.scope("head", |t| {
        let features = t.scope("aspp", |t| aspp(t, x, rates))?;
        let logits = decoder(t, &features, &low_level, p.classes.get(), size)?;
        Ok(vec![logits, features, low_level.clone()])
    })
}

/// torchvision's `Bottleneck` (v1.5: stride and dilation on the 3×3 `conv2`) in the current
/// scope; output 4·`planes` channels.
fn bottleneck(
    t: &mut Tracer<'_>,
    x: ValueRef,
    planes: usize,
    stride: usize,
    dilation: usize,
) -> Result<ValueRef, String> {
    let co = planes * Block::Bottleneck.expansion();
    let c1 = Conv::new(planes, 1).fan(Fan::Out);
    let y = conv(t, "conv1", x.clone(), c1)?;
    let y = bn(t, "bn1", y)?;
    let y = relu(t, "relu1", y)?;
    let c2 = Conv::new(planes, 3)
        .stride(stride)
        .dilation(dilation)
        .fan(Fan::Out);
    let y = conv(t, "conv2", y, c2)?;
    let y = bn(t, "bn2", y)?;
    let y = relu(t, "relu2", y)?;
    let y = conv(t, "conv3", y, Conv::new(co, 1).fan(Fan::Out))?;
    let y = bn(t, "bn3", y)?;
    let s = shortcut(t, x, co, stride, Fan::Out)?;
    let y = add(t, "add", y, s)?;
    relu(t, "relu3", y)
}

/// In the current scope, `nn.Sequential(conv, BN, ReLU)` numbered from `first`: the conv (a
/// k×k to `co` channels, fan-in init as the DeepLab head) is module `first`, the BN `first + 1`,
/// the relu node `first + 2`.
fn seq_cbr(
    t: &mut Tracer<'_>,
    first: usize,
    x: ValueRef,
    co: usize,
    k: usize,
    dilation: usize,
) -> Result<ValueRef, String> {
    let [c, b, r] = [first, first + 1, first + 2].map(|i| i.to_string());
    conv_bn_relu(t, [&c, &b, &r], x, Conv::new(co, k).dilation(dilation))
}

/// torchvision's `ASPP` (without its dropout) in scope `aspp`: `convs.0` 1×1, `convs.1..3`
/// 3×3 at `rates`, `convs.4` image pooling, joined by a chain of pairwise concats (`cat1` ..
/// `cat4`), then `project`.
fn aspp(t: &mut Tracer<'_>, x: ValueRef, rates: [usize; 3]) -> Result<ValueRef, String> {
    let size = size_of(t, &x)?;
    let joined = t.scope("convs", |t| {
        let mut joined = t.scope("0", |t| seq_cbr(t, 0, x.clone(), ASPP, 1, 1))?;
        for (b, rate) in (1..).zip(rates) {
            let branch = t.scope(&b.to_string(), |t| seq_cbr(t, 0, x.clone(), ASPP, 3, rate))?;
            joined = concat(t, &format!("cat{b}"), joined, branch)?;
        }
        // `ASPPPooling`: module 0 is the pool, so the conv is 1 and the BN 2.
        let pooled = t.scope("4", |t| {
            let g = single(t.op::<GlobalAvgPool>("0", NoParams {}, vec![Some(x.clone())])?)?;
            let g = seq_cbr(t, 1, g, ASPP, 1, 1)?;
            resize(t, "upsample", g, size)
        })?;
        concat(t, "cat4", joined, pooled)
    })?;
    t.scope("project", |t| seq_cbr(t, 0, joined, ASPP, 1, 1))
}

/// The DeepLabv3+ decoder and classifier in scope `head`: `reduce` the skip to 48 channels,
/// upsample `features` to its size, concatenate, `fuse` with two 3×3 conv-BN-relus, classify,
/// upsample to the input's `size`.
fn decoder(
    t: &mut Tracer<'_>,
    features: &ValueRef,
    low_level: &ValueRef,
    classes: usize,
    size: [usize; 2],
) -> Result<ValueRef, String> {
    let skip = t.scope("reduce", |t| seq_cbr(t, 0, low_level.clone(), SKIP, 1, 1))?;
    let up = resize(t, "upsample", features.clone(), size_of(t, low_level)?)?;
    let joined = concat(t, "cat", up, skip)?;
    let fused = t.scope("fuse", |t| {
        let y = seq_cbr(t, 0, joined, ASPP, 3, 1)?;
        seq_cbr(t, 3, y, ASPP, 3, 1)
    })?;
    // nn.Conv2d's default bias: U(−1/√fan_in, 1/√fan_in).
    let classifier = Conv::new(classes, 1).bias(Bias::Uniform);
    let logits = conv(t, "classifier", fused, classifier)?;
    resize(t, "upsample_logits", logits, size)
}

#[cfg(test)]
mod tests {
    use super::{Params, RESNET18, RESNET50};
    use crate::models::deeplab_lite::OutputStride;
    use flowseg_engine::spec::{from_node, parse_yaml};

    #[test]
    fn params_default_to_os16_and_validate() {
        let p: Params = from_node(&parse_yaml("{ classes: 21 }").unwrap()).unwrap();
        assert_eq!(
            (p.classes.get(), p.output_stride),
            (21, OutputStride::Sixteen)
        );
        let p: Params =
            from_node(&parse_yaml("{ classes: 2, output_stride: 8 }").unwrap()).unwrap();
        assert_eq!(p.output_stride, OutputStride::Eight);
        let e = from_node::<Params>(&parse_yaml("{ classes: 2, output_stride: 32 }").unwrap())
            .unwrap_err();
        assert!(
            e.message.contains("output_stride must be 8 or 16, got 32"),
            "{e}"
        );
        let e = from_node::<Params>(&parse_yaml("{ output_stride: 8 }").unwrap()).unwrap_err();
        assert!(e.message.contains("missing field `classes`"), "{e}");
        let e = from_node::<Params>(&parse_yaml("{ classes: 2, width: 8 }").unwrap()).unwrap_err();
        assert!(e.message.contains("unknown field `width`"), "{e}");
    }

    #[test]
    fn depths_are_torchvisions() {
        assert_eq!(RESNET18.layers.iter().sum::<usize>() * 2 + 2, 18);
        assert_eq!(RESNET50.layers.iter().sum::<usize>() * 3 + 2, 50);
    }
}
