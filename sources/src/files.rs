//! What the file datasets (`voc`, `cityscapes`, `manifest`) share: decoding an image into
//! f32[3, H, W] and a mask into class ids with the checks that name the bad file, the training
//! geometry (random rescale, crop with padding, horizontal flip — the same for image, label and
//! valid mask), the geometry keys of a `data:` mapping ([`WithGeometry`]), and [`FileSet`], the
//! one [`SampleSet`] over lists of (image, optional mask) files that every layout fills.
//!
//! Geometry randomness: one Philox stream per sample (the loader keys it by the draw), elements
//! [`SCALE_COUNTER`], [`ROW_COUNTER`], [`COL_COUNTER`] and [`FLIP_COUNTER`], each used once.
//!
//! Not here: where a layout keeps its files (`voc.rs`, `cityscapes.rs`, `manifest.rs`), splits
//! and batching (`split.rs`, `loader.rs`), photometric augmentation (graph ops).

use super::loader::{Batching, Part, Sample, SampleSet, SemiSource, IGNORE};
use super::palette::read_index_png;
use super::shared_keys::{peel, SharedKeys};
use flowseg_engine::data::{DataError, Dataset, EvalItem};
use flowseg_engine::kernels::philox::Philox;
use flowseg_engine::kernels::resize::{resize_bilinear_fwd, resize_nearest_fwd};
use flowseg_engine::kernels::Nchw;
use flowseg_engine::Tensor;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// Decodes an image file (any format and colour type `image` reads: PNG, JPEG; grey, RGBA,
/// 16-bit are converted to 8-bit RGB) into (f32[3, H, W] in [0, 1], H, W).
pub fn load_rgb(path: &Path) -> Result<(Vec<f32>, usize, usize), DataError> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError(format!("{}: cannot read: {e}", path.display())))?;
    let undecodable =
        |e: &dyn fmt::Display| DataError(format!("{}: undecodable image: {e}", path.display()));
    let decoded = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(&e))?
        .decode()
        .map_err(|e| undecodable(&e))?;
    let rgb = decoded.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let plane = h * w;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        r[i] = f32::from(px[0]) / 255.0;
        g[i] = f32::from(px[1]) / 255.0;
        b[i] = f32::from(px[2]) / 255.0;
    }
    Ok((out, h, w))
}

/// Reads a label mask (8-bit palette or grayscale PNG of class ids) as (i32[H, W], H, W). Every
/// id must be below `classes` or be 255 (ignore).
pub fn load_mask(path: &Path, classes: usize) -> Result<(Vec<i32>, usize, usize), DataError> {
    load_mask_mapped(path, classes, None)
}

/// As [`load_mask`], with the file's ids first translated through `map` (Cityscapes labelIds →
/// trainIds); the check applies to the translated ids.
pub fn load_mask_mapped(
    path: &Path,
    classes: usize,
    map: Option<&[u8; 256]>,
) -> Result<(Vec<i32>, usize, usize), DataError> {
    let (ids, h, w) =
        read_index_png(path).map_err(|e| DataError(format!("{}: {e}", path.display())))?;
    let mut out = Vec::with_capacity(ids.len());
    for (p, &raw) in ids.iter().enumerate() {
        let id = map.map_or(raw, |m| m[usize::from(raw)]);
        if usize::from(id) >= classes && i32::from(id) != IGNORE {
            return Err(DataError(format!(
                "{}: class id {id} at (row {}, col {}) is out of range: valid ids are 0..={} \
                 and 255 (ignore)",
                path.display(),
                p / w,
                p % w,
                classes.saturating_sub(1)
            )));
        }
        out.push(i32::from(id));
    }
    Ok((out, h, w))
}

/// Output size of the training crop (`crop: 321` or `crop: [256, 512]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl<'de> Deserialize<'de> for Crop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Crop;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a crop side like `321` or `[height, width]`")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Crop, E> {
                let n = usize::try_from(n).map_err(E::custom)?;
                if n == 0 {
                    return Err(E::custom("the crop side must be at least 1"));
                }
                Ok(Crop { h: n, w: n })
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Crop, E> {
                let n =
                    u64::try_from(n).map_err(|_| E::custom("the crop side must be positive"))?;
                self.visit_u64(n)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Crop, A::Error> {
                let h: usize = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let w: usize = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                if h == 0 || w == 0 {
                    return Err(de::Error::custom(
                        "crop height and width must be at least 1",
                    ));
                }
                Ok(Crop { h, w })
            }
        }
        d.deserialize_any(V)
    }
}

