//! A burst: exactly N requests, all sent at once, as when a fleet of workloads
//! restarts together and every one asks for its certificate. The clock starts
//! before the first connection is opened: C connections (each TCP + TLS, as the
//! returning clients would open them) are made at once, and each sends its share
//! of the N requests the moment it is up, all in flight together. The server may
//! queue them (that is the point: queueing, not failing); the run ends when every
//! request is answered, or fails at the hard deadline.
//!
//! Why C connections and not N: a real fleet opens one connection per workload
//! (istio-agent) or per node (ztunnel, the kubelet). 10,000 TLS handshakes from one
//! process on the machine under test would measure the client's handshakes more
//! than the CA, and the server caps its connections (`max_connections`, 10,000 by
//! default). Each connection carries N / C requests concurrently (HTTP/2 streams;
//! at most the server's `max_concurrent_streams`, 256 by default, are open at once
//! per connection, the rest wait in the client) — like a node agent speaking for
//! the workloads on its node.
//!
//! Connections are spread over client threads (one per core by default), each a
//! single-threaded runtime, as in [`crate::load`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, bail};
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use hdrhistogram::Histogram;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;

use crate::load::{MAX_CONNECTIONS, MAX_THREADS};
use crate::report::new_histogram;
use crate::scenario::Scenario;
use crate::target;

/// The most requests one burst may send.
pub const MAX_REQUESTS: usize = 100_000;
/// The longest deadline a burst may ask for.
pub const MAX_DEADLINE: Duration = Duration::from_secs(300);

/// One burst's parameters.
#[derive(Debug, Clone)]
pub struct BurstConfig {
    /// `https://host:port`; the host must be loopback (see [`target`]).
    pub target: String,
    pub server_name: String,
    pub tls: TlsFiles,
    /// Requests in all, each sent once.
    pub requests: usize,
    /// Connections opened at once, the requests spread evenly over them.
    pub connections: usize,
    /// Everything must be answered within this, counted from the start.
    pub deadline: Duration,
    /// Client threads; `None`: one per core, at most one per connection.
    pub threads: Option<usize>,
}

impl BurstConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.requests == 0 || self.requests > MAX_REQUESTS {
            bail!("--requests must be 1..={MAX_REQUESTS}");
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            bail!("--connections must be 1..={MAX_CONNECTIONS}");
        }
        if self.connections > self.requests {
            bail!("--connections must be at most --requests");
        }
        if self.deadline.is_zero() || self.deadline > MAX_DEADLINE {
            bail!(
                "--deadline must be more than 0 and at most {} s",
                MAX_DEADLINE.as_secs()
            );
        }
        if self.threads.is_some_and(|t| t == 0 || t > MAX_THREADS) {
            bail!("--threads must be 1..={MAX_THREADS}");
        }
        Ok(())
    }

    fn thread_count(&self) -> usize {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        self.threads.unwrap_or(cores).clamp(1, self.connections)
    }

    /// Requests connection `i` sends.
    fn share(&self, i: usize) -> usize {
        self.requests / self.connections + usize::from(i < self.requests % self.connections)
    }
}

/// What a burst measured.
#[derive(Debug, Clone)]
pub struct BurstReport {
    pub scenario: &'static str,
    pub target: String,
    pub requests: usize,
    pub connections: usize,
    pub deadline: Duration,
    /// From the start until the last connection was up (None: none came up).
    pub all_connected: Option<Duration>,
    /// From the start until the last answer: the time to serve all.
    pub elapsed: Duration,
    pub ok: u64,
    /// Failed requests by gRPC code name (a connection that failed: each of its
    /// requests `Unavailable`).
    pub errors: BTreeMap<String, u64>,
    /// The first connection failure's message, if any (no secrets: transport
    /// errors name addresses and TLS alerts).
    pub connect_error: Option<String>,
    /// Unanswered at the deadline.
    pub cut_off: u64,
    /// Latency of successful requests from when each was sent (its connection
    /// up) to its answer, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl BurstReport {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every request answered OK before the deadline.
    pub fn served_all(&self) -> bool {
        self.ok == self.requests as u64 && self.cut_off == 0 && self.errors_total() == 0
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// OK answers per second over the whole burst.
    pub fn ok_rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.ok as f64 / s } else { 0.0 }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "scenario": self.scenario,
            "mode": "burst",
            "target": self.target,
            "requests": self.requests,
            "connections": self.connections,
            "deadline_s": self.deadline.as_secs_f64(),
            "all_connected_s": self.all_connected.map(|d| round(d.as_secs_f64())),
            "time_to_serve_all_s": round(self.elapsed.as_secs_f64()),
            "served_all": self.served_all(),
            "ok": self.ok,
            "errors": self.errors_total(),
            "errors_by_code": self.errors,
            "cut_off": self.cut_off,
            "ok_rps": round(self.ok_rate()),
            "latency_ms": (!self.latency_us.is_empty()).then(|| serde_json::json!({
                "p50": self.quantile_ms(0.5),
                "p99": self.quantile_ms(0.99),
                "p999": self.quantile_ms(0.999),
                "max": self.latency_us.max() as f64 / 1000.0,
            })),
        })
    }
}

