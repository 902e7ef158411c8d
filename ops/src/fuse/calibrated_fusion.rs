//! `calibrated_fusion`: PseudoSeg's calibrated fusion of two predictions of the same pixels —
//! both logit maps divided by one common root-mean-square, softmaxed, averaged
//! (googleinterns/wss train_wss.py `_build_pseudo_seg` with `pseudo_src avg`, `logit_norm
//! True`: `v = tf.concat([logits_weak, att_logits_weak], axis=0)`, `v * tf.rsqrt(
//! tf.reduce_mean(tf.square(v)) + 1e-8)`, `prob_weak = (prob_weak + att_prob_weak) / 2.`).
//!
//! s = √(mean(concat(a, b)²) + 1e-8), one scalar over both maps, every sample, class and pixel;
//! y = ½·softmax(a/s) + ½·softmax(b/s) over the class axis. The common scale makes the flatter
//! of the two sources (the decoder's over-confident logits against the self-attention head's)
//! count comparably, without changing either one's argmax.
//!
//! Shapes: `a`, `b` f32[N, K, H, W] (e.g. the decoder's logits and the SGC head's, resized to
//! them) → `y` f32[N, K, H, W] (probabilities), `scale` f32[] (s, worth logging). Kernels:
//! `reduce::dot_fwd` (Σa², Σb² in f64), `elementwise::scale_fwd`, `softmax::softmax_fwd`,
//! `elementwise::add_fwd` (no new kernel).
//!
//! A stop-gradient (`Op::STOP_GRAD`): the fused map becomes a pseudo-label, which the official
//! code wraps in `tf.stop_gradient`. Not here: `pseudo_src att` (use the head's softmax alone),
//! the sharpening (`sharpen`).

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, NoParams};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::elementwise::{add_fwd, scale_fwd};
use flowseg_kernels::reduce::dot_fwd;
use flowseg_kernels::softmax::softmax_fwd;

/// The `calibrated_fusion` op.
pub struct CalibratedFusion;

/// Added to the mean square before the root, as in the official code.
const EPS: f64 = 1e-8;

