//! autodiff: reverse-mode differentiation as a compiler pass over the validated graph. No tape:
//! the backward pass is appended to the same [`Graph`] as ordinary nodes, so it is planned,
//! scheduled and executed like the forward pass.
//!
//! Which nodes get a backward: F = nodes reachable along data edges from the trainable state,
//! stopping at stop-gradient ops (`Op::STOP_GRAD`); L = nodes from which a loss is reachable;
//! active = F ∩ L, visited in reverse topological order. Each active node's op emits its
//! vector-Jacobian product through [`Vjp`]; gradients reaching one value from several consumers
//! are summed by an emitted `grad_add` node. A branch that does not connect trainable state to a
//! loss (a teacher) never gets a backward node. An op with neither a VJP nor `STOP_GRAD` on an
//! active path is FS0109.
//!
//! The `grad` node (gradients with respect to activations, for Grad-CAM or VAT) is expanded by
//! `ir.rs` through [`differentiate_sources`] on the graph built so far.
//!
//! Not here: higher-order gradients (a `grad` node's value is a stop-gradient), gradient
//! checkpointing.

use crate::graph::{ExecCx, Graph, OpError, Port, ValueRef, Vjp};
#[cfg(feature = "cuda")]
use crate::op::{dev_io, CudaCx, DeviceTensor};
use crate::op::{io, Configured, NoParams, Op};
use crate::spec::{GraphError, Loc, LossWeight};
use crate::tensor::{DType, Tensor, TensorSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// FS0109: gradient required through a non-differentiable op.
pub const NOT_DIFFERENTIABLE: &str = "FS0109";
/// FS0110: a loss that is not an f32 scalar.
pub const BAD_LOSS: &str = "FS0110";

/// Appends the backward pass of Σ weight·loss (each loss an f32 scalar) with respect to the
/// state tensors `wrt`, and returns the gradient of each of them that the losses depend on.
pub fn differentiate(
    graph: &mut Graph,
    losses: &[(ValueRef, f32)],
    wrt: &BTreeSet<String>,
) -> Result<BTreeMap<String, ValueRef>, Vec<GraphError>> {
    let weighted: Vec<(ValueRef, LossWeight)> = losses
        .iter()
        .map(|(s, w)| (s.clone(), (*w).into()))
        .collect();
    differentiate_weighted(graph, &weighted, wrt)
}

/// [`differentiate`] with weights that may follow a schedule over iterations (the seed of each
/// loss reads the iteration it runs in).
pub fn differentiate_weighted(
    graph: &mut Graph,
    losses: &[(ValueRef, LossWeight)],
    wrt: &BTreeSet<String>,
) -> Result<BTreeMap<String, ValueRef>, Vec<GraphError>> {
    let sources: BTreeSet<ValueRef> = wrt.iter().cloned().map(ValueRef::State).collect();
    let grads = differentiate_sources(graph, losses, &sources)?;
    Ok(grads
        .into_iter()
        .filter_map(|(s, g)| match s {
            ValueRef::State(name) => Some((name, g)),
            _ => None,
        })
        .collect())
}

/// [`differentiate`] with respect to any values: state tensors, or node outputs (activations,
/// for the `grad` node of Grad-CAM or VAT). Returns the gradient of each of `wrt` the losses
/// depend on.
pub fn differentiate_sources(
    graph: &mut Graph,
    losses: &[(ValueRef, LossWeight)],
    wrt: &BTreeSet<ValueRef>,
) -> Result<BTreeMap<ValueRef, ValueRef>, Vec<GraphError>> {
    let mut errors = Vec::new();
    for (l, _) in losses {
        match graph.spec_of(l) {
            Some(s) if s.dtype == DType::F32 && s.shape.is_empty() => {}
            other => errors.push(GraphError::new(
                BAD_LOSS,
                format!(
                    "a loss must be an f32 scalar, got {}",
                    other.map_or("nothing".into(), ToString::to_string)
                ),
                Loc::NONE,
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let forward_len = graph.nodes.len();

    // F: depends on a `wrt` value, through ops that pass gradients.
    let depends = |s: &ValueRef, f: &[bool]| {
        wrt.contains(s)
            || match s {
                ValueRef::Node { node, .. } => f[*node],
                ValueRef::State(_) | ValueRef::Batch(_) => false,
            }
    };
    let mut in_f = vec![false; forward_len];
    for i in 0..forward_len {
        let n = &graph.nodes[i];
        in_f[i] = !n.op.stop_grad() && n.inputs.iter().flatten().any(|s| depends(s, &in_f));
    }
    // L: a loss is reachable from it.
    let mut in_l = vec![false; forward_len];
    for (l, _) in losses {
        if let ValueRef::Node { node, .. } = l {
            in_l[*node] = true;
        }
    }
    for i in (0..forward_len).rev() {
        // A loss reached only through a stop-gradient does not pull its inputs into L.
        if in_l[i] && !graph.nodes[i].op.stop_grad() {
            for s in graph.nodes[i].inputs.iter().flatten() {
                if let ValueRef::Node { node, .. } = s {
                    in_l[*node] = true;
                }
            }
        }
    }

    // Seeds: d(Σ w·loss)/d loss = w.
    let mut grads: BTreeMap<ValueRef, ValueRef> = BTreeMap::new();
    for (l, weight) in losses {
        let seed = graph
            .push_node(
                "loss/grad/seed".into(),
                Arc::new(Configured::<GradSeed> { params: *weight }),
                vec![],
            )
            .map_err(|e| vec![GraphError::new(BAD_LOSS, e, Loc::NONE)])?;
        accumulate(graph, &mut grads, l.clone(), seed[0].clone()).map_err(|e| vec![e])?;
    }

    for i in (0..forward_len).rev() {
        if !(in_f[i] && in_l[i]) {
            continue;
        }
        let n_out = graph.nodes[i].outputs.len();
        let grad_outputs: Vec<Option<ValueRef>> = (0..n_out)
            .map(|port| grads.get(&ValueRef::Node { node: i, port }).cloned())
            .collect();
        if grad_outputs.iter().all(Option::is_none) {
            continue;
        }
        let inputs = graph.nodes[i].inputs.clone();
        let needs: Vec<bool> = inputs
            .iter()
            .map(|s| {
                s.as_ref().is_some_and(|s| {
                    depends(s, &in_f) && graph.spec_of(s).is_some_and(|t| t.dtype == DType::F32)
                })
            })
            .collect();
        let op = graph.nodes[i].op.clone();
        let name = graph.nodes[i].name.clone();
        let mut g = Vjp {
            graph,
            node: i,
            inputs: inputs.clone(),
            grad_outputs,
            grads: vec![None; inputs.len()],
            needs: needs.clone(),
        };
        match op.vjp(&mut g) {
            None => {
                errors.push(
                    GraphError::new(
                        NOT_DIFFERENTIABLE,
                        format!("a gradient must flow through `{}`, which is not differentiable", op.name()),
                        name.loc,
                    )
                    .in_node(&name)
                    .help("if this path should carry no gradient, make it explicit with a `detach` node"),
                );
                continue;
            }
            Some(Err(e)) => {
                errors.push(GraphError::new(NOT_DIFFERENTIABLE, e, name.loc).in_node(&name));
                continue;
            }
            Some(Ok(())) => {}
        }
        let produced = std::mem::take(&mut g.grads);
        for (k, (src, grad)) in inputs.into_iter().zip(produced).enumerate() {
            match (src, grad, needs[k]) {
                (Some(src), Some(grad), true) => {
                    if let Err(e) = accumulate(graph, &mut grads, src, grad) {
                        errors.push(e.in_node(&name));
                    }
                }
                (Some(_), None, true) => errors.push(
                    GraphError::new(
                        NOT_DIFFERENTIABLE,
                        format!("the VJP of `{}` set no gradient for input {k}", op.name()),
                        name.loc,
                    )
                    .in_node(&name),
                ),
                _ => {}
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(grads.into_iter().filter(|(s, _)| wrt.contains(s)).collect())
}

/// Whether a gradient can flow from `value` back to any of `wrt`: a path of data edges from one
/// of them to `value` through ops that are not stop-gradients. (What `differentiate` would find
/// non-zero, without emitting anything.)
pub fn depends_on(graph: &Graph, value: &ValueRef, wrt: &BTreeSet<ValueRef>) -> bool {
    if wrt.contains(value) {
        return true;
    }
    let mut seen = vec![false; graph.nodes.len()];
    let mut stack: Vec<usize> = match value {
        ValueRef::Node { node, .. } => vec![*node],
        ValueRef::Batch(_) | ValueRef::State(_) => return false,
    };
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) || graph.nodes[i].op.stop_grad() {
            continue;
        }
        for input in graph.nodes[i].inputs.iter().flatten() {
            if wrt.contains(input) {
                return true;
            }
            if let ValueRef::Node { node, .. } = input {
                stack.push(*node);
            }
        }
    }
    false
}

/// grads[target] += g, emitting a `grad_add` when a gradient is already there.
fn accumulate(
    graph: &mut Graph,
    grads: &mut BTreeMap<ValueRef, ValueRef>,
    target: ValueRef,
    g: ValueRef,
) -> Result<(), GraphError> {
    let merged = match grads.remove(&target) {
        None => g,
        Some(prev) => {
            let out = graph
                .push_node(
                    "grad/add".into(),
                    Arc::new(Configured::<GradAdd> {
                        params: NoParams {},
                    }),
                    vec![Some(prev), Some(g)],
                )
                .map_err(|e| GraphError::new(NOT_DIFFERENTIABLE, e, Loc::NONE))?;
            out[0].clone()
        }
    };
    grads.insert(target, merged);
    Ok(())
}

/// The seed of the backward pass: the loss's weight at this iteration, d(Σ w·loss)/d loss.
struct GradSeed;

impl Op for GradSeed {
    const NAME: &'static str = "grad_seed";
    const SUMMARY: &'static str = "the loss weight w(t), seeding d(w·loss)/d(loss)";
    const INPUTS: &'static [Port] = &[];
    const OUTPUTS: &'static [Port] = &[Port::req("w", "f32[]")];
    const EXAMPLE: &'static str = "";
    type Params = LossWeight;

    fn has_cuda(_: &LossWeight) -> bool {
        true
    }
    fn infer(_: &LossWeight, _: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![TensorSpec::scalar()])
    }
    fn cpu(
        w: &LossWeight,
        cx: &ExecCx,
        _: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        io::f32_out(Self::OUTPUTS, out, 0)?.fill(w.at(cx.iteration) as f32);
        Ok(())
    }

    /// The weight of this iteration, written into every element (no upload: a memset of its
    /// bits).
    #[cfg(feature = "cuda")]
    fn cuda(
        w: &LossWeight,
        cx: &CudaCx<'_>,
        _: &[Option<&DeviceTensor>],
        out: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let mut y = dev_io::f32_out(Self::OUTPUTS, out, 0)?;
        let bits = (w.at(cx.exec.iteration) as f32).to_bits();
        Ok(cx.dev.fill32::<f32>(&mut y, bits)?)
    }
}

/// Sum of two gradients of one value.
struct GradAdd;

impl Op for GradAdd {
    const NAME: &'static str = "grad_add";
    const SUMMARY: &'static str = "y = a + b, summing gradient contributions";
    const INPUTS: &'static [Port] = &[Port::req("a", "f32"), Port::req("b", "like a")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like a")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::f32_spec(Self::INPUTS, ins, 0)?;
        let b = io::f32_spec(Self::INPUTS, ins, 1)?;
        if a != b {
            return Err(format!("gradients of one value disagree: {a} vs {b}"));
        }
        Ok(vec![a.clone()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let a = io::f32(Self::INPUTS, ins, 0)?;
        let b = io::f32(Self::INPUTS, ins, 1)?;
        let y = io::f32_out(Self::OUTPUTS, out, 0)?;
        Ok(flowseg_kernels::elementwise::add_fwd(a, b, y)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        ins: &[Option<&DeviceTensor>],
        out: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let a = dev_io::f32(Self::INPUTS, ins, 0)?;
        let b = dev_io::f32(Self::INPUTS, ins, 1)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, out, 0)?;
        Ok(flowseg_kernels::cuda::elementwise::add_fwd(
            cx.dev, &a, &b, &mut y,
        )?)
    }
}
