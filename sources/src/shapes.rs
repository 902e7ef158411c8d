//! `shapes`: a small procedural segmentation set generated in memory — discs and squares of random
//! colour on a noisy background, 3 classes (0 background, 1 disc, 2 square). Colours are drawn
//! independently of the class, so a network must use shape. Every image is a pure function of
//! (seed, index): no files, no download, identical on every machine. It is the embedded data of
//! the demo and of the engine's tests; the richer `synthetic` set of the data issue replaces it
//! as the graphs' default.
//!
//! Batch fields: `image` f32[B, 3, S, S] in [0, 1], `label` i32[B, S, S].
//!
//! Not here: splits and unlabeled batches (`synthetic` has them), augmentation, files.

use flowseg_engine::data::{Batch, DataError, DataSource, Dataset, EvalItem};
use flowseg_engine::kernels::philox::Philox;
use flowseg_engine::{Tensor, TensorSpec};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Class names, by label.
pub const CLASSES: [&str; 3] = ["background", "disc", "square"];

/// The source.
pub struct Shapes;

/// Params of `data: { source: shapes, ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Images per batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Image side in pixels.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Held-out images for evaluation (drawn from indices 2⁴⁰ on, so they never meet a
    /// training image).
    #[serde(default = "default_eval_images")]
    pub eval_images: usize,
}

fn default_eval_images() -> usize {
    64
}

/// First index of the held-out images.
pub const EVAL_OFFSET: u64 = 1 << 40;

fn default_batch() -> usize {
    8
}
fn default_size() -> usize {
    32
}

impl DataSource for Shapes {
    const NAME: &'static str = "shapes";
    const SUMMARY: &'static str = "procedural discs and squares (3 classes), generated in memory";
    type Params = Params;
    fn open(p: &Params, seed: u64) -> Result<Box<dyn Dataset>, DataError> {
        if p.batch == 0 || p.size < 4 {
            return Err(DataError(format!(
                "batch must be at least 1 and size at least 4 (got batch {}, size {})",
                p.batch, p.size
            )));
        }
        Ok(Box::new(Opened { p: p.clone(), seed }))
    }
}

struct Opened {
    p: Params,
    seed: u64,
}

impl Dataset for Opened {
    fn specs(&self) -> BTreeMap<String, TensorSpec> {
        let (b, s) = (self.p.batch, self.p.size);
        BTreeMap::from([
            ("image".to_owned(), TensorSpec::f32(&[b, 3, s, s])),
            ("label".to_owned(), TensorSpec::i32(&[b, s, s])),
        ])
    }

    fn classes(&self) -> Vec<String> {
        CLASSES.iter().map(|c| (*c).to_owned()).collect()
    }

    fn eval_len(&self) -> usize {
        self.p.eval_images
    }

    fn eval_item(&mut self, index: usize) -> Result<EvalItem, DataError> {
        if index >= self.eval_len() {
            return Err(DataError(format!(
                "evaluation image {index} of {}",
                self.eval_len()
            )));
        }
        let s = self.p.size;
        let (img, lab) = shapes_sample(self.seed, EVAL_OFFSET + index as u64, s);
        let err = || DataError("internal: image length mismatch".into());
        Ok(EvalItem {
            name: format!("shapes-{index:05}"),
            image: Tensor::from_f32(&[3, s, s], img).ok_or_else(err)?,
            label: Tensor::from_i32(&[s, s], lab).ok_or_else(err)?,
        })
    }

    fn batch(&mut self, iteration: u64) -> Result<Batch, DataError> {
        self.make(iteration * self.p.batch as u64)
    }
}

impl Opened {
    /// The batch of images `first ..`.
    fn make(&self, first: u64) -> Result<Batch, DataError> {
        let (b, s) = (self.p.batch, self.p.size);
        let (images, labels) = shapes_batch(self.seed, first, b, s);
        let err = || DataError("internal: batch length mismatch".into());
        Ok(BTreeMap::from([
            (
                "image".to_owned(),
                Tensor::from_f32(&[b, 3, s, s], images).ok_or_else(err)?,
            ),
            (
                "label".to_owned(),
                Tensor::from_i32(&[b, s, s], labels).ok_or_else(err)?,
            ),
        ]))
    }
}

