//! `cityscapes`: a dataset in Cityscapes layout under `root`: images
//! `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`, labels
//! `gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`, read in sorted path order. Label ids are
//! mapped to the 19 training ids with the official table (cityscapesScripts `labels.py`);
//! every other id, the license plate's included, becomes 255 (ignore).
//!
//! Not here: decoding and geometry (`files.rs`), batching and the split (`loader.rs`).

use super::files::{FileSet, Item, WithGeometry};
use super::loader::WithBatching;
use flowseg_engine::data::{DataError, DataSource, Dataset};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The 19 training classes, by trainId.
pub const CITYSCAPES_CLASSES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// (labelId, trainId) for the labelIds that train; all others map to 255.
const TRAIN_IDS: [(u8, u8); 19] = [
    (7, 0),   // road
    (8, 1),   // sidewalk
    (11, 2),  // building
    (12, 3),  // wall
    (13, 4),  // fence
    (17, 5),  // pole
    (19, 6),  // traffic light
    (20, 7),  // traffic sign
    (21, 8),  // vegetation
    (22, 9),  // terrain
    (23, 10), // sky
    (24, 11), // person
    (25, 12), // rider
    (26, 13), // car
    (27, 14), // truck
    (28, 15), // bus
    (31, 16), // train
    (32, 17), // motorcycle
    (33, 18), // bicycle
];

/// labelId → trainId for every byte value.
pub fn label_to_train_ids() -> Box<[u8; 256]> {
    let mut m = Box::new([255u8; 256]);
    for (label, train) in TRAIN_IDS {
        m[usize::from(label)] = train;
    }
    m
}

/// The source.
pub struct Cityscapes;

/// The layout's own keys of `data: { source: cityscapes, ... }` (beside the geometry and
/// batching keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityscapesParams {
    /// Dataset folder (holding leftImg8bit/ and gtFine/).
    pub root: PathBuf,
    /// Training split folder name.
    #[serde(default = "default_train")]
    pub train_split: String,
    /// Held-out split folder name.
    #[serde(default = "default_eval")]
    pub eval_split: String,
}

fn default_train() -> String {
    "train".into()
}
fn default_eval() -> String {
    "val".into()
}

impl DataSource for Cityscapes {
    const NAME: &'static str = "cityscapes";
    const SUMMARY: &'static str =
        "Cityscapes layout: leftImg8bit/ and gtFine/ labelIds, mapped to the 19 trainIds";
    type Params = WithBatching<WithGeometry<CityscapesParams>>;
    fn open(p: &Self::Params, seed: u64) -> Result<Box<dyn Dataset>, DataError> {
        file_set(&p.params)?.into_source(p.batching.clone(), seed)
    }
}

/// The dataset `p` describes; every image must have its label file.
pub fn file_set(p: &WithGeometry<CityscapesParams>) -> Result<FileSet, DataError> {
    let c = &p.params;
    let names = CITYSCAPES_CLASSES.iter().map(|n| (*n).to_owned()).collect();
    let items = split(&c.root, &c.train_split)?;
    let eval = split(&c.root, &c.eval_split)?;
    FileSet::new(
        items,
        eval,
        names,
        p.geometry.clone(),
        Some(label_to_train_ids()),
    )
}

const IMAGE_SUFFIX: &str = "_leftImg8bit.png";
const LABEL_SUFFIX: &str = "_gtFine_labelIds.png";

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut v = std::fs::read_dir(dir)
        .and_then(|rd| {
            rd.map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| DataError(format!("{}: cannot list: {e}", dir.display())))?;
    v.sort();
    Ok(v)
}

