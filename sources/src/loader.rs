//! The loader every dataset shares: a dataset implements [`SampleSet`] (how to produce one
//! training sample at the batch shape, one held-out image, one scan of an item) and
//! [`SemiSource`] turns it into a [`Dataset`]: the labeled/unlabeled split, labeled and unlabeled
//! batches drawn epoch by epoch, per-sample geometry randomness keyed by the draw, and worker
//! threads that build the next batches ahead of the trainer into bounded crossbeam channels.
//!
//! The batching keys (`batch`, `unlabeled_batch`, `unlabeled_sets`, `labeled`, `split_seed`,
//! `workers`, `prefetch`) are read by [`WithBatching`] from the same `data:` mapping as the
//! dataset's own params, so a dataset declares only what is its own.
//!
//! Batch fields: `image` f32[B, 3, H, W] and `label` i32[B, H, W] (255: ignore, or padding);
//! with `unlabeled_batch: U`, per unlabeled set `u_image` f32[U, 3, H, W] and `u_valid`
//! f32[U, H, W] (1 on image pixels, 0 on crop padding), the second set `u_image_2`, `u_valid_2`
//! and so on; with `unlabeled_truth: true` also the hidden `u_label` i32[U, H, W] per set
//! (`u_label_2`, ...), the unlabeled images' ground truth for diagnostics only (the trainer
//! keeps it away from every minimized loss). Photometric augmentation and mixing are graph ops, not loader work: every view of
//! an unlabeled image made in the graph shares the loader's geometry by construction.
//!
//! Not here: decoding and geometry (`files.rs`), generated data (`synthetic.rs`).

use super::shared_keys::{peel, SharedKeys};
use super::split::{split, tag, Labeled, Sampler, Split};
use crossbeam_channel::{bounded, Receiver};
use flowseg_engine::data::{Batch, DataError, Dataset, EvalItem, ScanReport, SplitLists};
use flowseg_engine::kernels::philox::Philox;
use flowseg_engine::{Tensor, TensorSpec};
use rayon::prelude::*;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Label of ignored pixels (crop padding, VOC borders).
pub const IGNORE: i32 = 255;

/// One training sample after geometry, at the batch's height and width.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// f32[3, H, W].
    pub image: Vec<f32>,
    /// i32[H, W] when asked for (255 on padding and ignored pixels).
    pub label: Option<Vec<i32>>,
    /// f32[H, W]: 1 on image pixels, 0 on padding.
    pub valid: Vec<f32>,
}

/// Which part of a dataset an item belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Training items (split into labeled and unlabeled).
    Train,
    /// Held-out items.
    Eval,
}

/// A dataset: what [`SemiSource`] needs to batch it.
pub trait SampleSet: Send + Sync + 'static {
    /// Batch height and width.
    fn shape(&self) -> (usize, usize);
    /// Class names, by label.
    fn classes(&self) -> Vec<String>;
    /// Number of items in `part`.
    fn len(&self, part: Part) -> usize;
    /// Name of training item `i` (one line of a split file).
    fn name(&self, i: usize) -> String;
    /// Whether training item `i` has a label at all (a manifest line without a mask does not:
    /// it is unlabeled whatever the split says).
    fn has_label(&self, _i: usize) -> bool {
        true
    }
    /// Training item `i` through random geometry drawn from `rng`; its label only when
    /// `with_label`.
    fn sample(&self, i: usize, rng: &Philox, with_label: bool) -> Result<Sample, DataError>;
    /// Held-out item `i` at its own size.
    fn eval_item(&self, i: usize) -> Result<EvalItem, DataError>;
    /// Normalises an RGB image f32[3, H, W] in [0, 1] as the dataset's images are (default:
    /// unchanged).
    fn normalize(&self, _image: &mut [f32]) {}
    /// Reads item `i` of `part` completely and checks it (decodes, sizes, class ids).
    fn check(&self, part: Part, i: usize) -> Result<(), DataError>;
}