impl Op for CalibratedFusion {
    const NAME: &'static str = "calibrated_fusion";
    const SUMMARY: &'static str =
        "½softmax(a/s) + ½softmax(b/s), s the RMS of both logit maps (PseudoSeg); stop-gradient";
    const INPUTS: &'static [Port] = &[
        Port::req("a", "f32[N, K, H, W] logits (e.g. the decoder's)"),
        Port::req(
            "b",
            "f32[N, K, H, W] logits of the same pixels (e.g. the SGC head's)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "f32[N, K, H, W] fused probabilities"),
        Port::req("scale", "f32[] s, the common root-mean-square"),
    ];
    const EXAMPLE: &'static str = "name: fused\nop: calibrated_fusion\n\
        inputs: { a: weak.logits, b: sgc_up.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("a", Feed::Trainable(&[2, 3, 5, 7])),
            ("b", Feed::Trainable(&[2, 3, 5, 7])),
        ],
    }];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    /// A pseudo-label source, constant as in the official code.
    const STOP_GRAD: bool = true;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = TensorSpec::nchw(io::nchw_f32(Self::INPUTS, inputs, 0)?);
        let b = io::spec(Self::INPUTS, inputs, 1)?;
        if *b != a {
            return Err(format!("`b` must match `a` ({a}), got {b}"));
        }
        Ok(vec![a, TensorSpec::scalar()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let shape = io::nchw(Self::INPUTS, inputs, 0)?;
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
        let len = a.len();
        let squares = f64::from(dot_fwd(a, a)?) + f64::from(dot_fwd(b, b)?);
        let mean_square = if len == 0 {
            0.0
        } else {
            squares / (2 * len) as f64
        };
        let s = (mean_square + EPS).sqrt();
        let inv = (1.0 / s) as f32;
        let (mut scaled, mut pa, mut pb) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
        scale_fwd(a, inv, &mut scaled)?;
        softmax_fwd(&scaled, shape, &mut pa)?;
        scale_fwd(b, inv, &mut scaled)?;
        softmax_fwd(&scaled, shape, &mut pb)?;
        add_fwd(&pa, &pb, &mut scaled)?;
        scale_fwd(&scaled, 0.5, io::f32_out(Self::OUTPUTS, outputs, 0)?)?;
        match io::f32_out(Self::OUTPUTS, outputs, 1)? {
            [out] => {
                *out = s as f32;
                Ok(())
            }
            other => Err(OpError::Output {
                port: "scale",
                problem: format!("expected a scalar output, got {} elements", other.len()),
            }),
        }
    }

    /// The common scale needs the two sums of squares on the host (read back: one small copy
    /// per node), then everything else runs on the device with the CPU's f32 steps.
    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let shape = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let a = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let (dev, len) = (cx.dev, a.len());
        let mut scratch = dev_io::Scratch::new(dev);
        let (mut aa, mut bb) = (scratch.f32(1)?, scratch.f32(1)?);
        cuda::reduce::dot_fwd(dev, &a, &a, &mut aa)?;
        cuda::reduce::dot_fwd(dev, &b, &b, &mut bb)?;
        let (mut ha, mut hb) = ([0f32], [0f32]);
        dev.download_into(&aa, &mut ha)?;
        dev.download_into(&bb, &mut hb)?;
        let squares = f64::from(ha[0]) + f64::from(hb[0]);
        let mean_square = if len == 0 {
            0.0
        } else {
            squares / (2 * len) as f64
        };
        let s = (mean_square + EPS).sqrt();
        let inv = (1.0 / s) as f32;
        let (mut scaled, mut pa, mut pb) =
            (scratch.f32(len)?, scratch.f32(len)?, scratch.f32(len)?);
        cuda::elementwise::scale_fwd(dev, &a, inv, &mut scaled)?;
        cuda::softmax::softmax_fwd(dev, &scaled, shape, &mut pa)?;
        cuda::elementwise::scale_fwd(dev, &b, inv, &mut scaled)?;
        cuda::softmax::softmax_fwd(dev, &scaled, shape, &mut pb)?;
        cuda::elementwise::add_fwd(dev, &pa, &pb, &mut scaled)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        cuda::elementwise::scale_fwd(dev, &scaled, 0.5, &mut y)?;
        let mut scale = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
        Ok(dev.fill32::<f32>(&mut scale, (s as f32).to_bits())?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed_fusion() {
        // One pixel, K = 2: a = (3, −3), b = (1, −1). mean(v²) = (9 + 9 + 1 + 1)/4 = 5, s = √5
        // (+1e-8 is below f32 resolution). softmax(a/s)_0 = σ(6/√5), softmax(b/s)_0 = σ(2/√5).
        let a = f32s(&[1, 2, 1, 1], &[3.0, -3.0]);
        let b = f32s(&[1, 2, 1, 1], &[1.0, -1.0]);
        let out = run("name: f\nop: calibrated_fusion\n", &[Some(a), Some(b)]);
        let s = 5f64.sqrt();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let y0 = 0.5 * (sigmoid(6.0 / s) + sigmoid(2.0 / s));
        assert_close(out[0].f32().unwrap(), &[y0 as f32, (1.0 - y0) as f32], 1e-6);
        assert_close(out[1].f32().unwrap(), &[s as f32], 1e-6);
        // By hand: σ(2.683282) = 0.936033, σ(0.894427) = 0.709803 → y0 = 0.822918.
        assert!((y0 - 0.822918).abs() < 1e-6, "{y0}");
    }

    #[test]
    fn infer_checks_b_against_a() {
        let e = infer_err(
            "name: f\nop: calibrated_fusion\n",
            &[
                Some(TensorSpec::f32(&[2, 3, 4, 4])),
                Some(TensorSpec::f32(&[2, 3, 2, 2])),
            ],
        );
        assert_eq!(
            e,
            "`b` must match `a` (f32[2, 3, 4, 4]), got f32[2, 3, 2, 2]"
        );
    }
}
