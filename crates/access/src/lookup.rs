//! The liveness checks' view of the world: the in-memory index, never the
//! database. uid and deletion timestamp come straight from the stored record; only
//! Secrets (token digest) and ServiceAccounts (their `secrets` list) are decoded,
//! and only when a check needs them (secret-bound and legacy tokens).

use std::cell::Cell;
use std::time::SystemTime;

use badge_core::Kind;
use badge_core::review::{
    INVALID_SINCE_LABEL, LAST_USED_LABEL, ObjectLookup, ObjectState, SecretState, token_sha256,
};
use badge_core::revocation::Revocation;
use badge_proto::identity::{Secret, ServiceAccount};
use badge_records::{Entry, Index, decode};
use badge_store::Record;

/// Reads `index`; remembers whether any object was consulted (the review got past
/// the signature and claim checks), so a failure can be re-checked after the index
/// catches up with the store.
pub struct IndexLookup<'a> {
    index: &'a Index,
    now: SystemTime,
    consulted: Cell<bool>,
    revoked: Cell<bool>,
}

impl<'a> IndexLookup<'a> {
    pub fn new(index: &'a Index, now: SystemTime) -> Self {
        IndexLookup {
            index,
            now,
            consulted: Cell::new(false),
            revoked: Cell::new(false),
        }
    }

    pub fn consulted(&self) -> bool {
        self.consulted.get()
    }

    /// Whether a Revocation record revoked the token (the review then fails with
    /// "has been revoked"): a fact from the index, so callers need not compare
    /// error texts.
    pub fn revoked_seen(&self) -> bool {
        self.revoked.get()
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Record> {
        self.consulted.set(true);
        self.index.get(kind, namespace, name)
    }

    /// The liveness facts alone, without copying the record.
    fn state(&self, kind: Kind, namespace: &str, name: &str) -> Option<ObjectState> {
        self.consulted.set(true);
        self.index.map(kind, namespace, name, state)
    }
}

fn state(e: &Entry) -> ObjectState {
    ObjectState {
        uid: e.uid(),
        deletion_timestamp: e.deletion_timestamp(),
    }
}

impl ObjectLookup for IndexLookup<'_> {
    fn service_account(&self, ns: &str, name: &str) -> Option<ObjectState> {
        self.state(Kind::ServiceAccount, ns, name)
    }

    fn service_account_secrets(&self, ns: &str, name: &str) -> Vec<String> {
        let Some(r) = self.get(Kind::ServiceAccount, ns, name) else {
            return Vec::new();
        };
        match decode::<ServiceAccount>(&r) {
            Ok(sa) => sa.secrets.into_iter().map(|s| s.name).collect(),
            Err(e) => {
                tracing::error!(namespace = ns, service_account = name, error = %e, "undecodable service account record");
                Vec::new()
            }
        }
    }

    fn pod(&self, ns: &str, name: &str) -> Option<ObjectState> {
        self.state(Kind::Pod, ns, name)
    }

    fn secret(&self, ns: &str, name: &str) -> Option<SecretState> {
        let r = self.get(Kind::Secret, ns, name)?;
        let token_sha256 = match decode::<Secret>(&r) {
            Ok(s) => s
                .data
                .get("token")
                .filter(|t| !t.is_empty())
                .map(|t| token_sha256(t)),
            Err(e) => {
                // Never matches: a legacy token of this Secret fails closed.
                tracing::error!(namespace = ns, secret = name, error = %e, "undecodable secret record");
                None
            }
        };
        Some(SecretState {
            invalid_since: r
                .labels
                .get(INVALID_SINCE_LABEL)
                .is_some_and(|v| !v.is_empty()),
            last_used: r.labels.get(LAST_USED_LABEL).cloned(),
            uid: r.uid,
            deletion_timestamp: r.deletion_timestamp,
            token_sha256,
        })
    }

    fn node(&self, name: &str) -> Option<ObjectState> {
        self.state(Kind::Node, "", name)
    }

    /// A Revocation record named by the jti revokes until its `expires_at` (the
    /// issuer prunes it after that); an unreadable record revokes.
    fn revoked(&self, jti: &str) -> bool {
        let Some(r) = self.get(Kind::Revocation, "", jti) else {
            return false;
        };
        let revoked = match Revocation::from_bytes(&r.data) {
            Ok(rev) => rev.expires_at_unix >= badge_core::token::unix_seconds(self.now),
            Err(_) => true,
        };
        self.revoked.set(revoked);
        revoked
    }
}
