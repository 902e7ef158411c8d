//! CUDA launchers of [`crate::perturb`] (`kernels/cuda/perturb.cu`): the masks of CCT's feature
//! perturbations — F-Drop's salient-region mask and the foreground / background masks of context
//! and object masking — bit-identical to the CPU.
//!
//! Conventions (names, argument order, host-side checks, enqueue only): see [`super`].
//!
//! Not here: guided cutout's boxes (a host draw, [`crate::perturb::guided_cutout_boxes`],
//! rasterised by [`super::mix::box_mask_fwd`]), the multiplications
//! ([`super::elementwise::mul_broadcast_fwd`]).

use super::common::{expect, grid, grid2, launch};
use super::device::{Device, DeviceBuf, DeviceBufMut};
use super::nvrtc::PERTURB;
use super::CudaError;
use crate::perturb;
use cudarc::driver::PushKernelArg;

/// [`crate::perturb::salient_drop_mask_fwd`]: mask = [a < γ·max_hw a] per sample, one block per
/// sample. attention, mask: [N, H·W].
pub fn salient_drop_mask_fwd(
    dev: &Device,
    attention: &impl DeviceBuf<f32>,
    n: usize,
    gamma: f32,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let len = attention.elems();
    expect("salient_drop_mask_fwd", "mask", mask, len)?;
    if len == 0 {
        return Ok(());
    }
    // The CPU's shape error, from the CPU itself (no data is read for it).
    if n == 0 || !len.is_multiple_of(n) {
        perturb::salient_drop_mask_fwd::<f32>(&vec![0.0; len], n, gamma, &mut vec![0.0; len])?;
    }
    let s = dev.stream();
    let (pa, pm, plane) = (
        attention.device_addr(s),
        mask.device_addr(s),
        (len / n) as u64,
    );
    launch!(dev, PERTURB, "salient_drop_mask_fwd", grid2(n as u32, 1); pa, plane, gamma, pm)
}

/// [`crate::perturb::foreground_mask_fwd`]: mask = [(label ≠ background) = keep_foreground].
/// label: i32[N, H, W]; mask: f32[N, H, W].
pub fn foreground_mask_fwd(
    dev: &Device,
    label: &impl DeviceBuf<i32>,
    background: i32,
    keep_foreground: bool,
    mask: &mut impl DeviceBufMut<f32>,
) -> Result<(), CudaError> {
    let n = label.elems();
    expect("foreground_mask_fwd", "mask", mask, n)?;
    if n == 0 {
        return Ok(());
    }
    let s = dev.stream();
    let (pl, pm, n64, keep) = (
        label.device_addr(s),
        mask.device_addr(s),
        n as u64,
        i32::from(keep_foreground),
    );
    launch!(dev, PERTURB, "foreground_mask_fwd", grid(n); pl, n64, background, keep, pm)
}
