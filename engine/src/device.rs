//! device: the seam between a [`Plan`] and what runs it. A plan is a flat list of steps (run a
//! node on a stream, record an event, wait for one, a buffer's value is dead); [`drive`] walks
//! that list — in plan order, or in a random interleaving of the per-stream queues — and hands
//! each step to a [`Device`]. Everything a device needs to launch a node without deciding
//! anything is computed here, once per plan, from the plan alone:
//!
//! * [`ArenaLayout`]: one allocation for all of the plan's buffers, each at a fixed, aligned
//!   byte offset (a device allocates it once; a value lives at its buffer's offset).
//! * [`Launch`]: per node, where each input comes from (a batch field, a state tensor — read, or
//!   updated in place — or an arena region) and which arena region each output is written to.
//!
//! Three devices implement the trait: the CPU executor (`exec.rs`, the reference; it keeps its
//! own per-buffer storage and ignores the offsets), the [`RecordingDevice`] here, which launches
//! nothing and keeps the calls it received, and the CUDA executor when it comes (streams, events
//! and kernel launches in exactly the order received). [`check_calls`] verifies a recorded call
//! sequence as a GPU would see it: streams run concurrently and only stream order and
//! record → wait pairs order work, so every value must be written before each of its reads, no
//! write may land in a region another live value still needs, and in-place state updates keep
//! graph order. That is the CUDA executor's bookkeeping, tested on machines without a GPU.
//!
//! Not here: device tensors and uploads, per-op device kernels, CUDA-graph capture, the debug
//! switches that wrap a device (`shadow.rs`).

use crate::graph::{Graph, ValueRef};
use crate::op::OpError;
use crate::plan::{Plan, Step};
use crate::tensor::{Tensor, TensorSpec};
use flowseg_kernels::philox::Philox;
use std::collections::VecDeque;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A batch field or state tensor the graph reads was not provided, or has another spec.
    #[error("{what} `{name}`: {problem}")]
    Input {
        /// `batch field` or `state tensor`.
        what: &'static str,
        /// Its name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The device failed (no driver, an allocation, an event), or cannot run the graph.
    #[error("device: {0}")]
    Device(String),
    /// A node's op failed.
    #[error("node `{node}` ({op}): {source}")]
    Node {
        /// Node name.
        node: String,
        /// Op name.
        op: &'static str,
        /// The failure.
        source: OpError,
    },
    /// The plan does not fit the graph, or breaks its own order (waits before records, a read
    /// before any write, a deadlock): a planner bug or a plan edited by hand.
    #[error("plan: {0}")]
    Plan(String),
    /// `--validate-cpu`: a node's output (or a state tensor it updates in place) on the device
    /// is not what its CPU reference computes from the same inputs ([`crate::shadow`]).
    #[error(
        "node `{node}` ({op}): the device's {what} differs from the CPU reference on the same \
         inputs: {detail}"
    )]
    Diverged {
        /// The node.
        node: String,
        /// Its op.
        op: &'static str,
        /// `output <port> (<spec>)` or `state <name>`.
        what: String,
        /// Where and by how much.
        detail: String,
    },
    /// Interleaved test mode: a node read a poisoned (freed or never written) buffer, the sign of
    /// a missing event, an unsafe buffer reuse, or a producer that left part of its output
    /// unwritten.
    #[error(
        "node `{node}` read poison in output {port} of `{producer}` (buffer b{buffer}): a missing \
         event, an unsafe buffer reuse, or an op that left part of its output unwritten"
    )]
    Poisoned {
        /// The reader.
        node: String,
        /// The producer of the value it meant to read.
        producer: String,
        /// The producer's output index.
        port: usize,
        /// The buffer.
        buffer: usize,
    },
}

/// How [`crate::exec::run_plan`] and [`drive`] order the plan's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOrder {
    /// The plan's own global order; no poisoning. What training uses.
    Sequential,
    /// Test mode: a random order consistent with stream order and waits, decided by `seed`, over
    /// poisoned buffers (see the module header).
    Interleaved {
        /// Picks the interleaving.
        seed: u64,
    },
}

