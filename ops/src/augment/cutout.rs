//! `cutout`: with probability `p` per sample, one box of the image is overwritten with `fill`,
//! and the same pixels become `ignore_index` in the label map and 0 in the validity map (Cutout,
//! DeVries & Taylor 2017, as PseudoSeg uses it on its strong view: a 100 × 100 box filled with
//! the mean pixel, excluded from the loss through the validity mask `v`).
//!
//! The box: its size from `size` (a fraction of each side, a fraction of the area, or pixels),
//! its centre uniform over the image's pixels, rows cy − ⌊bh/2⌋ .. cy − ⌊bh/2⌋ + bh and columns
//! likewise, clipped at the border — a box centred near an edge covers less than asked.
//!
//! Shapes: `image` f32[N, C, H, W]; optional `label` i32[N, H, W] and `valid` f32[N, H, W] →
//! `image_out` f32[N, C, H, W]; `label_out` i32[N, H, W] (i32[0], empty, when `label` is not
//! connected: outputs cannot be optional, and an empty tensor fails loudly wherever it is used as
//! a label map); `valid_out` f32[N, H, W], `valid` (all ones when not connected) with 0 in the
//! box — the mask that keeps the box out of a loss.
//!
//! Randomness: the node's Philox stream this iteration (`ExecCx::rng`), sample n reading
//! counters n·16 (apply), n·16 + 1 (centre row), n·16 + 2 (centre column)
//! (`flowseg_kernels::augment::draw_cutout`). A stop-gradient: augmentations apply to data. Its
//! kernels' CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.
//!
//! Not here: several boxes per image, boxes kept inside the image (UniMatch's CutMix box: the
//! mix family), pasting another image into the box (CutMix).

use super::common::{image_spec, probability};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{DType, ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::augment::{cutout_fwd, draw_cutout, CutoutSize};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use serde::{Deserialize, Deserializer};

/// The `cutout` op.
pub struct Cutout;

/// Params of `cutout`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Probability that a sample gets a box, in [0, 1] (required).
    #[serde(deserialize_with = "probability")]
    pub p: f32,
    /// The box size before clipping (required).
    pub size: Size,
    /// The box's image value: one number for every channel or one per channel, each in [0, 1];
    /// default 0.5.
    #[serde(default = "default_fill", deserialize_with = "fill_values")]
    pub fill: Fill,
    /// The box's label value; default 255, the segmentation datasets' "void".
    #[serde(default = "default_ignore_index")]
    pub ignore_index: i32,
}

/// The box size, as written in YAML: `{ side: 0.5 }`, `{ area: 0.25 }` or `{ pixels: [h, w] }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// Each side this fraction of the image's side, in (0, 1]: round(f·H) × round(f·W).
    Side(#[serde(deserialize_with = "fraction")] f32),
    /// This fraction of the image's area, in (0, 1], with the image's aspect ratio:
    /// round(√a·H) × round(√a·W).
    Area(#[serde(deserialize_with = "fraction")] f32),
    /// Height and width in pixels (PseudoSeg: [100, 100]), at most the image's.
    Pixels([usize; 2]),
}

impl From<Size> for CutoutSize {
    fn from(s: Size) -> Self {
        match s {
            Size::Side(f) => CutoutSize::Side(f),
            Size::Area(a) => CutoutSize::Area(a),
            Size::Pixels([h, w]) => CutoutSize::Pixels(h, w),
        }
    }
}

/// The fill value(s): `0.5` or `[0.485, 0.456, 0.406]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a number or a list of one number per channel")]
pub enum Fill {
    /// The same value in every channel.
    Value(f32),
    /// One value per channel.
    PerChannel(Vec<f32>),
}

impl Fill {
    /// The values for `c` channels, or `None` when a per-channel list has another length.
    fn per_channel(&self, c: usize) -> Option<Vec<f32>> {
        match self {
            Fill::Value(v) => Some(vec![*v; c]),
            Fill::PerChannel(v) => (v.len() == c).then(|| v.clone()),
        }
    }
}

fn default_fill() -> Fill {
    Fill::Value(0.5)
}

fn default_ignore_index() -> i32 {
    255
}

/// A size fraction: in (0, 1].
fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let f = f32::deserialize(d)?;
    if f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err(serde::de::Error::custom(format!(
            "a box fraction must be in (0, 1], got {f}"
        )))
    }
}

/// Fill values inside the images' range [0, 1].
fn fill_values<'de, D: Deserializer<'de>>(d: D) -> Result<Fill, D::Error> {
    let fill = Fill::deserialize(d)?;
    let values = match &fill {
        Fill::Value(v) => std::slice::from_ref(v),
        Fill::PerChannel(v) => v.as_slice(),
    };
    match values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        Some(v) => Err(serde::de::Error::custom(format!(
            "fill values must be in [0, 1] like the images, got {v}"
        ))),
        None => Ok(fill),
    }
}

