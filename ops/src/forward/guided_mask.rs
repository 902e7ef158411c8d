//! `guided_mask`: CCT's prediction-guided perturbations (yassouali/CCT models/decoders.py),
//! masking features by the main decoder's predicted labels:
//!
//! * `mode: context` (`ContextMaskingDecoder`, `guided_masking(..., return_msk_context=True)`):
//!   keep the objects, m = [label ≠ background] — the context is masked out;
//! * `mode: object` (`ObjectMaskingDecoder`): keep the context, m = [label = background];
//! * `mode: cutout` (`CutOutDecoder`, `guided_cutout`): m = 1 except one box per predicted
//!   object, a fraction `erase` of its bounding box's sides at a random offset inside it, for
//!   objects whose boundary has more than `min_boundary` pixels (kernels/src/perturb.rs
//!   `guided_cutout_boxes` says how the boxes are drawn).
//!
//! y = x ⊙ m, m shared by the channels. As CCT, the mask is made at the label map's own size —
//! the labels are `pred.argmax(1)` of the detached main prediction (`max_confidence`'s `label`
//! here), at the output's resolution — and then resized to the features' H×W with nearest
//! interpolation (`F.interpolate(mask, size, mode='nearest')`), so boxes and object sizes are
//! those of the prediction, not of a coarse feature map (at an 8×8 bottleneck no object has a
//! boundary worth cutting). A label map of the features' size skips the resize.
//!
//! Shapes: `x` f32[N, C, H, W], `label` i32[N, Hl, Wl] (any Hl, Wl ≥ 1) → `y` the spec of `x`,
//! `mask` f32[N, H, W].
//!
//! Randomness (cutout only): the node's Philox stream this iteration, two words per object
//! (`guided_cutout_boxes`).
//!
//! Backward: dx = dy ⊙ m (`masked_bwd`, forward/perturb.rs); no gradient reaches `label`
//! (an i32 map).
//!
//! Deviation: OpenCV's contour point count (`c.shape[0] > 50` with CHAIN_APPROX_SIMPLE at a
//! 320-pixel crop) becomes a boundary-pixel count with its own threshold.

use crate::forward::perturb::{self, multiplier_spec, Over};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{affine_fwd, mul_broadcast_fwd, Broadcast};
use flowseg_kernels::mix::{box_mask_fwd, Combine, MixBox};
use flowseg_kernels::perturb::{foreground_mask_fwd, guided_cutout_boxes, GuidedCutout};
use flowseg_kernels::resize::resize_nearest_fwd;
use flowseg_kernels::Nchw;
use serde::{Deserialize, Deserializer};

/// The `guided_mask` op.
pub struct GuidedMask;

/// Which guided perturbation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Keep the predicted objects (CCT's context masking).
    Context,
    /// Keep the predicted background (CCT's object masking).
    Object,
    /// Erase a box inside each large predicted object (CCT's guided cutout).
    Cutout,
}

/// Params of `guided_mask`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `context`, `object` or `cutout` (required).
    pub mode: Mode,
    /// The label that is not an object; default 0.
    #[serde(default)]
    pub background: i32,
    /// Cutout: the fraction of each bounding-box side erased, in [0, 1]; default 0.4 (CCT).
    #[serde(default = "default_erase", deserialize_with = "unit")]
    pub erase: f64,
    /// Cutout: objects with at most this many boundary pixels are left alone; default 10
    /// (CCT's 50 contour points at a 320-pixel crop, scaled to a 64-pixel image).
    #[serde(default = "default_min_boundary")]
    pub min_boundary: usize,
}

fn default_erase() -> f64 {
    0.4
}

fn default_min_boundary() -> usize {
    10
}

fn unit<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "`erase` must be in [0, 1], got {v}"
        )))
    }
}

