//! A revoked token, as stored (Kind::Revocation, named by its jti) and read by
//! every token-review replica.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub jti: String,
    /// Kept until then; after it the token is expired anyway and the record is
    /// pruned.
    pub expires_at_unix: i64,
    pub revoked_at_unix: i64,
    pub revoked_by: String,
    #[serde(default)]
    pub reason: String,
}

impl Revocation {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        serde_json::from_slice(b).map_err(|e| Error::Internal(format!("stored revocation: {e}")))
    }
}

/// Accepts `JTI=<jti>` (the credential id) or a bare jti; returns the jti. A jti
/// Badge issues is a UUID; anything outside `[A-Za-z0-9-]{1,128}` is refused so a
/// revocation can never name something odd.
pub fn parse_credential_id(field: &str, value: &str) -> Result<String> {
    let jti = value.strip_prefix("JTI=").unwrap_or(value);
    let ok = !jti.is_empty()
        && jti.len() <= 128
        && jti.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(jti.to_string())
    } else {
        Err(Error::invalid(
            field,
            format!("invalid credential id {value:?}: expected JTI=<jti> or a bare jti"),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credential_ids() {
        let id = "0b5c6f3e-8f43-4a39-8e0f-0d6b1f0b9a11";
        assert_eq!(parse_credential_id("c", &format!("JTI={id}")).unwrap(), id);
        assert_eq!(parse_credential_id("c", id).unwrap(), id);
        for bad in ["", "JTI=", "../x", "a b", &"a".repeat(129), "JTI=x;DROP"] {
            assert!(parse_credential_id("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn round_trip() {
        let r = Revocation {
            jti: "x".into(),
            expires_at_unix: 2,
            revoked_at_unix: 1,
            revoked_by: "admin".into(),
            reason: "leaked".into(),
        };
        assert_eq!(Revocation::from_bytes(&r.to_bytes()).unwrap(), r);
    }
}
