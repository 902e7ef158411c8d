//! `box_mask`: CutMix masks — rectangles per sample, drawn from the node's Philox stream — and
//! the partner each sample mixes with. Feeds `mix`, which applies one mask to images, logits,
//! labels and confidences alike.
//!
//! Convention (shared by the `mix` family): `mask` f32[N, H, W] in {0, 1}, 1 = "this pixel
//! comes from the partner"; `partner` i32[N]; `mix` computes out[n] = (1 − m[n])·a[n] +
//! m[n]·src[partner[n]], src = `b` if given, else `a`.
//!
//! Shapes: `like` is any tensor whose leading dim is N and last two are H, W (f32[N, C, H, W],
//! f32[N, H, W] or i32[N, H, W]); only its spec is read → `mask` f32[N, H, W], `partner` i32[N].
//!
//! The methods, as params (geometry, counters and the deliberate differences from each
//! official generator in `flowseg_kernels::mix`):
//! * CutMix-Seg: `{ partner: same, area: 0.5 }` — one box of half the image, aspect
//!   log-uniform on [0.5, 2] (the default aspect range clamped to where the box fits); several
//!   boxes with `boxes: k, combine: xor` as its `--boxmask_n_boxes`.
//! * UniMatch: `{ partner: same, p: 0.5, area: [0.02, 0.4], aspect_sampling: uniform }`.
//! * AugSeg: `{ partner: permute, area: { beta: [4, 4] }, aspect: [1, 1] }`.
//!
//! Partners: `roll` is partner[n] = (n + 1) mod N, i.e. `src[partner]` is
//! `torch.roll(src, shifts=-1, dims=0)` (ClassMix's next sample); `permute` a random
//! permutation (fixed points allowed, as `torch.randperm`); `same` partner[n] = n, for mixing
//! with a second batch `b`.
//!
//! A stop-gradient: the mask and partner are constants (`like` only lends its shape). Its
//! kernels' CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.
//! The draws are counter-based, so the twin reproduces these masks exactly.

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::mix::{self as kernel, box_mask_fwd, draw_boxes, draw_partners, BoxParams};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// The `box_mask` op.
pub struct BoxMask;

/// How each sample's partner is chosen (shared with `class_mask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partner {
    /// partner[n] = (n + 1) mod N: `torch.roll(src, shifts=-1, dims=0)`.
    Roll,
    /// A uniform random permutation of the batch from the node's random stream.
    Permute,
    /// partner[n] = n: mix with the same sample of a second batch `b`.
    Same,
}

impl From<Partner> for kernel::Partner {
    fn from(p: Partner) -> Self {
        match p {
            Partner::Roll => kernel::Partner::Roll,
            Partner::Permute => kernel::Partner::Permute,
            Partner::Same => kernel::Partner::Same,
        }
    }
}

/// How a sample's boxes combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// 1 inside any box.
    #[default]
    Union,
    /// Each box flips what it covers (CutMix-Seg's multi-box masks).
    Xor,
}

/// How the aspect is drawn from its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AspectSampling {
    /// ln ρ uniform (CutMix-Seg).
    #[default]
    LogUniform,
    /// ρ uniform (UniMatch).
    Uniform,
}

/// The boxes' total area as a fraction of the image: a number (fixed, CutMix-Seg's 0.5), a
/// range `[lo, hi]` drawn uniformly (UniMatch's [0.02, 0.4]), or `{ beta: [α, β] }` with integer
/// α, β ≥ 1, α + β ≤ 62 (AugSeg's boxes: area 1 − λ with λ ~ Beta(4, 4) is `{ beta: [4, 4] }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Area {
    /// Always this fraction, in [0, 1].
    Fixed(f32),
    /// Uniform on [lo, hi], 0 ≤ lo ≤ hi ≤ 1.
    Range(f32, f32),
    /// Beta(α, β).
    Beta(u32, u32),
}

impl From<Area> for kernel::Area {
    fn from(a: Area) -> Self {
        match a {
            Area::Fixed(a) => kernel::Area::Fixed(a),
            Area::Range(lo, hi) => kernel::Area::Uniform { lo, hi },
            Area::Beta(alpha, beta) => kernel::Area::Beta { alpha, beta },
        }
    }
}

