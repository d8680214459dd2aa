//! Abuse of the gRPC listeners (issue #13): what a client that is not (yet)
//! authenticated, or that sends too much, can make a server hold — and that a
//! legitimate caller measured in the same test keeps being served. Real listeners
//! on loopback, real TLS, raw HTTP/2 where the limit lives below gRPC. Every loop
//! is bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use badge_proto::review::{
    CreateTokenReviewRequest, TokenReviewSpec,
    token_review_service_client::TokenReviewServiceClient,
};
use badge_proto::token::{CreateTokenRequest, token_service_client::TokenServiceClient};
use badge_runtime::limits::{DEFAULT_MAX_REQUEST, Limits};
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, ReviewServer, meta, pb};
use rustls_pki_types::pem::PemObject as _;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tonic::Code;

/// A TLS client to `server` trusting the dev CA, with or without the admin
/// certificate, ALPN h2.
fn connector(server: &IdentityServer, with_cert: bool) -> tokio_rustls::TlsConnector {
    let ca = std::fs::read(&server.pki.ca).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("ca pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = if with_cert {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&server.pki.admin.cert)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_file(&server.pki.admin.key).expect("key");
        builder
            .with_client_auth_cert(certs, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls(server: &IdentityServer, with_cert: bool) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(server.addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    connector(server, with_cert).connect(name, tcp).await
}

/// An HTTP/2 connection whose driver runs on its own task; the handle resolves
/// when the server closes it.
async fn h2(
    server: &IdentityServer,
    with_cert: bool,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let io = tls(server, with_cert).await.expect("tls");
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

fn grpc_request(path: &str, bearer: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(()).expect("request")
}

/// The gRPC status of a response whose headers (trailers-only) or trailers say it.
async fn grpc_status(resp: h2::client::ResponseFuture) -> Option<i32> {
    let resp = resp.await.ok()?;
    let from = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(code) = from(resp.headers()) {
        return Some(code);
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        chunk.ok()?;
    }
    body.trailers().await.ok().flatten().as_ref().and_then(from)
}

/// p50 and p99 of `n` sequential admin GetNamespace calls.
async fn get_namespace_latency(server: &IdentityServer, n: usize) -> (Duration, Duration) {
    let mut ns = pb::namespace_service_client::NamespaceServiceClient::new(server.admin().await);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let began = Instant::now();
        ns.get_namespace(pb::GetNamespaceRequest {
            name: "default".into(),
        })
        .await
        .expect("a legitimate call is served");
        samples.push(began.elapsed());
    }
    samples.sort();
    (samples[n / 2], samples[(n * 99 / 100).min(n - 1)])
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_advertises_its_stream_limit() {
    let server = IdentityServer::start().await;
    let (send, driver) = h2(&server, false).await;
    // The server's SETTINGS arrive right after the handshake.
    let mut send = send.ready().await.expect("ready");
    for _ in 0..100 {
        if send.current_max_send_streams() != usize::MAX {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = send.ready().await.expect("ready");
    }
    assert_eq!(
        send.current_max_send_streams(),
        Limits::default().max_concurrent_streams as usize,
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );
    driver.abort();
}

/// 2,000 unauthenticated streams, each announcing a 1 MiB message and sending
/// 16 KiB of it: every one is refused UNAUTHENTICATED from its headers, none of
/// the bodies is waited for, and an admin measured meanwhile stays fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_stream_flood_costs_little_and_starves_no_one() {
    let server = IdentityServer::start().await;
    let (_, unloaded_p99) = get_namespace_latency(&server, 200).await;
    let rss_before = rss_kib();
    let connections = 8;
    let per_connection = 250;
    let flood = tokio::spawn({
        let mut handles = Vec::new();
        for _ in 0..connections {
            let (send, driver) = h2(&server, false).await;
            handles.push((send, driver));
        }
        async move {
            let mut refused = 0usize;
            let mut other = 0usize;
            for (send, driver) in handles {
                let mut waits = Vec::new();
                for _ in 0..per_connection {
                    let mut s = send.clone().ready().await.expect("stream slot");
                    let (resp, mut body) = s
                        .send_request(
                            grpc_request("/badge.identity.v1.SecretService/ListSecrets", None),
                            false,
                        )
                        .expect("send");
                    // The prefix announces a 1 MiB message; only 16 KiB follow.
                    let mut chunk = vec![0u8; 16 * 1024];
                    chunk[1..5].copy_from_slice(&(1024u32 * 1024).to_be_bytes());
                    let _ = body.send_data(chunk.into(), false);
                    waits.push(tokio::spawn(async move {
                        let code = grpc_status(resp).await;
                        drop(body);
                        code
                    }));
                }
                for w in waits {
                    match tokio::time::timeout(Duration::from_secs(20), w).await {
                        Ok(Ok(Some(16))) => refused += 1,
                        _ => other += 1,
                    }
                }
                driver.abort();
            }
            (refused, other)
        }
    });
    // Legitimate traffic while the flood runs.
    let (_, loaded_p99) = get_namespace_latency(&server, 200).await;
    let (refused, other) = flood.await.expect("flood");
    let rss_after = rss_kib();
    println!(
        "unauthenticated flood: {refused} refused, {other} other; admin GetNamespace p99 {unloaded_p99:?} unloaded → {loaded_p99:?} under flood; RSS {rss_before} → {rss_after} KiB"
    );
    assert_eq!(other, 0, "every flood stream is refused UNAUTHENTICATED");
    assert_eq!(refused, connections * per_connection);
    assert!(
        loaded_p99 <= (unloaded_p99 * 10).max(Duration::from_millis(50)),
        "legitimate p99 {loaded_p99:?} vs {unloaded_p99:?} unloaded"
    );
    // 2,000 streams × 1 MiB would be 2 GiB if bodies were buffered before the
    // credential check; allow the test process's own growth.
    assert!(
        rss_after.saturating_sub(rss_before) < 256 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// Requests past the method's limit are refused naming it; a Secret write near
/// Kubernetes' 1 MiB limit still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limits_are_per_method() {
    let server = IdentityServer::start().await;
    let admin = server.admin().await;
    let huge = "a".repeat(DEFAULT_MAX_REQUEST + 1024);
    let e = pb::pod_service_client::PodServiceClient::new(admin.clone())
        .list_pods(pb::ListPodsRequest {
            namespace: "default".into(),
            label_selector: huge,
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "request message larger than {DEFAULT_MAX_REQUEST} bytes, the limit of /badge.identity.v1.PodService/ListPods"
        )
    );
    let data = std::collections::HashMap::from([("blob".to_string(), vec![7u8; 900 * 1024])]);
    let created = pb::secret_service_client::SecretServiceClient::new(admin)
        .max_decoding_message_size(4 * 1024 * 1024)
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                metadata: meta("default", "big"),
                data,
                ..Default::default()
            }),
        })
        .await
        .expect("a 900 KiB Secret fits its method's limit")
        .into_inner();
    assert_eq!(created.data["blob"].len(), 900 * 1024);
}

/// A connection with no request in flight is closed after the idle timeout; a
/// long-running request keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let limits = Limits {
        idle_timeout_seconds: 1,
        ..Limits::default()
    };
    let server = IdentityServer::start_with(&[], limits).await;
    let (_send, driver) = h2(&server, true).await;
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the server closed the idle connection")
        .expect("driver");
    let after = began.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    // A Watch in flight for longer than the timeout keeps its connection.
    let mut watch = pb::watch_service_client::WatchServiceClient::new(server.admin().await)
        .watch(pb::WatchRequest {
            kinds: vec![pb::Kind::Namespace as i32],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut ns = pb::namespace_service_client::NamespaceServiceClient::new(server.admin().await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ns.create_namespace(pb::CreateNamespaceRequest {
        namespace: Some(pb::Namespace {
            metadata: meta("", "late"),
            ..Default::default()
        }),
    })
    .await
    .expect("namespace");
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(e)) if format!("{e:?}").contains("\"late\"") => return true,
                Ok(Some(_)) => continue,
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        got,
        "the watch outlived the idle timeout and saw the change"
    );
}

