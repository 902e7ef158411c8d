//! Keys several data sources share (the batching keys of `loader.rs`, the geometry keys of
//! `files.rs`), read from the same `data:` mapping as a source's own params: [`peel`] takes the
//! shared keys out and hands everything else to the source's `Deserialize`, which keeps its own
//! unknown-key check. The source's key seed runs inside each key's own deserializer, so an
//! unknown key is still reported at its line:column, and the message lists the shared keys too.
//! Wrappers nest (`WithBatching<WithGeometry<P>>`): each peels its keys and passes the rest on.
//!
//! Not here: what the keys mean (their owners), the sources.

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess};
use serde::Deserialize;

/// A set of keys a wrapper takes out of a mapping.
pub trait SharedKeys: Default {
    /// The keys, as written.
    const KEYS: &'static [&'static str];
    /// What to call them in an unknown-key message ("a batching key").
    const WHAT: &'static str;
    /// What the keys build.
    type Built;
    /// Reads the value of `key` (one of [`SharedKeys::KEYS`]).
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
    /// Checks the values read and builds the result.
    fn build<E: de::Error>(self) -> Result<Self::Built, E>;
}

/// Splits `map` into the shared keys `K` (built) and the source's own params `P`.
pub fn peel<'de, K: SharedKeys, P: Deserialize<'de>, A: MapAccess<'de>>(
    map: A,
) -> Result<(K::Built, P), A::Error> {
    let mut filter = Filter {
        map,
        keys: K::default(),
    };
    let params = P::deserialize(de::value::MapAccessDeserializer::new(&mut filter))?;
    Ok((filter.keys.build()?, params))
}

/// A map view that consumes `K`'s keys and passes the rest on.
struct Filter<A, K> {
    map: A,
    keys: K,
}

/// A key: one of the shared ones (with the unused inner seed handed back), or the source's own.
enum Key<S, V> {
    Shared(&'static str, S),
    Own(V),
}

/// Reads a key; hands it to the source's seed unless it is one of `K`'s.
struct KeySeed<S, K>(S, std::marker::PhantomData<K>);

impl<'de, S: DeserializeSeed<'de>, K: SharedKeys> DeserializeSeed<'de> for KeySeed<S, K> {
    type Value = Key<S, S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let key = String::deserialize(d)?;
        if let Some(k) = K::KEYS.iter().find(|k| **k == key) {
            return Ok(Key::Shared(k, self.0));
        }
        let de: de::value::StringDeserializer<D::Error> = key.into_deserializer();
        self.0.deserialize(de).map(Key::Own).map_err(|e: D::Error| {
            // Name the shared keys too in "unknown field ..., expected one of ...".
            let msg = e.to_string();
            if msg.starts_with("unknown field") {
                de::Error::custom(format!("{msg}, or {}: {}", K::WHAT, K::KEYS.join(", ")))
            } else {
                e
            }
        })
    }
}

impl<'de, A: MapAccess<'de>, K: SharedKeys> MapAccess<'de> for &mut Filter<A, K> {
    type Error = A::Error;
    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let mut seed = seed;
        loop {
            match self
                .map
                .next_key_seed(KeySeed::<S, K>(seed, std::marker::PhantomData))?
            {
                None => return Ok(None),
                Some(Key::Own(v)) => return Ok(Some(v)),
                Some(Key::Shared(key, unused)) => {
                    self.keys.read(key, &mut self.map)?;
                    seed = unused;
                }
            }
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}
