//! `flowseg demo`: the smallest end-to-end job — a 4-layer segmentation network trained on
//! procedural images with the CPU kernels called directly, then evaluated (pixel accuracy, per-class
//! IoU, mIoU) on held-out images. It exists so the kernels are exercised together (conv, batch
//! norm, relu, bilinear resize, softmax cross-entropy, SGD) before the graph engine can express
//! the same thing as `graphs/supervised.yaml`; the engine's executor replaces the hand-written
//! forward/backward chaining below.
//!
//! Data: the `shapes` source of flowseg-ops (3 classes: background, disc, square; colours
//! independent of the class, so the network must use shape), drawn directly.
//!
//! Not here: YAML, datasets on disk, checkpoints, multi-stream anything.

use flowseg_kernels::activation::{relu_bwd, relu_fwd};
use flowseg_kernels::argmax::argmax_fwd;
use flowseg_kernels::batch_norm::{
    batch_norm_eval_fwd, batch_norm_train_bwd, batch_norm_train_fwd, BatchNormParams,
};
use flowseg_kernels::conv2d::{conv2d_bwd, conv2d_fwd, Conv2d};
use flowseg_kernels::loss::{
    cross_entropy_bwd, cross_entropy_fwd, CrossEntropyParams, Denominator,
};
use flowseg_kernels::optim::{sgd_step, Sgd};
use flowseg_kernels::philox::Philox;
use flowseg_kernels::resize::{resize_bilinear_bwd, resize_bilinear_fwd};
use flowseg_kernels::{KernelError, Nchw};
use flowseg_sources::shapes::shapes_batch as batch;
use std::time::Instant;

pub use flowseg_sources::shapes::CLASSES;
const K: usize = CLASSES.len();

/// What to train and for how long. Also the `flowseg demo` flags (each field is `--field`).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoConfig {
    /// Training iterations.
    #[arg(long, default_value_t = DemoConfig::DEFAULT.iterations)]
    pub iterations: usize,
    /// Images per batch.
    #[arg(long, default_value_t = DemoConfig::DEFAULT.batch)]
    pub batch: usize,
    /// Image side in pixels (square images; even, at least 8).
    #[arg(long, default_value_t = DemoConfig::DEFAULT.size)]
    pub size: usize,
    /// Channel width of the network.
    #[arg(long, default_value_t = DemoConfig::DEFAULT.width)]
    pub width: usize,
    /// Initial SGD learning rate (poly decay; momentum 0.9, weight decay 1e-4).
    #[arg(long, default_value_t = DemoConfig::DEFAULT.lr)]
    pub lr: f64,
    /// Seed of the data and of the initial weights.
    #[arg(long, default_value_t = DemoConfig::DEFAULT.seed)]
    pub seed: u64,
    /// Held-out images evaluated at the end.
    #[arg(long, default_value_t = DemoConfig::DEFAULT.eval_images)]
    pub eval_images: usize,
}

impl DemoConfig {
    /// The defaults (also the CLI's): ~20 s of training on 2 cores.
    pub const DEFAULT: DemoConfig = DemoConfig {
        iterations: 1500,
        batch: 16,
        size: 32,
        width: 32,
        lr: 0.05,
        seed: 0,
        eval_images: 128,
    };
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a demo run measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Training loss at every iteration.
    pub losses: Vec<f32>,
    /// Held-out pixel accuracy, in [0, 1].
    pub pixel_acc: f64,
    /// Held-out IoU per class, in [0, 1].
    pub class_iou: Vec<f64>,
    /// Mean of `class_iou`.
    pub miou: f64,
    /// Wall-clock seconds spent training.
    pub train_secs: f64,
}

/// conv (no bias) → batch norm → relu, with its parameters, gradients, SGD state and the
/// activations its backward needs.
struct ConvBnRelu {
    p: Conv2d,
    co: usize,
    w: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    grads: [Vec<f32>; 3],
    momenta: [Vec<f32>; 3],
    x: Vec<f32>,
    xs: Nchw,
    conv: Vec<f32>,
    bn: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
}

