//! What one gRPC listener lets a client use, before and after authentication.
//!
//! Security: an identity service is reachable by callers it has not authenticated
//! yet (bearer tokens need no client certificate), so every resource a connection
//! can hold is bounded, and the ones an unauthenticated caller can reach are small:
//!
//! | resource | bound | who can use it |
//! |---|---|---|
//! | connections | `max_connections` (excess ones are closed at once) | anyone who reaches the port |
//! | TLS handshake | 10 s | anyone |
//! | idle connection (no request in flight) | `idle_timeout_seconds` | any client |
//! | streams per connection | `max_concurrent_streams` (HTTP/2 SETTINGS) | any TLS client |
//! | header block | `max_header_list_bytes` | any TLS client |
//! | request body | not read at all before the credential is checked | unauthenticated callers: 0 bytes |
//! | request message | per method: [`DEFAULT_MAX_REQUEST`], Secret writes [`SECRET_MAX_REQUEST`] | authenticated callers |
//! | bytes buffered for authorization | `max_buffered_bytes` for the whole process | authenticated callers |
//! | dead peers | HTTP/2 PING every 30 s, closed after `keepalive_timeout_seconds` without an answer | — |

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

/// The largest request message of most methods: objects with Kubernetes' own
/// limits (256 KiB of annotations) and tokens (64 KiB) fit with room to spare.
pub const DEFAULT_MAX_REQUEST: usize = 512 * 1024;
/// Secret writes: Kubernetes caps a Secret's data at 1 MiB; its encoding and
/// metadata need a little more.
pub const SECRET_MAX_REQUEST: usize = 2 * 1024 * 1024;

/// `[server.limits]` of every service (all optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections on this listener; more are closed right after accept.
    pub max_connections: usize,
    /// HTTP/2 streams a connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Bytes of request headers (HPACK-decoded) per request.
    pub max_header_list_bytes: u32,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout_seconds: u64,
    /// A peer that does not answer a keep-alive PING within this is dropped.
    pub keepalive_timeout_seconds: u64,
    /// Request bytes held in memory for authorization, across all connections.
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_concurrent_streams: 256,
            max_header_list_bytes: 16 * 1024,
            idle_timeout_seconds: 300,
            keepalive_timeout_seconds: 20,
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn validate(&self, section: &str, errors: &mut Vec<String>) {
        let checks: [(&str, u64, u64); 6] = [
            ("max_connections", self.max_connections as u64, 1),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
                1,
            ),
            (
                "max_header_list_bytes",
                u64::from(self.max_header_list_bytes),
                1024,
            ),
            ("idle_timeout_seconds", self.idle_timeout_seconds, 1),
            (
                "keepalive_timeout_seconds",
                self.keepalive_timeout_seconds,
                1,
            ),
            (
                "max_buffered_bytes",
                self.max_buffered_bytes as u64,
                SECRET_MAX_REQUEST as u64,
            ),
        ];
        for (key, value, min) in checks {
            if value < min {
                errors.push(format!(
                    "{section}.limits.{key}: {value} is below the minimum {min}"
                ));
            }
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_seconds)
    }
}

/// The process-wide budget of request bytes buffered for authorization.
#[derive(Clone)]
pub struct BufferBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl BufferBudget {
    pub fn new(total: usize) -> Self {
        BufferBudget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Reserves `n` bytes, waiting at most `wait`; `None` when the server is too
    /// busy (the caller answers RESOURCE_EXHAUSTED).
    pub async fn reserve(
        &self,
        n: usize,
        wait: Duration,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        // The usual case, room now: no timer is armed (every request passes here).
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(n) {
            return Some(permit);
        }
        tokio::time::timeout(wait, self.bytes.clone().acquire_many_owned(n))
            .await
            .ok()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeroes_are_named() {
        let mut errors = Vec::new();
        Limits::default().validate("server", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let zero = Limits {
            max_connections: 0,
            max_buffered_bytes: 1,
            ..Limits::default()
        };
        zero.validate("server", &mut errors);
        assert_eq!(
            errors,
            vec![
                "server.limits.max_connections: 0 is below the minimum 1".to_string(),
                format!(
                    "server.limits.max_buffered_bytes: 1 is below the minimum {SECRET_MAX_REQUEST}"
                ),
            ]
        );
    }

    #[tokio::test]
    async fn the_budget_refuses_when_exhausted_and_refills_on_release() {
        let b = BufferBudget::new(1000);
        let first = b.reserve(800, Duration::from_millis(10)).await;
        assert!(first.is_some());
        assert!(b.reserve(300, Duration::from_millis(10)).await.is_none());
        drop(first);
        assert!(b.reserve(300, Duration::from_millis(10)).await.is_some());
        assert!(b.reserve(1001, Duration::from_millis(10)).await.is_none());
    }
}
