//! The built-in `resnet18_deeplabv3plus` and `resnet50_deeplabv3plus` models, traced through
//! real graphs: port shapes at output strides 16 and 8, the backbone's state against the exact
//! key list torchvision's `state_dict()` produces (minus `fc.*` and `num_batches_tracked`) and
//! its trainable count against torchvision's published totals, the head's names and count, the
//! torchvision stride → dilation rule read off the emitted convs, and a short training run of
//! ResNet-18 at 2×3×32×32 (~2 s in the dev profile). ResNet-50 is only traced: with its ~40M
//! parameters three steps took ~6 s, too much beside the rest of the suite.

use flowseg_engine::graph::{Env, Graph};
use flowseg_engine::ir;
use flowseg_engine::kernels::testing::rand_vec;
use flowseg_engine::model::Init;
use flowseg_engine::spec;
use flowseg_engine::train::{Trainer, TrainerOptions};
use flowseg_engine::{Tensor, TensorSpec};
use flowseg_ops::builtin_registry;
use std::collections::{BTreeMap, BTreeSet};

/// A graph calling `student` (`arch` with `params`) once as `s` in `mode`, followed by `nodes`
/// (YAML flow mappings, one a line) and an optional `optim` block.
fn graph_yaml(arch: &str, params: &str, mode: &str, optim: &str, nodes: &[&str]) -> String {
    let mut y = format!(
        "name: resnet\ntrain: {{ iterations: 3, seed: 7 }}\nmodels:\n  student: {{ arch: {arch}, \
         params: {params} }}\n{optim}nodes:\n  - {{ name: s, op: forward, inputs: {{ image: \
         batch.image }}, params: {{ model: student, mode: {mode} }} }}\n"
    );
    for n in nodes {
        y.push_str(&format!("  - {n}\n"));
    }
    y
}

/// Batch specs: `image` f32[n, 3, h, w] and `target` i32[n, h, w].
fn env(n: usize, h: usize, w: usize) -> Env {
    Env {
        batch: BTreeMap::from([
            ("image".into(), TensorSpec::f32(&[n, 3, h, w])),
            ("target".into(), TensorSpec::i32(&[n, h, w])),
        ]),
        state: BTreeMap::new(),
        hidden: Default::default(),
    }
}

fn try_build(yaml: &str, env: &Env) -> Result<Graph, String> {
    let (spec, _) = spec::parse_graph(yaml, &[]).unwrap_or_else(|e| panic!("{yaml}\n{e:#?}"));
    ir::build(&spec, &builtin_registry().expect("registers"), env).map_err(|e| format!("{e:#?}"))
}

fn build(yaml: &str, env: &Env) -> Graph {
    try_build(yaml, env).unwrap_or_else(|e| panic!("{yaml}\n{e}"))
}

fn node(g: &Graph, name: &str) -> usize {
    g.nodes
        .iter()
        .position(|n| n.name.value == name)
        .unwrap_or_else(|| panic!("no node `{name}`"))
}

const ARCHS: [&str; 2] = ["resnet18_deeplabv3plus", "resnet50_deeplabv3plus"];

/// The specs of the model's three ports at N = 1, read off `detach` nodes tapping them. Eval
/// mode: a train-mode BN needs two values per channel, which the image-pooling branch has only
/// from N = 2 (see `one_image_cannot_train_the_pooling_bn`).
fn port_specs(arch: &str, params: &str, n: usize, h: usize, w: usize) -> [TensorSpec; 3] {
    let taps = [
        "{ name: logits, op: detach, inputs: { x: s.logits } }",
        "{ name: features, op: detach, inputs: { x: s.features } }",
        "{ name: low_level, op: detach, inputs: { x: s.low_level } }",
    ];
    let g = build(&graph_yaml(arch, params, "eval", "", &taps), &env(n, h, w));
    ["logits", "features", "low_level"].map(|t| g.nodes[node(&g, t)].outputs[0].clone())
}

