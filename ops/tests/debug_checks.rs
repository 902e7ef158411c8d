//! The debug switches of a device run (`--sync-each-op`, `--validate-cpu`; engine/src/shadow.rs),
//! exercised without a GPU:
//!
//! * around the CPU executor, over whole shipped steps (forward, backward, optimizer and EMA
//!   updates in place), on one stream and interleaved: every node's output and every in-place
//!   update read back and matched bit for bit by the shadow, and the run's state unchanged;
//! * around a device that returns one node's output wrong: the shadow names that node, not one
//!   of its consumers;
//! * around a device whose work fails asynchronously: `--sync-each-op` names the node after
//!   which it failed;
//! * around a device that cannot read its values back: a clear refusal.
//!
//! Not here: the same checks on a GPU (ops/tests/cuda_step.rs, scripts/gpu-check.sh).

mod suite;

use flowseg_engine::device::{drive, Device, ExecError, Launch, Operand, Program, RecordingDevice};
use flowseg_engine::exec::{self, ExecOrder, Workspace};
use flowseg_engine::graph::{Graph, ValueRef};
use flowseg_engine::shadow::{Checked, DebugChecks, Tolerance};
use flowseg_engine::train::Trainer;
use flowseg_engine::{Tensor, TensorSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use suite::shipped::{full_registry, open_shrunk, state_bits};

fn graph_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../graphs/{name}.yaml"))
}

/// Exact: the shadow runs the same CPU code on the same inputs.
const EXACT: DebugChecks = DebugChecks {
    sync_each_op: true,
    validate: Some(Tolerance {
        atol: 0.0,
        rtol: 0.0,
    }),
};

#[test]
fn the_checks_find_nothing_on_the_cpu_and_change_no_bit() {
    let registry = full_registry();
    // supervised: one model; cutmix_seg: an EMA teacher; gct: three optimizers, a detector.
    for name in ["supervised", "cutmix_seg", "gct"] {
        let (gspec, mut source, env) = open_shrunk(&graph_file(name), &registry);
        let mut trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new())
            .unwrap_or_else(|e| panic!("{name}: {e:#?}"));
        let batch = source.batch(0).expect("batch 0");
        let (seed, iteration) = (gspec.train.seed, 0);
        let start = trainer.step_state(iteration).expect("state");
        let (graph, plan) = (trainer.step_graph(), trainer.step_plan());
        let mut ws = Workspace::default();
        let mut plain = start.clone();
        exec::run_plan_in_place(
            &mut ws,
            graph,
            plan,
            &batch,
            &mut plain,
            seed,
            iteration,
            ExecOrder::Sequential,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_ne!(
            state_bits(&plain),
            state_bits(&start),
            "{name}: the step updated nothing"
        );
        for order in [ExecOrder::Sequential, ExecOrder::Interleaved { seed: 1 }] {
            let mut checked = start.clone();
            exec::run_plan_in_place_checked(
                &mut ws,
                graph,
                plan,
                &batch,
                &mut checked,
                seed,
                iteration,
                order,
                EXACT,
            )
            .unwrap_or_else(|e| panic!("{name}, {order:?}: {e}"));
            assert!(
                state_bits(&checked) == state_bits(&plain),
                "{name}, {order:?}: the checked run changed the state"
            );
        }
    }
}

/// A stand-in for a GPU: it "computes" by handing back the CPU reference's values (`run_cpu` of
/// the whole graph), except that output `wrong.1` of node `wrong.0` comes back with its first
/// element off by one; its synchronisation fails once node `fails_after` has run. It refuses
/// to read an output before its node was launched, as a device could not.
struct FakeGpu<'a> {
    graph: &'a Graph,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    values: BTreeMap<(usize, usize), Tensor>,
    wrong: Option<(usize, usize)>,
    fails_after: Option<usize>,
    launched: Vec<usize>,
}

impl Device for FakeGpu<'_> {
    fn launch(&mut self, l: &Launch) -> Result<(), ExecError> {
        self.launched.push(l.node);
        Ok(())
    }
    fn record(&mut self, _: usize, _: usize) -> Result<(), ExecError> {
        Ok(())
    }
    fn wait(&mut self, _: usize, _: usize) -> Result<(), ExecError> {
        Ok(())
    }
    fn free(&mut self, _: usize, _: flowseg_engine::device::Region) -> Result<(), ExecError> {
        Ok(())
    }
    fn read_back(&mut self, operand: &Operand, spec: &TensorSpec) -> Result<Tensor, ExecError> {
        let t = match operand {
            Operand::Absent => None,
            Operand::Batch(f) => self.batch.get(f).cloned(),
            Operand::State(f) | Operand::StateInPlace(f) => self.state.get(f).cloned(),
            Operand::Value { node, port, .. } => {
                if !self.launched.contains(node) {
                    return Err(ExecError::Device(format!(
                        "read of `{}` before it ran",
                        self.graph.nodes[*node].name.value
                    )));
                }
                let mut t = self.values.get(&(*node, *port)).cloned();
                if self.wrong == Some((*node, *port)) {
                    if let Some(v) = t.as_mut().and_then(Tensor::f32_mut) {
                        v[0] += 1.0;
                    }
                }
                t
            }
        };
        let t = t.ok_or_else(|| ExecError::Device(format!("no value for {operand:?}")))?;
        assert_eq!(t.spec(), spec, "read_back asked for another spec");
        Ok(t)
    }
    fn synchronize(&mut self) -> Result<(), ExecError> {
        match (self.fails_after, self.launched.last()) {
            (Some(n), Some(&last)) if n == last => {
                Err(ExecError::Device("CUDA_ERROR_ILLEGAL_ADDRESS".into()))
            }
            _ => Ok(()),
        }
    }
}

