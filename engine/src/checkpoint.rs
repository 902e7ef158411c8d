//! Checkpoints: a run's tensors and a few strings saved to, and loaded from, one safetensors file
//! (the format PyTorch's `safetensors` loader reads), and restored by name into a state map.
//!
//! Names inside a checkpoint: model parameters and buffers under their state names
//! (`<model>.<name>`), optimizer buffers under `optim/<model>/<param>/m` and `…/v`, anything else
//! the caller adds. `meta` holds small strings (iteration, seed, graph name) plus the format
//! version, [`FORMAT_KEY`] = [`FORMAT_VERSION`], which [`save`] writes and [`load`] requires.
//!
//! [`save`] is atomic: the bytes go to `.<name>.tmp-<pid>` in the target's directory, are
//! fsynced, then renamed over the target, and the directory is fsynced (unix). A crash at any
//! point leaves the old checkpoint or the new one under the final name, never a partial file.
//!
//! Not here: deciding *what* goes in (the trainer and the run directory do that), keeping the
//! last N checkpoints, asynchronous or sharded writes, dtypes other than f32 and i32.

use crate::tensor::{DType, Tensor, TensorSpec};
use safetensors::tensor::{Dtype, TensorInfo, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The `meta` key holding the format version.
pub const FORMAT_KEY: &str = "format";
/// The format version this module writes and reads.
pub const FORMAT_VERSION: &str = "flowseg-ckpt-1";
/// safetensors keeps its string map under this header key, so no tensor may take the name.
const RESERVED_NAME: &str = "__metadata__";

/// Everything needed to resume a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// Tensors by name: parameters and buffers under their state names, optimizer buffers under
    /// `optim/<model>/<param>/m` and `/v`, anything else the caller adds.
    pub tensors: BTreeMap<String, Tensor>,
    /// Small strings: iteration, seed, graph name. [`load`] returns [`FORMAT_KEY`] here too.
    pub meta: BTreeMap<String, String>,
}

/// Why saving, loading or restoring a checkpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file does not exist.
    #[error("{}: no such checkpoint", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The operating system refused an operation.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file (or directory) operated on.
        path: PathBuf,
        /// What was being done (`read`, `write`, `fsync`, `rename to …`).
        op: String,
        /// The failure.
        source: io::Error,
    },
    /// The bytes are no safetensors file: a truncated write, or another kind of file.
    #[error("{}: not a safetensors file, or truncated: {detail}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the safetensors parser said.
        detail: String,
    },
    /// A tensor of a dtype flowseg has no [`DType`] for.
    #[error(
        "{}: tensor `{name}` has dtype {dtype}; flowseg checkpoints hold F32 and I32 only",
        path.display()
    )]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its safetensors dtype.
        dtype: String,
    },
    /// A safetensors file, but not one [`save`] wrote (no `format` in `__metadata__`).
    #[error(
        "{}: missing format version (`__metadata__` has no `{FORMAT_KEY}`; expected \
         `{FORMAT_VERSION}`)",
        path.display()
    )]
    MissingVersion {
        /// The file.
        path: PathBuf,
    },
    /// A format version this build does not read.
    #[error("{}: format version `{found}`, this build reads `{FORMAT_VERSION}`", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// [`save`] was handed something the format cannot hold as given.
    #[error("{}: cannot save: {detail}", path.display())]
    Invalid {
        /// The target file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// [`restore`] found names or specs that disagree; nothing was changed. A checkpoint in
    /// memory has no path: the prefix restored names the part of the state instead.
    #[error("{}", describe_mismatch(prefix, missing, unexpected, shape))]
    Mismatch {
        /// The prefix restored (`""` for everything).
        prefix: String,
        /// Names in the target but not in the checkpoint.
        missing: Vec<String>,
        /// Names in the checkpoint but not in the target.
        unexpected: Vec<String>,
        /// (name, spec in the target, spec in the checkpoint) where the two differ.
        shape: Vec<(String, TensorSpec, TensorSpec)>,
    },
}

