//! `instance_norm`: each (image, channel) plane normalised by its own statistics,
//! y = (x − μ_nc)/√(σ²_nc + eps) with the biased variance and no affine parameters —
//! `nn.InstanceNorm2d(affine=False)`, the instance half of GCT's IBNorm (PixelSSL
//! `ssl_gct.py`, `IBNorm`; the batch half is `batch_norm`, joined by `concat`).
//!
//! Shapes: `x` f32[N, C, H, W] with H·W ≥ 2 (as PyTorch requires in training) → `y` like x.
//!
//! Computed by the batch-norm training kernels on the view [1, N·C, H, W] (a batch of one whose
//! "channels" are the planes) with γ = 1, β = 0; no running statistics are kept (PyTorch's
//! default `track_running_stats=False`, so eval mode normalises the same way). Backward:
//! `instance_norm_bwd` (below, unregistered) recomputes the planes' mean and 1/σ from x (one
//! cheap pass) and runs `batch_norm_train_bwd` on the same view. Not here: affine parameters,
//! running statistics.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{ExecCx, Op, OpError, Port, Tensor, TensorSpec};
use flowseg_kernels::batch_norm::{batch_norm_train_bwd, batch_norm_train_fwd, BatchNormParams};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::{KernelError, Nchw};
use serde::Deserialize;

/// The `instance_norm` op.
pub struct InstanceNorm;

/// Params of `instance_norm`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Added to the variance under the square root; default 1e-5 (PyTorch's).
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_eps() -> f64 {
    1e-5
}

/// The [N, C, H, W] shape as one batch of N·C planes.
fn planes(s: Nchw) -> Nchw {
    Nchw::new(1, s.n * s.c, s.h, s.w)
}

/// `len` f32 of device scratch, every element `value`.
#[cfg(feature = "cuda")]
fn filled(
    dev: &cuda::Device,
    scratch: &mut dev_io::Scratch<'_>,
    len: usize,
    value: f32,
) -> Result<cuda::RawBuf<f32>, OpError> {
    let mut b = scratch.f32(len)?;
    dev.fill32::<f32>(&mut b, value.to_bits())?;
    Ok(b)
}

/// [`normalise`] on the device: y, and the planes' mean and 1/σ in `scratch`.
#[cfg(feature = "cuda")]
fn cuda_normalise(
    dev: &cuda::Device,
    scratch: &mut dev_io::Scratch<'_>,
    x: &cuda::RawBuf<f32>,
    s: Nchw,
    eps: f64,
    y: &mut cuda::RawBuf<f32>,
) -> Result<(cuda::RawBuf<f32>, cuda::RawBuf<f32>), OpError> {
    let v = planes(s);
    let (ones, zeros) = (filled(dev, scratch, v.c, 1.0)?, scratch.f32(v.c)?);
    let (mut rm, mut rv) = (scratch.f32(v.c)?, filled(dev, scratch, v.c, 1.0)?);
    let (mut mean, mut invstd) = (scratch.f32(v.c)?, scratch.f32(v.c)?);
    let p = BatchNormParams {
        eps,
        momentum: 0.0,
        relu: false,
    };
    cuda::batch_norm::batch_norm_train_fwd(
        dev,
        x,
        &ones,
        &zeros,
        v,
        p,
        &mut rm,
        &mut rv,
        y,
        &mut mean,
        &mut invstd,
    )?;
    Ok((mean, invstd))
}

/// Runs the batch-norm training forward on the planes view: y, and the planes' mean and 1/σ.
fn normalise(
    x: &[f32],
    s: Nchw,
    eps: f64,
    y: &mut [f32],
) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    let v = planes(s);
    let (ones, zeros) = (vec![1f32; v.c], vec![0f32; v.c]);
    // Running statistics are a by-product of the kernel that instance norm does not keep.
    let (mut rm, mut rv) = (vec![0f32; v.c], vec![1f32; v.c]);
    let (mut mean, mut invstd) = (vec![0f32; v.c], vec![0f32; v.c]);
    let p = BatchNormParams {
        eps,
        momentum: 0.0,
        relu: false,
    };
    batch_norm_train_fwd(
        x,
        &ones,
        &zeros,
        v,
        p,
        &mut rm,
        &mut rv,
        y,
        &mut mean,
        &mut invstd,
    )?;
    Ok((mean, invstd))
}

