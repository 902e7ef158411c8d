//! exec: runs a validated graph on the CPU. Two executors, same contract (same graph in, same
//! numbers out):
//!
//! * [`run_cpu`] — the reference: nodes in the graph's topological order, every output kept until
//!   the run ends. Tests and tools that inspect intermediate values use it.
//! * [`run_plan_in`] — runs a [`Plan`] in a [`Workspace`]: outputs live in the plan's buffers (a
//!   reused buffer really is shared by its tenants), one allocation per buffer that the workspace
//!   keeps across runs, so a steady-state run allocates no activation memory (the trainer's
//!   path). Only the plan's `keep` values are readable after the run, borrowed from the
//!   workspace. [`run_plan`] is the same with a fresh workspace whose kept values it moves out.
//!
//! Orders: in [`ExecOrder::Sequential`] the steps run in plan order — what the trainer does, one
//! op at a time. [`ExecOrder::Interleaved`] is the stream-interleaving simulator, a test mode:
//! the per-stream queues run in a random order constrained only by stream order and the plan's
//! waits, every buffer starts poisoned (NaN with payload `0xDEAD` for f32, `i32::MIN` for i32)
//! and is poisoned again at its `Free` step, and a node that reads poison fails with
//! [`ExecError::Poisoned`]. A missing event or an unsafe reuse then shows as that error or as
//! different numbers; a correct plan gives bit-identical results under every interleaving.
//!
//! In-place updates ([`crate::Op::IN_PLACE`]: an optimizer step, an EMA) change state tensors:
//! [`run_plan_in_place`] changes the caller's map in plan order (the plan executors refuse such a
//! graph on a read-only map), and [`run_cpu`] changes copies that later nodes read and
//! [`Run::updated_state`] returns, so it stays the reference the plans are compared with.
//!
//! Outputs are not cleared before a node runs: the [`crate::Op::cpu`] contract is that an op
//! overwrites every element of its outputs without reading them, so in plan order a node sees
//! whatever the buffer held last (the previous tenant, or the previous step's value). The
//! simulator enforces the contract: it hands every node poisoned outputs, so an element an op
//! leaves unwritten reaches its reader as poison ([`ExecError::Poisoned`]) and an op that reads
//! its outputs computes from NaN — either way the run differs from [`run_cpu`], whose outputs
//! start zeroed.
//!
//! Both plan executors are a [`Device`] that [`crate::device::drive`] hands the plan's steps
//! to, in either order: the same driver and the same per-node launches as any other device.
//!
//! Not here: threads per stream (the simulator runs one step at a time; CPU parallelism is inside
//! kernels), the CUDA executor.

pub use crate::device::{ExecError, ExecOrder};

use crate::device::{drive, Device, Launch, Operand, Program, Region};
use crate::graph::{Graph, ValueRef};
use crate::op::ExecCx;
use crate::plan::Plan;
use crate::shadow::{Checked, DebugChecks};
use crate::tensor::{DType, Tensor, TensorSpec};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Bits of the f32 poison: a quiet NaN whose payload (`0xDEAD`) no kernel produces from numbers.
pub const POISON_F32_BITS: u32 = 0x7FC0_DEAD;
/// The i32 poison (no label map or index holds it).
pub const POISON_I32: i32 = i32::MIN;

/// The values of one run: the inputs it read and the node outputs still available (all of them
/// after [`run_cpu`], the plan's `keep` values after [`run_plan`] and [`run_plan_in`]).
pub struct Run<'a> {
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    /// State tensors [`run_cpu`] updated in place (copies: it leaves the caller's map alone);
    /// empty after the plan executors, which update the caller's map itself.
    updated: BTreeMap<String, Tensor>,
    outputs: Outputs<'a>,
}

/// Where a [`Run`]'s node outputs are.
enum Outputs<'a> {
    /// Per node and port; `None` where not kept.
    Owned(Vec<Vec<Option<Tensor>>>),
    /// The kept values, in the workspace that ran the plan.
    Workspace(&'a Workspace),
}