#[test]
fn ports_have_the_documented_shapes() {
    // 64 → conv1 32 → maxpool 16 (layer1 = low_level) → layer2 8 → layer3 4 (OS 16) or 8
    // (OS 8, dilated) → layer4 at layer3's size; the ASPP keeps it, with 256 channels.
    for (arch, low) in ARCHS.into_iter().zip([64, 256]) {
        for (os, side) in [(16, 4), (8, 8)] {
            let [logits, features, low_level] = port_specs(
                arch,
                &format!("{{ classes: 5, output_stride: {os} }}"),
                1,
                64,
                64,
            );
            assert_eq!(logits, TensorSpec::f32(&[1, 5, 64, 64]), "{arch} OS {os}");
            assert_eq!(
                features,
                TensorSpec::f32(&[1, 256, side, side]),
                "{arch} OS {os}"
            );
            assert_eq!(
                low_level,
                TensorSpec::f32(&[1, low, 16, 16]),
                "{arch} OS {os}"
            );
        }
    }
    // The default is OS 16; odd sides round up at every stride (⌈s/2⌉) and logits come back to
    // the input's size: 45 → 23 → 12 → 6 → 3.
    let [logits, features, low_level] = port_specs(ARCHS[0], "{ classes: 2 }", 2, 45, 33);
    assert_eq!(logits, TensorSpec::f32(&[2, 2, 45, 33]));
    assert_eq!(features, TensorSpec::f32(&[2, 256, 3, 3]));
    assert_eq!(low_level, TensorSpec::f32(&[2, 64, 12, 9]));
}

#[test]
fn one_image_cannot_train_the_pooling_bn() {
    // PyTorch: "Expected more than 1 value per channel when training" from ASPPPooling's BN.
    let yaml = graph_yaml(ARCHS[0], "{ classes: 5 }", "train", "", &[]);
    let e = try_build(&yaml, &env(1, 64, 64)).expect_err("N = 1 in train mode is refused");
    assert!(e.contains("head.aspp.convs.4.2"), "{e}");
    build(&yaml, &env(2, 64, 64));
}

