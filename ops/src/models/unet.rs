//! `unet`: a small U-Net (Ronneberger et al., 2015, with BN and bilinear upsampling) whose
//! decoder predicts at the input's full resolution — the architecture of the semi-supervised
//! benchmark regime (docs/RESULTS.md), where thin structures (MNIST strokes two to four pixels
//! wide) are lost by a decoder that predicts at 1/4 and upsamples.
//!
//! Architecture (C = `width`, K = `classes`, the input f32[N, 3, H, W] with H, W ≥ 8; every
//! 3×3 conv is padded to keep its size and bias-free, the BN after it supplying the shift; a 2×2
//! max-pool maps a side s to ⌊s/2⌋ and each upsampling resizes back to its skip's exact size,
//! so odd sizes work):
//!
//! | module | what | output |
//! | --- | --- | --- |
//! | `down0` | two conv3×3-BN-relu to C | [N, C, H, W] = `skip0` |
//! | `down<i>`, i = 1, 2, 3 | 2×2 max-pool → two conv3×3-BN-relu to C·2^i | [N, C·2^i, H/2^i, W/2^i] (`skip1`, `skip2`, `features`) |
//! | `up<i>`, i = 2, 1, 0 | bilinear upsample (align_corners false) of the deeper output to `skip<i>`'s size ‖ `skip<i>`, then two conv3×3-BN-relu to C·2^i | [N, C·2^i, H/2^i, W/2^i] |
//! | `head` | 1×1 conv with bias | [N, K, H, W] = `logits` |
//!
//! With C = 16 (the default): widths 16/32/64/128, 0.49 M parameters — the network of the
//! measured PyTorch anchor (../shared/reference/ssl-anchor.md). Module paths name the state:
//! `down1.conv1.weight`, `down1.bn1.{weight, bias, running_mean, running_var}`, `.conv2`,
//! `.bn2`, `up0.conv1.weight`, ..., `head.weight`, `head.bias`. Conv weights start
//! Kaiming-normal (fan_in), BN at PyTorch's defaults, the head's bias at zero.
//!
//! Outputs: `logits`, `features` (the bottleneck, `down3`'s output) and `decoded` (the last
//! decoder output before the head, f32[N, C, H, W]).
//!
//! Stages: the encoder (`down0`..`down3`) passes `skip0`, `skip1`, `skip2` and `features` to
//! the decoder (`up2`..`up0`, `head`), so a graph can run `forward` with `stage: encoder`,
//! perturb those four values (UniMatch's feature dropout perturbs every one, as its decoder
//! reads both the low- and the high-level features) and decode them with `stage: decoder`.
//!
//! Batch norm follows the forward's mode, as in `deeplab_lite`: batch statistics and assigned
//! running statistics in `mode: train`, the running statistics in `mode: eval`.
//!
//! Not here: other depths (the stage ports are fixed), transposed-conv upsampling, dropout,
//! pretrained weights.

use crate::forward::max_pool2d::{self, MaxPool2d};
use crate::models::layers::{
    concat, conv, conv_bn_relu, image_size, resize, single, size_of, Bias, Conv,
};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Model, Tracer};
use flowseg_engine::Port;
use serde::Deserialize;
use std::num::NonZeroUsize;

/// The `unet` architecture.
pub struct Unet;

/// Params of `unet` (under `models: { <name>: { arch: unet, params: ... } }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// K: classes, the channels of `logits` (required; a graph may leave it to the data
    /// source's class count).
    pub classes: NonZeroUsize,
    /// C: channels of the first level (level i has C·2^i); default 16.
    #[serde(default = "default_width")]
    pub width: NonZeroUsize,
}

fn default_width() -> NonZeroUsize {
    NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN)
}

/// Resolution levels (three poolings).
const LEVELS: usize = 4;

