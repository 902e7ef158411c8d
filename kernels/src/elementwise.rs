//! Element-wise arithmetic and the data-movement kernels that join and split tensors: add (and
//! add then ReLU, fused), mul,
//! scale, affine (α·x + β), mul_broadcast (a multiplier shared over batch or channels),
//! threshold (a 0/1 mask); concatenation and slicing along the channel axis (skip
//! connections, ASPP branches) and along the batch axis (labeled and unlabeled halves of a
//! semi-supervised batch).
//!
//! PyTorch equivalents: `torch.add(a, b)`, `torch.mul(a, b)`, `alpha * x`, `(x >= t).float()`
//! (or `(x < t).float()`), `torch.cat(.., dim=1)`, `torch.cat(.., dim=0)`, `x[:, c0:c1]`,
//! `x[n0:n1]`. Backwards that need no kernel of their own: add's is the identity (da = db = dy),
//! scale's is [`scale_fwd`] with the same alpha; threshold has none (a mask is a constant).
//!
//! Element types: arithmetic kernels and those that zero-fill take `T: Real`; the pure copies
//! (concat and slice forwards, concat backward) take any `T: Copy`, so integer label maps can be
//! joined and split with the same code. All of them overwrite their outputs.
//!
//! Broadcasting exists in one form only, [`mul_broadcast_fwd`] (a multiplier shared over the
//! batch or over the channels). Not here: other broadcasting, strided views (every
//! slice is copied into a contiguous output), and in-place variants.

use crate::{check_len, KernelError, Nchw, Real};

/// y = a + b. a, b, y: any shape, same length.
pub fn add_fwd<T: Real>(a: &[T], b: &[T], y: &mut [T]) -> Result<(), KernelError> {
    check_len("add_fwd", "b", b, a.len())?;
    check_len("add_fwd", "y", y, a.len())?;
    for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
        *o = u + v;
    }
    Ok(())
}

/// y = max(a + b, 0): [`add_fwd`] then `activation::relu_fwd`'s exact comparison, in one pass
/// (the fusion pass's `add` → `relu`, a residual block's end). a, b, y: any shape, same length.
pub fn add_relu_fwd<T: Real>(a: &[T], b: &[T], y: &mut [T]) -> Result<(), KernelError> {
    check_len("add_relu_fwd", "b", b, a.len())?;
    check_len("add_relu_fwd", "y", y, a.len())?;
    for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
        let t = u + v;
        *o = if t > T::zero() { t } else { T::zero() };
    }
    Ok(())
}

/// y = a · b. a, b, y: any shape, same length.
pub fn mul_fwd<T: Real>(a: &[T], b: &[T], y: &mut [T]) -> Result<(), KernelError> {
    check_len("mul_fwd", "b", b, a.len())?;
    check_len("mul_fwd", "y", y, a.len())?;
    for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
        *o = u * v;
    }
    Ok(())
}

/// Backward of [`mul_fwd`]: da = dy · b, db = dy · a. a, b, dy, da, db: any shape, same length.
pub fn mul_bwd<T: Real>(
    a: &[T],
    b: &[T],
    dy: &[T],
    da: &mut [T],
    db: &mut [T],
) -> Result<(), KernelError> {
    let n = a.len();
    check_len("mul_bwd", "b", b, n)?;
    check_len("mul_bwd", "dy", dy, n)?;
    check_len("mul_bwd", "da", da, n)?;
    check_len("mul_bwd", "db", db, n)?;
    for i in 0..n {
        da[i] = dy[i] * b[i];
        db[i] = dy[i] * a[i];
    }
    Ok(())
}

/// y = alpha · x. x, y: any shape, same length. Also the backward: dx = scale_fwd(dy, alpha).
pub fn scale_fwd<T: Real>(x: &[T], alpha: T, y: &mut [T]) -> Result<(), KernelError> {
    check_len("scale_fwd", "y", y, x.len())?;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = alpha * v;
    }
    Ok(())
}

