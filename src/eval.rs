//! Evaluation: every chosen model (by default the student and every EMA teacher) in eval mode
//! (running batch-norm statistics) on the data source's held-out images, in the graph's `eval:`
//! mode — whole image, centre crop, or sliding window with softmax probabilities averaged where
//! windows overlap — optionally with the horizontally flipped image averaged in. The per-pixel
//! argmax is compared with the label in a confusion matrix: per-class IoU, mIoU, pixel accuracy
//! (label 255 ignored). `flowseg predict` uses the same [`Predictor`] on image files.
//!
//! [`Rings`] splits the object pixels' errors by distance to their object's boundary (`flowseg
//! eval` prints it): whether a model misses whole objects or thins their borders.
//!
//! Forward passes are batched: crops of consecutive images that share a shape go through one
//! eval graph, built once per (model, batch, height, width) and cached.
//!
//! Not here: multi-scale evaluation, the CLI commands (run.rs, predict.rs).

use flowseg_engine::data::Dataset;
use flowseg_engine::exec::{run_plan_in, ExecOrder, Workspace};
use flowseg_engine::fusion;
use flowseg_engine::graph::{Env, Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::kernels::metrics::{confusion_add, scores, Scores};
use flowseg_engine::kernels::softmax::softmax_fwd;
use flowseg_engine::kernels::Nchw;
use flowseg_engine::plan::{self, Plan, PlanOptions};
use flowseg_engine::spec::{
    EvalMode, EvalSpec, GraphError, GraphSpec, Loc, Node, NodeSpec, Sp, TrainSpec, Value,
};
use flowseg_engine::{Registry, Tensor, TensorSpec};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// FS0119: evaluation cannot be set up (a model's class count differs from the data's, a
/// sliding stride larger than its window, a model the eval graph cannot build).
pub const EVAL_SETUP: &str = "FS0119";

/// Whether model `name`'s architecture (its source's, for an EMA copy) takes one `image` and
/// nothing else. Unknown architectures count as image models: their error is reported elsewhere.
fn takes_image_only(spec: &GraphSpec, registry: &Registry, name: &str) -> bool {
    let find = |n: &str| {
        spec.models
            .iter()
            .find(|(k, _)| k.value == n)
            .map(|(_, m)| m)
    };
    let Some(m) = find(name) else {
        return true;
    };
    let arch = m.arch.as_ref().or_else(|| {
        m.ema_of
            .as_ref()
            .and_then(|s| find(s))
            .and_then(|s| s.arch.as_ref())
    });
    let image = flowseg_engine::model::IMAGE_INPUTS.iter().map(|p| p.name);
    arch.and_then(|a| registry.model(a))
        .is_none_or(|def| def.inputs().iter().map(|p| p.name).eq(image))
}

/// Label value that evaluation skips.
pub const IGNORE: i32 = 255;

fn text(v: &str) -> Node {
    Node::detached(Value::Str(v.to_owned()))
}

/// The YAML spelling of a mode.
pub fn mode_name(m: EvalMode) -> &'static str {
    match m {
        EvalMode::Whole => "whole",
        EvalMode::CenterCrop => "center_crop",
        EvalMode::Sliding => "sliding",
    }
}

/// Settings resolved from the graph's `eval:` section and the training batch shape.
#[derive(Debug, Clone, Copy)]
struct Mode {
    mode: EvalMode,
    crop: (usize, usize),
    stride: (usize, usize),
    flip: bool,
    batch: usize,
}

/// Turns images into per-pixel class predictions with one model, in the graph's eval mode.
pub struct Predictor<'r> {
    spec: GraphSpec,
    registry: &'r Registry,
    model: String,
    mode: Mode,
    graphs: HashMap<(usize, usize, usize), EvalGraph>,
}

/// One eval-mode forward graph for a batch shape, planned once, with the memory its runs reuse.
struct EvalGraph {
    graph: Graph,
    plan: Plan,
    workspace: Workspace,
    logits: ValueRef,
    classes: usize,
}

