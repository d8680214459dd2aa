//! `docker-compose.yml` stays in step with the binaries: every command and health
//! check parses with the binaries' own clap definitions, every `BADGE_*` variable
//! is a setting the services' config loaders accept (the whole environment must
//! load without a single complaint once `pki-init` has run), the published ports
//! are the listen ports and `badge up`'s, and the stack runs: `pki-init` and
//! `migrate` run for real, the three services start from the compose environment
//! and their compose health checks answer SERVING over mTLS.
//!
//! No Docker is needed: paths under the `badge-data` volume are mapped to a temp
//! dir and the compose database to a fresh test database.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use badge_cli::cli::{Cli as BadgeCli, Command as BadgeCommand};
use badge_cli::health::{HealthArgs, ServingStatus};
use badge_runtime::config::{ConfigError, Validate, load};
use clap::Parser;
use serde_yaml::Value;

use crate::common::ec_csr;

/// Where the `badge-data` volume is mounted in the Badge containers.
const VOLUME: &str = "/var/lib/badge";
const BADGE_IMAGE: &str = "badge:dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug, Clone)]
struct Service {
    name: String,
    image: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// (host, container)
    ports: Vec<(u16, u16)>,
    volumes: Vec<String>,
    healthcheck: Vec<String>,
    depends_on: BTreeMap<String, String>,
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    match v {
        Value::Null => vec![],
        Value::Sequence(s) => s
            .iter()
            .map(|x| scalar(x).unwrap_or_else(|| panic!("{what}: {x:?} is not a scalar")))
            .collect(),
        other => panic!("{what}: expected a list, got {other:?}"),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compose() -> BTreeMap<String, Service> {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("compose file");
    let mut doc: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("YAML merge keys");
    let services = doc
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    let mut out = BTreeMap::new();
    for (name, s) in services {
        let name = scalar(name).expect("service name");
        let get = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
        let command = match get("command") {
            Value::String(c) => c.split_whitespace().map(str::to_string).collect(),
            v => strings(&v, &format!("{name}.command")),
        };
        let env = match get("environment") {
            Value::Null => vec![],
            Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    let k = scalar(k).expect("env name");
                    let v = scalar(v).unwrap_or_else(|| panic!("{name}: {k} has no value"));
                    (k, v)
                })
                .collect(),
            Value::Sequence(_) => panic!("{name}.environment: use a mapping"),
            other => panic!("{name}.environment: {other:?}"),
        };
        let ports = strings(&get("ports"), &format!("{name}.ports"))
            .iter()
            .map(|p| {
                // [ip:]host:container; the ip (if any) is checked by its own test.
                let (host, container) = p
                    .rsplit_once(':')
                    .map(|(h, c)| (h.rsplit_once(':').map_or(h, |(_, h)| h), c))
                    .unwrap_or_else(|| panic!("{name}: port {p:?} is not host:container"));
                let n = |x: &str| {
                    x.parse::<u16>()
                        .unwrap_or_else(|_| panic!("{name}: port {p:?}"))
                };
                (n(host), n(container))
            })
            .collect();
        let healthcheck = match get("healthcheck").get("test") {
            Some(t) => strings(t, &format!("{name}.healthcheck.test")),
            None => vec![],
        };
        let depends_on = match get("depends_on") {
            Value::Null => BTreeMap::new(),
            Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    let c = v.get("condition").and_then(scalar).unwrap_or_default();
                    (scalar(k).expect("depends_on name"), c)
                })
                .collect(),
            other => panic!("{name}.depends_on: use the long form, got {other:?}"),
        };
        out.insert(
            name.clone(),
            Service {
                image: get("image").as_str().unwrap_or_default().to_string(),
                command,
                env,
                ports,
                volumes: strings(&get("volumes"), &format!("{name}.volumes")),
                healthcheck,
                depends_on,
                name,
            },
        );
    }
    out
}

