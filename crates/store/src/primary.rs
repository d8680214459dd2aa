//! Postgres-only: which server the store talks to.
//!
//! sqlx has no multi-host support, so the store does libpq's part itself:
//! `postgres://user@h1:p1,h2:p2,h3:p3/db?target_session_attrs=read-write` names
//! several servers of one HA cluster (Patroni); the store connects to the one that
//! accepts writes (`pg_is_in_recovery()` = false) and, when the current one fails or
//! turns read-only, finds the new primary and swaps in a pool for it.
//!
//! A single-host URL is one fixed pool, exactly as before: no monitor task and no
//! extra query on any path. With several hosts one task watches the primary (one
//! `SELECT pg_is_in_recovery()` every [`MONITOR_EVERY`] on its own connection, off
//! the request path) and is woken at once by a query that failed in a way that
//! means "this is no longer the primary".

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::sync::{Notify, watch};

/// Bound on probing one host (connect and query): a frozen server (SIGSTOP)
/// accepts TCP but never answers, and must not stall discovery. Also the bound on a
/// request's wait for a pool connection (see `Store::connect`).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the monitor checks that the current primary still accepts writes.
const MONITOR_EVERY: Duration = Duration::from_millis(500);
// Short and capped low: a planned switchover leaves the cluster without a
// primary for about a second, and every extra pause here adds to the write
// gap. A probe is one short connection per host, cheap even every 250 ms.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// A database URL split into its host list and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostList {
    /// One single-host URL per host, in the order given, without
    /// `target_session_attrs` (which only makes sense for the list as a whole).
    pub urls: Vec<String>,
    /// `host:port` per host, for logs (no credentials).
    pub labels: Vec<String>,
}

/// Splits a libpq-style multi-host URL. `Ok(None)`: one host, use the URL as is.
/// Only `target_session_attrs=read-write` (or none) is accepted with several hosts,
/// because that is the only behaviour implemented: a store always needs to write.
pub(crate) fn parse_hosts(url: &str) -> Result<Option<HostList>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("has no scheme".to_owned());
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let (userinfo, hostpart) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hostpart.contains(',') {
        return Ok(None);
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut kept = Vec::new();
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        match param.split_once('=') {
            Some(("target_session_attrs", "read-write" | "any" | "primary")) => {}
            Some(("target_session_attrs", other)) => {
                return Err(format!(
                    "target_session_attrs={other} is not supported (a store needs the \
                     read-write server: use read-write)"
                ));
            }
            _ if param.is_empty() => {}
            _ => kept.push(param),
        }
    }
    let tail = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut urls = Vec::new();
    let mut labels = Vec::new();
    for host in hostpart.split(',') {
        let (name, port) = split_port(host)?;
        if name.is_empty() {
            return Err(format!("has an empty host in the host list {hostpart:?}"));
        }
        let label = match port {
            Some(p) => format!("{name}:{p}"),
            None => name.to_owned(),
        };
        urls.push(format!("{scheme}://{userinfo}{label}{tail}"));
        labels.push(label);
    }
    Ok(Some(HostList { urls, labels }))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_port(host: &str) -> Result<(&str, Option<u16>), String> {
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, "")) => return Ok((&host[..addr.len() + 2], None)),
            Some((addr, rest)) => (
                &host[..addr.len() + 2],
                rest.strip_prefix(':')
                    .ok_or_else(|| format!("has a bad host {host:?}"))?,
            ),
            None => return Err(format!("has a bad host {host:?}")),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, p),
            None => return Ok((host, None)),
        }
    };
    port.parse::<u16>()
        .map(|p| (name, Some(p)))
        .map_err(|_| format!("has a bad port in host {host:?}"))
}