impl ConvBnRelu {
    fn new(ci: usize, co: usize, p: Conv2d, init: Philox) -> Self {
        let w = kaiming(init, p.weight_len(ci, co), ci * p.kh * p.kw);
        let lens = [w.len(), co, co];
        ConvBnRelu {
            p,
            co,
            w,
            gamma: vec![1.0; co],
            beta: vec![0.0; co],
            running_mean: vec![0.0; co],
            running_var: vec![1.0; co],
            grads: lens.map(|l| vec![0.0; l]),
            momenta: lens.map(|l| vec![0.0; l]),
            x: Vec::new(),
            xs: Nchw::default(),
            conv: Vec::new(),
            bn: Vec::new(),
            mean: vec![0.0; co],
            invstd: vec![0.0; co],
        }
    }

    fn forward(
        &mut self,
        x: &[f32],
        xs: Nchw,
        train: bool,
    ) -> Result<(Vec<f32>, Nchw), KernelError> {
        let ys = self.p.out_shape(xs, self.co)?;
        self.conv.resize(ys.len(), 0.0);
        conv2d_fwd(x, xs, &self.w, None, self.co, &self.p, &mut self.conv)?;
        self.bn.resize(ys.len(), 0.0);
        let bnp = BatchNormParams::default();
        if train {
            batch_norm_train_fwd(
                &self.conv,
                &self.gamma,
                &self.beta,
                ys,
                bnp,
                &mut self.running_mean,
                &mut self.running_var,
                &mut self.bn,
                &mut self.mean,
                &mut self.invstd,
            )?;
            self.x = x.to_vec();
            self.xs = xs;
        } else {
            batch_norm_eval_fwd(
                &self.conv,
                &self.gamma,
                &self.beta,
                &self.running_mean,
                &self.running_var,
                ys,
                bnp,
                &mut self.bn,
            )?;
        }
        let mut y = vec![0.0; ys.len()];
        relu_fwd(&self.bn, &mut y)?;
        Ok((y, ys))
    }

    /// Fills the parameter gradients; returns dX unless this is the first layer.
    fn backward(&mut self, dy: &[f32], need_dx: bool) -> Result<Option<Vec<f32>>, KernelError> {
        let ys = self.p.out_shape(self.xs, self.co)?;
        let mut dbn = vec![0.0; dy.len()];
        relu_bwd(&self.bn, dy, &mut dbn)?;
        let mut dconv = vec![0.0; dy.len()];
        let [dw, dgamma, dbeta] = &mut self.grads;
        batch_norm_train_bwd(
            &self.conv,
            &self.gamma,
            &self.mean,
            &self.invstd,
            &dbn,
            None,
            ys,
            &mut dconv,
            dgamma,
            dbeta,
        )?;
        let mut dx = need_dx.then(|| vec![0.0; self.xs.len()]);
        conv2d_bwd(
            &self.x,
            self.xs,
            &self.w,
            self.co,
            &self.p,
            &dconv,
            dx.as_deref_mut(),
            Some(dw),
            None,
        )?;
        Ok(dx)
    }

    fn step(&mut self, sgd: &Sgd) -> Result<(), KernelError> {
        let params = [&mut self.w, &mut self.gamma, &mut self.beta];
        for ((p, g), m) in params.into_iter().zip(&self.grads).zip(&mut self.momenta) {
            sgd_step(p, g, m, sgd)?;
        }
        Ok(())
    }
}

/// He-normal initial weights: N(0, 2/fan_in).
fn kaiming(g: Philox, len: usize, fan_in: usize) -> Vec<f32> {
    let mut w = vec![0.0; len];
    g.fill_normal(0, 0.0, (2.0 / fan_in as f32).sqrt(), &mut w);
    w
}

