//! `badgectl`: a kubectl-like command line for Badge over mTLS gRPC. The library
//! holds the connection resolution (also used by `badge-agent`), the Kubernetes
//! object model with its protobuf conversions, the client side of workload
//! certificates (key, CSR, credential bundle file), and the commands.

pub mod api;
pub mod cert;
pub mod cli;
pub mod conn;
pub mod k8s;
pub mod manifest;

pub use cli::{Cli, execute, run};
pub use conn::{Connection, ConnectionArgs};
