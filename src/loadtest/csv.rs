//! `--csv FILE`: every request of the run, one row each, as the recorder receives it, for
//! analysis elsewhere (a spreadsheet, pandas): when it should have started, when it did, when it
//! ended, and what it got.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use super::record::{FailureKind, Outcome, Record};

/// The header row; times are milliseconds since the run started.
const HEADER: &str = "intended_ms,started_ms,done_ms,latency_ms,service_ms,outcome,version\n";

/// An open CSV file, buffered (the recorder writes a row per request).
pub(super) struct Csv(BufWriter<File>);

impl Csv {
    pub(super) fn create(path: &Path) -> std::io::Result<Self> {
        let mut out = BufWriter::with_capacity(64 * 1024, File::create(path)?);
        out.write_all(HEADER.as_bytes())?;
        Ok(Self(out))
    }

    /// One request's row. A request never sent (`overdue`, a failed connect) has no start.
    pub(super) fn row(&mut self, record: &Record) -> std::io::Result<()> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let intended = record.intended;
        let started = record.service.map(|s| record.done.saturating_sub(s));
        let outcome = match record.outcome {
            Outcome::Status(status) => status.to_string(),
            Outcome::Error(kind) => FailureKind::Error(kind).as_str().to_owned(),
        };
        let version = record
            .version
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        writeln!(
            self.0,
            "{:.3},{},{:.3},{:.3},{},{outcome},{}",
            ms(intended),
            started.map_or(String::new(), |s| format!("{:.3}", ms(s))),
            ms(record.done),
            ms(record.latency),
            record
                .service
                .map_or(String::new(), |s| format!("{:.3}", ms(s))),
            field(&version),
        )
    }

    pub(super) fn finish(mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A CSV field: quoted (quotes doubled) when it holds a comma, a quote or a line break.
fn field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        assert_eq!(field("v2"), "v2");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
