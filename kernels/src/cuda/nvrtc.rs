//! NVRTC: the embedded kernel sources and their compilation to CUBIN (or PTX) for one
//! architecture, with an on-disk CUBIN cache.
//!
//! Every `.cu` file under `kernels/cuda/` is embedded with `include_str!` as one module, named
//! like the CPU kernel file whose twins it holds (`elementwise.cu` ↔ `src/elementwise.rs`), and
//! listed in [`SOURCES`]; `dropout` is compiled together with `philox.cu`, whose draws it uses.
//! [`compile`] returns CUBIN for `sm_XY`, cached under `$FLOWSEG_CACHE/cubin` (default
//! `$XDG_CACHE_HOME/flowseg/cubin`, then `~/.cache/flowseg/cubin`) in a file named by a 128-bit
//! FNV-1a hash of (source, options, NVRTC version, arch); a changed kernel, option or compiler
//! (or a kernel moved to another module) therefore misses the cache instead of loading stale
//! code. Files are written to a temporary name and renamed, so concurrent compiles never read a
//! half-written CUBIN.
//!
//! Options common to every module: `--std=c++17`, `-default-device` (helpers need no
//! `__device__`), and `--fmad=false`: the CPU reference never fuses a·b+c, so with contraction
//! off the element-wise, optimizer and Philox kernels are bit-identical to the CPU. No CUDA
//! headers are included (NVRTC 13 ships none of cuda_fp16.h & co.), only NVRTC's builtins.
//!
//! libnvrtc is found by cudarc's dlopen candidates (`libnvrtc.so`, `libnvrtc.so.13`, …) on the
//! loader path: `LD_LIBRARY_PATH` must name its directory when it is not installed system-wide.
//!
//! Not here: header include paths, per-module `#define` variants, PTX fallback for
//! architectures NVRTC does not know.

use super::{no_panic, CudaError};
use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, CString};
use std::path::PathBuf;

/// One embedded kernel module: its name (the `.cu` file stem), source, and kernel entry points.
#[derive(Debug)]
pub struct CudaSource {
    /// File stem, e.g. `elementwise`.
    pub name: &'static str,
    /// The `.cu` text.
    pub source: &'static str,
    /// `extern "C"` kernels it defines (what the compile check reports on).
    pub kernels: &'static [&'static str],
}

macro_rules! cuda_source {
    ($name:literal, [$($k:literal),* $(,)?]) => {
        CudaSource {
            name: $name,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/", $name, ".cu")),
            kernels: &[$($k),*],
        }
    };
}

