//! The `Op` trait: everything the engine knows about one kind of node — name, ports, typed
//! params, shape inference, declared state access, and the CPU reference. An op is one file in
//! `flowseg-ops` implementing [`Op`] plus one registration line; the engine only ever sees the
//! object-safe views [`DynOp`] (the registry entry) and [`OpNode`] (a configured instance).
//!
//! Differentiation: an op either emits its vector-Jacobian product as graph nodes ([`Op::vjp`],
//! through a [`Vjp`] builder — backward runs through the same planner as forward), or declares
//! itself a stop-gradient ([`Op::STOP_GRAD`]: argmax, confidences, `detach`), or neither, in which
//! case autodiff refuses a gradient that would have to flow through it.
//!
//! This file is an op author's whole API: it re-exports the graph vocabulary an op touches
//! ([`Port`], [`Access`], [`ExecCx`], [`OpError`], [`Vjp`], [`OpNode`], defined one level
//! down in `graph.rs`). It also holds [`StopGradient`], the engine's own identity op that
//! models and the `grad` composite insert.
//!
//! The CUDA dispatch sits beside the CPU reference: [`Op::has_cuda`] says an op has a twin, and
//! (feature `cuda`) [`Op::cuda`] / [`Op::cuda_in_place`] launch it on device tensors; both
//! default to "no twin", so an op without one still compiles and runs on the CPU.

