//! Compile check of every CUDA kernel without a GPU: NVRTC compiles each embedded `.cu` module
//! to CUBIN for sm_80 and sm_90, and `ptxas -v` on its PTX reports registers and spill bytes
//! per kernel. Spills in the activation, element-wise, dropout, loss, optimizer, reduction and
//! conv modules fail the test (streaming kernels, or register-tiled GEMMs whose speed rests on
//! keeping the tile in registers; a spill there means an accidental register blow-up). Modules
//! are named like the CPU kernel files (`nvrtc::SOURCES`).
//!
//! libnvrtc is found on the loader path (`LD_LIBRARY_PATH`), ptxas through `$FLOWSEG_PTXAS` or
//! `PATH`; `.ci/run` installs both from NVIDIA's Python wheels. When either is missing the test
//! prints why and passes, unless `FLOWSEG_REQUIRE_NVRTC=1` (CI), which makes it fail.
//!
//! Not here: running anything (tests/cuda_parity_<family>.rs, which need a GPU).
#![cfg(feature = "cuda")]
#![allow(clippy::print_stdout)]

use flowseg_kernels::cuda::nvrtc::{self, Output, SOURCES};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

const ARCHS: &[&str] = &["sm_80", "sm_90"];
/// Modules where any spill fails the check.
const NO_SPILL_MODULES: &[&str] = &[
    "activation",
    "conv2d",
    "dropout",
    "elementwise",
    "loss",
    "optim",
    "reduce",
];

fn required() -> bool {
    std::env::var("FLOWSEG_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// Prints the reason and returns, or fails when the tools are required.
fn skip(reason: &str) {
    assert!(!required(), "FLOWSEG_REQUIRE_NVRTC=1 but {reason}");
    println!("skipped: {reason}");
}

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOWSEG_PTXAS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ptxas"))
        .find(|p| p.is_file())
}

/// Per-kernel resource use from `ptxas -v`.
#[derive(Debug, Default, Clone)]
struct Usage {
    kernel: String,
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    stack: u32,
}

/// Parses ptxas's info lines: "Compiling entry function 'K'", "N bytes stack frame, N bytes
/// spill stores, N bytes spill loads", "Used N registers".
fn parse_ptxas(log: &str) -> Vec<Usage> {
    let mut out: Vec<Usage> = Vec::new();
    let num_before = |line: &str, what: &str| -> Option<u32> {
        let i = line.find(what)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(Usage {
                kernel: name,
                ..Usage::default()
            });
        } else if let Some(u) = out.last_mut() {
            if let Some(v) = num_before(line, "bytes stack frame") {
                u.stack = v;
            }
            if let Some(v) = num_before(line, "bytes spill stores") {
                u.spill_stores = v;
            }
            if let Some(v) = num_before(line, "bytes spill loads") {
                u.spill_loads = v;
            }
            if let Some(v) = line
                .find("Used ")
                .and_then(|i| line[i + 5..].split_whitespace().next())
                .and_then(|s| s.parse().ok())
            {
                u.registers = v;
            }
        }
    }
    out
}

