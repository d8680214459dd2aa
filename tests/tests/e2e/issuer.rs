//! The token-issuer end to end: identity + token-issuer on one Postgres, real mTLS,
//! generated clients; tokens checked with jsonwebtoken (and PyJWT in oidc.rs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use badge_proto::token::{
    self as tpb, BoundObjectReference, CreateTokenRequest, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use badge_tests::{
    IdentityServer, IssuerOptions, IssuerServer, create_legacy_token_secret, meta, pb,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Captured, Objects, uid};

struct Env {
    identity: IdentityServer,
    issuer: IssuerServer,
    tokens: TokenServiceClient<Channel>,
    keys: KeyServiceClient<Channel>,
    id: Channel,
}

async fn env(opts: IssuerOptions) -> Env {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, opts).await;
    let ch = issuer.channel(&identity, &identity.pki.admin);
    let id = identity.admin().await;
    Env {
        tokens: TokenServiceClient::new(ch.clone()),
        keys: KeyServiceClient::new(ch),
        identity,
        issuer,
        id,
    }
}

impl Objects for Env {
    fn identity_admin(&self) -> Channel {
        self.id.clone()
    }
}

impl Env {
    async fn token(
        &self,
        req: CreateTokenRequest,
    ) -> Result<tpb::CreateTokenResponse, tonic::Status> {
        self.tokens
            .clone()
            .create_token(req)
            .await
            .map(|r| r.into_inner())
    }

    async fn key_pems(&self) -> Vec<(String, String)> {
        self.keys
            .clone()
            .list_keys(tpb::ListKeysRequest {})
            .await
            .expect("keys")
            .into_inner()
            .keys
            .into_iter()
            .map(|k| (k.kid, k.public_key_pem))
            .collect()
    }
}

fn part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).expect("b64")).expect("json")
}

/// Verifies with jsonwebtoken against the published key named by the header's kid.
async fn verify(e: &Env, token: &str, audience: &str) -> Value {
    let header = part(token, 0);
    let kid = header["kid"].as_str().expect("kid").to_string();
    let pems = e.key_pems().await;
    let pem = &pems
        .iter()
        .find(|(k, _)| *k == kid)
        .expect("kid published")
        .1;
    let alg = match header["alg"].as_str() {
        Some("RS256") => jsonwebtoken::Algorithm::RS256,
        Some("ES256") => jsonwebtoken::Algorithm::ES256,
        other => panic!("unexpected alg {other:?}"),
    };
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()),
        _ => jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()),
    }
    .expect("key");
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[e.issuer.issuer.as_str()]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("token verifies")
        .claims
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[tokio::test]
async fn unbound_token_has_kubernetes_claims() {
    let e = env(IssuerOptions::default()).await;
    e.ns("apps").await;
    let sa = e.sa("apps", "web").await;
    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .expect("token");
    let header = part(&resp.token, 0);
    assert_eq!(
        header.as_object().expect("obj").len(),
        2,
        "exactly alg and kid: {header}"
    );
    assert_eq!(header["alg"], "ES256");
    let claims = verify(&e, &resp.token, &e.issuer.issuer).await;
    assert_eq!(claims["iss"], e.issuer.issuer.as_str());
    assert_eq!(claims["sub"], "system:serviceaccount:apps:web");
    // The default audience is the API audiences (every issuer), always an array.
    assert_eq!(claims["aud"], serde_json::json!([e.issuer.issuer]));
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));
    assert!((iat - now()).abs() < 5);
    let k = &claims["kubernetes.io"];
    assert_eq!(k["namespace"], "apps");
    assert_eq!(k["serviceaccount"]["name"], "web");
    assert_eq!(k["serviceaccount"]["uid"], uid(&sa.metadata).as_str());
    assert!(k.get("pod").is_none() && k.get("warnafter").is_none());
    let jti = claims["jti"].as_str().expect("jti");
    assert_eq!(resp.credential_id, format!("JTI={jti}"));
    assert_eq!(resp.expiration_timestamp.expect("exp").seconds, iat + 3600);
}

