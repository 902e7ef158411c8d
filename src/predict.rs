//! `flowseg eval` (a trained checkpoint + its graph → a metrics table on the held-out split) and
//! `flowseg predict` (a folder of images → palette PNG masks and overlays). Both load the graph
//! as `run` does, take the weights from a checkpoint, and predict with the graph's `eval:` mode
//! through [`crate::eval`].
//!
//! A run directory can stand for both files: `flowseg eval runs/supervised/20261126T120000Z`
//! reads its graph.yaml and checkpoints/last.safetensors.
//!
//! Not here: training (run.rs), the evaluation modes themselves (eval.rs).

use crate::eval::{Evaluator, Predictor};
use crate::run::{load, read, Loaded, Rejected};
use flowseg_engine::checkpoint;
use flowseg_engine::{Registry, Tensor};
use flowseg_sources::palette::{voc_palette, write_index_png};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Which graph and weights: a run directory, or a graph file with `--checkpoint`.
#[derive(Debug, Clone, clap::Args)]
pub struct Trained {
    /// A run directory (its graph.yaml and checkpoints/last.safetensors), or a graph file.
    pub run: PathBuf,
    /// Weights to use (default: the run directory's checkpoints/last.safetensors).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Override any key of the graph, e.g. `--set eval.mode=sliding --set eval.flip=true`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Flags of `flowseg eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    trained: Trained,
    /// Also print the table as JSON lines (one per model) after it.
    #[arg(long)]
    json: bool,
}

/// Flags of `flowseg predict`.
#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    trained: Trained,
    /// Folder of images (PNG or JPEG) to segment.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Where `<stem>.png` (palette mask of class ids) and `<stem>_overlay.png` go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The model to predict with (default: the first EMA teacher, else the first model).
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Replace files of the same names in the output folder.
    #[arg(long)]
    overwrite: bool,
}

/// A loaded graph with the checkpoint's weights in its trainer's state.
fn load_trained(
    t: &Trained,
    registry: &Registry,
    err: &mut dyn Write,
    color: bool,
) -> Result<Loaded, ExitCode> {
    let (graph, ckpt) = if t.run.is_dir() {
        (
            t.run.join("graph.yaml"),
            t.checkpoint
                .clone()
                .unwrap_or_else(|| t.run.join("checkpoints").join("last.safetensors")),
        )
    } else {
        let Some(c) = &t.checkpoint else {
            let _ = writeln!(
                err,
                "error: {} is a graph file: say which weights with --checkpoint FILE (or pass a \
                 run directory)",
                t.run.display()
            );
            return Err(ExitCode::from(2));
        };
        (t.run.clone(), c.clone())
    };
    let text = read(&graph, color, err).ok_or(ExitCode::from(2))?;
    let options = flowseg_engine::train::TrainerOptions::default();
    let mut l = load(&graph, &text, &t.set, false, options, registry, color, err).map_err(
        |Rejected(text)| {
            let _ = err.write_all(text.as_bytes());
            ExitCode::from(2)
        },
    )?;
    let c = checkpoint::load(&ckpt).map_err(|e| {
        let _ = writeln!(err, "error: {e}");
        ExitCode::from(2)
    })?;
    l.trainer.resume(&c).map_err(|e| {
        let _ = writeln!(
            err,
            "error: {} does not fit {}: {e}",
            ckpt.display(),
            graph.display()
        );
        ExitCode::from(2)
    })?;
    Ok(l)
}

/// `flowseg eval`: per-class IoU, mIoU and pixel accuracy of every evaluated model.
pub fn eval(
    a: &EvalArgs,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> ExitCode {
    let mut l = match load_trained(&a.trained, registry, err, color) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let evaluator = Evaluator::new(&l.spec, registry, l.source.as_ref());
    let mut evaluator = match evaluator {
        Ok(Some(e)) => e,
        Ok(None) => {
            let _ = writeln!(
                err,
                "error: the data source has no held-out images to evaluate"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return ExitCode::from(2);
        }
    };
    let results = match evaluator.run_with_rings(l.source.as_mut(), &l.trainer.state) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: evaluation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let classes = l.source.classes();
    let e = &l.spec.eval;
    let mut text = format!(
        "{} held-out images, mode {}{}\n",
        l.source.eval_len(),
        crate::eval::mode_name(e.mode),
        if e.flip { " + flip" } else { "" }
    );
    text.push_str(&format!("{:<14}", "class"));
    for (m, _, _) in &results {
        text.push_str(&format!(" {m:>10}"));
    }
    text.push('\n');
    let k = results.first().map_or(0, |(_, s, _)| s.iou.len());
    for c in 0..k {
        let name = classes
            .get(c)
            .cloned()
            .unwrap_or_else(|| format!("class {c}"));
        text.push_str(&format!("{name:<14}"));
        for (_, s, _) in &results {
            match s.iou[c] {
                Some(v) => text.push_str(&format!(" {:>10.1}", 100.0 * v)),
                None => text.push_str(&format!(" {:>10}", "-")),
            }
        }
        text.push('\n');
    }
    for (label, pick) in [("mIoU", 0), ("pixel acc", 1)] {
        text.push_str(&format!("{label:<14}"));
        for (_, s, _) in &results {
            let v = if pick == 0 { s.miou } else { s.pixel_acc };
            text.push_str(&format!(" {:>10.1}", 100.0 * v));
        }
        text.push('\n');
    }
    // Which classes each model takes for which: the largest off-diagonal shares of a class's
    // pixels (an IoU alone does not say whether a class is missed or given to another).
    for (m, s, _) in &results {
        let name = |c: usize| {
            classes
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("class {c}"))
        };
        let mixups: Vec<String> = s
            .mixups(5, 0.02)
            .iter()
            .map(|&(t, p, share)| format!("{} → {} {:.1} %", name(t), name(p), 100.0 * share))
            .collect();
        if !mixups.is_empty() {
            text.push_str(&format!("mix-ups {m}: {}\n", mixups.join(", ")));
        }
    }
    // Object pixels' errors by distance to the object's boundary (eval.rs `Rings`): thinned
    // borders against missed objects.
    for (m, _, r) in &results {
        if r.pixels.iter().sum::<u64>() == 0 {
            continue;
        }
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} %"));
        let shares = r.shares();
        // Column 0: → background; 1: → another object.
        let column = |which: usize| {
            shares
                .iter()
                .map(|s| cell(if which == 0 { s.0 } else { s.1 }))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        text.push_str(&format!(
            "object pixels {m}, by distance to the boundary (1st layer / 2nd / 3rd / deeper; \
             {} px): → background {}; → another object {}\n",
            r.pixels
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            column(0),
            column(1),
        ));
    }
    if a.json {
        for (m, s, r) in &results {
            let line = serde_json::json!({
                "model": m, "miou": s.miou, "pixel_acc": s.pixel_acc,
                "iou": s.iou, "classes": classes, "confusion": s.confusion,
                "boundary": {
                    "pixels": r.pixels, "to_background": r.to_background,
                    "to_other": r.to_other,
                },
            });
            text.push_str(&format!("{line}\n"));
        }
    }
    crate::report::finish(out.write_all(text.as_bytes()), err)
}

/// The image files of a folder, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{} holds no .png or .jpg images", dir.display()));
    }
    Ok(files)
}

