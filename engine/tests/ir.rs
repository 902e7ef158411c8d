//! The ir stage: references resolve, order follows data and `after:` edges, and every problem in
//! a file is reported at once with its code, line:column and node. Uses three small test ops so
//! the engine is tested without the built-in op crate.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::graph::{self, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::op::io;
use flowseg_engine::spec::{self, GraphError, Loc};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Registry, Tensor, TensorSpec};
use serde::Deserialize;
use std::collections::BTreeMap;

struct Scale;
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleParams {
    factor: f32,
}
impl Op for Scale {
    const NAME: &'static str = "scale";
    const SUMMARY: &'static str = "y = factor · x";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x")];
    const EXAMPLE: &'static str =
        "name: s\nop: scale\ninputs: { x: batch.image }\nparams: { factor: 2 }\n";
    type Params = ScaleParams;
    fn infer(_: &ScaleParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        Ok(vec![io::spec(Self::INPUTS, ins, 0)?.clone()])
    }
    fn cpu(
        p: &ScaleParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        outs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, ins, 0)?.to_vec();
        for (o, v) in io::f32_out(Self::OUTPUTS, outs, 0)?.iter_mut().zip(x) {
            *o = p.factor * v;
        }
        Ok(())
    }
}

struct Join;
impl Op for Join {
    const NAME: &'static str = "join";
    const SUMMARY: &'static str = "y = a (+ b)";
    const INPUTS: &'static [Port] = &[Port::req("a", "any"), Port::opt("b", "like a")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like a")];
    const EXAMPLE: &'static str = "name: j\nop: join\ninputs: { a: batch.image }\n";
    type Params = NoParams;
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::spec(Self::INPUTS, ins, 0)?;
        if let Some(b) = ins[1] {
            if b != a {
                return Err(format!("`b` must match `a` ({a}), got {b}"));
            }
        }
        Ok(vec![a.clone()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Ok(())
    }
}

struct Split;
impl Op for Split {
    const NAME: &'static str = "split";
    const SUMMARY: &'static str = "two copies";
    const INPUTS: &'static [Port] = &[Port::req("x", "any")];
    const OUTPUTS: &'static [Port] = &[Port::req("lo", "like x"), Port::req("hi", "like x")];
    const EXAMPLE: &'static str = "name: sp\nop: split\ninputs: { x: batch.image }\n";
    type Params = NoParams;
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::spec(Self::INPUTS, ins, 0)?;
        Ok(vec![x.clone(), x.clone()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add::<Scale>()
        .unwrap()
        .add::<Join>()
        .unwrap()
        .add::<Split>()
        .unwrap();
    r
}

fn env() -> graph::Env {
    graph::Env {
        batch: BTreeMap::from([
            ("image".to_owned(), TensorSpec::f32(&[2, 3, 4, 4])),
            ("label".to_owned(), TensorSpec::i32(&[2, 4, 4])),
        ]),
        state: BTreeMap::from([("net.w".to_owned(), TensorSpec::f32(&[2, 3, 4, 4]))]),
        hidden: Default::default(),
    }
}

fn build(yaml: &str) -> Result<graph::Graph, Vec<GraphError>> {
    let (g, _) = spec::parse_graph(yaml, &[]).unwrap();
    ir::build(&g, &registry(), &env())
}

fn at(line: u32, col: u32) -> Loc {
    Loc { line, col }
}

#[test]
fn valid_graph_orders_by_data_and_after_edges() {
    let g = build(
        "name: t\ntrain: { iterations: 1 }\nnodes:\n\
         - { name: last, op: join, inputs: { a: mid.y, b: halves.hi } }\n\
         - { name: mid, op: scale, inputs: { x: halves.lo }, params: { factor: 3 } }\n\
         - { name: halves, op: split, inputs: { x: batch.image } }\n\
         - { name: side, op: scale, inputs: { x: batch.image }, params: { factor: 1 }, after: [last] }\n",
    )
    .unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["halves", "mid", "last", "side"]);
    assert_eq!(
        g.nodes[2].inputs,
        [
            Some(ValueRef::Node { node: 1, port: 0 }),
            Some(ValueRef::Node { node: 0, port: 1 })
        ]
    );
    assert_eq!(g.nodes[3].after, [2]);
    assert_eq!(g.nodes[2].outputs, [TensorSpec::f32(&[2, 3, 4, 4])]);
    assert_eq!(g.batch.keys().collect::<Vec<_>>(), ["image"]);
    // `last.y` and `side.y` are consumed by nothing.
    let unused: Vec<&str> = g.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        unused,
        [
            "output `last.y` is never used",
            "output `side.y` is never used"
        ]
    );
    assert!(g.warnings.iter().all(|w| w.warning && w.code == "FS0108"));
}

#[test]
fn every_problem_in_a_file_is_reported_with_code_and_position() {
    let yaml = "\
name: t
train: { iterations: 1 }
nodes:
  - { name: a, op: scael, inputs: { x: batch.image } }
  - { name: b, op: scale, inputs: { x: batch.image }, params: { factr: 2 } }
  - { name: c, op: join, inputs: { a: batch.image, c: batch.image } }
  - { name: d, op: join, inputs: { b: batch.image } }
  - { name: e, op: split, inputs: { x: nosuch.y } }
  - { name: f, op: split, inputs: { x: batch.depth } }
  - { name: g, op: split, inputs: { x: e.middle }, after: [h] }
  - { name: e, op: split, inputs: { x: batch.image } }
";
    let errs = build(yaml).unwrap_err();
    let got: Vec<(&str, Loc, Option<&str>)> = errs
        .iter()
        .map(|e| (e.code, e.loc, e.node.as_deref()))
        .collect();
    let want = vec![
        ("FS0105", at(11, 13), Some("e")),
        ("FS0101", at(4, 20), Some("a")),
        ("FS0102", at(5, 65), Some("b")),
        ("FS0103", at(6, 55), Some("c")),
        ("FS0103", at(7, 13), Some("d")),
        ("FS0104", at(8, 40), Some("e")),
        ("FS0104", at(9, 40), Some("f")),
        ("FS0104", at(10, 40), Some("g")),
        ("FS0104", at(10, 60), Some("g")),
    ];
    assert_eq!(got, want, "{errs:#?}");
    assert_eq!(errs[1].help.as_deref(), Some("did you mean `scale`?"));
    assert!(
        errs[2]
            .message
            .contains("unknown field `factr`, expected `factor`"),
        "{}",
        errs[2]
    );
    assert!(
        errs[4]
            .message
            .contains("required input `a` is not connected"),
        "{}",
        errs[4]
    );
    assert_eq!(errs[7].help.as_deref(), Some("outputs: `lo`, `hi`"));
}

#[test]
fn cycles_are_fs0106() {
    let errs = build(
        "name: t\ntrain: { iterations: 1 }\nnodes:\n\
         - { name: a, op: scale, inputs: { x: c.y }, params: { factor: 1 } }\n\
         - { name: b, op: scale, inputs: { x: a.y }, params: { factor: 1 } }\n\
         - { name: c, op: scale, inputs: { x: b.y }, params: { factor: 1 } }\n",
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].code, "FS0106");
    assert!(errs[0].message.starts_with("cycle through"), "{}", errs[0]);
    for n in ["a", "b", "c"] {
        assert!(
            errs[0].message.contains(&format!("{n} → ")) || errs[0].message.ends_with(n),
            "{}",
            errs[0]
        );
    }
    // An `after:` edge closes a cycle too.
    let errs = build(
        "name: t\ntrain: { iterations: 1 }\nnodes:\n\
         - { name: a, op: split, inputs: { x: batch.image }, after: [b] }\n\
         - { name: b, op: split, inputs: { x: a.lo } }\n",
    )
    .unwrap_err();
    assert_eq!(errs[0].code, "FS0106");
}