/// Per-channel normalisation applied after geometry (padding stays 0 afterwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Values stay in [0, 1].
    #[default]
    None,
    /// (v − mean) / std with ImageNet's RGB mean (0.485, 0.456, 0.406) and std
    /// (0.229, 0.224, 0.225), for backbones pretrained on ImageNet.
    Imagenet,
}

impl Normalize {
    /// Per-channel (mean, std).
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Normalize::None => ([0.0; 3], [1.0; 3]),
            Normalize::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        }
    }

    /// Normalises f32[3, H, W] in place.
    pub fn apply(self, image: &mut [f32]) {
        if self == Normalize::None {
            return;
        }
        let (mean, std) = self.mean_std();
        let plane = image.len() / 3;
        for (c, ch) in image.chunks_exact_mut(plane.max(1)).take(3).enumerate() {
            for v in ch {
                *v = (*v - mean[c]) / std[c];
            }
        }
    }
}

/// The geometry keys of a file dataset: `crop` (required: it fixes the batch shape), `scale`
/// (random rescale factor range, default `[0.5, 2.0]`), `flip` (random horizontal flip, default
/// true), `normalize` (`none` default, or `imagenet`).
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Training crop size: the batch's H and W.
    pub crop: Crop,
    /// Rescale factor drawn uniformly from [min, max] per sample.
    pub scale: [f32; 2],
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
    /// Normalisation of training and held-out images.
    pub normalize: Normalize,
}

impl Geometry {
    /// `crop`, with every other key at its default.
    pub fn new(crop: Crop) -> Self {
        Geometry {
            crop,
            scale: DEFAULT_SCALE,
            flip: true,
            normalize: Normalize::None,
        }
    }
}

const DEFAULT_SCALE: [f32; 2] = [0.5, 2.0];

/// Names of the geometry keys (what [`WithGeometry`] takes out of a mapping).
pub const GEOMETRY_KEYS: &[&str] = &["crop", "scale", "flip", "normalize"];

/// No keys besides the geometry ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOtherKeys {}

impl<'de> Deserialize<'de> for Geometry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WithGeometry::<NoOtherKeys>::deserialize(d).map(|g| g.geometry)
    }
}

/// A layout's own params `P` plus the geometry keys, read from one mapping (as
/// [`super::loader::WithBatching`] does for the batching keys, which may wrap this).
#[derive(Debug, Clone)]
pub struct WithGeometry<P> {
    /// The geometry keys.
    pub geometry: Geometry,
    /// The layout's own.
    pub params: P,
}

impl<'de, P: Deserialize<'de>> Deserialize<'de> for WithGeometry<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<P>(PhantomData<P>);
        impl<'de, P: Deserialize<'de>> Visitor<'de> for V<P> {
            type Value = WithGeometry<P>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of data source params")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let (geometry, params) = peel::<GeometryKeys, P, A>(map)?;
                Ok(WithGeometry { geometry, params })
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Default)]
struct GeometryKeys {
    crop: Option<Crop>,
    scale: Option<[f32; 2]>,
    flip: Option<bool>,
    normalize: Option<Normalize>,
}

impl SharedKeys for GeometryKeys {
    const KEYS: &'static [&'static str] = GEOMETRY_KEYS;
    const WHAT: &'static str = "a geometry key";
    type Built = Geometry;
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "crop" => self.crop = Some(map.next_value()?),
            "scale" => self.scale = Some(map.next_value()?),
            "flip" => self.flip = Some(map.next_value()?),
            _ => self.normalize = Some(map.next_value()?),
        }
        Ok(())
    }
    fn build<E: de::Error>(self) -> Result<Geometry, E> {
        let crop = self.crop.ok_or_else(|| {
            E::custom(
                "missing field `crop`: the training crop, a side (`crop: 321`) or `[height, \
                 width]`; it fixes the batch shape",
            )
        })?;
        let scale = self.scale.unwrap_or(DEFAULT_SCALE);
        if !(scale[0].is_finite() && scale[1].is_finite() && 0.0 < scale[0] && scale[0] <= scale[1])
        {
            return Err(E::custom(format!(
                "`scale: [{}, {}]` must be [min, max] with 0 < min <= max",
                scale[0], scale[1]
            )));
        }
        Ok(Geometry {
            crop,
            scale,
            flip: self.flip.unwrap_or(true),
            normalize: self.normalize.unwrap_or_default(),
        })
    }
}