/// The batching keys of a `data:` mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    /// Labeled images per batch.
    pub batch: usize,
    /// Unlabeled images per batch and set (0: a supervised source).
    pub unlabeled_batch: usize,
    /// Independent unlabeled batches per iteration (CutMix-Seg mixes two).
    pub unlabeled_sets: usize,
    /// Share of training items that keep their labels.
    pub labeled: Labeled,
    /// Seed of the split (separate from the training seed so runs share one labeled set).
    pub split_seed: u64,
    /// Loader threads (0: build batches on the trainer's thread).
    pub workers: usize,
    /// Batches each worker may hold ready.
    pub prefetch: usize,
    /// Also deliver the labels of the unlabeled images (`u_label`, `u_label_2`, ...) as hidden
    /// fields: for diagnostics such as pseudo-label accuracy, never for a loss (the trainer
    /// refuses that). Items without any label give 255 (ignored) everywhere.
    pub unlabeled_truth: bool,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            batch: 8,
            unlabeled_batch: 0,
            unlabeled_sets: 1,
            labeled: Labeled::All,
            split_seed: 0,
            workers: 2,
            prefetch: 4,
            unlabeled_truth: false,
        }
    }
}

const BATCHING_KEYS: &[&str] = &[
    "batch",
    "unlabeled_batch",
    "unlabeled_sets",
    "labeled",
    "split_seed",
    "workers",
    "prefetch",
    "unlabeled_truth",
];

/// A dataset's own params `P` plus the [`Batching`] keys, read from one mapping: the batching
/// keys are taken out and everything else goes to `P` (which keeps its own unknown-key checks).
#[derive(Debug, Clone)]
pub struct WithBatching<P> {
    /// The batching keys.
    pub batching: Batching,
    /// The dataset's own.
    pub params: P,
}

impl<'de, P: Deserialize<'de>> Deserialize<'de> for WithBatching<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<P>(PhantomData<P>);
        impl<'de, P: Deserialize<'de>> Visitor<'de> for V<P> {
            type Value = WithBatching<P>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of data source params")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let (batching, params) = peel::<Batching, P, A>(map)?;
                Ok(WithBatching { batching, params })
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

impl SharedKeys for Batching {
    const KEYS: &'static [&'static str] = BATCHING_KEYS;
    const WHAT: &'static str = "a batching key";
    type Built = Batching;
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "batch" => self.batch = map.next_value()?,
            "unlabeled_batch" => self.unlabeled_batch = map.next_value()?,
            "unlabeled_sets" => self.unlabeled_sets = map.next_value()?,
            "labeled" => self.labeled = map.next_value()?,
            "split_seed" => self.split_seed = map.next_value()?,
            "workers" => self.workers = map.next_value()?,
            "unlabeled_truth" => self.unlabeled_truth = map.next_value()?,
            _ => self.prefetch = map.next_value()?,
        }
        Ok(())
    }
    fn build<E: de::Error>(self) -> Result<Batching, E> {
        if self.batch == 0 {
            return Err(E::custom("`batch` must be at least 1"));
        }
        if self.unlabeled_batch > 0 && self.unlabeled_sets == 0 {
            return Err(E::custom(
                "`unlabeled_sets` must be at least 1 when `unlabeled_batch` is set",
            ));
        }
        // Each worker is a thread and each prefetched batch is memory held ahead: beyond these
        // bounds a typo (`workers: 2000`) would exhaust the machine before the first step.
        if self.workers > MAX_WORKERS {
            return Err(E::custom(format!(
                "`workers` is {}; at most {MAX_WORKERS} loader threads (0 builds batches on the \
                 trainer's thread)",
                self.workers
            )));
        }
        if self.prefetch > MAX_PREFETCH {
            return Err(E::custom(format!(
                "`prefetch` is {}; at most {MAX_PREFETCH} batches are built ahead per worker",
                self.prefetch
            )));
        }
        Ok(self)
    }
}

/// The most loader threads a graph may ask for.
pub const MAX_WORKERS: usize = 64;
/// The most batches a worker may build ahead.
pub const MAX_PREFETCH: usize = 64;

/// The field names of unlabeled set `s` (0-based): (`u_image`, `u_valid`), then
/// (`u_image_2`, `u_valid_2`), ...
pub fn unlabeled_fields(s: usize) -> (String, String) {
    if s == 0 {
        ("u_image".to_owned(), "u_valid".to_owned())
    } else {
        (format!("u_image_{}", s + 1), format!("u_valid_{}", s + 1))
    }
}

/// The hidden ground-truth field of unlabeled set `s` (0-based): `u_label`, `u_label_2`, ...
pub fn unlabeled_truth_field(s: usize) -> String {
    if s == 0 {
        "u_label".to_owned()
    } else {
        format!("u_label_{}", s + 1)
    }
}

/// The draw plan of one run: split, samplers, seed. Cloned into every worker.
#[derive(Clone)]
struct Draws {
    b: Batching,
    seed: u64,
    labeled: Sampler,
    unlabeled: Vec<Sampler>,
}

