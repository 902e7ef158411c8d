//! `bench methods --carry CODE`: the ledger entries of an earlier code counted for this code,
//! graph by graph and dataset by dataset, once replays show that the code change leaves that
//! graph's run on that dataset unchanged. A whole table takes hours; a change that only adds a
//! log line or a new op should not throw it away, and one that changes what a run computes must.
//!
//! The check, for one (graph, dataset): take the earlier code's run of the lowest seed recorded
//! there (its folder is in the ledger) and rerun two windows of it with this code —
//!
//! * **early**: a fresh run of the graph as a job would start it, stopped after its first
//!   evaluation (`--stop-at`): iterations 0..E and the evaluation at E;
//! * **late**: the run resumed from its last periodic checkpoint `iter-C` that an evaluation
//!   follows, stopped after that evaluation: iterations C..E' (the schedules' late part, the
//!   checkpoint format, resuming).
//!
//! Every value the earlier run logged in those windows (losses, metrics, learning rates, the
//! evaluations' per-class IoU; not `time_s`) must come back bit for bit. Values the replay logs
//! beside them (a new instrument) are allowed. Runs are deterministic given code, graph and seed,
//! so a code change that alters the computation shows up as a difference; one that only matters
//! outside both windows, or for another seed only, would not — RESULTS.md names the carried pairs
//! and the check so a reader can weigh that.
//!
//! Where the earlier run's folder is gone (it was on another sitting's machine), the check is a
//! full run of that seed with this code, made as one of the table's runs (bench.rs `Rerun`): its
//! last and best mIoU of every evaluated model must equal the earlier entry's bit for bit. That
//! costs one run in three instead of a few hundred iterations, and sees the whole run.
//!
//! The verdicts are appended to `<results>/carried.jsonl` (one JSON line each) and read by every
//! later invocation, so each pair is checked once per (earlier code, this code).
//!
//! Not here: which jobs are skipped and how the table counts the entries (bench.rs).

use crate::run::RunArgs;
use flowseg_engine::Registry;
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The file of verdicts in the results folder.
pub(crate) const FILE: &str = "carried.jsonl";

/// One verdict: may entries of `from` count as `to` for this graph and dataset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) graph: String,
    pub(crate) dataset: String,
    /// The seed whose run was replayed, and its settings hash.
    pub(crate) seed: u64,
    pub(crate) settings: String,
    pub(crate) identical: bool,
    /// What was compared, or the first difference.
    pub(crate) detail: String,
}

impl Verdict {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "from": self.from,
            "to": self.to,
            "graph": self.graph,
            "dataset": self.dataset,
            "seed": self.seed,
            "settings": self.settings,
            "identical": self.identical,
            "detail": self.detail,
            "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<Verdict> {
        let s = |k: &str| v.get(k)?.as_str().map(str::to_owned);
        Some(Verdict {
            from: s("from")?,
            to: s("to")?,
            graph: s("graph")?,
            dataset: s("dataset")?,
            seed: v.get("seed")?.as_u64()?,
            settings: s("settings")?,
            identical: v.get("identical")?.as_bool()?,
            detail: s("detail").unwrap_or_default(),
        })
    }
}

/// The verdicts recorded in `results`; unreadable lines are skipped (they carry nothing).
pub(crate) fn read(results: &Path) -> Vec<Verdict> {
    fs::read_to_string(results.join(FILE))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter_map(|v| Verdict::from_json(&v))
                .collect()
        })
        .unwrap_or_default()
}

/// Appends one verdict (synced: a later invocation relies on it).
pub(crate) fn append(results: &Path, v: &Verdict) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results.join(FILE))?;
    writeln!(f, "{}", v.to_json())?;
    f.sync_all()
}

/// The earlier codes whose entries count as `to` for (graph, dataset): those a verdict carried
/// into `to`, and, transitively, those carried into them (a table carried from d70c07d to
/// 866e453 and then to a later code keeps d70c07d's entries).
pub(crate) fn sources(
    verdicts: &[Verdict],
    to: &str,
    graph: &str,
    dataset: &str,
) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut frontier = vec![to.to_owned()];
    while let Some(code) = frontier.pop() {
        for v in verdicts
            .iter()
            .filter(|v| v.identical && v.to == code && v.graph == graph && v.dataset == dataset)
        {
            if v.from != to && found.insert(v.from.clone()) {
                frontier.push(v.from.clone());
            }
        }
    }
    found
}

/// One metrics.jsonl line: its iteration and its object.
type Line = (u64, serde_json::Map<String, serde_json::Value>);

