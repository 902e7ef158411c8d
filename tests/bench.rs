//! `flowseg bench methods` end to end, in-process through `run_cli`, on temporary folders (never
//! docs/): `--quick` trains every graph of graphs/ once, appends one ledger line each, writes a
//! well-formed results table (one row per graph, numbers that parse) between the markers of the
//! page without touching the prose around them, and the figure as a PNG; a second invocation
//! skips every run. Bad flags, and a graph to run that does not parse, exit 2 before anything is
//! written (a broken graph that is not to run only warns); `--dry-run` writes nothing.
//!
//! Not here: full-budget runs (the benchmark itself), m2nist (needs data/m2nist).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

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

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowseg-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The graph names of graphs/, sorted.
fn graph_names() -> Vec<String> {
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

/// `["--runs", d/runs, "--results", d/results, "--out", d/RESULTS.md]`.
fn dirs(d: &Path) -> Vec<String> {
    vec![
        "--runs".into(),
        d.join("runs").display().to_string(),
        "--results".into(),
        d.join("results").display().to_string(),
        "--out".into(),
        d.join("RESULTS.md").display().to_string(),
    ]
}

fn bench(d: &Path, extra: &[&str]) -> (ExitCode, String, String) {
    let owned = dirs(d);
    let mut args: Vec<&str> = vec!["bench", "methods"];
    args.extend(owned.iter().map(String::as_str));
    args.extend_from_slice(extra);
    cli(&args)
}

/// A "mean" or "mean ± std" cell as numbers.
fn mean_pm(cell: &str) -> (f64, Option<f64>) {
    match cell.split_once('±') {
        Some((m, s)) => (m.trim().parse().unwrap(), Some(s.trim().parse().unwrap())),
        None => (cell.trim().parse().unwrap(), None),
    }
}

#[test]
fn quick_bench_writes_the_table_and_figure_then_reuses_the_ledger() {
    let d = scratch("quick");
    let prose_before = "# Results\n\nHow the benchmark is set up.\n\n";
    let prose_after = "\n\nNotes written by hand.\n";
    std::fs::write(
        d.join("RESULTS.md"),
        format!("{prose_before}<!-- results:begin -->\nstale\n<!-- results:end -->{prose_after}"),
    )
    .unwrap();

    let (code, out, err) = bench(&d, &["--quick"]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    let names = graph_names();
    assert!(
        out.contains(&format!("{} to run, 0 skipped", names.len())),
        "{out}"
    );

    // The ledger: one line per graph, each with the fields the table is built from.
    let ledger = std::fs::read_to_string(d.join("results/ledger.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), names.len(), "{ledger}");
    for e in &lines {
        for key in [
            "graph",
            "dataset",
            "seed",
            "reported_model",
            "models",
            "wall_s",
            "iterations",
            "commit",
            "dirty",
            "code",
            "settings",
            "time",
            "command",
        ] {
            assert!(e.get(key).is_some(), "no `{key}` in {e}");
        }
        assert_eq!(e["dataset"], "synthetic");
        assert_eq!(e["iterations"], 4);
        let reported = e["reported_model"].as_str().unwrap();
        let last = e["models"][reported]["last"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&last), "{e}");
        let run_dir = PathBuf::from(e["run_dir"].as_str().unwrap());
        assert!(run_dir.starts_with(d.join("runs/synthetic")), "{run_dir:?}");
        assert!(run_dir.join("metrics.png").is_file());
    }

    // The page: prose kept, one table with a row per graph of graphs/.
    let page = std::fs::read_to_string(d.join("RESULTS.md")).unwrap();
    assert!(page.starts_with(prose_before), "{page}");
    assert!(page.ends_with(prose_after), "{page}");
    assert!(!page.contains("stale"), "{page}");
    assert_eq!(page.matches("<!-- results:begin -->").count(), 1);
    let header = page
        .lines()
        .find(|l| l.starts_with("| method |"))
        .unwrap_or_else(|| panic!("no table header in {page}"));
    let columns: Vec<&str> = header.split('|').map(str::trim).collect();
    assert_eq!(columns.len(), 11, "{header}");
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("no column `{name}` in {header}"))
    };
    let (c_runs, c_last, c_best, c_wall) =
        (col("runs"), col("last mIoU"), col("best mIoU"), col("wall"));
    let (c_gain, c_paired) = (col("gain over"), col("gain per seed"));
    let rows: Vec<Vec<&str>> = page
        .lines()
        .skip_while(|l| !l.starts_with("| method |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    let mut shown: Vec<String> = rows.iter().map(|r| r[1].to_owned()).collect();
    assert_eq!(shown[0], "supervised", "the baseline first");
    shown.sort();
    assert_eq!(shown, names);
    for r in &rows {
        assert_eq!(r.len(), columns.len(), "{r:?}");
        assert_eq!(r[c_runs], "1", "{r:?}");
        let (last, std) = mean_pm(r[c_last]);
        assert!((0.0..=100.0).contains(&last) && std.is_none(), "{r:?}");
        let (best, _) = mean_pm(r[c_best]);
        assert!(best >= last - 1e-9, "{r:?}");
        let wall: f64 = r[c_wall].parse().unwrap();
        assert!(wall >= 0.0);
        // One seed each: the paired gain is the gain, and says whether that seed gained.
        if r[1] == "supervised" {
            assert_eq!((r[c_gain], r[c_paired]), ("—", "—"), "{r:?}");
        } else {
            let (paired, count) = r[c_paired].split_once(" (").unwrap();
            assert_eq!(paired, r[c_gain], "{r:?}");
            let gained = if paired.starts_with('+') && paired != "+0.0" {
                "1"
            } else {
                "0"
            };
            assert!(
                count == format!("{gained}/1 > 0)") || paired.ends_with("0.0"),
                "{r:?}"
            );
        }
    }
    assert!(
        page.contains("![") && page.contains("results/methods.png"),
        "{page}"
    );
    let png = std::fs::read(d.join("results/methods.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // Again: everything is in the ledger for this code and these settings.
    let (code, out, err) = bench(&d, &["--quick"]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    assert!(
        out.contains(&format!("0 to run, {} skipped", names.len())),
        "{out}"
    );
    assert_eq!(out.matches("\n  skip  ").count(), names.len(), "{out}");
    assert_eq!(
        std::fs::read_to_string(d.join("results/ledger.jsonl")).unwrap(),
        ledger
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_flags_exit_2_before_anything_runs_and_dry_runs_write_nothing() {
    let d = scratch("bad");
    for (args, want) in [
        (vec!["--graphs", "supervised,nope"], "no graph `nope`"),
        (
            vec!["--datasets", "synthetic,imagenet"],
            "unknown dataset `imagenet`",
        ),
        (vec!["--seeds", "0,x"], "--seeds"),
        (vec!["--seeds", "1,1"], "seed 1 is given twice"),
        (
            vec!["--quick", "--datasets", "m2nist"],
            "--quick runs on `synthetic` only",
        ),
    ] {
        let (code, _, err) = bench(&d, &args);
        assert_eq!(code, ExitCode::from(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A graph that does not parse: an error when it is to run, a warning when it is not.
    let gdir = std::env::temp_dir().join(format!("flowseg-bench-graphs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&gdir);
    std::fs::create_dir_all(&gdir).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("graphs/supervised.yaml"),
        gdir.join("supervised.yaml"),
    )
    .unwrap();
    std::fs::write(gdir.join("broken.yaml"), "name: broken\nnodes: [\n").unwrap();
    let g = gdir.to_str().unwrap();
    let (code, _, err) = bench(&d, &["--quick", "--dry-run", "--graphs-dir", g]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(err.contains("broken.yaml"), "{err}");
    let only = [
        "--quick",
        "--dry-run",
        "--graphs-dir",
        g,
        "--graphs",
        "supervised",
    ];
    let (code, out, err) = bench(&d, &only);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(
        err.contains("warning: graph `broken` does not parse"),
        "{err}"
    );
    assert!(out.contains("1 to run"), "{out}");
    std::fs::remove_dir_all(&gdir).unwrap();

    let (code, out, err) = bench(&d, &["--quick", "--dry-run", "--graphs", "supervised"]);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.contains("  run   synthetic  supervised"), "{out}");
    assert!(out.contains("1 to run, 0 skipped"), "{out}");
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        0,
        "nothing written by bad flags or a dry run"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--carry`: a run recorded under another code counts for this one only after a replay gives
/// every logged value back; a changed value sends the job back to the queue.
#[test]
fn carry_counts_an_earlier_codes_run_only_when_a_replay_reproduces_it() {
    let d = scratch("carry");
    let one = ["--quick", "--graphs", "supervised"];
    let (code, out, err) = bench(&d, &one);
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    let ledger_path = d.join("results/ledger.jsonl");
    let measured = std::fs::read_to_string(&ledger_path).unwrap();
    let entry: serde_json::Value = serde_json::from_str(measured.trim()).unwrap();
    let now = entry["code"].as_str().unwrap().to_owned();

    // As if an earlier code had measured it.
    let earlier = "0123456789abcdef0123456789abcdef01234567";
    let as_earlier = measured.replace(&now, earlier);
    std::fs::write(&ledger_path, &as_earlier).unwrap();
    let (_, out, _) = bench(&d, &[&one[..], &["--dry-run"]].concat());
    assert!(out.contains("1 to run, 0 skipped"), "{out}");
    let (code, out, err) = bench(
        &d,
        &[&one[..], &["--dry-run", "--carry", "0123456"]].concat(),
    );
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    assert!(
        out.contains("replay synthetic / supervised / seed 0 of code 0123456789ab"),
        "{out}"
    );
    assert!(
        out.contains("carry from code 0123456789ab")
            && out.contains("skipped if its replay is identical"),
        "{out}"
    );
    assert!(!d.join("results/carried.jsonl").exists());

    let (code, out, err) = bench(&d, &[&one[..], &["--carry", "0123456"]].concat());
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    assert!(
        out.contains("identical, its entries count for this code"),
        "{out}"
    );
    assert!(
        out.contains("0 to run, 1 skipped") && out.contains("1 of them carried"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&ledger_path).unwrap(), as_earlier);
    let page = std::fs::read_to_string(d.join("RESULTS.md")).unwrap();
    assert!(
        page.contains("carried from code `0123456789ab` (`--carry`): supervised"),
        "{page}"
    );
    let row = page
        .lines()
        .find(|l| l.starts_with("| supervised |"))
        .unwrap();
    assert!(row.starts_with("| supervised | 1 |"), "{row}");
    // The verdict is kept: a plain invocation counts the entry too.
    let (_, out, _) = bench(&d, &one);
    assert!(out.contains("0 to run, 1 skipped"), "{out}");

    // Another earlier code whose run logged a different loss: rerun.
    let other = "fedcba9876543210fedcba9876543210fedcba98";
    std::fs::write(&ledger_path, measured.replace(&now, other)).unwrap();
    let metrics =
        std::path::PathBuf::from(entry["run_dir"].as_str().unwrap()).join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let mut first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let key = first
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("loss/"))
        .unwrap()
        .clone();
    first[&key] = serde_json::json!(first[&key].as_f64().unwrap() + 1.0);
    let rest: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&metrics, format!("{first}\n{}\n", rest.join("\n"))).unwrap();
    let (code, out, err) = bench(&d, &[&one[..], &["--carry", "fedcba98"]].concat());
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    assert!(out.contains("differs, its runs are rerun"), "{out}");
    assert!(out.contains(&format!("iteration 0: `{key}` was")), "{out}");
    assert!(out.contains("1 to run, 0 skipped"), "{out}");
    let lines = std::fs::read_to_string(&ledger_path)
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 2, "the rerun appends its entry");

    // Flags naming no code of the ledger.
    let (code, _, err) = bench(&d, &[&one[..], &["--carry", "zzz"]].concat());
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("nor a carry verdict has a code starting with `zzz`"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--carry` where the earlier run's folder is gone (another sitting's machine): the lowest seed
/// runs first in full, and the other seeds' earlier entries count only if its last and best mIoU
/// come back bit for bit; a verdict chain carries entries through several codes.
#[test]
fn carry_reruns_one_seed_in_full_when_the_earlier_folder_is_gone() {
    let d = scratch("carry-rerun");
    let two = ["--quick", "--graphs", "supervised", "--seeds", "0,1"];
    let (code, out, err) = bench(&d, &two);
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    let ledger_path = d.join("results/ledger.jsonl");
    let measured = std::fs::read_to_string(&ledger_path).unwrap();
    let first: serde_json::Value = serde_json::from_str(measured.lines().next().unwrap()).unwrap();
    let now = first["code"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(d.join("runs")).unwrap();

    // As if an earlier code had measured both seeds on a machine whose folders are gone.
    let earlier = "0123456789abcdef0123456789abcdef01234567";
    std::fs::write(&ledger_path, measured.replace(&now, earlier)).unwrap();
    let carry = [&two[..], &["--carry", "0123456"]].concat();
    let (code, out, err) = bench(&d, &[&carry[..], &["--dry-run"]].concat());
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    assert!(
        out.contains("its folder") && out.contains("is gone"),
        "{out}"
    );
    assert!(
        out.contains("the carry check: its result must be the earlier run's")
            && out.contains("skipped if the carry check's rerun reproduces its seed"),
        "{out}"
    );
    let (code, out, err) = bench(&d, &carry);
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    assert!(
        out.contains("reproduced, the earlier code's other seeds count"),
        "{out}"
    );
    assert!(
        out.contains("skip synthetic / supervised / seed 1: carried from code 0123456789ab"),
        "{out}"
    );
    let lines = std::fs::read_to_string(&ledger_path).unwrap();
    assert_eq!(
        lines.lines().count(),
        3,
        "seed 0's rerun appends its entry, seed 1 none"
    );
    let page = std::fs::read_to_string(d.join("RESULTS.md")).unwrap();
    let row = page
        .lines()
        .find(|l| l.starts_with("| supervised |"))
        .unwrap();
    assert!(row.starts_with("| supervised | 2 |"), "{row}");
    assert!(page.contains("rerun in full"), "{page}");

    // A chain: entries of an older code carried into `earlier` count for this code too.
    let older = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let verdicts = std::fs::read_to_string(d.join("results/carried.jsonl")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(verdicts.trim()).unwrap();
    v["from"] = older.into();
    v["to"] = earlier.into();
    std::fs::write(d.join("results/carried.jsonl"), format!("{verdicts}{v}\n")).unwrap();
    let seed1 = measured.lines().nth(1).unwrap().replace(&now, older);
    std::fs::write(
        &ledger_path,
        format!("{}\n{seed1}\n", lines.lines().nth(2).unwrap()),
    )
    .unwrap();
    let (_, out, _) = bench(&d, &[&two[..], &["--dry-run"]].concat());
    assert!(
        out.contains("0 to run, 2 skipped") && out.contains("carried from code aaaaaaaaaaaa"),
        "{out}"
    );

    // An earlier result that the rerun does not reproduce: the other seed runs again.
    let d2 = scratch("carry-rerun-differs");
    let mut e0 = first.clone();
    e0["code"] = earlier.into();
    let reported = e0["reported_model"].as_str().unwrap().to_owned();
    let last = e0["models"][&reported]["last"].as_f64().unwrap();
    e0["models"][&reported]["last"] = serde_json::json!(last + 1e-9);
    e0["run_dir"] = "/nonexistent/flowseg-run".into();
    let e1 = measured.lines().nth(1).unwrap().replace(&now, earlier);
    std::fs::create_dir_all(d2.join("results")).unwrap();
    std::fs::write(d2.join("results/ledger.jsonl"), format!("{e0}\n{e1}\n")).unwrap();
    let (code, out, err) = bench(&d2, &carry);
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    assert!(out.contains("differs, its other seeds are rerun"), "{out}");
    assert!(
        out.contains(&format!("`{reported}` last mIoU was")),
        "{out}"
    );
    let n = std::fs::read_to_string(d2.join("results/ledger.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(n, 4, "both seeds rerun");
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&d2).unwrap();
}

/// A graph file whose whole-line comments changed keeps its runs (the runs of a committed
/// version that differs only there count); a changed value, even with a comment beside it, does
/// not.
#[test]
fn editing_a_graphs_comments_keeps_its_runs() {
    let d = scratch("comments");
    let repo = d.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let graph = repo.join("supervised.yaml");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/supervised.yaml"),
    )
    .unwrap();
    std::fs::write(&graph, &shipped).unwrap();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "supervised.yaml"]);
    git(&["commit", "-q", "-m", "v1"]);
    let flags = ["--quick", "--graphs-dir", repo.to_str().unwrap()];
    let (code, out, err) = bench(&d, &flags);
    assert_eq!(code, ExitCode::SUCCESS, "{out}\n{err}");
    let dry = [&flags[..], &["--dry-run"]].concat();

    // A new header line and a reworded comment, not committed: the run still counts.
    let commented = format!(
        "# what differs from the official code, and why\n{}",
        shipped
    )
    .replacen("\n#", "\n# (reworded)", 1);
    std::fs::write(&graph, &commented).unwrap();
    let (_, out, _) = bench(&d, &dry);
    assert!(out.contains("0 to run, 1 skipped"), "{out}");
    // Nothing to run: no warning about the uncommitted file.
    assert!(!out.contains("uncommitted"), "{out}");

    // A value changed: its runs no longer count.
    assert!(
        shipped.contains("iterations: 1500"),
        "the test edits this value"
    );
    let changed = commented.replacen("iterations: 1500", "iterations: 1501", 1);
    std::fs::write(&graph, &changed).unwrap();
    let (_, out, _) = bench(&d, &dry);
    assert!(out.contains("1 to run, 0 skipped"), "{out}");
    // The file about to run is not committed as it is: the harness says so before the run.
    assert!(
        out.contains("supervised.yaml has uncommitted changes"),
        "{out}"
    );
    git(&["commit", "-q", "-am", "v2"]);
    let (_, out, _) = bench(&d, &dry);
    assert!(out.contains("1 to run, 0 skipped"), "{out}");
    assert!(!out.contains("uncommitted"), "{out}");
    std::fs::remove_dir_all(&d).unwrap();
}
