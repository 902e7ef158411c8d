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
