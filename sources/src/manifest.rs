//! `manifest`: a dataset listed in plain text files, one item per line `image_path [mask_path]`
//! (whitespace-separated, so paths cannot contain spaces; relative paths are relative to the
//! manifest file's folder; blank lines and lines starting with `#` are skipped). A training line
//! without a mask is an unlabeled image: it goes to the unlabeled pool whatever the split says.
//! Every held-out line needs a mask. Every listed file must exist when the source opens, and
//! lie inside the manifest's folder — an absolute path or one that climbs out with `..` is
//! refused (naming the manifest line) unless `allow_outside_root: true` says it is meant.
//!
//! Not here: decoding and geometry (`files.rs`), batching and the split (`loader.rs`).

use super::files::{numbered_classes, require_file, FileSet, Item, WithGeometry};
use super::loader::WithBatching;
use flowseg_engine::data::{DataError, DataSource, Dataset};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The source.
pub struct Manifest;

/// The layout's own keys of `data: { source: manifest, ... }` (beside the geometry and
/// batching keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestParams {
    /// Training manifest (lines with or without masks).
    pub train: PathBuf,
    /// Held-out manifest (every line with a mask); none: no evaluation split.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// Number of classes (mask ids 0..classes, and 255 = ignore).
    pub classes: usize,
    /// Class names, by label (default `class0`, `class1`, ...).
    #[serde(default)]
    pub class_names: Option<Vec<String>>,
    /// Accept listed paths outside the manifest's folder (absolute, or climbing out with `..`).
    #[serde(default)]
    pub allow_outside_root: bool,
}

impl DataSource for Manifest {
    const NAME: &'static str = "manifest";
    const SUMMARY: &'static str =
        "text files of `image [mask]` lines; lines without a mask are unlabeled images";
    type Params = WithBatching<WithGeometry<ManifestParams>>;
    fn open(p: &Self::Params, seed: u64) -> Result<Box<dyn Dataset>, DataError> {
        file_set(&p.params)?.into_source(p.batching.clone(), seed)
    }
}

/// The dataset `p` describes, every listed file checked to exist.
pub fn file_set(p: &WithGeometry<ManifestParams>) -> Result<FileSet, DataError> {
    let m = &p.params;
    let names = match &m.class_names {
        Some(n) if n.len() != m.classes => {
            return Err(DataError(format!(
                "`class_names` has {} names for `classes: {}`",
                n.len(),
                m.classes
            )))
        }
        Some(n) => n.clone(),
        None => numbered_classes(m.classes),
    };
    let items = read(&m.train, false, m.allow_outside_root)?;
    let eval = match &m.eval {
        Some(e) => read(e, true, m.allow_outside_root)?,
        None => Vec::new(),
    };
    FileSet::new(items, eval, names, p.geometry.clone(), None)
}

/// Whether `rel` stays inside the folder it is joined to: relative, and never climbing above it
/// with `..` (judged on the path as written; symbolic links inside the folder are followed).
fn stays_inside(rel: &Path) -> bool {
    let mut depth = 0usize;
    for c in rel.components() {
        match c {
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            std::path::Component::RootDir | std::path::Component::Prefix(_) => return false,
        }
    }
    true
}

