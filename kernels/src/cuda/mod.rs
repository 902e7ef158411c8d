//! CUDA twins of the CPU kernels (feature `cuda`): the device (context, stream, event pool,
//! arena), NVRTC compilation of the embedded `kernels/cuda/*.cu` sources with an on-disk CUBIN
//! cache, and one Rust launcher per kernel in [`launch`], named after its CPU reference.
//!
//! Everything CUDA is dlopened at first use (cudarc's `dynamic-loading`), so this module builds
//! on every machine; [`Device::cuda`] and [`nvrtc::compile`] return a [`CudaError`] instead of
//! panicking where the driver, a device or libnvrtc is missing (cudarc itself panics when a
//! library cannot be loaded, so every entry point probes first).
//!
//! Ordering: one stream per device for now, and cudarc's per-buffer event tracking is turned
//! off before the first allocation — the plan, not cudarc, will own cross-stream ordering
//! (DESIGN.md §4). Launchers only enqueue work; reading results back synchronises.
//!
//! Launchers: `launch.rs` (element-wise, Philox, softmax-CE, optimizers, reductions, argmax,
//! confusion matrix), `nn.rs` (batch norm, pooling, resize, softmax), `augment_mix.rs` (augment
//! and mix ops, applying draws made on the host), `conv.rs` (convolution forward and backward as
//! implicit GEMMs).
//!
//! Not here: multi-stream scheduling, CUDA graphs, cuBLAS, the engine's `Device` trait,
//! dropout, the soft/probability losses (later work in issue 5).

pub mod augment_mix;
mod common;
pub mod conv;
mod device;
pub mod launch;
pub mod nn;
pub mod nvrtc;

pub use device::{Arena, ArenaBuf, Device, DeviceBuf, DeviceBufMut, EventPool};

/// Re-export of the cudarc driver API the launchers and tests use (slices, views, streams).
pub use cudarc::driver as cudarc_driver;

use crate::KernelError;

/// Errors from the CUDA layer. The `Display` text is meant for users: it names what is missing
/// and where it was looked for.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libcuda could not be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver found (libcuda.so): {0}")]
    NoDriver(String),
    /// A driver exists but the requested device does not (or it cannot be used).
    #[error("no usable CUDA device: {0}")]
    NoDevice(String),
    /// libnvrtc could not be loaded, so kernels cannot be compiled.
    #[error("no NVRTC found (libnvrtc.so.13): {0}")]
    NoNvrtc(String),
    /// A driver call failed.
    #[error("CUDA {call} failed: {error}")]
    Driver {
        /// What was being done, e.g. `cuMemAlloc`.
        call: &'static str,
        /// The driver's error.
        error: String,
    },
    /// NVRTC rejected a kernel source; `log` is the compiler's output.
    #[error("NVRTC could not compile {module}.cu for {arch}: {error}\n{log}")]
    Compile {
        /// Module name (the `.cu` file stem).
        module: &'static str,
        /// Target, e.g. `sm_90`.
        arch: String,
        /// NVRTC's error code.
        error: String,
        /// The compile log.
        log: String,
    },
    /// The arena has no room for an allocation.
    #[error("arena full: {requested} bytes requested, {free} of {capacity} free")]
    ArenaFull {
        /// Bytes asked for (after alignment).
        requested: usize,
        /// Bytes left.
        free: usize,
        /// Arena size.
        capacity: usize,
    },
    /// A length or parameter check failed, exactly as the CPU kernel would report it.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Maps a cudarc driver error into [`CudaError::Driver`] naming the call.
pub(crate) fn driver_err(call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        call,
        error: format!("{e:?}"),
    }
}

/// Runs `f`, turning a panic (cudarc panics when a library or symbol is missing) into `err`.
pub(crate) fn no_panic<T>(
    f: impl FnOnce() -> Result<T, CudaError>,
    err: impl FnOnce(String) -> CudaError,
) -> Result<T, CudaError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic inside cudarc".into());
            Err(err(msg))
        }
    }
}
