//! Semi-supervised splits and sampling orders, shared by every data source: which training items
//! keep their labels (`labeled: 1/16`, `labeled: 100`, `labeled: all`), deterministic by a split
//! seed, and the order items are drawn in (a fresh Philox permutation per epoch, so batch `i` is
//! a pure function of the seed and `i`, and a resumed run sees the same batches).
//!
//! Not here: reading files (`files.rs`), batch assembly and threads (`loader.rs`).

use flowseg_engine::data::DataError;
use flowseg_engine::kernels::philox::Philox;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::fmt;

/// A Philox stream tag from four ASCII letters, in the high half of the 64-bit stream id (the
/// low half counts epochs or draws).
pub const fn tag(s: &[u8; 4]) -> u64 {
    ((s[0] as u64) << 56) | ((s[1] as u64) << 48) | ((s[2] as u64) << 40) | ((s[3] as u64) << 32)
}

/// Stream of the split permutation (keyed by the split seed, not the training seed, so runs with
/// different seeds share one labeled set).
pub const SPLIT_STREAM: u64 = tag(b"SPLT");

/// How many training items keep their labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Labeled {
    /// Every item (a fully supervised run; there is no unlabeled pool).
    #[default]
    All,
    /// `num/den` of the items, rounded to the nearest whole item, at least one.
    Fraction {
        /// Numerator.
        num: u32,
        /// Denominator.
        den: u32,
    },
    /// Exactly this many items.
    Count(usize),
}

