//! # tidegate
//!
//! An HTTP reverse proxy that follows a workload's endpoints as they change and splits traffic
//! between its stable and canary versions, so rolling updates drop nothing and canaries get exactly
//! the share they were given.
//!
//! # Layout, in data-flow order
//!
//! - [`config`]: YAML → validated `Config`; errors name the field and line.
//! - [`reload`]: watches the config file; valid changes go to the control loop.
//! - [`discovery`]: the `Update` language every endpoint source speaks; static source.
//! - [`canary`]: pure policy: which endpoints are canary, what share they get (config, annotation,
//!   admin override), and the automatic abort decision.
//! - [`control`]: the control loop, sole owner of the routing model; publishes snapshots.
//! - [`snapshot`]: the immutable `Snapshot` behind one `ArcSwap`; the `Publisher` writes it.
//! - [`pick`]: canary header, sticky cookie, canary split, power-of-two-choices; arithmetic only.
//! - [`upstream`]: per-endpoint connections (HTTP/1.1 pools under a cap, multiplexed HTTP/2 for
//!   h2c endpoints), and the one transport service (a `tower::Service`) that the lean HTTP/1.1
//!   exchange and hyper's HTTP/1 and HTTP/2 clients implement under one framing policy.
//! - [`deadline`]: per-request deadlines on one timer per connection (client and upstream side).
//! - [`probe`]: optional active health checks, recorded in the endpoint cells.
//! - [`forward`]: the hyper server and a request's stages: admit, route, prepare, attempt
//!   (classified by who is at fault: client, endpoint or tidegate), retry decision, respond.
//! - [`grpc`]: gRPC over a proxy: call detection, `grpc-status` outcomes and failure codes,
//!   `grpc-timeout`, and the trailers-only answers tidegate gives when it cannot forward.
//! - [`tls`]: TLS termination at the listener: certificates by SNI, reloaded when their files change.
//! - [`access_log`]: one line per request, written off the request path; tidegate's own errors
//!   at `warn`.
//! - [`trace`]: request IDs and W3C Trace Context at the hop; span export over OTLP/HTTP.
//! - [`admin`], [`metrics`], [`shutdown`]: the operator's side.
//! - [`server`], [`cli`], [`demo`]: wiring and the command line.
//! - `fuzzing` (only with `--cfg fuzzing`, and in tests): the parsers of untrusted input, for the
//!   fuzzers in `fuzz/`.
//! - [`loadtest`]: the load generator (`tidegate loadtest`, and the demo's traffic); uses the core,
//!   never used by it.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod canary;
pub mod cli;
pub mod config;
pub mod control;
pub mod deadline;
pub mod demo;
pub mod discovery;
pub mod forward;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod loadtest;
pub mod metrics;
pub mod pick;
pub mod probe;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod tls;
pub mod trace;
pub mod upstream;
