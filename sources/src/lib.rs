//! flowseg-sources: what fills a graph's `batch.*`. The data sources a graph names with
//! `data: { source: <name>, ... }` — `synthetic` and `shapes` (generated in memory), `voc`,
//! `cityscapes` and `manifest` (image and mask files) — each one file, registered by one line
//! in [`register_builtin_sources`]; and what they share: the labeled/unlabeled split and epoch
//! samplers (`split.rs`), the batching loader with its worker threads (`loader.rs`), the
//! batching and geometry keys read beside a source's own params (`shared_keys.rs`), image and
//! mask decoding with bad-file errors and the crop/rescale/flip geometry (`files.rs`), index
//! PNG masks (`palette.rs`), and the MNIST-composite generator behind `flowseg data m2nist`
//! (`m2nist.rs`). docs/data.md is the user's guide.
//!
//! Not here: the `DataSource` / `Dataset` traits (flowseg-engine, `data.rs`), ops and models
//! (flowseg-ops), evaluation (the flowseg binary).

use flowseg_engine::{Registry, RegistryError};

pub mod cityscapes;
pub mod files;
pub mod loader;
pub mod m2nist;
pub mod manifest;
pub mod palette;
pub mod shapes;
pub mod shared_keys;
pub mod split;
pub mod synthetic;
pub mod voc;

/// Adds every built-in data source to `r`, one line each; fails only if a name is taken.
pub fn register_builtin_sources(r: &mut Registry) -> Result<(), RegistryError> {
    r.add_data::<cityscapes::Cityscapes>()?;
    r.add_data::<manifest::Manifest>()?;
    r.add_data::<shapes::Shapes>()?;
    r.add_data::<synthetic::Synthetic>()?;
    r.add_data::<voc::Voc>()?;
    Ok(())
}
