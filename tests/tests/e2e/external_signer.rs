//! Plays kube-apiserver against Badge's ExternalJWTSigner on its Unix socket
//! (reference §9): every check the apiserver's plugin applies, then the assembled
//! token verified with the keys FetchKeys returned.

use std::collections::BTreeSet;

use badge_proto::externaljwt::{v1, v1alpha1};
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

async fn uds(path: std::path::PathBuf) -> Channel {
    // The apiserver dials the socket with insecure credentials and authority localhost.
    Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { tokio::net::UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to the signer socket")
}

#[tokio::test]
async fn apiserver_view_of_the_external_signer() {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let socket = issuer.socket.clone().expect("socket");
    let mode = std::fs::metadata(&socket).expect("socket exists");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.permissions().mode() & 0o777,
            0o600,
            "only the owner may connect"
        );
    }
    let mut c =
        v1::external_jwt_signer_client::ExternalJwtSignerClient::new(uds(socket.clone()).await);

    // Metadata: called once at start-up, must be ≥ 600.
    let meta = c
        .metadata(v1::MetadataRequest {})
        .await
        .expect("metadata")
        .into_inner();
    assert!(meta.max_token_expiration_seconds >= 600);

    // FetchKeys: refresh hint > 0, keys non-empty, valid timestamp, key ids 1..=1024
    // chars, PKIX keys that parse.
    let keys = c
        .fetch_keys(v1::FetchKeysRequest {})
        .await
        .expect("keys")
        .into_inner();
    assert!(keys.refresh_hint_seconds > 0);
    assert!(!keys.keys.is_empty());
    let ts = keys.data_timestamp.expect("data_timestamp");
    assert!(ts.seconds > 0 && (0..1_000_000_000).contains(&ts.nanos));
    let mut published = Vec::new();
    for k in &keys.keys {
        assert!((1..=1024).contains(&k.key_id.len()));
        assert!(!k.key.is_empty());
        let pk = badge_keys::PublicKey::from_spki_der_with_kid(&k.key, k.key_id.clone())
            .expect("PKIX public key");
        published.push((k.key_id.clone(), pk, k.exclude_from_oidc_discovery));
    }

    // Sign what the apiserver would: base64url claims.
    let claims = serde_json::json!({
        "aud": ["https://kubernetes.default.svc"],
        "exp": 4_102_444_800_i64,
        "iat": 1_700_000_000_i64,
        "iss": "https://kubernetes.default.svc",
        "jti": "0b5c6f3e-8f43-4a39-8e0f-0d6b1f0b9a11",
        "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "default", "uid": "2a9e6f3c-1111-4222-8333-444455556666"}},
        "nbf": 1_700_000_000_i64,
        "sub": "system:serviceaccount:default:default"
    });
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
    let signed = c
        .sign(v1::SignJwtRequest {
            claims: payload.clone(),
        })
        .await
        .expect("sign")
        .into_inner();
    // Header: only alg, kid, typ; typ JWT; kid 1..=1024 and not excluded; alg allowed.
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&signed.header).expect("b64 header"))
            .expect("json header");
    let fields: BTreeSet<&str> = header
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(["alg", "kid", "typ"]));
    assert_eq!(header["typ"], "JWT");
    let kid = header["kid"].as_str().expect("kid");
    assert!((1..=1024).contains(&kid.len()));
    assert!(["RS256", "ES256", "ES384", "ES512"].contains(&header["alg"].as_str().expect("alg")));
    let (_, key, excluded) = published
        .iter()
        .find(|(k, _, _)| k == kid)
        .expect("the signing kid is among FetchKeys' keys");
    assert!(!excluded);
    assert!(!signed.signature.is_empty());

    // The apiserver assembles header.payload.signature and verifies it in-process.
    let signing_input = format!("{}.{}", signed.header, payload);
    let sig = URL_SAFE_NO_PAD
        .decode(&signed.signature)
        .expect("b64 signature");
    assert!(
        key.verify(signing_input.as_bytes(), &sig),
        "signature verifies"
    );
    let token = format!("{signing_input}.{}", signed.signature);
    let pem = key.to_pem();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["https://kubernetes.default.svc"]);
    jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).expect("pem"),
        &validation,
    )
    .expect("third-party verification");

    // Garbage claims are refused, not signed.
    for bad in ["", "not base64!", &URL_SAFE_NO_PAD.encode(b"[1,2]")] {
        let err = c
            .sign(v1::SignJwtRequest { claims: bad.into() })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }

    // The v1alpha1 package (Kubernetes 1.32–1.33) answers the same.
    let mut alpha =
        v1alpha1::external_jwt_signer_client::ExternalJwtSignerClient::new(uds(socket).await);
    let m = alpha
        .metadata(v1alpha1::MetadataRequest {})
        .await
        .expect("v1alpha1 metadata")
        .into_inner();
    assert_eq!(
        m.max_token_expiration_seconds,
        meta.max_token_expiration_seconds
    );
}