/// The demo network: 3×3 conv → 3×3 stride-2 conv → dilated 3×3 conv (each with BN + relu) →
/// 1×1 classifier → bilinear upsampling to the input size.
struct Net {
    body: Vec<ConvBnRelu>,
    head_w: Vec<f32>,
    head_b: Vec<f32>,
    head_grads: [Vec<f32>; 2],
    head_momenta: [Vec<f32>; 2],
    feat: Vec<f32>,
    feat_s: Nchw,
    logits_s: Nchw,
}

impl Net {
    fn new(width: usize, seed: u64) -> Self {
        let init = |layer: u64| Philox::new(seed ^ 0x5eed, 1000 + layer);
        let body = vec![
            ConvBnRelu::new(3, width, Conv2d::square(3, 1, 1, 1), init(0)),
            ConvBnRelu::new(width, width, Conv2d::square(3, 2, 1, 1), init(1)),
            ConvBnRelu::new(width, width, Conv2d::square(3, 1, 2, 2), init(2)),
        ];
        let head_w = kaiming(init(3), K * width, width);
        Net {
            body,
            head_w,
            head_b: vec![0.0; K],
            head_grads: [vec![0.0; K * width], vec![0.0; K]],
            head_momenta: [vec![0.0; K * width], vec![0.0; K]],
            feat: Vec::new(),
            feat_s: Nchw::default(),
            logits_s: Nchw::default(),
        }
    }

    /// `x` [N,3,S,S] → logits [N,K,S,S].
    fn forward(&mut self, x: &[f32], xs: Nchw, train: bool) -> Result<Vec<f32>, KernelError> {
        let (mut h, mut hs) = (x.to_vec(), xs);
        for layer in &mut self.body {
            (h, hs) = layer.forward(&h, hs, train)?;
        }
        let head = Conv2d::square(1, 1, 0, 1);
        let ls = head.out_shape(hs, K)?;
        let mut low = vec![0.0; ls.len()];
        conv2d_fwd(&h, hs, &self.head_w, Some(&self.head_b), K, &head, &mut low)?;
        let mut logits = vec![0.0; xs.n * K * xs.h * xs.w];
        resize_bilinear_fwd(&low, ls, xs.h, xs.w, false, &mut logits)?;
        (self.feat, self.feat_s, self.logits_s) = (h, hs, ls);
        Ok(logits)
    }

    /// Back-propagates dlogits [N,K,S,S] into every parameter gradient.
    fn backward(&mut self, dlogits: &[f32], xs: Nchw) -> Result<(), KernelError> {
        let mut dlow = vec![0.0; self.logits_s.len()];
        resize_bilinear_bwd(dlogits, self.logits_s, xs.h, xs.w, false, &mut dlow)?;
        let head = Conv2d::square(1, 1, 0, 1);
        let mut dh = vec![0.0; self.feat.len()];
        let [dw, db] = &mut self.head_grads;
        conv2d_bwd(
            &self.feat,
            self.feat_s,
            &self.head_w,
            K,
            &head,
            &dlow,
            Some(&mut dh),
            Some(dw),
            Some(db),
        )?;
        let layers = self.body.len();
        for (i, layer) in self.body.iter_mut().enumerate().rev() {
            match layer.backward(&dh, i > 0)? {
                Some(d) => dh = d,
                None => debug_assert_eq!(i, 0, "only the first of {layers} layers skips dX"),
            }
        }
        Ok(())
    }

    fn step(&mut self, sgd: &Sgd) -> Result<(), KernelError> {
        for layer in &mut self.body {
            layer.step(sgd)?;
        }
        let [gw, gb] = &self.head_grads;
        let [mw, mb] = &mut self.head_momenta;
        sgd_step(&mut self.head_w, gw, mw, sgd)?;
        sgd_step(&mut self.head_b, gb, mb, sgd)
    }
}

