//! Postgres-only: the LISTEN task that turns `NOTIFY badge_changes` from any
//! process into updates of this process's revision watch.
//!
//! No polling: the task sleeps in `recv` until a notification arrives. Whenever the
//! LISTEN connection is (re)established, notifications may have been missed, so the
//! task re-reads the revision counter *after* LISTEN is in place and publishes it.
//! The task ends when the last `Store` clone is dropped (its stop receiver fires).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{oneshot, watch};

use crate::{CHANNEL, current_revision, publish};

/// Longest pause between attempts to re-establish the LISTEN connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) fn spawn(
    connect: PgConnectOptions,
    connect_timeout: Duration,
    pool: PgPool,
    revision: watch::Sender<i64>,
    stop: oneshot::Receiver<()>,
) {
    // A dedicated single-connection pool: sqlx's PgListener uses it to reconnect,
    // and it keeps the long-lived LISTEN connection out of the query pool.
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(connect_timeout)
        .connect_lazy_with(connect);
    tokio::spawn(async move {
        tokio::select! {
            // Fires (with Err) when the last Store clone drops the sender.
            _ = stop => {}
            () = run(listen_pool, pool, revision) => {}
        }
        tracing::debug!("store change listener stopped");
    });
}

async fn run(listen_pool: PgPool, pool: PgPool, revision: watch::Sender<i64>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match listen(&listen_pool, &pool, &revision, &mut backoff).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "store change listener lost its connection");
            }
        }
        tokio::time::sleep(backoff).await;
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