impl std::fmt::Display for BurstReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "burst        {} -> {} ({} requests at once over {} connections, deadline {:.0} s)",
            self.scenario,
            self.target,
            self.requests,
            self.connections,
            self.deadline.as_secs_f64()
        )?;
        match self.all_connected {
            Some(d) => writeln!(
                f,
                "connected    all {} after {:.3} s",
                self.connections,
                d.as_secs_f64()
            )?,
            None => writeln!(f, "connected    none")?,
        }
        writeln!(f, "requests ok  {} of {}", self.ok, self.requests)?;
        writeln!(f, "errors       {}", self.errors_total())?;
        for (code, count) in &self.errors {
            writeln!(f, "  {code:<22} {count}")?;
        }
        if let Some(e) = &self.connect_error {
            writeln!(f, "  first connection error: {e}")?;
        }
        if self.cut_off > 0 {
            writeln!(
                f,
                "cut off      {} (unanswered at the deadline)",
                self.cut_off
            )?;
        }
        writeln!(
            f,
            "served all   {} in {:.3} s ({:.1} ok/s)",
            if self.served_all() { "yes" } else { "NO" },
            self.elapsed.as_secs_f64(),
            self.ok_rate()
        )?;
        if self.latency_us.is_empty() {
            return write!(f, "latency ms   - (no successful requests)");
        }
        write!(
            f,
            "latency ms   p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}  (sent to answered, ok requests)",
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
        )
    }
}

/// What one client thread saw.
struct Stats {
    ok: u64,
    errors: HashMap<Code, u64>,
    connect_error: Option<String>,
    cut_off: u64,
    last_answer: Option<Instant>,
    /// When this thread's last connection came up; `None` if one never did.
    connected: Option<Instant>,
    all_up: bool,
    latency_us: Histogram<u64>,
}

impl Stats {
    fn new() -> anyhow::Result<Stats> {
        Ok(Stats {
            ok: 0,
            errors: HashMap::new(),
            connect_error: None,
            cut_off: 0,
            last_answer: None,
            connected: None,
            all_up: true,
            latency_us: new_histogram().context("latency histogram")?,
        })
    }

    fn merge(&mut self, other: Stats) -> anyhow::Result<()> {
        self.ok += other.ok;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        if self.connect_error.is_none() {
            self.connect_error = other.connect_error;
        }
        self.cut_off += other.cut_off;
        self.last_answer = self.last_answer.max(other.last_answer);
        self.connected = self.connected.max(other.connected);
        self.all_up &= other.all_up;
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")
    }
}

/// Sends the burst as `config` says. The target is checked (loopback only)
/// before anything else.
pub async fn run(config: &BurstConfig, scenario: Scenario) -> anyhow::Result<BurstReport> {
    target::check_loopback(&config.target).await?;
    config.validate()?;
    let tls = Arc::new(TlsMaterial::load(&config.tls)?);
    let scenario = Arc::new(scenario);
    let threads = config.thread_count();

    let start = Instant::now();
    let deadline = start + config.deadline;
    let mut done = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let which: Vec<usize> = (t..config.connections).step_by(threads).collect();
        let (tx, rx) = oneshot::channel();
        let (config, tls, scenario) = (config.clone(), Arc::clone(&tls), Arc::clone(&scenario));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("client runtime")?;
        handles.push(
            thread::Builder::new()
                .name("badge-bench-burst".into())
                .spawn(move || {
                    let stats = runtime.block_on(drive(&config, &which, &tls, &scenario, deadline));
                    let _ = tx.send(stats);
                })
                .context("starting a client thread")?,
        );
        done.push(rx);
    }
    let mut total = Stats::new()?;
    for rx in done {
        total.merge(rx.await.context("client thread ended")??)?;
    }
    for h in handles {
        tokio::task::spawn_blocking(move || h.join())
            .await
            .context("client thread")?
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    }
    let last = total.last_answer.unwrap_or(start);
    let elapsed = if total.cut_off > 0 {
        config.deadline
    } else {
        last - start
    };
    Ok(BurstReport {
        scenario: scenario.name(),
        target: config.target.clone(),
        requests: config.requests,
        connections: config.connections,
        deadline: config.deadline,
        all_connected: total.connected.filter(|_| total.all_up).map(|c| c - start),
        elapsed,
        ok: total.ok,
        errors: total
            .errors
            .iter()
            .map(|(code, n)| (format!("{code:?}"), *n))
            .collect(),
        connect_error: total.connect_error,
        cut_off: total.cut_off,
        latency_us: total.latency_us,
    })
}

