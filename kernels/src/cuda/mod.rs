//! CUDA twins of the CPU kernels (feature `cuda`): the device (context, stream, event pool,
//! arena), NVRTC compilation of the embedded `kernels/cuda/*.cu` sources with an on-disk CUBIN
//! cache, and one Rust launcher per CPU kernel.
//!
//! A twin is found by its name: the launcher of `crate::<file>::<kernel>` is
//! `cuda::<file>::<kernel>` (one exception: Philox's `u32_at` is `philox::philox_u32`), and its
//! `__global__` kernels live in `kernels/cuda/<file>.cu`, embedded as [`nvrtc`]'s module of that
//! name. So `src/elementwise.rs`, `src/cuda/elementwise.rs` and `cuda/elementwise.cu` hold the
//! element-wise kernels, and likewise `activation`, `argmax`, `attention`, `augment`,
//! `batch_norm`, `conv2d`, `dropout`, `loss`, `metrics`, `mix`, `optim`, `perturb`, `philox`,
//! `pool`, `reduce`, `resize` and `softmax`. Shared plumbing: `common.rs` (grid shapes, the
//! length check, the `launch!` macro, per-call scratch and uploads), `device.rs` ([`Device`],
//! [`DeviceBuf`], the arena) and `nvrtc.rs` (the embedded sources and their compilation).
//!
//! Launchers: each takes its CPU reference's arguments in the same order (inputs → shape →
//! params → outputs), device buffers in place of slices, and validates lengths, shapes and
//! hyper-parameters on the host with the CPU kernel's own error (a [`KernelError`] naming the
//! kernel and argument, as [`CudaError::Kernel`]) before anything is enqueued. They enqueue on
//! [`Device::stream`] and return without waiting; reading results back synchronises. Where a
//! device kernel cannot report an error (a bad class label), the result says so in-band (the
//! cross-entropy loss becomes NaN, `confusion_add` counts the pixel in `bad`). Scratch
//! (reduction partials, uploaded host draws) is allocated per call on the stream
//! (stream-ordered, freed after the launches that use it); moving it into the plan's arena is
//! later work.
//!
//! Everything CUDA is dlopened at first use (cudarc's `dynamic-loading`), so this module builds
//! on every machine; [`Device::cuda`] and [`nvrtc::compile`] return a [`CudaError`] instead of
//! panicking where the driver, a device or libnvrtc is missing (cudarc itself panics when a
//! library cannot be loaded, so every entry point probes first).
//!
//! Ordering: one stream per device for now, and cudarc's per-buffer event tracking is turned
//! off before the first allocation — the plan, not cudarc, will own cross-stream ordering
//! (DESIGN.md §4).
//!
//! Not here: the engine dispatching ops to these launchers (each op's `cuda` in flowseg-ops,
//! run by engine/src/cuda_exec.rs, which also owns the plan's streams and events), CUDA graphs,
//! cuBLAS (only the benchmark `benches/cuda_kernels.rs` calls it, as the yardstick).
//!
//! # CPU kernel → CUDA launcher
//!
//! Every CPU kernel of this crate (a `pub fn` named `*_fwd`, `*_bwd`, `*_step`, and
//! `ema_update`, `confusion_add`, Philox's `u32_at` / `fill_uniform` / `fill_normal`) and its
//! twin here. `tests/cuda_coverage.rs` reads this table and fails when a CPU kernel has no row,
//! a row names a CPU kernel that no longer exists, a launcher is missing from its file, or a
//! launcher's file is not its CPU kernel's — so a kernel added later without a twin, or a twin
//! filed elsewhere, is caught. Format: one row per kernel,
//! `| `file::cpu_name` | `file::launcher_name` |`, the same `file` on both sides.
//!
//! | CPU kernel | CUDA launcher |
//! | --- | --- |
//! | `activation::relu_fwd` | `activation::relu_fwd` |
//! | `activation::relu_bwd` | `activation::relu_bwd` |
//! | `activation::leaky_relu_fwd` | `activation::leaky_relu_fwd` |
//! | `activation::leaky_relu_bwd` | `activation::leaky_relu_bwd` |
//! | `argmax::argmax_fwd` | `argmax::argmax_fwd` |
//! | `argmax::max_fwd` | `argmax::max_fwd` |
//! | `argmax::max_bwd` | `argmax::max_bwd` |
//! | `attention::attention_fwd` | `attention::attention_fwd` |
//! | `attention::attention_bwd` | `attention::attention_bwd` |
//! | `augment::color_jitter_fwd` | `augment::color_jitter_fwd` |
//! | `augment::grayscale_fwd` | `augment::grayscale_fwd` |
//! | `augment::gaussian_blur_fwd` | `augment::gaussian_blur_fwd` |
//! | `augment::cutout_fwd` | `augment::cutout_fwd` |
//! | `batch_norm::batch_norm_train_fwd` | `batch_norm::batch_norm_train_fwd` |
//! | `batch_norm::batch_norm_eval_fwd` | `batch_norm::batch_norm_eval_fwd` |
//! | `batch_norm::batch_norm_train_bwd` | `batch_norm::batch_norm_train_bwd` |
//! | `batch_norm::batch_norm_eval_bwd` | `batch_norm::batch_norm_eval_bwd` |
//! | `batch_norm::batch_norm_eval_stats_fwd` | `batch_norm::batch_norm_eval_stats_fwd` |
//! | `conv2d::conv2d_fwd` | `conv2d::conv2d_fwd` |
//! | `conv2d::conv2d_bwd` | `conv2d::conv2d_bwd` |
//! | `dropout::dropout_fwd` | `dropout::dropout_fwd` |
//! | `dropout::dropout_bwd` | `dropout::dropout_bwd` |
//! | `dropout::dropout2d_fwd` | `dropout::dropout2d_fwd` |
//! | `dropout::dropout2d_bwd` | `dropout::dropout2d_bwd` |
//! | `elementwise::add_fwd` | `elementwise::add_fwd` |
//! | `elementwise::add_relu_fwd` | `elementwise::add_relu_fwd` |
//! | `elementwise::mul_fwd` | `elementwise::mul_fwd` |
//! | `elementwise::mul_bwd` | `elementwise::mul_bwd` |
//! | `elementwise::scale_fwd` | `elementwise::scale_fwd` |
//! | `elementwise::affine_fwd` | `elementwise::affine_fwd` |
//! | `elementwise::mul_broadcast_fwd` | `elementwise::mul_broadcast_fwd` |
//! | `elementwise::threshold_fwd` | `elementwise::threshold_fwd` |
//! | `elementwise::concat_channels_fwd` | `elementwise::concat_channels_fwd` |
//! | `elementwise::concat_channels_bwd` | `elementwise::concat_channels_bwd` |
//! | `elementwise::concat_batch_fwd` | `elementwise::concat_batch_fwd` |
//! | `elementwise::concat_batch_bwd` | `elementwise::concat_batch_bwd` |
//! | `elementwise::slice_channels_fwd` | `elementwise::slice_channels_fwd` |
//! | `elementwise::slice_channels_bwd` | `elementwise::slice_channels_bwd` |
//! | `elementwise::slice_batch_fwd` | `elementwise::slice_batch_fwd` |
//! | `elementwise::slice_batch_bwd` | `elementwise::slice_batch_bwd` |
//! | `loss::cross_entropy_fwd` | `loss::cross_entropy_fwd` |
//! | `loss::cross_entropy_bwd` | `loss::cross_entropy_bwd` |
//! | `loss::soft_cross_entropy_fwd` | `loss::soft_cross_entropy_fwd` |
//! | `loss::soft_cross_entropy_bwd` | `loss::soft_cross_entropy_bwd` |
//! | `loss::squared_error_fwd` | `loss::squared_error_fwd` |
//! | `loss::squared_error_bwd` | `loss::squared_error_bwd` |
//! | `maps::error_map_fwd` | `maps::error_map_fwd` |
//! | `maps::separable_blur_fwd` | `maps::separable_blur_fwd` |
//! | `maps::minmax_normalize_fwd` | `maps::minmax_normalize_fwd` |
//! | `maps::select_by_key_fwd` | `maps::select_by_key_fwd` |
//! | `loss::binary_cross_entropy_fwd` | `loss::binary_cross_entropy_fwd` |
//! | `loss::binary_cross_entropy_bwd` | `loss::binary_cross_entropy_bwd` |
//! | `metrics::confusion_add` | `metrics::confusion_add` |
//! | `metrics::label_agreement_fwd` | `metrics::label_agreement_fwd` |
//! | `metrics::image_labels_fwd` | `metrics::image_labels_fwd` |
//! | `mix::box_mask_fwd` | `mix::box_mask_fwd` |
//! | `mix::class_mask_fwd` | `mix::class_mask_fwd` |
//! | `mix::mix_fwd` | `mix::mix_fwd` |
//! | `mix::mix_labels_fwd` | `mix::mix_labels_fwd` |
//! | `mix::mix_bwd` | `mix::mix_bwd` |
//! | `optim::sgd_step` | `optim::sgd_step` |
//! | `optim::adamw_step` | `optim::adamw_step` |
//! | `optim::ema_update` | `optim::ema_update` |
//! | `perturb::salient_drop_mask_fwd` | `perturb::salient_drop_mask_fwd` |
//! | `perturb::foreground_mask_fwd` | `perturb::foreground_mask_fwd` |
//! | `philox::u32_at` | `philox::philox_u32` |
//! | `philox::fill_uniform` | `philox::fill_uniform` |
//! | `philox::fill_normal` | `philox::fill_normal` |
//! | `pool::max_pool2d_fwd` | `pool::max_pool2d_fwd` |
//! | `pool::max_pool2d_bwd` | `pool::max_pool2d_bwd` |
//! | `pool::global_avg_pool_fwd` | `pool::global_avg_pool_fwd` |
//! | `pool::global_avg_pool_bwd` | `pool::global_avg_pool_bwd` |
//! | `reduce::mean_fwd` | `reduce::mean_fwd` |
//! | `reduce::mean_bwd` | `reduce::mean_bwd` |
//! | `reduce::dot_fwd` | `reduce::dot_fwd` |
//! | `reduce::mean_channels_fwd` | `reduce::mean_channels_fwd` |
//! | `reduce::l2_normalize_fwd` | `reduce::l2_normalize_fwd` |
//! | `reduce::cam_normalize_fwd` | `reduce::cam_normalize_fwd` |
//! | `resize::resize_bilinear_fwd` | `resize::resize_bilinear_fwd` |
//! | `resize::resize_bilinear_bwd` | `resize::resize_bilinear_bwd` |
//! | `resize::resize_nearest_fwd` | `resize::resize_nearest_fwd` |
//! | `softmax::softmax_fwd` | `softmax::softmax_fwd` |
//! | `softmax::softmax_bwd` | `softmax::softmax_bwd` |
//! | `softmax::sharpen_fwd` | `softmax::sharpen_fwd` |

pub mod activation;
pub mod argmax;
pub mod attention;
pub mod augment;
pub mod batch_norm;
mod common;
pub mod conv2d;
mod device;
pub mod dropout;
pub mod elementwise;
pub mod loss;
pub mod maps;
pub mod metrics;
pub mod mix;
pub mod nvrtc;
pub mod optim;
pub mod perturb;
pub mod philox;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod softmax;

pub use device::{Arena, ArenaBuf, Device, DeviceBuf, DeviceBufMut, EventPool, RawBuf};

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
