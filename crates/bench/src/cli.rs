//! The command line: `echo-server`, `run <scenario>` and `ceiling`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use badge_proto::identity::GetServiceAccountRequest;
use badge_proto::review::{
    CreateSubjectAccessReviewRequest, CreateTokenReviewRequest, ResourceAttributes,
    SubjectAccessReviewSpec, TokenReviewSpec,
};
use badge_proto::token::{BoundObjectReference, CreateTokenRequest};
use badge_runtime::tls::{TlsFiles, TlsMaterial};
use clap::{Args, Parser, Subcommand};

use crate::ceiling::{self, CeilingConfig};
use crate::echo::EchoServer;
use crate::load::{self, LoadConfig, MAX_DURATION};
use crate::report::Report;
use crate::scenario::Scenario;

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
    /// Temp dev PKI + in-process echo server + echo load: this machine's mTLS ceiling.
    Ceiling(CeilingArgs),
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
    #[command(subcommand)]
    pub scenario: ScenarioArgs,
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
                    request: Box::new(crate::check::envoy_request(&crate::check::CheckSpec {
                        token,
                        principal,
                        method,
                        path,
                        audiences,
                    })),
                    expect_allowed,
                }
            }
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
            let report = load::run(&config, args.scenario.build()?).await?;
            print_report(&report, args.load.json)
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
