//! cuda_exec (feature `cuda`): runs a [`Plan`] on an NVIDIA GPU. The same driver
//! ([`crate::device::drive`]) and the same per-node [`crate::device::Launch`]es as the CPU
//! executor; what differs is where values live and who orders them:
//!
//! * **Memory.** One device allocation for the plan's arena (its [`crate::device::ArenaLayout`] size, made on
//!   the first run and kept while later plans fit); a value lives at its buffer's offset. State
//!   tensors (parameters, buffers, optimizer moments, per-step scalars) are persistent device
//!   tensors, uploaded once ([`CudaExecutor::upload_state`]) and updated in place by the step's
//!   update nodes. Batch fields go through page-locked (pinned) host buffers kept per field:
//!   each run writes the batch into them and queues every copy on stream 0 without waiting
//!   (one asynchronous DMA per field, no host synchronisation), then records one event that
//!   the other streams wait on before their first launch.
//! * **Streams and events.** The device has the plan's K streams; each launch goes to its
//!   node's stream, and each plan event is a CUDA event recorded and waited exactly where the
//!   plan's steps say ([`crate::device::check_calls`] verifies that bookkeeping without a GPU).
//! * **Ops.** A node runs through its op's [`crate::Op::cuda`] (or `cuda_in_place`); a graph
//!   with a node whose op has no twin is refused before anything runs, naming them all
//!   ([`crate::device::missing_cuda_twins`]).
//! * **Results.** After the run every stream is synchronised; the plan's kept values (losses,
//!   metrics, the guard; gradients) stay in their never-reused buffers, and a caller copies
//!   back the ones it reads ([`CudaExecutor::fetch`]).
//!
//! * **Debug switches.** With [`DebugChecks`] the launches go through [`Checked`]: a
//!   synchronisation after each (`--sync-each-op`), or each node shadowed on the CPU from the
//!   device's own inputs and compared (`--validate-cpu`), reading values back through
//!   [`Device::read_back`].
//!
//! Unverified: no GPU has run this file yet (docs/plans/device-seam.md lists what a GPU session
//! must check first). Not here yet: the next batch's upload on its own stream while the current
//! step runs (the staging buffers are written when `run` starts, after the previous run's final
//! synchronisation, so one set suffices; overlap needs a second set and the trainer handing the
//! next batch over early), CUDA-graph capture, kernel scratch from the arena (the launchers
//! allocate their reduction scratch per call, stream-ordered).

use crate::device::{
    drive, missing_cuda_twins, Device, ExecError, ExecOrder, Launch, Operand, Program, Region,
};
use crate::graph::{CudaCx, ExecCx, Graph, ValueRef};
use crate::plan::Plan;
use crate::shadow::{Checked, DebugChecks};
use crate::tensor::{DType, DeviceTensor, Tensor, TensorSpec};
use flowseg_kernels::cuda::cudarc_driver::{CudaEvent, CudaSlice, DriverError, PinnedHostSlice};
use flowseg_kernels::cuda::{CudaError, Device as Gpu, DeviceBuf, RawBuf};
use std::collections::BTreeMap;

/// A device failure as the executor reports it.
fn device_err(what: &str) -> impl Fn(CudaError) -> ExecError + '_ {
    move |e| ExecError::Device(format!("{what}: {e}"))
}

/// One device tensor the executor owns (a state tensor).
struct Owned {
    spec: TensorSpec,
    mem: CudaSlice<u8>,
}

/// A batch field on the device and its page-locked host staging buffer, both of the field's
/// length in 4-byte words (f32 and i32 bit patterns alike).
struct Staged {
    spec: TensorSpec,
    mem: CudaSlice<u32>,
    host: PinnedHostSlice<u32>,
}

/// A GPU with a plan's memory: see the module header.
pub struct CudaExecutor {
    gpu: Gpu,
    /// The arena: its size in bytes and the allocation.
    arena: Option<(usize, CudaSlice<u8>)>,
    state: BTreeMap<String, Owned>,
    batch: BTreeMap<String, Staged>,
    /// One CUDA event per plan event, grown on demand.
    events: Vec<CudaEvent>,
    /// Recorded on stream 0 after a run's batch copies; the other streams wait on it.
    uploaded: Option<CudaEvent>,
}

impl CudaExecutor {
    /// Opens GPU `ordinal` with `streams` streams (the plan's K). Never panics: no driver or no
    /// device is an [`ExecError::Device`] saying which.
    pub fn new(ordinal: usize, streams: usize) -> Result<CudaExecutor, ExecError> {
        let gpu = Gpu::with_streams(ordinal, streams.max(1)).map_err(device_err("open"))?;
        Ok(CudaExecutor {
            gpu,
            arena: None,
            state: BTreeMap::new(),
            batch: BTreeMap::new(),
            events: Vec::new(),
            uploaded: None,
        })
    }

