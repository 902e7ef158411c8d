//! Docs that cannot go stale: docs/ops.md is what `flowseg ops --markdown` prints (rewritten
//! here when the ops change; CI fails if the committed copy was stale), and
//! every error code the engine can raise has its page under docs/errors/.

use std::process::ExitCode;

#[test]
fn ops_md_is_up_to_date() {
    // Generated, not edited: when the ops changed, this test rewrites docs/ops.md (so adding an
    // op needs no step beyond its file and its registration line) and says so; CI checks
    // afterwards that the committed file was already current (`git diff --exit-code`).
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = flowseg::run_cli(["flowseg", "ops", "--markdown"], &[], &mut out, &mut err);
    assert_eq!(code, ExitCode::SUCCESS, "{}", String::from_utf8_lossy(&err));
    let generated = String::from_utf8(out).expect("utf-8");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ops.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != generated {
        std::fs::write(path, &generated).expect("docs/ops.md is writable");
        note_regenerated();
    }
    assert!(
        generated.contains("## `relu`"),
        "the generated page lists no ops:\n{generated}"
    );
}

/// Telling the developer is the point: the test has just rewritten a tracked file.
#[allow(clippy::print_stderr)]
fn note_regenerated() {
    eprintln!("docs/ops.md was out of date and has been regenerated: commit it");
}

#[test]
fn every_error_code_has_a_page_and_every_page_a_code() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut codes = std::collections::BTreeSet::new();
    // Every crate's sources (tests excluded: they quote codes to check them).
    let mut stack: Vec<std::path::PathBuf> =
        ["kernels/src", "engine/src", "ops/src", "sources/src", "src"]
            .iter()
            .map(|d| root.join(d))
            .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source folder is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source is utf-8");
                // Code constants are written as "FS" + 4 digits inside a string literal.
                for (i, _) in text.match_indices("\"FS") {
                    let code = &text[i + 1..(i + 7).min(text.len())];
                    if code.len() == 6 && code[2..].chars().all(|c| c.is_ascii_digit()) {
                        codes.insert(code.to_owned());
                    }
                }
            }
        }
    }
    assert!(codes.len() >= 22, "found only {codes:?}");
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !root.join(format!("docs/errors/{c}.md")).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "error codes without a page in docs/errors/: {missing:?}"
    );
    // And no page documents a code nothing raises (a renamed or retired code).
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(root.join("docs/errors")).expect("docs/errors is readable") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(code) = name.strip_suffix(".md") {
            if code.starts_with("FS") && !codes.contains(code) {
                orphans.push(code.to_owned());
            }
        }
    }
    assert!(
        orphans.is_empty(),
        "pages of codes nothing raises: {orphans:?}"
    );
}
