//! flowseg-ops: the built-in ops. One op per file, in a folder per family, the file named after
//! the op's YAML name (`forward/conv2d.rs` is `op: conv2d`); each is registered by one line in
//! [`register_builtin_ops`]. The engine never names these types: it sees them through the
//! [`Registry`].
//!
//! Families: `augment` (photometric and cutout augmentations), `forward` (layers and
//! activations), `loss` (scalar objectives), `fuse` (turning predictions into pseudo-labels and
//! masks), `mix` (CutMix / ClassMix masks and the masked mix). Data sources are another crate's
//! (`flowseg-sources`). EMA
//! teachers and optimizers are the trainer's (declared in a graph's `models:` and `optim:`).
//! Beside the ops, `models/` holds the built-in architectures (`deeplab_lite`,
//! `resnet18_deeplabv3plus`, `resnet50_deeplabv3plus`, `unet`, and PseudoSeg's heads
//! `cam_classifier` and `sgc_head`), one file per family, registered the same
//! way with `add_model`, and `models/layers.rs` the building blocks they trace with.
//!
//! Every differentiable op implements `Op::vjp` by emitting backward ops, which live in the
//! forward op's file and are not registered (they are never written in YAML); the others
//! (`max_confidence`, `threshold`, `detach`, `box_mask`, `class_mask`, and PseudoSeg's
//! `calibrated_fusion`, `sharpen`, `cam_normalize`, `image_labels`) are stop-gradients
//! (`Op::STOP_GRAD`). The CUDA launchers arrive with the CUDA kernels, as new `Op` methods.

use flowseg_engine::{Registry, RegistryError};

pub use flowseg_engine as engine;

mod grad;
#[cfg(test)]
mod support;

/// Photometric and cutout augmentations of image batches, drawn per sample from the node's
/// Philox stream.
pub mod augment {
    pub mod color_jitter;
    mod common;
    pub mod cutout;
    pub mod gaussian_blur;
    pub mod random_grayscale;
}

/// Network layers and activations.
pub mod forward {
    pub mod add;
    pub mod batch_norm;
    pub mod concat;
    pub mod conv2d;
    pub mod dropout;
    pub mod feature_drop;
    pub mod feature_noise;
    pub mod global_avg_pool;
    pub mod guided_mask;
    pub mod instance_norm;
    pub mod leaky_relu;
    pub mod max_pool2d;
    pub mod mean;
    pub mod mul;
    mod perturb;
    pub mod prepend_background;
    pub mod relu;
    pub mod resize_bilinear;
    pub mod self_attention;
    pub mod softmax;
    pub mod split;
    pub mod squeeze;
}

/// Predictions combined into training signals (pseudo-labels, confidences), and the explicit
/// stop-gradient `detach`.
pub mod fuse {
    pub mod blur_map;
    pub mod calibrated_fusion;
    pub mod cam_normalize;
    pub mod detach;
    pub mod error_map;
    pub mod image_labels;
    pub mod l2_normalize;
    pub mod label_accuracy;
    pub mod max_confidence;
    pub mod minmax_normalize;
    pub mod random_direction;
    pub mod select_by_key;
    pub mod sharpen;
    pub mod threshold;
}

/// Losses: a scalar from predictions and targets.
pub mod loss {
    pub mod binary_cross_entropy;
    pub mod cross_entropy;
    pub mod soft_cross_entropy;
    pub mod squared_error;
}

/// Mixing two samples by a mask: box (CutMix) and class (ClassMix) masks with their partners,
/// and the masked mix itself.
pub mod mix {
    pub mod box_mask;
    pub mod class_mask;
    // The op file is named after the op, `mix`, inside the family of the same name.
    #[allow(clippy::module_inception)]
    pub mod mix;
}

/// Network architectures (`arch:` in a graph's `models:`), traced into the primitive ops above by
/// a `forward` node.
pub mod models {
    pub mod cam_classifier;
    pub mod cct_head;
    pub mod deeplab_lite;
    pub mod flaw_detector;
    mod layers;
    pub mod resnet;
    pub mod sgc_head;
    pub mod unet;
}

