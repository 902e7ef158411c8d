//! The schema of a method graph file, section by section. Plain serde structs with
//! `deny_unknown_fields` and located fields ([`Sp`]) where later checks need to point at a value;
//! free-form parts that belong to someone else (a node's `params`, a model's arch params, the data
//! source) stay located trees ([`Node`]) for their owner to decode.
//!
//! ```yaml
//! name: supervised
//! data: { source: synthetic, classes: 4 }      # decoded by the data source
//! models:
//!   student: { arch: deeplab_lite, params: { width: 32 } }
//!   teacher: { ema_of: student }
//! optim:
//!   student: { kind: sgd, lr: 0.01, momentum: 0.9, weight_decay: 1.0e-4,
//!              schedule: { kind: poly, power: 0.9, warmup: 100 }, lr_mult: { backbone: 0.1 } }
//! train: { iterations: 2000, eval_every: 500, checkpoint_every: 1000, seed: 0 }
//! nodes:
//!   - { name: fwd, op: forward, inputs: { image: batch.image }, params: { model: student } }
//! metrics: { loss_again: sup_loss.loss }        # extra scalars logged each iteration
//! ```

use super::de::{from_node, DeError, Sp};
use super::range;
use super::value::{Node, Value};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A whole method graph, as written (after `--set` overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphSpec {
    /// The method's name; runs are written under `runs/<name>/`.
    pub name: Sp<String>,
    /// The data source and its params (decoded by the data source).
    pub data: Option<Node>,
    /// Networks by name, in file order.
    pub models: Vec<(Sp<String>, ModelSpec)>,
    /// Optimizers by the model they step, in file order (which is also the step order).
    pub optim: Vec<(Sp<String>, OptimSpec)>,
    /// The schedule.
    pub train: TrainSpec,
    /// How held-out images are evaluated.
    pub eval: EvalSpec,
    /// The ops, in file order.
    pub nodes: Vec<NodeSpec>,
    /// Scalars logged every iteration beside the losses (`metrics.jsonl` keys `metric/<name>`):
    /// name → `node.port` (an f32 scalar). Diagnostics such as a pseudo-label's accuracy or the
    /// confident fraction; nothing is optimized through them.
    pub metrics: Vec<(Sp<String>, Sp<String>)>,
}

/// A network: an architecture with params, or an EMA copy of another model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Architecture name (`deeplab_lite`, `resnet50_deeplabv3plus`, ...).
    #[serde(default)]
    pub arch: Option<Sp<String>>,
    /// This model is the exponential moving average of the named model.
    #[serde(default)]
    pub ema_of: Option<Sp<String>>,
    /// Architecture params (decoded by the architecture).
    #[serde(default)]
    pub params: Option<Node>,
    /// Initial weights: a safetensors file whose tensor names are the model's parameter names
    /// (torchvision's for the ResNet backbones), relative to the graph file's folder. Names the
    /// file lacks keep their initialiser; names the model lacks are reported and ignored.
    #[serde(default)]
    pub init: Option<InitSpec>,
    /// EMA decay α ∈ [0, 1] for an `ema_of` model: teacher ← α·teacher + (1 − α)·student after
    /// every optimizer step.
    #[serde(default, deserialize_with = "range::unit_opt")]
    pub decay: Option<f64>,
    /// For an `ema_of` model: use α_t = min(α, 1 − 1/(t + 1)) at step t (Mean Teacher's
    /// warm-up, so early teachers follow the student closely). Default true.
    #[serde(default)]
    pub ramp: Option<bool>,
    /// For an `ema_of` model: average the buffers (BN running statistics) too, not only the
    /// parameters. Default true (CutMix-Seg, AugSeg, UniMatch V2), which keeps an eval-mode
    /// teacher's statistics current; `false` is Mean Teacher's and ClassMix's parameters-only
    /// update, where the teacher runs in train mode and keeps its own statistics.
    #[serde(default)]
    pub ema_buffers: Option<bool>,
}

/// Where a model's initial weights come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    /// A safetensors file of parameters by name.
    pub weights: Sp<String>,
}

/// Optimizer families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// `torch.optim.SGD`.
    Sgd,
    /// `torch.optim.AdamW`.
    Adamw,
}

/// Learning-rate schedule over the run's iterations, after an optional linear warm-up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// lr stays at its base value.
    Constant {
        /// Linear warm-up iterations from 0.
        #[serde(default)]
        warmup: u64,
    },
    /// lr · (1 − t/T)^power.
    Poly {
        /// Exponent (0.9 in most segmentation codebases).
        #[serde(default = "default_power", deserialize_with = "range::non_negative")]
        power: f64,
        /// Linear warm-up iterations from 0.
        #[serde(default)]
        warmup: u64,
    },
    /// Half-cosine from lr to `min_lr`.
    Cosine {
        /// Final learning rate.
        #[serde(default, deserialize_with = "range::non_negative")]
        min_lr: f64,
        /// Linear warm-up iterations from 0.
        #[serde(default)]
        warmup: u64,
    },
}

