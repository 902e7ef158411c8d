//! `select_by_key`: per pixel, `a` where key_b ≥ key_a, else `b` — GCT's dynamic-consistency
//! target (PixelSSL `ssl_gct.py`, `DCGTGenerator.forward`: `l_mask = (r_flawmap >= l_flawmap)`,
//! `l_dc_gt = l_mask * l_pred + (1 - l_mask) * r_pred`; the r target swaps the roles). With the
//! flaw maps as keys, each model learns from whichever of the two predictions is flagged as less
//! flawed, keeping its own on ties.
//!
//! Shapes: `a`, `b` f32[N, K, H, W]; `key_a`, `key_b` f32[N, 1, H, W] → `y` like a, `mask`
//! f32[N, H, W] (1 where `a` was taken: its mean is the fraction of pixels a model keeps).
//!
//! A stop-gradient (`Op::STOP_GRAD`): a target built from detached predictions. Not here: soft
//! (weighted) mixing of the two.

#[cfg(feature = "cuda")]
use flowseg_engine::op::{dev_io, CudaCx, DeviceTensor};
use flowseg_engine::op::{io, Feed, GradCase};
use flowseg_engine::{ExecCx, NoParams, Op, OpError, Port, Tensor, TensorSpec};
#[cfg(feature = "cuda")]
use flowseg_kernels::cuda;
use flowseg_kernels::maps::select_by_key_fwd;
use flowseg_kernels::Nchw;

/// The `select_by_key` op (no params).
pub struct SelectByKey;

