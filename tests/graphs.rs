//! The method graphs of graphs/, as the results issue asks of each: at toy size every graph
//! trains three iterations with finite losses and logs its metrics; on one fixed batch its main
//! (supervised) loss falls over 30 iterations; and a run of cutmix_seg, fixmatch, cct, cps and
//! pseudoseg interrupted in the middle and resumed reproduces the uninterrupted run bit for bit
//! (losses, metrics, evaluation, final checkpoint).
//!
//! Not here: whether a method beats supervised (docs/RESULTS.md, `flowseg bench methods`), the
//! plan executor on the shipped graphs (ops/tests/shipped_graphs.rs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::graph::Env;
use flowseg_engine::open::open_graph;
use flowseg_engine::train::Trainer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn cli(args: &[String]) -> (ExitCode, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut full = vec!["flowseg".to_owned()];
    full.extend_from_slice(args);
    let code = flowseg::run_cli(full, &[], &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowseg-graphs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn graph(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("graphs")
        .join(format!("{name}.yaml"))
}

/// Every graph in graphs/, by name.
fn all_graphs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Toy-size overrides for a graph: 16×16 synthetic images, 2 per batch (labeled and each
/// unlabeled set), 64 training images, every model of width 8.
fn small(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(graph(name)).unwrap();
    let (spec, _) = flowseg_engine::spec::parse_graph(&text, &[]).unwrap();
    let mut sets = vec![
        "data.size=16".to_owned(),
        "data.batch=2".to_owned(),
        "data.images=64".to_owned(),
        "data.eval_images=4".to_owned(),
    ];
    if text.contains("unlabeled_batch") {
        sets.push("data.unlabeled_batch=2".to_owned());
    }
    // Width 8 for every model that sets a width (the U-Nets; PseudoSeg's heads have none).
    for (model, m) in &spec.models {
        if m.params.as_ref().is_some_and(|p| p.get("width").is_some()) {
            sets.push(format!("models.{}.params.width=8", model.value));
        }
    }
    sets
}

fn args(parts: &[&str], sets: &[String]) -> Vec<String> {
    let mut v: Vec<String> = parts.iter().map(|s| (*s).to_owned()).collect();
    for s in sets {
        v.push("--set".to_owned());
        v.push(s.clone());
    }
    v
}

/// The run directory `out/<name>/<time>` of the only run under `out`.
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

/// metrics.jsonl without the wall-clock times.
fn lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("time_s");
            v
        })
        .collect()
}

