//! The op registry and plugins. Built-in ops register explicitly (one line each, in
//! `flowseg_ops::register_builtin_ops`); a user crate adds its own ops through a [`Plugin`] and
//! ships a binary with `flowseg::main_with(&[&MyPlugin])`.
//!
//! Not here: dynamic loading of plugins (a versioned C ABI, later).

use crate::data::{DataEntry, DataSource, DynDataSource};
use crate::model::{DynModel, Model, ModelEntry};
use crate::op::{DynOp, Entry, Op};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// The op name of the model-call composite (reserved: no op may take it).
pub const FORWARD: &str = "forward";
/// The op name of the gradient composite: `{ op: grad, inputs: { of: <scalar>, wrt: <value> } }`
/// gives d(of)/d(wrt) as a value (Grad-CAM, VAT), with no gradient flowing through it
/// (reserved: no op may take it).
pub const GRAD: &str = "grad";

/// Every op and model architecture the engine can instantiate, by YAML name.
#[derive(Default)]
pub struct Registry {
    ops: BTreeMap<&'static str, Box<dyn DynOp>>,
    models: BTreeMap<&'static str, Box<dyn DynModel>>,
    data: BTreeMap<&'static str, Box<dyn DynDataSource>>,
}

/// Registration failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two ops share a name (a plugin shadowing a built-in, or registered twice).
    #[error("op `{0}` is registered twice")]
    Duplicate(&'static str),
    /// Two data sources share a name.
    #[error("data source `{0}` is registered twice")]
    DuplicateData(&'static str),
    /// Two model architectures share a name.
    #[error("model architecture `{0}` is registered twice")]
    DuplicateModel(&'static str),
    /// An op may not be called `forward` or `grad`: those names are the engine's composites.
    #[error("`forward` and `grad` are reserved for the engine's composites and cannot name an op")]
    Reserved,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers op type `O`.
    pub fn add<O: Op>(&mut self) -> Result<&mut Self, RegistryError> {
        if O::NAME == FORWARD || O::NAME == GRAD {
            return Err(RegistryError::Reserved);
        }
        if self.ops.contains_key(O::NAME) {
            return Err(RegistryError::Duplicate(O::NAME));
        }
        self.ops.insert(O::NAME, Box::new(Entry::<O>(PhantomData)));
        Ok(self)
    }

    /// Registers model architecture `M`.
    pub fn add_model<M: Model>(&mut self) -> Result<&mut Self, RegistryError> {
        if self.models.contains_key(M::NAME) {
            return Err(RegistryError::DuplicateModel(M::NAME));
        }
        self.models
            .insert(M::NAME, Box::new(ModelEntry::<M>(PhantomData)));
        Ok(self)
    }

    /// The architecture named `name`.
    pub fn model(&self, name: &str) -> Option<&dyn DynModel> {
        self.models.get(name).map(|b| b.as_ref())
    }

    /// All architectures, sorted by name.
    pub fn models(&self) -> impl Iterator<Item = &dyn DynModel> {
        self.models.values().map(|b| b.as_ref())
    }

    /// Registers data source `D`.
    pub fn add_data<D: DataSource>(&mut self) -> Result<&mut Self, RegistryError> {
        if self.data.contains_key(D::NAME) {
            return Err(RegistryError::DuplicateData(D::NAME));
        }
        self.data
            .insert(D::NAME, Box::new(DataEntry::<D>(PhantomData)));
        Ok(self)
    }

    /// The data source named `name`.
    pub fn data(&self, name: &str) -> Option<&dyn DynDataSource> {
        self.data.get(name).map(|b| b.as_ref())
    }

    /// All data sources, sorted by name.
    pub fn data_sources(&self) -> impl Iterator<Item = &dyn DynDataSource> {
        self.data.values().map(|b| b.as_ref())
    }

    /// Runs a plugin's registrations.
    pub fn install(&mut self, plugin: &dyn Plugin) -> Result<&mut Self, RegistryError> {
        plugin.build(self)?;
        Ok(self)
    }

    /// The op named `name`.
    pub fn get(&self, name: &str) -> Option<&dyn DynOp> {
        self.ops.get(name).map(|b| b.as_ref())
    }

    /// All ops, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &dyn DynOp> {
        self.ops.values().map(|b| b.as_ref())
    }

    /// Registered names closest to `name` (edit distance ≤ 2, or sharing a prefix of at least
    /// 4 characters), best first: the "did you mean" of an unknown-op error.
    pub fn suggest(&self, name: &str) -> Vec<&'static str> {
        let mut scored: Vec<(usize, &'static str)> = self
            .ops
            .keys()
            .filter_map(|&k| {
                let d = strsim::levenshtein(name, k);
                let prefix = name.len() >= 4 && (k.starts_with(name) || name.starts_with(k));
                (d <= 2 || prefix).then_some((d, k))
            })
            .collect();
        scored.sort();
        scored.into_iter().map(|(_, k)| k).take(3).collect()
    }
}

/// A bundle of ops (and later data sources, model architectures) added to a registry.
pub trait Plugin {
    /// Adds its ops.
    fn build(&self, registry: &mut Registry) -> Result<(), RegistryError>;
}

impl<F: Fn(&mut Registry) -> Result<(), RegistryError>> Plugin for F {
    fn build(&self, registry: &mut Registry) -> Result<(), RegistryError> {
        self(registry)
    }
}
