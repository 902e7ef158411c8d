//! Numbers that must lie in a range, checked while the graph is decoded: a learning rate ≤ 0, a
//! β outside [0, 1) or zero iterations is FS0002 at the value's own line:column, reported with
//! every other schema error — never a run that fails (or silently misbehaves) at iteration 0.
//! Each function is a serde `deserialize_with` for a plain field, so the spec keeps plain `f64`
//! and `u64` values. A non-finite number cannot reach here (the YAML reader refuses `.nan` and
//! `.inf`, spec/mod.rs), but every check also refuses one, for values decoded from elsewhere.
//!
//! Not here: relations between values (`min_lr` ≤ `lr`, validate.rs), ranges an op or a model
//! checks in its own params.

use serde::de::{self, Deserialize, Deserializer, Unexpected};
use std::collections::BTreeMap;

/// `v` if `ok(v)` holds and it is finite, else serde's "invalid value" naming the range.
fn check<E: de::Error>(v: f64, ok: impl Fn(f64) -> bool, range: &'static str) -> Result<f64, E> {
    if v.is_finite() && ok(v) {
        Ok(v)
    } else {
        Err(E::invalid_value(Unexpected::Float(v), &range))
    }
}

/// A finite number > 0 (learning rates, ε).
pub(super) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(f64::deserialize(d)?, |v| v > 0.0, "a number > 0")
}

/// A finite number ≥ 0 (weight decay, loss weights, schedule exponents).
pub(super) fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(f64::deserialize(d)?, |v| v >= 0.0, "a number ≥ 0")
}

/// A number in [0, 1) (momentum).
pub(super) fn unit_open<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    check(
        f64::deserialize(d)?,
        |v| (0.0..1.0).contains(&v),
        "a number in [0, 1)",
    )
}

/// AdamW's (β1, β2), each in [0, 1).
pub(super) fn betas<'de, D: Deserializer<'de>>(d: D) -> Result<(f64, f64), D::Error> {
    let (b1, b2) = <(f64, f64)>::deserialize(d)?;
    let range = "two numbers in [0, 1), e.g. [0.9, 0.999]";
    let ok = |v: f64| (0.0..1.0).contains(&v);
    Ok((check(b1, ok, range)?, check(b2, ok, range)?))
}

/// An optional number in [0, 1] (an EMA decay).
pub(super) fn unit_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        Some(v) => check(v, |v| (0.0..=1.0).contains(&v), "a number in [0, 1]").map(Some),
        None => Ok(None),
    }
}

/// An integer ≥ 1 (iterations).
pub(super) fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(de::Error::invalid_value(
            Unexpected::Unsigned(0),
            &"an integer ≥ 1",
        ));
    }
    Ok(v)
}

/// An optional integer ≥ 1 (an evaluation batch).
pub(super) fn at_least_one_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match Option::<usize>::deserialize(d)? {
        Some(0) => Err(de::Error::invalid_value(
            Unexpected::Unsigned(0),
            &"an integer ≥ 1",
        )),
        other => Ok(other),
    }
}

/// Learning-rate multipliers by parameter prefix, each ≥ 0 (0 freezes the group).
pub(super) fn multipliers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    let m = BTreeMap::<String, f64>::deserialize(d)?;
    for &v in m.values() {
        check(v, |v| v >= 0.0, "a multiplier ≥ 0")?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::super::de::from_node;
    use super::super::value::Loc;
    use super::super::{parse_yaml, DeError};
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "super::positive")]
        lr: f64,
        #[serde(default, deserialize_with = "super::betas")]
        betas: (f64, f64),
        #[serde(default, deserialize_with = "super::at_least_one")]
        iterations: u64,
    }

    fn decode(text: &str) -> Result<Probe, DeError> {
        from_node::<Probe>(&parse_yaml(text).expect("yaml"))
    }

    #[test]
    fn out_of_range_values_are_refused_at_the_value() {
        for (text, col) in [
            ("{ lr: -0.5 }", 7),
            ("{ lr: 0 }", 7),
            ("{ betas: [0.9, 1.0] }", 10),
            ("{ iterations: 0 }", 15),
        ] {
            let e = decode(text).expect_err(text);
            assert_eq!(e.loc, Loc { line: 1, col }, "{text}: {}", e.message);
            assert!(e.message.contains("expected"), "{text}: {}", e.message);
        }
    }

    #[test]
    fn values_in_range_pass() {
        let p = decode("{ lr: 0.01, betas: [0.0, 0.999], iterations: 1 }").expect("in range");
        assert_eq!((p.lr, p.betas, p.iterations), (0.01, (0.0, 0.999), 1));
    }
}
