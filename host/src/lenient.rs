//! Deserializers that accept numbers and booleans written as strings
//! (`"300"`, `300.0`, `"true"`), the way Greengrass recipes and
//! `{configuration:/...}` interpolation render configuration values.
//!
//! A leaf: every area's configuration section names these in
//! `#[serde(deserialize_with = "crate::lenient::...")]`, and this module
//! depends on nothing of the crate.

use serde::{Deserialize, Deserializer, de::Error};

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Float(f64),
    Bool(bool),
    Text(String),
}

fn to_u64(raw: Raw) -> Result<u64, String> {
    match raw {
        Raw::Int(n) => Ok(n),
        Raw::Float(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        Raw::Float(f) => Err(format!("expected a whole non-negative number, found {f}")),
        Raw::Bool(b) => Err(format!("expected a whole non-negative number, found {b}")),
        Raw::Text(s) => {
            let t = s.trim();
            t.parse::<u64>()
                .ok()
                .or_else(|| {
                    t.parse::<f64>()
                        .ok()
                        .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                        .map(|f| f as u64)
                })
                .ok_or_else(|| format!("expected a whole non-negative number, found \"{s}\""))
        }
    }
}

/// A `u64` given as a number or a string.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    to_u64(Raw::deserialize(d)?).map_err(D::Error::custom)
}

/// A `usize` given as a number or a string.
pub fn usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = to_u64(Raw::deserialize(d)?).map_err(D::Error::custom)?;
    usize::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
}

/// An `f64` given as a number or a string.
pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n as f64),
        Raw::Float(f) => Ok(f),
        Raw::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("expected a number, found \"{s}\""))),
        Raw::Bool(b) => Err(D::Error::custom(format!("expected a number, found {b}"))),
    }
}

/// A `u16` given as a number or a string (ports).
pub fn u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = to_u64(Raw::deserialize(d)?).map_err(D::Error::custom)?;
    u16::try_from(n).map_err(|_| D::Error::custom(format!("{n} is above 65535")))
}

/// An optional `bool`: `null`, an absent key or `""` mean "not set",
/// because a Greengrass recipe cannot leave a key out of an interpolated
/// string and renders an unset value as empty.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Text(s)) if s.trim().is_empty() => Ok(None),
        Some(raw) => to_bool(raw).map(Some).map_err(D::Error::custom),
    }
}

/// A `bool` given as a boolean or the strings `"true"`/`"false"`.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    to_bool(Raw::deserialize(d)?).map_err(D::Error::custom)
}

fn to_bool(raw: Raw) -> Result<bool, String> {
    match raw {
        Raw::Bool(b) => Ok(b),
        Raw::Text(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Raw::Text(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Raw::Text(s) => Err(format!("expected true or false, found \"{s}\"")),
        Raw::Int(n) => Err(format!("expected true or false, found {n}")),
        Raw::Float(f) => Err(format!("expected true or false, found {f}")),
    }
}
