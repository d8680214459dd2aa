//! The command line: `echo-server`, `run <scenario>`, `burst <scenario>`,
//! `ceiling`, `csr-rate`, `watch` and `pod-churn`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use badge_core::spiffe::plan::KeyType;
use badge_proto::identity::{GetServiceAccountRequest, ListServiceAccountsRequest};
use badge_proto::review::{
    CreateSubjectAccessReviewRequest, CreateTokenReviewRequest, ResourceAttributes,
    SubjectAccessReviewSpec, TokenReviewSpec,
};
use badge_proto::token::{BoundObjectReference, CreateTokenRequest};
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use clap::{Args, Parser, Subcommand};

use crate::burst::{self, BurstConfig, MAX_DEADLINE};
use crate::ceiling::{self, CeilingConfig};
use crate::certificates::{self, IstioPool, IstioSpec, PodPool, PodSpec, key_type};
use crate::echo::EchoServer;
use crate::load::{self, LoadConfig, MAX_DURATION};
use crate::report::Report;
use crate::scenario::{CreatePods, CreateServiceAccounts, Scenario, ServiceAccountChurn};

/// Largest echo payload (tonic's default message limit is 4 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "badge-bench",
    version,
    about = "mTLS gRPC load generator for Badge services (loopback targets only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the echo service over mTLS (client certificate required) until Ctrl-C/SIGTERM.
    EchoServer(EchoServerArgs),
    /// Send load to a running service on this machine.
    Run(Box<RunArgs>),
    /// Send exactly --requests requests at once (a fleet restarting) and wait until
    /// every one is answered; fails unless all are answered OK before --deadline.
    Burst(Box<BurstArgs>),
    /// Temp dev PKI + in-process echo server + echo load: this machine's mTLS ceiling.
    Ceiling(CeilingArgs),
    /// One core's rate of CSR parsing + proof-of-possession verification
    /// (badge_ca::csr, what both certificate APIs run per request), per key type.
    CsrRate(CsrRateArgs),
    /// Change-feed fan-out: --watchers Watch streams (one connection each) while
    /// one writer creates service accounts at --rate per second for --duration;
    /// reports ack → event lag at every watcher and checks none missed a change.
    Watch(Box<WatchArgs>),
    /// A fleet rolling: --workers loops create a pod, issue a token bound to it,
    /// review it, delete the pod and review again until the token is refused,
    /// while --reviewers more reviews of live pods' tokens stay in flight; reports
    /// each call's rate and latency and the revocation lag. Fails on any error.
    PodChurn(Box<PodChurnArgs>),
}

#[derive(Debug, Args)]
pub struct PodChurnArgs {
    /// `https://host:port` of identity (pods); loopback only.
    #[arg(long)]
    pub identity: String,
    /// `https://host:port` of token-issuer (bound tokens); loopback only.
    #[arg(long)]
    pub issuer: String,
    /// `https://host:port` of token-review (reviews); loopback only.
    #[arg(long)]
    pub review: String,
    /// Name the servers' certificates must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// An existing namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The pods' service account (it must exist).
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Pod loops at once (each has one request in flight).
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// Reviews of live pods' tokens in flight besides the loops.
    #[arg(long, default_value_t = 32)]
    pub reviewers: usize,
    /// Measured window (at most 300s); loops finish the pod they are on.
    #[arg(long, default_value = "10s", value_parser = window)]
    pub duration: Duration,
    /// How long each pod lives once its token has been reviewed.
    #[arg(long, default_value = "0s", value_parser = crate::duration::parse)]
    pub pod_lifetime: Duration,
    /// A deleted pod's token still accepted after this is an error.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    pub revocation_deadline: Duration,
    /// Default: churn-<process id>- (distinct for runs against one database).
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Print a one-line JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// `https://host:port` of identity; the host must be 127.0.0.0/8, ::1 or localhost.
    #[arg(long)]
    pub target: String,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Watch streams, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub watchers: usize,
    /// Creates per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// How long the writer writes (at most 300s).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub duration: Duration,
    /// After the last write, how long the watchers may take to see every change.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    pub drain: Duration,
    /// An existing namespace: watched and written to.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Default: fanout-<process id>- (distinct for runs against one database).
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Written once every watcher has its initial list.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// With --ready-file: the writes start once this file exists (so a caller can
    /// reset database statistics in between).
    #[arg(long, requires = "ready_file")]
    pub go_file: Option<PathBuf>,
    /// Print a one-line JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

impl PodChurnArgs {
    /// The run these arguments ask for.
    pub fn config(self) -> crate::pod_churn::PodChurnConfig {
        crate::pod_churn::PodChurnConfig {
            identity: self.identity,
            issuer: self.issuer,
            review: self.review,
            server_name: self.server_name,
            tls: self.tls.files(),
            namespace: self.namespace,
            service_account: self.service_account,
            workers: self.workers,
            reviewers: self.reviewers,
            duration: self.duration,
            pod_lifetime: self.pod_lifetime,
            revocation_deadline: self.revocation_deadline,
            name_prefix: self
                .name_prefix
                .unwrap_or_else(|| format!("churn-{}-", std::process::id())),
        }
    }
}

#[derive(Debug, Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) the peer's certificate must chain to.
    #[arg(long)]
    pub ca: PathBuf,
    /// This side's certificate (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// This side's private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
}