/// A command of one of the four binaries, parsed by its real clap definition.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a handful per test run
enum Parsed {
    Badge(BadgeCli),
    Identity(badge_identity::cli::Cli),
    Issuer(badge_token_issuer::cli::Cli),
    Review(badge_token_review::cli::Cli),
}

fn parse(argv: &[String]) -> Result<Parsed, clap::Error> {
    match argv.first().map(String::as_str) {
        Some("badge") => BadgeCli::try_parse_from(argv).map(Parsed::Badge),
        Some("badge-identity") => {
            badge_identity::cli::Cli::try_parse_from(argv).map(Parsed::Identity)
        }
        Some("badge-token-issuer") => {
            badge_token_issuer::cli::Cli::try_parse_from(argv).map(Parsed::Issuer)
        }
        Some("badge-token-review") => {
            badge_token_review::cli::Cli::try_parse_from(argv).map(Parsed::Review)
        }
        other => panic!("{other:?} is not a Badge binary"),
    }
}

/// The commands a service runs: its argv, or each `&&`-joined command of an
/// `sh -ec` script (plain words, no quoting).
fn commands(s: &Service) -> Vec<Vec<String>> {
    match s.command.first().map(String::as_str) {
        Some("sh") => {
            assert_eq!(s.command.len(), 3, "{}: sh -ec '<script>'", s.name);
            assert_eq!(
                s.command[1], "-ec",
                "{}: scripts stop at the first error",
                s.name
            );
            s.command[2]
                .split("&&")
                .map(|c| c.split_whitespace().map(str::to_string).collect())
                .collect()
        }
        _ => vec![s.command.clone()],
    }
}

fn parse_all(s: &Service) -> Vec<Parsed> {
    commands(s)
        .iter()
        .map(|argv| {
            parse(argv).unwrap_or_else(|e| panic!("{}: {argv:?} does not parse:\n{e}", s.name))
        })
        .collect()
}

fn health_args(s: &Service) -> HealthArgs {
    assert_eq!(
        s.healthcheck.first().map(String::as_str),
        Some("CMD"),
        "{}: health check must be [\"CMD\", \"badge\", \"health\", ...]",
        s.name
    );
    match parse(&s.healthcheck[1..]) {
        Ok(Parsed::Badge(BadgeCli {
            command: BadgeCommand::Health(args),
        })) => args,
        Ok(other) => panic!("{}: health check is not `badge health`: {other:?}", s.name),
        Err(e) => panic!("{}: health check does not parse:\n{e}", s.name),
    }
}

