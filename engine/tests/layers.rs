//! The engine's modules form a stack: each file may use the ones below it and none above, so
//! a reader can climb it from `spec` to `train` (docs/layout.md draws the same order). This
//! test reads every source file of the engine and fails naming the file and the module it
//! reaches up to.
//!
//! Not here: the crate-level direction (kernels → engine → ops → flowseg), which Cargo
//! enforces.

use std::path::Path;

/// Bottom to top. A module's files (`spec/` holds several) share its rank.
const STACK: &[&str] = &[
    "fsutil",
    "spec",
    "tensor",
    "graph",
    "op",
    "model",
    "data",
    "registry",
    "open",
    "autodiff",
    "ir",
    "fusion",
    "update",
    "plan",
    "device",
    "shadow",
    "cuda_exec",
    "exec",
    "checkpoint",
    "train",
];

/// The source without comments (doc links may point anywhere; only code imports).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Modules of this crate a file names: `crate::<module>` anywhere in its code, and the
/// `super::` siblings of a file in a module folder are the same module.
fn used_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn no_engine_file_uses_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank = |m: &str| STACK.iter().position(|s| *s == m);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                files.push(e.unwrap().path());
            }
        } else {
            files.push(path);
        }
    }
    let mut violations = Vec::new();
    let mut seen = 0;
    for path in files {
        let rel = path.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" {
            continue;
        }
        let Some(own) = rank(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no place in STACK (add it where it belongs)",
                rel.display()
            ));
            continue;
        };
        seen += 1;
        let code = code_of(&std::fs::read_to_string(&path).unwrap());
        for used in used_modules(&code) {
            match rank(&used) {
                Some(r) if r > own => violations.push(format!(
                    "{}: uses `crate::{used}`, which is above `{module}`",
                    rel.display()
                )),
                _ => {}
            }
        }
    }
    assert!(seen >= STACK.len(), "read only {seen} engine files");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_check_sees_an_upward_use() {
    // The scanner itself: a file of `graph` naming `crate::ir` is caught, a comment is not.
    let code = code_of("use crate::spec::Sp; // see crate::train\nfn f() { crate::ir::build(); }");
    assert_eq!(used_modules(&code), ["spec", "ir"]);
}