#[test]
fn every_graph_trains_three_iterations_with_finite_losses_and_its_metrics() {
    let names = all_graphs();
    for expected in [
        "supervised",
        "supervised_full",
        "fixmatch",
        "cutmix_seg",
        "cps",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "graphs/{expected}.yaml missing"
        );
    }
    for name in names {
        let out = scratch(&format!("three-{name}"));
        let g = graph(&name);
        let mut sets = small(&name);
        sets.push("train.iterations=3".to_owned());
        let a = args(
            &["run", g.to_str().unwrap(), "--out", out.to_str().unwrap()],
            &sets,
        );
        let (code, _, err) = cli(&a);
        assert_eq!(code, ExitCode::SUCCESS, "{name}: {err}");
        let text = std::fs::read_to_string(&g).unwrap();
        let (spec, _) = flowseg_engine::spec::parse_graph(&text, &[]).unwrap();
        let run = the_run_dir(&out);
        let ls = lines(&run);
        assert_eq!(
            ls.len(),
            4,
            "{name}: three iterations and one evaluation: {ls:?}"
        );
        for line in &ls[..3] {
            let obj = line.as_object().unwrap();
            let losses: Vec<f64> = (obj.iter())
                .filter(|(k, _)| k.starts_with("loss/"))
                .map(|(_, v)| v.as_f64().unwrap())
                .collect();
            // Each minimized loss once, however many optimizers list it (CCT's `aux` and
            // `student` share theirs).
            let minimized = (spec.optim.iter())
                .flat_map(|(_, o)| o.minimize.keys().map(|k| k.value.clone()))
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            assert_eq!(losses.len(), minimized, "{name}: {line}");
            assert!(losses.iter().all(|l| l.is_finite()), "{name}: {line}");
            // Every declared metric is logged (a number, or null where it had no pixel).
            for (metric, _) in &spec.metrics {
                let v = &obj[&format!("metric/{}", metric.value)];
                assert!(
                    v.is_null() || v.as_f64().is_some_and(f64::is_finite),
                    "{name}: {line}"
                );
            }
            for (model, _) in &spec.optim {
                assert!(
                    obj[&format!("lr/{}", model.value)].as_f64().is_some(),
                    "{line}"
                );
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// The loss each graph's step must lower first: its supervised loss.
fn main_loss(name: &str) -> &'static str {
    match name {
        "cps" => "sup_a.loss",
        "gct" => "sup_l.loss",
        "pseudoseg" => "sup.loss",
        "supervised" | "supervised_full" => "sup_loss.loss",
        _ => "sup_loss.loss",
    }
}

#[test]
fn on_a_fixed_batch_every_graph_lowers_its_main_loss_in_30_iterations() {
    let registry = flowseg::registry(&[]).unwrap();
    for name in all_graphs() {
        let text = std::fs::read_to_string(graph(&name)).unwrap();
        let mut sets = small(&name);
        sets.push("train.iterations=30".to_owned());
        let (spec, _, mut source) = open_graph(&text, &sets, &registry).unwrap();
        let env = Env {
            batch: source.specs(),
            state: BTreeMap::new(),
            hidden: source.hidden_fields(),
        };
        let mut trainer = Trainer::new(&spec, &registry, &env, BTreeMap::new()).unwrap();
        let batch = source.batch(0).unwrap();
        let want = main_loss(&name);
        let mut curve = Vec::new();
        for it in 0..30 {
            let losses = trainer.step(&batch, it).unwrap();
            let (_, v) = losses
                .iter()
                .find(|(n, _)| n == want)
                .unwrap_or_else(|| panic!("{name}: no loss `{want}` in {losses:?}"));
            curve.push(*v);
        }
        // Mean of the last five against the first: a real descent, not one lucky step.
        let last: f32 = curve[25..].iter().sum::<f32>() / 5.0;
        assert!(
            last < 0.7 * curve[0],
            "{name}: `{want}` went {} → {last} over 30 steps: {curve:?}",
            curve[0]
        );
    }
}

/// Runs `name` for 6 iterations straight, and again stopped after 4 and resumed (the last
/// checkpoint at 3, so iteration 3 is redone); the two must agree bit for bit.
fn resume_matches(name: &str) {
    resume_matches_with(name, &[]);
}

/// [`resume_matches`] with `first_flags` on the interrupted run's command line only.
fn resume_matches_with(name: &str, first_flags: &[&str]) {
    let g = graph(name);
    let mut sets = small(name);
    sets.extend(
        [
            "train.iterations=6",
            "train.checkpoint_every=3",
            "train.eval_every=2",
        ]
        .map(String::from),
    );
    let straight = scratch(&format!("straight-{name}"));
    let a = args(
        &[
            "run",
            g.to_str().unwrap(),
            "--out",
            straight.to_str().unwrap(),
        ],
        &sets,
    );
    assert_eq!(cli(&a).0, ExitCode::SUCCESS);
    let want_dir = the_run_dir(&straight);
    let want = lines(&want_dir);

    let parts = scratch(&format!("parts-{name}"));
    let a = args(
        &[
            "run",
            g.to_str().unwrap(),
            "--out",
            parts.to_str().unwrap(),
            "--stop-at",
            "4",
        ]
        .into_iter()
        .chain(first_flags.iter().copied())
        .collect::<Vec<_>>(),
        &sets,
    );
    assert_eq!(cli(&a).0, ExitCode::SUCCESS);
    let run = the_run_dir(&parts);
    let resume = vec![
        "run".to_owned(),
        "--resume".to_owned(),
        run.to_str().unwrap().to_owned(),
    ];
    let (code, _, err) = cli(&resume);
    assert_eq!(code, ExitCode::SUCCESS, "{name}: {err}");
    assert_eq!(
        lines(&run),
        want,
        "{name}: the resumed run's metrics differ"
    );
    let ckpt = |d: &Path| {
        flowseg_engine::checkpoint::load(&d.join("checkpoints/last.safetensors")).unwrap()
    };
    let (a, b) = (ckpt(&want_dir), ckpt(&run));
    assert_eq!(a.tensors.len(), b.tensors.len(), "{name}");
    for (k, t) in &a.tensors {
        let u = &b.tensors[k];
        let bits = |t: &flowseg_engine::Tensor| {
            t.f32()
                .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        };
        assert_eq!(bits(t), bits(u), "{name}: `{k}` differs after resume");
    }
    std::fs::remove_dir_all(&straight).unwrap();
    std::fs::remove_dir_all(&parts).unwrap();
}

#[test]
fn cutmix_seg_resumes_bit_for_bit() {
    resume_matches("cutmix_seg");
}

#[test]
fn fixmatch_resumes_bit_for_bit() {
    resume_matches("fixmatch");
}

/// The fusion pass changes no value and no state name: a run begun op by op (`--no-fuse`) and
/// resumed with fusion ends where an uninterrupted fused run does.
#[test]
fn a_run_begun_without_fusion_resumes_fused_bit_for_bit() {
    resume_matches_with("supervised", &["--no-fuse"]);
}

/// The step's stream count changes no value: a run begun on a three-stream plan (`--streams 3`,
/// teacher and student branches apart) and resumed on one stream ends where an uninterrupted
/// one-stream run does.
#[test]
fn a_run_begun_on_three_streams_resumes_on_one_bit_for_bit() {
    resume_matches_with("cutmix_seg", &["--streams", "3"]);
}

#[test]
fn cct_resumes_bit_for_bit() {
    resume_matches("cct");
}

#[test]
fn cps_resumes_bit_for_bit() {
    resume_matches("cps");
}

/// Three optimizers (two task models and the flaw detector, Adam state each) and the
/// detector's batch-norm buffers, updated by two forwards per step.
#[test]
fn gct_resumes_bit_for_bit() {
    resume_matches("gct");
}

#[test]
fn pseudoseg_resumes_bit_for_bit() {
    resume_matches("pseudoseg");
}
