//! plan: the static schedule of one run of a validated graph — which stream runs each node, the
//! events that order the streams, and a memory plan that gives every node output a buffer and
//! reuses buffers whose previous value is dead. Executors (`exec.rs`) run the resulting flat
//! [`Step`] list; nothing is decided at run time.
//!
//! Four passes, each over the nodes in the graph's topological order, after one that orders
//! in-place updates:
//!
//! 0. **In-place updates** ([`crate::Op::IN_PLACE`]: an optimizer step, an EMA): graph order is
//!    their meaning, so each gets implicit edges from every earlier node touching its state and
//!    to every later one; the passes below treat them as data edges (FS0124 for an in-place
//!    port that is not a `state.` input).
//! 1. **State conflicts.** Two nodes where one writes persistent state (`Access::writes`) that the
//!    other reads (declared, or as a `state.` input) or writes, with no path between them through
//!    inputs and `after:` edges, are FS0114: the order would decide the numbers.
//! 2. **Streams** by list scheduling under a cost model (cost = output elements). A node continues
//!    the stream of its heaviest predecessor when that predecessor is still the stream's last node
//!    (so a chain such as a whole teacher forward stays on one stream); otherwise it takes the
//!    stream on which it could start earliest, preferring the one that needs the fewest events.
//!    A `stream:` pin is honoured: the name is hashed onto one of the K streams ([`pin_stream`]).
//! 3. **Events.** Every data or `after:` edge between streams needs the producer's completion to
//!    be visible to the consumer's stream: a record after the producer, a wait before the
//!    consumer. Per-stream vector clocks (entry t of stream s's clock = how many of stream t's
//!    nodes s has transitively waited for) drop a wait that is already implied.
//! 4. **Memory.** Every output gets a buffer. After a value's last access (in plan order) its buffer
//!    returns to a pool; a later output takes the smallest pooled buffer that fits (at most twice
//!    its size, so a scalar does not park in a large block) *only if* every access of the previous
//!    value happens-before the new producer: same stream and earlier, or ordered through events
//!    (the same vector clocks). Batch and state inputs are not buffers; values in
//!    [`PlanOptions::keep`] (what is read after the run: losses, gradients, assigned buffers) get
//!    buffers that are never reused.
//!
//! Planning reads specs only — no tensor is allocated and no hardware touched — so it is the
//! `null` device of the design: `flowseg plan` and CI test plans on any machine. Executors
//! reach a plan through `device.rs` (its arena offsets and per-node launches, and the
//! [`crate::device::Device`] trait the steps are handed to).
//!
//! Not here: priorities by longest path to the sink (plain topological order today), FLOP-based
//! costs, arena offsets (`device.rs` packs the buffers), CUDA-graph capture, the executors
//! themselves.

use crate::graph::{Graph, ValueRef};
use crate::spec::GraphError;
use crate::tensor::{DType, TensorSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// FS0114: two nodes conflict on state and nothing orders them.
pub const STATE_CONFLICT: &str = "FS0114";

/// FS0124: an input an op updates in place ([`crate::Op::IN_PLACE`]) is not a `state.` tensor,
/// or one node names the same state in two in-place ports.
pub const BAD_IN_PLACE: &str = "FS0124";

/// What to plan for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Streams to spread independent work over (1 = a single queue, no events). At least 1.
    pub streams: usize,
    /// Values read after the run (losses, gradients, assigned buffers): their buffers are never
    /// freed or reused. Owned rather than borrowed so a plan can carry the list it was made with
    /// ([`Plan::keep`]) and be re-planned with another stream count. `batch.`/`state.` entries are
    /// ignored (inputs are never buffers).
    pub keep: Vec<ValueRef>,
}

impl Default for PlanOptions {
    /// Two streams, nothing kept.
    fn default() -> Self {
        PlanOptions {
            streams: 2,
            keep: Vec::new(),
        }
    }
}

