//! Human durations in config files: `250ms`, `10s`, `1.5m`, `2h`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration parsed from `<number><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Dur(pub Duration);

/// Parses `<number><unit>`; `None` when it is not one. Shared with the command line's duration
/// options, so that `--duration 1.5m` means what `timeouts.request: 1.5m` means.
pub(crate) fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(value * scale).ok()
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::scalar::validated(d, "a duration", |s| {
            let parsed = match s {
                super::scalar::Scalar::Str(s) => parse(s),
                _ => None,
            };
            parsed.map(Dur).ok_or_else(|| {
                "must be a duration with a unit, such as 500ms, 10s, 2m or 1h".to_owned()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("10"), None, "a unit is required");
        assert_eq!(parse("s"), None);
        assert_eq!(parse("1 parsec"), None);
    }
}