#[test]
fn ptxas_log_parses() {
    let log = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'ce_bwd' for 'sm_90'\n\
        ptxas info    : Function properties for ce_bwd\n\
        \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
        ptxas info    : Used 30 registers, used 0 barriers, 432 bytes cmem[0]\n";
    let u = parse_ptxas(log);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].kernel, "ce_bwd");
    assert_eq!(
        (
            u[0].registers,
            u[0].spill_stores,
            u[0].spill_loads,
            u[0].stack
        ),
        (30, 4, 12, 8)
    );
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    if !nvrtc::available() {
        skip("libnvrtc not found (put the nvidia-cuda-nvrtc wheel's lib directory on LD_LIBRARY_PATH)");
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    println!("NVRTC {major}.{minor}");
    let ptxas = ptxas();
    match &ptxas {
        Some(p) => println!("ptxas: {}", p.display()),
        None => skip("ptxas not found ($FLOWSEG_PTXAS or PATH): registers and spills unchecked"),
    }
    let dir = std::env::temp_dir().join(format!("flowseg-cuda-compile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    println!(
        "{:<6} {:<12} {:<22} {:>5} {:>6} {:>6} {:>6}",
        "arch", "module", "kernel", "regs", "stack", "st", "ld"
    );
    for &arch in ARCHS {
        for src in SOURCES {
            let t = Instant::now();
            let cubin = match nvrtc::compile_uncached(src, arch, Output::Cubin, &[]) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{arch} {}: {e}", src.name));
                    continue;
                }
            };
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(!cubin.bytes.is_empty());
            println!(
                "{arch:<6} {:<12} CUBIN {} bytes in {ms:.0} ms{}",
                src.name,
                cubin.bytes.len(),
                if cubin.log.trim().is_empty() {
                    String::new()
                } else {
                    format!(", log: {}", cubin.log.trim())
                }
            );
            let Some(ptxas) = &ptxas else { continue };
            let ptx = nvrtc::compile_uncached(src, arch, Output::Ptx, &[]).unwrap();
            let file = dir.join(format!("{}-{arch}.ptx", src.name));
            std::fs::write(&file, &ptx.bytes).unwrap();
            let out = Command::new(ptxas)
                .arg(format!("-arch={arch}"))
                .arg("-v")
                .arg(&file)
                .arg("-o")
                .arg(dir.join(format!("{}-{arch}.cubin", src.name)))
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                failures.push(format!("{arch} {}: ptxas failed:\n{log}", src.name));
                continue;
            }
            let usage = parse_ptxas(&log);
            for &k in src.kernels {
                if !usage.iter().any(|u| u.kernel == k) {
                    failures.push(format!("{arch} {}: ptxas reported no kernel {k}", src.name));
                }
            }
            for u in &usage {
                println!(
                    "{arch:<6} {:<12} {:<22} {:>5} {:>6} {:>6} {:>6}",
                    src.name, u.kernel, u.registers, u.stack, u.spill_stores, u.spill_loads
                );
                let spills = u.spill_stores + u.spill_loads;
                if spills > 0 && NO_SPILL_MODULES.contains(&src.name) {
                    failures.push(format!(
                        "{arch} {}::{} spills ({} bytes stored, {} loaded)",
                        src.name, u.kernel, u.spill_stores, u.spill_loads
                    ));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn compile_caches_cubin_on_disk_by_content_hash() {
    if !nvrtc::available() {
        skip("libnvrtc not found");
        return;
    }
    let dir = std::env::temp_dir().join(format!("flowseg-cubin-cache-{}", std::process::id()));
    // Only this test reads FLOWSEG_CACHE in this test binary.
    std::env::set_var("FLOWSEG_CACHE", &dir);
    let src = &nvrtc::ELEMENTWISE;
    let first = nvrtc::compile(src, "sm_90").unwrap();
    let key = nvrtc::cache_key(src, "sm_90", nvrtc::version().unwrap());
    let file = dir.join("cubin").join(&key);
    assert_eq!(std::fs::read(&file).unwrap(), first);
    // A cache hit returns the file's bytes: plant a marker and read it back.
    std::fs::write(&file, b"marker").unwrap();
    assert_eq!(nvrtc::compile(src, "sm_90").unwrap(), b"marker");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_syntax_error_reports_the_module_and_compiler_log() {
    if !nvrtc::available() {
        skip("libnvrtc not found");
        return;
    }
    static BROKEN: nvrtc::CudaSource = nvrtc::CudaSource {
        name: "broken",
        source: "extern \"C\" __global__ void k(float* y) { y[0] = undefined_name; }",
        kernels: &["k"],
    };
    let err = nvrtc::compile_uncached(&BROKEN, "sm_90", Output::Cubin, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.cu") && err.contains("sm_90"), "{err}");
    assert!(err.contains("undefined_name"), "{err}");
}