impl Op for SelectByKey {
    const NAME: &'static str = "select_by_key";
    const SUMMARY: &'static str =
        "per pixel, `a` where key_b ≥ key_a else `b` (GCT's dc target); a stop-gradient";
    const INPUTS: &'static [Port] = &[
        Port::req("a", "f32[N, K, H, W]: taken where key_b ≥ key_a"),
        Port::req("b", "f32[N, K, H, W]: taken elsewhere"),
        Port::req("key_a", "f32[N, 1, H, W]: a's score (lower wins)"),
        Port::req("key_b", "f32[N, 1, H, W]: b's score"),
    ];
    const OUTPUTS: &'static [Port] = &[
        Port::req("y", "like a"),
        Port::req("mask", "f32[N, H, W]: 1 where `a` was taken, else 0"),
    ];
    const EXAMPLE: &'static str = "name: dc_gt_l\nop: select_by_key\n\
        inputs: { a: pl0.y, b: pr0.y, key_a: hl_sat.y, key_b: hr_sat.y }\n";
    const GRAD_CASES: &'static [GradCase] = &[GradCase {
        params: "{}",
        feeds: &[
            ("a", Feed::Trainable(&[2, 3, 4, 5])),
            ("b", Feed::Trainable(&[2, 3, 4, 5])),
            ("key_a", Feed::Constant(&[2, 1, 4, 5])),
            ("key_b", Feed::Constant(&[2, 1, 4, 5])),
        ],
    }];
    const STOP_GRAD: bool = true;
    type Params = NoParams;

    fn has_cuda(_: &NoParams) -> bool {
        true
    }

    fn infer(_: &NoParams, inputs: &[Option<&TensorSpec>]) -> Result<Vec<TensorSpec>, String> {
        let a = io::nchw_f32(Self::INPUTS, inputs, 0)?;
        let b = io::nchw_f32(Self::INPUTS, inputs, 1)?;
        if b != a {
            return Err(format!(
                "`b` must match `a` ({}), got {}",
                TensorSpec::nchw(a),
                TensorSpec::nchw(b)
            ));
        }
        let key = Nchw { c: 1, ..a };
        for i in [2, 3] {
            let k = io::nchw_f32(Self::INPUTS, inputs, i)?;
            if k != key {
                return Err(format!(
                    "`{}` must be {} (one channel, N, H, W of `a`), got {}",
                    Self::INPUTS[i].name,
                    TensorSpec::nchw(key),
                    TensorSpec::nchw(k)
                ));
            }
        }
        Ok(vec![TensorSpec::nchw(a), TensorSpec::f32(&[a.n, a.h, a.w])])
    }

    fn cpu(
        _: &NoParams,
        _: &ExecCx,
        inputs: &[Option<&Tensor>],
        outputs: &mut [Tensor],
    ) -> Result<(), OpError> {
        let s = io::nchw(Self::INPUTS, inputs, 0)?;
        let a = io::f32(Self::INPUTS, inputs, 0)?;
        let b = io::f32(Self::INPUTS, inputs, 1)?;
        let ka = io::f32(Self::INPUTS, inputs, 2)?;
        let kb = io::f32(Self::INPUTS, inputs, 3)?;
        let n = outputs.len();
        let [y, mask] = outputs else {
            return Err(OpError::Output {
                port: "y",
                problem: format!("expected 2 outputs, got {n}"),
            });
        };
        let one = std::slice::from_mut;
        let y = io::f32_out(Self::OUTPUTS, one(y), 0)?;
        let mask = io::f32_out(&Self::OUTPUTS[1..], one(mask), 0)?;
        Ok(select_by_key_fwd(a, b, ka, kb, s, y, mask)?)
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        _: &NoParams,
        cx: &CudaCx<'_>,
        inputs: &[Option<&DeviceTensor>],
        outputs: &mut [DeviceTensor],
    ) -> Result<(), OpError> {
        let s = dev_io::nchw(Self::INPUTS, inputs, 0)?;
        let a = dev_io::f32(Self::INPUTS, inputs, 0)?;
        let b = dev_io::f32(Self::INPUTS, inputs, 1)?;
        let ka = dev_io::f32(Self::INPUTS, inputs, 2)?;
        let kb = dev_io::f32(Self::INPUTS, inputs, 3)?;
        let mut y = dev_io::f32_out(Self::OUTPUTS, outputs, 0)?;
        let mut mask = dev_io::f32_out(Self::OUTPUTS, outputs, 1)?;
        let dev = cx.dev;
        Ok(cuda::maps::select_by_key_fwd(
            dev, &a, &b, &ka, &kb, s, &mut y, &mut mask,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use crate::support::test::{f32s, infer_err, run};
    use flowseg_engine::TensorSpec;

    #[test]
    fn hand_computed() {
        // One image, K = 2, 1×2 pixels. Pixel 0: keys tie → a; pixel 1: key_b < key_a → b.
        let a = f32s(&[1, 2, 1, 2], &[0.9, 0.2, 0.1, 0.8]);
        let b = f32s(&[1, 2, 1, 2], &[0.3, 0.6, 0.7, 0.4]);
        let ka = f32s(&[1, 1, 1, 2], &[0.5, 0.9]);
        let kb = f32s(&[1, 1, 1, 2], &[0.5, 0.1]);
        let y = run(
            "name: s\nop: select_by_key\n",
            &[Some(a), Some(b), Some(ka), Some(kb)],
        );
        assert_eq!(y[0].f32(), Some(&[0.9, 0.6, 0.1, 0.4][..]));
        assert_eq!(y[1].spec(), &TensorSpec::f32(&[1, 1, 2]));
        assert_eq!(y[1].f32(), Some(&[1.0, 0.0][..]));
    }

    #[test]
    fn infer_rejects_keys_with_channels() {
        let p = Some(TensorSpec::f32(&[2, 3, 4, 4]));
        let e = infer_err(
            "name: s\nop: select_by_key\n",
            &[p.clone(), p.clone(), p.clone(), p],
        );
        assert_eq!(
            e,
            "`key_a` must be f32[2, 1, 4, 4] (one channel, N, H, W of `a`), got f32[2, 3, 4, 4]"
        );
    }
}
