//! The op graph as data, and the vocabulary every node speaks: [`ValueRef`] (where a value
//! comes from: a batch field, a state tensor or a node's output), [`IrNode`] and [`Graph`] (the
//! validated DAG in topological order, with the state its models declared: [`StateDecl`]),
//! [`Env`] (what a graph may read besides node outputs), and the object-safe [`OpNode`] with
//! the types its methods take ([`Port`], [`Access`], [`ExecCx`], [`OpError`], [`Vjp`]).
//!
//! This is the bottom of the engine above `spec` and `tensor`: the typed [`crate::op::Op`]
//! trait, models, the registry, the IR builder, autodiff, the planner and the executors all
//! read and write these types, and this file imports none of them.
//!
//! Not here: building a graph from a spec (`ir.rs`), differentiating it (`autodiff.rs`).

use crate::spec::{GraphError, Sp};
use crate::tensor::{Tensor, TensorSpec};
use flowseg_kernels::philox::Philox;
use flowseg_kernels::KernelError;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// A named input or output of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    /// Name used in YAML (`node.port`, `inputs: { port: ... }`).
    pub name: &'static str,
    /// An optional input may be left unconnected.
    pub optional: bool,
    /// One line for `flowseg ops`: what flows here, with its shape letters.
    pub doc: &'static str,
}

impl Port {
    /// A required port.
    pub const fn req(name: &'static str, doc: &'static str) -> Self {
        Port {
            name,
            optional: false,
            doc,
        }
    }
    /// An optional input.
    pub const fn opt(name: &'static str, doc: &'static str) -> Self {
        Port {
            name,
            optional: true,
            doc,
        }
    }
}

/// Persistent state a node reads or writes (`student.params`, `teacher.bn_stats`, ...). Two
/// nodes that conflict on state must be ordered by the graph, or the plan is rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// State read.
    pub reads: Vec<String>,
    /// State written.
    pub writes: Vec<String>,
}

/// Why an op failed at run time.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A kernel refused its arguments.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// An input is missing or of the wrong dtype (a planner bug if inference passed).
    #[error("input `{port}`: {problem}")]
    Input {
        /// Port name.
        port: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// An output buffer is missing or of the wrong dtype (an executor bug).
    #[error("output `{port}`: {problem}")]
    Output {
        /// Port name.
        port: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The op has no CUDA twin (`Op::has_cuda` is false), or a launch failed on the device.
    #[error("cuda: {0}")]
    Cuda(String),
}

/// Per-node run-time context on a CUDA device (feature `cuda`): the node's [`ExecCx`] and the
/// device, whose current stream is the node's.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, Copy)]
pub struct CudaCx<'a> {
    /// Seed, iteration and the node's random-stream key, as on the CPU.
    pub exec: ExecCx,
    /// The device; launchers enqueue on its current stream.
    pub dev: &'a flowseg_kernels::cuda::Device,
}

#[cfg(feature = "cuda")]
impl From<flowseg_kernels::cuda::CudaError> for OpError {
    fn from(e: flowseg_kernels::cuda::CudaError) -> Self {
        OpError::Cuda(e.to_string())
    }
}

/// Per-node run-time context.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecCx {
    /// The run's seed.
    pub seed: u64,
    /// Current iteration.
    pub iteration: u64,
    /// The node's random-stream key: [`node_key`] of its name, so the randomness of a node
    /// depends on its name only — adding, removing or reordering other nodes leaves it as it was.
    pub node_key: u64,
}

impl ExecCx {
    /// The context of the node named `name` at `iteration` of a run seeded with `seed`.
    pub fn for_node(seed: u64, iteration: u64, name: &str) -> Self {
        ExecCx {
            seed,
            iteration,
            node_key: node_key(name),
        }
    }

    /// The node's random stream this iteration: Philox keyed by the seed, stream
    /// `node_key ⊕ iteration` — identical on every device and independent of execution order.
    /// Two (node, iteration) pairs share a stream only if their name hashes differ in nothing
    /// but the iteration bits (about 2^-43 per pair of nodes over a million iterations).
    pub fn rng(&self) -> Philox {
        Philox::new(self.seed, self.node_key ^ self.iteration)
    }
}

