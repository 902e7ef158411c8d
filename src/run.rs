//! `flowseg check` and `flowseg run`: a graph file → the validated, differentiated training step →
//! iterations, with a run directory holding everything a result needs:
//!
//! ```text
//! runs/<name>/<UTC timestamp>/
//!   graph.yaml                  the resolved graph (overrides applied): what actually ran
//!   metrics.jsonl               one JSON object per iteration: losses (`loss/<ref>`), the
//!                               graph's `metrics:` (`metric/<name>`), learning rates
//!                               (`lr/<model>`), seconds since start; one per evaluation
//!   metrics.png                 those curves (plot.rs), redrawn at each evaluation and the end
//!   checkpoints/last.safetensors  state + optimizer buffers, written atomically
//!   checkpoints/iter-<N>.safetensors  every `train.checkpoint_every` iterations
//! ```
//!
//! `--resume DIR` reloads DIR/graph.yaml (plus new `--set`s), the last checkpoint, drops
//! metrics lines past it, and continues in DIR; with the batch a pure function of (seed,
//! iteration) a resumed run repeats the losses of an uninterrupted one.
//!
//! `flowseg plan` loads a graph the same way and prints the plan of its training step (streams,
//! events, buffers, peak memory); `--verify N` also runs that plan on the first batch under N
//! random stream interleavings against the trainer's single-stream run.
//!
//! `run_inner` reads as the steps of a run: which graph, load it, the run directory (fresh or
//! resumed), its files, the iterations (metrics line, checkpoints, evaluations, progress), the
//! results. Evaluation modes are `eval.rs`'s.
//!
//! Not here: tracing spans.

use crate::report;
use flowseg_engine::checkpoint;
use flowseg_engine::data::Dataset;
use flowseg_engine::exec::{self, ExecOrder};
use flowseg_engine::graph::Env;
use flowseg_engine::open::open_graph;
use flowseg_engine::plan::{self, PlanOptions};
use flowseg_engine::spec::{self, GraphError, GraphSpec};
use flowseg_engine::train::{Trainer, TrainerOptions};
use flowseg_engine::Registry;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

/// Flags of `flowseg run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The method graph (YAML). With `--resume`, optional: the run's own graph.yaml is used.
    pub graph: Option<PathBuf>,
    /// Override any key: `--set train.iterations=100 --set nodes.sup_loss.params.ignore_index=255`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// With `--resume`: continue although `--set` (or another graph file) changes the run's
    /// graph; the changed graph is kept beside the original as `graph.resumed-<iteration>.yaml`.
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// Where run directories are created.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    pub out: PathBuf,
    /// Treat warnings (unused outputs) as errors.
    #[arg(long)]
    pub strict: bool,
    /// Stop after this iteration as if interrupted, without the final checkpoint (time-sliced
    /// jobs; `--resume` continues from the last periodic checkpoint).
    #[arg(long, value_name = "ITER")]
    pub stop_at: Option<u64>,
    /// Where to execute: `cpu` (the default) or `cuda` (a build with `--features cuda`: the
    /// training step runs on GPU 0 when every op of the step has a CUDA twin — every shipped
    /// graph's does — else the missing op kinds are named; evaluation stays on the CPU).
    #[arg(long, value_enum, default_value_t = crate::device::DeviceArg::Cpu)]
    pub device: crate::device::DeviceArg,
    /// Run the training step op by op: skip the fusion pass (batch norm + ReLU in one pass,
    /// forward and backward). The results are the same bit for bit; for timing and debugging.
    #[arg(long)]
    pub no_fuse: bool,
    /// Streams of the training step's plan (default 1). On the CPU the numbers and the time are
    /// the same at any count (one op at a time); with `--device cuda` independent branches
    /// (a teacher's forward beside the student's) run concurrently.
    #[arg(long, default_value_t = 1, value_parser = parse_streams)]
    pub streams: usize,
    /// With `--device cuda`: wait for every op of the step to finish before launching the next,
    /// so an asynchronous GPU fault is reported at the node that caused it (slow; debugging).
    #[arg(long)]
    pub sync_each_op: bool,
    /// With `--device cuda`: run every op of the step on the CPU as well, from the GPU's own
    /// inputs, and stop at the first node whose GPU output is not within 1e-4 + 1e-3·|CPU| of
    /// its CPU reference, naming the node, the output and the element (very slow; debugging).
    #[arg(long)]
    pub validate_cpu: bool,
}