impl Draws {
    /// The batch of `iteration`.
    fn batch<S: SampleSet>(&mut self, set: &S, iteration: u64) -> Result<Batch, DataError> {
        let (h, w) = set.shape();
        let (bl, bu) = (self.b.batch, self.b.unlabeled_batch);
        let mut out = Batch::new();
        let mut image = Vec::with_capacity(bl * 3 * h * w);
        let mut label = Vec::with_capacity(bl * h * w);
        for j in 0..bl as u64 {
            let k = iteration * bl as u64 + j;
            let item = self.labeled.draw(k).ok_or_else(no_items)?;
            let rng = Philox::new(self.seed, tag(b"GEOL") | (k & 0xffff_ffff));
            let s = set.sample(item, &rng, true)?;
            image.extend_from_slice(&s.image);
            label.extend_from_slice(s.label.as_deref().ok_or_else(no_label)?);
        }
        out.insert("image".into(), tensor_f32(&[bl, 3, h, w], image)?);
        out.insert("label".into(), tensor_i32(&[bl, h, w], label)?);
        for (s, sampler) in self.unlabeled.iter_mut().enumerate() {
            let truth = self.b.unlabeled_truth;
            let mut image = Vec::with_capacity(bu * 3 * h * w);
            let mut valid = Vec::with_capacity(bu * h * w);
            let mut label = Vec::with_capacity(if truth { bu * h * w } else { 0 });
            for j in 0..bu as u64 {
                let k = iteration * bu as u64 + j;
                let item = sampler.draw(k).ok_or_else(no_items)?;
                let stream = tag(&[b'G', b'E', b'U', b'0' + s as u8]) | (k & 0xffff_ffff);
                let with_label = truth && set.has_label(item);
                let smp = set.sample(item, &Philox::new(self.seed, stream), with_label)?;
                image.extend_from_slice(&smp.image);
                valid.extend_from_slice(&smp.valid);
                if truth {
                    match smp.label {
                        Some(l) => label.extend_from_slice(&l),
                        None => label.resize(label.len() + h * w, IGNORE),
                    }
                }
            }
            let (fi, fv) = unlabeled_fields(s);
            out.insert(fi, tensor_f32(&[bu, 3, h, w], image)?);
            out.insert(fv, tensor_f32(&[bu, h, w], valid)?);
            if truth {
                out.insert(unlabeled_truth_field(s), tensor_i32(&[bu, h, w], label)?);
            }
        }
        Ok(out)
    }
}

fn no_items() -> DataError {
    DataError("internal: drawing from an empty pool".into())
}
fn no_label() -> DataError {
    DataError("internal: a labeled sample came without its label".into())
}
fn tensor_f32(shape: &[usize], v: Vec<f32>) -> Result<Tensor, DataError> {
    let n = v.len();
    Tensor::from_f32(shape, v).ok_or_else(|| {
        DataError(format!(
            "a sample has the wrong size: {n} values for shape {shape:?}"
        ))
    })
}
fn tensor_i32(shape: &[usize], v: Vec<i32>) -> Result<Tensor, DataError> {
    let n = v.len();
    Tensor::from_i32(shape, v).ok_or_else(|| {
        DataError(format!(
            "a label has the wrong size: {n} values for shape {shape:?}"
        ))
    })
}

/// A [`Dataset`] over any [`SampleSet`].
pub struct SemiSource<S: SampleSet> {
    set: Arc<S>,
    draws: Draws,
    split: Split,
    workers: Option<Workers>,
}

