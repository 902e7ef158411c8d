//! The metadata checks every op must pass, over any op: its EXAMPLE is a valid graph node
//! naming the op, wiring only ports it has (and every required input), with params that
//! configure; its SUMMARY and ports are documented; and a misspelt param key is rejected at
//! its line:column.

use flowseg_engine::op::DynOp;
use flowseg_engine::spec::{from_node, parse_yaml, Node, NodeSpec, Value};
use std::collections::BTreeSet;

/// The op's EXAMPLE decoded as a graph node.
pub fn example_node(example: &str, op: &str) -> NodeSpec {
    let tree = parse_yaml(example).unwrap_or_else(|e| panic!("`{op}`: EXAMPLE is not YAML: {e}"));
    from_node(&tree).unwrap_or_else(|e| panic!("`{op}`: EXAMPLE is not a graph node: {e}"))
}

/// EXAMPLE names the op, wires only its ports and every required one, and configures.
pub fn check_example(op: &dyn DynOp) {
    let name = op.name();
    let node = example_node(op.example(), name);
    assert_eq!(
        node.op.value, name,
        "`{name}`: EXAMPLE's `op:` names another op"
    );
    let ports: BTreeSet<&str> = op.inputs().iter().map(|p| p.name).collect();
    for key in node.inputs.keys() {
        assert!(
            ports.contains(key.as_str()),
            "`{name}`: EXAMPLE wires `{key}`, which is not an input ({ports:?})"
        );
    }
    for p in op.inputs().iter().filter(|p| !p.optional) {
        assert!(
            node.inputs.contains_key(p.name),
            "`{name}`: EXAMPLE leaves the required input `{}` unconnected",
            p.name
        );
    }
    if let Err(e) = op.configure(node.params.as_ref()) {
        panic!("`{name}`: EXAMPLE's params do not configure: {} {e}", e.loc);
    }
}

/// SUMMARY and every port documented, at least one output, none optional, no port twice.
pub fn check_documented(op: &dyn DynOp) {
    let name = op.name();
    assert!(!op.summary().trim().is_empty(), "`{name}`: empty SUMMARY");
    assert!(!op.outputs().is_empty(), "`{name}`: no outputs");
    let all = op.inputs().iter().chain(op.outputs());
    let mut seen = BTreeSet::new();
    for p in all {
        assert!(
            !p.doc.trim().is_empty(),
            "`{name}`: port `{}` has no doc",
            p.name
        );
        assert!(
            seen.insert(p.name),
            "`{name}`: port `{}` declared twice",
            p.name
        );
    }
    assert!(
        op.outputs().iter().all(|p| !p.optional),
        "`{name}`: outputs cannot be optional"
    );
}

/// A misspelt key added to EXAMPLE's params is rejected, pointing at the key.
pub fn check_misspelt_param(op: &dyn DynOp) {
    // The probe's key sits at line 1, column 1 of its own document.
    let probe = parse_yaml("bogus_key: 1\n").expect("probe parses");
    let Value::Map(probe_entries) = probe.value else {
        panic!("probe is a mapping")
    };
    let key_loc = probe_entries[0].0.loc;
    assert!(key_loc.is_known());

    let name = op.name();
    let node = example_node(op.example(), name);
    // Add the key to the example's params mapping, or make one holding only it.
    let mut params = node
        .params
        .unwrap_or_else(|| Node::detached(Value::Map(Vec::new())));
    match &mut params.value {
        Value::Map(entries) => entries.extend(probe_entries.iter().cloned()),
        Value::Null => params.value = Value::Map(probe_entries.clone()),
        _ => panic!(
            "`{name}`: EXAMPLE's params are {}, not a mapping",
            params.kind()
        ),
    }
    let e = match op.configure(Some(&params)) {
        Ok(configured) => panic!("`{name}`: accepted `bogus_key` as {configured:?}"),
        Err(e) => e,
    };
    assert!(
        e.message.contains("unknown field `bogus_key`"),
        "`{name}`: unexpected message: {}",
        e.message
    );
    assert!(e.loc.line > 0, "`{name}`: the error has no location");
    assert_eq!(
        e.loc, key_loc,
        "`{name}`: the error does not point at the key"
    );
}
