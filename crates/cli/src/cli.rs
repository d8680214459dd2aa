//! The `badge` command line: its clap definition (also parsed by the tests that keep
//! `docker-compose.yml` and the docs in step with it) and what each subcommand does.

use std::path::PathBuf;
use std::process::ExitCode;

use badge_runtime::pki;
use badge_store::{Store, StoreOptions};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "badge", version, about = "Badge operator commands")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run identity, token-issuer and token-review together in one process on an
    /// embedded SQLite store (or Postgres with --database-url), creating the
    /// database, the dev PKI and the key-encryption key on first run.
    Up(crate::up::UpArgs),
    /// Create a development PKI: a CA, server and client certificates for each
    /// service, an admin client certificate (O=system:masters), a kube-apiserver
    /// client certificate and its token-review webhook kubeconfig
    /// (<dir>/webhook-kubeconfig.yaml).
    DevPki {
        /// Output directory (created 0700).
        #[arg(long, default_value = "badge-data/pki")]
        dir: PathBuf,
        /// The webhook URL written into webhook-kubeconfig.yaml.
        #[arg(long, default_value = "https://localhost:8447/")]
        webhook_url: String,
        /// Extra DNS names or IPs for the server certificates (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Replace an existing PKI (otherwise an existing CA is kept).
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate from the dev CA: CN=<user>, O=<group>...
    IssueClient {
        #[arg(long, default_value = "badge-data/pki")]
        dir: PathBuf,
        /// File stem: writes <stem>.pem and <stem>-key.pem.
        #[arg(long)]
        stem: String,
        #[arg(long)]
        user: String,
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Create a key-encryption key (base64 of 32 random bytes, mode 0600) for
    /// signing keys and Secret data at rest; an existing file is kept.
    Kek {
        #[arg(long, default_value = "badge-data/kek")]
        out: PathBuf,
    },
    /// Create the database if needed and apply pending migrations, then exit
    /// (`postgres://…`, or `sqlite://PATH` for an embedded file).
    Migrate {
        #[arg(long, env = "BADGE_DATABASE__URL")]
        database_url: String,
    },
    /// Ask a Badge gRPC listener for its grpc.health.v1 status over mTLS; exits 0
    /// only on SERVING (for container and load-balancer health checks).
    Health(crate::health::HealthArgs),
}

/// Runs one `badge` command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => {
            badge_runtime::telemetry::init(&badge_runtime::config::LogConfig::default());
            crate::up::run(args).await?;
        }
        Command::DevPki {
            dir,
            webhook_url,
            names,
            force,
        } => {
            let existing = pki::DevPki::at(&dir);
            let kubeconfig = dir.join(crate::up::WEBHOOK_KUBECONFIG);
            if existing.exists() && !force {
                // An older PKI gets the kube-apiserver certificate it lacks.
                let p = crate::up::ensure_kube_apiserver_cert(&existing)?;
                crate::up::write_webhook_kubeconfig(&p, &webhook_url, &kubeconfig)?;
                println!(
                    "dev PKI already exists in {} (use --force to replace); webhook kubeconfig: {}",
                    dir.display(),
                    kubeconfig.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let p = pki::generate(&dir, &names)?;
            crate::up::write_webhook_kubeconfig(&p, &webhook_url, &kubeconfig)?;
            println!("dev PKI written to {}", p.dir.display());
            println!("  CA:     {}", p.ca.display());
            println!(
                "  admin:  {} / {}",
                p.admin.cert.display(),
                p.admin.key.display()
            );
            for s in pki::SERVICES {
                let sv = p.server(s);
                println!("  {s}: {} / {}", sv.cert.display(), sv.key.display());
            }
            println!(
                "  kube-apiserver (webhook client): {} / {}",
                p.kube_apiserver.cert.display(),
                p.kube_apiserver.key.display()
            );
            println!(
                "  webhook kubeconfig: {} ({webhook_url})",
                kubeconfig.display()
            );
        }
        Command::IssueClient {
            dir,
            stem,
            user,
            groups,
        } => {
            let g: Vec<&str> = groups.iter().map(String::as_str).collect();
            let p = pki::issue_client(&dir, &stem, &user, &g)?;
            println!("{} / {}", p.cert.display(), p.key.display());
        }
        Command::Kek { out } => {
            if out.exists() {
                println!("{} already exists: kept", out.display());
            } else {
                if let Some(dir) = out.parent()
                    && !dir.as_os_str().is_empty()
                {
                    // A new data directory is private (0700), as `badge up` makes it.
                    pki::create_dir_if_missing(dir)?;
                }
                crate::up::ensure_kek(&out)?;
                println!(
                    "key-encryption key written to {} (keep it out of the database and its backups)",
                    out.display()
                );
            }
        }
        Command::Migrate { database_url } => {
            if Store::create_database_if_missing(&database_url).await? {
                println!("created database");
            }
            let store = Store::connect(&database_url, StoreOptions::default()).await?;
            store.migrate().await?;
            println!("migrations applied");
        }
        Command::Health(args) => {
            let status = crate::health::check(&args).await?;
            println!("{}", status.as_str_name());
            if status != crate::health::ServingStatus::Serving {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