/// Pause before the next round of probing after `attempt` rounds found no
/// primary: exponential, capped, with jitter in [50 %, 100 %] so the replicas of a
/// service do not probe in lockstep. `jitter` is in [0, 1].
pub(crate) fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1_u32 << attempt.min(10))
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Whether a failed statement means the server we talk to may no longer be the
/// primary: it is gone (I/O, connection refused, pool timed out on connecting),
/// shutting down (57P01 admin shutdown, 57P02/57P03), a connection exception
/// (class 08), or it is now read-only (25006: a demoted primary).
pub(crate) fn suggests_failover(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c == "25006" || c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

/// Outcomes of a query, as `with_pool!` sees them (a body may also have returned
/// its error early with `?`, then there is nothing to see).
pub(crate) trait Observed {
    fn suggests_failover(&self) -> bool {
        false
    }
}

impl<T> Observed for sqlx::Result<T> {
    fn suggests_failover(&self) -> bool {
        self.as_ref().err().is_some_and(suggests_failover)
    }
}

impl<T> Observed for Option<T> {}
impl<T> Observed for Vec<T> {}

fn jitter() -> f64 {
    // Not security-relevant: only spreads retries apart (a v4 UUID is the
    // random source this crate already has).
    f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 256.0
}

/// The current query pool, and for a multi-host URL the means to replace it.
pub(crate) struct Primary {
    pool: RwLock<(usize, PgPool)>,
    multi: Option<Multi>,
    /// Bumped on every switch; the LISTEN task follows it.
    generation: watch::Sender<u64>,
}

struct Multi {
    hosts: Vec<PgConnectOptions>,
    labels: Vec<String>,
    max_connections: u32,
    acquire_timeout: Duration,
    kick: Notify,
}

/// `pool.begin_with(statement)` in a task of its own, so that the caller's
/// cancellation (a timeout, a `select!`) cannot cut BEGIN in half.
///
/// Why: sqlx 0.9 guards an interrupted BEGIN with a rollback that fires only once
/// the transaction depth is counted, which happens after BEGIN's answer is read. A
/// caller dropped in between returns the connection to the pool inside the
/// transaction BEGIN opened, uncounted, and the connection's next user runs in it:
/// after a read's `BEGIN … READ ONLY`, a write then fails with "cannot execute
/// UPDATE in a read-only transaction" (seen under load when the change-feed read's
/// timeout fired during BEGIN). In its own task BEGIN always completes; when nobody
/// waits for it any more the transaction is dropped there, counted, and sqlx rolls
/// it back before the connection is used again.
pub(crate) async fn begin_detached<DB: sqlx::Database>(
    pool: sqlx::Pool<DB>,
    statement: &'static str,
) -> sqlx::Result<sqlx::Transaction<'static, DB>> {
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .unwrap_or(Err(sqlx::Error::WorkerCrashed))
}

/// The pool of one database host. Every connection starts with sequential scans
/// off (see [`SESSION_SETUP`]).
pub(crate) fn build_pool(opts: PgConnectOptions, max: u32, acquire_timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(acquire_timeout)
        .after_connect(|conn, _| {
            Box::pin(async move { sqlx::query(SESSION_SETUP).execute(conn).await.map(drop) })
        })
        .connect_lazy_with(opts)
}

/// Run on every new connection. Every query Badge sends is a point or range
/// lookup that an index serves, but the planner only knows that from
/// statistics, and `objects` and `changes` grow by thousands of rows a second
/// between autovacuum's ANALYZE runs (a minute apart at best). With statistics
/// that still said "nearly empty" it planned a run's check as a hash join over a
/// whole-table scan and the relay's feed read as a scan and a sort, and the
/// generic plans of prepared statements kept those plans while the tables grew:
/// every batch read every row, and writes fell from ~5,000/s to ~2,500/s within
/// seconds of a fresh database filling up (docs/store-writes.md). With
/// sequential scans off the planner takes an index wherever one exists, whatever
/// its statistics say. A `SET` rather than a startup option, so that a
/// connection pooler passes it through.
const SESSION_SETUP: &str = "SET enable_seqscan = off";

impl Primary {
    pub(crate) fn single(pool: PgPool) -> Arc<Primary> {
        Arc::new(Primary {
            pool: RwLock::new((0, pool)),
            multi: None,
            generation: watch::channel(0).0,
        })
    }

