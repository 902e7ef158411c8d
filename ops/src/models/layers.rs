//! The building blocks the built-in models trace with, each emitting primitive ops through a
//! [`Tracer`] and declaring its state under the module path PyTorch would give it:
//! * [`conv`]: a 2-D conv with its declared weight (`<name>.weight`, Kaiming normal by fan-in or
//!   fan-out, [`Fan`]) and, if asked, a bias (`<name>.bias`, [`Bias`]); "same" padding;
//! * [`bn`]: `nn.BatchNorm2d` (eps 1e-5, momentum 0.1) with γ, β and the two running buffers,
//!   normalizing with batch statistics and assigning the updated buffers in a train-mode forward,
//!   reading them in eval mode;
//! * [`relu`], [`add`], [`concat()`] (two inputs) and [`resize`] (bilinear, align_corners false,
//!   to a given size);
//! * [`conv_bn_relu`] with the three names given, torchvision's `BasicBlock` ([`basic_block`])
//!   and the residual [`shortcut`] (`downsample`) it shares with ResNet's `Bottleneck`;
//! * small readers: [`single`], [`channels`], [`size_of`], [`image_size`] (the models' input
//!   check), [`nonzero`].
//!
//! Not here: anything one model alone uses (ResNet's `Bottleneck` and stem max-pool, the ASPP
//! heads, the decoders, the stage and dilation schedules), model params, registration, and the
//! ops themselves (`forward/`). Crate-private: not part of the public API.

use crate::forward::add::{self, Add};
use crate::forward::batch_norm::{self, BatchNorm};
use crate::forward::concat::Concat;
use crate::forward::conv2d::{self, Conv2d};
use crate::forward::relu::Relu;
use crate::forward::resize_bilinear::{self, ResizeBilinear};
use flowseg_engine::graph::ValueRef;
use flowseg_engine::model::{Init, Tracer};
use flowseg_engine::{DType, NoParams, TensorSpec};
use std::num::NonZeroUsize;

/// The only output of an emitted node.
pub(crate) fn single(outs: Vec<ValueRef>) -> Result<ValueRef, String> {
    outs.into_iter()
        .next()
        .ok_or_else(|| "a node has no output".into())
}

/// C of an NCHW value.
pub(crate) fn channels(t: &Tracer<'_>, x: &ValueRef) -> Result<usize, String> {
    t.spec(x)
        .and_then(|s| s.as_nchw())
        .map(|s| s.c)
        .ok_or_else(|| format!("{x:?} is not NCHW"))
}

/// [H, W] of an NCHW value.
pub(crate) fn size_of(t: &Tracer<'_>, x: &ValueRef) -> Result<[usize; 2], String> {
    t.spec(x)
        .and_then(|s| s.as_nchw())
        .map(|s| [s.h, s.w])
        .ok_or_else(|| format!("{x:?} is not NCHW"))
}

/// [H, W] of a model's `image` input, which must be f32[N, 3, H, W] with H, W > 0.
pub(crate) fn image_size(t: &Tracer<'_>, image: &ValueRef) -> Result<[usize; 2], String> {
    let spec = t.spec(image).ok_or("`image` has no spec")?;
    match (spec.dtype, spec.as_nchw()) {
        (DType::F32, Some(s)) if s.c == 3 && s.h > 0 && s.w > 0 => Ok([s.h, s.w]),
        _ => Err(format!("`image` must be f32[N, 3, H, W], got {spec}")),
    }
}

/// `v` as a `NonZeroUsize`, 0 read as 1.
pub(crate) fn nonzero(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN)
}

/// Which fan a conv weight's Kaiming-normal init, N(0, 2/fan), divides by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fan {
    /// Ci·k²: PyTorch's default mode (`deeplab_lite`, the DeepLab heads).
    In,
    /// Co·k²: torchvision's ResNet (`mode="fan_out"`).
    Out,
}

/// A conv's bias.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bias {
    /// None declared (a BN follows and supplies the shift).
    None,
    /// `<name>.bias`, all zeros.
    Zeros,
    /// `<name>.bias`, `nn.Conv2d`'s default: U(−1/√(Ci·k²), 1/√(Ci·k²)).
    Uniform,
}

/// What [`conv`] emits: a k×k conv to `co` channels; [`Conv::new`] gives stride 1, dilation 1,
/// [`Fan::In`] and [`Bias::None`], the builder methods change them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conv {
    co: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    fan: Fan,
    bias: Bias,
}

impl Conv {
    /// A k×k conv to `co` channels, stride 1, dilation 1, fan-in init, no bias.
    pub(crate) fn new(co: usize, k: usize) -> Self {
        Conv {
            co,
            k,
            stride: 1,
            dilation: 1,
            fan: Fan::In,
            bias: Bias::None,
        }
    }

