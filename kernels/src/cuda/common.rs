//! What every launcher file shares: block and grid shapes, the block count of the two-pass
//! reductions, the host-side length and shape checks with the CPU kernels' errors, the `launch!`
//! macro, per-call scratch and uploads.
//!
//! Not here: the launchers themselves (one file per kernel family, named like the CPU kernel
//! file: `elementwise.rs`, `loss.rs`, …), the device and its memory (`device.rs`), the kernel
//! sources (`nvrtc.rs`).

use super::device::{Device, DeviceBuf};
use super::{driver_err, CudaError};
use crate::KernelError;
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, ValidAsZeroBits};

/// Threads per block of every launcher (the `*_THREADS` constants in the `.cu` files).
pub(crate) const THREADS: u32 = 256;
/// Grid-stride kernels never need more blocks than this to fill any current GPU.
pub(crate) const MAX_BLOCKS: usize = 1 << 16;
/// Blocks of the two-pass reductions (`reduce.rs`, `loss.rs`): enough to fill a GPU, few enough
/// for one finishing block.
pub(crate) const REDUCE_BLOCKS: usize = 1024;

/// Blocks of `THREADS` covering `n` elements, at least 1 and at most `cap`.
pub(crate) fn blocks(n: usize, cap: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, cap) as u32
}

/// A 1-D grid-stride launch over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    grid2(blocks(n, MAX_BLOCKS), 1)
}

/// A `x`×`y` grid of `THREADS`-thread blocks.
pub(crate) fn grid2(x: u32, y: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x, y, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block (the finishing pass of a two-pass reduction).
pub(crate) fn one_block() -> LaunchConfig {
    grid2(1, 1)
}

/// `KernelError::Len` unless `buf` holds `expected` elements.
pub(crate) fn expect<T>(
    kernel: &'static str,
    arg: &'static str,
    buf: &(impl DeviceBuf<T> + ?Sized),
    expected: usize,
) -> Result<(), CudaError> {
    let got = buf.elems();
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Len {
            kernel,
            arg,
            expected,
            got,
        }
        .into())
    }
}

/// `KernelError::Shape` of `kernel`.
pub(crate) fn shape_err(kernel: &'static str, reason: String) -> CudaError {
    KernelError::Shape { kernel, reason }.into()
}

/// Zeroed device scratch of `len` elements (at least 1), stream-ordered.
pub(crate) fn scratch<T: DeviceRepr + ValidAsZeroBits>(
    dev: &Device,
    len: usize,
) -> Result<CudaSlice<T>, CudaError> {
    dev.stream()
        .alloc_zeros::<T>(len.max(1))
        .map_err(driver_err("cuMemAlloc"))
}

/// Copies host values (draws, partners) to the device.
pub(crate) fn upload<T: DeviceRepr>(dev: &Device, v: &[T]) -> Result<CudaSlice<T>, CudaError> {
    dev.stream()
        .clone_htod(v)
        .map_err(driver_err("cuMemcpyHtoD"))
}

/// Launches `$name` of `$src` with `$cfg`; every argument must be a local (the builder keeps
/// references to them until the launch).
macro_rules! launch {
    ($dev:expr, $src:expr, $name:literal, $cfg:expr; $($arg:ident),* $(,)?) => {{
        let f = $dev.function(&$src, $name)?;
        let mut builder = $dev.stream().launch_builder(&f);
        $( builder.arg(&$arg); )*
        // SAFETY: the arguments match the kernel's parameter list in the .cu file in number,
        // order and type; buffer lengths were validated against the sizes passed alongside.
        unsafe { builder.launch($cfg) }
            .map(|_| ())
            .map_err($crate::cuda::driver_err("cuLaunchKernel"))
    }};
}
pub(crate) use launch;