    /// Probes once (bounded by [`PROBE_TIMEOUT`]) so the first requests go to the
    /// primary, then starts the monitor. When no host accepts writes yet, starts on
    /// the first and keeps looking.
    pub(crate) async fn multi(
        hosts: Vec<PgConnectOptions>,
        labels: Vec<String>,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Arc<Primary> {
        let found = find_primary(&hosts).await;
        let index = found.unwrap_or(0);
        let pool = build_pool(hosts[index].clone(), max_connections, acquire_timeout);
        match found {
            Some(i) => tracing::info!(host = %labels[i], "store: primary found"),
            None => tracing::warn!("store: no host accepts writes yet; still looking"),
        }
        let primary = Arc::new(Primary {
            pool: RwLock::new((index, pool)),
            multi: Some(Multi {
                hosts,
                labels,
                max_connections,
                acquire_timeout,
                kick: Notify::new(),
            }),
            generation: watch::channel(0).0,
        });
        if found.is_none() {
            primary.kick();
        }
        tokio::spawn(monitor(Arc::downgrade(&primary)));
        primary
    }

    /// The pool of the current primary (cheap: a reference-counted handle).
    pub(crate) fn pool(&self) -> PgPool {
        self.pool
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Begins a transaction (`statement` is its `BEGIN …`) on the current primary.
    /// When the primary moves while this waits for a connection, it starts over on
    /// the new one: nothing has run yet, so that is safe, and a request that
    /// arrived during a switchover then succeeds instead of waiting out the
    /// acquire timeout on a pool that leads nowhere.
    ///
    /// Cancellation-safe: see [`begin_detached`]. Abandoning a begin on the old
    /// primary's pool (or the caller giving up) leaves it to finish on its own.
    pub(crate) async fn begin(
        &self,
        statement: &'static str,
    ) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut moved = self.generation.subscribe();
        let first = begin_detached(self.pool(), statement);
        let r = tokio::select! {
            r = first => r,
            Ok(()) = moved.changed() => begin_detached(self.pool(), statement).await,
        };
        self.observe(&r);
        r
    }

    /// Connect options of the current primary, for the LISTEN connection.
    pub(crate) fn connect_options(&self) -> PgConnectOptions {
        self.pool().connect_options().as_ref().clone()
    }

    pub(crate) fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Wakes the monitor when `r` failed in a way that suggests a failover.
    pub(crate) fn observe(&self, r: &impl Observed) {
        if r.suggests_failover() {
            self.kick();
        }
    }

    /// Wakes the monitor: an operation got no answer in time, which on a server
    /// that froze is the only sign there is.
    pub(crate) fn suspect(&self) {
        self.kick();
    }

    fn kick(&self) {
        if let Some(m) = &self.multi {
            m.kick.notify_one();
        }
    }

    fn current_index(&self) -> usize {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).0
    }

    fn switch(&self, m: &Multi, index: usize) {
        let pool = build_pool(m.hosts[index].clone(), m.max_connections, m.acquire_timeout);
        let old = std::mem::replace(
            &mut *self.pool.write().unwrap_or_else(|p| p.into_inner()),
            (index, pool),
        );
        tracing::warn!(host = %m.labels[index], previous = %m.labels[old.0], "store: switched to the new primary");
        self.generation.send_modify(|g| *g += 1);
        // Connections to the old server are closed in the background: one stuck on
        // a frozen server must not hold anything up (requests using it end at their
        // own deadline).
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), old.1.close()).await;
        });
    }
}