/// Alignment of every buffer's offset in the arena, in bytes: what `cudaMalloc` guarantees for
/// an allocation, so a value at an aligned offset is as aligned as a buffer of its own.
pub const ARENA_ALIGN: usize = 256;

/// Where each of a plan's buffers lives in one contiguous arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaLayout {
    /// Per buffer id, its byte offset (a multiple of [`ARENA_ALIGN`]).
    pub offsets: Vec<usize>,
    /// Total bytes of the arena.
    pub bytes: usize,
}

impl ArenaLayout {
    /// The buffers one after the other in id order, each aligned: buffers are already the
    /// plan's reuse unit (two values share one only when the first is dead before the second is
    /// written), so distinct buffers never share bytes.
    pub fn of(plan: &Plan) -> ArenaLayout {
        let mut offsets = Vec::with_capacity(plan.buffers.len());
        let mut end = 0usize;
        for b in &plan.buffers {
            offsets.push(end);
            end += b.bytes.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
        }
        ArenaLayout {
            offsets,
            bytes: end,
        }
    }
}

/// A byte range of the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// The plan's buffer.
    pub buffer: usize,
    /// First byte.
    pub offset: usize,
    /// Length in bytes: the value's own size, not the buffer's.
    pub bytes: usize,
}

impl Region {
    /// Whether two regions share a byte.
    pub fn overlaps(&self, other: &Region) -> bool {
        self.offset < other.offset + other.bytes && other.offset < self.offset + self.bytes
    }
}

/// Where one input of a launch comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// An optional port left unconnected.
    Absent,
    /// A field of the step's batch (uploaded before the step).
    Batch(String),
    /// A persistent state tensor, read.
    State(String),
    /// A persistent state tensor the node updates in place ([`crate::Op::IN_PLACE`]).
    StateInPlace(String),
    /// Output `port` of node `node`, in the arena.
    Value {
        /// Producer.
        node: usize,
        /// Its output.
        port: usize,
        /// Where it is.
        region: Region,
    },
}

/// Everything a device needs to launch one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The node (index into [`Graph::nodes`]).
    pub node: usize,
    /// Its stream.
    pub stream: usize,
    /// One per input port, in the op's order.
    pub inputs: Vec<Operand>,
    /// One per output, in the op's order.
    pub outputs: Vec<Region>,
}

/// The nodes of `graph` whose op has no CUDA twin ([`crate::Op::has_cuda`]), as (node, op), in
/// graph order: what stands between a graph and the CUDA executor.
pub fn missing_cuda_twins(graph: &Graph) -> Vec<(String, &'static str)> {
    (graph.nodes.iter())
        .filter(|n| !n.op.has_cuda())
        .map(|n| (n.name.value.clone(), n.op.name()))
        .collect()
}

/// A plan made launchable: its arena and one [`Launch`] per node. Built once per plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The arena.
    pub arena: ArenaLayout,
    /// Per node, in graph order.
    pub launches: Vec<Launch>,
}