#[test]
fn shape_mismatch_is_fs0107_and_not_repeated_downstream() {
    let errs = build(
        "name: t\ntrain: { iterations: 1 }\nnodes:\n\
         - { name: j, op: join, inputs: { a: batch.image, b: batch.label } }\n\
         - { name: k, op: split, inputs: { x: j.y } }\n",
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].code, errs[0].loc, errs[0].node.as_deref()),
        ("FS0107", at(4, 18), Some("j"))
    );
    assert_eq!(
        errs[0].message,
        "`b` must match `a` (f32[2, 3, 4, 4]), got i32[2, 4, 4]"
    );
    assert_eq!(
        errs[0].help.as_deref(),
        Some("inputs here: a = f32[2, 3, 4, 4], b = i32[2, 4, 4]")
    );
}

#[test]
fn configured_ops_run_their_cpu_reference() {
    let g = build(
        "name: t\ntrain: { iterations: 1 }\nnodes:\n\
         - { name: s, op: scale, inputs: { x: batch.image }, params: { factor: 2.5 } }\n",
    )
    .unwrap();
    let x = Tensor::from_f32(&[2, 3, 4, 4], (0..96).map(|v| v as f32).collect()).unwrap();
    let mut out = vec![Tensor::zeros(&g.nodes[0].outputs[0])];
    let cx = ExecCx {
        seed: 0,
        iteration: 0,
        node_key: 0,
    };
    g.nodes[0].op.cpu(&cx, &[Some(&x)], &mut out).unwrap();
    assert_eq!(out[0].f32().unwrap()[..3], [0.0, 2.5, 5.0]);
}

#[test]
fn registering_an_op_twice_is_an_error() {
    let mut r = registry();
    assert_eq!(
        r.add::<Scale>().err().map(|e| e.to_string()),
        Some("op `scale` is registered twice".into())
    );
    assert_eq!(r.suggest("spilt"), ["split"]);
}