/// One entry of the executable step list. Steps are in one global order that is valid on its own
/// (every record precedes its waits); per stream, they are that stream's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Run node `node` (index into [`Graph::nodes`]) on `stream`.
    Run {
        /// The node.
        node: usize,
        /// Its stream.
        stream: usize,
    },
    /// Mark `event` as reached on `stream` (after the event's producer).
    Record {
        /// The stream.
        stream: usize,
        /// The event (index into [`Plan::events`]).
        event: usize,
    },
    /// Block `stream` until `event` has been recorded.
    Wait {
        /// The blocked stream.
        stream: usize,
        /// The event.
        event: usize,
    },
    /// The value in `buffer` is dead. Placed on a stream at a point that every access of the
    /// value happens-before — just before the next value's producer when the buffer is reused —
    /// so an executor may poison it there (the interleaving simulator does). It carries a stream,
    /// unlike a plain "free", because that point is what makes the poisoning sound.
    Free {
        /// Where the value is known dead.
        stream: usize,
        /// The buffer.
        buffer: usize,
    },
}

impl Step {
    /// The stream whose queue holds this step.
    pub fn stream(&self) -> usize {
        match *self {
            Step::Run { stream, .. }
            | Step::Record { stream, .. }
            | Step::Wait { stream, .. }
            | Step::Free { stream, .. } => stream,
        }
    }
}

/// A value living in a buffer for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Producer node.
    pub node: usize,
    /// Output index of the producer.
    pub port: usize,
    /// Its spec (the view an executor gives the buffer while this value lives there).
    pub spec: TensorSpec,
    /// The last node (in plan order) that reads it; the producer when nothing does.
    pub last_access: usize,
}

/// A block of memory the memory plan hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    /// Size in bytes (the largest tenant's).
    pub bytes: usize,
    /// The values it holds, in plan order; each one's accesses happen-before the next one's
    /// producer.
    pub tenants: Vec<Tenant>,
    /// Holds a [`PlanOptions::keep`] value: never freed, never reused.
    pub kept: bool,
}

/// What the plan says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNode {
    /// Node name.
    pub name: String,
    /// Op name.
    pub op: &'static str,
    /// Its stream.
    pub stream: usize,
    /// Cost under the plan's model (output elements, at least 1).
    pub cost: u64,
    /// Buffer of each output, in output order.
    pub outputs: Vec<usize>,
}

/// Numbers about a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Streams that run at least one node.
    pub streams_used: usize,
    /// Wait steps.
    pub waits: usize,
    /// Cross-stream edges whose wait was implied by earlier waits (vector clocks) and dropped.
    pub waits_dropped: usize,
    /// Bytes of all buffers: the arena the step needs, with reuse.
    pub peak_bytes: usize,
    /// Bytes of all node outputs: what the step needs when nothing is reused.
    pub peak_bytes_no_reuse: usize,
    /// Bytes of the kept values.
    pub kept_bytes: usize,
    /// Outputs that got a new buffer although a pooled one fitted, because that one's previous
    /// value was not ordered before the producer (reuse there would race).
    pub reuse_refused: usize,
    /// Σ cost over all nodes.
    pub work: u64,
    /// Estimated finish time of the last node under the cost model (≤ `work`).
    pub span: u64,
}

/// A planned run: see the module header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Streams planned for (the `K` of the options).
    pub streams: usize,
    /// Per node, in graph order.
    pub nodes: Vec<PlannedNode>,
    /// The step list.
    pub steps: Vec<Step>,
    /// Per event, the node after which it is recorded.
    pub events: Vec<usize>,
    /// Per buffer id.
    pub buffers: Vec<Buffer>,
    /// The values whose buffers survive the run, as given.
    pub keep: Vec<ValueRef>,
    /// Summary numbers.
    pub stats: PlanStats,
}

