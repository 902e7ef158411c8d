//! Every built-in op's backward, checked end to end through the engine: a graph in YAML →
//! `ir::build` → `autodiff::differentiate` → `exec::run_cpu`, against central differences of the
//! scalar loss.
//!
//! Which ops are differentiable is not listed here but found out: every registered built-in op
//! must have a case in [`CASES`] (a new op without one fails the test), each case is
//! differentiated with respect to the op's trainable inputs, and an op that yields no gradient
//! must declare `STOP_GRAD`, while one that is neither differentiable nor a stop-gradient is
//! FS0109 and fails. Today the stop-gradients are `detach`, `max_confidence`, `threshold`,
//! `box_mask` and `class_mask`; every other built-in op is checked.
//!
//! Every differentiated graph also runs through the plan executor's poisoned simulator
//! (`ExecOrder::Interleaved`, one and two streams), which hands each node poisoned output
//! buffers: its losses and gradients must equal `run_cpu`'s (zeroed outputs) bit for bit, so an op
//! that leaves an output element unwritten, or reads its outputs, fails here (the `Op::cpu`
//! contract: outputs are overwritten).
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
use flowseg_engine::op::{io, Vjp};
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::spec::{self, GraphError};
use flowseg_engine::{exec, DType, ExecCx, NoParams, Op, OpError, Port, Registry, Tensor};
use flowseg_engine::{OpNode, TensorSpec};
use flowseg_ops::builtin_registry;
use std::collections::{BTreeMap, BTreeSet};

/// Central-difference step, in the inputs' units.
const EPS: f32 = 1e-2;
/// Absolute and relative tolerance of analytic vs. numeric gradients (see the file header).
const ATOL: f64 = 2e-3;
const RTOL: f64 = 2e-2;
/// The weight every loss is differentiated with: not 1, so the seed's value must reach each
/// backward node (cross_entropy reads it at run time) and scale the gradient.
const LOSS_WEIGHT: f32 = 2.5;

// ---- test-only ops ----------------------------------------------------------------------------

/// `weighted_sum`: loss = Σ x·w over two same-spec tensors; reduces an op's output to a scalar
/// with a fixed random `w`, so d loss / d output = w everywhere.
struct WeightedSum;

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
struct WeightedSumBwd;

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
struct Opaque;

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

/// The built-in ops plus the test-only ones.
fn registry() -> Registry {
    let mut r = builtin_registry().expect("built-in ops register");
    r.add::<WeightedSum>()
        .and_then(|r| r.add::<Opaque>())
        .expect("test ops register");
    r
}

// ---- inputs ------------------------------------------------------------------------------------

