//! The `flowseg` command line. Today: `flowseg demo` (train and evaluate the demo network with the
//! CPU kernels). The graph commands (`run`, `check`, `plan`, `graph`, `ops`) arrive with the
//! engine.

use clap::{Parser, Subcommand};
use flowseg::demo::{self, DemoConfig};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flowseg",
    version,
    about = "Semi-supervised semantic segmentation as a dataflow engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small segmentation network on embedded procedural data and evaluate it.
    Demo(DemoConfig),
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the CLI's output"
)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(cfg) => {
            println!(
                "flowseg demo: {} iterations, batch {} of {s}×{s}, width {}, {} threads",
                cfg.iterations,
                cfg.batch,
                cfg.width,
                rayon::current_num_threads(),
                s = cfg.size,
            );
            match demo::run(&cfg, |line| println!("{line}")) {
                Ok(r) => {
                    println!(
                        "trained in {:.1} s; held-out ({} images): pixel accuracy {:.1}%, mIoU {:.1}",
                        r.train_secs,
                        cfg.eval_images,
                        100.0 * r.pixel_acc,
                        100.0 * r.miou
                    );
                    for (name, iou) in demo::CLASSES.iter().zip(&r.class_iou) {
                        println!("  IoU {name:<10} {:.1}", 100.0 * iou);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
