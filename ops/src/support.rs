//! Unit-test harness shared by the op files: configure an op from a complete YAML node through
//! the registry, infer its outputs, allocate them and run the CPU reference.
//!
//! Not here: anything op-specific (each op's checks live in its own file).

/// Unit-test harness: configure an op from a complete YAML node, infer, allocate, run.
#[cfg(test)]
pub(crate) mod test {
    use flowseg_engine::spec::{from_node, parse_yaml, DeError, NodeSpec};
    use flowseg_engine::{ExecCx, OpNode, Tensor, TensorSpec};
    use std::sync::Arc;

    /// The op named by `yaml`'s `op:` configured with its `params:`, or the decoding error.
    pub(crate) fn try_configure(yaml: &str) -> Result<Arc<dyn OpNode>, DeError> {
        let node = parse_yaml(yaml).expect("test YAML parses");
        let spec: NodeSpec = from_node(&node).expect("test YAML is a node");
        let registry = crate::builtin_registry().expect("built-in ops register");
        registry
            .get(&spec.op)
            .expect("op is registered")
            .configure(spec.params.as_ref())
    }

    /// As [`try_configure`], panicking on a decoding error.
    pub(crate) fn configure(yaml: &str) -> Arc<dyn OpNode> {
        try_configure(yaml).expect("params decode")
    }

    /// Infers from `inputs` (in port order) and returns the error message.
    pub(crate) fn infer_err(yaml: &str, inputs: &[Option<TensorSpec>]) -> String {
        let specs: Vec<Option<&TensorSpec>> = inputs.iter().map(Option::as_ref).collect();
        configure(yaml)
            .infer(&specs)
            .expect_err("inference should fail")
    }

    /// Configures, infers, allocates zeroed outputs and runs the CPU reference.
    pub(crate) fn run(yaml: &str, inputs: &[Option<Tensor>]) -> Vec<Tensor> {
        let op = configure(yaml);
        let specs: Vec<Option<&TensorSpec>> = inputs
            .iter()
            .map(|t| t.as_ref().map(Tensor::spec))
            .collect();
        let mut outputs: Vec<Tensor> = op
            .infer(&specs)
            .expect("inference succeeds")
            .iter()
            .map(Tensor::zeros)
            .collect();
        let inputs: Vec<Option<&Tensor>> = inputs.iter().map(Option::as_ref).collect();
        let cx = ExecCx {
            seed: 0,
            iteration: 0,
            node_key: 0,
        };
        op.cpu(&cx, &inputs, &mut outputs).expect("cpu runs");
        outputs
    }

    /// An f32 tensor.
    pub(crate) fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape, v.to_vec()).expect("length matches shape")
    }

    /// An i32 tensor.
    pub(crate) fn i32s(shape: &[usize], v: &[i32]) -> Tensor {
        Tensor::from_i32(shape, v.to_vec()).expect("length matches shape")
    }

    /// Element-wise |a − b| ≤ tol.
    pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
        }
    }
}
