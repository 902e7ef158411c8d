//! Helpers the CUDA parity test files share: the device (or a printed skip), random inputs,
//! host↔device copies, and the comparisons that print the maximum error on success and the first
//! mismatches on failure.
//!
//! Also the inputs several families share: the odd element counts [`SIZES`], class labels, and
//! the per-sample helpers of the augment and mix tests.
//!
//! Not here: the tests themselves (`cuda_parity_<family>.rs`, one file per launcher file of
//! `kernels/src/cuda/`, named like it: `cuda_parity_elementwise.rs` tests `cuda/elementwise.rs`).

#![allow(dead_code, reason = "each test file uses the helpers it needs")]

use flowseg_kernels::cuda::cudarc_driver::{CudaSlice, DeviceRepr};
use flowseg_kernels::cuda::Device;
use flowseg_kernels::philox::Philox;

/// Device 0, or `None` after printing why the test is skipped; with `FLOWSEG_REQUIRE_GPU=1` (the
/// GPU check script) a missing device fails instead.
pub fn device() -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let required = std::env::var("FLOWSEG_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "FLOWSEG_REQUIRE_GPU=1 but no CUDA device: {e}");
            println!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Odd sizes around the block size, and one realistic activation (4×64×128×128).
pub const SIZES: &[usize] = &[1, 255, 257, 100_003, 4 * 64 * 128 * 128];

/// `n` class labels in [0, k), about `ignore_frac` of them `ignore`, a pure function of `seed`.
pub fn labels(seed: u64, n: usize, k: usize, ignore: i32, ignore_frac: f32) -> Vec<i32> {
    let g = Philox::new(seed, 0x1AB);
    (0..n)
        .map(|i| {
            if g.uniform_at(2 * i as u64) < ignore_frac {
                ignore
            } else {
                (g.u32_at(2 * i as u64 + 1) % k as u32) as i32
            }
        })
        .collect()
}

/// `n` integers in [0, k), a pure function of `seed`.
pub fn ints(seed: u64, n: usize, k: u32) -> Vec<i32> {
    let g = Philox::new(seed, 0x1AB);
    (0..n).map(|i| (g.u32_at(i as u64) % k) as i32).collect()
}

/// Makes sure a small batch has both an applied sample (the first) and a copied one (the last).
pub fn both<D>(draws: &mut [D], apply: impl Fn(&mut D) -> &mut bool) {
    *apply(&mut draws[0]) = true;
    if draws.len() > 1 {
        let last = draws.len() - 1;
        *apply(&mut draws[last]) = false;
    }
}

/// `n` values uniform in [lo, hi), a pure function of `seed`.
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let g = Philox::new(seed, 0xC0DA);
    (0..n)
        .map(|i| lo + (hi - lo) * g.uniform_at(i as u64))
        .collect()
}

/// Host → device.
pub fn up<T: DeviceRepr>(dev: &Device, v: &[T]) -> CudaSlice<T> {
    dev.stream().clone_htod(v).unwrap()
}

/// `n` zeros on the device.
pub fn zeros(dev: &Device, n: usize) -> CudaSlice<f32> {
    up(dev, &vec![0f32; n])
}

/// Device → host.
pub fn down<T: DeviceRepr + Default + Clone>(dev: &Device, s: &CudaSlice<T>) -> Vec<T> {
    dev.stream().clone_dtoh(s).unwrap()
}

/// Asserts |gpu − cpu| ≤ atol + rtol·|cpu| element-wise (NaN matches NaN); prints the max error.
pub fn close(what: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let mut bad = Vec::new();
    let mut max_err = 0f32;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        if g.is_nan() && c.is_nan() {
            continue;
        }
        let err = (g - c).abs();
        if err.is_nan() || err > atol + rtol * c.abs() {
            bad.push(i);
        } else {
            max_err = max_err.max(err);
        }
    }
    if !bad.is_empty() {
        panic!(
            "{what}: {} of {} elements differ beyond atol {atol:e} + rtol {rtol:e}; first: {}",
            bad.len(),
            gpu.len(),
            first_mismatches(&bad, gpu, cpu)
        );
    }
    println!(
        "{what}: {} elements, max |gpu - cpu| = {max_err:e}",
        gpu.len()
    );
}

/// Asserts bit-identity (signed zeros and NaN payloads included).
pub fn exact(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let bad: Vec<usize> = (0..gpu.len())
        .filter(|&i| gpu[i].to_bits() != cpu[i].to_bits())
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements differ; first: {}",
        bad.len(),
        gpu.len(),
        first_mismatches(&bad, gpu, cpu)
    );
    println!("{what}: {} elements, bit-identical", gpu.len());
}

/// Asserts equality of integer results.
pub fn exact_int<T: PartialEq + std::fmt::Debug>(what: &str, gpu: &[T], cpu: &[T]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    if let Some(i) = gpu.iter().zip(cpu).position(|(g, c)| g != c) {
        panic!(
            "{what}: first difference at [{i}]: gpu {:?} cpu {:?}",
            gpu[i], cpu[i]
        );
    }
    println!("{what}: {} elements, identical", gpu.len());
}

fn first_mismatches(bad: &[usize], gpu: &[f32], cpu: &[f32]) -> String {
    bad.iter()
        .take(8)
        .map(|&i| format!("[{i}] gpu {:e} cpu {:e}", gpu[i], cpu[i]))
        .collect::<Vec<_>>()
        .join(", ")
}
