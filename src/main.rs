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
    Demo {
        /// Training iterations.
        #[arg(long, default_value_t = DemoConfig::default().iterations)]
        iterations: usize,
        /// Images per batch.
        #[arg(long, default_value_t = DemoConfig::default().batch)]
        batch: usize,
        /// Image side in pixels (even, ≥ 8).
        #[arg(long, default_value_t = DemoConfig::default().size)]
        size: usize,
        /// Channel width of the network.
        #[arg(long, default_value_t = DemoConfig::default().width)]
        width: usize,
        /// Initial SGD learning rate (poly decay).
        #[arg(long, default_value_t = DemoConfig::default().lr)]
        lr: f64,
        /// Seed of the data and the initial weights.
        #[arg(long, default_value_t = DemoConfig::default().seed)]
        seed: u64,
        /// Held-out images to evaluate.
        #[arg(long, default_value_t = DemoConfig::default().eval_images)]
        eval_images: usize,
    },
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the CLI's output"
)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            iterations,
            batch,
            size,
            width,
            lr,
            seed,
            eval_images,
        } => {
            let cfg = DemoConfig {
                iterations,
                batch,
                size,
                width,
                lr,
                seed,
                eval_images,
            };
            println!(
                "flowseg demo: {iterations} iterations, batch {batch} of {size}×{size}, width {width}, {} threads",
                rayon::current_num_threads()
            );
            match demo::run(&cfg, |line| println!("{line}")) {
                Ok(r) => {
                    println!(
                        "trained in {:.1} s; held-out ({eval_images} images): pixel accuracy {:.1}%, mIoU {:.1}",
                        r.train_secs,
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
