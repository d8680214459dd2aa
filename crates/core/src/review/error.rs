//! Why a review failed, as values. `Display` is Kubernetes' `status.error` text to
//! the character (black-box tests and clients compare it); decisions match on the
//! variant, never on the text.

use std::fmt;

use super::{
    INVALID_BEARER_TOKEN, INVALID_SIGNATURE, INVALID_SINCE_LABEL, LEGACY_TOKEN_INVALIDATED,
    LEGACY_TOKEN_MISMATCH, MALFORMED_TOKEN, NO_KEYS_FOUND, TOKEN_EXPIRED, TOKEN_INVALIDATED,
    TOKEN_ISSUED_IN_FUTURE, TOKEN_NOT_VALID_YET, TOKEN_REVOKED, UNSUPPORTED_ALGORITHM,
    UNSUPPORTED_CRITICAL_HEADER,
};
use crate::quote::{aggregate_errors, go_quote, go_quote_list};

/// Why one candidate key did not verify a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFailure {
    /// The header's `alg` is not the key's algorithm ([`UNSUPPORTED_ALGORITHM`]).
    UnsupportedAlgorithm,
    /// The signature does not verify with the key ([`INVALID_SIGNATURE`]).
    InvalidSignature,
}

impl fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyFailure::UnsupportedAlgorithm => UNSUPPORTED_ALGORITHM,
            KeyFailure::InvalidSignature => INVALID_SIGNATURE,
        })
    }
}

/// A failed signature check ([`super::SignatureVerifier::verify`], §3.2 step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No trusted key has the header's kid ([`NO_KEYS_FOUND`]).
    NoKeysFound,
    /// Each candidate key's failure, in the order tried; printed as Kubernetes'
    /// error aggregate (one distinct text prints alone).
    Failed(Vec<KeyFailure>),
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::NoKeysFound => f.write_str(NO_KEYS_FOUND),
            SignatureError::Failed(failures) => {
                let texts: Vec<String> = failures.iter().map(ToString::to_string).collect();
                f.write_str(&aggregate_errors(&texts))
            }
        }
    }
}

impl std::error::Error for SignatureError {}

/// A UID in a token that does not match the live object's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidMismatch {
    /// The live object's UID.
    pub actual: String,
    /// The token's claim.
    pub claim: String,
}

/// Why a review failed (§3.1–3.6); `Display` is Kubernetes' text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewError {
    /// Badge: longer than [`super::ReviewSettings::max_token_len`].
    TooLong { len: usize, max: usize },
    /// No authenticator claims the token ([`INVALID_BEARER_TOKEN`]).
    InvalidBearerToken,
    /// Duplicate JSON keys or claims of the wrong type ([`MALFORMED_TOKEN`]).
    MalformedToken,
    /// `alg` is empty, `none` or `HS*` ([`UNSUPPORTED_ALGORITHM`]).
    UnsupportedAlgorithm,
    /// The header lists critical extensions ([`UNSUPPORTED_CRITICAL_HEADER`]).
    UnsupportedCriticalHeader,
    /// The verifier refused the signature.
    Signature(SignatureError),
    /// The `iss` claim is not this authenticator's.
    InvalidIssuer(String),
    /// The token's audiences and the requested ones do not intersect.
    InvalidAudiences {
        token: Vec<String>,
        requested: Vec<String>,
    },
    /// [`TOKEN_NOT_VALID_YET`].
    NotValidYet,
    /// [`TOKEN_EXPIRED`].
    Expired,
    /// [`TOKEN_ISSUED_IN_FUTURE`].
    IssuedInFuture,
    /// The live GET of `resource` `name` failed (`tokengetter.go`).
    NotFound {
        resource: &'static str,
        name: String,
    },
    /// The bound service account's UID differs from the claim.
    ServiceAccountUid(UidMismatch),
    /// The bound service account is being deleted (past the leeway).
    ServiceAccountDeleted { namespace: String, name: String },
    /// The bound Secret's UID differs from the claim.
    SecretUid(UidMismatch),
    /// The bound Pod's UID differs from the claim.
    PodUid(UidMismatch),
    /// The bound Node's UID differs from the claim.
    NodeUid(UidMismatch),
    /// A bound object is missing or deleted ([`TOKEN_INVALIDATED`]).
    Invalidated,
    /// Badge: the token's jti was revoked ([`TOKEN_REVOKED`]).
    Revoked,
    /// A legacy token lacks a required claim (`sub`, `namespace`, `secretName`,
    /// `serviceAccountName`, `serviceAccountUID`).
    MissingClaim(&'static str),
    /// A legacy token's `sub` is not its service account's username.
    InvalidSubject,
    /// The legacy token's Secret is gone or being deleted ([`LEGACY_TOKEN_INVALIDATED`]).
    LegacyInvalidated,
    /// The token is not the Secret's copy ([`LEGACY_TOKEN_MISMATCH`]).
    LegacyMismatch,
    /// A legacy token's service account is being deleted.
    LegacyServiceAccountDeleted { namespace: String, name: String },
    /// A legacy token's service account UID differs from the claim.
    LegacyServiceAccountUid(UidMismatch),
    /// The legacy token's Secret carries [`INVALID_SINCE_LABEL`].
    MarkedInvalid {
        namespace: String,
        secret: String,
        service_account: String,
    },
    /// Both authenticators claimed the token and both refused it (§3.1): printed
    /// as Kubernetes' error aggregate.
    Aggregate(Vec<ReviewError>),
}

