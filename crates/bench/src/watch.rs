//! Change-feed fan-out (issue #17 goal 3): W Watch streams, each on its own
//! connection, follow the ServiceAccounts of one namespace while one writer
//! creates service accounts at a fixed rate for a fixed time. Measures, per
//! change, the time from the write's acknowledgement to its event at every
//! watcher, and checks that every watcher saw every acknowledged change.
//!
//! The database side (queries per change) is measured by the caller
//! (`scripts/bench-fanout.sh` reads `pg_stat_statements`): `ready_file` and
//! `go_file` let it reset the statistics after the watchers are up (their initial
//! list is not part of the steady state) and before the first write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use badge_proto::identity::service_account_service_client::ServiceAccountServiceClient;
use badge_proto::identity::watch_service_client::WatchServiceClient;
use badge_proto::identity::{self as pb, EventType, WatchRequest, watch_event};
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::new_histogram;
use crate::scenario::CreateServiceAccounts;
use crate::target;

/// The most watch streams one run may open.
pub const MAX_WATCHERS: usize = 1024;
/// The highest write rate (creates per second).
pub const MAX_RATE: u32 = 10_000;
/// The longest write window.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the watchers may take to list and reach their bookmark.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the run waits for `go_file` once the watchers are ready.
const GO_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// `https://host:port`; the host must be loopback (see [`target`]).
    pub target: String,
    pub server_name: String,
    pub tls: TlsFiles,
    /// Watch streams, one connection each.
    pub watchers: usize,
    /// Creates per second.
    pub rate: u32,
    /// How long the writer writes.
    pub duration: Duration,
    /// After the last write, how long the watchers may take to see every change.
    pub drain: Duration,
    /// An existing namespace (watched, and written to).
    pub namespace: String,
    pub name_prefix: String,
    /// Created once every watcher has its initial list.
    pub ready_file: Option<PathBuf>,
    /// With `ready_file`: the writes start once this exists.
    pub go_file: Option<PathBuf>,
}

impl WatchConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.watchers == 0 || self.watchers > MAX_WATCHERS {
            bail!("--watchers must be 1..={MAX_WATCHERS}");
        }
        if self.rate == 0 || self.rate > MAX_RATE {
            bail!("--rate must be 1..={MAX_RATE}");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            bail!(
                "--duration must be more than 0 and at most {}s",
                MAX_DURATION.as_secs()
            );
        }
        if self.drain > Duration::from_secs(60) {
            bail!("--drain must be at most 60s");
        }
        Ok(())
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct WatchReport {
    pub watchers: usize,
    /// Creates acknowledged OK.
    pub written: u64,
    pub write_errors: u64,
    /// (change, watcher) pairs never received before the drain ran out.
    pub missing: u64,
    /// Events a watcher received out of revision order (must be 0).
    pub out_of_order: u64,
    /// Watch streams that ended early (an error status or a closed stream).
    pub streams_failed: u64,
    pub first_stream_error: Option<String>,
    /// Per change: acknowledgement → received by the last watcher (0 when every
    /// watcher had it before the writer had its answer), µs.
    pub lag_all_us: Histogram<u64>,
    /// Per (change, watcher): acknowledgement → received, µs.
    pub lag_each_us: Histogram<u64>,
    /// Per change: write sent → received by the last watcher, µs.
    pub sent_to_all_us: Histogram<u64>,
    pub write_latency_us: Histogram<u64>,
    /// From the first write to the last.
    pub write_window: Duration,
}

impl WatchReport {
    pub fn to_json(&self) -> String {
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
        serde_json::json!({
            "watchers": self.watchers,
            "written": self.written,
            "write_errors": self.write_errors,
            "missing": self.missing,
            "out_of_order": self.out_of_order,
            "streams_failed": self.streams_failed,
            "first_stream_error": self.first_stream_error,
            "write_window_s": self.write_window.as_secs_f64(),
            "lag_all_p50_us": q(&self.lag_all_us, 0.5),
            "lag_all_p99_us": q(&self.lag_all_us, 0.99),
            "lag_all_max_us": self.lag_all_us.max(),
            "lag_each_p50_us": q(&self.lag_each_us, 0.5),
            "lag_each_p99_us": q(&self.lag_each_us, 0.99),
            "sent_to_all_p50_us": q(&self.sent_to_all_us, 0.5),
            "sent_to_all_p99_us": q(&self.sent_to_all_us, 0.99),
            "write_p50_us": q(&self.write_latency_us, 0.5),
            "write_p99_us": q(&self.write_latency_us, 0.99),
        })
        .to_string()
    }
}

