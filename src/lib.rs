//! The `flowseg` package: the command-line front end (`src/main.rs`) and the small library it
//! is built from. Until the graph engine lands, the only job is `demo`: a tiny segmentation
//! network trained end to end with the CPU kernels (see `demo.rs`).

pub mod demo;