/// The supervised graph's forward and backward (no in-place updates), its plan, batch and state.
fn supervised() -> (Trainer, BTreeMap<String, Tensor>, u64) {
    let registry = full_registry();
    let (gspec, mut source, env) = open_shrunk(&graph_file("supervised"), &registry);
    let trainer = Trainer::new(&gspec, &registry, &env, BTreeMap::new()).expect("trainer");
    let batch = source.batch(0).expect("batch 0");
    (trainer, batch, gspec.train.seed)
}

fn fake<'a>(
    graph: &'a Graph,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    seed: u64,
) -> FakeGpu<'a> {
    let run = exec::run_cpu(graph, batch, state, seed, 0).expect("run_cpu");
    let mut values = BTreeMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        for port in 0..n.outputs.len() {
            if let Some(t) = run.get(&ValueRef::Node { node: i, port }) {
                values.insert((i, port), t.clone());
            }
        }
    }
    FakeGpu {
        graph,
        batch,
        state,
        values,
        wrong: None,
        fails_after: None,
        launched: Vec::new(),
    }
}

#[test]
fn a_node_whose_device_output_is_wrong_is_named_and_not_its_consumers() {
    let (trainer, batch, seed) = supervised();
    let (graph, plan) = (&trainer.graph, &trainer.plan);
    let program = Program::new(graph, plan).expect("program");
    // Right values everywhere: nothing to report.
    let mut gpu = fake(graph, &batch, &trainer.state, seed);
    let checks = DebugChecks {
        sync_each_op: false,
        validate: Some(Tolerance::default()),
    };
    drive(
        &mut Checked::new(&mut gpu, graph, seed, 0, checks),
        &program,
        plan,
        ExecOrder::Sequential,
    )
    .unwrap_or_else(|e| panic!("right values reported: {e}"));
    // A convolution in the middle of the forward, and a backward node, each off by one once.
    let pick = |op: &str, nth: usize| {
        (graph.nodes.iter().enumerate())
            .filter(|(_, n)| n.op.name() == op)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {op} #{nth}"))
    };
    for wrong in [pick("conv2d", 3), pick("conv2d_bwd", 2)] {
        let mut gpu = fake(graph, &batch, &trainer.state, seed);
        gpu.wrong = Some((wrong, 0));
        let e = drive(
            &mut Checked::new(&mut gpu, graph, seed, 0, checks),
            &program,
            plan,
            ExecOrder::Sequential,
        )
        .expect_err("a wrong value passed");
        let name = &graph.nodes[wrong].name.value;
        match &e {
            ExecError::Diverged {
                node, what, detail, ..
            } => {
                assert_eq!(node, name, "{e}");
                assert!(what.starts_with("output 0"), "{e}");
                assert!(detail.starts_with("element 0 of "), "{e}");
            }
            other => panic!("expected a divergence at `{name}`, got: {other}"),
        }
        // The shadow stopped there: nothing after the wrong node was launched.
        assert_eq!(gpu.launched.last(), Some(&wrong));
    }
}

#[test]
fn sync_each_op_names_the_node_after_which_the_device_failed() {
    let (trainer, batch, seed) = supervised();
    let (graph, plan) = (&trainer.graph, &trainer.plan);
    let program = Program::new(graph, plan).expect("program");
    let failing = graph.nodes.len() / 2;
    for sync_each_op in [true, false] {
        let mut gpu = fake(graph, &batch, &trainer.state, seed);
        gpu.fails_after = Some(failing);
        let checks = DebugChecks {
            sync_each_op,
            validate: None,
        };
        let result = drive(
            &mut Checked::new(&mut gpu, graph, seed, 0, checks),
            &program,
            plan,
            ExecOrder::Sequential,
        );
        if sync_each_op {
            let e = result
                .expect_err("the failure was not reported")
                .to_string();
            let node = &graph.nodes[failing];
            let want = format!(
                "device: after node `{}` ({}): CUDA_ERROR_ILLEGAL_ADDRESS",
                node.name.value,
                node.op.name()
            );
            assert_eq!(e, want);
        } else {
            // Without the switch nothing waits inside the step: the fault would surface at the
            // step's end, unattributed.
            result.expect("no synchronisation, no report");
            assert_eq!(gpu.launched.len(), graph.nodes.len());
        }
    }
}

#[test]
fn validation_on_a_device_that_cannot_read_back_is_refused() {
    let (trainer, _, seed) = supervised();
    let (graph, plan) = (&trainer.graph, &trainer.plan);
    let program = Program::new(graph, plan).expect("program");
    let mut recorder = RecordingDevice::default();
    let checks = DebugChecks {
        sync_each_op: false,
        validate: Some(Tolerance::default()),
    };
    let e = drive(
        &mut Checked::new(&mut recorder, graph, seed, 0, checks),
        &program,
        plan,
        ExecOrder::Sequential,
    )
    .expect_err("validated without reading anything")
    .to_string();
    assert_eq!(e, "device: this device cannot read its values back");
}