impl Plan {
    /// The buffer holding output `port` of `node`.
    pub fn buffer_of(&self, node: usize, port: usize) -> Option<usize> {
        self.nodes.get(node)?.outputs.get(port).copied()
    }
}

/// The stream a `stream:` pin lands on among `streams`: FNV-1a of the name, so a pin keeps its
/// stream when other pins are added.
pub fn pin_stream(name: &str, streams: usize) -> usize {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h % streams.max(1) as u64) as usize
}

/// Bytes per element.
pub fn dtype_bytes(d: DType) -> usize {
    match d {
        DType::F32 | DType::I32 => 4,
    }
}

/// Plans one run of `graph` (see the module header). Errors: FS0114 for each pair of nodes that
/// conflict on state without an order between them.
pub fn plan(graph: &Graph, opts: &PlanOptions) -> Result<Plan, Vec<GraphError>> {
    let n = graph.nodes.len();
    let k = opts.streams.max(1);
    // Predecessors through inputs and `after:`, deduplicated, ascending.
    let preds: Vec<Vec<usize>> = graph
        .nodes
        .iter()
        .map(|node| {
            let mut p: BTreeSet<usize> = node.after.iter().copied().collect();
            for s in node.inputs.iter().flatten() {
                if let ValueRef::Node { node, .. } = s {
                    p.insert(*node);
                }
            }
            p.into_iter().collect()
        })
        .collect();
    let preds = in_place_edges(graph, preds)?;
    let errors = state_conflicts(graph, &preds);
    if !errors.is_empty() {
        return Err(errors);
    }
    let cost: Vec<u64> = graph
        .nodes
        .iter()
        .map(|node| node.outputs.iter().map(|s| s.len() as u64).sum::<u64>())
        .map(|c| c.max(1))
        .collect();
    let (stream_of, span) = assign_streams(graph, &preds, &cost, k);
    let clocks = Clocks::new(&preds, stream_of, k);
    let memory = plan_memory(graph, &opts.keep, &clocks);

    // The step list, in the graph's topological order.
    let event_of: BTreeMap<usize, usize> = (clocks.events.iter().enumerate())
        .map(|(e, &p)| (p, e))
        .collect();
    let mut steps = Vec::with_capacity(3 * n);
    for i in 0..n {
        let stream = clocks.stream_of[i];
        for p in &clocks.waits_of[i] {
            let event = event_of[p];
            steps.push(Step::Wait { stream, event });
        }
        for &buffer in &memory.free_before[i] {
            steps.push(Step::Free { stream, buffer });
        }
        steps.push(Step::Run { node: i, stream });
        if let Some(&event) = event_of.get(&i) {
            steps.push(Step::Record { stream, event });
        }
        for &buffer in &memory.free_after[i] {
            steps.push(Step::Free { stream, buffer });
        }
    }

    let mut stats = memory.stats;
    stats.streams_used = (0..k).filter(|s| clocks.stream_of.contains(s)).count();
    stats.waits = clocks.waits_of.iter().map(Vec::len).sum();
    stats.waits_dropped = clocks.waits_dropped;
    stats.work = cost.iter().sum();
    stats.span = span;
    let mut outputs = memory.outputs;
    let nodes = (graph.nodes.iter().enumerate())
        .map(|(i, node)| PlannedNode {
            name: node.name.value.clone(),
            op: node.op.name(),
            stream: clocks.stream_of[i],
            cost: cost[i],
            outputs: std::mem::take(&mut outputs[i]),
        })
        .collect();
    Ok(Plan {
        streams: k,
        nodes,
        steps,
        events: clocks.events,
        buffers: memory.buffers,
        keep: opts.keep.clone(),
        stats,
    })
}