impl Model for Unet {
    const NAME: &'static str = "unet";
    const SUMMARY: &'static str =
        "small U-Net: double conv-BN-relu per level, max-pool down, bilinear up, full-resolution head";
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "logits",
            "f32[N, K, H, W]: class scores at the input's size",
        ),
        Port::req("features", "f32[N, 8C, H/8, W/8]: the bottleneck"),
        Port::req(
            "decoded",
            "f32[N, C, H, W]: the last decoder output, before the head",
        ),
    ];
    const ENCODED: &'static [Port] = &[
        Port::req("skip0", "f32[N, C, H, W]: level 0 of the encoder"),
        Port::req("skip1", "f32[N, 2C, H/2, W/2]: level 1"),
        Port::req("skip2", "f32[N, 4C, H/4, W/4]: level 2"),
        Port::req("features", "f32[N, 8C, H/8, W/8]: the bottleneck"),
    ];
    type Params = Params;

    fn trace(p: &Params, t: &mut Tracer<'_>, image: ValueRef) -> Result<Vec<ValueRef>, String> {
        let encoded = Self::trace_encoder(p, t, image)?;
        Self::trace_decoder(p, t, encoded)
    }

    fn trace_encoder(
        p: &Params,
        t: &mut Tracer<'_>,
        image: ValueRef,
    ) -> Result<Vec<ValueRef>, String> {
        let [h, w] = image_size(t, &image)?;
        let min = 1usize << (LEVELS - 1);
        if h < min || w < min {
            return Err(format!(
                "a {h}×{w} image is smaller than {min}×{min}, the least its {LEVELS} levels can pool"
            ));
        }
        let c = p.width.get();
        let mut levels: Vec<ValueRef> = Vec::with_capacity(LEVELS);
        let mut x = image;
        for i in 0..LEVELS {
            x = t.scope(&format!("down{i}"), |t| {
                let input = if i == 0 {
                    x.clone()
                } else {
                    let pool = max_pool2d::Params {
                        kernel: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
                        stride: None,
                        padding: 0,
                    };
                    single(t.op::<MaxPool2d>("pool", pool, vec![Some(x.clone())])?)?
                };
                double_conv(t, input, c << i)
            })?;
            levels.push(x.clone());
        }
        Ok(levels)
    }

    fn trace_decoder(
        p: &Params,
        t: &mut Tracer<'_>,
        encoded: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let [skip0, skip1, skip2, features] = <[ValueRef; LEVELS]>::try_from(encoded)
            .map_err(|e| format!("the decoder takes {LEVELS} encoded values, got {}", e.len()))?;
        let c = p.width.get();
        let skips = [skip0, skip1, skip2];
        let mut x = features.clone();
        for i in (0..LEVELS - 1).rev() {
            let skip = skips[i].clone();
            x = t.scope(&format!("up{i}"), |t| {
                let size = size_of(t, &skip)?;
                let up = resize(t, "upsample", x.clone(), size)?;
                let joined = concat(t, "cat", up, skip)?;
                double_conv(t, joined, c << i)
            })?;
        }
        let decoded = x.clone();
        let head = Conv::new(p.classes.get(), 1).bias(Bias::Zeros);
        let logits = conv(t, "head", x, head)?;
        Ok(vec![logits, features, decoded])
    }
}

/// In the current scope: conv3×3 `conv1` → `bn1` → `relu1` → conv3×3 `conv2` → `bn2` → `relu2`,
/// both to `co` channels.
fn double_conv(t: &mut Tracer<'_>, x: ValueRef, co: usize) -> Result<ValueRef, String> {
    let y = conv_bn_relu(t, ["conv1", "bn1", "relu1"], x, Conv::new(co, 3))?;
    conv_bn_relu(t, ["conv2", "bn2", "relu2"], y, Conv::new(co, 3))
}

#[cfg(test)]
mod tests {
    use super::Params;
    use flowseg_engine::spec::{from_node, parse_yaml};

    #[test]
    fn params_default_and_validate() {
        let p: Params = from_node(&parse_yaml("{ classes: 11 }").unwrap()).unwrap();
        assert_eq!((p.classes.get(), p.width.get()), (11, 16));
        let e = from_node::<Params>(&parse_yaml("{ classes: 3, depth: 2 }").unwrap()).unwrap_err();
        assert!(e.message.contains("unknown field `depth`"), "{e}");
    }
}