impl Op for GuidedMask {
    const NAME: &'static str = "guided_mask";
    const SUMMARY: &'static str =
        "CCT's context / object masking and guided cutout of features by predicted labels";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W] features"),
        Port::req(
            "label",
            "i32[N, Hl, Wl] predicted labels at the prediction's size (e.g. max_confidence.label)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "f32[N, C, H, W] masked features"),
        Port::req("mask", "f32[N, H, W]: the multiplier, 0 or 1"),
    ];
    const EXAMPLE: &'static str = "name: cut1\nop: guided_mask\n\
        inputs: { x: u.decoded, label: guide.label }\n\
        params: { mode: cutout, erase: 0.4, min_boundary: 10 }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        GradCase {
            params: "{ mode: cutout, min_boundary: 0 }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("label", Feed::Labels(&[2, 5, 7])),
            ],
        },
        GradCase {
            params: "{ mode: context }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("label", Feed::Labels(&[2, 5, 7])),
            ],
        },
        // The label map at twice the features' size: the mask is made there and sampled.
        GradCase {
            params: "{ mode: cutout, min_boundary: 0 }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("label", Feed::Labels(&[2, 10, 14])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let want = multiplier_spec(x, Over::Channels);
        let label = io::spec(Self::INPUTS, inputs, 1)?;
        let ok = label.dtype == DType::I32
            && label.shape.len() == 3
            && label.shape[0] == x.n
            && label.shape[1] > 0
            && label.shape[2] > 0;
        if !ok {
            return Err(format!(
                "`label` must be i32[{}, Hl, Wl] (N of `x`, any positive size), got {label}",
                x.n
            ));
        }
        Ok(vec![TensorSpec::nchw(x), want])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let label = io::i32(Self::INPUTS, inputs, 1)?;
        let (n, h, w) = (shape.n, shape.h, shape.w);
        let (lh, lw) = label_size(inputs)?;
        let [y, mask] = outputs else {
            return Err(OpError::Output {
                port: "y",
                problem: format!("expected 2 outputs, got {}", outputs.len()),
            });
        };
        let one = std::slice::from_mut;
        let y = io::f32_out(Self::OUTPUTS, one(y), 0)?;
        let mask = io::f32_out(&Self::OUTPUTS[1..], one(mask), 0)?;
        let same_size = (lh, lw) == (h, w);
        let mut at_label = if same_size {
            Vec::new()
        } else {
            vec![0f32; n * lh * lw]
        };
        let m: &mut [f32] = if same_size { mask } else { &mut at_label };
        match p.mode {
            Mode::Context => foreground_mask_fwd(label, p.background, true, m)?,
            Mode::Object => foreground_mask_fwd(label, p.background, false, m)?,
            Mode::Cutout => {
                let params = GuidedCutout {
                    background: p.background,
                    erase: p.erase,
                    min_boundary: p.min_boundary,
                };
                let boxes = guided_cutout_boxes(label, n, lh, lw, params, &cx.rng())?;
                // A fixed number of boxes per sample: pad with empty ones.
                let per = boxes.iter().map(Vec::len).max().unwrap_or(0);
                let mut flat = Vec::with_capacity(n * per);
                for b in &boxes {
                    flat.extend_from_slice(b);
                    flat.resize(flat.len() + per - b.len(), MixBox::default());
                }
                let mut erased = vec![0f32; m.len()];
                box_mask_fwd(&flat, n, lh, lw, per, Combine::Union, &mut erased)?;
                affine_fwd(&erased, -1.0, 1.0, m)?;
            }
        }
        if !same_size {
            let at = Nchw::new(n, 1, lh, lw);
            resize_nearest_fwd(&at_label, at, h, w, mask)?;
        }
        Ok(mul_broadcast_fwd(
            x,
            mask,
            shape,
            Broadcast::OverChannels,
            y,
        )?)
    }

    /// Context and object masks are made on the device; the cutout's boxes are drawn on the
    /// host from the label map, read back first (one copy per node), with the node's stream.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let label = dev_io::i32(Self::INPUTS, inputs, 1)?;
        let (n, h, w) = (shape.n, shape.h, shape.w);
        let (lh, lw) = match inputs
            .get(1)
            .copied()
            .flatten()
            .map(|t| t.spec.shape.as_slice())
        {
            Some(&[_, lh, lw]) => (lh, lw),
            other => {
                return Err(OpError::Input {
                    port: "label",
                    problem: format!("expected i32[N, Hl, Wl], got shape {other:?}"),
                })
            }
        };
        let dev = cx.dev;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let mask = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
        let same_size = (lh, lw) == (h, w);
        let mut scratch = dev_io::Scratch::new(dev);
        let mut m = if same_size {
            dev_io::alias(&mask)
        } else {
            scratch.f32(n * lh * lw)?
        };
        match p.mode {
            Mode::Context => {
                cuda::perturb::foreground_mask_fwd(dev, &label, p.background, true, &mut m)?
            }
            Mode::Object => {
                cuda::perturb::foreground_mask_fwd(dev, &label, p.background, false, &mut m)?
            }
            Mode::Cutout => {
                let mut host = vec![0i32; label.len()];
                dev.download_into(&label, &mut host)?;
                let params = GuidedCutout {
                    background: p.background,
                    erase: p.erase,
                    min_boundary: p.min_boundary,
                };
                let boxes = guided_cutout_boxes(&host, n, lh, lw, params, &cx.exec.rng())?;
                let per = boxes.iter().map(Vec::len).max().unwrap_or(0);
                let mut flat = Vec::with_capacity(n * per);
                for b in &boxes {
                    flat.extend_from_slice(b);
                    flat.resize(flat.len() + per - b.len(), MixBox::default());
                }
                let mut erased = scratch.f32(m.len())?;
                cuda::mix::box_mask_fwd(dev, &flat, n, lh, lw, per, Combine::Union, &mut erased)?;
                cuda::elementwise::affine_fwd(dev, &erased, -1.0, 1.0, &mut m)?;
            }
        }
        if !same_size {
            // Nearest resampling copies words: the f32 mask viewed as i32 on both sides.
            // SAFETY: the same memory as `m` and `mask`, element for element.
            let (from, mut to) = unsafe {
                (
                    cuda::RawBuf::<i32>::new(m.addr(), m.len()),
                    cuda::RawBuf::<i32>::new(mask.addr(), mask.len()),
                )
            };
            let at = Nchw::new(n, 1, lh, lw);
            cuda::resize::resize_nearest_fwd(dev, &from, at, h, w, &mut to)?;
        }
        let over = Broadcast::OverChannels;
        Ok(cuda::elementwise::mul_broadcast_fwd(
            dev, &x, &mask, shape, over, &mut y,
        )?)
    }

    fn vjp(_: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(perturb::backward(g, Self::OUTPUTS, 1, Over::Channels))
    }
}

