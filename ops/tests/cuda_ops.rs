//! Every op's CUDA twin against its CPU code, through the engine's CUDA executor (feature
//! `cuda`, on a GPU; without one the test prints why it skips, and fails under
//! `FLOWSEG_REQUIRE_GPU=1` as scripts/gpu-check.sh runs it): for each registered op and each of
//! its gradient-suite cases (the same params and input feeds as ops/tests/gradients.rs) whose
//! node has a twin (`Op::has_cuda`), the op alone runs on the CPU (`run_cpu`) and on the GPU,
//! and every output must agree — i32 exactly, f32 within 1e-5 + 1e-4·|cpu| (reductions run in
//! another order). Where the op's first f32 output is a scalar (a loss), its backward graph is
//! checked the same way when every backward node has a twin too. The cases without a twin are
//! counted and printed.
//!
//! Not here: the twins' kernels alone (kernels/tests/cuda_parity_*.rs), a whole step
//! (cuda_step.rs).
#![cfg(feature = "cuda")]
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "tests: a panic is the report, a skip and the counts are printed"
)]

mod suite;

use flowseg_engine::autodiff;
use flowseg_engine::cuda_exec::CudaExecutor;
use flowseg_engine::device::{missing_cuda_twins, Program};
use flowseg_engine::exec::{run_cpu, ExecOrder};
use flowseg_engine::graph::{Graph, ValueRef};
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::DType;
use suite::gradients::{build, registry, Inputs};

/// Every node output of `g`, on the CPU and on the GPU, compared; `what` names the case.
fn compare(what: &str, g: &Graph, inputs: &Inputs) {
    let keep: Vec<ValueRef> = (0..g.nodes.len())
        .flat_map(|node| {
            (0..g.nodes[node].outputs.len()).map(move |port| ValueRef::Node { node, port })
        })
        .collect();
    let cpu = run_cpu(g, &inputs.batch, &inputs.state, 0, 0).unwrap();
    let p = plan(
        g,
        &PlanOptions {
            streams: 1,
            keep: keep.clone(),
        },
    )
    .unwrap();
    let program = Program::new(g, &p).unwrap();
    let mut exec = CudaExecutor::new(0, 1).unwrap();
    exec.upload_state(&inputs.state).unwrap();
    exec.run(
        g,
        &p,
        &program,
        &inputs.batch,
        0,
        0,
        ExecOrder::Sequential,
        flowseg_engine::shadow::DebugChecks::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    for v in &keep {
        let (want, got) = (cpu.get(v).unwrap(), exec.fetch(g, &program, v).unwrap());
        let name = match v {
            ValueRef::Node { node, port } => {
                format!("`{}` output {port}", g.nodes[*node].name.value)
            }
            other => format!("{other:?}"),
        };
        match want.spec().dtype {
            DType::I32 => assert_eq!(want.i32(), got.i32(), "{what}: {name}"),
            DType::F32 => {
                let (a, b) = (want.f32().unwrap(), got.f32().unwrap());
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    let close =
                        (x - y).abs() <= 1e-5 + 1e-4 * x.abs() || (x.is_nan() && y.is_nan());
                    assert!(close, "{what}: {name}[{i}]: cpu {x}, gpu {y}");
                }
            }
        }
    }
}

fn gpu() -> Result<(), String> {
    let found = flowseg_kernels::cuda::Device::cuda(0).map(|_| ());
    let required = std::env::var("FLOWSEG_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if let (Err(e), true) = (&found, required) {
        panic!("FLOWSEG_REQUIRE_GPU=1 but no CUDA device: {e}");
    }
    found.map_err(|e| e.to_string())
}

#[test]
fn every_cuda_twin_matches_its_cpu_code() {
    if let Err(why) = gpu() {
        eprintln!("skipped: {why}");
        return;
    }
    let r = registry();
    let (mut checked, mut backward, mut without) = (0, 0, Vec::new());
    for op in r.iter() {
        for case in op.grad_cases() {
            let mut inputs = Inputs::default();
            let wiring: Vec<String> = (case.feeds.iter())
                .map(|&(port, feed)| format!("{port}: {}", inputs.add(port, feed)))
                .collect();
            let node = format!(
                "{{ name: op, op: {}, inputs: {{ {} }}, params: {} }}",
                op.name(),
                wiring.join(", "),
                case.params
            );
            let g = build(&r, &[node], &inputs);
            let what = format!("`{}` {}", op.name(), case.params);
            if !missing_cuda_twins(&g).is_empty() {
                without.push(what);
                continue;
            }
            compare(&what, &g, &inputs);
            checked += 1;
            // A scalar loss: its backward too, where every backward node has a twin.
            let out = &g.nodes[0].outputs;
            let Some(k) = out.iter().position(|s| s.dtype == DType::F32) else {
                continue;
            };
            if !out[k].shape.is_empty() || g.nodes[0].op.stop_grad() {
                continue;
            }
            let mut gb = g.clone();
            let loss = ValueRef::Node { node: 0, port: k };
            let wrt = inputs.trainable();
            if autodiff::differentiate(&mut gb, &[(loss, 1.0)], &wrt).is_ok()
                && missing_cuda_twins(&gb).is_empty()
            {
                compare(&format!("{what}, backward"), &gb, &inputs);
                backward += 1;
            }
        }
    }
    eprintln!(
        "checked {checked} cases ({backward} with their backward); {} cases without a twin: {}",
        without.len(),
        without.join(", ")
    );
    assert!(checked > 0, "no op has a CUDA twin");
}
