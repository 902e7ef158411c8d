//! Multi-input architectures (`Model::INPUTS`): a `forward` node connects every declared input by
//! name and the whole model is traced on all of them, in the architecture's port order whatever
//! the file's order; an unknown input port is FS0103 with a did-you-mean, a missing one FS0103
//! naming it; `eval.models` naming a model that takes more than an image is FS0123 at the entry;
//! the trainer differentiates through both inputs. Test ops only (no built-in op crate).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns; a panic is the report"
)]

use flowseg_engine::exec::run_cpu;
use flowseg_engine::graph::{self, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::model::{Init, Model, Tracer};
use flowseg_engine::spec::{self, GraphError, Loc};
use flowseg_engine::{NoParams, Port, Registry, Tensor, TensorSpec};
use std::collections::BTreeMap;

mod common;
use common::*;

/// y = (image ⊙ w) ⊙ hint: a model reading two inputs, `image` and `hint`, declared in that
/// order; its second output is the `hint` it was given, so a test can see which value landed on
/// which port.
struct Gated;
impl Model for Gated {
    const NAME: &'static str = "gated";
    const SUMMARY: &'static str = "y = image ⊙ w ⊙ hint";
    const INPUTS: &'static [Port] = &[
        Port::req("image", "f32[N, 3, H, W]"),
        Port::req("hint", "like image"),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("logits", "like image"),
        Port::req("hint_seen", "the `hint` input"),
    ];
    type Params = NoParams;
    fn trace(_: &NoParams, _: &mut Tracer<'_>, _: ValueRef) -> Result<Vec<ValueRef>, String> {
        Err("`gated` needs `image` and `hint`".into())
    }
    fn trace_inputs(
        _: &NoParams,
        t: &mut Tracer<'_>,
        inputs: Vec<ValueRef>,
    ) -> Result<Vec<ValueRef>, String> {
        let [image, hint]: [ValueRef; 2] = inputs.try_into().map_err(|_| "two inputs")?;
        let spec = t.spec(&image).ok_or("no image spec")?;
        let w = t.param("w", spec, Init::Ones)?;
        let a = t.op::<Mul>("gate", NoParams {}, vec![Some(image), Some(w)])?;
        let y = t.op::<Mul>(
            "hinted",
            NoParams {},
            vec![Some(a[0].clone()), Some(hint.clone())],
        )?;
        Ok(vec![y[0].clone(), hint])
    }
}

/// logits = image ⊙ w: an ordinary image-input model (the default `INPUTS`).
struct Plain;
impl Model for Plain {
    const NAME: &'static str = "plain";
    const SUMMARY: &'static str = "y = image ⊙ w";
    const OUTPUTS: &'static [Port] = &[Port::req("logits", "like image")];
    type Params = NoParams;
    fn trace(_: &NoParams, t: &mut Tracer<'_>, image: ValueRef) -> Result<Vec<ValueRef>, String> {
        let spec = t.spec(&image).ok_or("no image spec")?;
        let w = t.param("w", spec, Init::Ones)?;
        let y = t.op::<Mul>("gate", NoParams {}, vec![Some(image), Some(w)])?;
        Ok(y)
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add::<Mul>().unwrap().add::<MseLoss>().unwrap();
    r.add_model::<Gated>()
        .unwrap()
        .add_model::<Plain>()
        .unwrap();
    r
}

fn env() -> graph::Env {
    graph::Env {
        batch: BTreeMap::from([
            ("x".to_owned(), TensorSpec::f32(&[1, 3, 1, 2])),
            ("h".to_owned(), TensorSpec::f32(&[1, 3, 1, 2])),
            ("t".to_owned(), TensorSpec::f32(&[1, 3, 1, 2])),
        ]),
        state: BTreeMap::new(),
        hidden: Default::default(),
    }
}

/// An f32[1, 3, 1, 2] tensor.
fn t6(v: &[f32; 6]) -> Tensor {
    Tensor::from_f32(&[1, 3, 1, 2], v.to_vec()).unwrap()
}

fn build(yaml: &str) -> Result<graph::Graph, Vec<GraphError>> {
    let (g, _) = spec::parse_graph(yaml, &[]).unwrap();
    ir::build(&g, &registry(), &env())
}

const HEAD: &str = "\
name: m
train: { iterations: 1, seed: 0 }
models:
  det: { arch: gated }
  seg: { arch: plain }
";

#[test]
fn a_forward_connects_every_input_by_name_in_the_architectures_order() {
    // `hint` is written before `image`: the trace still receives [image, hint].
    let g = build(&format!(
        "{HEAD}nodes:\n  - {{ name: d, op: forward, inputs: {{ hint: batch.h, image: batch.x }}, params: {{ model: det }} }}\n"
    ))
    .unwrap();
    assert_eq!(g.outputs["d.hint_seen"], ValueRef::Batch("h".into()));
    assert!(g.params.contains_key("det.w"), "{:?}", g.params.keys());
    // And it computes x ⊙ w ⊙ h with w = 1.
    let batch = BTreeMap::from([
        ("x".to_owned(), t6(&[1., 2., 3., 4., 5., 6.])),
        ("h".to_owned(), t6(&[2., 0., -1., 1., 0.5, 3.])),
        ("t".to_owned(), t6(&[0.; 6])),
    ]);
    let state = BTreeMap::from([("det.w".to_owned(), t6(&[1.; 6]))]);
    let run = run_cpu(&g, &batch, &state, 0, 0).unwrap();
    let y = run.get(&g.outputs["d.logits"]).unwrap().f32().unwrap();
    assert_eq!(y, &[2., 0., -3., 4., 2.5, 18.]);
}

#[test]
fn a_misspelt_input_is_fs0103_with_the_nearest_port_and_a_missing_one_is_named() {
    let errs = build(&format!(
        "{HEAD}nodes:\n  - {{ name: d, op: forward, inputs: {{ image: batch.x, hnt: batch.h }}, params: {{ model: det }} }}\n"
    ))
    .unwrap_err();
    let misspelt = errs
        .iter()
        .find(|e| e.message.contains("no input `hnt`"))
        .unwrap_or_else(|| panic!("{errs:?}"));
    assert_eq!(misspelt.code, "FS0103");
    assert_eq!(misspelt.loc, Loc { line: 7, col: 60 });
    assert!(
        misspelt
            .help
            .as_deref()
            .is_some_and(|h| h.contains("did you mean `hint`?")),
        "{misspelt:?}"
    );
    let missing = errs
        .iter()
        .find(|e| e.message.contains("required input `hint` is not connected"))
        .unwrap_or_else(|| panic!("{errs:?}"));
    assert_eq!(missing.code, "FS0103");
}

#[test]
fn an_image_model_takes_no_second_input() {
    let errs = build(&format!(
        "{HEAD}nodes:\n  - {{ name: s, op: forward, inputs: {{ image: batch.x, hint: batch.h }}, params: {{ model: seg }} }}\n"
    ))
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.code == "FS0103" && e.message.contains("no input `hint`")),
        "{errs:?}"
    );
}