/// Element of a sample's stream giving the rescale factor: `uniform_at` → u in (0, 1),
/// factor = min + u·(max − min); the rescaled size is round(H·factor) × round(W·factor) (f32,
/// at least 1).
pub const SCALE_COUNTER: u64 = 0;
/// Element giving the crop's first row: `u32_at` → x, row = ⌊x·(H' − h + 1) / 2³²⌋ when the
/// rescaled height H' is at least the crop height h (else 0: the crop is padded below).
pub const ROW_COUNTER: u64 = 1;
/// Element giving the crop's first column, as [`ROW_COUNTER`] for widths (padding on the right).
pub const COL_COUNTER: u64 = 2;
/// Element deciding the horizontal flip of the whole crop (padding included):
/// `bernoulli_at(FLIP_COUNTER, 0.5)`, when `flip` is on.
pub const FLIP_COUNTER: u64 = 3;

fn scaled(n: usize, factor: f32) -> usize {
    ((n as f32 * factor).round() as usize).max(1)
}

/// (first source index, copied length) of a crop of `crop` out of `n`.
fn window(n: usize, crop: usize, word: u32) -> (usize, usize) {
    if n >= crop {
        let slack = (n - crop) as u64;
        (((u64::from(word) * (slack + 1)) >> 32) as usize, crop)
    } else {
        (0, n)
    }
}

fn internal(e: impl fmt::Display) -> DataError {
    DataError(format!("internal: {e}"))
}

/// One training sample: `image` f32[3, H, W] in [0, 1] (and `label` i32[H, W] if given) rescaled
/// by a random factor (bilinear for the image, nearest for the label), cropped at a random
/// place to `geometry.crop` — padded below and to the right where the rescaled image is smaller
/// (image 0 after normalisation, label 255, valid 0) — normalised, and flipped horizontally at
/// random. Every number comes from `rng` (see the `*_COUNTER` constants), drawn once, so image,
/// label and valid mask get exactly the same geometry.
pub fn random_scale_crop_flip(
    image: &[f32],
    label: Option<&[i32]>,
    h: usize,
    w: usize,
    geometry: &Geometry,
    rng: &Philox,
) -> Result<Sample, DataError> {
    if image.len() != 3 * h * w || label.is_some_and(|l| l.len() != h * w) {
        return Err(internal(format!(
            "a {h}×{w} sample has {} image and {:?} label values",
            image.len(),
            label.map(<[i32]>::len)
        )));
    }
    let [lo, hi] = geometry.scale;
    let factor = lo + rng.uniform_at(SCALE_COUNTER) * (hi - lo);
    let (sh, sw) = (scaled(h, factor), scaled(w, factor));
    let (image, label): (Cow<[f32]>, Option<Cow<[i32]>>) = if (sh, sw) == (h, w) {
        (Cow::Borrowed(image), label.map(Cow::Borrowed))
    } else {
        let mut x = vec![0f32; 3 * sh * sw];
        resize_bilinear_fwd(image, Nchw::new(1, 3, h, w), sh, sw, false, &mut x)
            .map_err(internal)?;
        let y = match label {
            Some(l) => {
                let mut y = vec![0i32; sh * sw];
                resize_nearest_fwd(l, Nchw::new(1, 1, h, w), sh, sw, &mut y).map_err(internal)?;
                Some(Cow::Owned(y))
            }
            None => None,
        };
        (Cow::Owned(x), y)
    };
    let Crop { h: ch, w: cw } = geometry.crop;
    let (y0, rows) = window(sh, ch, rng.u32_at(ROW_COUNTER));
    let (x0, cols) = window(sw, cw, rng.u32_at(COL_COUNTER));
    let flip = geometry.flip && rng.bernoulli_at(FLIP_COUNTER, 0.5);
    let (mean, std) = geometry.normalize.mean_std();
    let (src_plane, dst_plane) = (sh * sw, ch * cw);
    let mut out = vec![0f32; 3 * dst_plane];
    let mut valid = vec![0f32; dst_plane];
    let mut out_label = label.as_ref().map(|_| vec![IGNORE; dst_plane]);
    for r in 0..rows {
        let src = (y0 + r) * sw + x0;
        let dst = r * cw;
        for c in 0..cols {
            let d = dst + if flip { cw - 1 - c } else { c };
            valid[d] = 1.0;
            for k in 0..3 {
                out[k * dst_plane + d] = (image[k * src_plane + src + c] - mean[k]) / std[k];
            }
            if let (Some(o), Some(l)) = (out_label.as_mut(), label.as_ref()) {
                o[d] = l[src + c];
            }
        }
    }
    Ok(Sample {
        image: out,
        label: out_label,
        valid,
    })
}

