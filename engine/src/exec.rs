//! exec: runs a validated graph. Today the CPU reference executor: nodes in the graph's
//! topological order, one at a time, every output kept until the run ends. The planner
//! (streams, events, buffer reuse) and the CUDA executor replace the "keep everything, one
//! queue" policy, not this contract: same graph in, same tensors out.
//!
//! Not here: scheduling onto streams, memory planning, the random-interleaving test mode.

use crate::ir::{Graph, Source};
use crate::op::{ExecCx, OpError};
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A batch field or state tensor the graph reads was not provided, or has another spec.
    #[error("{what} `{name}`: {problem}")]
    Input {
        /// `batch field` or `state tensor`.
        what: &'static str,
        /// Its name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A node's op failed.
    #[error("node `{node}` ({op}): {source}")]
    Node {
        /// Node name.
        node: String,
        /// Op name.
        op: &'static str,
        /// The failure.
        source: OpError,
    },
}

/// The values of one run: every node's outputs, plus the inputs it read.
pub struct Run<'a> {
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    outputs: Vec<Vec<Tensor>>,
}

impl Run<'_> {
    /// The tensor a source names.
    pub fn get(&self, s: &Source) -> Option<&Tensor> {
        match s {
            Source::Batch(f) => self.batch.get(f),
            Source::State(f) => self.state.get(f),
            Source::Node { node, port } => self.outputs.get(*node)?.get(*port),
        }
    }

    /// The f32 scalar a source names (a loss), if it is one.
    pub fn scalar(&self, s: &Source) -> Option<f32> {
        match self.get(s)?.f32()? {
            [v] => Some(*v),
            _ => None,
        }
    }
}

/// Runs every node of `graph` once on the CPU. `seed` and `iteration` key the random streams.
pub fn run_cpu<'a>(
    graph: &Graph,
    batch: &'a BTreeMap<String, Tensor>,
    state: &'a BTreeMap<String, Tensor>,
    seed: u64,
    iteration: u64,
) -> Result<Run<'a>, ExecError> {
    for (what, declared, given) in [
        ("batch field", &graph.batch, batch),
        ("state tensor", &graph.state, state),
    ] {
        for (name, spec) in declared {
            match given.get(name) {
                None => {
                    return Err(ExecError::Input {
                        what,
                        name: name.clone(),
                        problem: "not provided".into(),
                    })
                }
                Some(t) if t.spec() != spec => {
                    return Err(ExecError::Input {
                        what,
                        name: name.clone(),
                        problem: format!("the graph was planned for {spec}, got {}", t.spec()),
                    })
                }
                Some(_) => {}
            }
        }
    }
    let mut run = Run {
        batch,
        state,
        outputs: Vec::with_capacity(graph.nodes.len()),
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        let mut outs: Vec<Tensor> = node.outputs.iter().map(Tensor::zeros).collect();
        let ins: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .map(|s| s.as_ref().and_then(|s| run.get(s)))
            .collect();
        let cx = ExecCx {
            seed,
            iteration,
            node: u32::try_from(i).unwrap_or(u32::MAX),
        };
        node.op
            .cpu(&cx, &ins, &mut outs)
            .map_err(|source| ExecError::Node {
                node: node.name.value.clone(),
                op: node.op.name(),
                source,
            })?;
        run.outputs.push(outs);
    }
    Ok(run)
}
