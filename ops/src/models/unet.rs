//! `unet`: a small U-Net (Ronneberger et al., 2015, with BN and bilinear upsampling) whose
//! decoder predicts at the input's full resolution — the architecture of the semi-supervised
//! benchmark regime (docs/RESULTS.md), where thin structures (MNIST strokes two to four pixels
//! wide) are lost by a decoder that predicts at 1/4 and upsamples.
//!
//! Architecture (C = `width`, L = `levels`, K = `classes`, the input f32[N, 3, H, W]; every 3×3
//! conv is padded to keep its size and bias-free, the BN after it supplying the shift; a 2×2
//! max-pool maps a side s to ⌊s/2⌋ and the upsampling resizes back to the skip's exact size, so
//! any H, W ≥ 2^(L−1) works):
//!
//! | module | what | output |
//! | --- | --- | --- |
//! | `down<i>`, i = 0..L | (i > 0: 2×2 max-pool) → two conv3×3-BN-relu to C·2^i channels | [N, C·2^i, H/2^i, W/2^i] |
//! | `up<i>`, i = L−2..=0 | bilinear upsample (align_corners false) of the deeper output to `down<i>`'s size ‖ `down<i>`'s output, then two conv3×3-BN-relu to C·2^i | [N, C·2^i, H/2^i, W/2^i] |
//! | `head` | 1×1 conv with bias | [N, K, H, W] = `logits` |
//!
//! With C = 16 and L = 4 (the defaults): widths 16/32/64/128, 0.49 M parameters, the network
//! of ../shared/reference/ssl-anchor.md. Each double conv is torchvision-style module paths:
//! `down1.conv1.weight`, `down1.bn1.{weight, bias, running_mean, running_var}`, `.conv2`,
//! `.bn2`; `up0.conv1.weight` ...; `head.weight`, `head.bias`. Conv weights start
//! Kaiming-normal (fan_in), BN at PyTorch's defaults, the head's bias at zero.
//!
//! Outputs beside `logits`: `features`, the bottleneck (`down<L−1>`'s output, where feature
//! perturbations such as UniMatch's dropout stream or CCT's auxiliary decoders attach), and
//! `decoded`, the last decoder output before the head (f32[N, C, H, W]).
//!
//! Batch norm follows the forward's mode, as in `deeplab_lite`: batch statistics and assigned
//! running statistics in `mode: train`, the running statistics in `mode: eval`.
//!
//! Not here: transposed-conv upsampling, dropout, pretrained weights.

use crate::models::layers::{
    channels, concat, conv, conv_bn_relu, image_size, resize, single, size_of, Bias, Conv,
};
use crate::forward::max_pool2d::{self, MaxPool2d};
use flowseg_engine::ir::Source;
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
    /// K: classes, the channels of `logits` (required).
    pub classes: NonZeroUsize,
    /// C: channels of the first level (level i has C·2^i); default 16.
    #[serde(default = "default_width")]
    pub width: NonZeroUsize,
    /// L: resolution levels, 2..=6 (L − 1 poolings); default 4.
    #[serde(default = "default_levels")]
    pub levels: usize,
}

fn default_width() -> NonZeroUsize {
    NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN)
}

fn default_levels() -> usize {
    4
}

impl Model for Unet {
    const NAME: &'static str = "unet";
    const SUMMARY: &'static str =
        "small U-Net: double conv-BN-relu per level, max-pool down, bilinear up, full-resolution head";
    const OUTPUTS: &'static [Port] = &[
        Port::req("logits", "f32[N, K, H, W]: class scores at the input's size"),
        Port::req(
            "features",
            "f32[N, C·2^(L−1), H/2^(L−1), W/2^(L−1)]: the bottleneck",
        ),
        Port::req("decoded", "f32[N, C, H, W]: the last decoder output, before the head"),
    ];
    type Params = Params;

    fn trace(p: &Params, t: &mut Tracer<'_>, image: Source) -> Result<Vec<Source>, String> {
        if !(2..=6).contains(&p.levels) {
            return Err(format!("`levels` must be 2..=6, got {}", p.levels));
        }
        let [h, w] = image_size(t, &image)?;
        let min = 1usize << (p.levels - 1);
        if h < min || w < min {
            return Err(format!(
                "a {h}×{w} image is smaller than {min}×{min}, the least {} levels can pool",
                p.levels
            ));
        }
        let c = p.width.get();
        let mut skips: Vec<Source> = Vec::with_capacity(p.levels);
        let mut x = image;
        for i in 0..p.levels {
            x = t.scope(&format!("down{i}"), |t| {
                let input = if i == 0 {
                    x.clone()
                } else {
                    let pool = max_pool2d::Params {
                        kernel: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
                        stride: None,
                        padding: 0,
                    };
                    let outs = t.op::<MaxPool2d>("pool", pool, vec![Some(x.clone())])?;
                    single(outs)?
                };
                double_conv(t, input, c << i)
            })?;
            skips.push(x.clone());
        }
        let features = x.clone();
        for i in (0..p.levels - 1).rev() {
            let skip = skips[i].clone();
            x = t.scope(&format!("up{i}"), |t| {
                let size = size_of(t, &skip)?;
                let up = resize(t, "upsample", x.clone(), size)?;
                let joined = concat(t, "cat", up, skip)?;
                double_conv(t, joined, c << i)
            })?;
        }
        debug_assert_eq!(channels(t, &x).ok(), Some(c));
        let decoded = x.clone();
        let logits = conv(
            t,
            "head",
            x,
            Conv::new(p.classes.get(), 1).bias(Bias::Zeros),
        )?;
        Ok(vec![logits, features, decoded])
    }
}

/// In the current scope: conv3×3 `conv1` → `bn1` → `relu1` → conv3×3 `conv2` → `bn2` → `relu2`,
/// both to `co` channels.
fn double_conv(t: &mut Tracer<'_>, x: Source, co: usize) -> Result<Source, String> {
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
        assert_eq!((p.classes.get(), p.width.get(), p.levels), (11, 16, 4));
        let e = from_node::<Params>(&parse_yaml("{ classes: 3, depth: 2 }").unwrap()).unwrap_err();
        assert!(e.message.contains("unknown field `depth`"), "{e}");
    }
}
