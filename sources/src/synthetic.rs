//! `synthetic`: the procedural segmentation set generated in memory, the embedded default data of
//! the graphs. Objects of up to eight classes that differ in geometry — disc, ring, triangle,
//! square, cross, star, crescent, L-shape — with colours and textures drawn independently of the
//! class, on gradient or textured backgrounds with distractors (lines, elongated blobs, thin
//! arcs) labelled background, overlapping one another, under pixel noise. Colour never tells the
//! class, so a network has to learn shape. Every image is a pure function of (dataset `seed`,
//! part, index): no files, no download, identical on every machine.
//!
//! Difficulty knobs (all in the `data:` mapping, next to the batching keys of `loader.rs`). The
//! defaults are the benchmark regime of docs/RESULTS.md, where labels are the bottleneck: the
//! `unet` (width 16, AdamW 2e-3, 1500 iterations of batch 8 at 64×64) reaches 87 mIoU with all
//! 10,000 labels and 47 with 78 of them (`labeled: 1/128`), and FixMatch recovers half of that
//! gap from the unlabeled rest. One to three small objects on plain gradient backgrounds: the
//! task is which shape, and objects of up to a quarter of the image fit the U-Net's receptive
//! field (at radii up to 0.35 all labels gave 75–81 in that budget). The earlier, harder
//! defaults (objects [2, 5], scale [0.12, 0.3], clutter 0.25, texture 0.3, contrast 0.25, noise
//! 0.03, 2000 images) left even all labels at 50 mIoU with the U-Net (36.7 with deeplab_lite):
//! they remain a `--set` away.
//! * `classes` (2..=9, default 6): more classes, finer distinctions (crescent vs ring, L vs square).
//! * `objects: [min, max]` (default [1, 3]): objects per image; more means more occlusion.
//! * `scale: [min, max]` (default [0.12, 0.25]): object outer radius as a share of the image side;
//!   smaller objects are harder (below ~3 px a star is a blob: use a larger `min` at `size: 32`).
//! * `clutter` (0..=1, default 0): about `12·clutter` distractors per image (0.5× to 1.5×),
//!   a quarter of them drawn over the objects (occluders, labelled background).
//! * `texture` (0..=1, default 0): chance that the background and each object get a texture
//!   (stripes, checker, gradient; cloudy value noise for backgrounds) instead of a flat colour or
//!   plain gradient.
//! * `contrast` (0..=0.5, default 0.3): an object's base colour differs from the pixel under its
//!   centre by at least this much in some channel (0: objects may vanish into the background).
//! * `noise` (0..=1, default 0.02): std of the pixel noise (triangular: the sum of two 16-bit
//!   uniforms, several times cheaper than Box–Muller and close enough to Gaussian for image noise).
//!
//! Randomness (Philox, `key = seed`): training item `i` uses stream `tag("SYNT") | i`, held-out
//! item `j` stream `tag("SYNE") | j`. In a stream, the scene draws elements 0..14, object `k`
//! elements `64 + 32k ..` (k < 16), distractor `m` elements `1024 + 32m ..` (m < 32), the cloud
//! grid elements `4096 ..`, and the noise of image value `e` (planar [3, S, S] order) comes from
//! word `u32_at(2^20 + e)`. Fixed slots keep a scene stable when a knob changes: a different
//! `noise` leaves the labels untouched, a different `clutter` keeps every object's class and place.
//! The training flip is the loader's geometry: element 0 of the sample's stream.
//!
//! Not here: splits, batching and threads (`loader.rs`, `split.rs`); photometric augmentation
//! (graph ops).

use super::loader::{Part, Sample, SampleSet, SemiSource, WithBatching};
use super::split::tag;
use flowseg_engine::data::{DataError, DataSource, Dataset, EvalItem};
use flowseg_engine::kernels::philox::{sincos_2pi_portable, Philox};
use flowseg_engine::Tensor;
use serde::Deserialize;

/// Class names, by label; a set with `classes: n` uses the first `n`.
pub const CLASS_NAMES: [&str; 9] = [
    "background",
    "disc",
    "ring",
    "triangle",
    "square",
    "cross",
    "star",
    "crescent",
    "l-shape",
];

const TRAIN_STREAM: u64 = tag(b"SYNT");
const EVAL_STREAM: u64 = tag(b"SYNE");
const OBJECT_BASE: u64 = 64;
const DISTRACTOR_BASE: u64 = 1024;
const SLOT: u64 = 32;
const MAX_OBJECTS: usize = 16;
const MAX_DISTRACTORS: usize = 32;
const GRID_BASE: u64 = 4096;
const NOISE_BASE: u64 = 1 << 20;
/// Share of distractors drawn above the objects.
const OCCLUDER_SHARE: f32 = 0.25;

/// The source.
pub struct Synthetic;

/// The dataset's own params of `data: { source: synthetic, ... }` (see the module doc for what
/// each knob does to the difficulty).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticParams {
    /// Classes including background (2..=9).
    #[serde(default = "default_classes")]
    pub classes: usize,
    /// Image side in pixels (16..=1024).
    #[serde(default = "default_size")]
    pub size: usize,
    /// Training images.
    #[serde(default = "default_images")]
    pub images: usize,
    /// Held-out images.
    #[serde(default = "default_eval_images")]
    pub eval_images: usize,
    /// Identity of the dataset (separate from the training seed).
    #[serde(default)]
    pub seed: u64,
    /// Objects per image, [min, max] (1 ≤ min ≤ max ≤ 16).
    #[serde(default = "default_objects")]
    pub objects: [usize; 2],
    /// Object outer radius as a share of the image side, [min, max] (0 < min ≤ max ≤ 0.5).
    #[serde(default = "default_scale")]
    pub scale: [f32; 2],
    /// Distractor density (0..=1).
    #[serde(default = "default_clutter")]
    pub clutter: f32,
    /// Chance of a textured fill for the background and for each object (0..=1).
    #[serde(default = "default_texture")]
    pub texture: f32,
    /// Least colour difference between an object and the pixel under its centre (0..=0.5).
    #[serde(default = "default_contrast")]
    pub contrast: f32,
    /// Pixel noise std (0..=1).
    #[serde(default = "default_noise")]
    pub noise: f32,
}