    /// The device (name, streams, launchers' context).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Copies every tensor of `state` to the device, allocating those not there yet (or there
    /// with another spec); tensors the device holds under other names stay.
    pub fn upload_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), ExecError> {
        // A run that failed half-way may still have kernels reading the state on other streams.
        self.gpu.synchronize().map_err(device_err("synchronize"))?;
        for (name, t) in state {
            put(&self.gpu, &mut self.state, name, t)?;
        }
        Ok(())
    }

    /// The device's copy of state tensor `name`, as a host tensor.
    pub fn download_state(&self, name: &str) -> Result<Tensor, ExecError> {
        // Every stream, not only the copy's: a failed run's kernels may still be writing.
        self.gpu.synchronize().map_err(device_err("synchronize"))?;
        let owned = self.state.get(name).ok_or_else(|| ExecError::Input {
            what: "state tensor",
            name: name.to_owned(),
            problem: "not on the device".into(),
        })?;
        let at = self.gpu.stream_at(0).map(|s| owned.mem.device_addr(s));
        download(&self.gpu, &owned.spec, at.unwrap_or(0))
    }

    /// Runs `plan` (made for `graph`, launchable as `program`) once on the device and waits for
    /// it: `batch` is uploaded, the state uploaded earlier is read and updated in place, and the
    /// plan's kept node outputs stay on the device for [`CudaExecutor::fetch`]. `seed` and `iteration` key the random streams as
    /// on the CPU. `order` is the host's submission order (the plan's, or an interleaving: any
    /// valid one gives the same numbers). `checks` are the debug switches (`--sync-each-op`,
    /// `--validate-cpu`: [`crate::shadow`]).
    #[allow(clippy::too_many_arguments, reason = "the CPU executor's arguments")]
    pub fn run(
        &mut self,
        graph: &Graph,
        plan: &Plan,
        program: &Program,
        batch: &BTreeMap<String, Tensor>,
        seed: u64,
        iteration: u64,
        order: ExecOrder,
        checks: DebugChecks,
    ) -> Result<(), ExecError> {
        let missing = missing_cuda_twins(graph);
        if !missing.is_empty() {
            let list: Vec<String> = missing
                .iter()
                .map(|(n, op)| format!("`{n}` ({op})"))
                .collect();
            return Err(ExecError::Device(format!(
                "no CUDA twin for {} node(s): {}",
                list.len(),
                list.join(", ")
            )));
        }
        if plan.streams > self.gpu.streams() {
            return Err(ExecError::Device(format!(
                "the plan has {} streams, the executor {}",
                plan.streams,
                self.gpu.streams()
            )));
        }
        for (name, spec) in &graph.state {
            match self.state.get(name) {
                Some(o) if &o.spec == spec => {}
                Some(o) => {
                    return Err(ExecError::Input {
                        what: "state tensor",
                        name: name.clone(),
                        problem: format!("is {} on the device, the graph reads {spec}", o.spec),
                    })
                }
                None => {
                    return Err(ExecError::Input {
                        what: "state tensor",
                        name: name.clone(),
                        problem: "not on the device (upload_state first)".into(),
                    })
                }
            }
        }
        // The staging buffers are rewritten below. A run that completed synchronised at its
        // end, so this waits for nothing; one that failed half-way may have left a copy from
        // them in flight.
        self.gpu.synchronize().map_err(device_err("synchronize"))?;
        for (name, spec) in &graph.batch {
            match batch.get(name) {
                Some(t) if t.spec() == spec => stage(&self.gpu, &mut self.batch, name, t)?,
                Some(t) => {
                    return Err(ExecError::Input {
                        what: "batch field",
                        name: name.clone(),
                        problem: format!("is {}, the graph reads {spec}", t.spec()),
                    })
                }
                None => {
                    return Err(ExecError::Input {
                        what: "batch field",
                        name: name.clone(),
                        problem: "not provided".into(),
                    })
                }
            }
        }
        let need = program.arena.bytes;
        if self.arena.as_ref().is_none_or(|(bytes, _)| *bytes < need) {
            self.arena = None; // free the old one before allocating the new
            let mem = self.gpu.alloc_bytes(need).map_err(device_err("arena"))?;
            // `alloc_bytes` is stream-ordered on stream 0 (cuMemAllocAsync, then an async
            // memset to zero): a node on another stream that writes the arena before any wait on
            // stream 0 would race the allocation and could have its output zeroed after it.
            self.gpu.synchronize().map_err(device_err("arena"))?;
            self.arena = Some((need, mem));
        }
        // Streams other than 0 read batch fields only after stream 0's copies.
        if plan.streams > 1 {
            if self.uploaded.is_none() {
                let e = self.gpu.events().take().map_err(device_err("event"))?;
                self.uploaded = Some(e);
            }
            if let (Some(e), Some(s0)) = (&self.uploaded, self.gpu.stream_at(0)) {
                e.record(s0)
                    .map_err(|e| ExecError::Device(format!("record the upload event: {e}")))?;
                for k in 1..plan.streams {
                    if let Some(s) = self.gpu.stream_at(k) {
                        s.wait(e).map_err(|e| {
                            ExecError::Device(format!("stream {k} waits for the upload: {e}"))
                        })?;
                    }
                }
            }
        }
        while self.events.len() < plan.events.len() {
            let e = self.gpu.events().take().map_err(device_err("event"))?;
            self.events.push(e);
        }
        let base = match (&self.arena, self.gpu.stream_at(0)) {
            (Some((_, mem)), Some(s)) => mem.device_addr(s),
            _ => return Err(ExecError::Device("no arena".into())),
        };
        let addr = |m: &BTreeMap<String, Owned>, name: &str| -> Option<u64> {
            let s = self.gpu.stream_at(0)?;
            m.get(name).map(|o| o.mem.device_addr(s))
        };
        let state: BTreeMap<&str, (TensorSpec, u64)> = (self.state.iter())
            .filter_map(|(n, o)| Some((n.as_str(), (o.spec.clone(), addr(&self.state, n)?))))
            .collect();
        let batch_at: BTreeMap<&str, (TensorSpec, u64)> = (self.batch.iter())
            .filter_map(|(n, o)| {
                let at = o.mem.device_addr(self.gpu.stream_at(0)?);
                Some((n.as_str(), (o.spec.clone(), at)))
            })
            .collect();
        let mut launcher = Launcher {
            gpu: &self.gpu,
            graph,
            events: &self.events,
            state,
            batch: batch_at,
            base,
            seed,
            iteration,
        };
        if checks.any() {
            let mut checked = Checked::new(&mut launcher, graph, seed, iteration, checks);
            drive(&mut checked, program, plan, order)?;
        } else {
            drive(&mut launcher, program, plan, order)?;
        }
        self.gpu.synchronize().map_err(device_err("synchronize"))?;
        self.gpu.select(0).map_err(device_err("select"))?;
        Ok(())
    }

    /// A node output of the last [`CudaExecutor::run`] of `program`, copied to the host: valid
    /// for the plan's kept values (their buffers are never reused), until the next run.
    pub fn fetch(
        &self,
        graph: &Graph,
        program: &Program,
        value: &ValueRef,
    ) -> Result<Tensor, ExecError> {
        let ValueRef::Node { node, port } = value else {
            return Err(ExecError::Plan(format!("{value:?} is not a node output")));
        };
        let (Some(region), Some(spec)) = (
            program
                .launches
                .get(*node)
                .and_then(|l| l.outputs.get(*port)),
            graph.spec_of(value),
        ) else {
            return Err(ExecError::Plan(format!(
                "no value {node}.{port} in the plan"
            )));
        };
        let base = match (&self.arena, self.gpu.stream_at(0)) {
            (Some((_, mem)), Some(s)) => mem.device_addr(s),
            _ => return Err(ExecError::Device("nothing has run yet".into())),
        };
        self.gpu.synchronize().map_err(device_err("synchronize"))?;
        download(&self.gpu, spec, base + region.offset as u64)
    }
}

