//! Every shipped method graph (`graphs/*.yaml`, shrunk: 16×16 images, batch 2, width 8) through
//! the plan executor, against the reference executor: the training step's kept values (losses,
//! gradients, assigned BN statistics) from the poisoned simulator — which hands every node
//! poisoned output buffers — on the trainer's one-stream plan and on two- and three-stream plans,
//! and from plan-order runs in a reused workspace whose buffers hold the previous run's values,
//! equal `run_cpu`'s bit for bit. This is what lets the executor skip clearing outputs: every
//! built-in op the shipped graphs use overwrites its outputs without reading them.
//!
//! Not here: the numbers themselves (ops/tests/gradients.rs, tests/run.rs).

mod suite;

use flowseg_engine::exec::{self, ExecOrder, Run, Workspace};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::train::Trainer;
use flowseg_engine::Tensor;
use std::collections::BTreeMap;
use suite::shipped::{full_registry, graph_files, open_shrunk};

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
