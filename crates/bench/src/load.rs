//! The load generator: N mTLS connections (one tonic `Channel` each, connected
//! before the clock starts), M tasks per connection each keeping one request in
//! flight, for a warmup and then a measured window. Every run is bounded: nothing
//! starts after the window, and anything unanswered `DRAIN_GRACE` later is
//! abandoned.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

use crate::report::{Report, new_histogram};
use crate::scenario::Scenario;
use crate::target;

/// The longest measured window a run may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// The longest warmup.
pub const MAX_WARMUP: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 1024;
pub const MAX_IN_FLIGHT: usize = 10_000;
/// Upper bound on connections × in flight (one task each).
pub const MAX_TASKS: usize = 100_000;
/// How long requests in flight at the end of the window may still finish.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `https://host:port`; the host must be loopback (see [`target`]).
    pub target: String,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// CA, client certificate and key.
    pub tls: TlsFiles,
    pub connections: usize,
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

impl LoadConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            bail!("--connections must be 1..={MAX_CONNECTIONS}");
        }
        if self.in_flight == 0 || self.in_flight > MAX_IN_FLIGHT {
            bail!("--in-flight must be 1..={MAX_IN_FLIGHT}");
        }
        if self.connections.saturating_mul(self.in_flight) > MAX_TASKS {
            bail!("--connections x --in-flight must be at most {MAX_TASKS}");
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            bail!(
                "--duration must be more than 0 and at most {} s",
                MAX_DURATION.as_secs()
            );
        }
        if self.warmup > MAX_WARMUP {
            bail!("--warmup must be at most {} s", MAX_WARMUP.as_secs());
        }
        Ok(())
    }
}

/// Runs `scenario` as `config` says. The target is checked (loopback only) before
/// anything else, so a refused target never sees a connection attempt; the error
/// then downcasts to [`target::RefusedTarget`].
pub async fn run(config: &LoadConfig, scenario: Scenario) -> anyhow::Result<Report> {
    target::check_loopback(&config.target).await?;
    config.validate()?;
    let tls = TlsMaterial::load(&config.tls)?;
    let channels = connect(config, &tls).await?;

    let start = Instant::now();
    let window = Window {
        measure_from: start + config.warmup,
        stop_starting: start + config.warmup + config.duration,
        hard_stop: start + config.warmup + config.duration + DRAIN_GRACE,
    };
    let scenario = Arc::new(scenario);
    let mut tasks = JoinSet::new();
    for channel in &channels {
        for _ in 0..config.in_flight {
            let stats = TaskStats::new()?;
            tasks.spawn(worker(
                channel.clone(),
                Arc::clone(&scenario),
                window,
                stats,
            ));
        }
    }

    let mut total = TaskStats::new()?;
    // Workers stop by themselves at the hard stop; this is the belt to those braces.
    let give_up = window.hard_stop + Duration::from_secs(1);
    loop {
        match tokio::time::timeout_at(give_up, tasks.join_next()).await {
            Ok(Some(joined)) => total.merge(joined.context("load task")?)?,
            Ok(None) => break,
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    drop(channels);

    let last = total.last_answer.unwrap_or(window.stop_starting);
    let elapsed = last.max(window.stop_starting) - window.measure_from;
    Ok(Report {
        scenario: scenario.name(),
        target: config.target.clone(),
        connections: config.connections,
        in_flight: config.in_flight,
        duration: config.duration,
        warmup: config.warmup,
        elapsed,
        ok: total.ok,
        errors: total
            .errors
            .iter()
            .map(|(code, n)| (format!("{code:?}"), *n))
            .collect::<BTreeMap<_, _>>(),
        cut_off: total.cut_off,
        latency_us: total.latency_us,
    })
}

/// Opens every connection now (TCP + TLS handshake), one `Channel` each.
async fn connect(config: &LoadConfig, tls: &TlsMaterial) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(config.connections);
    for i in 0..config.connections {
        // Badge's own transport from the client side (no vectored writes under
        // HTTP/2), for every scenario alike, echo included.
        let channel = badge_runtime::transport::channel(
            &config.target,
            tls,
            &config.server_name,
            CONNECT_TIMEOUT,
        )
        .await
        .with_context(|| {
            format!(
                "connection {} of {} to {}",
                i + 1,
                config.connections,
                config.target
            )
        })?;
        channels.push(channel);
    }
    Ok(channels)
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// Requests started before this are warmup.
    measure_from: Instant,
    /// No request starts at or after this.
    stop_starting: Instant,
    /// Requests still unanswered now are abandoned.
    hard_stop: Instant,
}

struct TaskStats {
    ok: u64,
    errors: HashMap<Code, u64>,
    cut_off: u64,
    last_answer: Option<Instant>,
    latency_us: Histogram<u64>,
}

impl TaskStats {
    fn new() -> anyhow::Result<TaskStats> {
        Ok(TaskStats {
            ok: 0,
            errors: HashMap::new(),
            cut_off: 0,
            last_answer: None,
            latency_us: new_histogram().context("latency histogram")?,
        })
    }

    fn merge(&mut self, other: TaskStats) -> anyhow::Result<()> {
        self.ok += other.ok;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.cut_off += other.cut_off;
        self.last_answer = self.last_answer.max(other.last_answer);
        self.latency_us
            .add(&other.latency_us)
            .context("merging latency histograms")
    }
}

async fn worker(
    channel: Channel,
    scenario: Arc<Scenario>,
    window: Window,
    mut stats: TaskStats,
) -> TaskStats {
    loop {
        let started = Instant::now();
        if started >= window.stop_starting {
            break;
        }
        let answer = tokio::time::timeout_at(window.hard_stop, scenario.call(&channel)).await;
        let answered = Instant::now();
        let Ok(result) = answer else {
            if started >= window.measure_from {
                stats.cut_off += 1;
            }
            break;
        };
        if started < window.measure_from {
            continue;
        }
        stats.last_answer = Some(answered);
        match result {
            Ok(()) => {
                stats.ok += 1;
                let micros = u64::try_from((answered - started).as_micros()).unwrap_or(u64::MAX);
                stats.latency_us.saturating_record(micros.max(1));
            }
            Err(status) => *stats.errors.entry(status.code()).or_default() += 1,
        }
    }
    stats
}
