//! Validation of scalar fields *while* the YAML parser still points at them, so that every error
//! carries the field's path and line (an error raised after deserializing would name the parent).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// A YAML scalar as the parser saw it.
pub(super) enum Scalar<'a> {
    Str(&'a str),
    Number(f64),
    Null,
}

/// Deserializes one scalar through `check`, which turns it into a value or says what is wrong.
pub(super) fn validated<'de, D, T, F>(
    d: D,
    expecting: &'static str,
    check: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    d.deserialize_any(Check {
        expecting,
        check,
        out: PhantomData,
    })
}

struct Check<F, T> {
    expecting: &'static str,
    check: F,
    out: PhantomData<T>,
}

impl<'de, F, T> Visitor<'de> for Check<F, T>
where
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.check)(Scalar::Str(v)).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.check)(Scalar::Number(v as f64)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.check)(Scalar::Number(v as f64)).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.check)(Scalar::Number(v)).map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        (self.check)(Scalar::Null).map_err(E::custom)
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        (self.check)(Scalar::Null).map_err(E::custom)
    }
}