fn read_metrics(path: &Path) -> Result<Vec<Line>, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            let it = v.get("iteration").and_then(serde_json::Value::as_u64);
            match (it, v) {
                (Some(it), serde_json::Value::Object(m)) => Ok((it, m)),
                _ => Err(format!("{}:{}: no `iteration`", path.display(), i + 1)),
            }
        })
        .collect()
}

fn is_eval(line: &Line) -> bool {
    line.1.keys().any(|k| k.starts_with("eval/"))
}

/// Every value of `original`'s lines with an iteration in `from..to` (in order; `time_s` left
/// out) must be in the replay's line at the same place, bit for bit. Returns the number of values
/// compared, or the first difference.
pub(crate) fn compare(
    original: &[Line],
    replay: &[Line],
    from: u64,
    to: u64,
) -> Result<usize, String> {
    let window = |v: &'_ [Line]| -> Vec<Line> {
        v.iter()
            .filter(|(it, _)| (from..to).contains(it))
            .cloned()
            .collect()
    };
    let (a, b) = (window(original), window(replay));
    if a.is_empty() {
        return Err(format!(
            "the earlier run logged nothing in iterations {from}..{to}"
        ));
    }
    let mut compared = 0;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x.0 != y.0 || is_eval(x) != is_eval(y) {
            return Err(format!(
                "line {} of the window: the earlier run logged {} of iteration {}, the replay {} of \
                 iteration {}",
                i + 1,
                if is_eval(x) { "an evaluation" } else { "a step" },
                x.0,
                if is_eval(y) { "an evaluation" } else { "a step" },
                y.0
            ));
        }
        for (k, v) in &x.1 {
            // The iteration is compared above; the clock is not the computation.
            if k == "time_s" || k == "iteration" {
                continue;
            }
            match y.1.get(k) {
                Some(w) if w == v => compared += 1,
                Some(w) => {
                    return Err(format!(
                        "iteration {}: `{k}` was {v}, the replay gives {w}",
                        x.0
                    ))
                }
                None => return Err(format!("iteration {}: the replay logs no `{k}`", x.0)),
            }
        }
    }
    if a.len() != b.len() {
        return Err(format!(
            "iterations {from}..{to}: the earlier run logged {} lines, the replay {}",
            a.len(),
            b.len()
        ));
    }
    Ok(compared)
}

/// What to replay: the earlier run's folder, and the graph file and overrides a job of this code
/// would run it with.
pub(crate) struct Replay<'a> {
    pub(crate) original: &'a Path,
    pub(crate) graph: &'a Path,
    pub(crate) sets: &'a [String],
    /// A fresh folder for the replays' run folders.
    pub(crate) scratch: PathBuf,
}

/// Runs both windows and compares them. `Ok((identical, detail))`; `Err` when the replay could
/// not be made (the earlier run's folder is gone, a run failed), which decides nothing.
pub(crate) fn replay(
    r: &Replay<'_>,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(bool, String), String> {
    let original = read_metrics(&r.original.join("metrics.jsonl"))?;
    let first_eval = original.iter().find(|l| is_eval(l)).map(|l| l.0);
    let Some(e) = first_eval else {
        return Err(format!(
            "{} logs no evaluation: nothing to compare the results with",
            r.original.display()
        ));
    };
    let mut details = Vec::new();

    // Early window: a fresh run, stopped after the first evaluation.
    let early = r.scratch.join("early");
    let args = RunArgs {
        graph: Some(r.graph.to_path_buf()),
        set: r.sets.to_vec(),
        resume: None,
        force: false,
        out: early.clone(),
        strict: false,
        stop_at: Some(e + 1),
        device: crate::device::DeviceArg::Cpu,
        no_fuse: false,
        streams: 1,
        sync_each_op: false,
        validate_cpu: false,
    };
    if crate::run::run(&args, registry, out, err, false) != ExitCode::SUCCESS {
        return Err("the early replay failed (its messages are above)".into());
    }
    let dir = only_run_folder(&early)?;
    match compare(
        &original,
        &read_metrics(&dir.join("metrics.jsonl"))?,
        0,
        e + 1,
    ) {
        Ok(n) => details.push(format!(
            "iterations 0..{} and the evaluation: {n} values",
            e + 1
        )),
        Err(d) => return Ok((false, d)),
    }

    // Late window: resumed from the last periodic checkpoint an evaluation follows.
    let late_start = checkpoints(r.original).into_iter().rev().find_map(|c| {
        original
            .iter()
            .find(|l| is_eval(l) && l.0 >= c)
            .map(|l| (c, l.0))
    });
    match late_start {
        None => details.push("no periodic checkpoint to resume from: early window only".into()),
        Some((c, e2)) => {
            let late = r.scratch.join("late");
            fs::create_dir_all(late.join("checkpoints"))
                .map_err(|x| format!("cannot create {}: {x}", late.display()))?;
            let copy = |from: PathBuf, to: PathBuf| {
                fs::copy(&from, &to)
                    .map(drop)
                    .map_err(|x| format!("cannot copy {} to {}: {x}", from.display(), to.display()))
            };
            copy(r.original.join("graph.yaml"), late.join("graph.yaml"))?;
            copy(
                r.original
                    .join("checkpoints")
                    .join(format!("iter-{c}.safetensors")),
                late.join("checkpoints").join("last.safetensors"),
            )?;
            let args = RunArgs {
                graph: None,
                set: Vec::new(),
                resume: Some(late.clone()),
                force: false,
                out: r.scratch.clone(),
                strict: false,
                stop_at: Some(e2 + 1),
                device: crate::device::DeviceArg::Cpu,
                no_fuse: false,
                streams: 1,
                sync_each_op: false,
                validate_cpu: false,
            };
            if crate::run::run(&args, registry, out, err, false) != ExitCode::SUCCESS {
                return Err("the late replay failed (its messages are above)".into());
            }
            match compare(
                &original,
                &read_metrics(&late.join("metrics.jsonl"))?,
                c,
                e2 + 1,
            ) {
                Ok(n) => details.push(format!(
                    "iterations {c}..{} resumed from iter-{c} and the evaluation: {n} values",
                    e2 + 1
                )),
                Err(d) => return Ok((false, d)),
            }
        }
    }
    Ok((true, details.join("; ")))
}