fn default_classes() -> usize {
    6
}
fn default_size() -> usize {
    64
}
fn default_images() -> usize {
    10_000
}
fn default_eval_images() -> usize {
    500
}
fn default_objects() -> [usize; 2] {
    [1, 3]
}
fn default_scale() -> [f32; 2] {
    [0.12, 0.25]
}
fn default_clutter() -> f32 {
    0.0
}
fn default_texture() -> f32 {
    0.0
}
fn default_contrast() -> f32 {
    0.3
}
fn default_noise() -> f32 {
    0.02
}

impl Default for SyntheticParams {
    fn default() -> Self {
        SyntheticParams {
            classes: default_classes(),
            size: default_size(),
            images: default_images(),
            eval_images: default_eval_images(),
            seed: 0,
            objects: default_objects(),
            scale: default_scale(),
            clutter: default_clutter(),
            texture: default_texture(),
            contrast: default_contrast(),
            noise: default_noise(),
        }
    }
}

impl DataSource for Synthetic {
    const NAME: &'static str = "synthetic";
    const SUMMARY: &'static str =
        "procedural shapes that differ in geometry on textured, cluttered backgrounds (in memory)";
    type Params = WithBatching<SyntheticParams>;
    fn open(p: &Self::Params, seed: u64) -> Result<Box<dyn Dataset>, DataError> {
        let set = SyntheticSet::new(p.params.clone())?;
        Ok(Box::new(SemiSource::new(set, p.batching.clone(), seed)?))
    }
}

/// The generated dataset: checked params, items made on demand.
#[derive(Debug, Clone)]
pub struct SyntheticSet {
    p: SyntheticParams,
}

impl SyntheticSet {
    /// Checks the params.
    pub fn new(p: SyntheticParams) -> Result<Self, DataError> {
        let bad = |what: String| Err(DataError(format!("synthetic: {what}")));
        let unit = |x: f32, hi: f32| (0.0..=hi).contains(&x);
        let max_items = u32::MAX as usize;
        if !(2..=CLASS_NAMES.len()).contains(&p.classes) {
            return bad(format!("`classes` must be 2..=9 (got {})", p.classes));
        }
        if !(16..=1024).contains(&p.size) {
            return bad(format!("`size` must be 16..=1024 (got {})", p.size));
        }
        if p.images == 0 || p.images > max_items || p.eval_images > max_items {
            return bad(format!(
                "`images` must be 1..2^32 and `eval_images` below 2^32 (got {} and {})",
                p.images, p.eval_images
            ));
        }
        let [omin, omax] = p.objects;
        if omin == 0 || omin > omax || omax > MAX_OBJECTS {
            return bad(format!(
                "`objects` must be [min, max] with 1 <= min <= max <= {MAX_OBJECTS} (got {:?})",
                p.objects
            ));
        }
        let [smin, smax] = p.scale;
        if !(smin > 0.0 && smin <= smax && smax <= 0.5) {
            return bad(format!(
                "`scale` must be [min, max] with 0 < min <= max <= 0.5 (got {:?})",
                p.scale
            ));
        }
        for (key, v, hi) in [
            ("clutter", p.clutter, 1.0),
            ("texture", p.texture, 1.0),
            ("contrast", p.contrast, 0.5),
            ("noise", p.noise, 1.0),
        ] {
            if !unit(v, hi) {
                return bad(format!("`{key}` must be in [0, {hi}] (got {v})"));
            }
        }
        Ok(SyntheticSet { p })
    }

    /// The params.
    pub fn params(&self) -> &SyntheticParams {
        &self.p
    }

    /// Item `i` of `part`, unflipped: (image f32[3, S, S] in [0, 1], label i32[S, S]).
    pub fn item(&self, part: Part, i: usize) -> (Vec<f32>, Vec<i32>) {
        let stream = match part {
            Part::Train => TRAIN_STREAM,
            Part::Eval => EVAL_STREAM,
        } | (i as u64 & 0xffff_ffff);
        let g = Philox::new(self.p.seed, stream);
        let (mut img, lab) = render(&self.scene(&g), self.p.size, self.p.contrast);
        add_noise(&mut img, &g, self.p.noise);
        (img, lab)
    }

    fn in_range(&self, part: Part, i: usize) -> Result<(), DataError> {
        let n = self.len(part);
        if i >= n {
            return Err(DataError(format!(
                "synthetic: {part:?} item {i} of {n} does not exist"
            )));
        }
        Ok(())
    }

    /// The scene of one item: every number from the item's stream `g` (slots in the module doc).
    fn scene(&self, g: &Philox) -> Scene {
        let p = &self.p;
        let s = p.size as f32;
        let u = |k: u64| g.uniform_at(k);
        let c0 = [u(2), u(3), u(4)];
        let amp = 0.3 + 0.7 * u(8);
        let c1 = [0, 1, 2].map(|c| c0[c] + (u(5 + c as u64) - c0[c]) * amp);
        let (gy, gx) = sincos_2pi_portable(u(9));
        let background = if u(0) < p.texture {
            let period = s * (0.06 + 0.2 * u(10));
            match (u(1) * 3.0) as usize {
                0 => Fill::Stripes {
                    c0,
                    c1,
                    gx: gx / period,
                    gy: gy / period,
                    phase: u(11),
                },
                1 => Fill::Checker {
                    c0,
                    c1,
                    gx: gx / period,
                    gy: gy / period,
                    phase: u(11),
                },
                _ => {
                    let cells = 2 + (u(11) * 6.0).min(5.0) as usize;
                    let nodes = (0..(cells + 1) * (cells + 1))
                        .map(|n| {
                            let k = GRID_BASE + 3 * n as u64;
                            [0, 1, 2].map(|c| c0[c] + (c1[c] - c0[c]) * u(k + c as u64))
                        })
                        .collect();
                    Fill::Clouds {
                        nodes,
                        cells,
                        cell: s / cells as f32,
                    }
                }
            }
        } else {
            let len = s * (0.5 + u(10));
            Fill::Gradient {
                c0,
                c1,
                ox: s / 2.0,
                oy: s / 2.0,
                gx: gx / len,
                gy: gy / len,
            }
        };

        let [omin, omax] = p.objects;
        let n_objects = (omin + (u(12) * (omax - omin + 1) as f32) as usize).min(omax);
        let objects = (0..n_objects)
            .map(|k| self.object(g, OBJECT_BASE + SLOT * k as u64))
            .collect();

        let n_marks = ((p.clutter * 12.0 * (0.5 + u(13))).round() as usize).min(MAX_DISTRACTORS);
        let (mut below, mut above) = (Vec::new(), Vec::new());
        for m in 0..n_marks {
            let b = DISTRACTOR_BASE + SLOT * m as u64;
            let mark = Mark::draw(|k| u(b + k), s);
            if u(b + 9) < OCCLUDER_SHARE {
                above.push(mark);
            } else {
                below.push(mark);
            }
        }
        Scene {
            background,
            below,
            objects,
            above,
        }
    }