/// A held-out item: the whole `image` f32[3, H, W] (in [0, 1]), normalised as training images
/// are, with its `label` i32[H, W].
pub fn whole_image_item(
    name: String,
    mut image: Vec<f32>,
    label: Vec<i32>,
    h: usize,
    w: usize,
    normalize: Normalize,
) -> Result<EvalItem, DataError> {
    normalize.apply(&mut image);
    let (ni, nl) = (image.len(), label.len());
    let bad = || {
        internal(format!(
            "{name}: {ni} image and {nl} label values for {h}×{w}"
        ))
    };
    Ok(EvalItem {
        image: Tensor::from_f32(&[3, h, w], image).ok_or_else(bad)?,
        label: Tensor::from_i32(&[h, w], label).ok_or_else(bad)?,
        name,
    })
}

/// One dataset item: an image file and its mask, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Image file.
    pub image: PathBuf,
    /// Mask file (none: an unlabeled image).
    pub mask: Option<PathBuf>,
    /// Name in split lists and reports (VOC id, Cityscapes stem, manifest path as written).
    pub name: String,
}

/// A file dataset: training and held-out item lists, the class names and the geometry. Every
/// layout builds one; it is the [`SampleSet`] the loader batches.
#[derive(Debug, Clone)]
pub struct FileSet {
    items: Vec<Item>,
    eval: Vec<Item>,
    names: Vec<String>,
    geometry: Geometry,
    label_map: Option<Box<[u8; 256]>>,
}

impl FileSet {
    /// A dataset of `items` (training) and `eval` (held out; each needs a mask) over
    /// `names.len()` classes (1 to 255: id 255 is the ignore label). Masks are read through
    /// `label_map` when given. Files are not opened here.
    pub fn new(
        items: Vec<Item>,
        eval: Vec<Item>,
        names: Vec<String>,
        geometry: Geometry,
        label_map: Option<Box<[u8; 256]>>,
    ) -> Result<Self, DataError> {
        if names.is_empty() || names.len() > 255 {
            return Err(DataError(format!(
                "a dataset needs 1 to 255 classes (255 is the ignore label), got {}",
                names.len()
            )));
        }
        if let Some(e) = eval.iter().find(|e| e.mask.is_none()) {
            return Err(DataError(format!(
                "held-out image {} has no mask; evaluation needs one for every image",
                e.image.display()
            )));
        }
        Ok(FileSet {
            items,
            eval,
            names,
            geometry,
            label_map,
        })
    }

    /// Training items.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Held-out items.
    pub fn eval_items(&self) -> &[Item] {
        &self.eval
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The loader over this dataset: split and batched as `batching` says.
    pub fn into_source(self, batching: Batching, seed: u64) -> Result<Box<dyn Dataset>, DataError> {
        Ok(Box::new(SemiSource::new(self, batching, seed)?))
    }

    fn item(&self, part: Part, i: usize) -> Result<&Item, DataError> {
        let list = match part {
            Part::Train => &self.items,
            Part::Eval => &self.eval,
        };
        list.get(i)
            .ok_or_else(|| internal(format!("{part:?} item {i} of {}", list.len())))
    }

    /// The mask of `item` (decoded image `h`×`w`), checked.
    fn label(&self, item: &Item, mask: &Path, h: usize, w: usize) -> Result<Vec<i32>, DataError> {
        let (label, mh, mw) = load_mask_mapped(mask, self.names.len(), self.label_map.as_deref())?;
        if (mh, mw) != (h, w) {
            return Err(DataError(format!(
                "{}: mask is {mh}×{mw} (H×W) but its image {} is {h}×{w}",
                mask.display(),
                item.image.display()
            )));
        }
        Ok(label)
    }
}

impl SampleSet for FileSet {
    fn shape(&self) -> (usize, usize) {
        (self.geometry.crop.h, self.geometry.crop.w)
    }

    fn normalize(&self, image: &mut [f32]) {
        self.geometry.normalize.apply(image);
    }

    fn classes(&self) -> Vec<String> {
        self.names.clone()
    }

