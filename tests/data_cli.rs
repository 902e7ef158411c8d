//! `flowseg data split` end to end: the split files partition the list, are deterministic by
//! seed, nest (1/4 ⊂ 1/2), and are never overwritten unasked; bad flags exit 2 with a message.
//! (`flowseg data m2nist` is tested on fake IDX files in flowseg-ops' `data::m2nist`.)

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

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn split(list: &Path, share: &str, seed: &str, out: &Path) -> (ExitCode, String, String) {
    cli(&[
        "data",
        "split",
        "--list",
        list.to_str().unwrap(),
        "--labeled",
        share,
        "--split-seed",
        seed,
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn split_files_partition_nest_and_are_kept() {
    let dir: PathBuf = std::env::temp_dir().join(format!("flowseg-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("train.txt");
    let names: Vec<String> = (0..40).map(|i| format!("img_{i:03}")).collect();
    std::fs::write(&list, format!("# VOC-style list\n{}\n\n", names.join("\n"))).unwrap();
    let (code, out, err) = split(&list, "1/4", "3", &dir.join("q"));
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(
        out.contains("40 items: 10 labeled (1/4), 30 unlabeled"),
        "{out}"
    );
    let (l, u) = (
        lines(&dir.join("q/labeled.txt")),
        lines(&dir.join("q/unlabeled.txt")),
    );
    let mut all: Vec<String> = l.iter().chain(&u).cloned().collect();
    all.sort();
    assert_eq!(all, names);
    // Same seed: same files; a larger share holds the smaller one; another seed differs.
    split(&list, "1/4", "3", &dir.join("q2"));
    assert_eq!(lines(&dir.join("q2/labeled.txt")), l);
    split(&list, "1/2", "3", &dir.join("h"));
    let half = lines(&dir.join("h/labeled.txt"));
    assert!(l.iter().all(|n| half.contains(n)));
    split(&list, "1/4", "4", &dir.join("s4"));
    assert_ne!(lines(&dir.join("s4/labeled.txt")), l);
    // Existing split files stay as they are.
    let (code, _, err) = split(&list, "1/2", "3", &dir.join("q"));
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(lines(&dir.join("q/labeled.txt")), l);
    // Bad shares and lists are named.
    let (code, _, err) = split(&list, "0.25", "0", &dir.join("x"));
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("1/16"), "{err}");
    let (code, _, err) = split(&list, "41", "0", &dir.join("x"));
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("40 training items"), "{err}");
    let (code, _, err) = split(&dir.join("nope.txt"), "1/4", "0", &dir.join("x"));
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("nope.txt"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
