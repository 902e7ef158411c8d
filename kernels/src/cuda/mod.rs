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
//! and mix ops, applying draws made on the host), `more.rs` (leaky relu, threshold, concat and
//! slice, dropout, the masked probability-space losses, dot, channel reductions), `conv.rs`
//! (convolution forward and backward as implicit GEMMs).
//!
//! Not here: multi-stream scheduling, CUDA graphs, cuBLAS (only the benchmark
//! `benches/cuda_kernels.rs` calls it, as the yardstick), the engine's `Device` trait.
//!
//! # CPU kernel → CUDA launcher
//!
//! Every CPU kernel of this crate (a `pub fn` named `*_fwd`, `*_bwd`, `*_step`, and
//! `ema_update`, `confusion_add`, Philox's `u32_at` / `fill_uniform` / `fill_normal`) and its
//! twin here. `tests/cuda_coverage.rs` reads this table and fails when a CPU kernel has no row,
//! a row names a CPU kernel that no longer exists, or a launcher is missing from its file — so a
//! kernel added later without a twin is caught. Format: one row per kernel,
//! `| `file::cpu_name` | `launcher_file::launcher_name` |`.
//!
//! | CPU kernel | CUDA launcher |
//! | --- | --- |
//! | `activation::relu_fwd` | `launch::relu_fwd` |
//! | `activation::relu_bwd` | `launch::relu_bwd` |
//! | `activation::leaky_relu_fwd` | `more::leaky_relu_fwd` |
//! | `activation::leaky_relu_bwd` | `more::leaky_relu_bwd` |
//! | `argmax::argmax_fwd` | `launch::argmax_fwd` |
//! | `argmax::max_fwd` | `launch::max_fwd` |
//! | `argmax::max_bwd` | `launch::max_bwd` |
//! | `augment::color_jitter_fwd` | `augment_mix::color_jitter_fwd` |
//! | `augment::grayscale_fwd` | `augment_mix::grayscale_fwd` |
//! | `augment::gaussian_blur_fwd` | `augment_mix::gaussian_blur_fwd` |
//! | `augment::cutout_fwd` | `augment_mix::cutout_fwd` |
//! | `batch_norm::batch_norm_train_fwd` | `nn::batch_norm_train_fwd` |
//! | `batch_norm::batch_norm_eval_fwd` | `nn::batch_norm_eval_fwd` |
//! | `batch_norm::batch_norm_train_bwd` | `nn::batch_norm_train_bwd` |
//! | `batch_norm::batch_norm_eval_bwd` | `nn::batch_norm_eval_bwd` |
//! | `conv2d::conv2d_fwd` | `conv::conv2d_fwd` |
//! | `conv2d::conv2d_bwd` | `conv::conv2d_bwd` |
//! | `dropout::dropout_fwd` | `more::dropout_fwd` |
//! | `dropout::dropout_bwd` | `more::dropout_bwd` |
//! | `dropout::dropout2d_fwd` | `more::dropout2d_fwd` |
//! | `dropout::dropout2d_bwd` | `more::dropout2d_bwd` |
//! | `elementwise::add_fwd` | `launch::add_fwd` |
//! | `elementwise::mul_fwd` | `launch::mul_fwd` |
//! | `elementwise::mul_bwd` | `launch::mul_bwd` |
//! | `elementwise::scale_fwd` | `launch::scale_fwd` |
//! | `elementwise::threshold_fwd` | `more::threshold_fwd` |
//! | `elementwise::concat_channels_fwd` | `more::concat_channels_fwd` |
//! | `elementwise::concat_channels_bwd` | `more::concat_channels_bwd` |
//! | `elementwise::concat_batch_fwd` | `more::concat_batch_fwd` |
//! | `elementwise::concat_batch_bwd` | `more::concat_batch_bwd` |
//! | `elementwise::slice_channels_fwd` | `more::slice_channels_fwd` |
//! | `elementwise::slice_channels_bwd` | `more::slice_channels_bwd` |
//! | `elementwise::slice_batch_fwd` | `more::slice_batch_fwd` |
//! | `elementwise::slice_batch_bwd` | `more::slice_batch_bwd` |
//! | `loss::cross_entropy_fwd` | `launch::cross_entropy_fwd` |
//! | `loss::cross_entropy_bwd` | `launch::cross_entropy_bwd` |
//! | `loss::soft_cross_entropy_fwd` | `more::soft_cross_entropy_fwd` |
//! | `loss::soft_cross_entropy_bwd` | `more::soft_cross_entropy_bwd` |
//! | `loss::squared_error_fwd` | `more::squared_error_fwd` |
//! | `loss::squared_error_bwd` | `more::squared_error_bwd` |
//! | `loss::kl_div_fwd` | `more::kl_div_fwd` |
//! | `loss::kl_div_bwd` | `more::kl_div_bwd` |
//! | `metrics::confusion_add` | `launch::confusion_add` |
//! | `metrics::label_agreement_fwd` | `launch::label_agreement_fwd` |
//! | `mix::box_mask_fwd` | `augment_mix::box_mask_fwd` |
//! | `mix::class_mask_fwd` | `augment_mix::class_mask_fwd` |
//! | `mix::mix_fwd` | `augment_mix::mix_fwd` |
//! | `mix::mix_labels_fwd` | `augment_mix::mix_labels_fwd` |
//! | `mix::mix_bwd` | `augment_mix::mix_bwd` |
//! | `optim::sgd_step` | `launch::sgd_step` |
//! | `optim::adamw_step` | `launch::adamw_step` |
//! | `optim::ema_update` | `launch::ema_update` |
//! | `philox::u32_at` | `launch::philox_u32` |
//! | `philox::fill_uniform` | `launch::fill_uniform` |
//! | `philox::fill_normal` | `launch::fill_normal` |
//! | `pool::max_pool2d_fwd` | `nn::max_pool2d_fwd` |
//! | `pool::max_pool2d_bwd` | `nn::max_pool2d_bwd` |
//! | `pool::avg_pool2d_fwd` | `nn::avg_pool2d_fwd` |
//! | `pool::avg_pool2d_bwd` | `nn::avg_pool2d_bwd` |
//! | `pool::global_avg_pool_fwd` | `nn::global_avg_pool_fwd` |
//! | `pool::global_avg_pool_bwd` | `nn::global_avg_pool_bwd` |
//! | `reduce::sum_fwd` | `launch::sum_fwd` |
//! | `reduce::sum_bwd` | `launch::sum_bwd` |
//! | `reduce::mean_fwd` | `launch::mean_fwd` |
//! | `reduce::mean_bwd` | `launch::mean_bwd` |
//! | `reduce::dot_fwd` | `more::dot_fwd` |
//! | `reduce::sum_channels_fwd` | `more::sum_channels_fwd` |
//! | `reduce::sum_channels_bwd` | `more::sum_channels_bwd` |
//! | `reduce::mean_channels_fwd` | `more::mean_channels_fwd` |
//! | `reduce::mean_channels_bwd` | `more::mean_channels_bwd` |
//! | `resize::resize_bilinear_fwd` | `nn::resize_bilinear_fwd` |
//! | `resize::resize_bilinear_bwd` | `nn::resize_bilinear_bwd` |
//! | `resize::resize_nearest_fwd` | `nn::resize_nearest_fwd` |
//! | `softmax::softmax_fwd` | `nn::softmax_fwd` |
//! | `softmax::softmax_bwd` | `nn::softmax_bwd` |
//! | `softmax::log_softmax_fwd` | `nn::log_softmax_fwd` |
//! | `softmax::log_softmax_bwd` | `nn::log_softmax_bwd` |

pub mod augment_mix;
mod common;
pub mod conv;
mod device;
pub mod launch;
pub mod more;
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
