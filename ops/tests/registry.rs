//! Checks every registered built-in op's metadata the same way (`suite/registry.rs`), so adding
//! an op needs no edit here: its EXAMPLE is a valid graph node naming the op, wiring only ports
//! it has (and every required input), with params that configure; its SUMMARY and ports are
//! documented; a misspelt param key is rejected at its line:column; and it has a CUDA twin for
//! its example's params and every gradient case's (`Op::has_cuda`).

mod suite;

use flowseg_engine::Registry;
use flowseg_ops::builtin_registry;

fn registry() -> Registry {
    builtin_registry().expect("built-in ops register without clashes")
}

#[test]
fn the_expected_ops_are_registered() {
    let names: Vec<&str> = registry().iter().map(|op| op.name()).collect();
    for want in [
        "add",
        "batch_norm",
        "box_mask",
        "class_mask",
        "color_jitter",
        "concat",
        "conv2d",
        "cross_entropy",
        "cutout",
        "detach",
        "gaussian_blur",
        "global_avg_pool",
        "leaky_relu",
        "max_confidence",
        "max_pool2d",
        "mean",
        "mix",
        "mul",
        "random_grayscale",
        "relu",
        "resize_bilinear",
        "soft_cross_entropy",
        "softmax",
        "squared_error",
        "threshold",
    ] {
        assert!(names.contains(&want), "`{want}` missing from {names:?}");
    }
}

#[test]
fn registering_twice_is_an_error() {
    let mut r = registry();
    assert!(flowseg_ops::register_builtin_ops(&mut r).is_err());
}

#[test]
fn every_example_parses_names_its_op_and_configures() {
    for op in registry().iter() {
        suite::registry::check_example(op);
    }
}

#[test]
fn every_op_is_documented_and_has_an_output() {
    for op in registry().iter() {
        suite::registry::check_documented(op);
    }
}

#[test]
fn a_misspelt_param_is_rejected_at_its_location() {
    for op in registry().iter() {
        suite::registry::check_misspelt_param(op);
    }
}

/// Every registered op runs on the CUDA executor with the params of its example and of each of
/// its gradient cases: an op added without a twin (`Op::has_cuda` false) fails here by name.
#[test]
fn every_op_has_a_cuda_twin() {
    use flowseg_engine::spec::parse_yaml;
    for op in registry().iter() {
        let name = op.name();
        let example = suite::registry::example_node(op.example(), name);
        let mut params = vec![example.params.clone()];
        for case in op.grad_cases() {
            let tree = parse_yaml(case.params).unwrap_or_else(|e| panic!("`{name}`: {e}"));
            params.push(Some(tree));
        }
        for p in &params {
            let node = op
                .configure(p.as_ref())
                .unwrap_or_else(|e| panic!("`{name}`: params do not configure: {e}"));
            assert!(
                node.has_cuda(),
                "`{name}` has no CUDA twin for params {p:?}"
            );
        }
    }
}