/// The keys of torchvision's `resnet<depth>().state_dict()` without `fc.*` and
/// `*.num_batches_tracked`, written out independently of the model: stem, then per stage and
/// block the convs and BNs torchvision's `BasicBlock`/`Bottleneck` define, and `downsample` on
/// the first block of a stage that changes stride or width.
fn torchvision_keys(bottleneck: bool, layers: [usize; 4]) -> BTreeMap<String, Vec<usize>> {
    let mut keys = BTreeMap::new();
    let bn = |keys: &mut BTreeMap<String, Vec<usize>>, name: String, c: usize| {
        for leaf in ["weight", "bias", "running_mean", "running_var"] {
            keys.insert(format!("{name}.{leaf}"), vec![c]);
        }
    };
    keys.insert("conv1.weight".into(), vec![64, 3, 7, 7]);
    bn(&mut keys, "bn1".into(), 64);
    let expansion = if bottleneck { 4 } else { 1 };
    let mut inplanes = 64;
    for (i, (&blocks, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        let out = planes * expansion;
        for j in 0..blocks {
            let p = format!("layer{}.{j}", i + 1);
            let convs: Vec<(usize, Vec<usize>)> = if bottleneck {
                vec![
                    (planes, vec![planes, inplanes, 1, 1]),
                    (planes, vec![planes, planes, 3, 3]),
                    (out, vec![out, planes, 1, 1]),
                ]
            } else {
                vec![
                    (planes, vec![planes, inplanes, 3, 3]),
                    (planes, vec![planes, planes, 3, 3]),
                ]
            };
            for (k, (c, shape)) in convs.into_iter().enumerate() {
                keys.insert(format!("{p}.conv{}.weight", k + 1), shape);
                bn(&mut keys, format!("{p}.bn{}", k + 1), c);
            }
            let stride = if i > 0 && j == 0 { 2 } else { 1 };
            if stride != 1 || inplanes != out {
                keys.insert(
                    format!("{p}.downsample.0.weight"),
                    vec![out, inplanes, 1, 1],
                );
                bn(&mut keys, format!("{p}.downsample.1"), out);
            }
            inplanes = out;
        }
    }
    keys
}

/// The model's state split into backbone (`student.` stripped) and head, each name → (shape,
/// trainable), and the trainable counts of each.
#[allow(clippy::type_complexity)]
fn split_state(
    g: &Graph,
) -> (
    BTreeMap<String, (Vec<usize>, bool)>,
    BTreeMap<String, (Vec<usize>, bool)>,
) {
    let (mut backbone, mut head) = (BTreeMap::new(), BTreeMap::new());
    for (name, d) in &g.params {
        let name = name
            .strip_prefix("student.")
            .expect("under the model's name");
        let entry = (d.spec.shape.clone(), d.trainable);
        if name.starts_with("head.") {
            head.insert(name.to_owned(), entry);
        } else {
            backbone.insert(name.to_owned(), entry);
        }
    }
    (backbone, head)
}

fn trainable_count(state: &BTreeMap<String, (Vec<usize>, bool)>) -> usize {
    state
        .values()
        .filter(|(_, t)| *t)
        .map(|(s, _)| s.iter().product::<usize>())
        .sum()
}

#[test]
fn backbone_state_is_torchvisions() {
    // Trainable counts, by hand (a BN of c channels trains 2c; convs are bias-free):
    //
    // ResNet-18 (BasicBlock, [2, 2, 2, 2]):
    //   stem    conv1 64·3·49 = 9,408 + bn1 128                                       =      9,536
    //   layer1  2 × (2 × 64·64·9 = 73,728 + 2 × 128)                                  =    147,968
    //   layer2  .0: 128·64·9 = 73,728 + 256 + 128·128·9 = 147,456 + 256
    //               + downsample 128·64 = 8,192 + 256 = 230,144; .1: 2 × 147,456 + 512
    //               = 295,424                                                          =    525,568
    //   layer3  .0: 256·128·9 = 294,912 + 512 + 256·256·9 = 589,824 + 512 + 256·128
    //               = 32,768 + 512 = 919,040; .1: 2 × 589,824 + 1,024 = 1,180,672      =  2,099,712
    //   layer4  .0: 512·256·9 = 1,179,648 + 1,024 + 512·512·9 = 2,359,296 + 1,024
    //               + 512·256 = 131,072 + 1,024 = 3,673,088; .1: 2 × 2,359,296 + 2,048
    //               = 4,720,640                                                        =  8,393,728
    //   total                                                                            11,176,512
    //   = torchvision's 11,689,512 − fc (512·1000 + 1000 = 513,000).
    //
    // ResNet-50 (Bottleneck, [3, 4, 6, 3]; block = conv1 1×1 p·in, conv2 3×3 p·p·9, conv3 1×1
    // 4p·p, BNs 2p + 2p + 8p, first block + downsample 4p·in + 8p):
    //   stem                                                                           =      9,536
    //   layer1  .0: 4,096 + 36,864 + 16,384 + 768 + ds 16,384 + 512 = 75,008;
    //           .1, .2: 16,384 + 36,864 + 16,384 + 768 = 70,400 each                   =    215,808
    //   layer2  .0: 32,768 + 147,456 + 65,536 + 1,536 + ds 131,072 + 1,024 = 379,392;
    //           .1–.3: 65,536 + 147,456 + 65,536 + 1,536 = 280,064 each                =  1,219,584
    //   layer3  .0: 131,072 + 589,824 + 262,144 + 3,072 + ds 524,288 + 2,048
    //               = 1,512,448; .1–.5: 262,144 + 589,824 + 262,144 + 3,072
    //               = 1,117,184 each                                                   =  7,098,368
    //   layer4  .0: 524,288 + 2,359,296 + 1,048,576 + 6,144 + ds 2,097,152 + 4,096
    //               = 6,039,552; .1, .2: 1,048,576 + 2,359,296 + 1,048,576 + 6,144
    //               = 4,462,592 each                                                   = 14,964,736
    //   total                                                                            23,508,032
    //   = torchvision's 25,557,032 − fc (2048·1000 + 1000 = 2,049,000).
    for (arch, bottleneck, layers, count) in [
        (ARCHS[0], false, [2, 2, 2, 2], 11_176_512),
        (ARCHS[1], true, [3, 4, 6, 3], 23_508_032),
    ] {
        for os in [16, 8] {
            let params = format!("{{ classes: 5, output_stride: {os} }}");
            let g = build(
                &graph_yaml(arch, &params, "train", "", &[]),
                &env(2, 64, 64),
            );
            let (backbone, _) = split_state(&g);
            assert_eq!(trainable_count(&backbone), count, "{arch} OS {os}");
            // Exactly torchvision's keys and shapes; running statistics are buffers.
            let want = torchvision_keys(bottleneck, layers);
            let got: BTreeMap<String, Vec<usize>> = backbone
                .iter()
                .map(|(k, (s, _))| (k.clone(), s.clone()))
                .collect();
            let (extra, missing): (BTreeSet<_>, BTreeSet<_>) = (
                got.keys().filter(|k| !want.contains_key(*k)).collect(),
                want.keys().filter(|k| !got.contains_key(*k)).collect(),
            );
            assert!(
                extra.is_empty() && missing.is_empty(),
                "{arch}: extra {extra:?}, missing {missing:?}"
            );
            assert_eq!(got, want, "{arch}: shapes");
            for (name, (_, trainable)) in &backbone {
                assert_eq!(*trainable, !name.contains(".running_"), "{name}");
            }
        }
    }

    // The spot-check list, with shapes and inits (torchvision: Kaiming normal, fan_out mode).
    let g18 = build(
        &graph_yaml(ARCHS[0], "{ classes: 5 }", "train", "", &[]),
        &env(2, 64, 64),
    );
    let g50 = build(
        &graph_yaml(ARCHS[1], "{ classes: 5 }", "train", "", &[]),
        &env(2, 64, 64),
    );
    for (g, name, shape, init) in [
        (
            &g18,
            "conv1.weight",
            &[64, 3, 7, 7][..],
            Init::KaimingNormal { fan_in: 64 * 49 },
        ),
        (&g18, "bn1.running_var", &[64], Init::Ones),
        (
            &g18,
            "layer1.0.conv1.weight",
            &[64, 64, 3, 3],
            Init::KaimingNormal { fan_in: 64 * 9 },
        ),
        (
            &g18,
            "layer2.0.downsample.0.weight",
            &[128, 64, 1, 1],
            Init::KaimingNormal { fan_in: 128 },
        ),
        (&g18, "layer4.1.bn2.bias", &[512], Init::Zeros),
        (
            &g50,
            "layer4.2.conv3.weight",
            &[2048, 512, 1, 1],
            Init::KaimingNormal { fan_in: 2048 },
        ),
        (&g50, "layer3.5.bn3.weight", &[1024], Init::Ones),
        (
            &g50,
            "layer1.0.downsample.0.weight",
            &[256, 64, 1, 1],
            Init::KaimingNormal { fan_in: 256 },
        ),
    ] {
        let d = &g.params[&format!("student.{name}")];
        assert_eq!((&d.spec, d.init), (&TensorSpec::f32(shape), init), "{name}");
    }
    // No classifier of torchvision's, and ResNet-18's layer1 keeps its width: no downsample.
    for g in [&g18, &g50] {
        assert!(!g.params.keys().any(|k| k.contains(".fc.")));
    }
    assert!(!g18
        .params
        .contains_key("student.layer1.0.downsample.0.weight"));
}

#[test]
fn head_state_names_and_count() {
    // Trainable, K = 5, ASPP input Cin = 512 (ResNet-18) or 2048 (ResNet-50), skip 64 or 256:
    //   aspp.convs.0      256·Cin + 512
    //   aspp.convs.1–3    3 × (256·Cin·9 + 512)
    //   aspp.convs.4      256·Cin + 512             (image pooling)
    //   aspp.project      256·1280 + 512 = 328,192
    //   reduce            48·Cskip + 96
    //   fuse              256·304·9 + 512 = 700,928; 256·256·9 + 512 = 590,336
    //   classifier        5·256 + 5 = 1,285
    // ResNet-18: 131,584 + 3,540,480 + 131,584 + 328,192 + 3,168 + 1,291,264 + 1,285
    //          = 5,427,557.
    // ResNet-50: 524,800 + 14,157,312 + 524,800 + 328,192 + 12,384 + 1,291,264 + 1,285
    //          = 16,840,037.
    for (arch, cin, count) in [(ARCHS[0], 512, 5_427_557), (ARCHS[1], 2048, 16_840_037)] {
        let g = build(
            &graph_yaml(arch, "{ classes: 5, output_stride: 8 }", "train", "", &[]),
            &env(2, 32, 32),
        );
        let (_, head) = split_state(&g);
        assert_eq!(trainable_count(&head), count, "{arch}");
        let bound = 1.0 / 16.0;
        for (name, shape, init) in [
            (
                "head.aspp.convs.0.0.weight",
                vec![256, cin, 1, 1],
                Init::KaimingNormal { fan_in: cin },
            ),
            ("head.aspp.convs.0.1.running_mean", vec![256], Init::Zeros),
            (
                "head.aspp.convs.3.0.weight",
                vec![256, cin, 3, 3],
                Init::KaimingNormal { fan_in: cin * 9 },
            ),
            (
                "head.aspp.convs.4.1.weight",
                vec![256, cin, 1, 1],
                Init::KaimingNormal { fan_in: cin },
            ),
            ("head.aspp.convs.4.2.weight", vec![256], Init::Ones),
            (
                "head.aspp.project.0.weight",
                vec![256, 1280, 1, 1],
                Init::KaimingNormal { fan_in: 1280 },
            ),
            ("head.aspp.project.1.bias", vec![256], Init::Zeros),
            (
                "head.reduce.0.weight",
                vec![48, cin / 8, 1, 1],
                Init::KaimingNormal { fan_in: cin / 8 },
            ),
            (
                "head.fuse.0.weight",
                vec![256, 304, 3, 3],
                Init::KaimingNormal { fan_in: 304 * 9 },
            ),
            ("head.fuse.4.running_var", vec![256], Init::Ones),
            (
                "head.classifier.weight",
                vec![5, 256, 1, 1],
                Init::KaimingNormal { fan_in: 256 },
            ),
            ("head.classifier.bias", vec![5], Init::Uniform { bound }),
        ] {
            let d = &g.params[&format!("student.{name}")];
            assert_eq!(
                (&d.spec, d.init),
                (&TensorSpec::f32(&shape), init),
                "{name}"
            );
        }
        // torchvision's ASPP numbering: no module 1 or 3 in the pooling branch's parameters
        // beyond the conv (1) and BN (2), and no dropout.
        assert!(!head.keys().any(|k| k.starts_with("head.aspp.convs.4.0.")));
        assert!(!head.keys().any(|k| k.starts_with("head.aspp.convs.5.")));
    }
}

/// `(stride, padding, dilation)` of conv node `name`, read off its configured params' Debug
/// form (`conv2d(Params { stride: 2, padding: 1, dilation: 1, groups: 1 })`).
fn conv_geometry(g: &Graph, name: &str) -> (usize, usize, usize) {
    let text = format!("{:?}", g.nodes[node(g, name)].op);
    let field = |f: &str| -> usize {
        let at = text
            .find(&format!("{f}: "))
            .unwrap_or_else(|| panic!("{text}"))
            + f.len()
            + 2;
        text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{text}"))
    };
    (field("stride"), field("padding"), field("dilation"))
}

#[test]
fn strides_become_dilations_as_in_torchvision() {
    // torchvision's `_make_layer`: a replaced stage's first block keeps the previous dilation,
    // the others take the new one; its downsample loses the stride. Padding = dilation.
    let r50 = |os: usize| {
        build(
            &graph_yaml(
                ARCHS[1],
                &format!("{{ classes: 5, output_stride: {os} }}"),
                "eval",
                "",
                &[],
            ),
            &env(1, 64, 64),
        )
    };
    let g = r50(16);
    for (name, want) in [
        ("s/conv1", (2, 3, 1)),
        ("s/layer2.0.conv2", (2, 1, 1)),
        ("s/layer2.0.downsample.0", (2, 0, 1)),
        ("s/layer3.0.conv2", (2, 1, 1)),
        ("s/layer3.5.conv2", (1, 1, 1)),
        ("s/layer4.0.conv2", (1, 1, 1)),
        ("s/layer4.0.downsample.0", (1, 0, 1)),
        ("s/layer4.1.conv2", (1, 2, 2)),
        ("s/layer4.2.conv2", (1, 2, 2)),
        ("s/layer4.2.conv1", (1, 0, 1)),
        ("s/head.aspp.convs.1.0", (1, 6, 6)),
        ("s/head.aspp.convs.3.0", (1, 18, 18)),
    ] {
        assert_eq!(conv_geometry(&g, name), want, "OS 16 {name}");
    }
    let g = r50(8);
    for (name, want) in [
        ("s/layer3.0.conv2", (1, 1, 1)),
        ("s/layer3.0.downsample.0", (1, 0, 1)),
        ("s/layer3.1.conv2", (1, 2, 2)),
        ("s/layer3.5.conv2", (1, 2, 2)),
        ("s/layer4.0.conv2", (1, 2, 2)),
        ("s/layer4.1.conv2", (1, 4, 4)),
        ("s/head.aspp.convs.1.0", (1, 12, 12)),
        ("s/head.aspp.convs.2.0", (1, 24, 24)),
        ("s/head.aspp.convs.3.0", (1, 36, 36)),
    ] {
        assert_eq!(conv_geometry(&g, name), want, "OS 8 {name}");
    }
    // ResNet-18 at OS 8: both 3×3 convs of a BasicBlock take the block's dilation.
    let g = build(
        &graph_yaml(
            ARCHS[0],
            "{ classes: 5, output_stride: 8 }",
            "eval",
            "",
            &[],
        ),
        &env(1, 64, 64),
    );
    for (name, want) in [
        ("s/layer2.0.conv1", (2, 1, 1)),
        ("s/layer3.0.conv1", (1, 1, 1)),
        ("s/layer3.0.conv2", (1, 1, 1)),
        ("s/layer3.1.conv1", (1, 2, 2)),
        ("s/layer4.0.conv1", (1, 2, 2)),
        ("s/layer4.0.conv2", (1, 2, 2)),
        ("s/layer4.1.conv2", (1, 4, 4)),
    ] {
        assert_eq!(conv_geometry(&g, name), want, "ResNet-18 OS 8 {name}");
    }
}

/// Two 32×32 images of 8×8 blocks of one random colour each, labelled with the block's
/// strongest channel (K = 3).
fn blocks_batch() -> BTreeMap<String, Tensor> {
    let (n, s, b) = (2, 32, 8);
    let cells = s / b;
    let colours = rand_vec(11, n * 3 * cells * cells, -1.0, 1.0);
    let colour = |i: usize, c: usize, y: usize, x: usize| {
        colours[((i * 3 + c) * cells + y / b) * cells + x / b] as f32
    };
    let mut image = Vec::with_capacity(n * 3 * s * s);
    let mut target = Vec::with_capacity(n * s * s);
    for i in 0..n {
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    image.push(colour(i, c, y, x));
                }
            }
        }
        for y in 0..s {
            for x in 0..s {
                let best = (0..3)
                    .max_by(|&a, &c| colour(i, a, y, x).total_cmp(&colour(i, c, y, x)))
                    .unwrap_or(0);
                target.push(best as i32);
            }
        }
    }
    BTreeMap::from([
        (
            "image".into(),
            Tensor::from_f32(&[n, 3, s, s], image).expect("shape"),
        ),
        (
            "target".into(),
            Tensor::from_i32(&[n, s, s], target).expect("shape"),
        ),
    ])
}