/// The Display of [`CheckpointError::Mismatch`]: one line per kind, every name listed.
fn describe_mismatch(
    prefix: &str,
    missing: &[String],
    unexpected: &[String],
    shape: &[(String, TensorSpec, TensorSpec)],
) -> String {
    let scope = if prefix.is_empty() {
        "the state".to_string()
    } else {
        format!("the state under `{prefix}`")
    };
    let mut s = format!(
        "checkpoint does not match {scope} ({} missing, {} unexpected, {} with another spec); \
         nothing restored",
        missing.len(),
        unexpected.len(),
        shape.len()
    );
    let list = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !missing.is_empty() {
        let _ = write!(s, "\n  missing from the checkpoint: {}", list(missing));
    }
    if !unexpected.is_empty() {
        let _ = write!(s, "\n  unexpected in the checkpoint: {}", list(unexpected));
    }
    for (name, expected, found) in shape {
        let _ = write!(
            s,
            "\n  `{name}`: the state has {expected}, the checkpoint {found}"
        );
    }
    s
}

/// A tensor seen by the safetensors writer: its bytes little-endian whatever the host.
struct Le<'a>(&'a Tensor);

impl View for Le<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.spec().dtype {
            DType::F32 => Dtype::F32,
            DType::I32 => Dtype::I32,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.0.spec().shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = match (self.0.f32(), self.0.i32()) {
            (Some(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (None, Some(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            (None, None) => Vec::new(),
        };
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.0.spec().len() * 4
    }
}

/// Writes `ckpt` to `path` as safetensors, atomically (see the module doc). `meta` goes to the
/// header's `__metadata__` with [`FORMAT_KEY`] set to [`FORMAT_VERSION`].
///
/// One writer per path at a time: two concurrent saves from one process share the temp name.
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
    tracing::debug!(path = %path.display(), tensors = ckpt.tensors.len(), "saving checkpoint");
    let invalid = |detail: String| CheckpointError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    if ckpt.tensors.contains_key(RESERVED_NAME) {
        return Err(invalid(format!(
            "tensor name `{RESERVED_NAME}` is reserved by safetensors"
        )));
    }
    if let Some(v) = ckpt.meta.get(FORMAT_KEY) {
        if v != FORMAT_VERSION {
            return Err(invalid(format!(
                "meta `{FORMAT_KEY}` is `{v}`, but this build writes `{FORMAT_VERSION}`"
            )));
        }
    }
    if path.file_name().is_none() {
        return Err(invalid("the path names no file".to_string()));
    }
    let mut meta: HashMap<String, String> = ckpt.meta.clone().into_iter().collect();
    meta.insert(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string());
    let bytes = safetensors::serialize(ckpt.tensors.iter().map(|(k, t)| (k, Le(t))), Some(meta))
        .map_err(|e| invalid(e.to_string()))?;
    let bytes = sorted_header(bytes).map_err(invalid)?;

    crate::fsutil::write_atomic(path, &bytes).map_err(|e| CheckpointError::Io {
        path: e.path,
        op: e.op,
        source: e.source,
    })
}

/// The same safetensors bytes with the JSON header's keys in sorted order: `safetensors` takes
/// the metadata as a `HashMap`, whose order changes from one save to the next, and two saves
/// of the same state must be the same bytes (a resumed run's checkpoint compares equal to an
/// uninterrupted one's). The header is padded with spaces to a multiple of 8 bytes, as the
/// format asks; the tensor data after it is unchanged.
fn sorted_header(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| 8 + n <= bytes.len())
        .ok_or("safetensors wrote no header")?;
    // serde_json's map is ordered by key (no `preserve_order`), so this sorts every level.
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| format!("header: {e}"))?;
    let mut text = serde_json::to_string(&header).map_err(|e| format!("header: {e}"))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Reads a checkpoint written by [`save`]. `meta` comes back with [`FORMAT_KEY`] in it.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    read(path, true, false).map(|(c, _)| c)
}

/// Reads the f32/i32 tensors of any safetensors file, by name — weights exported from PyTorch
/// (`safetensors.torch.save_file(model.state_dict(), ...)`) have no flowseg format metadata.
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    read(path, false, false).map(|(c, _)| c.tensors)
}

