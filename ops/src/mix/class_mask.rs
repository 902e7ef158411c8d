//! `class_mask`: ClassMix masks. For each sample n, the classes present in its partner's label
//! map `label[partner[n]]` (the `ignore` label excluded) are found, half of them are chosen at
//! random without replacement, and m[n] = 1 on the partner's pixels of a chosen class: the
//! partner's objects are pasted whole onto sample n by `mix`.
//!
//! Convention (shared by the `mix` family): `mask` f32[N, H, W] in {0, 1}, 1 = "this pixel
//! comes from the partner"; `partner` i32[N]; `mix` computes out[n] = (1 − m[n])·a[n] +
//! m[n]·src[partner[n]], src = `b` if given, else `a`.
//!
//! Shapes: `label` i32[N, H, W] (usually a teacher prediction's argmax) → `mask` f32[N, H, W],
//! `partner` i32[N].
//!
//! Which label map: the mask must come from the labels of the images it pastes, so `label` is
//! read at `partner[n]`. With `partner: roll | permute` that is the same batch (ClassMix mixes
//! sample i with i+1); with `partner: same` (two batches, `src = b`) partner[n] = n and the mask
//! comes from `label[n]` as given: pass the labels of the second batch `b`.
//!
//! How many: `count: half_down` (default) picks ⌊k/2⌋ of the k classes present, as ClassMix's
//! official `trainSSL.py` does (`int((nclasses - nclasses % 2) / 2)`, so a map with a single
//! class pastes nothing); `half_up` picks ⌈k/2⌉, as DACS's code does
//! (`int((nclasses + nclasses % 2) / 2)`). Draws and counters: `flowseg_kernels::mix`.
//!
//! A stop-gradient: the mask is a function of labels. Its kernels' CUDA twins exist
//! (kernels/src/cuda); the engine does not dispatch ops to them yet.

use super::box_mask::{batch_plane, check_extent, Partner};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::mix::{class_mask_fwd, draw_classes, draw_partners, ClassCount};
use serde::Deserialize;

/// The `class_mask` op.
pub struct ClassMask;

/// How many of the k classes present are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    /// ⌊k/2⌋ (ClassMix's code).
    #[default]
    HalfDown,
    /// ⌈k/2⌉ (DACS's code).
    HalfUp,
}

/// Params of `class_mask`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Who each sample mixes with: `roll`, `permute` or `same` (required).
    pub partner: Partner,
    /// A label that is never chosen (void pixels); default 255.
    #[serde(default = "default_ignore")]
    pub ignore: i32,
    /// `half_down` (default, ClassMix) or `half_up` (DACS).
    #[serde(default)]
    pub count: Count,
}

fn default_ignore() -> i32 {
    255
}

