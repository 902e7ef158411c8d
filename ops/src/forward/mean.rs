//! `mean`: the scalar mean of every element of an f32 tensor, `torch.mean(x)`, summed in f64.
//! Used for the fraction of confident pixels (the mean of a 0/1 mask) and for averaging a
//! per-pixel loss map into a loss.
//!
//! Shapes: `x` f32 of any shape with at least one element → `y` f32[] (a scalar).
//!
//! Param `over` names the axes reduced. Only `all` exists for now (and is the default); axis
//! lists (`over: [2, 3]`, keepdim) would be new variants of [`Over`], so graphs written today
//! keep their meaning.
//!
//! Backward: `mean_bwd` (below, unregistered) broadcasts dy / numel over the input's shape,
//! which it takes from its params, so the forward input is not kept alive for it. Its kernels'
//! CUDA twins exist (kernels/src/cuda); the engine does not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::reduce::{mean_bwd, mean_fwd};
use serde::Deserialize;

/// The `mean` op.
pub struct Mean;

/// Params of `mean`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Which axes to average over; default and only value so far `all`.
    #[serde(default)]
    pub over: Over,
}

/// The axes `mean` reduces, as written in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Over {
    /// Every element: the output is a scalar f32[].
    #[default]
    All,
}

impl Op for Mean {
    const NAME: &'static str = "mean";
    const SUMMARY: &'static str = "scalar mean of every element, torch.mean(x)";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32, any shape, at least one element")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "f32[] scalar")];
    const EXAMPLE: &'static str =
        "name: confident_fraction\nop: mean\ninputs: { x: mask.y }\nparams: { over: all }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{ over: all }",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::f32_spec(Self::INPUTS, inputs, 0)?;
        if x.is_empty() {
            return Err(format!(
                "`x` must have at least one element to average, got {x}"
            ));
        }
        match p.over {
            Over::All => Ok(vec![TensorSpec::scalar()]),
        }
    }

    fn cpu(
        _: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        match io::f32_out(Self::OUTPUTS, outputs, 0)? {
            [out] => {
                *out = mean_fwd(x)?;
                Ok(())
            }
            other => Err(OpError::Output {
                port: "y",
                problem: format!("expected a scalar output, got {} elements", other.len()),
            }),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::reduce::mean_fwd(cx.dev, &x, &mut y)?)
    }

    fn vjp(_: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `mean`: one `mean_bwd` node reading only dy; the input's shape goes into its
/// params.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let x = grad::input(g, Mean::INPUTS, 0)?;
    let shape = g.spec(&x).ok_or("`x` has no spec")?.shape.clone();
    let dy = grad::grad_output(g, Mean::OUTPUTS, 0)?;
    let [dx] = grad::outputs(g.emit::<MeanBwd>(BwdParams { shape }, vec![Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `mean` (emitted by its VJP, not registered): dx = dy / numel everywhere.
struct MeanBwd;

/// Params of `mean_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward input's shape, with at least one element: the shape of `dx`.
    shape: Vec<usize>,
}

impl Op for MeanBwd {
    const NAME: &'static str = "mean_bwd";
    const SUMMARY: &'static str = "gradient of mean: dy / numel broadcast over the input's shape";
    const INPUTS: &'static [Port] = &[Port::req("dy", "f32[]: the gradient of mean's `y`")];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "f32 of shape `shape`")];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let dy = io::spec(Self::INPUTS, inputs, 0)?;
        if *dy != TensorSpec::scalar() {
            return Err(format!("`dy` must be f32[], got {dy}"));
        }
        let dx = TensorSpec::f32(&p.shape);
        if dx.is_empty() {
            return Err(format!("`shape` must have at least one element, got {dx}"));
        }
        Ok(vec![dx])
    }

    fn cpu(
        _: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let dy = match io::f32(Self::INPUTS, inputs, 0)? {
            [v] => *v,
            other => {
                return Err(OpError::Input {
                    port: "dy",
                    problem: format!("expected a scalar, got {} elements", other.len()),
                })
            }
        };
        Ok(mean_bwd(dy, io::f32_out(Self::OUTPUTS, outputs, 0)?)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let dy = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        Ok(cuda::reduce::mean_bwd(cx.dev, &dy, &mut dx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, MeanBwd};
    use crate::support::test::{f32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const NODE: &str = "name: avg\nop: mean\n";

    #[test]
    fn hand_computed() {
        // (1 + 2 + 3 + 4 + 5 − 3) / 6 = 2.
        let x = f32s(&[1, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -3.0]);
        let y = run(NODE, &[Some(x)]);
        assert_eq!(y[0].spec(), &TensorSpec::scalar());
        assert_eq!(y[0].f32(), Some(&[2.0][..]));
        // The confident fraction of a 0/1 mask; `over: all` spelled out.
        let mask = f32s(&[2, 2], &[1.0, 0.0, 1.0, 1.0]);
        let y = run("name: f\nop: mean\nparams: { over: all }\n", &[Some(mask)]);
        assert_eq!(y[0].f32(), Some(&[0.75][..]));
        // A scalar is its own mean.
        let y = run(NODE, &[Some(f32s(&[], &[-1.5]))]);
        assert_eq!(y[0].f32(), Some(&[-1.5][..]));
    }

    #[test]
    fn backward_broadcasts_dy_over_numel() {
        let p = BwdParams { shape: vec![2, 2] };
        let dy = f32s(&[], &[3.0]);
        let specs = [Some(dy.spec())];
        let mut out: Vec<Tensor> = MeanBwd::infer(&p, &specs)
            .unwrap()
            .iter()
            .map(Tensor::zeros)
            .collect();
        assert_eq!(out[0].spec(), &TensorSpec::f32(&[2, 2]));
        MeanBwd::cpu(&p, &ExecCx::default(), &[Some(&dy)], &mut out).unwrap();
        assert_eq!(out[0].f32(), Some(&[0.75; 4][..]));
    }

    #[test]
    fn infer_rejects_empty_and_labels() {
        let e = infer_err(NODE, &[Some(TensorSpec::f32(&[2, 0, 3]))]);
        assert_eq!(
            e,
            "`x` must have at least one element to average, got f32[2, 0, 3]"
        );
        let e = infer_err(NODE, &[Some(TensorSpec::i32(&[2, 3]))]);
        assert_eq!(e, "`x` must be f32, got i32[2, 3]");
    }

    #[test]
    fn only_over_all_exists() {
        let e = try_configure("name: avg\nop: mean\nparams: { over: channels }\n").unwrap_err();
        assert!(e.message.contains("unknown variant `channels`"), "{e}");
    }
}
