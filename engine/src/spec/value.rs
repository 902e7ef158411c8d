//! The YAML tree every graph file is read into first: plain values, each node carrying the
//! line:column it came from. Everything after parsing (the `--set` overrides, the graph schema,
//! each op's typed params) works on this tree, so every later error can point into the file.
//!
//! Not here: the schema of a graph (`spec::graph`), turning the tree into typed structs
//! (`spec::de`).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A 1-based line and column in the source file; `line == 0` means "not from the file": with
/// `col == 0` nowhere in particular (a default), with `col == n ≥ 1` the n-th `--set` override
/// ([`Loc::set`]), so an error in an override's value can name the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Loc {
    /// Line, from 1; 0 when unknown.
    pub line: u32,
    /// Column, from 1; 0 when unknown.
    pub col: u32,
}

impl Loc {
    /// A location that is not in the file.
    pub const NONE: Loc = Loc { line: 0, col: 0 };

    /// True when this points into the file.
    pub fn is_known(&self) -> bool {
        self.line > 0
    }

    /// The place of the `index`-th (0-based) `--set` override.
    pub fn set(index: usize) -> Loc {
        Loc {
            line: 0,
            col: u32::try_from(index + 1).unwrap_or(u32::MAX),
        }
    }

    /// Which `--set` (0-based) this points at, if it points at one.
    pub fn set_index(&self) -> Option<usize> {
        (self.line == 0 && self.col > 0).then(|| self.col as usize - 1)
    }

    /// True when this points somewhere: into the file or at a `--set`.
    pub fn is_located(&self) -> bool {
        self.line > 0 || self.col > 0
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_known() {
            write!(f, "{}:{}", self.line, self.col)
        } else if let Some(i) = self.set_index() {
            write!(f, "--set #{}", i + 1)
        } else {
            f.write_str("?:?")
        }
    }
}

/// A YAML value whose children carry their locations.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order (keys are scalars, kept as nodes for their locations).
    Map(Vec<(Node, Node)>),
}

/// A value and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts in the file.
    pub loc: Loc,
}

impl Node {
    /// A node that is not from the file.
    pub fn detached(value: Value) -> Self {
        Node {
            value,
            loc: Loc::NONE,
        }
    }

    /// The value under `key` if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the value's kind, for messages ("a mapping", "a string", ...).
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Newtype name a [`Node`] asks for: the located-tree deserializer (`spec::de`) answers it with
/// (line, column, value); serde-saphyr treats it as a plain newtype, and the node then reads its
/// location through `serde_saphyr::Spanned`.
pub(crate) const NODE_MARKER: &str = "__flowseg_node";

pub(crate) fn loc_of(l: &serde_saphyr::Location) -> Loc {
    Loc {
        line: u32::try_from(l.line()).unwrap_or(u32::MAX),
        col: u32::try_from(l.column()).unwrap_or(u32::MAX),
    }
}

impl Node {
    /// The tree as block-style YAML that parses back to the same values (locations aside): the
    /// "resolved graph" a run writes next to its results, overrides applied.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        emit(&self.value, 0, &mut out);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }

    /// The same tree with every location cleared (to compare values).
    pub fn without_locations(&self) -> Node {
        let value = match &self.value {
            Value::Seq(items) => Value::Seq(items.iter().map(Node::without_locations).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.without_locations(), v.without_locations()))
                    .collect(),
            ),
            other => other.clone(),
        };
        Node {
            value,
            loc: Loc::NONE,
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => "~".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        // `{:?}` keeps a decimal point (1.0, not 1), so the value reads back as a float.
        Value::Float(f) if f.is_finite() => format!("{f:?}"),
        Value::Float(f) if f.is_nan() => ".nan".to_owned(),
        Value::Float(f) => (if *f > 0.0 { ".inf" } else { "-.inf" }).to_owned(),
        Value::Str(s) => format!("{s:?}"),
        Value::Seq(items) if items.is_empty() => "[]".to_owned(),
        Value::Map(entries) if entries.is_empty() => "{}".to_owned(),
        _ => return None,
    })
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Map(entries) if !entries.is_empty() => {
            for (k, val) in entries {
                let key = scalar(&k.value).unwrap_or_else(|| "~".to_owned());
                match scalar(&val.value) {
                    Some(s) => out.push_str(&format!("{pad}{key}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        emit(&val.value, indent + 2, out);
                    }
                }
            }
        }
        Value::Seq(items) if !items.is_empty() => {
            for item in items {
                match scalar(&item.value) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        // The first line of the nested block goes after the dash.
                        let mut inner = String::new();
                        emit(&item.value, indent + 2, &mut inner);
                        let trimmed = inner.trim_start();
                        out.push_str(&format!("{pad}- {trimmed}"));
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                out.push_str(&format!("{pad}{s}\n"));
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let line: u32 = s.next_element()?.unwrap_or(0);
                let col: u32 = s.next_element()?.unwrap_or(0);
                let value = s
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing node value"))?;
                Ok(Node {
                    value,
                    loc: Loc { line, col },
                })
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                let sp = serde_saphyr::Spanned::<Value>::deserialize(d)?;
                Ok(Node {
                    value: sp.value,
                    loc: loc_of(&sp.referenced),
                })
            }
        }
        d.deserialize_newtype_struct(NODE_MARKER, V)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            out.push(n);
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out: Vec<(Node, Node)> = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            out.push((k, v));
        }
        Ok(Value::Map(out))
    }
}