/// One forward input: a crop of an image, where it goes back, and whether it is mirrored.
struct Crop {
    owner: usize,
    y: usize,
    x: usize,
    flipped: bool,
    pixels: Vec<f32>,
}

/// Probabilities being accumulated for one image.
struct Acc<T> {
    payload: T,
    h: usize,
    w: usize,
    /// Padded extent the crops cover.
    ph: usize,
    pw: usize,
    probs: Vec<f32>,
    remaining: usize,
}

impl<'r> Predictor<'r> {
    /// A predictor for `model` of `spec`, with crops defaulting to `train_hw` and batches of
    /// `train_batch`.
    pub fn new(
        spec: &GraphSpec,
        registry: &'r Registry,
        model: &str,
        train_hw: (usize, usize),
        train_batch: usize,
    ) -> Result<Self, String> {
        let e: &EvalSpec = &spec.eval;
        let crop = e.crop.map_or(train_hw, |s| s.hw());
        if crop.0 == 0 || crop.1 == 0 {
            return Err("eval.crop must be at least 1×1".into());
        }
        let stride = e
            .stride
            .map_or(((crop.0 * 2).div_ceil(3), (crop.1 * 2).div_ceil(3)), |s| {
                s.hw()
            });
        if stride.0 == 0 || stride.1 == 0 {
            return Err("eval.stride must be at least 1×1".into());
        }
        if e.mode == EvalMode::Sliding && (stride.0 > crop.0 || stride.1 > crop.1) {
            return Err(format!(
                "eval.stride {}×{} is larger than the window {}×{}: pixels between windows would \
                 never be scored",
                stride.0, stride.1, crop.0, crop.1
            ));
        }
        let batch = e.batch.unwrap_or(train_batch).max(1);
        let mut p = Predictor {
            spec: spec.clone(),
            registry,
            model: model.to_owned(),
            mode: Mode {
                mode: e.mode,
                crop,
                stride,
                flip: e.flip,
                batch,
            },
            graphs: HashMap::new(),
        };
        // Build the common graph now, so a model that cannot be evaluated fails before training.
        p.graph(batch, crop.0, crop.1)
            .map_err(|e| format!("evaluating `{model}`: {e}"))?;
        Ok(p)
    }