impl Run<'_> {
    /// The tensor a source names; `None` for a node output the run did not keep.
    pub fn get(&self, s: &ValueRef) -> Option<&Tensor> {
        match (s, &self.outputs) {
            (ValueRef::Batch(f), _) => self.batch.get(f),
            (ValueRef::State(f), _) => self.updated.get(f).or_else(|| self.state.get(f)),
            (ValueRef::Node { node, port }, Outputs::Owned(o)) => {
                o.get(*node)?.get(*port)?.as_ref()
            }
            (ValueRef::Node { .. }, Outputs::Workspace(ws)) => ws.get(s),
        }
    }

    /// The state tensors [`run_cpu`] updated in place ([`crate::Op::IN_PLACE`]), by name, as
    /// they are after the run; `get` of a `state.` source sees them too.
    pub fn updated_state(&self) -> &BTreeMap<String, Tensor> {
        &self.updated
    }

    /// The f32 scalar a source names (a loss), if it is one.
    pub fn scalar(&self, s: &ValueRef) -> Option<f32> {
        match self.get(s)?.f32()? {
            [v] => Some(*v),
            _ => None,
        }
    }
}

/// Every batch field and state tensor the graph reads is given, with the planned spec.
fn check_inputs(
    graph: &Graph,
    batch: &BTreeMap<String, Tensor>,
    state: &BTreeMap<String, Tensor>,
) -> Result<(), ExecError> {
    for (what, declared, given) in [
        ("batch field", &graph.batch, batch),
        ("state tensor", &graph.state, state),
    ] {
        for (name, spec) in declared {
            match given.get(name) {
                None => {
                    return Err(ExecError::Input {
                        what,
                        name: name.clone(),
                        problem: "not provided".into(),
                    })
                }
                Some(t) if t.spec() != spec => {
                    return Err(ExecError::Input {
                        what,
                        name: name.clone(),
                        problem: format!("the graph was planned for {spec}, got {}", t.spec()),
                    })
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Runs every node of `graph` once on the CPU, keeping every output. `seed` and `iteration` key
/// the random streams.
pub fn run_cpu<'a>(
    graph: &Graph,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
) -> Result<Run<'a>, ExecError> {
    check_inputs(graph, batch, state)?;
    let mut outputs: Vec<Vec<Option<Tensor>>> = Vec::with_capacity(graph.nodes.len());
    // In-place updates go to copies, so a later node reads the updated value and the caller's
    // state is untouched.
    let mut updated: BTreeMap<String, Tensor> = BTreeMap::new();
    for node in &graph.nodes {
        let mut outs: Vec<Tensor> = node.outputs.iter().map(Tensor::zeros).collect();
        let in_place = node.op.in_place();
        let names = in_place_names(node, &in_place)?;
        let mut taken: Vec<Tensor> = Vec::with_capacity(names.len());
        for name in &names {
            match updated.remove(name).or_else(|| state.get(name).cloned()) {
                Some(t) => taken.push(t),
                None => return Err(missing_state(name)),
            }
        }
        let ins: Vec<Option<&Tensor>> = (node.inputs.iter().enumerate())
            .map(|(k, s)| match s.as_ref()? {
                _ if in_place.contains(&k) => None,
                ValueRef::Batch(f) => batch.get(f),
                ValueRef::State(f) => updated.get(f).or_else(|| state.get(f)),
                ValueRef::Node { node, port } => outputs.get(*node)?.get(*port)?.as_ref(),
            })
            .collect();
        let cx = ExecCx::for_node(seed, iteration, &node.name.value);
        let result = if in_place.is_empty() {
            node.op.cpu(&cx, &ins, &mut outs)
        } else {
            let mut refs: Vec<&mut Tensor> = taken.iter_mut().collect();
            node.op.cpu_in_place(&cx, &ins, &mut refs, &mut outs)
        };
        result.map_err(|source| ExecError::Node {
            node: node.name.value.clone(),
            op: node.op.name(),
            source,
        })?;
        updated.extend(names.into_iter().zip(taken));
        outputs.push(outs.into_iter().map(Some).collect());
    }
    Ok(Run {
        batch,
        state,
        updated,
        outputs: Outputs::Owned(outputs),
    })
}

/// The state names a node updates in place, in the order of its [`crate::Op::IN_PLACE`] ports
/// (`in_place`); the planner has checked that each is a `state.` input (FS0124).
fn in_place_names(
    node: &crate::graph::IrNode,
    in_place: &[usize],
) -> Result<Vec<String>, ExecError> {
    (in_place.iter())
        .map(|&k| match node.inputs.get(k).and_then(Option::as_ref) {
            Some(ValueRef::State(name)) => Ok(name.clone()),
            _ => Err(ExecError::Plan(format!(
                "node `{}` updates its input {k} in place, which is not a `state.` tensor",
                node.name.value
            ))),
        })
        .collect()
}

fn missing_state(name: &str) -> ExecError {
    ExecError::Input {
        what: "state tensor",
        name: name.to_owned(),
        problem: "not provided".into(),
    }
}

/// The state a plan runs against: read-only, or the caller's map that in-place nodes update.
enum StateMap<'a> {
    Shared(&'a BTreeMap<String, Tensor>),
    Mut(&'a mut BTreeMap<String, Tensor>),
}

impl StateMap<'_> {
    fn get(&self, name: &str) -> Option<&Tensor> {
        match self {
            StateMap::Shared(m) => m.get(name),
            StateMap::Mut(m) => m.get(name),
        }
    }
    fn map(&self) -> &BTreeMap<String, Tensor> {
        match self {
            StateMap::Shared(m) => m,
            StateMap::Mut(m) => m,
        }
    }
}

/// Runs `plan` (made for `graph`) once on the CPU in the given order and returns the plan's
/// `keep` values. `seed` and `iteration` key the random streams, as for [`run_cpu`]: results do
/// not depend on the plan or the order. Allocates every buffer afresh; a caller that runs the
/// same plan repeatedly uses [`run_plan_in`].
pub fn run_plan<'a>(
    graph: &Graph,
    plan: &Plan,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
    order: ExecOrder,
) -> Result<Run<'a>, ExecError> {
    let mut ws = Workspace::default();
    let states = StateMap::Shared(state);
    execute(
        &mut ws,
        graph,
        plan,
        batch,
        states,
        seed,
        iteration,
        order,
        DebugChecks::default(),
    )?;
    let mut outputs: Vec<Vec<Option<Tensor>>> = graph
        .nodes
        .iter()
        .map(|n| vec![None; n.outputs.len()])
        .collect();
    for &((node, port), b) in &ws.kept {
        if let Some(slot) = outputs.get_mut(node).and_then(|o| o.get_mut(port)) {
            *slot = ws.slots[b].current.take();
        }
    }
    Ok(Run {
        batch,
        state,
        updated: BTreeMap::new(),
        outputs: Outputs::Owned(outputs),
    })
}

/// [`run_plan`] in `ws`: the plan's buffers are the workspace's, allocated on the first run of a
/// plan with these buffer sizes and reused by every later one (a plan with other sizes resets
/// it). The returned run borrows the kept values from the workspace; they stay readable through
/// [`Workspace::get`] until the next run.
pub fn run_plan_in<'a>(
    ws: &'a mut Workspace,
    graph: &Graph,
    plan: &Plan,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
    order: ExecOrder,
) -> Result<Run<'a>, ExecError> {
    let states = StateMap::Shared(state);
    execute(
        ws,
        graph,
        plan,
        batch,
        states,
        seed,
        iteration,
        order,
        DebugChecks::default(),
    )?;
    Ok(Run {
        batch,
        state,
        updated: BTreeMap::new(),
        outputs: Outputs::Workspace(ws),
    })
}