impl Drop for CudaExecutor {
    /// Frees nothing under a running copy or kernel: after a failed run the streams may still
    /// read the pinned staging buffers and the arena.
    fn drop(&mut self) {
        let _ = self.gpu.synchronize();
    }
}

/// Copies host tensor `t` into `m[name]`, allocating it when missing or of another spec.
fn put(
    gpu: &Gpu,
    m: &mut BTreeMap<String, Owned>,
    name: &str,
    t: &Tensor,
) -> Result<(), ExecError> {
    let spec = t.spec().clone();
    let n = spec.len();
    if m.get(name).is_none_or(|o| o.spec != spec) {
        let mem = gpu
            .alloc_bytes(4 * spec.len())
            .map_err(device_err("allocate"))?;
        m.insert(name.to_owned(), Owned { spec, mem });
    }
    let Some(o) = m.get_mut(name) else {
        return Err(ExecError::Device(format!("`{name}` vanished")));
    };
    let s = gpu
        .stream_at(0)
        .ok_or_else(|| ExecError::Device("no stream".into()))?;
    let at = o.mem.device_addr(s);
    gpu.select(0).map_err(device_err("select"))?;
    let what = format!("upload `{name}`");
    // SAFETY: `o.mem` was allocated for `spec`, 4·len bytes, exactly `len` f32 or i32
    // elements, and lives in the map while the copy runs (`upload_into` waits for it).
    let (mut f, mut i) = unsafe { (RawBuf::<f32>::new(at, n), RawBuf::<i32>::new(at, n)) };
    match (t.f32(), t.i32()) {
        (Some(v), _) => gpu.upload_into(v, &mut f),
        (_, Some(v)) => gpu.upload_into(v, &mut i),
        _ => return Err(ExecError::Device(format!("`{name}` has no data"))),
    }
    .map_err(device_err(&what))
}

