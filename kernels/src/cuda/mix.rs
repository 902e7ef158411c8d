//! CUDA launchers of [`crate::mix`]: box and class masks, the mix of images and of label maps,
//! and the mix's backward (`kernels/cuda/mix.cu`). The draws (boxes, class choices, partners)
//! stay on the host and are uploaded per call; the kernels apply them with the CPU's f32
//! operations in the CPU's order, so every result is bit-identical. The backward is a gather:
//! deterministic, no atomics.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: the draws (host functions in [`crate::mix`]), photometric augmentations
//! ([`super::augment`]), soft masks.

use super::common::{expect, grid, launch, shape_err, upload};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::MIX;
use super::CudaError;
use crate::mix::{ClassChoice, Combine, MixBox, MixSource};
use crate::{KernelError, Nchw};
use cudarc::driver::{CudaSlice, PushKernelArg};

/// The CPU's `check_partner`: N entries, each in [0, N).
fn check_partner(kernel: &'static str, partner: &[i32], n: usize) -> Result<(), CudaError> {
    if partner.len() != n {
        return Err(KernelError::Len {
            kernel,
            arg: "partner",
            expected: n,
            got: partner.len(),
        }
        .into());
    }
    match partner.iter().position(|&p| p < 0 || p as usize >= n) {
        Some(i) => Err(shape_err(
            kernel,
            format!("partner[{i}] = {} is outside [0, {n})", partner[i]),
        )),
        None => Ok(()),
    }
}

/// [`crate::mix::box_mask_fwd`]: rasterises host-drawn boxes into `mask` (union or xor).
///
/// * `boxes`: [N, per_sample] host boxes from [`crate::mix::draw_boxes`], inside H × W.
/// * `mask`: f32[N, H, W], overwritten.
#[allow(clippy::too_many_arguments)]
pub fn box_mask_fwd(
    dev: &Device,
    boxes: &[MixBox],
    n: usize,
    h: usize,
    w: usize,
    per_sample: usize,
    combine: Combine,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "box_mask_fwd";
    if boxes.len() != n * per_sample {
        return Err(KernelError::Len {
            kernel: K,
            arg: "boxes",
            expected: n * per_sample,
            got: boxes.len(),
        }
        .into());
    }
    expect(K, "mask", mask, n * h * w)?;
    if let Some(b) = boxes.iter().find(|b| b.y0 + b.h > h || b.x0 + b.w > w) {
        return Err(shape_err(
            K,
            format!("box {b:?} does not fit inside a {h}x{w} image"),
        ));
    }
    if n * h * w == 0 {
        return Ok(());
    }
    let mut flat: Vec<i32> = boxes
        .iter()
        .flat_map(|b| [b.y0, b.x0, b.h, b.w].map(|v| v as i32))
        .collect();
    if flat.is_empty() {
        // per_sample = 0: the kernel reads no box; upload one dummy so the pointer is valid.
        flat.push(0);
    }
    let boxes_dev = upload(dev, &flat)?;
    let s = dev.stream();
    let (pb, pm) = (boxes_dev.device_addr(s), mask.device_addr(s));
    let (n64, h64, w64, b64) = (n as u64, h as u64, w as u64, per_sample as u64);
    let xor = i32::from(combine == Combine::Xor);
    launch!(dev, MIX, "box_mask_fwd", grid(n * h * w); pb, n64, h64, w64, b64, xor, pm)
}

/// [`crate::mix::class_mask_fwd`]: m[n] = 1 where `label[partner[n]]` is one of sample n's
/// chosen classes.
///
/// * `label`: i32[N, H, W] (device); `partner`: [N] host, in [0, N); `chosen`: host choices
///   from [`crate::mix::draw_classes`].
/// * `mask`: f32[N, H, W], overwritten.
#[allow(clippy::too_many_arguments)]
pub fn class_mask_fwd(
    dev: &Device,
    label: &impl DeviceBuf<i32>,
    partner: &[i32],
    chosen: &ClassChoice,
    n: usize,
    h: usize,
    w: usize,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    const K: &str = "class_mask_fwd";
    let hw = h * w;
    expect(K, "label", label, n * hw)?;
    expect(K, "mask", mask, n * hw)?;
    check_partner(K, partner, n)?;
    if chosen.starts.len() != n + 1 {
        return Err(KernelError::Len {
            kernel: K,
            arg: "chosen.starts",
            expected: n + 1,
            got: chosen.starts.len(),
        }
        .into());
    }
    let ordered = chosen.starts.first() == Some(&0)
        && chosen.starts.windows(2).all(|s| s[0] <= s[1])
        && chosen.starts.last() == Some(&chosen.classes.len());
    if !ordered {
        return Err(shape_err(
            K,
            format!(
                "chosen.starts {:?} must rise from 0 to {}",
                chosen.starts,
                chosen.classes.len()
            ),
        ));
    }
    if chosen.classes.len() > i32::MAX as usize {
        return Err(shape_err(K, "more than 2^31 chosen classes".into()));
    }
    if n * hw == 0 {
        return Ok(());
    }
    let starts: Vec<i32> = chosen.starts.iter().map(|&v| v as i32).collect();
    let classes = if chosen.classes.is_empty() {
        vec![0]
    } else {
        chosen.classes.clone()
    };
    let (partner_dev, classes_dev, starts_dev) = (
        upload(dev, partner)?,
        upload(dev, &classes)?,
        upload(dev, &starts)?,
    );
    let s = dev.stream();
    let (pl, pp, pc, ps, pm) = (
        label.device_addr(s),
        partner_dev.device_addr(s),
        classes_dev.device_addr(s),
        starts_dev.device_addr(s),
        mask.device_addr(s),
    );
    let (n64, plane) = (n as u64, hw as u64);
    launch!(dev, MIX, "class_mask_fwd", grid(n * hw); pl, pp, pc, ps, n64, plane, pm)
}