/// Images `first .. first + n` of the set: (images [n, 3, S, S], labels [n, S, S]).
pub fn shapes_batch(seed: u64, first: u64, n: usize, s: usize) -> (Vec<f32>, Vec<i32>) {
    let (mut x, mut y) = (
        Vec::with_capacity(n * 3 * s * s),
        Vec::with_capacity(n * s * s),
    );
    for i in 0..n as u64 {
        let (img, lab) = shapes_sample(seed, first + i, s);
        x.extend_from_slice(&img);
        y.extend_from_slice(&lab);
    }
    (x, y)
}

/// Image `index` of the set: (image [3, S, S] in [0, 1], labels [S, S]).
pub fn shapes_sample(seed: u64, index: u64, s: usize) -> (Vec<f32>, Vec<i32>) {
    let g = Philox::new(seed, index);
    let mut ctr = 0u64;
    let mut u = || {
        ctr += 1;
        g.uniform_at(ctr)
    };
    let base = [u(), u(), u()];
    let mut img = vec![0f32; 3 * s * s];
    let mut lab = vec![0i32; s * s];
    for c in 0..3 {
        for p in 0..s * s {
            img[c * s * s + p] = 0.5 * base[c] + 0.25 * u();
        }
    }
    let objects = 1 + (u() * 3.0) as usize;
    for _ in 0..objects {
        let class = 1 + (u() * 2.0) as i32;
        let r = s as f32 * (0.1 + 0.12 * u());
        let (cy, cx) = (u() * s as f32, u() * s as f32);
        let colour = [u(), u(), u()];
        for y in 0..s {
            for x in 0..s {
                let (dy, dx) = (y as f32 + 0.5 - cy, x as f32 + 0.5 - cx);
                let inside = if class == 1 {
                    dy * dy + dx * dx <= r * r
                } else {
                    dy.abs() <= r && dx.abs() <= r
                };
                if inside {
                    lab[y * s + x] = class;
                    for c in 0..3 {
                        img[c * s * s + y * s + x] = colour[c];
                    }
                }
            }
        }
    }
    (img, lab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_pure_functions_of_seed_and_index() {
        assert_eq!(shapes_sample(1, 5, 16), shapes_sample(1, 5, 16));
        assert_ne!(shapes_sample(1, 5, 16).0, shapes_sample(1, 6, 16).0);
        assert_ne!(shapes_sample(2, 5, 16).0, shapes_sample(1, 5, 16).0);
        let (img, lab) = shapes_sample(1, 5, 16);
        assert_eq!((img.len(), lab.len()), (3 * 16 * 16, 16 * 16));
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(lab.iter().all(|l| (0..3).contains(l)));
        // Every image has at least one object pixel somewhere over a few draws.
        assert!((0..8).all(|i| shapes_sample(3, i, 32).1.iter().any(|&l| l > 0)));
    }

    #[test]
    fn batches_follow_the_iteration_and_match_the_specs() {
        let mut src = Shapes::open(
            &Params {
                batch: 3,
                size: 8,
                eval_images: 7,
            },
            7,
        )
        .unwrap();
        let specs = src.specs();
        let b1 = src.batch(1).unwrap();
        for (k, t) in &b1 {
            assert_eq!(t.spec(), &specs[k]);
        }
        // Iteration 1 holds images 3, 4, 5.
        let (img4, _) = shapes_sample(7, 4, 8);
        assert_eq!(&b1["image"].f32().unwrap()[3 * 64..6 * 64], &img4[..]);
        assert!(Shapes::open(
            &Params {
                batch: 0,
                size: 8,
                eval_images: 0
            },
            0
        )
        .is_err());
        // 7 held-out images, starting at index 2^40.
        assert_eq!(src.eval_len(), 7);
        let e3 = src.eval_item(3).unwrap();
        let (img, lab) = shapes_sample(7, EVAL_OFFSET + 3, 8);
        assert_eq!(e3.image.f32().unwrap(), &img[..]);
        assert_eq!(e3.label.i32().unwrap(), &lab[..]);
        assert!(src.eval_item(7).is_err());
    }
}
