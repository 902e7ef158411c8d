//! `--device`: where `flowseg run` executes. `cpu` (the default) is the reference executor.
//! `cuda` needs a build with the `cuda` feature, then moves the training step to GPU 0
//! (`Trainer::use_cuda`: the engine's CUDA executor) once the state is loaded, or refuses with
//! the reason — no driver or GPU, or the op kinds of the graph that have no CUDA twin yet —
//! instead of silently training on the CPU. Evaluation stays on the CPU, on the state copied
//! back before each evaluation and checkpoint.
//!
//! Not here: the CUDA executor (engine/src/cuda_exec.rs), the kernels (flowseg-kernels `cuda`
//! module, checked on a GPU by `scripts/gpu-check.sh`).

use flowseg_engine::shadow::{DebugChecks, Tolerance};

/// The `--device` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU executor (the reference; the default).
    #[default]
    Cpu,
    /// An NVIDIA GPU through the CUDA driver (device 0).
    Cuda,
}

/// Ok when this build can try `device`; otherwise the message to print (exit code 2). Checked
/// before anything is read, so a build without CUDA says so at once.
pub fn require(device: DeviceArg) -> Result<(), String> {
    match device {
        DeviceArg::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => Ok(()),
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => Err(refused(
            "this flowseg was built without CUDA support; rebuild with `cargo build --release \
             --features cuda` (needs no CUDA toolkit to build; a driver and GPU to run)",
        )),
    }
}

/// The debug switches of a GPU step from `--sync-each-op` and `--validate-cpu`
/// (engine/src/shadow.rs; `--validate-cpu` at the default tolerance, 1e-4 + 1e-3·|CPU|); the
/// message to print (exit code 2) when they are given without `--device cuda`, where there is
/// nothing to synchronise or to compare.
pub fn debug_checks(
    device: DeviceArg,
    sync_each_op: bool,
    validate_cpu: bool,
) -> Result<DebugChecks, String> {
    let checks = DebugChecks {
        sync_each_op,
        validate: validate_cpu.then(Tolerance::default),
    };
    if checks.any() && device != DeviceArg::Cuda {
        let flag = if validate_cpu {
            "--validate-cpu"
        } else {
            "--sync-each-op"
        };
        return Err(format!(
            "error: {flag} checks a GPU run against the CPU; it needs --device cuda\n\
             help: on the CPU every op already runs to completion, in order, as the reference"
        ));
    }
    Ok(checks)
}

/// Moves `trainer`'s step to `device` (nothing to do for the CPU) with the debug `checks`; the
/// message to print (exit code 2) when the GPU cannot take it.
pub fn start(
    device: DeviceArg,
    checks: DebugChecks,
    trainer: &mut flowseg_engine::train::Trainer,
) -> Result<(), String> {
    match device {
        DeviceArg::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => {
            trainer.set_debug_checks(checks);
            trainer.use_cuda(0).map_err(|e| refused(&e.to_string()))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => {
            let _ = (trainer, checks);
            require(device)
        }
    }
}

fn refused(why: &str) -> String {
    format!("error: --device cuda: {why}\nhelp: run with --device cpu (the default)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_accepted_and_cuda_explains_itself() {
        assert_eq!(require(DeviceArg::Cpu), Ok(()));
        #[cfg(not(feature = "cuda"))]
        {
            let e = require(DeviceArg::Cuda).unwrap_err();
            assert!(e.starts_with("error: --device cuda: "), "{e}");
            assert!(e.contains("--device cpu"), "{e}");
            assert!(e.contains("--features cuda"), "{e}");
        }
        #[cfg(feature = "cuda")]
        assert_eq!(require(DeviceArg::Cuda), Ok(()));
    }

    #[test]
    fn the_debug_switches_need_a_gpu_run() {
        assert_eq!(
            debug_checks(DeviceArg::Cpu, false, false),
            Ok(DebugChecks::default())
        );
        let e = debug_checks(DeviceArg::Cpu, true, false).unwrap_err();
        assert!(
            e.starts_with("error: --sync-each-op checks a GPU run"),
            "{e}"
        );
        let e = debug_checks(DeviceArg::Cpu, true, true).unwrap_err();
        assert!(
            e.starts_with("error: --validate-cpu checks a GPU run"),
            "{e}"
        );
        assert!(e.contains("--device cuda"), "{e}");
        let on = debug_checks(DeviceArg::Cuda, true, true).unwrap();
        assert!(on.sync_each_op);
        assert_eq!(on.validate, Some(Tolerance::default()));
    }
}
