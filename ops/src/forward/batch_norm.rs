//! `batch_norm`: per-channel batch normalization over (N, H, W), PyTorch's
//! `F.batch_norm(x, running_mean, running_var, gamma, beta, training, momentum, eps)` as
//! `nn.BatchNorm2d` calls it — except that the running statistics are not updated in place: the
//! op *returns* them, and the model assigns them back to its buffers (`Tracer::assign`), so the
//! graph stays a pure function of its inputs.
//!
//! With M = N·H·W values per channel c, x̂ = (x − mean)·invstd, invstd = 1/√(var + eps):
//! * `mode: train` (default): mean and the biased var are the batch's; y = x̂·gamma + beta;
//!   `new_mean` = (1 − momentum)·running_mean + momentum·mean and `new_var` likewise with the
//!   *unbiased* var·M/(M − 1) (PyTorch's rule); `save_mean`/`save_invstd` are the batch mean and
//!   invstd, kept for the backward. M < 2 is refused at build time, as PyTorch refuses it.
//! * `mode: eval`: mean and var are `running_mean` and `running_var`; `new_mean`/`new_var` are
//!   copies of them (nothing moves); `save_mean`/`save_invstd` are running_mean and
//!   1/√(running_var + eps). Also the mode of a frozen BN inside a trained model.
//!
//! * `relu: true`: y = max(x̂·gamma + beta, 0) in the same pass — what the fusion pass makes of a
//!   `batch_norm` whose `y` only a `relu` reads ([`Op::fuse_consumer`]); the backward then
//!   passes the gradient where y > 0 only. Bit-identical to `batch_norm` then `relu`, forward
//!   and backward (ops/tests/fusion.rs); it has no finite-difference case of its own because
//!   a central difference across the ReLU's kink is meaningless, and batch norm's ±eps moves
//!   every pre-activation of a channel at once.
//!
//! Shapes: `x` f32[N, C, H, W]; `gamma`, `beta`, `running_mean`, `running_var` f32[C] → `y`
//! f32[N, C, H, W], the four statistics f32[C].
//!
//! Backward: one `batch_norm_bwd` node (below, unregistered) produces whichever of dx, dgamma
//! and dbeta the graph needs, with the train-mode formula (the batch statistics depend on x)
//! from `save_mean`/`save_invstd`, or the eval-mode one (statistics constant) from the running
//! statistics. The running statistics are buffers, never trained: if one depends on trainable
//! state, or a gradient reaches a statistics output, the VJP reports an error instead of
//! dropping that gradient. `batch_norm_bwd` takes the `relu_bwd` in front of its `dy` as its
//! optional `relu_y` ([`Op::fuse_producer`]), so a `relu` after batch norm costs no pass of its
//! own in either direction. Its kernels' CUDA twins exist (kernels/src/cuda); the engine does
//! not dispatch ops to them yet.

use crate::forward::relu::{Relu, ReluBwd};
use crate::grad;
use flowseg_engine::op::{self, io, Feed, GradCase, Vjp};
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::{ExecCx, Op, OpError, OpNode, Port, Tensor, TensorSpec};
use flowseg_kernels::batch_norm::{
    batch_norm_eval_bwd, batch_norm_eval_fwd, batch_norm_eval_stats_fwd, batch_norm_train_bwd,
    batch_norm_train_fwd, BatchNormParams,
};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::Nchw;
use serde::{Deserialize, Deserializer};

/// The `batch_norm` op.
pub struct BatchNorm;

/// Which statistics normalize `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The batch's own mean and variance; the running statistics move (PyTorch `training=True`).
    #[default]
    Train,
    /// The running statistics, untouched (PyTorch `training=False`; also a frozen layer).
    Eval,
}

/// Params of `batch_norm`, with PyTorch's names and defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Added to the variance under the square root; finite and ≥ 0, default 1e-5.
    #[serde(default = "default_eps", deserialize_with = "finite_non_negative")]
    pub eps: f64,
    /// Weight of the batch statistic in the new running average, in [0, 1]; default 0.1. Only
    /// `train` mode reads it.
    #[serde(default = "default_momentum", deserialize_with = "unit_interval")]
    pub momentum: f64,
    /// `train` (default) or `eval`.
    #[serde(default)]
    pub mode: Mode,
    /// Also apply a ReLU to `y` (default false; the fusion pass sets it when a `relu` follows).
    #[serde(default)]
    pub relu: bool,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_momentum() -> f64 {
    0.1
}

