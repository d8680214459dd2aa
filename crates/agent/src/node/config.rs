//! `badge-agent node --agent-config agent.yaml`: which pods this agent speaks for, how
//! their callers are recognised, and where the socket is.
//!
//! ```yaml
//! node: node-a                      # the node this agent runs on (its credential: system:node:node-a)
//! socket: badge-data/agent.sock     # Workload API + Envoy SDS (default)
//! socket_mode: "0666"               # default; attestation, not file modes, decides who gets what
//! socket_dir_mode: "0755"           # mode of the socket's directory when the agent creates it
//! max_connections: 1024             # connections held at once; more are refused
//! max_connections_per_uid: 128      # the same per caller uid
//! max_streams_per_connection: 64    # HTTP/2 streams per connection
//! max_concurrent_issues: 16         # certificate requests in flight at once
//! sds_spiffe_validator: false       # SDS `spiffe://<td>` as Envoy's SPIFFE validator (`ALL` always is)
//! workloads:
//!   - selectors: ["unix:uid:1000"]
//!     namespace: shop
//!     pod: web-0
//!     service_account: web          # must be the pod's service account
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use badge_runtime::config::{LogConfig, TelemetryConfig};
use serde::Deserialize;

use super::selector::Selector;

fn default_socket() -> PathBuf {
    PathBuf::from("badge-data/agent.sock")
}
fn default_socket_mode() -> String {
    "0666".into()
}
fn default_socket_dir_mode() -> String {
    "0755".into()
}
fn default_pod_poll() -> u64 {
    30_000
}
fn default_bundle_poll() -> u64 {
    10_000
}
fn default_jitter() -> u64 {
    30_000
}
fn default_jwt_ttl() -> i64 {
    300
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_uid() -> usize {
    128
}
fn default_max_streams() -> u32 {
    64
}
fn default_max_issues() -> usize {
    16
}

/// The node agent's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name: pods must be bound to it, and the agent's client
    /// certificate must be `system:node:<node>` in `system:nodes`.
    pub node: String,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Octal, as a string.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    #[serde(default = "default_socket_dir_mode")]
    pub socket_dir_mode: String,
    pub workloads: Vec<WorkloadConfig>,
    /// How often each pod is re-read besides identity's Watch (milliseconds).
    #[serde(default = "default_pod_poll")]
    pub pod_poll_ms: u64,
    /// How often the trust bundle is fetched (milliseconds).
    #[serde(default = "default_bundle_poll")]
    pub bundle_poll_ms: u64,
    /// Most random delay added to each SVID's `beginRefreshAt` (milliseconds).
    #[serde(default = "default_jitter")]
    pub refresh_jitter_ms: u64,
    /// Lifetime of the JWT-SVIDs asked for (seconds, [60, 3600]).
    #[serde(default = "default_jwt_ttl")]
    pub jwt_svid_ttl_seconds: i64,
    /// Connections held at once on the socket; more are refused (closed at accept).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections held at once by callers of one uid; more are refused.
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// HTTP/2 streams open at once on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: u32,
    /// Certificate requests in flight at once (each workload's issuance and renewal).
    #[serde(default = "default_max_issues")]
    pub max_concurrent_issues: usize,
    /// Serve the SDS name `spiffe://<td>` with Envoy's SPIFFE certificate validator
    /// (as SPIRE does for Envoy ≥ 1.18) rather than as `trusted_ca`; `ALL` always is.
    #[serde(default)]
    pub sds_spiffe_validator: bool,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// One pod the agent holds an identity for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    pub selectors: Vec<String>,
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
}

/// A validated workload entry.
#[derive(Debug, Clone)]
pub struct Workload {
    pub selectors: Vec<Selector>,
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
}

impl Workload {
    /// `namespace/pod`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// Everything the agent needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub socket_dir_mode: u32,
    pub workloads: Vec<Workload>,
    pub pod_poll: Duration,
    pub bundle_poll: Duration,
    pub refresh_jitter: Duration,
    pub jwt_svid_ttl_seconds: i64,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub max_streams_per_connection: u32,
    pub sds_spiffe_validator: bool,
    pub max_concurrent_issues: usize,
}

