//! GPU kernel benchmark: prints one markdown table on a CUDA device — the
//! device-to-device copy bandwidth, the memory-bound launchers at large sizes in GB/s and as a
//! fraction of that copy bandwidth, and the convolution forward in TFLOP/s on deeplab_lite's
//! shapes (batch 16) and one large shape, as a fraction of cuBLAS SGEMM on the equivalent GEMM
//! (M = Co, N = N·Ho·Wo, K = Ci·kh·kw).
//!
//! Method: every kernel's output is first checked against its CPU reference (llm.c's rule: check
//! before timing; a mismatch marks the row and makes the run exit 1), then it is warmed up and
//! timed with CUDA events over enough back-to-back launches to last ~100 ms. Times are per
//! launcher call, so they include what the launcher enqueues besides the kernel (the per-call
//! scratch allocations of the reductions). Bytes are those the implementation must move: every
//! input read once and every output written once, except batch norm, whose three passes read x
//! three times (counted). cuBLAS runs in its default math mode (no TF32), on zero-free random
//! data of the GEMM's shape; when libcublas cannot be loaded that column says so.
//!
//! Run: `cargo bench -p flowseg-kernels --features cuda --bench cuda_kernels` (or the binary
//! packed by scripts/gpu-check.sh). Without a GPU it prints `skipped: <reason>` and exits 0;
//! with `FLOWSEG_REQUIRE_GPU=1` (the GPU check script) that is an error instead.
//!
//! Not here: backward kernels, the other launchers, multi-stream overlap, CUDA graphs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use flowseg_kernels::batch_norm::{self, BatchNormParams};
use flowseg_kernels::conv2d::{self, Conv2d};
use flowseg_kernels::cuda::{self, nvrtc, CudaError, Device};
use flowseg_kernels::loss::{self, CrossEntropyParams};
use flowseg_kernels::optim::{self, AdamW};
use flowseg_kernels::philox::Philox;
use flowseg_kernels::{activation, elementwise, resize, softmax, Nchw};
use rayon::prelude::*;
use std::error::Error;

type Res<T> = Result<T, Box<dyn Error>>;

/// Elements of the element-wise and optimizer buffers: 256 MiB of f32 each, several times any
/// current L2, so every launch streams from DRAM.
const BIG: usize = 1 << 26;
/// Timed launches last about this long in total.
const TARGET_MS: f64 = 100.0;

fn main() {
    let required = std::env::var("FLOWSEG_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let skip = |reason: String| {
        if required {
            eprintln!("FLOWSEG_REQUIRE_GPU=1 but {reason}");
            std::process::exit(1);
        }
        println!("skipped: {reason}");
    };
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => return skip(format!("no CUDA device ({e})")),
    };
    if !nvrtc::available() {
        return skip("libnvrtc.so.13 not found (put its directory on LD_LIBRARY_PATH)".into());
    }
    match run(&dev) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "cuda_kernels: some kernel disagreed with its CPU reference (rows marked MISMATCH)"
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("cuda_kernels: {e}");
            std::process::exit(1);
        }
    }
}

/// `n` values uniform in [lo, hi), a pure function of `seed`.
fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let g = Philox::new(seed, 0xBE7C);
    (0..n)
        .into_par_iter()
        .map(|i| lo + (hi - lo) * g.uniform_at(i as u64))
        .collect()
}

fn up<T: cudarc::driver::DeviceRepr>(dev: &Device, v: &[T]) -> Res<CudaSlice<T>> {
    Ok(dev.stream().clone_htod(v)?)
}

fn down(dev: &Device, s: &CudaSlice<f32>) -> Res<Vec<f32>> {
    Ok(dev.stream().clone_dtoh(s)?)
}

/// True when |gpu − cpu| ≤ atol + rtol·|cpu| for every element (NaN fails).
fn check(gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) -> bool {
    gpu.len() == cpu.len()
        && gpu
            .iter()
            .zip(cpu)
            .all(|(&g, &c)| (g - c).abs() <= atol + rtol * c.abs())
}

