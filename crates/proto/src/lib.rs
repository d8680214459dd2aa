//! Generated protobuf messages (and, with the `grpc` feature, tonic services) for
//! every Badge API, plus the encoded descriptor set for server reflection.

#![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]

pub mod badge {
    pub mod meta {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/badge.meta.v1.rs"));
        }
    }
    pub mod identity {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/badge.identity.v1.rs"));
        }
    }
    pub mod token {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/badge.token.v1.rs"));
        }
    }
    pub mod rbac {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/badge.rbac.v1.rs"));
        }
    }
    pub mod review {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/badge.review.v1.rs"));
        }
    }
    pub mod certificates {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/badge.certificates.v1.rs"));
        }
    }
}

/// Istio's CA API, package `istio.v1.auth` exactly as upstream names it (the gRPC
/// service is `istio.v1.auth.IstioCertificateService`).
pub mod istio {
    pub mod v1 {
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

/// Kubernetes' ExternalJWTSigner API, packages `v1` and `v1alpha1` exactly as
/// upstream names them (the gRPC service is `v1.ExternalJWTSigner`).
pub mod externaljwt {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/v1.rs"));
    }
    pub mod v1alpha1 {
        include!(concat!(env!("OUT_DIR"), "/v1alpha1.rs"));
    }
}

/// The SPIFFE Workload API (`proto/spiffe/workload.proto`): no package, exactly as
/// upstream declares it, so the gRPC service is `SpiffeWorkloadAPI`.
pub mod spiffe_workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use badge::certificates::v1 as certificates;
pub use badge::identity::v1 as identity;
pub use badge::meta::v1 as meta;
pub use badge::rbac::v1 as rbac;
pub use badge::review::v1 as review;
pub use badge::token::v1 as token;

/// Encoded `FileDescriptorSet` of every Badge `.proto` file and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/badge_descriptor.bin"));

pub mod scope;
pub use scope::Scope;
