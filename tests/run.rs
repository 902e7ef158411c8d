//! `flowseg run` and `flowseg check` end to end, in-process through `run_cli`: every graph in
//! graphs/ checks and trains a few iterations; a run directory holds the resolved graph, one
//! metrics line per iteration and a loadable checkpoint; `--resume` continues with exactly the
//! losses of an uninterrupted run, also past a checkpoint write that was cut off; a run draws
//! metrics.png, and a plot that cannot be written only warns; bad graphs are reported with their
//! code and position and exit 2.

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
    common::scratch("run", name)
}

/// Small and quick: the shipped graphs at toy size.
const SMALL: [&str; 6] = [
    "--set",
    "data.size=16",
    "--set",
    "data.batch=2",
    "--set",
    "models.student.params.width=8",
];

/// [`SMALL`] for any graph: every model that sets a width gets width 8 (the U-Nets; PseudoSeg's
/// heads have none).
fn small_for(graph: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(graph).unwrap();
    let (spec, _) = flowseg_engine::spec::parse_graph(&text, &[]).unwrap();
    let mut v: Vec<String> = SMALL[..4].iter().map(|s| (*s).to_owned()).collect();
    // Width 8 for every model that sets a width (as tests/graphs.rs: CCT's heads have none).
    for (name, m) in &spec.models {
        if m.params.as_ref().is_some_and(|p| p.get("width").is_some()) {
            v.push("--set".into());
            v.push(format!("models.{}.params.width=8", name.value));
        }
    }
    v
}

/// 1-based line and column where `needle` first starts in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn graphs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

fn the_run_dir(out: &Path) -> PathBuf {
    let name_dir = std::fs::read_dir(out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_dir(name_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

fn losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            // Everything but the wall-clock time must repeat.
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("time_s");
            v.to_string()
        })
        .collect()
}

#[test]
fn every_shipped_graph_checks_and_trains_a_few_iterations() {
    for path in graphs() {
        let small = small_for(&path);
        let small: Vec<&str> = small.iter().map(String::as_str).collect();
        let g = path.to_str().unwrap();
        let mut args = vec!["check", g];
        args.extend(&small);
        let (code, out, err) = cli(&args);
        assert_eq!(code, ExitCode::SUCCESS, "{g}: {err}");
        assert!(out.contains(": ok"), "{out}");

        let dir = scratch("graphs");
        let mut args = vec![
            "run",
            g,
            "--out",
            dir.to_str().unwrap(),
            "--set",
            "train.iterations=3",
        ];
        args.extend(&small);
        let (code, _, err) = cli(&args);
        assert_eq!(code, ExitCode::SUCCESS, "{g}: {err}");
        let run = the_run_dir(&dir);
        // Three training lines, then the final evaluation of every model.
        let lines = losses(&run);
        assert_eq!(lines.len(), 4, "{g}: {lines:?}");
        assert!(
            lines[3].contains("\"eval/") && lines[3].contains("/miou\""),
            "{lines:?}"
        );
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap())
                .unwrap();
        let last = results["last"].as_object().unwrap();
        assert!(!last.is_empty(), "{results}");
        for score in last.values() {
            let miou = score["miou"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&miou), "{results}");
        }
        let c =
            flowseg_engine::checkpoint::load(&run.join("checkpoints/last.safetensors")).unwrap();
        assert_eq!(c.meta["iteration"], "3");
        // The resolved graph holds the overrides and parses again.
        let resolved = std::fs::read_to_string(run.join("graph.yaml")).unwrap();
        let (spec, _) = flowseg_engine::spec::parse_graph(&resolved, &[]).unwrap();
        assert_eq!(spec.train.iterations, 3);
    }
}