/// The iterations of `dir`'s periodic checkpoints (`checkpoints/iter-<N>.safetensors`), sorted.
fn checkpoints(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(dir.join("checkpoints"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("iter-")?
                        .strip_suffix(".safetensors")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The one run folder `flowseg run --out base` made (base/<graph name>/<timestamp>).
fn only_run_folder(base: &Path) -> Result<PathBuf, String> {
    let mut found = Vec::new();
    for name in fs::read_dir(base).into_iter().flatten().flatten() {
        for run in fs::read_dir(name.path()).into_iter().flatten().flatten() {
            found.push(run.path());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "expected one run folder under {}, found {}",
            base.display(),
            found.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(serde_json::Value::Object(m)) => (
                    m.get("iteration")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(u64::MAX),
                    m,
                ),
                _ => panic!("bad line {l}"),
            })
            .collect()
    }

    const ORIGINAL: &str = r#"{"iteration":0,"loss/a":2.5,"lr/m":0.004,"time_s":0.4}
{"iteration":1,"loss/a":2.25,"lr/m":0.0039,"time_s":0.7}
{"iteration":1,"eval/m/miou":0.5,"eval/m/iou":[0.9,0.1]}
{"iteration":2,"loss/a":2.0,"lr/m":0.0038,"time_s":1.0}"#;

    #[test]
    fn identical_windows_compare_every_value_but_time() {
        let replay = ORIGINAL.replace("0.4}", "9.9}").replace("1.0}", "3.0}");
        assert_eq!(compare(&lines(ORIGINAL), &lines(&replay), 0, 2), Ok(6));
        assert_eq!(compare(&lines(ORIGINAL), &lines(&replay), 0, 3), Ok(8));
        assert_eq!(compare(&lines(ORIGINAL), &lines(&replay), 2, 3), Ok(2));
    }

    #[test]
    fn extra_values_in_the_replay_are_allowed() {
        let replay = ORIGINAL.replace(r#""lr/m":0.0039,"#, r#""lr/m":0.0039,"metric/new":1,"#);
        assert_eq!(compare(&lines(ORIGINAL), &lines(&replay), 0, 2), Ok(6));
    }

    #[test]
    fn a_changed_missing_or_moved_value_is_a_difference() {
        let changed = ORIGINAL.replace("2.25", "2.2500000000000004");
        let d = compare(&lines(ORIGINAL), &lines(&changed), 0, 2).unwrap_err();
        assert!(d.contains("iteration 1: `loss/a` was 2.25"), "{d}");

        let iou = ORIGINAL.replace("[0.9,0.1]", "[0.9,0.2]");
        let d = compare(&lines(ORIGINAL), &lines(&iou), 0, 2).unwrap_err();
        assert!(d.contains("eval/m/iou"), "{d}");

        let missing = ORIGINAL.replace(r#""lr/m":0.0039,"#, "");
        let d = compare(&lines(ORIGINAL), &lines(&missing), 0, 2).unwrap_err();
        assert!(d.contains("the replay logs no `lr/m`"), "{d}");

        // The replay stopped before the evaluation.
        let short: String = ORIGINAL.lines().take(2).collect::<Vec<_>>().join("\n");
        let d = compare(&lines(ORIGINAL), &lines(&short), 0, 2).unwrap_err();
        assert!(d.contains("3 lines, the replay 2"), "{d}");

        // An evaluation where a step was logged.
        let swapped: String = {
            let v: Vec<&str> = ORIGINAL.lines().collect();
            [v[0], v[2], v[1], v[3]].join("\n")
        };
        let d = compare(&lines(ORIGINAL), &lines(&swapped), 0, 2).unwrap_err();
        assert!(d.contains("the replay an evaluation"), "{d}");

        // Nothing logged in the window decides nothing good.
        assert!(compare(&lines(ORIGINAL), &lines(ORIGINAL), 5, 9).is_err());
    }

    /// A tiny supervised run with periodic checkpoints, replayed: both windows identical; a
    /// logged value changed in either window is found.
    #[test]
    fn replays_reproduce_a_run_and_find_a_changed_value_in_either_window() {
        let base = std::env::temp_dir().join(format!("flowseg-carry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let mut registry = flowseg_ops::builtin_registry().expect("the built-in ops");
        flowseg_sources::register_builtin_sources(&mut registry).expect("the built-in sources");
        let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml");
        // A tiny budget (as `bench methods --quick`), with periodic checkpoints for the late
        // window.
        let sets: Vec<String> = [
            "train.iterations=6",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "data.images=32",
            "data.eval_images=8",
            "data.size=32",
            "data.batch=2",
            "data.workers=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = RunArgs {
            graph: Some(graph.clone()),
            set: sets.clone(),
            resume: None,
            force: false,
            out: base.join("original"),
            strict: false,
            stop_at: None,
            device: crate::device::DeviceArg::Cpu,
            no_fuse: false,
            streams: 1,
            sync_each_op: false,
            validate_cpu: false,
        };
        let code = crate::run::run(&args, &registry, &mut out, &mut err, false);
        assert_eq!(code, ExitCode::SUCCESS, "{}", String::from_utf8_lossy(&err));
        let original = only_run_folder(&base.join("original")).expect("one run folder");
        assert_eq!(checkpoints(&original), [2, 4, 6]);

        let mut attempt = 0;
        let mut check = |out: &mut Vec<u8>, err: &mut Vec<u8>| {
            attempt += 1;
            let r = Replay {
                original: &original,
                graph: &graph,
                sets: &sets,
                scratch: base.join(format!("replay{attempt}")),
            };
            replay(&r, &registry, out, err).expect("the replay runs")
        };
        let (identical, detail) = check(&mut out, &mut err);
        assert!(identical, "{detail}");
        assert!(
            detail.contains("iterations 0..2 and the evaluation"),
            "{detail}"
        );
        assert!(
            detail.contains("iterations 4..6 resumed from iter-4"),
            "{detail}"
        );

        // One loss of the early window, then one of the late window, as an earlier code might
        // have logged them.
        let metrics = original.join("metrics.jsonl");
        let text = fs::read_to_string(&metrics).expect("metrics");
        for it in [0, 5] {
            let key = format!("{{\"iteration\":{it},\"loss/");
            let start = text.find(&key).expect("a step line") + key.len();
            let colon = start + text[start..].find(':').expect("a value");
            let changed = format!(
                "{}:12.5,{}",
                &text[..colon],
                &text[colon + 1..].split_once(',').expect("more keys").1
            );
            fs::write(&metrics, &changed).expect("write");
            let (identical, detail) = check(&mut out, &mut err);
            assert!(!identical, "iteration {it}: {detail}");
            assert!(
                detail.contains(&format!("iteration {it}: `loss/")),
                "{detail}"
            );
            assert!(detail.contains("was 12.5"), "{detail}");
        }
        fs::remove_dir_all(&base).expect("clean up");
    }

    #[test]
    fn only_identical_verdicts_of_this_code_carry() {
        let v = |from: &str, to: &str, identical| Verdict {
            from: from.into(),
            to: to.into(),
            graph: "g".into(),
            dataset: "d".into(),
            seed: 0,
            settings: "s".into(),
            identical,
            detail: String::new(),
        };
        let all = [
            v("a", "now", true),
            v("b", "now", false),
            v("c", "later", true),
        ];
        let got: Vec<String> = sources(&all, "now", "g", "d").into_iter().collect();
        assert_eq!(got, ["a"]);
        assert!(sources(&all, "now", "other", "d").is_empty());
        let back = Verdict::from_json(&all[0].to_json());
        assert_eq!(back.as_ref(), Some(&all[0]));
    }
}