    /// The object in slot `b`.
    fn object(&self, g: &Philox, b: u64) -> Object {
        let p = &self.p;
        let s = p.size as f32;
        let u = |k: u64| g.uniform_at(b + k);
        let n_classes = p.classes - 1;
        let class = 1 + ((u(0) * n_classes as f32) as usize).min(n_classes - 1);
        let radius = s * (p.scale[0] + (p.scale[1] - p.scale[0]) * u(3));
        let (sin, cos) = sincos_2pi_portable(u(4));
        let c0 = [u(5), u(6), u(7)];
        let fill = if u(8) < p.texture {
            let c1 = [0, 1, 2].map(|c| (c0[c] + (u(10 + c as u64) - 0.5) * 0.8).clamp(0.0, 1.0));
            let (gy, gx) = sincos_2pi_portable(u(13));
            let period = (radius * (0.3 + 0.5 * u(14))).max(2.0);
            match (u(9) * 3.0) as usize {
                0 => Fill::Gradient {
                    c0,
                    c1,
                    ox: 0.0,
                    oy: 0.0,
                    gx: gx / (2.0 * radius),
                    gy: gy / (2.0 * radius),
                },
                1 => Fill::Stripes {
                    c0,
                    c1,
                    gx: gx / period,
                    gy: gy / period,
                    phase: u(15),
                },
                _ => Fill::Checker {
                    c0,
                    c1,
                    gx: gx / period,
                    gy: gy / period,
                    phase: u(15),
                },
            }
        } else {
            Fill::Flat(c0)
        };
        let (cx, cy) = (s * (0.1 + 0.8 * u(1)), s * (0.1 + 0.8 * u(2)));
        let mut o = Object {
            shape: Shape::new(class, u(16)),
            cx,
            cy,
            radius,
            cos,
            sin,
            fill,
        };
        if let Fill::Gradient { ox, oy, .. } = &mut o.fill {
            (*ox, *oy) = (cx, cy);
        }
        o
    }
}

impl SampleSet for SyntheticSet {
    fn shape(&self) -> (usize, usize) {
        (self.p.size, self.p.size)
    }
    fn classes(&self) -> Vec<String> {
        CLASS_NAMES[..self.p.classes]
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    }
    fn len(&self, part: Part) -> usize {
        match part {
            Part::Train => self.p.images,
            Part::Eval => self.p.eval_images,
        }
    }
    fn name(&self, i: usize) -> String {
        format!("synthetic-train-{i:06}")
    }
    fn sample(&self, i: usize, rng: &Philox, with_label: bool) -> Result<Sample, DataError> {
        self.in_range(Part::Train, i)?;
        let s = self.p.size;
        let (mut image, mut label) = self.item(Part::Train, i);
        if rng.uniform_at(0) < 0.5 {
            mirror_rows(&mut image, s);
            mirror_rows(&mut label, s);
        }
        Ok(Sample {
            image,
            label: with_label.then_some(label),
            valid: vec![1.0; s * s],
        })
    }
    fn eval_item(&self, j: usize) -> Result<EvalItem, DataError> {
        self.in_range(Part::Eval, j)?;
        let s = self.p.size;
        let (img, lab) = self.item(Part::Eval, j);
        let err = || DataError("synthetic: internal: image length mismatch".into());
        Ok(EvalItem {
            name: format!("synthetic-{j:05}"),
            image: Tensor::from_f32(&[3, s, s], img).ok_or_else(err)?,
            label: Tensor::from_i32(&[s, s], lab).ok_or_else(err)?,
        })
    }
    fn check(&self, part: Part, i: usize) -> Result<(), DataError> {
        self.in_range(part, i)?;
        let (img, lab) = self.item(part, i);
        let classes = self.p.classes as i32;
        if let Some(l) = lab.iter().find(|&&l| !(0..classes).contains(&l)) {
            return Err(DataError(format!(
                "synthetic: {part:?} item {i}: label {l} outside 0..{classes}"
            )));
        }
        if img.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(DataError(format!(
                "synthetic: {part:?} item {i}: a pixel value outside [0, 1]"
            )));
        }
        Ok(())
    }
}

/// Reverses every row of `S` values (a horizontal flip of planar images and labels).
fn mirror_rows<T>(v: &mut [T], s: usize) {
    for row in v.chunks_mut(s) {
        row.reverse();
    }
}

/// How a region is coloured, as a function of the pixel centre (x, y) in pixels.
#[derive(Debug, Clone, PartialEq)]
enum Fill {
    Flat([f32; 3]),
    /// `t = 0.5 + (p - o)·g`, clamped to [0, 1], from `c0` to `c1`.
    Gradient {
        c0: [f32; 3],
        c1: [f32; 3],
        ox: f32,
        oy: f32,
        gx: f32,
        gy: f32,
    },
    /// `c1` where `fract(p·g + phase) >= 0.5` (g: direction / period).
    Stripes {
        c0: [f32; 3],
        c1: [f32; 3],
        gx: f32,
        gy: f32,
        phase: f32,
    },
    /// Squares along g and its perpendicular, alternating `c0` and `c1`.
    Checker {
        c0: [f32; 3],
        c1: [f32; 3],
        gx: f32,
        gy: f32,
        phase: f32,
    },
    /// Bilinear value noise on a `cells`² grid of node colours (row-major, `cells + 1` a side).
    Clouds {
        nodes: Vec<[f32; 3]>,
        cells: usize,
        cell: f32,
    },
}

