//! The spec stage: a graph file parses into a located tree and a typed spec; every error carries
//! its code and line:column, all errors in a file are reported together, and `--set` overrides
//! reach any key (nodes by name).

use flowseg_engine::spec::{self, from_node, Loc, OptimKind, Schedule, Sp};
use serde::Deserialize;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn at(line: u32, col: u32) -> Loc {
    Loc { line, col }
}

#[test]
fn minimal_graph_parses_with_locations() {
    let (g, _) = spec::parse_graph(&fixture("ok_minimal.yaml"), &[]).unwrap();
    assert_eq!(g.name.value, "supervised");
    assert_eq!(g.name.loc, at(1, 7));
    assert_eq!(g.models.len(), 2);
    assert_eq!(g.models[1].1.ema_of.as_ref().unwrap().value, "student");
    let (opt_name, opt) = &g.optim[0];
    assert_eq!(
        (opt_name.value.as_str(), opt.kind),
        ("student", OptimKind::Sgd)
    );
    assert_eq!(
        opt.schedule,
        Some(Schedule::Poly {
            power: 0.9,
            warmup: 100
        })
    );
    assert_eq!(opt.lr_mult["backbone"], 0.1);
    assert_eq!(
        (
            g.train.iterations,
            g.train.eval_every,
            g.train.checkpoint_every
        ),
        (2000, 500, 0)
    );
    assert_eq!(g.nodes.len(), 2);
    let loss = &g.nodes[1];
    assert_eq!(loss.op.value, "cross_entropy");
    assert_eq!(loss.op.loc, at(21, 9));
    assert_eq!(loss.inputs["logits"].value, "fwd.logits");
    assert_eq!(loss.inputs["logits"].loc, at(22, 23));
    assert_eq!(loss.after[0].loc, at(24, 13));
}

#[test]
fn yaml_syntax_error_is_fs0001_with_position() {
    let errs = spec::parse_graph(&fixture("FS0001_tab_indent.yaml"), &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].code, "FS0001");
    assert!(errs[0].loc.is_known(), "{}", errs[0]);
}

#[test]
fn schema_errors_are_all_reported_with_positions() {
    let errs = spec::parse_graph(&fixture("FS0002_many.yaml"), &[]).unwrap_err();
    let got: Vec<(Loc, &str)> = errs.iter().map(|e| (e.loc, e.message.as_str())).collect();
    assert!(errs.iter().all(|e| e.code == "FS0002"), "{got:?}");
    assert_eq!(errs.len(), 4, "{got:?}");
    // Unknown key in `train`: points at the key.
    assert_eq!(errs[0].loc, at(4, 3), "{got:?}");
    assert!(
        errs[0].message.contains("unknown field `eval_evry`"),
        "{got:?}"
    );
    // Wrong type: points at the value.
    assert_eq!(errs[1].loc, at(6, 29), "{got:?}");
    assert!(errs[1].message.contains("fast"), "{got:?}");
    // Unknown key in the first node.
    assert_eq!(errs[2].loc, at(10, 5), "{got:?}");
    assert!(
        errs[2].message.contains("unknown field `inputz`"),
        "{got:?}"
    );
    // `after` must be a list.
    assert_eq!(errs[3].loc, at(13, 12), "{got:?}");
}

#[test]
fn op_params_decode_later_with_positions() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ema {
        decay: Sp<f64>,
    }
    let root = spec::parse_yaml("params:\n  decay: 0.99\n").unwrap();
    let ok: Ema = from_node(root.get("params").unwrap()).unwrap();
    assert_eq!((ok.decay.value, ok.decay.loc), (0.99, at(2, 10)));
    let root = spec::parse_yaml("params:\n  decy: 0.99\n").unwrap();
    let e = from_node::<Ema>(root.get("params").unwrap()).unwrap_err();
    assert_eq!(e.loc, at(2, 3));
    assert!(
        e.message.contains("unknown field `decy`, expected `decay`"),
        "{}",
        e.message
    );
}

#[test]
fn overrides_reach_keys_and_nodes_by_name() {
    let text = fixture("ok_minimal.yaml");
    let sets = [
        "train.iterations=5".to_owned(),
        "nodes.sup_loss.params.ignore_index=-1".to_owned(),
        "optim.student.lr=0.5".to_owned(),
        "models.student.params.depth=3".to_owned(),
    ];
    let (g, root) = spec::parse_graph(&text, &sets).unwrap();
    assert_eq!(g.train.iterations, 5);
    assert_eq!(g.optim[0].1.lr, 0.5);
    let ignore = root.get("nodes").map(|n| match &n.value {
        spec::Value::Seq(items) => items[1]
            .get("params")
            .unwrap()
            .get("ignore_index")
            .unwrap()
            .clone(),
        _ => panic!("nodes is a sequence"),
    });
    assert_eq!(ignore.unwrap().value, spec::Value::Int(-1));
    let depth = g.models[0].1.params.as_ref().unwrap().get("depth").unwrap();
    // Values an override wrote are located at that override (the 4th `--set`).
    assert_eq!(
        (depth.value.clone(), depth.loc),
        (spec::Value::Int(3), Loc::set(3))
    );
    assert_eq!(depth.loc.set_index(), Some(3));
    assert!(!depth.loc.is_known() && depth.loc.is_located());
}

