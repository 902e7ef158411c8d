//! `flowseg::report::render`: graph errors shown with their code, position, source line, a
//! caret under the offending token and the help, plus the summary line.

use flowseg::report::render;
use flowseg_engine::spec::{GraphError, Loc};

const PATH: &str = "graphs/bad.yaml";
const SOURCE: &str = "\
nodes:
  - { name: b, op: scale, params: { factr: 2 } }
  - { name: c, op: relu, inputs: { x: b.yy } }
";

fn at(line: u32, col: u32) -> Loc {
    Loc { line, col }
}

#[test]
fn two_errors_show_code_position_line_caret_and_help() {
    let errors = [
        GraphError::new(
            "FS0102",
            "unknown field `factr`, expected `factor`",
            at(2, 37),
        )
        .in_node("b")
        .help("use the field names `flowseg ops` prints for the op"),
        GraphError {
            warning: true,
            ..GraphError::new("FS0108", "output `yy` of `b` is not read", at(3, 39))
                .in_node("c")
                .help("did you mean `b.y`?")
        },
    ];
    let out = render(PATH, SOURCE, &errors, false);
    for want in [
        "error[FS0102]",
        "warning[FS0108]",
        "graphs/bad.yaml:2:37",
        "graphs/bad.yaml:3:39",
        "node `b`: unknown field `factr`, expected `factor`",
        "  - { name: b, op: scale, params: { factr: 2 } }",
        "  - { name: c, op: relu, inputs: { x: b.yy } }",
        "use the field names `flowseg ops` prints for the op",
        "did you mean `b.y`?",
        "here, in node `b`",
        "1 error, 1 warning in graphs/bad.yaml",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(
        !out.contains('\u{1b}'),
        "no ANSI escapes without colour:\n{out}"
    );
    // The line below the source line underlines `factr`: from its column 37, 5 wide.
    let lines: Vec<&str> = out.lines().collect();
    let src = lines
        .iter()
        .position(|l| l.ends_with("{ name: b, op: scale, params: { factr: 2 } }"))
        .expect("source line");
    let gutter = lines[src].chars().count() - SOURCE.lines().nth(1).unwrap().chars().count();
    let marks = lines[src + 1];
    let under: String = marks.chars().skip(gutter).collect();
    assert_eq!(
        under.find(|c: char| !c.is_whitespace()),
        Some(36),
        "caret not under `factr`:\n{out}"
    );
    assert_eq!(
        under.trim().chars().count(),
        "factr".len(),
        "underline `factr`:\n{out}"
    );
    assert!(out.ends_with("1 error, 1 warning in graphs/bad.yaml\n"));
}

#[test]
fn columns_count_characters_not_bytes() {
    let src = "nodes:\n  - { name: größe, op: rleu }\n";
    let e = GraphError::new("FS0101", "unknown op `rleu`", at(2, 24));
    let out = render("g.yaml", src, &[e], false);
    assert!(out.contains("g.yaml:2:24"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let s = lines
        .iter()
        .position(|l| l.ends_with("op: rleu }"))
        .unwrap();
    let gutter = lines[s].chars().count() - src.lines().nth(1).unwrap().chars().count();
    let under: String = lines[s + 1].chars().skip(gutter).collect();
    let first_mark = under.find(|c: char| !c.is_whitespace());
    assert_eq!(
        first_mark.map(|b| under[..b].chars().count()),
        Some(23),
        "caret not under `rleu`:\n{out}"
    );
}

#[test]
fn unlocated_error_has_no_snippet() {
    let e =
        GraphError::new("FS0003", "`a.b` has no `=`", Loc::NONE).help("write --set a.b.c=value");
    let out = render(PATH, SOURCE, &[e], false);
    assert!(out.contains("error[FS0003]"), "{out}");
    assert!(out.contains("write --set a.b.c=value"), "{out}");
    assert!(!out.contains("graphs/bad.yaml:"), "{out}");
    assert!(!out.contains("nodes:"), "no source shown:\n{out}");
    assert!(
        out.ends_with("1 error, 0 warnings in graphs/bad.yaml\n"),
        "{out}"
    );
}

#[test]
fn positions_past_the_end_do_not_panic() {
    for (line, col) in [
        (99, 1),
        (3, 500),
        (4, 1),
        (4, 7),
        (1, 0),
        (u32::MAX, u32::MAX),
    ] {
        let e = GraphError::new("FS0001", "unexpected end of file", at(line, col));
        let out = render(PATH, SOURCE, &[e], false);
        assert!(out.contains("error[FS0001]"), "{line}:{col}\n{out}");
        assert!(
            out.contains("unexpected end of file"),
            "{line}:{col}\n{out}"
        );
    }
    // Just past the last line break, where a YAML parser reports the end of the file: the
    // last line is shown with the mark after it.
    let e = GraphError::new("FS0001", "unexpected end of file", at(4, 1));
    let out = render(PATH, SOURCE, &[e], false);
    assert!(out.contains("graphs/bad.yaml:4:1"), "{out}");
    assert!(out.contains(" 3 │   - { name: c, op: relu"), "{out}");
    assert!(out.contains('▲'), "{out}");
    for src in ["", "\n", "x", "a\r\nb\r\n"] {
        let e = GraphError::new("FS0001", "bad", at(3, 3));
        let out = render("e.yaml", src, &[e], true);
        assert!(out.contains("FS0001"), "{src:?}\n{out}");
    }
}

#[test]
fn no_errors_is_just_the_summary() {
    assert_eq!(
        render("g.yaml", SOURCE, &[], false),
        "0 errors, 0 warnings in g.yaml\n"
    );
}

#[test]
fn long_lines_and_messages_are_cut_not_echoed() {
    let long = format!(
        "name: x\nnodes: [{}]\ntrain: {{ iterations: 1 }}\n",
        "a".repeat(5000)
    );
    let message = format!(
        "invalid type: string \"{}\", expected f64",
        "b".repeat(3000)
    );
    let e = GraphError::new("FS0002", message, at(2, 3000));
    let out = render("big.yaml", &long, &[e], false);
    assert!(out.contains("big.yaml:2:3000"), "{out}");
    assert!(out.contains('…'), "{out}");
    let widest = out.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest < 600, "a line of {widest} characters was echoed");
    // The line numbers around it stay true.
    assert!(out.contains(" 3 │ train"), "{out}");
}