#[test]
fn resnet18_deeplabv3plus_trains() {
    // N = 2, not 1: the image-pooling BN needs two values per channel in train mode.
    let yaml = graph_yaml(
        ARCHS[0],
        "{ classes: 3 }",
        "train",
        "optim:\n  student: { kind: sgd, lr: 0.01, momentum: 0.9, minimize: { ce.loss: 1.0 } }\n",
        &["{ name: ce, op: cross_entropy, inputs: { logits: s.logits, target: batch.target } }"],
    );
    let (spec, _) = spec::parse_graph(&yaml, &[]).expect("parses");
    let registry = builtin_registry().expect("registers");
    let batch = blocks_batch();
    let mut t = Trainer::new(&spec, &registry, &env(2, 32, 32), BTreeMap::new()).expect("trainer");
    let losses: Vec<f32> = (0..3)
        .map(|it| t.step(&batch, it).expect("step")[0].1)
        .collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[2] < losses[0], "loss did not fall: {losses:?}");
    // The fusion pass took every residual add's ReLU (8 basic blocks) besides the batch norms'
    // ReLUs, and changed no bit: the same run op by op ends with the same state.
    let adds = t
        .fusions
        .iter()
        .filter(|f| (f.op, f.absorbed_op) == ("add", "relu"))
        .count();
    assert_eq!(adds, 8, "{:?}", t.fusions);
    let options = TrainerOptions {
        fuse: false,
        ..TrainerOptions::default()
    };
    let mut u = Trainer::with_options(&spec, &registry, &env(2, 32, 32), BTreeMap::new(), options)
        .expect("trainer");
    let unfused: Vec<f32> = (0..3)
        .map(|it| u.step(&batch, it).expect("step")[0].1)
        .collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&losses), bits(&unfused));
    for (name, v) in &t.state {
        let (a, b) = (v.f32().expect("f32"), u.state[name].f32().expect("f32"));
        assert_eq!(bits(a), bits(b), "`{name}` differs with and without fusion");
    }
    // Train-mode BN moved the running statistics of the backbone and of the pooling branch.
    for name in [
        "student.bn1.running_var",
        "student.head.aspp.convs.4.2.running_mean",
    ] {
        let v = t.state[name].f32().expect("f32");
        assert!(v.iter().any(|&x| x != 1.0 && x != 0.0), "{name}");
    }
}
