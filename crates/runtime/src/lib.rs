//! What every Badge binary shares: configuration, tracing, mTLS, the caller's
//! identity and the one authn/authz layer, health and reflection, the error →
//! status mapping, graceful shutdown and the dev PKI.

pub mod auth;
pub mod config;
pub mod https;
pub mod pki;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use auth::{
    AUTHENTICATED_GROUP, Authorizer, Caller, MastersOnly, MethodRule, MethodTable, Target,
    forbidden,
};
pub use server::GrpcServer;
pub use status::status;
