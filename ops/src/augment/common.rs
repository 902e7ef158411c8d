//! What the augment ops share: param validators whose errors land on the offending YAML value,
//! the image-port check of `infer`, and (in tests) a runner at a chosen iteration and node.
//!
//! Not here: any op's own params or kernels (each op's file holds those).

use flowseg_engine::op::io;
use flowseg_engine::{Port, TensorSpec};
use flowseg_kernels::Nchw;
use serde::{Deserialize, Deserializer};

/// A probability, in [0, 1].
pub(crate) fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let p = f32::deserialize(d)?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(serde::de::Error::custom(format!(
            "p must be a probability in [0, 1], got {p}"
        )))
    }
}

/// The spec of image input `i`: f32[N, C, H, W], with C = 3 when `rgb`.
pub(crate) fn image_spec(
    ports: &[Port],
    inputs: &[Option<&TensorSpec>],
    i: usize,
    rgb: bool,
) -> Result<Nchw, String> {
    let s = io::nchw_f32(ports, inputs, i)?;
    if rgb && s.c != 3 {
        let name = ports.get(i).map_or("?", |p| p.name);
        return Err(format!(
            "`{name}` must be f32[N, 3, H, W] (RGB), got {}",
            TensorSpec::nchw(s)
        ));
    }
    Ok(s)
}

/// Test runner: like `support::test::run`, at a chosen seed, iteration and node.
#[cfg(test)]
pub(crate) fn run_at(
    yaml: &str,
    inputs: &[Option<flowseg_engine::Tensor>],
    cx: flowseg_engine::ExecCx,
) -> Vec<flowseg_engine::Tensor> {
    use flowseg_engine::Tensor;
    let op = crate::support::test::configure(yaml);
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
    op.cpu(&cx, &inputs, &mut outputs).expect("cpu runs");
    outputs
}

/// Test input: a random batch in [lo, hi), deterministic in `seed`.
#[cfg(test)]
pub(crate) fn random_images(
    seed: u64,
    shape: &[usize],
    lo: f64,
    hi: f64,
) -> flowseg_engine::Tensor {
    let n = shape.iter().product();
    let v = flowseg_kernels::testing::to_f32(&flowseg_kernels::testing::rand_vec(seed, n, lo, hi));
    crate::support::test::f32s(shape, &v)
}