/// y = alpha · x + beta (two roundings: the product, then the sum; no fused multiply-add, as
/// the CUDA twin under --fmad=false). x, y: any shape, same length. Maps draws onto a range
/// (CCT's noise multiplier 1 + U(−r, r) from U(0, 1)) and masks onto their complement
/// (1 − m).
pub fn affine_fwd<T: Real>(x: &[T], alpha: T, beta: T, y: &mut [T]) -> Result<(), KernelError> {
    check_len("affine_fwd", "y", y, x.len())?;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = alpha * v + beta;
    }
    Ok(())
}

/// Which axis a [`mul_broadcast_fwd`] multiplier is shared over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    /// m: [C, H, W], the same for every sample (`x * m.unsqueeze(0)`).
    OverBatch,
    /// m: [N, H, W], the same for every channel (`x * m.unsqueeze(1)`).
    OverChannels,
}

/// y = x ⊙ m with m broadcast over the batch or the channels. Also its own backward with
/// respect to x: dx = mul_broadcast_fwd(dy, m) (the multipliers of the CCT perturbations are
/// constants: noise, or masks from comparisons).
///
/// * `x`, `y`: [N, C, H, W] (`shape`).
/// * `m`: [C, H, W] for [`Broadcast::OverBatch`], [N, H, W] for [`Broadcast::OverChannels`].
pub fn mul_broadcast_fwd<T: Real>(
    x: &[T],
    m: &[T],
    shape: Nchw,
    over: Broadcast,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "mul_broadcast_fwd";
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.len())?;
    let plane = shape.plane();
    match over {
        Broadcast::OverBatch => {
            check_len(K, "m", m, shape.c * plane)?;
            if m.is_empty() {
                return Ok(());
            }
            for (yi, xi) in y.chunks_exact_mut(m.len()).zip(x.chunks_exact(m.len())) {
                for ((o, &v), &f) in yi.iter_mut().zip(xi).zip(m) {
                    *o = v * f;
                }
            }
        }
        Broadcast::OverChannels => {
            check_len(K, "m", m, shape.n * plane)?;
            if plane == 0 {
                return Ok(());
            }
            for (i, (yp, xp)) in y
                .chunks_exact_mut(plane)
                .zip(x.chunks_exact(plane))
                .enumerate()
            {
                let mp = &m[(i / shape.c.max(1)) * plane..][..plane];
                for ((o, &v), &f) in yp.iter_mut().zip(xp).zip(mp) {
                    *o = v * f;
                }
            }
        }
    }
    Ok(())
}

/// y = 1 where x ≥ at, else 0; with `below`, y = 1 where x < at, else 0. A NaN in `x` gives 0
/// either way (every comparison with NaN is false), so a diverged value never passes a mask.
/// x, y: any shape, same length.
pub fn threshold_fwd<T: Real>(x: &[T], at: T, below: bool, y: &mut [T]) -> Result<(), KernelError> {
    check_len("threshold_fwd", "y", y, x.len())?;
    for (o, &v) in y.iter_mut().zip(x) {
        let pass = if below { v < at } else { v >= at };
        *o = if pass { T::one() } else { T::zero() };
    }
    Ok(())
}

/// The axis a concatenation runs along.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Axis {
    /// N.
    Batch,
    /// C.
    Channels,
}