impl Program {
    /// The launches of `plan`, made for `graph`; an error when the plan does not fit the graph
    /// (a node without its buffers, an input produced by no node).
    pub fn new(graph: &Graph, plan: &Plan) -> Result<Program, ExecError> {
        let arena = ArenaLayout::of(plan);
        let bad = |m: String| ExecError::Plan(m);
        if plan.nodes.len() != graph.nodes.len() {
            return Err(bad(format!(
                "made for a graph of {} nodes, this one has {}",
                plan.nodes.len(),
                graph.nodes.len()
            )));
        }
        let region = |node: usize, port: usize| -> Result<Region, ExecError> {
            let spec = graph.nodes.get(node).and_then(|n| n.outputs.get(port));
            let buffer = plan.buffer_of(node, port);
            match (spec, buffer) {
                (Some(spec), Some(b)) if b < arena.offsets.len() => Ok(Region {
                    buffer: b,
                    offset: arena.offsets[b],
                    bytes: 4 * spec.len(),
                }),
                _ => Err(bad(format!(
                    "output {port} of node {node} has no buffer in the plan"
                ))),
            }
        };
        let mut launches = Vec::with_capacity(graph.nodes.len());
        for (i, (node, planned)) in graph.nodes.iter().zip(&plan.nodes).enumerate() {
            let in_place = node.op.in_place();
            let inputs = (node.inputs.iter().enumerate())
                .map(|(k, s)| {
                    Ok(match s {
                        None => Operand::Absent,
                        Some(ValueRef::Batch(f)) => Operand::Batch(f.clone()),
                        Some(ValueRef::State(f)) if in_place.contains(&k) => {
                            Operand::StateInPlace(f.clone())
                        }
                        Some(ValueRef::State(f)) => Operand::State(f.clone()),
                        Some(ValueRef::Node { node, port }) => Operand::Value {
                            node: *node,
                            port: *port,
                            region: region(*node, *port)?,
                        },
                    })
                })
                .collect::<Result<Vec<_>, ExecError>>()?;
            let outputs = (0..node.outputs.len())
                .map(|port| region(i, port))
                .collect::<Result<Vec<_>, ExecError>>()?;
            launches.push(Launch {
                node: i,
                stream: planned.stream,
                inputs,
                outputs,
            });
        }
        Ok(Program { arena, launches })
    }
}

/// What runs a plan's steps. The driver ([`drive`]) decides the order; a device does what each
/// step says, on the step's stream, and never reorders within a stream.
pub trait Device {
    /// Run a node on `launch.stream`.
    fn launch(&mut self, launch: &Launch) -> Result<(), ExecError>;
    /// Mark `event` reached on `stream`, after everything queued there so far.
    fn record(&mut self, stream: usize, event: usize) -> Result<(), ExecError>;
    /// Make later work on `stream` wait until `event` is reached.
    fn wait(&mut self, stream: usize, event: usize) -> Result<(), ExecError>;
    /// The value in `region` is dead from this point of `stream` on (the simulator poisons it;
    /// a GPU does nothing).
    fn free(&mut self, stream: usize, region: Region) -> Result<(), ExecError>;
    /// A host copy of `operand` as it is on the device now, after everything queued before this
    /// call (`spec` is the value's): what `--validate-cpu` compares ([`crate::shadow`]). An
    /// output is read as the `Operand::Value` of its own node and port. A device that cannot
    /// read its values back says so, which is the default.
    fn read_back(&mut self, operand: &Operand, spec: &TensorSpec) -> Result<Tensor, ExecError> {
        let _ = (operand, spec);
        Err(ExecError::Device(
            "this device cannot read its values back".into(),
        ))
    }
    /// Blocks until everything queued on every stream has finished and reports an asynchronous
    /// failure of that work (`--sync-each-op`). Nothing to wait for by default (the CPU runs
    /// each launch before returning).
    fn synchronize(&mut self) -> Result<(), ExecError> {
        Ok(())
    }
}