/// Trains and evaluates; `log` receives one line per progress report.
pub fn run(cfg: &DemoConfig, mut log: impl FnMut(&str)) -> Result<DemoReport, KernelError> {
    if cfg.size < 8 || !cfg.size.is_multiple_of(2) || cfg.batch == 0 || cfg.width == 0 {
        return Err(KernelError::Shape {
            kernel: "demo",
            reason: format!(
                "size must be even and at least 8, batch and width at least 1 (got size {}, batch {}, width {})",
                cfg.size, cfg.batch, cfg.width
            ),
        });
    }
    let s = cfg.size;
    let xs = Nchw::new(cfg.batch, 3, s, s);
    let ls = Nchw::new(cfg.batch, K, s, s);
    let ce = CrossEntropyParams {
        ignore_index: 255,
        denominator: Denominator::ValidPixels,
    };
    let mut net = Net::new(cfg.width, cfg.seed);
    let mut losses = Vec::with_capacity(cfg.iterations);
    let start = Instant::now();
    // Training images are indices [0, 2^40); held-out ones start at 2^40, so they never overlap.
    for it in 0..cfg.iterations {
        let (x, y) = batch(cfg.seed, (it * cfg.batch) as u64, cfg.batch, s);
        let logits = net.forward(&x, xs, true)?;
        let loss = cross_entropy_fwd(&logits, &y, None, ls, ce, None)?;
        let mut dlogits = vec![0.0; logits.len()];
        cross_entropy_bwd(&logits, &y, None, ls, ce, 1.0, &mut dlogits)?;
        net.backward(&dlogits, xs)?;
        // Poly decay, the usual segmentation schedule.
        let lr = cfg.lr * (1.0 - it as f64 / cfg.iterations as f64).powf(0.9);
        net.step(&Sgd {
            lr,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        })?;
        losses.push(loss);
        if (it + 1) % 50 == 0 || it + 1 == cfg.iterations {
            let recent = &losses[losses.len().saturating_sub(50)..];
            let mean = recent.iter().sum::<f32>() / recent.len() as f32;
            let el = start.elapsed().as_secs_f64();
            log(&format!(
                "iter {:>5}/{}  loss {mean:.4}  lr {lr:.4}  {:.1} it/s",
                it + 1,
                cfg.iterations,
                (it + 1) as f64 / el
            ));
        }
    }
    let train_secs = start.elapsed().as_secs_f64();

    let mut confusion = [0u64; K * K];
    let mut done = 0;
    while done < cfg.eval_images {
        let n = cfg.batch.min(cfg.eval_images - done);
        let (x, y) = batch(cfg.seed, (1u64 << 40) + done as u64, n, s);
        let logits = net.forward(&x, Nchw::new(n, 3, s, s), false)?;
        let mut pred = vec![0i32; n * s * s];
        argmax_fwd(&logits, Nchw::new(n, K, s, s), &mut pred)?;
        for (&t, &p) in y.iter().zip(&pred) {
            confusion[t as usize * K + p as usize] += 1;
        }
        done += n;
    }
    let total: u64 = confusion.iter().sum();
    let correct: u64 = (0..K).map(|k| confusion[k * K + k]).sum();
    let class_iou: Vec<f64> = (0..K)
        .map(|k| {
            let tp = confusion[k * K + k] as f64;
            let fp: u64 = (0..K).map(|t| confusion[t * K + k]).sum();
            let fn_: u64 = (0..K).map(|p| confusion[k * K + p]).sum();
            let union = fp as f64 + fn_ as f64 - tp;
            if union > 0.0 {
                tp / union
            } else {
                0.0
            }
        })
        .collect();
    Ok(DemoReport {
        losses,
        pixel_acc: correct as f64 / total.max(1) as f64,
        miou: class_iou.iter().sum::<f64>() / K as f64,
        class_iou,
        train_secs,
    })
}