impl<S: SampleSet> SemiSource<S> {
    /// Splits `set`'s training items as `b` asks and prepares the samplers (no thread starts
    /// until the first batch).
    pub fn new(set: S, b: Batching, seed: u64) -> Result<Self, DataError> {
        let n = set.len(Part::Train);
        if n == 0 {
            return Err(DataError("the dataset has no training items".into()));
        }
        // Only items that have a label can be in the labeled share.
        let labelable: Vec<usize> = (0..n).filter(|&i| set.has_label(i)).collect();
        if labelable.is_empty() {
            return Err(DataError(
                "no training item has a label (a supervised loss needs some)".into(),
            ));
        }
        let inner = split(labelable.len(), b.labeled, b.split_seed)?;
        let labeled: Vec<usize> = inner.labeled.iter().map(|&i| labelable[i]).collect();
        let mut unlabeled: Vec<usize> = inner.unlabeled.iter().map(|&i| labelable[i]).collect();
        unlabeled.extend((0..n).filter(|&i| !set.has_label(i)));
        unlabeled.sort_unstable();
        if b.unlabeled_batch > 0 && unlabeled.is_empty() {
            return Err(DataError(format!(
                "`labeled: {}` leaves no unlabeled images for `unlabeled_batch: {}`; use a \
                 smaller share (e.g. `labeled: 1/16`) or `unlabeled_batch: 0`",
                b.labeled, b.unlabeled_batch
            )));
        }
        let sets = if b.unlabeled_batch > 0 {
            b.unlabeled_sets
        } else {
            0
        };
        let draws = Draws {
            labeled: Sampler::new(labeled.clone(), seed, tag(b"LORD")),
            unlabeled: (0..sets)
                .map(|s| {
                    Sampler::new(
                        unlabeled.clone(),
                        seed,
                        tag(&[b'U', b'O', b'R', b'0' + s as u8]),
                    )
                })
                .collect(),
            b,
            seed,
        };
        Ok(SemiSource {
            set: Arc::new(set),
            draws,
            split: Split { labeled, unlabeled },
            workers: None,
        })
    }

    /// The dataset.
    pub fn set(&self) -> &S {
        &self.set
    }
}

impl<S: SampleSet> Dataset for SemiSource<S> {
    fn specs(&self) -> BTreeMap<String, TensorSpec> {
        let (h, w) = self.set.shape();
        let (bl, bu) = (self.draws.b.batch, self.draws.b.unlabeled_batch);
        let mut m = BTreeMap::from([
            ("image".to_owned(), TensorSpec::f32(&[bl, 3, h, w])),
            ("label".to_owned(), TensorSpec::i32(&[bl, h, w])),
        ]);
        for s in 0..self.draws.unlabeled.len() {
            let (fi, fv) = unlabeled_fields(s);
            m.insert(fi, TensorSpec::f32(&[bu, 3, h, w]));
            m.insert(fv, TensorSpec::f32(&[bu, h, w]));
        }
        for f in self.hidden_fields() {
            m.insert(f, TensorSpec::i32(&[bu, h, w]));
        }
        m
    }

    fn hidden_fields(&self) -> std::collections::BTreeSet<String> {
        if !self.draws.b.unlabeled_truth {
            return Default::default();
        }
        (0..self.draws.unlabeled.len())
            .map(unlabeled_truth_field)
            .collect()
    }

    fn batch(&mut self, iteration: u64) -> Result<Batch, DataError> {
        if self.draws.b.workers == 0 {
            return self.draws.batch(&*self.set, iteration);
        }
        if self.workers.as_ref().map(|w| w.next) != Some(iteration) {
            // First batch, or a jump (resume, evaluation restart): restart from here.
            self.workers = Some(Workers::start(
                &self.set,
                &self.draws,
                iteration,
                self.draws.b.workers,
                self.draws.b.prefetch.max(1),
            ));
        }
        let w = self.workers.as_mut().ok_or_else(no_items)?;
        w.take(iteration)
    }

    fn classes(&self) -> Vec<String> {
        self.set.classes()
    }

    fn eval_len(&self) -> usize {
        self.set.len(Part::Eval)
    }

    fn eval_item(&mut self, index: usize) -> Result<EvalItem, DataError> {
        let n = self.set.len(Part::Eval);
        if index >= n {
            return Err(DataError(format!("evaluation image {index} of {n}")));
        }
        self.set.eval_item(index)
    }

    fn normalize(&self, image: &mut [f32]) {
        self.set.normalize(image);
    }

    fn split(&self) -> Option<SplitLists> {
        let names = |v: &[usize]| v.iter().map(|&i| self.set.name(i)).collect();
        Some(SplitLists {
            labeled: names(&self.split.labeled),
            unlabeled: names(&self.split.unlabeled),
        })
    }

    fn scan(&mut self, progress: &mut dyn FnMut(usize, usize)) -> Result<ScanReport, DataError> {
        let items: Vec<(Part, usize)> = [Part::Train, Part::Eval]
            .into_iter()
            .flat_map(|p| (0..self.set.len(p)).map(move |i| (p, i)))
            .collect();
        let total = items.len();
        let mut problems = Vec::new();
        // Chunks keep the progress callback on this thread while rayon reads in parallel.
        for (c, chunk) in items.chunks(256).enumerate() {
            progress(c * 256, total);
            let set = &self.set;
            let bad: Vec<String> = chunk
                .par_iter()
                .filter_map(|&(p, i)| set.check(p, i).err().map(|e| e.0))
                .collect();
            problems.extend(bad);
        }
        progress(total, total);
        Ok(ScanReport {
            items: total,
            problems,
        })
    }
}