/// Rejects an eps that would make invstd NaN, now and at its line:column.
fn finite_non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "eps must be finite and >= 0, got {v}"
        )))
    }
}

/// Rejects a momentum outside [0, 1], which would extrapolate the running statistics.
fn unit_interval<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "momentum must be in [0, 1], got {v}"
        )))
    }
}

impl Params {
    fn kernel(&self) -> BatchNormParams {
        BatchNormParams {
            eps: self.eps,
            momentum: self.momentum,
            relu: self.relu,
        }
    }
}

/// Checks `x` and the four per-channel inputs (ports 1..5 of `ports`), returning x's shape.
fn check_inputs(ports: &[Port], inputs: &[Option<&TensorSpec>]) -> Result<Nchw, String> {
    let x = io::nchw_f32(ports, inputs, 0)?;
    let want = TensorSpec::f32(&[x.c]);
    for i in 1..5 {
        let s = io::spec(ports, inputs, i)?;
        if *s != want {
            let name = ports.get(i).map_or("?", |p| p.name);
            return Err(format!(
                "`{name}` must be {want} (one value per channel of `x`), got {s}"
            ));
        }
    }
    Ok(x)
}

/// The output tensor `t` at port `k` of `ports` as f32 (the error names that port).
fn f32_at<'a>(ports: &[Port], k: usize, t: &'a mut Tensor) -> Result<&'a mut [f32], OpError> {
    io::f32_out(ports.get(k..).unwrap_or(&[]), std::slice::from_mut(t), 0)
}