fn unit<E: de::Error>(v: f64, what: &str) -> Result<f32, E> {
    if (0.0..=1.0).contains(&v) {
        Ok(v as f32)
    } else {
        Err(E::custom(format!("{what} must be in [0, 1], got {v}")))
    }
}

impl<'de> Deserialize<'de> for Area {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Area;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an area fraction like 0.5, a range [lo, hi], or { beta: [a, b] }")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Area, E> {
                unit(v, "the area").map(Area::Fixed)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Area, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Area, E> {
                self.visit_f64(v as f64)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Area, A::Error> {
                let mut next = |i| -> Result<f64, A::Error> {
                    s.next_element::<f64>()?
                        .ok_or_else(|| de::Error::invalid_length(i, &"two fractions [lo, hi]"))
                };
                let (lo, hi) = (next(0)?, next(1)?);
                if s.next_element::<f64>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &"two fractions [lo, hi]"));
                }
                let (lo, hi) = (unit(lo, "the area's lo")?, unit(hi, "the area's hi")?);
                if lo > hi {
                    return Err(de::Error::custom(format!(
                        "the area range [{lo}, {hi}] must have lo <= hi"
                    )));
                }
                Ok(Area::Range(lo, hi))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Area, M::Error> {
                match m.next_key::<String>()?.as_deref() {
                    Some("beta") => {}
                    Some(other) => {
                        return Err(de::Error::unknown_field(other, &["beta"]));
                    }
                    None => return Err(de::Error::missing_field("beta")),
                }
                let [a, b] = m.next_value::<[u32; 2]>()?;
                if a < 1 || b < 1 || a + b > 62 {
                    return Err(de::Error::custom(format!(
                        "beta: [{a}, {b}] needs integers a, b >= 1 with a + b <= 62"
                    )));
                }
                if m.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("the area mapping takes only `beta`"));
                }
                Ok(Area::Beta(a, b))
            }
        }
        d.deserialize_any(V)
    }
}

/// Params of `box_mask`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Who each sample mixes with: `roll`, `permute` or `same` (required).
    pub partner: Partner,
    /// Boxes per sample, 1 to 64; default 1. Each covers `area / boxes`.
    #[serde(default = "one_box", deserialize_with = "box_count")]
    pub boxes: usize,
    /// Total area of a sample's boxes (see [`Area`]); default 0.5 (CutMix-Seg).
    #[serde(default = "half")]
    pub area: Area,
    /// [lo, hi] of the aspect ρ = (h/H)/(w/W), 0 < lo ≤ hi; default [0.3, 1/0.3]. Clamped per
    /// box to [a, 1/a], where a box of area a fits.
    #[serde(default = "default_aspect", deserialize_with = "aspect_range")]
    pub aspect: [f32; 2],
    /// `log_uniform` (default, CutMix-Seg) or `uniform` (UniMatch).
    #[serde(default)]
    pub aspect_sampling: AspectSampling,
    /// Probability that a sample gets boxes at all (else its mask is all 0); default 1.
    #[serde(default = "always", deserialize_with = "probability")]
    pub p: f32,
    /// `union` (default) or `xor` of a sample's boxes.
    #[serde(default)]
    pub combine: Combine,
}

fn one_box() -> usize {
    1
}
fn half() -> Area {
    Area::Fixed(0.5)
}
fn default_aspect() -> [f32; 2] {
    [0.3, 1.0 / 0.3]
}
fn always() -> f32 {
    1.0
}

fn box_count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let k = usize::deserialize(d)?;
    if (1..=kernel::MAX_BOXES).contains(&k) {
        Ok(k)
    } else {
        Err(de::Error::custom(format!(
            "boxes must be in 1..={}, got {k}",
            kernel::MAX_BOXES
        )))
    }
}

fn aspect_range<'de, D: Deserializer<'de>>(d: D) -> Result<[f32; 2], D::Error> {
    let [lo, hi] = <[f64; 2]>::deserialize(d)?;
    if lo > 0.0 && lo <= hi && hi.is_finite() {
        Ok([lo as f32, hi as f32])
    } else {
        Err(de::Error::custom(format!(
            "the aspect range must satisfy 0 < lo <= hi, finite, got [{lo}, {hi}]"
        )))
    }
}

fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    unit(f64::deserialize(d)?, "p")
}

impl Params {
    fn kernel(&self) -> BoxParams {
        BoxParams {
            boxes: self.boxes,
            area: self.area.into(),
            aspect: self.aspect,
            aspect_sampling: match self.aspect_sampling {
                AspectSampling::LogUniform => kernel::AspectSampling::LogUniform,
                AspectSampling::Uniform => kernel::AspectSampling::Uniform,
            },
            p: self.p,
        }
    }
}

/// (N, H, W) of a spec whose leading dim is N and last two are H, W (rank 3 or 4).
pub(crate) fn batch_plane(s: &TensorSpec) -> Option<(usize, usize, usize)> {
    match s.shape[..] {
        [n, h, w] | [n, _, h, w] => Some((n, h, w)),
        _ => None,
    }
}

/// Checks that N, H, W fit the counter layout.
pub(crate) fn check_extent(n: usize, h: usize, w: usize) -> Result<(), String> {
    if n > kernel::MAX_BATCH || h >= 1 << 24 || w >= 1 << 24 {
        return Err(format!(
            "a batch of [{n}, {h}, {w}] exceeds {} samples or 2^24 rows or columns",
            kernel::MAX_BATCH
        ));
    }
    Ok(())
}

impl Op for BoxMask {
    const NAME: &'static str = "box_mask";
    const SUMMARY: &'static str =
        "CutMix box masks per sample and each sample's mixing partner (CutMix-Seg, UniMatch)";
    const INPUTS: &'static [Port] = &[Port::req(
        "like",
        "[N, C, H, W] or [N, H, W], f32 or i32: lends N, H, W (values unread)",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "mask",
            "f32[N, H, W] in {0, 1}: 1 inside the boxes (from the partner)",
        ),
        Port::req("partner", "i32[N]: the sample each sample mixes with"),
    ];
    const EXAMPLE: &'static str = "name: cut\nop: box_mask\ninputs: { like: batch.u_image }\n\
        params: { partner: same, area: [0.02, 0.4], aspect_sampling: uniform, p: 0.5 }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Stop-gradients: the masks are drawn (box) or read off labels (class).
        GradCase {
            params: "{ partner: permute, area: [0.02, 0.4] }",
            feeds: &[("like", Feed::Trainable(&[2, 3, 5, 7]))],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// The mask and partner are drawn, not computed from `like`: constants for autodiff.
    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let like = io::spec(Self::INPUTS, inputs, 0)?;
        let (n, h, w) = batch_plane(like)
            .ok_or_else(|| format!("`like` must be [N, C, H, W] or [N, H, W], got {like}"))?;
        check_extent(n, h, w)?;
        Ok(vec![TensorSpec::f32(&[n, h, w]), TensorSpec::i32(&[n])])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let like = inputs.first().copied().flatten().ok_or(OpError::Input {
            port: "like",
            problem: "not connected".into(),
        })?;
        let (n, h, w) = batch_plane(like.spec()).ok_or_else(|| OpError::Input {
            port: "like",
            problem: format!("expected [N, C, H, W] or [N, H, W], got {}", like.spec()),
        })?;
        let rng = cx.rng();
        let boxes = draw_boxes(&rng, n, h, w, &p.kernel())?;
        let (mask, partner) = outputs.split_at_mut(1);
        let mask = io::f32_out(&Self::OUTPUTS[..1], mask, 0)?;
        let partner = io::i32_out(&Self::OUTPUTS[1..], partner, 0)?;
        let combine = match p.combine {
            Combine::Union => kernel::Combine::Union,
            Combine::Xor => kernel::Combine::Xor,
        };
        box_mask_fwd(&boxes, n, h, w, p.boxes, combine, mask)?;
        Ok(draw_partners(&rng, p.partner.into(), partner)?)
    }

    /// The boxes and partners are drawn on the host from the node's random stream, exactly as
    /// on the CPU; the mask is filled on the device and the partners copied there.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let like = inputs.first().copied().flatten().ok_or(OpError::Input {
            port: "like",
            problem: "not connected".into(),
        })?;
        let (n, h, w) = batch_plane(&like.spec).ok_or_else(|| OpError::Input {
            port: "like",
            problem: format!("expected [N, C, H, W] or [N, H, W], got {}", like.spec),
        })?;
        let rng = cx.exec.rng();
        let boxes = draw_boxes(&rng, n, h, w, &p.kernel())?;
        let combine = match p.combine {
            Combine::Union => kernel::Combine::Union,
            Combine::Xor => kernel::Combine::Xor,
        };
        let mut mask = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        cuda::mix::box_mask_fwd(cx.dev, &boxes, n, h, w, p.boxes, combine, &mut mask)?;
        let mut partner = dev_io::i32_out(Self::OUTPUTS, outputs, 1)?;
        let mut host = vec![0i32; cuda::DeviceBuf::<i32>::elems(&partner)];
        draw_partners(&rng, p.partner.into(), &mut host)?;
        Ok(cx.dev.upload_into(&host, &mut partner)?)
    }
}

