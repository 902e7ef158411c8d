//! The `flowseg` package: the command line and the small library it is built from, including
//! the entry point of custom binaries: a crate with its own ops ships `fn main() -> ExitCode {
//! flowseg::main_with(&[&MyPlugin]) }` and gets the whole CLI with its ops registered.
//!
//! Modules, bottom to top (each uses only those before it; `tests/layers.rs` checks): `report`
//! (graph errors rendered with the file's source, exit codes after writing), `device`
//! (`--device`), `plot` (a run's metrics.png, the results figure), `graph_fmt` (DOT / Mermaid),
//! `ops_doc` (`flowseg ops`), `demo` (a tiny network trained with the kernels alone), `eval`
//! (evaluation modes), `data_cmd` (`flowseg data`), `run` (`check`, `plan`, `run`), `predict`
//! (`eval`, `predict`), `bench` (`bench methods`, `bench gain`), and `cli` (argument parsing;
//! entered through [`main_with`] or, in tests, [`run_cli`]).

mod bench;
mod carry;
mod cli;
mod data_cmd;
pub mod demo;
pub mod device;
mod eval;
mod graph_fmt;
mod ops_doc;
mod plot;
mod predict;
pub mod report;
mod run;

pub use cli::{registry, run_cli};
pub use flowseg_engine::{Plugin, Registry, RegistryError};

use std::io::IsTerminal;
use std::process::ExitCode;

/// The `flowseg` binary with the built-in ops plus `plugins`: runs the command line from
/// `std::env::args_os()` against stdout and stderr (styled where they are terminals and
/// `NO_COLOR` is unset). Exit codes: 0 ok, 1 run-time failure, 2 usage or graph error, including
/// a plugin op whose name is already taken.
pub fn main_with(plugins: &[&dyn Plugin]) -> ExitCode {
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let styled = cli::Styled {
        out: color && stdout.is_terminal(),
        err: color && stderr.is_terminal(),
    };
    cli::run_styled(
        std::env::args_os(),
        plugins,
        &mut stdout.lock(),
        &mut stderr.lock(),
        styled,
    )
}
