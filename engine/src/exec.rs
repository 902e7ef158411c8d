//! exec: runs a validated graph on the CPU. Two executors, same contract (same graph in, same
//! numbers out):
//!
//! * [`run_cpu`] — the reference: nodes in the graph's topological order, every output kept until
//!   the run ends. Tests and tools that inspect intermediate values use it.
//! * [`run_plan`] — runs a [`Plan`]: outputs live in the plan's buffers (a reused buffer really is
//!   shared by its tenants) and only the plan's `keep` values survive the run. In
//!   [`ExecOrder::Sequential`] the steps run in plan order — what the trainer does, one op at a
//!   time. [`ExecOrder::Interleaved`] is the stream-interleaving simulator, a test mode: the
//!   per-stream queues run in a random order constrained only by stream order and the plan's
//!   waits, every buffer starts poisoned (NaN with payload `0xDEAD` for f32, `i32::MIN` for i32)
//!   and is poisoned again at its `Free` step, and a node that reads poison fails with
//!   [`ExecError::Poisoned`]. A missing event or an unsafe reuse then shows as that error or as
//!   different numbers; a correct plan gives bit-identical results under every interleaving.
//!
//! Outputs are zeroed before a node runs (kernels may accumulate), on every path; that is the
//! producer's initialisation, so it does not hide a consumer that runs too early.
//!
//! Not here: threads per stream (the simulator runs one step at a time; CPU parallelism is inside
//! kernels), the CUDA executor.

use crate::ir::{Graph, Source};
use crate::op::{ExecCx, OpError};
use crate::plan::{Plan, Step};
use crate::tensor::{DType, Tensor, TensorSpec};
use flowseg_kernels::philox::Philox;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Bits of the f32 poison: a quiet NaN whose payload (`0xDEAD`) no kernel produces from numbers.
pub const POISON_F32_BITS: u32 = 0x7FC0_DEAD;
/// The i32 poison (no label map or index holds it).
pub const POISON_I32: i32 = i32::MIN;

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
    /// Interleaved test mode: a node read a poisoned (freed or never written) buffer, the sign of
    /// a missing event or an unsafe buffer reuse.
    #[error(
        "node `{node}` read poison in output {port} of `{producer}` (buffer b{buffer}): a missing \
         event or an unsafe buffer reuse"
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

/// How [`run_plan`] orders the plan's steps.
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

/// The values of one run: the inputs it read and the node outputs still available (all of them
/// after [`run_cpu`], the plan's `keep` values after [`run_plan`]).
pub struct Run<'a> {
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    outputs: Vec<Vec<Option<Tensor>>>,
}

impl Run<'_> {
    /// The tensor a source names; `None` for a node output the run did not keep.
    pub fn get(&self, s: &Source) -> Option<&Tensor> {
        match s {
            Source::Batch(f) => self.batch.get(f),
            Source::State(f) => self.state.get(f),
            Source::Node { node, port } => self.outputs.get(*node)?.get(*port)?.as_ref(),
        }
    }

    /// The f32 scalar a source names (a loss), if it is one.
    pub fn scalar(&self, s: &Source) -> Option<f32> {
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
    let mut run = Run {
        batch,
        state,
        outputs: Vec::with_capacity(graph.nodes.len()),
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut outs: Vec<Tensor> = node.outputs.iter().map(Tensor::zeros).collect();
        let ins: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .map(|s| s.as_ref().and_then(|s| run.get(s)))
            .collect();
        let cx = ExecCx {
            seed,
            iteration,
            node: u32::try_from(i).unwrap_or(u32::MAX),
        };
        node.op
            .cpu(&cx, &ins, &mut outs)
            .map_err(|source| ExecError::Node {
                node: node.name.value.clone(),
                op: node.op.name(),
                source,
            })?;
        run.outputs.push(outs.into_iter().map(Some).collect());
    }
    Ok(run)
}

/// Runs `plan` (made for `graph`) once on the CPU in the given order and returns the plan's
/// `keep` values. `seed` and `iteration` key the random streams, as for [`run_cpu`]: results do
/// not depend on the plan or the order.
pub fn run_plan<'a>(
    graph: &Graph,
    plan: &Plan,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
    order: ExecOrder,
) -> Result<Run<'a>, ExecError> {
    check_inputs(graph, batch, state)?;
    check_plan(graph, plan)?;
    let poison = matches!(order, ExecOrder::Interleaved { .. });
    let mut ex = Executor {
        graph,
        plan,
        batch,
        state,
        seed,
        iteration,
        poison,
        // Sequential runs allocate on first write; the simulator starts from poisoned memory.
        slots: plan
            .buffers
            .iter()
            .map(|b| poison.then(|| poisoned(&TensorSpec::f32(&[b.bytes / 4]))))
            .collect(),
        recorded: vec![false; plan.events.len()],
    };
    match order {
        ExecOrder::Sequential => {
            for step in &plan.steps {
                ex.step(*step)?;
            }
        }
        ExecOrder::Interleaved { seed } => ex.interleaved(seed)?,
    }
    let kept: BTreeSet<(usize, usize)> = plan
        .keep
        .iter()
        .filter_map(|s| match s {
            Source::Node { node, port } => Some((*node, *port)),
            _ => None,
        })
        .collect();
    let mut outputs: Vec<Vec<Option<Tensor>>> = graph
        .nodes
        .iter()
        .map(|n| vec![None; n.outputs.len()])
        .collect();
    for (node, port) in kept {
        if let (Some(b), Some(slot)) = (
            plan.buffer_of(node, port),
            outputs.get_mut(node).and_then(|o| o.get_mut(port)),
        ) {
            *slot = ex.slots[b].take();
        }
    }
    Ok(Run {
        batch,
        state,
        outputs,
    })
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