#[test]
fn bad_overrides_are_fs0003() {
    let text = fixture("ok_minimal.yaml");
    for bad in [
        "train.iterations",
        "nodes.nope.params.x=1",
        "name.sub=1",
        "a..b=1",
        "train.seed=[1",
    ] {
        let errs = spec::parse_graph(&text, &[bad.to_owned()]).unwrap_err();
        assert_eq!(errs[0].code, "FS0003", "{bad}: {}", errs[0]);
        assert_eq!(errs[0].loc, Loc::set(0), "{bad}: {}", errs[0]);
    }
    // An override that parses but breaks the schema is a schema error, at that override.
    let sets = [
        "train.seed=1".to_owned(),
        "train.iterations=many".to_owned(),
    ];
    let errs = spec::parse_graph(&text, &sets).unwrap_err();
    assert_eq!(errs[0].code, "FS0002");
    assert_eq!(errs[0].loc, Loc::set(1));
}

#[test]
fn missing_sections_and_duplicate_keys_are_reported() {
    let errs = spec::parse_graph("name: x\n", &[]).unwrap_err();
    let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
    assert!(msgs.contains(&"missing section `train`"), "{msgs:?}");
    assert!(msgs.contains(&"missing section `nodes`"), "{msgs:?}");
    let errs = spec::parse_graph("name: a\nname: b\ntrain: {iterations: 1}\nnodes: []\n", &[])
        .unwrap_err();
    assert_eq!(
        (errs[0].code, errs[0].loc),
        ("FS0001", at(2, 1)),
        "{}",
        errs[0]
    );
    assert!(
        errs[0].message.contains("`name` appears twice"),
        "{}",
        errs[0]
    );
}

#[test]
fn the_resolved_tree_writes_back_as_yaml_with_the_same_values() {
    let text = fixture("ok_minimal.yaml");
    let sets = [
        "nodes.sup_loss.params.ignore_index=-1".to_owned(),
        "optim.student.lr=1e-3".to_owned(),
    ];
    let (_, root) = spec::parse_graph(&text, &sets).unwrap();
    let yaml = root.to_yaml();
    let again = spec::parse_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(
        again.without_locations(),
        root.without_locations(),
        "{yaml}"
    );
    // Strings stay strings, floats stay floats.
    let odd =
        spec::parse_yaml("a: \"1\"\nb: 1.0\nc: [\"x: y\", 'it''s']\nd: {}\ne: []\nf: ~\n").unwrap();
    let back = spec::parse_yaml(&odd.to_yaml()).unwrap();
    assert_eq!(
        back.without_locations(),
        odd.without_locations(),
        "{}",
        odd.to_yaml()
    );
}

/// The 1-based (line, column) where `needle` starts in `text` (its first occurrence).
fn position(text: &str, needle: &str) -> Loc {
    let i = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in the text"));
    let line = text[..i].matches('\n').count() + 1;
    let col = i - text[..i].rfind('\n').map_or(0, |j| j + 1) + 1;
    at(line as u32, col as u32)
}