/// Pass 2: each node's stream, and the estimated finish time of the last node. List scheduling
/// in topological order: a pin wins; else continue the heaviest predecessor's stream while that
/// predecessor is the stream's last node; else the stream where the node can start earliest,
/// then the one needing the fewest events, then the lowest index.
fn assign_streams(
    graph: &Graph,
    preds: &[Vec<usize>],
    cost: &[u64],
    k: usize,
) -> (Vec<usize>, u64) {
    let n = graph.nodes.len();
    let mut stream_of = vec![0usize; n];
    let mut finish = vec![0u64; n];
    let mut free = vec![0u64; k];
    let mut last: Vec<Option<usize>> = vec![None; k];
    for i in 0..n {
        let ready = preds[i].iter().map(|&p| finish[p]).max().unwrap_or(0);
        let heaviest = preds[i].iter().copied().max_by_key(|&p| (cost[p], p));
        let s = match (&graph.nodes[i].stream, heaviest) {
            (Some(pin), _) => pin_stream(pin, k),
            (None, Some(h)) if last[stream_of[h]] == Some(h) => stream_of[h],
            _ => (0..k)
                .min_by_key(|&s| {
                    let events = preds[i].iter().filter(|&&p| stream_of[p] != s).count();
                    (ready.max(free[s]), events, s)
                })
                .unwrap_or(0),
        };
        finish[i] = ready.max(free[s]) + cost[i];
        free[s] = finish[i];
        last[s] = Some(i);
        stream_of[i] = s;
    }
    (stream_of, finish.iter().copied().max().unwrap_or(0))
}

/// Pass 3: the waits each node needs, from per-stream vector clocks. Entry t of a clock counts
/// the nodes of stream t known finished; a node's position is 1-based on its stream.
struct Clocks {
    stream_of: Vec<usize>,
    /// Position of each node on its stream (1-based).
    pos: Vec<usize>,
    /// Clock of the node's stream once its waits are done (before it runs).
    before: Vec<Vec<usize>>,
    /// Clock of the node's stream once it has run.
    after: Vec<Vec<usize>>,
    /// Producers each node waits for, in wait order.
    waits_of: Vec<Vec<usize>>,
    /// Producers with an event, ascending (event id = index).
    events: Vec<usize>,
    waits_dropped: usize,
}

impl Clocks {
    fn new(preds: &[Vec<usize>], stream_of: Vec<usize>, k: usize) -> Self {
        let n = stream_of.len();
        let mut c = Clocks {
            pos: vec![0; n],
            before: Vec::with_capacity(n),
            after: Vec::with_capacity(n),
            waits_of: vec![Vec::new(); n],
            events: Vec::new(),
            waits_dropped: 0,
            stream_of,
        };
        let mut count = vec![0usize; k];
        let mut clock = vec![vec![0usize; k]; k];
        for i in 0..n {
            let s = c.stream_of[i];
            count[s] += 1;
            c.pos[i] = count[s];
            // Latest producers first: their clocks know the most, so earlier ones often drop out.
            let mut cross: Vec<usize> = (preds[i].iter().copied())
                .filter(|&p| c.stream_of[p] != s)
                .collect();
            cross.sort_unstable_by(|a, b| b.cmp(a));
            for p in cross {
                if clock[s][c.stream_of[p]] >= c.pos[p] {
                    c.waits_dropped += 1;
                    continue;
                }
                c.waits_of[i].push(p);
                for t in 0..k {
                    clock[s][t] = clock[s][t].max(c.after[p][t]);
                }
            }
            c.before.push(clock[s].clone());
            clock[s][s] = c.pos[i];
            c.after.push(clock[s].clone());
        }
        c.events = c.waits_of.iter().flatten().copied().collect();
        c.events.sort_unstable();
        c.events.dedup();
        c
    }

    /// Everything up to and including node `a` finishes before node `i` starts.
    fn before_start(&self, a: usize, i: usize) -> bool {
        let sa = self.stream_of[a];
        if sa == self.stream_of[i] {
            self.pos[a] < self.pos[i]
        } else {
            self.before[i][sa] >= self.pos[a]
        }
    }