/// Flags of `flowseg check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The method graph (YAML).
    pub graph: PathBuf,
    /// Override any key, as for `run`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
    /// Also read every file of the dataset once and report each bad one (undecodable image,
    /// mask size mismatch, class id out of range).
    #[arg(long)]
    pub data: bool,
}

/// Flags of `flowseg plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The method graph (YAML).
    pub graph: PathBuf,
    /// Override any key, as for `run`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Streams to spread independent work over (1 = one queue, no events).
    #[arg(long, default_value_t = 2, value_name = "K",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub streams: u16,
    /// Also run the step on the first batch: the K-stream plan under N random stream
    /// interleavings, over poisoned memory, must match the single-stream run bit for bit.
    #[arg(long, value_name = "N")]
    pub verify: Option<u64>,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
    /// Plan the step op by op, without the fusion pass.
    #[arg(long)]
    pub no_fuse: bool,
}

/// A graph loaded up to a ready trainer.
pub(crate) struct Loaded {
    pub(crate) spec: GraphSpec,
    pub(crate) root: spec::Node,
    pub(crate) source: Box<dyn Dataset>,
    pub(crate) trainer: Trainer,
}

/// A failure already worth exit code 2, rendered into text.
pub(crate) struct Rejected(pub(crate) String);

#[allow(clippy::too_many_arguments)]
pub(crate) fn load(
    path: &Path,
    text: &str,
    sets: &[String],
    strict: bool,
    options: TrainerOptions,
    registry: &Registry,
    color: bool,
    err: &mut dyn Write,
) -> Result<Loaded, Rejected> {
    let shown = path.display().to_string();
    let reject = |errors: &[GraphError]| {
        let named = report::name_flags(errors, sets);
        Rejected(report::render(&shown, text, &named, color))
    };
    let (spec, root, source) = open_graph(text, sets, registry).map_err(|mut e| {
        // The data could not be opened: the graph's other mistakes are still worth reporting
        // now, rather than one at a time after the data is fixed.
        // So are they when the file's schema had mistakes (`lr: fast` beside a misspelt op),
        // as far as the rest of the file decodes. Models that take their class count from the
        // data get a stand-in one.
        let later_stages = e
            .iter()
            .all(|e| matches!(e.code, flowseg_engine::open::BAD_DATA | spec::SCHEMA));
        if later_stages {
            if let Some(spec) = spec::parse_graph_for_report(text, sets, 2) {
                e.extend(flowseg_engine::ir::check_without_data(&spec, registry));
            }
        }
        reject(&e)
    })?;
    let env = Env {
        batch: source.specs(),
        state: BTreeMap::new(),
        hidden: source.hidden_fields(),
    };
    let mut trainer = Trainer::with_options(&spec, registry, &env, BTreeMap::new(), options)
        .map_err(|e| reject(&e))?;
    // `init: { weights: ... }` paths are relative to the graph file.
    let base = path.parent().unwrap_or(Path::new("."));
    for note in trainer
        .load_init_weights(&spec, base)
        .map_err(|e| reject(&[e]))?
    {
        let _ = writeln!(err, "note: {note}");
    }
    let warnings = &trainer.graph.warnings;
    if !warnings.is_empty() {
        if strict {
            let as_errors: Vec<GraphError> = warnings
                .iter()
                .map(|w| GraphError {
                    warning: false,
                    ..w.clone()
                })
                .collect();
            return Err(reject(&as_errors));
        }
        let _ = err.write_all(report::render(&shown, text, warnings, color).as_bytes());
    }
    Ok(Loaded {
        spec,
        root,
        source,
        trainer,
    })
}

/// The graph file's text, or `None` after reporting FS0004 on `err`.
pub(crate) fn read(path: &Path, color: bool, err: &mut dyn Write) -> Option<String> {
    match spec::read_graph_file(path) {
        Ok(t) => Some(t),
        Err(u) => {
            let shown = path.display().to_string();
            let _ = err.write_all(report::render(&shown, &u.text, &[u.error], color).as_bytes());
            None
        }
    }
}