/// [`run_plan_in`] for a graph with in-place updates ([`crate::Op::IN_PLACE`]: optimizer steps,
/// EMA): they change `state` itself, in the plan's order (the planner put every reader of the
/// old value before them and every reader of the new one after). On an error the state may be
/// partly updated; callers that must not lose state run a guard first (a step is all or
/// nothing by the graph's own construction). A graph without in-place nodes leaves `state` as
/// it was.
#[allow(clippy::too_many_arguments, reason = "run_plan_in's arguments")]
pub fn run_plan_in_place<'a>(
    ws: &'a mut Workspace,
    graph: &Graph,
    plan: &Plan,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a mut BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
    order: ExecOrder,
) -> Result<Run<'a>, ExecError> {
    let checks = DebugChecks::default();
    run_plan_in_place_checked(
        ws, graph, plan, batch, state, seed, iteration, order, checks,
    )
}

/// [`run_plan_in_place`] with debug `checks` around the CPU device ([`crate::shadow`]): what the
/// CUDA executor does with `--sync-each-op` / `--validate-cpu`, on the reference device, so the
/// switches' own logic is tested without a GPU (on the CPU they find nothing to report: the
/// shadow runs the same code).
#[allow(
    clippy::too_many_arguments,
    reason = "run_plan_in's arguments and the checks"
)]
pub fn run_plan_in_place_checked<'a>(
    ws: &'a mut Workspace,
    graph: &Graph,
    plan: &Plan,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a mut BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
    order: ExecOrder,
    checks: DebugChecks,
) -> Result<Run<'a>, ExecError> {
    execute(
        ws,
        graph,
        plan,
        batch,
        StateMap::Mut(&mut *state),
        seed,
        iteration,
        order,
        checks,
    )?;
    Ok(Run {
        batch,
        state,
        updated: BTreeMap::new(),
        outputs: Outputs::Workspace(ws),
    })
}