impl Op for InstanceNorm {
    const NAME: &'static str = "instance_norm";
    const SUMMARY: &'static str =
        "per-(image, channel) normalisation without affine parameters (InstanceNorm2d)";
    const INPUTS: &'static [Port] = &[Port::req("x", "f32[N, C, H, W], H·W ≥ 2")];
    const OUTPUTS: &'static [Port] = &[Port::req("y", "like x: each plane at mean 0, variance 1")];
    const EXAMPLE: &'static str = "name: inorm\nop: instance_norm\ninputs: { x: halves.tail }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[("x", Feed::Trainable(&[2, 3, 5, 7]))],
    }];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        if x.plane() < 2 && x.n * x.c > 0 {
            return Err(format!(
                "`x` needs more than one value per plane (H·W ≥ 2), got {}",
                TensorSpec::nchw(x)
            ));
        }
        Ok(vec![TensorSpec::nchw(x)])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let y = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        if s.is_empty() {
            return Ok(());
        }
        normalise(x, s, p.eps, y)?;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        if s.is_empty() {
            return Ok(());
        }
        let mut scratch = dev_io::Scratch::new(cx.dev);
        cuda_normalise(cx.dev, &mut scratch, &x, s, p.eps, &mut y)?;
        Ok(())
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }
}

/// The VJP of `instance_norm`: one `instance_norm_bwd` node on (x, dy).
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    if !g.needs_grad(0) {
        return Ok(());
    }
    let x = grad::input(g, InstanceNorm::INPUTS, 0)?;
    let dy = grad::grad_output(g, InstanceNorm::OUTPUTS, 0)?;
    let [dx] = grad::outputs(g.emit::<InstanceNormBwd>(p.clone(), vec![Some(x), Some(dy)])?)?;
    g.set_grad(0, dx);
    Ok(())
}

/// Backward of `instance_norm` (emitted by its VJP, not registered).
struct InstanceNormBwd;

impl Op for InstanceNormBwd {
    const NAME: &'static str = "instance_norm_bwd";
    const SUMMARY: &'static str = "gradient of instance_norm";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W]: the forward's input"),
        Port::req("dy", "like x"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("dx", "like x")];
    const EXAMPLE: &'static str = "";
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(_: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let dy = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        if dy != x {
            return Err(format!(
                "`dy` must match `x` ({}), got {}",
                TensorSpec::nchw(x),
                TensorSpec::nchw(dy)
            ));
        }
        Ok(vec![TensorSpec::nchw(x)])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let dy = io::f32(Self::INPUTS, inputs, 1)?;
        let dx = io::f32_out(Self::OUTPUTS, outputs, 0)?;
        if s.is_empty() {
            return Ok(());
        }
        // The forward's statistics, recomputed; its output lands in dx and is overwritten.
        let (mean, invstd) = normalise(x, s, p.eps, dx)?;
        let v = planes(s);
        let ones = vec![1f32; v.c];
        let (mut dgamma, mut dbeta) = (vec![0f32; v.c], vec![0f32; v.c]);
        batch_norm_train_bwd(
            x,
            &ones,
            &mean,
            &invstd,
            dy,
            None,
            v,
            dx,
            &mut dgamma,
            &mut dbeta,
        )?;
        Ok(())
    }

    /// As on the CPU: the forward recomputed into `dx` for its statistics, then batch norm's
    /// training backward on the planes view.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let mut dx = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        if s.is_empty() {
            return Ok(());
        }
        let dev = cx.dev;
        let mut scratch = dev_io::Scratch::new(dev);
        let (mean, invstd) = cuda_normalise(dev, &mut scratch, &x, s, p.eps, &mut dx)?;
        let v = planes(s);
        let ones = filled(dev, &mut scratch, v.c, 1.0)?;
        let (mut dgamma, mut dbeta) = (scratch.f32(v.c)?, scratch.f32(v.c)?);
        cuda::batch_norm::batch_norm_train_bwd(
            dev,
            &x,
            &ones,
            &mean,
            &invstd,
            &dy,
            None,
            v,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{assert_close, f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed() {
        // Two planes of two values: [1, 3] (μ 2, σ² 1) and [0, 4] (μ 2, σ² 4), eps = 0.
        let x = f32s(&[1, 2, 1, 2], &[1.0, 3.0, 0.0, 4.0]);
        let y = run(
            "name: inorm\nop: instance_norm\nparams: { eps: 0.0 }\n",
            &[Some(x)],
        );
        assert_close(y[0].f32().unwrap(), &[-1.0, 1.0, -1.0, 1.0], 1e-6);
        // With the default eps = 1e-5: 1/√(1 + 1e-5) and 2/√(4 + 1e-5).
        let x = f32s(&[1, 2, 1, 2], &[1.0, 3.0, 0.0, 4.0]);
        let y = run("name: inorm\nop: instance_norm\n", &[Some(x)]);
        let (a, b) = (1.0 / (1.0f64 + 1e-5).sqrt(), 2.0 / (4.0f64 + 1e-5).sqrt());
        assert_close(
            y[0].f32().unwrap(),
            &[-a as f32, a as f32, -b as f32, b as f32],
            1e-6,
        );
    }

    #[test]
    fn infer_rejects_single_pixel_planes() {
        let e = infer_err(
            "name: inorm\nop: instance_norm\n",
            &[Some(TensorSpec::f32(&[2, 3, 1, 1]))],
        );
        assert_eq!(
            e,
            "`x` needs more than one value per plane (H·W ≥ 2), got f32[2, 3, 1, 1]"
        );
    }
}