/// Whether `opts` reaches a server that accepts writes (bounded).
async fn accepts_writes(opts: &PgConnectOptions) -> bool {
    let probe = async {
        let mut conn = PgConnection::connect_with(opts).await.ok()?;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .ok()?;
        let _ = conn.close().await;
        Some(!in_recovery)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// Probes every host at once; the first to answer that it accepts writes. Does
/// not wait for the others: a frozen host would hold every round up for the
/// whole probe bound.
pub(crate) async fn find_primary(hosts: &[PgConnectOptions]) -> Option<usize> {
    let mut set = tokio::task::JoinSet::new();
    for (i, h) in hosts.iter().enumerate() {
        let h = h.clone();
        set.spawn(async move { (i, accepts_writes(&h).await) });
    }
    while let Some(r) = set.join_next().await {
        if let Ok((i, true)) = r {
            // Dropping the set aborts the probes still running.
            return Some(i);
        }
    }
    None
}

/// Probes until a host accepts writes, or until `alive` says the store is gone.
/// Each host whose last probe answered is probed again after the backoff; a host
/// whose probe hangs (a frozen server) gets no second probe while the first is
/// pending and does not hold the others up: rounds are not lock-stepped, so the
/// new primary is seen within one backoff pause of its promotion.
async fn hunt(hosts: &[PgConnectOptions], alive: impl Fn() -> bool) -> Option<usize> {
    let began = tokio::time::Instant::now();
    let mut in_flight = vec![false; hosts.len()];
    let mut probes = tokio::task::JoinSet::new();
    let mut attempt = 0_u32;
    let mut next_round = began;
    loop {
        if !alive() {
            return None;
        }
        if tokio::time::Instant::now() >= next_round {
            for (i, h) in hosts.iter().enumerate() {
                if !in_flight[i] {
                    in_flight[i] = true;
                    let h = h.clone();
                    probes.spawn(async move { (i, accepts_writes(&h).await) });
                }
            }
            if attempt == 1 {
                tracing::warn!("store: no host accepts writes; still looking");
            }
            next_round = tokio::time::Instant::now() + backoff(attempt, jitter());
            attempt = attempt.saturating_add(1);
        }
        tokio::select! {
            Some(done) = probes.join_next() => match done {
                Ok((i, true)) => {
                    tracing::info!(after = ?began.elapsed(), "store: found the host that accepts writes");
                    return Some(i);
                }
                Ok((i, false)) => in_flight[i] = false,
                // A probe cannot panic short of a bug; if one did, its host is
                // probed again rather than never.
                Err(_) => in_flight.fill(false),
            },
            () = tokio::time::sleep_until(next_round) => {}
        }
    }
}

/// Checks the current primary every [`MONITOR_EVERY`] (or at once when kicked);
/// when it fails the check, [`hunt`]s for the host that accepts writes and
/// switches to it. Ends when the store is dropped.
async fn monitor(weak: std::sync::Weak<Primary>) {
    loop {
        let Some(primary) = weak.upgrade() else {
            return;
        };
        let Some(m) = &primary.multi else { return };
        if accepts_writes(&m.hosts[primary.current_index()]).await {
            tokio::select! {
                () = m.kick.notified() => {}
                () = tokio::time::sleep(MONITOR_EVERY) => {}
            }
            continue;
        }
        // The monitor must not keep the store alive while it looks.
        let hosts = m.hosts.clone();
        drop(primary);
        let Some(found) = hunt(&hosts, || weak.strong_count() > 0).await else {
            return;
        };
        let Some(primary) = weak.upgrade() else {
            return;
        };
        if let Some(m) = &primary.multi
            && found != primary.current_index()
        {
            primary.switch(m, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(None)`: single host; `Ok(Some(urls))`; `Err(part of the message)`.
    type Case = (
        &'static str,
        Result<Option<&'static [&'static str]>, &'static str>,
    );

    #[test]
    fn parses_host_lists() {
        let cases: &[Case] = &[
            ("postgres://u@h:5432/db", Ok(None)),
            ("postgres://h/db?sslmode=disable", Ok(None)),
            (
                "postgres://u:p@a:1,b:2,c:3/db?target_session_attrs=read-write",
                Ok(Some(&[
                    "postgres://u:p@a:1/db",
                    "postgres://u:p@b:2/db",
                    "postgres://u:p@c:3/db",
                ])),
            ),
            (
                "postgresql://a,b:7/db?sslmode=disable&target_session_attrs=read-write&x=1",
                Ok(Some(&[
                    "postgresql://a/db?sslmode=disable&x=1",
                    "postgresql://b:7/db?sslmode=disable&x=1",
                ])),
            ),
            (
                "postgres://u@[::1]:5,[::2]/db",
                Ok(Some(&["postgres://u@[::1]:5/db", "postgres://u@[::2]/db"])),
            ),
            (
                "postgres://u@a:1,b:2",
                Ok(Some(&["postgres://u@a:1", "postgres://u@b:2"])),
            ),
            ("postgres://u@a:1,,b/db", Err("empty host")),
            ("postgres://u@a:1,b:x/db", Err("bad port")),
            ("postgres://u@a:1,b:99999/db", Err("bad port")),
            (
                "postgres://a,b/db?target_session_attrs=read-only",
                Err("read-only is not supported"),
            ),
            ("a,b/db", Err("no scheme")),
        ];
        for (url, want) in cases {
            let got = parse_hosts(url);
            match (got, want) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some(list)), Ok(Some(urls))) => {
                    assert_eq!(
                        list.urls,
                        urls.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                        "{url}"
                    );
                    assert_eq!(list.urls.len(), list.labels.len());
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "{url}: {e}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn labels_carry_no_credentials() {
        let Ok(Some(list)) = parse_hosts("postgres://u:secret@a:1,b:2/db") else {
            panic!("not parsed");
        };
        assert_eq!(list.labels, ["a:1", "b:2"]);
        assert!(list.urls.iter().all(|u| u.contains("u:secret@")));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert_eq!(backoff(0, 1.0), Duration::from_millis(50));
        assert_eq!(backoff(0, 0.0), Duration::from_millis(25));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(3, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(4, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(5, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF / 2);
        assert_eq!(backoff(2, 7.0), backoff(2, 1.0));
    }

    #[test]
    fn failover_errors() {
        assert!(suggests_failover(&sqlx::Error::PoolTimedOut));
        assert!(suggests_failover(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!suggests_failover(&sqlx::Error::RowNotFound));
        assert!(!suggests_failover(&sqlx::Error::PoolClosed));
    }
}
