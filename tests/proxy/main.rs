//! Integration tests: real backends on 127.x loopback addresses, the real `tidegate` binary, real
//! HTTP. One test binary (modules below) to keep link time down.

// Test bookkeeping (captured logs and headers) is not on any request path.
#![allow(clippy::disallowed_types)]

mod support;

mod access_log;
mod blame;
mod canary;
mod churn;
mod cli;
mod cluster;
mod connection_limit;
mod deadlines;
mod demo;
mod fake_api;
mod fake_api_tests;
mod faults;
mod framing;
mod grpc;
mod grpc_rollout;
mod grpcio;
mod h2_abuse;
mod h2c;
mod hygiene;
mod image;
pub mod kubernetes;
mod limits;
mod loadtest;
mod pod_deletion;
mod prometheus;
mod protocol;
#[path = "../common/rbac.rs"]
mod rbac;
mod reload;
mod requests;
mod routing;
mod tls;
mod tracing;
mod upstream;
