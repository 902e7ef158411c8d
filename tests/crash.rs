//! A run killed at any moment (SIGKILL: no destructor, no flush) and resumed from its last
//! checkpoint ends with exactly the checkpoint of a run that was never interrupted, byte for
//! byte — checkpoints are written atomically and deterministically, and a resumed run draws the
//! same batches and random streams. The real binary runs FixMatch (augmentations, cutout and
//! confidence masks drawn every step) in a child process with a checkpoint after every
//! iteration, so kills land during checkpoint writes too; it is killed at several points of a
//! short run; where it died before its first checkpoint, it starts afresh.
//!
//! Not here: resuming after `--stop-at` (tests/run.rs), the bits of every shipped graph
//! (tests/graphs.rs).

#![allow(clippy::unwrap_used, reason = "test helpers; a panic is the report")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_flowseg");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowseg-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `flowseg run` of the FixMatch graph at toy size, writing under `out`.
fn run_args(out: &Path) -> Vec<String> {
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/fixmatch.yaml");
    let mut a: Vec<String> = vec!["run".into(), g.to_str().unwrap().into()];
    for set in [
        "data.size=16",
        "data.batch=2",
        "data.unlabeled_batch=2",
        "models.student.params.width=8",
        "train.iterations=12",
        "train.checkpoint_every=1",
        "train.eval_every=0",
    ] {
        a.push("--set".into());
        a.push(set.into());
    }
    a.push("--out".into());
    a.push(out.to_str().unwrap().into());
    a
}

/// The one run directory under `out` (`<out>/fixmatch/<time>`), if any.
fn run_dir(out: &Path) -> Option<PathBuf> {
    std::fs::read_dir(out.join("fixmatch"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
}

#[test]
fn a_killed_run_resumed_ends_with_the_uninterrupted_checkpoint() {
    let straight = scratch("straight");
    let started = std::time::Instant::now();
    let status = Command::new(BIN)
        .args(run_args(&straight))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // Kill points at fractions of the whole run, so they land mid-run on any machine.
    let whole = started.elapsed().as_millis() as u64;
    let want = std::fs::read(
        run_dir(&straight)
            .unwrap()
            .join("checkpoints/last.safetensors"),
    )
    .unwrap();

    let mut resumed = 0;
    for (i, percent) in [15u64, 35, 50, 65, 80, 95].into_iter().enumerate() {
        let kill_after_ms = whole * percent / 100;
        let out = scratch(&format!("killed{i}"));
        let mut child = Command::new(BIN)
            .args(run_args(&out))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        let _ = child.kill(); // SIGKILL; it may have finished already
        let _ = child.wait();
        let resumable = run_dir(&out).filter(|d| d.join("checkpoints/last.safetensors").exists());
        resumed += usize::from(resumable.is_some());
        let finished = match &resumable {
            Some(dir) => Command::new(BIN)
                .args(["run", "--resume", dir.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap(),
            // Died before its first checkpoint: nothing to resume, start afresh.
            None => {
                let _ = std::fs::remove_dir_all(&out);
                Command::new(BIN)
                    .args(run_args(&out))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap()
            }
        };
        assert!(
            finished.success(),
            "kill after {kill_after_ms} ms: the resume failed"
        );
        let got =
            std::fs::read(run_dir(&out).unwrap().join("checkpoints/last.safetensors")).unwrap();
        assert!(
            got == want,
            "kill after {kill_after_ms} ms (resumed: {}): the final checkpoint differs",
            resumable.is_some()
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    let _ = std::fs::remove_dir_all(&straight);
    // At least one kill landed between two checkpoints (else the test checked nothing).
    assert!(
        resumed >= 1,
        "no kill left a resumable run: the kill points need moving"
    );
}
