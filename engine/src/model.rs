//! Models: network architectures that *trace* themselves into the op graph. A method graph's
//! `forward` node (`{ op: forward, params: { model: student }, inputs: { image: ... } }`) is a
//! composite: at build time the model's architecture emits its primitive nodes (conv2d,
//! batch_norm, relu, ...) through a [`Tracer`], declares its parameters and buffers as state
//! (`<model>.<path>`, e.g. `student.layer1.0.conv1.weight`, torchvision's names where the
//! architecture mirrors one), and returns its output ports (`logits`, `features`, ...).
//!
//! A model used by several `forward` nodes (weak and strong views) shares one set of state. An
//! `ema_of:` model reuses the architecture of its source under its own name.
//!
//! Most architectures take one input, `image`. One may declare several ([`Model::INPUTS`]: GCT's
//! flaw detector reads the image and a prediction); a `forward` node then connects each by name
//! and the whole model is traced on all of them ([`Model::trace_inputs`]). Encoder/decoder stages
//! and evaluation stay image-input only.
//!
//! Not here: the architectures themselves (`flowseg-ops`, `models/`), loading ImageNet weights
//! (checkpoint), EMA updates (an op).

pub use crate::graph::{Init, StateDecl};
use crate::graph::{IrNode, Port, ValueRef};
use crate::op::{Configured, Op, StopGradient};
use crate::spec::{from_node, DeError, Node, Sp, Value};
use crate::tensor::TensorSpec;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// The inputs of an image-input model (the default [`Model::INPUTS`]): what a `forward` node of
/// most architectures, and every evaluation, connects.
pub const IMAGE_INPUTS: &[Port] = &[Port::req("image", "f32[N, 3, H, W]")];

/// One network architecture. Implemented once per file in `flowseg-ops` (models/).
pub trait Model: Send + Sync + 'static {
    /// `arch:` name (`deeplab_lite`).
    const NAME: &'static str;
    /// One line for `flowseg ops`.
    const SUMMARY: &'static str;
    /// Input ports of a whole `forward` of this model, in order. The default is one `image`;
    /// a model with other inputs implements [`Model::trace_inputs`] and cannot be evaluated
    /// (`eval.models` refuses it: evaluation feeds images only).
    const INPUTS: &'static [Port] = IMAGE_INPUTS;
    /// Output ports of a `forward` of this model, in order.
    const OUTPUTS: &'static [Port];
    /// Architecture params (`models: { student: { arch: ..., params: {...} } }`).
    type Params: DeserializeOwned + fmt::Debug + Clone + Send + Sync + 'static;

    /// Emits the network applied to `image` (f32[N, 3, H, W]); returns one source per
    /// [`Model::OUTPUTS`] entry. A model whose [`Model::INPUTS`] are not just `image` is traced
    /// through [`Model::trace_inputs`] instead, and may answer an error here.
    fn trace(
        p: &Self::Params,
        t: &mut Tracer<'_>,
        image: ValueRef,
    ) -> Result<Vec<ValueRef>, String>;

    /// Emits the network applied to `inputs`, one source per [`Model::INPUTS`] entry in that
    /// order (the engine checked that each port is connected). The default traces an
    /// image-input model: [`Model::trace`] on the first.
    fn trace_inputs(
        p: &Self::Params,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let image = inputs.into_iter().next().ok_or("no `image` input")?;
        Self::trace(p, t, image)
    }

    /// The values an architecture split into an encoder and a decoder passes between them:
    /// the outputs of `forward` with `stage: encoder` and the inputs of `stage: decoder`, so a
    /// graph can perturb encoder features before decoding them (UniMatch's feature dropout,
    /// CCT's auxiliary decoders). Empty (the default): the model only runs whole.
    const ENCODED: &'static [Port] = &[];

    /// The encoder applied to `image`: one source per [`Model::ENCODED`] entry. The stages
    /// declare the same state names as [`Model::trace`], so the parts share the whole's
    /// parameters.
    fn trace_encoder(
        _p: &Self::Params,
        _t: &mut Tracer<'_>,
        _image: ValueRef,
    ) -> Result<Vec<ValueRef>, String> {
        Err(format!("`{}` has no encoder/decoder stages", Self::NAME))
    }

    /// The decoder applied to `encoded` (one source per [`Model::ENCODED`] entry): one source
    /// per [`Model::OUTPUTS`] entry.
    fn trace_decoder(
        _p: &Self::Params,
        _t: &mut Tracer<'_>,
        _encoded: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        Err(format!("`{}` has no encoder/decoder stages", Self::NAME))
    }
}

