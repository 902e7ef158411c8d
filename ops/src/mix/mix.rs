//! `mix`: pastes the partner's pixels where the mask is 1, out[n] = (1 − m[n])·a[n] +
//! m[n]·src[partner[n]], with src = `b` when a second batch is given and `a` itself otherwise
//! (a permutation within the batch). Label maps (i32) take the partner's label where m ≥ 0.5.
//! One `box_mask` or `class_mask` feeds several `mix` nodes — images, teacher logits or
//! probabilities, pseudo-labels, confidences, validity masks — so all are mixed alike.
//!
//! Convention (shared by the `mix` family): `mask` f32[N, H, W] in {0, 1}, 1 = "this pixel
//! comes from the partner"; `partner` i32[N] in [0, N).
//!
//! Shapes: `mask` f32[N, H, W], `partner` i32[N], `a` f32 or i32 [N, C, H, W] or [N, H, W]
//! (the same N, H, W), `b` optional, the spec of `a` → `out`, the spec of `a`.
//!
//! Backward: one `mix_bwd` node (below, unregistered): da = (1 − m)·dout, and the partner's
//! share m·dout summed into db, or — without `b` — back into da at the partner's index, where
//! samples sharing a partner add up. `mask` and `partner` get no gradient: `partner` is i32,
//! and a `mask` that depends on trainable state is refused (pass it through `detach`), as
//! cross_entropy refuses a trainable weight. An i32 `a` carries no gradient (autodiff asks for
//! none: i32 values are never differentiated). Its kernels' CUDA twins exist
//! (kernels/src/cuda); the engine does not dispatch ops to them yet.