#[cfg(feature = "cuda")]
pub use crate::graph::CudaCx;
pub use crate::graph::{Access, ExecCx, OpError, OpNode, Port, ValueRef, Vjp};
use crate::spec::{from_node, DeError, Node, Value};
#[cfg(feature = "cuda")]
pub use crate::tensor::DeviceTensor;
use crate::tensor::{Tensor, TensorSpec};
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// How a gradient case feeds one input port of the op under test.
#[derive(Debug, Clone, Copy)]
pub enum Feed {
    /// A trainable state tensor `state.<port>`, uniform in [−1, 1).
    Trainable(&'static [usize]),
    /// As `Trainable`, but |x| ∈ [0.1, 1.1): for kinked ops, so x ± eps stays on one side.
    TrainableOffZero(&'static [usize]),
    /// As `Trainable`, but a random permutation of values 0.05 apart (centred on 0): for
    /// selecting ops (max pooling), so x ± eps never changes which element wins.
    TrainableDistinct(&'static [usize]),
    /// A constant f32 batch field `batch.<port>`, uniform in [0.1, 1) (weights, frozen inputs).
    Constant(&'static [usize]),
    /// An i32 batch field `batch.<port>` of labels in [0, 3) (K = 3), every 9th one 255.
    Labels(&'static [usize]),
    /// A constant f32 batch field of random 0s and 1s (a mix mask).
    Binary(&'static [usize]),
    /// An i32 batch field holding exactly these values (mix partners).
    Indices(&'static [i32]),
}

/// One graph of the gradient suite: the op with `params` (a YAML mapping), each listed input
/// port fed as its [`Feed`] says; ports not listed stay unconnected.
#[derive(Debug, Clone, Copy)]
pub struct GradCase {
    /// The node's params, e.g. `"{ stride: 2, padding: 1 }"`.
    pub params: &'static str,
    /// (input port, feed).
    pub feeds: &'static [(&'static str, Feed)],
}

/// One kind of op. Implemented once per file in `flowseg-ops`.
pub trait Op: Send + Sync + 'static {
    /// YAML name (`relu`, `conv2d`, `cross_entropy`); also the file name.
    const NAME: &'static str;
    /// One line for `flowseg ops`.
    const SUMMARY: &'static str;
    /// Inputs, in order.
    const INPUTS: &'static [Port];
    /// Outputs, in order.
    const OUTPUTS: &'static [Port];
    /// A YAML node that uses the op; the registry tests decode it, `flowseg ops` prints it.
    const EXAMPLE: &'static str;
    /// Graphs on which the gradient suite (`ops/tests/gradients.rs`) checks the op: its
    /// backward against finite differences, or, for a stop-gradient, that no gradient passes.
    /// Every built-in op needs at least one; add more where params change the code path.
    const GRAD_CASES: &'static [GradCase] = &[];
    /// Params as written under `params:` (use `deny_unknown_fields`; document every field).
    type Params: DeserializeOwned + fmt::Debug + Clone + Send + Sync + 'static;

    /// Output specs from input specs (`None` for an unconnected optional input); an `Err`
    /// explains the mismatch in words ("`x` must be f32[N,C,H,W], got i32[4]").
    fn infer(p: &Self::Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String>;

    /// True for ops whose outputs carry no gradient by definition (pseudo-labels, confidences,
    /// `detach`): autodiff stops there instead of asking for a [`Op::vjp`].
    const STOP_GRAD: bool = false;

    /// State read and written. Most ops touch none.
    fn access(_p: &Self::Params) -> Access {
        Access::default()
    }

    /// Emits the backward pass of this node into the graph: read the forward values and the
    /// output gradients from `g`, emit backward nodes with [`Vjp::emit`], and set the gradient of
    /// each input that [`Vjp::needs_grad`]. `None` (the default): not differentiable.
    fn vjp(_p: &Self::Params, _g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        None
    }

    /// Fusion (the planner's pass, engine/src/fusion.rs; `--no-fuse` skips it): a node of this op
    /// can also compute `consumer`, an op whose only input is this node's output `port` and
    /// whose one output has that output's spec (an element-wise epilogue: `batch_norm` takes a
    /// following `relu`). Returns the fused node's params; its output `port` then holds what the
    /// consumer computed. The fused node must give the same values, bit for bit or within a
    /// tolerance its op file states. `None` (the default): this op fuses nothing after it.
    fn fuse_consumer(
        _p: &Self::Params,
        _port: usize,
        _consumer: &dyn OpNode,
    ) -> Option<Self::Params> {
        None
    }

    /// Fusion: a node of this op can absorb `producer`, a single-output op whose output feeds
    /// this node's input `port` and nothing else (a prologue: `batch_norm_bwd` takes the
    /// `relu_bwd` in front of its `dy`). Returns the fused node's params and, for each input of
    /// the producer in order, the input port of this op that takes it: `port` itself, or an
    /// optional port that is unconnected (the pass checks). `None` (the default): no fusion.
    fn fuse_producer(
        _p: &Self::Params,
        _port: usize,
        _producer: &dyn OpNode,
    ) -> Option<(Self::Params, Vec<usize>)> {
        None
    }

    /// Input ports this op updates in place: each must be connected to a `state.` tensor, which
    /// the node changes (an optimizer's parameter and moments, an EMA teacher). The planner
    /// orders the node after every earlier reader or writer of that state and before every
    /// later one (graph order is the meaning: a node above it sees the old value, a node below
    /// it the new one), and the executors call [`Op::cpu_in_place`] instead of [`Op::cpu`].
    /// Empty (the default): the op only reads its inputs.
    const IN_PLACE: &'static [&'static str] = &[];

    /// The CPU reference of an op with [`Op::IN_PLACE`] ports: `inputs` holds the other inputs
    /// (the in-place ports are `None` there), `state` the in-place ports' tensors in the order of
    /// `IN_PLACE`, to update; `outputs` as for [`Op::cpu`]. The default refuses: an op that
    /// declares in-place ports implements it.
    fn cpu_in_place(
        _p: &Self::Params,
        _cx: &ExecCx,
        _inputs: &[Option<&Tensor>],
        _state: &mut [&mut Tensor],
        _outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        Err(OpError::Input {
            port: Self::NAME,
            problem: "the op updates no state in place (no `cpu_in_place`)".into(),
        })
    }

    /// Whether [`Op::cuda`] (or [`Op::cuda_in_place`]) is implemented for these params: the
    /// CUDA executor refuses a graph with a node whose op says no, naming them all before
    /// anything runs. Params matter where one mode has a twin and another not yet.
    fn has_cuda(_p: &Self::Params) -> bool {
        false
    }

    /// The CUDA twin of [`Op::cpu`] (feature `cuda`): the same contract on [`DeviceTensor`]s —
    /// write every element of every output, read none first — enqueued on `cx.dev`'s current
    /// stream without waiting. The same values as `cpu`, bit for bit where its kernels say so,
    /// else within their stated tolerance.
    #[cfg(feature = "cuda")]
    fn cuda(
        _p: &Self::Params,
        _cx: &CudaCx<'_>,
        _inputs: &[Option<&DeviceTensor>],
        _outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        Err(OpError::Cuda(format!("`{}` has no CUDA twin", Self::NAME)))
    }

    /// The CUDA twin of [`Op::cpu_in_place`]: `state` holds the in-place ports' device tensors.
    #[cfg(feature = "cuda")]
    fn cuda_in_place(
        _p: &Self::Params,
        _cx: &CudaCx<'_>,
        _inputs: &[Option<&DeviceTensor>],
        _state: &mut [DeviceTensor],
        _outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        Err(OpError::Cuda(format!("`{}` has no CUDA twin", Self::NAME)))
    }

    /// The CPU reference: fill `outputs` (allocated from `infer`) from `inputs`.
    ///
    /// Contract: write every element of every output, and never read an output before writing
    /// it. Output buffers arrive with arbitrary contents — the plan executor reuses a buffer
    /// across values and steps without clearing it — so an op that accumulates (`+=`) must
    /// initialise its output first. The executor's interleaving simulator hands ops poisoned
    /// outputs to catch a breach (ops/tests/gradients.rs and ops/tests/shipped_graphs.rs run
    /// every built-in op through it).
    fn cpu(
        p: &Self::Params,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError>;
}

/// The registry's view of an op kind (object-safe).
pub trait DynOp: Send + Sync {
    /// YAML name.
    fn name(&self) -> &'static str;
    /// One line.
    fn summary(&self) -> &'static str;
    /// Inputs.
    fn inputs(&self) -> &'static [Port];
    /// Outputs.
    fn outputs(&self) -> &'static [Port];
    /// Example YAML node.
    fn example(&self) -> &'static str;
    /// See [`Op::GRAD_CASES`].
    fn grad_cases(&self) -> &'static [GradCase];
    /// Decodes `params` (absent = an empty mapping) into a configured node; errors carry the
    /// line:column of the offending key or value.
    fn configure(&self, params: Option<&Node>) -> Result<Arc<dyn OpNode>, DeError>;
}

/// Adapts an [`Op`] type to [`DynOp`].
pub(crate) struct Entry<O>(pub(crate) PhantomData<O>);

impl<O: Op> DynOp for Entry<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }
    fn summary(&self) -> &'static str {
        O::SUMMARY
    }
    fn inputs(&self) -> &'static [Port] {
        O::INPUTS
    }
    fn outputs(&self) -> &'static [Port] {
        O::OUTPUTS
    }
    fn example(&self) -> &'static str {
        O::EXAMPLE
    }
    fn grad_cases(&self) -> &'static [GradCase] {
        O::GRAD_CASES
    }
    fn configure(&self, params: Option<&Node>) -> Result<Arc<dyn OpNode>, DeError> {
        let params: O::Params = match params {
            Some(n) if n.value != Value::Null => from_node(n)?,
            // No params: decode an empty mapping, so required fields are reported as missing.
            other => {
                let mut empty = Node::detached(Value::Map(Vec::new()));
                if let Some(n) = other {
                    empty.loc = n.loc;
                }
                from_node(&empty)?
            }
        };
        Ok(Arc::new(Configured::<O> { params }))
    }
}

