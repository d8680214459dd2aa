//! What every Badge binary shares: configuration, tracing, mTLS, the caller's
//! identity and the one authn/authz layer, health and reflection, the error →
//! status mapping, graceful shutdown and the dev PKI.

pub mod auth;
pub mod config;
pub mod https;
pub mod limits;
pub mod pki;
pub mod server;
pub mod service;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod transport;

pub use auth::{
    AUTHENTICATED_GROUP, Authorizer, Caller, MastersOnly, MethodRule, MethodTable, Target,
    forbidden,
};
pub use server::GrpcServer;

/// mimalloc for every Badge binary (they all link this crate): the request paths
/// allocate many small, short-lived buffers across tokio's worker threads, where
/// glibc's malloc spent 12-15 % of a server's CPU in the profiles behind
/// `scripts/bench.sh`. The load generator links it too, so the echo ceiling it
/// measures is served by the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use status::status;
