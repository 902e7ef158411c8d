//! train: one training step of a method graph, built once — the validated forward graph, one
//! backward pass per optimizer (each differentiating its own weighted `minimize:` losses with
//! respect to its model's parameters), then the update as graph nodes (update.rs: a guard over
//! every loss and gradient, the optimizer steps in declared order, the assigned buffers, the
//! EMA updates), planned and run as one step — and the learning-rate schedules, whose values the
//! host writes into the step's scalars before each run.
//!
//! State naming: a model's parameters are the state tensors named `<model>.<name>`; `lr_mult`
//! prefixes match `<name>`.
//!
//! State comes from two places: tensors handed in (`env.state` + their values) and tensors the
//! models declare while tracing, initialised here from their `Init` with a Philox stream per
//! name. Buffers the models assign (BN running statistics) are written after the updates. The
//! optimizer moments and the step's scalars are state of the step graph too, kept beside the
//! model state (`aux`) so that `state` stays the models' tensors.
//!
//! [`Trainer::checkpoint`] / [`Trainer::resume`] capture and restore everything a run needs to
//! continue exactly: state, optimizer buffers and step counts, the next iteration.
//!
//! Not here yet: EMA copies, the run directory, metrics, the progress bar (the CLI's run loop).

use crate::autodiff;
use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::exec::{self, ExecError};
use crate::graph::{Env, Graph, ValueRef};
use crate::ir;
use crate::registry::Registry;
use crate::spec::{GraphError, GraphSpec, Loc, OptimKind, OptimSpec, Schedule};
use crate::tensor::{DType, Tensor};
use crate::update::{self, AdamWStepOp, Assign, EmaUpdate, FiniteAnd, SgdStep};
use crate::{op::Configured, NoParams};
use flowseg_kernels::optim::{sgd_step, AdamW, EmaStep, Sgd};
use flowseg_kernels::KernelError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// FS0111: a `minimize:` entry that names no loss, or an optimizer for a model without
/// parameters.
pub const BAD_OBJECTIVE: &str = "FS0111";
/// FS0118: the training step would not fit in this machine's memory.
pub const TOO_BIG: &str = "FS0118";
/// FS0116: an `lr_mult` prefix that selects no parameter of its model.
pub const LR_MULT: &str = "FS0116";
/// FS0117: a model's initial weights (`init: { weights: file }`) cannot be loaded.
pub const INIT_WEIGHTS: &str = "FS0117";

/// Learning rate at `iteration` (0-based) of `total`: linear warm-up from 0 over `warmup`
/// iterations, then the schedule over the remaining ones.
pub fn lr_at(base: f64, schedule: Option<&Schedule>, iteration: u64, total: u64) -> f64 {
    let warmup = match schedule {
        Some(
            Schedule::Constant { warmup }
            | Schedule::Poly { warmup, .. }
            | Schedule::Cosine { warmup, .. },
        ) => *warmup,
        None => 0,
    };
    if iteration < warmup {
        return base * (iteration + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((iteration - warmup) as f64 / span).min(1.0);
    match schedule {
        None | Some(Schedule::Constant { .. }) => base,
        Some(Schedule::Poly { power, .. }) => base * (1.0 - t).powf(*power),
        Some(Schedule::Cosine { min_lr, .. }) => {
            min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Running the graph failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// An update kernel refused (a shape bug, or a bad hyper-parameter).
    #[error("optimizer of `{model}`: {source}")]
    Update {
        /// The model.
        model: String,
        /// The failure.
        source: KernelError,
    },
    /// A loss came out NaN or infinite: the update is skipped and the state left unchanged.
    #[error(
        "loss `{name}` is {value} at iteration {iteration}{}; state left unchanged",
        first_non_finite(first)
    )]
    NonFinite {
        /// Loss reference.
        name: String,
        /// Its value.
        value: f32,
        /// Iteration.
        iteration: u64,
        /// The first node, in graph order, with a NaN or infinite output: where it started.
        first: Option<String>,
    },
    /// A gradient came out NaN or infinite although every loss was finite (an overflow in the
    /// backward, a huge loss weight or learning rate): no update is applied.
    #[error(
        "the gradient of `{param}` is not finite at iteration {iteration} (the losses were \
         finite){}; state left unchanged",
        first_non_finite(first)
    )]
    NonFiniteGradient {
        /// The parameter whose gradient is the first found non-finite.
        param: String,
        /// Iteration.
        iteration: u64,
        /// The first node, in graph order, with a NaN or infinite output.
        first: Option<String>,
    },
}

/// ", first non-finite output: node `x`" for an error message, or nothing.
fn first_non_finite(first: &Option<String>) -> String {
    first
        .as_ref()
        .map(|n| format!(" (the first NaN or infinity is an output of node `{n}`)"))
        .unwrap_or_default()
}

struct Param {
    state: String,
    grad: ValueRef,
    lr_mult: f64,
    /// Elements of the parameter (and of each of its moments).
    len: usize,
    /// Its first slot in the step's scalars (see [`Trainer::write_scalars`]).
    at: usize,
}

/// The name of a parameter's optimizer buffer `kind` (`m`, `v`): in the step's state and in
/// checkpoints.
fn moment_name(model: &str, param: &str, kind: &str) -> String {
    format!("optim/{model}/{param}/{kind}")
}

/// The state tensor of the step's per-step scalars.
const SCALARS: &str = "step/scalars";

struct Optimizer {
    model: String,
    spec: OptimSpec,
    params: Vec<Param>,
    steps: u64,
}