/// `activation.cu`: relu and leaky relu, forward and backward.
pub static ACTIVATION: CudaSource = cuda_source!(
    "activation",
    ["relu_fwd", "relu_bwd", "leaky_relu_fwd", "leaky_relu_bwd"]
);
/// `argmax.cu`: argmax / max over classes and max's backward.
pub static ARGMAX: CudaSource = cuda_source!("argmax", ["argmax_fwd", "max_fwd", "max_bwd"]);
/// `attention.cu`: pixel self-attention (weights, apply) and its backward.
pub static ATTENTION: CudaSource = cuda_source!(
    "attention",
    [
        "attention_weights",
        "attention_apply",
        "attention_dv",
        "attention_dscores",
        "attention_dq",
        "attention_dk"
    ]
);
/// `augment.cu`: colour jitter, grayscale, Gaussian blur, cutout (draws made on the host).
pub static AUGMENT: CudaSource = cuda_source!(
    "augment",
    [
        "color_jitter_contrast_mean",
        "color_jitter_step",
        "grayscale_fwd",
        "gaussian_blur_h",
        "gaussian_blur_v",
        "cutout_fwd"
    ]
);
/// `batch_norm.cu`: batch norm train/eval forward and backward.
pub static BATCH_NORM: CudaSource = cuda_source!(
    "batch_norm",
    [
        "bn_stat_partials",
        "bn_mean_finalize",
        "bn_train_finalize",
        "bn_eval_coef",
        "bn_affine",
        "bn_bwd_stats",
        "bn_dy_partials",
        "bn_bwd_finalize",
        "bn_bwd_dx",
        "bn_eval_stats"
    ]
);
/// `conv2d.cu`: convolution forward, dX, dW (implicit GEMM, four tile heights each), the
/// split-K sum, db, depthwise.
pub static CONV2D: CudaSource = cuda_source!(
    "conv2d",
    [
        "conv2d_fwd_m128",
        "conv2d_fwd_m64",
        "conv2d_fwd_m32",
        "conv2d_fwd_m16",
        "conv2d_dx_m128",
        "conv2d_dx_m64",
        "conv2d_dx_m32",
        "conv2d_dx_m16",
        "conv2d_dw_m128",
        "conv2d_dw_m64",
        "conv2d_dw_m32",
        "conv2d_dw_m16",
        "conv2d_sum_slices",
        "conv2d_db",
        "conv2d_depthwise_fwd",
        "conv2d_depthwise_dx",
        "conv2d_depthwise_dw"
    ]
);
/// `dropout.cu`, compiled after `philox.cu` as one module (it draws with philox.cu's device
/// functions, so the masks are the CPU's bit for bit).
pub static DROPOUT: CudaSource = CudaSource {
    name: "dropout",
    source: concat!(
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/philox.cu")),
        "\n",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/dropout.cu"))
    ),
    kernels: &["dropout_fwd", "dropout2d_mask", "dropout2d_apply"],
};
/// `elementwise.cu`: add, mul, scale, affine, broadcast mul, threshold, and the concat / slice
/// copies.
pub static ELEMENTWISE: CudaSource = cuda_source!(
    "elementwise",
    [
        "add_fwd",
        "add_relu_fwd",
        "mul_fwd",
        "mul_bwd",
        "scale_fwd",
        "affine_fwd",
        "mul_broadcast_fwd",
        "threshold_fwd",
        "copy_rows",
        "slice_bwd"
    ]
);
/// `loss.cu`: cross entropy on hard labels (fused softmax + CE), soft cross entropy and squared
/// error, all finished by `ce_finalize`; binary cross entropy of logits.
pub static LOSS: CudaSource = cuda_source!(
    "loss",
    [
        "ce_fwd_partials",
        "ce_stats_partials",
        "ce_finalize",
        "ce_bwd",
        "masked_stats_partials",
        "soft_ce_fwd_partials",
        "squared_error_fwd_partials",
        "soft_ce_bwd",
        "squared_error_bwd",
        "binary_cross_entropy_fwd",
        "binary_cross_entropy_bwd"
    ]
);
/// `maps.cu`: GCT's guidance maps (error map, separable blur, min–max normalisation, selection
/// by key).
pub static MAPS: CudaSource = cuda_source!(
    "maps",
    [
        "error_map_fwd",
        "separable_blur_h",
        "separable_blur_v",
        "minmax_reduce",
        "minmax_apply",
        "select_by_key_fwd"
    ]
);
/// `metrics.cu`: the confusion matrix and the label agreement counts.
pub static METRICS: CudaSource = cuda_source!(
    "metrics",
    ["confusion_add", "label_agreement", "image_labels_fwd"]
);
/// `mix.cu`: box and class masks, the mix of images and labels, its backward.
pub static MIX: CudaSource = cuda_source!(
    "mix",
    [
        "box_mask_fwd",
        "class_mask_fwd",
        "mix_fwd",
        "mix_labels_fwd",
        "mix_bwd"
    ]
);
/// `optim.cu`: sgd, adamw, ema.
pub static OPTIM: CudaSource = cuda_source!(
    "optim",
    [
        "sgd_step",
        "adamw_step",
        "ema_update",
        "sgd_step_guarded",
        "adamw_step_guarded",
        "ema_update_guarded",
        "assign_guarded",
        "finite_and_init",
        "finite_and_scan"
    ]
);
/// `perturb.cu`: the masks of CCT's feature perturbations (salient drop, foreground).
pub static PERTURB: CudaSource =
    cuda_source!("perturb", ["salient_drop_mask_fwd", "foreground_mask_fwd"]);
/// `philox.cu`: Philox4x32-10 words, uniforms and normals.
pub static PHILOX: CudaSource =
    cuda_source!("philox", ["philox_u32", "philox_uniform", "philox_normal"]);