impl Op for ClassMask {
    const NAME: &'static str = "class_mask";
    const SUMMARY: &'static str =
        "ClassMix masks: half of the classes in each partner's label map, and the partners";
    const INPUTS: &'static [Port] = &[Port::req(
        "label",
        "i32[N, H, W] label maps (a prediction's argmax), read at each sample's partner",
    )];
    const OUTPUTS: &'static [Port] = &[
        Port::req(
            "mask",
            "f32[N, H, W] in {0, 1}: 1 on the partner's pixels of a chosen class",
        ),
        Port::req("partner", "i32[N]: the sample each sample mixes with"),
    ];
    const EXAMPLE: &'static str = "name: classes\nop: class_mask\n\
        inputs: { label: pseudo.label }\nparams: { partner: roll, ignore: 255 }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ partner: roll }",
        feeds: &[("label", Feed::Labels(&[2, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    /// The mask is a function of (integer) labels: a constant for autodiff.
    const STOP_GRAD: bool = true;

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let label = io::spec(Self::INPUTS, inputs, 0)?;
        let (n, h, w) = match (label.dtype, &label.shape[..]) {
            (flowseg_engine::DType::I32, [_, _, _]) => batch_plane(label),
            _ => None,
        }
        .ok_or_else(|| format!("`label` must be i32[N, H, W], got {label}"))?;
        check_extent(n, h, w)?;
        Ok(vec![TensorSpec::f32(&[n, h, w]), TensorSpec::i32(&[n])])
    }

    fn cpu(
        p: &Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let label = io::i32(Self::INPUTS, inputs, 0)?;
        let spec = inputs
            .first()
            .copied()
            .flatten()
            .map(Tensor::spec)
            .and_then(batch_plane);
        let Some((n, h, w)) = spec else {
            return Err(OpError::Input {
                port: "label",
                problem: "expected i32[N, H, W]".into(),
            });
        };
        let rng = cx.rng();
        let (mask, partner) = outputs.split_at_mut(1);
        let mask = io::f32_out(&Self::OUTPUTS[..1], mask, 0)?;
        let partner = io::i32_out(&Self::OUTPUTS[1..], partner, 0)?;
        draw_partners(&rng, p.partner.into(), partner)?;
        let count = match p.count {
            Count::HalfDown => ClassCount::HalfDown,
            Count::HalfUp => ClassCount::HalfUp,
        };
        let chosen = draw_classes(label, partner, n, h, w, p.ignore, count, &rng)?;
        Ok(class_mask_fwd(label, partner, &chosen, n, h, w, mask)?)
    }

    /// The classes are drawn on the host, which reads the labels back first (one copy of the
    /// pseudo-label map per node); the partners are drawn there too and copied to the device.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let label = dev_io::i32(Self::INPUTS, inputs, 0)?;
        let spec = inputs
            .first()
            .copied()
            .flatten()
            .map(|t| &t.spec)
            .and_then(batch_plane);
        let Some((n, h, w)) = spec else {
            return Err(OpError::Input {
                port: "label",
                problem: "expected i32[N, H, W]".into(),
            });
        };
        let mut host_label = vec![0i32; cuda::DeviceBuf::<i32>::elems(&label)];
        cx.dev.download_into(&label, &mut host_label)?;
        let rng = cx.exec.rng();
        let mut partner_dev = dev_io::i32_out(Self::OUTPUTS, outputs, 1)?;
        let mut partner = vec![0i32; cuda::DeviceBuf::<i32>::elems(&partner_dev)];
        draw_partners(&rng, p.partner.into(), &mut partner)?;
        let count = match p.count {
            Count::HalfDown => ClassCount::HalfDown,
            Count::HalfUp => ClassCount::HalfUp,
        };
        let chosen = draw_classes(&host_label, &partner, n, h, w, p.ignore, count, &rng)?;
        cx.dev.upload_into(&partner, &mut partner_dev)?;
        let mut mask = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let (dev, chosen) = (cx.dev, &chosen);
        Ok(cuda::mix::class_mask_fwd(
            dev, &label, &partner, chosen, n, h, w, &mut mask,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{configure, i32s, infer_err};
    use flowseg_engine::{ExecCx, Tensor, TensorSpec};
    use std::collections::BTreeSet;

    fn run(params: &str, label: &Tensor, cx: ExecCx) -> (Vec<f32>, Vec<i32>) {
        let op = configure(&format!(
            "name: classes\nop: class_mask\nparams: {params}\n"
        ));
        let mut out: Vec<Tensor> = op
            .infer(&[Some(label.spec())])
            .unwrap()
            .iter()
            .map(Tensor::zeros)
            .collect();
        op.cpu(&cx, &[Some(label)], &mut out).unwrap();
        (
            out[0].f32().unwrap().to_vec(),
            out[1].i32().unwrap().to_vec(),
        )
    }

    fn cx(iteration: u64) -> ExecCx {
        ExecCx {
            seed: 5,
            iteration,
            node_key: 1,
        }
    }

    /// Three 2×4 maps: {1, 3}; {0, 2, 5} and a void pixel; {4, 6, 7, 8}.
    #[rustfmt::skip]
    const LABELS: [i32; 24] = [
        1, 1, 3, 3,   3, 1, 1, 1,
        0, 2, 2, 5,   255, 5, 0, 0,
        4, 6, 7, 8,   8, 8, 7, 6,
    ];

    /// Checks each sample's mask against the classes it selects in its partner's map, and
    /// returns how many classes each sample chose.
    fn chosen_counts(mask: &[f32], partner: &[i32]) -> Vec<usize> {
        let mut counts = Vec::new();
        for (n, &p) in partner.iter().enumerate() {
            let src = &LABELS[p as usize * 8..(p as usize + 1) * 8];
            let m = &mask[n * 8..(n + 1) * 8];
            let chosen: BTreeSet<i32> = src
                .iter()
                .zip(m)
                .filter(|(_, v)| **v == 1.0)
                .map(|(&l, _)| l)
                .collect();
            // Exactly the pixels of the chosen classes: none of them left at 0.
            for (l, &v) in src.iter().zip(m) {
                assert_eq!(v == 1.0, chosen.contains(l), "sample {n}: {m:?} vs {src:?}");
                assert!(v == 0.0 || v == 1.0);
            }
            assert!(!chosen.contains(&255), "the ignore label was chosen");
            counts.push(chosen.len());
        }
        counts
    }

    #[test]
    fn half_of_the_partners_classes_are_pasted() {
        let label = i32s(&[3, 2, 4], &LABELS);
        for it in 0..10 {
            // roll: sample 0 ← 1 (3 classes), 1 ← 2 (4 classes), 2 ← 0 (2 classes).
            let (mask, partner) = run("{ partner: roll }", &label, cx(it));
            assert_eq!(partner, [1, 2, 0]);
            assert_eq!(chosen_counts(&mask, &partner), [1, 2, 1]);
            let (mask, partner) = run("{ partner: roll, count: half_up }", &label, cx(it));
            assert_eq!(chosen_counts(&mask, &partner), [2, 2, 1]);
            // same: each sample's own map (the caller passes the second batch's labels).
            let (mask, partner) = run("{ partner: same, count: half_up }", &label, cx(it));
            assert_eq!(partner, [0, 1, 2]);
            assert_eq!(chosen_counts(&mask, &partner), [1, 2, 2]);
            let (mask, partner) = run("{ partner: permute }", &label, cx(it));
            let mut sorted = partner.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2]);
            let want: Vec<usize> = partner.iter().map(|&p| [1, 1, 2][p as usize]).collect();
            assert_eq!(chosen_counts(&mask, &partner), want);
        }
        // With `ignore: 5`, 255 becomes a class and 5 is never chosen.
        let (mask, _) = run(
            "{ partner: same, ignore: 5, count: half_up }",
            &label,
            cx(0),
        );
        assert_eq!(mask[8 + 3], 0.0);
        assert_eq!(mask[8 + 5], 0.0);
    }

    #[test]
    fn deterministic_per_context_and_new_each_iteration() {
        let label = i32s(&[3, 2, 4], &LABELS);
        let params = "{ partner: permute, count: half_up }";
        let runs: Vec<_> = (0..8).map(|it| run(params, &label, cx(it))).collect();
        assert_eq!(runs[3], run(params, &label, cx(3)));
        let distinct: BTreeSet<_> = runs
            .iter()
            .map(|(m, p)| (m.iter().map(|v| *v as u8).collect::<Vec<_>>(), p.clone()))
            .collect();
        assert!(distinct.len() > 3, "{distinct:?}");
    }

    #[test]
    fn infer_wants_i32_label_maps() {
        const NODE: &str = "name: classes\nop: class_mask\nparams: { partner: roll }\n";
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[2, 4, 4]))]);
        assert_eq!(e, "`label` must be i32[N, H, W], got f32[2, 4, 4]");
        let e = infer_err(NODE, &[Some(TensorSpec::i32(&[2, 1, 4, 4]))]);
        assert_eq!(e, "`label` must be i32[N, H, W], got i32[2, 1, 4, 4]");
        let op = configure(NODE);
        let out = op.infer(&[Some(&TensorSpec::i32(&[2, 4, 5]))]).unwrap();
        assert_eq!(out, [TensorSpec::f32(&[2, 4, 5]), TensorSpec::i32(&[2])]);
    }
}
