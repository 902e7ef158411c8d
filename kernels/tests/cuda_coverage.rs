//! Every CPU kernel has a CUDA twin, found by its name: reads the `pub fn` names of
//! `kernels/src/*.rs` that are kernels (`*_fwd`, `*_bwd`, `*_step`, and the named extras below)
//! and the "CPU kernel → CUDA launcher" table at the end of the docs of `kernels/src/cuda/mod.rs`,
//! and fails naming every kernel without a row, every row whose CPU kernel is gone, every
//! launcher missing from the file the row names, and every launcher filed elsewhere than in its
//! CPU kernel's file (`elementwise::add_fwd` → `cuda/elementwise.rs`). It also checks that every
//! launcher file under `kernels/src/cuda/` (besides the shared plumbing), every `.cu` source
//! under `kernels/cuda/` and every parity test `tests/cuda_parity_<file>.rs` is named like a CPU
//! kernel file, one of each per file.
//!
//! And every CPU kernel is called: its name, as a whole word outside comments, must appear in
//! the sources of the crates that run graphs (`ops/src`, `engine/src`, the top crate's `src`,
//! `sources/src`), unless [`UNCALLED`] lists it with a reason. A kernel nothing calls is dead
//! weight twice over (CPU and CUDA): wire it into an op or delete it with its twin.
//!
//! Source text only, so it runs without the `cuda` feature and without a GPU.
//!
//! Not here: whether a twin computes the same thing (the `cuda_parity*` tests, on a GPU), or
//! whether a name found is really a call of this kernel (a same-named function elsewhere would
//! count).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Kernels whose names do not end in `_fwd` / `_bwd` / `_step`, as (file stem, fn name).
const EXTRA_KERNELS: &[(&str, &str)] = &[
    ("optim", "ema_update"),
    ("metrics", "confusion_add"),
    ("philox", "u32_at"),
    ("philox", "fill_uniform"),
    ("philox", "fill_normal"),
];

/// Rows whose launcher is allowed to be missing for now (CPU kernel names), e.g. while it is
/// written on another branch. The test fails while a listed launcher already exists, so a stale
/// entry cannot linger. Empty: every CPU kernel has its twin.
const PENDING: &[&str] = &[];

/// CPU kernels that nothing outside the kernels crate calls and that stay anyway, as
/// (`file::name`, reason): e.g. one only a benchmark uses. The test fails while a listed kernel
/// is called or no longer exists, so a stale entry cannot linger. Empty: every kernel is called.
const UNCALLED: &[(&str, &str)] = &[];

/// Where the kernels' callers live, relative to the kernels crate: the ops, the engine, the top
/// crate (CLI, demo, bench) and the data sources.
const CALLER_DIRS: &[&str] = &["../ops/src", "../engine/src", "../src", "../sources/src"];

/// Files of `kernels/src/cuda/` that hold shared plumbing, not launchers.
const PLUMBING: &[&str] = &["mod", "common", "device", "nvrtc"];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The name after `pub fn ` on a line (any indentation), up to `(` or `<`.
fn pub_fn_name(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("pub fn ")?;
    let end = rest.find(['(', '<']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn is_kernel_name(file: &str, name: &str) -> bool {
    name.ends_with("_fwd")
        || name.ends_with("_bwd")
        || name.ends_with("_step")
        || EXTRA_KERNELS.contains(&(file, name))
}

/// `file::name` of every CPU kernel in `kernels/src/*.rs` (not subdirectories).
fn cpu_kernels() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(src_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for name in text.lines().filter_map(pub_fn_name) {
            if is_kernel_name(&stem, name) {
                out.insert(format!("{stem}::{name}"));
            }
        }
    }
    out
}

/// The table rows of cuda/mod.rs's docs: CPU `file::name` → launcher `file::name`.
fn twin_table() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(src_dir().join("cuda").join("mod.rs")).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix("//! | `") else {
            continue;
        };
        let cells: Vec<&str> = row
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), 2, "malformed twin row: {line}");
        let previous = rows.insert(cells[0].to_string(), cells[1].to_string());
        assert!(previous.is_none(), "twin row listed twice: {line}");
    }
    rows
}

/// The file part of `file::name`.
fn file_of(path: &str) -> &str {
    path.split_once("::").map_or(path, |(file, _)| file)
}

/// Stems of the files in `dir` ending in `.ext`.
fn stems(dir: &Path, ext: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect()
}

/// True when `kernels/src/cuda/<file>.rs` defines `pub fn <name>`.
fn launcher_exists(launcher: &str) -> bool {
    let Some((file, name)) = launcher.split_once("::") else {
        return false;
    };
    let path = src_dir().join("cuda").join(format!("{file}.rs"));
    std::fs::read_to_string(path)
        .is_ok_and(|t| t.lines().filter_map(pub_fn_name).any(|n| n == name))
}

#[test]
fn the_scan_finds_kernels_and_only_kernels() {
    let cpu = cpu_kernels();
    for k in [
        "elementwise::add_fwd",
        "optim::adamw_step",
        "optim::ema_update",
        "philox::fill_normal",
        "conv2d::conv2d_bwd",
    ] {
        assert!(cpu.contains(k), "{k} not found among {cpu:?}");
    }
    for not in [
        "augment::draw_cutout",
        "gemm::gemm",
        "philox::box_muller",
        "pool::out_hw",
    ] {
        assert!(!cpu.contains(not), "{not} is not a kernel");
    }
    assert_eq!(
        pub_fn_name("    pub fn fill_normal(&self) {"),
        Some("fill_normal")
    );
    assert_eq!(
        pub_fn_name("pub fn dot_fwd<T: Real>(a: &[T])"),
        Some("dot_fwd")
    );
    assert_eq!(pub_fn_name("pub(crate) fn prepare<T>()"), None);
}

