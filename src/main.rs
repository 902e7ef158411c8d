//! The `flowseg` binary: the CLI with the built-in ops (see `flowseg::main_with`).

use std::process::ExitCode;

fn main() -> ExitCode {
    flowseg::main_with(&[])
}
