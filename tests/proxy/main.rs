//! Integration tests: real backends on 127.x loopback addresses, the real `tidegate` binary, real
//! HTTP. One test binary (modules below) to keep link time down.

mod support;

mod cli;
mod faults;
mod protocol;
mod reload;
mod routing;