    /// Everything up to and including node `a` finishes before the point right after node `l`
    /// on `l`'s stream (true for `a == l`).
    fn by_end_of(&self, a: usize, l: usize) -> bool {
        self.after[l][self.stream_of[a]] >= self.pos[a]
    }
}

/// Pass 4's result.
struct Memory {
    buffers: Vec<Buffer>,
    /// Per node, the buffer of each output.
    outputs: Vec<Vec<usize>>,
    /// Per node, buffers whose previous value dies right before it runs (it reuses them).
    free_before: Vec<Vec<usize>>,
    /// Per node, buffers whose last value dies right after it runs (nobody reuses them).
    free_after: Vec<Vec<usize>>,
    /// The memory numbers.
    stats: PlanStats,
}

/// Pass 4: buffers, best fit over a pool of dead values' buffers, reuse only across a
/// happens-before edge.
fn plan_memory(graph: &Graph, keep: &[ValueRef], clocks: &Clocks) -> Memory {
    let n = graph.nodes.len();
    // Readers of each value; its accesses are the producer and the readers.
    let mut readers: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        for s in node.inputs.iter().flatten() {
            if let ValueRef::Node { node, port } = s {
                let r = readers.entry((*node, *port)).or_default();
                if r.last() != Some(&i) {
                    r.push(i);
                }
            }
        }
    }
    let accesses = |v: (usize, usize)| -> Vec<usize> {
        let mut a = vec![v.0];
        a.extend(readers.get(&v).into_iter().flatten().copied());
        a
    };
    let kept: BTreeSet<(usize, usize)> = (keep.iter())
        .filter_map(|s| match s {
            ValueRef::Node { node, port } => Some((*node, *port)),
            _ => None,
        })
        .collect();
    // Values whose last access (in plan order) is each node.
    let mut dies: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (i, node) in graph.nodes.iter().enumerate() {
        for port in (0..node.outputs.len()).filter(|&p| !kept.contains(&(i, p))) {
            let last = accesses((i, port)).into_iter().max().unwrap_or(i);
            dies[last].push((i, port));
        }
    }
    let mut m = Memory {
        buffers: Vec::new(),
        outputs: vec![Vec::new(); n],
        free_before: vec![Vec::new(); n],
        free_after: vec![Vec::new(); n],
        stats: PlanStats::default(),
    };
    // Buffers of dead values, with those values' accesses.
    let mut pool: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        for (port, spec) in node.outputs.iter().enumerate() {
            let bytes = spec.len() * dtype_bytes(spec.dtype);
            let is_kept = kept.contains(&(i, port));
            m.stats.peak_bytes_no_reuse += bytes;
            if is_kept {
                m.stats.kept_bytes += bytes;
            }
            let tenant = Tenant {
                node: i,
                port,
                spec: spec.clone(),
                last_access: accesses((i, port)).into_iter().max().unwrap_or(i),
            };
            let mut best: Option<usize> = None;
            let mut refused = false;
            for (j, (b, acc)) in pool.iter().enumerate().filter(|_| !is_kept) {
                let size = m.buffers[*b].bytes;
                if size < bytes || size > 2 * bytes {
                    continue;
                }
                if !acc.iter().all(|&a| clocks.before_start(a, i)) {
                    refused = true;
                    continue;
                }
                let key = |j: usize| (m.buffers[pool[j].0].bytes, pool[j].0);
                if best.is_none_or(|bj| (size, *b) < key(bj)) {
                    best = Some(j);
                }
            }
            let b = match best {
                Some(j) => {
                    let (b, _) = pool.swap_remove(j);
                    m.free_before[i].push(b);
                    m.buffers[b].tenants.push(tenant);
                    b
                }
                None => {
                    m.stats.reuse_refused += usize::from(refused);
                    m.buffers.push(Buffer {
                        bytes,
                        tenants: vec![tenant],
                        kept: is_kept,
                    });
                    m.buffers.len() - 1
                }
            };
            m.outputs[i].push(b);
        }
        for &(v, port) in &dies[i] {
            pool.push((m.outputs[v][port], accesses((v, port))));
        }
    }
    // The last value of a buffer nobody reuses is freed right after its last access when that
    // point follows every access; otherwise it is left until the step ends.
    for (b, buf) in m.buffers.iter().enumerate() {
        match buf.tenants.last() {
            Some(t) if !buf.kept => {
                let acc = accesses((t.node, t.port));
                if acc.iter().all(|&a| clocks.by_end_of(a, t.last_access)) {
                    m.free_after[t.last_access].push(b);
                }
            }
            _ => {}
        }
    }
    m.stats.peak_bytes = m.buffers.iter().map(|b| b.bytes).sum();
    m
}