fn badge_services(all: &BTreeMap<String, Service>) -> BTreeMap<String, Service> {
    all.iter()
        .filter(|(_, s)| s.image == BADGE_IMAGE)
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

/// The three servers: compose service name and binary.
const SERVERS: [(&str, &str); 3] = [
    ("identity", "badge-identity"),
    ("token-issuer", "badge-token-issuer"),
    ("token-review", "badge-token-review"),
];

#[test]
fn every_command_and_health_check_parses() {
    let all = compose();
    let badge = badge_services(&all);
    let names: BTreeSet<&str> = badge.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "identity",
            "migrate",
            "pki-init",
            "token-issuer",
            "token-review"
        ]),
        "services built from the Badge image"
    );
    for s in badge.values() {
        let parsed = parse_all(s);
        assert!(!parsed.is_empty(), "{}: no command", s.name);
    }
    // pki-init: the dev PKI and the key-encryption key, into the volume.
    let pki = parse_all(&badge["pki-init"]);
    assert!(
        matches!(
            &pki[..],
            [
                Parsed::Badge(BadgeCli {
                    command: BadgeCommand::DevPki { force: false, .. }
                }),
                Parsed::Badge(BadgeCli {
                    command: BadgeCommand::Kek { .. }
                })
            ]
        ),
        "pki-init: {pki:?}"
    );
    assert!(matches!(
        &parse_all(&badge["migrate"])[..],
        [Parsed::Badge(BadgeCli {
            command: BadgeCommand::Migrate { .. }
        })]
    ));
    assert_eq!(
        all["migrate"]
            .depends_on
            .get("postgres")
            .map(String::as_str),
        Some("service_healthy")
    );
    for (name, binary) in SERVERS {
        let s = &badge[name];
        assert_eq!(s.command.first().map(String::as_str), Some(binary));
        let serve = match &parse_all(s)[..] {
            [Parsed::Identity(c)] => matches!(c.command, badge_identity::cli::Command::Serve),
            [Parsed::Issuer(c)] => matches!(c.command, badge_token_issuer::cli::Command::Serve),
            [Parsed::Review(c)] => matches!(c.command, badge_token_review::cli::Command::Serve),
            other => panic!("{name}: {other:?}"),
        };
        assert!(serve, "{name} must `serve`");
        for dep in ["migrate", "pki-init"] {
            assert_eq!(
                s.depends_on.get(dep).map(String::as_str),
                Some("service_completed_successfully"),
                "{name} waits for {dep}"
            );
        }
        let h = health_args(s);
        assert!(
            h.endpoint.starts_with("https://localhost:"),
            "{name}: {}",
            h.endpoint
        );
    }
    // Postgres is checked with pg_isready.
    assert_eq!(
        all["postgres"].healthcheck.get(1).map(String::as_str),
        Some("pg_isready")
    );
}

/// Replaces the volume path and the compose database URL.
struct Rewrite {
    volume: PathBuf,
    database_url: Option<String>,
}

impl Rewrite {
    fn apply(&self, value: &str) -> String {
        if let Some(url) = &self.database_url
            && value.starts_with("postgres://")
        {
            return url.clone();
        }
        match value.strip_prefix(VOLUME) {
            Some(rest) => format!("{}{rest}", self.volume.display()),
            None => value.to_string(),
        }
    }

    fn argv(&self, argv: &[String]) -> Vec<String> {
        argv.iter().map(|a| self.apply(a)).collect()
    }

    fn env(&self, s: &Service) -> Vec<(String, String)> {
        s.env
            .iter()
            .map(|(k, v)| (k.clone(), self.apply(v)))
            .collect()
    }

    fn health(&self, s: &Service) -> HealthArgs {
        let mut h = health_args(s);
        h.ca = PathBuf::from(self.apply(&h.ca.display().to_string()));
        h.cert = PathBuf::from(self.apply(&h.cert.display().to_string()));
        h.key = PathBuf::from(self.apply(&h.key.display().to_string()));
        h
    }
}

/// Runs pki-init's commands (the real `badge dev-pki` and `badge kek`) into `dir`.
async fn pki_init(services: &BTreeMap<String, Service>, rw: &Rewrite) {
    for argv in commands(&services["pki-init"]) {
        let cli = BadgeCli::try_parse_from(rw.argv(&argv)).expect("pki-init parses");
        badge_cli::cli::run(cli).await.expect("pki-init runs");
    }
}

/// Loads a service's config from exactly its compose environment (and `overrides`);
/// every complaint fails.
fn config<T: serde::de::DeserializeOwned + Validate>(
    s: &Service,
    rw: &Rewrite,
    overrides: &[String],
) -> T {
    for (k, _) in &s.env {
        if let Some(rest) = k.strip_prefix("BADGE_") {
            // The loader ignores BADGE_ names without `__`: a typo there would be
            // silently dropped.
            assert!(
                rest.contains("__"),
                "{}: {k} is not BADGE_<SECTION>__<KEY>",
                s.name
            );
        }
    }
    match load::<T>(None, rw.env(s), overrides) {
        Ok(c) => c,
        Err(ConfigError::Invalid(errors)) => {
            panic!("{}: invalid configuration:\n{}", s.name, errors.join("\n"))
        }
        Err(e) => panic!("{}: {e}", s.name),
    }
}

