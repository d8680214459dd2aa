//! Postgres-only: the LISTEN task that turns `NOTIFY badge_changes` from any
//! process into updates of this process's revision watch.
//!
//! No polling: the task sleeps in `recv` until a notification arrives. Whenever the
//! LISTEN connection is (re)established, notifications may have been missed, so the
//! task re-reads the revision counter *after* LISTEN is in place and publishes it.
//! The task ends when the last `Store` clone is dropped (its stop receiver fires).

use std::time::Duration;

use std::sync::Arc;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{oneshot, watch};

use crate::primary::Primary;
use crate::{CHANNEL, current_revision, publish};

/// Longest pause between attempts to re-establish the LISTEN connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) fn spawn(
    connect_timeout: Duration,
    primary: Arc<Primary>,
    revision: watch::Sender<i64>,
    stop: oneshot::Receiver<()>,
) {
    // Hold only a weak reference: the task must not keep the store's pools alive.
    let weak = Arc::downgrade(&primary);
    drop(primary);
    tokio::spawn(async move {
        tokio::select! {
            // Fires (with Err) when the last Store clone drops the sender.
            _ = stop => {}
            () = run(weak, connect_timeout, revision) => {}
        }
        tracing::debug!("store change listener stopped");
    });
}

async fn run(
    weak: std::sync::Weak<Primary>,
    connect_timeout: Duration,
    revision: watch::Sender<i64>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(primary) = weak.upgrade() else {
            return;
        };
        let mut generation = primary.generation();
        generation.mark_unchanged();
        // A dedicated single-connection pool on the current primary: sqlx's
        // PgListener uses it to reconnect, and it keeps the long-lived LISTEN
        // connection out of the query pool. Rebuilt after a switch of primary, so
        // LISTEN follows the primary (a replica would never see a NOTIFY).
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(connect_timeout)
            .connect_lazy_with(
                primary
                    .connect_options()
                    .application_name("badge-store-listener"),
            );
        let pool = primary.pool();
        drop(primary);
        let outcome = tokio::select! {
            r = listen(&listen_pool, &pool, &revision, &mut backoff) => r,
            _ = generation.changed() => Err("the store switched to a new primary".to_owned()),
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, retry_in = ?backoff, "store change listener lost its connection");
        }
        // Closed in the background: closing a connection to a frozen server must
        // not keep the listener from following the new primary.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), listen_pool.close()).await;
        });
        drop(pool);
        // The next session catches up (re-reads the counter after LISTEN), so
        // nothing committed meanwhile is missed. A switch of primary retries at once.
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = generation.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One LISTEN session; returns when it breaks.
async fn listen(
    listen_pool: &PgPool,
    pool: &PgPool,
    revision: &watch::Sender<i64>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut listener = PgListener::connect_with(listen_pool)
        .await
        .map_err(|e| e.to_string())?;
    listener.listen(CHANNEL).await.map_err(|e| e.to_string())?;
    catch_up(pool, revision).await?;
    *backoff = MIN_BACKOFF;
    tracing::debug!(channel = CHANNEL, "store change listener listening");
    loop {
        match listener.try_recv().await.map_err(|e| e.to_string())? {
            Some(n) => match n.payload().parse::<i64>() {
                Ok(rev) => crate::publish(revision, rev),
                Err(_) => tracing::warn!(
                    channel = CHANNEL,
                    "ignoring a notification whose payload is not a revision"
                ),
            },
            // The connection dropped and sqlx re-established it (LISTEN included):
            // anything committed meanwhile went unannounced.
            None => {
                tracing::info!("store change listener reconnected");
                catch_up(pool, revision).await?;
            }
        }
    }
}

async fn catch_up(pool: &PgPool, revision: &watch::Sender<i64>) -> Result<(), String> {
    let rev = current_revision(pool).await.map_err(|e| e.to_string())?;
    publish(revision, rev);
    Ok(())
}