#[cfg(test)]
mod tests {
    use super::{Area, Params, Partner};
    use crate::support::test::{configure, infer_err, try_configure};
    use flowseg_engine::{ExecCx, Tensor, TensorSpec};

    /// Runs a configured `box_mask` node on a `like` of `shape` with context `cx`.
    fn run(params: &str, shape: &[usize], cx: ExecCx) -> (Vec<f32>, Vec<i32>) {
        let op = configure(&format!("name: cut\nop: box_mask\nparams: {params}\n"));
        let like = Tensor::zeros(&TensorSpec::f32(shape));
        let specs = [Some(like.spec())];
        let mut out: Vec<Tensor> = op
            .infer(&specs)
            .unwrap()
            .iter()
            .map(Tensor::zeros)
            .collect();
        op.cpu(&cx, &[Some(&like)], &mut out).unwrap();
        (
            out[0].f32().unwrap().to_vec(),
            out[1].i32().unwrap().to_vec(),
        )
    }

    fn cx(iteration: u64) -> ExecCx {
        ExecCx {
            seed: 17,
            iteration,
            node_key: 3,
        }
    }

    #[test]
    fn cutmix_seg_masks_cover_half_of_each_image() {
        let (n, h, w) = (6, 20, 30);
        let (mask, partner) = run("{ partner: same }", &[n, 3, h, w], cx(0));
        assert_eq!(partner, [0, 1, 2, 3, 4, 5]);
        for s in 0..n {
            let m = &mask[s * h * w..(s + 1) * h * w];
            assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
            // One box: its rows and columns are where the mask is set.
            let rows = (0..h)
                .filter(|&y| m[y * w..(y + 1) * w].contains(&1.0))
                .count();
            let cols = (0..w)
                .filter(|&x| (0..h).any(|y| m[y * w + x] == 1.0))
                .count();
            let count = m.iter().filter(|&&v| v == 1.0).count();
            assert_eq!(count, rows * cols, "sample {s} is not one rectangle");
            let err = (count as f64 - 300.0).abs();
            assert!(
                err <= 0.5 * (rows + cols) as f64 + 0.25,
                "sample {s}: {count}"
            );
        }
    }