impl ReviewError {
    /// Kubernetes' aggregate of several failures; one failure stays itself.
    pub fn aggregate(mut errors: Vec<ReviewError>) -> ReviewError {
        match errors.len() {
            0 => ReviewError::InvalidBearerToken,
            1 => errors.pop().unwrap_or(ReviewError::InvalidBearerToken),
            _ => ReviewError::Aggregate(errors),
        }
    }
}

impl From<SignatureError> for ReviewError {
    fn from(e: SignatureError) -> Self {
        ReviewError::Signature(e)
    }
}

impl fmt::Display for ReviewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReviewError::TooLong { len, max } => write!(
                f,
                "token is too long: {len} bytes, at most {max} are allowed"
            ),
            ReviewError::InvalidBearerToken => f.write_str(INVALID_BEARER_TOKEN),
            ReviewError::MalformedToken => f.write_str(MALFORMED_TOKEN),
            ReviewError::UnsupportedAlgorithm => f.write_str(UNSUPPORTED_ALGORITHM),
            ReviewError::UnsupportedCriticalHeader => f.write_str(UNSUPPORTED_CRITICAL_HEADER),
            ReviewError::Signature(e) => e.fmt(f),
            ReviewError::InvalidIssuer(iss) => {
                write!(f, "token issuer {} is invalid", go_quote(iss))
            }
            ReviewError::InvalidAudiences { token, requested } => write!(
                f,
                "token audiences {} is invalid for the target audiences {}",
                go_quote_list(token),
                go_quote_list(requested)
            ),
            ReviewError::NotValidYet => f.write_str(TOKEN_NOT_VALID_YET),
            ReviewError::Expired => f.write_str(TOKEN_EXPIRED),
            ReviewError::IssuedInFuture => f.write_str(TOKEN_ISSUED_IN_FUTURE),
            // The live GET fails before the request for an empty name.
            ReviewError::NotFound { name, .. } if name.is_empty() => {
                f.write_str("resource name may not be empty")
            }
            ReviewError::NotFound { resource, name } => {
                write!(f, "{resource} {} not found", go_quote(name))
            }
            ReviewError::ServiceAccountUid(m) => write!(
                f,
                "service account UID ({}) does not match claim ({})",
                m.actual, m.claim
            ),
            ReviewError::ServiceAccountDeleted { namespace, name } => {
                write!(f, "service account {namespace}/{name} has been deleted")
            }
            ReviewError::SecretUid(m) => write!(
                f,
                "secret UID ({}) does not match service account secret ref claim ({})",
                m.actual, m.claim
            ),
            ReviewError::PodUid(m) => write!(
                f,
                "pod UID ({}) does not match service account pod ref claim ({})",
                m.actual, m.claim
            ),
            ReviewError::NodeUid(m) => write!(
                f,
                "node UID ({}) does not match service account node ref claim ({})",
                m.actual, m.claim
            ),
            ReviewError::Invalidated => f.write_str(TOKEN_INVALIDATED),
            ReviewError::Revoked => f.write_str(TOKEN_REVOKED),
            ReviewError::MissingClaim(claim) => write!(f, "{claim} claim is missing"),
            ReviewError::InvalidSubject => f.write_str("sub claim is invalid"),
            ReviewError::LegacyInvalidated => f.write_str(LEGACY_TOKEN_INVALIDATED),
            ReviewError::LegacyMismatch => f.write_str(LEGACY_TOKEN_MISMATCH),
            ReviewError::LegacyServiceAccountDeleted { namespace, name } => {
                write!(f, "ServiceAccount {namespace}/{name} has been deleted")
            }
            ReviewError::LegacyServiceAccountUid(m) => write!(
                f,
                "ServiceAccount UID ({}) does not match claim ({})",
                m.actual, m.claim
            ),
            ReviewError::MarkedInvalid {
                namespace,
                secret,
                service_account,
            } => write!(
                f,
                "the token in secret {namespace}/{secret} for service account {namespace}/{service_account} has been marked invalid. Use tokens from the TokenRequest API or manually created secret-based tokens, or remove the '{INVALID_SINCE_LABEL}' label from the secret to temporarily allow use of this token"
            ),
            ReviewError::Aggregate(errors) => {
                let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
                f.write_str(&aggregate_errors(&texts))
            }
        }
    }
}

impl std::error::Error for ReviewError {}
