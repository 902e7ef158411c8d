//! `flowseg data`: dataset tools. `split` writes the labeled/unlabeled split of an item list
//! (the same split a data source computes from `labeled:` and `split_seed:`, so it can be
//! inspected, versioned or handed to another codebase); `m2nist` composes MNIST digits into a
//! segmentation dataset in VOC layout.
//!
//! Not here: the split and generator logic (flowseg-ops `data::split`, `data::m2nist`).

use flowseg_ops::data::split::{split, Labeled};
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `flowseg data` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DataCommand {
    /// Split an item list (one name per line, e.g. VOC's ImageSets/Segmentation/train.txt) into
    /// labeled.txt and unlabeled.txt.
    Split(SplitArgs),
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
                format!("{} exists; choose another --out or pass --overwrite", p.display()),
            ));
        }
    }
    fs::create_dir_all(&a.out).map_err(|e| (1, format!("cannot create {}: {e}", a.out.display())))?;
    for (path, idx) in &files {
        let mut body: String = idx.iter().map(|&i| format!("{}\n", names[i])).collect();
        if body.is_empty() {
            body.push_str("# (none)\n");
        }
        // Temp file + rename: an interrupted write never leaves half a split behind.
        let tmp = path.with_extension("txt.partial");
        fs::write(&tmp, body)
            .and_then(|()| fs::rename(&tmp, path))
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