/// State of one [`run_plan`].
struct Executor<'g, 'a> {
    graph: &'g Graph,
    plan: &'g Plan,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
    poison: bool,
    /// Per buffer, its contents viewed with the spec of the value last written there (`None`:
    /// not allocated yet, sequential mode only).
    slots: Vec<Option<Tensor>>,
    /// Per event, whether it has been recorded.
    recorded: Vec<bool>,
}

impl Executor<'_, '_> {
    /// Runs the per-stream queues in a random order: a stream may advance when its next step is
    /// not a wait on an unrecorded event. Each interleaving mixes two policies, drawn from the
    /// seed: how often to switch streams (every step, or rarely — so one stream can run far
    /// ahead, the case that exposes a missing wait) and which ready stream to switch to.
    fn interleaved(&mut self, seed: u64) -> Result<(), ExecError> {
        let mut queues: Vec<VecDeque<Step>> = vec![VecDeque::new(); self.plan.streams];
        for s in &self.plan.steps {
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
                        self.recorded.get(*event).copied().unwrap_or(false)
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
                self.step(step)?;
            }
        }
    }

    fn step(&mut self, step: Step) -> Result<(), ExecError> {
        match step {
            Step::Run { node, .. } => self.run(node),
            Step::Record { event, .. } => match self.recorded.get_mut(event) {
                Some(r) => {
                    *r = true;
                    Ok(())
                }
                None => Err(ExecError::Plan(format!("record of unknown event e{event}"))),
            },
            Step::Wait { event, .. } => match self.recorded.get(event) {
                Some(true) => Ok(()),
                _ => Err(ExecError::Plan(format!(
                    "wait for event e{event} before it is recorded"
                ))),
            },
            Step::Free { buffer, .. } => {
                if self.poison {
                    if let Some(t) = self.slots.get_mut(buffer).and_then(Option::as_mut) {
                        fill_poison(t);
                    }
                }
                Ok(())
            }
        }
    }

    fn run(&mut self, i: usize) -> Result<(), ExecError> {
        let (graph, plan) = (self.graph, self.plan);
        let node = graph
            .nodes
            .get(i)
            .ok_or_else(|| ExecError::Plan(format!("no node {i}")))?;
        let buffers = &plan.nodes[i].outputs;
        // Outputs leave their slots while the node runs, so inputs can borrow the others.
        let mut outs: Vec<Tensor> = node
            .outputs
            .iter()
            .zip(buffers)
            .map(|(spec, &b)| match self.slots[b].take() {
                Some(mut t) if t.spec() == spec => {
                    zero(&mut t);
                    t
                }
                _ => Tensor::zeros(spec),
            })
            .collect();
        let result = self.compute(i, &mut outs);
        for (t, &b) in outs.into_iter().zip(buffers) {
            self.slots[b] = Some(t);
        }
        result
    }

    fn compute(&self, i: usize, outs: &mut [Tensor]) -> Result<(), ExecError> {
        let node = &self.graph.nodes[i];
        let mut ins: Vec<Option<Cow<'_, Tensor>>> = Vec::with_capacity(node.inputs.len());
        for s in &node.inputs {
            ins.push(match s {
                None => None,
                Some(Source::Batch(f)) => self.batch.get(f).map(Cow::Borrowed),
                Some(Source::State(f)) => self.state.get(f).map(Cow::Borrowed),
                Some(src @ Source::Node { node: p, port }) => {
                    Some(self.read(i, *p, *port, self.graph.spec_of(src))?)
                }
            });
        }
        let refs: Vec<Option<&Tensor>> = ins.iter().map(Option::as_deref).collect();
        let cx = ExecCx {
            seed: self.seed,
            iteration: self.iteration,
            node: u32::try_from(i).unwrap_or(u32::MAX),
        };
        node.op
            .cpu(&cx, &refs, outs)
            .map_err(|source| ExecError::Node {
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
        let t = match &self.slots[b] {
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

fn zero(t: &mut Tensor) {
    if let Some(v) = t.f32_mut() {
        v.fill(0.0);
    } else if let Some(v) = t.i32_mut() {
        v.fill(0);
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
