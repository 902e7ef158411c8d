//! The flowseg binary's modules form a stack, like the engine's (engine/tests/layers.rs): each
//! file of src/ may use the ones below it and none above, so the CLI dispatches to commands and
//! no command reaches back into the CLI. Fails naming the file and the module it reaches up to.

use std::path::Path;

/// Bottom to top; `lib.rs` and `main.rs` only declare and call.
const STACK: &[&str] = &[
    "report",
    "device",
    "plot",
    "graph_fmt",
    "ops_doc",
    "demo",
    "eval",
    "data_cmd",
    "run",
    "predict",
    "carry",
    "bench",
    "cli",
];

fn used_modules(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    code.split("crate::")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn no_src_file_uses_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank = |m: &str| STACK.iter().position(|s| *s == m);
    let mut violations = Vec::new();
    for entry in std::fs::read_dir(&src).expect("src/ is readable") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let module = path
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = rank(&module) else {
            violations.push(format!("src/{module}.rs has no place in STACK"));
            continue;
        };
        let code = std::fs::read_to_string(&path).expect("utf-8 source");
        for used in used_modules(&code) {
            if rank(&used).is_some_and(|r| r > own) {
                violations.push(format!(
                    "src/{module}.rs uses `crate::{used}`, which is above it"
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
