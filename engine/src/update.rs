//! update: the step's state changes as graph nodes — the finiteness guard, SGD and AdamW
//! updates, buffer assigns and EMA updates — so one plan holds the whole step (forward,
//! backward, update) and a device runs it without the host in the loop
//! (docs/plans/device-seam.md, issue 15). Each op updates `state.` tensors in place
//! ([`Op::IN_PLACE`]), in graph order, and does nothing when its `ok` input is 0: a step with a
//! non-finite loss or gradient changes nothing, decided inside the graph, with no host sync.
//!
//! Per-step scalars (learning rates, AdamW's bias-corrected step size, EMA factors) come in one
//! f32 tensor, `scalars`, that the host writes before each run, each op reading its slots from
//! `at`: a captured device graph then stays valid across steps. The host derives them exactly as
//! the one-call kernels do ([`flowseg_kernels::optim::AdamW::at`], [`EmaStep::new`]; an SGD
//! learning rate rounds f64 → f32 once, as `sgd_step` does), so the planned update is the
//! trainer's update bit for bit.
//!
//! Like `grad_seed` and `grad_add` (autodiff.rs) these ops are the engine's own, unregistered:
//! the trainer appends them, graphs never name them. DESIGN.md §1 puts ops in `flowseg-ops`; the
//! trainer would then need them by name from the registry, so they stay here until the CUDA
//! executor brings per-device dispatch for every op.
//!
//! Each has its CUDA twin beside its CPU code (`cuda` / `cuda_in_place`: the guarded kernels of
//! kernels/cuda/optim.cu, which read the scalars and the guard on the device).
//!
//! Not here: appending the nodes to a step's graph and writing `scalars` (the trainer), gradient
//! clipping.

#[cfg(feature = "cuda")]
use crate::op::{dev_io, CudaCx, DeviceTensor};
use crate::op::{io, ExecCx, Op, OpError};
use crate::tensor::{Tensor, TensorSpec};
use crate::{NoParams, Port};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::optim::{adamw_apply, ema_apply, sgd_step, AdamWStep, EmaStep, Sgd};
use flowseg_kernels::Real;
use serde::Deserialize;

/// Whether the guard `ok` (an f32[] flag, optional) lets the update run.
fn allowed(ports: &'static [Port], ins: &[Option<&Tensor>], i: usize) -> Result<bool, OpError> {
    Ok(match io::f32_opt(ports, ins, i)? {
        None => true,
        Some([v]) => *v != 0.0,
        Some(_) => {
            return Err(OpError::Input {
                port: ports[i].name,
                problem: "the guard must be an f32 scalar".into(),
            })
        }
    })
}

/// Slot `at` of the step's scalars.
fn slot(
    ports: &'static [Port],
    ins: &[Option<&Tensor>],
    i: usize,
    at: usize,
) -> Result<f32, OpError> {
    io::f32(ports, ins, i)?
        .get(at)
        .copied()
        .ok_or_else(|| OpError::Input {
            port: ports[i].name,
            problem: format!("no slot {at} in the step's scalars"),
        })
}

/// Same shape as input 0, f32.
fn like_first(ports: &'static [Port], ins: &[Option<&TensorSpec>]) -> Result<(), String> {
    io::f32_spec(ports, ins, 0).map(|_| ())
}

/// `ok` = 1 if the incoming guard (absent: 1) is nonzero and every element of `x` is finite,
/// else 0. Chained over a step's losses and gradients, it is the step's all-or-nothing flag.
pub struct FiniteAnd;