#[test]
fn resume_repeats_the_uninterrupted_losses() {
    let g = graphs()
        .into_iter()
        .find(|p| p.ends_with("supervised.yaml"))
        .unwrap();
    let g = g.to_str().unwrap();
    let base = [
        "--set",
        "train.iterations=6",
        "--set",
        "train.checkpoint_every=3",
    ];

    let straight = scratch("straight");
    let mut args = vec!["run", g, "--out", straight.to_str().unwrap()];
    args.extend(SMALL);
    args.extend(base);
    assert_eq!(cli(&args).0, ExitCode::SUCCESS);
    let want = losses(&the_run_dir(&straight));
    assert_eq!(
        want.len(),
        7,
        "6 iterations and the final evaluation: {want:?}"
    );

    // Stop after 4 iterations (as if killed; the last checkpoint is at 3) with a half-written
    // checkpoint left behind, then resume: iteration 3 is redone, under the same schedule
    // (poly over 6 iterations) as the uninterrupted run.
    let parts = scratch("parts");
    let mut args = vec!["run", g, "--out", parts.to_str().unwrap(), "--stop-at", "4"];
    args.extend(SMALL);
    args.extend(base);
    assert_eq!(cli(&args).0, ExitCode::SUCCESS);
    let run = the_run_dir(&parts);
    assert_eq!(
        losses(&run)[..],
        want[..4],
        "the interrupted session itself"
    );
    let garbage = run.join("checkpoints/.last.safetensors.tmp-999999");
    std::fs::write(garbage, b"garbage").unwrap();
    let (code, _, err) = cli(&["run", "--resume", run.to_str().unwrap()]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert_eq!(losses(&run), want);
}

#[test]
fn bad_graphs_exit_2_with_located_reports() {
    let dir = scratch("bad");
    let g = graphs()
        .into_iter()
        .find(|p| p.ends_with("supervised.yaml"))
        .unwrap();
    let original = std::fs::read_to_string(g).unwrap();
    let (line, col) = position(&original, "op: cross_entropy");
    let at = format!("bad.yaml:{line}:{}", col + 4);
    let text = original.replace("op: cross_entropy", "op: cross_entropi");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, text).unwrap();
    for cmd in ["check", "run"] {
        let (code, _, err) = cli(
            &[cmd, bad.to_str().unwrap(), "--out", dir.to_str().unwrap()]
                [..if cmd == "check" { 2 } else { 4 }],
        );
        assert_eq!(code, ExitCode::from(2), "{cmd}");
        assert!(
            err.contains("FS0101") && err.contains(&at) && err.contains("cross_entropy"),
            "{cmd}: {err}"
        );
    }
    let (code, _, err) = cli(&["check", dir.join("missing.yaml").to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("FS0004") && err.contains("cannot read") && err.contains("missing.yaml"),
        "{err}"
    );
    // A directory, and a file that is not UTF-8 (located at the bad byte).
    let (code, _, err) = cli(&["check", dir.to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("FS0004") && err.contains("directory"), "{err}");
    let latin1 = dir.join("latin1.yaml");
    std::fs::write(&latin1, b"name: caf\xe9\ntrain: { iterations: 1 }\n").unwrap();
    let (code, _, err) = cli(&["check", latin1.to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("FS0004") && err.contains("latin1.yaml:1:10"),
        "{err}"
    );
    let (code, _, err) = cli(&["run", "--resume", dir.join("nowhere").to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn graphs_draw_as_dot_and_mermaid() {
    for g in graphs() {
        let g = g.to_str().unwrap();
        let (code, out, err) = cli(&["graph", g]);
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        assert!(
            out.starts_with("digraph") && out.trim_end().ends_with('}'),
            "{out}"
        );
        let (code, out, _) = cli(&["graph", g, "--format", "mermaid"]);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(out.starts_with("flowchart LR"), "{out}");
    }
    let (code, _, err) = cli(&["graph", "nope.yaml"]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("nope.yaml"), "{err}");
}

#[test]
fn the_gct_drawing_shows_which_optimizer_updates_which_model() {
    // Three optimizers, numbered in step order, each with bold edges to the model calls it
    // trains: student (GCT's T_l) and r both forwards of their task model, fd both detector
    // calls.
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/gct.yaml");
    let (code, out, err) = cli(&["graph", g.to_str().unwrap()]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    for (step, model) in [(1, "student"), (2, "r"), (3, "fd")] {
        assert!(
            out.contains(&format!("opt_{model} [label=\"{step}. optimize {model}\\n")),
            "{out}"
        );
    }
    let updates = |opt: &str| -> Vec<&str> {
        out.lines()
            .filter(|l| l.contains("label=\"updates\""))
            .filter_map(|l| l.trim().strip_prefix(&format!("opt_{opt} -> ")))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect()
    };
    assert_eq!(updates("student"), ["n_fwd_l_lab", "n_fwd_l_u"]);
    assert_eq!(updates("r"), ["n_fwd_r_lab", "n_fwd_r_u"]);
    assert_eq!(updates("fd"), ["n_det_l", "n_det_r"]);
    let (code, out, _) = cli(&["graph", g.to_str().unwrap(), "--format", "mermaid"]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(out.contains("  opt_fd ==>|updates| n_det_r\n"), "{out}");
}

#[test]
fn a_bad_data_section_is_fs0113_at_its_position() {
    let dir = scratch("data");
    let g = graphs()
        .into_iter()
        .find(|p| p.ends_with("supervised.yaml"))
        .unwrap();
    let text = std::fs::read_to_string(g).unwrap();
    // An unknown source (reported at its value), a misspelt key of the source (at the key).
    for (from, to, marked) in [
        ("source: synthetic", "source: synthetiq", "synthetiq"),
        ("source: synthetic", "source: synthetic, sise: 64", "sise"),
    ] {
        let changed = text.replacen(from, to, 1);
        let (line, col) = position(&changed, marked);
        let bad = dir.join("data.yaml");
        std::fs::write(&bad, &changed).unwrap();
        let (code, _, err) = cli(&["check", bad.to_str().unwrap()]);
        assert_eq!(code, ExitCode::from(2), "{to}");
        assert!(
            err.contains("FS0113") && err.contains(&format!("data.yaml:{line}:{col}")),
            "{to}: {err}"
        );
    }
}

#[test]
fn device_cuda_says_what_is_missing_and_writes_nothing() {
    let out = scratch("device-cuda");
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let (code, _, err) = cli(&[
        "run",
        graph.to_str().unwrap(),
        "--device",
        "cuda",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(err.starts_with("error: --device cuda: "), "{err}");
    assert!(err.contains("--device cpu"), "{err}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "no run directory"
    );
    let (code, _, err) = cli(&["run", graph.to_str().unwrap(), "--device", "tpu"]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(err.contains("possible values: cpu, cuda"), "{err}");
}

#[test]
fn the_gpu_debug_switches_without_a_gpu_run_are_refused_and_write_nothing() {
    let out = scratch("debug-switches");
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    for flag in ["--validate-cpu", "--sync-each-op"] {
        let (code, _, err) = cli(&[
            "run",
            graph.to_str().unwrap(),
            flag,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, ExitCode::from(2), "{flag}: {err}");
        assert!(
            err.starts_with(&format!("error: {flag} checks a GPU run against the CPU")),
            "{flag}: {err}"
        );
        assert!(err.contains("--device cuda"), "{flag}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(&out).map_or(0, |d| d.count()),
        0,
        "no run directory"
    );
}

#[test]
fn a_stream_count_outside_1_to_64_is_refused_by_name() {
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    for bad in ["0", "65", "two"] {
        let (code, _, err) = cli(&["run", graph.to_str().unwrap(), "--streams", bad]);
        assert_eq!(code, ExitCode::from(2), "{bad}: {err}");
        assert!(
            err.contains("--streams") && err.contains("from 1 to 64"),
            "{bad}: {err}"
        );
    }
}

/// The width and height in a PNG's IHDR chunk, after checking the signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 24, "{} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

#[test]
fn a_run_draws_its_curves_and_a_plot_failure_does_not_fail_it() {
    let out = scratch("plot");
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let mut args = vec![
        "run",
        g.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "train.iterations=4",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.checkpoint_every=2",
        "--stop-at",
        "2",
    ];
    args.extend(SMALL);
    let (code, _, err) = cli(&args);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let run = the_run_dir(&out);
    let png = std::fs::read(run.join("metrics.png")).unwrap();
    let (w, h) = png_size(&png);
    // Losses, learning rate and mIoU panels: two columns, two rows, a title bar.
    assert!(w >= 1000 && h >= 600, "{w}×{h}");
    assert!(!err.contains("warning: cannot draw"), "{err}");

    // Something in the way of the plot (a folder where the file goes): the run still finishes,
    // with a warning, and its results are intact.
    std::fs::remove_file(run.join("metrics.png")).unwrap();
    std::fs::create_dir(run.join("metrics.png")).unwrap();
    let (code, _, err) = cli(&["run", "--resume", run.to_str().unwrap()]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(err.contains("warning: cannot draw"), "{err}");
    assert!(run.join("results.json").is_file());
    assert_eq!(losses(&run).len(), 6, "4 iterations and 2 evaluations");
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_mistake_in_a_set_flag_names_the_flag() {
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let g = g.to_str().unwrap();
    for (flag, code) in [
        ("data.batch=abc", "FS0113"),
        ("train.iterations=abc", "FS0002"),
        ("models.student.params.widht=3", "FS0102"),
        ("optim.student.lr=-1", "FS0002"),
    ] {
        let (exit, _, err) = cli(&["check", g, "--set", flag]);
        assert_eq!(exit, ExitCode::from(2), "{flag}: {err}");
        assert!(err.contains(code), "{flag}: {err}");
        assert!(
            err.contains(&format!("(in `--set {flag}`)")),
            "{flag}: {err}"
        );
        // The flag's value is not in the file: no snippet of the file is blamed.
        assert!(!err.contains("supervised.yaml:"), "{flag}: {err}");
    }
}

#[test]
fn a_graph_too_big_for_the_machine_is_refused_by_check() {
    if !Path::new("/proc/meminfo").exists() {
        return; // no memory limit to check against
    }
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let (code, _, err) = cli(&[
        "check",
        g.to_str().unwrap(),
        "--set",
        "models.student.params.width=100000",
    ]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0118") && err.contains("this machine has"),
        "{err}"
    );
    // The evaluation forward is checked too: a held-out crop of 40000² pixels.
    let (code, _, err) = cli(&[
        "check",
        g.to_str().unwrap(),
        "--set",
        "eval.mode=center_crop",
        "--set",
        "eval.crop=40000",
    ]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0118") && err.contains("evaluating"),
        "{err}"
    );
}

#[test]
fn resuming_with_a_changed_graph_is_fs0122_unless_forced() {
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let out = scratch("resume-changed");
    let mut a: Vec<String> = vec!["run".into(), g.to_str().unwrap().into()];
    a.extend(SMALL.iter().map(|s| (*s).to_owned()));
    a.extend(
        [
            "--set",
            "train.iterations=4",
            "--set",
            "train.checkpoint_every=2",
            "--stop-at",
            "2",
            "--out",
        ]
        .map(String::from),
    );
    a.push(out.to_str().unwrap().into());
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = cli(&args);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let run = the_run_dir(&out);
    let before = std::fs::read(run.join("graph.yaml")).unwrap();
    let r = run.to_str().unwrap();
    let (code, _, err) = cli(&["run", "--resume", r, "--set", "optim.student.lr=0.5"]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0122") && err.contains("optim.student.lr=0.5"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("graph.yaml")).unwrap(), before);
    let (code, _, err) = cli(&[
        "run",
        "--resume",
        r,
        "--set",
        "optim.student.lr=0.5",
        "--force",
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert_eq!(
        std::fs::read(run.join("graph.yaml")).unwrap(),
        before,
        "graph.yaml was rewritten"
    );
    let kept = std::fs::read_to_string(run.join("graph.resumed-2.yaml")).unwrap();
    assert!(kept.contains("0.5"), "{kept}");
}

#[test]
fn evaluation_that_cannot_be_set_up_is_fs0119_before_training() {
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let g = g.to_str().unwrap();
    let (code, _, err) = cli(&["check", g, "--set", "models.student.params.classes=5"]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0119") && err.contains("predicts 5 classes"),
        "{err}"
    );
    assert!(
        err.contains("(in `--set models.student.params.classes=5`)"),
        "{err}"
    );
    let (code, _, err) = cli(&[
        "check",
        g,
        "--set",
        "eval.mode=sliding",
        "--set",
        "eval.crop=32",
        "--set",
        "eval.stride=48",
    ]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0119") && err.contains("larger than the window"),
        "{err}"
    );
}

#[test]
fn check_data_codes_every_bad_file_fs0120() {
    let d = scratch("bad-data");
    image::RgbImage::new(16, 16)
        .save(d.join("good.png"))
        .unwrap();
    image::GrayImage::new(16, 16)
        .save(d.join("good_mask.png"))
        .unwrap();
    std::fs::write(d.join("broken.png"), b"not a png at all").unwrap();
    image::GrayImage::new(16, 16)
        .save(d.join("broken_mask.png"))
        .unwrap();
    std::fs::write(
        d.join("train.txt"),
        "good.png good_mask.png\nbroken.png broken_mask.png\ngood.png\n",
    )
    .unwrap();
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let data = format!(
        "data={{ source: manifest, train: {}, classes: 6, crop: 16, batch: 1, labeled: all, workers: 0 }}",
        d.join("train.txt").display()
    );
    let (code, _, err) = cli(&["check", g.to_str().unwrap(), "--set", &data, "--data"]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0120") && err.contains("broken.png"),
        "{err}"
    );
    assert!(err.contains("1 of 3 items are bad"), "{err}");
}

#[test]
fn a_bad_data_section_does_not_hide_the_graphs_other_mistakes() {
    let d = scratch("data-and-op");
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let text = std::fs::read_to_string(&g)
        .unwrap()
        .replace("source: synthetic", "source: synthetc")
        .replace("op: cross_entropy", "op: cross_entropi");
    let bad = d.join("two.yaml");
    std::fs::write(&bad, text).unwrap();
    let (code, _, err) = cli(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0113") && err.contains("FS0101"),
        "both reported: {err}"
    );
    assert!(err.contains("2 errors"), "{err}");
}

#[test]
fn a_schema_mistake_does_not_hide_a_misspelt_op() {
    let d = scratch("schema-and-op");
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
    let text = std::fs::read_to_string(&g)
        .unwrap()
        .replace("lr: 0.004", "lr: fast")
        .replace("op: cross_entropy", "op: cross_entropi");
    let bad = d.join("two.yaml");
    std::fs::write(&bad, &text).unwrap();
    let (code, _, err) = cli(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(
        err.contains("FS0002") && err.contains("FS0101"),
        "both reported: {err}"
    );
    // Each at its own line.
    let op_line = text
        .lines()
        .position(|l| l.contains("cross_entropi"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("two.yaml:{op_line}:")), "{err}");
}

#[test]
fn evaluation_takes_image_models_only() {
    // Left out, `eval.models` is every model that takes an image alone: GCT's detector is
    // skipped (evaluating it would fail FS0119, it has no `probs` to be fed); named, it is
    // FS0123 at its entry.
    let dir = scratch("eval-models");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/gct.yaml"))
            .unwrap();
    let without = text.replace("eval: { models: [student, r], batch: 32 }\n", "");
    assert_ne!(without, text, "graphs/gct.yaml names its evaluated models");
    let g = dir.join("gct-default-eval.yaml");
    std::fs::write(&g, without).unwrap();
    let (code, _, err) = cli(&["check", g.to_str().unwrap(), "--set", "data.size=16"]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let (code, _, err) = cli(&[
        "check",
        g.to_str().unwrap(),
        "--set",
        "data.size=16",
        "--set",
        "eval.models=[student, fd]",
    ]);
    assert_ne!(code, ExitCode::SUCCESS);
    assert!(
        err.contains("FS0123") && err.contains("`fd`") && err.contains("flaw_detector"),
        "{err}"
    );
}