use crate::grad;
#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase, Vjp};
use flowseg_engine::{DType, ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::mix::{mix_bwd, mix_fwd, mix_labels_fwd, MixSource};
use flowseg_kernels::Nchw;
use serde::Deserialize;

/// The `mix` op (no params).
pub struct Mix;

/// [N, C, H, W] of a rank-4 or rank-3 spec (C = 1 for [N, H, W]).
/// A node's partner indices, copied to the host (the mix launchers take them there).
#[cfg(feature = "cuda")]
fn host_partners(cx: &CudaCx<'_>, partner: cuda::RawBuf<i32>) -> Result<Vec<i32>, OpError> {
    let mut host = vec![0i32; cuda::DeviceBuf::<i32>::elems(&partner)];
    cx.dev.download_into(&partner, &mut host)?;
    Ok(host)
}

fn as_nchw(s: &TensorSpec) -> Option<Nchw> {
    match s.shape[..] {
        [n, c, h, w] => Some(Nchw::new(n, c, h, w)),
        [n, h, w] => Some(Nchw::new(n, 1, h, w)),
        _ => None,
    }
}

/// Checks `mask` and `partner`; returns the mask's (N, H, W).
fn check_mask(
    ports: &[Port],
    inputs: &[Option<&TensorSpec>],
) -> Result<(usize, usize, usize), String> {
    let mask = io::spec(ports, inputs, 0)?;
    let (n, h, w) = match (mask.dtype, &mask.shape[..]) {
        (DType::F32, &[n, h, w]) => (n, h, w),
        _ => return Err(format!("`mask` must be f32[N, H, W], got {mask}")),
    };
    let partner = io::spec(ports, inputs, 1)?;
    if *partner != TensorSpec::i32(&[n]) {
        return Err(format!(
            "`partner` must be {} (N of `mask`), got {partner}",
            TensorSpec::i32(&[n])
        ));
    }
    Ok((n, h, w))
}

impl Op for Mix {
    const NAME: &'static str = "mix";
    const SUMMARY: &'static str =
        "masked mix with a partner sample: out = (1 − m)·a + m·src[partner], src = b or a";
    const INPUTS: &'static [Port] = &[
        Port::req(
            "mask",
            "f32[N, H, W] in {0, 1}: 1 takes the partner's pixel",
        ),
        Port::req("partner", "i32[N] in [0, N): each sample's partner"),
        Port::req(
            "a",
            "f32 or i32, [N, C, H, W] or [N, H, W]: the samples mixed into",
        ),
        Port::opt(
            "b",
            "the spec of `a`: a second batch the partners come from (else `a`)",
        ),
    ];
    const OUTPUTS: &'static [Port] = &[Port::req("out", "the spec of `a`")];
    const EXAMPLE: &'static str = "name: mixed\nop: mix\n\
        inputs: { mask: cut.mask, partner: cut.partner, a: batch.u_image, b: batch.u_image_2 }\n";
    const GRAD_CASES: &'static [GradCase] = &[
        // Within the batch, sample 1 the partner of both: its da sums its own share and both
        // samples' pasted shares.
        GradCase {
            params: "{}",
            feeds: &[
                ("mask", Feed::Binary(&[2, 5, 7])),
                ("partner", Feed::Indices(&[1, 1])),
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
            ],
        },
        // A second batch: da and db.
        GradCase {
            params: "{}",
            feeds: &[
                ("mask", Feed::Binary(&[2, 5, 7])),
                ("partner", Feed::Indices(&[1, 0])),
                ("a", Feed::Trainable(&[2, 3, 5, 7])),
                ("b", Feed::Trainable(&[2, 3, 5, 7])),
            ],
        },
        // [N, H, W] maps, a constant second batch: only da.
        GradCase {
            params: "{}",
            feeds: &[
                ("mask", Feed::Binary(&[2, 5, 7])),
                ("partner", Feed::Indices(&[0, 1])),
                ("a", Feed::Trainable(&[2, 5, 7])),
                ("b", Feed::Constant(&[2, 5, 7])),
            ],
        },
    ];
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let (n, h, w) = check_mask(Self::INPUTS, inputs)?;
        let a = io::spec(Self::INPUTS, inputs, 2)?;
        match as_nchw(a) {
            Some(s) if (s.n, s.h, s.w) == (n, h, w) => {}
            _ => {
                return Err(format!(
                    "`a` must be [{n}, C, {h}, {w}] or [{n}, {h}, {w}] (N, H, W of `mask`), \
                     got {a}"
                ))
            }
        }
        if let Some(b) = inputs.get(3).copied().flatten() {
            if b != a {
                return Err(format!("`b` must match `a` ({a}), got {b}"));
            }
        }
        Ok(vec![a.clone()])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let mask = io::f32(Self::INPUTS, inputs, 0)?;
        let partner = io::i32(Self::INPUTS, inputs, 1)?;
        let a = inputs.get(2).copied().flatten().ok_or(OpError::Input {
            port: "a",
            problem: "not connected".into(),
        })?;
        let shape = as_nchw(a.spec()).ok_or_else(|| OpError::Input {
            port: "a",
            problem: format!("expected [N, C, H, W] or [N, H, W], got {}", a.spec()),
        })?;
        let b = inputs.get(3).copied().flatten();
        if let Some(b) = b {
            if b.spec() != a.spec() {
                return Err(OpError::Input {
                    port: "b",
                    problem: format!("expected {}, got {}", a.spec(), b.spec()),
                });
            }
        }
        match a.spec().dtype {
            DType::F32 => {
                let a = io::f32(Self::INPUTS, inputs, 2)?;
                let src = io::f32_opt(Self::INPUTS, inputs, 3)?.unwrap_or(a);
                let out = io::f32_out(Self::OUTPUTS, outputs, 0)?;
                Ok(mix_fwd(a, src, mask, partner, shape, out)?)
            }
            DType::I32 => {
                let a = io::i32(Self::INPUTS, inputs, 2)?;
                let src = match b {
                    Some(_) => io::i32(Self::INPUTS, inputs, 3)?,
                    None => a,
                };
                let out = io::i32_out(Self::OUTPUTS, outputs, 0)?;
                Ok(mix_labels_fwd(a, src, mask, partner, shape, out)?)
            }
        }
    }

    /// The partner indices are read back to the host first (the launchers take them there):
    /// one small synchronous copy per node.
    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let mask = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let partner = host_partners(cx, dev_io::i32(Self::INPUTS, inputs, 1)?)?;
        let a = inputs.get(2).copied().flatten().ok_or(OpError::Input {
            port: "a",
            problem: "not connected".into(),
        })?;
        let shape = as_nchw(&a.spec).ok_or_else(|| OpError::Input {
            port: "a",
            problem: format!("expected [N, C, H, W] or [N, H, W], got {}", a.spec),
        })?;
        let has_b = inputs.get(3).copied().flatten().is_some();
        let src = if has_b { 3 } else { 2 };
        match a.spec.dtype {
            DType::F32 => {
                let a = dev_io::f32(Self::INPUTS, inputs, 2)?;
                let src = dev_io::f32(Self::INPUTS, inputs, src)?;
                let mut out = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
                Ok(cuda::mix::mix_fwd(
                    cx.dev, &a, &src, &mask, &partner, shape, &mut out,
                )?)
            }
            DType::I32 => {
                let a = dev_io::i32(Self::INPUTS, inputs, 2)?;
                let src = dev_io::i32(Self::INPUTS, inputs, src)?;
                let mut out = dev_io::i32_out(Self::OUTPUTS, outputs, 0)?;
                Ok(cuda::mix::mix_labels_fwd(
                    cx.dev, &a, &src, &mask, &partner, shape, &mut out,
                )?)
            }
        }
    }

    fn vjp(_: &NoParams, g: &mut Vjp<'_>) -> Option<Result<(), String>> {
        Some(backward(g))
    }
}