#[tokio::test]
async fn pod_bound_tokens_carry_the_node_and_extend_at_3607() {
    let e = env(IssuerOptions::default()).await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let node = e.node("worker-1").await;
    let pod = e.pod("apps", "web-1", "web", "worker-1").await;
    let orphan = e.pod("apps", "web-2", "web", "gone-node").await;
    let bound = |p: &pb::Pod, api_version: &str| BoundObjectReference {
        kind: "Pod".into(),
        api_version: api_version.into(),
        name: p.metadata.as_ref().expect("m").name.clone(),
        uid: uid(&p.metadata),
    };

    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: vec!["vault".into()],
            bound_object_ref: Some(bound(&pod, "v1")),
            ..Default::default()
        })
        .await
        .expect("pod token");
    let claims = verify(&e, &resp.token, "vault").await;
    let k = &claims["kubernetes.io"];
    assert_eq!(k["pod"]["name"], "web-1");
    assert_eq!(k["pod"]["uid"], uid(&pod.metadata).as_str());
    assert_eq!(k["node"]["name"], "worker-1");
    assert_eq!(k["node"]["uid"], uid(&node.metadata).as_str());

    // Node record missing: name only. api_version "" works (only the group counts).
    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: vec!["vault".into()],
            bound_object_ref: Some(bound(&orphan, "")),
            ..Default::default()
        })
        .await
        .expect("orphan token");
    let claims = verify(&e, &resp.token, "vault").await;
    assert_eq!(
        claims["kubernetes.io"]["node"],
        serde_json::json!({"name": "gone-node"})
    );

    // 3607 s, pod-bound, API audiences only → the JWT lives a year, the status says +3607.
    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            expiration_seconds: Some(3607),
            bound_object_ref: Some(bound(&pod, "v1")),
            ..Default::default()
        })
        .await
        .expect("extended");
    let claims = verify(&e, &resp.token, &e.issuer.issuer).await;
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 365 * 24 * 3600));
    assert_eq!(
        claims["kubernetes.io"]["warnafter"].as_i64(),
        Some(iat + 3607)
    );
    assert_eq!(resp.expiration_timestamp.expect("ts").seconds, iat + 3607);

    // With a non-API audience there is no extension.
    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: vec!["vault".into()],
            expiration_seconds: Some(3607),
            bound_object_ref: Some(bound(&pod, "v1")),
            ..Default::default()
        })
        .await
        .expect("not extended");
    let claims = verify(&e, &resp.token, "vault").await;
    assert_eq!(
        claims["exp"].as_i64(),
        Some(claims["iat"].as_i64().expect("iat") + 3607)
    );
}

