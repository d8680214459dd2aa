//! The load generator: N mTLS connections (one tonic `Channel` each, connected
//! before the clock starts), M tasks per connection each keeping one request in
//! flight, for a warmup and then a measured window. Every run is bounded: nothing
//! starts after the window, and anything unanswered `DRAIN_GRACE` later is
//! abandoned.
//!
//! The connections are spread over client threads (by default one per core, at
//! most one per connection), each a single-threaded tokio runtime that owns its
//! connections and their tasks — as wrk and h2load do. A response then wakes its
//! task on the thread that read it: no work stealing, no futex wake-up of another
//! worker per answer. On one shared multi-threaded runtime the generator spent
//! ~60 µs of CPU per request at a few thousand requests per second (measured with
//! `/proc/<pid>/stat`), CPU the server under test did not get.

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
/// The most client threads a run may ask for.
pub const MAX_THREADS: usize = 64;
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
    /// Client threads (each a single-threaded runtime); `None`: one per core, at
    /// most one per connection.
    pub threads: Option<usize>,
}

impl LoadConfig {
    /// The client threads this run uses.
    fn thread_count(&self) -> usize {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        self.threads
            .unwrap_or(cores)
            .clamp(1, self.connections.max(1))
    }

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
        if self.threads.is_some_and(|t| t == 0 || t > MAX_THREADS) {
            bail!("--threads must be 1..={MAX_THREADS}");
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
    let tls = Arc::new(TlsMaterial::load(&config.tls)?);
    let scenario = Arc::new(scenario);

    // Every thread connects first; the clock starts once all are connected.
    let threads = config.thread_count();
    let mut clients = Vec::with_capacity(threads);
    for t in 0..threads {
        let connections: Vec<usize> = (t..config.connections).step_by(threads).collect();
        clients.push(Client::spawn(
            config,
            connections,
            Arc::clone(&tls),
            Arc::clone(&scenario),
        )?);
    }
    let mut connect_error = None;
    for client in &mut clients {
        if let Err(e) = client.connected().await {
            connect_error.get_or_insert(e);
        }
    }
    if let Some(e) = connect_error {
        // Dropping the clients' start senders ends their threads.
        drop(clients);
        return Err(e);
    }

    let start = Instant::now();
    let window = Window {
        measure_from: start + config.warmup,
        stop_starting: start + config.warmup + config.duration,
        hard_stop: start + config.warmup + config.duration + DRAIN_GRACE,
    };
    for client in &mut clients {
        client.start(window);
    }
    let mut total = TaskStats::new()?;
    for client in clients {
        total.merge(client.finish().await?)?;
    }

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

/// One client thread: its own single-threaded runtime, its connections and their
/// request tasks.
struct Client {
    connected: Option<oneshot::Receiver<anyhow::Result<()>>>,
    start: Option<oneshot::Sender<Window>>,
    done: oneshot::Receiver<anyhow::Result<TaskStats>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Client {
    /// Starts the thread; it connects `connections` (indexes, for messages) and
    /// then waits for the window.
    fn spawn(
        config: &LoadConfig,
        connections: Vec<usize>,
        tls: Arc<TlsMaterial>,
        scenario: Arc<Scenario>,
    ) -> anyhow::Result<Client> {
        let (connected_tx, connected_rx) = oneshot::channel();
        let (start_tx, start_rx) = oneshot::channel::<Window>();
        let (done_tx, done_rx) = oneshot::channel();
        let config = config.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("client runtime")?;
        let thread = thread::Builder::new()
            .name("badge-bench-client".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let channels = match connect(&config, &connections, &tls).await {
                        Ok(channels) => channels,
                        Err(e) => {
                            let _ = connected_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = connected_tx.send(Ok(()));
                    // No window: the run was called off (another thread failed).
                    let Ok(window) = start_rx.await else { return };
                    let _ = done_tx.send(drive(&channels, &config, &scenario, window).await);
                });
            })
            .context("starting a client thread")?;
        Ok(Client {
            connected: Some(connected_rx),
            start: Some(start_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    async fn connected(&mut self) -> anyhow::Result<()> {
        match self.connected.take() {
            Some(rx) => rx.await.context("client thread ended")?,
            None => Ok(()),
        }
    }

    /// Starts the load for `window`.
    fn start(&mut self, window: Window) {
        if let Some(start) = self.start.take() {
            let _ = start.send(window);
        }
    }

    /// Waits for this thread's totals.
    async fn finish(mut self) -> anyhow::Result<TaskStats> {
        let stats = (&mut self.done).await.context("client thread ended")?;
        if let Some(thread) = self.thread.take() {
            // It has sent its totals; what is left is dropping its runtime.
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("client thread")?
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        }
        stats
    }
}

/// Runs `in_flight` tasks per channel on this thread's runtime for `window`.
async fn drive(
    channels: &[Channel],
    config: &LoadConfig,
    scenario: &Arc<Scenario>,
    window: Window,
) -> anyhow::Result<TaskStats> {
    let mut tasks = JoinSet::new();
    for channel in channels {
        for _ in 0..config.in_flight {
            tasks.spawn(worker(
                channel.clone(),
                Arc::clone(scenario),
                window,
                TaskStats::new()?,
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
    Ok(total)
}

/// Opens the connections numbered `which` now (TCP + TLS handshake), one
/// `Channel` each.
async fn connect(
    config: &LoadConfig,
    which: &[usize],
    tls: &TlsMaterial,
) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(which.len());
    for &i in which {
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