/// The memory of a plan's buffers, kept between runs of that plan: one allocation per buffer (of
/// the buffer's planned size, on first use), re-viewed in place with the spec of each value
/// written there; a buffer whose values have both dtypes keeps one allocation per dtype. After a
/// complete run it holds the plan's `keep` values ([`Workspace::get`]).
#[derive(Default)]
pub struct Workspace {
    /// Planned size of each buffer, in bytes: the layout the slots were made for.
    bytes: Vec<usize>,
    /// Per buffer.
    slots: Vec<Slot>,
    /// Kept node output (node, port) and its buffer, sorted: made from the plan at each run.
    kept: Vec<((usize, usize), usize)>,
    /// The last run finished, so the kept values are its results.
    complete: bool,
}

/// One plan buffer's storage.
#[derive(Default)]
struct Slot {
    /// The storage, viewed with the spec of the value last written there (`None`: not allocated
    /// yet).
    current: Option<Tensor>,
    /// Storage of the other dtype, when the buffer's values have both.
    spare: Option<Tensor>,
}

impl Workspace {
    /// A kept node output of the last complete run (`None` for any other source, and before a
    /// run finished).
    pub fn get(&self, s: &ValueRef) -> Option<&Tensor> {
        let ValueRef::Node { node, port } = s else {
            return None;
        };
        if !self.complete {
            return None;
        }
        let i = (self.kept)
            .binary_search_by_key(&(*node, *port), |&(k, _)| k)
            .ok()?;
        self.slots.get(self.kept[i].1)?.current.as_ref()
    }

    /// Elements allocated across all buffers (both dtypes): what the workspace holds between
    /// runs.
    pub fn allocated_elements(&self) -> usize {
        let len = |t: &Option<Tensor>| t.as_ref().map_or(0, Tensor::storage_len);
        self.slots
            .iter()
            .map(|s| len(&s.current) + len(&s.spare))
            .sum()
    }

    /// Lays the workspace out for `plan`: kept as is when the buffer sizes match the last plan's,
    /// emptied otherwise; the kept-value index follows the plan's `keep` and outputs.
    fn prepare(&mut self, plan: &Plan) {
        self.complete = false;
        let same = self.bytes.len() == plan.buffers.len()
            && (self.bytes.iter())
                .zip(&plan.buffers)
                .all(|(&a, b)| a == b.bytes);
        if !same {
            self.bytes = plan.buffers.iter().map(|b| b.bytes).collect();
            self.slots = plan.buffers.iter().map(|_| Slot::default()).collect();
        }
        self.kept.clear();
        self.kept.extend(plan.keep.iter().filter_map(|s| match s {
            ValueRef::Node { node, port } => Some(((*node, *port), plan.buffer_of(*node, *port)?)),
            _ => None,
        }));
        self.kept.sort_unstable();
        self.kept.dedup();
    }