fn ports(s: &Service) -> BTreeSet<u16> {
    for (host, container) in &s.ports {
        assert_eq!(host, container, "{}: publish ports unchanged", s.name);
    }
    s.ports.iter().map(|(_, c)| *c).collect()
}

fn listen_port(s: &Service, addr: SocketAddr) -> u16 {
    assert!(
        addr.ip().is_unspecified(),
        "{}: listen on 0.0.0.0 inside the container, not {addr}",
        s.name
    );
    addr.port()
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{endpoint}: no port"))
}

#[tokio::test]
async fn environment_is_real_settings_and_ports_match_badge_up() {
    let all = compose();
    let dir = tempfile::tempdir().expect("tempdir");
    let rw = Rewrite {
        volume: dir.path().to_path_buf(),
        database_url: None,
    };
    pki_init(&all, &rw).await;

    let up = match BadgeCli::try_parse_from(["badge", "up"])
        .expect("badge up")
        .command
    {
        BadgeCommand::Up(a) => a,
        other => panic!("{other:?}"),
    };

    let id = &all["identity"];
    let identity: badge_identity::IdentityConfig = config(id, &rw, &[]);
    assert_eq!(
        ports(id),
        BTreeSet::from([listen_port(id, identity.server.listen)])
    );
    assert_eq!(identity.server.listen.port(), up.identity_listen.port());
    assert!(
        identity.encryption.kek_file.is_some(),
        "identity seals Secrets"
    );

    let is = &all["token-issuer"];
    let issuer: badge_token_issuer::IssuerConfig = config(is, &rw, &[]);
    assert_eq!(
        ports(is),
        BTreeSet::from([
            listen_port(is, issuer.server.listen),
            listen_port(is, issuer.oidc.listen)
        ])
    );
    assert_eq!(issuer.server.listen.port(), up.issuer_listen.port());
    assert_eq!(issuer.oidc.listen.port(), up.oidc_listen.port());
    // The issuer URL and the advertised address point at the published OIDC port.
    assert_eq!(
        port_of(&issuer.token.issuers[0]),
        issuer.oidc.listen.port(),
        "token.issuers[0] is the OIDC listener"
    );

    let rv = &all["token-review"];
    let review: badge_token_review::ReviewConfig = config(rv, &rw, &[]);
    let webhook = review.webhook.as_ref().expect("webhook");
    assert_eq!(
        ports(rv),
        BTreeSet::from([
            listen_port(rv, review.server.listen),
            listen_port(rv, webhook.listen)
        ])
    );
    assert_eq!(review.server.listen.port(), up.review_listen.port());
    assert_eq!(webhook.listen.port(), up.webhook_listen.port());
    assert_eq!(
        review.review.issuers, issuer.token.issuers,
        "token-review accepts what the issuer signs"
    );

    // Peers reach identity by its compose service name and port, and verify it.
    for peer in [
        issuer
            .identity
            .as_ref()
            .map(|p| (&p.endpoint, &p.server_name)),
        review
            .identity
            .as_ref()
            .map(|p| (&p.endpoint, &p.server_name)),
    ] {
        let (endpoint, server_name) = peer.expect("identity peer configured");
        assert_eq!(
            endpoint,
            &format!("https://identity:{}", identity.server.listen.port())
        );
        assert_eq!(server_name, "identity");
    }

    // Health checks: the service's own gRPC port, files pki-init wrote.
    for (s, listen) in [
        (id, identity.server.listen),
        (is, issuer.server.listen),
        (rv, review.server.listen),
    ] {
        let h = rw.health(s);
        assert_eq!(port_of(&h.endpoint), listen.port(), "{}", s.name);
        for f in [&h.ca, &h.cert, &h.key] {
            assert!(
                f.is_file(),
                "{}: {} not written by pki-init",
                s.name,
                f.display()
            );
        }
    }

    // The services only read the volume; pki-init writes it.
    for (name, _) in SERVERS {
        assert!(
            all[name]
                .volumes
                .iter()
                .any(|v| v == &format!("badge-data:{VOLUME}:ro")),
            "{name}: mounts badge-data read-only at {VOLUME}"
        );
    }
    assert!(
        all["pki-init"]
            .volumes
            .contains(&format!("badge-data:{VOLUME}"))
    );
}