/// `pool.cu`: max and global average pooling, forward and backward.
pub static POOL: CudaSource = cuda_source!(
    "pool",
    [
        "max_pool2d_fwd",
        "max_pool2d_bwd",
        "global_avg_pool_fwd",
        "global_avg_pool_bwd"
    ]
);
/// `reduce.cu`: the mean and its backward, dot (finished by `reduce_sum_finalize` too), the
/// channel mean, per-row L2 normalisation, per-plane max normalisation (CAMs).
pub static REDUCE: CudaSource = cuda_source!(
    "reduce",
    [
        "reduce_sum_partials",
        "reduce_sum_finalize",
        "reduce_fill_bwd",
        "dot_partials",
        "channels_fwd",
        "l2_normalize_rows",
        "cam_normalize_fwd"
    ]
);
/// `resize.cu`: bilinear resize forward / backward (a gather), nearest for i32 labels.
pub static RESIZE: CudaSource = cuda_source!(
    "resize",
    [
        "resize_bilinear_fwd",
        "resize_bilinear_bwd",
        "resize_nearest_fwd"
    ]
);
/// `softmax.cu`: softmax over classes, forward and backward; sharpening.
pub static SOFTMAX: CudaSource =
    cuda_source!("softmax", ["softmax_fwd", "softmax_bwd", "sharpen_fwd"]);

/// Every embedded module: one per kernel family, named like the CPU kernel file.
pub static SOURCES: &[&CudaSource] = &[
    &ACTIVATION,
    &ARGMAX,
    &ATTENTION,
    &AUGMENT,
    &BATCH_NORM,
    &CONV2D,
    &DROPOUT,
    &ELEMENTWISE,
    &LOSS,
    &MAPS,
    &METRICS,
    &MIX,
    &OPTIM,
    &PERTURB,
    &PHILOX,
    &POOL,
    &REDUCE,
    &RESIZE,
    &SOFTMAX,
];

/// Options every module is compiled with (the target option is added per call).
pub const OPTIONS: &[&str] = &["--std=c++17", "-default-device", "--fmad=false"];

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Machine code for `sm_XY` (what the device loads).
    Cubin,
    /// PTX for `compute_XY` (what `ptxas -v` reads for register and spill counts).
    Ptx,
}

/// True when libnvrtc can be loaded.
pub fn available() -> bool {
    // SAFETY: a dlopen probe over cudarc's candidate names; nothing in the library is called.
    unsafe { sys::is_culib_present() }
}

fn require_nvrtc() -> Result<(), CudaError> {
    if available() {
        Ok(())
    } else {
        Err(CudaError::NoNvrtc(format!(
            "none of {:?} could be loaded; install the CUDA 13 toolkit or the \
             `nvidia-cuda-nvrtc` Python wheel and put its lib directory on LD_LIBRARY_PATH",
            cudarc::get_lib_name_candidates("nvrtc")
        )))
    }
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), CudaError> {
    require_nvrtc()?;
    no_panic(
        || {
            let (mut major, mut minor) = (0, 0);
            // SAFETY: libnvrtc is loaded; both are valid out pointers.
            unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
                .result()
                .map_err(|e| CudaError::NoNvrtc(format!("nvrtcVersion: {e:?}")))?;
            Ok((major, minor))
        },
        CudaError::NoNvrtc,
    )
}

/// The result of one compilation: the CUBIN or PTX bytes and NVRTC's log.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// CUBIN, or PTX text without its trailing NUL.
    pub bytes: Vec<u8>,
    /// NVRTC's log (warnings; empty when clean).
    pub log: String,
}

/// Compiles `source` for `arch` (`sm_XY`) with [`OPTIONS`] plus `extra`, bypassing the cache.
pub fn compile_uncached(
    source: &'static CudaSource,
    arch: &str,
    output: Output,
    extra: &[&str],
) -> Result<Compiled, CudaError> {
    require_nvrtc()?;
    let target = match output {
        Output::Cubin => format!("--gpu-architecture={arch}"),
        Output::Ptx => format!("--gpu-architecture={}", arch.replace("sm_", "compute_")),
    };
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.extend(extra.iter().map(|s| s.to_string()));
    options.push(target);
    let fail = |error: String, log: String| CudaError::Compile {
        module: source.name,
        arch: arch.to_string(),
        error,
        log,
    };
    no_panic(
        || {
            let src = CString::new(source.source)
                .map_err(|_| fail("source contains a NUL byte".into(), String::new()))?;
            let name = CString::new(format!("{}.cu", source.name))
                .map_err(|_| fail("name contains a NUL byte".into(), String::new()))?;
            let prog = result::create_program(&src, Some(&name))
                .map_err(|e| fail(format!("{e:?}"), String::new()))?;
            // SAFETY: `prog` was just created and is destroyed exactly once below; `src` and
            // `name` outlive it.
            let out = unsafe {
                let compiled = result::compile_program(prog, &options);
                let log = result::get_program_log(prog)
                    .map(|l| c_chars_to_string(&l))
                    .unwrap_or_default();
                let bytes = match compiled {
                    Err(e) => Err(fail(format!("{e:?}"), log.clone())),
                    Ok(()) => match output {
                        Output::Ptx => result::get_ptx(prog)
                            .map(|p| c_chars_to_string(&p).into_bytes())
                            .map_err(|e| fail(format!("nvrtcGetPTX: {e:?}"), log.clone())),
                        Output::Cubin => get_cubin(prog)
                            .map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}"), log.clone())),
                    },
                };
                let _ = result::destroy_program(prog);
                bytes.map(|bytes| Compiled { bytes, log })
            };
            out
        },
        |m| fail(m, String::new()),
    )
}