/// Which part of a model a `forward` node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Image → [`Model::OUTPUTS`] (the default).
    #[default]
    Whole,
    /// Image → [`Model::ENCODED`].
    Encoder,
    /// [`Model::ENCODED`] → [`Model::OUTPUTS`].
    Decoder,
}

/// The registry's view of a model (object-safe).
pub trait DynModel: Send + Sync {
    /// `arch:` name.
    fn name(&self) -> &'static str;
    /// One line.
    fn summary(&self) -> &'static str;
    /// Input ports of a whole forward ([`Model::INPUTS`]).
    fn inputs(&self) -> &'static [Port];
    /// Output ports.
    fn outputs(&self) -> &'static [Port];
    /// The ports between encoder and decoder ([`Model::ENCODED`]).
    fn encoded(&self) -> &'static [Port];
    /// Decodes the architecture params (absent = empty mapping).
    fn configure(&self, params: Option<&Node>) -> Result<Arc<dyn Net>, DeError>;
}

/// A configured network.
pub trait Net: Send + Sync + fmt::Debug {
    /// See [`Model::trace`].
    fn trace(&self, t: &mut Tracer<'_>, image: ValueRef) -> Result<Vec<ValueRef>, String>;
    /// `stage` of the model on `inputs`: for `whole`, one value per [`Model::INPUTS`] entry;
    /// for `encoder`, the image; for `decoder`, the encoded values.
    fn trace_stage(
        &self,
        stage: Stage,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String>;
}

pub(crate) struct ModelEntry<M>(pub(crate) PhantomData<M>);

impl<M: Model> DynModel for ModelEntry<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }
    fn summary(&self) -> &'static str {
        M::SUMMARY
    }
    fn inputs(&self) -> &'static [Port] {
        M::INPUTS
    }
    fn outputs(&self) -> &'static [Port] {
        M::OUTPUTS
    }
    fn encoded(&self) -> &'static [Port] {
        M::ENCODED
    }
    fn configure(&self, params: Option<&Node>) -> Result<Arc<dyn Net>, DeError> {
        let params: M::Params = match params {
            Some(n) if n.value != Value::Null => from_node(n)?,
            other => {
                let mut empty = Node::detached(Value::Map(Vec::new()));
                if let Some(n) = other {
                    empty.loc = n.loc;
                }
                from_node(&empty)?
            }
        };
        Ok(Arc::new(ConfiguredNet::<M> { params }))
    }
}

struct ConfiguredNet<M: Model> {
    params: M::Params,
}

impl<M: Model> fmt::Debug for ConfiguredNet<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?})", M::NAME, self.params)
    }
}

impl<M: Model> Net for ConfiguredNet<M> {
    fn trace(&self, t: &mut Tracer<'_>, image: ValueRef) -> Result<Vec<ValueRef>, String> {
        M::trace(&self.params, t, image)
    }
    fn trace_stage(
        &self,
        stage: Stage,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let image = || inputs.first().cloned().ok_or("no `image` input");
        match stage {
            Stage::Whole => {
                if inputs.len() != M::INPUTS.len() {
                    return Err(format!(
                        "`{}` takes {} inputs, got {}",
                        M::NAME,
                        M::INPUTS.len(),
                        inputs.len()
                    ));
                }
                M::trace_inputs(&self.params, t, inputs)
            }
            Stage::Encoder => M::trace_encoder(&self.params, t, image()?),
            Stage::Decoder => M::trace_decoder(&self.params, t, inputs),
        }
    }
}

/// What a model sees while tracing: emit nodes, declare state, assign buffers.
pub struct Tracer<'a> {
    pub(crate) nodes: &'a mut Vec<IrNode>,
    pub(crate) batch: &'a BTreeMap<String, TensorSpec>,
    pub(crate) state: &'a mut BTreeMap<String, TensorSpec>,
    pub(crate) decls: &'a mut BTreeMap<String, StateDecl>,
    pub(crate) assigns: &'a mut Vec<(ValueRef, String)>,
    pub(crate) model: String,
    pub(crate) node: Sp<String>,
    pub(crate) train: bool,
    pub(crate) scope: Vec<String>,
}

