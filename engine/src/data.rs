//! Data sources: what fills `batch.*`. A source is registered like an op (one file, one line)
//! and selected by the graph's `data: { source: <name>, ... }` section; the rest of that mapping
//! is the source's typed params. The engine asks it for the batch specs once (they fix every
//! shape in the plan) and for one batch per iteration.
//!
//! Held-out images come one at a time at their own size ([`EvalItem`]): evaluation modes (whole,
//! centre crop, sliding window, flip) are the evaluator's business, not the source's.
//!
//! Two traits, as for ops: [`DataSource`] is a kind of source (registered by name, typed
//! params, `open`), [`Dataset`] the opened instance that delivers batches.
//!
//! Not here: opening the source a graph names (`open.rs`, above the registry), the sources
//! themselves, splits and loader threads (`flowseg-sources`).

use crate::spec::{from_node, DeError, Node, Value};
use crate::tensor::{Tensor, TensorSpec};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// A batch: field name → tensor.
pub type Batch = BTreeMap<String, Tensor>;

/// Why a source could not deliver.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataError(pub String);

/// One held-out image at its own size (evaluation crops, slides or flips it as the run asks).
#[derive(Debug, Clone)]
pub struct EvalItem {
    /// A name for reports and `flowseg predict` (the file stem for file datasets).
    pub name: String,
    /// f32[3, H, W], normalised as the training images are.
    pub image: Tensor,
    /// i32[H, W]; 255 is ignored.
    pub label: Tensor,
}

/// The labeled/unlabeled split a run trained with, one item name per line; written into the
/// run directory so a result can be reproduced (and the split reused) later.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitLists {
    /// Items whose labels the run used.
    pub labeled: Vec<String>,
    /// Items used without labels.
    pub unlabeled: Vec<String>,
}

/// What a full scan of a dataset found (`flowseg check --data`).
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// Items read.
    pub items: usize,
    /// One line per bad item: the file and the problem.
    pub problems: Vec<String>,
}

/// An opened dataset: what a [`DataSource`] kind opens with its params and the run's seed.
pub trait Dataset: Send {
    /// The spec of every field each batch holds (static for the whole run).
    fn specs(&self) -> BTreeMap<String, TensorSpec>;
    /// The training batch of `iteration` (a pure function of the seed and the iteration, so
    /// a resumed run sees the batches an uninterrupted one would).
    fn batch(&mut self, iteration: u64) -> Result<Batch, DataError>;

    /// Class names, by label (empty: unnamed).
    fn classes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Number of held-out images for evaluation (0: the source has no evaluation split).
    fn eval_len(&self) -> usize {
        0
    }

    /// Held-out image `index` (< [`Dataset::eval_len`]).
    fn eval_item(&mut self, index: usize) -> Result<EvalItem, DataError> {
        Err(DataError(format!(
            "no evaluation split (asked for image {index})"
        )))
    }

    /// Applies the source's input normalisation to an RGB image f32[3, H, W] in [0, 1] (what
    /// `flowseg predict` does to image files so they look like the training images).
    fn normalize(&self, _image: &mut [f32]) {}

    /// Fields of [`Dataset::specs`] that hold what a semi-supervised method must not see — the
    /// labels of unlabeled images, there to measure pseudo-labels against. A graph may log
    /// metrics from them; the trainer refuses a minimized loss that depends on one.
    fn hidden_fields(&self) -> std::collections::BTreeSet<String> {
        std::collections::BTreeSet::new()
    }

    /// The labeled/unlabeled split, if the source has one.
    fn split(&self) -> Option<SplitLists> {
        None
    }

    /// Reads every item once and reports each bad one; `progress(done, total)` is called as it
    /// goes. Sources without files have nothing to scan.
    fn scan(&mut self, progress: &mut dyn FnMut(usize, usize)) -> Result<ScanReport, DataError> {
        progress(0, 0);
        Ok(ScanReport::default())
    }
}

/// One kind of data source. Implemented once per file in `flowseg-ops`.
pub trait DataSource: Send + Sync + 'static {
    /// `source:` name.
    const NAME: &'static str;
    /// One line for `flowseg ops`.
    const SUMMARY: &'static str;
    /// The source's params: the `data:` mapping without `source`.
    type Params: DeserializeOwned + fmt::Debug + Clone + Send + Sync + 'static;
    /// Opens the source with the run's seed.
    fn open(p: &Self::Params, seed: u64) -> Result<Box<dyn Dataset>, DataError>;
}

/// The registry's view of a data source (object-safe).
pub trait DynDataSource: Send + Sync {
    /// `source:` name.
    fn name(&self) -> &'static str;
    /// One line.
    fn summary(&self) -> &'static str;
    /// Decodes `params` (the `data:` mapping minus `source`) and opens the source.
    fn open(
        &self,
        params: &Node,
        seed: u64,
    ) -> Result<Result<Box<dyn Dataset>, DataError>, DeError>;
}

pub(crate) struct DataEntry<D>(pub(crate) PhantomData<D>);

impl<D: DataSource> DynDataSource for DataEntry<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }
    fn summary(&self) -> &'static str {
        D::SUMMARY
    }
    fn open(
        &self,
        params: &Node,
        seed: u64,
    ) -> Result<Result<Box<dyn Dataset>, DataError>, DeError> {
        // The `source` key selects the source; the rest is the source's own.
        let rest = match &params.value {
            Value::Map(entries) => Node {
                value: Value::Map(
                    entries
                        .iter()
                        .filter(|(k, _)| k.as_str() != Some("source"))
                        .cloned()
                        .collect(),
                ),
                loc: params.loc,
            },
            _ => params.clone(),
        };
        let p: D::Params = from_node(&rest)?;
        Ok(D::open(&p, seed))
    }
}