impl std::fmt::Display for WatchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |h: &Histogram<u64>, p: f64| ms(h.value_at_quantile(p));
        writeln!(f, "watchers     {}", self.watchers)?;
        writeln!(
            f,
            "written      {} in {:.2}s ({} errors)",
            self.written,
            self.write_window.as_secs_f64(),
            self.write_errors
        )?;
        writeln!(
            f,
            "delivery     missing {}, out of order {}, streams failed {}",
            self.missing, self.out_of_order, self.streams_failed
        )?;
        writeln!(
            f,
            "lag all      p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (ack → last watcher)",
            q(&self.lag_all_us, 0.5),
            q(&self.lag_all_us, 0.99),
            ms(self.lag_all_us.max())
        )?;
        writeln!(
            f,
            "lag each     p50 {:.2} ms  p99 {:.2} ms  (ack → one watcher)",
            q(&self.lag_each_us, 0.5),
            q(&self.lag_each_us, 0.99)
        )?;
        write!(
            f,
            "write        p50 {:.2} ms  p99 {:.2} ms",
            q(&self.write_latency_us, 0.5),
            q(&self.write_latency_us, 0.99)
        )
    }
}

/// What one watcher received: (revision, when), in arrival order.
#[derive(Default)]
struct Seen {
    events: Vec<(i64, Instant)>,
    ready: bool,
    error: Option<String>,
}

