//! flowseg-kernels: the numeric layer. CPU reference kernels on contiguous NCHW slices, each
//! forward beside its backward, the one GEMM entry point, the Philox counter-based RNG, and (with
//! the feature `cuda`) the kernels' CUDA twins.
//!
//! What this crate holds: plain functions over slices and small shape/param structs. Every
//! kernel is generic over [`Real`] (f32 for training, f64 for the finite-difference gradient
//! checks), returns [`KernelError`] on a length mismatch instead of panicking, and documents the
//! shape of every argument with the letters below.
//!
//! CUDA twins (module `cuda`, feature `cuda`): every kernel here has one, found by its name — the
//! launcher of `<file>::<kernel>` is `cuda::<file>::<kernel>` in `src/cuda/<file>.rs` (Philox's
//! `u32_at` is `philox_u32`), its device code is in `kernels/cuda/<file>.cu` — and each is tested
//! against the function of the same name here (`tests/cuda_parity*.rs`, on a GPU;
//! `tests/cuda_coverage.rs` checks that none is missing or filed elsewhere).
//!
//! What it does not hold: tensors, graphs, the engine's device abstraction, autodiff or
//! scheduling (`flowseg-engine`), ops and their params as users write them (`flowseg-ops`). The
//! engine's CUDA executor reaches the twins through each op's `cuda` (engine/src/cuda_exec.rs;
//! not yet run on a GPU).
//!
//! Shape letters, used in every doc comment: N batch, C channels (Ci in, Co out), K classes,
//! H and W height and width (Ho, Wo after an op), kh and kw kernel extent. Layout is always
//! NCHW row-major: element (n, c, y, x) lives at `((n*C + c)*H + y)*W + x`.
//!
//! Argument order, everywhere: data inputs (and tensors only read, such as weights or running
//! statistics), then the input shape, then scalar or struct params, then outputs and in-out state.
//! Backward kernels overwrite their outputs; a backward output passed as `None` is skipped.

pub mod activation;
pub mod argmax;
pub mod attention;
pub mod augment;
pub mod batch_norm;
pub mod conv2d;
mod conv2d_direct;
mod conv2d_panel;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dropout;
pub mod elementwise;
mod error;
pub mod exp;
pub mod gemm;
pub mod loss;
pub mod maps;
pub mod metrics;
pub mod mix;
pub mod optim;
pub mod perturb;
pub mod philox;
pub mod pool;
mod real;
pub mod reduce;
pub mod resize;
mod shape;
pub mod softmax;
pub mod testing;
mod widest;

pub use error::{check_len, KernelError};
pub use real::Real;
pub use shape::Nchw;