/// Checks that `parts` (each a length and a shape) tile `whole` along `axis`: every part's length
/// matches its shape, the other three extents equal the whole's, and the extents along `axis` sum
/// to the whole's. Shared with the CUDA launchers, so both report the same errors.
pub(crate) fn check_parts(
    kernel: &'static str,
    parts: impl ExactSizeIterator<Item = (usize, Nchw)>,
    whole: Nchw,
    axis: Axis,
) -> Result<(), KernelError> {
    let err = |reason: String| Err(KernelError::Shape { kernel, reason });
    if parts.len() == 0 {
        return err("needs at least one part".into());
    }
    let mut total = 0;
    for (i, (len, s)) in parts.enumerate() {
        if len != s.len() {
            return err(format!(
                "part {i} has {len} elements, its shape {s:?} implies {}",
                s.len()
            ));
        }
        let (along, same) = match axis {
            Axis::Batch => (s.n, s.c == whole.c && s.h == whole.h && s.w == whole.w),
            Axis::Channels => (s.c, s.n == whole.n && s.h == whole.h && s.w == whole.w),
        };
        if !same {
            let fixed = if axis == Axis::Batch {
                "C, H, W"
            } else {
                "N, H, W"
            };
            return err(format!(
                "part {i} has shape {s:?}, whose {fixed} differ from the whole's {whole:?}"
            ));
        }
        total += along;
    }
    let (want, name) = match axis {
        Axis::Batch => (whole.n, "N"),
        Axis::Channels => (whole.c, "C"),
    };
    if total != want {
        return err(format!(
            "parts sum to {name} = {total}, the whole {whole:?} has {name} = {want}"
        ));
    }
    Ok(())
}

/// Concatenation along channels, `torch.cat(inputs, dim=1)`.
///
/// * `inputs`: each a slice [N, Ci, H, W] with its shape; all share N, H, W.
/// * `y`: [N, C, H, W] described by `y_shape`, with C = Σ Ci; overwritten.
pub fn concat_channels_fwd<T: Copy>(
    inputs: &[(&[T], Nchw)],
    y: &mut [T],
    y_shape: Nchw,
) -> Result<(), KernelError> {
    const K: &str = "concat_channels_fwd";
    check_len(K, "y", y, y_shape.len())?;
    check_parts(
        K,
        inputs.iter().map(|(x, s)| (x.len(), *s)),
        y_shape,
        Axis::Channels,
    )?;
    for n in 0..y_shape.n {
        let mut off = n * y_shape.image();
        for (x, s) in inputs {
            let chunk = s.image();
            y[off..off + chunk].copy_from_slice(&x[n * chunk..(n + 1) * chunk]);
            off += chunk;
        }
    }
    Ok(())
}

/// Backward of [`concat_channels_fwd`]: splits dy back into the inputs' gradients.
///
/// * `dy`: [N, C, H, W] described by `y_shape`.
/// * `outputs`: each a gradient slice [N, Ci, H, W] with its shape, in the forward's input order;
///   all share N, H, W and Σ Ci = C. Overwritten.
pub fn concat_channels_bwd<T: Copy>(
    dy: &[T],
    y_shape: Nchw,
    outputs: &mut [(&mut [T], Nchw)],
) -> Result<(), KernelError> {
    const K: &str = "concat_channels_bwd";
    check_len(K, "dy", dy, y_shape.len())?;
    check_parts(
        K,
        outputs.iter().map(|(x, s)| (x.len(), *s)),
        y_shape,
        Axis::Channels,
    )?;
    for n in 0..y_shape.n {
        let mut off = n * y_shape.image();
        for (dx, s) in outputs.iter_mut() {
            let chunk = s.image();
            dx[n * chunk..(n + 1) * chunk].copy_from_slice(&dy[off..off + chunk]);
            off += chunk;
        }
    }
    Ok(())
}

/// Concatenation along the batch, `torch.cat(inputs, dim=0)`: the inputs laid end to end.
///
/// * `inputs`: each a slice [Ni, C, H, W] with its shape; all share C, H, W.
/// * `y`: [N, C, H, W] described by `y_shape`, with N = Σ Ni; overwritten.
pub fn concat_batch_fwd<T: Copy>(
    inputs: &[(&[T], Nchw)],
    y: &mut [T],
    y_shape: Nchw,
) -> Result<(), KernelError> {
    const K: &str = "concat_batch_fwd";
    check_len(K, "y", y, y_shape.len())?;
    check_parts(
        K,
        inputs.iter().map(|(x, s)| (x.len(), *s)),
        y_shape,
        Axis::Batch,
    )?;
    let mut off = 0;
    for (x, _) in inputs {
        y[off..off + x.len()].copy_from_slice(x);
        off += x.len();
    }
    Ok(())
}