/// Checks an optional per-pixel input: `dtype`[N, H, W] of the image's N, H, W.
fn check_pixels(
    inputs: &[Option<&TensorSpec>],
    i: usize,
    dtype: DType,
    want: &[usize],
) -> Result<bool, String> {
    let Some(s) = inputs.get(i).copied().flatten() else {
        return Ok(false);
    };
    if s.dtype != dtype || s.shape != want {
        let name = Cutout::INPUTS[i].name;
        let want = TensorSpec {
            dtype,
            shape: want.to_vec(),
        };
        return Err(format!(
            "`{name}` must be {want} (the N, H, W of `image`), got {s}"
        ));
    }
    Ok(true)
}

impl Op for Cutout {
    const NAME: &'static str = "cutout";
    const SUMMARY: &'static str =
        "with probability p per sample, fill one random box of the image; ignore its labels, zero its validity";
    const INPUTS: &'static [Port] = &[
        Port::req("image", "f32[N, C, H, W] in [0, 1]"),
        Port::opt("label", "i32[N, H, W] label map"),
        Port::opt(
            "valid",
            "f32[N, H, W] validity mask (1 = counts in the loss)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("image_out", "f32[N, C, H, W], the box filled with `fill`"),
        Port::req(
            "label_out",
            "i32[N, H, W], the box set to `ignore_index`; i32[0] when `label` is unconnected",
        ),
        Port::req(
            "valid_out",
            "f32[N, H, W], `valid` (or ones) with 0 in the box",
        ),
    ];
    const EXAMPLE: &'static str = "name: cut\nop: cutout\n\
        inputs: { image: blur.image_out, label: batch.label }\n\
        params: { p: 0.5, size: { area: 0.25 }, fill: 0.5 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ p: 1.0, size: { area: 0.25 } }",
        feeds: &[("image", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// Augmentations transform data; no gradient flows back to the images.
    const STOP_GRAD: bool = true;

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let s = image_spec(Self::INPUTS, inputs, 0, false)?;
        if p.fill.per_channel(s.c).is_none() {
            return Err(format!(
                "`fill` has one value per channel but `image` has {} channels: {}",
                s.c,
                TensorSpec::nchw(s)
            ));
        }
        let pixels = [s.n, s.h, s.w];
        let label = check_pixels(inputs, 1, DType::I32, &pixels)?;
        check_pixels(inputs, 2, DType::F32, &pixels)?;
        Ok(vec![
            TensorSpec::nchw(s),
            TensorSpec::i32(if label { &pixels } else { &[0] }),
            TensorSpec::f32(&pixels),
        ])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let image = io::f32(Self::INPUTS, inputs, 0)?;
        let label = match inputs.get(1).copied().flatten() {
            Some(_) => Some(io::i32(Self::INPUTS, inputs, 1)?),
            None => None,
        };
        let valid = io::f32_opt(Self::INPUTS, inputs, 2)?;
        let fill = fill_for(p, shape.c)?;
        let draws = draw_cutout(&cx.rng(), shape.n, shape.h, shape.w, p.p, p.size.into())?;
        let (image_out, rest) = outputs.split_at_mut(1);
        let (label_out, valid_out) = rest.split_at_mut(1);
        let image_out = io::f32_out(&Self::OUTPUTS[..1], image_out, 0)?;
        let label_out = match label {
            Some(_) => Some(io::i32_out(&Self::OUTPUTS[1..2], label_out, 0)?),
            None => None,
        };
        let valid_out = io::f32_out(&Self::OUTPUTS[2..], valid_out, 0)?;
        Ok(cutout_fwd(
            image,
            label,
            valid,
            shape,
            &draws,
            &fill,
            p.ignore_index,
            image_out,
            label_out,
            Some(valid_out),
        )?)
    }

    /// The boxes are drawn on the host from the node's stream, as on the CPU.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let image = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let label = match inputs.get(1).copied().flatten() {
            Some(_) => Some(dev_io::i32(Self::INPUTS, inputs, 1)?),
            None => None,
        };
        let valid = dev_io::f32_opt(Self::INPUTS, inputs, 2)?;
        let fill = fill_for(p, shape.c)?;
        let draws = draw_cutout(
            &cx.exec.rng(),
            shape.n,
            shape.h,
            shape.w,
            p.p,
            p.size.into(),
        )?;
        let mut image_out = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let mut label_out = match label {
            Some(_) => Some(dev_io::i32_out(Self::OUTPUTS, outputs, 1)?),
            None => None,
        };
        let mut valid_out = dev_io::f32_out(Self::OUTPUTS, outputs, 2)?;
        let label = label.as_ref().map(|l| l as &dyn cuda::DeviceBuf<i32>);
        let valid = valid.as_ref().map(|v| v as &dyn cuda::DeviceBuf<f32>);
        let label_out = label_out
            .as_mut()
            .map(|l| l as &mut dyn cuda::DeviceBufMut<i32>);
        Ok(cuda::augment::cutout_fwd(
            cx.dev,
            &image,
            label,
            valid,
            shape,
            &draws,
            &fill,
            p.ignore_index,
            &mut image_out,
            label_out,
            Some(&mut valid_out),
        )?)
    }
}

