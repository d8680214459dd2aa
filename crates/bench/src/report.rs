//! The result of a run: counts, rate and the latency distribution of successful
//! requests, for people ([`std::fmt::Display`]) or as one JSON line ([`Report::to_json`]).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
}

/// What a run measured. Requests started during warmup are not counted; requests
/// still unanswered when the drain grace ran out are only counted in `cut_off`.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub connections: usize,
    pub in_flight: usize,
    /// The measured window asked for.
    pub duration: Duration,
    pub warmup: Duration,
    /// From the end of warmup to the last counted answer.
    pub elapsed: Duration,
    pub ok: u64,
    /// Failed requests by gRPC code name (`Unavailable`, `PermissionDenied`, ...).
    pub errors: BTreeMap<String, u64>,
    pub cut_off: u64,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Report {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn per_second(&self, count: u64) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { count as f64 / secs } else { 0.0 }
    }

    /// Answers (OK or not) per second.
    pub fn rate(&self) -> f64 {
        self.per_second(self.ok + self.errors_total())
    }

    /// Successful answers per second.
    pub fn ok_rate(&self) -> f64 {
        self.per_second(self.ok)
    }

    /// Latency at `quantile` (0.5, 0.99, ...) in milliseconds; 0 when nothing succeeded.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.mean() / 1000.0
    }

    /// The one-line JSON summary (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "scenario": self.scenario,
            "target": self.target,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "elapsed_s": round(self.elapsed.as_secs_f64()),
            "ok": self.ok,
            "errors": self.errors_total(),
            "errors_by_code": self.errors,
            "cut_off": self.cut_off,
            "rate_rps": round(self.rate()),
            "ok_rps": round(self.ok_rate()),
            // null when no request succeeded.
            "latency_ms": (!self.latency_us.is_empty()).then(|| serde_json::json!({
                "p50": self.quantile_ms(0.5),
                "p99": self.quantile_ms(0.99),
                "p999": self.quantile_ms(0.999),
                "max": self.max_ms(),
                "mean": round(self.mean_ms()),
            })),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scenario     {} -> {} ({} connections x {} in flight, {:.1} s after {:.1} s warmup)",
            self.scenario,
            self.target,
            self.connections,
            self.in_flight,
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64(),
        )?;
        writeln!(f, "requests ok  {}", self.ok)?;
        writeln!(f, "errors       {}", self.errors_total())?;
        for (code, count) in &self.errors {
            writeln!(f, "  {code:<22} {count}")?;
        }
        if self.cut_off > 0 {
            writeln!(
                f,
                "cut off      {} (unanswered at the hard stop)",
                self.cut_off
            )?;
        }
        writeln!(
            f,
            "rate         {:.1} req/s (ok {:.1} req/s) over {:.3} s",
            self.rate(),
            self.ok_rate(),
            self.elapsed.as_secs_f64()
        )?;
        if self.latency_us.is_empty() {
            return write!(f, "latency ms   - (no successful requests)");
        }
        write!(
            f,
            "latency ms   p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}  (mean {:.3}, ok requests)",
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.max_ms(),
            self.mean_ms(),
        )
    }
}
