//! docs/ops.md is exactly what `flowseg ops --markdown` prints, so it cannot go stale.

use std::process::ExitCode;

#[test]
fn ops_md_is_up_to_date() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = flowseg::run_cli(["flowseg", "ops", "--markdown"], &[], &mut out, &mut err);
    assert_eq!(code, ExitCode::SUCCESS, "{}", String::from_utf8_lossy(&err));
    let generated = String::from_utf8(out).expect("utf-8");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ops.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "docs/ops.md is out of date (first difference at line {}): regenerate it with \
             `cargo run -- ops --markdown > docs/ops.md`",
            line + 1
        );
    }
}
