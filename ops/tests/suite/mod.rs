//! Checks every op must pass, written once over any registry: the built-in ops run them in
//! `gradients.rs` and `registry.rs`, and `adding_an_op.rs` runs them on an op a test adds —
//! the proof that an op is one file plus one registration line. Each test binary uses a part,
//! hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod gradients;
pub mod picked;
pub mod registry;
pub mod shipped;