/// How a case feeds one input port.
#[derive(Debug, Clone, Copy)]
enum Feed {
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

/// The graph's inputs: specs for `ir::build` and the tensors for `exec::run_cpu`.
#[derive(Default)]
struct Inputs {
    env: graph::Env,
    batch: BTreeMap<String, Tensor>,
    state: BTreeMap<String, Tensor>,
    /// Seed of the next random tensor.
    seed: u64,
}

impl Inputs {
    /// Adds `name` as `feed` says, with fresh random contents; returns its YAML reference.
    fn add(&mut self, name: &str, feed: Feed) -> String {
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
    fn insert(&mut self, name: &str, into_state: bool, t: Tensor) -> String {
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
    fn trainable(&self) -> BTreeSet<String> {
        self.state
            .keys()
            .filter(|k| !k.starts_with("reduce_w"))
            .cloned()
            .collect()
    }
}

/// The graph of `nodes` (YAML flow mappings, one a line), built against `inputs`.
fn build(r: &Registry, nodes: &[String], inputs: &Inputs) -> Graph {
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
fn output(r: &Registry, g: &Graph, node: &str, port: &str) -> ValueRef {
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
fn loss_value(g: &Graph, inputs: &Inputs, loss: &ValueRef) -> f32 {
    exec::run_cpu(g, &inputs.batch, &inputs.state, 0, 0)
        .expect("the forward runs")
        .scalar(loss)
        .expect("the loss is a scalar")
}

/// Gradients' values, by state tensor name.
type Grads = BTreeMap<String, Vec<f32>>;

/// Differentiates LOSS_WEIGHT·Σ `losses` on a copy of `g` with respect to `wrt`, runs it, and
/// returns the gradients' values and the differentiated graph.
fn gradients(
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
fn bits(t: &Tensor) -> Vec<u32> {
    match (t.f32(), t.i32()) {
        (Some(v), _) => v.iter().map(|x| x.to_bits()).collect(),
        (_, Some(v)) => v.iter().map(|&x| x as u32).collect(),
        _ => Vec::new(),
    }
}

/// `keep`'s values from the poisoned plan simulator (one and two streams, two interleavings
/// each) equal `reference`'s (a `run_cpu` of `g`) bit for bit.
fn planned_runs_match(g: &Graph, inputs: &Inputs, reference: &exec::Run<'_>, keep: &[ValueRef]) {
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
fn set(inputs: &mut Inputs, name: &str, i: usize, value: Option<f32>) -> f32 {
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
fn check_against_differences(
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

/// One graph per case: `op` with `params`, each input fed as given.
struct Case {
    op: &'static str,
    params: &'static str,
    feeds: &'static [(&'static str, Feed)],
}

const X: &[usize] = &[2, 3, 5, 7];
const PIXELS: &[usize] = &[2, 5, 7];

/// At least one case per registered built-in op (more where params change the code path).
const CASES: &[Case] = &[
    Case {
        op: "add",
        params: "{}",
        feeds: &[("a", Feed::Trainable(X)), ("b", Feed::Trainable(X))],
    },
    // Train mode: the batch statistics depend on x (the two correction terms of dx).
    Case {
        op: "batch_norm",
        params: "{ eps: 1.0e-3 }",
        feeds: &[
            ("x", Feed::Trainable(X)),
            ("gamma", Feed::Trainable(&[3])),
            ("beta", Feed::Trainable(&[3])),
            ("running_mean", Feed::Constant(&[3])),
            ("running_var", Feed::Constant(&[3])),
        ],
    },
    // Eval mode: constant running statistics, read by the backward from the forward's inputs.
    Case {
        op: "batch_norm",
        params: "{ mode: eval }",
        feeds: &[
            ("x", Feed::Trainable(X)),
            ("gamma", Feed::Trainable(&[3])),
            ("beta", Feed::Trainable(&[3])),
            ("running_mean", Feed::Constant(&[3])),
            ("running_var", Feed::Constant(&[3])),
        ],
    },
    // Both halves of dy wanted (one concat_channels_bwd pass).
    Case {
        op: "concat",
        params: "{}",
        feeds: &[
            ("a", Feed::Trainable(X)),
            ("b", Feed::Trainable(&[2, 2, 5, 7])),
        ],
    },
    // Only b's half: a channel slice of dy.
    Case {
        op: "concat",
        params: "{}",
        feeds: &[
            ("a", Feed::Constant(&[2, 1, 5, 7])),
            ("b", Feed::Trainable(X)),
        ],
    },
    // im2col path, stride and padding, with a bias.
    Case {
        op: "conv2d",
        params: "{ stride: 2, padding: 1 }",
        feeds: &[
            ("x", Feed::Trainable(X)),
            ("weight", Feed::Trainable(&[4, 3, 3, 3])),
            ("bias", Feed::Trainable(&[4])),
        ],
    },
    // Depthwise path with dilation, no bias.
    Case {
        op: "conv2d",
        params: "{ padding: 2, dilation: 2, groups: 3 }",
        feeds: &[
            ("x", Feed::Trainable(X)),
            ("weight", Feed::Trainable(&[3, 1, 3, 3])),
        ],
    },
    // 1×1 path on a constant input: only dweight and dbias are asked for.
    Case {
        op: "conv2d",
        params: "{}",
        feeds: &[
            ("x", Feed::Constant(X)),
            ("weight", Feed::Trainable(&[2, 3, 1, 1])),
            ("bias", Feed::Trainable(&[2])),
        ],
    },
    Case {
        op: "cross_entropy",
        params: "{}",
        feeds: &[
            ("logits", Feed::Trainable(X)),
            ("target", Feed::Labels(PIXELS)),
        ],
    },
    Case {
        op: "cross_entropy",
        params: "{ denominator: weight_sum }",
        feeds: &[
            ("logits", Feed::Trainable(X)),
            ("target", Feed::Labels(PIXELS)),
            ("weight", Feed::Constant(PIXELS)),
        ],
    },
    // Whole planes (UniMatch's feature perturbation) and single elements: the mask is a pure
    // function of the node's stream, so the differences see the same mask.
    Case {
        op: "dropout",
        params: "{ p: 0.5, channels: true }",
        feeds: &[("x", Feed::Trainable(X))],
    },
    Case {
        op: "dropout",
        params: "{ p: 0.3 }",
        feeds: &[("x", Feed::Trainable(X))],
    },
    Case {
        op: "detach",
        params: "{}",
        feeds: &[("x", Feed::Trainable(X))],
    },
    Case {
        op: "global_avg_pool",
        params: "{}",
        feeds: &[("x", Feed::Trainable(X))],
    },
    Case {
        op: "leaky_relu",
        params: "{ slope: 0.2 }",
        feeds: &[("x", Feed::TrainableOffZero(X))],
    },
    // Stop-gradients: the masks are drawn (box) or read off labels (class).
    Case {
        op: "box_mask",
        params: "{ partner: permute, area: [0.02, 0.4] }",
        feeds: &[("like", Feed::Trainable(X))],
    },
    Case {
        op: "class_mask",
        params: "{ partner: roll }",
        feeds: &[("label", Feed::Labels(PIXELS))],
    },
    Case {
        op: "label_accuracy",
        params: "{}",
        feeds: &[
            ("pred", Feed::Labels(PIXELS)),
            ("target", Feed::Labels(PIXELS)),
            ("mask", Feed::Trainable(PIXELS)),
        ],
    },
    Case {
        op: "max_confidence",
        params: "{}",
        feeds: &[("probs", Feed::Trainable(X))],
    },
    // Overlapping windows with padding (ResNet's stem pool): overlaps sum in the backward.
    Case {
        op: "max_pool2d",
        params: "{ kernel: 3, stride: 2, padding: 1 }",
        feeds: &[("x", Feed::TrainableDistinct(X))],
    },
    // Default stride (= kernel), a 5×7 plane that leaves a row and a column unpooled.
    Case {
        op: "max_pool2d",
        params: "{ kernel: 2 }",
        feeds: &[("x", Feed::TrainableDistinct(X))],
    },
    // Within the batch, sample 1 the partner of both: its da sums its own share and both
    // samples' pasted shares.
    Case {
        op: "mix",
        params: "{}",
        feeds: &[
            ("mask", Feed::Binary(PIXELS)),
            ("partner", Feed::Indices(&[1, 1])),
            ("a", Feed::Trainable(X)),
        ],
    },
    // A second batch: da and db.
    Case {
        op: "mix",
        params: "{}",
        feeds: &[
            ("mask", Feed::Binary(PIXELS)),
            ("partner", Feed::Indices(&[1, 0])),
            ("a", Feed::Trainable(X)),
            ("b", Feed::Trainable(X)),
        ],
    },
    // [N, H, W] maps, a constant second batch: only da.
    Case {
        op: "mix",
        params: "{}",
        feeds: &[
            ("mask", Feed::Binary(PIXELS)),
            ("partner", Feed::Indices(&[0, 1])),
            ("a", Feed::Trainable(PIXELS)),
            ("b", Feed::Constant(PIXELS)),
        ],
    },
    Case {
        op: "mean",
        params: "{ over: all }",
        feeds: &[("x", Feed::Trainable(X))],
    },
    // Same-spec operands, both wanted (one mul_bwd pass).
    Case {
        op: "mul",
        params: "{}",
        feeds: &[("a", Feed::Trainable(X)), ("b", Feed::Trainable(X))],
    },
    // Only db, fed `a` alone.
    Case {
        op: "mul",
        params: "{}",
        feeds: &[("a", Feed::Constant(X)), ("b", Feed::Trainable(X))],
    },
    // A scalar `b`: da = dy·b, db = Σ dy·a.
    Case {
        op: "mul",
        params: "{}",
        feeds: &[("a", Feed::Trainable(X)), ("b", Feed::Trainable(&[]))],
    },
    // A constant scalar `b` (a confident fraction): only da, fed `b` alone.
    Case {
        op: "mul",
        params: "{}",
        feeds: &[("a", Feed::Trainable(X)), ("b", Feed::Constant(&[]))],
    },
    Case {
        op: "relu",
        params: "{}",
        feeds: &[("x", Feed::TrainableOffZero(X))],
    },
    Case {
        op: "resize_bilinear",
        params: "{ size: [4, 9] }",
        feeds: &[("x", Feed::Trainable(X))],
    },
    Case {
        op: "resize_bilinear",
        params: "{ size: [8, 3], align_corners: true }",
        feeds: &[("x", Feed::Trainable(X))],
    },
    Case {
        op: "softmax",
        params: "{}",
        feeds: &[("x", Feed::Trainable(X))],
    },
    // Both maps trainable, default denominator (N·H·W), no weight.
    Case {
        op: "squared_error",
        params: "{}",
        feeds: &[("a", Feed::Trainable(X)), ("b", Feed::Trainable(X))],
    },
    // A teacher-like constant target and a per-pixel weight: only da.
    Case {
        op: "squared_error",
        params: "{ denominator: weight_sum }",
        feeds: &[
            ("a", Feed::Trainable(X)),
            ("b", Feed::Constant(X)),
            ("weight", Feed::Constant(PIXELS)),
        ],
    },
    // Augmentations act on data: stop-gradients, checked on 3-channel images.
    Case {
        op: "color_jitter",
        params: "{ p: 1.0, brightness: 0.5, hue: 0.1 }",
        feeds: &[("image", Feed::Trainable(X))],
    },
    Case {
        op: "random_grayscale",
        params: "{ p: 1.0 }",
        feeds: &[("image", Feed::Trainable(X))],
    },
    Case {
        op: "gaussian_blur",
        params: "{ p: 1.0 }",
        feeds: &[("image", Feed::Trainable(X))],
    },
    Case {
        op: "cutout",
        params: "{ p: 1.0, size: { area: 0.25 } }",
        feeds: &[("image", Feed::Trainable(X))],
    },
    Case {
        op: "threshold",
        params: "{ at: 0.0 }",
        feeds: &[("x", Feed::Trainable(X))],
    },
];

/// Builds and checks one case; returns whether the op turned out to be a stop-gradient.
fn check_case(r: &Registry, case: &Case) -> bool {
    let what = format!("`{}` {}", case.op, case.params);
    let mut inputs = Inputs::default();
    let wiring: Vec<String> = case
        .feeds
        .iter()
        .map(|&(port, feed)| format!("{port}: {}", inputs.add(port, feed)))
        .collect();
    let mut nodes = vec![format!(
        "{{ name: op, op: {}, inputs: {{ {} }}, params: {} }}",
        case.op,
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
    let port = r.get(case.op).expect("registered").outputs()[k].name;
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
            "{what}: `{}` has no VJP and is not a stop-gradient; implement `Op::vjp` or set \
             `STOP_GRAD`: {e:#?}",
            case.op
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

#[test]
fn every_differentiable_op_matches_finite_differences() {
    let r = registry();
    let (mut checked, mut skipped) = (BTreeSet::new(), BTreeSet::new());
    for op in builtin_registry().expect("built-in ops register").iter() {
        let cases: Vec<&Case> = CASES.iter().filter(|c| c.op == op.name()).collect();
        assert!(
            !cases.is_empty(),
            "`{}` has no case in CASES: add one (its inputs and params)",
            op.name()
        );
        for case in cases {
            if check_case(&r, case) {
                skipped.insert(case.op);
            } else {
                checked.insert(case.op);
            }
        }
    }
    assert!(
        checked.is_disjoint(&skipped),
        "{checked:?} vs {skipped:?}: an op is a stop-gradient in one case only"
    );
    assert!(!checked.is_empty(), "no differentiable op was checked");
}

// ---- graph-level behaviour ---------------------------------------------------------------------

#[test]
fn fan_out_gradients_are_summed() {
    // x reaches the loss along relu, softmax, an identity skip and (through v = u + u) twice
    // over: d loss/dx sums every path, via `grad_add` nodes.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::TrainableOffZero(X));
    inputs.add("reduce_w", Feed::Trainable(X));
    let nodes = [
        "{ name: r, op: relu, inputs: { x: state.x } }",
        "{ name: s, op: softmax, inputs: { x: state.x } }",
        "{ name: t, op: add, inputs: { a: r.y, b: s.y } }",
        "{ name: u, op: add, inputs: { a: t.y, b: state.x } }",
        "{ name: v, op: add, inputs: { a: u.y, b: u.y } }",
        "{ name: loss, op: weighted_sum, inputs: { x: v.y, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "loss", "loss");
    let wrt = inputs.trainable();
    let (grads, bwd) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    // x has three consumers (two adds), u.y is both operands of v (one add).
    let adds = bwd
        .nodes
        .iter()
        .filter(|n| n.op.name() == "grad_add")
        .count();
    assert_eq!(adds, 3, "grad_add nodes");
    check_against_differences("fan-out", &g, &mut inputs, &loss, "x", &grads["x"]);
}

#[test]
fn max_confidence_cuts_the_gradient() {
    // FixMatch-style self-training on one tensor: pseudo-labels and confidences from softmax(x)
    // are the target and weight of a cross entropy on x itself.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("reduce_w", Feed::Trainable(PIXELS));
    let nodes = [
        "{ name: p, op: softmax, inputs: { x: state.x } }",
        "{ name: pseudo, op: max_confidence, inputs: { probs: p.y } }",
        "{ name: ce, op: cross_entropy, inputs: { logits: state.x, target: pseudo.label, \
         weight: pseudo.confidence }, params: { denominator: weight_sum } }",
        "{ name: conf, op: weighted_sum, inputs: { x: pseudo.confidence, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let (ce, conf) = (output(&r, &g, "ce", "loss"), output(&r, &g, "conf", "loss"));
    let wrt = inputs.trainable();

    // A loss reached only through max_confidence: no gradient, no backward node but the seed.
    let (grads, bwd) =
        gradients(&g, &inputs, std::slice::from_ref(&conf), &wrt).expect("differentiates");
    assert!(grads.is_empty(), "{:?}", grads.keys());
    let emitted: Vec<&str> = bwd.nodes[g.nodes.len()..]
        .iter()
        .map(|n| n.op.name())
        .collect();
    assert_eq!(emitted, ["grad_seed"]);

    // Both losses: x's gradient is the cross entropy's with target and weight held constant,
    // i.e. that of the same loss with them as batch fields.
    let (grads, bwd) = gradients(&g, &inputs, &[ce, conf], &wrt).expect("differentiates");
    assert!(
        bwd.nodes
            .iter()
            .all(|n| !n.name.value.starts_with("pseudo/")
                && !n.name.value.starts_with("p/")
                && !n.name.value.starts_with("conf/")),
        "backward nodes behind max_confidence"
    );
    let run = exec::run_cpu(&g, &inputs.batch, &inputs.state, 0, 0).expect("forward runs");
    let label = run.get(&output(&r, &g, "pseudo", "label")).cloned();
    let confidence = run.get(&output(&r, &g, "pseudo", "confidence")).cloned();
    drop(run);
    let mut fixed = Inputs::default();
    fixed.insert("x", true, inputs.state["x"].clone());
    fixed.insert("target", false, label.expect("label computed"));
    fixed.insert("weight", false, confidence.expect("confidence computed"));
    let g = build(
        &r,
        &[
            "{ name: ce, op: cross_entropy, inputs: { logits: state.x, target: batch.target, \
           weight: batch.weight }, params: { denominator: weight_sum } }"
                .to_owned(),
        ],
        &fixed,
    );
    let ce = output(&r, &g, "ce", "loss");
    check_against_differences("self-training", &g, &mut fixed, &ce, "x", &grads["x"]);
}

#[test]
fn cross_entropy_weight_must_be_detached_to_be_constant() {
    // cross_entropy treats its per-pixel weight as a constant: one that depends on trainable
    // state is refused rather than its gradient dropped, and `detach` says it is intended.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("target", Feed::Labels(PIXELS));
    inputs.add("w", Feed::Trainable(PIXELS));
    let ce = |weight: &str| {
        format!(
            "{{ name: ce, op: cross_entropy, inputs: {{ logits: state.x, target: batch.target, \
             weight: {weight} }} }}"
        )
    };
    let wrt = inputs.trainable();

    let g = build(&r, &[ce("state.w")], &inputs);
    let loss = output(&r, &g, "ce", "loss");
    let errs = gradients(&g, &inputs, &[loss], &wrt).expect_err("a trainable weight is refused");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].code, NOT_DIFFERENTIABLE);
    assert_eq!(errs[0].node.as_deref(), Some("ce"));
    assert!(errs[0].message.contains("`detach`"), "{}", errs[0].message);

    let nodes = [
        "{ name: frozen, op: detach, inputs: { x: state.w } }".to_owned(),
        ce("frozen.y"),
    ];
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "ce", "loss");
    let (grads, _) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    assert_eq!(grads.keys().collect::<Vec<_>>(), ["x"]);
    check_against_differences("detached weight", &g, &mut inputs, &loss, "x", &grads["x"]);
}

#[test]
fn cutmix_mixes_logits_and_labels_with_one_mask() {
    // A box mask drawn beside the logits mixes them (f32, within the batch) and the labels (i32)
    // alike; the gradient flows through the logits' mix only. The mask is drawn from the node's
    // stream, so every finite-difference run sees the same boxes.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("target", Feed::Labels(PIXELS));
    let nodes = [
        "{ name: cut, op: box_mask, inputs: { like: state.x }, params: { partner: roll } }",
        "{ name: mixed, op: mix, inputs: { mask: cut.mask, partner: cut.partner, a: state.x } }",
        "{ name: labels, op: mix, inputs: { mask: cut.mask, partner: cut.partner, \
         a: batch.target } }",
        "{ name: ce, op: cross_entropy, inputs: { logits: mixed.out, target: labels.out } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "ce", "loss");
    let wrt = inputs.trainable();
    let (grads, bwd) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    let emitted: Vec<&str> = bwd.nodes[g.nodes.len()..]
        .iter()
        .map(|n| n.op.name())
        .collect();
    assert_eq!(emitted, ["grad_seed", "cross_entropy_bwd", "mix_bwd"]);
    check_against_differences("cutmix", &g, &mut inputs, &loss, "x", &grads["x"]);

    // A mask that depends on trainable state is refused, not silently held constant.
    inputs.add("m", Feed::Trainable(PIXELS));
    inputs.add("reduce_w", Feed::Trainable(X));
    let nodes = [
        "{ name: cut, op: box_mask, inputs: { like: state.x }, params: { partner: roll } }",
        "{ name: mixed, op: mix, inputs: { mask: state.m, partner: cut.partner, a: state.x } }",
        "{ name: loss, op: weighted_sum, inputs: { x: mixed.out, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "loss", "loss");
    let errs = gradients(&g, &inputs, &[loss], &inputs.trainable()).expect_err("refused");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].code, errs[0].node.as_deref()),
        (NOT_DIFFERENTIABLE, Some("mixed"))
    );
    assert!(errs[0].message.contains("`detach`"), "{}", errs[0].message);
}

#[test]
fn squared_error_weight_must_be_detached_to_be_constant() {
    // The same rule as cross_entropy's weight, through the shared helper.
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("a", Feed::Trainable(X));
    inputs.add("b", Feed::Constant(X));
    inputs.add("w", Feed::Trainable(PIXELS));
    let node = |weight: &str| {
        format!(
            "{{ name: cons, op: squared_error, inputs: {{ a: state.a, b: batch.b, weight: \
             {weight} }} }}"
        )
    };
    let wrt = inputs.trainable();

    let g = build(&r, &[node("state.w")], &inputs);
    let loss = output(&r, &g, "cons", "loss");
    let errs = gradients(&g, &inputs, &[loss], &wrt).expect_err("a trainable weight is refused");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].code, errs[0].node.as_deref()),
        (NOT_DIFFERENTIABLE, Some("cons"))
    );
    assert!(
        errs[0].message.contains("`weight`") && errs[0].message.contains("`detach`"),
        "{}",
        errs[0].message
    );

    let nodes = [
        "{ name: frozen, op: detach, inputs: { x: state.w } }".to_owned(),
        node("frozen.y"),
    ];
    let g = build(&r, &nodes, &inputs);
    let loss = output(&r, &g, "cons", "loss");
    let (grads, _) =
        gradients(&g, &inputs, std::slice::from_ref(&loss), &wrt).expect("differentiates");
    assert_eq!(grads.keys().collect::<Vec<_>>(), ["a"]);
    check_against_differences("detached weight", &g, &mut inputs, &loss, "a", &grads["a"]);
}

#[test]
fn an_op_without_vjp_on_the_path_is_fs0109() {
    let r = registry();
    let mut inputs = Inputs::default();
    inputs.add("x", Feed::Trainable(X));
    inputs.add("image", Feed::Constant(X));
    inputs.add("reduce_w", Feed::Trainable(X));
    let nodes = [
        "{ name: hidden, op: opaque, inputs: { x: state.x } }",
        "{ name: loss, op: weighted_sum, inputs: { x: hidden.y, w: state.reduce_w } }",
        // Off the trainable path: no gradient is needed through it, so no error.
        "{ name: aside, op: opaque, inputs: { x: batch.image } }",
        "{ name: loss2, op: weighted_sum, inputs: { x: aside.y, w: state.reduce_w } }",
    ]
    .map(String::from);
    let g = build(&r, &nodes, &inputs);
    let losses = [
        output(&r, &g, "loss", "loss"),
        output(&r, &g, "loss2", "loss"),
    ];
    let errs =
        gradients(&g, &inputs, &losses, &inputs.trainable()).expect_err("differentiation fails");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].code, NOT_DIFFERENTIABLE);
    assert_eq!(errs[0].node.as_deref(), Some("hidden"));
    assert!(errs[0].message.contains("`opaque`"), "{}", errs[0].message);
    assert!(
        errs[0]
            .help
            .as_deref()
            .is_some_and(|h| h.contains("detach")),
        "{:?}",
        errs[0].help
    );
}

#[test]
fn batch_norm_statistics_carry_no_gradient() {
    // The running statistics are buffers (assigned, never trained), and the statistics outputs
    // feed assigns: a gradient through either is refused, not dropped.
    let r = registry();
    let inputs = |mean: Feed| {
        let mut i = Inputs::default();
        i.add("x", Feed::Trainable(X));
        i.add("gamma", Feed::Constant(&[3]));
        i.add("beta", Feed::Constant(&[3]));
        let mean = i.add("running_mean", mean);
        i.add("running_var", Feed::Constant(&[3]));
        i.add("reduce_w", Feed::Trainable(X));
        i.add("reduce_wc", Feed::Trainable(&[3]));
        (i, mean)
    };
    let refused = |port: &str, mean: Feed| {
        let (inputs, mean) = inputs(mean);
        let w = if port == "y" { "reduce_w" } else { "reduce_wc" };
        let nodes = [
            format!(
                "{{ name: bn, op: batch_norm, inputs: {{ x: state.x, gamma: batch.gamma, beta: \
                 batch.beta, running_mean: {mean}, running_var: batch.running_var }} }}"
            ),
            format!("{{ name: loss, op: weighted_sum, inputs: {{ x: bn.{port}, w: state.{w} }} }}"),
        ];
        let g = build(&r, &nodes, &inputs);
        let loss = output(&r, &g, "loss", "loss");
        let errs = gradients(&g, &inputs, &[loss], &inputs.trainable()).expect_err("refused");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(
            (errs[0].code, errs[0].node.as_deref()),
            (NOT_DIFFERENTIABLE, Some("bn"))
        );
        errs[0].message.clone()
    };
    // A trainable running mean, even with the loss on `y` (train mode does not read it there).
    let m = refused("y", Feed::Trainable(&[3]));
    assert!(m.contains("`running_mean`") && m.contains("buffers"), "{m}");
    // A loss on `new_mean`, which depends on x through the batch mean.
    let m = refused("new_mean", Feed::Constant(&[3]));
    assert!(m.contains("`new_mean`") && m.contains("detach"), "{m}");
}