impl TlsArgs {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct EchoServerArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Separate connections (one HTTP/2 connection each).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Requests kept in flight on each connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Measured window (e.g. 10s, 500ms, 2m; at most 300s).
    #[arg(long, default_value = "10s", value_parser = window)]
    pub duration: Duration,
    /// Load before the measured window, not counted.
    #[arg(long, default_value = "2s", value_parser = crate::duration::parse)]
    pub warmup: Duration,
    /// Client threads, each a single-threaded runtime owning its share of the
    /// connections (default: one per core, at most one per connection).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a one-line JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

fn window(text: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(text)?;
    if d.is_zero() || d > MAX_DURATION {
        return Err(format!(
            "must be more than 0 and at most {}s",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

fn deadline(text: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(text)?;
    if d.is_zero() || d > MAX_DEADLINE {
        return Err(format!(
            "must be more than 0 and at most {}s",
            MAX_DEADLINE.as_secs()
        ));
    }
    Ok(d)
}

fn measure_window(text: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(text)?;
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err("must be more than 0 and at most 60s".to_string());
    }
    Ok(d)
}

fn payload_bytes(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if n > MAX_PAYLOAD_BYTES {
        return Err(format!("at most {MAX_PAYLOAD_BYTES}"));
    }
    Ok(n)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// `https://host:port`; the host must be 127.0.0.0/8, ::1 or localhost.
    #[arg(long)]
    pub target: String,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Print the encoded size of the scenario's request in bytes and exit (the
    /// payload size for an echo ceiling of the same size); sends nothing.
    #[arg(long)]
    pub print_request_size: bool,
    #[command(subcommand)]
    pub scenario: ScenarioArgs,
}

#[derive(Debug, Args)]
pub struct BurstArgs {
    /// `https://host:port`; the host must be 127.0.0.0/8, ::1 or localhost.
    #[arg(long)]
    pub target: String,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Requests in all, each sent once, all at once.
    #[arg(long)]
    pub requests: usize,
    /// Connections opened at once (inside the measured time), the requests spread
    /// evenly over them, each connection's share in flight together.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Every request must be answered within this (e.g. 120s; at most 300s).
    #[arg(long, default_value = "120s", value_parser = deadline)]
    pub deadline: Duration,
    /// Client threads (default: one per core, at most one per connection).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a one-line JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub scenario: ScenarioArgs,
}

#[derive(Debug, Args)]
pub struct CsrRateArgs {
    /// Subject key types (repeatable; default ECDSAP256 and RSA3072).
    #[arg(long = "key-type", value_parser = key_type)]
    pub key_types: Vec<KeyType>,
    /// Measured time per key type and encoding.
    #[arg(long, default_value = "1s", value_parser = measure_window)]
    pub duration: Duration,
    /// One JSON line per key type instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One subcommand per [`Scenario`].
#[derive(Debug, Subcommand)]
pub enum ScenarioArgs {
    /// badge.bench.v1.EchoService/Echo (against `badge-bench echo-server`).
    Echo {
        #[arg(long, default_value = "64", value_parser = payload_bytes)]
        payload_bytes: usize,
    },
    /// badge.token.v1.TokenService/CreateToken.
    CreateToken {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// Repeatable; none: the API audiences.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        #[arg(long)]
        expiration_seconds: Option<i64>,
        /// Bind the token to an object: Pod, Secret or Node.
        #[arg(long, requires = "bound_name")]
        bound_kind: Option<String>,
        #[arg(long, requires = "bound_kind")]
        bound_name: Option<String>,
        /// The bound object's uid (optional precondition).
        #[arg(long, requires = "bound_kind")]
        bound_uid: Option<String>,
    },
    /// badge.identity.v1.ServiceAccountService/GetServiceAccount.
    GetServiceAccount {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        name: String,
    },
    /// badge.identity.v1.ServiceAccountService/ListServiceAccounts of one namespace.
    ListServiceAccounts {
        #[arg(long)]
        namespace: String,
        /// Items per page (0: the server's default).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// An answer with fewer items counts as an error.
        #[arg(long, default_value_t = 0)]
        expect_items: usize,
    },
    /// badge.identity.v1.ServiceAccountService/CreateServiceAccount: a new service
    /// account per request, named <name-prefix><n> (n counts up over the run).
    CreateServiceAccount {
        /// An existing namespace.
        #[arg(long)]
        namespace: String,
        /// Default: bench-<process id>- (distinct for runs against one database).
        #[arg(long)]
        name_prefix: Option<String>,
    },
    /// badge.identity.v1.PodService/CreatePod: a new pod per request, named
    /// <name-prefix><n>, of --service-account (admission runs on each).
    CreatePod {
        /// An existing namespace.
        #[arg(long)]
        namespace: String,
        /// An existing service account of that namespace.
        #[arg(long, default_value = "default")]
        service_account: String,
        /// Default: bench-<process id>- (distinct for runs against one database).
        #[arg(long)]
        name_prefix: Option<String>,
    },
    /// CreateServiceAccount, UpdateServiceAccount and DeleteServiceAccount in turn, a
    /// third each: an update changes a label of an account an earlier request
    /// created (sending its resource_version), a delete removes one an earlier
    /// request updated (resource_version and uid preconditions).
    ServiceAccountChurn {
        /// An existing namespace.
        #[arg(long)]
        namespace: String,
        /// Default: bench-<process id>- (distinct for runs against one database).
        #[arg(long)]
        name_prefix: Option<String>,
    },
    /// badge.review.v1.TokenReviewService/CreateTokenReview of one token, again and
    /// again (a warm signature cache); a rejected token counts as an error.
    TokenReview {
        /// File holding the token (surrounding whitespace is ignored).
        #[arg(long)]
        token_file: PathBuf,
        /// Repeatable; none: the API audiences.
        #[arg(long = "audience")]
        audiences: Vec<String>,
    },
    /// badge.review.v1.AccessReviewService/CreateSubjectAccessReview: one RBAC
    /// decision per request, from token-review's in-memory policy.
    SubjectAccessReview {
        /// The user asked about (e.g. system:serviceaccount:dev:builder).
        #[arg(long)]
        user: String,
        /// Repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        verb: String,
        #[arg(long)]
        resource: String,
        #[arg(long, default_value = "")]
        api_group: String,
        #[arg(long, default_value = "")]
        namespace: String,
        /// Count a denial as an error.
        #[arg(long)]
        expect_allowed: bool,
    },
    /// envoy.service.auth.v3.Authorization/Check (token-review's ext_authz) with a
    /// CheckRequest shaped as Envoy's: a dozen headers, a bearer token
    /// (--token-file) or the mesh peer's SPIFFE ID (--principal).
    Check {
        /// File holding the bearer token (surrounding whitespace is ignored).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// `source.principal`, e.g. spiffe://<trust domain>/ns/<ns>/sa/<sa>.
        #[arg(long, default_value = "")]
        principal: String,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// Repeatable: the route's `badge.dev/audiences`; none: the API audiences.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Count a denial as an error.
        #[arg(long)]
        expect_allowed: bool,
    },
    /// istio.v1.auth.IstioCertificateService/CreateCertificate (token-issuer), as
    /// istio-agent asks: `authorization: Bearer <token>` (audience istio-ca) and a
    /// PEM CSR whose only URI SAN is the token's SPIFFE ID. The CSRs (one new key
    /// each) are made before the run; request n sends CSR n mod --pool. An answer
    /// with fewer than two chain entries counts as an error.
    IstioCertificate {
        /// A workload's service-account token, audience istio-ca (repeatable: CSR
        /// i belongs to token i mod the number of tokens).
        #[arg(long = "token-file", required = true)]
        token_files: Vec<PathBuf>,
        /// The SPIFFE ID each token may have, in --token-file order
        /// (spiffe://<trust domain>/ns/<ns>/sa/<sa>).
        #[arg(long = "spiffe-id")]
        spiffe_ids: Vec<String>,
        /// Instead of --spiffe-id: the trust domain (under `badge up`, the host of
        /// the issuer URL, e.g. 127.0.0.1); namespace and service account come
        /// from each token's `sub`.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Subject key type: ECDSAP256, ECDSAP384, ECDSAP521, ED25519, RSA3072, RSA4096.
        #[arg(long, default_value = "ECDSAP256", value_parser = key_type)]
        key_type: KeyType,
        /// CSRs made up front (one key each, generated on every core; RSA keys take
        /// a while each: keep RSA pools small).
        #[arg(long, default_value_t = 64)]
        pool: usize,
        /// `validity_duration`; 0: the server's default lifetime.
        #[arg(long, default_value_t = 0)]
        validity_seconds: i64,
    },
    /// badge.certificates.v1.PodCertificateService/CreatePodCertificate
    /// (token-issuer): one pod's PodCertificateRequest with a pooled
    /// stubPKCS10Request. The caller is the pod's node — connect with its client
    /// certificate (CN=system:node:<node>, O=system:nodes; `badge issue-client`) —
    /// or, with --token-file, the pod itself. Either needs RBAC `create
    /// podcertificaterequests` (certificates.k8s.io); names and uids must match
    /// the live pod, service account and node. An answer that is not `Issued` with
    /// a chain counts as an error.
    PodCertificate {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        pod_uid: String,
        #[arg(long)]
        service_account: String,
        #[arg(long)]
        service_account_uid: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        node_uid: String,
        #[arg(long, default_value = badge_ca::SIGNER_NAME)]
        signer: String,
        #[arg(long)]
        max_expiration_seconds: Option<i32>,
        /// The pod's own pod-bound service-account token (API audiences) as bearer,
        /// instead of the node's client certificate.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Subject key type: ECDSAP256, ECDSAP384, ECDSAP521, ED25519, RSA3072, RSA4096.
        #[arg(long, default_value = "ECDSAP256", value_parser = key_type)]
        key_type: KeyType,
        /// Stub CSRs made up front (one key each, generated on every core; RSA keys
        /// take a while each: keep RSA pools small).
        #[arg(long, default_value_t = 64)]
        pool: usize,
    },
}

impl ScenarioArgs {
    pub fn build(self) -> anyhow::Result<Scenario> {
        Ok(match self {
            ScenarioArgs::Echo { payload_bytes } => Scenario::echo(payload_bytes),
            ScenarioArgs::CreateToken {
                namespace,
                service_account,
                audiences,
                expiration_seconds,
                bound_kind,
                bound_name,
                bound_uid,
            } => Scenario::CreateToken(CreateTokenRequest {
                namespace,
                name: service_account,
                audiences,
                expiration_seconds,
                bound_object_ref: bound_kind.map(|kind| BoundObjectReference {
                    kind,
                    api_version: "v1".to_string(),
                    name: bound_name.unwrap_or_default(),
                    uid: bound_uid.unwrap_or_default(),
                }),
                service_account_uid: String::new(),
            }),
            ScenarioArgs::GetServiceAccount { namespace, name } => {
                Scenario::GetServiceAccount(GetServiceAccountRequest { namespace, name })
            }
            ScenarioArgs::ListServiceAccounts {
                namespace,
                page_size,
                expect_items,
            } => Scenario::ListServiceAccounts {
                request: ListServiceAccountsRequest {
                    namespace,
                    page_size,
                    ..Default::default()
                },
                expect_items,
            },
            ScenarioArgs::CreateServiceAccount {
                namespace,
                name_prefix,
            } => Scenario::CreateServiceAccount(Arc::new(CreateServiceAccounts::new(
                namespace,
                name_prefix.unwrap_or_else(|| format!("bench-{}-", std::process::id())),
            ))),
            ScenarioArgs::CreatePod {
                namespace,
                service_account,
                name_prefix,
            } => Scenario::CreatePod(Arc::new(CreatePods::new(
                namespace,
                service_account,
                name_prefix.unwrap_or_else(|| format!("bench-{}-", std::process::id())),
            ))),
            ScenarioArgs::ServiceAccountChurn {
                namespace,
                name_prefix,
            } => Scenario::ServiceAccountChurn(Arc::new(ServiceAccountChurn::new(
                namespace,
                name_prefix.unwrap_or_else(|| format!("bench-{}-", std::process::id())),
            ))),
            ScenarioArgs::TokenReview {
                token_file,
                audiences,
            } => {
                let token = std::fs::read_to_string(&token_file)
                    .with_context(|| format!("--token-file {}", token_file.display()))?
                    .trim()
                    .to_string();
                if token.is_empty() {
                    bail!("--token-file {}: no token in it", token_file.display());
                }
                Scenario::TokenReview(CreateTokenReviewRequest {
                    spec: Some(TokenReviewSpec { token, audiences }),
                })
            }
            ScenarioArgs::SubjectAccessReview {
                user,
                groups,
                verb,
                resource,
                api_group,
                namespace,
                expect_allowed,
            } => Scenario::SubjectAccessReview {
                request: CreateSubjectAccessReviewRequest {
                    spec: Some(SubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            namespace,
                            verb,
                            group: api_group,
                            resource,
                            ..Default::default()
                        }),
                        user,
                        groups,
                        ..Default::default()
                    }),
                },
                expect_allowed,
            },
            ScenarioArgs::Check {
                token_file,
                principal,
                method,
                path,
                audiences,
                expect_allowed,
            } => {
                let token = match token_file {
                    Some(f) => {
                        let t = std::fs::read_to_string(&f)
                            .with_context(|| format!("--token-file {}", f.display()))?
                            .trim()
                            .to_string();
                        if t.is_empty() {
                            bail!("--token-file {}: no token in it", f.display());
                        }
                        Some(t)
                    }
                    None => None,
                };
                Scenario::Check {
                    request: Box::new(crate::check::Prepared::new(crate::check::envoy_request(
                        &crate::check::CheckSpec {
                            token,
                            principal,
                            method,
                            path,
                            audiences,
                        },
                    ))),
                    expect_allowed,
                }
            }
            ScenarioArgs::IstioCertificate {
                token_files,
                spiffe_ids,
                trust_domain,
                key_type,
                pool,
                validity_seconds,
            } => Scenario::IstioCertificate(Arc::new(IstioPool::build(&IstioSpec {
                token_files,
                spiffe_ids,
                trust_domain,
                key_type,
                pool,
                validity_seconds,
            })?)),
            ScenarioArgs::PodCertificate {
                namespace,
                pod,
                pod_uid,
                service_account,
                service_account_uid,
                node,
                node_uid,
                signer,
                max_expiration_seconds,
                token_file,
                key_type,
                pool,
            } => Scenario::PodCertificate(Arc::new(PodPool::build(&PodSpec {
                namespace,
                pod,
                pod_uid,
                service_account,
                service_account_uid,
                node,
                node_uid,
                signer,
                max_expiration_seconds,
                token_file,
                key_type,
                pool,
            })?)),
        })
    }
}

#[derive(Debug, Args)]
pub struct CeilingArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[arg(long, default_value = "64", value_parser = payload_bytes)]
    pub payload_bytes: usize,
}

/// Runs the command on the runtime Badge's servers use (the echo server then
/// runs on the same scheduler; load clients have their own threads, see
/// [`crate::load`]); errors go to stderr.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match badge_runtime::server::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("badge-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("badge-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::EchoServer(args) => echo_server(args).await,
        Command::Run(args) => {
            let args = *args;
            let config = LoadConfig {
                target: args.target,
                server_name: args.server_name,
                tls: args.tls.files(),
                connections: args.load.connections,
                in_flight: args.load.in_flight,
                duration: args.load.duration,
                warmup: args.load.warmup,
                threads: args.load.threads,
            };
            let scenario = args.scenario.build()?;
            if args.print_request_size {
                let size = scenario
                    .request_size()
                    .with_context(|| format!("{}: its requests differ in size", scenario.name()))?;
                writeln!(std::io::stdout(), "{size}").context("stdout")?;
                return Ok(());
            }
            let report = load::run(&config, scenario).await?;
            print_report(&report, args.load.json)
        }
        Command::Burst(args) => {
            let args = *args;
            let config = BurstConfig {
                target: args.target,
                server_name: args.server_name,
                tls: args.tls.files(),
                requests: args.requests,
                connections: args.connections,
                deadline: args.deadline,
                threads: args.threads,
            };
            let report = burst::run(&config, args.scenario.build()?).await?;
            {
                let mut out = std::io::stdout().lock();
                if args.json {
                    writeln!(out, "{}", report.to_json())
                } else {
                    writeln!(out, "{report}")
                }
                .context("stdout")?;
            }
            if !report.served_all() {
                bail!(
                    "not every request was answered OK within the deadline ({} ok of {}, {} errors, {} cut off)",
                    report.ok,
                    report.requests,
                    report.errors_total(),
                    report.cut_off
                );
            }
            Ok(())
        }
        Command::CsrRate(args) => {
            let key_types = if args.key_types.is_empty() {
                vec![KeyType::EcdsaP256, KeyType::Rsa3072]
            } else {
                args.key_types
            };
            // One core: this thread, off the async runtime.
            let rates = tokio::task::spawn_blocking(move || {
                certificates::csr_rates(&key_types, args.duration)
            })
            .await
            .context("csr-rate thread")??;
            let mut out = std::io::stdout().lock();
            for r in &rates {
                if args.json {
                    writeln!(out, "{}", r.to_json())
                } else {
                    writeln!(out, "{r}")
                }
                .context("stdout")?;
            }
            Ok(())
        }
        Command::Watch(args) => {
            let args = *args;
            let config = crate::watch::WatchConfig {
                target: args.target,
                server_name: args.server_name,
                tls: args.tls.files(),
                watchers: args.watchers,
                rate: args.rate,
                duration: args.duration,
                drain: args.drain,
                namespace: args.namespace,
                name_prefix: args
                    .name_prefix
                    .unwrap_or_else(|| format!("fanout-{}-", std::process::id())),
                ready_file: args.ready_file,
                go_file: args.go_file,
            };
            let report = crate::watch::run(&config).await?;
            let mut out = std::io::stdout().lock();
            if args.json {
                writeln!(out, "{}", report.to_json())
            } else {
                writeln!(out, "{report}")
            }
            .context("stdout")?;
            if report.written == 0 {
                bail!("no write was acknowledged");
            }
            Ok(())
        }
        Command::PodChurn(args) => {
            let args = *args;
            let json = args.json;
            let report = crate::pod_churn::run(args.config()).await?;
            {
                let mut out = std::io::stdout().lock();
                if json {
                    writeln!(out, "{}", report.to_json())
                } else {
                    writeln!(out, "{report}")
                }
                .context("stdout")?;
            }
            if report.pods_completed == 0 || report.errors() > 0 {
                bail!(
                    "{} pods completed, {} errors",
                    report.pods_completed,
                    report.errors()
                );
            }
            Ok(())
        }
        Command::Ceiling(args) => {
            let config = CeilingConfig {
                connections: args.load.connections,
                in_flight: args.load.in_flight,
                duration: args.load.duration,
                warmup: args.load.warmup,
                threads: args.load.threads,
                payload_bytes: args.payload_bytes,
            };
            let report = ceiling::run(&config).await?;
            print_report(&report, args.load.json)
        }
    }
}

async fn echo_server(args: EchoServerArgs) -> anyhow::Result<()> {
    let tls = TlsMaterial::load(&args.tls.files())?;
    let server = EchoServer::start(args.listen, &tls).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.addr()).context("stdout")?;
        out.flush().context("stdout")?;
    }
    badge_runtime::server::shutdown_signal().await;
    server.stop().await
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", report.to_json())
    } else {
        writeln!(out, "{report}")
    }
    .context("stdout")?;
    if report.ok == 0 && report.errors_total() == 0 {
        bail!("no request was answered");
    }
    Ok(())
}
