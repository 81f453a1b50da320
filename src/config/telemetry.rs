//! `access_log:`, `request_id:` and `tracing:` as written, validated where the parser can still
//! point at the field, and converted into their domain types.

use std::path::PathBuf;

use http::{HeaderName, Uri};
use serde::{Deserialize, Deserializer};

use super::scalar::{validated, Scalar};
use crate::access_log::{AccessLogConfig, Format, Target};
use crate::trace::otlp::OtlpConfig;
use crate::trace::{RequestIdConfig, Start, TracingConfig};

/// `access_log:`; absent or `null` is off.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    #[serde(default = "json", deserialize_with = "format")]
    format: Format,
    #[serde(default = "stdout", deserialize_with = "target")]
    path: Target,
    #[serde(default)]
    include_query: bool,
    #[serde(default = "buffer", deserialize_with = "lines")]
    buffer: usize,
}

impl RawAccessLog {
    pub(super) fn config(self) -> AccessLogConfig {
        AccessLogConfig {
            format: self.format,
            target: self.path,
            include_query: self.include_query,
            buffer: self.buffer,
        }
    }
}

/// About 6 MB of lines: a few seconds of a busy proxy's log while its stdout is slow.
fn buffer() -> usize {
    16 * 1024
}

fn lines<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    validated(d, "a number of lines", |s| match s {
        Scalar::Number(n) if (1.0..=1_048_576.0).contains(&n) && n.fract() == 0.0 => Ok(n as usize),
        _ => Err("must be a whole number of lines from 1 to 1048576".to_owned()),
    })
}

fn json() -> Format {
    Format::Json
}

fn stdout() -> Target {
    Target::Stdout
}

fn format<'de, D: Deserializer<'de>>(d: D) -> Result<Format, D::Error> {
    validated(d, "json or text", |s| match s {
        Scalar::Str("json") => Ok(Format::Json),
        Scalar::Str("text") => Ok(Format::Text),
        _ => Err("must be json or text".to_owned()),
    })
}

fn target<'de, D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
    validated(d, "stdout or a file path", |s| match s {
        Scalar::Str("stdout") => Ok(Target::Stdout),
        Scalar::Str(path) if !path.is_empty() => Ok(Target::File(PathBuf::from(path))),
        _ => Err("must be stdout or a file path".to_owned()),
    })
}

/// `request_id:`; on by default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequestId {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "x_request_id", deserialize_with = "header")]
    header: HeaderName,
    /// Answer the client with the ID too.
    #[serde(default = "yes")]
    response: bool,
}

impl Default for RawRequestId {
    fn default() -> Self {
        Self {
            enabled: true,
            header: x_request_id(),
            response: true,
        }
    }
}

impl RawRequestId {
    pub(super) fn config(self) -> Option<RequestIdConfig> {
        self.enabled.then_some(RequestIdConfig {
            header: self.header,
            respond: self.response,
        })
    }
}

fn yes() -> bool {
    true
}

fn x_request_id() -> HeaderName {
    HeaderName::from_static("x-request-id")
}

fn header<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    validated(d, "a header name", |s| match s {
        Scalar::Str(s) => HeaderName::from_bytes(s.as_bytes())
            .map_err(|_| format!("{s:?} is not a valid header name")),
        _ => Err("must be a header name".to_owned()),
    })
}

/// `tracing:`: when to start a trace, and where to export spans.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    #[serde(default, deserialize_with = "start")]
    start: RawStart,
    /// The share of requests without a `traceparent` that start a trace, with `start: ratio`.
    #[serde(default, deserialize_with = "ratio")]
    ratio: Option<f64>,
    #[serde(default, deserialize_with = "otlp_endpoint")]
    otlp_endpoint: Option<Uri>,
    #[serde(default = "tidegate")]
    service_name: String,
}

#[derive(Default, Clone, Copy)]
enum RawStart {
    #[default]
    Never,
    Always,
    Ratio,
}

fn tidegate() -> String {
    "tidegate".to_owned()
}

fn start<'de, D: Deserializer<'de>>(d: D) -> Result<RawStart, D::Error> {
    validated(d, "never, always or ratio", |s| match s {
        Scalar::Str("never") => Ok(RawStart::Never),
        Scalar::Str("always") => Ok(RawStart::Always),
        Scalar::Str("ratio") => Ok(RawStart::Ratio),
        _ => Err("must be never, always or ratio".to_owned()),
    })
}

fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    validated(d, "a number from 0 to 1", |s| match s {
        Scalar::Number(n) if (0.0..=1.0).contains(&n) => Ok(Some(n)),
        Scalar::Null => Ok(None),
        _ => Err("must be a number from 0 to 1".to_owned()),
    })
}

fn otlp_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
    validated(d, "an http:// URL", |s| match s {
        Scalar::Null => Ok(None),
        Scalar::Str(s) => {
            let uri: Uri = s.parse().map_err(|_| {
                format!("{s:?} is not a URL, such as http://otel-collector:4318/v1/traces")
            })?;
            match (uri.scheme_str(), uri.host()) {
                (Some("http"), Some(_)) => Ok(Some(uri)),
                (Some("https"), _) => Err(
                    "https is not supported for span export; use the collector's plain-HTTP \
                     port (4318) inside the cluster"
                        .to_owned(),
                ),
                _ => Err(format!(
                    "{s:?} must be an http:// URL, such as http://otel-collector:4318/v1/traces"
                )),
            }
        }
        _ => Err("must be an http:// URL".to_owned()),
    })
}

impl RawTracing {
    /// The tracing config, or the field and reason it is refused.
    pub(super) fn config(self) -> Result<TracingConfig, (&'static str, &'static str)> {
        let start = match (self.start, self.ratio) {
            (RawStart::Never, None) => Start::Never,
            (RawStart::Always, None) => Start::Always,
            (RawStart::Ratio, Some(ratio)) => Start::Ratio(ratio),
            (RawStart::Ratio, None) => {
                return Err(("tracing.ratio", "is required with start: ratio"));
            }
            (_, Some(_)) => return Err(("tracing.ratio", "applies only with start: ratio")),
        };
        Ok(TracingConfig {
            start,
            otlp: self.otlp_endpoint.map(|endpoint| OtlpConfig {
                endpoint,
                service_name: self.service_name,
            }),
        })
    }
}