    /// The eval-mode forward graph for `n` images of h×w (built on first use).
    fn graph(&mut self, n: usize, h: usize, w: usize) -> Result<&mut EvalGraph, String> {
        if !self.graphs.contains_key(&(n, h, w)) {
            let params = Node::detached(Value::Map(vec![
                (text("model"), text(&self.model)),
                (text("mode"), text("eval")),
            ]));
            let node = |name: &str, op: &str, port: &str, from: &str, params| NodeSpec {
                name: Sp::detached(name.to_owned()),
                op: Sp::detached(op.to_owned()),
                inputs: BTreeMap::from([(port.to_owned(), Sp::detached(from.to_owned()))]),
                params,
                after: Vec::new(),
                stream: None,
            };
            // forward(model, eval) → detach: the detach node names the logits in the graph.
            let nodes = vec![
                node("eval", "forward", "image", "batch.image", Some(params)),
                node("logits", "detach", "x", "eval.logits", None),
            ];
            let eval_spec = GraphSpec {
                name: Sp::detached(format!("{}-eval-{}", self.spec.name.value, self.model)),
                data: None,
                models: self.spec.models.clone(),
                optim: Vec::new(),
                train: TrainSpec {
                    iterations: 0,
                    eval_every: 0,
                    checkpoint_every: 0,
                    seed: self.spec.train.seed,
                },
                eval: EvalSpec::default(),
                nodes,
                metrics: Vec::new(),
            };
            let env = Env {
                batch: BTreeMap::from([("image".to_owned(), TensorSpec::f32(&[n, 3, h, w]))]),
                state: BTreeMap::new(),
                hidden: Default::default(),
            };
            let graph = ir::build(&eval_spec, self.registry, &env).map_err(|errs| {
                errs.iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            let k = graph
                .nodes
                .iter()
                .position(|n| n.name.value == "logits")
                .ok_or("internal: the eval graph lost its logits")?;
            // The training step's fusion pass (batch norm + ReLU in one pass), same bits.
            let fused = fusion::fuse(graph, &[ValueRef::Node { node: k, port: 0 }]);
            let out = fused
                .remap(&ValueRef::Node { node: k, port: 0 })
                .ok_or("internal: fusion removed the eval graph's logits")?;
            let graph = fused.graph;
            let classes = graph
                .spec_of(&out)
                .and_then(TensorSpec::as_nchw)
                .map(|s| s.c)
                .ok_or("the model's logits are not f32[N, K, H, W]")?;
            // One stream, only the logits kept: the rest of the memory is reused within a run,
            // and the workspace keeps it across runs (no allocation per evaluated batch).
            let opts = PlanOptions {
                streams: 1,
                keep: vec![out.clone()],
            };
            let plan = plan::plan(&graph, &opts).map_err(|errs| {
                errs.iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            self.graphs.insert(
                (n, h, w),
                EvalGraph {
                    graph,
                    plan,
                    workspace: Workspace::default(),
                    logits: out,
                    classes,
                },
            );
        }
        self.graphs
            .get_mut(&(n, h, w))
            .ok_or_else(|| "internal: eval graph cache".to_owned())
    }

    /// Predicts every image of `items` (each f32[3, H, W] with a payload) and hands each
    /// prediction i32[H, W] to `done(payload, prediction, H, W, classes)`, in input order.
    /// Pixels no crop covered (outside a centre crop) are predicted -1.
    pub fn predict<T>(
        &mut self,
        state: &BTreeMap<String, Tensor>,
        items: impl IntoIterator<Item = Result<(Tensor, T), String>>,
        mut done: impl FnMut(T, &[i32], usize, usize, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut accs: VecDeque<(usize, Acc<T>)> = VecDeque::new();
        let mut queue: Vec<Crop> = Vec::new();
        let mut queue_hw = (0, 0);
        for (idx, item) in items.into_iter().enumerate() {
            let (image, payload) = item?;
            let s = image.spec().shape.clone();
            let [3, h, w] = s[..] else {
                return Err(format!("an image must be f32[3, H, W], got {:?}", s));
            };
            let pixels = image.f32().ok_or("an image must be f32")?;
            let (crops, ph, pw) = self.crops(idx, pixels, h, w);
            if crops.is_empty() {
                return Err(format!("image {idx} is empty ({h}×{w})"));
            }
            accs.push_back((
                idx,
                Acc {
                    payload,
                    h,
                    w,
                    ph,
                    pw,
                    probs: Vec::new(),
                    remaining: crops.len(),
                },
            ));
            let crop_hw = self.crop_hw(h, w);
            for c in crops {
                if queue_hw != crop_hw || queue.len() == self.mode.batch {
                    self.flush(state, &mut queue, queue_hw, &mut accs, &mut done)?;
                    queue_hw = crop_hw;
                }
                queue.push(c);
            }
        }
        self.flush(state, &mut queue, queue_hw, &mut accs, &mut done)?;
        if accs.is_empty() {
            Ok(())
        } else {
            Err("internal: images left unpredicted".into())
        }
    }

    /// The forward input extent for an h×w image.
    fn crop_hw(&self, h: usize, w: usize) -> (usize, usize) {
        match self.mode.mode {
            EvalMode::Whole => (h, w),
            EvalMode::CenterCrop | EvalMode::Sliding => self.mode.crop,
        }
    }

    /// The crops of one image and the padded extent they cover.
    fn crops(&self, owner: usize, img: &[f32], h: usize, w: usize) -> (Vec<Crop>, usize, usize) {
        let (ch, cw) = self.crop_hw(h, w);
        let (mut ys, mut xs) = (vec![0usize], vec![0usize]);
        let (ph, pw);
        match self.mode.mode {
            EvalMode::Whole => (ph, pw) = (h, w),
            EvalMode::CenterCrop => {
                // The centre window of the image (negative offsets mean padding around it).
                (ph, pw) = (h.max(ch), w.max(cw));
                ys[0] = (ph - ch) / 2;
                xs[0] = (pw - cw) / 2;
            }
            EvalMode::Sliding => {
                (ph, pw) = (h.max(ch), w.max(cw));
                ys = starts(ph, ch, self.mode.stride.0);
                xs = starts(pw, cw, self.mode.stride.1);
            }
        }
        let mut out = Vec::new();
        for &y in &ys {
            for &x in &xs {
                for flipped in [false, true] {
                    if flipped && !self.mode.flip {
                        continue;
                    }
                    let mut pixels = vec![0f32; 3 * ch * cw];
                    // Pixels beyond the image (padding) stay 0.
                    for c in 0..3 {
                        for yy in 0..ch.min(h.saturating_sub(y)) {
                            for xx in 0..cw.min(w.saturating_sub(x)) {
                                let xo = if flipped { cw - 1 - xx } else { xx };
                                pixels[(c * ch + yy) * cw + xo] =
                                    img[(c * h + y + yy) * w + x + xx];
                            }
                        }
                    }
                    out.push(Crop {
                        owner,
                        y,
                        x,
                        flipped,
                        pixels,
                    });
                }
            }
        }
        (out, ph, pw)
    }

    /// Runs the queued crops and finishes every image whose crops are all done.
    fn flush<T>(
        &mut self,
        state: &BTreeMap<String, Tensor>,
        queue: &mut Vec<Crop>,
        (ch, cw): (usize, usize),
        accs: &mut VecDeque<(usize, Acc<T>)>,
        done: &mut impl FnMut(T, &[i32], usize, usize, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        if queue.is_empty() {
            return Ok(());
        }
        let n = queue.len();
        let mut x = Vec::with_capacity(n * 3 * ch * cw);
        for c in queue.iter() {
            x.extend_from_slice(&c.pixels);
        }
        let batch = BTreeMap::from([(
            "image".to_owned(),
            Tensor::from_f32(&[n, 3, ch, cw], x).ok_or("internal: crop batch size")?,
        )]);
        let g = self.graph(n, ch, cw)?;
        let k = g.classes;
        let run = run_plan_in(
            &mut g.workspace,
            &g.graph,
            &g.plan,
            &batch,
            state,
            0,
            0,
            ExecOrder::Sequential,
        )
        .map_err(|e| e.to_string())?;
        let logits = run
            .get(&g.logits)
            .and_then(Tensor::f32)
            .ok_or("the model gave no f32 logits")?;
        let shape = Nchw {
            n,
            c: k,
            h: ch,
            w: cw,
        };
        let mut probs = vec![0f32; logits.len()];
        softmax_fwd(logits, shape, &mut probs).map_err(|e| e.to_string())?;
        let plane = ch * cw;
        for (i, c) in queue.drain(..).enumerate() {
            let Some((_, acc)) = accs.iter_mut().find(|(o, _)| *o == c.owner) else {
                return Err("internal: a crop lost its image".into());
            };
            if acc.probs.is_empty() {
                acc.probs = vec![0f32; k * acc.ph * acc.pw];
            }
            let p = &probs[i * k * plane..(i + 1) * k * plane];
            for kk in 0..k {
                for yy in 0..ch.min(acc.ph - c.y) {
                    for xx in 0..cw.min(acc.pw - c.x) {
                        let xi = if c.flipped { cw - 1 - xx } else { xx };
                        acc.probs[(kk * acc.ph + c.y + yy) * acc.pw + c.x + xx] +=
                            p[kk * plane + yy * cw + xi];
                    }
                }
            }
            acc.remaining -= 1;
        }
        // Finish images in order as soon as they are complete.
        while accs.front().is_some_and(|(_, a)| a.remaining == 0) {
            let Some((_, acc)) = accs.pop_front() else {
                break;
            };
            let pred = argmax_region(&acc, k);
            done(acc.payload, &pred, acc.h, acc.w, k)?;
        }
        Ok(())
    }
}

/// Window starts covering `0..len` with windows of `win` every `stride`, the last one flush
/// with the end (so every pixel is covered and no window leaves the padded image).
fn starts(len: usize, win: usize, stride: usize) -> Vec<usize> {
    let mut v = vec![0];
    if len <= win {
        return v;
    }
    let last = len - win;
    let mut s = 0;
    while s + stride < last {
        s += stride;
        v.push(s);
    }
    v.push(last);
    v
}

/// Per-pixel argmax of the accumulated probabilities over the image's own h×w; -1 where no crop
/// covered the pixel (outside a centre crop), which evaluation leaves out.
fn argmax_region<T>(acc: &Acc<T>, k: usize) -> Vec<i32> {
    let (h, w, ph, pw) = (acc.h, acc.w, acc.ph, acc.pw);
    let mut pred = vec![0i32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut best = (f32::NEG_INFINITY, -1i32);
            let mut total = 0f32;
            for kk in 0..k {
                let v = acc.probs[(kk * ph + y) * pw + x];
                total += v;
                if v > best.0 {
                    best = (v, kk as i32);
                }
            }
            // No crop covered this pixel (centre crop): no prediction.
            pred[y * w + x] = if total > 0.0 { best.1 } else { -1 };
        }
    }
    pred
}

/// Every evaluated model's predictor.
pub struct Evaluator<'r> {
    models: Vec<Predictor<'r>>,
}

impl<'r> Evaluator<'r> {
    /// `None` when the source has no evaluation split.
    pub fn new(
        spec: &GraphSpec,
        registry: &'r Registry,
        source: &dyn Dataset,
    ) -> Result<Option<Self>, GraphError> {
        if source.eval_len() == 0 {
            return Ok(None);
        }
        // Where to point an error about model `name`: its `classes:` when the file has one,
        // else its name under `models:`.
        let at_model = |name: &str, key: &str| {
            spec.models
                .iter()
                .find(|(n, _)| n.value == name)
                .map_or(Loc::NONE, |(n, m)| {
                    m.params
                        .as_ref()
                        .and_then(|p| p.get(key))
                        .map(|v| v.loc)
                        .filter(Loc::is_located)
                        .unwrap_or(n.loc)
                })
        };
        let fail = |message: String, loc: Loc| GraphError::new(EVAL_SETUP, message, loc);
        let image = source
            .specs()
            .get("image")
            .and_then(TensorSpec::as_nchw)
            .ok_or_else(|| {
                fail(
                    "the data source has no f32[N, 3, H, W] `image` field".to_owned(),
                    Loc::NONE,
                )
            })?;
        let chosen: Vec<String> = match &spec.eval.models {
            Some(list) => list.iter().map(|m| m.value.clone()).collect(),
            // By default every segmentation model: those that take an image alone (a
            // multi-input model — GCT's flaw detector — has nothing to be fed here; naming one
            // in `eval.models` is FS0123 when the graph is built).
            None => spec
                .models
                .iter()
                .filter(|(_, m)| m.arch.is_some() || m.ema_of.is_some())
                .filter(|(n, _)| takes_image_only(spec, registry, &n.value))
                .map(|(n, _)| n.value.clone())
                .collect(),
        };
        let mut models = Vec::new();
        for name in chosen {
            // (`eval.models` entries naming no model are FS0112 when the file is read.)
            let mut p = Predictor::new(spec, registry, &name, (image.h, image.w), image.n)
                .map_err(|e| fail(e, at_model(&name, "")))?;
            // A head with the wrong number of classes would train (labels < K) or fail mid-run
            // (labels ≥ K): say so before the first step.
            let data_classes = source.classes().len();
            let built = p
                .graph(p.mode.batch, p.mode.crop.0, p.mode.crop.1)
                .map_err(|e| fail(e, at_model(&name, "")))?;
            let (k, peak) = (built.classes, built.plan.stats.peak_bytes as u64);
            // The evaluation forward's arena must fit too (a huge `eval.crop` or batch).
            if let Some(limit) = flowseg_engine::train::machine_memory() {
                if peak > limit {
                    return Err(GraphError::new(
                        flowseg_engine::train::TOO_BIG,
                        format!(
                            "evaluating `{name}` needs about {} a forward pass; this machine has {}",
                            flowseg_engine::train::human_bytes(peak),
                            flowseg_engine::train::human_bytes(limit)
                        ),
                        Loc::NONE,
                    )
                    .help("reduce `eval.batch` or `eval.crop`, or use `eval.mode: sliding`"));
                }
            }
            if data_classes > 0 && k != data_classes {
                return Err(fail(
                    format!(
                        "model `{name}` predicts {k} classes but the data source has \
                         {data_classes} ({})",
                        source.classes().join(", ")
                    ),
                    at_model(&name, "classes"),
                )
                .help(format!(
                    "set the architecture's `classes: {data_classes}`, or leave `classes` out \
                     to take the data's count"
                )));
            }
            models.push(p);
        }
        Ok(Some(Evaluator { models }))
    }

    /// Scores of every model on every held-out image, with the given state.
    pub fn run(
        &mut self,
        source: &mut dyn Dataset,
        state: &BTreeMap<String, Tensor>,
    ) -> Result<Vec<(String, Scores)>, String> {
        let scored = self.run_with_rings(source, state)?;
        Ok(scored.into_iter().map(|(m, s, _)| (m, s)).collect())
    }

    /// [`Evaluator::run`], with each model's errors on object pixels by distance to the
    /// boundary.
    pub fn run_with_rings(
        &mut self,
        source: &mut dyn Dataset,
        state: &BTreeMap<String, Tensor>,
    ) -> Result<Vec<(String, Scores, Rings)>, String> {
        let n = source.eval_len();
        let mut out = Vec::new();
        for p in &mut self.models {
            let mut rings = Rings::default();
            let mut confusion: Vec<u64> = Vec::new();
            let mut k = 0;
            let items = (0..n).map(|i| {
                let item = source.eval_item(i).map_err(|e| e.to_string())?;
                Ok((item.image, (item.name, item.label)))
            });
            p.predict(state, items, |(name, label), pred, h, w, classes| {
                let label = label
                    .i32()
                    .filter(|l| l.len() == h * w)
                    .ok_or_else(|| format!("held-out `{name}`: label is not i32[{h}, {w}]"))?;
                if confusion.is_empty() {
                    k = classes;
                    confusion = vec![0; k * k];
                }
                rings.add(pred, label, h, w);
                // Pixels without a prediction (outside a centre crop) are left out.
                let (pred, label): (Vec<i32>, Vec<i32>) = pred
                    .iter()
                    .zip(label)
                    .filter(|(p, _)| **p >= 0)
                    .map(|(p, l)| (*p, *l))
                    .unzip();
                confusion_add(&pred, &label, k, IGNORE, &mut confusion)
                    .map_err(|e| format!("held-out `{name}`: {e}"))
            })?;
            out.push((p.model.clone(), scores(&confusion, k), rings));
        }
        Ok(out)
    }
}

/// Object pixels (label neither 0, the background, nor ignored) by distance to their object's
/// boundary: ring `r` holds the pixels removed by the `r`-th erosion (4-neighbourhood; a pixel on
/// the image's edge counts as inside) of the object mask — ring 0 is the outermost layer of
/// every object, ring 3 everything deeper. Per ring: the pixels with a prediction, those
/// predicted background, those given another object class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rings {
    /// Object pixels per ring.
    pub pixels: [u64; RINGS],
    /// Of those, predicted background.
    pub to_background: [u64; RINGS],
    /// Of those, predicted another object class.
    pub to_other: [u64; RINGS],
}

/// Rings 0, 1, 2 and "3 or deeper".
pub const RINGS: usize = 4;

impl Rings {
    /// Adds one image: `pred` (−1: no prediction) and `label`, both `h × w` row-major.
    pub fn add(&mut self, pred: &[i32], label: &[i32], h: usize, w: usize) {
        let mut inside: Vec<bool> = label.iter().map(|&l| l != 0 && l != IGNORE).collect();
        let mut ring = vec![usize::MAX; h * w];
        for r in 0..RINGS {
            if !inside.iter().any(|&b| b) {
                break;
            }
            let last = r + 1 == RINGS;
            let kept: Vec<bool> = (0..h * w)
                .map(|i| {
                    let (y, x) = (i / w, i % w);
                    let at = |yy: usize, xx: usize| inside[yy * w + xx];
                    inside[i]
                        && (last
                            || ((y == 0 || at(y - 1, x))
                                && (y + 1 == h || at(y + 1, x))
                                && (x == 0 || at(y, x - 1))
                                && (x + 1 == w || at(y, x + 1))))
                })
                .collect();
            for i in 0..h * w {
                if inside[i] && (last || !kept[i]) {
                    ring[i] = r;
                }
            }
            inside = if last { vec![false; h * w] } else { kept };
        }
        for ((&p, &t), &r) in pred.iter().zip(label).zip(&ring) {
            if r == usize::MAX || p < 0 {
                continue;
            }
            self.pixels[r] += 1;
            if p == 0 {
                self.to_background[r] += 1;
            } else if p != t {
                self.to_other[r] += 1;
            }
        }
    }

    /// `to_background` and `to_other` as percentages of each ring's pixels (None: no pixels).
    pub fn shares(&self) -> [(Option<f64>, Option<f64>); RINGS] {
        std::array::from_fn(|r| {
            let n = self.pixels[r];
            let pct = |v: u64| (n > 0).then(|| 100.0 * v as f64 / n as f64);
            (pct(self.to_background[r]), pct(self.to_other[r]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{starts, Rings};

    /// A 4×4 square object (class 2) in a 6×6 image, a one-pixel border of background: 12
    /// pixels in ring 0, 4 in ring 1. The prediction erodes the square by one pixel on its top
    /// row (4 pixels → background) and calls one interior pixel class 3.
    #[test]
    fn rings_split_errors_by_distance_to_the_boundary() {
        let (h, w) = (6, 6);
        let mut label = vec![0; h * w];
        for y in 1..5 {
            for x in 1..5 {
                label[y * w + x] = 2;
            }
        }
        let mut pred = label.clone();
        for x in 1..5 {
            pred[w + x] = 0;
        }
        pred[2 * w + 2] = 3;
        label[0] = 255; // ignored: never an object pixel
        let mut r = Rings::default();
        r.add(&pred, &label, h, w);
        assert_eq!(r.pixels, [12, 4, 0, 0]);
        assert_eq!(r.to_background, [4, 0, 0, 0]);
        assert_eq!(r.to_other, [0, 1, 0, 0]);
        let s = r.shares();
        assert_eq!(s[0], (Some(100.0 * 4.0 / 12.0), Some(0.0)));
        assert_eq!(s[1], (Some(0.0), Some(25.0)));
        assert_eq!(s[2], (None, None));

        // The image's edge is not a boundary: in a 2-pixel-wide band along the left edge of a
        // 3×4 image, the column next to the background is ring 0 and the column on the edge
        // ring 1.
        let label = vec![1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0];
        let mut r = Rings::default();
        r.add(&label, &label, 3, 4);
        assert_eq!(r.pixels, [3, 3, 0, 0]);
        // Pixels without a prediction are left out; deep pixels collect in the last ring.
        let mut r = Rings::default();
        let label = vec![5; 81];
        let mut pred = vec![5; 81];
        pred[0] = -1;
        r.add(&pred, &label, 9, 9);
        assert_eq!(r.pixels.iter().sum::<u64>(), 80);
        assert_eq!(r.pixels, [0, 0, 0, 80]);
    }

    #[test]
    fn windows_cover_the_image_and_end_flush() {
        assert_eq!(starts(4, 4, 3), vec![0]);
        assert_eq!(starts(3, 4, 3), vec![0]);
        assert_eq!(starts(10, 4, 3), vec![0, 3, 6]);
        assert_eq!(starts(11, 4, 3), vec![0, 3, 6, 7]);
        assert_eq!(starts(12, 4, 4), vec![0, 4, 8]);
    }
}