/// Backward of [`concat_batch_fwd`]: splits dy back into the inputs' gradients.
///
/// * `dy`: [N, C, H, W] described by `y_shape`.
/// * `outputs`: each a gradient slice [Ni, C, H, W] with its shape, in the forward's input order;
///   all share C, H, W and Σ Ni = N. Overwritten.
pub fn concat_batch_bwd<T: Copy>(
    dy: &[T],
    y_shape: Nchw,
    outputs: &mut [(&mut [T], Nchw)],
) -> Result<(), KernelError> {
    const K: &str = "concat_batch_bwd";
    check_len(K, "dy", dy, y_shape.len())?;
    check_parts(
        K,
        outputs.iter().map(|(x, s)| (x.len(), *s)),
        y_shape,
        Axis::Batch,
    )?;
    let mut off = 0;
    for (dx, _) in outputs.iter_mut() {
        let len = dx.len();
        dx.copy_from_slice(&dy[off..off + len]);
        off += len;
    }
    Ok(())
}

/// Checks `start..end` lies within `0..extent` (an empty range is allowed, a reversed one is not).
pub(crate) fn check_range(
    kernel: &'static str,
    name: &str,
    start: usize,
    end: usize,
    extent: usize,
) -> Result<(), KernelError> {
    if start <= end && end <= extent {
        Ok(())
    } else {
        Err(KernelError::Shape {
            kernel,
            reason: format!("{name} range {start}..{end} is not within 0..{extent}"),
        })
    }
}

/// Channel slice, `x[:, c_start:c_end]`, copied out contiguously.
///
/// * `x`: [N, C, H, W] described by `shape`.
/// * `y`: [N, c_end − c_start, H, W]; overwritten.
///
/// Requires c_start ≤ c_end ≤ C (c_start = c_end gives an empty `y`).
pub fn slice_channels_fwd<T: Copy>(
    x: &[T],
    shape: Nchw,
    c_start: usize,
    c_end: usize,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "slice_channels_fwd";
    check_range(K, "channel", c_start, c_end, shape.c)?;
    let chunk = (c_end - c_start) * shape.plane();
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, shape.n * chunk)?;
    let skip = c_start * shape.plane();
    for n in 0..shape.n {
        let from = n * shape.image() + skip;
        y[n * chunk..(n + 1) * chunk].copy_from_slice(&x[from..from + chunk]);
    }
    Ok(())
}

/// Backward of [`slice_channels_fwd`]: dx = dy inside the channel range, 0 outside.
///
/// * `dy`: [N, c_end − c_start, H, W].
/// * `shape`: the forward input's shape [N, C, H, W].
/// * `dx`: [N, C, H, W]; overwritten.
pub fn slice_channels_bwd<T: Real>(
    dy: &[T],
    shape: Nchw,
    c_start: usize,
    c_end: usize,
    dx: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "slice_channels_bwd";
    check_range(K, "channel", c_start, c_end, shape.c)?;
    let chunk = (c_end - c_start) * shape.plane();
    check_len(K, "dy", dy, shape.n * chunk)?;
    check_len(K, "dx", dx, shape.len())?;
    let skip = c_start * shape.plane();
    for n in 0..shape.n {
        let image = &mut dx[n * shape.image()..(n + 1) * shape.image()];
        image[..skip].fill(T::zero());
        image[skip..skip + chunk].copy_from_slice(&dy[n * chunk..(n + 1) * chunk]);
        image[skip + chunk..].fill(T::zero());
    }
    Ok(())
}

/// Batch slice, `x[n_start:n_end]`.
///
/// * `x`: [N, C, H, W] described by `shape`.
/// * `y`: [n_end − n_start, C, H, W]; overwritten.
///
/// Requires n_start ≤ n_end ≤ N (n_start = n_end gives an empty `y`).
pub fn slice_batch_fwd<T: Copy>(
    x: &[T],
    shape: Nchw,
    n_start: usize,
    n_end: usize,
    y: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "slice_batch_fwd";
    check_range(K, "batch", n_start, n_end, shape.n)?;
    check_len(K, "x", x, shape.len())?;
    check_len(K, "y", y, (n_end - n_start) * shape.image())?;
    y.copy_from_slice(&x[n_start * shape.image()..n_end * shape.image()]);
    Ok(())
}