/// Tensors by name.
pub type Tensors = BTreeMap<String, Tensor>;
/// Tensors left out of a foreign file: (name, dtype).
pub type Skipped = Vec<(String, String)>;

/// [`load_tensors`] for weights written by other programs: tensors of a dtype flowseg does not
/// hold (torchvision's I64 `num_batches_tracked`, say) are left out and listed as (name,
/// dtype) instead of refusing the file; the caller decides whether one of them mattered.
pub fn load_foreign_tensors(path: &Path) -> Result<(Tensors, Skipped), CheckpointError> {
    read(path, false, true).map(|(c, skipped)| (c.tensors, skipped))
}

/// The checkpoint at `path`; with `skip_other_dtypes`, tensors that are neither F32 nor I32 are
/// left out and returned beside it, else they are an error.
fn read(
    path: &Path,
    require_format: bool,
    skip_other_dtypes: bool,
) -> Result<(Checkpoint, Skipped), CheckpointError> {
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => CheckpointError::NotFound {
            path: path.to_path_buf(),
        },
        _ => CheckpointError::Io {
            path: path.to_path_buf(),
            op: "read".to_string(),
            source,
        },
    })?;
    let malformed = |detail: String| CheckpointError::Format {
        path: path.to_path_buf(),
        detail,
    };
    // `read_metadata` checks that the offsets tile the data exactly and reach the end of the
    // file, so a truncated file fails here rather than as a short tensor later.
    let (header_len, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| malformed(e.to_string()))?;
    let data = &bytes[8 + header_len..];

    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    match meta.get(FORMAT_KEY) {
        None if !require_format => {}
        None => {
            return Err(CheckpointError::MissingVersion {
                path: path.to_path_buf(),
            })
        }
        Some(v) if require_format && v != FORMAT_VERSION => {
            return Err(CheckpointError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: v.clone(),
            })
        }
        Some(_) => {}
    }

    // Sorted, so the first unsupported dtype reported does not depend on hash order.
    let infos: BTreeMap<String, &TensorInfo> = header.tensors().into_iter().collect();
    let mut tensors = BTreeMap::new();
    let mut skipped = Vec::new();
    for (name, info) in infos {
        let raw = data
            .get(info.data_offsets.0..info.data_offsets.1)
            .ok_or_else(|| malformed(format!("tensor `{name}` lies outside the file")))?;
        let words = raw.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        let tensor = match info.dtype {
            Dtype::F32 => Tensor::from_f32(&info.shape, words.map(f32::from_le_bytes).collect()),
            Dtype::I32 => Tensor::from_i32(&info.shape, words.map(i32::from_le_bytes).collect()),
            other if skip_other_dtypes => {
                skipped.push((name, other.to_string()));
                continue;
            }
            other => {
                return Err(CheckpointError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: other.to_string(),
                })
            }
        }
        .ok_or_else(|| malformed(format!("tensor `{name}`: data does not match its shape")))?;
        tensors.insert(name, tensor);
    }
    Ok((Checkpoint { tensors, meta }, skipped))
}