impl Op for BatchNorm {
    const NAME: &'static str = "batch_norm";
    const SUMMARY: &'static str =
        "batch normalization per channel (train: batch statistics, updated running ones; eval)";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W] input"),
        Port::req("gamma", "f32[C] scale (PyTorch's `weight`)"),
        Port::req("beta", "f32[C] shift (PyTorch's `bias`)"),
        Port::req("running_mean", "f32[C] running mean (a buffer)"),
        Port::req("running_var", "f32[C] running variance (a buffer)"),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "f32[N, C, H, W] normalized, scaled and shifted"),
        Port::req(
            "new_mean",
            "f32[C]: the updated running mean (train), a copy of `running_mean` (eval)",
        ),
        Port::req(
            "new_var",
            "f32[C]: the updated running variance (train), a copy of `running_var` (eval)",
        ),
        Port::req(
            "save_mean",
            "f32[C]: the mean that normalized `x` (batch's in train, running in eval)",
        ),
        Port::req(
            "save_invstd",
            "f32[C]: the 1/√(var + eps) that normalized `x`",
        ),
    ];
    const EXAMPLE: &'static str = "name: bn1\nop: batch_norm\n\
        inputs: { x: conv1.y, gamma: state.student.bn1.weight, beta: state.student.bn1.bias,\n  \
        running_mean: state.student.bn1.running_mean, running_var: state.student.bn1.running_var }\n\
        params: { eps: 1.0e-5, momentum: 0.1, mode: train }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Train mode: the batch statistics depend on x (the two correction terms of dx).
        GradCase {
            params: "{ eps: 1.0e-3 }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("gamma", Feed::Trainable(&[3])),
                ("beta", Feed::Trainable(&[3])),
                ("running_mean", Feed::Constant(&[3])),
                ("running_var", Feed::Constant(&[3])),
            ],
        },
        // Eval mode: constant running statistics, read by the backward from the forward's inputs.
        GradCase {
            params: "{ mode: eval }",
            feeds: &[
                ("x", Feed::Trainable(&[2, 3, 5, 7])),
                ("gamma", Feed::Trainable(&[3])),
                ("beta", Feed::Trainable(&[3])),
                ("running_mean", Feed::Constant(&[3])),
                ("running_var", Feed::Constant(&[3])),
            ],
        },
    ];
    type Params = Params;

    fn has_cuda(_: &Params) -> bool {
        true
    }

    fn infer(p: &Params, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let x = check_inputs(Self::INPUTS, inputs)?;
        let m = x.n * x.plane();
        if p.mode == Mode::Train && m < 2 {
            return Err(format!(
                "`x` must have more than 1 value per channel in train mode (N·H·W = {m}), got {}",
                TensorSpec::nchw(x)
            ));
        }
        let c = TensorSpec::f32(&[x.c]);
        Ok(vec![
            TensorSpec::nchw(x),
            c.clone(),
            c.clone(),
            c.clone(),
            c,
        ])
    }

    fn cpu(
        p: &Params,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let gamma = io::f32(Self::INPUTS, inputs, 1)?;
        let beta = io::f32(Self::INPUTS, inputs, 2)?;
        let running_mean = io::f32(Self::INPUTS, inputs, 3)?;
        let running_var = io::f32(Self::INPUTS, inputs, 4)?;
        let n = outputs.len();
        let [y, new_mean, new_var, save_mean, save_invstd] = outputs else {
            return Err(OpError::Output {
                port: "y",
                problem: format!("expected 5 outputs, got {n}"),
            });
        };
        let y = f32_at(Self::OUTPUTS, 0, y)?;
        let new_mean = f32_at(Self::OUTPUTS, 1, new_mean)?;
        let new_var = f32_at(Self::OUTPUTS, 2, new_var)?;
        let save_mean = f32_at(Self::OUTPUTS, 3, save_mean)?;
        let save_invstd = f32_at(Self::OUTPUTS, 4, save_invstd)?;
        for (port, out, from) in [
            ("new_mean", &mut *new_mean, running_mean),
            ("new_var", &mut *new_var, running_var),
        ] {
            if out.len() != from.len() {
                return Err(OpError::Output {
                    port,
                    problem: format!("{} elements, expected {}", out.len(), from.len()),
                });
            }
            // Train mode moves the copies in place; eval mode returns them as they are.
            out.copy_from_slice(from);
        }
        match p.mode {
            Mode::Train => batch_norm_train_fwd(
                x,
                gamma,
                beta,
                s,
                p.kernel(),
                new_mean,
                new_var,
                y,
                save_mean,
                save_invstd,
            )?,
            Mode::Eval => {
                batch_norm_eval_fwd(x, gamma, beta, running_mean, running_var, s, p.kernel(), y)?;
                // The kernel's own invstd, in f64 then rounded, so a reader sees what it used.
                batch_norm_eval_stats_fwd(
                    running_mean,
                    running_var,
                    p.eps,
                    save_mean,
                    save_invstd,
                )?;
            }
        }
        Ok(())
    }

    /// The running statistics are copied to `new_mean`/`new_var` on the device (train mode then
    /// moves them there, eval mode returns them as they are), as on the CPU.
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &Params,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        if p.mode != Mode::Train {
            return Err(OpError::Cuda(
                "eval-mode batch_norm has no CUDA twin yet".into(),
            ));
        }
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let gamma = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let beta = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let running_mean = dev_io::f32(Self::INPUTS, inputs, 3)?;
        let running_var = dev_io::f32(Self::INPUTS, inputs, 4)?;
        let out = |k| dev_io::f32_out(Self::OUTPUTS, outputs, k);
        let (mut y, mut new_mean, mut new_var) = (out(0)?, out(1)?, out(2)?);
        let (mut save_mean, mut save_invstd) = (out(3)?, out(4)?);
        cx.dev.copy(&running_mean, &mut new_mean)?;
        cx.dev.copy(&running_var, &mut new_var)?;
        if p.mode == Mode::Eval {
            cuda::batch_norm::batch_norm_eval_fwd(
                cx.dev,
                &x,
                &gamma,
                &beta,
                &running_mean,
                &running_var,
                s,
                p.kernel(),
                &mut y,
            )?;
            return Ok(cuda::batch_norm::batch_norm_eval_stats_fwd(
                cx.dev,
                &running_mean,
                &running_var,
                p.eps,
                &mut save_mean,
                &mut save_invstd,
            )?);
        }
        Ok(cuda::batch_norm::batch_norm_train_fwd(
            cx.dev,
            &x,
            &gamma,
            &beta,
            s,
            p.kernel(),
            &mut new_mean,
            &mut new_var,
            &mut y,
            &mut save_mean,
            &mut save_invstd,
        )?)
    }

    fn vjp(p: &Params, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(p, g))
    }

    fn fuse_consumer(p: &Params, port: usize, consumer: &dyn OpNode) -> Option<Params> {
        (port == 0 && !p.relu && op::is::<Relu>(consumer)).then(|| Params {
            relu: true,
            ..p.clone()
        })
    }
}

