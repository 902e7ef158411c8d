//! `--device`: where `flowseg run` executes. `cpu` (the default) is the reference executor.
//! `cuda` needs a build with the `cuda` feature, then moves the training step to GPU 0
//! (`Trainer::use_cuda`: the engine's CUDA executor) once the state is loaded, or refuses with
//! the reason — no driver or GPU, or the op kinds of the graph that have no CUDA twin yet —
//! instead of silently training on the CPU. Evaluation stays on the CPU, on the state copied
//! back before each evaluation and checkpoint.
//!
//! Not here: the CUDA executor (engine/src/cuda_exec.rs), the kernels (flowseg-kernels `cuda`
//! module, checked on a GPU by `scripts/gpu-check.sh`).

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

/// Moves `trainer`'s step to `device` (nothing to do for the CPU); the message to print (exit
/// code 2) when the GPU cannot take it.
pub fn start(
    device: DeviceArg,
    trainer: &mut flowseg_engine::train::Trainer,
) -> Result<(), String> {
    match device {
        DeviceArg::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => trainer.use_cuda(0).map_err(|e| refused(&e.to_string())),
        #[cfg(not(feature = "cuda"))]
        DeviceArg::Cuda => {
            let _ = trainer;
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
}
