//! How the token-issuer fails: store outages, a wrong key-encryption key, bad
//! configuration.

use std::sync::Arc;
use std::time::Duration;

use badge_proto::token::{CreateTokenRequest, token_service_client::TokenServiceClient};
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, PgProxy};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test]
async fn a_store_outage_answers_unavailable_and_recovers_by_itself() {
    let identity = IdentityServer::start().await;
    let proxy = PgProxy::start().await;
    let issuer = IssuerServer::start(
        &identity,
        IssuerOptions {
            database_url: Some(proxy.url_for(&identity.db.url)),
            legacy_tokens: false,
            ..IssuerOptions::default()
        },
    )
    .await;
    let ch = issuer.channel(&identity, &identity.pki.admin);
    let mut tokens = TokenServiceClient::new(ch.clone());
    let mut health = HealthClient::new(ch);
    let req = CreateTokenRequest {
        namespace: "default".into(),
        name: "default".into(),
        ..Default::default()
    };
    tokens
        .create_token(req.clone())
        .await
        .expect("token before the outage");

    proxy.cut();
    let mut unavailable = false;
    for _ in 0..100 {
        match tokens.create_token(req.clone()).await {
            Err(e) if e.code() == Code::Unavailable => {
                unavailable = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        unavailable,
        "CreateToken answers UNAVAILABLE during the outage"
    );
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    proxy.restore().await;
    let mut recovered = false;
    for _ in 0..150 {
        if tokens.create_token(req.clone()).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "tokens are issued again once the store is back");
    let mut serving = false;
    for _ in 0..50 {
        let s = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        if s == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving);
}

#[tokio::test]
async fn a_wrong_key_encryption_key_refuses_to_start() {
    let identity = IdentityServer::start().await;
    // The first issuer generates and seals a signing key with its KEK.
    let first = IssuerServer::start(&identity, IssuerOptions::default()).await;
    drop(first);
    // A second one with a different KEK must not sign with garbage: it refuses.
    let dir = tempfile::tempdir().expect("tmp");
    let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config = IssuerServer::config(
        &identity,
        dir.path(),
        oidc.local_addr().expect("addr"),
        &IssuerOptions::default(),
    );
    let other_kek = dir.path().join("other-kek");
    let (_, b64) = badge_keys::Kek::generate().expect("kek");
    std::fs::write(&other_kek, b64.as_bytes()).expect("write");
    config.keys.kek_file = Some(other_kek);
    let store = identity.db.store().await;
    let err = badge_token_issuer::serve(
        &config,
        store,
        Arc::new(badge_core::SystemClock),
        badge_token_issuer::Listeners { grpc, oidc },
        std::future::pending(),
    )
    .await
    .expect_err("refused");
    let text = format!("{err:#}");
    assert!(text.contains("key-encryption key"), "{text}");
    assert!(
        !text.contains("PRIVATE"),
        "no key material in errors: {text}"
    );
}

#[test]
fn bad_configuration_names_every_setting() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = badge_runtime::pki::generate(dir.path(), &[]).expect("pki");
    let s = pki.server("token-issuer");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[server.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[database]
url = "postgres://postgres@127.0.0.1:5432/x"
[token]
issuers = ["https://badge.example/?tenant=a", "https://badge.example/?tenant=a"]
max_expiration_seconds = 60
[keys]
algorithm = "HS256"
[oidc]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
"#,
        ca = pki.ca.display(),
        cert = s.cert.display(),
        key = s.key.display()
    );
    let path = dir.path().join("issuer.toml");
    std::fs::write(&path, toml).expect("write");
    let err =
        badge_runtime::config::load::<badge_token_issuer::IssuerConfig>(Some(&path), vec![], &[])
            .expect_err("invalid");
    let text = err.to_string();
    for needle in [
        "token.issuers[0]",
        "query",
        "duplicate",
        "max_expiration_seconds",
        "keys.algorithm",
        "keys.kek_file",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}