/// The VJP of `mix`: one `mix_bwd` node for da and db; `mask` must be constant.
fn backward(g: &mut Vjp<'_>) -> Result<(), String> {
    if g.needs_grad(0) {
        return Err(
            "`mask` depends on trainable state, but mix treats the mask as a constant and \
             computes no gradient for it; pass it through a `detach` node to make that explicit"
                .into(),
        );
    }
    let (want_a, want_b) = (g.needs_grad(2), g.needs_grad(3));
    if !(want_a || want_b) {
        return Ok(());
    }
    let mask = grad::input(g, Mix::INPUTS, 0)?;
    let partner = grad::input(g, Mix::INPUTS, 1)?;
    let dout = grad::grad_output(g, Mix::OUTPUTS, 0)?;
    let params = BwdParams {
        has_b: g.input(3).is_some(),
        want_a,
        want_b,
    };
    let inputs = vec![Some(mask), Some(partner), Some(dout)];
    let [da, db] = grad::outputs(g.emit::<MixBwd>(params, inputs)?)?;
    if want_a {
        g.set_grad(2, da);
    }
    if want_b {
        g.set_grad(3, db);
    }
    Ok(())
}

/// Backward of `mix` (emitted by its VJP, not registered).
struct MixBwd;

/// Params of `mix_bwd`, filled in by the VJP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BwdParams {
    /// The forward had a second batch `b` (else the partner's share goes back into da).
    has_b: bool,
    /// Produce da (else an empty output).
    want_a: bool,
    /// Produce db (else an empty output); needs `has_b`.
    want_b: bool,
}

