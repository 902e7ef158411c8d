//! Every shipped method graph (`graphs/*.yaml`, shrunk: 16×16 images, batch 2, width 8) through
//! the plan executor, against the reference executor: the training step's kept values (losses,
//! gradients, assigned BN statistics) from the poisoned simulator — which hands every node
//! poisoned output buffers — on the trainer's one-stream plan and on two- and three-stream plans,
//! and from plan-order runs in a reused workspace whose buffers hold the previous run's values,
//! equal `run_cpu`'s bit for bit. This is what lets the executor skip clearing outputs: every
//! built-in op the shipped graphs use overwrites its outputs without reading them.
//!
//! And the whole step, the update nodes included: every state tensor after it, on every plan
//! and from the trainer's own step, equals the reference executor's. And the calls a device
//! receives for that step pass the device check (engine/src/device.rs `check_calls`).
//!
//! Not here: the numbers themselves (ops/tests/gradients.rs, tests/run.rs).

mod suite;

use flowseg_engine::device::{check_calls, drive, missing_cuda_twins, Program, RecordingDevice};
use flowseg_engine::exec::{self, ExecOrder, Run, Workspace};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::train::Trainer;
use flowseg_engine::Tensor;
use std::collections::BTreeMap;
use suite::shipped::{full_registry, graph_files, open_shrunk, state_bits};

/// Bits of each kept value, in `keep` order (`None` where the run has no such value).
fn kept_bits(run: &Run<'_>, keep: &[ValueRef]) -> Vec<Option<Vec<u32>>> {
    keep.iter()
        .map(|s| {
            let t: &Tensor = run.get(s)?;
            match (t.f32(), t.i32()) {
                (Some(v), _) => Some(v.iter().map(|x| x.to_bits()).collect()),
                (_, Some(v)) => Some(v.iter().map(|&x| x as u32).collect()),
                _ => None,
            }
        })
        .collect()
}

/// The first kept value whose bits differ, by node name.
fn first_difference(
    trainer: &Trainer,
    keep: &[ValueRef],
    got: &[Option<Vec<u32>>],
    want: &[Option<Vec<u32>>],
) -> Option<String> {
    let k = (0..keep.len()).find(|&k| got[k] != want[k])?;
    Some(match &keep[k] {
        ValueRef::Node { node, port } => {
            format!("{}.{port}", trainer.graph.nodes[*node].name.value)
        }
        other => format!("{other:?}"),
    })
}

#[test]
fn every_shipped_graph_steps_identically_on_poisoned_and_reused_buffers() {
    let registry = full_registry();
    for file in &graph_files() {
        let what = file.display();
        let (gspec, mut source, env) = open_shrunk(file, &registry);
        let trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new())
            .unwrap_or_else(|e| panic!("{what}: {e:#?}"));
        let batch = source.batch(0).expect("batch 0");
        let (seed, iteration) = (gspec.train.seed, 0);
        let keep = trainer.plan.keep.clone();
        assert!(!keep.is_empty(), "{what}: the step keeps nothing");
        let reference = exec::run_cpu(&trainer.graph, &batch, &trainer.state, seed, iteration)
            .unwrap_or_else(|e| panic!("{what}: run_cpu: {e}"));
        let want = kept_bits(&reference, &keep);
        assert!(
            want.iter().all(Option::is_some),
            "{what}: run_cpu lacks a kept value"
        );
        drop(reference);

        let mut plans = vec![("the trainer's plan".to_owned(), trainer.plan.clone())];
        for streams in [2, 3] {
            let opts = PlanOptions {
                streams,
                keep: keep.clone(),
            };
            let p = plan(&trainer.graph, &opts).unwrap_or_else(|e| panic!("{what}: {e:#?}"));
            plans.push((format!("{streams} streams"), p));
        }
        for (name, p) in &plans {
            // One workspace per plan, reused: poisoned runs, then plan-order runs over whatever
            // the previous run left in the buffers.
            let mut ws = Workspace::default();
            let orders = [
                ExecOrder::Interleaved { seed: 0 },
                ExecOrder::Sequential,
                ExecOrder::Interleaved { seed: 1 },
                ExecOrder::Sequential,
            ];
            for order in orders {
                let run = exec::run_plan_in(
                    &mut ws,
                    &trainer.graph,
                    p,
                    &batch,
                    &trainer.state,
                    seed,
                    iteration,
                    order,
                )
                .unwrap_or_else(|e| panic!("{what}, {name}, {order:?}: {e}"));
                let got = kept_bits(&run, &keep);
                if let Some(diff) = first_difference(&trainer, &keep, &got, &want) {
                    panic!("{what}, {name}, {order:?}: `{diff}` differs from run_cpu's");
                }
            }
        }
    }
}