    #[test]
    fn partners_and_p_zero() {
        let (mask, partner) = run("{ partner: roll, p: 0 }", &[4, 5, 5], cx(0));
        assert!(mask.iter().all(|&v| v == 0.0));
        assert_eq!(partner, [1, 2, 3, 0]);
        let (_, partner) = run("{ partner: permute }", &[9, 2, 2], cx(0));
        let mut sorted = partner.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..9).collect::<Vec<_>>(), "{partner:?}");
    }

    #[test]
    fn deterministic_per_context_and_new_each_iteration() {
        let params = "{ partner: permute, area: [0.02, 0.4], p: 0.5 }";
        let a = run(params, &[8, 16, 16], cx(4));
        assert_eq!(a, run(params, &[8, 16, 16], cx(4)));
        assert_ne!(a, run(params, &[8, 16, 16], cx(5)));
        let other_node = ExecCx {
            node_key: 4,
            ..cx(4)
        };
        assert_ne!(a, run(params, &[8, 16, 16], other_node));
        // An i32 `like` of the same N, H, W draws the same masks.
        let op = configure(&format!("name: cut\nop: box_mask\nparams: {params}\n"));
        let like = Tensor::zeros(&TensorSpec::i32(&[8, 16, 16]));
        let mut out: Vec<Tensor> = op
            .infer(&[Some(like.spec())])
            .unwrap()
            .iter()
            .map(Tensor::zeros)
            .collect();
        op.cpu(&cx(4), &[Some(&like)], &mut out).unwrap();
        assert_eq!(out[0].f32().unwrap(), &a.0[..]);
    }

    #[test]
    fn xor_of_two_boxes_differs_from_union_only_on_overlaps() {
        let union = run(
            "{ partner: same, boxes: 2, area: 0.6 }",
            &[16, 12, 12],
            cx(1),
        )
        .0;
        let xor = run(
            "{ partner: same, boxes: 2, area: 0.6, combine: xor }",
            &[16, 12, 12],
            cx(1),
        )
        .0;
        // Same boxes (same counters): xor ≤ union, and they differ somewhere (an overlap).
        assert!(xor.iter().zip(&union).all(|(x, u)| x <= u));
        assert_ne!(xor, union);
    }

    #[test]
    fn params_decode_and_refuse_bad_values() {
        let p = |s: &str| {
            let yaml = format!("name: cut\nop: box_mask\nparams: {s}\n");
            try_configure(&yaml).map(|op| format!("{op:?}"))
        };
        let ok = p("{ partner: same, area: { beta: [4, 4] }, aspect: [1, 1] }").unwrap();
        assert!(ok.contains("Beta(4, 4)"), "{ok}");
        let ok = p("{ partner: roll, area: [0.02, 0.4] }").unwrap();
        assert!(ok.contains("Range(0.02, 0.4)"), "{ok}");
        for (bad, want) in [
            ("{}", "missing field `partner`"),
            ("{ partner: next }", "unknown variant `next`"),
            ("{ partner: same, area: 1.5 }", "the area must be in [0, 1]"),
            ("{ partner: same, area: [0.4, 0.1] }", "must have lo <= hi"),
            ("{ partner: same, area: [0.1] }", "two fractions"),
            ("{ partner: same, area: { beta: [0, 2] } }", "a, b >= 1"),
            (
                "{ partner: same, area: { gamma: 2 } }",
                "unknown field `gamma`",
            ),
            ("{ partner: same, boxes: 0 }", "boxes must be in 1..=64"),
            ("{ partner: same, aspect: [2, 1] }", "aspect range"),
            ("{ partner: same, p: 1.2 }", "p must be in [0, 1]"),
            ("{ partner: same, combine: and }", "unknown variant `and`"),
        ] {
            let e = p(bad).expect_err(bad);
            assert!(e.message.contains(want), "{bad}: {}", e.message);
            assert!(e.loc.line > 0, "{bad}: no location");
        }
        let defaults = Params {
            partner: Partner::Same,
            boxes: 1,
            area: Area::Fixed(0.5),
            aspect: [0.3, 1.0 / 0.3],
            aspect_sampling: Default::default(),
            p: 1.0,
            combine: Default::default(),
        };
        assert_eq!(
            p("{ partner: same }").unwrap(),
            format!("box_mask({defaults:?})")
        );
    }

    #[test]
    fn infer_reads_n_h_w_from_like() {
        let op = configure("name: cut\nop: box_mask\nparams: { partner: same }\n");
        for shape in [&[2, 3, 8, 9][..], &[2, 8, 9]] {
            let out = op.infer(&[Some(&TensorSpec::f32(shape))]).unwrap();
            assert_eq!(out, [TensorSpec::f32(&[2, 8, 9]), TensorSpec::i32(&[2])]);
        }
        let e = infer_err(
            "name: cut\nop: box_mask\nparams: { partner: same }\n",
            &[Some(TensorSpec::f32(&[2, 8]))],
        );
        assert_eq!(e, "`like` must be [N, C, H, W] or [N, H, W], got f32[2, 8]");
    }
}
