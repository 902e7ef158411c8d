//! flowseg-engine: the graph engine. Stages in data-flow order: spec (YAML → located tree →
//! typed graph spec) → ir (validated DAG) → autodiff → plan (streams, events, memory) → exec.
//! Today: `spec`, the `Op` trait and the registry; the rest arrives with the graph-engine issue.
//!
//! The engine never depends on `flowseg-ops`: ops reach it through the registry.

pub mod autodiff;
pub mod checkpoint;
pub mod data;
pub mod exec;
pub mod ir;
pub mod model;
pub mod op;
pub mod registry;
pub mod spec;
pub mod tensor;
pub mod train;

pub use op::{Access, ExecCx, NoParams, Op, OpError, OpNode, Port};
pub use registry::{Plugin, Registry, RegistryError};
pub use tensor::{DType, Tensor, TensorSpec};

pub use flowseg_kernels as kernels;