/// Whether state names `x` and `y` overlap: equal, or one a dotted prefix of the other
/// (`teacher` covers `teacher.conv1.weight`).
fn state_overlaps(x: &str, y: &str) -> bool {
    x == y
        || (y.len() > x.len() && y.starts_with(x) && y.as_bytes()[x.len()] == b'.')
        || (x.len() > y.len() && x.starts_with(y) && x.as_bytes()[y.len()] == b'.')
}

/// Pass 0: the order of in-place updates ([`crate::Op::IN_PLACE`]). Graph order is their meaning,
/// so each in-place writer of a state tensor gets edges from every earlier node that reads or
/// writes it (they see the old value) and gives edges to every later one (they see the new), and
/// streams, events and buffer reuse then follow from `preds` as for data edges. FS0124 for an
/// in-place port that is not a `state.` input, or a state named by two in-place ports of one
/// node. Graphs without in-place ops pass through untouched.
fn in_place_edges(
    graph: &Graph,
    mut preds: Vec<Vec<usize>>,
) -> Result<Vec<Vec<usize>>, Vec<GraphError>> {
    let mut writes: Vec<(usize, Vec<String>)> = Vec::new();
    let mut errors = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let ports = node.op.in_place();
        if ports.is_empty() {
            continue;
        }
        let mut names: Vec<String> = Vec::new();
        for &port in &ports {
            match node.inputs.get(port).and_then(Option::as_ref) {
                Some(ValueRef::State(name)) if !names.contains(name) => names.push(name.clone()),
                Some(ValueRef::State(name)) => errors.push(
                    GraphError::new(
                        BAD_IN_PLACE,
                        format!("`{}` updates state `{name}` in place twice", node.name.value),
                        node.name.loc,
                    )
                    .in_node(&node.name.value),
                ),
                other => errors.push(
                    GraphError::new(
                        BAD_IN_PLACE,
                        format!(
                            "`{}` ({}) updates its input {port} in place, which must be a                              `state.` tensor, not {}",
                            node.name.value,
                            node.op.name(),
                            match other {
                                None => "unconnected".to_owned(),
                                Some(ValueRef::Batch(f)) => format!("`batch.{f}`"),
                                Some(_) => "a node output".to_owned(),
                            }
                        ),
                        node.name.loc,
                    )
                    .in_node(&node.name.value),
                ),
            }
        }
        writes.push((i, names));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if writes.is_empty() {
        return Ok(preds);
    }
    // Who touches which state: `state.` inputs by exact name (the common case, indexed), and
    // the rare declared accesses (`Access`, names that may cover others) by overlap.
    let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut declared: Vec<(usize, Vec<String>)> = Vec::new();
    for (j, node) in graph.nodes.iter().enumerate() {
        for s in node.inputs.iter().flatten() {
            if let ValueRef::State(x) = s {
                by_name.entry(x.as_str()).or_default().push(j);
            }
        }
        let a = node.op.access();
        if !a.reads.is_empty() || !a.writes.is_empty() {
            declared.push((j, a.reads.into_iter().chain(a.writes).collect()));
        }
    }
    for (w, names) in &writes {
        let mut others: BTreeSet<usize> = BTreeSet::new();
        for name in names {
            // Exact names, and names one covers (an input `teacher` would cover `teacher.w`).
            for (x, nodes) in &by_name {
                if state_overlaps(x, name) {
                    others.extend(nodes);
                }
            }
            for (j, xs) in &declared {
                if xs.iter().any(|x| state_overlaps(x, name)) {
                    others.insert(*j);
                }
            }
        }
        others.remove(w);
        for j in others {
            let (from, to) = if j < *w { (j, *w) } else { (*w, j) };
            if let Err(at) = preds[to].binary_search(&from) {
                preds[to].insert(at, from);
            }
        }
    }
    Ok(preds)
}