    fn len(&self, part: Part) -> usize {
        match part {
            Part::Train => self.items.len(),
            Part::Eval => self.eval.len(),
        }
    }

    fn name(&self, i: usize) -> String {
        self.items
            .get(i)
            .map_or_else(String::new, |it| it.name.clone())
    }

    fn has_label(&self, i: usize) -> bool {
        self.items.get(i).is_some_and(|it| it.mask.is_some())
    }

    fn sample(&self, i: usize, rng: &Philox, with_label: bool) -> Result<Sample, DataError> {
        let item = self.item(Part::Train, i)?;
        let (image, h, w) = load_rgb(&item.image)?;
        let label = match (with_label, &item.mask) {
            (false, _) => None,
            (true, Some(mask)) => Some(self.label(item, mask, h, w)?),
            (true, None) => {
                return Err(internal(format!(
                    "{} has no mask but was drawn as labeled",
                    item.image.display()
                )))
            }
        };
        random_scale_crop_flip(&image, label.as_deref(), h, w, &self.geometry, rng)
    }

    fn eval_item(&self, i: usize) -> Result<EvalItem, DataError> {
        let item = self.item(Part::Eval, i)?;
        let (image, h, w) = load_rgb(&item.image)?;
        let mask = item
            .mask
            .as_deref()
            .ok_or_else(|| internal("held-out item without mask"))?;
        let label = self.label(item, mask, h, w)?;
        whole_image_item(
            item.name.clone(),
            image,
            label,
            h,
            w,
            self.geometry.normalize,
        )
    }

    fn check(&self, part: Part, i: usize) -> Result<(), DataError> {
        let item = self.item(part, i)?;
        let (_, h, w) = load_rgb(&item.image)?;
        if let Some(mask) = &item.mask {
            self.label(item, mask, h, w)?;
        }
        Ok(())
    }
}

/// `path` must be an existing file; `what` says which (and where it was listed).
pub fn require_file(path: &Path, what: &str) -> Result<(), DataError> {
    let fail = |why: String| Err(DataError(format!("{what} {} {why}", path.display())));
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => fail("is a directory, not a file".to_owned()),
        Ok(_) => fail("is not a regular file".to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail("does not exist".to_owned()),
        // A symbolic-link loop, a permission: say what the system said.
        Err(e) => fail(format!("cannot be read: {e}")),
    }
}

/// `n` class names `class0`, `class1`, ... for datasets that name none.
pub fn numbered_classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class{i}")).collect()
}

/// Temporary dataset folders and files for the layout tests.
#[cfg(test)]
pub(crate) mod testdir {
    use super::super::palette::write_index_png;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("flowseg-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parent(p: &Path) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
    }

    /// An RGB image whose pixel (r, c) is `f(r, c)`; JPEG or PNG by extension.
    pub(crate) fn write_rgb(p: &Path, h: usize, w: usize, f: impl Fn(usize, usize) -> [u8; 3]) {
        parent(p);
        let img = image::RgbImage::from_fn(w as u32, h as u32, |c, r| {
            image::Rgb(f(r as usize, c as usize))
        });
        img.save(p).unwrap();
    }

