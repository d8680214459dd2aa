//! Legacy Secret tokens (reference §2.3, §6.4), the tokens controller of
//! kube-controller-manager: a Secret of type `kubernetes.io/service-account-token`
//! annotated `kubernetes.io/service-account.name` gets a long-lived legacy token,
//! its namespace and the CA; its service account missing → the Secret is deleted;
//! a service account's deletion deletes its token Secrets. Secrets belong to the
//! identity service, so every write goes through identity's API (mTLS, this
//! service's own certificate), guarded by resource_version / uid preconditions:
//! replicas racing each other lose harmlessly.

use std::sync::Arc;
use std::time::Duration;

use badge_core::token::legacy_claims;
use badge_core::{Clock, Error, Kind, Result};
use badge_proto::identity::{self as pb, Secret, secret_service_client::SecretServiceClient};
use badge_records::{Index, decode};
use badge_store::{EventType, ListQuery, Record, Store};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Code;

use crate::keyring::KeyRing;

pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

#[derive(Clone)]
pub struct LegacyTokens {
    pub store: Store,
    pub index: Index,
    pub ring: Arc<KeyRing>,
    pub clock: Arc<dyn Clock>,
    pub secrets: SecretServiceClient<badge_runtime::telemetry::TracedChannel>,
    /// `ca.crt` written into every token Secret.
    pub ca_pem: Vec<u8>,
}

