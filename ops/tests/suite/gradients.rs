//! The gradient suite's machinery, shared by the test binaries that check ops
//! (`gradients.rs` over the built-in ops, `adding_an_op.rs` over an op a test adds): test-only
//! helper ops, random inputs fed as each [`Feed`] says, graph building, finite differences,
//! and [`check_case`], which checks one op on one of its `GRAD_CASES`.
//!
//! Tolerances: the forward runs in f32, so a central difference with eps 1e-2 is coarse (round-off
//! in the loss divided by 2·eps, plus O(eps²) truncation); it is compared with atol 2e-3 + rtol
//! 2e-2. The tight checks are the kernels' own f64 gradchecks (`flowseg_kernels::testing`);
//! what this file checks is the wiring: ports, which forward value feeds which backward input,
//! params passed on, the seed's weight, and the summing of fan-out.

use flowseg_engine::autodiff::{self, NOT_DIFFERENTIABLE};
use flowseg_engine::graph::{self, Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::kernels::testing::{assert_close, rand_index, rand_vec};
use flowseg_engine::op::{io, DynOp, Feed, GradCase, Vjp};
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::spec::{self, GraphError};
use flowseg_engine::{exec, DType, ExecCx, NoParams, Op, OpError, Port, Registry, Tensor};
use flowseg_engine::{OpNode, TensorSpec};
use flowseg_ops::builtin_registry;
use std::collections::{BTreeMap, BTreeSet};

/// Central-difference step, in the inputs' units.
pub const EPS: f32 = 1e-2;
/// Absolute and relative tolerance of analytic vs. numeric gradients (see the file header).
pub const ATOL: f64 = 2e-3;
pub const RTOL: f64 = 2e-2;
/// The weight every loss is differentiated with: not 1, so the seed's value must reach each
/// backward node (cross_entropy reads it at run time) and scale the gradient.
pub const LOSS_WEIGHT: f32 = 2.5;

// ---- test-only ops ----------------------------------------------------------------------------

/// `weighted_sum`: loss = Σ x·w over two same-spec tensors; reduces an op's output to a scalar
/// with a fixed random `w`, so d loss / d output = w everywhere.
pub struct WeightedSum;

impl Op for WeightedSum {
    const NAME: &'static str = "weighted_sum";
    const SUMMARY: &'static str = "loss = Σ x·w";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32, any shape"),
        Port::req("w", "f32, the spec of `x`"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("loss", "f32[]")];
    const EXAMPLE: &'static str = "name: l\nop: weighted_sum\ninputs: { x: a.y, w: state.w }\n";
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::f32_spec(Self::INPUTS, inputs, 0)?;
        let w = io::spec(Self::INPUTS, inputs, 1)?;
        if w != x {
            return Err(format!("`w` must match `x` ({x}), got {w}"));
        }
        Ok(vec![TensorSpec::scalar()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let w = io::f32(Self::INPUTS, inputs, 1)?;
        // Summed in f64: the finite differences see less round-off.
        let s: f64 = x
            .iter()
            .zip(w)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        io::f32_out(Self::OUTPUTS, outputs, 0)?.fill(s as f32);
        Ok(())
    }

    /// dx = dloss·w and dw = dloss·x, each one `weighted_sum_bwd` node.
    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        let Some(dloss) = g.grad_output(0) else {
            return Some(Err("no gradient reached `loss`".into()));
        };
        for (i, other) in [(0, 1), (1, 0)] {
            if g.needs_grad(i) {
                match g
                    .emit::<WeightedSumBwd>(NoParams {}, vec![g.input(other), Some(dloss.clone())])
                {
                    Ok(out) => g.set_grad(i, out[0].clone()),
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        Some(Ok(()))
    }
}

/// Backward of `weighted_sum`: d = dloss·other.
pub struct WeightedSumBwd;

impl Op for WeightedSumBwd {
    const NAME: &'static str = "weighted_sum_bwd";
    const SUMMARY: &'static str = "d = dloss·other";
    const INPUTS: &'static [Port] = &[
        Port::req("other", "f32, any shape: the other operand"),
        Port::req("dloss", "f32[]"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("d", "f32, the spec of `other`")];
    const EXAMPLE: &'static str = "";
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        if io::spec(Self::INPUTS, inputs, 1)? != &TensorSpec::scalar() {
            return Err("`dloss` must be f32[]".into());
        }
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let other = io::f32(Self::INPUTS, inputs, 0)?;
        let dloss = io::f32(Self::INPUTS, inputs, 1)?[0];
        for (d, &o) in io::f32_out(Self::OUTPUTS, outputs, 0)?
            .iter_mut()
            .zip(other)
        {
            *d = dloss * o;
        }
        Ok(())
    }
}

/// `opaque`: y = x, with neither a VJP nor `STOP_GRAD`.
pub struct Opaque;

impl Op for Opaque {
    const NAME: &'static str = "opaque";
    const SUMMARY: &'static str = "y = x, not differentiable";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32, the spec of `x`")];
    const EXAMPLE: &'static str = "name: o\nop: opaque\ninputs: { x: a.y }\n";
    type Params = NoParams;

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::f32_spec(Self::INPUTS, inputs, 0)?.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        io::f32_out(Self::OUTPUTS, outputs, 0)?.copy_from_slice(x);
        Ok(())
    }
}

/// The shape of most test inputs: N = 2, C = 3, H = 5, W = 7.
pub const X: &[usize] = &[2, 3, 5, 7];
pub const PIXELS: &[usize] = &[2, 5, 7];

/// The built-in ops plus the test-only ones.
pub fn registry() -> Registry {
    with_helpers(builtin_registry().expect("built-in ops register"))
}

/// `r` plus the test-only ops the suite builds its graphs with.
pub fn with_helpers(mut r: Registry) -> Registry {
    r.add::<WeightedSum>()
        .and_then(|r| r.add::<Opaque>())
        .expect("test ops register");
    r
}

// ---- inputs ------------------------------------------------------------------------------------

/// The graph's inputs: specs for `ir::build` and the tensors for `exec::run_cpu`.
#[derive(Default)]
pub struct Inputs {
    pub env: graph::Env,
    pub batch: BTreeMap<String, Tensor>,
    pub state: BTreeMap<String, Tensor>,
    /// Seed of the next random tensor.
    pub seed: u64,
}

impl Inputs {
    /// Adds `name` as `feed` says, with fresh random contents; returns its YAML reference.
    pub fn add(&mut self, name: &str, feed: Feed) -> String {
        self.seed += 1;
        let seed = self.seed;
        let f32s = |shape: &[usize], v: Vec<f64>| {
            let v = v.into_iter().map(|x| x as f32).collect();
            Tensor::from_f32(shape, v).expect("length matches shape")
        };
        let n = |shape: &[usize]| shape.iter().product::<usize>();
        let (into_state, t) = match feed {
            Feed::Trainable(s) => (true, f32s(s, rand_vec(seed, n(s), -1.0, 1.0))),
            Feed::TrainableOffZero(s) => {
                let v = rand_vec(seed, n(s), -1.0, 1.0);
                let v = v.into_iter().map(|u| u + 0.1f64.copysign(u)).collect();
                (true, f32s(s, v))
            }
            Feed::TrainableDistinct(s) => {
                let keys = rand_vec(seed, n(s), 0.0, 1.0);
                let mut order: Vec<usize> = (0..n(s)).collect();
                order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
                let mut v = vec![0.0; n(s)];
                let centre = (n(s) as f64 - 1.0) / 2.0;
                for (rank, &i) in order.iter().enumerate() {
                    v[i] = (rank as f64 - centre) * 0.05;
                }
                (true, f32s(s, v))
            }
            Feed::Constant(s) => (false, f32s(s, rand_vec(seed, n(s), 0.1, 1.0))),
            Feed::Labels(s) => {
                let mut v = rand_index(seed, n(s), 3);
                v.iter_mut().step_by(9).for_each(|t| *t = 255);
                (false, Tensor::from_i32(s, v).expect("length matches shape"))
            }
            Feed::Binary(s) => {
                let v = rand_vec(seed, n(s), 0.0, 1.0);
                let v = v
                    .into_iter()
                    .map(|u| if u < 0.5 { 1.0 } else { 0.0 })
                    .collect();
                (false, f32s(s, v))
            }
            Feed::Indices(v) => {
                let t = Tensor::from_i32(&[v.len()], v.to_vec());
                (false, t.expect("length matches shape"))
            }
        };
        self.insert(name, into_state, t)
    }

    /// Adds a given tensor as `state.<name>` (trainable) or `batch.<name>`.
    pub fn insert(&mut self, name: &str, into_state: bool, t: Tensor) -> String {
        let (specs, tensors, prefix) = if into_state {
            (&mut self.env.state, &mut self.state, "state")
        } else {
            (&mut self.env.batch, &mut self.batch, "batch")
        };
        specs.insert(name.to_owned(), t.spec().clone());
        tensors.insert(name.to_owned(), t);
        format!("{prefix}.{name}")
    }

    /// Names of the trainable tensors other than the test's own reduction weights.
    pub fn trainable(&self) -> BTreeSet<String> {
        self.state
            .keys()
            .filter(|k| !k.starts_with("reduce_w"))
            .cloned()
            .collect()
    }
}

/// The graph of `nodes` (YAML flow mappings, one a line), built against `inputs`.
pub fn build(r: &Registry, nodes: &[String], inputs: &Inputs) -> Graph {
    let yaml = format!(
        "name: gradients\ntrain: {{ iterations: 1 }}\nnodes:\n{}",
        nodes
            .iter()
            .map(|n| format!("  - {n}\n"))
            .collect::<String>()
    );
    let (spec, _) =
        spec::parse_graph(&yaml, &[]).unwrap_or_else(|e| panic!("{yaml}\ndoes not parse: {e:#?}"));
    ir::build(&spec, r, &inputs.env).unwrap_or_else(|e| panic!("{yaml}\ndoes not build: {e:#?}"))
}

/// Output `port` of the node named `node`.
pub fn output(r: &Registry, g: &Graph, node: &str, port: &str) -> ValueRef {
    let i = g
        .nodes
        .iter()
        .position(|n| n.name.value == node)
        .unwrap_or_else(|| panic!("no node `{node}`"));
    let ports = r.get(g.nodes[i].op.name()).expect("registered").outputs();
    let k = ports
        .iter()
        .position(|p| p.name == port)
        .unwrap_or_else(|| panic!("`{node}` has no output `{port}`"));
    ValueRef::Node { node: i, port: k }
}

/// The value of scalar `loss` with the current inputs.
pub fn loss_value(g: &Graph, inputs: &Inputs, loss: &ValueRef) -> f32 {
    exec::run_cpu(g, &inputs.batch, &inputs.state, 0, 0)
        .expect("the forward runs")
        .scalar(loss)
        .expect("the loss is a scalar")
}

/// Gradients' values, by state tensor name.
type Grads = BTreeMap<String, Vec<f32>>;

/// Differentiates LOSS_WEIGHT·Σ `losses` on a copy of `g` with respect to `wrt`, runs it, and
/// returns the gradients' values and the differentiated graph.
pub fn gradients(
    g: &Graph,
    inputs: &Inputs,
    losses: &[ValueRef],
    wrt: &BTreeSet<String>,
) -> Result<(Grads, Graph), Vec<GraphError>> {
    let mut bwd = g.clone();
    let weighted: Vec<(ValueRef, f32)> = losses.iter().map(|l| (l.clone(), LOSS_WEIGHT)).collect();
    let grads = autodiff::differentiate(&mut bwd, &weighted, wrt)?;
    let run = exec::run_cpu(&bwd, &inputs.batch, &inputs.state, 0, 0).expect("backward runs");
    let keep: Vec<ValueRef> = losses.iter().chain(grads.values()).cloned().collect();
    planned_runs_match(&bwd, inputs, &run, &keep);
    let values = grads
        .iter()
        .map(|(name, src)| {
            let t = run.get(src).expect("gradient computed");
            assert_eq!(
                t.spec(),
                &inputs.env.state[name],
                "the gradient of `{name}` has the wrong spec"
            );
            (name.clone(), t.f32().expect("f32 gradient").to_vec())
        })
        .collect();
    Ok((values, bwd))
}

/// Bits of a tensor, f32 or i32.
pub fn bits(t: &Tensor) -> Vec<u32> {
    match (t.f32(), t.i32()) {
        (Some(v), _) => v.iter().map(|x| x.to_bits()).collect(),
        (_, Some(v)) => v.iter().map(|&x| x as u32).collect(),
        _ => Vec::new(),
    }
}

/// `keep`'s values from the poisoned plan simulator (one and two streams, two interleavings
/// each) equal `reference`'s (a `run_cpu` of `g`) bit for bit.
pub fn planned_runs_match(
    g: &Graph,
    inputs: &Inputs,
    reference: &exec::Run<'_>,
    keep: &[ValueRef],
) {
    let names = |s: &ValueRef| match s {
        ValueRef::Node { node, port } => format!("{}.{port}", g.nodes[*node].name.value),
        other => format!("{other:?}"),
    };
    for streams in [1, 2] {
        let opts = PlanOptions {
            streams,
            keep: keep.to_vec(),
        };
        let p = plan(g, &opts).unwrap_or_else(|e| panic!("plan: {e:#?}"));
        for seed in 0..2 {
            let order = exec::ExecOrder::Interleaved { seed };
            let run = exec::run_plan(g, &p, &inputs.batch, &inputs.state, 0, 0, order)
                .unwrap_or_else(|e| panic!("poisoned run, {streams} streams: {e}"));
            for s in keep {
                let (got, want) = (run.get(s).map(bits), reference.get(s).map(bits));
                let first = match (&got, &want) {
                    (Some(a), Some(b)) => (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)),
                    _ => (got != want).then_some(0),
                };
                assert!(
                    first.is_none(),
                    "`{}` differs from run_cpu's at element {first:?} in the poisoned run \
                     ({streams} streams, interleaving {seed}): an op reads its outputs or \
                     leaves part of them unwritten",
                    names(s)
                );
            }
        }
    }
}

/// Element `i` of `state.<name>`, replaced by `value` if given.
pub fn set(inputs: &mut Inputs, name: &str, i: usize, value: Option<f32>) -> f32 {
    let data = inputs
        .state
        .get_mut(name)
        .and_then(Tensor::f32_mut)
        .expect("f32 state");
    let old = data[i];
    data[i] = value.unwrap_or(old);
    old
}

/// Compares `analytic` (the gradient of LOSS_WEIGHT·`loss` w.r.t. `state.<name>`) with central
/// differences of `loss` in the forward graph `g`.
pub fn check_against_differences(
    what: &str,
    g: &Graph,
    inputs: &mut Inputs,
    loss: &ValueRef,
    name: &str,
    analytic: &[f32],
) {
    let n = inputs.state[name].spec().len();
    assert_eq!(analytic.len(), n, "{what}: d/d{name} has the wrong length");
    let mut numeric = Vec::with_capacity(n);
    for i in 0..n {
        let x0 = set(inputs, name, i, None);
        let (xp, xm) = (x0 + EPS, x0 - EPS);
        set(inputs, name, i, Some(xp));
        let lp = loss_value(g, inputs, loss);
        set(inputs, name, i, Some(xm));
        let lm = loss_value(g, inputs, loss);
        set(inputs, name, i, Some(x0));
        // The step actually taken in f32, not the nominal 2·EPS.
        let d = f64::from(lp) - f64::from(lm);
        numeric.push(f64::from(LOSS_WEIGHT) * d / (f64::from(xp) - f64::from(xm)));
    }
    let analytic: Vec<f64> = analytic.iter().map(|&v| f64::from(v)).collect();
    assert_close(
        &format!("{what}: d/d{name}"),
        &analytic,
        &numeric,
        ATOL,
        RTOL,
    );
}

// ---- every op ------------------------------------------------------------------------------------

/// Builds and checks one case; returns whether the op turned out to be a stop-gradient.
pub fn check_case(r: &Registry, op: &str, case: &GradCase) -> bool {
    let what = format!("`{op}` {}", case.params);
    let mut inputs = Inputs::default();
    let wiring: Vec<String> = case
        .feeds
        .iter()
        .map(|&(port, feed)| format!("{port}: {}", inputs.add(port, feed)))
        .collect();
    let mut nodes = vec![format!(
        "{{ name: op, op: {op}, inputs: {{ {} }}, params: {} }}",
        wiring.join(", "),
        case.params
    )];
    // The op's first f32 output: the loss itself if it is a scalar, else reduced by
    // `weighted_sum` with a random weight.
    let alone = build(r, &nodes, &inputs);
    let outputs = &alone.nodes[0].outputs;
    let k = outputs
        .iter()
        .position(|s| s.dtype == DType::F32)
        .unwrap_or_else(|| panic!("{what}: no f32 output"));
    let port = r.get(op).expect("registered").outputs()[k].name;
    let (g, loss) = if outputs[k].shape.is_empty() {
        (alone.clone(), output(r, &alone, "op", port))
    } else {
        let w = rand_vec(0x5eed, outputs[k].len(), -1.0, 1.0);
        let w = Tensor::from_f32(&outputs[k].shape, w.iter().map(|&v| v as f32).collect());
        let w = inputs.insert("reduce_w", true, w.expect("length matches shape"));
        nodes.push(format!(
            "{{ name: reduce, op: weighted_sum, inputs: {{ x: op.{port}, w: {w} }} }}"
        ));
        let g = build(r, &nodes, &inputs);
        let loss = output(r, &g, "reduce", "loss");
        (g, loss)
    };
    let wrt = inputs.trainable();
    let (grads, bwd) = match gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt) {
        Ok(x) => x,
        Err(e) if e.iter().any(|e| e.code == NOT_DIFFERENTIABLE) => panic!(
            "{what}: `{op}` has no VJP and is not a stop-gradient; implement `Op::vjp` or set \
             `STOP_GRAD`: {e:#?}"
        ),
        Err(e) => panic!("{what}: differentiate failed: {e:#?}"),
    };
    let op_node: &dyn OpNode = g.nodes[0].op.as_ref();
    if op_node.stop_grad() {
        assert!(
            grads.is_empty(),
            "{what}: a stop-gradient passed gradients for {:?}",
            grads.keys()
        );
        let emitted: Vec<&str> = bwd.nodes[g.nodes.len()..]
            .iter()
            .map(|n| n.op.name())
            .collect();
        assert_eq!(
            emitted,
            ["grad_seed"],
            "{what}: backward nodes behind a stop-gradient"
        );
        return true;
    }
    assert_eq!(
        grads.keys().cloned().collect::<BTreeSet<_>>(),
        wrt,
        "{what}: not every trainable input got a gradient"
    );
    for (name, analytic) in &grads {
        check_against_differences(&what, &g, &mut inputs, &loss, name, analytic);
    }
    false
}

/// Checks every one of `op`'s `GRAD_CASES` in `r` (which must hold the helper ops:
/// [`with_helpers`]); returns whether the op is a stop-gradient.
pub fn check_op(r: &Registry, op: &dyn DynOp) -> bool {
    assert!(
        !op.grad_cases().is_empty(),
        "`{}` declares no `GRAD_CASES`: add one in its file (its params and input feeds)",
        op.name()
    );
    let stops: Vec<bool> = op
        .grad_cases()
        .iter()
        .map(|case| check_case(r, op.name(), case))
        .collect();
    assert!(
        stops.iter().all(|&s| s == stops[0]),
        "`{}` is a stop-gradient in some cases only",
        op.name()
    );
    stops[0]
}