fn default_power() -> f64 {
    0.9
}

/// One optimizer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSpec {
    /// `sgd` or `adamw`.
    pub kind: OptimKind,
    /// Base learning rate (> 0).
    #[serde(deserialize_with = "range::positive")]
    pub lr: f64,
    /// SGD momentum, in [0, 1).
    #[serde(default, deserialize_with = "range::unit_open")]
    pub momentum: f64,
    /// SGD Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// L2 (SGD) or decoupled (AdamW) weight decay (≥ 0).
    #[serde(default, deserialize_with = "range::non_negative")]
    pub weight_decay: f64,
    /// AdamW (β1, β2), each in [0, 1).
    #[serde(default = "default_betas", deserialize_with = "range::betas")]
    pub betas: (f64, f64),
    /// AdamW ε (> 0).
    #[serde(default = "default_eps", deserialize_with = "range::positive")]
    pub eps: f64,
    /// Learning-rate schedule; constant when absent.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Per-parameter-group multipliers by name prefix within the model, e.g. `{ backbone: 0.1 }`
    /// (each ≥ 0; 0 freezes the group).
    #[serde(default, deserialize_with = "range::multipliers")]
    pub lr_mult: BTreeMap<String, f64>,
    /// What this optimizer minimizes: loss references (`node.port`, f32 scalars) → weight. The
    /// weighted sum is differentiated with respect to the model's parameters. A weight is a
    /// number, or a number with a ramp-up (`{ weight: 1.0, rampup: 500 }`).
    #[serde(default)]
    pub minimize: BTreeMap<Sp<String>, LossWeight>,
}

/// A loss's weight in `minimize:`: a number, or a number reached by a ramp-up from 0 over the
/// first `rampup` iterations (Mean Teacher's and CCT's unsupervised weight).
///
/// ```yaml
/// minimize: { sup_loss.loss: 1.0, cons.loss: { weight: 10.0, rampup: 500, shape: sigmoid } }
/// ```
///
/// Weights are ≥ 0 (a negative weight would maximize the loss). Decoded by hand rather than as
/// an untagged enum, whose error replaces the reason (a weight of −1) with a generic one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossWeight {
    /// The same weight every iteration.
    Fixed(f64),
    /// `weight · r(t)`, r rising from ~0 to 1 over `rampup` iterations.
    Ramped(RampedWeight),
}

impl<'de> Deserialize<'de> for LossWeight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Weight;
        impl<'de> serde::de::Visitor<'de> for Weight {
            type Value = LossWeight;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a number ≥ 0, or `{ weight: <number ≥ 0>, rampup: <iterations>, shape: \
                     sigmoid | linear }`",
                )
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<LossWeight, E> {
                range::non_negative(serde::de::value::F64Deserializer::<E>::new(v))
                    .map(LossWeight::Fixed)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<LossWeight, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<LossWeight, E> {
                self.visit_f64(v as f64)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<LossWeight, A::Error> {
                RampedWeight::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(LossWeight::Ramped)
            }
        }
        d.deserialize_any(Weight)
    }
}

/// A weight with a ramp-up.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampedWeight {
    /// The weight after the ramp-up (≥ 0).
    #[serde(deserialize_with = "range::non_negative")]
    pub weight: f64,
    /// Iterations of the ramp-up (0: none).
    pub rampup: u64,
    /// The ramp's shape; default sigmoid.
    #[serde(default)]
    pub shape: RampShape,
}

/// Ramp-up shapes of a loss weight, t = min(iteration / rampup, 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RampShape {
    /// exp(−5·(1 − t)²) (Laine & Aila; Mean Teacher, CCT, GCT): e⁻⁵ ≈ 0.0067 at the start.
    #[default]
    Sigmoid,
    /// t.
    Linear,
}

impl LossWeight {
    /// The weight at `iteration` (0-based).
    pub fn at(&self, iteration: u64) -> f64 {
        match *self {
            LossWeight::Fixed(w) => w,
            LossWeight::Ramped(RampedWeight {
                weight,
                rampup,
                shape,
            }) => {
                if rampup == 0 {
                    return weight;
                }
                let t = (iteration as f64 / rampup as f64).min(1.0);
                weight
                    * match shape {
                        RampShape::Sigmoid => (-5.0 * (1.0 - t) * (1.0 - t)).exp(),
                        RampShape::Linear => t,
                    }
            }
        }
    }

    /// The weight once any ramp-up is over.
    pub fn full(&self) -> f64 {
        match *self {
            LossWeight::Fixed(w) => w,
            LossWeight::Ramped(r) => r.weight,
        }
    }
}