    /// Buffer `b`'s storage viewed as `spec`, for a node to write: the current storage when the
    /// dtype matches, else the spare one, else a new allocation of the buffer's planned size
    /// (only on a buffer's first write of that dtype). The contents are whatever the storage
    /// held.
    fn take_for_write(&mut self, b: usize, spec: &TensorSpec) -> Tensor {
        let elements = self.bytes.get(b).map_or(0, |&bytes| bytes / 4);
        let Some(slot) = self.slots.get_mut(b) else {
            return Tensor::zeros(spec);
        };
        if let Some(mut t) = slot.current.take() {
            if t.reshape_in_place(spec) {
                return t;
            }
            let spare = slot.spare.replace(t);
            if let Some(mut s) = spare {
                if s.reshape_in_place(spec) {
                    return s;
                }
            }
        }
        Tensor::zeros_in(spec, elements)
    }
}

/// Runs `plan` in `ws`: see [`run_plan`] and [`run_plan_in`].
#[allow(
    clippy::too_many_arguments,
    reason = "run_plan_in's arguments and the checks"
)]
fn execute(
    ws: &mut Workspace,
    graph: &Graph,
    plan: &Plan,
    batch: &BTreeMap<String, Tensor>,
    state: StateMap<'_>,
    seed: u64,
    iteration: u64,
    order: ExecOrder,
    checks: DebugChecks,
) -> Result<(), ExecError> {
    check_inputs(graph, batch, state.map())?;
    check_plan(graph, plan)?;
    if let (StateMap::Shared(_), Some(node)) = (
        &state,
        (graph.nodes.iter()).find(|n| !n.op.in_place().is_empty()),
    ) {
        return Err(ExecError::Plan(format!(
            "node `{}` updates state in place: run the plan with `run_plan_in_place`",
            node.name.value
        )));
    }
    ws.prepare(plan);
    let poison = matches!(order, ExecOrder::Interleaved { .. });
    if poison {
        // The simulator starts from poisoned memory, whatever an earlier run left.
        for (slot, &bytes) in ws.slots.iter_mut().zip(&ws.bytes) {
            match &mut slot.current {
                Some(t) => fill_poison(t),
                None => slot.current = Some(poisoned(&TensorSpec::f32(&[bytes / 4]))),
            }
        }
    }
    let program = Program::new(graph, plan)?;
    let mut ex = Executor {
        graph,
        plan,
        batch,
        state,
        seed,
        iteration,
        poison,
        ws,
    };
    if checks.any() {
        let mut checked = Checked::new(&mut ex, graph, seed, iteration, checks);
        drive(&mut checked, &program, plan, order)?;
    } else {
        drive(&mut ex, &program, plan, order)?;
    }
    ex.ws.complete = true;
    Ok(())
}

/// The plan has one entry per node and a large enough buffer per output.
fn check_plan(graph: &Graph, plan: &Plan) -> Result<(), ExecError> {
    if plan.nodes.len() != graph.nodes.len() {
        return Err(ExecError::Plan(format!(
            "made for a graph of {} nodes, this one has {}",
            plan.nodes.len(),
            graph.nodes.len()
        )));
    }
    for (p, node) in plan.nodes.iter().zip(&graph.nodes) {
        if p.outputs.len() != node.outputs.len() {
            return Err(ExecError::Plan(format!(
                "node `{}` has {} outputs, the plan gives {} buffers",
                node.name.value,
                node.outputs.len(),
                p.outputs.len()
            )));
        }
        for (&b, spec) in p.outputs.iter().zip(&node.outputs) {
            match plan.buffers.get(b) {
                Some(buf) if buf.bytes >= 4 * spec.len() => {}
                _ => {
                    return Err(ExecError::Plan(format!(
                        "node `{}`: buffer b{b} missing or smaller than {spec}",
                        node.name.value
                    )))
                }
            }
        }
    }
    Ok(())
}

/// State of one run of a plan.
struct Executor<'g, 'a, 'w> {
    graph: &'g Graph,
    plan: &'g Plan,
    batch: &'a BTreeMap<String, Tensor>,
    state: StateMap<'a>,
    seed: u64,
    iteration: u64,
    poison: bool,
    /// The buffers.
    ws: &'w mut Workspace,
}