/// Mean milliseconds per call of `f`: 3 warm-up calls, then CUDA events around enough calls to
/// last about [`TARGET_MS`].
fn time_ms(dev: &Device, mut f: impl FnMut() -> Result<(), CudaError>) -> Res<f64> {
    let ctx = dev.context();
    let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = (ctx.new_event(timed)?, ctx.new_event(timed)?);
    for _ in 0..3 {
        f()?;
    }
    start.record(dev.stream())?;
    f()?;
    end.record(dev.stream())?;
    let once = f64::from(start.elapsed_ms(&end)?).max(1e-3);
    let iters = (TARGET_MS / once).clamp(3.0, 2000.0) as usize;
    start.record(dev.stream())?;
    for _ in 0..iters {
        f()?;
    }
    end.record(dev.stream())?;
    Ok(f64::from(start.elapsed_ms(&end)?) / iters as f64)
}

/// One table row.
struct Row {
    kernel: String,
    size: String,
    ms: f64,
    ok: bool,
    /// Bytes moved (memory-bound rows).
    bytes: Option<f64>,
    /// FLOP and the cuBLAS time of the equivalent GEMM (conv rows).
    flop: Option<(f64, Result<f64, String>)>,
}

fn print_table(dev: &Device, copy_gbs: f64, rows: &[Row]) {
    println!(
        "CUDA kernels on {} ({}); copy bandwidth = cuMemcpyDtoD, read + written bytes / time",
        dev.name(),
        dev.arch()
    );
    println!();
    println!("| kernel | size | check | time (µs) | GB/s | of copy | TFLOP/s | cuBLAS TFLOP/s | of cuBLAS |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let us = r.ms * 1e3;
        let check = if r.ok { "ok" } else { "MISMATCH" };
        let (gbs, frac) = match r.bytes {
            Some(b) => {
                let g = b / (r.ms * 1e-3) / 1e9;
                (format!("{g:.0}"), format!("{:.0}%", 100.0 * g / copy_gbs))
            }
            None => (String::new(), String::new()),
        };
        let (tf, blas, of) = match &r.flop {
            Some((flop, blas)) => {
                let t = flop / (r.ms * 1e-3) / 1e12;
                match blas {
                    Ok(bms) => {
                        let b = flop / (bms * 1e-3) / 1e12;
                        (
                            format!("{t:.2}"),
                            format!("{b:.2}"),
                            format!("{:.0}%", 100.0 * t / b),
                        )
                    }
                    Err(why) => (format!("{t:.2}"), why.clone(), String::new()),
                }
            }
            None => (String::new(), String::new(), String::new()),
        };
        println!(
            "| {} | {} | {check} | {us:.1} | {gbs} | {frac} | {tf} | {blas} | {of} |",
            r.kernel, r.size
        );
    }
}

/// cuBLAS on the stream, or why not.
fn cublas(dev: &Device) -> Result<CudaBlas, String> {
    // SAFETY: a dlopen probe over cudarc's candidate names; nothing in the library is called.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("n/a: libcublas not found".into());
    }
    let stream = dev.stream().clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || CudaBlas::new(stream))) {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(format!("n/a: cublasCreate: {e:?}")),
        Err(_) => Err("n/a: libcublas failed to load".into()),
    }
}

/// Mean ms of SGEMM C[m×n] = A[m×k]·B[k×n] (column-major, no transposes) on random data.
fn sgemm_ms(dev: &Device, blas: &CudaBlas, m: usize, n: usize, k: usize) -> Res<f64> {
    let mut a = dev.stream().alloc_zeros::<f32>(m * k)?;
    let mut b = dev.stream().alloc_zeros::<f32>(k * n)?;
    let mut c = dev.stream().alloc_zeros::<f32>(m * n)?;
    cuda::philox::fill_uniform(dev, 1, 0, 0, &mut a)?;
    cuda::philox::fill_uniform(dev, 2, 0, 0, &mut b)?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: m as i32,
        ldb: k as i32,
        beta: 0.0f32,
        ldc: m as i32,
    };
    time_ms(dev, || {
        // SAFETY: a, b, c hold m·k, k·n and m·n elements, matching the config's shapes and
        // leading dimensions.
        unsafe { blas.gemm(cfg, &a, &b, &mut c) }.map_err(|e| CudaError::Driver {
            call: "cublasSgemm",
            error: format!("{e:?}"),
        })
    })
}