/// Beyond `max_connections` a new connection is closed at once; a slot freed is
/// usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let server = IdentityServer::start_with(&[], limits).await;
    // Let the start-up check's connection close first; then hold four.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(h2(&server, true).await);
    }
    let over = tokio::time::timeout(Duration::from_secs(5), async {
        match tls(&server, true).await {
            Err(_) => true,
            // A TLS 1.3 client may finish before the server's close reaches it:
            // the connection must then be dead on first use.
            Ok(io) => match h2::client::handshake(io).await {
                Err(_) => true,
                Ok((send, conn)) => {
                    let conn = tokio::spawn(conn);
                    let r = send.ready().await;
                    let closed = tokio::time::timeout(Duration::from_secs(2), conn)
                        .await
                        .is_ok();
                    r.is_err() || closed
                }
            },
        }
    })
    .await
    .expect("bounded");
    assert!(over, "a fifth connection is refused");
    let (_, driver) = held.pop().expect("held");
    driver.abort();
    drop(held.pop());
    // The freed slot serves a normal client.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut ns =
            pb::namespace_service_client::NamespaceServiceClient::new(server.admin().await);
        if ns
            .get_namespace(pb::GetNamespaceRequest {
                name: "default".into(),
            })
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "a freed slot is usable");
}

/// A token with the real issuer, a random `kid` and garbage for a signature.
fn forged(issuer: &str, i: usize) -> String {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    format!(
        "{}.{}.{}",
        b64(&serde_json::json!({"alg": "ES256", "kid": format!("forged-{i}-{now}"), "typ": "JWT"})),
        b64(&serde_json::json!({
            "iss": issuer, "sub": "system:serviceaccount:default:default",
            "aud": [issuer], "iat": now, "nbf": now, "exp": now + 600,
        })),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 64])
    )
}