impl Fill {
    #[inline]
    fn at(&self, x: f32, y: f32) -> [f32; 3] {
        let pick = |c0: &[f32; 3], c1: &[f32; 3], second: bool| if second { *c1 } else { *c0 };
        match self {
            Fill::Flat(c) => *c,
            Fill::Gradient {
                c0,
                c1,
                ox,
                oy,
                gx,
                gy,
            } => {
                let t = (0.5 + (x - ox) * gx + (y - oy) * gy).clamp(0.0, 1.0);
                [0, 1, 2].map(|c| c0[c] + (c1[c] - c0[c]) * t)
            }
            Fill::Stripes {
                c0,
                c1,
                gx,
                gy,
                phase,
            } => {
                let t = x * gx + y * gy + phase;
                pick(c0, c1, t - t.floor() >= 0.5)
            }
            Fill::Checker {
                c0,
                c1,
                gx,
                gy,
                phase,
            } => {
                let a = (x * gx + y * gy + phase).floor();
                let b = (y * gx - x * gy + phase).floor();
                pick(c0, c1, (a + b).rem_euclid(2.0) >= 1.0)
            }
            Fill::Clouds { nodes, cells, cell } => {
                let n = *cells;
                let (fx, fy) = (x / cell, y / cell);
                let (ix, iy) = (
                    (fx.floor().max(0.0) as usize).min(n - 1),
                    (fy.floor().max(0.0) as usize).min(n - 1),
                );
                let (tx, ty) = (
                    (fx - ix as f32).clamp(0.0, 1.0),
                    (fy - iy as f32).clamp(0.0, 1.0),
                );
                let k = iy * (n + 1) + ix;
                let (a, b, c, d) = (nodes[k], nodes[k + 1], nodes[k + n + 1], nodes[k + n + 2]);
                [0, 1, 2].map(|ch| {
                    let top = a[ch] + (b[ch] - a[ch]) * tx;
                    let bottom = c[ch] + (d[ch] - c[ch]) * tx;
                    top + (bottom - top) * ty
                })
            }
        }
    }

    /// Moves channel `ch` of every colour by `d` (kept in [0, 1]).
    fn shift(&mut self, ch: usize, d: f32) {
        let move_ = |c: &mut [f32; 3]| c[ch] = (c[ch] + d).clamp(0.0, 1.0);
        match self {
            Fill::Flat(c) => move_(c),
            Fill::Gradient { c0, c1, .. }
            | Fill::Stripes { c0, c1, .. }
            | Fill::Checker { c0, c1, .. } => {
                move_(c0);
                move_(c1);
            }
            Fill::Clouds { nodes, .. } => nodes.iter_mut().for_each(move_),
        }
    }

    /// The colour the contrast rule compares.
    fn base(&self) -> [f32; 3] {
        match self {
            Fill::Flat(c) => *c,
            Fill::Gradient { c0, .. } | Fill::Stripes { c0, .. } | Fill::Checker { c0, .. } => *c0,
            Fill::Clouds { nodes, .. } => nodes.first().copied().unwrap_or([0.5; 3]),
        }
    }
}

/// An object's outline in its own frame: outer radius 1, centred on the origin. Every outline
/// is mirror-symmetric up to rotation, so the training flip never changes a class.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Disc,
    /// Squared radius of the hole (the hole shows what lies below: background label).
    Ring {
        hole2: f32,
    },
    /// Equilateral, circumradius 1.
    Triangle,
    /// Half side 0.75.
    Square,
    /// Arms of half-width `arm`, reaching 1.
    Cross {
        arm: f32,
    },
    /// Five points, inner radius 0.42 (10 vertices).
    Star {
        outline: [[f32; 2]; 10],
    },
    /// The unit disc minus a disc of squared radius `bite2` centred at (`shift`, 0).
    Crescent {
        shift: f32,
        bite2: f32,
    },
    /// The square of half side 0.75 minus the quadrant u, v > -0.2: two arms 0.55 wide.
    Ell,
}

const SQRT3_2: f32 = 0.866_025_4;

impl Shape {
    /// The outline of `class` (1..=8), its proportions varied by `a` in (0, 1).
    fn new(class: usize, a: f32) -> Shape {
        match class {
            1 => Shape::Disc,
            2 => {
                let r = 0.45 + 0.2 * a;
                Shape::Ring { hole2: r * r }
            }
            3 => Shape::Triangle,
            4 => Shape::Square,
            5 => Shape::Cross {
                arm: 0.26 + 0.1 * a,
            },
            6 => {
                let mut outline = [[0.0; 2]; 10];
                for (k, v) in outline.iter_mut().enumerate() {
                    let (s, c) = sincos_2pi_portable(0.25 + k as f32 / 10.0);
                    let r = if k % 2 == 0 { 1.0 } else { 0.42 };
                    *v = [r * c, r * s];
                }
                Shape::Star { outline }
            }
            7 => {
                let bite = 0.8 + 0.1 * a;
                Shape::Crescent {
                    shift: 0.4 + 0.2 * a,
                    bite2: bite * bite,
                }
            }
            _ => Shape::Ell,
        }
    }

    fn class(&self) -> i32 {
        match self {
            Shape::Disc => 1,
            Shape::Ring { .. } => 2,
            Shape::Triangle => 3,
            Shape::Square => 4,
            Shape::Cross { .. } => 5,
            Shape::Star { .. } => 6,
            Shape::Crescent { .. } => 7,
            Shape::Ell => 8,
        }
    }