impl fmt::Display for Labeled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Labeled::All => write!(f, "all"),
            Labeled::Fraction { num, den } => write!(f, "{num}/{den}"),
            Labeled::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Labeled {
    /// Parses `all`, `1/16` or a count `100`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Labeled::All);
        }
        let bad = || {
            format!("`{s}` is not a labeled share: write `all`, a fraction like `1/16`, or a count like `100`")
        };
        if let Some((a, b)) = s.split_once('/') {
            let num: u32 = a.trim().parse().map_err(|_| bad())?;
            let den: u32 = b.trim().parse().map_err(|_| bad())?;
            if num == 0 || den == 0 || num > den {
                return Err(format!(
                    "labeled fraction `{s}` must lie in (0, 1], e.g. `1/16`"
                ));
            }
            return Ok(if num == den {
                Labeled::All
            } else {
                Labeled::Fraction { num, den }
            });
        }
        match s.parse::<usize>() {
            Ok(0) => Err("a labeled count must be at least 1".to_owned()),
            Ok(n) => Ok(Labeled::Count(n)),
            Err(_) => Err(bad()),
        }
    }

    /// Number of labeled items among `n`.
    pub fn count(&self, n: usize) -> Result<usize, String> {
        match *self {
            Labeled::All => Ok(n),
            Labeled::Fraction { num, den } => {
                let k = ((n as u64 * u64::from(num) * 2 + u64::from(den)) / (2 * u64::from(den)))
                    as usize;
                Ok(k.clamp(1, n.max(1)))
            }
            Labeled::Count(k) if k <= n => Ok(k),
            Labeled::Count(k) => Err(format!(
                "labeled: {k} asks for more items than the {n} training items there are"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Labeled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Labeled;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all`, a fraction like `1/16`, or a count like `100`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Labeled, E> {
                Labeled::parse(s).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Labeled, E> {
                Labeled::parse(&n.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Labeled, E> {
                if n < 1 {
                    return Err(E::custom("a labeled count must be at least 1"));
                }
                self.visit_u64(n as u64)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Labeled, E> {
                Err(E::custom(
                    "write a labeled fraction as `1/16` (exact), not a decimal",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// Training item indices, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Items whose labels are used, ascending.
    pub labeled: Vec<usize>,
    /// The rest, ascending.
    pub unlabeled: Vec<usize>,
}

/// Splits items `0..n`: the first `labeled.count(n)` of a Philox permutation keyed by
/// `split_seed` keep their labels. A smaller share is a subset of a larger one with the same seed
/// (1/16 ⊂ 1/8 ⊂ 1/4), as in the published splits.
pub fn split(n: usize, labeled: Labeled, split_seed: u64) -> Result<Split, DataError> {
    let k = labeled.count(n).map_err(DataError)?;
    let order = permutation(n, &Philox::new(split_seed, SPLIT_STREAM));
    let mut l = order[..k].to_vec();
    let mut u = order[k..].to_vec();
    l.sort_unstable();
    u.sort_unstable();
    Ok(Split {
        labeled: l,
        unlabeled: u,
    })
}

/// A uniform random permutation of `0..n` (Fisher–Yates; Lemire's multiply-shift maps each
/// 32-bit word to a bounded index with negligible bias at dataset sizes).
pub fn permutation(n: usize, rng: &Philox) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((u64::from(rng.u32_at(i as u64)) * (i as u64 + 1)) >> 32) as usize;
        p.swap(i, j);
    }
    p
}

/// Draws from a pool of items epoch by epoch: draw `k` is item `order(k / len)[k % len]`, where
/// every epoch has its own permutation. Keeps the current epoch's order cached.
#[derive(Debug, Clone)]
pub struct Sampler {
    items: Vec<usize>,
    seed: u64,
    stream: u64,
    cached: Option<(u64, Vec<usize>)>,
}

impl Sampler {
    /// Draws from `items` in orders keyed by (`seed`, `stream` + epoch).
    pub fn new(items: Vec<usize>, seed: u64, stream: u64) -> Self {
        Sampler {
            items,
            seed,
            stream,
            cached: None,
        }
    }

    /// Pool size.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The item of draw `k` (`None` from an empty pool).
    pub fn draw(&mut self, k: u64) -> Option<usize> {
        let n = self.items.len() as u64;
        if n == 0 {
            return None;
        }
        let epoch = k / n;
        if self.cached.as_ref().map(|c| c.0) != Some(epoch) {
            let order = permutation(
                self.items.len(),
                &Philox::new(self.seed, self.stream.wrapping_add(epoch)),
            );
            self.cached = Some((epoch, order));
        }
        let order = &self.cached.as_ref()?.1;
        Some(self.items[order[(k % n) as usize]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labeled_shares_parse_and_count() {
        assert_eq!(Labeled::parse("all"), Ok(Labeled::All));
        assert_eq!(
            Labeled::parse("1/16"),
            Ok(Labeled::Fraction { num: 1, den: 16 })
        );
        assert_eq!(Labeled::parse("4/4"), Ok(Labeled::All));
        assert_eq!(Labeled::parse("100"), Ok(Labeled::Count(100)));
        assert!(Labeled::parse("0").is_err());
        assert!(Labeled::parse("3/2").is_err());
        assert!(Labeled::parse("half").unwrap_err().contains("`half`"));
        assert_eq!(Labeled::parse("1/16").unwrap().count(1000), Ok(63)); // 62.5 → 63
        assert_eq!(Labeled::parse("1/64").unwrap().count(10), Ok(1)); // never zero
        assert_eq!(Labeled::Count(5).count(5), Ok(5));
        assert!(Labeled::Count(6)
            .count(5)
            .unwrap_err()
            .contains("5 training items"));
    }

    #[test]
    fn splits_are_deterministic_nested_and_disjoint() {
        let a = split(1000, Labeled::parse("1/16").unwrap(), 3).unwrap();
        assert_eq!(a, split(1000, Labeled::parse("1/16").unwrap(), 3).unwrap());
        assert_eq!((a.labeled.len(), a.unlabeled.len()), (63, 937));
        let mut all: Vec<usize> = a.labeled.iter().chain(&a.unlabeled).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let b = split(1000, Labeled::parse("1/8").unwrap(), 3).unwrap();
        assert!(a.labeled.iter().all(|i| b.labeled.contains(i)));
        let c = split(1000, Labeled::parse("1/16").unwrap(), 4).unwrap();
        assert_ne!(a.labeled, c.labeled);
    }

    #[test]
    fn permutations_are_permutations_and_look_uniform() {
        let rng = Philox::new(9, 1);
        let mut p = permutation(50, &rng);
        p.sort_unstable();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
        // Position of item 0 over many keys: each of 4 slots about a quarter of the time.
        let mut hits = [0u32; 4];
        for s in 0..4000 {
            let p = permutation(4, &Philox::new(s, 0));
            hits[p.iter().position(|&v| v == 0).unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| (900..1100).contains(&h)), "{hits:?}");
    }

    #[test]
    fn samplers_visit_every_item_once_per_epoch() {
        let items = vec![10, 20, 30, 40, 50];
        let mut s = Sampler::new(items.clone(), 1, 7);
        for epoch in 0..3u64 {
            let mut seen: Vec<usize> = (0..5).map(|k| s.draw(epoch * 5 + k).unwrap()).collect();
            seen.sort_unstable();
            assert_eq!(seen, items);
        }
        // Draws are pure functions of k, whatever order they are asked in.
        let mut t = Sampler::new(items.clone(), 1, 7);
        assert_eq!(t.draw(12), s.draw(12));
        assert_eq!(t.draw(3), s.draw(3));
        assert_eq!(Sampler::new(Vec::new(), 1, 7).draw(0), None);
    }
}