impl Op for FiniteAnd {
    const NAME: &'static str = "finite_and";
    const SUMMARY: &'static str = "ok = ok_in ∧ every x finite";
    const INPUTS: &'static [Port] = &[
        Port::req("x", "f32, any shape"),
        Port::opt("ok", "f32[]: the guard so far"),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("ok", "f32[]: 1 or 0")];
    const EXAMPLE: &'static str = "";
    const STOP_GRAD: bool = true;
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        like_first(Self::INPUTS, ins)?;
        Ok(vec![TensorSpec::scalar()])
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        out: &mut [Tensor],
    ) -> Result<(), OpError> {
        let ok = allowed(Self::INPUTS, ins, 1)?
            && io::f32(Self::INPUTS, ins, 0)?.iter().all(|v| v.is_finite());
        io::f32_out(Self::OUTPUTS, out, 0)?.fill(if ok { 1.0 } else { 0.0 });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        ins: &[Option<&DeviceTensor>],
        out: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let x = dev_io::f32(Self::INPUTS, ins, 0)?;
        let ok = dev_io::f32_opt(Self::INPUTS, ins, 1)?;
        let ok = ok.as_ref().map(|o| o as &dyn cuda::DeviceBuf<f32>);
        let mut y = dev_io::f32_out(Self::OUTPUTS, out, 0)?;
        Ok(cuda::optim::finite_and(cx.dev, &x, ok, &mut y)?)
    }
}

/// `sgd_step`'s params: the slot of the learning rate and the constant hyper-parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdParams {
    /// Slot of this parameter's learning rate (base · lr_mult, rounded to f32 once).
    pub at: usize,
    /// Momentum factor.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Coupled L2 weight decay.
    pub weight_decay: f64,
}

/// One SGD step of one parameter (`flowseg_kernels::optim::sgd_step`), in place.
pub struct SgdStep;

impl Op for SgdStep {
    const NAME: &'static str = "sgd_step";
    const SUMMARY: &'static str = "param, m ← SGD(param, grad, m), in place";
    const INPUTS: &'static [Port] = &[
        Port::req("param", "f32 state, updated"),
        Port::req("m", "f32[len] state, the momentum buffer, updated"),
        Port::req("grad", "like param"),
        Port::req("scalars", "f32[S]: the step's scalars"),
        Port::opt("ok", "f32[]: the step's guard"),
    ];
    const OUTPUTS: &'static [Port] = &[];
    const EXAMPLE: &'static str = "";
    const IN_PLACE: &'static [&'static str] = &["param", "m"];
    type Params = SgdParams;

    fn has_cuda(_: &SgdParams) -> bool {
        true
    }
    fn infer(_: &SgdParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        like_first(Self::INPUTS, ins)?;
        Ok(Vec::new())
    }
    fn cpu(
        _: &SgdParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Err(in_place_only(Self::NAME))
    }
    fn cpu_in_place(
        p: &SgdParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        if !allowed(Self::INPUTS, ins, 4)? {
            return Ok(());
        }
        let cfg = Sgd {
            lr: f64::from(slot(Self::INPUTS, ins, 3, p.at)?),
            momentum: p.momentum,
            nesterov: p.nesterov,
            weight_decay: p.weight_decay,
        };
        let grad = io::f32(Self::INPUTS, ins, 2)?;
        let [param, m] = state else {
            return Err(in_place_only(Self::NAME));
        };
        let (param, m) = (f32_of(param, "param")?, f32_of(m, "m")?);
        Ok(sgd_step(param, grad, m, &cfg)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_in_place(
        p: &SgdParams,
        cx: &CudaCx<'_>,
        ins: &[Option<&DeviceTensor>],
        state: &mut [DeviceTensor],
        _: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let grad = dev_io::f32(Self::INPUTS, ins, 2)?;
        let scalars = dev_io::f32(Self::INPUTS, ins, 3)?;
        let ok = dev_io::f32_opt(Self::INPUTS, ins, 4)?;
        let ok = ok.as_ref().map(|o| o as &dyn cuda::DeviceBuf<f32>);
        let [param, m] = state else {
            return Err(in_place_only(Self::NAME));
        };
        let (mut param, mut m) = (dev_f32(param, "param")?, dev_f32(m, "m")?);
        let cfg = Sgd {
            lr: 0.0,
            momentum: p.momentum,
            nesterov: p.nesterov,
            weight_decay: p.weight_decay,
        };
        let d = cx.dev;
        Ok(cuda::optim::sgd_step_guarded(
            d, &mut param, &grad, &mut m, &scalars, p.at, &cfg, ok,
        )?)
    }
}

/// `adamw_step`'s params: the slots of its per-step scalars and the constant ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWParams {
    /// First of three slots: step size `lr/(1 − β1ᵗ)`, `shrink` = 1 − lr·wd, `√(1 − β2ᵗ)`.
    pub at: usize,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
}