#[tokio::test]
async fn pki_init_keeps_what_exists() {
    let all = compose();
    let dir = tempfile::tempdir().expect("tempdir");
    let rw = Rewrite {
        volume: dir.path().to_path_buf(),
        database_url: None,
    };
    pki_init(&all, &rw).await;
    let files = |d: &Path| {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(d).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                out.insert(p.clone(), std::fs::read(&p).expect("read"));
            }
        }
        out
    };
    let pki_dir = dir.path().join("pki");
    let (before_pki, before_kek) = (files(&pki_dir), files(dir.path()));
    assert!(!before_pki.is_empty() && !before_kek.is_empty());
    pki_init(&all, &rw).await;
    assert_eq!(files(&pki_dir), before_pki, "the PKI is kept");
    assert_eq!(
        files(dir.path()),
        before_kek,
        "the key-encryption key is kept"
    );
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

/// Points a compose health check at the port a test server got.
fn at_port(mut h: HealthArgs, port: u16) -> HealthArgs {
    h.endpoint = format!("https://localhost:{port}");
    h
}

async fn until_serving(name: &str, h: &HealthArgs) {
    let mut last = None;
    for _ in 0..200 {
        match badge_cli::health::check(h).await {
            Ok(ServingStatus::Serving) => return,
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}: compose health check never passed: {last:?}");
}

/// The stack as compose runs it: pki-init and migrate for real, then each service
/// from its compose environment (ports and the database swapped for test ones),
/// until its compose health check passes.
#[tokio::test]
async fn the_stack_starts_and_its_health_checks_pass() {
    let all = compose();
    let db = badge_store::testing::fresh_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rw = Rewrite {
        volume: dir.path().to_path_buf(),
        database_url: Some(db.url.clone()),
    };
    pki_init(&all, &rw).await;
    for argv in commands(&all["migrate"]) {
        let cli = BadgeCli::try_parse_from(rw.argv(&argv)).expect("migrate parses");
        badge_cli::cli::run(cli).await.expect("badge migrate");
    }
    let clock: Arc<dyn badge_core::Clock> = Arc::new(badge_core::SystemClock);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();

    // identity
    let cfg: badge_identity::IdentityConfig = config(&all["identity"], &rw, &[]);
    let store = badge_store::Store::connect(
        &cfg.database.url,
        badge_store::StoreOptions {
            sealer: cfg.encryption.sealer().expect("kek"),
            ..badge_store::StoreOptions::default()
        },
    )
    .await
    .expect("store");
    let listener = bind().await;
    let id_port = listener.local_addr().expect("addr").port();
    let (c, stop) = (clock.clone(), stopped());
    tasks.push(tokio::spawn(async move {
        badge_identity::serve(&cfg, store, c, listener, stop).await
    }));
    let id_health = at_port(rw.health(&all["identity"]), id_port);
    until_serving("identity", &id_health).await;
    // The name peers verify is in identity's certificate; another is refused.
    let mut as_peer = id_health.clone();
    as_peer.server_name = Some("identity".into());
    assert_eq!(
        badge_cli::health::check(&as_peer).await.expect("as a peer"),
        ServingStatus::Serving
    );
    as_peer.server_name = Some("elsewhere".into());
    assert!(badge_cli::health::check(&as_peer).await.is_err());

    // Peers reach identity at the test port.
    let peer = format!("identity.endpoint=https://127.0.0.1:{id_port}");

    // token-issuer
    let cfg: badge_token_issuer::IssuerConfig =
        config(&all["token-issuer"], &rw, std::slice::from_ref(&peer));
    let kek = badge_keys::Kek::load(cfg.keys.kek_file.as_deref(), None)
        .expect("kek")
        .expect("kek configured");
    let store = badge_store::Store::connect(
        &cfg.database.url,
        badge_store::StoreOptions {
            sealer: Some(Arc::new(kek)),
            ..badge_store::StoreOptions::default()
        },
    )
    .await
    .expect("store");
    let listeners = badge_token_issuer::Listeners {
        grpc: bind().await,
        oidc: bind().await,
    };
    let is_port = listeners.grpc.local_addr().expect("addr").port();
    let issuer_trust_domain = cfg
        .ca
        .trust_domain(&cfg.token.issuers[0])
        .expect("ca trust domain");
    let (c, stop) = (clock.clone(), stopped());
    tasks.push(tokio::spawn(async move {
        badge_token_issuer::serve(&cfg, store, c, listeners, stop).await
    }));
    until_serving(
        "token-issuer",
        &at_port(rw.health(&all["token-issuer"]), is_port),
    )
    .await;

    // token-review
    let cfg: badge_token_review::ReviewConfig = config(&all["token-review"], &rw, &[peer]);
    let store = badge_store::Store::connect(
        &cfg.database.url,
        badge_store::StoreOptions {
            sealer: cfg.encryption.sealer().expect("kek"),
            ..badge_store::StoreOptions::default()
        },
    )
    .await
    .expect("store");
    let listeners = badge_token_review::Listeners {
        grpc: bind().await,
        webhook: Some(bind().await),
    };
    let rv_port = listeners.grpc.local_addr().expect("addr").port();
    // The mesh: token-review vouches for the SPIFFE IDs the issuer's CA certifies.
    assert_eq!(
        cfg.mesh_trust_domain().expect("mesh trust domain"),
        issuer_trust_domain,
        "token-review's mesh.trust_domain is the CA's trust domain"
    );
    let webhook_addr = listeners
        .webhook
        .as_ref()
        .expect("webhook")
        .local_addr()
        .expect("addr");
    let (c, stop) = (clock.clone(), stopped());
    tasks.push(tokio::spawn(async move {
        badge_token_review::serve(&cfg, store, c, listeners, stop).await
    }));
    until_serving(
        "token-review",
        &at_port(rw.health(&all["token-review"]), rv_port),
    )
    .await;

    // The webhook requires a credential: anonymous → 401; pki-init's
    // kube-apiserver certificate (the one in its webhook kubeconfig) is let in and
    // authorized by the bootstrap policy.
    let pki = badge_runtime::pki::DevPki::at(&dir.path().join("pki"));
    let kubeconfig = std::fs::read_to_string(dir.path().join("pki/webhook-kubeconfig.yaml"))
        .expect("pki-init writes the webhook kubeconfig");
    assert!(
        kubeconfig.contains("server: https://localhost:8447/"),
        "{kubeconfig}"
    );
    let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"x.y.z"}}"#;
    let (status, _, _) =
        badge_tests::https_post(webhook_addr, "/", &pki.ca, None, "application/json", body).await;
    assert_eq!(status, 401);
    let (status, _, out) = badge_tests::https_post(
        webhook_addr,
        "/",
        &pki.ca,
        Some(&pki.kube_apiserver),
        "application/json",
        body,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));

    // The workload CA as compose runs it: Istio's CreateCertificate with a
    // service-account token, the chain verified by openssl against the served roots.
    compose_certificate(&pki, is_port, issuer_trust_domain.as_str(), dir.path()).await;

    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.expect("join").expect("service stopped cleanly");
    }
}