/// Runs one measurement (see the module docs).
pub async fn run(config: &WatchConfig) -> anyhow::Result<WatchReport> {
    config.validate()?;
    target::check_loopback(&config.target).await?;
    let tls = TlsMaterial::load(&config.tls)?;
    let connect = || {
        badge_runtime::transport::channel(
            &config.target,
            &tls,
            &config.server_name,
            CONNECT_TIMEOUT,
        )
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (progress_tx, mut progress_rx) = watch::channel(());
    let progress_tx = Arc::new(progress_tx);
    let mut streams = JoinSet::new();
    let mut seen = Vec::with_capacity(config.watchers);
    let prefix = config.name_prefix.clone();
    for i in 0..config.watchers {
        let channel = connect()
            .await
            .with_context(|| format!("watcher connection {} to {}", i + 1, config.target))?;
        let state = Arc::new(Mutex::new(Seen::default()));
        seen.push(state.clone());
        let request = WatchRequest {
            kinds: vec![pb::Kind::ServiceAccount as i32],
            namespace: config.namespace.clone(),
            label_selector: String::new(),
            resource_version: String::new(),
        };
        let (mut stop, progress, prefix) = (stop_rx.clone(), progress_tx.clone(), prefix.clone());
        streams.spawn(async move {
            let mut client = WatchServiceClient::new(channel);
            let record = |f: &dyn Fn(&mut Seen)| {
                if let Ok(mut s) = state.lock() {
                    f(&mut s);
                }
                progress.send_replace(());
            };
            let mut stream = match client.watch(request).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    record(&|s| s.error = Some(e.to_string()));
                    return;
                }
            };
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let now = Instant::now();
                match msg {
                    Ok(Some(ev)) => {
                        if ev.r#type == EventType::Bookmark as i32 {
                            record(&|s| s.ready = true);
                            continue;
                        }
                        let ours = matches!(&ev.object, Some(watch_event::Object::ServiceAccount(sa))
                            if sa.metadata.as_ref().is_some_and(|m| m.name.starts_with(&prefix)));
                        if ours && let Ok(rv) = ev.resource_version.parse::<i64>() {
                            record(&|s| s.events.push((rv, now)));
                        }
                    }
                    Ok(None) => {
                        record(&|s| s.error = Some("the stream ended".into()));
                        return;
                    }
                    Err(e) => {
                        record(&|s| s.error = Some(e.to_string()));
                        return;
                    }
                }
            }
        });
    }
    let count = |f: &dyn Fn(&Seen) -> bool| {
        seen.iter()
            .filter(|s| s.lock().map(|s| f(&s)).unwrap_or(false))
            .count()
    };
    // Every watcher has its initial list (or failed).
    let all_ready = tokio::time::timeout(READY_TIMEOUT, async {
        while count(&|s| s.ready || s.error.is_some()) < config.watchers {
            if progress_rx.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    if all_ready.is_err() {
        bail!("the watchers did not reach their bookmark within {READY_TIMEOUT:?}");
    }
    if let Some(ready) = &config.ready_file {
        std::fs::write(ready, b"ready\n").with_context(|| format!("{}", ready.display()))?;
        if let Some(go) = &config.go_file {
            let until = Instant::now() + GO_TIMEOUT;
            while !go.exists() {
                if Instant::now() > until {
                    bail!("{} did not appear within {GO_TIMEOUT:?}", go.display());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // The writer: one connection, a create every 1/rate s (each in its own task, so
    // a slow answer does not lower the rate).
    let writer = connect().await.context("writer connection")?;
    let creates = Arc::new(CreateServiceAccounts::new(
        config.namespace.clone(),
        config.name_prefix.clone(),
    ));
    let total = u64::from(config.rate) * config.duration.as_millis() as u64 / 1000;
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / config.rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = JoinSet::new();
    let started = Instant::now();
    for n in 0..total {
        ticks.tick().await;
        let (channel, request) = (writer.clone(), creates.request(n));
        writes.spawn(async move {
            let sent = Instant::now();
            let answer = ServiceAccountServiceClient::new(channel)
                .create_service_account(request)
                .await;
            let acked = Instant::now();
            answer.ok().and_then(|a| {
                let rv = a
                    .into_inner()
                    .metadata?
                    .resource_version
                    .parse::<i64>()
                    .ok()?;
                Some((rv, sent, acked))
            })
        });
    }
    let mut acked = Vec::new();
    let mut write_errors = 0;
    while let Some(w) = writes.join_next().await {
        match w.ok().flatten() {
            Some(w) => acked.push(w),
            None => write_errors += 1,
        }
    }
    let write_window = started.elapsed();
    acked.sort_by_key(|w| w.0);

    // Drain: until every watcher has every acknowledged change, or the bound.
    let want = acked.len();
    let _ = tokio::time::timeout(config.drain, async {
        while count(&|s| s.events.len() >= want || s.error.is_some()) < config.watchers {
            if progress_rx.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    stop_tx.send_replace(true);
    streams.shutdown().await;

    let mut report = WatchReport {
        watchers: config.watchers,
        written: acked.len() as u64,
        write_errors,
        missing: 0,
        out_of_order: 0,
        streams_failed: 0,
        first_stream_error: None,
        lag_all_us: new_histogram()?,
        lag_each_us: new_histogram()?,
        sent_to_all_us: new_histogram()?,
        write_latency_us: new_histogram()?,
        write_window,
    };
    let us = |d: Duration| (d.as_micros() as u64).max(1);
    let mut received: Vec<HashMap<i64, Instant>> = Vec::with_capacity(seen.len());
    for s in &seen {
        let s = s
            .lock()
            .map_err(|_| anyhow::anyhow!("a watcher panicked"))?;
        if let Some(e) = &s.error {
            report.streams_failed += 1;
            report.first_stream_error.get_or_insert_with(|| e.clone());
        }
        report.out_of_order += s.events.windows(2).filter(|w| w[1].0 <= w[0].0).count() as u64;
        received.push(s.events.iter().copied().collect());
    }
    for &(rv, sent, ack) in &acked {
        report.write_latency_us.record(us(ack - sent))?;
        let mut last: Option<Instant> = None;
        let mut complete = true;
        for r in &received {
            match r.get(&rv) {
                Some(&at) => {
                    report
                        .lag_each_us
                        .record(us(at.saturating_duration_since(ack)))?;
                    last = Some(last.map_or(at, |l| l.max(at)));
                }
                None => {
                    report.missing += 1;
                    complete = false;
                }
            }
        }
        if let (true, Some(last)) = (complete, last) {
            report
                .lag_all_us
                .record(us(last.saturating_duration_since(ack)))?;
            report
                .sent_to_all_us
                .record(us(last.saturating_duration_since(sent)))?;
        }
    }
    Ok(report)
}