/// The three slots [`AdamWStep`] changes from step to step, in [`AdamWParams::at`]'s order.
pub fn adamw_slots(s: &AdamWStep<f32>) -> [f32; 3] {
    [s.step_size, s.shrink, s.bc2_sqrt]
}

/// One AdamW step of one parameter (`flowseg_kernels::optim::adamw_apply`), in place.
pub struct AdamWStepOp;

impl Op for AdamWStepOp {
    const NAME: &'static str = "adamw_step";
    const SUMMARY: &'static str = "param, m, v ← AdamW(param, grad, m, v), in place";
    const INPUTS: &'static [Port] = &[
        Port::req("param", "f32 state, updated"),
        Port::req("m", "f32[len] state, the first moment, updated"),
        Port::req("v", "f32[len] state, the second moment, updated"),
        Port::req("grad", "like param"),
        Port::req("scalars", "f32[S]: the step's scalars"),
        Port::opt("ok", "f32[]: the step's guard"),
    ];
    const OUTPUTS: &'static [Port] = &[];
    const EXAMPLE: &'static str = "";
    const IN_PLACE: &'static [&'static str] = &["param", "m", "v"];
    type Params = AdamWParams;

    fn has_cuda(_: &AdamWParams) -> bool {
        true
    }
    fn infer(_: &AdamWParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        like_first(Self::INPUTS, ins)?;
        Ok(Vec::new())
    }
    fn cpu(
        _: &AdamWParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Err(in_place_only(Self::NAME))
    }
    fn cpu_in_place(
        p: &AdamWParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        if !allowed(Self::INPUTS, ins, 5)? {
            return Ok(());
        }
        let s = |k: usize| slot(Self::INPUTS, ins, 4, p.at + k);
        // The constants as `AdamW::at` rounds them.
        let scalars = AdamWStep {
            step_size: s(0)?,
            shrink: s(1)?,
            bc2_sqrt: s(2)?,
            b1: f32::of(p.beta1),
            b2: f32::of(p.beta2),
            one_b1: f32::of(1.0 - p.beta1),
            one_b2: f32::of(1.0 - p.beta2),
            eps: f32::of(p.eps),
        };
        let grad = io::f32(Self::INPUTS, ins, 3)?;
        let [param, m, v] = state else {
            return Err(in_place_only(Self::NAME));
        };
        let (param, m, v) = (f32_of(param, "param")?, f32_of(m, "m")?, f32_of(v, "v")?);
        Ok(adamw_apply(param, grad, m, v, &scalars)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_in_place(
        p: &AdamWParams,
        cx: &CudaCx<'_>,
        ins: &[Option<&DeviceTensor>],
        state: &mut [DeviceTensor],
        _: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let grad = dev_io::f32(Self::INPUTS, ins, 3)?;
        let scalars = dev_io::f32(Self::INPUTS, ins, 4)?;
        let ok = dev_io::f32_opt(Self::INPUTS, ins, 5)?;
        let ok = ok.as_ref().map(|o| o as &dyn cuda::DeviceBuf<f32>);
        let [param, m, v] = state else {
            return Err(in_place_only(Self::NAME));
        };
        let (mut param, mut m, mut v) =
            (dev_f32(param, "param")?, dev_f32(m, "m")?, dev_f32(v, "v")?);
        Ok(cuda::optim::adamw_step_guarded(
            cx.dev,
            &mut param,
            &grad,
            &mut m,
            &mut v,
            &scalars,
            p.at,
            (p.beta1, p.beta2),
            p.eps,
            ok,
        )?)
    }
}

/// `target ← value` (a batch-norm running statistic taking the step's new value), in place.
pub struct Assign;

impl Op for Assign {
    const NAME: &'static str = "assign";
    const SUMMARY: &'static str = "state ← value, in place";
    const INPUTS: &'static [Port] = &[
        Port::req("target", "state, overwritten"),
        Port::req("value", "like target"),
        Port::opt("ok", "f32[]: the step's guard"),
    ];
    const OUTPUTS: &'static [Port] = &[];
    const EXAMPLE: &'static str = "";
    const IN_PLACE: &'static [&'static str] = &["target"];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }
    fn infer(_: &NoParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        match (
            ins.first().copied().flatten(),
            ins.get(1).copied().flatten(),
        ) {
            (Some(t), Some(v)) if t == v => Ok(Vec::new()),
            (Some(t), Some(v)) => Err(format!("`value` must be {t}, got {v}")),
            _ => Err("`target` and `value` are required".into()),
        }
    }
    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Err(in_place_only(Self::NAME))
    }
    fn cpu_in_place(
        _: &NoParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        if !allowed(Self::INPUTS, ins, 2)? {
            return Ok(());
        }
        let value = ins.get(1).copied().flatten().ok_or(OpError::Input {
            port: "value",
            problem: "missing".into(),
        })?;
        let [target] = state else {
            return Err(in_place_only(Self::NAME));
        };
        // In place, into the buffer's own storage: no allocation per step.
        if !target.copy_from(value) {
            return Err(OpError::Input {
                port: "value",
                problem: format!("must be {}, got {}", target.spec(), value.spec()),
            });
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_in_place(
        _: &NoParams,
        cx: &CudaCx<'_>,
        ins: &[Option<&DeviceTensor>],
        state: &mut [DeviceTensor],
        _: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let value = ins.get(1).copied().flatten().ok_or(OpError::Input {
            port: "value",
            problem: "missing".into(),
        })?;
        let ok = dev_io::f32_opt(Self::INPUTS, ins, 2)?;
        let ok = ok.as_ref().map(|o| o as &dyn cuda::DeviceBuf<f32>);
        let [target] = state else {
            return Err(in_place_only(Self::NAME));
        };
        if target.spec != value.spec {
            return Err(OpError::Input {
                port: "value",
                problem: format!("must be {}, got {}", target.spec, value.spec),
            });
        }
        // Word for word: f32 and i32 state alike.
        if let (Some(mut t), Some(v)) = (target.f32(), value.f32()) {
            return Ok(cuda::optim::assign_guarded(cx.dev, &mut t, &v, ok)?);
        }
        match (target.i32(), value.i32()) {
            (Some(mut t), Some(v)) => Ok(cuda::optim::assign_guarded(cx.dev, &mut t, &v, ok)?),
            _ => Err(in_place_only(Self::NAME)),
        }
    }
}

/// `ema_update`'s params: the slot of α (then 1 − α).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaParams {
    /// First of two slots: α and 1 − α, each rounded from the f64 α once ([`EmaStep::new`]).
    pub at: usize,
}