fn mode(field: &str, s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{field}: {s:?} is not an octal file mode such as \"0666\""))
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Checks every field; every problem named by its path.
    pub fn settings(&self) -> Result<Settings, String> {
        let mut errors = Vec::new();
        if !name_ok(&self.node) {
            errors.push(format!(
                "node: {:?} is not a node name (lowercase letters, digits, '-', '.')",
                self.node
            ));
        }
        let socket_mode = mode("socket_mode", &self.socket_mode).map_err(|e| errors.push(e));
        let dir_mode = mode("socket_dir_mode", &self.socket_dir_mode).map_err(|e| errors.push(e));
        if self.socket.as_os_str().is_empty() {
            errors.push("socket: required".into());
        } else if self.socket.as_os_str().len() > 100 {
            errors.push(format!(
                "socket: {} is too long for a Unix socket path (at most 100 bytes)",
                self.socket.display()
            ));
        }
        if self.workloads.is_empty() {
            errors.push("workloads: at least one workload is required".into());
        }
        if !(60..=3600).contains(&self.jwt_svid_ttl_seconds) {
            errors.push(format!(
                "jwt_svid_ttl_seconds: {} is not in [60, 3600]",
                self.jwt_svid_ttl_seconds
            ));
        }
        for (field, v) in [
            ("pod_poll_ms", self.pod_poll_ms),
            ("bundle_poll_ms", self.bundle_poll_ms),
        ] {
            if v < 10 {
                errors.push(format!("{field}: {v} is below 10 ms"));
            }
        }
        // Zero would refuse everyone; the upper bounds keep a typo from lifting the
        // bound the setting exists for (each connection holds a descriptor).
        for (field, v, max) in [
            ("max_connections", self.max_connections, 65_536),
            (
                "max_connections_per_uid",
                self.max_connections_per_uid,
                65_536,
            ),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as usize,
                1024,
            ),
            ("max_concurrent_issues", self.max_concurrent_issues, 1024),
        ] {
            if !(1..=max).contains(&v) {
                errors.push(format!("{field}: {v} is not in [1, {max}]"));
            }
        }
        let mut workloads = Vec::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let at = |f: &str| format!("workloads[{i}].{f}");
            let mut selectors = Vec::new();
            if w.selectors.is_empty() {
                errors.push(format!(
                    "{}: at least one selector is required (an entry without selectors would match every caller)",
                    at("selectors")
                ));
            }
            for (j, s) in w.selectors.iter().enumerate() {
                match s.parse::<Selector>() {
                    Ok(s) => selectors.push(s),
                    Err(e) => errors.push(format!("{}[{j}]: {e}", at("selectors"))),
                }
            }
            for (f, v) in [
                ("namespace", &w.namespace),
                ("pod", &w.pod),
                ("service_account", &w.service_account),
            ] {
                if !name_ok(v) {
                    errors.push(format!(
                        "{}: {v:?} is not a valid name (lowercase letters, digits, '-', '.')",
                        at(f)
                    ));
                }
            }
            if self
                .workloads
                .iter()
                .take(i)
                .any(|o| o.namespace == w.namespace && o.pod == w.pod)
            {
                errors.push(format!(
                    "{}: pod {}/{} is listed twice",
                    at("pod"),
                    w.namespace,
                    w.pod
                ));
            }
            workloads.push(Workload {
                selectors,
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
                service_account: w.service_account.clone(),
            });
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Settings {
            node: self.node.clone(),
            socket: self.socket.clone(),
            socket_mode: socket_mode.unwrap_or(0o666),
            socket_dir_mode: dir_mode.unwrap_or(0o755),
            workloads,
            pod_poll: Duration::from_millis(self.pod_poll_ms),
            bundle_poll: Duration::from_millis(self.bundle_poll_ms),
            refresh_jitter: Duration::from_millis(self.refresh_jitter_ms),
            jwt_svid_ttl_seconds: self.jwt_svid_ttl_seconds,
            max_connections: self.max_connections,
            max_connections_per_uid: self.max_connections_per_uid,
            max_streams_per_connection: self.max_streams_per_connection,
            sds_spiffe_validator: self.sds_spiffe_validator,
            max_concurrent_issues: self.max_concurrent_issues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_read_with_defaults() {
        let c: NodeConfig = serde_yaml::from_str(
            "node: node-a\nworkloads:\n- selectors: [\"unix:uid:1000\", \"unix:gid:10\"]\n  namespace: shop\n  pod: web-0\n  service_account: web\n",
        )
        .expect("yaml");
        let s = c.settings().expect("valid");
        assert_eq!(s.socket, PathBuf::from("badge-data/agent.sock"));
        assert_eq!((s.socket_mode, s.socket_dir_mode), (0o666, 0o755));
        assert_eq!(
            s.workloads[0].selectors,
            [Selector::Uid(1000), Selector::Gid(10)]
        );
        assert_eq!(s.bundle_poll, Duration::from_secs(10));
        assert_eq!(
            (
                s.max_connections,
                s.max_connections_per_uid,
                s.max_streams_per_connection
            ),
            (1024, 128, 64)
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let c: NodeConfig = serde_yaml::from_str(
            "node: Node_A\nsocket_mode: \"999\"\njwt_svid_ttl_seconds: 5\nmax_connections: 0\nmax_streams_per_connection: 5000\nworkloads:\n- selectors: []\n  namespace: shop\n  pod: web-0\n  service_account: web\n- selectors: [\"unix:uid:x\"]\n  namespace: shop\n  pod: web-0\n  service_account: Web\n",
        )
        .expect("yaml");
        let e = c.settings().expect_err("invalid");
        for f in [
            "node:",
            "socket_mode:",
            "jwt_svid_ttl_seconds:",
            "max_connections: 0 is not in [1, 65536]",
            "max_streams_per_connection: 5000 is not in [1, 1024]",
            "workloads[0].selectors:",
            "workloads[1].selectors[0]:",
            "workloads[1].service_account:",
            "workloads[1].pod: pod shop/web-0 is listed twice",
        ] {
            assert!(e.contains(f), "{e} lacks {f}");
        }
        assert!(
            serde_yaml::from_str::<NodeConfig>("node: a\nworkloads: []\nsurprise: 1\n").is_err(),
            "unknown fields are refused"
        );
    }
}