/// The CPU as a [`Device`]: one queue (the driver's order is the run's order), each plan buffer
/// its own storage in the workspace (the arena offsets are not used), events as bookkeeping of
/// the driver only. A free poisons the dead value in the simulator.
impl Device for Executor<'_, '_, '_> {
    fn launch(&mut self, launch: &Launch) -> Result<(), ExecError> {
        self.run(launch.node)
    }
    fn record(&mut self, _stream: usize, _event: usize) -> Result<(), ExecError> {
        Ok(())
    }
    fn wait(&mut self, _stream: usize, _event: usize) -> Result<(), ExecError> {
        Ok(())
    }
    fn read_back(&mut self, operand: &Operand, spec: &TensorSpec) -> Result<Tensor, ExecError> {
        let found = match operand {
            Operand::Absent => None,
            Operand::Batch(f) => self.batch.get(f).cloned(),
            Operand::State(f) | Operand::StateInPlace(f) => self.state.get(f).cloned(),
            Operand::Value { node, port, .. } => {
                Some(self.read(*node, *node, *port, Some(spec))?.into_owned())
            }
        };
        found.ok_or_else(|| ExecError::Plan(format!("nothing to read back for {operand:?}")))
    }
    fn free(&mut self, _stream: usize, region: Region) -> Result<(), ExecError> {
        if self.poison {
            let slot = self.ws.slots.get_mut(region.buffer);
            if let Some(t) = slot.and_then(|s| s.current.as_mut()) {
                fill_poison(t);
            }
        }
        Ok(())
    }
}

impl Executor<'_, '_, '_> {
    fn run(&mut self, i: usize) -> Result<(), ExecError> {
        let (graph, plan) = (self.graph, self.plan);
        let node = graph
            .nodes
            .get(i)
            .ok_or_else(|| ExecError::Plan(format!("no node {i}")))?;
        let buffers = &plan.nodes[i].outputs;
        // Outputs leave their slots while the node runs, so inputs can borrow the others. Their
        // contents are stale (plan order) or poison (the simulator): the op overwrites them.
        let mut outs: Vec<Tensor> = Vec::with_capacity(buffers.len());
        for (spec, &b) in node.outputs.iter().zip(buffers) {
            let mut t = self.ws.take_for_write(b, spec);
            if self.poison {
                fill_poison(&mut t);
            }
            outs.push(t);
        }
        let in_place = node.op.in_place();
        let result = if in_place.is_empty() {
            self.compute(i, &[], &mut [], &mut outs)
        } else {
            // The updated tensors leave the state map while the node runs, as outputs leave
            // their slots, so its other inputs can borrow the map.
            let names = in_place_names(node, &in_place)?;
            let StateMap::Mut(map) = &mut self.state else {
                return Err(ExecError::Plan(format!(
                    "node `{}` updates state in place on a read-only state",
                    node.name.value
                )));
            };
            let mut taken = Vec::with_capacity(names.len());
            for name in &names {
                match map.remove(name) {
                    Some(t) => taken.push(t),
                    None => {
                        // Put back what was taken before reporting.
                        map.extend(names.iter().cloned().zip(taken));
                        return Err(missing_state(name));
                    }
                }
            }
            let result = self.compute(i, &in_place, &mut taken, &mut outs);
            if let StateMap::Mut(map) = &mut self.state {
                map.extend(names.into_iter().zip(taken));
            }
            result
        };
        for (t, &b) in outs.into_iter().zip(buffers) {
            if let Some(slot) = self.ws.slots.get_mut(b) {
                slot.current = Some(t);
            }
        }
        result
    }

    /// Runs node `i`: `in_place` are its in-place ports and `taken` their tensors (both empty
    /// for an ordinary node).
    fn compute(
        &self,
        i: usize,
        in_place: &[usize],
        taken: &mut [Tensor],
        outs: &mut [Tensor],
    ) -> Result<(), ExecError> {
        let node = &self.graph.nodes[i];
        let mut ins: Vec<Option<Cow<'_, Tensor>>> = Vec::with_capacity(node.inputs.len());
        for (k, s) in node.inputs.iter().enumerate() {
            ins.push(match s {
                _ if in_place.contains(&k) => None,
                None => None,
                Some(ValueRef::Batch(f)) => self.batch.get(f).map(Cow::Borrowed),
                Some(ValueRef::State(f)) => self.state.get(f).map(Cow::Borrowed),
                Some(src @ ValueRef::Node { node: p, port }) => {
                    Some(self.read(i, *p, *port, self.graph.spec_of(src))?)
                }
            });
        }
        let refs: Vec<Option<&Tensor>> = ins.iter().map(Option::as_deref).collect();
        let cx = ExecCx::for_node(self.seed, self.iteration, &node.name.value);
        let result = if in_place.is_empty() {
            node.op.cpu(&cx, &refs, outs)
        } else {
            let mut state: Vec<&mut Tensor> = taken.iter_mut().collect();
            node.op.cpu_in_place(&cx, &refs, &mut state, outs)
        };
        result.map_err(|source| ExecError::Node {
            node: node.name.value.clone(),
            op: node.op.name(),
            source,
        })
    }

    /// What node `reader` sees in output `port` of node `p`: the buffer's current contents,
    /// viewed with the value's spec (reinterpreted when another value's view is there — the
    /// symptom of a race, only in the simulator), checked for poison in test mode.
    fn read(
        &self,
        reader: usize,
        p: usize,
        port: usize,
        spec: Option<&TensorSpec>,
    ) -> Result<Cow<'_, Tensor>, ExecError> {
        let name = |n: usize| self.graph.nodes[n].name.value.clone();
        let (Some(b), Some(spec)) = (self.plan.buffer_of(p, port), spec) else {
            return Err(ExecError::Plan(format!(
                "`{}` reads output {port} of `{}`, which the plan gives no buffer",
                name(reader),
                name(p)
            )));
        };
        let t = match self.ws.slots.get(b).and_then(|s| s.current.as_ref()) {
            Some(t) if t.spec() == spec => Cow::Borrowed(t),
            Some(t) => Cow::Owned(reinterpret(t, spec)),
            // Only a node's own output buffers are out of their slots while it runs.
            None if self.poison => Cow::Owned(poisoned(spec)),
            None => {
                return Err(ExecError::Plan(format!(
                    "`{}` reads output {port} of `{}` before anything was written to b{b}",
                    name(reader),
                    name(p)
                )))
            }
        };
        if self.poison && is_poisoned(&t) {
            return Err(ExecError::Poisoned {
                node: name(reader),
                producer: name(p),
                port,
                buffer: b,
            });
        }
        Ok(t)
    }
}