impl Tracer<'_> {
    /// True in training mode (batch statistics, dropout on), false in eval mode.
    pub fn train(&self) -> bool {
        self.train
    }

    /// The spec of a value.
    pub fn spec(&self, s: &ValueRef) -> Option<TensorSpec> {
        match s {
            ValueRef::Batch(f) => self.batch.get(f).cloned(),
            ValueRef::State(f) => self.state.get(f).cloned(),
            ValueRef::Node { node, port } => self.nodes.get(*node)?.outputs.get(*port).cloned(),
        }
    }

    /// Runs `f` inside the sub-module `name`: parameter and node names get `name.` prepended,
    /// as PyTorch's module paths do (`layer1.0.conv1`).
    pub fn scope<R>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<R, String>,
    ) -> Result<R, String> {
        self.scope.push(name.to_owned());
        let r = f(self);
        self.scope.pop();
        r
    }

    fn path(&self, leaf: &str) -> String {
        let mut p = self.scope.join(".");
        if !p.is_empty() {
            p.push('.');
        }
        p.push_str(leaf);
        p
    }

    fn declare(
        &mut self,
        leaf: &str,
        spec: TensorSpec,
        init: Init,
        trainable: bool,
    ) -> Result<ValueRef, String> {
        let name = format!("{}.{}", self.model, self.path(leaf));
        match self.decls.get(&name) {
            Some(d) if d.spec != spec || d.trainable != trainable => {
                return Err(format!(
                    "state `{name}` declared twice with different specs ({} and {spec})",
                    d.spec
                ))
            }
            Some(_) => {}
            None => {
                self.decls.insert(
                    name.clone(),
                    StateDecl {
                        spec: spec.clone(),
                        init,
                        trainable,
                    },
                );
                self.state.insert(name.clone(), spec);
            }
        }
        Ok(ValueRef::State(name))
    }

    /// A trainable parameter `leaf` of the current scope.
    pub fn param(&mut self, leaf: &str, spec: TensorSpec, init: Init) -> Result<ValueRef, String> {
        self.declare(leaf, spec, init, true)
    }

    /// A non-trainable buffer `leaf` of the current scope (BN running statistics).
    pub fn buffer(&mut self, leaf: &str, spec: TensorSpec, init: Init) -> Result<ValueRef, String> {
        self.declare(leaf, spec, init, false)
    }

    /// After the iteration, the buffer `state` (a [`ValueRef::State`]) takes the value `value`;
    /// ops emitted after this (a later forward of the same model) read `value` for it.
    pub fn assign(&mut self, value: ValueRef, state: &ValueRef) -> Result<(), String> {
        match state {
            ValueRef::State(name) if self.decls.get(name).is_some_and(|d| !d.trainable) => {
                self.assigns.push((value, name.clone()));
                Ok(())
            }
            other => Err(format!(
                "only a declared buffer can be assigned, not {other:?}"
            )),
        }
    }

    /// `value` as a constant: an identity node without a gradient, named after the buffer.
    fn stop_gradient(&mut self, buffer: &str, value: ValueRef) -> ValueRef {
        let spec = self.spec(&value);
        let index = self.nodes.len();
        self.nodes.push(IrNode {
            name: Sp {
                value: format!("{}/{buffer}.updated", self.node.value),
                loc: self.node.loc,
            },
            op: Arc::new(Configured::<StopGradient> {
                params: crate::op::NoParams {},
            }),
            inputs: vec![Some(value)],
            outputs: spec.into_iter().collect(),
            after: Vec::new(),
            stream: None,
        });
        ValueRef::Node {
            node: index,
            port: 0,
        }
    }

    /// Emits a node of op `O` named `<forward node>/<scope>/<leaf>`, returning its outputs.
    pub fn op<O: Op>(
        &mut self,
        leaf: &str,
        params: O::Params,
        inputs: Vec<Option<ValueRef>>,
    ) -> Result<Vec<ValueRef>, String> {
        let name = format!("{}/{}", self.node.value, self.path(leaf));
        let op = Arc::new(Configured::<O> { params });
        // A buffer assigned by an earlier call of this model in the same iteration is read at
        // its new value, so several train-mode forwards chain their running-statistics updates
        // in order, as PyTorch applies them (the last assignment is the chained result).
        // The new value goes through a stop-gradient: it is computed from the batch (and so from
        // trainable state), but a buffer never carries a gradient.
        let inputs: Vec<Option<ValueRef>> = inputs
            .into_iter()
            .map(|s| match s {
                Some(ValueRef::State(n)) => {
                    let last = self.assigns.iter().rev().find(|(_, to)| *to == n);
                    Some(match last.map(|(v, _)| v.clone()) {
                        Some(v) => self.stop_gradient(&n, v),
                        None => ValueRef::State(n),
                    })
                }
                other => other,
            })
            .collect();
        let specs: Vec<Option<TensorSpec>> = inputs
            .iter()
            .map(|s| s.as_ref().and_then(|s| self.spec(s)))
            .collect();
        let refs: Vec<Option<&TensorSpec>> = specs.iter().map(Option::as_ref).collect();
        let outputs =
            crate::op::OpNode::infer(op.as_ref(), &refs).map_err(|e| format!("`{name}`: {e}"))?;
        let index = self.nodes.len();
        let n = outputs.len();
        self.nodes.push(IrNode {
            name: Sp {
                value: name,
                loc: self.node.loc,
            },
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