    #[inline]
    fn contains(&self, u: f32, v: f32) -> bool {
        let d2 = u * u + v * v;
        match self {
            Shape::Disc => d2 <= 1.0,
            Shape::Ring { hole2 } => d2 <= 1.0 && d2 >= *hole2,
            // Edge normals at -90°, 30°, 150°; inradius 0.5.
            Shape::Triangle => {
                -v <= 0.5 && SQRT3_2 * u + 0.5 * v <= 0.5 && -SQRT3_2 * u + 0.5 * v <= 0.5
            }
            Shape::Square => u.abs().max(v.abs()) <= 0.75,
            Shape::Cross { arm } => {
                let (au, av) = (u.abs(), v.abs());
                (au <= 1.0 && av <= *arm) || (av <= 1.0 && au <= *arm)
            }
            Shape::Star { outline } => d2 <= 1.0 && in_polygon(u, v, outline),
            Shape::Crescent { shift, bite2 } => {
                let du = u - shift;
                d2 <= 1.0 && du * du + v * v > *bite2
            }
            Shape::Ell => u.abs().max(v.abs()) <= 0.75 && (u <= -0.2 || v <= -0.2),
        }
    }
}

/// Even-odd crossing test.
#[inline]
fn in_polygon(u: f32, v: f32, pts: &[[f32; 2]]) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let ([xi, yi], [xj, yj]) = (pts[i], pts[j]);
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// A class object placed in the image: pixel (x, y) maps to the shape's frame by
/// `(u, v) = R(-θ)·(x - cx, y - cy) / radius`.
#[derive(Debug, Clone, PartialEq)]
struct Object {
    shape: Shape,
    cx: f32,
    cy: f32,
    radius: f32,
    cos: f32,
    sin: f32,
    fill: Fill,
}

/// A distractor: a non-class mark labelled background.
#[derive(Debug, Clone, PartialEq)]
struct Mark {
    kind: MarkKind,
    colour: [f32; 3],
}

#[derive(Debug, Clone, PartialEq)]
enum MarkKind {
    /// Segment with half-width `hw`.
    Line {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        hw: f32,
    },
    /// Ellipse with semi-axes `a` (along (cos, sin)) and `b`, aspect 2.5..4.5: never disc-like.
    Blob {
        cx: f32,
        cy: f32,
        a: f32,
        b: f32,
        cos: f32,
        sin: f32,
    },
    /// A thin annulus sector spanning 60°..162° from direction d0 to d1.
    Arc {
        cx: f32,
        cy: f32,
        r_in2: f32,
        r_out: f32,
        d0: [f32; 2],
        d1: [f32; 2],
    },
}

impl Mark {
    /// A distractor from its slot's uniforms `u(k)` in an image of side `s`.
    fn draw(u: impl Fn(u64) -> f32, s: f32) -> Mark {
        let (x, y) = (s * u(1), s * u(2));
        let len = s * (0.1 + 0.3 * u(3));
        let (sin, cos) = sincos_2pi_portable(u(4));
        let hw = (s * (0.006 + 0.014 * u(5))).max(0.6);
        let colour = [u(6), u(7), u(8)];
        let kind = match (u(0) * 3.0) as usize {
            0 => MarkKind::Line {
                x0: x - 0.5 * len * cos,
                y0: y - 0.5 * len * sin,
                x1: x + 0.5 * len * cos,
                y1: y + 0.5 * len * sin,
                hw,
            },
            1 => {
                let a = 0.5 * len;
                MarkKind::Blob {
                    cx: x,
                    cy: y,
                    a,
                    b: (a / (2.5 + 2.0 * u(10))).max(1.0),
                    cos,
                    sin,
                }
            }
            _ => {
                let r_out = 0.5 * len;
                let r_in = (r_out - 2.0 * hw).max(0.0);
                let (s1, c1) = sincos_2pi_portable(u(4) + 0.17 + 0.28 * u(10));
                MarkKind::Arc {
                    cx: x,
                    cy: y,
                    r_in2: r_in * r_in,
                    r_out,
                    d0: [cos, sin],
                    d1: [c1, s1],
                }
            }
        };
        Mark { kind, colour }
    }

    /// (x0, y0, x1, y1) enclosing the mark.
    fn bounds(&self) -> [f32; 4] {
        match self.kind {
            MarkKind::Line { x0, y0, x1, y1, hw } => [
                x0.min(x1) - hw,
                y0.min(y1) - hw,
                x0.max(x1) + hw,
                y0.max(y1) + hw,
            ],
            MarkKind::Blob { cx, cy, a, .. } => [cx - a, cy - a, cx + a, cy + a],
            MarkKind::Arc { cx, cy, r_out, .. } => [cx - r_out, cy - r_out, cx + r_out, cy + r_out],
        }
    }

    #[inline]
    fn contains(&self, x: f32, y: f32) -> bool {
        match self.kind {
            MarkKind::Line { x0, y0, x1, y1, hw } => {
                let (dx, dy, px, py) = (x1 - x0, y1 - y0, x - x0, y - y0);
                let t = ((px * dx + py * dy) / (dx * dx + dy * dy).max(1e-6)).clamp(0.0, 1.0);
                let (ex, ey) = (px - t * dx, py - t * dy);
                ex * ex + ey * ey <= hw * hw
            }
            MarkKind::Blob {
                cx,
                cy,
                a,
                b,
                cos,
                sin,
            } => {
                let (dx, dy) = (x - cx, y - cy);
                let (p, q) = ((cos * dx + sin * dy) / a, (cos * dy - sin * dx) / b);
                p * p + q * q <= 1.0
            }
            MarkKind::Arc {
                cx,
                cy,
                r_in2,
                r_out,
                d0,
                d1,
            } => {
                let (dx, dy) = (x - cx, y - cy);
                let d2 = dx * dx + dy * dy;
                // Between the rays: counter-clockwise of d0 and clockwise of d1 (span < 180°).
                d2 <= r_out * r_out
                    && d2 >= r_in2
                    && d0[0] * dy - d0[1] * dx >= 0.0
                    && dx * d1[1] - dy * d1[0] >= 0.0
            }
        }
    }
}

/// Everything drawn in one image, bottom to top.
#[derive(Debug, Clone, PartialEq)]
struct Scene {
    background: Fill,
    below: Vec<Mark>,
    objects: Vec<Object>,
    above: Vec<Mark>,
}