impl Op for MixBwd {
    const NAME: &'static str = "mix_bwd";
    const SUMMARY: &'static str = "gradient of mix: dout split between a and the partners";
    const INPUTS: &'static [Port] = &[
        Port::req("mask", "f32[N, H, W]: mix's mask"),
        Port::req("partner", "i32[N]: mix's partner"),
        Port::req("dout", "f32, the spec of mix's `a`: the gradient of `out`"),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("da", "the spec of `dout`, or f32[0] when not wanted"),
        Port::req("db", "the spec of `dout`, or f32[0] when not wanted"),
    ];
    const EXAMPLE: &'static str = "";
    type Params = BwdParams;

    fn has_cuda(_: &BwdParams) -> bool {
        true
    }

    fn infer(p: &BwdParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let (n, h, w) = check_mask(Self::INPUTS, inputs)?;
        let dout = io::f32_spec(Self::INPUTS, inputs, 2)?;
        match as_nchw(dout) {
            Some(s) if (s.n, s.h, s.w) == (n, h, w) => {}
            _ => {
                return Err(format!(
                    "`dout` must have the N, H, W of `mask`, got {dout}"
                ))
            }
        }
        if p.want_b && !p.has_b {
            return Err("db asked for, but the mix had no `b`".into());
        }
        let part = |wanted: bool| {
            if wanted {
                dout.clone()
            } else {
                TensorSpec::f32(&[0])
            }
        };
        Ok(vec![part(p.want_a), part(p.want_b)])
    }

    fn cpu(
        p: &BwdParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let mask = io::f32(Self::INPUTS, inputs, 0)?;
        let partner = io::i32(Self::INPUTS, inputs, 1)?;
        let dout = io::f32(Self::INPUTS, inputs, 2)?;
        let shape = inputs
            .get(2)
            .copied()
            .flatten()
            .and_then(|t| as_nchw(t.spec()))
            .ok_or(OpError::Input {
                port: "dout",
                problem: "expected [N, C, H, W] or [N, H, W]".into(),
            })?;
        let (da, db) = outputs.split_at_mut(1);
        let da = match p.want_a {
            true => Some(io::f32_out(Self::OUTPUTS, da, 0)?),
            false => None,
        };
        let db = match p.want_b {
            true => Some(io::f32_out(&Self::OUTPUTS[1..], db, 0)?),
            false => None,
        };
        let source = if p.has_b { MixSource::B } else { MixSource::A };
        Ok(mix_bwd(dout, mask, partner, shape, source, da, db)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        p: &BwdParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let mask = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let partner = host_partners(cx, dev_io::i32(Self::INPUTS, inputs, 1)?)?;
        let dout = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let shape = (inputs.get(2).copied().flatten())
            .and_then(|t| as_nchw(&t.spec))
            .ok_or(OpError::Input {
                port: "dout",
                problem: "expected [N, C, H, W] or [N, H, W]".into(),
            })?;
        let mut da = match p.want_a {
            true => Some(dev_io::f32_out(Self::OUTPUTS, outputs, 0)?),
            false => None,
        };
        let mut db = match p.want_b {
            true => Some(dev_io::f32_out(Self::OUTPUTS, outputs, 1)?),
            false => None,
        };
        let source = if p.has_b { MixSource::B } else { MixSource::A };
        let (da, db) = (dev_io::opt_out(&mut da), dev_io::opt_out(&mut db));
        Ok(cuda::mix::mix_bwd(
            cx.dev, &dout, &mask, &partner, shape, source, da, db,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::{BwdParams, MixBwd};
    use crate::support::test::{f32s, i32s, infer_err, run};
    use flowseg_engine::{ExecCx, Op, Tensor, TensorSpec};

    const NODE: &str = "name: mixed\nop: mix\n";

    #[test]
    fn hand_computed_nchw_nhw_and_labels() {
        // N = 2, H·W = 1×2; mask [[0, 1], [1, 0]]; partner [1, 0].
        let mask = || Some(f32s(&[2, 1, 2], &[0.0, 1.0, 1.0, 0.0]));
        let partner = || Some(i32s(&[2], &[1, 0]));
        // f32 NCHW, C = 2, within the batch.
        let a = f32s(&[2, 2, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let out = run(NODE, &[mask(), partner(), Some(a.clone()), None]);
        assert_eq!(out[0].spec(), a.spec());
        assert_eq!(
            out[0].f32(),
            Some(&[1.0, 6.0, 3.0, 8.0, 1.0, 6.0, 3.0, 8.0][..])
        );
        // With a second batch.
        let b = f32s(
            &[2, 2, 1, 2],
            &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0],
        );
        let out = run(NODE, &[mask(), partner(), Some(a), Some(b)]);
        assert_eq!(
            out[0].f32(),
            Some(&[1.0, 60.0, 3.0, 80.0, 10.0, 6.0, 30.0, 8.0][..])
        );
        // f32 NHW (confidences), within the batch and with b.
        let c = f32s(&[2, 1, 2], &[0.1, 0.2, 0.3, 0.4]);
        let out = run(NODE, &[mask(), partner(), Some(c.clone()), None]);
        assert_eq!(out[0].f32(), Some(&[0.1, 0.4, 0.1, 0.4][..]));
        let d = f32s(&[2, 1, 2], &[0.5, 0.6, 0.7, 0.8]);
        let out = run(NODE, &[mask(), partner(), Some(c), Some(d)]);
        assert_eq!(out[0].f32(), Some(&[0.1, 0.8, 0.5, 0.4][..]));
        // i32 labels, within the batch and with b.
        let l = i32s(&[2, 1, 2], &[0, 1, 2, 255]);
        let out = run(NODE, &[mask(), partner(), Some(l.clone()), None]);
        assert_eq!(out[0].spec(), l.spec());
        assert_eq!(out[0].i32(), Some(&[0, 255, 0, 255][..]));
        let lb = i32s(&[2, 1, 2], &[10, 11, 12, 13]);
        let out = run(NODE, &[mask(), partner(), Some(l), Some(lb)]);
        assert_eq!(out[0].i32(), Some(&[0, 13, 10, 255][..]));
    }

    #[test]
    fn backward_splits_dout_and_accumulates_shared_partners() {
        // N = 3, [N, H, W] with H·W = 2; every sample takes from sample 2 where m = 1.
        let mask = f32s(&[3, 1, 2], &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
        let partner = i32s(&[3], &[2, 2, 2]);
        let dout = f32s(&[3, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ins = [Some(&mask), Some(&partner), Some(&dout)];
        let run = |has_b, want_a, want_b| {
            let p = BwdParams {
                has_b,
                want_a,
                want_b,
            };
            let specs = [Some(mask.spec()), Some(partner.spec()), Some(dout.spec())];
            let specs = MixBwd::infer(&p, &specs).unwrap();
            let mut outs: Vec<Tensor> = specs.iter().map(Tensor::zeros).collect();
            MixBwd::cpu(&p, &ExecCx::default(), &ins, &mut outs).unwrap();
            outs
        };
        // No b: sample 2 gets its own (1 − m)·dout = [5, 0] plus m·dout of samples 0, 1, 2:
        // [1 + 3 + 0, 0 + 4 + 6].
        let own = run(false, true, false);
        assert_eq!(own[0].f32(), Some(&[0.0, 2.0, 0.0, 0.0, 9.0, 10.0][..]));
        assert_eq!(own[1].spec(), &TensorSpec::f32(&[0]));
        let both = run(true, true, true);
        assert_eq!(both[0].f32(), Some(&[0.0, 2.0, 0.0, 0.0, 5.0, 0.0][..]));
        assert_eq!(both[1].f32(), Some(&[0.0, 0.0, 0.0, 0.0, 4.0, 10.0][..]));
        let b_only = run(true, false, true);
        assert_eq!(b_only[0].spec(), &TensorSpec::f32(&[0]));
        assert_eq!(b_only[1], both[1]);
        let specs = [Some(mask.spec()), Some(partner.spec()), Some(dout.spec())];
        let p = BwdParams {
            has_b: false,
            want_a: false,
            want_b: true,
        };
        assert!(MixBwd::infer(&p, &specs).is_err());
    }

    #[test]
    fn infer_checks_every_operand() {
        let m = || Some(TensorSpec::f32(&[2, 4, 4]));
        let p = || Some(TensorSpec::i32(&[2]));
        let e = infer_err(NODE, &[Some(TensorSpec::i32(&[2, 4, 4])), p(), m(), None]);
        assert_eq!(e, "`mask` must be f32[N, H, W], got i32[2, 4, 4]");
        let e = infer_err(NODE, &[m(), Some(TensorSpec::i32(&[3])), m(), None]);
        assert_eq!(e, "`partner` must be i32[2] (N of `mask`), got i32[3]");
        let e = infer_err(
            NODE,
            &[m(), p(), Some(TensorSpec::f32(&[2, 3, 4, 5])), None],
        );
        assert_eq!(
            e,
            "`a` must be [2, C, 4, 4] or [2, 4, 4] (N, H, W of `mask`), got f32[2, 3, 4, 5]"
        );
        let a = Some(TensorSpec::f32(&[2, 3, 4, 4]));
        let e = infer_err(
            NODE,
            &[m(), p(), a.clone(), Some(TensorSpec::f32(&[2, 4, 4]))],
        );
        assert_eq!(e, "`b` must match `a` (f32[2, 3, 4, 4]), got f32[2, 4, 4]");
        let e = infer_err(NODE, &[m(), p(), None, None]);
        assert_eq!(e, "`a` is required");
    }
}