/// Pass 1: FS0114 for every pair of nodes that conflict on state with no path between them.
/// Names conflict when equal or when one is a dotted prefix of the other (`teacher` covers
/// `teacher.conv1.weight`).
fn state_conflicts(graph: &Graph, preds: &[Vec<usize>]) -> Vec<GraphError> {
    let access: Vec<(BTreeSet<String>, BTreeSet<String>)> = graph
        .nodes
        .iter()
        .map(|node| {
            let a = node.op.access();
            let mut reads: BTreeSet<String> = a.reads.into_iter().collect();
            for s in node.inputs.iter().flatten() {
                if let ValueRef::State(name) = s {
                    reads.insert(name.clone());
                }
            }
            (reads, a.writes.into_iter().collect())
        })
        .collect();
    if access.iter().all(|(_, w)| w.is_empty()) {
        return Vec::new();
    }
    // Ancestor sets as bit rows: n²/8 bytes, only built when some node writes state.
    let n = graph.nodes.len();
    let words = n.div_ceil(64);
    let mut anc = vec![0u64; n * words];
    for i in 0..n {
        for &p in &preds[i] {
            let (lo, hi) = anc.split_at_mut(i * words);
            let row = &mut hi[..words];
            row[p / 64] |= 1 << (p % 64);
            for (w, a) in row.iter_mut().zip(&lo[p * words..(p + 1) * words]) {
                *w |= a;
            }
        }
    }
    let ordered = |a: usize, b: usize| {
        let (lo, hi) = (a.min(b), a.max(b));
        anc[hi * words + lo / 64] & (1 << (lo % 64)) != 0
    };
    let first_overlap = |xs: &BTreeSet<String>, ys: &BTreeSet<String>| -> Option<String> {
        xs.iter()
            .find_map(|x| ys.iter().find(|y| state_overlaps(x, y)).map(|_| x.clone()))
    };
    let mut errors = Vec::new();
    for i in 0..n {
        for j in 0..i {
            let ((ri, wi), (rj, wj)) = (&access[i], &access[j]);
            if wi.is_empty() && wj.is_empty() {
                continue;
            }
            let found = first_overlap(wj, wi)
                .map(|s| (s, "writes", "writes"))
                .or_else(|| first_overlap(wj, ri).map(|s| (s, "writes", "reads")))
                .or_else(|| first_overlap(wi, rj).map(|s| (s, "reads", "writes")));
            let Some((state, what_j, what_i)) = found else {
                continue;
            };
            if ordered(j, i) {
                continue;
            }
            let (a, b) = (&graph.nodes[j].name, &graph.nodes[i].name);
            errors.push(
                GraphError::new(
                    STATE_CONFLICT,
                    format!(
                        "`{}` {what_j} state `{state}` and `{}` {what_i} it, with no order between them",
                        a.value, b.value
                    ),
                    b.loc,
                )
                .in_node(&b.value)
                .help(format!(
                    "add `after: [{}]` to `{}` (or the reverse) so every run sees the same value",
                    a.value, b.value
                )),
            );
        }
    }
    errors
}