/// `flowseg predict`: one palette mask and one overlay per image.
pub fn predict(
    a: &PredictArgs,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
    color: bool,
) -> ExitCode {
    let fail = |err: &mut dyn Write, msg: String, code: u8| {
        let _ = writeln!(err, "error: {msg}");
        ExitCode::from(code)
    };
    let files = match image_files(&a.images) {
        Ok(f) => f,
        Err(e) => return fail(err, e, 2),
    };
    let l = match load_trained(&a.trained, registry, err, color) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let model = match &a.model {
        Some(m) if l.spec.models.iter().any(|(n, _)| &n.value == m) => m.clone(),
        Some(m) => return fail(err, format!("the graph has no model `{m}`"), 2),
        None => {
            let teacher = l.spec.models.iter().find(|(_, m)| m.ema_of.is_some());
            match teacher.or(l.spec.models.first()) {
                Some((n, _)) => n.value.clone(),
                None => return fail(err, "the graph has no model".into(), 2),
            }
        }
    };
    // Nothing already in the output folder is replaced unless asked.
    let targets: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .map(|f| {
            let stem = f
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            (
                a.out.join(format!("{stem}.png")),
                a.out.join(format!("{stem}_overlay.png")),
            )
        })
        .collect();
    if !a.overwrite {
        if let Some(p) = targets
            .iter()
            .flat_map(|(m, o)| [m, o])
            .find(|p| p.exists())
        {
            return fail(
                err,
                format!(
                    "{} exists; choose another --out or pass --overwrite",
                    p.display()
                ),
                2,
            );
        }
    }
    if let Err(e) = fs::create_dir_all(&a.out) {
        return fail(err, format!("cannot create {}: {e}", a.out.display()), 1);
    }
    let image = l.source.specs().get("image").and_then(|s| s.as_nchw());
    let Some(image) = image else {
        return fail(err, "the data source has no `image` field".into(), 2);
    };
    let mut predictor = match Predictor::new(&l.spec, registry, &model, (image.h, image.w), image.n)
    {
        Ok(p) => p,
        Err(e) => return fail(err, e, 2),
    };
    let source = &l.source;
    let items = files.iter().zip(&targets).map(|(f, t)| {
        let rgb = image::open(f)
            .map_err(|e| format!("{}: undecodable image: {e}", f.display()))?
            .to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let mut x = vec![0f32; 3 * h * w];
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                x[c * h * w + i] = f32::from(p[c]) / 255.0;
            }
        }
        let mut normalized = x.clone();
        source.normalize(&mut normalized);
        let input = Tensor::from_f32(&[3, h, w], normalized).ok_or("internal: image size")?;
        Ok((input, (rgb, t.clone())))
    });
    let palette = voc_palette();
    let mut written = 0usize;
    let result = predictor.predict(
        &l.trainer.state,
        items,
        |(rgb, (mask, overlay)), pred, h, w, _| {
            // Pixels without a prediction (outside a centre crop) are written as 255, "ignore".
            let ids: Vec<u8> = pred
                .iter()
                .map(|&p| u8::try_from(p).unwrap_or(255))
                .collect();
            write_index_png(&mask, &ids, h, w).map_err(|e| format!("{}: {e}", mask.display()))?;
            let mut blend = rgb;
            for (i, px) in blend.pixels_mut().enumerate() {
                let c = palette[usize::from(ids[i])];
                for ch in 0..3 {
                    px[ch] = ((u16::from(px[ch]) + u16::from(c[ch])) / 2) as u8;
                }
            }
            blend
                .save(&overlay)
                .map_err(|e| format!("{}: {e}", overlay.display()))?;
            written += 1;
            Ok(())
        },
    );
    match result {
        Err(e) => fail(err, e, 1),
        Ok(()) => {
            let r = writeln!(
                out,
                "{written} images segmented with `{model}` ({} mode) → {}",
                crate::eval::mode_name(l.spec.eval.mode),
                a.out.display()
            );
            crate::report::finish(r, err)
        }
    }
}