/// Hl, Wl of the `label` input (i32[N, Hl, Wl], checked by `infer`).
fn label_size(inputs: &[Option<&Tensor>]) -> Result<(usize, usize), OpError> {
    match inputs
        .get(1)
        .copied()
        .flatten()
        .map(|t| t.spec().shape.as_slice())
    {
        Some(&[_, lh, lw]) => Ok((lh, lw)),
        other => Err(OpError::Input {
            port: "label",
            problem: format!("expected i32[N, Hl, Wl], got shape {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, i32s, infer_err, run, try_configure};
    use flowseg_engine::TensorSpec;

    /// One sample, 1 channel, 6×8: a 4×6 object of class 2 at rows 1..5, columns 1..7.
    fn inputs() -> [Option<flowseg_engine::Tensor>; 2] {
        let mut l = vec![0i32; 48];
        for y in 1..5 {
            for x in 1..7 {
                l[y * 8 + x] = 2;
            }
        }
        let x: Vec<f32> = (1..=48).map(|v| v as f32).collect();
        [Some(f32s(&[1, 1, 6, 8], &x)), Some(i32s(&[1, 6, 8], &l))]
    }

    #[test]
    fn context_and_object_masks_are_complements() {
        let ctx = run(
            "name: g\nop: guided_mask\nparams: { mode: context }\n",
            &inputs(),
        );
        let obj = run(
            "name: g\nop: guided_mask\nparams: { mode: object }\n",
            &inputs(),
        );
        let (mc, mo) = (ctx[1].f32().unwrap(), obj[1].f32().unwrap());
        assert_eq!(mc.iter().sum::<f32>(), 24.0);
        for i in 0..48 {
            assert_eq!(mc[i] + mo[i], 1.0);
            assert_eq!(ctx[0].f32().unwrap()[i], (i + 1) as f32 * mc[i]);
        }
    }

    #[test]
    fn cutout_erases_one_box_inside_the_object() {
        // Boundary 16 pixels; bb_w = 5, bb_h = 3, erase 0.4: a box of ⌊1.2⌋ = 1 row and ⌊2⌋ = 2
        // columns inside rows 1..=4, columns 1..=6.
        let out = run(
            "name: g\nop: guided_mask\nparams: { mode: cutout, min_boundary: 15 }\n",
            &inputs(),
        );
        let m = out[1].f32().unwrap();
        let zeros: Vec<usize> = (0..48).filter(|&i| m[i] == 0.0).collect();
        assert_eq!(zeros.len(), 2, "{zeros:?}");
        assert_eq!(zeros[1], zeros[0] + 1, "one row, two adjacent columns");
        for &i in &zeros {
            let (y, x) = (i / 8, i % 8);
            assert!((1..5).contains(&y) && (1..7).contains(&x), "({y}, {x})");
        }
        // Above the object's 16 boundary pixels nothing is erased.
        let out = run(
            "name: g\nop: guided_mask\nparams: { mode: cutout, min_boundary: 16 }\n",
            &inputs(),
        );
        assert!(out[1].f32().unwrap().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn params_and_shapes_are_checked() {
        let e = try_configure("name: g\nop: guided_mask\nparams: { mode: cut }\n").unwrap_err();
        assert!(e.message.contains("unknown variant `cut`"), "{e}");
        let e = try_configure("name: g\nop: guided_mask\nparams: { mode: cutout, erase: 2 }\n")
            .unwrap_err();
        assert!(e.message.contains("`erase` must be in [0, 1]"), "{e}");
        let e = infer_err(
            "name: g\nop: guided_mask\nparams: { mode: context }\n",
            &[
                Some(TensorSpec::f32(&[2, 4, 8, 8])),
                Some(TensorSpec::i32(&[3, 16, 16])),
            ],
        );
        assert_eq!(
            e,
            "`label` must be i32[2, Hl, Wl] (N of `x`, any positive size), got i32[3, 16, 16]"
        );
    }

    #[test]
    fn a_larger_label_map_is_masked_at_its_size_then_sampled_nearest() {
        // Labels 12×16 over features 3×4: the mask is made at 12×16 and nearest-sampled at
        // rows 0, 4, 8 and columns 0, 4, 8, 12 (F.interpolate's floor(dst · scale)). Class 2 on
        // rows 4..8, columns 3..9: sampled points (1, 1) and (1, 2) only.
        let mut l = vec![0i32; 12 * 16];
        for y in 4..8 {
            for x in 3..9 {
                l[y * 16 + x] = 2;
            }
        }
        let x: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let inputs = [Some(f32s(&[1, 1, 3, 4], &x)), Some(i32s(&[1, 12, 16], &l))];
        let out = run(
            "name: g\nop: guided_mask\nparams: { mode: context }\n",
            &inputs,
        );
        let mut want = [0f32; 12];
        want[5] = 1.0;
        want[6] = 1.0;
        assert_eq!(out[1].f32(), Some(&want[..]));
        assert_eq!(
            out[0].f32(),
            Some(&[0., 0., 0., 0., 0., 6., 7., 0., 0., 0., 0., 0.][..])
        );
        // Cutout at 12×16: boundary 16 > 15, bb 5 × 3, erase 1: the box is rows 4..7, columns
        // 3..8 whatever the draws, so of the sampled points it takes (1, 1) and not (1, 2).
        let out = run(
            "name: g\nop: guided_mask\nparams: { mode: cutout, min_boundary: 15, erase: 1.0 }\n",
            &inputs,
        );
        let mut want = [1f32; 12];
        want[5] = 0.0;
        assert_eq!(out[1].f32(), Some(&want[..]));
    }
}