/// This thread's connections, each connecting and then sending its share.
async fn drive(
    config: &BurstConfig,
    which: &[usize],
    tls: &Arc<TlsMaterial>,
    scenario: &Arc<Scenario>,
    deadline: Instant,
) -> anyhow::Result<Stats> {
    let mut connections = JoinSet::new();
    for &i in which {
        connections.spawn(connection(
            config.clone(),
            config.share(i),
            Arc::clone(tls),
            Arc::clone(scenario),
            deadline,
        ));
    }
    let mut total = Stats::new()?;
    // Each connection stops at the deadline by itself; this is the belt.
    let give_up = deadline + Duration::from_secs(1);
    loop {
        match tokio::time::timeout_at(give_up, connections.join_next()).await {
            Ok(Some(joined)) => total.merge(joined.context("connection task")??)?,
            Ok(None) => break,
            Err(_) => {
                connections.abort_all();
                bail!("connection tasks still running after the deadline");
            }
        }
    }
    Ok(total)
}

/// One connection: connect, then `share` requests at once.
async fn connection(
    config: BurstConfig,
    share: usize,
    tls: Arc<TlsMaterial>,
    scenario: Arc<Scenario>,
    deadline: Instant,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::new()?;
    let share = share as u64;
    let timeout = deadline.saturating_duration_since(Instant::now());
    let connect =
        badge_runtime::transport::channel(&config.target, &tls, &config.server_name, timeout);
    let channel = match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            stats.all_up = false;
            stats.connect_error = Some(format!("{e:#}"));
            *stats.errors.entry(Code::Unavailable).or_default() += share;
            return Ok(stats);
        }
        Err(_) => {
            stats.all_up = false;
            stats.cut_off += share;
            return Ok(stats);
        }
    };
    stats.connected = Some(Instant::now());
    let mut requests = JoinSet::new();
    for _ in 0..share {
        let (channel, scenario) = (channel.clone(), Arc::clone(&scenario));
        requests.spawn(async move {
            let sent = Instant::now();
            let answer = tokio::time::timeout_at(deadline, scenario.call(&channel)).await;
            (sent, Instant::now(), answer)
        });
    }
    while let Some(joined) = requests.join_next().await {
        let (sent, answered, answer) = joined.context("request task")?;
        match answer {
            Err(_) => stats.cut_off += 1,
            Ok(result) => {
                stats.last_answer = stats.last_answer.max(Some(answered));
                match result {
                    Ok(()) => {
                        stats.ok += 1;
                        let micros =
                            u64::try_from((answered - sent).as_micros()).unwrap_or(u64::MAX);
                        stats.latency_us.saturating_record(micros.max(1));
                    }
                    Err(status) => *stats.errors.entry(status.code()).or_default() += 1,
                }
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(requests: usize, connections: usize) -> BurstConfig {
        BurstConfig {
            target: "https://127.0.0.1:1".into(),
            server_name: "localhost".into(),
            tls: TlsFiles {
                ca: "ca".into(),
                cert: "c".into(),
                key: "k".into(),
            },
            requests,
            connections,
            deadline: Duration::from_secs(10),
            threads: None,
        }
    }

    #[test]
    fn shares_add_up() {
        for (n, c) in [(10_000, 100), (10_000, 7), (5, 5), (1, 1), (999, 1000)] {
            let cfg = config(n, c);
            let sum: usize = (0..c).map(|i| cfg.share(i)).sum();
            assert_eq!(sum, n, "{n} over {c}");
            let (lo, hi) = (cfg.share(c - 1), cfg.share(0));
            assert!(hi - lo <= 1, "{n} over {c}: even shares");
        }
    }

    #[test]
    fn limits() {
        assert!(config(10_000, 100).validate().is_ok());
        assert!(config(0, 1).validate().is_err());
        assert!(config(MAX_REQUESTS + 1, 1).validate().is_err());
        assert!(config(10, 11).validate().is_err());
        assert!(config(10_000, MAX_CONNECTIONS + 1).validate().is_err());
        let mut c = config(10, 1);
        c.deadline = MAX_DEADLINE + Duration::from_secs(1);
        assert!(c.validate().is_err());
    }
}