/// Sets every pixel of the box whose centre passes `inside` to `colour` and `label`: image and
/// label use the one test, so they are pixel-aligned and labels carry no anti-aliasing.
fn paint(
    img: &mut [f32],
    lab: &mut [i32],
    s: usize,
    bounds: [f32; 4],
    label: i32,
    inside: impl Fn(f32, f32) -> bool,
    colour: impl Fn(f32, f32) -> [f32; 3],
) {
    // Float-to-usize casts saturate, so boxes partly or wholly outside the image clip cleanly.
    let (xa, ya) = (bounds[0].floor() as usize, bounds[1].floor() as usize);
    let xb = (bounds[2].ceil() as usize).saturating_add(1).min(s);
    let yb = (bounds[3].ceil() as usize).saturating_add(1).min(s);
    let plane = s * s;
    for y in ya..yb {
        let py = y as f32 + 0.5;
        for x in xa..xb {
            let px = x as f32 + 0.5;
            if inside(px, py) {
                let k = y * s + x;
                let c = colour(px, py);
                img[k] = c[0];
                img[plane + k] = c[1];
                img[2 * plane + k] = c[2];
                lab[k] = label;
            }
        }
    }
}

/// Draws `scene` at side `s` without noise: (image f32[3, S, S], label i32[S, S]). Later items
/// cover earlier ones, and a pixel's label is that of the topmost thing covering it.
fn render(scene: &Scene, s: usize, contrast: f32) -> (Vec<f32>, Vec<i32>) {
    let mut img = vec![0f32; 3 * s * s];
    let mut lab = vec![0i32; s * s];
    let full = [0.0, 0.0, s as f32, s as f32];
    paint(
        &mut img,
        &mut lab,
        s,
        full,
        0,
        |_, _| true,
        |x, y| scene.background.at(x, y),
    );
    let draw_mark = |img: &mut [f32], lab: &mut [i32], m: &Mark| {
        paint(
            img,
            lab,
            s,
            m.bounds(),
            0,
            |x, y| m.contains(x, y),
            |_, _| m.colour,
        );
    };
    for m in &scene.below {
        draw_mark(&mut img, &mut lab, m);
    }
    for o in &scene.objects {
        let mut fill = o.fill.clone();
        let under = {
            let k = (o.cy.max(0.0) as usize).min(s - 1) * s + (o.cx.max(0.0) as usize).min(s - 1);
            [img[k], img[s * s + k], img[2 * s * s + k]]
        };
        let base = fill.base();
        let diff = [0, 1, 2].map(|c| base[c] - under[c]);
        let ch = (0..3)
            .max_by(|&a, &b| diff[a].abs().total_cmp(&diff[b].abs()))
            .unwrap_or(0);
        if diff[ch].abs() < contrast {
            let target = if under[ch] < 0.5 {
                under[ch] + contrast
            } else {
                under[ch] - contrast
            };
            fill.shift(ch, target - base[ch]);
        }
        let (e, inv) = (1.1 * o.radius, 1.0 / o.radius);
        let bounds = [o.cx - e, o.cy - e, o.cx + e, o.cy + e];
        let inside = |x: f32, y: f32| {
            let (dx, dy) = (x - o.cx, y - o.cy);
            let u = (o.cos * dx + o.sin * dy) * inv;
            let v = (o.cos * dy - o.sin * dx) * inv;
            o.shape.contains(u, v)
        };
        paint(
            &mut img,
            &mut lab,
            s,
            bounds,
            o.shape.class(),
            inside,
            |x, y| fill.at(x, y),
        );
    }
    for m in &scene.above {
        draw_mark(&mut img, &mut lab, m);
    }
    (img, lab)
}

/// Adds `std · triangular(u32_at(2^20 + e))` to image value `e` and clamps to [0, 1] (the
/// scene's values are in [0, 1] already): one Philox block gives four values.
fn add_noise(img: &mut [f32], g: &Philox, std: f32) {
    if std == 0.0 {
        return;
    }
    for (b, chunk) in img.chunks_mut(4).enumerate() {
        let w = g.block(NOISE_BASE / 4 + b as u64);
        for (v, w) in chunk.iter_mut().zip(w) {
            *v = (*v + std * triangular(w)).clamp(0.0, 1.0);
        }
    }
}