/// # Safety
/// `prog` must be a compiled, live NVRTC program.
unsafe fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    // SAFETY: the caller guarantees `prog`; `size` is a valid out pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }.result()?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has the size NVRTC just reported.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) }.result()?;
    Ok(buf)
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The CUBIN cache directory (see the module header); `None` when no home is known.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("FLOWSEG_CACHE") {
        return Some(d.join("cubin"));
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Some(d.join("flowseg").join("cubin"));
    }
    var("HOME").map(|h| h.join(".cache").join("flowseg").join("cubin"))
}

/// 128-bit FNV-1a: stable across Rust versions and machines, unlike `DefaultHasher`.
fn fnv1a128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in parts {
        for &b in part.iter() {
            h ^= b as u128;
            h = h.wrapping_mul(PRIME);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The cache file name of `source` compiled for `arch` by NVRTC `nvrtc_version`.
pub fn cache_key(source: &CudaSource, arch: &str, nvrtc_version: (i32, i32)) -> String {
    let version = format!("{}.{}", nvrtc_version.0, nvrtc_version.1);
    let options = OPTIONS.join("\0");
    let h = fnv1a128(&[
        b"flowseg-cubin-v1",
        source.source.as_bytes(),
        options.as_bytes(),
        version.as_bytes(),
        arch.as_bytes(),
    ]);
    format!("{}-{arch}-{h:032x}.cubin", source.name)
}

/// CUBIN of `source` for `arch` (`sm_XY`), from the disk cache when present. A cache that
/// cannot be read or written only costs a recompile.
pub fn compile(source: &'static CudaSource, arch: &str) -> Result<Vec<u8>, CudaError> {
    let key = cache_key(source, arch, version()?);
    let path = cache_dir().map(|d| d.join(&key));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let cubin = compile_uncached(source, arch, Output::Cubin, &[])?.bytes;
    if let Some(p) = &path {
        store(p, &cubin);
    }
    Ok(cubin)
}

/// Writes `bytes` to `path` through a temporary file and a rename (`tempfile`'s persist), so a
/// reader never sees half a CUBIN; errors are ignored (see `compile`). Unlike the engine's
/// `fsutil::write_atomic` it does not fsync: a cache entry lost to a power cut is recompiled.
fn store(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(mut tmp) = tempfile::Builder::new().suffix(".tmp").tempfile_in(dir) else {
        return;
    };
    if tmp.write_all(bytes).is_ok() {
        // A failed persist drops (deletes) the temporary file.
        let _ = tmp.persist(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_every_input() {
        let a = cache_key(&ELEMENTWISE, "sm_90", (13, 0));
        assert!(a.starts_with("elementwise-sm_90-"), "{a}");
        assert_ne!(a, cache_key(&ELEMENTWISE, "sm_80", (13, 0)));
        assert_ne!(a, cache_key(&ELEMENTWISE, "sm_90", (13, 1)));
        assert_ne!(a, cache_key(&OPTIM, "sm_90", (13, 0)));
        assert_eq!(a, cache_key(&ELEMENTWISE, "sm_90", (13, 0)));
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a128(&[b"ab", b"c"]), fnv1a128(&[b"a", b"bc"]));
    }

    /// Every kernel named in SOURCES is defined `extern "C"` in its file, so the compile check
    /// and the launchers look up names that exist.
    #[test]
    fn listed_kernels_exist_in_sources() {
        for s in SOURCES {
            for k in s.kernels {
                let def = format!("void {k}(");
                assert!(
                    s.source.contains("extern \"C\" __global__") && s.source.contains(&def),
                    "{}.cu lacks {k}",
                    s.name
                );
            }
        }
    }
}