impl From<f32> for LossWeight {
    fn from(w: f32) -> Self {
        LossWeight::Fixed(f64::from(w))
    }
}

impl std::fmt::Display for LossWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossWeight::Fixed(w) => write!(f, "{w}"),
            LossWeight::Ramped(r) => write!(f, "{} (ramp-up {} it.)", r.weight, r.rampup),
        }
    }
}

fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}

/// The run schedule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Training iterations (≥ 1).
    #[serde(deserialize_with = "range::at_least_one")]
    pub iterations: u64,
    /// Evaluate every this many iterations (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Checkpoint every this many iterations (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Seed of every random stream in the run.
    #[serde(default)]
    pub seed: u64,
}

/// How held-out images are evaluated (the `eval:` section; every key optional).
///
/// ```yaml
/// eval: { mode: sliding, crop: 64, stride: 43, flip: true, batch: 8 }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// `whole` (the image as it is), `center_crop` (the central crop), or `sliding` (crop-sized
    /// windows at a stride, softmax probabilities averaged where they overlap).
    #[serde(default)]
    pub mode: EvalMode,
    /// Crop / window side `[h, w]` (a single number for a square); default: the training batch's
    /// image size.
    #[serde(default)]
    pub crop: Option<Side>,
    /// Sliding-window stride `[h, w]`; default: 2/3 of the window (as UniMatch and U2PL).
    #[serde(default)]
    pub stride: Option<Side>,
    /// Also run the horizontally flipped image and average the two softmax maps.
    #[serde(default)]
    pub flip: bool,
    /// Images (or windows) per forward pass (≥ 1); default: the training batch size.
    #[serde(default, deserialize_with = "range::at_least_one_opt")]
    pub batch: Option<usize>,
    /// Which models to evaluate; default: every model with an architecture or `ema_of`.
    #[serde(default)]
    pub models: Option<Vec<Sp<String>>>,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec {
            mode: EvalMode::Whole,
            crop: None,
            stride: None,
            flip: false,
            batch: None,
            models: None,
        }
    }
}

/// Evaluation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalMode {
    /// The whole image in one forward pass.
    #[default]
    Whole,
    /// The central `crop` (padded with ignore where the image is smaller).
    CenterCrop,
    /// `crop`-sized windows every `stride`, softmax accumulated.
    Sliding,
}

/// A 2-D extent written `64` or `[48, 64]` (height, width), each side ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Square.
    Square(usize),
    /// `[h, w]`.
    Rect([usize; 2]),
}

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Extent;
        impl<'de> serde::de::Visitor<'de> for Extent {
            type Value = Side;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a side ≥ 1, or `[height, width]` each ≥ 1")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Side, E> {
                match usize::try_from(v) {
                    Ok(s) if s >= 1 => Ok(Side::Square(s)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Side, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Side, A::Error> {
                let mut hw = [0usize; 2];
                for (i, side) in hw.iter_mut().enumerate() {
                    *side = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(3, &self));
                }
                if hw.contains(&0) {
                    return Err(serde::de::Error::invalid_value(
                        serde::de::Unexpected::Unsigned(0),
                        &self,
                    ));
                }
                Ok(Side::Rect(hw))
            }
        }
        d.deserialize_any(Extent)
    }
}

impl Side {
    /// (height, width).
    pub fn hw(self) -> (usize, usize) {
        match self {
            Side::Square(s) => (s, s),
            Side::Rect([h, w]) => (h, w),
        }
    }
}

/// One op instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique snake_case name.
    pub name: Sp<String>,
    /// Registered op name.
    pub op: Sp<String>,
    /// Input port → `node.port` or `batch.<field>`.
    #[serde(default)]
    pub inputs: BTreeMap<String, Sp<String>>,
    /// Params, decoded by the op's own `Params` type.
    #[serde(default)]
    pub params: Option<Node>,
    /// Nodes that must run before this one although no data flows between them.
    #[serde(default)]
    pub after: Vec<Sp<String>>,
    /// Pin to a named stream.
    #[serde(default)]
    pub stream: Option<Sp<String>>,
}

const SECTIONS: [&str; 8] = [
    "name", "data", "models", "optim", "train", "eval", "nodes", "metrics",
];

