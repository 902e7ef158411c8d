//! Parity of the CUDA pixel self-attention (kernels/src/cuda/attention.rs) with
//! kernels/src/attention.rs, forward and backward, with and without a padding mask, at odd sizes
//! and at PseudoSeg's (128-d keys over a 8×8 bottleneck). The sums run in another order than the
//! CPU's GEMMs and exp is CUDA's: agreement to f32 rounding, tolerances named per check.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::attention::{self, AttentionShape};
use flowseg_kernels::cuda::{self, DeviceBuf};

#[test]
fn attention_matches_cpu_forward_and_backward() {
    let Some(dev) = device() else { return };
    for (n, d, c, positions) in [(1, 1, 1, 1), (3, 5, 2, 37), (8, 128, 20, 64)] {
        let s = AttentionShape { n, d, c, positions };
        let (qk, vc) = (n * d * positions, n * c * positions);
        let q = uniform(110, qk, -1.0, 1.0);
        let k = uniform(111, qk, -1.0, 1.0);
        let v = uniform(112, vc, 0.0, 1.0);
        let dy = uniform(113, vc, -1.0, 1.0);
        let mask: Vec<f32> = (0..n * positions)
            .map(|i| if i % 5 == 4 { 0.0 } else { 1.0 })
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let (gq, gk, gv, gdy, gm) = (
            up(&dev, &q),
            up(&dev, &k),
            up(&dev, &v),
            up(&dev, &dy),
            up(&dev, &mask),
        );
        for masked in [false, true] {
            let valid_cpu = masked.then_some(&mask[..]);
            let valid_gpu = masked.then_some(&gm as &dyn DeviceBuf<f32>);
            let what = format!("n={n} d={d} c={c} P={positions} masked={masked}");
            let mut y = up(&dev, &vec![f32::NAN; vc]);
            let mut y_cpu = vec![0f32; vc];
            cuda::attention::attention_fwd(&dev, &gq, &gk, &gv, valid_gpu, s, scale, &mut y)
                .unwrap();
            attention::attention_fwd(&q, &k, &v, valid_cpu, s, scale, &mut y_cpu).unwrap();
            close(
                &format!("attention_fwd {what}"),
                &down(&dev, &y),
                &y_cpu,
                1e-6,
                1e-4,
            );

            let (mut dq, mut dk, mut dv) = (zeros(&dev, qk), zeros(&dev, qk), zeros(&dev, vc));
            let (mut dq_cpu, mut dk_cpu, mut dv_cpu) =
                (vec![0f32; qk], vec![0f32; qk], vec![0f32; vc]);
            cuda::attention::attention_bwd(
                &dev,
                &gq,
                &gk,
                &gv,
                valid_gpu,
                s,
                scale,
                &gdy,
                Some(&mut dq),
                Some(&mut dk),
                Some(&mut dv),
            )
            .unwrap();
            attention::attention_bwd(
                &q,
                &k,
                &v,
                valid_cpu,
                s,
                scale,
                &dy,
                Some(&mut dq_cpu),
                Some(&mut dk_cpu),
                Some(&mut dv_cpu),
            )
            .unwrap();
            close(
                &format!("attention_bwd dq {what}"),
                &down(&dev, &dq),
                &dq_cpu,
                1e-5,
                1e-3,
            );
            close(
                &format!("attention_bwd dk {what}"),
                &down(&dev, &dk),
                &dk_cpu,
                1e-5,
                1e-3,
            );
            close(
                &format!("attention_bwd dv {what}"),
                &down(&dev, &dv),
                &dv_cpu,
                1e-6,
                1e-4,
            );
        }
    }
}