/// Hands `plan`'s steps to `device` in `order`: the plan's own order, or (the interleaving
/// simulator) the per-stream queues in a random order constrained only by stream order and the
/// plan's waits. Each interleaving mixes two policies, drawn from the seed: how often to switch
/// streams (every step, or rarely — so one stream can run far ahead, the case that exposes a
/// missing wait) and which ready stream to switch to. A wait for an event not yet recorded is
/// an error in plan order and a deadlock when no stream can advance.
pub fn drive<D: Device + ?Sized>(
    device: &mut D,
    program: &Program,
    plan: &Plan,
    order: ExecOrder,
) -> Result<(), ExecError> {
    let mut recorded = vec![false; plan.events.len()];
    match order {
        ExecOrder::Sequential => {
            for step in &plan.steps {
                dispatch(device, program, plan, &mut recorded, *step)?;
            }
            Ok(())
        }
        ExecOrder::Interleaved { seed } => {
            let mut queues: Vec<VecDeque<Step>> = vec![VecDeque::new(); plan.streams];
            for s in &plan.steps {
                match queues.get_mut(s.stream()) {
                    Some(q) => q.push_back(*s),
                    None => return Err(ExecError::Plan(format!("step {s:?} names no stream"))),
                }
            }
            let rng = Philox::new(seed, 0x5157_ee7e);
            let mut draw = 0u64;
            let mut next = || {
                draw += 1;
                rng.u32_at(draw)
            };
            // Switch probability out of 256: always, often, rarely.
            let switch = [256, 64, 8][(next() % 3) as usize];
            let mut current = 0usize;
            loop {
                let ready: Vec<usize> = (0..queues.len())
                    .filter(|&s| match queues[s].front() {
                        None => false,
                        Some(Step::Wait { event, .. }) => {
                            recorded.get(*event).copied().unwrap_or(false)
                        }
                        Some(_) => true,
                    })
                    .collect();
                if ready.is_empty() {
                    if queues.iter().all(VecDeque::is_empty) {
                        return Ok(());
                    }
                    return Err(ExecError::Plan(
                        "deadlock: every stream waits for an event nobody records".into(),
                    ));
                }
                if !ready.contains(&current) || next() % 256 < switch {
                    current = ready[next() as usize % ready.len()];
                }
                if let Some(step) = queues[current].pop_front() {
                    dispatch(device, program, plan, &mut recorded, step)?;
                }
            }
        }
    }
}

fn dispatch<D: Device + ?Sized>(
    device: &mut D,
    program: &Program,
    plan: &Plan,
    recorded: &mut [bool],
    step: Step,
) -> Result<(), ExecError> {
    match step {
        Step::Run { node, .. } => match program.launches.get(node) {
            Some(l) => device.launch(l),
            None => Err(ExecError::Plan(format!("no node {node}"))),
        },
        Step::Record { stream, event } => match recorded.get_mut(event) {
            Some(r) => {
                *r = true;
                device.record(stream, event)
            }
            None => Err(ExecError::Plan(format!("record of unknown event e{event}"))),
        },
        Step::Wait { stream, event } => match recorded.get(event) {
            Some(true) => device.wait(stream, event),
            _ => Err(ExecError::Plan(format!(
                "wait for event e{event} before it is recorded"
            ))),
        },
        Step::Free { stream, buffer } => {
            match (plan.buffers.get(buffer), program.arena.offsets.get(buffer)) {
                (Some(b), Some(&offset)) => device.free(
                    stream,
                    Region {
                        buffer,
                        offset,
                        bytes: b.bytes,
                    },
                ),
                _ => Err(ExecError::Plan(format!("free of unknown buffer b{buffer}"))),
            }
        }
    }
}

/// One call a [`RecordingDevice`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Device::launch`].
    Launch(Launch),
    /// [`Device::record`].
    Record {
        /// Stream.
        stream: usize,
        /// Event.
        event: usize,
    },
    /// [`Device::wait`].
    Wait {
        /// Stream.
        stream: usize,
        /// Event.
        event: usize,
    },
    /// [`Device::free`].
    Free {
        /// Stream.
        stream: usize,
        /// The dead value's buffer.
        region: Region,
    },
}

/// A device that launches nothing and keeps every call, in the order received: the CUDA
/// executor's bookkeeping without a GPU.
#[derive(Debug, Default, Clone)]
pub struct RecordingDevice {
    /// The calls.
    pub calls: Vec<Call>,
}

