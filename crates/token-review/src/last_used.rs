//! Legacy-token tracking (reference §6.2): when a legacy (Secret-based) token is
//! used and its Secret's `kubernetes.io/legacy-token-last-used` label is neither
//! today nor tomorrow (UTC), the label is set to today's date.
//!
//! Off the review path: a review only `try_send`s `(namespace, secret)` onto a
//! bounded queue (a full queue drops the note; the next use queues it again). This
//! task writes at most once per Secret per UTC day per process, through identity's
//! `SecretService` (Secrets belong to identity) with this service's client
//! certificate: Get, set the label, Update guarded by the resource_version read,
//! one retry on ABORTED. Other replicas see the new label through the feed and do
//! not queue the Secret again that day.

use std::collections::HashMap;
use std::sync::Arc;

use badge_core::Clock;
use badge_core::review::{LAST_USED_LABEL, last_used_needs_update, utc_date};
use badge_proto::identity::{self as pb, secret_service_client::SecretServiceClient};
use badge_runtime::telemetry::TracedChannel;
use tokio::sync::mpsc;
use tonic::Code;

/// Capacity of the queue between reviews and the writer.
pub const QUEUE: usize = 4096;
/// Secrets remembered as done today before the memory is trimmed.
const MAX_REMEMBERED: usize = 100_000;

pub struct LastUsed {
    pub secrets: SecretServiceClient<TracedChannel>,
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
    /// Sets the label on one Secret.
    pub async fn mark(&self, namespace: &str, name: &str) -> Result<Marked, tonic::Status> {
        for attempt in 0..2 {
            let got = self
                .secrets
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
            match self
                .secrets
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

    /// Drains the queue until every sender is gone.
    pub async fn run(self, mut rx: mpsc::Receiver<badge_access::reviewer::LastUse>) {
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