/// The kid in a compact JWT's header, if it parses.
fn token_kid(token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    let header = text.split('.').next()?;
    let raw = URL_SAFE_NO_PAD.decode(header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("kid")?.as_str().map(str::to_string)
}

fn rpc_error(e: tonic::Status) -> Error {
    match e.code() {
        Code::NotFound => Error::NotFound(e.message().into()),
        Code::Aborted => Error::Conflict(e.message().into()),
        Code::Unavailable => Error::Unavailable(e.message().into()),
        _ => Error::Internal(format!("identity: {e}")),
    }
}

impl LegacyTokens {
    async fn reconcile(&self, record: &Record) -> Result<()> {
        let secret: Secret = decode(record)?;
        if secret.r#type != TOKEN_SECRET_TYPE {
            return Ok(());
        }
        let meta = secret.metadata.clone().unwrap_or_default();
        if meta.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(sa_name) = meta
            .annotations
            .get(SA_NAME_ANNOTATION)
            .filter(|s| !s.is_empty())
        else {
            return Ok(());
        };
        let want_uid = meta
            .annotations
            .get(SA_UID_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        // Read from the store, not the index: this reacts to feed entries the index
        // may not have applied yet, and deleting a Secret on stale data is not undoable.
        let sa = self
            .index
            .fresh(Kind::ServiceAccount, &meta.namespace, sa_name)
            .await?;
        let sa = match sa {
            Some(sa) if want_uid.is_empty() || sa.uid == want_uid => sa,
            _ => {
                // Its service account is gone (or was recreated): the token must go.
                return self.delete(&meta.namespace, &meta.name, &record.uid).await;
            }
        };
        let token_ok = secret
            .data
            .get("token")
            .filter(|t| !t.is_empty())
            .and_then(|t| token_kid(t))
            // A token whose key was removed no longer verifies: mint a new one.
            .is_some_and(|kid| self.ring.publishes(&kid));
        let ns_ok = secret
            .data
            .get("namespace")
            .is_some_and(|n| n == meta.namespace.as_bytes());
        let ca_ok = secret.data.get("ca.crt").is_some_and(|c| *c == self.ca_pem);
        if token_ok && ns_ok && ca_ok && want_uid == sa.uid {
            return Ok(());
        }
        let mut updated = secret.clone();
        if !token_ok {
            let key = self
                .ring
                .active(self.clock.now())
                .ok_or_else(|| Error::Unavailable("no signing key is active yet".into()))?;
            let claims = legacy_claims(&meta.namespace, sa_name, &sa.uid, &meta.name);
            let payload = serde_json::to_vec(&claims)
                .map_err(|e| Error::Internal(format!("legacy claims: {e}")))?;
            let jwt = key
                .sign_jwt(&key.jwt_header(false), &payload)
                .map_err(|e| Error::Internal(format!("signing: {e}")))?;
            updated.data.insert("token".into(), jwt.into_bytes());
            tracing::info!(
                target: "audit",
                event = "legacy_token.issued",
                namespace = %meta.namespace,
                secret = %meta.name,
                service_account = %sa_name,
                kid = %key.kid(),
                "minted legacy service account token"
            );
        }
        updated
            .data
            .insert("namespace".into(), meta.namespace.clone().into_bytes());
        updated.data.insert("ca.crt".into(), self.ca_pem.clone());
        let m = updated.metadata.get_or_insert_with(Default::default);
        m.annotations
            .insert(SA_UID_ANNOTATION.into(), sa.uid.clone());
        // Guarded by the version we read: a concurrent change wins and we retry on
        // its feed entry.
        m.resource_version = record.resource_version.to_string();
        match self
            .secrets
            .clone()
            .update_secret(pb::UpdateSecretRequest {
                secret: Some(updated),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound) => Ok(()),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn delete(&self, namespace: &str, name: &str, uid: &str) -> Result<()> {
        let r = self
            .secrets
            .clone()
            .delete_secret(pb::DeleteSecretRequest {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.into(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => {
                tracing::info!(
                    namespace,
                    secret = name,
                    "deleted token secret of a missing service account"
                );
                Ok(())
            }
            Err(e) if matches!(e.code(), Code::Aborted | Code::NotFound) => Ok(()),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn all_secrets(&self, namespace: Option<&str>) -> Result<(Vec<Record>, i64)> {
        let all = |_: &Record| true;
        let page = self
            .store
            .list(ListQuery {
                kind: Kind::Secret,
                namespace,
                after: None,
                limit: 0,
                filter: &all,
            })
            .await?;
        Ok((page.items, page.revision))
    }

    async fn reconcile_all(&self, secrets: &[Record]) {
        for s in secrets {
            if let Err(e) = self.reconcile(s).await {
                tracing::warn!(namespace = %s.namespace, secret = %s.name, error = %e, "legacy token");
            }
        }
    }

    async fn pass(&self) -> Result<()> {
        let (secrets, cursor) = self.all_secrets(None).await?;
        self.reconcile_all(&secrets).await;
        // Served by the store's feed relay (one database read per change per process).
        let mut follower = self.store.follow(cursor);
        loop {
            let batch = follower.next(500).await?;
            if batch.entries.is_empty() {
                if !follower.changed().await {
                    return Ok(());
                }
                continue;
            }
            let mut full_resync = false;
            let mut namespaces = std::collections::BTreeSet::new();
            for entry in &batch.entries {
                let ch = entry.change()?;
                match (ch.record.kind, ch.event) {
                    (Kind::Secret, EventType::Added | EventType::Modified) => {
                        if let Err(e) = self.reconcile(&ch.record).await {
                            tracing::warn!(secret = %ch.record.name, error = %e, "legacy token");
                        }
                    }
                    // A service account went: its namespace's token Secrets.
                    (Kind::ServiceAccount, EventType::Deleted) => {
                        namespaces.insert(ch.record.namespace.clone());
                    }
                    // A key was removed: tokens it signed need re-minting.
                    (Kind::SigningKey, EventType::Deleted) => full_resync = true,
                    _ => {}
                }
            }
            if full_resync {
                // Let the key ring apply the same feed entries first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let (secrets, _) = self.all_secrets(None).await?;
                self.reconcile_all(&secrets).await;
            } else {
                for ns in namespaces {
                    let (secrets, _) = self.all_secrets(Some(&ns)).await?;
                    self.reconcile_all(&secrets).await;
                }
            }
        }
    }

    pub async fn run(self) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "legacy token controller restarting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