/// An [`Op`] with decoded params: what [`DynOp::configure`] and [`Vjp::emit`] create.
pub(crate) struct Configured<O: Op> {
    pub(crate) params: O::Params,
}

impl<O: Op> fmt::Debug for Configured<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?})", O::NAME, self.params)
    }
}

impl<O: Op> OpNode for Configured<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }
    fn infer(&self, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        O::infer(&self.params, inputs)
    }
    fn access(&self) -> Access {
        O::access(&self.params)
    }
    fn stop_grad(&self) -> bool {
        O::STOP_GRAD
    }
    fn vjp(&self, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        O::vjp(&self.params, g)
    }
    fn cpu(
        &self,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        O::cpu(&self.params, cx, inputs, outputs)
    }
    fn in_place(&self) -> Vec<usize> {
        (O::IN_PLACE.iter())
            .filter_map(|name| O::INPUTS.iter().position(|p| p.name == *name))
            .collect()
    }
    fn cpu_in_place(
        &self,
        cx: &ExecCx,
        inputs: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        O::cpu_in_place(&self.params, cx, inputs, state, outputs)
    }
    fn has_cuda(&self) -> bool {
        O::has_cuda(&self.params)
    }
    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        O::cuda(&self.params, cx, inputs, outputs)
    }
    #[cfg(feature = "cuda")]
    fn cuda_in_place(
        &self,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        state: &mut [DeviceTensor],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        O::cuda_in_place(&self.params, cx, inputs, state, outputs)
    }
    fn fuse_consumer(&self, port: usize, consumer: &dyn OpNode) -> Option<Arc<dyn OpNode>> {
        let params = O::fuse_consumer(&self.params, port, consumer)?;
        Some(Arc::new(Configured::<O> { params }))
    }
    fn fuse_producer(
        &self,
        port: usize,
        producer: &dyn OpNode,
    ) -> Option<(Arc<dyn OpNode>, Vec<usize>)> {
        let (params, ports) = O::fuse_producer(&self.params, port, producer)?;
        Some((Arc::new(Configured::<O> { params }), ports))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The params of `node` if it is a node of op `O` (a fusion hook reading its neighbour's
/// configuration), else `None`.
pub fn params_of<O: Op>(node: &dyn OpNode) -> Option<&O::Params> {
    node.as_any()
        .downcast_ref::<Configured<O>>()
        .map(|c| &c.params)
}

/// True if `node` is a node of op `O`.
pub fn is<O: Op>(node: &dyn OpNode) -> bool {
    params_of::<O>(node).is_some()
}

/// Params of an op that takes none (`params:` absent or `{}`; any key is an error).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl Vjp<'_> {
    /// Appends a node running op `O` with `params` on `inputs` (one per port of `O`) and
    /// returns its outputs. The op need not be registered: backward ops live in their forward
    /// op's file.
    pub fn emit<O: Op>(
        &mut self,
        params: O::Params,
        inputs: Vec<Option<ValueRef>>,
    ) -> Result<Vec<ValueRef>, String> {
        self.emit_node(Arc::new(Configured::<O> { params }), inputs)
    }
}

/// An identity that carries no gradient: the value of a `grad` node (the gradient is data for
/// whatever uses it; no second-order terms).
pub struct StopGradient;

impl Op for StopGradient {
    const NAME: &'static str = "stop_gradient";
    const SUMMARY: &'static str = "y = x, no gradient through it";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str = "";
    const STOP_GRAD: bool = true;
    type Params = NoParams;
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, ins, 0)?;
        io::f32_out(Self::OUTPUTS, out, 0)?.copy_from_slice(x);
        Ok(())
    }
    fn has_cuda(_: &NoParams) -> bool {
        true
    }
    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        ins: &[Option<&DeviceTensor>],
        out: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, ins, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, out, 0)?;
        Ok(cx.dev.copy(&x, &mut y)?)
    }
}