/// p99 of `n` sequential CreateToken calls.
async fn create_token_p99(
    tokens: &mut TokenServiceClient<tonic::transport::Channel>,
    n: usize,
) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let began = Instant::now();
        tokens
            .create_token(CreateTokenRequest {
                namespace: "default".into(),
                name: "default".into(),
                ..Default::default()
            })
            .await
            .expect("legitimate CreateToken");
        samples.push(began.elapsed());
    }
    samples.sort();
    samples[(n * 99 / 100).min(n - 1)]
}

/// Forged tokens with random key ids, sent as TokenReviews and as bearer
/// credentials to every listener, are all refused, and issuance in the same
/// process group stays within 10× its unloaded p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kid_tokens_are_refused_and_starve_no_one() {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let review = ReviewServer::start(&identity, &issuer).await;
    let mut tokens = TokenServiceClient::new(issuer.channel(&identity, &identity.pki.admin));
    let unloaded = create_token_p99(&mut tokens, 100).await;
    let reviews = TokenReviewServiceClient::new(review.channel(&identity, &identity.pki.admin));
    let iss = issuer.issuer.clone();
    let flood = tokio::spawn(async move {
        let mut refused = 0;
        for i in 0..2_000 {
            let status = reviews
                .clone()
                .create_token_review(CreateTokenReviewRequest {
                    spec: Some(TokenReviewSpec {
                        token: forged(&iss, i),
                        ..Default::default()
                    }),
                })
                .await
                .expect("a review answers")
                .into_inner()
                .status
                .expect("status");
            if !status.authenticated {
                refused += 1;
            }
        }
        refused
    });
    let loaded = create_token_p99(&mut tokens, 100).await;
    // The same forged tokens as bearer credentials: UNAUTHENTICATED everywhere.
    for (name, ch) in [
        ("identity", badge_tests_anonymous(&identity, identity.addr)),
        (
            "token-review",
            badge_tests_anonymous(&identity, review.grpc),
        ),
    ] {
        let mut req = tonic::Request::new(pb::GetNamespaceRequest {
            name: "default".into(),
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", forged(&issuer.issuer, 0))
                .parse()
                .expect("header"),
        );
        // token-review serves no NamespaceService: the credential is refused
        // before the method is even looked up.
        let e = pb::namespace_service_client::NamespaceServiceClient::new(ch)
            .get_namespace(req)
            .await
            .expect_err("forged bearer");
        assert_eq!(e.code(), Code::Unauthenticated, "{name}: {e:?}");
    }
    let refused = flood.await.expect("flood");
    println!(
        "2000 random-kid reviews refused: {refused}; CreateToken p99 {unloaded:?} unloaded → {loaded:?}"
    );
    assert_eq!(refused, 2_000);
    assert!(
        loaded <= (unloaded * 10).max(Duration::from_millis(50)),
        "CreateToken p99 {loaded:?} vs {unloaded:?} unloaded"
    );
}

/// A channel to `addr` trusting the dev CA, with no client certificate.
fn badge_tests_anonymous(
    identity: &IdentityServer,
    addr: std::net::SocketAddr,
) -> tonic::transport::Channel {
    let ca = std::fs::read(&identity.pki.ca).expect("ca");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_lazy()
}
