//! `voc`: a dataset in Pascal VOC layout under `root`: the ids of `ImageSets/Segmentation/
//! <list>.txt`, images `JPEGImages/<id>.jpg` (or `<id>.png`, as flowseg's own m2nist generator
//! writes them), masks `SegmentationClass/<id>.png` (palette or grayscale PNGs of class ids,
//! 255 = border/ignore), class names from `classes.txt` when the tree has one. Every listed file
//! must exist when the source opens; decoding problems show up when an item is read, or all at
//! once with `flowseg check --data`.
//!
//! Not here: decoding and geometry (`files.rs`), batching and the split (`loader.rs`).

use super::files::{numbered_classes, require_file, FileSet, Item, WithGeometry};
use super::loader::WithBatching;
use flowseg_engine::data::{DataError, DataSource, Dataset};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The 21 Pascal VOC class names, by label.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The source.
pub struct Voc;

/// The layout's own keys of `data: { source: voc, ... }` (beside the geometry and batching
/// keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocParams {
    /// Dataset folder (holding JPEGImages/, SegmentationClass/, ImageSets/).
    pub root: PathBuf,
    /// Training list: `ImageSets/Segmentation/<train_list>.txt`.
    #[serde(default = "default_train")]
    pub train_list: String,
    /// Held-out list, likewise.
    #[serde(default = "default_eval")]
    pub eval_list: String,
    /// Mask folder under `root` (`SegmentationClassAug` for the augmented set).
    #[serde(default = "default_mask_dir")]
    pub mask_dir: String,
    /// Number of classes. Default: the names of `root/classes.txt` (one a line, in id order, as
    /// `flowseg data m2nist` writes it) when there is one, else the 21 VOC classes. A count
    /// without `classes.txt` names 21 classes as VOC does and numbers any other count.
    #[serde(default)]
    pub classes: Option<usize>,
}

impl VocParams {
    /// The default keys for a dataset at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        VocParams {
            root: root.into(),
            train_list: default_train(),
            eval_list: default_eval(),
            mask_dir: default_mask_dir(),
            classes: None,
        }
    }
}

fn default_train() -> String {
    "train".into()
}
fn default_eval() -> String {
    "val".into()
}
fn default_mask_dir() -> String {
    "SegmentationClass".into()
}

impl DataSource for Voc {
    const NAME: &'static str = "voc";
    const SUMMARY: &'static str =
        "Pascal VOC layout: JPEGImages/, SegmentationClass/ index PNGs, ImageSets/Segmentation lists";
    type Params = WithBatching<WithGeometry<VocParams>>;
    fn open(p: &Self::Params, seed: u64) -> Result<Box<dyn Dataset>, DataError> {
        file_set(&p.params)?.into_source(p.batching.clone(), seed)
    }
}

/// The dataset `p` describes, every listed file checked to exist.
pub fn file_set(p: &WithGeometry<VocParams>) -> Result<FileSet, DataError> {
    let v = &p.params;
    let names = class_names(v)?;
    let items = list(v, &v.train_list)?;
    let eval = list(v, &v.eval_list)?;
    FileSet::new(items, eval, names, p.geometry.clone(), None)
}

/// The class names: from `classes.txt`, VOC's, or numbered (see [`VocParams::classes`]).
fn class_names(v: &VocParams) -> Result<Vec<String>, DataError> {
    let path = v.root.join("classes.txt");
    let listed: Option<Vec<String>> = if path.is_file() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| DataError(format!("{}: cannot read: {e}", path.display())))?;
        Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    } else {
        None
    };
    let voc = || VOC_CLASSES.iter().map(|c| (*c).to_owned()).collect();
    match (v.classes, listed) {
        (Some(n), Some(names)) if n != names.len() => Err(DataError(format!(
            "{} names {} classes but the params say `classes: {n}`",
            path.display(),
            names.len()
        ))),
        (_, Some(names)) => Ok(names),
        (None, None) => Ok(voc()),
        (Some(n), None) if n == VOC_CLASSES.len() => Ok(voc()),
        (Some(n), None) => Ok(numbered_classes(n)),
    }
}

