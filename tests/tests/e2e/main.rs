//! Badge's end-to-end tests as one test binary (one link instead of one per file):
//! each module is one area, helpers shared by several live in `common`. nextest
//! still runs every test in its own process, so tests stay isolated and parallel;
//! select an area with `-E 'test(/^<module>::/)'`.

// Test code: a failed expectation panics the test; tokens and certificates are made
// at the wall-clock time the real clients check them against.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "end-to-end tests"
)]

mod abuse;
mod agent;
mod badgectl;
mod bench_certificates;
mod bench_writes;
mod certificates;
mod common;
mod compose;
mod config_examples;
mod config_reference;
mod docs_commands;
mod ext_authz;
mod external_signer;
mod failover;
mod grpcurl;
mod https_limits;
mod identity;
mod issuer;
mod issuer_failures;
mod layering;
mod legacy_cleanup;
mod method_tables;
mod newcomer;
mod node_agent;
mod pod_certificate_volume;
mod prop_auth_scope;
mod rbac;
mod review;
mod telemetry;
mod up;