/// The webhook is published on the loopback interface only, and requires client
/// certificates from the dev CA.
#[test]
fn the_webhook_is_published_on_loopback_with_a_client_ca() {
    let raw: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("docker-compose.yml")).expect("compose"),
    )
    .expect("yaml");
    let ports: Vec<&str> = raw["services"]["token-review"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(ports.contains(&"127.0.0.1:8447:8447"), "{ports:?}");
    let env = &raw["services"]["token-review"]["environment"];
    assert_eq!(
        env["BADGE_WEBHOOK__CLIENT_CA"].as_str(),
        Some("/var/lib/badge/pki/ca.pem")
    );
}

/// `badge health` fails, rather than hanging, when nothing listens.
#[tokio::test]
async fn health_fails_when_nothing_listens() {
    let all = compose();
    let dir = tempfile::tempdir().expect("tempdir");
    let rw = Rewrite {
        volume: dir.path().to_path_buf(),
        database_url: None,
    };
    pki_init(&all, &rw).await;
    let port = bind().await.local_addr().expect("addr").port(); // closed on drop
    let mut h = at_port(rw.health(&all["identity"]), port);
    h.timeout_seconds = 2;
    assert!(badge_cli::health::check(&h).await.is_err());
}

/// A certificate for `default/default` from the compose token-issuer: a token with
/// audience `istio-ca` (as the admin), a CSR by the openssl CLI, Istio's
/// CreateCertificate with only the bearer token, `openssl verify` against the roots
/// of GetTrustBundle.
async fn compose_certificate(pki: &badge_runtime::pki::DevPki, port: u16, td: &str, dir: &Path) {
    use badge_proto::certificates::GetTrustBundleRequest;
    use badge_proto::certificates::certificate_authority_service_client::CertificateAuthorityServiceClient;
    use badge_proto::istio::v1::auth::IstioCertificateRequest;
    use badge_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
    use badge_proto::token::CreateTokenRequest;
    use badge_proto::token::token_service_client::TokenServiceClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    let ca = std::fs::read(&pki.ca).expect("ca");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");
    let endpoint = Channel::from_shared(format!("https://127.0.0.1:{port}")).expect("url");
    let admin = endpoint
        .clone()
        .tls_config(tls.clone().identity(Identity::from_pem(
            std::fs::read(&pki.admin.cert).expect("cert"),
            std::fs::read(&pki.admin.key).expect("key"),
        )))
        .expect("tls")
        .connect_lazy();
    let anonymous = endpoint.tls_config(tls).expect("tls").connect_lazy();
    let bearer = |t: &str| -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        format!("Bearer {t}").parse().expect("header")
    };
    let token = |audiences: &[&str]| {
        let mut c = TokenServiceClient::new(admin.clone());
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        async move {
            c.create_token(CreateTokenRequest {
                namespace: "default".into(),
                name: "default".into(),
                audiences,
                ..Default::default()
            })
            .await
            .expect("token")
            .into_inner()
            .token
        }
    };
    let uri = format!("spiffe://{td}/ns/default/sa/default");
    let csr = ec_csr(dir, "w", &uri);
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", bearer(&token(&["istio-ca"]).await));
    let chain = IstioCertificateServiceClient::new(anonymous.clone())
        .create_certificate(req)
        .await
        .expect("CreateCertificate")
        .into_inner()
        .cert_chain;
    assert!(chain.len() >= 2, "leaf … root: {}", chain.len());
    let mut req = tonic::Request::new(GetTrustBundleRequest {});
    req.metadata_mut()
        .insert("authorization", bearer(&token(&[]).await));
    let bundle = CertificateAuthorityServiceClient::new(anonymous)
        .get_trust_bundle(req)
        .await
        .expect("GetTrustBundle")
        .into_inner();
    std::fs::write(dir.join("roots.pem"), &bundle.roots_pem).expect("roots");
    std::fs::write(dir.join("chain.pem"), chain.concat()).expect("chain");
    std::fs::write(dir.join("leaf.pem"), &chain[0]).expect("leaf");
    let out = std::process::Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ])
        .current_dir(dir)
        .output()
        .expect("openssl verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("leaf.pem: OK"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