/// The two slots of an [`EmaStep`], in [`EmaParams::at`]'s order.
pub fn ema_slots(f: &EmaStep<f32>) -> [f32; 2] {
    [f.keep, f.take]
}

/// `target ← α·target + (1 − α)·source` (`flowseg_kernels::optim::ema_apply`), in place.
pub struct EmaUpdate;

impl Op for EmaUpdate {
    const NAME: &'static str = "ema_update";
    const SUMMARY: &'static str = "target ← α·target + (1 − α)·source, in place";
    const INPUTS: &'static [Port] = &[
        Port::req("target", "f32 state, updated (the teacher)"),
        Port::req("source", "like target (the student, after its update)"),
        Port::req("scalars", "f32[S]: the step's scalars"),
        Port::opt("ok", "f32[]: the step's guard"),
    ];
    const OUTPUTS: &'static [Port] = &[];
    const EXAMPLE: &'static str = "";
    const IN_PLACE: &'static [&'static str] = &["target"];
    type Params = EmaParams;

    fn has_cuda(_: &EmaParams) -> bool {
        true
    }
    fn infer(_: &EmaParams, ins: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        like_first(Self::INPUTS, ins)?;
        Ok(Vec::new())
    }
    fn cpu(
        _: &EmaParams,
        _: &ExecCx,
        _: &[Option<&Tensor>],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        Err(in_place_only(Self::NAME))
    }
    fn cpu_in_place(
        p: &EmaParams,
        _: &ExecCx,
        ins: &[Option<&Tensor>],
        state: &mut [&mut Tensor],
        _: &mut [Tensor],
    ) -> Result<(), OpError> {
        if !allowed(Self::INPUTS, ins, 3)? {
            return Ok(());
        }
        let f = EmaStep {
            keep: slot(Self::INPUTS, ins, 2, p.at)?,
            take: slot(Self::INPUTS, ins, 2, p.at + 1)?,
        };
        let source = io::f32(Self::INPUTS, ins, 1)?;
        let [target] = state else {
            return Err(in_place_only(Self::NAME));
        };
        Ok(ema_apply(f32_of(target, "target")?, source, &f)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda_in_place(
        p: &EmaParams,
        cx: &CudaCx<'_>,
        ins: &[Option<&DeviceTensor>],
        state: &mut [DeviceTensor],
        _: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let source = dev_io::f32(Self::INPUTS, ins, 1)?;
        let scalars = dev_io::f32(Self::INPUTS, ins, 2)?;
        let ok = dev_io::f32_opt(Self::INPUTS, ins, 3)?;
        let ok = ok.as_ref().map(|o| o as &dyn cuda::DeviceBuf<f32>);
        let [target] = state else {
            return Err(in_place_only(Self::NAME));
        };
        let mut target = dev_f32(target, "target")?;
        let d = cx.dev;
        Ok(cuda::optim::ema_update_guarded(
            d,
            &mut target,
            &source,
            &scalars,
            p.at,
            ok,
        )?)
    }
}

/// The f32 data of an in-place tensor.
fn f32_of<'a>(t: &'a mut Tensor, port: &'static str) -> Result<&'a mut [f32], OpError> {
    t.f32_mut().ok_or_else(|| OpError::Input {
        port,
        problem: "an f32 state tensor expected".into(),
    })
}

#[cfg(feature = "cuda")]
fn dev_f32(t: &DeviceTensor, port: &'static str) -> Result<cuda::RawBuf<f32>, OpError> {
    t.f32().ok_or_else(|| OpError::Input {
        port,
        problem: "an f32 state tensor expected".into(),
    })
}

fn in_place_only(op: &'static str) -> OpError {
    OpError::Input {
        port: op,
        problem: "an in-place update: the executors call `cpu_in_place`".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use flowseg_kernels::optim::{adamw_step, ema_update, AdamW};

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_f32(&[v.len()], v.to_vec()).unwrap()
    }
    fn bits(x: &Tensor) -> Vec<u32> {
        x.f32().unwrap().iter().map(|v| v.to_bits()).collect()
    }
    const P: [f32; 5] = [0.5, -1.25, 2.0, 0.0, 3.5];
    const G: [f32; 5] = [0.1, -0.3, 0.7, 1e-3, -2.0];

    /// Each update op with its scalars from the host is the one-call kernel bit for bit, and a
    /// zero guard leaves everything as it was.
    #[test]
    fn planned_updates_are_the_kernels_bit_for_bit_and_a_zero_guard_writes_nothing() {
        let cx = ExecCx::default();
        let cfg = AdamW {
            lr: 0.0123,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        for ok in [None, Some(1.0f32), Some(0.0)] {
            let (mut p, mut m, mut v) = (t(&P), t(&[0.2; 5]), t(&[0.01; 5]));
            let mut scalars = vec![9.0f32];
            scalars.extend(adamw_slots(&cfg.at::<f32>(3).unwrap()));
            let (g, s, okt) = (t(&G), t(&scalars), ok.map(|o| t(&[o])));
            let okt = okt.map(|o| Tensor::from_f32(&[], o.f32().unwrap().to_vec()).unwrap());
            let ins = [None, None, None, Some(&g), Some(&s), okt.as_ref()];
            let params = AdamWParams {
                at: 1,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
            };
            AdamWStepOp::cpu_in_place(&params, &cx, &ins, &mut [&mut p, &mut m, &mut v], &mut [])
                .unwrap();
            let (mut p2, mut m2, mut v2) = (P.to_vec(), vec![0.2f32; 5], vec![0.01f32; 5]);
            if ok != Some(0.0) {
                adamw_step(&mut p2, &G, &mut m2, &mut v2, &cfg, 3).unwrap();
            }
            assert_eq!(bits(&p), bits(&t(&p2)), "{ok:?}");
            assert_eq!(
                (bits(&m), bits(&v)),
                (bits(&t(&m2)), bits(&t(&v2))),
                "{ok:?}"
            );

            let (mut target, source) = (t(&P), t(&G));
            let s = t(&ema_slots(&EmaStep::new(0.99).unwrap()));
            let ins = [None, Some(&source), Some(&s), okt.as_ref()];
            EmaUpdate::cpu_in_place(&EmaParams { at: 0 }, &cx, &ins, &mut [&mut target], &mut [])
                .unwrap();
            let mut want = P.to_vec();
            if ok != Some(0.0) {
                ema_update(&mut want, &G, 0.99).unwrap();
            }
            assert_eq!(bits(&target), bits(&t(&want)), "ema {ok:?}");

            let (mut p, mut buf) = (t(&P), t(&[0.0; 5]));
            let lr = (0.3f64 * 0.5) as f32;
            let s = t(&[lr]);
            let ins = [None, None, Some(&g), Some(&s), okt.as_ref()];
            let params = SgdParams {
                at: 0,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
            };
            SgdStep::cpu_in_place(&params, &cx, &ins, &mut [&mut p, &mut buf], &mut []).unwrap();
            let (mut p2, mut b2) = (P.to_vec(), vec![0.0f32; 5]);
            if ok != Some(0.0) {
                let cfg = Sgd {
                    lr: 0.3 * 0.5,
                    momentum: 0.9,
                    nesterov: true,
                    weight_decay: 1e-4,
                };
                sgd_step(&mut p2, &G, &mut b2, &cfg).unwrap();
            }
            assert_eq!(
                (bits(&p), bits(&buf)),
                (bits(&t(&p2)), bits(&t(&b2))),
                "sgd {ok:?}"
            );

            let (mut target, value) = (t(&P), t(&G));
            let ins = [None, Some(&value), okt.as_ref()];
            Assign::cpu_in_place(&NoParams {}, &cx, &ins, &mut [&mut target], &mut []).unwrap();
            let want = if ok == Some(0.0) { P } else { G };
            assert_eq!(bits(&target), bits(&t(&want)), "assign {ok:?}");
        }
    }

    #[test]
    fn the_guard_is_zero_after_any_non_finite_value() {
        let cx = ExecCx::default();
        let run = |x: &[f32], ok: Option<f32>| {
            let x = t(x);
            let ok = ok.map(|o| Tensor::from_f32(&[], vec![o]).unwrap());
            let mut out = [Tensor::zeros(&TensorSpec::scalar())];
            FiniteAnd::cpu(&NoParams {}, &cx, &[Some(&x), ok.as_ref()], &mut out).unwrap();
            out[0].f32().unwrap()[0]
        };
        assert_eq!(run(&P, None), 1.0);
        assert_eq!(run(&P, Some(1.0)), 1.0);
        assert_eq!(run(&P, Some(0.0)), 0.0);
        assert_eq!(run(&[1.0, f32::NAN], None), 0.0);
        assert_eq!(run(&[f32::INFINITY], Some(1.0)), 0.0);
    }
}