/// Helpers for `infer` and `cpu` implementations: fetch an input or output by position, checked,
/// with messages that name the port. Messages read "`port` must be ..., got ...".
pub mod io {
    use super::{OpError, Port};
    use crate::tensor::{DType, Tensor, TensorSpec};
    use flowseg_kernels::Nchw;

    fn port_name(ports: &[Port], i: usize) -> &'static str {
        ports.get(i).map_or("?", |p| p.name)
    }

    /// Input spec `i`, required, any dtype and shape.
    pub fn spec<'a>(
        ports: &[Port],
        inputs: &[Option<&'a TensorSpec>],
        i: usize,
    ) -> Result<&'a TensorSpec, String> {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("`{}` is required", port_name(ports, i)))
    }

    /// Input spec `i`, required, an f32 scalar (`f32[]`: a loss backward's `dloss`).
    pub fn scalar_spec<'a>(
        ports: &[Port],
        inputs: &[Option<&'a TensorSpec>],
        i: usize,
    ) -> Result<&'a TensorSpec, String> {
        let s = spec(ports, inputs, i)?;
        if *s != TensorSpec::scalar() {
            return Err(format!("`{}` must be f32[], got {s}", port_name(ports, i)));
        }
        Ok(s)
    }

    /// Input spec `i`, required, f32 of any shape.
    pub fn f32_spec<'a>(
        ports: &[Port],
        inputs: &[Option<&'a TensorSpec>],
        i: usize,
    ) -> Result<&'a TensorSpec, String> {
        let s = spec(ports, inputs, i)?;
        match s.dtype {
            DType::F32 => Ok(s),
            DType::I32 => Err(format!("`{}` must be f32, got {s}", port_name(ports, i))),
        }
    }

    /// Input spec `i` as f32 NCHW.
    pub fn nchw_f32(
        ports: &[Port],
        inputs: &[Option<&TensorSpec>],
        i: usize,
    ) -> Result<Nchw, String> {
        let s = spec(ports, inputs, i)?;
        match (s.dtype, s.as_nchw()) {
            (DType::F32, Some(n)) => Ok(n),
            _ => Err(format!(
                "`{}` must be f32[N, C, H, W], got {s}",
                port_name(ports, i)
            )),
        }
    }

    fn tensor<'a>(
        ports: &[Port],
        inputs: &[Option<&'a Tensor>],
        i: usize,
    ) -> Result<&'a Tensor, OpError> {
        inputs.get(i).copied().flatten().ok_or(OpError::Input {
            port: port_name(ports, i),
            problem: "not connected".into(),
        })
    }

    /// The NCHW shape of run-time input `i`.
    pub fn nchw(ports: &[Port], inputs: &[Option<&Tensor>], i: usize) -> Result<Nchw, OpError> {
        let t = tensor(ports, inputs, i)?;
        t.spec().as_nchw().ok_or_else(|| OpError::Input {
            port: port_name(ports, i),
            problem: format!("expected rank 4 [N, C, H, W], got {}", t.spec()),
        })
    }

    /// The f32 data of input `i`.
    pub fn f32<'a>(
        ports: &[Port],
        inputs: &[Option<&'a Tensor>],
        i: usize,
    ) -> Result<&'a [f32], OpError> {
        let t = tensor(ports, inputs, i)?;
        t.f32().ok_or(OpError::Input {
            port: port_name(ports, i),
            problem: format!("expected f32, got {}", t.spec()),
        })
    }

    /// The f32 data of optional input `i`, `None` when unconnected.
    pub fn f32_opt<'a>(
        ports: &[Port],
        inputs: &[Option<&'a Tensor>],
        i: usize,
    ) -> Result<Option<&'a [f32]>, OpError> {
        match inputs.get(i).copied().flatten() {
            Some(_) => f32(ports, inputs, i).map(Some),
            None => Ok(None),
        }
    }

    /// The i32 data of input `i`.
    pub fn i32<'a>(
        ports: &[Port],
        inputs: &[Option<&'a Tensor>],
        i: usize,
    ) -> Result<&'a [i32], OpError> {
        let t = tensor(ports, inputs, i)?;
        t.i32().ok_or(OpError::Input {
            port: port_name(ports, i),
            problem: format!("expected i32, got {}", t.spec()),
        })
    }

    /// The f32 data of output `i`, mutably.
    pub fn f32_out<'a>(
        ports: &[Port],
        outputs: &'a mut [Tensor],
        i: usize,
    ) -> Result<&'a mut [f32], OpError> {
        outputs
            .get_mut(i)
            .and_then(Tensor::f32_mut)
            .ok_or(OpError::Output {
                port: port_name(ports, i),
                problem: "missing or not f32".into(),
            })
    }

    /// The i32 data of output `i`, mutably.
    pub fn i32_out<'a>(
        ports: &[Port],
        outputs: &'a mut [Tensor],
        i: usize,
    ) -> Result<&'a mut [i32], OpError> {
        outputs
            .get_mut(i)
            .and_then(Tensor::i32_mut)
            .ok_or(OpError::Output {
                port: port_name(ports, i),
                problem: "missing or not i32".into(),
            })
    }
}

