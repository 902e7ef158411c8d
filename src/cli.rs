//! The `flowseg` command line: argument parsing (clap) and the commands, writing to the streams
//! it is given so tests can run it in-process. Commands: `run` (train a method graph), `check`
//! (validate one; `--data` reads every file), `plan` (print the plan of its training step),
//! `graph` (draw it), `eval` and `predict` (score or apply a trained run), `data` (`split`,
//! `m2nist`), `bench` (`methods`: the results table of every method graph; `gain`: one method
//! against supervised), `ops` (list the registered ops) and `demo` (the kernels-only demo
//! network).
//!
//! Exit codes: 0 ok, 1 a run-time failure (including failing to write the output), 2 a usage or
//! graph error (bad flags, a bad demo configuration, a plugin that cannot be registered).

use crate::demo::{self, DemoConfig};
use crate::ops_doc;
use crate::report::finish;
use crate::run::{self, CheckArgs, PlanArgs, RunArgs};
use clap::{Parser, Subcommand};
use flowseg_engine::{Plugin, Registry, RegistryError};
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flowseg",
    version,
    about = "Semi-supervised semantic segmentation as a dataflow engine"
)]
struct Cli {
    /// Log level of the engine's diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    log: tracing::Level,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a method graph: validate, differentiate, iterate; write runs/<name>/<time>/.
    Run(RunArgs),
    /// Validate a method graph (parse, data, models, shapes, gradients) and report every problem.
    Check(CheckArgs),
    /// Benchmarks: `methods` trains every method graph × seeds × datasets and writes the
    /// results table (docs/RESULTS.md) and figure.
    Bench {
        #[command(subcommand)]
        cmd: crate::bench::BenchCommand,
    },
    /// Dataset tools: write a labeled/unlabeled split, generate the m2nist dataset.
    Data {
        #[command(subcommand)]
        cmd: crate::data_cmd::DataCommand,
    },
    /// Score a trained model on the held-out split: per-class IoU, mIoU, pixel accuracy.
    Eval(crate::predict::EvalArgs),
    /// Segment a folder of images with a trained model: palette PNG masks and overlays.
    Predict(crate::predict::PredictArgs),
    /// Print the plan of a graph's training step: streams, events, buffers, peak memory.
    Plan(PlanArgs),
    /// Draw a method graph (Graphviz DOT or Mermaid).
    Graph {
        /// The method graph (YAML).
        graph: std::path::PathBuf,
        /// Override any key, as for `run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "dot")]
        format: crate::graph_fmt::Format,
    },
    /// Train a small segmentation network on embedded procedural data and evaluate it.
    Demo(DemoConfig),
    /// List every registered op: summary, inputs and outputs, and an example node.
    Ops {
        /// Print Markdown (the content of docs/ops.md) instead of plain text.
        #[arg(long)]
        markdown: bool,
    },
}

/// Whether to style each stream (ANSI colours): true only for a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Styled {
    pub(crate) out: bool,
    pub(crate) err: bool,
}

/// The built-in ops, models and data sources, then each plugin's, in order.
pub fn registry(plugins: &[&dyn Plugin]) -> Result<Registry, RegistryError> {
    let mut r = flowseg_ops::builtin_registry()?;
    flowseg_sources::register_builtin_sources(&mut r)?;
    for p in plugins {
        r.install(*p)?;
    }
    Ok(r)
}

/// Runs the command line `args` (the first is the program name, as in `std::env::args`) with
/// the built-in ops plus `plugins`, writing the command's output to `out` and diagnostics to
/// `err`, unstyled. Returns the exit code: 0 ok, 1 run-time failure, 2 usage or graph error
/// (including a plugin whose op name is already taken).
pub fn run_cli<I, T>(
    args: I,
    plugins: &[&dyn Plugin],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_styled(args, plugins, out, err, Styled::default())
}