/// The VJP of `batch_norm`: one `batch_norm_bwd` node, asked for exactly the gradients of x,
/// gamma and beta that the graph needs (as `conv2d_bwd` is: the kernels compute all three in one
/// pass; unwanted outputs are f32[0]).
///
/// Errors rather than silently dropping a gradient: a running statistic that depends on
/// trainable state (they are buffers: assigned, never trained), and a gradient arriving at a
/// statistics output (they feed `assign`s, not losses; `detach` one to use it in a loss).
fn backward(p: &Params, g: &mut Vjp<'_>) -> Result<(), String> {
    for i in [3, 4] {
        if g.needs_grad(i) {
            return Err(format!(
                "`{}` depends on trainable state, but running statistics are buffers and get \
                 no gradient; feed a buffer (or `detach` it)",
                BatchNorm::INPUTS[i].name
            ));
        }
    }
    for k in 1..BatchNorm::OUTPUTS.len() {
        if g.grad_output(k).is_some() {
            return Err(format!(
                "a gradient reached `{}`, but batch_norm's statistics outputs are not \
                 differentiable; `detach` it to use it in a loss",
                BatchNorm::OUTPUTS[k].name
            ));
        }
    }
    let want = Wanted {
        dx: g.needs_grad(0),
        dgamma: g.needs_grad(1),
        dbeta: g.needs_grad(2),
    };
    if !(want.dx || want.dgamma || want.dbeta) {
        return Ok(());
    }
    let x = grad::input(g, BatchNorm::INPUTS, 0)?;
    let gamma = grad::input(g, BatchNorm::INPUTS, 1)?;
    let dy = grad::grad_output(g, BatchNorm::OUTPUTS, 0)?;
    // Train: the statistics the forward saved. Eval: the running statistics it read.
    let (a, b) = match p.mode {
        Mode::Train => (g.output(3), g.output(4)),
        Mode::Eval => (
            grad::input(g, BatchNorm::INPUTS, 3)?,
            grad::input(g, BatchNorm::INPUTS, 4)?,
        ),
    };
    let params = BwdParams {
        eps: p.eps,
        mode: p.mode,
        want,
    };
    // A fused ReLU: its output is the mask of the gradient.
    let relu_y = p.relu.then(|| g.output(0));
    let [dx, dgamma, dbeta] = grad::outputs(g.emit::<BatchNormBwd>(
        params,
        vec![Some(x), Some(gamma), Some(a), Some(b), Some(dy), relu_y],
    )?)?;
    for (i, wanted, grad) in [
        (0, want.dx, dx),
        (1, want.dgamma, dgamma),
        (2, want.dbeta, dbeta),
    ] {
        if wanted {
            g.set_grad(i, grad);
        }
    }
    Ok(())
}

/// Backward of `batch_norm` (emitted by its VJP, not registered): any of dx, dgamma, dbeta.
struct BatchNormBwd;

/// Which gradients a `batch_norm_bwd` node produces; the others are empty outputs.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wanted {
    /// The input gradient.
    dx: bool,
    /// The scale gradient.
    dgamma: bool,
    /// The shift gradient.
    dbeta: bool,
}

/// Params of `batch_norm_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward's eps (eval mode recomputes invstd from the running variance).
    eps: f64,
    /// The forward's mode: which formula, and what `stat_a`/`stat_b` are.
    mode: Mode,
    /// The gradients to produce.
    want: Wanted,
}