/// The items of manifest `path`; with `need_mask`, every line must name a mask; unless
/// `outside_ok`, every path must stay inside the manifest's folder.
pub fn read(path: &Path, need_mask: bool, outside_ok: bool) -> Result<Vec<Item>, DataError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError(format!("{}: cannot read the manifest: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", path.display(), n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (image, mask) = match fields[..] {
            [image] if need_mask => {
                return Err(DataError(format!(
                    "{at}: `{image}` has no mask; every held-out line needs `image_path \
                     mask_path`"
                )))
            }
            [image] => (image, None),
            [image, mask] => (image, Some(mask)),
            _ => {
                return Err(DataError(format!(
                    "{at}: expected `image_path [mask_path]`, found {} fields (paths cannot \
                     contain spaces)",
                    fields.len()
                )))
            }
        };
        for p in std::iter::once(image).chain(mask) {
            if !outside_ok && !stays_inside(Path::new(p)) {
                return Err(DataError(format!(
                    "{at}: `{p}` leaves the manifest's folder {}; list paths inside it, or set \
                     `allow_outside_root: true` if that is meant",
                    base.display()
                )));
            }
        }
        let image_path = base.join(image);
        require_file(&image_path, &format!("{at}: image"))?;
        let mask = match mask {
            Some(m) => {
                let m = base.join(m);
                require_file(&m, &format!("{at}: mask"))?;
                Some(m)
            }
            None => None,
        };
        items.push(Item {
            image: image_path,
            mask,
            name: image.to_owned(),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::super::files::testdir::{write_mask, write_rgb, TempDir};
    use super::super::files::{Crop, Geometry};
    use super::super::loader::{Batching, Part, SampleSet};
    use super::super::split::Labeled;
    use super::*;
    use flowseg_engine::TensorSpec;

    /// img0..img5.jpg in `images/`; masks for img0..img3 (ids 0, 1, 2 in thirds of the rows).
    fn tiny(d: &TempDir) {
        for i in 0..6 {
            write_rgb(&d.path(&format!("images/img{i}.jpg")), 6, 5, |r, c| {
                [(r * 40) as u8, (c * 50) as u8, (i * 40) as u8]
            });
            if i < 4 {
                write_mask(&d.path(&format!("masks/img{i}.png")), 6, 5, |r, _| {
                    (r / 2) as u8
                });
            }
        }
        std::fs::write(
            d.path("train.txt"),
            "# a comment\nimages/img0.jpg masks/img0.png\n\nimages/img1.jpg masks/img1.png\n\
             images/img4.jpg\n  images/img5.jpg  \nimages/img2.jpg\tmasks/img2.png\n",
        )
        .unwrap();
        std::fs::write(d.path("eval.txt"), "images/img3.jpg masks/img3.png\n").unwrap();
    }

    fn params(d: &TempDir) -> WithGeometry<ManifestParams> {
        WithGeometry {
            geometry: Geometry::new(Crop { h: 4, w: 4 }),
            params: ManifestParams {
                train: d.path("train.txt"),
                eval: Some(d.path("eval.txt")),
                classes: 3,
                class_names: Some(vec!["bg".into(), "a".into(), "b".into()]),
                allow_outside_root: false,
            },
        }
    }

    #[test]
    fn unlabeled_lines_go_to_the_unlabeled_pool() {
        let d = TempDir::new("manifest-open");
        tiny(&d);
        let set = file_set(&params(&d)).unwrap();
        assert_eq!((set.len(Part::Train), set.len(Part::Eval)), (5, 1));
        let labeled: Vec<bool> = (0..5).map(|i| set.has_label(i)).collect();
        assert_eq!(labeled, [true, true, false, false, true]);
        assert_eq!(set.name(3), "images/img5.jpg");
        assert_eq!(set.classes(), ["bg", "a", "b"]);
        assert_eq!(
            set.items()[4].mask.as_deref(),
            Some(d.path("masks/img2.png").as_path())
        );
        let b = Batching {
            batch: 2,
            unlabeled_batch: 2,
            labeled: Labeled::Count(1),
            workers: 0,
            ..Batching::default()
        };
        let mut src = set.into_source(b, 3).unwrap();
        let split = src.split().unwrap();
        assert_eq!(split.labeled.len(), 1);
        assert_eq!(split.unlabeled.len(), 4);
        assert!(split.unlabeled.contains(&"images/img4.jpg".to_owned()));
        assert!(split.unlabeled.contains(&"images/img5.jpg".to_owned()));
        assert!(!split.labeled[0].contains("img4") && !split.labeled[0].contains("img5"));
        let specs = src.specs();
        assert_eq!(specs["u_image"], TensorSpec::f32(&[2, 3, 4, 4]));
        for it in 0..4 {
            let batch = src.batch(it).unwrap();
            for (k, t) in &batch {
                assert_eq!(t.spec(), &specs[k]);
            }
        }
        let e = src.eval_item(0).unwrap();
        assert_eq!(e.image.spec().shape, [3, 6, 5]);
        assert_eq!(e.label.i32().unwrap()[25..], [2; 5]);
        // Only unlabeled lines: nothing to supervise with.
        std::fs::write(d.path("u.txt"), "images/img4.jpg\n").unwrap();
        let mut p = params(&d);
        p.params.train = d.path("u.txt");
        let e = file_set(&p)
            .unwrap()
            .into_source(Batching::default(), 0)
            .err()
            .unwrap();
        assert!(e.0.contains("no training item has a label"), "{e}");
    }

    #[test]
    fn malformed_lines_and_missing_files_name_the_line() {
        let d = TempDir::new("manifest-bad");
        tiny(&d);
        let check = |train: &str, eval: &str, says: &str| {
            std::fs::write(d.path("t.txt"), train).unwrap();
            std::fs::write(d.path("e.txt"), eval).unwrap();
            let mut p = params(&d);
            p.params.train = d.path("t.txt");
            p.params.eval = Some(d.path("e.txt"));
            let e = file_set(&p).unwrap_err().0;
            assert!(e.contains(says), "{e}");
        };
        let ok = "images/img0.jpg masks/img0.png\n";
        check(
            "images/img0.jpg\n# x\nimages/img1.jpg masks/img1.png extra\n",
            ok,
            "t.txt:3: expected `image_path [mask_path]`, found 3 fields",
        );
        check("images/img9.jpg\n", ok, "t.txt:1: image ");
        check("images/img9.jpg\n", ok, "images/img9.jpg does not exist");
        check("\nimages/img4.jpg masks/img4.png\n", ok, "t.txt:2: mask ");
        check(
            ok,
            "\n\nimages/img4.jpg\n",
            "e.txt:3: `images/img4.jpg` has no mask",
        );
        let mut p = params(&d);
        p.params.class_names = Some(vec!["x".into()]);
        assert!(file_set(&p)
            .unwrap_err()
            .0
            .contains("1 names for `classes: 3`"));
        p.params.train = d.path("absent.txt");
        p.params.class_names = None;
        let e = file_set(&p).unwrap_err().0;
        assert!(e.contains("absent.txt: cannot read the manifest"), "{e}");
    }

    #[test]
    fn paths_leaving_the_manifest_folder_are_refused_unless_allowed() {
        for (p, inside) in [
            ("a.png", true),
            ("img/./a.png", true),
            ("img/../a.png", true),
            ("../a.png", false),
            ("img/../../a.png", false),
            ("/etc/hostname", false),
        ] {
            assert_eq!(super::stays_inside(std::path::Path::new(p)), inside, "{p}");
        }
        let d = TempDir::new("manifest-outside");
        std::fs::write(d.path("train.txt"), "../../../../etc/hostname\n").unwrap();
        let e = super::read(&d.path("train.txt"), false, false)
            .unwrap_err()
            .0;
        assert!(
            e.contains("train.txt:1") && e.contains("allow_outside_root"),
            "{e}"
        );
    }
}
