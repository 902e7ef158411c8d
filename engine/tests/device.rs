//! The device seam (engine/src/device.rs) on small test ops: the arena gives every buffer its
//! own aligned bytes; the calls a recording device receives for a plan of one, two or three
//! streams, in plan order and under random interleavings, pass `check_calls` (every node once,
//! every read after its write with an event between streams, no overwrite of a live value);
//! removing any one wait from such a recording, or moving a write onto a value that is still to
//! be read, fails the check without running anything; the CPU executor, driven through the same
//! trait, gives the reference executor's numbers; a program refuses a plan made for another
//! graph.
//!
//! Not here: the shipped graphs' step plans (ops/tests/shipped_graphs.rs), a CUDA device.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::device::{
    check_calls, drive, missing_cuda_twins, ArenaLayout, Call, Operand, Program, RecordingDevice,
    ARENA_ALIGN,
};
use flowseg_engine::exec::{run_cpu, run_plan, ExecOrder};
use flowseg_engine::graph::{Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::plan::{plan, Plan, PlanOptions};
use flowseg_engine::{spec, Registry};
use std::collections::BTreeMap;

mod common;
use common::*;

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add::<Mul>().unwrap().add::<MseLoss>().unwrap();
    r
}

/// [`TRAIN`] built, with its backward; keeps the losses and the gradients.
fn training_graph() -> (Graph, Vec<ValueRef>) {
    let yaml = format!("{TRAIN}train: {{ iterations: 1 }}\n");
    let (spec, _) = spec::parse_graph(&yaml, &[]).unwrap();
    let mut g = ir::build(&spec, &registry(), &env()).unwrap();
    let keep = differentiate_train(&mut g);
    (g, keep)
}

fn planned(g: &Graph, keep: &[ValueRef], streams: usize) -> Plan {
    let opts = PlanOptions {
        streams,
        keep: keep.to_vec(),
    };
    plan(g, &opts).unwrap()
}

fn recorded(g: &Graph, p: &Plan, order: ExecOrder) -> (Program, Vec<Call>) {
    let program = Program::new(g, p).unwrap();
    let mut dev = RecordingDevice::default();
    drive(&mut dev, &program, p, order).unwrap();
    (program, dev.calls)
}

#[test]
fn the_arena_gives_every_buffer_its_own_aligned_bytes() {
    let (g, keep) = training_graph();
    for streams in 1..=3 {
        let p = planned(&g, &keep, streams);
        let arena = ArenaLayout::of(&p);
        assert_eq!(arena.offsets.len(), p.buffers.len());
        let mut spans: Vec<(usize, usize)> = (arena.offsets.iter())
            .zip(&p.buffers)
            .map(|(&o, b)| (o, o + b.bytes))
            .collect();
        for &(start, end) in &spans {
            assert_eq!(start % ARENA_ALIGN, 0);
            assert!(end <= arena.bytes);
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "buffers share bytes: {w:?}");
        }
        let need: usize = p.buffers.iter().map(|b| b.bytes).sum();
        assert!(arena.bytes >= need && arena.bytes < need + ARENA_ALIGN * p.buffers.len());
    }
}

#[test]
fn every_plan_and_interleaving_records_calls_that_pass_the_check() {
    let (g, keep) = training_graph();
    for streams in 1..=3 {
        let p = planned(&g, &keep, streams);
        if streams > 1 {
            assert!(p.stats.waits > 0, "{p}");
        }
        let orders = std::iter::once(ExecOrder::Sequential)
            .chain((0..20).map(|seed| ExecOrder::Interleaved { seed }));
        for order in orders {
            let (program, calls) = recorded(&g, &p, order);
            let launches = calls
                .iter()
                .filter(|c| matches!(c, Call::Launch(_)))
                .count();
            assert_eq!(launches, g.nodes.len(), "{streams} streams, {order:?}");
            check_calls(&g, &p, &program.arena, &calls)
                .unwrap_or_else(|e| panic!("{streams} streams, {order:?}: {e}\n{p}"));
        }
    }
}

#[test]
fn a_recording_without_any_one_of_its_waits_fails_the_check() {
    let (g, keep) = training_graph();
    for streams in 2..=3 {
        let p = planned(&g, &keep, streams);
        let (program, calls) = recorded(&g, &p, ExecOrder::Sequential);
        let waits: Vec<usize> = (0..calls.len())
            .filter(|&i| matches!(calls[i], Call::Wait { .. }))
            .collect();
        assert!(!waits.is_empty(), "{p}");
        for &w in &waits {
            let mut broken = calls.clone();
            broken.remove(w);
            assert!(
                check_calls(&g, &p, &program.arena, &broken).is_err(),
                "{streams} streams: removing {:?} went unnoticed\n{p}",
                calls[w]
            );
        }
    }
}

