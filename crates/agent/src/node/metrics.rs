//! OpenTelemetry instruments of the node agent (exported like every Badge binary's:
//! `telemetry.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`; no-ops without one).
//!
//! - `badge.agent.svids_served` {api: workload_x509 | workload_jwt | sds}: SVIDs
//!   handed to callers (one per SVID per message);
//! - `badge.agent.rotations`: X.509-SVIDs renewed;
//! - `badge.agent.failures` {kind: issue | bundle | pod_lookup | jwt}: failed calls;
//! - `badge.agent.removed`: identities removed because their pod went away;
//! - `badge.agent.bundle_updates`: trust bundle changes seen;
//! - `badge.agent.denied` {api}: callers refused by attestation;
//! - `badge.agent.oldest_svid_expiry` (gauge, seconds): time left on the SVID
//!   that expires first.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use badge_core::Clock;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, ObservableGauge};

use super::state::Shared;

pub struct Metrics {
    pub served: Counter<u64>,
    pub rotations: Counter<u64>,
    pub failures: Counter<u64>,
    pub removed: Counter<u64>,
    pub bundle_updates: Counter<u64>,
    pub denied: Counter<u64>,
}

pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = badge_runtime::telemetry::metrics::meter();
        Metrics {
            served: m
                .u64_counter("badge.agent.svids_served")
                .with_description("SVIDs handed to workloads, by API")
                .build(),
            rotations: m
                .u64_counter("badge.agent.rotations")
                .with_description("X.509-SVIDs renewed")
                .build(),
            failures: m
                .u64_counter("badge.agent.failures")
                .with_description("failed calls to Badge, by kind")
                .build(),
            removed: m
                .u64_counter("badge.agent.removed")
                .with_description("identities removed because their pod is gone")
                .build(),
            bundle_updates: m
                .u64_counter("badge.agent.bundle_updates")
                .with_description("trust bundle changes")
                .build(),
            denied: m
                .u64_counter("badge.agent.denied")
                .with_description("callers refused by attestation, by API")
                .build(),
        }
    })
}

pub fn served(api: &'static str, n: usize) {
    get().served.add(n as u64, &[KeyValue::new("api", api)]);
}

pub fn failure(kind: &'static str) {
    get().failures.add(1, &[KeyValue::new("kind", kind)]);
}

pub fn denied(api: &'static str) {
    get().denied.add(1, &[KeyValue::new("api", api)]);
}

/// Seconds from `now` until `t`, negative once past.
pub fn seconds_left(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Registers the expiry gauge over `shared`, read at `clock`'s time (kept alive by
/// the returned handle).
pub fn expiry_gauge(shared: Arc<Shared>, clock: Arc<dyn Clock>) -> ObservableGauge<f64> {
    badge_runtime::telemetry::metrics::meter()
        .f64_observable_gauge("badge.agent.oldest_svid_expiry")
        .with_unit("s")
        .with_description("seconds until the first of the held X.509-SVIDs expires")
        .with_callback(move |o| {
            if let Some(t) = shared.snapshot().oldest_expiry() {
                o.observe(seconds_left(t, clock.now()), &[]);
            }
        })
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_is_seconds_left_and_negative_once_past() {
        let clock = badge_core::FixedClock::at_unix(1_700_000_000);
        let t0 = clock.now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (expiry, clock advanced by, seconds left)
        let cases: &[(SystemTime, Duration, f64)] = &[
            (t0 + s(3600), s(0), 3600.0),
            (t0 + s(3600), s(3599), 1.0),
            (t0 + s(3600), s(3600), 0.0),
            (t0 + s(3600), s(3601), -1.0),
            (t0 + s(3600), ms(3_600_500), -0.5),
            (t0 - s(30), s(0), -30.0),
        ];
        for (expiry, advance, want) in cases {
            let c = badge_core::FixedClock::at_unix(1_700_000_000);
            c.advance(*advance);
            let got = seconds_left(*expiry, c.now());
            assert!(
                (got - want).abs() < 1e-9,
                "advance {advance:?}: {got} != {want}"
            );
        }
    }
}