/// `1 event`, `2 events`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `1.5 KiB`, `28 B`.
fn human(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else if b < 10.0 * KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

impl fmt::Display for Plan {
    /// A table with one column per stream and one row per step, then buffer lifetimes and the
    /// memory totals. Deterministic: snapshot tests compare it as text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "{} on {} of {} streams, {}, {}, {} redundant waits dropped; \
             cost model (output elements): span {} of {} work",
            plural(self.nodes.len(), "node"),
            s.streams_used,
            self.streams,
            plural(self.events.len(), "event"),
            plural(s.waits, "wait"),
            s.waits_dropped,
            s.span,
            s.work
        )?;
        // Step index of each node's run, for lifetimes.
        let mut run_step = vec![0usize; self.nodes.len()];
        let mut cells: Vec<(usize, String)> = Vec::with_capacity(self.steps.len());
        for (idx, step) in self.steps.iter().enumerate() {
            let text = match *step {
                Step::Run { node, .. } => {
                    run_step[node] = idx;
                    let p = &self.nodes[node];
                    let outs: Vec<String> = p.outputs.iter().map(|b| format!("b{b}")).collect();
                    if outs.is_empty() {
                        format!("{} ({})", p.name, p.op)
                    } else {
                        format!("{} ({}) → {}", p.name, p.op, outs.join(","))
                    }
                }
                Step::Record { event, .. } => format!("record e{event}"),
                Step::Wait { event, .. } => {
                    format!("wait e{event} ({})", self.nodes[self.events[event]].name)
                }
                Step::Free { buffer, .. } => format!("free b{buffer}"),
            };
            cells.push((step.stream(), text));
        }
        let mut width = vec![0usize; self.streams];
        for (stream, text) in &cells {
            width[*stream] = width[*stream].max(text.chars().count());
        }
        for (stream, w) in width.iter_mut().enumerate() {
            *w = (*w).max(format!("stream {stream}").len());
        }
        let row = |f: &mut fmt::Formatter<'_>, label: &str, stream: Option<usize>, text: &str| {
            let mut line = format!("{label:>5}");
            for (t, w) in width.iter().enumerate() {
                let cell = match stream {
                    Some(s) if s == t => text.to_owned(),
                    None => format!("stream {t}"),
                    _ => String::new(),
                };
                line.push_str("  ");
                line.push_str(&cell);
                line.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(cell.chars().count()),
                ));
            }
            writeln!(f, "{}", line.trim_end())
        };
        row(f, "step", None, "")?;
        for (idx, (stream, text)) in cells.iter().enumerate() {
            row(f, &idx.to_string(), Some(*stream), text)?;
        }
        writeln!(
            f,
            "buffers (value spec: step of its producer – step of its last reader):"
        )?;
        for (b, buf) in self.buffers.iter().enumerate() {
            let tenants: Vec<String> = buf
                .tenants
                .iter()
                .map(|t| {
                    let name = &self.nodes[t.node].name;
                    let (from, to) = (run_step[t.node], run_step[t.last_access]);
                    let kept = if buf.kept { ", kept" } else { "" };
                    format!("{name}.{} {}: {from}–{to}{kept}", t.port, t.spec)
                })
                .collect();
            writeln!(
                f,
                "  b{b:<4} {:>9}  {}",
                human(buf.bytes),
                tenants.join(" · ")
            )?;
        }
        let outputs: usize = self.nodes.iter().map(|p| p.outputs.len()).sum();
        writeln!(
            f,
            "peak memory: {} in {} with reuse, {} in {} without; {} kept after the step; {} \
             refused for lack of ordering",
            human(s.peak_bytes),
            plural(self.buffers.len(), "buffer"),
            human(s.peak_bytes_no_reuse),
            plural(outputs, "output"),
            human(s.kept_bytes),
            plural(s.reuse_refused, "reuse")
        )
    }
}
