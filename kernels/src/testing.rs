//! Test support shared by every kernel's tests (and by later crates' tests): deterministic random
//! inputs from Philox, element-wise closeness with a readable report, and the finite-difference
//! gradient check in f64 that every backward kernel must pass.
//!
//! Not a public API for users: it panics with a report on failure, which is what a test wants.

#![allow(clippy::print_stderr)]

use crate::philox::Philox;

/// `n` values uniform in [lo, hi), deterministic in `seed`.
pub fn rand_vec(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let g = Philox::new(seed, 0x7e57);
    (0..n)
        .map(|i| lo + (hi - lo) * g.uniform_at(i as u64) as f64)
        .collect()
}

/// `n` integers uniform in [0, k), deterministic in `seed`.
pub fn rand_index(seed: u64, n: usize, k: usize) -> Vec<i32> {
    let g = Philox::new(seed, 0x1d3);
    (0..n)
        .map(|i| (g.u32_at(i as u64) % k as u32) as i32)
        .collect()
}

/// Says on stderr that a test checked nothing (or less) here, and why: a skipped check must be
/// visible in the test output, never silent.
pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

/// Converts a slice to f32 (for running the f32 instance of a kernel on f64 test data).
pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| element-wise; on failure prints the first ten
/// mismatches with their indices and panics, naming `what`.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut bad = Vec::new();
    let mut max_err = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        max_err = max_err.max(err);
        // Written so that a NaN on either side counts as a mismatch.
        let within = err <= atol + rtol * w.abs();
        if !within {
            bad.push((i, g, w));
        }
    }
    if !bad.is_empty() {
        let mut msg = format!(
            "{what}: {} of {} elements differ (atol {atol:e}, rtol {rtol:e}); first ones:\n",
            bad.len(),
            got.len()
        );
        for (i, g, w) in bad.iter().take(10) {
            msg += &format!("  [{i}] got {g:.9e} want {w:.9e}\n");
        }
        panic!("{msg}");
    }
}

/// Central-difference gradient check of a vector–Jacobian product, in f64.
///
/// * `inputs`: the differentiable inputs, each a flat vector.
/// * `forward(inputs) -> y`: the function, output flattened (a loss is a 1-vector).
/// * `vjp(inputs, dy) -> dx`: one gradient per input, same lengths as `inputs`; an empty vector
///   marks an input the kernel does not differentiate (skipped).
///
/// A fixed random `dy` turns the check into d⟨dy, f(x)⟩/dx, which covers every output at once.
/// Tolerances follow torch.autograd.gradcheck's double-precision defaults (eps 1e-6,
/// atol 1e-5, rtol 1e-3).
pub fn gradcheck(
    what: &str,
    inputs: &[Vec<f64>],
    forward: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    vjp: impl Fn(&[Vec<f64>], &[f64]) -> Vec<Vec<f64>>,
) {
    gradcheck_with(what, inputs, forward, vjp, 1e-6, 1e-5, 1e-3)
}

/// [`gradcheck`] with explicit step and tolerances.
pub fn gradcheck_with(
    what: &str,
    inputs: &[Vec<f64>],
    forward: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    vjp: impl Fn(&[Vec<f64>], &[f64]) -> Vec<Vec<f64>>,
    eps: f64,
    atol: f64,
    rtol: f64,
) {
    let y = forward(inputs);
    let dy = rand_vec(0xd1, y.len(), -1.0, 1.0);
    let analytic = vjp(inputs, &dy);
    assert_eq!(
        analytic.len(),
        inputs.len(),
        "{what}: vjp returned wrong input count"
    );
    let dot = |v: &[f64]| v.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
    let mut checked = 0;
    for (k, grad) in analytic.iter().enumerate() {
        if grad.is_empty() {
            continue;
        }
        assert_eq!(
            grad.len(),
            inputs[k].len(),
            "{what}: gradient {k} has wrong length"
        );
        let mut numeric = vec![0f64; grad.len()];
        let mut xs = inputs.to_vec();
        for i in 0..grad.len() {
            let x0 = xs[k][i];
            xs[k][i] = x0 + eps;
            let lp = dot(&forward(&xs));
            xs[k][i] = x0 - eps;
            let lm = dot(&forward(&xs));
            xs[k][i] = x0;
            numeric[i] = (lp - lm) / (2.0 * eps);
        }
        assert_close(
            &format!("{what}: d/d input {k}"),
            grad,
            &numeric,
            atol,
            rtol,
        );
        checked += 1;
    }
    assert!(checked > 0, "{what}: no input was checked");
}
