//! Load generation against Badge's gRPC services over mTLS, and an echo service
//! that measures what this machine's gRPC + mTLS stack can do at all (the ceiling
//! every Badge number should be read against).
//!
//! - [`echo`]: the echo service and an in-process server for it.
//! - [`scenario`]: what one request is (echo, CreateToken, GetServiceAccount, ...).
//! - [`load`]: N connections × M requests in flight for a fixed duration.
//! - [`report`]: the merged result, printed for people or as one JSON line.
//! - [`target`]: the loopback-only guard every run passes first.
//! - [`ceiling`]: temp PKI + in-process echo server + echo load, in one call.
//! - [`certificates`]: the certificate scenarios' CSR pools, and one core's CSR
//!   verification rate.
//! - [`burst`]: exactly N requests at once (a fleet restart), time to serve all.
//! - [`watch`]: W Watch streams while one writer writes at a fixed rate: the
//!   change feed's fan-out lag.
//! - [`pod_churn`]: pods created and deleted with their bound tokens issued and
//!   reviewed meanwhile: a fleet rolling, and the revocation lag.

pub mod burst;
pub mod ceiling;
pub mod certificates;
pub mod check;
pub mod cli;
pub mod duration;
pub mod echo;
pub mod load;
pub mod pod_churn;
pub mod report;
pub mod scenario;
pub mod target;
pub mod watch;

/// Generated code for `proto/badge/bench/v1/echo.proto`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/badge.bench.v1.rs"));
}
