//! spec: a graph file (YAML) → the located tree ([`value::Node`]) → `--set` overrides → the typed,
//! located graph spec ([`GraphSpec`]). The first stage of the engine: spec → ir → autodiff → plan
//! → exec.
//!
//! Every problem found here is a [`GraphError`] with a stable code (FS0001–FS0003, one page each
//! under docs/errors/), a line:column and, where it helps, a hint. Sections and nodes are decoded
//! one by one so a file with several mistakes reports all of them at once.
//!
//! Not here: whether an op exists or its params are right (the registry decodes `params` with the
//! op's own type, through [`de::from_node`]), references between nodes, shapes (ir).

pub mod de;
mod graph;
mod range;
mod validate;
pub(crate) use validate::is_identifier;
pub mod value;

pub use de::{from_node, DeError, Sp};
pub use graph::{
    EvalMode, EvalSpec, GraphSpec, InitSpec, LossWeight, ModelSpec, NodeSpec, OptimKind, OptimSpec,
    RampShape, RampedWeight, Schedule, Side, TrainSpec,
};
pub use value::{Loc, Node, Value};

use std::fmt;

/// A problem in a graph file or an override, found by any stage (spec, ir, plan).
#[derive(Debug, Clone, PartialEq)]
pub struct GraphError {
    /// Stable code, `FS0xxx`; docs/errors/<code>.md explains it.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// Where; `Loc::NONE` for problems outside the file (a `--set` flag).
    pub loc: Loc,
    /// The node it concerns, when it concerns one.
    pub node: Option<String>,
    /// How to fix it, when there is something specific to say.
    pub help: Option<String>,
    /// A warning (reported, not fatal unless `--strict`).
    pub warning: bool,
}

impl GraphError {
    /// An error with a code, message and location.
    pub fn new(code: &'static str, message: impl Into<String>, loc: Loc) -> Self {
        GraphError {
            code,
            message: message.into(),
            loc,
            node: None,
            help: None,
            warning: false,
        }
    }
    /// The same, about node `node`.
    pub fn in_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }
    /// The same, with a hint.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.warning { "warning" } else { "error" };
        write!(f, "{} {kind}[{}]", self.loc, self.code)?;
        if let Some(n) = &self.node {
            write!(f, " node `{n}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, " (help: {h})")?;
        }
        Ok(())
    }
}

/// FS0001: the text is not valid YAML.
pub const YAML_SYNTAX: &str = "FS0001";
/// FS0002: valid YAML that does not match the schema (unknown key, wrong type, missing field).
pub const SCHEMA: &str = "FS0002";
/// FS0003: a `--set key=value` override that cannot be applied.
pub const BAD_OVERRIDE: &str = "FS0003";
/// FS0004: the graph file cannot be read (missing, a directory, too large, not UTF-8).
pub const UNREADABLE: &str = "FS0004";
/// FS0005: a run, node or model name that cannot be used (validate.rs).
pub const BAD_NAME: &str = "FS0005";
/// FS0112: a reference to a model that names no usable model (`forward`'s `model:`, `ema_of:`,
/// an `optim:` key, an `eval.models` entry).
pub const BAD_MODEL: &str = "FS0112";

impl GraphError {
    fn schema(e: DeError) -> Self {
        GraphError::new(SCHEMA, e.message, e.loc)
    }
}

/// Graph files larger than this are refused (FS0004): a method graph is a few kilobytes, and a
/// wrong path (a dataset archive) should not be read into memory.
pub const MAX_GRAPH_BYTES: u64 = 16 << 20;

/// A graph file that cannot be read: FS0004, and the text read so far (lossily decoded, empty
/// when nothing was read) for the report's snippet.
#[derive(Debug)]
pub struct Unreadable {
    /// The FS0004 error.
    pub error: GraphError,
    /// What could be read.
    pub text: String,
}