/// `fill` per channel for an image of `c` channels, or the error naming the mismatch (the CPU
/// and CUDA paths check it alike).
fn fill_for(p: &Params, c: usize) -> Result<Vec<f32>, OpError> {
    p.fill.per_channel(c).ok_or(OpError::Input {
        port: "image",
        problem: format!("{c} channels but `fill` has another count"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::common::{random_images, run_at};
    use crate::support::test::{i32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, Tensor, TensorSpec};

    const N: usize = 6;
    const H: usize = 10;
    const W: usize = 12;

    fn inputs(with_label: bool, with_valid: bool) -> Vec<Option<Tensor>> {
        let pixels = N * H * W;
        let label: Vec<i32> = (0..pixels as i32).map(|i| i % 19).collect();
        vec![
            Some(random_images(5, &[N, 3, H, W], 0.0, 0.4)),
            with_label.then(|| i32s(&[N, H, W], &label)),
            with_valid.then(|| random_images(6, &[N, H, W], 0.5, 1.0)),
        ]
    }

    /// Per sample, the pixels (y·W + x) where the image differs from its input in every channel.
    fn changed_pixels(x: &Tensor, y: &Tensor) -> Vec<Vec<usize>> {
        let (x, y) = (x.f32().unwrap(), y.f32().unwrap());
        let plane = H * W;
        (0..N)
            .map(|n| {
                (0..plane)
                    .filter(|&p| {
                        (0..3).all(|c| x[(n * 3 + c) * plane + p] != y[(n * 3 + c) * plane + p])
                    })
                    .collect()
            })
            .collect()
    }

    /// Per sample, the pixels where `pred` holds.
    fn where_<T: Copy>(v: &[T], pred: impl Fn(usize, T) -> bool) -> Vec<Vec<usize>> {
        let plane = H * W;
        (0..N)
            .map(|n| {
                (0..plane)
                    .filter(|&p| pred(n * plane + p, v[n * plane + p]))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn image_label_and_valid_are_edited_in_the_same_box() {
        let node = "name: cut\nop: cutout\n\
            params: { p: 1, size: { area: 0.25 }, fill: [0.9, 0.8, 0.7], ignore_index: 254 }\n";
        let ins = inputs(true, true);
        let out = run(node, &ins);
        assert_eq!(out[0].spec(), ins[0].as_ref().unwrap().spec());
        assert_eq!(out[1].spec(), &TensorSpec::i32(&[N, H, W]));
        assert_eq!(out[2].spec(), &TensorSpec::f32(&[N, H, W]));
        let boxes = changed_pixels(ins[0].as_ref().unwrap(), &out[0]);
        let label_in = ins[1].as_ref().unwrap().i32().unwrap();
        let valid_in = ins[2].as_ref().unwrap().f32().unwrap();
        let ignored = where_(out[1].i32().unwrap(), |_, l| l == 254);
        let zeroed = where_(out[2].f32().unwrap(), |_, v| v == 0.0);
        assert_eq!(boxes, ignored);
        assert_eq!(boxes, zeroed);
        // Outside the box, label and valid are copied; inside, the image is the fill.
        let kept_label = where_(out[1].i32().unwrap(), |i, l| l == label_in[i]);
        let kept_valid = where_(out[2].f32().unwrap(), |i, v| v == valid_in[i]);
        let image = out[0].f32().unwrap();
        for n in 0..N {
            assert_eq!(kept_label[n].len() + boxes[n].len(), H * W);
            assert_eq!(kept_valid[n].len() + boxes[n].len(), H * W);
            // √0.25 = half of each side: 5 × 6 when the box fits, fewer pixels when clipped.
            assert!(
                !boxes[n].is_empty() && boxes[n].len() <= 30,
                "{:?}",
                boxes[n]
            );
            for &p in &boxes[n] {
                for (c, f) in [0.9, 0.8, 0.7].into_iter().enumerate() {
                    assert_eq!(image[(n * 3 + c) * H * W + p], f);
                }
            }
        }
        assert!(boxes.iter().any(|b| b.len() == 30), "some box fits whole");
    }

    #[test]
    fn unconnected_label_and_valid() {
        let node = "name: cut\nop: cutout\nparams: { p: 1, size: { pixels: [4, 4] } }\n";
        let ins = inputs(false, false);
        let out = run(node, &ins);
        assert_eq!(out[1].spec(), &TensorSpec::i32(&[0]));
        let boxes = changed_pixels(ins[0].as_ref().unwrap(), &out[0]);
        let valid = out[2].f32().unwrap();
        assert!(valid.iter().all(|&v| v == 0.0 || v == 1.0));
        assert_eq!(where_(valid, |_, v| v == 0.0), boxes);
        assert!(out[0]
            .f32()
            .unwrap()
            .iter()
            .all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn p_zero_copies_and_draws_follow_the_iteration() {
        let ins = inputs(true, true);
        let none = "name: cut\nop: cutout\nparams: { p: 0, size: { side: 0.5 } }\n";
        let out = run(none, &ins);
        for k in 0..3 {
            assert_eq!(Some(&out[k]), ins[k].as_ref());
        }
        let half = "name: cut\nop: cutout\nparams: { p: 0.5, size: { side: 0.5 } }\n";
        let cx = |iteration| ExecCx {
            seed: 4,
            iteration,
            node_key: 3,
        };
        let a = run_at(half, &ins, cx(0));
        assert_eq!(a, run_at(half, &ins, cx(0)));
        assert_ne!(a, run_at(half, &ins, cx(1)));
        let cut = changed_pixels(ins[0].as_ref().unwrap(), &a[0]);
        let cut_samples = cut.iter().filter(|b| !b.is_empty()).count();
        assert!((1..N).contains(&cut_samples), "{cut_samples} of {N} cut");
    }

    #[test]
    fn infer_rejects_mismatched_maps_and_fill() {
        let node = "name: cut\nop: cutout\nparams: { p: 1, size: { side: 0.5 } }\n";
        let image = Some(TensorSpec::f32(&[2, 3, 8, 8]));
        let e = infer_err(
            node,
            &[image.clone(), Some(TensorSpec::i32(&[2, 8, 7])), None],
        );
        assert_eq!(
            e,
            "`label` must be i32[2, 8, 8] (the N, H, W of `image`), got i32[2, 8, 7]"
        );
        let e = infer_err(
            node,
            &[image.clone(), Some(TensorSpec::f32(&[2, 8, 8])), None],
        );
        assert_eq!(
            e,
            "`label` must be i32[2, 8, 8] (the N, H, W of `image`), got f32[2, 8, 8]"
        );
        let e = infer_err(
            node,
            &[image.clone(), None, Some(TensorSpec::f32(&[1, 8, 8]))],
        );
        assert_eq!(
            e,
            "`valid` must be f32[2, 8, 8] (the N, H, W of `image`), got f32[1, 8, 8]"
        );
        let e = infer_err(node, &[Some(TensorSpec::i32(&[2, 3, 8, 8])), None, None]);
        assert_eq!(e, "`image` must be f32[N, C, H, W], got i32[2, 3, 8, 8]");
        let two =
            "name: cut\nop: cutout\nparams: { p: 1, size: { side: 0.5 }, fill: [0.1, 0.2] }\n";
        let e = infer_err(two, &[image, None, None]);
        assert!(
            e.contains("`fill` has one value per channel but `image` has 3 channels"),
            "{e}"
        );
    }

    #[test]
    fn bad_params_are_rejected() {
        let e = try_configure("name: c\nop: cutout\nparams: { p: 1, size: { area: 1.5 } }\n")
            .unwrap_err();
        assert!(
            e.message
                .contains("a box fraction must be in (0, 1], got 1.5"),
            "{e}"
        );
        let e = try_configure("name: c\nop: cutout\nparams: { p: 1, size: { radius: 3 } }\n")
            .unwrap_err();
        assert!(e.message.contains("unknown variant `radius`"), "{e}");
        let e =
            try_configure("name: c\nop: cutout\nparams: { p: 1, size: { side: 0.2 }, fill: 2 }\n")
                .unwrap_err();
        assert!(e.message.contains("fill values must be in [0, 1]"), "{e}");
        let e =
            try_configure("name: c\nop: cutout\nparams: { p: 1, size: { side: 0.2 }, fill: x }\n")
                .unwrap_err();
        assert!(
            e.message
                .contains("a number or a list of one number per channel"),
            "{e}"
        );
        let e = try_configure("name: c\nop: cutout\nparams: { p: 1 }\n").unwrap_err();
        assert!(e.message.contains("missing field `size`"), "{e}");
    }
}
