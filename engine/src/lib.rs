//! flowseg-engine: the graph engine. Stages in data-flow order: spec (YAML → located tree →
//! typed graph spec) → ir (validated DAG, models traced) → autodiff (backward appended as nodes)
//! → update (optimizer steps and EMA as in-place nodes) → plan (streams, events, memory) →
//! device (arena offsets, per-node launches, the `Device` trait a plan's steps are handed to)
//! → shadow (debug switches wrapping a device) → exec (the CPU executor, one such device); `train` ties them into one training step with
//! optimizers, EMA teachers and checkpoints. The traits that ops, models and data sources
//! implement (`Op`, `Model`, `DataSource`) and the `Registry` that holds them live here too.
//! docs/layout.md walks through the modules.
//!
//! With the `cuda` feature, `cuda_exec` is the CUDA executor: another `Device` for the same
//! driver and plans (unrun on a GPU so far, docs/plans/device-seam.md).
//!
//! The engine never depends on `flowseg-ops`: ops reach it through the registry. Not here:
//! evaluation (the binary's src/eval.rs, on the CPU).

pub mod autodiff;
pub mod checkpoint;
#[cfg(feature = "cuda")]
pub mod cuda_exec;
pub mod data;
pub mod device;
pub mod exec;
pub mod fsutil;
pub mod fusion;
pub mod graph;
pub mod ir;
pub mod model;
pub mod op;
pub mod open;
pub mod plan;
pub mod registry;
pub mod shadow;
pub mod spec;
pub mod tensor;
pub mod train;
pub mod update;

pub use op::{Access, ExecCx, NoParams, Op, OpError, OpNode, Port};
pub use registry::{Plugin, Registry, RegistryError};
pub use tensor::{DType, Tensor, TensorSpec};

pub use flowseg_kernels as kernels;