/// [`io`]'s twins for [`Op::cuda`] (feature `cuda`): an input or output device tensor by
/// position, checked, as the launchers take it ([`flowseg_kernels::cuda::RawBuf`]).
#[cfg(feature = "cuda")]
pub mod dev_io {
    use super::{OpError, Port};
    use crate::tensor::DeviceTensor;
    use flowseg_kernels::cuda::{DeviceBuf, DeviceBufMut, RawBuf};
    use flowseg_kernels::Nchw;

    fn port_name(ports: &[Port], i: usize) -> &'static str {
        ports.get(i).map_or("?", |p| p.name)
    }

    fn tensor<'a>(
        ports: &[Port],
        inputs: &[Option<&'a DeviceTensor>],
        i: usize,
    ) -> Result<&'a DeviceTensor, OpError> {
        inputs.get(i).copied().flatten().ok_or(OpError::Input {
            port: port_name(ports, i),
            problem: "not connected".into(),
        })
    }

    /// The NCHW shape of input `i`.
    pub fn nchw(
        ports: &[Port],
        inputs: &[Option<&DeviceTensor>],
        i: usize,
    ) -> Result<Nchw, OpError> {
        let t = tensor(ports, inputs, i)?;
        t.spec.as_nchw().ok_or_else(|| OpError::Input {
            port: port_name(ports, i),
            problem: format!("expected rank 4 [N, C, H, W], got {}", t.spec),
        })
    }

    /// Input `i` as f32 device memory.
    pub fn f32(
        ports: &[Port],
        inputs: &[Option<&DeviceTensor>],
        i: usize,
    ) -> Result<RawBuf<f32>, OpError> {
        let t = tensor(ports, inputs, i)?;
        t.f32().ok_or(OpError::Input {
            port: port_name(ports, i),
            problem: format!("expected f32, got {}", t.spec),
        })
    }

    /// Optional input `i` as f32 device memory, `None` when unconnected.
    pub fn f32_opt(
        ports: &[Port],
        inputs: &[Option<&DeviceTensor>],
        i: usize,
    ) -> Result<Option<RawBuf<f32>>, OpError> {
        match inputs.get(i).copied().flatten() {
            Some(_) => f32(ports, inputs, i).map(Some),
            None => Ok(None),
        }
    }

    /// Input `i` as i32 device memory.
    pub fn i32(
        ports: &[Port],
        inputs: &[Option<&DeviceTensor>],
        i: usize,
    ) -> Result<RawBuf<i32>, OpError> {
        let t = tensor(ports, inputs, i)?;
        t.i32().ok_or(OpError::Input {
            port: port_name(ports, i),
            problem: format!("expected i32, got {}", t.spec),
        })
    }

    /// Output `i` as f32 device memory to write.
    pub fn f32_out(
        ports: &[Port],
        outputs: &[DeviceTensor],
        i: usize,
    ) -> Result<RawBuf<f32>, OpError> {
        outputs
            .get(i)
            .and_then(DeviceTensor::f32)
            .ok_or(OpError::Output {
                port: port_name(ports, i),
                problem: "missing or not f32".into(),
            })
    }

    /// An optional device output as a launcher takes it (`Option<&mut dyn DeviceBufMut>`): a
    /// gradient a backward op was asked for, or `None`.
    pub fn opt_out(b: &mut Option<RawBuf<f32>>) -> Option<&mut dyn DeviceBufMut<f32>> {
        b.as_mut().map(|b| b as &mut dyn DeviceBufMut<f32>)
    }

    /// Device scratch for one launch sequence (a node's intermediates): zeroed allocations
    /// that live as long as this value; their stream-ordered frees follow the launches that
    /// use them.
    pub struct Scratch<'d> {
        dev: &'d flowseg_kernels::cuda::Device,
        mem: Vec<flowseg_kernels::cuda::cudarc_driver::CudaSlice<u8>>,
    }

    impl<'d> Scratch<'d> {
        /// Scratch on `dev`'s current stream.
        pub fn new(dev: &'d flowseg_kernels::cuda::Device) -> Self {
            Scratch {
                dev,
                mem: Vec::new(),
            }
        }

        fn words<T>(&mut self, len: usize) -> Result<RawBuf<T>, OpError> {
            let mem = self.dev.alloc_bytes(4 * len)?;
            let at = DeviceBuf::<u8>::device_addr(&mem, self.dev.stream());
            self.mem.push(mem);
            // SAFETY: `mem` holds `len` four-byte words and stays in `self` while the buffer
            // is used (a `RawBuf` does not outlive the scratch in the ops that use it).
            Ok(unsafe { RawBuf::new(at, len) })
        }

        /// `len` zeroed f32.
        pub fn f32(&mut self, len: usize) -> Result<RawBuf<f32>, OpError> {
            self.words(len)
        }

        /// `len` zeroed i32.
        pub fn i32(&mut self, len: usize) -> Result<RawBuf<i32>, OpError> {
            self.words(len)
        }
    }

    /// A second view of `b`'s memory, for a launcher that reads and writes the same elements
    /// (an element-wise op in place).
    pub fn alias(b: &RawBuf<f32>) -> RawBuf<f32> {
        let (ptr, len) = (b.addr(), b.len());
        // SAFETY: the same memory `b` already views, read by element-wise kernels that write
        // each element only after reading it.
        unsafe { RawBuf::new(ptr, len) }
    }

    /// Output `i` as i32 device memory to write.
    pub fn i32_out(
        ports: &[Port],
        outputs: &[DeviceTensor],
        i: usize,
    ) -> Result<RawBuf<i32>, OpError> {
        outputs
            .get(i)
            .and_then(DeviceTensor::i32)
            .ok_or(OpError::Output {
                port: port_name(ports, i),
                problem: "missing or not i32".into(),
            })
    }
}