    /// With stride `stride`.
    pub(crate) fn stride(self, stride: usize) -> Self {
        Conv { stride, ..self }
    }

    /// With dilation `dilation` (and the padding that keeps the size at stride 1).
    pub(crate) fn dilation(self, dilation: usize) -> Self {
        Conv { dilation, ..self }
    }

    /// With the weight's init dividing by `fan`.
    pub(crate) fn fan(self, fan: Fan) -> Self {
        Conv { fan, ..self }
    }

    /// With bias `bias`.
    pub(crate) fn bias(self, bias: Bias) -> Self {
        Conv { bias, ..self }
    }
}

/// Module `name`: the conv `c` — `name.weight` (Kaiming normal by `c`'s fan), then `name.bias`
/// if `c` has one — with "same" padding dilation·(k − 1)/2 (3 for a 7×7, the dilation for a
/// 3×3, 0 for a 1×1), traced as node `name`.
pub(crate) fn conv(
    t: &mut Tracer<'_>,
    name: &str,
    x: ValueRef,
    c: Conv,
) -> Result<ValueRef, String> {
    let Conv {
        co,
        k,
        stride,
        dilation,
        fan,
        bias,
    } = c;
    let ci = channels(t, &x)?;
    let fan = match fan {
        Fan::In => ci * k * k,
        Fan::Out => co * k * k,
    };
    let (weight, bias) = t.scope(name, |t| {
        let weight = t.param(
            "weight",
            TensorSpec::f32(&[co, ci, k, k]),
            // The engine's only Kaiming variant names its field `fan_in`; it is N(0, 2/fan) for
            // whichever fan is passed, so with `Fan::Out` it carries fan_out.
            Init::KaimingNormal { fan_in: fan },
        )?;
        let bias = match bias {
            Bias::None => None,
            Bias::Zeros => Some(t.param("bias", TensorSpec::f32(&[co]), Init::Zeros)?),
            Bias::Uniform => {
                let bound = 1.0 / ((ci * k * k) as f32).sqrt();
                Some(t.param("bias", TensorSpec::f32(&[co]), Init::Uniform { bound })?)
            }
        };
        Ok((weight, bias))
    })?;
    let params = conv2d::Params {
        stride: nonzero(stride),
        padding: dilation * (k - 1) / 2,
        dilation: nonzero(dilation),
        groups: NonZeroUsize::MIN,
    };
    single(t.op::<Conv2d>(name, params, vec![Some(x), Some(weight), bias])?)
}

/// Module `name`: `nn.BatchNorm2d` (eps 1e-5, momentum 0.1) — γ (`weight`), β (`bias`) and the
/// two running buffers; in train mode the buffers are assigned the op's updated statistics.
pub(crate) fn bn(t: &mut Tracer<'_>, name: &str, x: ValueRef) -> Result<ValueRef, String> {
    bn_with(t, name, x, BnSpec::TORCH)
}

/// How a batch-norm module is built: PyTorch's `nn.BatchNorm2d` ([`BnSpec::TORCH`]) or
/// TF-slim's default (`scale=False`: no learned γ, ε 1e-3), which ports of TensorFlow code need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BnSpec {
    /// Whether γ is a trained parameter; without it γ is a constant buffer of ones, so the
    /// layer normalises and shifts but cannot rescale.
    pub scale: bool,
    /// The ε under the square root.
    pub eps: f64,
}

impl BnSpec {
    /// `nn.BatchNorm2d`'s defaults.
    pub const TORCH: BnSpec = BnSpec {
        scale: true,
        eps: 1e-5,
    };
    /// `tf.contrib.slim.batch_norm`'s defaults (`scale=False`, `epsilon=0.001`).
    pub const SLIM: BnSpec = BnSpec {
        scale: false,
        eps: 1e-3,
    };
}

