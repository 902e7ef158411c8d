//! The CUDA device's own plumbing (kernels/src/cuda/device.rs) on a GPU: the arena hands out
//! aligned, disjoint buffers that launchers accept, and resets.
//!
//! Without a GPU every test prints "skipped: no CUDA device (<reason>)" and passes, unless
//! `FLOWSEG_REQUIRE_GPU=1` (the GPU check script), which makes it fail.
#![cfg(feature = "cuda")]
// Helpers outside #[test] fns unwrap too: a panic is the failure report here.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod cuda_common;
use cuda_common::*;

use flowseg_kernels::cuda;

#[test]
fn arena_hands_out_aligned_disjoint_buffers() {
    let Some(dev) = device() else { return };
    let mut arena = dev.arena(4096).unwrap();
    {
        let a = arena.alloc::<f32>(3).unwrap();
        let mut b = arena.alloc::<f32>(3).unwrap();
        let s = dev.stream();
        use cuda::DeviceBuf;
        assert_eq!(b.device_addr(s) - a.device_addr(s), 256);
        assert!(arena.alloc::<u8>(4096).is_err());
        cuda::philox::fill_uniform(&dev, 1, 2, 0, &mut b).unwrap();
    }
    arena.reset();
    assert_eq!(arena.used(), 0);
}
