//! Engine overhead, measured against the work it schedules (numbers in docs/BENCHMARKS.md):
//!
//! 1. Planning a graph of 500 tiny ops: `ir::build` + `autodiff::differentiate` + `plan::plan`
//!    (target: under 50 ms).
//! 2. Per-iteration overhead of the executor on `benches/peer/graphs/supervised.yaml`
//!    (deeplab_lite) at batch 16 of 64×64: the plan-driven run of the step versus the same
//!    nodes' `cpu` calls back to back on preallocated tensors (pure op time), in the same
//!    process (target: overhead under 5 %).
//!
//! Run: `cargo bench --bench engine`. A plain timing harness (median of repeated runs) rather
//! than criterion, because the result is a ratio of two measurements taken side by side.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a bench binary"
)]

use flowseg_engine::autodiff;
use flowseg_engine::exec::{run_cpu, run_plan, ExecOrder};
use flowseg_engine::graph::{Env, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::open::open_source;
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::spec;
use flowseg_engine::train::Trainer;
use flowseg_engine::{ExecCx, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// 500 tiny ops: 250 relu/add pairs along a chain with a skip, on a 1×1×1×8 tensor, a
/// trainable state tensor at the start and a cross-entropy loss at the end.
fn tiny_graph() -> String {
    let mut y = String::from("name: tiny\ntrain: { iterations: 1 }\noptim:\n  net: { kind: sgd, lr: 0.1, minimize: { loss.loss: 1.0 } }\nnodes:\n");
    y += "  - { name: a0, op: add, inputs: { a: batch.x, b: state.net.w } }\n";
    let mut prev = "a0".to_owned();
    for i in 1..250 {
        y += &format!("  - {{ name: r{i}, op: relu, inputs: {{ x: {prev}.y }} }}\n");
        y += &format!("  - {{ name: a{i}, op: add, inputs: {{ a: r{i}.y, b: {prev}.y }} }}\n");
        prev = format!("a{i}");
    }
    y += &format!("  - {{ name: loss, op: cross_entropy, inputs: {{ logits: {prev}.y, target: batch.t }} }}\n");
    y
}

fn main() {
    let registry = flowseg::registry(&[]).unwrap();

    // 1. Planning 500 tiny ops.
    let text = tiny_graph();
    let env = Env {
        batch: BTreeMap::from([
            ("x".into(), flowseg_engine::TensorSpec::f32(&[1, 8, 1, 1])),
            ("t".into(), flowseg_engine::TensorSpec::i32(&[1, 1, 1])),
        ]),
        state: BTreeMap::from([(
            "net.w".into(),
            flowseg_engine::TensorSpec::f32(&[1, 8, 1, 1]),
        )]),
        hidden: Default::default(),
    };
    let (gspec, _) = spec::parse_graph(&text, &[]).unwrap();
    let mut nodes = 0;
    let t_plan = time(20, || {
        let mut g = ir::build(&gspec, &registry, &env).unwrap();
        let loss = g.nodes.iter().position(|n| n.name.value == "loss").unwrap();
        let wrt: BTreeSet<String> = ["net.w".to_owned()].into();
        let grads = autodiff::differentiate(
            &mut g,
            &[(
                ValueRef::Node {
                    node: loss,
                    port: 0,
                },
                1.0,
            )],
            &wrt,
        )
        .unwrap();
        let keep: Vec<ValueRef> = grads.into_values().collect();
        let p = plan(&g, &PlanOptions { streams: 2, keep }).unwrap();
        nodes = g.nodes.len();
        std::hint::black_box(p);
    });
    let t_parse = time(20, || {
        std::hint::black_box(spec::parse_graph(&text, &[]).unwrap());
    });
    println!("planning: 500-op method graph ({nodes} nodes with backward): parse {:.1} ms, build + autodiff + plan (2 streams) {:.1} ms", t_parse * 1e3, t_plan * 1e3);

    // 2. Per-iteration overhead on supervised.yaml at batch 16 of 64×64.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/peer/graphs/supervised.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let sets = ["data.batch=16".to_owned(), "data.size=64".to_owned()];
    let (gspec, _) = spec::parse_graph(&text, &sets).unwrap();
    let mut source = open_source(&gspec, &registry).unwrap();
    let env = Env {
        batch: source.specs(),
        state: BTreeMap::new(),
        hidden: source.hidden_fields(),
    };
    let mut trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new()).unwrap();
    let batch = source.batch(0).unwrap();
    let (graph, state) = (&trainer.graph, &trainer.state);

    // Every node's inputs, captured from one reference run, and its outputs preallocated.
    let reference = run_cpu(graph, &batch, state, 0, 0).unwrap();
    let inputs: Vec<Vec<Option<Tensor>>> = graph
        .nodes
        .iter()
        .map(|n| {
            n.inputs
                .iter()
                .map(|s| s.as_ref().and_then(|s| reference.get(s).cloned()))
                .collect()
        })
        .collect();
    drop(reference);
    let mut outputs: Vec<Vec<Tensor>> = graph
        .nodes
        .iter()
        .map(|n| n.outputs.iter().map(Tensor::zeros).collect())
        .collect();
    let reps = 15;
    let t_ops = time(reps, || {
        for (i, n) in graph.nodes.iter().enumerate() {
            let ins: Vec<Option<&Tensor>> = inputs[i].iter().map(Option::as_ref).collect();
            let cx = ExecCx::for_node(0, 0, &n.name.value);
            n.op.cpu(&cx, &ins, &mut outputs[i]).unwrap();
        }
    });
    let t_plan_run = time(reps, || {
        std::hint::black_box(
            run_plan(
                graph,
                &trainer.plan,
                &batch,
                state,
                0,
                0,
                ExecOrder::Sequential,
            )
            .unwrap(),
        );
    });
    let t_cpu_run = time(reps, || {
        std::hint::black_box(run_cpu(graph, &batch, state, 0, 0).unwrap());
    });
    let mut it = 0;
    let t_step = time(reps, || {
        trainer.step(&batch, it).unwrap();
        it += 1;
    });
    println!(
        "supervised.yaml, batch 16 of 64×64, {} nodes, {} threads:",
        trainer.graph.nodes.len(),
        rayon::current_num_threads()
    );
    println!("  ops back to back (pure op time)   {:8.2} ms", t_ops * 1e3);
    println!(
        "  run_plan (the trainer's executor) {:8.2} ms   overhead {:+.1} %",
        t_plan_run * 1e3,
        100.0 * (t_plan_run - t_ops) / t_plan_run
    );
    println!(
        "  run_cpu (reference executor)      {:8.2} ms   overhead {:+.1} %",
        t_cpu_run * 1e3,
        100.0 * (t_cpu_run - t_ops) / t_cpu_run
    );
    println!(
        "  Trainer::step (run + SGD update)  {:8.2} ms",
        t_step * 1e3
    );
}