#[test]
fn a_write_onto_a_value_still_to_be_read_fails_the_check() {
    let (g, keep) = training_graph();
    let p = planned(&g, &keep, 1);
    let (program, calls) = recorded(&g, &p, ExecOrder::Sequential);
    let position = |node: usize| {
        (calls.iter())
            .position(|c| matches!(c, Call::Launch(l) if l.node == node))
            .unwrap()
    };
    // A value, its last reader, and a node launched between them that writes elsewhere.
    let mut found = None;
    'search: for (r, c) in calls.iter().enumerate() {
        let Call::Launch(reader) = c else { continue };
        for op in &reader.inputs {
            let Operand::Value { node, region, .. } = op else {
                continue;
            };
            for c in &calls[position(*node) + 1..r] {
                if let Call::Launch(w) = c {
                    if w.outputs.iter().all(|o| !o.overlaps(region)) {
                        found = Some((*region, w.node));
                        break 'search;
                    }
                }
            }
        }
    }
    let (region, writer) =
        found.expect("the graph has a value read two launches after its producer");
    check_calls(&g, &p, &program.arena, &calls).unwrap();
    let mut broken = calls.clone();
    for c in &mut broken {
        if let Call::Launch(l) = c {
            if l.node == writer {
                l.outputs[0].offset = region.offset;
            }
        }
    }
    let err = check_calls(&g, &p, &program.arena, &broken).unwrap_err();
    assert!(err.contains("may overwrite"), "{err}");
}

#[test]
fn the_cpu_executor_through_the_trait_matches_the_reference() {
    let (g, keep) = training_graph();
    let batch = tensors(&[("x", vec_of(1, 0.5, 1.5)), ("t", vec_of(2, -1.0, 1.0))]);
    let state = tensors(&[
        ("net.w", vec_of(3, -1.0, 1.0)),
        ("net.v", vec_of(4, -1.0, 1.0)),
        ("teacher.w", vec_of(5, -1.0, 1.0)),
    ]);
    let bits = |t: &flowseg_engine::Tensor| -> Vec<u32> {
        t.f32().unwrap().iter().map(|x| x.to_bits()).collect()
    };
    let reference = run_cpu(&g, &batch, &state, 7, 3).unwrap();
    let want: BTreeMap<usize, Vec<u32>> = (keep.iter().enumerate())
        .map(|(i, s)| (i, bits(reference.get(s).unwrap())))
        .collect();
    for streams in 1..=3 {
        let p = planned(&g, &keep, streams);
        for order in [ExecOrder::Sequential, ExecOrder::Interleaved { seed: 5 }] {
            let run = run_plan(&g, &p, &batch, &state, 7, 3, order).unwrap();
            for (i, s) in keep.iter().enumerate() {
                assert_eq!(
                    bits(run.get(s).unwrap()),
                    want[&i],
                    "{streams} streams, {order:?}"
                );
            }
        }
    }
}

#[test]
fn a_program_refuses_a_plan_made_for_another_graph() {
    let (g, keep) = training_graph();
    let p = planned(&g, &keep, 2);
    let mut other = g.clone();
    other.nodes.pop();
    let err = Program::new(&other, &p).unwrap_err().to_string();
    assert!(err.contains("made for a graph of"), "{err}");
}

#[test]
fn nodes_without_a_cuda_twin_are_listed_in_graph_order() {
    let (g, _) = training_graph();
    let missing = missing_cuda_twins(&g);
    // The test ops declare no twin; the engine's own backward plumbing (`grad_seed`,
    // `grad_add`) has one. So exactly the test ops' nodes are listed, by name and op, in graph
    // order.
    let engine_ops = ["grad_seed", "grad_add", "stop_gradient"];
    let want: Vec<(String, &str)> = (g.nodes.iter())
        .filter(|n| !engine_ops.contains(&n.op.name()))
        .map(|n| (n.name.value.clone(), n.op.name()))
        .collect();
    assert!(g.nodes.iter().any(|n| n.op.name() == "grad_seed"));
    assert_eq!(missing, want);
    assert_eq!(missing[0], ("y1".to_owned(), "mul"));
}