#[test]
fn every_cpu_kernel_has_a_cuda_twin() {
    let cpu = cpu_kernels();
    let table = twin_table();
    let mut problems = Vec::new();
    for k in &cpu {
        match table.get(k) {
            None => problems.push(format!(
                "{k} has no CUDA twin: add a launcher and a row to kernels/src/cuda/mod.rs's table"
            )),
            Some(l) if PENDING.contains(&k.as_str()) => {
                if launcher_exists(l) {
                    problems.push(format!(
                        "{k}: {l} exists now, remove it from PENDING in tests/cuda_coverage.rs"
                    ));
                }
            }
            Some(l) if file_of(l) != file_of(k) => problems.push(format!(
                "{k}: its twin {l} must live in kernels/src/cuda/{}.rs, the file named like \
                 the CPU kernel's",
                file_of(k)
            )),
            Some(l) if !launcher_exists(l) => problems.push(format!(
                "{k}: its twin {l} is not a `pub fn` in kernels/src/cuda/"
            )),
            Some(_) => {}
        }
    }
    for k in table.keys() {
        if !cpu.contains(k) {
            problems.push(format!(
                "the twin table lists {k}, which is not a CPU kernel"
            ));
        }
    }
    for p in PENDING {
        if !table.contains_key(*p) {
            problems.push(format!("PENDING names {p}, which has no row in the table"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn launcher_source_and_test_files_are_named_like_cpu_kernel_files() {
    let families: BTreeSet<String> = cpu_kernels()
        .iter()
        .map(|k| file_of(k).to_string())
        .collect();
    let launchers: BTreeSet<String> = stems(&src_dir().join("cuda"), "rs")
        .into_iter()
        .filter(|s| !PLUMBING.contains(&s.as_str()))
        .collect();
    let sources = stems(&Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda"), "cu");
    let mut problems = Vec::new();
    for (what, found) in [
        ("kernels/src/cuda/{}.rs", &launchers),
        ("kernels/cuda/{}.cu", &sources),
    ] {
        for f in found.difference(&families) {
            problems.push(format!(
                "{} is not named like a CPU kernel file (kernels/src/<file>.rs)",
                what.replace("{}", f)
            ));
        }
        for f in families.difference(found) {
            problems.push(format!(
                "kernels/src/{f}.rs has kernels but there is no {}",
                what.replace("{}", f)
            ));
        }
    }
    // Parity tests: one file per launcher file, named like it (`device` tests the plumbing).
    let parity: BTreeSet<String> = stems(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .as_path(),
        "rs",
    )
    .iter()
    .filter_map(|s| s.strip_prefix("cuda_parity_").map(str::to_string))
    .collect();
    for f in parity
        .iter()
        .filter(|f| !families.contains(*f) && !PLUMBING.contains(&f.as_str()))
    {
        problems.push(format!(
            "kernels/tests/cuda_parity_{f}.rs is not named like a launcher file of kernels/src/cuda/"
        ));
    }
    for f in families.difference(&parity) {
        problems.push(format!(
            "kernels/src/cuda/{f}.rs has no parity test kernels/tests/cuda_parity_{f}.rs"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Appends the text of every `.rs` file under `dir` (recursively) to `out`, without comment lines
/// (`//`, `///`, `//!`) and trailing ` // ` comments, so a name in the docs is not a call.
fn code_text(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            code_text(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                out.push_str(line.split(" // ").next().unwrap_or(""));
                out.push('\n');
            }
        }
    }
}

/// True when `word` occurs in `text` with no identifier character on either side.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        !text[..i].chars().next_back().is_some_and(ident)
            && !text[i + word.len()..].chars().next().is_some_and(ident)
    })
}

#[test]
fn the_word_search_matches_whole_words() {
    assert!(has_word("let y = relu_fwd(&x);", "relu_fwd"));
    assert!(has_word("use k::{relu_fwd, relu_bwd};", "relu_bwd"));
    assert!(!has_word("leaky_relu_fwd(&x)", "relu_fwd"));
    assert!(!has_word("relu_fwd_into(&x)", "relu_fwd"));
    let mut code = String::new();
    code_text(&src_dir().join("cuda"), &mut code);
    assert!(has_word(&code, "launch"), "code_text read nothing");
    assert!(!code.contains("//!"), "code_text kept a doc comment");
}

#[test]
fn every_cpu_kernel_is_called_outside_the_kernels_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut code = String::new();
    for dir in CALLER_DIRS {
        let dir = root.join(dir);
        assert!(dir.is_dir(), "{} is not a directory", dir.display());
        code_text(&dir, &mut code);
    }
    let cpu = cpu_kernels();
    let mut problems = Vec::new();
    for k in &cpu {
        let (_, name) = k.split_once("::").unwrap();
        let called = has_word(&code, name);
        let allowed = UNCALLED.iter().any(|(u, _)| u == k);
        if !called && !allowed {
            problems.push(format!(
                "{k} is called nowhere in {}: wire it into an op or delete it with its CUDA twin",
                CALLER_DIRS.join(", ")
            ));
        }
        if called && allowed {
            problems.push(format!(
                "{k} is called now: remove it from UNCALLED in tests/cuda_coverage.rs"
            ));
        }
    }
    for (u, _) in UNCALLED {
        if !cpu.contains(*u) {
            problems.push(format!("UNCALLED names {u}, which is not a CPU kernel"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