/// The whole step — forward, backward and the update nodes that change state in place (the
/// optimizer steps, assigns and EMA updates; engine/src/update.rs) — on one, two and three
/// streams, poisoned and in plan order, leaves every state tensor (parameters, moments, buffers,
/// teachers) as the reference executor does, bit for bit, and so does the trainer's own step.
#[test]
fn every_shipped_graph_updates_its_state_identically_on_every_plan() {
    let registry = full_registry();
    for file in &graph_files() {
        let what = file.display();
        let (gspec, mut source, env) = open_shrunk(file, &registry);
        let mut trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new())
            .unwrap_or_else(|e| panic!("{what}: {e:#?}"));
        let batch = source.batch(0).expect("batch 0");
        let (seed, iteration) = (gspec.train.seed, 0);
        let start = trainer
            .step_state(iteration)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let graph = trainer.step_graph().clone();
        let reference = exec::run_cpu(&graph, &batch, &start, seed, iteration)
            .unwrap_or_else(|e| panic!("{what}: run_cpu: {e}"));
        let mut want = start.clone();
        want.extend(reference.updated_state().clone());
        drop(reference);
        assert_ne!(
            state_bits(&want),
            state_bits(&start),
            "{what}: the step updated nothing"
        );
        let want = state_bits(&want);
        let keep = trainer.step_plan().keep.clone();
        let mut plans = vec![("the trainer's plan".to_owned(), trainer.step_plan().clone())];
        for streams in [2, 3] {
            let opts = PlanOptions {
                streams,
                keep: keep.clone(),
            };
            let p = plan(&graph, &opts).unwrap_or_else(|e| panic!("{what}: {e:#?}"));
            plans.push((format!("{streams} streams"), p));
        }
        for (name, p) in &plans {
            let mut ws = Workspace::default();
            for order in [ExecOrder::Interleaved { seed: 0 }, ExecOrder::Sequential] {
                let mut state = start.clone();
                exec::run_plan_in_place(
                    &mut ws, &graph, p, &batch, &mut state, seed, iteration, order,
                )
                .unwrap_or_else(|e| panic!("{what}, {name}, {order:?}: {e}"));
                let got = state_bits(&state);
                if let Some(k) = want.keys().find(|k| got.get(*k) != want.get(*k)) {
                    panic!("{what}, {name}, {order:?}: state `{k}` differs from run_cpu's");
                }
            }
        }
        // The trainer's step is the same computation.
        trainer
            .step(&batch, iteration)
            .unwrap_or_else(|e| panic!("{what}: step: {e}"));
        let stepped = state_bits(&trainer.state);
        if let Some(k) = stepped.keys().find(|k| stepped.get(*k) != want.get(*k)) {
            panic!("{what}: the trainer's step leaves `{k}` unlike run_cpu's");
        }
    }
}

/// What a device receives for every shipped graph's whole step (forward, backward, update) on
/// one, two and three streams, in plan order and interleaved, passes the device check: every
/// read after its write with an event between streams, no overwrite of a live value, updates in
/// graph order (engine/src/device.rs) — the bookkeeping the CUDA executor will replay.
#[test]
fn every_shipped_graph_step_records_device_calls_that_pass_the_check() {
    let registry = full_registry();
    for file in &graph_files() {
        let what = file.display();
        let (gspec, _source, env) = open_shrunk(file, &registry);
        let trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new())
            .unwrap_or_else(|e| panic!("{what}: {e:#?}"));
        let graph = trainer.step_graph();
        let keep = trainer.step_plan().keep.clone();
        for streams in [1, 2, 3] {
            let opts = PlanOptions {
                streams,
                keep: keep.clone(),
            };
            let p = plan(graph, &opts).unwrap_or_else(|e| panic!("{what}: {e:#?}"));
            let program = Program::new(graph, &p).unwrap_or_else(|e| panic!("{what}: {e}"));
            for order in [ExecOrder::Sequential, ExecOrder::Interleaved { seed: 3 }] {
                let mut dev = RecordingDevice::default();
                drive(&mut dev, &program, &p, order)
                    .unwrap_or_else(|e| panic!("{what}, {streams} streams, {order:?}: {e}"));
                check_calls(graph, &p, &program.arena, &dev.calls)
                    .unwrap_or_else(|e| panic!("{what}, {streams} streams, {order:?}: {e}"));
            }
        }
    }
}

/// Every shipped graph's whole step has a CUDA twin for every node (`Op::has_cuda`), so
/// `flowseg run --device cuda` takes each of them: a graph or op added without one fails here,
/// naming the op kinds it lacks.
#[test]
fn every_shipped_graph_has_a_cuda_twin_for_every_node_of_its_step() {
    let registry = full_registry();
    for file in &graph_files() {
        let what = file.display();
        let (gspec, _source, env) = open_shrunk(file, &registry);
        let trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new())
            .unwrap_or_else(|e| panic!("{what}: {e:#?}"));
        let missing = missing_cuda_twins(trainer.step_graph());
        let kinds: std::collections::BTreeSet<&str> = missing.iter().map(|(_, op)| *op).collect();
        assert!(missing.is_empty(), "{what}: no CUDA twin for {kinds:?}");
    }
}
