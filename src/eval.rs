//! Evaluation during `flowseg run`: every model with an architecture (the student, EMA teachers)
//! is run in eval mode (running batch-norm statistics) on the data source's held-out batches,
//! predictions are the per-pixel argmax, and a confusion matrix gives per-class IoU, mIoU and
//! pixel accuracy (label 255 ignored).
//!
//! Not here: sliding-window, centre-crop or flip evaluation, `flowseg eval` / `predict` on a
//! checkpoint (the data issue).

use flowseg_engine::data::Source as DataSource;
use flowseg_engine::exec::run_cpu;
use flowseg_engine::ir::{self, Env, Graph, Source};
use flowseg_engine::kernels::argmax::argmax_fwd;
use flowseg_engine::kernels::metrics::{confusion_add, scores, Scores};
use flowseg_engine::spec::{GraphError, GraphSpec, Node, NodeSpec, Sp, TrainSpec, Value};
use flowseg_engine::{Registry, Tensor};
use std::collections::BTreeMap;

/// Label value that evaluation skips.
pub const IGNORE: i32 = 255;

/// One eval-mode forward graph per model.
pub struct Evaluator {
    models: Vec<(String, Graph, Source)>,
}

fn text(v: &str) -> Node {
    Node::detached(Value::Str(v.to_owned()))
}

impl Evaluator {
    /// `None` when the source has no evaluation split.
    pub fn new(
        spec: &GraphSpec,
        registry: &Registry,
        source: &dyn DataSource,
    ) -> Result<Option<Self>, Vec<GraphError>> {
        if source.eval_batches() == 0 {
            return Ok(None);
        }
        let env = Env {
            batch: source.specs(),
            state: BTreeMap::new(),
        };
        let mut models = Vec::new();
        for (name, m) in &spec.models {
            if m.arch.is_none() && m.ema_of.is_none() {
                continue;
            }
            // forward(model, eval) → detach: the detach node names the logits in the graph.
            let params = Node::detached(Value::Map(vec![
                (text("model"), text(&name.value)),
                (text("mode"), text("eval")),
            ]));
            let nodes = vec![
                NodeSpec {
                    name: Sp::detached("eval".to_owned()),
                    op: Sp::detached("forward".to_owned()),
                    inputs: BTreeMap::from([(
                        "image".to_owned(),
                        Sp::detached("batch.image".to_owned()),
                    )]),
                    params: Some(params),
                    after: Vec::new(),
                    stream: None,
                },
                NodeSpec {
                    name: Sp::detached("logits".to_owned()),
                    op: Sp::detached("detach".to_owned()),
                    inputs: BTreeMap::from([(
                        "x".to_owned(),
                        Sp::detached("eval.logits".to_owned()),
                    )]),
                    params: None,
                    after: Vec::new(),
                    stream: None,
                },
            ];
            let eval_spec = GraphSpec {
                name: Sp::detached(format!("{}-eval-{}", spec.name.value, name.value)),
                data: None,
                models: spec.models.clone(),
                optim: Vec::new(),
                train: TrainSpec {
                    iterations: 0,
                    eval_every: 0,
                    checkpoint_every: 0,
                    seed: spec.train.seed,
                },
                nodes,
            };
            let graph = ir::build(&eval_spec, registry, &env)?;
            let Some(k) = graph.nodes.iter().position(|n| n.name.value == "logits") else {
                continue;
            };
            models.push((name.value.clone(), graph, Source::Node { node: k, port: 0 }));
        }
        Ok(Some(Evaluator { models }))
    }

    /// Scores of every model on every held-out batch, with the given state.
    pub fn run(
        &self,
        source: &mut dyn DataSource,
        state: &BTreeMap<String, Tensor>,
    ) -> Result<Vec<(String, Scores)>, String> {
        let mut out = Vec::new();
        for (model, graph, logits) in &self.models {
            let mut confusion: Vec<u64> = Vec::new();
            let mut k = 0;
            for b in 0..source.eval_batches() {
                let batch = source.eval_batch(b).map_err(|e| e.to_string())?;
                let run = run_cpu(graph, &batch, state, 0, 0).map_err(|e| e.to_string())?;
                let l = run.get(logits).ok_or("no logits")?;
                let shape = l.spec().as_nchw().ok_or("logits are not NCHW")?;
                k = shape.c;
                if confusion.is_empty() {
                    confusion = vec![0; k * k];
                }
                let mut pred = vec![0i32; shape.n * shape.h * shape.w];
                argmax_fwd(l.f32().ok_or("logits are not f32")?, shape, &mut pred)
                    .map_err(|e| e.to_string())?;
                let label = batch
                    .get("label")
                    .and_then(Tensor::i32)
                    .ok_or("the held-out batch has no i32 `label`")?;
                confusion_add(&pred, label, k, IGNORE, &mut confusion)
                    .map_err(|e| e.to_string())?;
            }
            out.push((model.clone(), scores(&confusion, k)));
        }
        Ok(out)
    }
}