/// Module `name`: a batch norm built as `spec` says, momentum 0.1, γ (`weight`, a buffer when
/// `spec.scale` is false), β (`bias`) and the two running buffers.
pub(crate) fn bn_with(
    t: &mut Tracer<'_>,
    name: &str,
    x: ValueRef,
    spec: BnSpec,
) -> Result<ValueRef, String> {
    let c = TensorSpec::f32(&[channels(t, &x)?]);
    let [gamma, beta, mean, var] = t.scope(name, |t| {
        let gamma = if spec.scale {
            t.param("weight", c.clone(), Init::Ones)?
        } else {
            t.buffer("weight", c.clone(), Init::Ones)?
        };
        Ok([
            gamma,
            t.param("bias", c.clone(), Init::Zeros)?,
            t.buffer("running_mean", c.clone(), Init::Zeros)?,
            t.buffer("running_var", c.clone(), Init::Ones)?,
        ])
    })?;
    let train = t.train();
    let params = batch_norm::Params {
        eps: spec.eps,
        momentum: 0.1,
        mode: if train {
            batch_norm::Mode::Train
        } else {
            batch_norm::Mode::Eval
        },
        // A `relu` after it is the fusion pass's to fold in; models stay op by op.
        relu: false,
    };
    let outs = t.op::<BatchNorm>(
        name,
        params,
        vec![
            Some(x),
            Some(gamma),
            Some(beta),
            Some(mean.clone()),
            Some(var.clone()),
        ],
    )?;
    let [y, new_mean, new_var, _, _] =
        <[ValueRef; 5]>::try_from(outs).map_err(|_| "batch_norm has 5 outputs")?;
    if train {
        t.assign(new_mean, &mean)?;
        t.assign(new_var, &var)?;
    }
    Ok(y)
}

/// Node `name`: relu.
pub(crate) fn relu(t: &mut Tracer<'_>, name: &str, x: ValueRef) -> Result<ValueRef, String> {
    single(t.op::<Relu>(name, NoParams {}, vec![Some(x)])?)
}

/// Node `name`: `a + b`.
pub(crate) fn add(
    t: &mut Tracer<'_>,
    name: &str,
    a: ValueRef,
    b: ValueRef,
) -> Result<ValueRef, String> {
    single(t.op::<Add>(name, add::Params::default(), vec![Some(a), Some(b)])?)
}

/// Node `name`: `a ‖ b` along channels.
pub(crate) fn concat(
    t: &mut Tracer<'_>,
    name: &str,
    a: ValueRef,
    b: ValueRef,
) -> Result<ValueRef, String> {
    single(t.op::<Concat>(name, Default::default(), vec![Some(a), Some(b)])?)
}

/// Node `name`: bilinear resize, align_corners false (`F.interpolate`'s default), to `size`.
pub(crate) fn resize(
    t: &mut Tracer<'_>,
    name: &str,
    x: ValueRef,
    size: [usize; 2],
) -> Result<ValueRef, String> {
    let params = resize_bilinear::Params {
        size: Some(size.map(nonzero)),
        align_corners: false,
    };
    single(t.op::<ResizeBilinear>(name, params, vec![Some(x)])?)
}

/// In the current scope: [`conv`] `c` as module `names[0]`, [`bn`] as `names[1]`, [`relu`] as
/// node `names[2]`.
pub(crate) fn conv_bn_relu(
    t: &mut Tracer<'_>,
    names: [&str; 3],
    x: ValueRef,
    c: Conv,
) -> Result<ValueRef, String> {
    let y = conv(t, names[0], x, c)?;
    let y = bn(t, names[1], y)?;
    relu(t, names[2], y)
}

/// torchvision's `BasicBlock` in the current scope (`layer<i>.<j>`): `conv1` 3×3(stride)-`bn1`-
/// `relu1`-`conv2` 3×3-`bn2`, both convs dilated by `dilation` and initialized by `fan`, plus the
/// input or, when the stride or the width changes, `downsample.0` (1×1 conv(stride)) +
/// `downsample.1` (BN) — torchvision's condition in `_make_layer` — then `add`, `relu2`.
pub(crate) fn basic_block(
    t: &mut Tracer<'_>,
    x: ValueRef,
    planes: usize,
    stride: usize,
    dilation: usize,
    fan: Fan,
) -> Result<ValueRef, String> {
    let c = Conv::new(planes, 3).dilation(dilation).fan(fan);
    let y = conv(t, "conv1", x.clone(), c.stride(stride))?;
    let y = bn(t, "bn1", y)?;
    let y = relu(t, "relu1", y)?;
    let y = conv(t, "conv2", y, c)?;
    let y = bn(t, "bn2", y)?;
    let s = shortcut(t, x, planes, stride, fan)?;
    let y = add(t, "add", y, s)?;
    relu(t, "relu2", y)
}

/// A residual block's shortcut: `x` itself, or `downsample.0` (1×1 conv(stride), init by `fan`)
/// + `downsample.1` (BN) when the stride or the width changes.
pub(crate) fn shortcut(
    t: &mut Tracer<'_>,
    x: ValueRef,
    co: usize,
    stride: usize,
    fan: Fan,
) -> Result<ValueRef, String> {
    if stride == 1 && channels(t, &x)? == co {
        return Ok(x);
    }
    t.scope("downsample", |t| {
        let s = conv(t, "0", x, Conv::new(co, 1).stride(stride).fan(fan))?;
        bn(t, "1", s)
    })
}
