//! Issue 13 finding 6 end to end: a slow-loris client holding thousands of
//! connections to the token-issuer's OIDC discovery listener (public, HTTPS)
//! neither locks out a legitimate discovery client nor starves token issuance in
//! the same process, and the server closes the idle connections after its
//! handshake timeout (default limits, real servers, loopback only).

use std::time::{Duration, Instant};

use badge_proto::token::CreateTokenRequest;
use badge_proto::token::token_service_client::TokenServiceClient;
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const SLOW: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_on_discovery_does_not_starve_discovery_or_issuance() {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let mut tokens = TokenServiceClient::new(issuer.channel(&identity, &identity.pki.admin));
    let request = || CreateTokenRequest {
        namespace: "default".into(),
        name: "default".into(),
        audiences: vec!["my-api".into()],
        ..Default::default()
    };
    // Warm: one token before the attack (connection set up, key loaded).
    tokens.create_token(request()).await.expect("token");

    // 2,000 connections that never start TLS: about twice the default cap.
    let began = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(TcpStream::connect(issuer.oidc).await.expect("connect"));
    }
    let opened = began.elapsed();

    // Legitimate traffic, measured while the listener is full.
    let t = Instant::now();
    let (status, _, body) = badge_tests::https_get(
        issuer.oidc,
        "/.well-known/openid-configuration",
        &identity.pki.ca,
    )
    .await;
    let discovery = t.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let t = Instant::now();
    let resp = tokens
        .create_token(request())
        .await
        .expect("token under load");
    let issuance = t.elapsed();
    assert!(!resp.into_inner().token.is_empty());
    eprintln!(
        "{SLOW} idle connections opened in {opened:?}; discovery GET {discovery:?}, CreateToken {issuance:?}"
    );
    assert!(
        discovery < Duration::from_secs(2) && issuance < Duration::from_secs(2),
        "discovery {discovery:?}, CreateToken {issuance:?} while {SLOW} idle connections are held (opened in {opened:?})"
    );

    // Every idle connection is closed by the server: evicted at the cap, or at
    // the 5 s handshake timeout.
    let deadline = began + Duration::from_secs(8);
    let mut still_open = 0;
    for c in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 16];
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            _ => still_open += 1,
        }
    }
    eprintln!("all closed by the server after {:?}", began.elapsed());
    assert_eq!(
        still_open, 0,
        "connections the server did not close within 8 s"
    );
}