/// Unit-variance triangular noise on (-√6, √6) from the two 16-bit halves of `w` (every step but
/// the last multiply is exact in f32).
#[inline]
fn triangular(w: u32) -> f32 {
    let sum = (w & 0xffff) as f32 + (w >> 16) as f32 + 1.0;
    (sum * (1.0 / 65536.0) - 1.0) * 2.449_489_7
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowseg_engine::spec::{from_node, parse_yaml};

    fn set(yaml: &str) -> SyntheticSet {
        let p = from_node::<SyntheticParams>(&parse_yaml(yaml).unwrap()).unwrap();
        SyntheticSet::new(p).unwrap()
    }

    #[test]
    fn items_are_pure_functions_of_seed_part_and_index() {
        let a = set("{ size: 32 }");
        let b = set("{ size: 32, seed: 1 }");
        assert_eq!(a.item(Part::Train, 5), a.item(Part::Train, 5));
        assert_eq!(
            a.item(Part::Train, 5),
            set("{ size: 32 }").item(Part::Train, 5)
        );
        assert_ne!(a.item(Part::Train, 5).0, a.item(Part::Train, 6).0);
        assert_ne!(a.item(Part::Train, 5).0, b.item(Part::Train, 5).0);
        for j in 0..5 {
            let (t, e) = (a.item(Part::Train, j), a.item(Part::Eval, j));
            assert_ne!(t.0, e.0);
            assert_ne!(t.1, e.1);
        }
    }

    #[test]
    fn values_and_labels_are_in_range_and_every_class_appears() {
        for (yaml, classes) in [("{ size: 32, classes: 9 }", 9), ("{ classes: 3 }", 3)] {
            let d = set(yaml);
            let s = d.params().size;
            let mut seen = vec![0usize; classes];
            for i in 0..40 {
                let (img, lab) = d.item(Part::Train, i);
                assert_eq!((img.len(), lab.len()), (3 * s * s, s * s));
                assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
                for &l in &lab {
                    seen[l as usize] += 1;
                }
                d.check(Part::Train, i).unwrap();
            }
            assert!(seen.iter().all(|&n| n > 0), "{yaml}: {seen:?}");
        }
    }

    #[test]
    fn noise_follows_the_documented_counters_and_leaves_labels_alone() {
        let quiet = set("{ size: 16, noise: 0 }");
        let noisy = set("{ size: 16, noise: 0.1 }");
        let (a, la) = quiet.item(Part::Train, 3);
        let (b, lb) = noisy.item(Part::Train, 3);
        assert_eq!(la, lb);
        let g = Philox::new(0, TRAIN_STREAM | 3);
        let mut checked = 0;
        for e in 0..a.len() {
            let want = a[e] + 0.1 * triangular(g.u32_at(NOISE_BASE + e as u64));
            if (0.0..=1.0).contains(&want) {
                assert_eq!(b[e], want, "value {e}");
                checked += 1;
            }
        }
        assert!(checked > a.len() / 2);
        // The extremes of the halves are the ends of (-√6, √6); over many words, unit variance.
        assert!((triangular(0) + 2.449_452).abs() < 1e-5);
        assert!((triangular(u32::MAX) - 2.449_452).abs() < 1e-5);
        let z: Vec<f32> = (0..4000).map(|e| triangular(g.u32_at(e))).collect();
        let mean = z.iter().sum::<f32>() / 4000.0;
        let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4000.0;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.08,
            "{mean} {var}"
        );
    }

    #[test]
    fn outlines_hold_their_hand_checked_points() {
        let ring = Shape::new(2, 0.5); // hole radius 0.55
        assert!(!ring.contains(0.0, 0.0) && ring.contains(0.8, 0.0) && !ring.contains(1.01, 0.0));
        let tri = Shape::new(3, 0.5); // apex at (0, 1), base at v = -0.5
        assert!(tri.contains(0.0, 0.95) && !tri.contains(0.3, 0.95) && !tri.contains(0.0, -0.55));
        let square = Shape::new(4, 0.5);
        assert!(square.contains(0.74, -0.74) && !square.contains(0.76, 0.0));
        let cross = Shape::new(5, 0.5); // arm 0.31
        assert!(cross.contains(0.95, 0.0) && cross.contains(0.0, -0.95));
        assert!(!cross.contains(0.5, 0.5));
        let star = Shape::new(6, 0.5); // points at 90° + k·72°
        assert!(star.contains(0.0, 0.9) && star.contains(0.0, 0.0));
        assert!(!star.contains(0.0, -0.9) && !star.contains(0.6, 0.6));
        let crescent = Shape::new(7, 0.5); // bite centre 0.5, radius 0.85
        assert!(crescent.contains(-0.9, 0.0) && !crescent.contains(0.5, 0.0));
        assert!(!crescent.contains(0.9, 0.0) && crescent.contains(0.1, 0.95));
        let l = Shape::new(8, 0.5);
        assert!(l.contains(-0.5, 0.7) && l.contains(0.7, -0.5) && !l.contains(0.4, 0.4));
        for c in 1..=8 {
            assert_eq!(Shape::new(c, 0.3).class(), c as i32);
        }
    }

    fn square_at(cx: f32, cy: f32, colour: [f32; 3]) -> Object {
        Object {
            shape: Shape::Square,
            cx,
            cy,
            radius: 4.0 / 0.75, // half side 4 px
            cos: 1.0,
            sin: 0.0,
            fill: Fill::Flat(colour),
        }
    }

    #[test]
    fn the_topmost_object_wins_and_rings_show_what_lies_below() {
        let bg = [0.1, 0.2, 0.3];
        let mut ring = square_at(14.0, 15.0, [0.0, 1.0, 0.0]);
        (ring.shape, ring.radius) = (Shape::Ring { hole2: 0.25 }, 4.0);
        let scene = Scene {
            background: Fill::Flat(bg),
            below: vec![],
            // A square over x, y in [4, 12), an L over x in [8, 16), y in [4, 12), a ring at (14, 15).
            objects: vec![
                square_at(8.0, 8.0, [1.0, 0.0, 0.0]),
                {
                    let mut o = square_at(12.0, 8.0, [0.0, 0.0, 1.0]);
                    o.shape = Shape::Ell;
                    o.radius = 4.0 / 0.75;
                    o
                },
                ring,
            ],
            above: vec![],
        };
        let s = 20;
        let (img, lab) = render(&scene, s, 0.0);
        let px = |x: usize, y: usize| {
            let k = y * s + x;
            (lab[k], [img[k], img[s * s + k], img[2 * s * s + k]])
        };
        assert_eq!(px(5, 5), (4, [1.0, 0.0, 0.0])); // square only
        assert_eq!(px(9, 6), (8, [0.0, 0.0, 1.0])); // L arm over the square
        assert_eq!(px(11, 9), (4, [1.0, 0.0, 0.0])); // L's missing quadrant shows the square
        assert_eq!(px(14, 15), (0, bg)); // ring hole over background
        assert_eq!(px(17, 15), (2, [0.0, 1.0, 0.0]));
        assert_eq!(px(1, 18), (0, bg));
        // Pixel-aligned: each label's pixels carry exactly its object's colour.
        for y in 0..s {
            for x in 0..s {
                let (l, c) = px(x, y);
                let want = match l {
                    0 => bg,
                    2 => [0.0, 1.0, 0.0],
                    4 => [1.0, 0.0, 0.0],
                    8 => [0.0, 0.0, 1.0],
                    _ => panic!("label {l}"),
                };
                assert_eq!(c, want, "({x}, {y})");
            }
        }
        // A mark above covers objects and labels them background.
        let line = Mark {
            kind: MarkKind::Line {
                x0: 0.0,
                y0: 6.5,
                x1: 20.0,
                y1: 6.5,
                hw: 0.6,
            },
            colour: [1.0; 3],
        };
        let (img2, lab2) = render(
            &Scene {
                above: vec![line],
                ..scene.clone()
            },
            s,
            0.0,
        );
        assert_eq!((lab2[6 * s + 5], img2[6 * s + 5]), (0, 1.0));
        assert_eq!(lab2[5 * s + 5], 4);
        // The contrast rule lifts an object that matches the background.
        let hidden = Scene {
            objects: vec![square_at(8.0, 8.0, bg)],
            ..scene
        };
        let (img3, _) = render(&hidden, s, 0.2);
        let k = 8 * s + 8;
        let moved = [
            img3[k] - bg[0],
            img3[s * s + k] - bg[1],
            img3[2 * s * s + k] - bg[2],
        ];
        assert!(moved.iter().any(|d| d.abs() >= 0.2 - 1e-6), "{moved:?}");
    }

    #[test]
    fn a_flipped_sample_is_the_mirror_of_the_item() {
        let d = set("{ size: 16 }");
        let streams: Vec<Philox> = (0..8).map(|k| Philox::new(5, k)).collect();
        let flip = streams.iter().find(|g| g.uniform_at(0) < 0.5).unwrap();
        let keep = streams.iter().find(|g| g.uniform_at(0) >= 0.5).unwrap();
        let (img, lab) = d.item(Part::Train, 7);
        let kept = d.sample(7, keep, true).unwrap();
        assert_eq!((&kept.image, kept.label.as_ref().unwrap()), (&img, &lab));
        let f = d.sample(7, flip, true).unwrap();
        let fl = f.label.unwrap();
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(fl[y * 16 + x], lab[y * 16 + 15 - x]);
                for c in 0..3 {
                    let k = c * 256 + y * 16;
                    assert_eq!(f.image[k + x], img[k + 15 - x]);
                }
            }
        }
        assert!(f.valid.iter().all(|&v| v == 1.0));
        assert!(d.sample(7, flip, false).unwrap().label.is_none());
        assert!(d.sample(d.params().images, flip, true).is_err());
    }

    #[test]
    fn bad_params_are_named() {
        for (yaml, key) in [
            ("{ classes: 10 }", "`classes`"),
            ("{ classes: 1 }", "`classes`"),
            ("{ size: 8 }", "`size`"),
            ("{ images: 0 }", "`images`"),
            ("{ objects: [3, 2] }", "`objects`"),
            ("{ objects: [0, 2] }", "`objects`"),
            ("{ objects: [1, 17] }", "`objects`"),
            ("{ scale: [0.3, 0.1] }", "`scale`"),
            ("{ scale: [0, 0.1] }", "`scale`"),
            ("{ clutter: 1.5 }", "`clutter`"),
            ("{ noise: -0.1 }", "`noise`"),
            ("{ contrast: 0.6 }", "`contrast`"),
        ] {
            let p = from_node::<SyntheticParams>(&parse_yaml(yaml).unwrap()).unwrap();
            let e = SyntheticSet::new(p).unwrap_err();
            assert!(e.0.contains(key), "{yaml}: {e}");
        }
        let e = from_node::<SyntheticParams>(&parse_yaml("{ clases: 3 }").unwrap()).unwrap_err();
        assert!(
            e.message.contains("unknown field `clases`"),
            "{}",
            e.message
        );
        assert_eq!(
            from_node::<SyntheticParams>(&parse_yaml("{}").unwrap()).unwrap(),
            SyntheticParams::default()
        );
        // Integers are accepted where a number is asked for.
        set("{ clutter: 1, noise: 0 }");
    }

    #[test]
    fn a_semi_supervised_batch_has_the_documented_fields() {
        let yaml = "{ size: 32, images: 64, eval_images: 3, classes: 4, labeled: 1/16, \
                    batch: 2, unlabeled_batch: 4, workers: 0 }";
        let p = from_node::<WithBatching<SyntheticParams>>(&parse_yaml(yaml).unwrap()).unwrap();
        let mut src = Synthetic::open(&p, 9).unwrap();
        let b = src.batch(0).unwrap();
        let keys: Vec<&str> = b.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["image", "label", "u_image", "u_valid"]);
        assert_eq!(b["image"].spec().shape, [2, 3, 32, 32]);
        assert_eq!(b["label"].spec().shape, [2, 32, 32]);
        assert_eq!(b["u_image"].spec().shape, [4, 3, 32, 32]);
        assert_eq!(b["u_valid"].spec().shape, [4, 32, 32]);
        assert!(b["u_valid"].f32().unwrap().iter().all(|&v| v == 1.0));
        assert!(b["label"].i32().unwrap().iter().all(|l| (0..4).contains(l)));
        let split = src.split().unwrap();
        assert_eq!((split.labeled.len(), split.unlabeled.len()), (4, 60));
        assert!(split.labeled[0].starts_with("synthetic-train-"));
        assert_eq!(src.classes().len(), 4);
        assert_eq!(src.eval_len(), 3);
        let e = src.eval_item(2).unwrap();
        assert_eq!(e.name, "synthetic-00002");
        assert_eq!(e.image.spec().shape, [3, 32, 32]);
        assert_eq!(e.label.spec().shape, [32, 32]);
        assert!(src.eval_item(3).is_err());
        let r = src.scan(&mut |_, _| {}).unwrap();
        assert_eq!((r.items, r.problems.len()), (67, 0));
    }

    /// Not a check: prints the generation time (`cargo test --release -p flowseg-ops --lib
    /// synthetic -- --ignored --nocapture`).
    #[test]
    #[ignore]
    #[allow(clippy::print_stderr)]
    fn generation_time() {
        for yaml in [
            "{ size: 32 }",
            "{}",
            "{ size: 128 }",
            "{ noise: 0 }",
            "{ noise: 0, clutter: 0, texture: 0 }",
            "{ noise: 0, clutter: 0, texture: 0, objects: [1, 1] }",
        ] {
            let d = set(yaml);
            let n = 500;
            let t = std::time::Instant::now();
            let mut sum = 0i64;
            for i in 0..n {
                sum += d
                    .item(Part::Train, i)
                    .1
                    .iter()
                    .map(|&l| l as i64)
                    .sum::<i64>();
            }
            let per = t.elapsed().as_secs_f64() / n as f64;
            eprintln!("{yaml}: {:.1} us per image ({sum})", per * 1e6);
        }
    }
}