/// A method graph ready to train.
pub struct Trainer {
    /// Forward and backward nodes.
    pub graph: Graph,
    /// Every loss some optimizer minimizes, by reference, for logging.
    pub losses: Vec<(String, ValueRef)>,
    /// The graph's `metrics:` (name, source), logged beside the losses.
    pub metrics: Vec<(String, ValueRef)>,
    /// The values of [`Trainer::metrics`] after the last [`Trainer::step`] (NaN where a metric
    /// had no value, e.g. an accuracy over no pixel).
    pub metric_values: Vec<(String, f32)>,
    /// Persistent tensors (parameters), updated in place by [`Trainer::step`].
    pub state: BTreeMap<String, Tensor>,
    optimizers: Vec<Optimizer>,
    emas: Vec<Ema>,
    total: u64,
    seed: u64,
    /// How [`Trainer::step`] runs `graph`: one stream (the CPU runs one op at a time), keeping
    /// the losses, gradients and assigned buffers. `flowseg plan` re-plans from its `keep`.
    pub plan: crate::plan::Plan,
    /// What [`Trainer::step`] runs: `graph` followed by the update as graph nodes
    /// (engine/src/update.rs: the finiteness guard, each parameter's optimizer step, the
    /// assigns, the EMA updates, in that order), and its one-stream plan.
    step_graph: Graph,
    step_plan: crate::plan::Plan,
    /// State the update nodes read and write besides `state`: each parameter's optimizer
    /// moments (`optim/<model>/<param>/m`, `/v`, flat, the checkpoint's names) and the step's
    /// scalars (`step/scalars`, written before each step).
    aux: BTreeMap<String, Tensor>,
    /// The guard's value in `step_graph` (1 when every loss and gradient was finite and the
    /// update ran, else 0); `None` when the step has no loss or gradient.
    guard: Option<ValueRef>,
    /// The step plan's buffers, kept across steps (see [`exec::Workspace`]).
    workspace: exec::Workspace,
    /// The node pairs the fusion pass merged in `graph` (empty with [`TrainerOptions::fuse`]
    /// off).
    pub fusions: Vec<crate::fusion::Fusion>,
    /// With [`Trainer::use_cuda`]: the GPU that runs the step and holds the state, and the step
    /// plan made launchable. `state` and the moments on the host are then stale until
    /// [`Trainer::sync_state`].
    #[cfg(feature = "cuda")]
    cuda: Option<(crate::cuda_exec::CudaExecutor, crate::device::Program)>,
    /// The debug switches of the GPU step ([`Trainer::set_debug_checks`]).
    #[cfg(feature = "cuda")]
    debug: crate::shadow::DebugChecks,
}

/// How [`Trainer::with_options`] builds the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainerOptions {
    /// Run the fusion pass ([`crate::fusion`]) on the step's graph before planning it (default
    /// true; `--no-fuse` turns it off). The values are the same either way (bit for bit for the
    /// built-in fusions; tests/fusion.rs).
    pub fuse: bool,
    /// Streams of the step's plan (default 1). The CPU runs any plan one op at a time, with the
    /// same numbers; the CUDA executor runs independent branches concurrently (`--streams`).
    pub streams: usize,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            fuse: true,
            streams: 1,
        }
    }
}

/// An `ema_of` model: its parameters follow the source model's.
struct Ema {
    /// (teacher parameter, student parameter) pairs.
    pairs: Vec<(String, String)>,
    /// State names of the teacher (parameters and buffers) and their sources, copied at start.
    copies: Vec<(String, String)>,
    decay: f64,
    ramp: bool,
    /// Its two slots in the step's scalars (α, 1 − α).
    at: usize,
}

impl Trainer {
    /// Validates the graph against `env`, differentiates every optimizer's objective and
    /// prepares optimizer buffers. `state` holds the initial value of every tensor in
    /// `env.state`.
    pub fn new(
        spec: &GraphSpec,
        registry: &Registry,
        env: &Env,
        state: BTreeMap<String, Tensor>,
    ) -> Result<Self, Vec<GraphError>> {
        Self::with_options(spec, registry, env, state, TrainerOptions::default())
    }

