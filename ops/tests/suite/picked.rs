//! Whole-model gradient checks on picked parameter elements: the analytic gradient of one loss
//! (autodiff on a copy of the forward graph) against central differences of the forward, for a
//! few elements of a few parameters. Used by the model tests (`models.rs`, `pseudoseg_heads.rs`),
//! where checking every element would run the whole model thousands of times.
//!
//! Not here: the per-op suite (`gradients.rs`), which checks every element of small inputs.

use flowseg_engine::autodiff;
use flowseg_engine::exec::run_cpu;
use flowseg_engine::graph::{Graph, ValueRef};
use flowseg_engine::Tensor;
use std::collections::{BTreeMap, BTreeSet};

/// Central-difference step and tolerances, chosen by the caller for its model (see each call).
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub eps: f32,
    pub atol: f64,
    pub rtol: f64,
}

/// Checks d`loss`/d`name`[i] for every (name, indices) of `picks` (names of `state`) in the
/// forward graph `forward` on `batch`; panics naming the first element outside the tolerance.
/// Returns how many of the checked analytic gradients are non-zero (a caller can require some).
pub fn check_picked_gradients(
    forward: &Graph,
    batch: &BTreeMap<String, Tensor>,
    state: &mut BTreeMap<String, Tensor>,
    loss: &ValueRef,
    picks: &[(String, &[usize])],
    tol: Tolerance,
) -> usize {
    let wrt: BTreeSet<String> = picks.iter().map(|(n, _)| n.clone()).collect();
    let mut backward = forward.clone();
    let grads = autodiff::differentiate(&mut backward, &[(loss.clone(), 1.0)], &wrt)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let run = run_cpu(&backward, batch, state, 0, 0).expect("backward runs");
    let analytic: Vec<(String, usize, f32)> = picks
        .iter()
        .flat_map(|(name, idx)| {
            let g = run.get(&grads[name]).and_then(Tensor::f32).expect("f32");
            idx.iter()
                .map(move |&i| (name.clone(), i, g[i]))
                .collect::<Vec<_>>()
        })
        .collect();
    drop(run);
    let loss_at = |state: &BTreeMap<String, Tensor>| {
        run_cpu(forward, batch, state, 0, 0)
            .expect("forward runs")
            .scalar(loss)
            .expect("scalar")
    };
    let mut nonzero = 0;
    for (name, i, a) in analytic {
        let x0 = state[&name].f32().expect("f32")[i];
        let mut at = |v: f32| {
            state.get_mut(&name).and_then(Tensor::f32_mut).expect("f32")[i] = v;
            f64::from(loss_at(state))
        };
        let (lp, lm) = (at(x0 + tol.eps), at(x0 - tol.eps));
        at(x0);
        // The step actually taken in f32, not the nominal 2·eps.
        let numeric = (lp - lm) / (f64::from(x0 + tol.eps) - f64::from(x0 - tol.eps));
        let err = (f64::from(a) - numeric).abs();
        assert!(
            err <= tol.atol + tol.rtol * numeric.abs(),
            "d/d{name}[{i}]: analytic {a} numeric {numeric}"
        );
        nonzero += usize::from(a != 0.0);
    }
    nonzero
}

/// The directional derivative of `loss` along a random unit direction `v` over every element of
/// the `wrt` parameters: (analytic ∇·v, central difference (L(θ+εv) − L(θ−εv)) / 2ε) for each
/// ε of `eps`. One number over all parameters averages out the f32 rounding and the relu /
/// max-pool kinks that make single-element differences of a deep batch-normed model noisy, so a
/// wrong backward for a whole part of the graph shows as a relative error that does not shrink
/// with ε.
#[allow(
    dead_code,
    reason = "used by some of the test binaries that include the suite"
)]
pub fn directional_gradient(
    forward: &Graph,
    batch: &BTreeMap<String, Tensor>,
    state: &BTreeMap<String, Tensor>,
    loss: &ValueRef,
    wrt: &BTreeSet<String>,
    seed: u64,
    eps: &[f64],
) -> Vec<(f64, f64, f64)> {
    let mut backward = forward.clone();
    let grads = autodiff::differentiate(&mut backward, &[(loss.clone(), 1.0)], wrt)
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let run = run_cpu(&backward, batch, state, 0, 0).expect("backward runs");
    // A direction drawn per parameter tensor from `seed`, normalised over all of them.
    let mut dir: BTreeMap<String, Vec<f64>> = wrt
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let n = state[name].f32().expect("f32").len();
            let v = flowseg_engine::kernels::testing::rand_vec(seed + k as u64, n, -1.0, 1.0);
            (name.clone(), v)
        })
        .collect();
    let norm = dir.values().flatten().map(|v| v * v).sum::<f64>().sqrt();
    dir.values_mut().flatten().for_each(|v| *v /= norm);
    let analytic: f64 = wrt
        .iter()
        .map(|name| {
            let g = run.get(&grads[name]).and_then(Tensor::f32).expect("f32");
            g.iter()
                .zip(&dir[name])
                .map(|(&g, &v)| f64::from(g) * v)
                .sum::<f64>()
        })
        .sum();
    drop(run);
    let loss_at = |step: f64| {
        let mut moved = state.clone();
        for name in wrt {
            let t = moved.get_mut(name).and_then(Tensor::f32_mut).expect("f32");
            for (x, v) in t.iter_mut().zip(&dir[name]) {
                *x = (f64::from(*x) + step * v) as f32;
            }
        }
        f64::from(
            run_cpu(forward, batch, &moved, 0, 0)
                .expect("forward runs")
                .scalar(loss)
                .expect("scalar"),
        )
    };
    eps.iter()
        .map(|&e| (e, analytic, (loss_at(e) - loss_at(-e)) / (2.0 * e)))
        .collect()
}

/// The names of `forward`'s trainable parameters: what a whole-model check differentiates.
#[allow(
    dead_code,
    reason = "used by some of the test binaries that include the suite"
)]
pub fn trainable(forward: &Graph) -> BTreeSet<String> {
    forward
        .params
        .iter()
        .filter(|(_, d)| d.trainable)
        .map(|(k, _)| k.clone())
        .collect()
}