/// Decodes the sections one by one (and nodes one by one), collecting every error.
pub(super) fn decode(root: &Node) -> Result<GraphSpec, Vec<DeError>> {
    let mut errors = Vec::new();
    let Value::Map(entries) = &root.value else {
        return Err(vec![DeError::new(
            format!(
                "a graph file is a mapping of sections, found {}",
                root.kind()
            ),
            root.loc,
        )]);
    };
    for (k, _) in entries {
        let known = k.as_str().is_some_and(|s| SECTIONS.contains(&s));
        if !known {
            errors.push(DeError::new(
                format!(
                    "unknown section `{}`, expected one of {}",
                    k.as_str().unwrap_or("?"),
                    SECTIONS.map(|s| format!("`{s}`")).join(", ")
                ),
                k.loc,
            ));
        }
    }
    let missing = |name: &str| DeError::new(format!("missing section `{name}`"), root.loc);

    let name = match root.get("name") {
        Some(n) => take(from_node::<Sp<String>>(n), &mut errors),
        None => {
            errors.push(missing("name"));
            None
        }
    };
    let train = match root.get("train") {
        Some(n) => take(from_node::<TrainSpec>(n), &mut errors),
        None => {
            errors.push(missing("train"));
            None
        }
    };
    let eval = match root.get("eval") {
        Some(n) => take(from_node::<EvalSpec>(n), &mut errors),
        None => Some(EvalSpec::default()),
    };
    let models = named_entries::<ModelSpec>(root.get("models"), &mut errors);
    let optim = named_entries::<OptimSpec>(root.get("optim"), &mut errors);
    let metrics = named_entries::<Sp<String>>(root.get("metrics"), &mut errors);
    let mut nodes = Vec::new();
    match root.get("nodes").map(|n| &n.value) {
        Some(Value::Seq(items)) => {
            for item in items {
                if let Some(n) = take(from_node::<NodeSpec>(item), &mut errors) {
                    nodes.push(n);
                }
            }
        }
        Some(_) => errors.push(DeError::new(
            "`nodes` is a sequence of nodes",
            root.get("nodes").map_or(root.loc, |n| n.loc),
        )),
        None => errors.push(missing("nodes")),
    }
    match (name, train, eval, errors.is_empty()) {
        (Some(name), Some(train), Some(eval), true) => Ok(GraphSpec {
            name,
            data: root.get("data").cloned(),
            models,
            optim,
            train,
            eval,
            nodes,
            metrics,
        }),
        _ => Err(errors),
    }
}

/// What can be decoded of a graph whose schema has mistakes, to look for the mistakes of later
/// stages (ops, models, references) in the same pass: `None` unless the root is a mapping and
/// every model and every node decodes (a node that does not would make every reference to it
/// look dangling). A section that fails takes its default (`train`: one iteration; `eval`: the
/// defaults; `optim`, `metrics`: the entries that decode). For reporting only, never for a run.
pub(super) fn decode_for_report(root: &Node) -> Option<GraphSpec> {
    let Value::Map(_) = &root.value else {
        return None;
    };
    let mut errors = Vec::new();
    let name = root
        .get("name")
        .and_then(|n| from_node::<Sp<String>>(n).ok())
        .unwrap_or_else(|| Sp::detached("graph".to_owned()));
    let train = root
        .get("train")
        .and_then(|n| from_node::<TrainSpec>(n).ok())
        .unwrap_or(TrainSpec {
            iterations: 1,
            eval_every: 0,
            checkpoint_every: 0,
            seed: 0,
        });
    let eval = root
        .get("eval")
        .and_then(|n| from_node::<EvalSpec>(n).ok())
        .unwrap_or_default();
    let models = named_entries::<ModelSpec>(root.get("models"), &mut errors);
    if !errors.is_empty() {
        return None;
    }
    let optim = named_entries::<OptimSpec>(root.get("optim"), &mut Vec::new());
    let metrics = named_entries::<Sp<String>>(root.get("metrics"), &mut Vec::new());
    let Some(Value::Seq(items)) = root.get("nodes").map(|n| &n.value) else {
        return None;
    };
    let nodes = items
        .iter()
        .map(|item| from_node::<NodeSpec>(item).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(GraphSpec {
        name,
        data: root.get("data").cloned(),
        models,
        optim,
        train,
        eval,
        nodes,
        metrics,
    })
}

/// The value, or `None` after recording the error.
fn take<T>(r: Result<T, DeError>, errors: &mut Vec<DeError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// A mapping of name → T, each entry decoded on its own.
fn named_entries<T: serde::de::DeserializeOwned>(
    section: Option<&Node>,
    errors: &mut Vec<DeError>,
) -> Vec<(Sp<String>, T)> {
    let mut out = Vec::new();
    let Some(section) = section else { return out };
    let Value::Map(entries) = &section.value else {
        errors.push(DeError::new(
            format!("expected a mapping of names, found {}", section.kind()),
            section.loc,
        ));
        return out;
    };
    for (k, v) in entries {
        let name = match from_node::<Sp<String>>(k) {
            Ok(n) => n,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match from_node::<T>(v) {
            Ok(t) => out.push((name, t)),
            Err(e) => errors.push(e),
        }
    }
    out
}