fn mem_row(kernel: &str, size: String, ms: f64, ok: bool, bytes: f64) -> Row {
    Row {
        kernel: kernel.into(),
        size,
        ms,
        ok,
        bytes: Some(bytes),
        flop: None,
    }
}

/// Runs everything; `Ok(false)` when a check failed.
fn run(dev: &Device) -> Res<bool> {
    let mut rows = Vec::new();
    let f = 4.0; // bytes per f32

    // Device-to-device copy: the reference bandwidth.
    let src = up(dev, &uniform(1, BIG, -1.0, 1.0))?;
    let mut dst = dev.stream().alloc_zeros::<f32>(BIG)?;
    let copy_ms = time_ms(dev, || {
        dev.stream()
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| CudaError::Driver {
                call: "cuMemcpyDtoD",
                error: format!("{e:?}"),
            })
    })?;
    let copy_ok = down(dev, &dst)? == down(dev, &src)?;
    let copy_gbs = 2.0 * f * BIG as f64 / (copy_ms * 1e-3) / 1e9;
    rows.push(mem_row(
        "cuMemcpyDtoD",
        format!("{BIG} f32"),
        copy_ms,
        copy_ok,
        2.0 * f * BIG as f64,
    ));

    // Element-wise.
    let a = uniform(2, BIG, -1.0, 1.0);
    let b = uniform(3, BIG, -1.0, 1.0);
    let (ga, gb) = (up(dev, &a)?, up(dev, &b)?);
    let mut gy = dev.stream().alloc_zeros::<f32>(BIG)?;
    let mut y = vec![0f32; BIG];
    activation::relu_fwd(&a, &mut y)?;
    cuda::activation::relu_fwd(dev, &ga, &mut gy)?;
    let ok = down(dev, &gy)? == y;
    let ms = time_ms(dev, || cuda::activation::relu_fwd(dev, &ga, &mut gy))?;
    rows.push(mem_row(
        "relu_fwd",
        format!("{BIG}"),
        ms,
        ok,
        2.0 * f * BIG as f64,
    ));

    elementwise::add_fwd(&a, &b, &mut y)?;
    cuda::elementwise::add_fwd(dev, &ga, &gb, &mut gy)?;
    let ok = down(dev, &gy)? == y;
    let ms = time_ms(dev, || cuda::elementwise::add_fwd(dev, &ga, &gb, &mut gy))?;
    rows.push(mem_row(
        "add_fwd",
        format!("{BIG}"),
        ms,
        ok,
        3.0 * f * BIG as f64,
    ));
    drop((gy, y));

    // Optimizers (in place: the check runs one step from the same state on both sides).
    let mut target = a.clone();
    optim::ema_update(&mut target, &b, 0.99)?;
    let mut gt = up(dev, &a)?;
    cuda::optim::ema_update(dev, &mut gt, &gb, 0.99)?;
    let ok = down(dev, &gt)? == target;
    let ms = time_ms(dev, || cuda::optim::ema_update(dev, &mut gt, &gb, 0.99))?;
    rows.push(mem_row(
        "ema_update",
        format!("{BIG}"),
        ms,
        ok,
        3.0 * f * BIG as f64,
    ));
    drop((gt, target));

    let cfg = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
    };
    let (mut p, mut m, mut v) = (a.clone(), vec![0f32; BIG], vec![0f32; BIG]);
    optim::adamw_step(&mut p, &b, &mut m, &mut v, &cfg, 1)?;
    let (mut gp, mut gm, mut gv) = (
        up(dev, &a)?,
        dev.stream().alloc_zeros::<f32>(BIG)?,
        dev.stream().alloc_zeros::<f32>(BIG)?,
    );
    cuda::optim::adamw_step(dev, &mut gp, &gb, &mut gm, &mut gv, &cfg, 1)?;
    let ok = down(dev, &gp)? == p && down(dev, &gm)? == m && down(dev, &gv)? == v;
    let ms = time_ms(dev, || {
        cuda::optim::adamw_step(dev, &mut gp, &gb, &mut gm, &mut gv, &cfg, 1)
    })?;
    rows.push(mem_row(
        "adamw_step",
        format!("{BIG}"),
        ms,
        ok,
        7.0 * f * BIG as f64,
    ));
    drop((gp, gm, gv, p, m, v, ga, gb, a, b));

    // Softmax and cross-entropy over K = 21 classes (VOC), 32×21×256×256.
    let s = Nchw::new(32, 21, 256, 256);
    let logits = uniform(4, s.len(), -4.0, 4.0);
    let glogits = up(dev, &logits)?;
    let mut y = vec![0f32; s.len()];
    softmax::softmax_fwd(&logits, s, &mut y)?;
    let mut gy = dev.stream().alloc_zeros::<f32>(s.len())?;
    cuda::softmax::softmax_fwd(dev, &glogits, s, &mut gy)?;
    let ok = check(&down(dev, &gy)?, &y, 1e-6, 1e-5);
    let ms = time_ms(dev, || {
        cuda::softmax::softmax_fwd(dev, &glogits, s, &mut gy)
    })?;
    rows.push(mem_row(
        "softmax_fwd",
        format!("{s:?}"),
        ms,
        ok,
        2.0 * f * s.len() as f64,
    ));
    drop((gy, y));

    let pixels = s.n * s.plane();
    let labels: Vec<i32> = uniform(5, pixels, 0.0, 22.0)
        .iter()
        .map(|&u| if u >= 21.0 { 255 } else { u as i32 })
        .collect();
    let glabels = up(dev, &labels)?;
    let params = CrossEntropyParams {
        ignore_index: 255,
        ..CrossEntropyParams::default()
    };
    let cpu_loss = loss::cross_entropy_fwd(&logits, &labels, None, s, params, None)?;
    let mut gloss = dev.stream().alloc_zeros::<f32>(1)?;
    cuda::loss::cross_entropy_fwd(dev, &glogits, &glabels, None, s, params, None, &mut gloss)?;
    let ok = check(&down(dev, &gloss)?, &[cpu_loss], 0.0, 1e-4);
    let ms = time_ms(dev, || {
        cuda::loss::cross_entropy_fwd(dev, &glogits, &glabels, None, s, params, None, &mut gloss)
    })?;
    let bytes = f * s.len() as f64 + 4.0 * pixels as f64;
    rows.push(mem_row(
        "cross_entropy_fwd",
        format!("{s:?}"),
        ms,
        ok,
        bytes,
    ));
    drop((glogits, glabels, logits, labels));

    // Batch norm, training forward, 32×64×128×128.
    let s = Nchw::new(32, 64, 128, 128);
    let x = uniform(6, s.len(), -2.0, 3.0);
    let gamma = uniform(7, s.c, 0.5, 1.5);
    let beta = uniform(8, s.c, -0.5, 0.5);
    let bp = BatchNormParams::default();
    let (mut rm, mut rv) = (vec![0f32; s.c], vec![1f32; s.c]);
    let (mut y, mut sm, mut si) = (vec![0f32; s.len()], vec![0f32; s.c], vec![0f32; s.c]);
    batch_norm::batch_norm_train_fwd(
        &x, &gamma, &beta, s, bp, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
    )?;
    let (gx, gg, gbeta) = (up(dev, &x)?, up(dev, &gamma)?, up(dev, &beta)?);
    let (mut grm, mut grv) = (up(dev, &vec![0f32; s.c])?, up(dev, &vec![1f32; s.c])?);
    let mut gy = dev.stream().alloc_zeros::<f32>(s.len())?;
    let (mut gsm, mut gsi) = (
        dev.stream().alloc_zeros::<f32>(s.c)?,
        dev.stream().alloc_zeros::<f32>(s.c)?,
    );
    let mut bn = |gy: &mut CudaSlice<f32>| {
        cuda::batch_norm::batch_norm_train_fwd(
            dev, &gx, &gg, &gbeta, s, bp, &mut grm, &mut grv, gy, &mut gsm, &mut gsi,
        )
    };
    bn(&mut gy)?;
    let ok = check(&down(dev, &gy)?, &y, 1e-5, 1e-5);
    let ms = time_ms(dev, || bn(&mut gy))?;
    rows.push(mem_row(
        "batch_norm_train_fwd (x read 3×)",
        format!("{s:?}"),
        ms,
        ok,
        4.0 * f * s.len() as f64,
    ));
    drop((gx, gy, x, y));

    // Bilinear resize ×4 (the decoder's logits upsampling), 32×21×64×64 → 256×256.
    let s = Nchw::new(32, 21, 64, 64);
    let (oh, ow) = (256, 256);
    let out = s.n * s.c * oh * ow;
    let x = uniform(9, s.len(), -1.0, 1.0);
    let mut y = vec![0f32; out];
    resize::resize_bilinear_fwd(&x, s, oh, ow, false, &mut y)?;
    let gx = up(dev, &x)?;
    let mut gy = dev.stream().alloc_zeros::<f32>(out)?;
    cuda::resize::resize_bilinear_fwd(dev, &gx, s, oh, ow, false, &mut gy)?;
    let ok = down(dev, &gy)? == y;
    let ms = time_ms(dev, || {
        cuda::resize::resize_bilinear_fwd(dev, &gx, s, oh, ow, false, &mut gy)
    })?;
    let bytes = f * (s.len() + out) as f64;
    rows.push(mem_row(
        "resize_bilinear_fwd",
        format!("{s:?} → {oh}×{ow}"),
        ms,
        ok,
        bytes,
    ));
    drop((gx, gy, x, y));

    // Convolution forward against cuBLAS.
    let blas = cublas(dev);
    let sq = Conv2d::square;
    let convs = [
        ("16→16 3×3", Nchw::new(16, 16, 32, 32), 16, sq(3, 1, 1, 1)),
        ("64→32 3×3 d6", Nchw::new(16, 64, 8, 8), 32, sq(3, 1, 6, 6)),
        ("48→32 3×3", Nchw::new(16, 48, 16, 16), 32, sq(3, 1, 1, 1)),
        ("64→32 1×1", Nchw::new(16, 64, 16, 16), 32, sq(1, 1, 0, 1)),
        (
            "256→256 3×3",
            Nchw::new(32, 256, 64, 64),
            256,
            sq(3, 1, 1, 1),
        ),
    ];
    for (i, (name, xs, co, p)) in convs.into_iter().enumerate() {
        let ys = p.out_shape(xs, co)?;
        let k = xs.c * p.kh * p.kw;
        let x = uniform(20 + i as u64, xs.len(), -1.0, 1.0);
        let w = uniform(40 + i as u64, p.weight_len(xs.c, co), -1.0, 1.0);
        let (gx, gw) = (up(dev, &x)?, up(dev, &w)?);
        let mut gy = dev.stream().alloc_zeros::<f32>(ys.len())?;
        cuda::conv2d::conv2d_fwd(dev, &gx, xs, &gw, None, co, &p, &mut gy)?;
        // Images are independent: the CPU checks the first one (the large shape would take
        // seconds on the CPU in full).
        let x0 = Nchw::new(1, xs.c, xs.h, xs.w);
        let mut y0 = vec![0f32; ys.image()];
        conv2d::conv2d_fwd(&x[..x0.len()], x0, &w, None, co, &p, &mut y0)?;
        let gpu = down(dev, &gy)?;
        let ok = check(&gpu[..ys.image()], &y0, 4.0 * k as f32 * f32::EPSILON, 1e-5);
        let ms = time_ms(dev, || {
            cuda::conv2d::conv2d_fwd(dev, &gx, xs, &gw, None, co, &p, &mut gy)
        })?;
        let cols = ys.n * ys.plane();
        let blas_ms = match &blas {
            Ok(b) => sgemm_ms(dev, b, cols, co, k).map_err(|e| format!("n/a: {e}")),
            Err(why) => Err(why.clone()),
        };
        rows.push(Row {
            kernel: format!("conv2d_fwd {name}"),
            size: format!("{xs:?} (GEMM {co}×{cols}×{k})"),
            ms,
            ok,
            bytes: None,
            flop: Some((2.0 * (co * cols * k) as f64, blas_ms)),
        });
    }

    print_table(dev, copy_gbs, &rows);
    Ok(rows.iter().all(|r| r.ok))
}
