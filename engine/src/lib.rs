//! flowseg-engine: the graph engine (spec → ir → autodiff → plan → exec), devices, the `Op`
//! trait, the registry and plugins. Empty until the graph-engine issue lands; today it only
//! re-exports the kernel crate so the dependency direction (kernels → engine → ops → flowseg) is
//! fixed from the start.

pub use flowseg_kernels as kernels;