impl Op for BatchNormBwd {
    const NAME: &'static str = "batch_norm_bwd";
    const SUMMARY: &'static str = "gradient of batch_norm: any of dx, dgamma, dbeta from dy";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32[N, C, H, W]: batch_norm's input"),
        Port::req("gamma", "f32[C]: batch_norm's scale"),
        Port::req(
            "stat_a",
            "f32[C]: train, the forward's `save_mean`; eval, its `running_mean`",
        ),
        Port::req(
            "stat_b",
            "f32[C]: train, the forward's `save_invstd`; eval, its `running_var`",
        ),
        Port::req("dy", "f32[N, C, H, W]: the gradient of batch_norm's `y`"),
        Port::opt(
            "relu_y",
            "f32[N, C, H, W]: a ReLU's output after batch norm; the gradient passes where > 0",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("dx", "f32[N, C, H, W], or f32[0] when not wanted"),
        Port::req("dgamma", "f32[C], or f32[0] when not wanted"),
        Port::req("dbeta", "f32[C], or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        // x, gamma and the two statistics are checked as the forward checks its five inputs.
        let x = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let want = TensorSpec::f32(&[x.c]);
        for i in 1..4 {
            let s = io::spec(Self::INPUTS, inputs, i)?;
            if *s != want {
                return Err(format!(
                    "`{}` must be {want}, got {s}",
                    Self::INPUTS[i].name
                ));
            }
        }
        let x = TensorSpec::nchw(x);
        let dy = io::spec(Self::INPUTS, inputs, 4)?;
        if *dy != x {
            return Err(format!("`dy` must be {x} (batch_norm's `y`), got {dy}"));
        }
        if let Some(r) = inputs.get(5).copied().flatten() {
            if *r != x {
                return Err(format!("`relu_y` must be {x} (batch_norm's `y`), got {r}"));
            }
        }
        let pick = |wanted: bool, spec: &TensorSpec| {
            if wanted {
                spec.clone()
            } else {
                TensorSpec::f32(&[0])
            }
        };
        Ok(vec![
            pick(p.want.dx, &x),
            pick(p.want.dgamma, &want),
            pick(p.want.dbeta, &want),
        ])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let x = io::f32(Self::INPUTS, inputs, 0)?;
        let gamma = io::f32(Self::INPUTS, inputs, 1)?;
        let a = io::f32(Self::INPUTS, inputs, 2)?;
        let b = io::f32(Self::INPUTS, inputs, 3)?;
        let dy = io::f32(Self::INPUTS, inputs, 4)?;
        let relu_y = match inputs.get(5).copied().flatten() {
            Some(_) => Some(io::f32(Self::INPUTS, inputs, 5)?),
            None => None,
        };
        let n = outputs.len();
        let [dx, dgamma, dbeta] = outputs else {
            return Err(OpError::Output {
                port: "dx",
                problem: format!("expected 3 outputs, got {n}"),
            });
        };
        // The kernels always produce all three: an unwanted one goes to a scratch buffer (C
        // values for dgamma/dbeta; a whole dx only when x is frozen, which is rare).
        let mut scratch = [Vec::new(), Vec::new(), Vec::new()];
        let [sx, sg, sb] = &mut scratch;
        let dx = pick_out(p.want.dx, 0, dx, sx, s.len())?;
        let dgamma = pick_out(p.want.dgamma, 1, dgamma, sg, s.c)?;
        let dbeta = pick_out(p.want.dbeta, 2, dbeta, sb, s.c)?;
        let kp = BatchNormParams {
            eps: p.eps,
            momentum: 0.0,
            relu: false,
        };
        match p.mode {
            Mode::Train => {
                batch_norm_train_bwd(x, gamma, a, b, dy, relu_y, s, dx, dgamma, dbeta)?;
            }
            Mode::Eval => {
                batch_norm_eval_bwd(x, gamma, a, b, dy, relu_y, s, kp, dx, dgamma, dbeta)?;
            }
        }
        Ok(())
    }

    /// An unwanted gradient goes to device scratch allocated for the call (rare: a frozen `x`).
    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let x = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let gamma = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let a = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 3)?;
        let dy = dev_io::f32(Self::INPUTS, inputs, 4)?;
        let relu_y = dev_io::f32_opt(Self::INPUTS, inputs, 5)?;
        let relu_y = relu_y.as_ref().map(|r| r as &dyn cuda::DeviceBuf<f32>);
        let mut scratch = dev_io::Scratch::new(cx.dev);
        let mut pick = |wanted: bool, k: usize, len: usize| -> Result<cuda::RawBuf<f32>, OpError> {
            match wanted {
                true => dev_io::f32_out(Self::OUTPUTS, outputs, k),
                false => scratch.f32(len),
            }
        };
        let mut dx = pick(p.want.dx, 0, s.len())?;
        let mut dgamma = pick(p.want.dgamma, 1, s.c)?;
        let mut dbeta = pick(p.want.dbeta, 2, s.c)?;
        match p.mode {
            Mode::Train => cuda::batch_norm::batch_norm_train_bwd(
                cx.dev,
                &x,
                &gamma,
                &a,
                &b,
                &dy,
                relu_y,
                s,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
            )?,
            Mode::Eval => {
                let kp = BatchNormParams {
                    eps: p.eps,
                    momentum: 0.0,
                    relu: false,
                };
                cuda::batch_norm::batch_norm_eval_bwd(
                    cx.dev,
                    &x,
                    &gamma,
                    &a,
                    &b,
                    &dy,
                    relu_y,
                    s,
                    kp,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                )?
            }
        }
        drop(scratch);
        Ok(())
    }

    /// The `relu_bwd` in front of `dy` (it reads the ReLU's output and its gradient): its two
    /// inputs go to `relu_y` and `dy`.
    fn fuse_producer(
        p: &BwdParams,
        port: usize,
        producer: &dyn OpNode,
    ) -> Option<(BwdParams, Vec<usize>)> {
        (port == 4 && op::is::<ReluBwd>(producer)).then(|| (p.clone(), vec![5, 4]))
    }
}

