//! Typed structs from the located YAML tree: a serde `Deserializer` over [`Node`] whose errors
//! carry the line:column of the innermost node they arose in (an unknown key points at the key, a
//! wrong type at the value, a missing field at the mapping). [`Sp<T>`] keeps a value's location
//! for the semantic checks that come after deserialisation (unknown op, dangling input, ...).
//!
//! This is what lets an op's own `Params` struct (`deny_unknown_fields`) be decoded long after
//! the file was parsed and still report `graph.yaml:12:7: unknown field `decy``.

use super::value::{Loc, Node, Value};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;
use std::fmt;

/// A deserialisation error and where in the file it is.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// What is wrong (serde's wording: "unknown field `x`, expected one of ...").
    pub message: String,
    /// Where; `Loc::NONE` when it arose in a value that is not from the file (an override).
    pub loc: Loc,
    /// Set by the innermost node the error passed through, so enclosing nodes do not move it.
    pinned: bool,
}

impl DeError {
    /// An error at a place.
    pub fn new(message: impl Into<String>, loc: Loc) -> Self {
        DeError {
            message: message.into(),
            loc,
            pinned: true,
        }
    }

    fn at(mut self, loc: Loc) -> Self {
        if !self.pinned {
            self.loc = loc;
            self.pinned = true;
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            loc: Loc::NONE,
            pinned: false,
        }
    }
}

/// Decodes `T` from a located node.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe(node))
}

/// A value with the location it was read from. Deserialises from any serde format; only the
/// [`Node`] deserializer fills in the location. Equality and order look at the value only.
#[derive(Debug, Clone)]
pub struct Sp<T> {
    /// The value.
    pub value: T,
    /// Where it was in the file.
    pub loc: Loc,
}

impl<T> Sp<T> {
    /// A value with no location.
    pub fn detached(value: T) -> Self {
        Sp {
            value,
            loc: Loc::NONE,
        }
    }
}

// Ordered and compared by value only, so `Sp<String>` can key a map as the plain string would.
impl<T: PartialEq> PartialEq for Sp<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Sp<T> {}
impl<T: PartialOrd> PartialOrd for Sp<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(&other.value)
    }
}
impl<T: Ord> Ord for Sp<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

impl<T> std::ops::Deref for Sp<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

const SP_MARKER: &str = "__flowseg_located";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sp<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Sp<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            // The Node deserializer answers the marker with (line, col, value).
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Sp<T>, A::Error> {
                let line: u32 = s.next_element()?.unwrap_or(0);
                let col: u32 = s.next_element()?.unwrap_or(0);
                let value = s
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing located value"))?;
                Ok(Sp {
                    value,
                    loc: Loc { line, col },
                })
            }
            // serde-saphyr (reading a file directly) knows where it is; any other deserializer
            // yields an unknown location.
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Sp<T>, D::Error> {
                let sp = serde_saphyr::Spanned::<T>::deserialize(d)?;
                let loc = super::value::loc_of(&sp.referenced);
                Ok(Sp {
                    value: sp.value,
                    loc,
                })
            }
        }
        d.deserialize_newtype_struct(SP_MARKER, V(std::marker::PhantomData))
    }
}

/// The deserializer over one node.
#[derive(Clone, Copy)]
struct NodeDe<'a>(&'a Node);

impl<'a> NodeDe<'a> {
    fn invalid(&self, exp: &dyn de::Expected) -> DeError {
        let unexp = match &self.0.value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Int(i) => de::Unexpected::Signed(*i),
            Value::Float(f) => de::Unexpected::Float(*f),
            Value::Str(s) => de::Unexpected::Str(s),
            Value::Seq(_) => de::Unexpected::Seq,
            Value::Map(_) => de::Unexpected::Map,
        };
        <DeError as de::Error>::invalid_type(unexp, exp).at(self.0.loc)
    }
}

macro_rules! forward_to_any {
    ($($m:ident)*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            self.deserialize_any(v)
        }
    )*};
}

impl<'de, 'a> Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let loc = self.0.loc;
        let r = match &self.0.value {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(s) => v.visit_str(s),
            Value::Seq(items) => v.visit_seq(SeqDe {
                items: items.iter(),
            }),
            Value::Map(entries) => v.visit_map(MapDe {
                entries: entries.iter(),
                value: None,
            }),
        };
        r.map_err(|e| e.at(loc))
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        if name == SP_MARKER || name == super::value::NODE_MARKER {
            return v.visit_seq(LocatedDe {
                node: self.0,
                step: 0,
            });
        }
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let loc = self.0.loc;
        match &self.0.value {
            Value::Str(s) => v
                .visit_enum(s.as_str().into_deserializer())
                .map_err(|e: DeError| e.at(loc)),
            Value::Map(entries) if entries.len() == 1 => v
                .visit_enum(EnumDe {
                    key: &entries[0].0,
                    value: &entries[0].1,
                })
                .map_err(|e| e.at(loc)),
            _ => Err(self.invalid(&"a variant name or a one-key mapping")),
        }
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Map(_) => self.deserialize_any(v),
            _ => Err(self.invalid(&"a mapping")),
        }
    }
}

struct SeqDe<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de, 'a> SeqAccess<'de> for SeqDe<'a> {
    type Error = DeError;
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DeError> {
        match self.items.next() {
            Some(n) => seed
                .deserialize(NodeDe(n))
                .map(Some)
                .map_err(|e| e.at(n.loc)),
            None => Ok(None),
        }
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de, 'a> MapAccess<'de> for MapDe<'a> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(NodeDe(k))
                    .map(Some)
                    .map_err(|e| e.at(k.loc))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        let v = self
            .value
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("value requested before key"))?;
        seed.deserialize(NodeDe(v)).map_err(|e| e.at(v.loc))
    }
}

/// Answers the `Sp` and `Node` markers: line, column, then the value itself.
struct LocatedDe<'a> {
    node: &'a Node,
    step: u8,
}

impl<'de, 'a> SeqAccess<'de> for LocatedDe<'a> {
    type Error = DeError;
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DeError> {
        self.step += 1;
        match self.step {
            1 => seed
                .deserialize(self.node.loc.line.into_deserializer())
                .map(Some),
            2 => seed
                .deserialize(self.node.loc.col.into_deserializer())
                .map(Some),
            3 => seed.deserialize(NodeDe(self.node)).map(Some),
            _ => Ok(None),
        }
    }
}

struct EnumDe<'a> {
    key: &'a Node,
    value: &'a Node,
}

impl<'de, 'a> EnumAccess<'de> for EnumDe<'a> {
    type Error = DeError;
    type Variant = NodeDe<'a>;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), DeError> {
        let v = seed
            .deserialize(NodeDe(self.key))
            .map_err(|e| e.at(self.key.loc))?;
        Ok((v, NodeDe(self.value)))
    }
}

impl<'de, 'a> VariantAccess<'de> for NodeDe<'a> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        match self.0.value {
            Value::Null => Ok(()),
            _ => Err(self.invalid(&"no value for a unit variant")),
        }
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, DeError> {
        let loc = self.0.loc;
        seed.deserialize(self).map_err(|e| e.at(loc))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_struct("", fields, v)
    }
}
