//! The one place domain errors become gRPC statuses (design.md conventions).

use badge_core::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Maps a domain error to a status. Invalid input carries `google.rpc.BadRequest`
/// field violations and failed preconditions `google.rpc.PreconditionFailure`, so
/// clients can point at the field. Internal errors are logged here and answered
/// with a generic message: nothing internal leaks to the caller.
pub fn to_status(err: Error) -> Status {
    match err {
        Error::Invalid(violations) => {
            let message = Error::Invalid(violations.clone()).to_string();
            let mut details = ErrorDetails::new();
            for v in violations {
                details.add_bad_request_violation(v.field, v.description);
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Error::FailedPrecondition {
            message,
            violations,
        } => {
            if violations.is_empty() {
                return Status::failed_precondition(message);
            }
            let mut details = ErrorDetails::new();
            for v in violations {
                details.add_precondition_failure_violation("ADMISSION", v.field, v.description);
            }
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        Error::NotFound(m) => Status::not_found(m),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::Conflict(m) => Status::aborted(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::OutOfRange(m) => Status::out_of_range(m),
        Error::Unavailable(m) => {
            tracing::warn!(error = %m, "answering UNAVAILABLE");
            Status::unavailable(m)
        }
        Error::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::internal("internal error")
        }
    }
}

/// `?`-friendly conversion for handlers: `store.get(..).await.map_err(status)?`.
pub fn status(err: Error) -> Status {
    to_status(err)
}

/// Attaches warnings the way Kubernetes sends `Warning` headers: as response
/// metadata (one `warning` entry each; a warning that is not a valid header value
/// is left out).
pub fn with_warnings<T>(msg: T, warnings: Vec<String>) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(msg);
    for w in warnings {
        if let Ok(v) = w.parse() {
            resp.metadata_mut().append("warning", v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use badge_core::FieldViolation;

    #[test]
    fn invalid_carries_bad_request_details() {
        let s = to_status(Error::Invalid(vec![FieldViolation::new(
            "metadata.name",
            "\"Bad_Name\": must be lowercase",
        )]));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("metadata.name"));
        let br = s.get_details_bad_request().expect("bad request details");
        assert_eq!(br.field_violations[0].field, "metadata.name");
    }

    #[test]
    fn internal_does_not_leak() {
        let s = to_status(Error::Internal("relation objects does not exist".into()));
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "internal error");
    }

    #[test]
    fn codes() {
        let cases = [
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (Error::Conflict("x".into()), Code::Aborted),
            (Error::precondition("x"), Code::FailedPrecondition),
            (Error::OutOfRange("x".into()), Code::OutOfRange),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::PermissionDenied("x".into()), Code::PermissionDenied),
            (Error::Unauthenticated("x".into()), Code::Unauthenticated),
        ];
        for (e, code) in cases {
            assert_eq!(to_status(e).code(), code);
        }
    }
}