/// Reads a graph file. On failure, FS0004: missing, a directory, unreadable, larger than
/// [`MAX_GRAPH_BYTES`], or not UTF-8 (located at the first bad byte).
pub fn read_graph_file(path: &std::path::Path) -> Result<String, Box<Unreadable>> {
    let fail = |why: String| {
        Box::new(Unreadable {
            error: GraphError::new(
                UNREADABLE,
                format!("cannot read {}: {why}", path.display()),
                Loc::NONE,
            ),
            text: String::new(),
        })
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.is_dir() {
        return Err(fail("it is a directory, not a graph file".to_owned()));
    }
    if meta.len() > MAX_GRAPH_BYTES {
        return Err(fail(format!(
            "it is {} MiB; a graph file is at most {} MiB",
            meta.len() >> 20,
            MAX_GRAPH_BYTES >> 20
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
        let before = String::from_utf8_lossy(&e.as_bytes()[..good]).into_owned();
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let loc = Loc {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(col).unwrap_or(u32::MAX),
        };
        let error = GraphError::new(
            UNREADABLE,
            format!(
                "{} is not UTF-8 text: this byte is not valid UTF-8",
                path.display()
            ),
            loc,
        )
        .help("save the file as UTF-8");
        Box::new(Unreadable { error, text: lossy })
    })
}

/// The nearest of `names` to `name` within `max` edits (Levenshtein), for "did you mean"
/// hints; every stage's suggestions go through it.
pub fn nearest<'a>(
    name: &str,
    names: impl Iterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    names
        .map(|n| (strsim::levenshtein(name, n), n))
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, n)| n)
}

/// Parses YAML text into the located tree.
pub fn parse_yaml(text: &str) -> Result<Node, GraphError> {
    serde_saphyr::from_str::<Node>(text).map_err(|e| {
        let loc = e.location().map_or(Loc::NONE, |l| Loc {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            col: u32::try_from(l.column()).unwrap_or(u32::MAX),
        });
        // serde-saphyr's message embeds a rendered snippet; the first line is the diagnosis,
        // after its own copy of the position.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("invalid YAML");
        // "error: line 14 column 54: duplicate mapping key: ..." → "duplicate mapping key: ...".
        let message = first
            .find(" column ")
            .and_then(|i| first[i..].find(": ").map(|j| &first[i + j + 2..]))
            .unwrap_or(first);
        if let Some(key) = message.strip_prefix("duplicate mapping key: ") {
            let key = key.split(',').next().unwrap_or(key).trim();
            return GraphError::new(
                YAML_SYNTAX,
                format!("key `{key}` appears twice in this mapping"),
                loc,
            )
            .help("keep one: other YAML readers would silently take the last");
        }
        if message.contains("non-finite") {
            return GraphError::new(
                SCHEMA,
                "`.nan` and `.inf` are valid YAML but not usable values: every number in a \
                 graph must be finite",
                loc,
            );
        }
        GraphError::new(YAML_SYNTAX, message.to_owned(), loc)
    })
}

/// Applies one `key.path=value` override to the tree. Path segments name mapping keys; inside a
/// sequence a segment is an index or the `name` of an element (so `nodes.sup_loss.params.weight`
/// reaches a node by name). Missing mapping keys are created. The value is parsed as YAML.
///
/// `index` is the override's place among the `--set`s: every node it writes, and every error
/// about it, is located there ([`Loc::set`]), so later stages can blame the flag.
pub fn apply_override(root: &mut Node, assignment: &str, index: usize) -> Result<(), GraphError> {
    let at = Loc::set(index);
    let err = |message: String, help: Option<&str>| GraphError {
        help: help.map(str::to_owned),
        ..GraphError::new(BAD_OVERRIDE, message, at)
    };
    let (path, raw) = assignment.split_once('=').ok_or_else(|| {
        err(
            format!("`{assignment}` has no `=`"),
            Some("write --set a.b.c=value"),
        )
    })?;
    let segments: Vec<&str> = path.trim().split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(err(format!("`{path}` has an empty path segment"), None));
    }
    let mut value = parse_yaml(raw.trim()).map_err(|e| {
        err(
            format!("the value of `{path}` is not valid YAML: {}", e.message),
            None,
        )
    })?;
    relocate(&mut value, at);
    let mut cur = root;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let here = segments[..=i].join(".");
        if !matches!(cur.value, Value::Map(_) | Value::Seq(_)) {
            return Err(err(
                format!("`{here}` goes inside {}, which has no keys", cur.kind()),
                None,
            ));
        }
        cur = match &mut cur.value {
            Value::Map(entries) => {
                let pos = entries.iter().position(|(k, _)| k.as_str() == Some(seg));
                let pos = match pos {
                    Some(p) => p,
                    None => {
                        let fresh = if last {
                            Value::Null
                        } else {
                            Value::Map(Vec::new())
                        };
                        entries.push((
                            Node {
                                value: Value::Str((*seg).to_owned()),
                                loc: at,
                            },
                            Node {
                                value: fresh,
                                loc: at,
                            },
                        ));
                        entries.len() - 1
                    }
                };
                &mut entries[pos].1
            }
            Value::Seq(items) => {
                let pos = match seg.parse::<usize>() {
                    Ok(ix) if ix < items.len() => Some(ix),
                    _ => items
                        .iter()
                        .position(|n| n.get("name").and_then(Node::as_str) == Some(seg)),
                };
                let Some(pos) = pos else {
                    return Err(err(
                        format!("`{here}`: the sequence has no element with index or name `{seg}`"),
                        None,
                    ));
                };
                &mut items[pos]
            }
            _ => unreachable!("checked to be a mapping or a sequence above"),
        };
    }
    *cur = value;
    Ok(())
}