impl Device for RecordingDevice {
    fn launch(&mut self, launch: &Launch) -> Result<(), ExecError> {
        self.calls.push(Call::Launch(launch.clone()));
        Ok(())
    }
    fn record(&mut self, stream: usize, event: usize) -> Result<(), ExecError> {
        self.calls.push(Call::Record { stream, event });
        Ok(())
    }
    fn wait(&mut self, stream: usize, event: usize) -> Result<(), ExecError> {
        self.calls.push(Call::Wait { stream, event });
        Ok(())
    }
    fn free(&mut self, stream: usize, region: Region) -> Result<(), ExecError> {
        self.calls.push(Call::Free { stream, region });
        Ok(())
    }
}

/// A launch as placed on the device's streams: its stream, its position there (1-based) and the
/// vector clock of everything it is ordered after.
struct Placed<'a> {
    launch: &'a Launch,
    seq: usize,
    clock: Vec<usize>,
}

impl Placed<'_> {
    /// Whether `self` is ordered before `other` on a device where streams run concurrently.
    fn before(&self, other: &Placed<'_>) -> bool {
        other.clock.get(self.launch.stream).copied().unwrap_or(0) >= self.seq
    }
}

/// Checks a call sequence for `graph` as a device with `streams` concurrent streams would run it:
/// within a stream in call order, across streams only through record → wait. Every node is
/// launched once; each arena input is written by its producer before the read, and no other
/// write to bytes it occupies can land between the two; an arena value read after the run
/// (the plan's `keep`) is never overwritten; every launch fits the arena and writes no region
/// another output of its own overlaps; and state updated in place is ordered with every other
/// access of that state as the graph orders them. Returns the first violation, in words.
pub fn check_calls(
    graph: &Graph,
    plan: &Plan,
    arena: &ArenaLayout,
    calls: &[Call],
) -> Result<(), String> {
    let streams = plan.streams.max(1);
    let mut clocks = vec![vec![0usize; streams]; streams];
    let mut events: Vec<Option<Vec<usize>>> = vec![None; plan.events.len()];
    let mut placed: Vec<Option<Placed<'_>>> = (0..graph.nodes.len()).map(|_| None).collect();
    let name = |n: usize| graph.nodes.get(n).map_or("?", |n| n.name.value.as_str());
    let stream_ok = |s: usize| {
        if s < streams {
            Ok(())
        } else {
            Err(format!("a call names stream {s} of {streams}"))
        }
    };
    for call in calls {
        match call {
            Call::Launch(l) => {
                stream_ok(l.stream)?;
                let slot = placed
                    .get_mut(l.node)
                    .ok_or_else(|| format!("launch of unknown node {}", l.node))?;
                if slot.is_some() {
                    return Err(format!("`{}` launched twice", name(l.node)));
                }
                clocks[l.stream][l.stream] += 1;
                *slot = Some(Placed {
                    launch: l,
                    seq: clocks[l.stream][l.stream],
                    clock: clocks[l.stream].clone(),
                });
            }
            Call::Record { stream, event } => {
                stream_ok(*stream)?;
                let e = events
                    .get_mut(*event)
                    .ok_or_else(|| format!("record of unknown event e{event}"))?;
                *e = Some(clocks[*stream].clone());
            }
            Call::Wait { stream, event } => {
                stream_ok(*stream)?;
                let Some(Some(at)) = events.get(*event) else {
                    return Err(format!("wait on e{event} before it is recorded"));
                };
                let at = at.clone();
                for (c, a) in clocks[*stream].iter_mut().zip(at) {
                    *c = (*c).max(a);
                }
            }
            Call::Free { stream, .. } => stream_ok(*stream)?,
        }
    }
    let mut all = Vec::with_capacity(placed.len());
    for (i, p) in placed.iter().enumerate() {
        match p {
            Some(p) => all.push(p),
            None => return Err(format!("`{}` was never launched", name(i))),
        }
    }
    // Every arena write, for the overlap checks.
    let writes: Vec<(&Placed<'_>, usize, &Region)> = (all.iter())
        .flat_map(|p| (p.launch.outputs.iter().enumerate()).map(move |(k, r)| (*p, k, r)))
        .collect();
    for &(p, k, r) in &writes {
        if r.offset % ARENA_ALIGN != 0 || r.offset + r.bytes > arena.bytes {
            return Err(format!(
                "`{}` output {k} at {}+{} is not an aligned region of the {}-byte arena",
                name(p.launch.node),
                r.offset,
                r.bytes,
                arena.bytes
            ));
        }
        for (j, o) in p.launch.outputs.iter().enumerate() {
            if j != k && o.overlaps(r) {
                return Err(format!(
                    "`{}` writes outputs {k} and {j} to overlapping bytes",
                    name(p.launch.node)
                ));
            }
        }
    }
    // Reads of arena values: written first, and nothing else lands there in between.
    for reader in &all {
        for op in &reader.launch.inputs {
            let Operand::Value { node, port, region } = op else {
                continue;
            };
            let Some(Some(producer)) = placed.get(*node) else {
                return Err(format!(
                    "`{}` reads a node that does not exist",
                    name(reader.launch.node)
                ));
            };
            if producer.launch.outputs.get(*port) != Some(region) {
                return Err(format!(
                    "`{}` reads output {port} of `{}` where it was not written",
                    name(reader.launch.node),
                    name(*node)
                ));
            }
            if !producer.before(reader) {
                return Err(format!(
                    "`{}` may read output {port} of `{}` before it is written: no event orders them",
                    name(reader.launch.node),
                    name(*node)
                ));
            }
            for &(w, k, r) in &writes {
                if (w.launch.node, k) == (*node, *port) || !r.overlaps(region) {
                    continue;
                }
                if !(w.before(producer) || reader.before(w)) {
                    return Err(format!(
                        "`{}` may overwrite output {port} of `{}` (b{}) before `{}` reads it",
                        name(w.launch.node),
                        name(*node),
                        region.buffer,
                        name(reader.launch.node)
                    ));
                }
            }
        }
    }
    // Kept values survive the run.
    for kept in &plan.keep {
        let ValueRef::Node { node, port } = kept else {
            continue;
        };
        let Some(Some(producer)) = placed.get(*node) else {
            continue;
        };
        let Some(region) = producer.launch.outputs.get(*port) else {
            continue;
        };
        for &(w, k, r) in &writes {
            if (w.launch.node, k) != (*node, *port) && r.overlaps(region) && !w.before(producer) {
                return Err(format!(
                    "`{}` may overwrite the kept output {port} of `{}`",
                    name(w.launch.node),
                    name(*node)
                ));
            }
        }
    }
    // `after:` edges (declared state access) hold as written.
    for p in &all {
        for &a in &graph.nodes[p.launch.node].after {
            if let Some(Some(first)) = placed.get(a) {
                if !first.before(p) {
                    return Err(format!(
                        "`{}` runs `after:` `{}`, and no event orders them",
                        name(p.launch.node),
                        name(a)
                    ));
                }
            }
        }
    }
    // In-place state updates keep graph order against every other access of that state.
    for writer in &all {
        for op in &writer.launch.inputs {
            let Operand::StateInPlace(s) = op else {
                continue;
            };
            for other in &all {
                let touches = (other.launch.node != writer.launch.node)
                    && other.launch.inputs.iter().any(
                        |o| matches!(o, Operand::State(t) | Operand::StateInPlace(t) if t == s),
                    );
                if !touches {
                    continue;
                }
                let ordered = if other.launch.node < writer.launch.node {
                    other.before(writer)
                } else {
                    writer.before(other)
                };
                if !ordered {
                    return Err(format!(
                        "`{}` and `{}` both touch `state.{s}`, which `{}` updates in place, and no event orders them",
                        name(other.launch.node.min(writer.launch.node)),
                        name(other.launch.node.max(writer.launch.node)),
                        name(writer.launch.node)
                    ));
                }
            }
        }
    }
    Ok(())
}