/// Common checks of the mix forwards; returns the uploaded partner, or `None` when empty.
fn mix_checks<T>(
    dev: &Device,
    kernel: &'static str,
    a: &impl DeviceBuf<T>,
    src: &impl DeviceBuf<T>,
    mask: &impl DeviceBuf<f32>,
    partner: &[i32],
    shape: Nchw,
    out: &impl DeviceBuf<T>,
) -> Result<Option<CudaSlice<i32>>, CudaError> {
    expect(kernel, "a", a, shape.len())?;
    expect(kernel, "src", src, shape.len())?;
    expect(kernel, "mask", mask, shape.n * shape.plane())?;
    expect(kernel, "out", out, shape.len())?;
    check_partner(kernel, partner, shape.n)?;
    if shape.is_empty() {
        return Ok(None);
    }
    upload(dev, partner).map(Some)
}

/// [`crate::mix::mix_fwd`] (f32): out[n, c] = (1 − m[n])·a[n, c] + m[n]·src[partner[n], c].
///
/// * `a`, `src`, `out`: [N, C, H, W] (`shape`; C = 1 covers [N, H, W]); pass `a` as `src` for
///   a mix within one batch. `mask`: [N, H, W]; `partner`: [N] host, in [0, N).
pub fn mix_fwd(
    dev: &Device,
    a: &impl DeviceBuf<f32>,
    src: &impl DeviceBuf<f32>,
    mask: &impl DeviceBuf<f32>,
    partner: &[i32],
    shape: Nchw,
    out: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let Some(partner_dev) = mix_checks(dev, "mix_fwd", a, src, mask, partner, shape, out)? else {
        return Ok(());
    };
    let s = dev.stream();
    let (pa, ps, pm, pp, po) = (
        a.device_addr(s),
        src.device_addr(s),
        mask.device_addr(s),
        partner_dev.device_addr(s),
        out.device_addr(s),
    );
    let (n, c, plane) = (shape.n as u64, shape.c as u64, shape.plane() as u64);
    launch!(dev, MIX, "mix_fwd", grid(shape.len()); pa, ps, pm, pp, n, c, plane, po)
}

/// [`crate::mix::mix_labels_fwd`]: out[n] = src[partner[n]] where m[n] ≥ 0.5, else a[n].
///
/// * `a`, `src`, `out`: i32[N, C, H, W] (`shape`; C = 1 for label maps). `mask`: f32[N, H, W];
///   `partner`: [N] host, in [0, N).
pub fn mix_labels_fwd(
    dev: &Device,
    a: &impl DeviceBuf<i32>,
    src: &impl DeviceBuf<i32>,
    mask: &impl DeviceBuf<f32>,
    partner: &[i32],
    shape: Nchw,
    out: &mut impl DeviceBufMut<i32>,
) -> Result<(), CudaError> {
    let Some(partner_dev) = mix_checks(dev, "mix_labels_fwd", a, src, mask, partner, shape, out)?
    else {
        return Ok(());
    };
    let s = dev.stream();
    let (pa, ps, pm, pp, po) = (
        a.device_addr(s),
        src.device_addr(s),
        mask.device_addr(s),
        partner_dev.device_addr(s),
        out.device_addr(s),
    );
    let (n, c, plane) = (shape.n as u64, shape.c as u64, shape.plane() as u64);
    launch!(dev, MIX, "mix_labels_fwd", grid(shape.len()); pa, ps, pm, pp, n, c, plane, po)
}

/// [`crate::mix::mix_bwd`] (f32): da = (1 − m)·dout plus, with [`MixSource::A`], the partner
/// shares m·dout of every sample whose partner it is (n ascending); with [`MixSource::B`] those
/// shares go to db (starting from 0). `None` outputs are skipped; db must be `None` with
/// `MixSource::A`. A gather, one thread per output element: deterministic, no atomics.
///
/// * `dout`, `da`, `db`: [N, C, H, W] (`shape`). `mask`: [N, H, W]; `partner`: [N] host.
pub fn mix_bwd(
    dev: &Device,
    dout: &impl DeviceBuf<f32>,
    mask: &impl DeviceBuf<f32>,
    partner: &[i32],
    shape: Nchw,
    source: MixSource,
    da: Option<&mut dyn DeviceBufMut<f32>>,
    db: Option<&mut dyn DeviceBufMut<f32>>,
) -> Result<(), CudaError> {
    const K: &str = "mix_bwd";
    expect(K, "dout", dout, shape.len())?;
    expect(K, "mask", mask, shape.n * shape.plane())?;
    check_partner(K, partner, shape.n)?;
    if let Some(da) = &da {
        expect(K, "da", &**da, shape.len())?;
    }
    if let Some(db) = &db {
        expect(K, "db", &**db, shape.len())?;
        if source == MixSource::A {
            return Err(shape_err(
                K,
                "db was given, but the mix had no second batch (source A)".into(),
            ));
        }
    }
    if shape.is_empty() || (da.is_none() && db.is_none()) {
        return Ok(());
    }
    let partner_dev = upload(dev, partner)?;
    let s = dev.stream();
    let (pg, pm, pp) = (
        dout.device_addr(s),
        mask.device_addr(s),
        partner_dev.device_addr(s),
    );
    let pda = da.map_or(0u64, |d| d.device_addr(s));
    let pdb = db.map_or(0u64, |d| d.device_addr(s));
    let (n, c, plane) = (shape.n as u64, shape.c as u64, shape.plane() as u64);
    let source_b = i32::from(source == MixSource::B);
    launch!(dev, MIX, "mix_bwd", grid(shape.len()); pg, pm, pp, n, c, plane, source_b, pda, pdb)
}