#[tokio::test]
async fn secret_and_node_binding() {
    let e = env(IssuerOptions::default()).await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let node = e.node("worker-1").await;
    let secret = pb::secret_service_client::SecretServiceClient::new(e.id.clone())
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                metadata: meta("apps", "bound"),
                ..Default::default()
            }),
        })
        .await
        .expect("secret")
        .into_inner();
    for (kind, name, want_uid) in [
        ("Secret", "bound", uid(&secret.metadata)),
        ("Node", "worker-1", uid(&node.metadata)),
    ] {
        let resp = e
            .token(CreateTokenRequest {
                namespace: "apps".into(),
                name: "web".into(),
                audiences: vec!["a".into()],
                bound_object_ref: Some(BoundObjectReference {
                    kind: kind.into(),
                    api_version: "v1".into(),
                    name: name.into(),
                    uid: want_uid.clone(),
                }),
                ..Default::default()
            })
            .await
            .expect("bound token");
        let claims = verify(&e, &resp.token, "a").await;
        let field = kind.to_lowercase();
        assert_eq!(claims["kubernetes.io"][&field]["uid"], want_uid.as_str());
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_kubernetes_texts() {
    let e = env(IssuerOptions::default()).await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    e.sa("apps", "other").await;
    let pod = e.pod("apps", "p", "other", "").await;
    let base = CreateTokenRequest {
        namespace: "apps".into(),
        name: "web".into(),
        ..Default::default()
    };
    let cases: Vec<(CreateTokenRequest, Code, &str)> = vec![
        (
            CreateTokenRequest {
                expiration_seconds: Some(599),
                ..base.clone()
            },
            Code::InvalidArgument,
            "expiration_seconds",
        ),
        (
            CreateTokenRequest {
                expiration_seconds: Some((1 << 32) + 1),
                ..base.clone()
            },
            Code::InvalidArgument,
            "2^32",
        ),
        (
            CreateTokenRequest {
                audiences: (0..101).map(|i| format!("a{i}")).collect(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "audiences",
        ),
        (
            CreateTokenRequest {
                audiences: vec!["x".repeat(1025)],
                ..base.clone()
            },
            Code::InvalidArgument,
            "audiences[0]",
        ),
        (
            CreateTokenRequest {
                bound_object_ref: Some(BoundObjectReference {
                    kind: "ConfigMap".into(),
                    api_version: "v1".into(),
                    name: "x".into(),
                    uid: String::new(),
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "cannot bind token to object of type",
        ),
        (
            CreateTokenRequest {
                bound_object_ref: Some(BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "apps/v1".into(),
                    name: "p".into(),
                    uid: String::new(),
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "cannot bind token to object of type",
        ),
        (
            CreateTokenRequest {
                bound_object_ref: Some(BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: "p".into(),
                    uid: String::new(),
                }),
                ..base.clone()
            },
            Code::InvalidArgument,
            "different serviceaccount",
        ),
        (
            CreateTokenRequest {
                name: "other".into(),
                bound_object_ref: Some(BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: "p".into(),
                    uid: "00000000-0000-4000-8000-000000000000".into(),
                }),
                ..base.clone()
            },
            Code::Aborted,
            "might have been deleted and then recreated",
        ),
        (
            CreateTokenRequest {
                bound_object_ref: Some(BoundObjectReference {
                    kind: "Secret".into(),
                    api_version: "v1".into(),
                    name: "nope".into(),
                    uid: String::new(),
                }),
                ..base.clone()
            },
            Code::NotFound,
            "nope",
        ),
        (
            CreateTokenRequest {
                name: "ghost".into(),
                ..base.clone()
            },
            Code::NotFound,
            "ghost",
        ),
        (
            CreateTokenRequest {
                service_account_uid: "00000000-0000-4000-8000-000000000000".into(),
                ..base.clone()
            },
            Code::Aborted,
            "does not match the UID of the service account",
        ),
        (
            CreateTokenRequest {
                namespace: "Bad_NS".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "namespace",
        ),
    ];
    for (i, (req, code, text)) in cases.into_iter().enumerate() {
        let err = e.token(req).await.expect_err("refused");
        assert_eq!(err.code(), code, "case {i}: {}", err.message());
        assert!(
            err.message().contains(text),
            "case {i}: {:?} lacks {text:?}",
            err.message()
        );
    }
    // The pod exists and its uid is fine for its own service account.
    e.token(CreateTokenRequest {
        name: "other".into(),
        bound_object_ref: Some(BoundObjectReference {
            kind: "Pod".into(),
            api_version: "v1".into(),
            name: "p".into(),
            uid: uid(&pod.metadata),
        }),
        ..base
    })
    .await
    .expect("own pod");
}

#[tokio::test]
async fn a_configured_maximum_shortens_with_a_warning() {
    let e = env(IssuerOptions {
        max_expiration_seconds: 7200,
        ..IssuerOptions::default()
    })
    .await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            expiration_seconds: Some(86400),
            ..Default::default()
        })
        .await
        .expect("token");
    assert_eq!(
        resp.warnings,
        vec!["requested expiration of 86400 seconds shortened to 7200 seconds".to_string()]
    );
    let claims = verify(&e, &resp.token, &e.issuer.issuer).await;
    assert_eq!(
        claims["exp"].as_i64(),
        Some(claims["iat"].as_i64().expect("iat") + 7200)
    );
}

#[tokio::test]
async fn rotation_publishes_first_then_signs_and_keeps_the_old_key_published() {
    let e = env(IssuerOptions {
        algorithm: "RS256",
        propagation_delay_seconds: 2,
        ..IssuerOptions::default()
    })
    .await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let req = CreateTokenRequest {
        namespace: "apps".into(),
        name: "web".into(),
        ..Default::default()
    };
    let first = e.token(req.clone()).await.expect("token");
    let old_kid = part(&first.token, 0)["kid"]
        .as_str()
        .expect("kid")
        .to_string();
    assert_eq!(part(&first.token, 0)["alg"], "RS256");

    let rotated = e
        .keys
        .clone()
        .rotate_keys(tpb::RotateKeysRequest {
            algorithm: "ES256".into(),
        })
        .await
        .expect("rotate")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(rotated.state, tpb::KeyState::Published as i32);
    assert_ne!(rotated.kid, old_kid);

    // Published: in JWKS at once, but not signing yet.
    let mut in_jwks = false;
    for _ in 0..40 {
        let (status, _, body) =
            badge_tests::https_get(e.issuer.oidc, "/openid/v1/jwks", &e.identity.pki.ca).await;
        assert_eq!(status, 200);
        let jwks: Value = serde_json::from_slice(&body).expect("jwks");
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        if kids.contains(&rotated.kid.as_str()) {
            assert!(kids.contains(&old_kid.as_str()));
            in_jwks = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(in_jwks, "the new key is published before it signs");
    let during = e.token(req.clone()).await.expect("token");
    assert_eq!(part(&during.token, 0)["kid"], old_kid.as_str());

    // After the propagation delay the new key signs; the old one is retired, still published.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = e.token(req).await.expect("token");
    assert_eq!(part(&after.token, 0)["kid"], rotated.kid.as_str());
    assert_eq!(part(&after.token, 0)["alg"], "ES256");
    verify(&e, &first.token, &e.issuer.issuer).await;
    verify(&e, &after.token, &e.issuer.issuer).await;
    let keys = e
        .keys
        .clone()
        .list_keys(tpb::ListKeysRequest {})
        .await
        .expect("list")
        .into_inner()
        .keys;
    let state = |kid: &str| keys.iter().find(|k| k.kid == kid).expect("listed").state;
    assert_eq!(state(&old_kid), tpb::KeyState::Retired as i32);
    assert_eq!(state(&rotated.kid), tpb::KeyState::Active as i32);
    let old = keys.iter().find(|k| k.kid == old_kid).expect("old");
    assert!(old.remove_after.is_some());
}

#[tokio::test]
async fn discovery_documents_match_kubernetes() {
    let e = env(IssuerOptions::default()).await;
    let ca = &e.identity.pki.ca;
    let (status, headers, body) =
        badge_tests::https_get(e.issuer.oidc, "/.well-known/openid-configuration", ca).await;
    assert_eq!(status, 200);
    let h = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(h("cache-control"), "public, max-age=3600");
    let doc: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(doc["issuer"], e.issuer.issuer.as_str());
    assert_eq!(
        doc["jwks_uri"],
        format!("https://{}/openid/v1/jwks", e.issuer.oidc).as_str()
    );
    assert_eq!(
        doc["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );

    let (status, headers, body) =
        badge_tests::https_get(e.issuer.oidc, "/openid/v1/jwks", ca).await;
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/jwk-set+json")
    );
    let jwks: Value = serde_json::from_slice(&body).expect("json");
    let key = &jwks["keys"][0];
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    let (status, _, _) = badge_tests::https_get(e.issuer.oidc, "/nope", ca).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn third_party_pyjwt_verifies_from_the_discovery_url_alone() {
    let e = env(IssuerOptions {
        algorithm: "RS256",
        ..IssuerOptions::default()
    })
    .await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: vec!["oidc-discovery-test".into()],
            ..Default::default()
        })
        .await
        .expect("token");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/verify_oidc.py");
    let ca = e.identity.pki.ca.clone();
    let issuer = e.issuer.issuer.clone();
    let token = resp.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg("--issuer")
            .arg(&issuer)
            .arg("--ca")
            .arg(&ca)
            .arg("--token")
            .arg(&token)
            .arg("--audience")
            .arg("oidc-discovery-test")
            .output()
    })
    .await
    .expect("join")
    .expect("python3 (with `pip install pyjwt[crypto]`, as .ci/run does)");
    assert!(
        out.status.success(),
        "PyJWT refused the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: Value = serde_json::from_slice(&out.stdout).expect("claims");
    assert_eq!(claims["sub"], "system:serviceaccount:apps:web");
}

#[tokio::test]
async fn legacy_secret_tokens_are_minted_and_follow_their_service_account() {
    let e = env(IssuerOptions::default()).await;
    e.ns("apps").await;
    let sa = e.sa("apps", "legacy").await;
    let mut secrets = pb::secret_service_client::SecretServiceClient::new(e.id.clone());
    create_legacy_token_secret(e.id.clone(), "apps", "legacy-token", "legacy").await;
    let get = pb::GetSecretRequest {
        namespace: "apps".into(),
        name: "legacy-token".into(),
    };
    let mut filled = None;
    for _ in 0..100 {
        let s = secrets
            .get_secret(get.clone())
            .await
            .expect("get")
            .into_inner();
        if s.data.contains_key("token") {
            filled = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = filled.expect("token filled within 5 s");
    assert_eq!(s.data["namespace"], b"apps".to_vec());
    assert_eq!(
        s.data["ca.crt"],
        std::fs::read(&e.identity.pki.ca).expect("ca")
    );
    assert_eq!(
        s.metadata.as_ref().expect("m").annotations["kubernetes.io/service-account.uid"],
        uid(&sa.metadata)
    );
    let token = String::from_utf8(s.data["token"].clone()).expect("utf8");
    let claims = part(&token, 1);
    assert_eq!(
        claims,
        serde_json::json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "apps",
            "kubernetes.io/serviceaccount/secret.name": "legacy-token",
            "kubernetes.io/serviceaccount/service-account.name": "legacy",
            "kubernetes.io/serviceaccount/service-account.uid": uid(&sa.metadata),
            "sub": "system:serviceaccount:apps:legacy",
        })
    );

    // Deleting the service account deletes its token Secrets.
    pb::service_account_service_client::ServiceAccountServiceClient::new(e.id.clone())
        .delete_service_account(pb::DeleteServiceAccountRequest {
            namespace: "apps".into(),
            name: "legacy".into(),
            ..Default::default()
        })
        .await
        .expect("delete sa");
    let mut gone = false;
    for _ in 0..100 {
        if secrets
            .get_secret(get.clone())
            .await
            .is_err_and(|e| e.code() == Code::NotFound)
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "token secret deleted with its service account");
}

#[tokio::test]
async fn callers_outside_masters_may_not_create_tokens() {
    let e = env(IssuerOptions::default()).await;
    let user = e.identity.issue("bob", "bob", &["developers"]);
    let err = TokenServiceClient::new(e.issuer.channel(&e.identity, &user))
        .create_token(CreateTokenRequest {
            namespace: "default".into(),
            name: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("serviceaccounts/token"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn revoke_token_records_the_credential_until_expiry() {
    let e = env(IssuerOptions::default()).await;
    let resp = e
        .token(CreateTokenRequest {
            namespace: "default".into(),
            name: "default".into(),
            ..Default::default()
        })
        .await
        .expect("token");
    let exp = resp.expiration_timestamp.expect("exp");
    let revoked = e
        .tokens
        .clone()
        .revoke_token(tpb::RevokeTokenRequest {
            credential_id: resp.credential_id.clone(),
            expires_at: Some(exp),
            reason: "leaked in a log".into(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.credential_id, resp.credential_id);
    assert_eq!(revoked.expires_at, Some(exp));
    // Idempotent, and the bare jti is accepted too.
    let jti = resp.credential_id.trim_start_matches("JTI=").to_string();
    e.tokens
        .clone()
        .revoke_token(tpb::RevokeTokenRequest {
            credential_id: jti.clone(),
            ..Default::default()
        })
        .await
        .expect("again");
    // The record is in the store for every reviewer to follow.
    let rec = e
        .identity
        .db
        .store()
        .await
        .get(badge_core::Kind::Revocation, "", &jti)
        .await
        .expect("revocation stored");
    let rev = badge_core::revocation::Revocation::from_bytes(&rec.data).expect("decode");
    assert_eq!(rev.revoked_by, "admin");
    for (bad, field) in [("JTI=../etc", "credential_id"), ("", "credential_id")] {
        let err = e
            .tokens
            .clone()
            .revoke_token(tpb::RevokeTokenRequest {
                credential_id: bad.into(),
                ..Default::default()
            })
            .await
            .expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    let err = e
        .tokens
        .clone()
        .revoke_token(tpb::RevokeTokenRequest {
            credential_id: resp.credential_id,
            expires_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("past");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// A second RevokeToken never reports an expiry the store does not hold: an
/// earlier expiry answers the stored (later) one, a later expiry extends the
/// stored revocation — revocation outlives the token it revokes.
#[tokio::test]
async fn revoking_again_answers_and_keeps_the_later_expiry() {
    let e = env(IssuerOptions::default()).await;
    let resp = e
        .token(CreateTokenRequest {
            namespace: "default".into(),
            name: "default".into(),
            ..Default::default()
        })
        .await
        .expect("token");
    let exp = resp.expiration_timestamp.expect("exp").seconds;
    let jti = resp.credential_id.trim_start_matches("JTI=").to_string();
    let revoke = |seconds: i64| {
        let mut tokens = e.tokens.clone();
        let credential_id = resp.credential_id.clone();
        async move {
            tokens
                .revoke_token(tpb::RevokeTokenRequest {
                    credential_id,
                    expires_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                    reason: String::new(),
                })
                .await
                .expect("revoke")
                .into_inner()
                .expires_at
                .expect("expires_at")
                .seconds
        }
    };
    let stored = || async {
        let rec = e
            .identity
            .db
            .store()
            .await
            .get(badge_core::Kind::Revocation, "", &jti)
            .await
            .expect("revocation stored");
        badge_core::revocation::Revocation::from_bytes(&rec.data)
            .expect("decode")
            .expires_at_unix
    };
    assert_eq!(revoke(exp + 600).await, exp + 600);
    // Earlier than stored: the answer is what is stored, and it stays.
    assert_eq!(revoke(exp - 60).await, exp + 600);
    assert_eq!(stored().await, exp + 600);
    // Later than stored: the revocation is extended.
    assert_eq!(revoke(exp + 3600).await, exp + 3600);
    assert_eq!(stored().await, exp + 3600);
}

/// Collects formatted log lines in memory.
#[tokio::test]
async fn every_issued_token_is_audited_without_the_token() {
    let (captured, _guard) = Captured::start(tracing::Level::INFO);
    let e = env(IssuerOptions::default()).await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let resp = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: vec!["vault".into()],
            ..Default::default()
        })
        .await
        .expect("token");
    let logs = captured.text();
    let audit: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["fields"]["event"] == "token.issued")
        .collect();
    assert_eq!(audit.len(), 1, "exactly one audit event per token");
    let f = &audit[0]["fields"];
    assert_eq!(f["requester"], "admin");
    assert_eq!(f["namespace"], "apps");
    assert_eq!(f["service_account"], "web");
    assert_eq!(f["credential_id"], resp.credential_id.as_str());
    assert!(
        f["audiences"]
            .as_str()
            .expect("audiences")
            .contains("vault")
    );
    assert!(f["expires_at"].is_number());
    // The token (or its signature) never reaches a log line.
    let signature = resp.token.rsplit('.').next().expect("sig");
    assert!(!logs.contains(&resp.token) && !logs.contains(signature));
}
