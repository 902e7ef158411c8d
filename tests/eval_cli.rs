//! `flowseg eval`, `flowseg predict` and `flowseg check --data` end to end, in-process: a short
//! run on `shapes` is scored again from its checkpoint (the same mIoU the run recorded), the
//! evaluation modes agree where they must (a sliding window or centre crop the size of the image
//! is the whole image), and predict writes one palette mask and one overlay per image without
//! overwriting anything it was not told to.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

mod common;

use common::Scratch;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn cli(args: &[&str]) -> (ExitCode, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut full = vec!["flowseg"];
    full.extend_from_slice(args);
    let code = flowseg::run_cli(full, &[], &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn scratch(name: &str) -> Scratch {
    common::scratch("eval", name)
}

/// A tiny supervised graph on `shapes`, trained 30 iterations; returns its scratch directory
/// (keep it alive: dropping it removes the run) and the run directory inside it.
fn trained(name: &str) -> (Scratch, PathBuf) {
    let root = scratch(name);
    let graph = root.join("g.yaml");
    std::fs::write(
        &graph,
        "name: tiny\n\
         data: { source: shapes, batch: 4, size: 16, eval_images: 12 }\n\
         models:\n  student: { arch: deeplab_lite, params: { classes: 3, width: 8 } }\n\
         optim:\n  student: { kind: sgd, lr: 0.05, momentum: 0.9, minimize: { loss.loss: 1.0 } }\n\
         train: { iterations: 30, eval_every: 0, seed: 1 }\n\
         nodes:\n\
         \x20 - { name: fwd, op: forward, inputs: { image: batch.image }, params: { model: student } }\n\
         \x20 - { name: loss, op: cross_entropy, inputs: { logits: fwd.logits, target: batch.label } }\n",
    )
    .unwrap();
    let out = root.join("runs");
    let (code, _, err) = cli(&[
        "run",
        graph.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let name_dir = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let run = std::fs::read_dir(name_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    (root, run)
}

/// The mIoU line of an eval table.
fn miou(table: &str) -> String {
    table
        .lines()
        .find(|l| l.starts_with("mIoU"))
        .unwrap()
        .to_owned()
}

#[test]
fn eval_reproduces_the_run_and_modes_agree_where_they_must() {
    let (_scratch, run) = trained("modes");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let recorded = results.to_string();
    let r = run.to_str().unwrap();
    let (code, whole, err) = cli(&["eval", r, "--json"]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(whole.contains("12 held-out images, mode whole"), "{whole}");
    assert!(
        whole.contains("background") && whole.contains("square"),
        "{whole}"
    );
    // The JSON line's mIoU is the one the run wrote at its end.
    let line = whole.lines().find(|l| l.starts_with('{')).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let m = v["miou"].as_f64().unwrap();
    assert!(
        recorded.contains(&format!("{m}")),
        "eval {m} vs run {recorded}"
    );
    // The confusion matrix: 3 × 3, every pixel of the 12 images of 16 × 16 counted once, its
    // diagonal the pixel accuracy; each printed mix-up is an off-diagonal share of a row.
    let c: Vec<u64> = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(c.len(), 9);
    assert_eq!(c.iter().sum::<u64>(), 12 * 16 * 16);
    let acc = (c[0] + c[4] + c[8]) as f64 / (12 * 16 * 16) as f64;
    assert!((acc - v["pixel_acc"].as_f64().unwrap()).abs() < 1e-12);
    // The largest share of a class's pixels given to another class leads the mix-up line.
    let largest = (0..9)
        .filter(|&i| i % 4 != 0 && c[i] > 0)
        .map(|i| c[i] as f64 / c[i / 3 * 3..i / 3 * 3 + 3].iter().sum::<u64>() as f64)
        .fold(0.0, f64::max);
    // (30 iterations leave the toy model far from perfect, so there is one to print.)
    assert!(largest >= 0.02, "{c:?}");
    let mix = whole
        .lines()
        .find(|l| l.starts_with("mix-ups student: "))
        .unwrap();
    let first = mix.split(", ").next().unwrap();
    assert!(
        first.ends_with(&format!(" {:.1} %", 100.0 * largest)),
        "largest off-diagonal share {largest} in {c:?}: {mix}"
    );
    // The boundary rings partition the object pixels (labels 1 and 2: rows 1 and 2 of the
    // confusion matrix) and their errors: background is column 0, another object the rest.
    let ring = |k: &str| -> Vec<u64> {
        v["boundary"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let (pixels, to_bg, to_other) = (ring("pixels"), ring("to_background"), ring("to_other"));
    assert_eq!(pixels.len(), 4);
    assert_eq!(pixels.iter().sum::<u64>(), c[3..9].iter().sum::<u64>());
    assert_eq!(to_bg.iter().sum::<u64>(), c[3] + c[6]);
    assert_eq!(to_other.iter().sum::<u64>(), c[5] + c[7]);
    assert!(pixels[0] > 0, "{pixels:?}");
    assert!(
        whole.contains("object pixels student, by distance to the boundary"),
        "{whole}"
    );
    // A window or crop the size of the image is the whole image.
    for mode in ["eval.mode=sliding", "eval.mode=center_crop"] {
        let (code, t, err) = cli(&["eval", r, "--set", mode, "--set", "eval.crop=16"]);
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        assert_eq!(miou(&t), miou(&whole), "{mode}");
    }
    // Overlapping windows and flips are different predictions, still scored on every image.
    let (code, t, err) = cli(&[
        "eval",
        r,
        "--set",
        "eval.mode=sliding",
        "--set",
        "eval.crop=10",
        "--set",
        "eval.stride=3",
        "--set",
        "eval.flip=true",
        "--set",
        "eval.batch=7",
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(t.contains("mode sliding + flip"), "{t}");
    let (code, _, err) = cli(&["eval", run.join("graph.yaml").to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("--checkpoint"), "{err}");
}

fn write_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 90]));
    img.save(path).unwrap();
}

#[test]
fn predict_writes_masks_and_overlays_and_keeps_existing_files() {
    let (_scratch, run) = trained("predict");
    let images = run.join("in");
    std::fs::create_dir_all(&images).unwrap();
    write_png(&images.join("a.png"), 16, 16);
    write_png(&images.join("b.png"), 24, 20); // another size: its own forward graph
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let masks = run.join("masks");
    let args = |extra: &[&'static str]| {
        let mut v = vec![
            "predict".to_owned(),
            run.to_str().unwrap().to_owned(),
            "--images".to_owned(),
            images.to_str().unwrap().to_owned(),
            "--out".to_owned(),
            masks.to_str().unwrap().to_owned(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let call = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        cli(&refs)
    };
    let (code, out, err) = call(args(&[]));
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.contains("2 images segmented with `student`"), "{out}");
    let (ids, h, w) = flowseg_sources::palette::read_index_png(&masks.join("b.png")).unwrap();
    assert_eq!((h, w), (20, 24));
    assert!(ids.iter().all(|&i| i < 3));
    let overlay = image::open(masks.join("a_overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (16, 16));
    // A second run would replace them: refused without --overwrite, nothing touched.
    let before = std::fs::read(masks.join("a.png")).unwrap();
    let (code, _, err) = call(args(&[]));
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(masks.join("a.png")).unwrap(), before);
    let (code, _, err) = call(args(&["--overwrite", "--model", "student"]));
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let (code, _, err) = call(args(&["--overwrite", "--model", "teacher"]));
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("no model `teacher`"), "{err}");
}

#[test]
fn check_data_scans_the_source() {
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let (code, out, err) = cli(&["check", graph.to_str().unwrap(), "--data"]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.contains("no problems"), "{out}");
}

#[test]
fn a_head_with_the_wrong_class_count_is_refused_before_training() {
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    for cmd in ["check", "run"] {
        let (code, _, err) = cli(&[
            cmd,
            graph.to_str().unwrap(),
            "--set",
            "models.student.params.classes=5",
            "--set",
            "train.iterations=1",
            "--out",
            std::env::temp_dir()
                .join("flowseg-eval-classes")
                .to_str()
                .unwrap(),
        ][..if cmd == "check" { 6 } else { 8 }]);
        assert_eq!(code, ExitCode::from(2), "{cmd}");
        assert!(
            err.contains("predicts 5 classes but the data source has 6")
                && err.contains("classes: 6"),
            "{cmd}: {err}"
        );
    }
}
