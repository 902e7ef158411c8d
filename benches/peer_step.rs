//! Peer benchmark, flowseg side: `benches/peer/graphs/supervised.yaml` and `cutmix_seg.yaml`
//! (deeplab_lite) against the PyTorch implementation in `benches/peer/deeplab_lite.py`. Driven by
//! `benches/peer/run.sh`, which alternates this binary and the PyTorch script on the same machine
//! and thread count; the table is in docs/BENCHMARKS.md ("Peer: PyTorch, same machine").
//!
//! Modes (the first argument after the bench name; cargo's own `--bench` flag is skipped):
//!
//! * `export <dir> [--set k=v]...` — for the numerical cross-check (supervised graph), with the
//!   graph's overrides
//!   (default `data.batch=16`, `data.size=64`; later `--set`s win):
//!   `<dir>/init.safetensors`: the initial state of model `student` (parameters and BN buffers),
//!   named without `student.` — PyTorch's `state_dict` names;
//!   `<dir>/batch.safetensors`: batch 0 (`image` f32[N, 3, S, S], `label` i32[N, S, S]);
//!   `<dir>/expected.safetensors`: after one forward + backward on that batch (`run_cpu`, no
//!   update): `logits`, `loss`, `grad.<name>` per trained parameter, `running.<name>` per BN
//!   buffer the train-mode forward assigns, and `relu_in.<k>` the input of the k-th `relu` node
//!   in graph order.
//! * `time <n> [resnet]` — median ms of `n` timed `Trainer::step`s (after 3 warm-up steps) of the
//!   supervised graph at batch 16 of 64×64 and of 128×128 and of the CutMix-Seg graph at batch 16
//!   (labeled) + 2 × 16 (unlabeled) of 64×64, and of `n` eval-mode forwards (`mode: eval`, logits
//!   only, through the plan executor) at batch 16 of 64×64; the minor page faults per timed step
//!   (read from `/proc/self/stat`) and, for the peer to compare, the trained parameter count of
//!   each graph and the float state count of the CutMix-Seg teacher; one JSON line. With
//!   `resnet`, also both graphs on resnet18_deeplabv3plus ([`RESNET18`]'s overrides) at batch 8
//!   (+ 2 × 8 unlabeled) of 128×128.
//! * `profile <n>` — where a step's time goes: every node of `trainer.graph` run on its own on
//!   captured inputs (as `benches/engine.rs` does), median over `n` passes, summed by op name;
//!   one JSON line per step (supervised at 64×64 and 128×128, CutMix-Seg at 64×64, batch 16),
//!   with `Trainer::step`'s median beside the sum. `PROFILE_NODES=1` also prints every node
//!   (median and min ms, op, name, input shapes) on stderr.
//! * `fuse-ab <graph.yaml> <rounds> <n> [k=v]...` — the step of any graph with and without the
//!   fusion pass, in one process, alternating per round, and the step's convolution FLOPs against
//!   this machine's 2-thread gemm rate (the floor); one JSON line (docs/BENCHMARKS.md).
//!
//! * `gpu <n>` (a `--features cuda` build; scripts/gpu-check.sh) — the step on GPU 0: CutMix-Seg
//!   at batch 16 (+ 2 × 16) of 256×256 on one stream and on three, resnet50_deeplabv3plus's
//!   supervised step at batch 8 of 512×512; one JSON line (see [`time_gpu`]).
//!
//! Threads: rayon's pool, `RAYON_NUM_THREADS` (run.sh sets 2).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a bench binary"
)]

