//! `--device`: where `flowseg run` executes. The CPU executor is the only one so far; `cuda`
//! checks what a user would need (a build with the `cuda` feature, a driver, a GPU) and then
//! says plainly that graphs do not run on CUDA yet, instead of silently training on the CPU.
//!
//! Not here: the CUDA kernels themselves (flowseg-kernels `cuda` module, tested on their own
//! by `scripts/gpu-check.sh`), a CUDA plan executor.

/// The `--device` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU executor (the reference; the default).
    #[default]
    Cpu,
    /// An NVIDIA GPU through the CUDA driver (device 0).
    Cuda,
}

/// Ok when a run can execute on `device`; otherwise the message to print (exit code 2).
pub fn require(device: DeviceArg) -> Result<(), String> {
    match device {
        DeviceArg::Cpu => Ok(()),
        DeviceArg::Cuda => Err(format!(
            "error: --device cuda: {}\nhelp: run with --device cpu (the default)",
            cuda_status()
        )),
    }
}

#[cfg(feature = "cuda")]
fn cuda_status() -> String {
    match flowseg_kernels::cuda::Device::cuda(0) {
        Err(e) => e.to_string(),
        Ok(dev) => format!(
            "found {}, but the graph executor runs on the CPU only so far: the CUDA kernels \
             exist and are checked against the CPU on their own (scripts/gpu-check.sh), \
             executing a whole plan on the GPU is not implemented yet",
            dev.name()
        ),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_status() -> String {
    "this flowseg was built without CUDA support; rebuild with `cargo build --release \
     --features cuda` (needs no CUDA toolkit to build; a driver and GPU to run)"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_accepted_and_cuda_explains_itself() {
        assert_eq!(require(DeviceArg::Cpu), Ok(()));
        let e = require(DeviceArg::Cuda).unwrap_err();
        assert!(e.starts_with("error: --device cuda: "), "{e}");
        assert!(e.contains("--device cpu"), "{e}");
        #[cfg(not(feature = "cuda"))]
        assert!(e.contains("--features cuda"), "{e}");
    }
}