/// Copies the checkpoint's tensors into `into`, by name, for the names starting with `prefix`
/// on both sides (`""`: all of them; names are compared whole, the prefix is not stripped).
/// Entries of `into` outside the prefix are neither read nor changed.
///
/// All or nothing: unless the two sets of names are equal and every spec (dtype and shape)
/// agrees, it returns [`CheckpointError::Mismatch`] listing every missing, unexpected and
/// mismatched name, and `into` is unchanged.
pub fn restore(
    into: &mut BTreeMap<String, Tensor>,
    from: &Checkpoint,
    prefix: &str,
) -> Result<(), CheckpointError> {
    let mut missing = Vec::new();
    let mut shape = Vec::new();
    for (name, target) in into.iter().filter(|(k, _)| k.starts_with(prefix)) {
        match from.tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.spec() != target.spec() => {
                shape.push((name.clone(), target.spec().clone(), t.spec().clone()))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = from
        .tensors
        .keys()
        .filter(|k| k.starts_with(prefix) && !into.contains_key(*k))
        .cloned()
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && shape.is_empty()) {
        return Err(CheckpointError::Mismatch {
            prefix: prefix.to_string(),
            missing,
            unexpected,
            shape,
        });
    }
    for (name, target) in into.iter_mut().filter(|(k, _)| k.starts_with(prefix)) {
        if let Some(t) = from.tensors.get(name) {
            target.clone_from(t);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "student.conv.weight".to_string(),
            Tensor::from_f32(&[2, 3], vec![1.5, -2.0, 0.0, -0.0, f32::MAX, 1e-30]).unwrap(),
        );
        tensors.insert(
            "student.bn.num_batches".to_string(),
            Tensor::from_i32(&[2], vec![i32::MIN, 7]).unwrap(),
        );
        tensors.insert(
            "loss_scale".to_string(),
            Tensor::from_f32(&[], vec![0.25]).unwrap(),
        );
        tensors.insert(
            "empty_f32".to_string(),
            Tensor::from_f32(&[0, 3], Vec::new()).unwrap(),
        );
        tensors.insert(
            "empty_i32".to_string(),
            Tensor::from_i32(&[4, 0], Vec::new()).unwrap(),
        );
        tensors.insert(
            "optim/student/student.conv.weight/m".to_string(),
            Tensor::from_f32(&[2, 3], vec![0.1; 6]).unwrap(),
        );
        let mut meta = BTreeMap::new();
        meta.insert("iteration".to_string(), "1200".to_string());
        meta.insert("seed".to_string(), "42".to_string());
        meta.insert("graph".to_string(), "unimatch — voc".to_string());
        Checkpoint { tensors, meta }
    }

    #[test]
    fn two_saves_of_one_checkpoint_are_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
        );
        let mut ckpt = sample();
        for i in 0..20 {
            ckpt.meta.insert(format!("key{i}"), format!("value{i}"));
        }
        save(&a, &ckpt).unwrap();
        save(&b, &ckpt).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let back = load(&b).unwrap();
        assert_eq!(back.tensors, ckpt.tensors);
        assert_eq!(back.meta["key7"], "value7");
    }

    #[test]
    fn round_trip_keeps_tensors_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let ckpt = sample();
        save(&path, &ckpt).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.tensors, ckpt.tensors);
        // Bit-exact, -0.0 included (PartialEq on f32 would accept +0.0).
        let w = back.tensors["student.conv.weight"].f32().unwrap();
        assert_eq!(w[3].to_bits(), (-0.0f32).to_bits());
        assert_eq!(back.tensors["loss_scale"].spec(), &TensorSpec::scalar());
        assert_eq!(back.tensors["empty_i32"].spec(), &TensorSpec::i32(&[4, 0]));
        let mut expected = ckpt.meta.clone();
        expected.insert(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string());
        assert_eq!(back.meta, expected);
        // Loading and saving again changes nothing (the returned `format` is accepted).
        save(&path, &back).unwrap();
        assert_eq!(load(&path).unwrap(), back);
        // An empty checkpoint is a valid one.
        save(&path, &Checkpoint::default()).unwrap();
        assert!(load(&path).unwrap().tensors.is_empty());
    }

    #[test]
    fn readable_by_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("interop.safetensors");
        save(&path, &sample()).unwrap();
        let bytes = fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), sample().tensors.len());
        let w = st.tensor("student.conv.weight").unwrap();
        assert_eq!(w.dtype(), Dtype::F32);
        assert_eq!(w.shape(), &[2, 3]);
        assert_eq!(&w.data()[..4], &1.5f32.to_le_bytes());
        let n = st.tensor("student.bn.num_batches").unwrap();
        assert_eq!(n.dtype(), Dtype::I32);
        assert_eq!(&n.data()[..4], &i32::MIN.to_le_bytes());
        let s = st.tensor("loss_scale").unwrap();
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_eq!(s.data(), &0.25f32.to_le_bytes());
        assert_eq!(st.tensor("empty_f32").unwrap().shape(), &[0, 3]);
        // The header PyTorch's loader parses: 8-byte length, JSON, data 8-byte aligned.
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().as_ref().unwrap();
        assert_eq!(meta[FORMAT_KEY], FORMAT_VERSION);
        assert_eq!(meta["iteration"], "1200");
    }

    #[test]
    fn interrupted_write_leaves_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let old = sample();
        save(&path, &old).unwrap();
        // A save that died mid-write: garbage in its temporary file, the final name untouched.
        let tmp = dir.path().join(".last.safetensors.dead01.tmp");
        fs::write(&tmp, b"\x40\x00\x00\x00\x00\x00\x00\x00{\"student.conv.w").unwrap();
        assert_eq!(load(&path).unwrap().tensors, old.tensors);
        // The next save writes its own temporary and renames it into place; the dead one's
        // leftover is not read and not touched.
        let mut new = sample();
        new.meta.insert("iteration".to_string(), "1300".to_string());
        new.tensors.remove("empty_f32");
        save(&path, &new).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.tensors, new.tensors);
        assert_eq!(back.meta["iteration"], "1300");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, [".last.safetensors.dead01.tmp", "last.safetensors"]);
    }

    #[test]
    fn failed_save_keeps_the_target_and_removes_the_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A directory under the final name: every step succeeds but the rename.
        let path = dir.path().join("ckpt.safetensors");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"x").unwrap();
        let e = save(&path, &sample()).unwrap_err();
        assert!(matches!(e, CheckpointError::Io { .. }), "{e}");
        assert!(e.to_string().contains("rename a temporary file to"), "{e}");
        assert!(path.join("keep").exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["ckpt.safetensors"],
            "the temporary file was left behind"
        );
    }

    #[test]
    fn truncated_or_foreign_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.safetensors");
        save(&path, &sample()).unwrap();
        let full = fs::read(&path).unwrap();
        let shown = path.display().to_string();
        // Cut in the data, in the header, and in the 8-byte length.
        for keep in [full.len() - 3, 20, 5, 0] {
            fs::write(&path, &full[..keep]).unwrap();
            let e = load(&path).unwrap_err();
            assert!(matches!(e, CheckpointError::Format { .. }), "{keep}: {e}");
            let msg = e.to_string();
            assert!(msg.starts_with(&shown), "{msg}");
            assert!(
                msg.contains("not a safetensors file, or truncated"),
                "{msg}"
            );
        }
        fs::write(&path, b"PK\x03\x04 a zip file, as torch.save writes").unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, CheckpointError::Format { .. }), "{e}");

        let e = load(&dir.path().join("absent.safetensors")).unwrap_err();
        assert!(matches!(e, CheckpointError::NotFound { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("absent.safetensors: no such checkpoint"),
            "{e}"
        );
    }

    #[test]
    fn foreign_dtypes_and_versions_are_refused() {
        use safetensors::tensor::TensorView;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("foreign.safetensors");
        let f64_bytes = 1.0f64.to_le_bytes();
        let f32_bytes = 1.0f32.to_le_bytes();
        let version = |v: &str| Some(HashMap::from([(FORMAT_KEY.to_string(), v.to_string())]));
        let views = || {
            vec![
                (
                    "a",
                    TensorView::new(Dtype::F32, vec![1], &f32_bytes).unwrap(),
                ),
                (
                    "b.double",
                    TensorView::new(Dtype::F64, vec![1], &f64_bytes).unwrap(),
                ),
            ]
        };

        fs::write(
            &path,
            safetensors::serialize(views(), version(FORMAT_VERSION)).unwrap(),
        )
        .unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, CheckpointError::UnsupportedDtype { .. }), "{e}");
        assert!(
            e.to_string().contains("tensor `b.double` has dtype F64"),
            "{e}"
        );

        // A plain safetensors file (e.g. exported weights) carries no format version.
        fs::write(&path, safetensors::serialize(views(), None).unwrap()).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, CheckpointError::MissingVersion { .. }), "{e}");
        assert!(e.to_string().contains("missing format version"), "{e}");

        fs::write(
            &path,
            safetensors::serialize(views(), version("flowseg-ckpt-9")).unwrap(),
        )
        .unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("`flowseg-ckpt-9`"), "{e}");
    }

    #[test]
    fn save_refuses_what_the_format_cannot_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let mut ckpt = sample();
        ckpt.meta
            .insert(FORMAT_KEY.to_string(), "other".to_string());
        let e = save(&path, &ckpt).unwrap_err();
        assert!(matches!(e, CheckpointError::Invalid { .. }), "{e}");
        let mut ckpt = sample();
        ckpt.tensors.insert(
            RESERVED_NAME.to_string(),
            Tensor::zeros(&TensorSpec::scalar()),
        );
        let e = save(&path, &ckpt).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn restore_reports_every_mismatch_and_changes_nothing() {
        let t = |shape: &[usize], v: f32| {
            Tensor::from_f32(shape, vec![v; shape.iter().product()]).unwrap()
        };
        let mut into = BTreeMap::new();
        into.insert("m.ok".to_string(), t(&[2], 0.0));
        into.insert("m.wide".to_string(), t(&[3], 0.0));
        into.insert(
            "m.labels".to_string(),
            Tensor::zeros(&TensorSpec::i32(&[2])),
        );
        into.insert("m.gone1".to_string(), t(&[1], 0.0));
        into.insert("m.gone2".to_string(), t(&[1], 0.0));
        into.insert("other.x".to_string(), t(&[1], 0.0));
        let mut from = Checkpoint::default();
        from.tensors.insert("m.ok".to_string(), t(&[2], 1.0));
        from.tensors.insert("m.wide".to_string(), t(&[4], 1.0));
        from.tensors.insert("m.labels".to_string(), t(&[2], 1.0));
        from.tensors.insert("m.extra1".to_string(), t(&[1], 1.0));
        from.tensors.insert("m.extra2".to_string(), t(&[1], 1.0));
        from.tensors.insert("z.elsewhere".to_string(), t(&[1], 1.0));
        let before = into.clone();

        let e = restore(&mut into, &from, "m.").unwrap_err();
        assert_eq!(into, before);
        let CheckpointError::Mismatch {
            missing,
            unexpected,
            shape,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(missing, &["m.gone1", "m.gone2"]);
        assert_eq!(unexpected, &["m.extra1", "m.extra2"]);
        assert_eq!(
            shape,
            &[
                (
                    "m.labels".to_string(),
                    TensorSpec::i32(&[2]),
                    TensorSpec::f32(&[2])
                ),
                (
                    "m.wide".to_string(),
                    TensorSpec::f32(&[3]),
                    TensorSpec::f32(&[4])
                ),
            ]
        );
        let msg = e.to_string();
        for needle in [
            "under `m.`",
            "2 missing, 2 unexpected, 2 with another spec",
            "missing from the checkpoint: `m.gone1`, `m.gone2`",
            "unexpected in the checkpoint: `m.extra1`, `m.extra2`",
            "`m.labels`: the state has i32[2], the checkpoint f32[2]",
            "`m.wide`: the state has f32[3], the checkpoint f32[4]",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
        }

        // Once the names and specs agree, the prefix is restored and the rest is left alone.
        for name in ["m.wide", "m.gone1", "m.gone2"] {
            from.tensors
                .insert(name.to_string(), t(&into[name].spec().shape, 2.0));
        }
        from.tensors.insert(
            "m.labels".to_string(),
            Tensor::from_i32(&[2], vec![3, 4]).unwrap(),
        );
        from.tensors.remove("m.extra1");
        from.tensors.remove("m.extra2");
        restore(&mut into, &from, "m.").unwrap();
        assert_eq!(into["m.ok"].f32().unwrap(), &[1.0, 1.0]);
        assert_eq!(into["m.wide"].f32().unwrap(), &[2.0; 3]);
        assert_eq!(into["m.labels"].i32().unwrap(), &[3, 4]);
        assert_eq!(into["other.x"], before["other.x"]);
        // With no prefix, `z.elsewhere` is unexpected and `other.x` missing.
        let e = restore(&mut into, &from, "").unwrap_err();
        assert!(
            e.to_string().contains("`other.x`") && e.to_string().contains("`z.elsewhere`"),
            "{e}"
        );
    }
}