/// Queues host batch field `t` for `m[name]` on stream 0: written into the field's pinned
/// staging buffer, then one asynchronous copy to the device (allocating both when missing or of
/// another spec). Nothing waits here: stream 0's later work is ordered after the copy, the
/// other streams through the run's upload event. The staging buffers are safe to rewrite (or
/// free) because `run` synchronises every stream before it stages; cudarc's own guard on
/// them is off with event tracking (`Gpu::cuda`), so it protects nothing.
fn stage(
    gpu: &Gpu,
    m: &mut BTreeMap<String, Staged>,
    name: &str,
    t: &Tensor,
) -> Result<(), ExecError> {
    let what = format!("stage `{name}`");
    let err = |e: DriverError| ExecError::Device(format!("{what}: {e}"));
    let spec = t.spec().clone();
    let words = spec.len().max(1);
    let s0 = gpu
        .stream_at(0)
        .ok_or_else(|| ExecError::Device("no stream".into()))?;
    if m.get(name).is_none_or(|o| o.spec != spec) {
        m.remove(name);
        let mem = s0.alloc_zeros::<u32>(words).map_err(err)?;
        // SAFETY: page-locked memory starts uninitialised; every word is written below before
        // the first copy reads it (the zero-length case writes its one padding word too).
        let host = unsafe { gpu.context().alloc_pinned::<u32>(words) }.map_err(err)?;
        m.insert(name.to_owned(), Staged { spec, mem, host });
    }
    let Some(o) = m.get_mut(name) else {
        return Err(ExecError::Device(format!("`{name}` vanished")));
    };
    let host = o.host.as_mut_slice().map_err(err)?;
    host[o.spec.len()..].fill(0);
    match (t.f32(), t.i32()) {
        (Some(v), _) => host.iter_mut().zip(v).for_each(|(h, x)| *h = x.to_bits()),
        (_, Some(v)) => host.iter_mut().zip(v).for_each(|(h, x)| *h = *x as u32),
        _ => return Err(ExecError::Device(format!("`{name}` has no data"))),
    }
    s0.memcpy_htod(&o.host, &mut o.mem).map_err(err)
}

/// A host copy of the `spec` value at device address `at`.
fn download(gpu: &Gpu, spec: &TensorSpec, at: u64) -> Result<Tensor, ExecError> {
    let mut t = Tensor::zeros(spec);
    let n = spec.len();
    gpu.select(0).map_err(device_err("select"))?;
    // SAFETY: the caller's address holds `n` elements of the spec's dtype (an arena region
    // sized by the plan, or a state tensor allocated for this spec); only the view of that
    // dtype is used.
    let (f, i) = unsafe { (RawBuf::<f32>::new(at, n), RawBuf::<i32>::new(at, n)) };
    let r = match spec.dtype {
        DType::F32 => match t.f32_mut() {
            Some(v) => gpu.download_into(&f, v),
            None => return Err(ExecError::Device("host tensor without data".into())),
        },
        DType::I32 => match t.i32_mut() {
            Some(v) => gpu.download_into(&i, v),
            None => return Err(ExecError::Device("host tensor without data".into())),
        },
    };
    r.map_err(device_err("download"))?;
    Ok(t)
}

/// One run's view of the executor, as the driver's [`Device`].
struct Launcher<'a> {
    gpu: &'a Gpu,
    graph: &'a Graph,
    events: &'a [CudaEvent],
    state: BTreeMap<&'a str, (TensorSpec, u64)>,
    batch: BTreeMap<&'a str, (TensorSpec, u64)>,
    /// The arena's device address.
    base: u64,
    seed: u64,
    iteration: u64,
}