#[test]
fn eval_models_naming_a_multi_input_model_is_fs0123_at_the_entry() {
    let errs = build(&format!(
        "{HEAD}eval: {{ models: [seg, det] }}\nnodes:\n  - {{ name: s, op: forward, inputs: {{ image: batch.x }}, params: {{ model: seg }} }}\n"
    ))
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].code, "FS0123");
    assert!(errs[0].message.contains("`det`") && errs[0].message.contains("`hint`"));
    assert_eq!(errs[0].loc, Loc { line: 6, col: 23 });
    // The image model alone is fine.
    build(&format!(
        "{HEAD}eval: {{ models: [seg] }}\nnodes:\n  - {{ name: s, op: forward, inputs: {{ image: batch.x }}, params: {{ model: seg }} }}\n"
    ))
    .unwrap();
}

#[test]
fn the_trainer_differentiates_through_both_inputs() {
    // loss = mse(seg(x) ⊙ det.w ⊙ h, t): seg's optimizer gets its gradient through `det`'s image
    // input, and `det` is held fixed (its own optimizer is absent).
    use flowseg_engine::train::Trainer;
    let yaml = format!(
        "{HEAD}optim:\n  seg: {{ kind: sgd, lr: 0.1, minimize: {{ l.loss: 1.0 }} }}\nnodes:\n  - {{ name: s, op: forward, inputs: {{ image: batch.x }}, params: {{ model: seg }} }}\n  - {{ name: d, op: forward, inputs: {{ image: s.logits, hint: batch.h }}, params: {{ model: det }} }}\n  - {{ name: l, op: mse, inputs: {{ x: d.logits, t: batch.t }} }}\n"
    );
    let (spec, _) = spec::parse_graph(&yaml, &[]).unwrap();
    let mut t = Trainer::new(&spec, &registry(), &env(), BTreeMap::new()).unwrap();
    let batch = BTreeMap::from([
        ("x".to_owned(), t6(&[1.; 6])),
        ("h".to_owned(), t6(&[2.; 6])),
        ("t".to_owned(), t6(&[0.; 6])),
    ]);
    let det_before = t.state["det.w"].clone();
    let first = t.step(&batch, 0).unwrap()[0].1;
    let second = t.step(&batch, 1).unwrap()[0].1;
    assert!(second < first, "{first} → {second}");
    assert_eq!(t.state["det.w"], det_before);
    assert_ne!(t.state["seg.w"], t6(&[1.; 6]));
}