/// The random-stream key of a node: the 64-bit FNV-1a hash of its name's UTF-8 bytes (written
/// out here rather than taken from a hashing crate, because it keys every random draw of a run:
/// it must never change with a dependency's version or the platform).
pub const fn node_key(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// A configured op instance (params decoded), as the IR, planner and executors see it.
pub trait OpNode: Send + Sync + fmt::Debug {
    /// The op's name.
    fn name(&self) -> &'static str;
    /// See [`Op::infer`].
    fn infer(&self, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String>;
    /// See [`Op::access`].
    fn access(&self) -> Access;
    /// See [`Op::STOP_GRAD`].
    fn stop_grad(&self) -> bool;
    /// See [`Op::vjp`].
    fn vjp(&self, g: &mut Vjp<'_>) -> Option<Result<(), String>>;
    /// See [`Op::cpu`].
    fn cpu(
        &self,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError>;
    /// See [`Op::IN_PLACE`]: the indices of the input ports updated in place, in that order.
    fn in_place(&self) -> Vec<usize> {
        Vec::new()
    }
    /// See [`Op::cpu_in_place`].
    fn cpu_in_place(
        &self,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let _ = (cx, inputs, state, outputs);
        Err(OpError::Input {
            port: self.name(),
            problem: "the op updates no state in place".into(),
        })
    }
    /// See [`Op::has_cuda`].
    fn has_cuda(&self) -> bool {
        false
    }
    /// See [`Op::cuda`].
    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        cx: &CudaCx<'_>,
        inputs: &[Option<&crate::tensor::DeviceTensor>],
        outputs: &mut [crate::tensor::DeviceTensor],
    ) -> Result<(), OpError> {
        let _ = (cx, inputs, outputs);
        Err(OpError::Cuda(format!("`{}` has no CUDA twin", self.name())))
    }
    /// See [`Op::cuda_in_place`].
    #[cfg(feature = "cuda")]
    fn cuda_in_place(
        &self,
        cx: &CudaCx<'_>,
        inputs: &[Option<&crate::tensor::DeviceTensor>],
        state: &mut [crate::tensor::DeviceTensor],
        outputs: &mut [crate::tensor::DeviceTensor],
    ) -> Result<(), OpError> {
        let _ = (cx, inputs, state, outputs);
        Err(OpError::Cuda(format!("`{}` has no CUDA twin", self.name())))
    }
    /// See [`Op::fuse_consumer`]: the fused node, configured.
    fn fuse_consumer(&self, port: usize, consumer: &dyn OpNode) -> Option<Arc<dyn OpNode>>;
    /// See [`Op::fuse_producer`]: the fused node, configured, and the producer's input ports'
    /// places on it.
    fn fuse_producer(
        &self,
        port: usize,
        producer: &dyn OpNode,
    ) -> Option<(Arc<dyn OpNode>, Vec<usize>)>;
    /// The configured node as `Any`, for [`crate::op::params_of`].
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ValueRef {
    /// A field of the data batch (`batch.image`).
    Batch(String),
    /// A persistent tensor (`state.student.conv1.weight`): model parameters and buffers, which
    /// outlive an iteration and are what optimizers update.
    State(String),
    /// Output `port` of node `node` (index into [`Graph::nodes`]).
    Node {
        /// Producer index.
        node: usize,
        /// Output index of the producer.
        port: usize,
    },
}

/// What a graph can read besides node outputs: the data batch's fields and the persistent state,
/// each with its spec.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// Batch fields (`batch.<field>`).
    pub batch: BTreeMap<String, TensorSpec>,
    /// Persistent tensors (`state.<name>`).
    pub state: BTreeMap<String, TensorSpec>,
    /// Batch fields a graph may read for diagnostics only (`metrics:`), never on the way to a
    /// loss an optimizer minimizes: the ground truth of unlabeled images
    /// ([`crate::data::Dataset::hidden_fields`]). The trainer enforces it (FS0111).
    pub hidden: BTreeSet<String>,
}

/// A validated node.
#[derive(Debug, Clone)]
pub struct IrNode {
    /// Name, with its location.
    pub name: Sp<String>,
    /// The configured op.
    pub op: Arc<dyn OpNode>,
    /// One entry per op input port, in the op's order; `None` = optional and unconnected.
    pub inputs: Vec<Option<ValueRef>>,
    /// Inferred output specs, in the op's output order.
    pub outputs: Vec<TensorSpec>,
    /// Nodes that must run first without a data edge (`after:`).
    pub after: Vec<usize>,
    /// Stream pin, if any.
    pub stream: Option<String>,
}

/// The validated op graph, nodes in a topological order (file order where free).
#[derive(Debug, Clone)]
pub struct Graph {
    /// Nodes; every `ValueRef::Node` and `after` index points to an earlier node.
    pub nodes: Vec<IrNode>,
    /// Batch fields the graph reads, with their specs.
    pub batch: BTreeMap<String, TensorSpec>,
    /// Persistent tensors the graph reads, with their specs.
    pub state: BTreeMap<String, TensorSpec>,
    /// State declared by the models (parameters and buffers), with initialisers.
    pub params: BTreeMap<String, StateDecl>,
    /// Buffers written at the end of an iteration: (value, state name), in order.
    pub assigns: Vec<(ValueRef, String)>,
    /// The value of every output a graph file can name, `<node>.<port>` → value: op nodes'
    /// outputs and the outputs of `forward` and `grad` composites (which became other nodes).
    pub outputs: BTreeMap<String, ValueRef>,
    /// Non-fatal findings (unused outputs).
    pub warnings: Vec<GraphError>,
}

impl Graph {
    /// The spec of a source.
    pub fn spec_of(&self, s: &ValueRef) -> Option<&TensorSpec> {
        match s {
            ValueRef::Batch(f) => self.batch.get(f),
            ValueRef::State(f) => self.state.get(f),
            ValueRef::Node { node, port } => self.nodes.get(*node)?.outputs.get(*port),
        }
    }
}

impl Graph {
    /// Appends a node running `op` on `inputs` (specs inferred from the graph's values) and
    /// returns its outputs.
    pub fn push_node(
        &mut self,
        name: String,
        op: Arc<dyn OpNode>,
        inputs: Vec<Option<ValueRef>>,
    ) -> Result<Vec<ValueRef>, String> {
        let specs: Vec<Option<TensorSpec>> = inputs
            .iter()
            .map(|s| s.as_ref().and_then(|s| self.spec_of(s).cloned()))
            .collect();
        let refs: Vec<Option<&TensorSpec>> = specs.iter().map(Option::as_ref).collect();
        let outputs = op.infer(&refs).map_err(|e| format!("node `{name}`: {e}"))?;
        let index = self.nodes.len();
        let n = outputs.len();
        self.nodes.push(IrNode {
            name: Sp::detached(name),
            op,
            inputs,
            outputs,
            after: Vec::new(),
            stream: None,
        });
        Ok((0..n)
            .map(|port| ValueRef::Node { node: index, port })
            .collect())
    }
}

/// How a state tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros (biases, BN β and running mean).
    Zeros,
    /// All ones (BN γ and running variance).
    Ones,
    /// He normal, N(0, 2/fan_in) (conv weights followed by relu).
    KaimingNormal {
        /// Inputs per output: Ci/groups · kh · kw.
        fan_in: usize,
    },
    /// Uniform in [−bound, bound].
    Uniform {
        /// Half-width.
        bound: f32,
    },
}

impl Init {
    /// The initial tensor, drawn from Philox stream `stream` of `seed`.
    pub fn tensor(&self, spec: &TensorSpec, seed: u64, stream: u64) -> Tensor {
        let mut t = Tensor::zeros(spec);
        if let Some(v) = t.f32_mut() {
            let g = Philox::new(seed, stream);
            match *self {
                Init::Zeros => {}
                Init::Ones => v.fill(1.0),
                Init::KaimingNormal { fan_in } => {
                    g.fill_normal(0, 0.0, (2.0 / fan_in.max(1) as f32).sqrt(), v)
                }
                Init::Uniform { bound } => {
                    g.fill_uniform(0, v);
                    v.iter_mut().for_each(|x| *x = (2.0 * *x - 1.0) * bound);
                }
            }
        }
        t
    }
}

/// A state tensor a model declared.
#[derive(Debug, Clone, PartialEq)]
pub struct StateDecl {
    /// Its spec.
    pub spec: TensorSpec,
    /// How it starts.
    pub init: Init,
    /// Parameters are trained by the model's optimizer; buffers (BN running statistics) are
    /// only assigned.
    pub trainable: bool,
}

/// The builder an op's VJP rule talks to: the forward node's values, the gradients of its
/// outputs, and a way to emit backward nodes and set input gradients.
pub struct Vjp<'a> {
    pub(crate) graph: &'a mut Graph,
    pub(crate) node: usize,
    pub(crate) inputs: Vec<Option<ValueRef>>,
    pub(crate) grad_outputs: Vec<Option<ValueRef>>,
    pub(crate) needs: Vec<bool>,
    pub(crate) grads: Vec<Option<ValueRef>>,
}

impl Vjp<'_> {
    /// Forward input `i` (`None` when an optional input is unconnected).
    pub fn input(&self, i: usize) -> Option<ValueRef> {
        self.inputs.get(i).cloned().flatten()
    }

    /// Forward output `k`.
    pub fn output(&self, k: usize) -> ValueRef {
        ValueRef::Node {
            node: self.node,
            port: k,
        }
    }

    /// The gradient flowing into output `k`, `None` when nothing downstream needs it.
    pub fn grad_output(&self, k: usize) -> Option<ValueRef> {
        self.grad_outputs.get(k).cloned().flatten()
    }

    /// Whether input `i` needs a gradient (it depends on trainable state and is f32).
    pub fn needs_grad(&self, i: usize) -> bool {
        self.needs.get(i).copied().unwrap_or(false)
    }

    /// The spec of a value.
    pub fn spec(&self, s: &ValueRef) -> Option<&TensorSpec> {
        self.graph.spec_of(s)
    }

    /// Sets the gradient of input `i`.
    pub fn set_grad(&mut self, i: usize, g: ValueRef) {
        if let Some(slot) = self.grads.get_mut(i) {
            *slot = Some(g);
        }
    }

    /// Appends `op` on `inputs` as a backward node named after the forward node
    /// (`<forward>/grad/<op>`) and returns its outputs; [`Vjp::emit`] is the typed form.
    pub fn emit_node(
        &mut self,
        op: Arc<dyn OpNode>,
        inputs: Vec<Option<ValueRef>>,
    ) -> Result<Vec<ValueRef>, String> {
        let fwd = &self.graph.nodes[self.node].name.value;
        let name = format!("{fwd}/grad/{}", op.name());
        self.graph.push_node(name, op, inputs)
    }
}