/// Backward of [`slice_batch_fwd`]: dx = dy for images n_start..n_end, 0 for the others.
///
/// * `dy`: [n_end − n_start, C, H, W].
/// * `shape`: the forward input's shape [N, C, H, W].
/// * `dx`: [N, C, H, W]; overwritten.
pub fn slice_batch_bwd<T: Real>(
    dy: &[T],
    shape: Nchw,
    n_start: usize,
    n_end: usize,
    dx: &mut [T],
) -> Result<(), KernelError> {
    const K: &str = "slice_batch_bwd";
    check_range(K, "batch", n_start, n_end, shape.n)?;
    check_len(K, "dy", dy, (n_end - n_start) * shape.image())?;
    check_len(K, "dx", dx, shape.len())?;
    let (lo, hi) = (n_start * shape.image(), n_end * shape.image());
    dx[..lo].fill(T::zero());
    dx[lo..hi].copy_from_slice(dy);
    dx[hi..].fill(T::zero());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn add_relu_is_add_then_relu_bit_for_bit() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.91).cos()).collect();
        let (mut sum, mut want, mut got) = (vec![0f32; 37], vec![0f32; 37], vec![f32::NAN; 37]);
        add_fwd(&a, &b, &mut sum).unwrap();
        crate::activation::relu_fwd(&sum, &mut want).unwrap();
        add_relu_fwd(&a, &b, &mut got).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
        assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
    }

    use super::*;

    #[test]
    fn affine_and_broadcast_products_by_hand() {
        let mut y = [0f32; 3];
        affine_fwd(&[0.0f32, 0.5, 1.0], 0.6, 0.7, &mut y).unwrap();
        assert_eq!(y, [0.7, 0.6f32 * 0.5 + 0.7, 0.6f32 + 0.7]);
        // x: [N=2, C=2, H=1, W=2] = 1..8.
        let x: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let s = Nchw::new(2, 2, 1, 2);
        let mut y = [0f32; 8];
        // Over the batch: m [C=2, 1, 2] multiplies both samples alike.
        mul_broadcast_fwd(&x, &[1.0, 0.0, 2.0, -1.0], s, Broadcast::OverBatch, &mut y).unwrap();
        assert_eq!(y, [1.0, 0.0, 6.0, -4.0, 5.0, 0.0, 14.0, -8.0]);
        // Over the channels: m [N=2, 1, 2] multiplies both channels of its sample alike.
        mul_broadcast_fwd(
            &x,
            &[1.0, 0.0, 0.5, 2.0],
            s,
            Broadcast::OverChannels,
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [1.0, 0.0, 3.0, 0.0, 2.5, 12.0, 3.5, 16.0]);
        let e = mul_broadcast_fwd(&x, &[1.0; 3], s, Broadcast::OverChannels, &mut y).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mul_broadcast_fwd: `m` has 3 elements, expected 4"
        );
    }
    use crate::testing::{gradcheck, rand_vec};

    #[test]
    fn arithmetic_hand_cases() {
        let a = [1.0f32, -2.0, 0.5];
        let b = [3.0f32, 4.0, -8.0];
        let mut y = [0f32; 3];
        add_fwd(&a, &b, &mut y).unwrap();
        assert_eq!(y, [4.0, 2.0, -7.5]);
        mul_fwd(&a, &b, &mut y).unwrap();
        assert_eq!(y, [3.0, -8.0, -4.0]);
        scale_fwd(&a, -0.5, &mut y).unwrap();
        assert_eq!(y, [-0.5, 1.0, -0.25]);
        // Equality passes `x ≥ at` and fails `x < at`; NaN fails both.
        let x = [0.5f32, 0.7, 0.9, f32::NAN];
        let mut m = [9f32; 4];
        threshold_fwd(&x, 0.7, false, &mut m).unwrap();
        assert_eq!(m, [0.0, 1.0, 1.0, 0.0]);
        threshold_fwd(&x, 0.7, true, &mut m).unwrap();
        assert_eq!(m, [1.0, 0.0, 0.0, 0.0]);
        // da = dy·b, db = dy·a with dy = [1, 2, 3]; outputs start as garbage.
        let (mut da, mut db) = ([9f32; 3], [9f32; 3]);
        mul_bwd(&a, &b, &[1.0, 2.0, 3.0], &mut da, &mut db).unwrap();
        assert_eq!(da, [3.0, 8.0, -24.0]);
        assert_eq!(db, [1.0, -4.0, 1.5]);
    }

    #[test]
    fn concat_and_slice_hand_cases() {
        // Channels, N=2, H×W = 1×2: a is [2,1,1,2] = {a0: [1,2]; a1: [3,4]}, b is [2,2,1,2].
        let a = [1, 2, 3, 4];
        let b = [10, 11, 12, 13, 20, 21, 22, 23];
        let (sa, sb, sy) = (
            Nchw::new(2, 1, 1, 2),
            Nchw::new(2, 2, 1, 2),
            Nchw::new(2, 3, 1, 2),
        );
        let mut y = [0i32; 12];
        concat_channels_fwd(&[(&a[..], sa), (&b[..], sb)], &mut y, sy).unwrap();
        assert_eq!(y, [1, 2, 10, 11, 12, 13, 3, 4, 20, 21, 22, 23]);
        let (mut ga, mut gb) = ([0i32; 4], [0i32; 8]);
        concat_channels_bwd(&y, sy, &mut [(&mut ga[..], sa), (&mut gb[..], sb)]).unwrap();
        assert_eq!((ga, gb), (a, b));
        // Channel slice 1..3 of y is b; its backward puts b back with channel 0 zeroed.
        let mut s = [0i32; 8];
        slice_channels_fwd(&y, sy, 1, 3, &mut s).unwrap();
        assert_eq!(s, b);
        // Channel range 1..2 of C=3: zeros on both sides of the copied channel, per image.
        let mut dx = [5f32; 12];
        slice_channels_bwd(&[1.0, 2.0, 3.0, 4.0], sy, 1, 2, &mut dx).unwrap();
        assert_eq!(dx, [0., 0., 1., 2., 0., 0., 0., 0., 3., 4., 0., 0.]);
        // Batch: [1,1,1,2] then [2,1,1,2] laid end to end; slice 1..3 takes the last two images.
        let (s1, s2, sy) = (
            Nchw::new(1, 1, 1, 2),
            Nchw::new(2, 1, 1, 2),
            Nchw::new(3, 1, 1, 2),
        );
        let mut y = [0i32; 6];
        concat_batch_fwd(&[(&[7, 8][..], s1), (&[1, 2, 3, 4][..], s2)], &mut y, sy).unwrap();
        assert_eq!(y, [7, 8, 1, 2, 3, 4]);
        let (mut g1, mut g2) = ([0i32; 2], [0i32; 4]);
        concat_batch_bwd(&y, sy, &mut [(&mut g1[..], s1), (&mut g2[..], s2)]).unwrap();
        assert_eq!((g1, g2), ([7, 8], [1, 2, 3, 4]));
        let mut s = [0i32; 4];
        slice_batch_fwd(&y, sy, 1, 3, &mut s).unwrap();
        assert_eq!(s, [1, 2, 3, 4]);
        let mut dx = [5f32; 6];
        slice_batch_bwd(&[1.0, 2.0], sy, 1, 2, &mut dx).unwrap();
        assert_eq!(dx, [0.0, 0.0, 1.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn shape_mismatches_are_errors() {
        let mut y = [0f32; 2];
        let e = add_fwd(&[1.0f32; 3], &[1.0; 3], &mut y).unwrap_err();
        assert!(
            e.to_string()
                .contains("add_fwd: `y` has 2 elements, expected 3"),
            "{e}"
        );
        let (mut da, mut db) = ([0f32; 3], [0f32; 4]);
        let e = mul_bwd(&[1.0f32; 3], &[1.0; 3], &[1.0; 3], &mut da, &mut db).unwrap_err();
        assert!(matches!(e, KernelError::Len { arg: "db", .. }), "{e}");

        // Concat: different H, wrong channel sum, part length off its shape, no parts.
        let (a, b) = ([0f32; 6], [0f32; 4]);
        let mut y = [0f32; 10];
        let sy = Nchw::new(1, 5, 2, 1);
        let e = concat_channels_fwd(
            &[
                (&a[..], Nchw::new(1, 3, 2, 1)),
                (&b[..], Nchw::new(1, 2, 1, 2)),
            ],
            &mut y,
            sy,
        )
        .unwrap_err();
        assert!(e.to_string().contains("part 1 has shape"), "{e}");
        let e = concat_channels_fwd(
            &[
                (&a[..], Nchw::new(1, 3, 2, 1)),
                (&b[..2], Nchw::new(1, 1, 2, 1)),
            ],
            &mut y,
            sy,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("parts sum to C = 4, the whole"),
            "{e}"
        );
        let e = concat_batch_fwd(
            &[
                (&a[..5], Nchw::new(1, 3, 2, 1)),
                (&b[..], Nchw::new(1, 2, 2, 1)),
            ],
            &mut y,
            sy,
        )
        .unwrap_err();
        assert!(e.to_string().contains("part 0 has 5 elements"), "{e}");
        let e = concat_batch_bwd::<f32>(&[], Nchw::new(0, 1, 1, 1), &mut []).unwrap_err();
        assert!(e.to_string().contains("at least one part"), "{e}");
        let e = concat_batch_fwd(
            &[
                (&a[..], Nchw::new(3, 2, 1, 1)),
                (&b[..], Nchw::new(2, 1, 2, 1)),
            ],
            &mut y[..],
            Nchw::new(5, 2, 1, 1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("C, H, W differ"), "{e}");

        // Slices: end past the extent, reversed range, wrong output length.
        let x = [0f32; 12];
        let s = Nchw::new(2, 3, 2, 1);
        let e = slice_channels_fwd(&x, s, 1, 4, &mut [0f32; 12]).unwrap_err();
        assert!(
            e.to_string()
                .contains("channel range 1..4 is not within 0..3"),
            "{e}"
        );
        let e = slice_batch_bwd(&[], s, 2, 1, &mut [0f32; 12]).unwrap_err();
        assert!(e.to_string().contains("batch range 2..1"), "{e}");
        let e = slice_batch_fwd(&x, s, 0, 1, &mut [0f32; 5]).unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::Len {
                    arg: "y",
                    expected: 6,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn arithmetic_gradients_match_finite_differences() {
        let a = rand_vec(1, 37, -2.0, 2.0);
        let b = rand_vec(2, 37, -2.0, 2.0);
        gradcheck(
            "mul",
            &[a.clone(), b],
            |i| {
                let mut y = vec![0.0; i[0].len()];
                mul_fwd(&i[0], &i[1], &mut y).unwrap();
                y
            },
            |i, dy| {
                let (mut da, mut db) = (vec![0.0; dy.len()], vec![0.0; dy.len()]);
                mul_bwd(&i[0], &i[1], dy, &mut da, &mut db).unwrap();
                vec![da, db]
            },
        );
        // The documented backwards without a kernel: add's identity, scale's scale_fwd.
        gradcheck(
            "add",
            &[a.clone(), rand_vec(3, 37, -2.0, 2.0)],
            |i| {
                let mut y = vec![0.0; i[0].len()];
                add_fwd(&i[0], &i[1], &mut y).unwrap();
                y
            },
            |_, dy| vec![dy.to_vec(), dy.to_vec()],
        );
        gradcheck(
            "scale",
            &[a],
            |i| {
                let mut y = vec![0.0; i[0].len()];
                scale_fwd(&i[0], -1.7, &mut y).unwrap();
                y
            },
            |_, dy| {
                let mut dx = vec![0.0; dy.len()];
                scale_fwd(dy, -1.7, &mut dx).unwrap();
                vec![dx]
            },
        );
    }

    #[test]
    fn concat_gradients_match_finite_differences() {
        // Channels: C = 1 + 3 + 2 at N=2, H=3, W=5; batch: N = 1 + 3 + 2 at C=3, H=1, W=5.
        for axis in [Axis::Channels, Axis::Batch] {
            let shapes: Vec<Nchw> = [1, 3, 2]
                .iter()
                .map(|&k| match axis {
                    Axis::Channels => Nchw::new(2, k, 3, 5),
                    Axis::Batch => Nchw::new(k, 3, 1, 5),
                })
                .collect();
            let ys = match axis {
                Axis::Channels => Nchw::new(2, 6, 3, 5),
                Axis::Batch => Nchw::new(6, 3, 1, 5),
            };
            let inputs: Vec<Vec<f64>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| rand_vec(10 + i as u64, s.len(), -1.0, 1.0))
                .collect();
            type Fwd = fn(&[(&[f64], Nchw)], &mut [f64], Nchw) -> Result<(), KernelError>;
            type Bwd = fn(&[f64], Nchw, &mut [(&mut [f64], Nchw)]) -> Result<(), KernelError>;
            let fwd: Fwd = if axis == Axis::Channels {
                concat_channels_fwd::<f64>
            } else {
                concat_batch_fwd::<f64>
            };
            let bwd: Bwd = if axis == Axis::Channels {
                concat_channels_bwd::<f64>
            } else {
                concat_batch_bwd::<f64>
            };
            gradcheck(
                if axis == Axis::Channels {
                    "concat_channels"
                } else {
                    "concat_batch"
                },
                &inputs,
                |i| {
                    let parts: Vec<(&[f64], Nchw)> =
                        i.iter().zip(&shapes).map(|(v, s)| (&v[..], *s)).collect();
                    let mut y = vec![0.0; ys.len()];
                    fwd(&parts, &mut y, ys).unwrap();
                    y
                },
                |_, dy| {
                    let mut grads: Vec<Vec<f64>> =
                        shapes.iter().map(|s| vec![0.0; s.len()]).collect();
                    let mut outs: Vec<(&mut [f64], Nchw)> = grads
                        .iter_mut()
                        .zip(&shapes)
                        .map(|(g, s)| (&mut g[..], *s))
                        .collect();
                    bwd(dy, ys, &mut outs).unwrap();
                    grads
                },
            );
        }
    }

    #[test]
    fn slice_gradients_match_finite_differences() {
        // Channels 1..4 of [2,5,3,7]; batch 1..4 of [5,3,1,7]: interior ranges, so both zeroed
        // borders are exercised.
        let sc = Nchw::new(2, 5, 3, 7);
        gradcheck(
            "slice_channels",
            &[rand_vec(20, sc.len(), -1.0, 1.0)],
            |i| {
                let mut y = vec![0.0; 2 * 3 * 21];
                slice_channels_fwd(&i[0], sc, 1, 4, &mut y).unwrap();
                y
            },
            |_, dy| {
                let mut dx = vec![0.0; sc.len()];
                slice_channels_bwd(dy, sc, 1, 4, &mut dx).unwrap();
                vec![dx]
            },
        );
        let sb = Nchw::new(5, 3, 1, 7);
        gradcheck(
            "slice_batch",
            &[rand_vec(21, sb.len(), -1.0, 1.0)],
            |i| {
                let mut y = vec![0.0; 3 * 21];
                slice_batch_fwd(&i[0], sb, 1, 4, &mut y).unwrap();
                y
            },
            |_, dy| {
                let mut dx = vec![0.0; sb.len()];
                slice_batch_bwd(dy, sb, 1, 4, &mut dx).unwrap();
                vec![dx]
            },
        );
    }
}