/// The items of list `name`.
fn list(v: &VocParams, name: &str) -> Result<Vec<Item>, DataError> {
    let path = v
        .root
        .join("ImageSets")
        .join("Segmentation")
        .join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| DataError(format!("{}: cannot read the VOC list: {e}", path.display())))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), n + 1);
        if id.split_whitespace().nth(1).is_some() {
            return Err(DataError(format!(
                "{at}: expected one image id per line, found `{id}`"
            )));
        }
        // An id names a file inside JPEGImages/ and the mask folder: a separator or `..`
        // would reach outside the dataset's folder.
        if id.contains(['/', '\\']) || id == ".." || id == "." {
            return Err(DataError(format!(
                "{at}: `{id}` is not an image id: ids name files inside JPEGImages/, without a \
                 folder"
            )));
        }
        let image = find_image(&v.root, id).ok_or_else(|| {
            DataError(format!(
                "{at}: no image for `{id}`: neither {} nor its .png exists",
                v.root
                    .join("JPEGImages")
                    .join(format!("{id}.jpg"))
                    .display()
            ))
        })?;
        let mask = v.root.join(&v.mask_dir).join(format!("{id}.png"));
        require_file(&mask, &format!("{at}: the mask of `{id}`,"))?;
        items.push(Item {
            image,
            mask: Some(mask),
            name: id.to_owned(),
        });
    }
    Ok(items)
}