#[test]
fn out_of_range_values_are_fs0002_at_the_value() {
    let base = fixture("ok_minimal.yaml");
    // (text to replace, its replacement, a unique piece of the result that starts at the
    // offending value).
    let cases = [
        ("lr: 0.01", "lr: -0.01", "-0.01"),
        ("lr: 0.01", "lr: 0", "0\n    momentum"),
        ("momentum: 0.9", "momentum: 1.0", "1.0\n"),
        ("weight_decay: 1.0e-4", "weight_decay: -0.1", "-0.1"),
        ("kind: sgd", "kind: adamw\n    betas: [1.0, 0.999]", "[1.0, 0.999]"),
        ("kind: sgd", "kind: adamw\n    eps: 0.0", "0.0\n"),
        // Inside the tagged `schedule:` mapping serde loses the inner position: the error
        // points at the mapping.
        ("power: 0.9", "power: -1.0", "{ kind: poly, power: -1.0"),
        ("lr_mult: { backbone: 0.1 }", "lr_mult: { backbone: -1.0 }", "{ backbone: -1.0 }"),
        ("iterations: 2000", "iterations: 0", "0, eval_every"),
        ("teacher: { ema_of: student }", "teacher: { ema_of: student, decay: 1.5 }", "1.5"),
        (
            "lr_mult: { backbone: 0.1 }",
            "lr_mult: { backbone: 0.1 }\n    minimize: { sup_loss.loss: -1.0 }",
            "-1.0 }",
        ),
        (
            "lr_mult: { backbone: 0.1 }",
            "lr_mult: { backbone: 0.1 }\n    minimize: { sup_loss.loss: { weight: -2.0, rampup: 5 } }",
            "-2.0",
        ),
        ("nodes:", "eval: { batch: 0 }\nnodes:", "0 }\nnodes"),
        ("nodes:", "eval: { crop: 0 }\nnodes:", "0 }\nnodes"),
        ("nodes:", "eval: { stride: [0, 4] }\nnodes:", "[0, 4]"),
    ];
    for (from, to, value) in cases {
        let text = base.replacen(from, to, 1);
        assert_eq!(
            text.matches(value).count(),
            1,
            "{to}: `{value}` is not unique"
        );
        let errs = spec::parse_graph(&text, &[]).expect_err(to);
        assert_eq!(errs.len(), 1, "{to}: {errs:#?}");
        assert_eq!(errs[0].code, "FS0002", "{to}: {errs:#?}");
        assert_eq!(errs[0].loc, position(&text, value), "{to}: {}", errs[0]);
    }
    // The boundaries are allowed.
    for (from, to) in [
        ("momentum: 0.9", "momentum: 0"),
        ("weight_decay: 1.0e-4", "weight_decay: 0"),
        ("lr_mult: { backbone: 0.1 }", "lr_mult: { backbone: 0 }"),
        (
            "teacher: { ema_of: student }",
            "teacher: { ema_of: student, decay: 1 }",
        ),
    ] {
        let text = base.replacen(from, to, 1);
        if let Err(e) = spec::parse_graph(&text, &[]) {
            panic!("{to}: {e:#?}");
        }
    }
}

#[test]
fn non_finite_numbers_and_duplicate_keys_say_what_they_are() {
    let base = fixture("ok_minimal.yaml");
    let nan = base.replacen("lr: 0.01", "lr: .nan", 1);
    let errs = spec::parse_graph(&nan, &[]).unwrap_err();
    assert_eq!(errs[0].code, "FS0002", "{errs:#?}");
    assert!(errs[0].message.contains("finite"), "{errs:#?}");
    let twice = base.replacen("seed: 7 }", "seed: 7, seed: 8 }", 1);
    let errs = spec::parse_graph(&twice, &[]).unwrap_err();
    assert_eq!(errs[0].code, "FS0001", "{errs:#?}");
    assert!(
        errs[0].message.contains("`seed` appears twice"),
        "{errs:#?}"
    );
    assert!(!errs[0].message.contains("DuplicateKeyPolicy"), "{errs:#?}");
    assert!(!errs[0].message.contains("line "), "{errs:#?}");
}

#[test]
fn unusable_names_are_fs0005_at_the_name() {
    let base = fixture("ok_minimal.yaml");
    for (from, to, name) in [
        ("name: supervised", "name: ../x", "../x"),
        ("name: supervised", "name: /tmp/x", "/tmp/x"),
        ("name: supervised", "name: \"\"", "\"\""),
        ("name: supervised", "name: .", "."),
        ("- name: sup_loss", "- name: sup.loss", "sup.loss"),
        ("- name: fwd", "- name: batch", "batch"),
    ] {
        let text = base.replacen(from, to, 1);
        let errs = spec::parse_graph(&text, &[]).unwrap_err();
        let line = position(&text, to);
        let want = at(line.line, line.col + to.find(name).unwrap() as u32);
        assert!(
            errs.iter().any(|e| e.code == "FS0005" && e.loc == want),
            "{to}: {errs:#?}"
        );
    }
}

#[test]
fn references_between_sections_name_usable_models() {
    let base = fixture("ok_minimal.yaml");
    let cases = [
        // An optimizer on an EMA copy.
        (
            "  student:\n    kind: sgd",
            "  teacher:\n    kind: sgd",
            "teacher:\n    kind",
            "an EMA copy",
        ),
        // An EMA of no model.
        (
            "ema_of: student",
            "ema_of: studnet",
            "studnet }",
            "not a model",
        ),
        // eval.models naming no model.
        (
            "nodes:",
            "eval: { models: [studnet] }\nnodes:",
            "studnet]",
            "not a model",
        ),
    ];
    for (from, to, at_text, says) in cases {
        let text = base.replacen(from, to, 1);
        let errs = spec::parse_graph(&text, &[]).unwrap_err();
        let e = errs
            .iter()
            .find(|e| e.code == "FS0112")
            .unwrap_or_else(|| panic!("{to}: {errs:#?}"));
        assert!(e.message.contains(says), "{to}: {e}");
        assert_eq!(e.loc, position(&text, at_text), "{to}: {e}");
        if to.contains("studnet") {
            assert!(
                e.help.as_deref().unwrap_or("").contains("`student`"),
                "{to}: {e}"
            );
        }
    }
}