impl Launcher<'_> {
    fn tensor(&self, l: &Launch, op: &Operand) -> Result<Option<DeviceTensor>, ExecError> {
        let named = |m: &BTreeMap<&str, (TensorSpec, u64)>, what: &'static str, name: &str| {
            m.get(name)
                .map(|(spec, ptr)| DeviceTensor {
                    spec: spec.clone(),
                    ptr: *ptr,
                })
                .ok_or_else(|| ExecError::Input {
                    what,
                    name: name.to_owned(),
                    problem: format!("not on the device (node {})", l.node),
                })
        };
        Ok(match op {
            Operand::Absent => None,
            Operand::Batch(f) => Some(named(&self.batch, "batch field", f)?),
            Operand::State(f) | Operand::StateInPlace(f) => {
                Some(named(&self.state, "state tensor", f)?)
            }
            Operand::Value { node, port, region } => {
                let spec = self
                    .graph
                    .spec_of(&ValueRef::Node {
                        node: *node,
                        port: *port,
                    })
                    .ok_or_else(|| ExecError::Plan(format!("no value {node}.{port}")))?;
                Some(self.at(spec, region))
            }
        })
    }

    fn at(&self, spec: &TensorSpec, region: &Region) -> DeviceTensor {
        DeviceTensor {
            spec: spec.clone(),
            ptr: self.base + region.offset as u64,
        }
    }
}

impl Device for Launcher<'_> {
    fn launch(&mut self, l: &Launch) -> Result<(), ExecError> {
        let node = (self.graph.nodes.get(l.node))
            .ok_or_else(|| ExecError::Plan(format!("no node {}", l.node)))?;
        self.gpu.select(l.stream).map_err(device_err("select"))?;
        let mut inputs = Vec::with_capacity(l.inputs.len());
        let mut state = Vec::new();
        for op in &l.inputs {
            let t = self.tensor(l, op)?;
            if matches!(op, Operand::StateInPlace(_)) {
                state.extend(t);
                inputs.push(None);
            } else {
                inputs.push(t);
            }
        }
        let mut outputs: Vec<DeviceTensor> = (node.outputs.iter())
            .zip(&l.outputs)
            .map(|(spec, r)| self.at(spec, r))
            .collect();
        let refs: Vec<Option<&DeviceTensor>> = inputs.iter().map(Option::as_ref).collect();
        let cx = CudaCx {
            exec: ExecCx::for_node(self.seed, self.iteration, &node.name.value),
            dev: self.gpu,
        };
        let result = if state.is_empty() {
            node.op.cuda(&cx, &refs, &mut outputs)
        } else {
            node.op.cuda_in_place(&cx, &refs, &mut state, &mut outputs)
        };
        result.map_err(|source| ExecError::Node {
            node: node.name.value.clone(),
            op: node.op.name(),
            source,
        })
    }

    fn record(&mut self, stream: usize, event: usize) -> Result<(), ExecError> {
        let (Some(e), Some(s)) = (self.events.get(event), self.gpu.stream_at(stream)) else {
            return Err(ExecError::Plan(format!(
                "record e{event} on stream {stream}"
            )));
        };
        e.record(s)
            .map_err(|err| ExecError::Device(format!("cuEventRecord: {err:?}")))
    }

    fn wait(&mut self, stream: usize, event: usize) -> Result<(), ExecError> {
        let (Some(e), Some(s)) = (self.events.get(event), self.gpu.stream_at(stream)) else {
            return Err(ExecError::Plan(format!("wait e{event} on stream {stream}")));
        };
        s.wait(e)
            .map_err(|err| ExecError::Device(format!("cuStreamWaitEvent: {err:?}")))
    }

    fn free(&mut self, _stream: usize, _region: Region) -> Result<(), ExecError> {
        Ok(())
    }

    /// Waits for every stream, then copies the operand's device memory to the host (`--validate-cpu`).
    fn read_back(&mut self, operand: &Operand, spec: &TensorSpec) -> Result<Tensor, ExecError> {
        self.synchronize()?;
        let at = match operand {
            Operand::Absent => None,
            Operand::Batch(f) => self.batch.get(f.as_str()).map(|(_, p)| *p),
            Operand::State(f) | Operand::StateInPlace(f) => {
                self.state.get(f.as_str()).map(|(_, p)| *p)
            }
            Operand::Value { region, .. } => Some(self.at(spec, region).ptr),
        };
        let at =
            at.ok_or_else(|| ExecError::Plan(format!("nothing to read back for {operand:?}")))?;
        download(self.gpu, spec, at)
    }

    fn synchronize(&mut self) -> Result<(), ExecError> {
        self.gpu.synchronize().map_err(device_err("synchronize"))
    }
}