    /// [`Trainer::new`] with `options`.
    pub fn with_options(
        spec: &GraphSpec,
        registry: &Registry,
        env: &Env,
        mut state: BTreeMap<String, Tensor>,
        options: TrainerOptions,
    ) -> Result<Self, Vec<GraphError>> {
        // Sizes first: a batch whose element count overflows would panic in shape arithmetic,
        // and the state below is allocated at once.
        let limit = machine_memory();
        check_fits(&Footprint::of_batch(env), spec, limit).map_err(|e| vec![e])?;
        let mut graph = ir::build(spec, registry, env)?;
        let mut footprint = Footprint::of_batch(env);
        footprint.add_state(spec, &graph);
        check_fits(&footprint, spec, limit).map_err(|e| vec![e])?;
        for (name, decl) in &graph.params {
            if !state.contains_key(name) {
                let t = decl
                    .init
                    .tensor(&decl.spec, spec.train.seed, name_stream(name));
                state.insert(name.clone(), t);
            }
        }
        let mut errors = Vec::new();
        let mut losses: Vec<(String, ValueRef)> = Vec::new();
        let mut optimizers = Vec::new();
        for (model, ospec) in &spec.optim {
            let prefix = format!("{}.", model.value);
            let trainable = |k: &String| graph.params.get(k).is_none_or(|d| d.trainable);
            let wrt: BTreeSet<String> = graph
                .state
                .keys()
                .filter(|k| k.starts_with(&prefix) && trainable(k))
                .cloned()
                .collect();
            if wrt.is_empty() {
                errors.push(GraphError::new(
                    BAD_OBJECTIVE,
                    format!(
                        "the graph reads no parameter of model `{}` (state `{prefix}*`)",
                        model.value
                    ),
                    model.loc,
                ));
                continue;
            }
            let mut objective = Vec::new();
            for (reference, weight) in &ospec.minimize {
                match resolve_output(&graph, reference) {
                    Some(src)
                        if !graph
                            .spec_of(&src)
                            .is_some_and(|t| t.dtype == DType::F32 && t.shape.is_empty()) =>
                    {
                        errors.push(
                            GraphError::new(
                                crate::autodiff::BAD_LOSS,
                                format!(
                                    "`{}` is {}: a loss must be an f32 scalar",
                                    reference.value,
                                    graph
                                        .spec_of(&src)
                                        .map_or("unknown".to_owned(), |t| t.to_string())
                                ),
                                reference.loc,
                            )
                            .help(
                                "minimize a loss op's output (`cross_entropy`, `squared_error`), \
                                 or reduce the value with a `mean` node",
                            ),
                        );
                    }
                    Some(src)
                        if !crate::autodiff::depends_on(
                            &graph,
                            &src,
                            &wrt.iter().cloned().map(ValueRef::State).collect(),
                        ) =>
                    {
                        errors.push(
                            GraphError::new(
                                BAD_OBJECTIVE,
                                format!(
                                    "`{}` depends on no trainable parameter of `{}`: minimizing \
                                     it would change no weight",
                                    reference.value, model.value
                                ),
                                reference.loc,
                            )
                            .help(format!(
                                "a loss of another model (an EMA teacher's) or one behind a \
                                 stop-gradient (`detach`, pseudo-labels) trains nothing; minimize \
                                 a loss computed from `{}`'s outputs",
                                model.value
                            )),
                        );
                    }
                    Some(src) => {
                        if !losses.iter().any(|(r, _)| r == &reference.value) {
                            losses.push((reference.value.clone(), src.clone()));
                        }
                        objective.push((src, *weight));
                    }
                    None => errors.push(
                        GraphError::new(
                            BAD_OBJECTIVE,
                            format!(
                                "`minimize` names `{}`, which is no node output",
                                reference.value
                            ),
                            reference.loc,
                        )
                        .help("write `<node>.<output>`, e.g. `sup_loss.loss: 1.0`"),
                    ),
                }
            }
            for reference in ospec.minimize.keys() {
                let hidden = resolve_output(&graph, reference)
                    .and_then(|src| hidden_input(&graph, &src, &env.hidden));
                if let Some(field) = hidden {
                    errors.push(
                        GraphError::new(
                            BAD_OBJECTIVE,
                            format!(
                                "`{}` depends on `batch.{field}`, the hidden ground truth of \
                                 unlabeled images: a minimized loss must not see it",
                                reference.value
                            ),
                            reference.loc,
                        )
                        .help(
                            "hidden fields may feed `metrics:` only (e.g. pseudo-label accuracy)",
                        ),
                    );
                }
            }
            if objective.is_empty() {
                if ospec.minimize.is_empty() {
                    errors.push(
                        GraphError::new(
                            BAD_OBJECTIVE,
                            format!("optimizer of `{}` minimizes nothing", model.value),
                            model.loc,
                        )
                        .help("add `minimize: { <node>.<output>: 1.0 }`"),
                    );
                }
                continue;
            }
            // Every `lr_mult` prefix must select some parameter: a misspelt one would silently
            // train its group at the base rate.
            for prefix_key in ospec.lr_mult.keys() {
                let locals = || wrt.iter().map(|n| &n[prefix.len()..]);
                if !locals().any(|l| l.starts_with(prefix_key.as_str())) {
                    let mut groups: Vec<&str> =
                        locals().map(|l| l.split('.').next().unwrap_or(l)).collect();
                    groups.dedup();
                    let near = crate::spec::nearest(prefix_key, groups.iter().copied(), 3)
                        .map(|g| format!("did you mean `{g}`? "))
                        .unwrap_or_default();
                    let shown: Vec<String> =
                        groups.iter().take(12).map(|g| format!("`{g}`")).collect();
                    errors.push(
                        GraphError::new(
                            LR_MULT,
                            format!(
                                "`lr_mult` prefix `{prefix_key}` matches no parameter of `{}`",
                                model.value
                            ),
                            model.loc,
                        )
                        .help(format!("{near}parameter groups: {}", shown.join(", "))),
                    );
                }
            }
            match autodiff::differentiate_weighted(&mut graph, &objective, &wrt) {
                Ok(grads) => {
                    let params = grads
                        .into_iter()
                        .map(|(name, grad)| {
                            let len = graph.state.get(&name).map_or(0, |s| s.len());
                            let local = &name[prefix.len()..];
                            let lr_mult = ospec
                                .lr_mult
                                .iter()
                                .filter(|(p, _)| local.starts_with(p.as_str()))
                                .max_by_key(|(p, _)| p.len())
                                .map_or(1.0, |(_, m)| *m);
                            Param {
                                state: name,
                                grad,
                                lr_mult,
                                len,
                                at: 0,
                            }
                        })
                        .collect();
                    optimizers.push(Optimizer {
                        model: model.value.clone(),
                        spec: ospec.clone(),
                        params,
                        steps: 0,
                    });
                }
                Err(e) => errors.extend(e),
            }
        }
        for name in graph.state.keys() {
            if !state.contains_key(name) {
                errors.push(GraphError::new(
                    BAD_OBJECTIVE,
                    format!("no initial value for state tensor `{name}`"),
                    Loc::NONE,
                ));
            }
        }
        let mut metrics = Vec::new();
        for (name, reference) in &spec.metrics {
            match resolve_output(&graph, reference) {
                Some(src) if graph.spec_of(&src).is_some_and(|s| s.len() == 1) => {
                    metrics.push((name.value.clone(), src));
                }
                Some(src) => errors.push(
                    GraphError::new(
                        BAD_OBJECTIVE,
                        format!(
                            "metric `{}` = `{}` is {}, not a scalar",
                            name.value,
                            reference.value,
                            graph
                                .spec_of(&src)
                                .map_or("unknown".to_owned(), |s| s.to_string())
                        ),
                        reference.loc,
                    )
                    .help("log a scalar: reduce it first, e.g. with a `mean` node"),
                ),
                None => errors.push(
                    GraphError::new(
                        BAD_OBJECTIVE,
                        format!(
                            "metric `{}` names `{}`, which is no node output",
                            name.value, reference.value
                        ),
                        reference.loc,
                    )
                    .help("write `<name>: <node>.<output>`, e.g. `confident: conf_frac.y`"),
                ),
            }
        }
        let mut emas = ema_pairs(spec, &graph, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let grads = optimizers
            .iter()
            .flat_map(|o| o.params.iter().map(|p| &p.grad));
        let keep: Vec<ValueRef> = (losses.iter().map(|(_, s)| s).chain(grads))
            .chain(metrics.iter().map(|(_, s)| s))
            .chain(graph.assigns.iter().map(|(s, _)| s))
            .cloned()
            .collect();
        let fused = if options.fuse {
            crate::fusion::fuse(graph, &keep)
        } else {
            crate::fusion::Fused::none(graph)
        };
        // The pass never removes a kept value, so every reference maps.
        let remap = |v: &mut ValueRef| -> Result<(), Vec<GraphError>> {
            *v = fused.remap(v).ok_or_else(|| {
                vec![GraphError::new(
                    BAD_OBJECTIVE,
                    "internal: the fusion pass removed a value the step reads",
                    Loc::NONE,
                )]
            })?;
            Ok(())
        };
        let mut keep = keep;
        for v in keep
            .iter_mut()
            .chain(losses.iter_mut().map(|(_, v)| v))
            .chain(metrics.iter_mut().map(|(_, v)| v))
            .chain(
                optimizers
                    .iter_mut()
                    .flat_map(|o| o.params.iter_mut().map(|p| &mut p.grad)),
            )
        {
            remap(v)?;
        }
        let graph = fused.graph;
        let fusions = fused.fusions;
        if !fusions.is_empty() {
            tracing::info!("fused: {}", crate::fusion::Summary(&fusions));
        }
        // The CPU runs one op at a time, so it plans one stream; `stream:` pins shape the
        // multi-stream plans of `flowseg plan --streams K` (and of the CUDA executor, later).
        let pinned = graph.nodes.iter().filter(|n| n.stream.is_some()).count();
        if pinned > 0 {
            tracing::info!(
                "{pinned} node(s) pinned to a stream: pins apply to multi-stream plans; the CPU \
                 trainer runs one stream"
            );
        }
        let mut step_graph = graph.clone();
        let (aux, guard) = append_update(&mut step_graph, &losses, &mut optimizers, &mut emas)
            .map_err(|e| {
                vec![GraphError::new(
                    BAD_OBJECTIVE,
                    format!("internal: appending the update to the step: {e}"),
                    Loc::NONE,
                )]
            })?;
        let mut step_keep = keep.clone();
        step_keep.extend(guard.clone());
        let plan = crate::plan::plan(&graph, &crate::plan::PlanOptions { streams: 1, keep })?;
        let step_plan = crate::plan::plan(
            &step_graph,
            &crate::plan::PlanOptions {
                streams: options.streams.max(1),
                keep: step_keep,
            },
        )?;
        footprint.activations = plan.stats.peak_bytes as u64;
        check_fits(&footprint, spec, limit).map_err(|e| vec![e])?;
        let mut t = Trainer {
            plan,
            step_graph,
            step_plan,
            aux,
            guard,
            fusions,
            #[cfg(feature = "cuda")]
            cuda: None,
            #[cfg(feature = "cuda")]
            debug: crate::shadow::DebugChecks::default(),
            workspace: exec::Workspace::default(),
            graph,
            losses,
            metric_values: Vec::new(),
            metrics,
            state,
            optimizers,
            emas,
            total: spec.train.iterations,
            seed: spec.train.seed,
        };
        t.sync_emas();
        tracing::info!(
            nodes = t.graph.nodes.len(),
            state = t.graph.state.len(),
            optimizers = t.optimizers.len(),
            emas = t.emas.len(),
            "training step built"
        );
        Ok(t)
    }

    /// Where a non-finite value started: the step run again by the reference executor, which
    /// keeps every output, and the first node in graph order with a NaN or infinite f32 output.
    /// Only on failure: it costs one more step.
    fn first_non_finite(&self, batch: &BTreeMap<String, Tensor>, iteration: u64) -> Option<String> {
        let run = exec::run_cpu(&self.graph, batch, &self.state, self.seed, iteration).ok()?;
        self.graph.nodes.iter().enumerate().find_map(|(node, n)| {
            let bad = (0..n.outputs.len()).any(|port| {
                run.get(&ValueRef::Node { node, port })
                    .and_then(Tensor::f32)
                    .is_some_and(|v| v.iter().any(|x| !x.is_finite()))
            });
            bad.then(|| n.name.value.clone())
        })
    }

    /// Every EMA model becomes an exact copy of its source (parameters and buffers), as at the
    /// start of Mean Teacher; called after initialisation and after loading initial weights.
    fn sync_emas(&mut self) {
        for e in &self.emas {
            for (teacher, student) in &e.copies {
                if let Some(v) = self.state.get(student).cloned() {
                    self.state.insert(teacher.clone(), v);
                }
            }
        }
    }

    /// Loads each model's `init: { weights: file }` (a path relative to `base_dir`): every
    /// tensor whose name (after the `<model>.` prefix) the model declares and whose spec matches
    /// is copied; returns one line per tensor skipped (unknown name — torchvision's `fc.*`, say
    /// — or a spec mismatch) and per model parameter the file lacks. EMA copies are re-synced.
    pub fn load_init_weights(
        &mut self,
        spec: &GraphSpec,
        base_dir: &std::path::Path,
    ) -> Result<Vec<String>, GraphError> {
        let mut notes = Vec::new();
        for (model, m) in &spec.models {
            let Some(init) = &m.init else { continue };
            let path = base_dir.join(&init.weights.value);
            let (ckpt, skipped) = checkpoint::load_foreign_tensors(&path).map_err(|e| {
                GraphError::new(
                    INIT_WEIGHTS,
                    format!("initial weights of `{}`: {e}", model.value),
                    init.weights.loc,
                )
                .help("the path is relative to the graph file's folder")
            })?;
            let prefix = format!("{}.", model.value);
            // Tensors of a dtype flowseg does not hold: fine unless the model declares the name.
            for (name, dtype) in skipped {
                let full = format!("{prefix}{name}");
                match self.state.get(&full) {
                    Some(slot) => {
                        return Err(GraphError::new(
                            INIT_WEIGHTS,
                            format!(
                                "initial weights of `{}`: `{name}` is {dtype} in {}, {} in the \
                                 model",
                                model.value,
                                path.display(),
                                slot.spec()
                            ),
                            init.weights.loc,
                        ))
                    }
                    None => notes.push(format!(
                        "{}: `{name}` ({dtype}) is not a parameter of `{}`: skipped",
                        path.display(),
                        model.value
                    )),
                }
            }
            let mut loaded = BTreeSet::new();
            for (name, t) in ckpt {
                let full = format!("{prefix}{name}");
                match self.state.get_mut(&full) {
                    Some(slot) if slot.spec() == t.spec() => {
                        *slot = t;
                        loaded.insert(full);
                    }
                    Some(slot) => notes.push(format!(
                        "{}: `{name}` is {} in the file, {} in the model: skipped",
                        path.display(),
                        t.spec(),
                        slot.spec()
                    )),
                    None => notes.push(format!(
                        "{}: `{name}` is not a parameter of `{}`: ignored",
                        path.display(),
                        model.value
                    )),
                }
            }
            for name in self
                .graph
                .params
                .keys()
                .filter(|k| k.starts_with(&prefix) && !loaded.contains(*k))
            {
                notes.push(format!(
                    "{}: no `{}`: keeps its initialiser",
                    path.display(),
                    &name[prefix.len()..]
                ));
            }
        }
        self.sync_emas();
        Ok(notes)
    }

    /// One iteration on `batch`: run forward and backward, then every optimizer in declared
    /// order. Returns the losses. A non-finite loss or gradient skips every update (the state is
    /// unchanged).
    pub fn step(
        &mut self,
        batch: &BTreeMap<String, Tensor>,
        iteration: u64,
    ) -> Result<Vec<(String, f32)>, StepError> {
        // Scalars first: a hyper-parameter the kernels refuse fails here, before any change.
        self.write_scalars(iteration)?;
        #[cfg(feature = "cuda")]
        if self.cuda.is_some() {
            return self.step_cuda(batch, iteration);
        }
        // The update nodes read and write the moments and scalars beside the model state: one
        // map for the run, split again after it.
        let aux = std::mem::take(&mut self.aux);
        let aux_names: Vec<String> = aux.keys().cloned().collect();
        self.state.extend(aux);
        let (graph, plan, order) = (
            &self.step_graph,
            &self.step_plan,
            exec::ExecOrder::Sequential,
        );
        let result = exec::run_plan_in_place(
            &mut self.workspace,
            graph,
            plan,
            batch,
            &mut self.state,
            self.seed,
            iteration,
            order,
        );
        // The values the host checks: losses, metrics, every gradient's finiteness. The graph's
        // guard already let the update through exactly when all of them are finite.
        let checked = result.map(|run| {
            let losses: Vec<(String, f32)> = (self.losses.iter())
                .map(|(name, src)| (name.clone(), run.scalar(src).unwrap_or(f32::NAN)))
                .collect();
            let metrics: Vec<(String, f32)> = (self.metrics.iter())
                .map(|(name, src)| (name.clone(), run.scalar(src).unwrap_or(f32::NAN)))
                .collect();
            // The guard says whether every loss and gradient was finite; only when it was not
            // does the host look for the gradient to name (the losses are checked below).
            let passed = (self.guard.as_ref()).is_none_or(|g| run.scalar(g) == Some(1.0));
            let bad_grad = (self.optimizers.iter())
                .flat_map(|o| o.params.iter())
                .filter(|_| !passed)
                .find(|p| {
                    let g = run.get(&p.grad).and_then(Tensor::f32).unwrap_or(&[]);
                    !g.iter().all(|v| v.is_finite())
                })
                .map(|p| p.state.clone());
            (losses, metrics, bad_grad)
        });
        for name in aux_names {
            if let Some(t) = self.state.remove(&name) {
                self.aux.insert(name, t);
            }
        }
        let (values, metrics, bad_grad) = checked?;
        if let Some((name, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(StepError::NonFinite {
                name: name.clone(),
                value: *v,
                iteration,
                first: self.first_non_finite(batch, iteration),
            });
        }
        self.metric_values = metrics;
        // All or nothing: one non-finite gradient would poison its parameter (and, through the
        // EMA and the next checkpoint, everything after it), so the guard applied no update.
        if let Some(param) = bad_grad {
            return Err(StepError::NonFiniteGradient {
                param,
                iteration,
                first: self.first_non_finite(batch, iteration),
            });
        }
        for opt in &mut self.optimizers {
            opt.steps += 1;
        }
        Ok(values)
    }

    /// Moves the step to GPU `ordinal` (feature `cuda`): refuses, naming the op kinds, when a
    /// node of the step has no CUDA twin; otherwise uploads the state and the optimizer moments,
    /// and every later [`Trainer::step`] runs there. The host's `state` is stale from then on:
    /// call [`Trainer::sync_state`] before reading it (evaluation, checkpoints).
    #[cfg(feature = "cuda")]
    pub fn use_cuda(&mut self, ordinal: usize) -> Result<(), StepError> {
        let missing = crate::device::missing_cuda_twins(&self.step_graph);
        if !missing.is_empty() {
            let kinds: std::collections::BTreeSet<&str> =
                missing.iter().map(|(_, op)| *op).collect();
            let kinds: Vec<&str> = kinds.into_iter().collect();
            return Err(ExecError::Device(format!(
                "{} of the step's {} nodes have no CUDA twin yet (ops: {})",
                missing.len(),
                self.step_graph.nodes.len(),
                kinds.join(", ")
            ))
            .into());
        }
        let mut exec = crate::cuda_exec::CudaExecutor::new(ordinal, self.step_plan.streams)?;
        exec.upload_state(&self.state)?;
        exec.upload_state(&self.aux)?;
        let program = crate::device::Program::new(&self.step_graph, &self.step_plan)?;
        self.cuda = Some((exec, program));
        Ok(())
    }

    /// The debug switches of every later GPU step (`--sync-each-op`, `--validate-cpu`:
    /// [`crate::shadow`]); none by default.
    #[cfg(feature = "cuda")]
    pub fn set_debug_checks(&mut self, checks: crate::shadow::DebugChecks) {
        self.debug = checks;
    }

    /// Copies the device's state and optimizer moments back into `state` (a no-op on the CPU,
    /// where `state` is always current).
    pub fn sync_state(&mut self) -> Result<(), StepError> {
        #[cfg(feature = "cuda")]
        if let Some((exec, _)) = &self.cuda {
            for (name, t) in self.state.iter_mut().chain(self.aux.iter_mut()) {
                *t = exec.download_state(name)?;
            }
        }
        Ok(())
    }

    /// [`Trainer::step`] on the GPU: the scalars go up, the step runs there, the losses,
    /// metrics, gradients (read only when the guard tripped) and the guard come back.
    #[cfg(feature = "cuda")]
    fn step_cuda(
        &mut self,
        batch: &BTreeMap<String, Tensor>,
        iteration: u64,
    ) -> Result<Vec<(String, f32)>, StepError> {
        let Some((exec, program)) = self.cuda.as_mut() else {
            return Err(ExecError::Device("no CUDA executor".into()).into());
        };
        if let Some(s) = self.aux.get(SCALARS) {
            exec.upload_state(&BTreeMap::from([(SCALARS.to_owned(), s.clone())]))?;
        }
        let (graph, plan) = (&self.step_graph, &self.step_plan);
        let order = exec::ExecOrder::Sequential;
        exec.run(
            graph, plan, program, batch, self.seed, iteration, order, self.debug,
        )?;
        let (exec, program) = (&*exec, &*program);
        let fetch = |v: &ValueRef| exec.fetch(graph, program, v);
        let scalar = |v: &ValueRef| fetch(v).ok().and_then(|t| t.f32()?.first().copied());
        let values: Vec<(String, f32)> = (self.losses.iter())
            .map(|(name, src)| (name.clone(), scalar(src).unwrap_or(f32::NAN)))
            .collect();
        let metrics: Vec<(String, f32)> = (self.metrics.iter())
            .map(|(name, src)| (name.clone(), scalar(src).unwrap_or(f32::NAN)))
            .collect();
        let passed = (self.guard.as_ref()).is_none_or(|g| scalar(g) == Some(1.0));
        if let Some((name, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(StepError::NonFinite {
                name: name.clone(),
                value: *v,
                iteration,
                first: None,
            });
        }
        self.metric_values = metrics;
        if !passed {
            let param = (self.optimizers.iter())
                .flat_map(|o| o.params.iter())
                .find(|p| {
                    let g = fetch(&p.grad).ok();
                    !g.as_ref()
                        .and_then(Tensor::f32)
                        .unwrap_or(&[])
                        .iter()
                        .all(|v| v.is_finite())
                })
                .map_or_else(String::new, |p| p.state.clone());
            return Err(StepError::NonFiniteGradient {
                param,
                iteration,
                first: None,
            });
        }
        for opt in &mut self.optimizers {
            opt.steps += 1;
        }
        Ok(values)
    }

    /// Fills the step's scalars for `iteration` (see [`append_update`]): per parameter its SGD
    /// learning rate (base · lr_mult, rounded to f32 once, as `sgd_step` rounds it) or AdamW's
    /// three per-step values for step count `steps + 1` ([`AdamW::at`]), per EMA its α and
    /// 1 − α ([`EmaStep::new`]) — derived exactly as the one-call kernels derive them, so the
    /// planned update is theirs bit for bit. Validates what the kernels validate.
    fn write_scalars(&mut self, iteration: u64) -> Result<(), StepError> {
        let Some(slots) = self.aux.get_mut(SCALARS).and_then(Tensor::f32_mut) else {
            return Ok(());
        };
        let mut put = |at: usize, v: &[f32]| {
            if let Some(dst) = slots.get_mut(at..at + v.len()) {
                dst.copy_from_slice(v);
            }
        };
        for opt in &self.optimizers {
            let base = lr_at(
                opt.spec.lr,
                opt.spec.schedule.as_ref(),
                iteration,
                self.total,
            );
            let fail = |source| StepError::Update {
                model: opt.model.clone(),
                source,
            };
            for p in opt.params.iter().filter(|p| p.len > 0) {
                let lr = base * p.lr_mult;
                match opt.spec.kind {
                    OptimKind::Sgd => {
                        let cfg = Sgd {
                            lr,
                            momentum: opt.spec.momentum,
                            nesterov: opt.spec.nesterov,
                            weight_decay: opt.spec.weight_decay,
                        };
                        // The kernel on empty slices validates with its own messages.
                        sgd_step::<f32>(&mut [], &[], &mut [], &cfg).map_err(fail)?;
                        put(p.at, &[lr as f32]);
                    }
                    OptimKind::Adamw => {
                        let cfg = AdamW {
                            lr,
                            beta1: opt.spec.betas.0,
                            beta2: opt.spec.betas.1,
                            eps: opt.spec.eps,
                            weight_decay: opt.spec.weight_decay,
                        };
                        let at = cfg.at::<f32>(opt.steps + 1).map_err(fail)?;
                        put(p.at, &update::adamw_slots(&at));
                    }
                }
            }
        }
        for e in &self.emas {
            // Mean Teacher's warm-up: α_t = min(α, 1 − 1/(t + 1)), t = 1 after the first step.
            let step = (iteration + 1) as f64;
            let alpha = if e.ramp {
                e.decay.min(1.0 - 1.0 / (step + 1.0))
            } else {
                e.decay
            };
            let f = EmaStep::<f32>::new(alpha).map_err(|source| StepError::Update {
                model: e.pairs.first().map_or(String::new(), |(t, _)| t.clone()),
                source,
            })?;
            put(e.at, &update::ema_slots(&f));
        }
        Ok(())
    }
}

/// Appends the update to the step's graph (after its forward and backward), in the order the
/// step applies it: a guard chained over every loss and gradient (`finite_and`: 1 only if all
/// are finite), then per optimizer in declared order each parameter's `sgd_step`/`adamw_step`,
/// then the assigned buffers (`assign`, in the graph's order), then each EMA's updates. Every
/// one updates `state.` tensors in place and is skipped when the guard is 0. Declares the
/// moments and the step's scalars as state, gives each parameter and EMA its scalar slots, and
/// returns their initial values (zeros) and the guard's value, if any.
fn append_update(
    graph: &mut Graph,
    losses: &[(String, ValueRef)],
    optimizers: &mut [Optimizer],
    emas: &mut [Ema],
) -> Result<(BTreeMap<String, Tensor>, Option<ValueRef>), String> {
    let mut aux = BTreeMap::new();
    let mut slots = 0usize;
    for opt in optimizers.iter_mut() {
        for p in opt.params.iter_mut().filter(|p| p.len > 0) {
            p.at = slots;
            slots += match opt.spec.kind {
                OptimKind::Sgd => 1,
                OptimKind::Adamw => 3,
            };
        }
    }
    for e in emas.iter_mut() {
        e.at = slots;
        slots += 2;
    }
    let mut declare = |graph: &mut Graph, name: String, len: usize| {
        let spec = crate::tensor::TensorSpec::f32(&[len]);
        aux.insert(name.clone(), Tensor::zeros(&spec));
        graph.state.insert(name.clone(), spec);
        ValueRef::State(name)
    };
    let scalars = declare(graph, SCALARS.to_owned(), slots.max(1));
    let mut guard: Option<ValueRef> = None;
    let sources = (losses.iter().map(|(_, s)| s)).chain(
        optimizers
            .iter()
            .flat_map(|o| o.params.iter().map(|p| &p.grad)),
    );
    for (k, src) in sources.cloned().enumerate() {
        let out = graph.push_node(
            format!("step/finite/{k}"),
            Arc::new(Configured::<FiniteAnd> {
                params: NoParams {},
            }),
            vec![Some(src), guard.clone()],
        )?;
        guard = out.into_iter().next();
    }
    for opt in optimizers.iter() {
        for p in opt.params.iter().filter(|p| p.len > 0) {
            let name = format!("optim/{}/{}", opt.model, p.state);
            let m = declare(graph, moment_name(&opt.model, &p.state, "m"), p.len);
            let param = Some(ValueRef::State(p.state.clone()));
            match opt.spec.kind {
                OptimKind::Sgd => {
                    let params = update::SgdParams {
                        at: p.at,
                        momentum: opt.spec.momentum,
                        nesterov: opt.spec.nesterov,
                        weight_decay: opt.spec.weight_decay,
                    };
                    let inputs = vec![
                        param,
                        Some(m),
                        Some(p.grad.clone()),
                        Some(scalars.clone()),
                        guard.clone(),
                    ];
                    graph.push_node(name, Arc::new(Configured::<SgdStep> { params }), inputs)?;
                }
                OptimKind::Adamw => {
                    let v = declare(graph, moment_name(&opt.model, &p.state, "v"), p.len);
                    let params = update::AdamWParams {
                        at: p.at,
                        beta1: opt.spec.betas.0,
                        beta2: opt.spec.betas.1,
                        eps: opt.spec.eps,
                    };
                    let inputs = vec![
                        param,
                        Some(m),
                        Some(v),
                        Some(p.grad.clone()),
                        Some(scalars.clone()),
                        guard.clone(),
                    ];
                    graph.push_node(
                        name,
                        Arc::new(Configured::<AdamWStepOp> { params }),
                        inputs,
                    )?;
                }
            }
        }
    }
    let assigns = graph.assigns.clone();
    for (k, (src, name)) in assigns.into_iter().enumerate() {
        graph.push_node(
            format!("assign/{k}/{name}"),
            Arc::new(Configured::<Assign> {
                params: NoParams {},
            }),
            vec![Some(ValueRef::State(name)), Some(src), guard.clone()],
        )?;
    }
    for e in emas.iter() {
        for (teacher, student) in &e.pairs {
            graph.push_node(
                format!("ema/{teacher}"),
                Arc::new(Configured::<EmaUpdate> {
                    params: update::EmaParams { at: e.at },
                }),
                vec![
                    Some(ValueRef::State(teacher.clone())),
                    Some(ValueRef::State(student.clone())),
                    Some(scalars.clone()),
                    guard.clone(),
                ],
            )?;
        }
    }
    Ok((aux, guard))
}

impl Trainer {
    /// What [`Trainer::step`] runs: [`Trainer::graph`] followed by the update nodes (the guard,
    /// the optimizer steps, the assigns, the EMA updates; engine/src/update.rs).
    pub fn step_graph(&self) -> &Graph {
        &self.step_graph
    }

    /// The one-stream plan of [`Trainer::step_graph`] that [`Trainer::step`] runs; `flowseg
    /// plan` re-plans from its `keep`.
    pub fn step_plan(&self) -> &crate::plan::Plan {
        &self.step_plan
    }

    /// A copy of everything [`Trainer::step_graph`] reads as state at `iteration`: the models'
    /// state, the optimizer moments and the step's scalars for that iteration — for tools that
    /// run the step's plan themselves (`flowseg plan --verify`) with
    /// [`exec::run_plan_in_place`]. Errors as [`Trainer::step`] does on a refused
    /// hyper-parameter.
    pub fn step_state(&mut self, iteration: u64) -> Result<BTreeMap<String, Tensor>, StepError> {
        self.write_scalars(iteration)?;
        let mut state = self.state.clone();
        state.extend(self.aux.clone());
        Ok(state)
    }

    /// Each optimizer's model and its base learning rate at `iteration` (before `lr_mult`).
    pub fn learning_rates(&self, iteration: u64) -> Vec<(String, f64)> {
        (self.optimizers.iter())
            .map(|o| {
                let lr = lr_at(o.spec.lr, o.spec.schedule.as_ref(), iteration, self.total);
                (o.model.clone(), lr)
            })
            .collect()
    }

    /// Every trained parameter's state name and the source of its gradient in [`Trainer::graph`]
    /// (optimizers in declared order), for tools that inspect one step: after
    /// [`exec::run_cpu`], `run.get(&source)` is the gradient the update would use.
    pub fn gradient_sources(&self) -> Vec<(String, ValueRef)> {
        self.optimizers
            .iter()
            .flat_map(|o| o.params.iter().map(|p| (p.state.clone(), p.grad.clone())))
            .collect()
    }

    /// Everything needed to continue after `next_iteration` − 1: the state, each optimizer's
    /// buffers (`optim/<model>/<param>/m`, `/v`) and step count (meta `optim/<model>/steps`),
    /// the next iteration and the seed.
    pub fn checkpoint(&self, next_iteration: u64) -> Checkpoint {
        let mut c = Checkpoint {
            tensors: self.state.clone(),
            ..Checkpoint::default()
        };
        for o in &self.optimizers {
            c.meta
                .insert(format!("optim/{}/steps", o.model), o.steps.to_string());
            for p in &o.params {
                for kind in ["m", "v"] {
                    let name = moment_name(&o.model, &p.state, kind);
                    if let Some(t) = self.aux.get(&name) {
                        c.tensors.insert(name, t.clone());
                    }
                }
            }
        }
        c.meta
            .insert("iteration".into(), next_iteration.to_string());
        c.meta.insert("seed".into(), self.seed.to_string());
        c
    }

    /// Restores a [`Trainer::checkpoint`] (all or nothing: every mismatch is reported and
    /// nothing changes) and returns the iteration to continue from.
    pub fn resume(&mut self, c: &Checkpoint) -> Result<u64, CheckpointError> {
        let invalid = |detail: String| CheckpointError::Invalid {
            path: std::path::PathBuf::from("<checkpoint>"),
            detail,
        };
        let meta_u64 = |k: &str| -> Result<u64, CheckpointError> {
            c.meta
                .get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| invalid(format!("meta `{k}` missing or not a number")))
        };
        let next = meta_u64("iteration")?;
        // Every random draw is keyed by the seed: continuing another seed's run would splice
        // two different runs together without a trace.
        let seed = meta_u64("seed")?;
        if seed != self.seed {
            return Err(invalid(format!(
                "the checkpoint was written by a run with seed {seed}; this run has seed {} \
                 (resume with `--set train.seed={seed}`, or start afresh)",
                self.seed
            )));
        }
        let mut state = self.state.clone();
        let plain = Checkpoint {
            tensors: c
                .tensors
                .iter()
                .filter(|(k, _)| !k.starts_with("optim/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            meta: c.meta.clone(),
        };
        checkpoint::restore(&mut state, &plain, "")?;
        // Per optimizer: its step count; per parameter, each moment the step holds.
        let mut steps = Vec::new();
        for o in &self.optimizers {
            steps.push(meta_u64(&format!("optim/{}/steps", o.model))?);
        }
        let mut moments = Vec::new();
        for (name, have) in self.aux.iter().filter(|(k, _)| k.starts_with("optim/")) {
            match c.tensors.get(name) {
                Some(t) if t.spec() == have.spec() => moments.push((name.clone(), t.clone())),
                _ => {
                    return Err(invalid(format!(
                        "optimizer buffer `{name}` missing or of the wrong size"
                    )))
                }
            }
        }
        self.state = state;
        for (o, steps) in self.optimizers.iter_mut().zip(steps) {
            o.steps = steps;
        }
        self.aux.extend(moments);
        Ok(next)
    }
}

/// Bytes of a tensor of `spec` (every dtype is 4 bytes), saturating instead of overflowing.
fn bytes_of(spec: &crate::tensor::TensorSpec) -> u64 {
    spec.shape
        .iter()
        .fold(4u64, |a, &d| a.saturating_mul(d as u64))
}

/// What a training step holds in memory, estimated from specs before anything is allocated.
#[derive(Debug, Default)]
struct Footprint {
    /// One batch (the loader holds a few more ahead; counted twice).
    batch: u64,
    /// Parameters and buffers of every model.
    state: u64,
    /// Optimizer buffers (momentum: one per parameter; AdamW: two) and gradients.
    optimizer: u64,
    /// The plan's arena (every activation and gradient of the step, with reuse).
    activations: u64,
    /// The model with the most state, to point the error at.
    largest_model: Option<(String, u64)>,
}

impl Footprint {
    fn of_batch(env: &Env) -> Self {
        let batch = env
            .batch
            .values()
            .map(bytes_of)
            .fold(0, u64::saturating_add);
        Footprint {
            batch: batch.saturating_mul(2),
            ..Footprint::default()
        }
    }

    fn add_state(&mut self, spec: &GraphSpec, graph: &Graph) {
        let mut by_model: BTreeMap<&str, u64> = BTreeMap::new();
        for (name, d) in &graph.params {
            let b = bytes_of(&d.spec);
            self.state = self.state.saturating_add(b);
            let model = name.split('.').next().unwrap_or(name);
            *by_model.entry(model).or_default() += b;
        }
        for (model, o) in &spec.optim {
            let per = match o.kind {
                OptimKind::Adamw => 3,
                OptimKind::Sgd if o.momentum > 0.0 => 2,
                OptimKind::Sgd => 1,
            };
            let own = by_model.get(model.as_str()).copied().unwrap_or(0);
            self.optimizer = self.optimizer.saturating_add(own.saturating_mul(per));
        }
        self.largest_model = by_model
            .into_iter()
            .max_by_key(|&(_, b)| b)
            .map(|(m, b)| (m.to_owned(), b));
    }

    fn total(&self) -> u64 {
        self.batch
            .saturating_add(self.state)
            .saturating_add(self.optimizer)
            .saturating_add(self.activations)
    }
}

/// `n` bytes for people.
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e12 => format!("{:.1} TB", n / 1e12),
        _ if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        _ if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        _ => format!("{:.1} kB", n / 1e3),
    }
}

/// FS0118 when the estimate exceeds `limit`, pointing at the largest part's cause.
fn check_fits(f: &Footprint, spec: &GraphSpec, limit: Option<u64>) -> Result<(), GraphError> {
    let Some(limit) = limit else { return Ok(()) };
    let total = f.total();
    if total <= limit {
        return Ok(());
    }
    let parts = format!(
        "model state {}, optimizer {}, activations {}, batches {}",
        human_bytes(f.state),
        human_bytes(f.optimizer),
        human_bytes(f.activations),
        human_bytes(f.batch)
    );
    // Point at the model whose size dominates, else at the data (batch and image size).
    let (loc, hint) = match &f.largest_model {
        Some((m, b)) if b.saturating_mul(2) >= f.state.max(1) && f.state >= f.activations => (
            spec.models
                .iter()
                .find(|(k, _)| k.value == *m)
                .map_or(Loc::NONE, |(k, _)| k.loc),
            format!("model `{m}` is the largest part: reduce its width"),
        ),
        _ => (
            Loc { line: 1, col: 1 },
            "reduce `data.batch`, the image or crop size, or the model width".to_owned(),
        ),
    };
    Err(GraphError::new(
        TOO_BIG,
        format!(
            "the training step needs about {} ({parts}); this machine has {}",
            human_bytes(total),
            human_bytes(limit)
        ),
        loc,
    )
    .help(hint))
}

/// This machine's memory: the cgroup's limit where one is set and lower, else the total RAM
/// (`/proc/meminfo`). `None` where neither can be read (no check then).
pub fn machine_memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// The EMA models of the spec and their parameter pairs. Only trainable parameters are
/// averaged (as Mean Teacher's official code does); buffers (BN running statistics) are copied
/// at the start and then follow the teacher's own forwards.
fn ema_pairs(spec: &GraphSpec, graph: &Graph, errors: &mut Vec<GraphError>) -> Vec<Ema> {
    let mut out = Vec::new();
    for (name, m) in &spec.models {
        let Some(src) = &m.ema_of else {
            if m.decay.is_some() || m.ramp.is_some() || m.ema_buffers.is_some() {
                errors.push(GraphError::new(
                    BAD_OBJECTIVE,
                    format!(
                        "`decay`/`ramp`/`ema_buffers` of `{}` need `ema_of`",
                        name.value
                    ),
                    name.loc,
                ));
            }
            continue;
        };
        // In [0, 1]: checked where the file is decoded (spec/range.rs).
        let decay = m.decay.unwrap_or(0.99);
        let with_buffers = m.ema_buffers.unwrap_or(true);
        let (tp, sp) = (format!("{}.", name.value), format!("{}.", src.value));
        let mut pairs = Vec::new();
        let mut copies = Vec::new();
        for (k, d) in graph.params.iter().filter(|(k, _)| k.starts_with(&tp)) {
            let student = format!("{sp}{}", &k[tp.len()..]);
            if !graph.params.contains_key(&student) {
                errors.push(GraphError::new(
                    BAD_OBJECTIVE,
                    format!(
                        "`{}` is an EMA of `{}`, but the graph never runs `{}` (no `{student}`)",
                        name.value, src.value, src.value
                    ),
                    src.loc,
                ));
                break;
            }
            copies.push((k.clone(), student.clone()));
            if d.trainable || (with_buffers && d.spec.dtype == DType::F32) {
                pairs.push((k.clone(), student));
            }
        }
        out.push(Ema {
            pairs,
            copies,
            decay,
            ramp: m.ramp.unwrap_or(true),
            at: 0,
        });
    }
    out
}

/// A Philox stream id per state name (FNV-1a), so every tensor draws independent numbers and
/// adding a parameter does not shift the others'.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The first hidden batch field (`Env::hidden`) that `src` depends on, if any.
fn hidden_input(graph: &Graph, src: &ValueRef, hidden: &BTreeSet<String>) -> Option<String> {
    if hidden.is_empty() {
        return None;
    }
    let mut stack = vec![src.clone()];
    let mut seen = BTreeSet::new();
    while let Some(s) = stack.pop() {
        match s {
            ValueRef::Batch(f) if hidden.contains(&f) => return Some(f),
            ValueRef::Batch(_) | ValueRef::State(_) => {}
            ValueRef::Node { node, .. } => {
                if seen.insert(node) {
                    stack.extend(graph.nodes[node].inputs.iter().flatten().cloned());
                }
            }
        }
    }
    None
}

/// The source of `node.port` among the graph's nodes.
/// The value a graph file's `<node>.<port>` names (`forward` outputs included).
fn resolve_output(graph: &Graph, reference: &str) -> Option<ValueRef> {
    graph.outputs.get(reference).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_their_formulas() {
        // Constant, no warm-up.
        assert_eq!(lr_at(0.1, None, 50, 100), 0.1);
        // Warm-up: linear from lr/warmup to lr over `warmup` iterations.
        let s = Schedule::Constant { warmup: 10 };
        assert!((lr_at(0.1, Some(&s), 0, 100) - 0.01).abs() < 1e-12);
        assert!((lr_at(0.1, Some(&s), 9, 100) - 0.1).abs() < 1e-12);
        // Poly 0.9: lr·(1 − t)^0.9, t = 50/100 → 0.1 · 0.5^0.9 = 0.0535886731...
        let s = Schedule::Poly {
            power: 0.9,
            warmup: 0,
        };
        assert!((lr_at(0.1, Some(&s), 50, 100) - 0.053_588_673_1).abs() < 1e-9);
        assert_eq!(lr_at(0.1, Some(&s), 100, 100), 0.0);
        // Cosine from 0.1 to 0.0 over 90 iterations after 10 of warm-up: halfway → 0.05.
        let s = Schedule::Cosine {
            min_lr: 0.0,
            warmup: 10,
        };
        assert!((lr_at(0.1, Some(&s), 55, 100) - 0.05).abs() < 1e-12);
        assert!((lr_at(0.1, Some(&s), 10, 100) - 0.1).abs() < 1e-12);
    }
}
