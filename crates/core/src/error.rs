//! The one error type every layer speaks. The runtime maps it to a gRPC status in
//! one place (`badge_runtime::status`); the store maps SQLSTATEs into it.

use std::fmt;

/// One bad field: `field` is the path in the request (e.g. `pod.metadata.name`),
/// `description` says what is wrong and quotes the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

fn join(v: &[FieldViolation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Domain errors. Messages are lowercase, name the field or object, and never carry
/// a token, key or secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bad input (Kubernetes 400/422) → INVALID_ARGUMENT with BadRequest details.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldViolation>),
    /// → NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// → ALREADY_EXISTS.
    #[error("{0}")]
    AlreadyExists(String),
    /// Stale resource_version or uid precondition (Kubernetes 409) → ABORTED.
    #[error("{0}")]
    Conflict(String),
    /// The system is not in the state the request needs (Kubernetes 403 from
    /// admission, e.g. a missing service account) → FAILED_PRECONDITION with
    /// PreconditionFailure details, one per violation.
    #[error("{message}")]
    FailedPrecondition {
        message: String,
        violations: Vec<FieldViolation>,
    },
    /// → UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// → PERMISSION_DENIED.
    #[error("{0}")]
    PermissionDenied(String),
    /// A watch revision that has been compacted away → OUT_OF_RANGE (relist).
    #[error("{0}")]
    OutOfRange(String),
    /// The store or a peer is unreachable → UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected store answer → INTERNAL. The message is logged, never
    /// sent to the client.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::Invalid(vec![FieldViolation::new(field, description)])
    }

    /// Turns a list of violations into `Ok(())` when empty, `Invalid` otherwise.
    pub fn check(violations: Vec<FieldViolation>) -> Result<(), Error> {
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(violations))
        }
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            message: message.into(),
            violations: Vec::new(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