pub(crate) fn run_styled<I, T>(
    args: I,
    plugins: &[&dyn Plugin],
    out: &mut dyn Write,
    err: &mut dyn Write,
    styled: Styled,
) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Diagnostics are best effort: if stderr itself fails there is nobody left to tell.
    let registry = match registry(plugins) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: cannot build the registry: {e}");
            if matches!(
                e,
                RegistryError::Duplicate(_)
                    | RegistryError::DuplicateData(_)
                    | RegistryError::DuplicateModel(_)
            ) {
                let _ = writeln!(
                    err,
                    "help: every name must be unique across the built-ins and all plugins: \
                     rename the plugin's op, data source or model"
                );
            }
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version arrive here too, for stdout and with exit code 0.
            let (stream, style): (&mut dyn Write, bool) = if e.use_stderr() {
                (err, styled.err)
            } else {
                (out, styled.out)
            };
            let text = if style {
                e.render().ansi().to_string()
            } else {
                e.render().to_string()
            };
            let _ = stream.write_all(text.as_bytes());
            return exit_code(e.exit_code());
        }
    };
    // One global subscriber per process: the first CLI run installs it (tests run many).
    let _ = tracing_subscriber::fmt()
        .with_max_level(cli.log)
        .with_writer(std::io::stderr)
        .with_ansi(styled.err)
        .with_target(false)
        .try_init();
    let result = match cli.command {
        Command::Demo(cfg) => return run_demo(&cfg, out, err),
        Command::Run(a) => return run::run(&a, &registry, out, err, styled.err),
        Command::Check(a) => return run::check(&a, &registry, out, err, styled.err),
        Command::Plan(a) => return run::plan(&a, &registry, out, err, styled.err),
        Command::Data { cmd } => return crate::data_cmd::run(&cmd, out, err),
        Command::Bench { cmd } => return crate::bench::run(&cmd, &registry, out, err, styled.err),
        Command::Eval(a) => return crate::predict::eval(&a, &registry, out, err, styled.err),
        Command::Predict(a) => return crate::predict::predict(&a, &registry, out, err, styled.err),
        Command::Graph { graph, set, format } => {
            let Some(text) = crate::run::read(&graph, styled.err, err) else {
                return ExitCode::from(2);
            };
            match flowseg_engine::spec::parse_graph(&text, &set) {
                Ok((spec, _)) => out.write_all(crate::graph_fmt::render(&spec, format).as_bytes()),
                Err(errors) => {
                    let shown = graph.display().to_string();
                    let errors = crate::report::name_flags(&errors, &set);
                    let _ = err.write_all(
                        crate::report::render(&shown, &text, &errors, styled.err).as_bytes(),
                    );
                    return ExitCode::from(2);
                }
            }
        }
        Command::Ops { markdown } => {
            let text = if markdown {
                ops_doc::markdown(&registry)
            } else {
                ops_doc::text(&registry)
            };
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
    };
    finish(result, err)
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run_demo(cfg: &DemoConfig, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let mut written = writeln!(
        out,
        "flowseg demo: {} iterations, batch {} of {s}×{s}, width {}, {} threads",
        cfg.iterations,
        cfg.batch,
        cfg.width,
        rayon::current_num_threads(),
        s = cfg.size,
    );
    let report = demo::run(cfg, |line| {
        // Keep training if the progress cannot be shown; the first write error is reported.
        if written.is_ok() {
            written = writeln!(out, "{line}");
        }
    });
    match report {
        Ok(r) => {
            let result = written.and_then(|()| {
                writeln!(
                    out,
                    "trained in {:.1} s; held-out ({} images): pixel accuracy {:.1}%, mIoU {:.1}",
                    r.train_secs,
                    cfg.eval_images,
                    100.0 * r.pixel_acc,
                    100.0 * r.miou
                )?;
                for (name, iou) in demo::CLASSES.iter().zip(&r.class_iou) {
                    writeln!(out, "  IoU {name:<10} {:.1}", 100.0 * iou)?;
                }
                out.flush()
            });
            finish(result, err)
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            ExitCode::from(2)
        }
    }
}
