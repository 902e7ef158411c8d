//! Parity of the CUDA Philox words and fills (kernels/src/cuda/philox.rs) with
//! kernels/src/philox.rs, for extreme seeds and streams and counter offsets across 2^32:
//! bit-identical.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;
use flowseg_kernels::philox::Philox;

#[test]
fn philox_matches_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    for &(seed, stream) in &[
        (0u64, 0u64),
        (0xDEAD_BEEF_1234_5678, 77),
        (u64::MAX, u64::MAX),
    ] {
        for &n in SIZES {
            for offset in [0u64, 3, (1 << 32) + 1] {
                let g = Philox::new(seed, stream);
                let mut words = up(&dev, &vec![0u32; n]);
                cuda::philox::philox_u32(&dev, seed, stream, offset, &mut words).unwrap();
                let cpu: Vec<u32> = (0..n as u64).map(|j| g.u32_at(offset + j)).collect();
                exact_int(
                    &format!("philox_u32 n={n} off={offset}"),
                    &down(&dev, &words),
                    &cpu,
                );

                let mut out = up(&dev, &vec![0f32; n]);
                let mut cpu = vec![0f32; n];
                cuda::philox::fill_uniform(&dev, seed, stream, offset, &mut out).unwrap();
                g.fill_uniform(offset, &mut cpu);
                exact(
                    &format!("fill_uniform n={n} off={offset}"),
                    &down(&dev, &out),
                    &cpu,
                );

                cuda::philox::fill_normal(&dev, seed, stream, offset, 0.5, 2.0, &mut out).unwrap();
                g.fill_normal(offset, 0.5, 2.0, &mut cpu);
                exact(
                    &format!("fill_normal n={n} off={offset}"),
                    &down(&dev, &out),
                    &cpu,
                );
            }
        }
    }
}