fn fill_poison(t: &mut Tensor) {
    if let Some(v) = t.f32_mut() {
        v.fill(f32::from_bits(POISON_F32_BITS));
    } else if let Some(v) = t.i32_mut() {
        v.fill(POISON_I32);
    }
}

fn poisoned(spec: &TensorSpec) -> Tensor {
    let mut t = Tensor::zeros(spec);
    fill_poison(&mut t);
    t
}

fn is_poisoned(t: &Tensor) -> bool {
    match (t.f32(), t.i32()) {
        (Some(v), _) => v.iter().any(|x| x.to_bits() == POISON_F32_BITS),
        (_, Some(v)) => v.contains(&POISON_I32),
        _ => false,
    }
}

/// The bits of `t` seen as a `spec` value: word for word, poison staying poison across dtypes,
/// words past the end of `t` poison (memory this view does not cover is garbage).
fn reinterpret(t: &Tensor, spec: &TensorSpec) -> Tensor {
    // Per word: `None` = poison.
    let words: Vec<Option<u32>> = match (t.f32(), t.i32()) {
        (Some(v), _) => v
            .iter()
            .map(|x| (x.to_bits() != POISON_F32_BITS).then_some(x.to_bits()))
            .collect(),
        (_, Some(v)) => v
            .iter()
            .map(|&x| (x != POISON_I32).then_some(x as u32))
            .collect(),
        _ => Vec::new(),
    };
    let mut out = poisoned(spec);
    match spec.dtype {
        DType::F32 => {
            if let Some(v) = out.f32_mut() {
                for (o, w) in v.iter_mut().zip(&words) {
                    if let Some(w) = w {
                        *o = f32::from_bits(*w);
                    }
                }
            }
        }
        DType::I32 => {
            if let Some(v) = out.i32_mut() {
                for (o, w) in v.iter_mut().zip(&words) {
                    if let Some(w) = w {
                        *o = *w as i32;
                    }
                }
            }
        }
    }
    out
}
