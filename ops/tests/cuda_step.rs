//! The training step on a GPU (feature `cuda`; every test prints why it skips where there is
//! no driver or no GPU, and `scripts/gpu-check.sh` runs them where there is):
//!
//! * the whole step (forward, backward, AdamW, BN statistics, EMA) of the supervised graph, of
//!   CPS (two networks, CutMix boxes drawn on the host, pseudo-labels, instruments) and of
//!   CutMix-Seg (an EMA teacher in eval-mode batch norm) through
//!   `Trainer::use_cuda` against the CPU trainer: losses and every state tensor after five
//!   steps within float tolerance (reductions run in another order on the GPU);
//! * the same step planned on one stream and on three, run by the CUDA executor: identical bits
//!   (the plan's events order everything that matters), for CutMix-Seg (teacher and student
//!   branches) and the supervised graph;
//!
//! * `--validate-cpu` over the whole CutMix-Seg and CPS steps: every node's device output against
//!   its CPU reference on the device's own inputs (engine/src/shadow.rs), the first divergence
//!   named;
//!
//! Not here: the op-level CPU-vs-CUDA parity (kernels/tests/cuda_parity_*.rs), graph replay.
#![cfg(feature = "cuda")]
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "tests: a panic is the report, a skip says why"
)]

mod suite;

use flowseg_engine::cuda_exec::CudaExecutor;
use flowseg_engine::device::Program;
use flowseg_engine::exec::ExecOrder;
use flowseg_engine::graph::ValueRef;
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::shadow::{DebugChecks, Tolerance};
use flowseg_engine::train::Trainer;
use flowseg_engine::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use suite::shipped::{full_registry, open_shrunk};

/// `graphs/<name>.yaml`: under `$FLOWSEG_GRAPHS` when set (the GPU machine runs this binary
/// away from the build's checkout), else beside the crate.
fn graph(name: &str) -> PathBuf {
    let dir = std::env::var_os("FLOWSEG_GRAPHS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../graphs"),
        PathBuf::from,
    );
    dir.join(format!("{name}.yaml"))
}

/// A GPU, or the reason there is none (printed by the caller as its skip); with
/// `FLOWSEG_REQUIRE_GPU=1` (scripts/gpu-check.sh) a missing GPU fails instead.
fn gpu() -> Result<(), String> {
    let found = flowseg_kernels::cuda::Device::cuda(0).map(|_| ());
    let required = std::env::var("FLOWSEG_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if let (Err(e), true) = (&found, required) {
        panic!("FLOWSEG_REQUIRE_GPU=1 but no CUDA device: {e}");
    }
    found.map_err(|e| e.to_string())
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.f32().unwrap_or(&[]), b.f32().unwrap_or(&[]));
    assert_eq!(a.len(), b.len());
    (a.iter().zip(b))
        .map(|(x, y)| f64::from((x - y).abs()) / (1e-3 + f64::from(x.abs().max(y.abs()))))
        .fold(0.0, f64::max)
}

#[test]
fn the_supervised_step_on_the_gpu_matches_the_cpu() {
    step_matches("supervised");
}

#[test]
fn the_cps_step_on_the_gpu_matches_the_cpu() {
    step_matches("cps");
}

#[test]
fn the_cutmix_seg_step_on_the_gpu_matches_the_cpu() {
    step_matches("cutmix_seg");
}

fn step_matches(name: &str) {
    if let Err(why) = gpu() {
        eprintln!("skipped: {why}");
        return;
    }
    let registry = full_registry();
    let (gspec, mut source, env) = open_shrunk(&graph(name), &registry);
    let mut cpu = Trainer::new(&gspec, &registry, &env, BTreeMap::new()).unwrap();
    let mut gpu = Trainer::new(&gspec, &registry, &env, BTreeMap::new()).unwrap();
    gpu.use_cuda(0).unwrap();
    for it in 0..5 {
        let batch = source.batch(it).unwrap();
        let a = cpu.step(&batch, it).unwrap();
        let b = gpu.step(&batch, it).unwrap();
        for ((loss, x), (_, y)) in a.iter().zip(&b) {
            let rel = f64::from((x - y).abs()) / f64::from(x.abs().max(1e-3));
            assert!(rel < 1e-4, "iteration {it}: loss {loss}: cpu {x}, gpu {y}");
        }
    }
    gpu.sync_state().unwrap();
    for (name, t) in &cpu.state {
        let rel = max_rel(t, &gpu.state[name]);
        assert!(
            rel < 1e-3,
            "state `{name}` after 5 steps: relative difference {rel}"
        );
    }
}

#[test]
fn one_stream_and_three_streams_give_the_same_bits_on_the_gpu() {
    // CutMix-Seg: the teacher's forward and the student's are independent branches.
    streams_agree("cutmix_seg");
    streams_agree("supervised");
}

fn streams_agree(name: &str) {
    if let Err(why) = gpu() {
        eprintln!("skipped: {why}");
        return;
    }
    let registry = full_registry();
    let (gspec, mut source, env) = open_shrunk(&graph(name), &registry);
    let mut trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new()).unwrap();
    let batch = source.batch(0).unwrap();
    let state = trainer.step_state(0).unwrap();
    let g = trainer.step_graph().clone();
    let keep = trainer.step_plan().keep.clone();
    let mut results = Vec::new();
    for streams in [1, 3] {
        let p = plan(
            &g,
            &PlanOptions {
                streams,
                keep: keep.clone(),
            },
        )
        .unwrap();
        let program = Program::new(&g, &p).unwrap();
        let mut exec = CudaExecutor::new(0, streams).unwrap();
        exec.upload_state(&state).unwrap();
        exec.run(
            &g,
            &p,
            &program,
            &batch,
            gspec.train.seed,
            0,
            ExecOrder::Sequential,
            DebugChecks::default(),
        )
        .unwrap();
        let kept: Vec<Vec<u32>> = (keep.iter())
            .filter(|v| matches!(v, ValueRef::Node { .. }))
            .map(|v| exec.fetch(&g, &program, v).unwrap())
            .map(|t| t.f32().unwrap_or(&[]).iter().map(|x| x.to_bits()).collect())
            .collect();
        let after: BTreeMap<String, Vec<u32>> = (state.keys())
            .map(|k| {
                let t = exec.download_state(k).unwrap();
                (
                    k.clone(),
                    t.f32().unwrap_or(&[]).iter().map(|x| x.to_bits()).collect(),
                )
            })
            .collect();
        results.push((kept, after));
    }
    assert!(
        results[0] == results[1],
        "{name}: 3 streams differ from 1 stream"
    );
}

#[test]
fn every_node_of_the_cutmix_seg_and_cps_steps_validates_against_the_cpu() {
    validates("cutmix_seg");
    validates("cps");
}

/// Two steps of `name` on the GPU with `--validate-cpu`'s checks (and a sync after each op):
/// every node within the default tolerance of its CPU reference, or the first that is not.
fn validates(name: &str) {
    if let Err(why) = gpu() {
        eprintln!("skipped: {why}");
        return;
    }
    let registry = full_registry();
    let (gspec, mut source, env) = open_shrunk(&graph(name), &registry);
    let mut gpu = Trainer::new(&gspec, &registry, &env, BTreeMap::new()).unwrap();
    gpu.use_cuda(0).unwrap();
    gpu.set_debug_checks(DebugChecks {
        sync_each_op: true,
        validate: Some(Tolerance::default()),
    });
    for it in 0..2 {
        let batch = source.batch(it).unwrap();
        gpu.step(&batch, it)
            .unwrap_or_else(|e| panic!("{name}, iteration {it}: {e}"));
    }
}