use flowseg_engine::checkpoint::{self, Checkpoint};
use flowseg_engine::data::Batch;
use flowseg_engine::exec::{run_cpu, run_plan_in, ExecOrder, Workspace};
use flowseg_engine::graph::{Env, Graph, ValueRef};
use flowseg_engine::ir;
use flowseg_engine::plan::{plan, PlanOptions};
use flowseg_engine::registry::Registry;
use flowseg_engine::spec::{self, GraphSpec};
use flowseg_engine::train::{Trainer, TrainerOptions};
use flowseg_engine::{ExecCx, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

const SUPERVISED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/peer/graphs/supervised.yaml"
);
const CUTMIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/peer/graphs/cutmix_seg.yaml"
);
const MODEL: &str = "student.";
const TEACHER: &str = "teacher.";
const WARMUP: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of `n` calls of `f`, after `WARMUP` untimed ones.
fn time(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..WARMUP {
        f();
    }
    median(
        (0..n.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn parse(graph: &str, sets: &[String]) -> GraphSpec {
    let text = std::fs::read_to_string(graph).unwrap();
    match spec::parse_graph(&text, sets) {
        Ok((g, _)) => g,
        Err(e) => panic!("{graph}: {e:?}"),
    }
}

/// The trainer of `graph` with `sets` and batch 0 of its data.
fn trainer(registry: &Registry, graph: &str, sets: &[String]) -> (Trainer, Batch) {
    trainer_with(registry, graph, sets, TrainerOptions::default())
}

/// [`trainer`] with `options` (fusion on or off).
fn trainer_with(
    registry: &Registry,
    graph: &str,
    sets: &[String],
    options: TrainerOptions,
) -> (Trainer, Batch) {
    let text = std::fs::read_to_string(graph).unwrap();
    let (gspec, _, mut source) = flowseg_engine::open::open_graph(&text, sets, registry).unwrap();
    let env = Env {
        batch: source.specs(),
        state: BTreeMap::new(),
        hidden: source.hidden_fields(),
    };
    let trainer = match Trainer::with_options(&gspec, registry, &env, BTreeMap::new(), options) {
        Ok(t) => t,
        Err(e) => panic!("{e:?}"),
    };
    let batch = source.batch(0).unwrap();
    (trainer, batch)
}

fn sizes(batch: usize, size: usize) -> Vec<String> {
    vec![format!("data.batch={batch}"), format!("data.size={size}")]
}

/// `sizes` plus an unlabeled batch of the same size (each of the graph's unlabeled sets).
fn semi_sizes(batch: usize, size: usize) -> Vec<String> {
    let mut sets = sizes(batch, size);
    sets.push(format!("data.unlabeled_batch={batch}"));
    sets
}

/// Elements of the f32 state tensors whose names `keep` accepts.
fn state_elements(trainer: &Trainer, keep: impl Fn(&str) -> bool) -> usize {
    trainer
        .state
        .iter()
        .filter(|(k, v)| keep(k) && v.f32().is_some())
        .map(|(_, v)| v.spec().len())
        .sum()
}

/// Elements of the parameters the trainer's optimizers update.
fn trained_elements(trainer: &Trainer) -> usize {
    trainer
        .gradient_sources()
        .iter()
        .map(|(name, _)| trainer.state[name].spec().len())
        .sum()
}

/// The node named `name`, output 0.
fn output_of(graph: &Graph, name: &str) -> ValueRef {
    let node = graph
        .nodes
        .iter()
        .position(|n| n.name.value == name)
        .unwrap_or_else(|| panic!("no node `{name}`"));
    ValueRef::Node { node, port: 0 }
}

fn save(path: &Path, tensors: BTreeMap<String, Tensor>) {
    let ckpt = Checkpoint {
        tensors,
        meta: BTreeMap::from([(
            "graph".to_owned(),
            "benches/peer/graphs/supervised.yaml".to_owned(),
        )]),
    };
    checkpoint::save(path, &ckpt).unwrap();
    println!("wrote {}", path.display());
}

fn export(registry: &Registry, dir: &Path, extra: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut sets = sizes(16, 64);
    sets.extend_from_slice(extra);
    let (trainer, batch) = trainer(registry, SUPERVISED, &sets);
    let local = |name: &str| name.strip_prefix(MODEL).unwrap_or(name).to_owned();

    let init = trainer
        .state
        .iter()
        .map(|(k, v)| (local(k), v.clone()))
        .collect();
    save(&dir.join("init.safetensors"), init);
    save(&dir.join("batch.safetensors"), batch.clone());

    let run = run_cpu(&trainer.graph, &batch, &trainer.state, 0, 0).unwrap();
    let (_, loss) = trainer.losses.first().expect("a loss").clone();
    // The logits: what the loss node reads first.
    let ValueRef::Node { node, .. } = loss else {
        panic!("the loss is no node output")
    };
    let logits = trainer.graph.nodes[node].inputs[0].clone().unwrap();
    let mut expected = BTreeMap::new();
    expected.insert("logits".to_owned(), run.get(&logits).unwrap().clone());
    expected.insert("loss".to_owned(), run.get(&loss).unwrap().clone());
    let grads = trainer.gradient_sources();
    for (name, src) in &grads {
        let g = run.get(src).expect("gradient kept by run_cpu").clone();
        expected.insert(format!("grad.{}", local(name)), g);
    }
    for (src, name) in &trainer.graph.assigns {
        expected.insert(
            format!("running.{}", local(name)),
            run.get(src).unwrap().clone(),
        );
    }
    // Every ReLU's input in graph order, which is the forward's call order: the checker follows
    // flowseg's side of 0 at each near-zero pre-activation in an f64 replay, so a pre-activation
    // that float32 rounding may put on either side does not pass for a wrong gradient. The
    // fusion pass folds each ReLU into its batch norm, so they come from the unfused graph,
    // which computes the same bits (tests/fusion.rs; checked on the loss here).
    let options = TrainerOptions {
        fuse: false,
        ..TrainerOptions::default()
    };
    let (unfused, _) = trainer_with(registry, SUPERVISED, &sets, options);
    let plain = run_cpu(&unfused.graph, &batch, &unfused.state, 0, 0).unwrap();
    let (_, plain_loss) = unfused.losses.first().expect("a loss").clone();
    assert_eq!(
        plain.scalar(&plain_loss).unwrap().to_bits(),
        run.scalar(&loss).unwrap().to_bits(),
        "the unfused graph's loss differs from the fused one's"
    );
    let relus = (unfused.graph.nodes.iter()).filter(|n| n.op.name() == "relu");
    for (k, node) in relus.enumerate() {
        let src = node.inputs[0].as_ref().expect("relu's input is connected");
        expected.insert(format!("relu_in.{k:04}"), plain.get(src).unwrap().clone());
    }
    drop(plain);
    println!(
        "loss {:.6}, {} gradients, {} assigned buffers, {} state tensors",
        run.scalar(&loss).unwrap(),
        grads.len(),
        trainer.graph.assigns.len(),
        trainer.state.len()
    );
    drop(run);
    save(&dir.join("expected.safetensors"), expected);
}

/// One timed training graph: median seconds per `Trainer::step`, minor page faults per timed
/// step, the elements of the parameters it trains and of the teacher's f32 state (parameters
/// and BN buffers; 0 without a teacher).
struct Timed {
    secs: f64,
    faults: u64,
    trained: usize,
    teacher_state: usize,
}

/// `n` timed `Trainer::step`s of `graph` with `sets`, always on batch 0 (the batch's values
/// do not change the dense work; the iteration count does change random masks).
fn time_step(registry: &Registry, graph: &str, sets: &[String], n: usize) -> Timed {
    let (mut trainer, batch) = trainer(registry, graph, sets);
    let mut it = 0;
    let mut faults = 0;
    let secs = time(n, || {
        if it == WARMUP as u64 {
            faults = minor_faults();
        }
        trainer.step(&batch, it).unwrap();
        it += 1;
    });
    Timed {
        secs,
        faults: (minor_faults() - faults) / n.max(1) as u64,
        trained: trained_elements(&trainer),
        teacher_state: state_elements(&trainer, |k| k.starts_with(TEACHER)),
    }
}

/// Median seconds of an eval-mode forward (logits only) at batch 16 of `size`², with the
/// supervised trainer's initial state.
fn time_eval(registry: &Registry, size: usize, n: usize) -> f64 {
    let mut sets = sizes(16, size);
    let (trainer, batch) = trainer(registry, SUPERVISED, &sets);
    sets.push("optim={}".to_owned());
    sets.push(
        "nodes=[{ name: fwd, op: forward, inputs: { image: batch.image }, \
         params: { model: student, mode: eval } }]"
            .to_owned(),
    );
    let gspec = parse(SUPERVISED, &sets);
    let env = Env {
        batch: batch
            .iter()
            .map(|(k, v)| (k.clone(), v.spec().clone()))
            .collect(),
        state: BTreeMap::new(),
        hidden: Default::default(),
    };
    let graph = match ir::build(&gspec, registry, &env) {
        Ok(g) => g,
        Err(e) => panic!("{e:?}"),
    };
    let logits = output_of(&graph, "fwd/upsample");
    let p = plan(
        &graph,
        &PlanOptions {
            streams: 1,
            keep: vec![logits.clone()],
        },
    )
    .unwrap();
    // Only the image: the eval graph reads no label.
    let batch: Batch = batch.into_iter().filter(|(k, _)| k == "image").collect();
    // The evaluator's way: one workspace reused by every forward (src/eval.rs).
    let mut ws = Workspace::default();
    time(n, || {
        let run = run_plan_in(
            &mut ws,
            &graph,
            &p,
            &batch,
            &trainer.state,
            0,
            0,
            ExecOrder::Sequential,
        )
        .unwrap();
        std::hint::black_box(run.get(&logits));
    })
}

/// The overrides that turn the peer graphs' deeplab_lite into resnet18_deeplabv3plus (the
/// PyTorch twin: benches/peer/resnet18_deeplabv3plus.py); run.sh's `export` passes the same.
const RESNET18: &[&str] = &[
    "models.student.arch=resnet18_deeplabv3plus",
    "models.student.params={classes: 6}",
];

/// `sets` with the resnet18 overrides in front.
fn resnet18(sets: Vec<String>) -> Vec<String> {
    RESNET18.iter().map(|s| s.to_string()).chain(sets).collect()
}

fn time_all(registry: &Registry, n: usize, with_resnet: bool) {
    let s64 = time_step(registry, SUPERVISED, &sizes(16, 64), n);
    let s128 = time_step(registry, SUPERVISED, &sizes(16, 128), n);
    let cutmix = time_step(registry, CUTMIX, &semi_sizes(16, 64), n);
    let e64 = time_eval(registry, 64, n);
    // resnet18_deeplabv3plus: supervised and CutMix-Seg steps at batch 8 (+ 2 × 8) of 128×128.
    let r18 = if with_resnet {
        let sup = time_step(registry, SUPERVISED, &resnet18(sizes(8, 128)), n);
        let cut = time_step(registry, CUTMIX, &resnet18(semi_sizes(8, 128)), n);
        format!(
            ", \"r18_sup_b8_128\": {:.3}, \"r18_cutmix_b8_128\": {:.3}, \
             \"faults_per_step_r18_128\": {}, \"faults_per_step_r18_cutmix_128\": {}, \
             \"params_r18\": {}, \"teacher_state_r18_cutmix\": {}",
            sup.secs * 1e3,
            cut.secs * 1e3,
            sup.faults,
            cut.faults,
            sup.trained,
            cut.teacher_state
        )
    } else {
        String::new()
    };
    println!(
        "{{\"impl\": \"flowseg\", \"threads\": {}, \"n\": {n}, \"sup_b16_64\": {:.3}, \
         \"sup_b16_128\": {:.3}, \"cutmix_b16_64\": {:.3}, \"eval_b16_64\": {:.3}, \
         \"faults_per_step_64\": {}, \"faults_per_step_128\": {}, \
         \"faults_per_step_cutmix_64\": {}, \"params_sup\": {}, \"params_cutmix\": {}, \
         \"teacher_state_cutmix\": {}{r18}}}",
        rayon::current_num_threads(),
        s64.secs * 1e3,
        s128.secs * 1e3,
        cutmix.secs * 1e3,
        e64 * 1e3,
        s64.faults,
        s128.faults,
        cutmix.faults,
        s64.trained,
        cutmix.trained,
        cutmix.teacher_state,
    );
}

/// `gpu <n>` (feature `cuda`): the training step on GPU 0, the step benchmark — the peer
/// CutMix-Seg graph (deeplab_lite) at batch 16 (+ 2 × 16) of 256×256 planned on one stream and on
/// three (the teacher's forward beside the student's), and the peer supervised graph on
/// resnet50_deeplabv3plus at batch 8 of 512×512 on one stream; median ms of `n` steps after 3
/// warm-up ones (a GPU `Trainer::step` ends by synchronising, so each step is timed whole). No
/// CUDA-graph replay column: replay is not built. One JSON line.
#[cfg(feature = "cuda")]
fn time_gpu(registry: &Registry, n: usize) {
    let step_ms = |graph: &str, sets: &[String], streams: usize| -> f64 {
        let options = TrainerOptions {
            streams,
            ..TrainerOptions::default()
        };
        let (mut trainer, batch) = trainer_with(registry, graph, sets, options);
        trainer
            .use_cuda(0)
            .unwrap_or_else(|e| panic!("{graph} on the GPU: {e}"));
        let mut it = 0;
        1e3 * time(n, || {
            trainer.step(&batch, it).unwrap();
            it += 1;
        })
    };
    // On the GPU machine the build's checkout is elsewhere: $FLOWSEG_PEER_GRAPHS names the
    // folder holding the two peer graphs (scripts/gpu-check.sh copies them beside the binary).
    let graph = |builtin: &str| match std::env::var_os("FLOWSEG_PEER_GRAPHS") {
        Some(dir) => {
            let file = Path::new(builtin).file_name().unwrap();
            Path::new(&dir).join(file).to_string_lossy().into_owned()
        }
        None => builtin.to_owned(),
    };
    let (cutmix, supervised) = (graph(CUTMIX), graph(SUPERVISED));
    let cut = semi_sizes(16, 256);
    let r50: Vec<String> = [
        "models.student.arch=resnet50_deeplabv3plus",
        "models.student.params={classes: 6}",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(sizes(8, 512))
    .collect();
    let one = step_ms(&cutmix, &cut, 1);
    let three = step_ms(&cutmix, &cut, 3);
    let r50_one = step_ms(&supervised, &r50, 1);
    println!(
        "{{\"impl\": \"flowseg-cuda\", \"n\": {n}, \"cutmix_b16_256_1stream\": {one:.3}, \
         \"cutmix_b16_256_3streams\": {three:.3}, \"r50_sup_b8_512_1stream\": {r50_one:.3}}}"
    );
}

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`; 0 elsewhere).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // After the parenthesised command name: state is field 3, minflt field 10.
            let rest = s.rsplit_once(')')?.1;
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Per-op-kind time of one step's graph (`label` in the JSON line) with the `sets` overrides,
/// each node run on its own.
fn profile(registry: &Registry, label: &str, graph: &str, size: usize, sets: &[String], n: usize) {
    let (mut trainer, batch) = trainer(registry, graph, sets);
    let graph = &trainer.graph;
    let reference = run_cpu(graph, &batch, &trainer.state, 0, 0).unwrap();
    let inputs: Vec<Vec<Option<Tensor>>> = graph
        .nodes
        .iter()
        .map(|n| {
            n.inputs
                .iter()
                .map(|s| s.as_ref().and_then(|s| reference.get(s).cloned()))
                .collect()
        })
        .collect();
    drop(reference);
    let mut outputs: Vec<Vec<Tensor>> = graph
        .nodes
        .iter()
        .map(|n| n.outputs.iter().map(Tensor::zeros).collect())
        .collect();
    let mut per_node: Vec<Vec<f64>> = vec![Vec::new(); graph.nodes.len()];
    let mut faults_ops = 0;
    for pass in 0..WARMUP + n.max(1) {
        if pass == WARMUP {
            faults_ops = minor_faults();
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            let ins: Vec<Option<&Tensor>> = inputs[i].iter().map(Option::as_ref).collect();
            let cx = ExecCx::for_node(0, 0, &node.name.value);
            let t = Instant::now();
            node.op.cpu(&cx, &ins, &mut outputs[i]).unwrap();
            if pass >= WARMUP {
                per_node[i].push(t.elapsed().as_secs_f64());
            }
        }
    }
    // op name → (nodes, ms)
    let mut kinds: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    let per_node_lines = std::env::var_os("PROFILE_NODES").is_some();
    for (i, (node, times)) in graph.nodes.iter().zip(per_node).enumerate() {
        if per_node_lines {
            let shapes: Vec<String> = inputs[i]
                .iter()
                .flatten()
                .map(|t| format!("{:?}", t.spec().shape))
                .collect();
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            eprintln!(
                "{:>8.3} ms (min {:>7.3})  {:<20} {:<28} {}",
                median(times.clone()) * 1e3,
                min * 1e3,
                node.op.name(),
                node.name.as_ref() as &str,
                shapes.join(" ")
            );
        }
        let e = kinds.entry(node.op.name()).or_default();
        e.0 += 1;
        e.1 += median(times) * 1e3;
    }
    let ops: f64 = kinds.values().map(|(_, ms)| ms).sum();
    let passes = n.max(1) as u64;
    let faults_ops = (minor_faults() - faults_ops) / passes;
    let mut it = 0;
    let mut faults_step = 0;
    let step = time(n, || {
        if it == WARMUP as u64 {
            faults_step = minor_faults();
        }
        trainer.step(&batch, it).unwrap();
        it += 1;
    }) * 1e3;
    let faults_step = (minor_faults() - faults_step) / passes;
    let mut sorted: Vec<_> = kinds.into_iter().collect();
    sorted.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let body: Vec<String> = sorted
        .iter()
        .map(|(k, (c, ms))| format!("\"{k}\": {{\"nodes\": {c}, \"ms\": {ms:.3}}}"))
        .collect();
    println!(
        "{{\"impl\": \"flowseg\", \"graph\": \"{label}\", \"size\": {size}, \"threads\": {}, \"step_ms\": {step:.3}, \
         \"ops_ms\": {ops:.3}, \"minor_faults_per_step\": {faults_step}, \
         \"minor_faults_per_ops_pass\": {faults_ops}, \"ops\": {{{}}}}}",
        rayon::current_num_threads(),
        body.join(", ")
    );
}

/// Convolution FLOPs (2 per multiply-add) of one run of `graph`: every `conv2d` node's forward
/// and every `conv2d_bwd` node's input and weight gradients (each as many FLOPs as the forward;
/// an unwanted one, `f32[0]`, counts nothing). Everything else in a U-Net step is a few percent
/// of this.
fn conv_flops(graph: &Graph) -> f64 {
    let spec = |n: &flowseg_engine::graph::IrNode, i: usize| {
        n.inputs[i]
            .as_ref()
            .and_then(|v| graph.spec_of(v))
            .map(|s| s.shape.clone())
            .unwrap_or_default()
    };
    let mut total = 0.0;
    for n in &graph.nodes {
        // (dy or y shape [N, Co, Ho, Wo], weight [Co, Ci/g, kh, kw], passes)
        let (out, w, passes) = match n.op.name() {
            "conv2d" => (n.outputs[0].shape.clone(), spec(n, 1), 1),
            "conv2d_bwd" => {
                let wanted = n.outputs[..2].iter().filter(|o| !o.is_empty()).count();
                (spec(n, 2), spec(n, 1), wanted)
            }
            _ => continue,
        };
        if out.len() == 4 && w.len() == 4 {
            let per = 2.0 * (out.iter().product::<usize>() * w[1] * w[2] * w[3]) as f64;
            total += per * passes as f64;
        }
    }
    total
}

/// The fusion pass's effect on one graph's step: a trainer with the pass and one without, in one
/// process, timed alternately (`rounds` rounds of `n` steps each after the warm-up, median per
/// round); one JSON line with each side's per-round medians, their minima and the ratio, and the
/// floor: the step's convolution GFLOP ([`conv_flops`]) at the gemm rate measured right after
/// (`measured_gflops`, 1024³), and that time over the fused step's best round.
fn fuse_ab(registry: &Registry, graph: &str, rounds: usize, n: usize, sets: &[String]) {
    let (mut on, batch) = trainer_with(
        registry,
        graph,
        sets,
        TrainerOptions {
            fuse: true,
            ..TrainerOptions::default()
        },
    );
    let (mut off, _) = trainer_with(
        registry,
        graph,
        sets,
        TrainerOptions {
            fuse: false,
            ..TrainerOptions::default()
        },
    );
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    let mut it = 0u64;
    for round in 0..rounds.max(1) {
        // Alternate which side goes first.
        for side in [round % 2, 1 - round % 2] {
            let (t, times) = if side == 0 {
                (&mut on, &mut t_on)
            } else {
                (&mut off, &mut t_off)
            };
            let ms = time(n, || {
                t.step(&batch, it).unwrap();
                it += 1;
            }) * 1e3;
            times.push(ms);
        }
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The floor: the step's convolution FLOPs at this machine's gemm rate, measured now.
    let flops = conv_flops(&on.graph);
    let gemm = flowseg_engine::kernels::gemm::measured_gflops(1024, 5);
    let floor_ms = flops / (gemm * 1e9) * 1e3;
    println!(
        "{{\"graph\": \"{graph}\", \"threads\": {}, \"nodes_fused\": {}, \"nodes_unfused\": {}, \
         \"fused_ms\": [{}], \"unfused_ms\": [{}], \"fused_min_ms\": {:.2}, \"unfused_min_ms\": {:.2}, \
         \"ratio_of_minima\": {:.3}, \"conv_gflop\": {:.3}, \"gemm_gflops\": {gemm:.1}, \
         \"floor_ms\": {floor_ms:.2}, \"floor_over_fused_min\": {:.3}}}",
        rayon::current_num_threads(),
        on.graph.nodes.len(),
        off.graph.nodes.len(),
        list(&t_on),
        list(&t_off),
        min(&t_on),
        min(&t_off),
        min(&t_on) / min(&t_off),
        flops / 1e9,
        floor_ms / min(&t_on)
    );
}

fn usage() -> ! {
    eprintln!(
        "usage: peer_step export <dir> [--set k=v]... | time <n> [resnet] | profile <n> | \
         profile-graph <graph.yaml> <n> [k=v]... | fuse-ab <graph.yaml> <rounds> <n> [k=v]... | \
         gpu <n> (feature cuda)"
    );
    std::process::exit(2)
}

fn main() {
    // `cargo bench` passes `--bench`; run.sh calls the binary directly.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let registry = flowseg::registry(&[]).unwrap();
    let count =
        |a: Option<&String>| -> usize { a.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()) };
    match args.first().map(String::as_str) {
        Some("export") => {
            let dir = args.get(1).unwrap_or_else(|| usage());
            let mut sets = Vec::new();
            let mut rest = args[2..].iter();
            while let Some(a) = rest.next() {
                match (a.as_str(), rest.next()) {
                    ("--set", Some(v)) => sets.push(v.clone()),
                    _ => usage(),
                }
            }
            export(&registry, Path::new(dir), &sets);
        }
        Some("time") => time_all(
            &registry,
            count(args.get(1)),
            match args.get(2).map(String::as_str) {
                None => false,
                Some("resnet") => true,
                Some(_) => usage(),
            },
        ),
        Some("profile") => {
            let n = count(args.get(1));
            profile(&registry, "supervised", SUPERVISED, 64, &sizes(16, 64), n);
            profile(&registry, "supervised", SUPERVISED, 128, &sizes(16, 128), n);
            profile(&registry, "cutmix_seg", CUTMIX, 64, &semi_sizes(16, 64), n);
        }
        Some("profile-graph") => {
            let path = args.get(1).unwrap_or_else(|| usage());
            let n = count(args.get(2));
            let sets: Vec<String> = args[3..].to_vec();
            profile(&registry, path, path, 0, &sets, n);
        }
        Some("fuse-ab") => {
            let path = args.get(1).unwrap_or_else(|| usage());
            let rounds = count(args.get(2));
            let n = count(args.get(3));
            fuse_ab(&registry, path, rounds, n, &args[4..]);
        }
        #[cfg(feature = "cuda")]
        Some("gpu") => time_gpu(&registry, count(args.get(1))),
        // Plain `cargo bench` (every bench binary): a short timing, so it does something useful.
        None => time_all(&registry, 5, false),
        Some(_) => usage(),
    }
}