    /// A palette mask whose pixel (r, c) is `f(r, c)`.
    pub(crate) fn write_mask(p: &Path, h: usize, w: usize, f: impl Fn(usize, usize) -> u8) {
        parent(p);
        let ids: Vec<u8> = (0..h * w).map(|i| f(i / w, i % w)).collect();
        write_index_png(p, &ids, h, w).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testdir::{write_mask, write_rgb, TempDir};
    use super::*;
    use crate::palette::voc_palette;
    use flowseg_engine::spec::{from_node, parse_yaml};

    fn geometry(h: usize, w: usize, scale: [f32; 2]) -> Geometry {
        Geometry {
            scale,
            ..Geometry::new(Crop { h, w })
        }
    }

    /// Image whose pixel (r, c) holds id r·W + c in every channel (/255), and the same ids as
    /// labels.
    fn coordinate_image(h: usize, w: usize) -> (Vec<f32>, Vec<i32>) {
        let ids: Vec<i32> = (0..(h * w) as i32).collect();
        let img = (0..3)
            .flat_map(|k| ids.iter().map(move |&i| (i + k) as f32 / 255.0))
            .collect();
        (img, ids)
    }

    #[test]
    fn crop_pad_and_flip_keep_image_and_label_aligned_exactly() {
        // 12×10 into a 8×14 crop: rows are cropped, columns padded.
        let (h, w) = (12, 10);
        let (img, lab) = coordinate_image(h, w);
        let mut g = geometry(8, 14, [1.0, 1.0]);
        g.normalize = Normalize::Imagenet;
        let (mean, std) = Normalize::Imagenet.mean_std();
        let (mut flips, mut rows) = (0, std::collections::BTreeSet::new());
        for key in 0..64 {
            let s =
                random_scale_crop_flip(&img, Some(&lab), h, w, &g, &Philox::new(3, key)).unwrap();
            let l = s.label.unwrap();
            assert_eq!((s.image.len(), l.len(), s.valid.len()), (3 * 112, 112, 112));
            let mut valid = 0;
            for p in 0..112 {
                if s.valid[p] == 0.0 {
                    assert_eq!(l[p], IGNORE);
                    assert!((0..3).all(|k| s.image[k * 112 + p] == 0.0));
                    continue;
                }
                valid += 1;
                for k in 0..3 {
                    let v = s.image[k * 112 + p] * std[k] + mean[k];
                    assert!((v * 255.0 - (l[p] + k as i32) as f32).abs() < 1e-3);
                }
            }
            assert_eq!(valid, 8 * 10);
            // A window of whole consecutive rows, mirrored or not.
            let first = l.iter().find(|&&v| v != IGNORE).copied().unwrap();
            let row0 = first as usize / w;
            rows.insert(row0);
            let flipped = s.valid[0] == 0.0;
            flips += usize::from(flipped);
            for r in 0..8 {
                for c in 0..10 {
                    let d = r * 14 + if flipped { 13 - c } else { c };
                    assert_eq!(l[d], ((row0 + r) * w + c) as i32);
                }
            }
        }
        assert!((16..=48).contains(&flips), "{flips} flips in 64");
        assert_eq!(rows.len(), 5, "every crop row 0..=4 drawn: {rows:?}");
        // Without `flip`, never mirrored; without a label, the same image.
        g.flip = false;
        for key in 0..16 {
            let rng = Philox::new(3, key);
            let s = random_scale_crop_flip(&img, Some(&lab), h, w, &g, &rng).unwrap();
            assert_eq!(s.valid[0], 1.0);
            let u = random_scale_crop_flip(&img, None, h, w, &g, &rng).unwrap();
            assert_eq!((u.image, u.valid, u.label), (s.image, s.valid, None));
        }
    }

    #[test]
    fn rescaled_blocks_keep_their_colour_under_their_label() {
        // 4×4 blocks of 8×8 pixels, block k coloured with the VOC colour of class k.
        let (h, w, b) = (32, 32, 8);
        let pal = voc_palette();
        let class = |r: usize, c: usize| ((r / b) * 4 + c / b) as i32;
        let lab: Vec<i32> = (0..h * w).map(|p| class(p / w, p % w)).collect();
        let img: Vec<f32> = (0..3)
            .flat_map(|k| {
                lab.iter()
                    .map(move |&l| f32::from(pal[l as usize][k]) / 255.0)
            })
            .collect();
        let (ch, cw) = (24, 28);
        let g = geometry(ch, cw, [0.5, 2.0]);
        let (mut checked, mut sizes) = (0usize, std::collections::BTreeSet::new());
        for key in 0..40 {
            let s =
                random_scale_crop_flip(&img, Some(&lab), h, w, &g, &Philox::new(8, key)).unwrap();
            let l = s.label.unwrap();
            sizes.insert(s.valid.iter().filter(|&&v| v == 1.0).count());
            let at = |r: isize, c: isize| -> Option<i32> {
                let ok = (0..ch as isize).contains(&r) && (0..cw as isize).contains(&c);
                ok.then(|| r as usize * cw + c as usize)
                    .filter(|&p| s.valid[p] == 1.0)
                    .map(|p| l[p])
            };
            for r in 0..ch as isize {
                for c in 0..cw as isize {
                    let Some(me) = at(r, c) else { continue };
                    // Block interiors: bilinear taps of a rescale in [0.5, 2] stay within ±2.
                    let interior =
                        (-2..=2).all(|dr| (-2..=2).all(|dc| at(r + dr, c + dc) == Some(me)));
                    if !interior {
                        continue;
                    }
                    let p = r as usize * cw + c as usize;
                    for k in 0..3 {
                        let want = f32::from(pal[me as usize][k]) / 255.0;
                        assert!((s.image[k * ch * cw + p] - want).abs() < 1e-5, "key {key}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 40 * 100, "only {checked} interior pixels checked");
        assert!(sizes.len() > 5, "the scale should vary: {sizes:?}");
    }

    #[test]
    fn rescale_crop_and_flip_follow_the_documented_draws() {
        // Channels 0 and 1 are the column and row (a linear ramp: bilinear reproduces the exact
        // source coordinate), labels the pixel number: every output pixel says where it came
        // from, and both must match the formulas of the `*_COUNTER` docs.
        let (h, w) = (30, 40);
        let lab: Vec<i32> = (0..(h * w) as i32).collect();
        let img: Vec<f32> = (0..3)
            .flat_map(|k| (0..h * w).map(move |p| [(p % w) as f32, (p / w) as f32, 0.0][k]))
            .collect();
        let (ch, cw) = (36, 44);
        let g = geometry(ch, cw, [0.5, 2.0]);
        let plane = ch * cw;
        for key in 0..24 {
            let rng = Philox::new(21, key);
            let s = random_scale_crop_flip(&img, Some(&lab), h, w, &g, &rng).unwrap();
            let l = s.label.unwrap();
            let factor = 0.5 + rng.uniform_at(SCALE_COUNTER) * 1.5;
            let (sh, sw) = (
                ((h as f32 * factor).round() as usize).max(1),
                ((w as f32 * factor).round() as usize).max(1),
            );
            let start = |n: usize, c: usize, word: u32| {
                if n >= c {
                    ((u64::from(word) * (n - c + 1) as u64) >> 32) as usize
                } else {
                    0
                }
            };
            let y0 = start(sh, ch, rng.u32_at(ROW_COUNTER));
            let x0 = start(sw, cw, rng.u32_at(COL_COUNTER));
            let flip = rng.bernoulli_at(FLIP_COUNTER, 0.5);
            for r in 0..ch {
                for c in 0..cw {
                    let p = r * cw + c;
                    let cc = if flip { cw - 1 - c } else { c };
                    let (sy, sx) = (y0 + r, x0 + cc);
                    if r >= sh.min(ch) || cc >= sw.min(cw) {
                        assert_eq!((s.valid[p], l[p], s.image[p]), (0.0, IGNORE, 0.0));
                        continue;
                    }
                    assert_eq!(s.valid[p], 1.0);
                    let nearest = |d: usize, n: usize, m: usize| {
                        ((d as f32 * (n as f32 / m as f32)).floor() as usize).min(n - 1)
                    };
                    let want = nearest(sy, h, sh) * w + nearest(sx, w, sw);
                    assert_eq!(l[p], want as i32, "key {key} at ({r}, {c})");
                    let linear = |d: usize, n: usize, m: usize| {
                        ((d as f32 + 0.5) * (n as f32 / m as f32) - 0.5).clamp(0.0, n as f32 - 1.0)
                    };
                    assert!((s.image[p] - linear(sx, w, sw)).abs() < 1e-3, "key {key}");
                    assert!((s.image[plane + p] - linear(sy, h, sh)).abs() < 1e-3);
                }
            }
        }
    }

    #[test]
    fn geometry_keys_parse_with_defaults_and_checks() {
        let g: Geometry = from_node(&parse_yaml("{ crop: 64 }").unwrap()).unwrap();
        assert_eq!(g, Geometry::new(Crop { h: 64, w: 64 }));
        let g: Geometry = from_node(
            &parse_yaml("{ crop: [32, 48], scale: [1, 1.5], flip: false, normalize: imagenet }")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(g.crop, Crop { h: 32, w: 48 });
        assert_eq!(
            (g.scale, g.flip, g.normalize),
            ([1.0, 1.5], false, Normalize::Imagenet)
        );
        for (bad, says) in [
            ("{ scale: [1, 2] }", "missing field `crop`"),
            ("{ crop: 0 }", "at least 1"),
            ("{ crop: [1, 2, 3] }", "invalid length"),
            ("{ crop: 8, scale: [2, 1] }", "0 < min <= max"),
            ("{ crop: 8, normalize: imagenette }", "unknown variant"),
            ("{ crop: 8, flop: true }", "or a geometry key: crop, scale"),
        ] {
            let e = from_node::<Geometry>(&parse_yaml(bad).unwrap()).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn bad_files_give_errors_naming_the_file_and_problem() {
        let d = TempDir::new("files-bad");
        let missing = d.path("nope.jpg");
        let e = load_rgb(&missing).unwrap_err().0;
        assert!(e.contains("nope.jpg: cannot read"), "{e}");
        std::fs::write(d.path("junk.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
        let e = load_rgb(&d.path("junk.jpg")).unwrap_err().0;
        assert!(e.contains("junk.jpg: undecodable image"), "{e}");
        // Grey PNG → RGB.
        image::GrayImage::from_pixel(3, 2, image::Luma([51]))
            .save(d.path("g.png"))
            .unwrap();
        let (x, h, w) = load_rgb(&d.path("g.png")).unwrap();
        assert_eq!((h, w), (2, 3));
        assert!(x.iter().all(|&v| (v - 0.2).abs() < 1e-6));
        // Out of range id: the first offending pixel in row-major order.
        write_mask(&d.path("m.png"), 3, 4, |r, c| {
            if r * 4 + c >= 6 {
                30
            } else {
                255
            }
        });
        let e = load_mask(&d.path("m.png"), 21).unwrap_err().0;
        assert!(e.contains("m.png: class id 30 at (row 1, col 2)"), "{e}");
        assert!(e.contains("0..=20 and 255"), "{e}");
        assert_eq!(load_mask(&d.path("m.png"), 31).unwrap().0[6], 30);
        // An RGB mask.
        write_rgb(&d.path("rgb.png"), 3, 4, |_, _| [128, 0, 0]);
        let e = load_mask(&d.path("rgb.png"), 21).unwrap_err().0;
        assert!(
            e.contains("rgb.png: a label mask must be an 8-bit palette"),
            "{e}"
        );
        // Size mismatch, through a dataset's check and sample.
        write_rgb(&d.path("a.png"), 3, 5, |_, _| [0, 0, 0]);
        write_mask(&d.path("a_mask.png"), 3, 4, |_, _| 1);
        let set = FileSet::new(
            vec![Item {
                image: d.path("a.png"),
                mask: Some(d.path("a_mask.png")),
                name: "a".into(),
            }],
            Vec::new(),
            numbered_classes(2),
            Geometry::new(Crop { h: 4, w: 4 }),
            None,
        )
        .unwrap();
        let e = set.check(Part::Train, 0).unwrap_err().0;
        assert!(e.contains("a_mask.png: mask is 3×4"), "{e}");
        assert!(e.contains("a.png is 3×5"), "{e}");
        assert!(set.sample(0, &Philox::new(0, 0), true).is_err());
        // Unlabeled draws never open the mask.
        assert!(set.sample(0, &Philox::new(0, 0), false).is_ok());
    }

    #[test]
    fn eval_items_are_whole_normalised_images_with_mapped_labels() {
        let d = TempDir::new("files-eval");
        write_rgb(&d.path("e.png"), 5, 7, |r, c| {
            [(r * 10) as u8, (c * 10) as u8, 255]
        });
        write_mask(&d.path("e_mask.png"), 5, 7, |r, _| r as u8 + 10);
        let mut map = Box::new([255u8; 256]);
        map[12] = 0;
        map[13] = 1;
        let mut g = Geometry::new(Crop { h: 2, w: 2 });
        g.normalize = Normalize::Imagenet;
        let item = |n: &str| Item {
            image: d.path("e.png"),
            mask: Some(d.path("e_mask.png")),
            name: n.into(),
        };
        let set = FileSet::new(
            vec![item("t")],
            vec![item("e")],
            numbered_classes(2),
            g,
            Some(map),
        )
        .unwrap();
        let e = set.eval_item(0).unwrap();
        assert_eq!(e.name, "e");
        assert_eq!(e.image.spec().shape, [3, 5, 7]);
        let x = e.image.f32().unwrap();
        let want = (30.0 / 255.0 - 0.456) / 0.224; // green of (row 1, col 3)
        assert!((x[35 + 7 + 3] - want).abs() < 1e-5);
        let l = e.label.i32().unwrap();
        assert_eq!(&l[..7], &[255; 7]);
        assert_eq!(&l[14..21], &[0; 7]);
        assert_eq!(&l[21..28], &[1; 7]);
        assert!(FileSet::new(
            Vec::new(),
            vec![Item {
                mask: None,
                ..item("x")
            }],
            numbered_classes(2),
            Geometry::new(Crop { h: 2, w: 2 }),
            None
        )
        .is_err());
    }
}
