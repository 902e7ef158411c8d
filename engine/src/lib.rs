//! flowseg-engine: the graph engine. Stages in data-flow order: spec (YAML → located tree →
//! typed graph spec) → ir (validated DAG) → autodiff → plan (streams, events, memory) → exec.
//! Today only `spec` exists; the rest arrives with the graph-engine issue.
//!
//! The engine never depends on `flowseg-ops`: ops reach it through the registry.

pub mod spec;

pub use flowseg_kernels as kernels;