/// Adds every built-in op and model to `r`, one line each. Also usable as a plugin
/// (`r.install(&register_builtin_ops)`); fails only if a name is already taken.
pub fn register_builtin_ops(r: &mut Registry) -> Result<(), RegistryError> {
    r.add::<augment::color_jitter::ColorJitter>()?;
    r.add::<augment::cutout::Cutout>()?;
    r.add::<augment::gaussian_blur::GaussianBlur>()?;
    r.add::<augment::random_grayscale::RandomGrayscale>()?;
    r.add::<forward::add::Add>()?;
    r.add::<forward::batch_norm::BatchNorm>()?;
    r.add::<forward::concat::Concat>()?;
    r.add::<forward::conv2d::Conv2d>()?;
    r.add::<forward::dropout::Dropout>()?;
    r.add::<forward::feature_drop::FeatureDrop>()?;
    r.add::<forward::feature_noise::FeatureNoise>()?;
    r.add::<forward::global_avg_pool::GlobalAvgPool>()?;
    r.add::<forward::guided_mask::GuidedMask>()?;
    r.add::<forward::instance_norm::InstanceNorm>()?;
    r.add::<forward::leaky_relu::LeakyRelu>()?;
    r.add::<forward::max_pool2d::MaxPool2d>()?;
    r.add::<forward::mean::Mean>()?;
    r.add::<forward::mul::Mul>()?;
    r.add::<forward::prepend_background::PrependBackground>()?;
    r.add::<forward::relu::Relu>()?;
    r.add::<forward::resize_bilinear::ResizeBilinear>()?;
    r.add::<forward::self_attention::SelfAttention>()?;
    r.add::<forward::softmax::Softmax>()?;
    r.add::<forward::split::Split>()?;
    r.add::<forward::squeeze::Squeeze>()?;
    r.add::<fuse::blur_map::BlurMap>()?;
    r.add::<fuse::calibrated_fusion::CalibratedFusion>()?;
    r.add::<fuse::cam_normalize::CamNormalize>()?;
    r.add::<fuse::detach::Detach>()?;
    r.add::<fuse::error_map::ErrorMap>()?;
    r.add::<fuse::image_labels::ImageLabels>()?;
    r.add::<fuse::l2_normalize::L2Normalize>()?;
    r.add::<fuse::label_accuracy::LabelAccuracy>()?;
    r.add::<fuse::max_confidence::MaxConfidence>()?;
    r.add::<fuse::minmax_normalize::MinmaxNormalize>()?;
    r.add::<fuse::random_direction::RandomDirection>()?;
    r.add::<fuse::select_by_key::SelectByKey>()?;
    r.add::<fuse::sharpen::Sharpen>()?;
    r.add::<fuse::threshold::Threshold>()?;
    r.add::<loss::binary_cross_entropy::BinaryCrossEntropy>()?;
    r.add::<loss::cross_entropy::CrossEntropy>()?;
    r.add::<loss::soft_cross_entropy::SoftCrossEntropy>()?;
    r.add::<mix::box_mask::BoxMask>()?;
    r.add::<mix::class_mask::ClassMask>()?;
    r.add::<mix::mix::Mix>()?;
    r.add::<loss::squared_error::SquaredError>()?;
    r.add_model::<models::cam_classifier::CamClassifier>()?;
    r.add_model::<models::cct_head::CctHead>()?;
    r.add_model::<models::deeplab_lite::DeepLabLite>()?;
    r.add_model::<models::flaw_detector::FlawDetector>()?;
    r.add_model::<models::resnet::Resnet18DeepLabV3Plus>()?;
    r.add_model::<models::resnet::Resnet50DeepLabV3Plus>()?;
    r.add_model::<models::sgc_head::SgcHead>()?;
    r.add_model::<models::unet::Unet>()?;
    Ok(())
}

/// A registry holding exactly the built-in ops.
pub fn builtin_registry() -> Result<Registry, RegistryError> {
    let mut r = Registry::new();
    register_builtin_ops(&mut r)?;
    Ok(r)
}