/// Gives `n` and everything under it the location `at`.
fn relocate(n: &mut Node, at: Loc) {
    n.loc = at;
    match &mut n.value {
        Value::Seq(items) => items.iter_mut().for_each(|c| relocate(c, at)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            relocate(k, at);
            relocate(v, at);
        }),
        _ => {}
    }
}

/// Parses a graph file: YAML → tree → overrides → [`GraphSpec`]. All schema problems are
/// returned together.
pub fn parse_graph(text: &str, overrides: &[String]) -> Result<(GraphSpec, Node), Vec<GraphError>> {
    let mut root = parse_yaml(text).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    for (i, o) in overrides.iter().enumerate() {
        if let Err(e) = apply_override(&mut root, o, i) {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let spec = graph::decode(&root)
        .map_err(|errs| errs.into_iter().map(GraphError::schema).collect::<Vec<_>>())?;
    let errors = validate::check(&spec);
    if errors.is_empty() {
        Ok((spec, root))
    } else {
        Err(errors)
    }
}

/// After [`parse_graph`] failed on the schema: what can still be decoded of the file with its
/// overrides, to report the mistakes of later stages beside the schema's (see
/// `graph::decode_for_report`). `None` when too little decodes. Never for a run.
/// Models that leave `classes` out get `classes` (a stand-in for the data's count when the
/// data cannot be opened).
pub fn parse_graph_for_report(
    text: &str,
    overrides: &[String],
    classes: usize,
) -> Option<GraphSpec> {
    let mut root = parse_yaml(text).ok()?;
    for (i, o) in overrides.iter().enumerate() {
        apply_override(&mut root, o, i).ok()?;
    }
    // Fills in `classes` in place (its own strict decode may fail: the schema has mistakes).
    let _ = default_model_classes(&mut root, classes);
    graph::decode_for_report(&root)
}

/// Gives every model with an `arch` whose params lack `classes` the data source's class count
/// (`classes` is then written in the resolved graph a run keeps), and decodes the tree again.
/// Graphs can so leave the count to the data: the same method graph runs on `synthetic` (6
/// classes) and on m2nist (11). A count written in the file is kept, and a mismatch with the
/// data is the evaluator's error to report.
pub fn default_model_classes(
    root: &mut Node,
    classes: usize,
) -> Result<GraphSpec, Vec<GraphError>> {
    let count = Node::detached(Value::Int(i64::try_from(classes).unwrap_or(i64::MAX)));
    let key = || Node::detached(Value::Str("classes".to_owned()));
    if let Some(Node {
        value: Value::Map(models),
        ..
    }) = root_entry(root, "models")
    {
        for (_, model) in models.iter_mut() {
            if model.get("arch").is_none() {
                continue;
            }
            let Value::Map(fields) = &mut model.value else {
                continue;
            };
            match fields
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some("params"))
            {
                Some((_, params)) => {
                    if let Value::Map(entries) = &mut params.value {
                        if !entries.iter().any(|(k, _)| k.as_str() == Some("classes")) {
                            entries.push((key(), count.clone()));
                        }
                    } else if params.value == Value::Null {
                        params.value = Value::Map(vec![(key(), count.clone())]);
                    }
                }
                None => fields.push((
                    Node::detached(Value::Str("params".to_owned())),
                    Node::detached(Value::Map(vec![(key(), count.clone())])),
                )),
            }
        }
    }
    graph::decode(root).map_err(|errs| errs.into_iter().map(GraphError::schema).collect())
}

/// The value under a top-level key of the graph tree, mutably.
fn root_entry<'a>(root: &'a mut Node, key: &str) -> Option<&'a mut Node> {
    match &mut root.value {
        Value::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}