fn find_image(root: &Path, id: &str) -> Option<PathBuf> {
    ["jpg", "png"]
        .iter()
        .map(|ext| root.join("JPEGImages").join(format!("{id}.{ext}")))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::super::files::testdir::{write_mask, write_rgb, TempDir};
    use super::super::files::{Crop, Geometry};
    use super::super::loader::{Batching, Part, SampleSet};
    use super::*;
    use flowseg_engine::spec::parse_yaml;
    use flowseg_engine::TensorSpec;

    /// A VOC tree with `train` ids a0..a4 (a3 as PNG) and `val` ids v0, v1, images h×w.
    fn tiny_voc(d: &TempDir, h: usize, w: usize) {
        let lists = d.path("ImageSets/Segmentation");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("train.txt"), "a0\na1\na2\n\na3\na4\n").unwrap();
        std::fs::write(lists.join("val.txt"), "v0\nv1\n").unwrap();
        for id in ["a0", "a1", "a2", "a3", "a4", "v0", "v1"] {
            let ext = if id == "a3" { "png" } else { "jpg" };
            let img = d.path(&format!("JPEGImages/{id}.{ext}"));
            write_rgb(&img, h, w, |r, c| [(r * 7) as u8, (c * 5) as u8, 90]);
            let mask = d.path(&format!("SegmentationClass/{id}.png"));
            write_mask(&mask, h, w, |r, c| [0, 15, 255][(r + c) % 3]);
        }
    }

    fn params(d: &TempDir, crop: usize) -> WithGeometry<VocParams> {
        WithGeometry {
            geometry: Geometry::new(Crop { h: crop, w: crop }),
            params: VocParams::at(&d.0),
        }
    }

    #[test]
    fn a_tiny_voc_tree_opens_and_batches() {
        let d = TempDir::new("voc-open");
        tiny_voc(&d, 20, 24);
        let set = file_set(&params(&d, 16)).unwrap();
        assert_eq!((set.len(Part::Train), set.len(Part::Eval)), (5, 2));
        assert_eq!(set.classes().len(), 21);
        assert_eq!(set.classes()[15], "person");
        assert!(set.items()[3].image.ends_with("JPEGImages/a3.png"));
        assert_eq!(set.name(4), "a4");
        // Through the registry, with batching and geometry keys in one mapping.
        let yaml = format!(
            "{{ source: voc, root: '{}', crop: 16, batch: 2, workers: 0, labeled: 2, \
             unlabeled_batch: 3 }}",
            d.0.display()
        );
        let mut reg = flowseg_engine::Registry::new();
        crate::register_builtin_sources(&mut reg).unwrap();
        let mut src = reg
            .data("voc")
            .unwrap()
            .open(&parse_yaml(&yaml).unwrap(), 5)
            .unwrap()
            .unwrap();
        let specs = src.specs();
        assert_eq!(specs["image"], TensorSpec::f32(&[2, 3, 16, 16]));
        assert_eq!(specs["u_valid"], TensorSpec::f32(&[3, 16, 16]));
        let b = src.batch(0).unwrap();
        for (k, t) in &b {
            assert_eq!(t.spec(), &specs[k], "{k}");
        }
        assert!(b["label"]
            .i32()
            .unwrap()
            .iter()
            .all(|l| [0, 15, 255].contains(l)));
        let split = src.split().unwrap();
        assert_eq!((split.labeled.len(), split.unlabeled.len()), (2, 3));
        let e = src.eval_item(1).unwrap();
        assert_eq!(e.name, "v1");
        assert_eq!(e.image.spec().shape, [3, 20, 24]);
        assert_eq!(e.label.i32().unwrap()[..3], [0, 15, 255]);
        let report = src.scan(&mut |_, _| {}).unwrap();
        assert_eq!((report.items, report.problems.len()), (7, 0));
        // An unknown key's message names the layout's, the geometry and the batching keys.
        let bad = format!(
            "{{ source: voc, root: '{}', crop: 4, bach: 2 }}",
            d.0.display()
        );
        let e = reg
            .data("voc")
            .unwrap()
            .open(&parse_yaml(&bad).unwrap(), 5)
            .err()
            .unwrap();
        for says in [
            "unknown field `bach`",
            "train_list",
            "geometry key: crop",
            "batching key: batch",
        ] {
            assert!(e.message.contains(says), "{}", e.message);
        }
    }

    #[test]
    fn missing_lists_and_files_are_named_at_open() {
        let d = TempDir::new("voc-missing");
        tiny_voc(&d, 4, 4);
        let mut p = params(&d, 4);
        p.params.eval_list = "test".into();
        let e = file_set(&p).unwrap_err().0;
        assert!(
            e.contains("Segmentation/test.txt: cannot read the VOC list"),
            "{e}"
        );
        std::fs::remove_file(d.path("JPEGImages/a2.jpg")).unwrap();
        let e = file_set(&params(&d, 4)).unwrap_err().0;
        assert!(e.contains("train.txt:3: no image for `a2`"), "{e}");
        assert!(e.contains("JPEGImages/a2.jpg"), "{e}");
        tiny_voc(&d, 4, 4);
        std::fs::remove_file(d.path("SegmentationClass/a4.png")).unwrap();
        let e = file_set(&params(&d, 4)).unwrap_err().0;
        assert!(e.contains("train.txt:6: the mask of `a4`,"), "{e}");
        assert!(e.contains("SegmentationClass/a4.png does not exist"), "{e}");
        let mut p = params(&d, 4);
        p.params.classes = Some(3);
        p.params.train_list = "val".into();
        let set = file_set(&p).unwrap();
        assert_eq!(set.classes(), vec!["class0", "class1", "class2"]);
        // classes.txt names them (as m2nist writes it), and must agree with a given count.
        std::fs::write(d.path("classes.txt"), "bg\nzero\none\n").unwrap();
        assert_eq!(file_set(&p).unwrap().classes(), vec!["bg", "zero", "one"]);
        p.params.classes = None;
        assert_eq!(file_set(&p).unwrap().classes().len(), 3);
        p.params.classes = Some(21);
        let e = file_set(&p).unwrap_err().0;
        assert!(e.contains("classes.txt names 3 classes but the params say `classes: 21`"));
        p.params.classes = Some(3);
        // 15 is out of range for 3 classes: the scan reports it with the file.
        let mut src = set.into_source(Batching::default(), 0).unwrap();
        let report = src.scan(&mut |_, _| {}).unwrap();
        assert_eq!(report.problems.len(), 4);
        assert!(report.problems[0].contains("SegmentationClass/v0.png: class id 15"));
    }

    #[test]
    fn ids_that_leave_the_dataset_folder_are_refused() {
        let d = TempDir::new("voc-escape");
        std::fs::create_dir_all(d.path("ImageSets/Segmentation")).unwrap();
        std::fs::write(
            d.path("ImageSets/Segmentation/train.txt"),
            "../../etc/hostname\n",
        )
        .unwrap();
        let p = VocParams::at(d.path(""));
        let e = list(&p, "train").unwrap_err().0;
        assert!(
            e.contains("train.txt:1") && e.contains("not an image id"),
            "{e}"
        );
    }
}
