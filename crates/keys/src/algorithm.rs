use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// JWS algorithm of a service-account signing key.
///
/// Kubernetes maps RSA keys to RS256 only, P-256 to ES256 and P-384 to ES384
/// (`k/k:pkg/serviceaccount/jwt.go`). Badge generates RS256 or ES256 keys; ES384 exists for
/// P-384 keys loaded from PEM files, as kube-apiserver accepts them.
///
/// Variants are declared in the lexical order of their names, so sorting algorithms with `Ord`
/// gives the sorted `id_token_signing_alg_values_supported` list of the discovery document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "RS256" => Ok(Algorithm::RS256),
            "ES256" => Ok(Algorithm::ES256),
            "ES384" => Ok(Algorithm::ES384),
            // Bound the echoed input: it comes from configuration or a request.
            other => Err(Error::UnknownAlgorithm(other.chars().take(32).collect())),
        }
    }
}
