//! Legacy-token tracking (reference §6.2): when a legacy (Secret-based) token is
//! used — reviewed through TokenReview or the webhook, or presented as an
//! `authorization: Bearer` credential to any Badge service — and its Secret's
//! `kubernetes.io/legacy-token-last-used` label is neither today nor tomorrow
//! (UTC), the label is set to today's date. Without it, identity's cleaner would
//! mark a token that is in daily use as unused and, a period later, invalidate it.
//!
//! Off the request path: a review only `try_send`s `(namespace, secret)` onto a
//! bounded queue ([`Reviewer::last_used`](crate::Reviewer)); a full queue drops
//! the note (the next use queues it again). [`LastUsed::run`] writes at most once
//! per Secret per UTC day per process: Get, set the label, Update guarded by the
//! resource_version read, one retry on a conflict. Other replicas see the new
//! label through the feed and do not queue the Secret again that day.
//!
//! Where the write goes ([`Secrets`]): identity owns Secrets and writes them
//! through its store; token-review and the token-issuer go through identity's
//! `SecretService` with their client certificate.

use std::collections::HashMap;
use std::sync::Arc;

use badge_core::clock::{last_used_needs_update, utc_date};
use badge_core::review::LAST_USED_LABEL;
use badge_core::{Clock, Error, Kind};
use badge_proto::identity::{self as pb, secret_service_client::SecretServiceClient};
use badge_records::{decode, encode};
use badge_runtime::telemetry::TracedChannel;
use badge_store::{Op, Precondition, Store};
use tokio::sync::mpsc;
use tonic::Code;

use crate::reviewer::LastUse;

/// Capacity of the queue between reviews and the writer.
pub const QUEUE: usize = 4096;
/// Secrets remembered as done today before the memory is trimmed.
const MAX_REMEMBERED: usize = 100_000;

/// Where the label is written.
pub enum Secrets {
    /// identity's SecretService (token-review, token-issuer).
    Grpc(SecretServiceClient<TracedChannel>),
    /// The store itself (identity, which owns Secrets).
    Store(Store),
}

pub struct LastUsed {
    pub secrets: Secrets,
    pub clock: Arc<dyn Clock>,
}

/// What one write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Marked {
    Written,
    /// Already today or tomorrow, or the Secret is gone.
    NotNeeded,
}

impl LastUsed {
    /// The queue to hand to [`crate::start`] and the task that drains it (spawn
    /// it; it ends when every sender is gone).
    pub fn queue(
        self,
    ) -> (
        mpsc::Sender<LastUse>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (tx, self.run(rx))
    }

    /// Sets the label on one Secret.
    pub async fn mark(&self, namespace: &str, name: &str) -> Result<Marked, tonic::Status> {
        match &self.secrets {
            Secrets::Grpc(client) => self.mark_grpc(client, namespace, name).await,
            Secrets::Store(store) => self
                .mark_store(store, namespace, name)
                .await
                .map_err(badge_runtime::status::to_status),
        }
    }

    async fn mark_grpc(
        &self,
        client: &SecretServiceClient<TracedChannel>,
        namespace: &str,
        name: &str,
    ) -> Result<Marked, tonic::Status> {
        for attempt in 0..2 {
            let got = client
                .clone()
                .get_secret(pb::GetSecretRequest {
                    namespace: namespace.into(),
                    name: name.into(),
                })
                .await;
            let mut secret = match got {
                Ok(s) => s.into_inner(),
                Err(e) if e.code() == Code::NotFound => return Ok(Marked::NotNeeded),
                Err(e) => return Err(e),
            };
            let now = self.clock.now();
            let meta = secret.metadata.get_or_insert_with(Default::default);
            if !last_used_needs_update(meta.labels.get(LAST_USED_LABEL).map(String::as_str), now) {
                return Ok(Marked::NotNeeded);
            }
            meta.labels.insert(LAST_USED_LABEL.into(), utc_date(now));
            // `resource_version` as read: a concurrent write makes this ABORTED.
            match client
                .clone()
                .update_secret(pb::UpdateSecretRequest {
                    secret: Some(secret),
                })
                .await
            {
                Ok(_) => return Ok(Marked::Written),
                Err(e) if e.code() == Code::Aborted && attempt == 0 => continue,
                Err(e) if e.code() == Code::NotFound => return Ok(Marked::NotNeeded),
                Err(e) => return Err(e),
            }
        }
        Err(tonic::Status::aborted(
            "the secret kept changing while its last-used label was written",
        ))
    }

    /// The same read-check-write on the store: pinned to the version read (uid
    /// and resource_version), so a Secret re-created or changed meanwhile is
    /// never overwritten with old data.
    async fn mark_store(
        &self,
        store: &Store,
        namespace: &str,
        name: &str,
    ) -> Result<Marked, Error> {
        for attempt in 0..2 {
            let record = match store.get(Kind::Secret, namespace, name).await {
                Ok(r) => r,
                Err(Error::NotFound(_)) => return Ok(Marked::NotNeeded),
                Err(e) => return Err(e),
            };
            let mut secret: pb::Secret = decode(&record)?;
            let now = self.clock.now();
            let meta = secret.metadata.get_or_insert_with(Default::default);
            if !last_used_needs_update(meta.labels.get(LAST_USED_LABEL).map(String::as_str), now) {
                return Ok(Marked::NotNeeded);
            }
            meta.labels.insert(LAST_USED_LABEL.into(), utc_date(now));
            let (labels, data) = encode(&secret);
            let written = store
                .apply(
                    vec![Op::Update {
                        kind: Kind::Secret,
                        namespace: namespace.into(),
                        name: name.into(),
                        precondition: Precondition {
                            resource_version: Some(record.resource_version),
                            uid: Some(record.uid.clone()),
                        },
                        labels,
                        data,
                        deletion_timestamp: record.deletion_timestamp,
                    }],
                    now,
                )
                .await;
            match written {
                Ok(_) => return Ok(Marked::Written),
                Err(Error::Conflict(_)) if attempt == 0 => continue,
                Err(Error::NotFound(_)) => return Ok(Marked::NotNeeded),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(
            "the secret kept changing while its last-used label was written".into(),
        ))
    }

    /// Drains the queue until every sender is gone.
    pub async fn run(self, mut rx: mpsc::Receiver<LastUse>) {
        let mut done: HashMap<(String, String), String> = HashMap::new();
        while let Some((namespace, name, trace)) = rx.recv().await {
            let key = (namespace, name);
            let today = utc_date(self.clock.now());
            if done.get(&key) == Some(&today) {
                continue;
            }
            if done.len() >= MAX_REMEMBERED {
                done.retain(|_, d| *d == today);
                if done.len() >= MAX_REMEMBERED {
                    done.clear();
                }
            }
            let (namespace, name) = (&key.0, &key.1);
            // A span in the trace of the review that used the token; its calls to
            // identity carry it on.
            let span = tracing::info_span!("legacy_token.last_used", %namespace, secret = %name);
            let marked =
                badge_runtime::telemetry::in_span(span, trace, self.mark(namespace, name)).await;
            match marked {
                Ok(m) => {
                    if m == Marked::Written {
                        tracing::info!(%namespace, secret = %name, date = %today, "legacy token use recorded");
                    }
                    done.insert(key, today);
                }
                Err(e) => tracing::warn!(
                    %namespace,
                    secret = %name,
                    code = ?e.code(),
                    error = %e.message(),
                    "recording legacy token use failed; the next use retries"
                ),
            }
        }
    }
}