/// The items of split `split`, by city then file name.
fn split(root: &Path, split: &str) -> Result<Vec<Item>, DataError> {
    let images = root.join("leftImg8bit").join(split);
    let labels = root.join("gtFine").join(split);
    let mut items = Vec::new();
    for city in sorted_entries(&images)? {
        if !city.is_dir() {
            continue;
        }
        let Some(city_name) = city.file_name() else {
            continue;
        };
        for image in sorted_entries(&city)? {
            let Some(stem) = image
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_suffix(IMAGE_SUFFIX))
            else {
                continue;
            };
            let mask = labels.join(city_name).join(format!("{stem}{LABEL_SUFFIX}"));
            if !mask.is_file() {
                return Err(DataError(format!(
                    "{}: the labels of {} do not exist",
                    mask.display(),
                    image.display()
                )));
            }
            items.push(Item {
                name: stem.to_owned(),
                image,
                mask: Some(mask),
            });
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::super::files::testdir::{write_mask, write_rgb, TempDir};
    use super::super::files::{Crop, Geometry};
    use super::super::loader::{Batching, Part, SampleSet};
    use super::*;

    fn write_item(d: &TempDir, split: &str, city: &str, stem: &str, ids: &[u8]) {
        let img = d.path(&format!("leftImg8bit/{split}/{city}/{stem}{IMAGE_SUFFIX}"));
        write_rgb(&img, 2, ids.len() / 2, |_, _| [10, 20, 30]);
        let lab = d.path(&format!("gtFine/{split}/{city}/{stem}{LABEL_SUFFIX}"));
        write_mask(&lab, 2, ids.len() / 2, |r, c| ids[r * (ids.len() / 2) + c]);
        // Other gtFine files beside it are ignored.
        std::fs::write(
            d.path(&format!(
                "gtFine/{split}/{city}/{stem}_gtFine_polygons.json"
            )),
            "{}",
        )
        .unwrap();
    }

    fn params(d: &TempDir) -> WithGeometry<CityscapesParams> {
        WithGeometry {
            geometry: Geometry::new(Crop { h: 2, w: 4 }),
            params: CityscapesParams {
                root: d.0.clone(),
                train_split: default_train(),
                eval_split: default_eval(),
            },
        }
    }

    #[test]
    fn the_official_table_maps_label_ids_to_train_ids() {
        let m = label_to_train_ids();
        let train: Vec<u8> = (0..=255u8).filter(|&i| m[usize::from(i)] != 255).collect();
        assert_eq!(
            train,
            [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
        );
        assert_eq!((m[7], m[26], m[33]), (0, 13, 18));
        // Unlabeled, ego vehicle, parking, guard rail, polegroup, caravan, trailer, plate (-1).
        for id in [0, 1, 6, 9, 14, 18, 29, 30, 255] {
            assert_eq!(m[id], 255, "labelId {id}");
        }
    }

    #[test]
    fn a_tiny_cityscapes_tree_opens_sorted_with_train_ids() {
        let d = TempDir::new("cityscapes");
        let ids = [7, 26, 33, 0, 9, 24, 200, 8];
        write_item(&d, "train", "zurich", "zurich_000001_000019", &ids);
        write_item(&d, "train", "aachen", "aachen_000002_000019", &ids);
        write_item(&d, "train", "aachen", "aachen_000000_000019", &ids);
        write_item(&d, "val", "lindau", "lindau_000000_000019", &ids);
        std::fs::write(d.path("leftImg8bit/train/README"), "not a city").unwrap();
        let set = file_set(&params(&d)).unwrap();
        let names: Vec<String> = (0..set.len(Part::Train)).map(|i| set.name(i)).collect();
        assert_eq!(
            names,
            [
                "aachen_000000_000019",
                "aachen_000002_000019",
                "zurich_000001_000019"
            ]
        );
        assert_eq!(set.len(Part::Eval), 1);
        assert_eq!(set.classes().len(), 19);
        assert_eq!(set.classes()[13], "car");
        let e = set.eval_item(0).unwrap();
        assert_eq!(e.name, "lindau_000000_000019");
        assert_eq!(e.label.i32().unwrap(), &[0, 13, 18, 255, 255, 11, 255, 1]);
        let mut src = set
            .into_source(
                Batching {
                    batch: 2,
                    workers: 0,
                    ..Batching::default()
                },
                1,
            )
            .unwrap();
        let b = src.batch(0).unwrap();
        assert!(b["label"]
            .i32()
            .unwrap()
            .iter()
            .all(|l| [0, 1, 11, 13, 18, 255].contains(l)));
        // A missing split, and a missing label file.
        let mut p = params(&d);
        p.params.eval_split = "test".into();
        let e = file_set(&p).unwrap_err().0;
        assert!(e.contains("leftImg8bit/test: cannot list"), "{e}");
        std::fs::remove_file(d.path(&format!(
            "gtFine/train/zurich/zurich_000001_000019{LABEL_SUFFIX}"
        )))
        .unwrap();
        let e = file_set(&params(&d)).unwrap_err().0;
        assert!(
            e.contains("zurich_000001_000019_gtFine_labelIds.png: the labels of"),
            "{e}"
        );
    }
}