/// Loader threads: worker `w` builds the batches of iterations `start + w`, `start + w + W`, ...
/// in order into its own bounded channel, so the trainer reads them back in iteration order and
/// the batches are the same as without threads.
struct Workers {
    next: u64,
    start: u64,
    queues: Vec<Receiver<Result<Batch, DataError>>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    fn start<S: SampleSet>(
        set: &Arc<S>,
        draws: &Draws,
        start: u64,
        n: usize,
        prefetch: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut queues = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for w in 0..n as u64 {
            let (tx, rx) = bounded(prefetch);
            let (set, mut draws, stop) = (Arc::clone(set), draws.clone(), Arc::clone(&stop));
            handles.push(std::thread::spawn(move || {
                let mut it = start + w;
                while !stop.load(Ordering::Relaxed) {
                    let b = draws.batch(&*set, it);
                    let failed = b.is_err();
                    // A closed channel means the source was dropped or restarted.
                    if tx.send(b).is_err() || failed {
                        return;
                    }
                    it += n as u64;
                }
            }));
            queues.push(rx);
        }
        Workers {
            next: start,
            start,
            queues,
            stop,
            handles,
        }
    }

    fn take(&mut self, iteration: u64) -> Result<Batch, DataError> {
        let q = ((iteration - self.start) % self.queues.len() as u64) as usize;
        let b = self.queues[q]
            .recv()
            .map_err(|_| DataError("a loader thread stopped unexpectedly".into()))?;
        self.next = iteration + 1;
        b
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks workers waiting on a full channel.
        self.queues.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowseg_engine::spec::{from_node, parse_yaml};

    /// Item i is a constant image of value i; its label is i; geometry draws one number.
    struct Toy {
        n: usize,
        no_label_from: usize,
    }
    impl SampleSet for Toy {
        fn shape(&self) -> (usize, usize) {
            (2, 2)
        }
        fn classes(&self) -> Vec<String> {
            vec!["a".into()]
        }
        fn len(&self, p: Part) -> usize {
            match p {
                Part::Train => self.n,
                Part::Eval => 3,
            }
        }
        fn name(&self, i: usize) -> String {
            format!("item{i}")
        }
        fn has_label(&self, i: usize) -> bool {
            i < self.no_label_from
        }
        fn sample(&self, i: usize, rng: &Philox, with_label: bool) -> Result<Sample, DataError> {
            let g = rng.uniform_at(0);
            Ok(Sample {
                image: vec![i as f32, g, 0.0, 0.0]
                    .into_iter()
                    .cycle()
                    .take(12)
                    .collect(),
                label: with_label.then(|| vec![i as i32; 4]),
                valid: vec![1.0; 4],
            })
        }
        fn eval_item(&self, i: usize) -> Result<EvalItem, DataError> {
            Err(DataError(format!("toy {i}")))
        }
        fn check(&self, p: Part, i: usize) -> Result<(), DataError> {
            if p == Part::Train && i == 5 {
                Err(DataError("item5: broken".into()))
            } else {
                Ok(())
            }
        }
    }

    fn batching(yaml: &str) -> Batching {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Own {
            #[allow(dead_code)]
            size: Option<usize>,
        }
        let node = parse_yaml(yaml).unwrap();
        from_node::<WithBatching<Own>>(&node).unwrap().batching
    }

    #[test]
    fn batching_keys_come_out_of_the_dataset_mapping() {
        let b =
            batching("{ batch: 4, unlabeled_batch: 2, unlabeled_sets: 2, labeled: 1/8, size: 3 }");
        assert_eq!((b.batch, b.unlabeled_batch, b.unlabeled_sets), (4, 2, 2));
        assert_eq!(b.labeled, Labeled::Fraction { num: 1, den: 8 });
        assert_eq!(batching("{}"), Batching::default());
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Own {
            #[allow(dead_code)]
            size: usize,
        }
        let node = parse_yaml("{ batch: 4,\n  sise: 3 }").unwrap();
        let e = from_node::<WithBatching<Own>>(&node).unwrap_err();
        assert!(e.message.contains("unknown field `sise`"), "{}", e.message);
        assert!(e.message.contains("unlabeled_batch"), "{}", e.message);
        let node = parse_yaml("{ batch: 0, size: 3 }").unwrap();
        assert!(from_node::<WithBatching<Own>>(&node).is_err());
        let node = parse_yaml("{ labeled: 0.5, size: 3 }").unwrap();
        let e = from_node::<WithBatching<Own>>(&node).unwrap_err();
        assert!(e.message.contains("1/16"), "{}", e.message);
    }

    fn toy_source(n: usize, no_label_from: usize, b: Batching) -> SemiSource<Toy> {
        SemiSource::new(Toy { n, no_label_from }, b, 11).unwrap()
    }

    #[test]
    fn batches_are_the_same_with_and_without_threads() {
        let b = Batching {
            batch: 3,
            unlabeled_batch: 2,
            unlabeled_sets: 2,
            labeled: Labeled::Count(4),
            workers: 0,
            ..Batching::default()
        };
        let mut plain = toy_source(40, 40, b.clone());
        let mut threaded = toy_source(
            40,
            40,
            Batching {
                workers: 3,
                prefetch: 2,
                ..b
            },
        );
        let specs = plain.specs();
        assert_eq!(specs.len(), 6);
        assert_eq!(specs["u_image_2"], TensorSpec::f32(&[2, 3, 2, 2]));
        for it in [0, 1, 2, 3, 7, 8, 2] {
            let (x, y) = (plain.batch(it).unwrap(), threaded.batch(it).unwrap());
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            for (k, t) in &x {
                assert_eq!(t.f32(), y[k].f32(), "{k} at {it}");
                assert_eq!(t.i32(), y[k].i32(), "{k} at {it}");
                assert_eq!(t.spec(), &specs[k]);
            }
        }
    }

    #[test]
    fn labeled_batches_use_only_the_labeled_share_and_every_item_per_epoch() {
        let b = Batching {
            batch: 2,
            unlabeled_batch: 3,
            labeled: Labeled::Count(4),
            workers: 0,
            ..Batching::default()
        };
        let mut src = toy_source(20, 16, b);
        let split = src.split().unwrap();
        assert_eq!(split.labeled.len(), 4);
        // Items 16.. have no label: always unlabeled.
        assert_eq!(split.unlabeled.len(), 16);
        assert!((16..20).all(|i| split.unlabeled.contains(&format!("item{i}"))));
        // Two iterations of batch 2 = one epoch of the 4 labeled items, each once.
        let mut seen: Vec<i32> = (0..2)
            .flat_map(|it| src.batch(it).unwrap()["label"].i32().unwrap().to_vec())
            .step_by(4)
            .collect();
        seen.sort_unstable();
        let mut want: Vec<i32> = split
            .labeled
            .iter()
            .map(|n| n[4..].parse().unwrap())
            .collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        // Unlabeled images never come from the labeled share.
        for it in 0..10 {
            let u = src.batch(it).unwrap();
            for v in u["u_image"].f32().unwrap().chunks(12) {
                assert!(!split.labeled.contains(&format!("item{}", v[0])));
            }
        }
    }

    #[test]
    fn loader_threads_and_prefetch_are_bounded() {
        type E = serde::de::value::Error;
        let many = Batching {
            workers: MAX_WORKERS + 1,
            ..Batching::default()
        };
        let e = many.build::<E>().expect_err("refused");
        assert!(e.to_string().contains("`workers`"), "{e}");
        let deep = Batching {
            prefetch: MAX_PREFETCH + 1,
            ..Batching::default()
        };
        assert!(deep.build::<E>().is_err());
        let ok = Batching {
            workers: MAX_WORKERS,
            prefetch: MAX_PREFETCH,
            ..Batching::default()
        };
        assert!(ok.build::<E>().is_ok());
    }

    #[test]
    fn impossible_splits_and_scans_report_clearly() {
        let all = Batching {
            unlabeled_batch: 2,
            ..Batching::default()
        };
        let e = SemiSource::new(
            Toy {
                n: 8,
                no_label_from: 8,
            },
            all,
            0,
        )
        .err()
        .unwrap();
        assert!(e.0.contains("leaves no unlabeled images"), "{e}");
        let e = SemiSource::new(
            Toy {
                n: 8,
                no_label_from: 0,
            },
            Batching::default(),
            0,
        )
        .err()
        .unwrap();
        assert!(e.0.contains("no training item has a label"), "{e}");
        let mut src = toy_source(8, 8, Batching::default());
        let mut calls = 0;
        let r = src.scan(&mut |_, _| calls += 1).unwrap();
        assert_eq!(r.items, 11);
        assert_eq!(r.problems, vec!["item5: broken".to_owned()]);
        assert!(calls >= 2);
    }
}