/// `flowseg check`: parse, open the data source, validate, trace the models and differentiate;
/// report every problem. Exit 0 when the graph would train, 2 otherwise.
pub fn check(
    a: &CheckArgs,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> ExitCode {
    let Some(text) = read(&a.graph, color, err) else {
        return ExitCode::from(2);
    };
    match load(
        &a.graph,
        &text,
        &a.set,
        a.strict,
        TrainerOptions::default(),
        registry,
        color,
        err,
    ) {
        Ok(mut l) => {
            // What `run` checks before its first step: every evaluated model fits the data.
            if let Err(e) = crate::eval::Evaluator::new(&l.spec, registry, l.source.as_ref()) {
                let shown = a.graph.display().to_string();
                let named = report::name_flags(&[e], &a.set);
                let _ = err.write_all(report::render(&shown, &text, &named, color).as_bytes());
                return ExitCode::from(2);
            }
            if a.data {
                if let Err(code) = scan_data(l.source.as_mut(), out, err) {
                    return code;
                }
            }
            let g = &l.trainer.graph;
            // An EMA teacher's parameters are declared trainable-shaped but only ever copied.
            let teachers: Vec<String> = l
                .spec
                .models
                .iter()
                .filter(|(_, m)| m.ema_of.is_some())
                .map(|(n, _)| format!("{}.", n.value))
                .collect();
            let params: usize = g
                .params
                .iter()
                .filter(|(name, d)| d.trainable && !teachers.iter().any(|t| name.starts_with(t)))
                .map(|(_, d)| d.spec.len())
                .sum();
            let r = writeln!(
                out,
                "{}: ok — `{}`: {} nodes (forward and backward), {} state tensors, {} trainable parameters",
                a.graph.display(),
                l.spec.name.value,
                g.nodes.len(),
                g.state.len(),
                params
            );
            crate::report::finish(r, err)
        }
        Err(Rejected(text)) => {
            let _ = err.write_all(text.as_bytes());
            ExitCode::from(2)
        }
    }
}

/// `flowseg check --data`: every item of the source read once; each problem printed. Err with
/// exit code 2 when any item is bad.
/// FS0120: a bad data file (missing, unreadable, undecodable, a mask of the wrong format or
/// size, a class id out of range), found by `check --data` or while training.
const BAD_DATA_FILE: &str = "FS0120";

fn scan_data(
    source: &mut dyn Dataset,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ExitCode> {
    let started = Instant::now();
    let mut last_shown = Instant::now();
    let report = source.scan(&mut |done, total| {
        if last_shown.elapsed().as_secs_f64() > 2.0 {
            last_shown = Instant::now();
            let _ = writeln!(err, "scanning data: {done}/{total}");
        }
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error[{BAD_DATA_FILE}]: cannot scan the data: {e}");
            return Err(ExitCode::from(2));
        }
    };
    if report.problems.is_empty() {
        let _ = writeln!(
            out,
            "data: {} items read in {:.1} s, no problems",
            report.items,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    for p in &report.problems {
        let _ = writeln!(err, "error[{BAD_DATA_FILE}]: {p}");
    }
    let _ = writeln!(
        err,
        "data: {} of {} items are bad",
        report.problems.len(),
        report.items
    );
    Err(ExitCode::from(2))
}

/// `flowseg plan`: load as `check` does, plan the training step (forward and backward) on
/// `--streams` streams and print it. Exit 0, 1 when `--verify` finds a difference, 2 for a graph
/// error.
pub fn plan(
    a: &PlanArgs,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> ExitCode {
    let Some(text) = read(&a.graph, color, err) else {
        return ExitCode::from(2);
    };
    let mut l = match load(
        &a.graph,
        &text,
        &a.set,
        a.strict,
        TrainerOptions {
            fuse: !a.no_fuse,
            ..TrainerOptions::default()
        },
        registry,
        color,
        err,
    ) {
        Ok(l) => l,
        Err(Rejected(text)) => {
            let _ = err.write_all(text.as_bytes());
            return ExitCode::from(2);
        }
    };
    let trainer = &l.trainer;
    let opts = PlanOptions {
        streams: usize::from(a.streams),
        keep: trainer.step_plan().keep.clone(),
    };
    // State conflicts do not depend on the stream count: `load` reported them already.
    let p = match plan::plan(trainer.step_graph(), &opts) {
        Ok(p) => p,
        Err(errors) => {
            let shown = a.graph.display().to_string();
            let _ = err.write_all(report::render(&shown, &text, &errors, color).as_bytes());
            return ExitCode::from(2);
        }
    };
    // The plan's text ends with a newline.
    let fused = if a.no_fuse {
        "off (--no-fuse)".to_owned()
    } else {
        flowseg_engine::fusion::Summary(&trainer.fusions).to_string()
    };
    let written = write!(
        out,
        "{}: `{}`, the training step (forward, backward and update)\nfused: {fused}\n{p}",
        a.graph.display(),
        l.spec.name.value
    );
    if written.is_err() {
        return crate::report::finish(written, err);
    }
    let Some(n) = a.verify else {
        return crate::report::finish(out.flush(), err);
    };
    match verify(&mut l, &p, n) {
        Ok(kept) => crate::report::finish(
            writeln!(
                out,
                "verified: {n} interleavings of this plan give the single-stream run's {kept} \
                 kept values and updated state tensors bit for bit"
            )
            .and_then(|()| out.flush()),
            err,
        ),
        Err(msg) => {
            let _ = writeln!(err, "error: verify: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Named values of one run, each as bits (`None`: no such value).
type Outcome = Vec<(String, Option<Vec<u32>>)>;

/// Runs the trainer's single-stream step plan in order, then `p` under `n` interleavings, on
/// the first batch, each from the same state; returns how many values matched bit for bit: the
/// kept values (losses, gradients, metrics, the guard) and every state tensor after the step
/// (parameters, moments and buffers the update changed in place).
fn verify(l: &mut Loaded, p: &plan::Plan, n: u64) -> Result<usize, String> {
    let batch = l.source.batch(0).map_err(|e| format!("data: {e}"))?;
    let seed = l.spec.train.seed;
    let start = l.trainer.step_state(0).map_err(|e| e.to_string())?;
    let t = &l.trainer;
    let graph = t.step_graph();
    let bits_of = |t: &flowseg_engine::Tensor| -> Option<Vec<u32>> {
        match (t.f32(), t.i32()) {
            (Some(v), _) => Some(v.iter().map(|x| x.to_bits()).collect()),
            (_, Some(v)) => Some(v.iter().map(|&x| x as u32).collect()),
            _ => None,
        }
    };
    // (what, bits) of every kept value, then of every state tensor after the run.
    let outcome = |plan: &plan::Plan, order: ExecOrder| -> Result<Outcome, String> {
        let mut state = start.clone();
        let mut ws = exec::Workspace::default();
        let run = exec::run_plan_in_place(&mut ws, graph, plan, &batch, &mut state, seed, 0, order)
            .map_err(|e| e.to_string())?;
        let mut out: Outcome = (p.keep.iter())
            .map(|s| {
                let name = match s {
                    flowseg_engine::graph::ValueRef::Node { node, port } => {
                        format!("{}.{port}", graph.nodes[*node].name.value)
                    }
                    other => format!("{other:?}"),
                };
                (name, run.get(s).and_then(bits_of))
            })
            .collect();
        drop(run);
        out.extend(
            state
                .iter()
                .map(|(k, v)| (format!("state `{k}`"), bits_of(v))),
        );
        Ok(out)
    };
    let want = outcome(t.step_plan(), ExecOrder::Sequential)?;
    for s in 0..n {
        let got = outcome(p, ExecOrder::Interleaved { seed: s })
            .map_err(|e| format!("interleaving {s}: {e}"))?;
        if let Some(k) = (0..want.len()).find(|&k| got.get(k) != want.get(k)) {
            return Err(format!(
                "interleaving {s}: `{}` differs from the single-stream run",
                want[k].0
            ));
        }
    }
    Ok(want.len())
}

/// `flowseg run`.
pub fn run(
    a: &RunArgs,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> ExitCode {
    match run_inner(a, registry, out, err, color) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            if !msg.is_empty() {
                let _ = err.write_all(msg.as_bytes());
                if !msg.ends_with('\n') {
                    let _ = writeln!(err);
                }
            }
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn io_fail(what: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    (1, format!("error: cannot {what} {}: {e}", path.display()))
}

fn run_inner(
    a: &RunArgs,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<(), Failure> {
    crate::device::require(a.device).map_err(|msg| (2, msg))?;
    let checks = crate::device::debug_checks(a.device, a.sync_each_op, a.validate_cpu)
        .map_err(|msg| (2, msg))?;
    let (graph_path, resume) = which_graph(a)?;
    // Reported by `read`; the empty message adds nothing.
    let text = read(&graph_path, color, err).ok_or((2, String::new()))?;
    let Loaded {
        spec,
        root,
        mut source,
        mut trainer,
    } = load(
        &graph_path,
        &text,
        &a.set,
        a.strict,
        TrainerOptions {
            fuse: !a.no_fuse,
            streams: a.streams,
        },
        registry,
        color,
        err,
    )
    .map_err(|Rejected(t)| (2, t))?;
    let mut evaluator =
        crate::eval::Evaluator::new(&spec, registry, source.as_ref()).map_err(|e| {
            let shown = graph_path.display().to_string();
            let named = report::name_flags(&[e], &a.set);
            (2, report::render(&shown, &text, &named, color))
        })?;
    let resumed = resume.is_some();
    let (dir, start) = run_dir(a, &spec, resume, &mut trainer)?;
    // After a resume restored the host state: the device takes it from there.
    crate::device::start(a.device, checks, &mut trainer).map_err(|msg| (2, msg))?;
    if resumed {
        keep_the_graph(a, &dir, &root, start)?;
    }
    write_run_files(&dir, (!resumed).then_some(&root), source.as_ref())?;
    let metrics_path = dir.join("metrics.jsonl");
    let mut metrics = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| io_fail("open", &metrics_path, e))?;

    let total = spec.train.iterations;
    let _ = writeln!(
        out,
        "flowseg run `{}`: iterations {start}..{total}, {} threads, writing {}",
        spec.name.value,
        rayon::current_num_threads(),
        dir.display()
    );
    let started = Instant::now();
    let mut scores = RunScores {
        best: earlier_best(&metrics_path),
        last: BTreeMap::new(),
    };
    let progress = Progress::new(color, start, total);
    let end = a.stop_at.map_or(total, |s| s.min(total));
    for it in start..end {
        let batch = source.batch(it).map_err(|e| {
            (
                1,
                format!("error[{BAD_DATA_FILE}]: data, iteration {it}: {e}"),
            )
        })?;
        let losses = trainer
            .step(&batch, it)
            .map_err(|e| (1, format!("error: iteration {it}: {e}")))?;
        let secs = started.elapsed().as_secs_f64();
        writeln!(metrics, "{}", iteration_line(&trainer, it, secs, &losses))
            .map_err(|e| io_fail("append to", &metrics_path, e))?;
        let done = it + 1;
        if spec.train.checkpoint_every > 0
            && done.is_multiple_of(spec.train.checkpoint_every)
            && done < total
        {
            sync(&mut trainer, done)?;
            save_checkpoints(&spec, &dir, &trainer, done)?;
        }
        let eval_now = spec.train.eval_every > 0 && done.is_multiple_of(spec.train.eval_every)
            || done == total;
        if let (Some(ev), true) = (&mut evaluator, eval_now) {
            sync(&mut trainer, done)?;
            let results = ev
                .run(source.as_mut(), &trainer.state)
                .map_err(|e| (1, format!("error: evaluation after iteration {done}: {e}")))?;
            let (line, msg) = scores.record(&results, it, done);
            writeln!(metrics, "{line}").map_err(|e| io_fail("append to", &metrics_path, e))?;
            crate::plot::refresh_run_plot(&dir, err);
            progress.note(&msg, out);
        }
        progress.step(done, secs, &losses, out);
    }
    progress.finish();
    metrics
        .sync_all()
        .map_err(|e| io_fail("sync", &metrics_path, e))?;
    crate::plot::refresh_run_plot(&dir, err);
    if end < total {
        let _ = writeln!(
            out,
            "stopped after iteration {end} (--stop-at); continue with --resume {}",
            dir.display()
        );
        return Ok(());
    }
    sync(&mut trainer, total)?;
    save_checkpoints(&spec, &dir, &trainer, total)?;
    scores.write_results(&dir)?;
    let _ = writeln!(
        out,
        "done in {}; checkpoint {}",
        hms(started.elapsed().as_secs_f64()),
        dir.join("checkpoints").join("last.safetensors").display()
    );
    Ok(())
}

/// The graph file to read and, for `--resume DIR`, the run directory to continue in.
fn which_graph(a: &RunArgs) -> Result<(PathBuf, Option<PathBuf>), Failure> {
    match (&a.resume, &a.graph) {
        (Some(dir), _) => Ok((
            a.graph.clone().unwrap_or_else(|| dir.join("graph.yaml")),
            Some(dir.clone()),
        )),
        (None, Some(g)) => Ok((g.clone(), None)),
        (None, None) => Err((2, "error: give a graph file, or --resume DIR".into())),
    }
}

/// The run directory and the first iteration: a resumed run's directory with its checkpoint
/// restored into `trainer` (and metrics past it dropped), or a fresh timestamped one.
fn run_dir(
    a: &RunArgs,
    spec: &GraphSpec,
    resume: Option<PathBuf>,
    trainer: &mut Trainer,
) -> Result<(PathBuf, u64), Failure> {
    let Some(dir) = resume else {
        let dir = fresh_run_dir(&a.out, &spec.name.value)
            .map_err(|e| io_fail("create a run directory in", &a.out, e))?;
        return Ok((dir, 0));
    };
    let ckpt = dir.join("checkpoints").join("last.safetensors");
    let c = checkpoint::load(&ckpt).map_err(|e| (2, format!("error: cannot resume: {e}")))?;
    let next = trainer.resume(&c).map_err(|e| {
        (
            2,
            format!("error: cannot resume from {}: {e}", ckpt.display()),
        )
    })?;
    truncate_metrics(&dir.join("metrics.jsonl"), next)
        .map_err(|e| io_fail("rewrite", &dir.join("metrics.jsonl"), e))?;
    Ok((dir, next))
}

/// FS0122 unless `--force` when the graph a resumed run would continue with differs from the
/// run's own graph.yaml (a `--set`, or another graph file, changed it): the rest of the run would
/// not be the run its first part belongs to. With `--force` the changed graph is kept beside the
/// original, which is never rewritten.
/// FS0122: `--resume` with a graph that differs from the run's own.
const RESUME_CHANGED: &str = "FS0122";

fn keep_the_graph(a: &RunArgs, dir: &Path, root: &spec::Node, start: u64) -> Result<(), Failure> {
    let path = dir.join("graph.yaml");
    let saved = fs::read_to_string(&path).map_err(|e| io_fail("read", &path, e))?;
    let now = root.to_yaml();
    if saved == now {
        return Ok(());
    }
    if !a.force {
        let what = if a.set.is_empty() {
            "the graph file given".to_owned()
        } else {
            let flags: Vec<String> = a.set.iter().map(|s| format!("`--set {s}`")).collect();
            flags.join(", ")
        };
        return Err((
            2,
            format!(
                "error[{RESUME_CHANGED}]: {what} change the graph of the run in {}: a resumed run continues \
                 the same graph\n  help: drop the change, or pass --force to continue with it (the \
                 changed graph is kept as graph.resumed-{start}.yaml; graph.yaml stays as it was)",
                dir.display()
            ),
        ));
    }
    let kept = dir.join(format!("graph.resumed-{start}.yaml"));
    write_atomic(&kept, now.as_bytes()).map_err(|e| io_fail("write", &kept, e))
}

/// The run's files: the resolved graph.yaml (`None` on resume: the run's own is kept), the
/// labeled/unlabeled split, and the checkpoints folder.
fn write_run_files(
    dir: &Path,
    root: Option<&spec::Node>,
    source: &dyn Dataset,
) -> Result<(), Failure> {
    fs::create_dir_all(dir.join("checkpoints")).map_err(|e| io_fail("create", dir, e))?;
    if let Some(root) = root {
        write_atomic(&dir.join("graph.yaml"), root.to_yaml().as_bytes())
            .map_err(|e| io_fail("write", &dir.join("graph.yaml"), e))?;
    }
    if let Some(split) = source.split() {
        let split_dir = dir.join("split");
        fs::create_dir_all(&split_dir).map_err(|e| io_fail("create", &split_dir, e))?;
        for (file, names) in [
            ("labeled.txt", &split.labeled),
            ("unlabeled.txt", &split.unlabeled),
        ] {
            let mut text = names.join("\n");
            text.push('\n');
            let path = split_dir.join(file);
            write_atomic(&path, text.as_bytes()).map_err(|e| io_fail("write", &path, e))?;
        }
    }
    Ok(())
}

/// `--streams`: 1 to 64.
fn parse_streams(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(k @ 1..=64) => Ok(k),
        _ => Err(format!(
            "`{s}`: the step's stream count must be a whole number from 1 to 64"
        )),
    }
}

/// The host's copy of the state made current (a no-op unless the step runs on a GPU).
fn sync(trainer: &mut Trainer, done: u64) -> Result<(), Failure> {
    trainer.sync_state().map_err(|e| {
        (
            1,
            format!("error: after iteration {done}: copying the state back: {e}"),
        )
    })
}

/// checkpoints/last.safetensors, and iter-<next> when `checkpoint_every` divides `next`.
fn save_checkpoints(
    spec: &GraphSpec,
    dir: &Path,
    trainer: &Trainer,
    next: u64,
) -> Result<(), Failure> {
    let c = trainer.checkpoint(next);
    let last = dir.join("checkpoints").join("last.safetensors");
    checkpoint::save(&last, &c).map_err(|e| (1, format!("error: {e}")))?;
    if spec.train.checkpoint_every > 0 && next.is_multiple_of(spec.train.checkpoint_every) {
        let named = dir
            .join("checkpoints")
            .join(format!("iter-{next}.safetensors"));
        checkpoint::save(&named, &c).map_err(|e| (1, format!("error: {e}")))?;
    }
    Ok(())
}

/// One metrics.jsonl line of iteration `it`: losses, the graph's metrics (NaN written as null:
/// no value this step), learning rates, seconds since the start.
fn iteration_line(
    trainer: &Trainer,
    it: u64,
    secs: f64,
    losses: &[(String, f32)],
) -> serde_json::Value {
    let mut line = serde_json::Map::new();
    line.insert("iteration".into(), it.into());
    line.insert(
        "time_s".into(),
        serde_json::json!((secs * 1000.0).round() / 1000.0),
    );
    for (name, v) in losses {
        line.insert(format!("loss/{name}"), serde_json::json!(v));
    }
    for (name, v) in &trainer.metric_values {
        let v = v.is_finite().then_some(*v);
        line.insert(format!("metric/{name}"), serde_json::json!(v));
    }
    for (model, lr) in trainer.learning_rates(it) {
        line.insert(format!("lr/{model}"), serde_json::json!(lr));
    }
    serde_json::Value::Object(line)
}

/// Each evaluated model's best mIoU (and after which iteration) and its last (mIoU, pixel
/// accuracy, iteration); on resume the best so far comes from metrics.jsonl.
struct RunScores {
    best: BTreeMap<String, (f64, u64)>,
    last: BTreeMap<String, (f64, f64, u64)>,
}

impl RunScores {
    /// Records one evaluation after iteration `done`; returns its metrics.jsonl line and the
    /// message to show.
    fn record(
        &mut self,
        results: &[(String, flowseg_engine::kernels::metrics::Scores)],
        it: u64,
        done: u64,
    ) -> (serde_json::Value, String) {
        let mut line = serde_json::Map::new();
        line.insert("iteration".into(), it.into());
        let mut shown = Vec::new();
        for (model, sc) in results {
            line.insert(format!("eval/{model}/miou"), serde_json::json!(sc.miou));
            line.insert(
                format!("eval/{model}/pixel_acc"),
                serde_json::json!(sc.pixel_acc),
            );
            let ious: Vec<serde_json::Value> =
                sc.iou.iter().map(|v| serde_json::json!(v)).collect();
            line.insert(format!("eval/{model}/iou"), serde_json::Value::Array(ious));
            line.insert(
                format!("eval/{model}/confusion"),
                serde_json::json!(sc.confusion),
            );
            let best = self
                .best
                .entry(model.clone())
                .or_insert((f64::NEG_INFINITY, 0));
            if sc.miou > best.0 {
                *best = (sc.miou, done);
            }
            self.last
                .insert(model.clone(), (sc.miou, sc.pixel_acc, done));
            shown.push(format!(
                "{model} mIoU {:.1} (best {:.1} @{})",
                100.0 * sc.miou,
                100.0 * best.0,
                best.1
            ));
        }
        let msg = format!("eval after {done}: {}", shown.join(", "));
        (serde_json::Value::Object(line), msg)
    }

    /// results.json: last and best per model (nothing when the run never evaluated).
    fn write_results(&self, dir: &Path) -> Result<(), Failure> {
        if self.last.is_empty() {
            return Ok(());
        }
        let results = serde_json::json!({
            "last": self.last.iter().map(|(m, (miou, acc, it))| (m.clone(), serde_json::json!({"miou": miou, "pixel_acc": acc, "after_iteration": it}))).collect::<serde_json::Map<_, _>>(),
            "best": self.best.iter().map(|(m, (miou, it))| (m.clone(), serde_json::json!({"miou": miou, "after_iteration": it}))).collect::<serde_json::Map<_, _>>(),
        });
        let path = dir.join("results.json");
        write_atomic(&path, format!("{results:#}\n").as_bytes())
            .map_err(|e| io_fail("write", &path, e))
    }
}

/// Progress on the terminal: a live bar on stderr, or (logs, CI) a line every 5 % of the run.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    start: u64,
    total: u64,
    every: u64,
}

impl Progress {
    fn new(color: bool, start: u64, total: u64) -> Self {
        let bar = color.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_position(start);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len}  {msg}  {per_sec}  ETA {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            start,
            total,
            every: (total / 20).max(1),
        }
    }

    /// A message above the bar (or a plain line).
    fn note(&self, msg: &str, out: &mut dyn Write) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => {
                let _ = writeln!(out, "{msg}");
            }
        }
    }

    /// After iteration `done`, `secs` into the run.
    fn step(&self, done: u64, secs: f64, losses: &[(String, f32)], out: &mut dyn Write) {
        let shown: Vec<String> = losses.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
        if let Some(bar) = &self.bar {
            bar.set_message(shown.join("  "));
            bar.set_position(done);
        } else if done.is_multiple_of(self.every) || done == self.total {
            let rate = (done - self.start) as f64 / secs.max(1e-9);
            let eta = (self.total - done) as f64 / rate.max(1e-9);
            let _ = writeln!(
                out,
                "iter {done:>6}/{}  {}  {rate:.2} it/s  ETA {}",
                self.total,
                shown.join("  "),
                hms(eta)
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The best `eval/<model>/miou` per model in an existing metrics file (and the iteration after
/// which it was measured).
fn earlier_best(path: &Path) -> BTreeMap<String, (f64, u64)> {
    let mut best: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    let Ok(text) = fs::read_to_string(path) else {
        return best;
    };
    for line in text.lines() {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_str(line) else {
            continue;
        };
        let it = v
            .get("iteration")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        for (k, val) in &v {
            let (Some(model), Some(m)) = (
                k.strip_prefix("eval/")
                    .and_then(|r| r.strip_suffix("/miou")),
                val.as_f64(),
            ) else {
                continue;
            };
            let e = best
                .entry(model.to_owned())
                .or_insert((f64::NEG_INFINITY, 0));
            if m > e.0 {
                *e = (m, it + 1);
            }
        }
    }
    best
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// `out/<name>/<UTC YYYYmmdd-HHMMSS>`, with `-2`, `-3`, ... when that exists already.
fn fresh_run_dir(out: &Path, name: &str) -> io::Result<PathBuf> {
    let base = out.join(name).join(utc_stamp(SystemTime::now()));
    let mut dir = base.clone();
    let mut n = 2;
    while dir.exists() {
        dir = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `YYYYmmdd-HHMMSS` in UTC: RFC 3339 (`humantime`) without its separators.
fn utc_stamp(t: SystemTime) -> String {
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    iso.trim_end_matches('Z')
        .replace('T', "_")
        .replace(['-', ':'], "")
        .replace('_', "-")
}

/// [`flowseg_engine::fsutil::write_atomic`] as an `io::Result`.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    Ok(flowseg_engine::fsutil::write_atomic(path, bytes)?)
}

/// Keeps the metrics lines of iterations before `next` (lines written after the checkpoint a
/// resume starts from would otherwise appear twice).
fn truncate_metrics(path: &Path, next: u64) -> io::Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("iteration").and_then(serde_json::Value::as_u64))
                .is_some_and(|it| it < next)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        // 2026-11-26 19:57:25 UTC = 1795723045 s.
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_723_045);
        assert_eq!(utc_stamp(t), "20261126-195725");
        // 2000-02-29 (leap day) 12:00:00 = 951825600 s.
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_825_600);
        assert_eq!(utc_stamp(t), "20000229-120000");
    }

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        assert_eq!(hms(5.4), "5s");
        assert_eq!(hms(125.0), "2m05s");
        assert_eq!(hms(3725.0), "1h02m05s");
    }
}