/// `batch_norm_bwd`'s output `k` if it is wanted, else `scratch` resized to `len`.
fn pick_out<'a>(
    wanted: bool,
    k: usize,
    t: &'a mut Tensor,
    scratch: &'a mut Vec<f32>,
    len: usize,
) -> Result<&'a mut [f32], OpError> {
    if wanted {
        f32_at(BatchNormBwd::OUTPUTS, k, t)
    } else {
        scratch.resize(len, 0.0);
        Ok(scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchNormBwd, BwdParams, Mode, Wanted};
    use crate::support::test::{assert_close, f32s, infer_err, run, try_configure};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    // N=2, C=2, H=1, W=2. Channel 0 holds {0, 2, 0, 2}: mean 1, biased var 1, x̂ = ±1.
    // Channel 1 holds {1, 1 | 5, 5}: mean 3, biased var 4, invstd 1/2, x̂ = −1, −1, 1, 1.
    const X: [f32; 8] = [0.0, 2.0, 1.0, 1.0, 0.0, 2.0, 5.0, 5.0];

    fn inputs(rm: [f32; 2], rv: [f32; 2]) -> Vec<Option<Tensor>> {
        vec![
            Some(f32s(&[2, 2, 1, 2], &X)),
            Some(f32s(&[2], &[2.0, 3.0])),
            Some(f32s(&[2], &[0.5, -1.0])),
            Some(f32s(&[2], &rm)),
            Some(f32s(&[2], &rv)),
        ]
    }

    #[test]
    fn hand_computed_train() {
        let out = run(
            "name: bn\nop: batch_norm\nparams: { eps: 0 }\n",
            &inputs([0.0, 0.0], [1.0, 1.0]),
        );
        // y = x̂·gamma + beta: channel 0 2·(±1) + 0.5, channel 1 3·(±1) − 1.
        assert_eq!(
            out[0].f32(),
            Some(&[-1.5, 2.5, -4.0, -4.0, -1.5, 2.5, 2.0, 2.0][..])
        );
        // Unbiased var = biased·4/3; from (0, 1) with momentum 0.1: mean 0.1·(1, 3),
        // var 0.9 + 0.1·(4/3, 16/3).
        assert_close(out[1].f32().unwrap(), &[0.1, 0.3], 1e-7);
        assert_close(
            out[2].f32().unwrap(),
            &[0.9 + 0.4 / 3.0, 0.9 + 1.6 / 3.0],
            1e-6,
        );
        assert_eq!(out[3].f32(), Some(&[1.0, 3.0][..]));
        assert_eq!(out[4].f32(), Some(&[1.0, 0.5][..]));
    }

    #[test]
    fn hand_computed_eval() {
        // Running statistics equal to this batch's reproduce the train y and stay as they are.
        let out = run(
            "name: bn\nop: batch_norm\nparams: { eps: 0, mode: eval }\n",
            &inputs([1.0, 3.0], [1.0, 4.0]),
        );
        assert_eq!(
            out[0].f32(),
            Some(&[-1.5, 2.5, -4.0, -4.0, -1.5, 2.5, 2.0, 2.0][..])
        );
        assert_eq!(out[1].f32(), Some(&[1.0, 3.0][..]));
        assert_eq!(out[2].f32(), Some(&[1.0, 4.0][..]));
        assert_eq!(out[3].f32(), Some(&[1.0, 3.0][..]));
        assert_eq!(out[4].f32(), Some(&[1.0, 0.5][..]));
    }

    #[test]
    fn infer_checks_channels_and_train_needs_two_values() {
        let node = "name: bn\nop: batch_norm\n";
        let c = || Some(TensorSpec::f32(&[3]));
        let e = infer_err(
            node,
            &[
                Some(TensorSpec::f32(&[2, 3, 4, 4])),
                c(),
                Some(TensorSpec::f32(&[4])),
                c(),
                c(),
            ],
        );
        assert_eq!(
            e,
            "`beta` must be f32[3] (one value per channel of `x`), got f32[4]"
        );
        let one_pixel = || Some(TensorSpec::f32(&[1, 3, 1, 1]));
        let e = infer_err(node, &[one_pixel(), c(), c(), c(), c()]);
        assert_eq!(
            e,
            "`x` must have more than 1 value per channel in train mode (N·H·W = 1), got \
             f32[1, 3, 1, 1]"
        );
        // Eval mode has no such limit.
        let out = run(
            "name: bn\nop: batch_norm\nparams: { mode: eval }\n",
            &[
                Some(f32s(&[1, 1, 1, 1], &[2.0])),
                Some(f32s(&[1], &[1.0])),
                Some(f32s(&[1], &[0.0])),
                Some(f32s(&[1], &[2.0])),
                Some(f32s(&[1], &[1.0])),
            ],
        );
        assert_close(out[0].f32().unwrap(), &[0.0], 0.0);
    }

    #[test]
    fn bad_params_are_rejected_where_written() {
        let e = try_configure("name: bn\nop: batch_norm\nparams:\n  momentum: 1.5\n").unwrap_err();
        assert!(e.message.contains("momentum must be in [0, 1]"), "{e}");
        assert_eq!(e.loc.line, 4);
        let e = try_configure("name: bn\nop: batch_norm\nparams: { eps: -1 }\n").unwrap_err();
        assert!(e.message.contains("eps must be finite and >= 0"), "{e}");
        let e = try_configure("name: bn\nop: batch_norm\nparams: { mode: test }\n").unwrap_err();
        assert!(e.message.contains("unknown variant `test`"), "{e}");
    }

    #[test]
    fn backward_outputs_only_the_wanted_gradients() {
        let ins = inputs([0.0, 0.0], [1.0, 1.0]);
        let fwd = run("name: bn\nop: batch_norm\nparams: { eps: 0 }\n", &ins);
        let dy = f32s(&[2, 2, 1, 2], &[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        let ins: Vec<Option<&Tensor>> = vec![
            ins[0].as_ref(),
            ins[1].as_ref(),
            Some(&fwd[3]),
            Some(&fwd[4]),
            Some(&dy),
        ];
        let specs: Vec<Option<&TensorSpec>> = ins.iter().map(|t| t.map(Tensor::spec)).collect();
        let run = |dx, dgamma, dbeta| {
            let p = BwdParams {
                eps: 0.0,
                mode: Mode::Train,
                want: Wanted { dx, dgamma, dbeta },
            };
            let specs = BatchNormBwd::infer(&p, &specs).unwrap();
            let mut outs: Vec<Tensor> = specs.iter().map(Tensor::zeros).collect();
            BatchNormBwd::cpu(&p, &ExecCx::default(), &ins, &mut outs).unwrap();
            outs
        };
        let all = run(true, true, true);
        let gamma_only = run(false, true, false);
        let empty = TensorSpec::f32(&[0]);
        assert_eq!(gamma_only[0].spec(), &empty);
        assert_eq!(gamma_only[2].spec(), &empty);
        assert_eq!(gamma_only[1].f32(), all[1].f32());
        // dgamma = Σ dy·x̂: channel 0 1·(−1) + 0·1 + 0·(−1) + 0·1 = −1; channel 1 2·(−1) + 1·1.
        // dbeta = Σ dy: 1 and 3.
        assert_eq!(all[1].f32(), Some(&[-1.0, -1.0][..]));
        assert_eq!(all[2].f32(), Some(&[1.0, 3.0][..]));
        // dx per channel: gamma·invstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M). Channel 0 (gamma 2,
        // invstd 1, Σdy/M = 1/4, Σdy·x̂/M = −1/4): x̂ = −1, 1, −1, 1 and dy = 1, 0, 0, 0 give
        // 2·(1 − 1/4 − 1/4) = 1, 2·(0 − 1/4 + 1/4) = 0, 2·(−1/4 − 1/4) = −1, 0.
        let dx = all[0].f32().unwrap();
        assert_close(&[dx[0], dx[1], dx[4], dx[5]], &[1.0, 0.0, -1.0, 0.0], 1e-6);
    }
}
