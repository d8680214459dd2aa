//! The token-review service end to end: identity + token-issuer + token-review on
//! one Postgres, real mTLS, generated clients; the Kubernetes webhook over HTTPS
//! with bodies shaped as kube-apiserver sends them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use badge_proto::review::{
    CreateTokenReviewRequest, TokenReviewSpec, TokenReviewStatus,
    token_review_service_client::TokenReviewServiceClient,
};
use badge_proto::token::{
    self as tpb, BoundObjectReference, CreateTokenRequest, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use badge_tests::{
    IdentityServer, IssuerOptions, IssuerServer, ReviewOptions, ReviewServer,
    create_legacy_token_secret, meta, pb,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Captured, Objects, anonymous, strings, uid};

const WEBHOOK_AUDIENCE: &str = "https://kubernetes.default.svc";

struct Env {
    identity: IdentityServer,
    issuer: IssuerServer,
    review: ReviewServer,
    tokens: TokenServiceClient<Channel>,
    keys: KeyServiceClient<Channel>,
    reviews: TokenReviewServiceClient<Channel>,
    id: Channel,
}

async fn env_with(issuer_opts: IssuerOptions, review_opts: ReviewOptions) -> Env {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, issuer_opts).await;
    let review = ReviewServer::start_with(&identity, &issuer, review_opts).await;
    let ch = issuer.channel(&identity, &identity.pki.admin);
    let id = identity.admin().await;
    Env {
        tokens: TokenServiceClient::new(ch.clone()),
        keys: KeyServiceClient::new(ch),
        reviews: TokenReviewServiceClient::new(review.channel(&identity, &identity.pki.admin)),
        identity,
        issuer,
        review,
        id,
    }
}

async fn env() -> Env {
    env_with(IssuerOptions::default(), ReviewOptions::default()).await
}

impl Objects for Env {
    fn identity_admin(&self) -> Channel {
        self.id.clone()
    }
}

impl Env {
    async fn token(&self, req: CreateTokenRequest) -> tpb::CreateTokenResponse {
        self.tokens
            .clone()
            .create_token(req)
            .await
            .expect("token")
            .into_inner()
    }

    async fn pod_token(
        &self,
        ns: &str,
        sa: &str,
        pod: &pb::Pod,
        audiences: &[&str],
    ) -> tpb::CreateTokenResponse {
        self.token(CreateTokenRequest {
            namespace: ns.into(),
            name: sa.into(),
            audiences: strings(audiences),
            bound_object_ref: Some(BoundObjectReference {
                kind: "Pod".into(),
                api_version: "v1".into(),
                name: pod.metadata.as_ref().expect("m").name.clone(),
                uid: uid(&pod.metadata),
            }),
            ..Default::default()
        })
        .await
    }

    async fn review_on(
        client: &TokenReviewServiceClient<Channel>,
        token: &str,
        audiences: &[&str],
    ) -> TokenReviewStatus {
        let resp = client
            .clone()
            .create_token_review(CreateTokenReviewRequest {
                spec: Some(TokenReviewSpec {
                    token: token.into(),
                    audiences: strings(audiences),
                }),
            })
            .await
            .expect("a review is a successful call whatever the token")
            .into_inner();
        let spec = resp.spec.expect("spec");
        assert!(spec.token.is_empty(), "the token is never sent back");
        assert_eq!(spec.audiences, strings(audiences));
        resp.status.expect("status")
    }

    async fn review(&self, token: &str, audiences: &[&str]) -> TokenReviewStatus {
        Self::review_on(&self.reviews, token, audiences).await
    }

    async fn issuer_keys(&self) -> Vec<tpb::SigningKey> {
        self.keys
            .clone()
            .list_keys(tpb::ListKeysRequest {})
            .await
            .expect("keys")
            .into_inner()
            .keys
    }
}

fn error_of(s: &TokenReviewStatus) -> &str {
    assert!(!s.authenticated, "expected a rejection, got {s:?}");
    assert!(s.user.is_none(), "{s:?}");
    &s.error
}

/// Reviews every 5 ms until the token is rejected; returns the delay and the error.
async fn until_rejected(
    client: &TokenReviewServiceClient<Channel>,
    token: &str,
    audiences: &[&str],
    since: Instant,
) -> (Duration, String) {
    loop {
        let s = Env::review_on(client, token, audiences).await;
        if !s.authenticated {
            return (since.elapsed(), s.error);
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).expect("b64")).expect("json")
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 86_400;
    badge_core::clock::utc_date(UNIX_EPOCH + Duration::from_secs(days * 86_400))
}

#[tokio::test]
async fn pod_bound_token_reviews_with_kubernetes_user_info() {
    let e = env().await;
    e.ns("apps").await;
    let sa = e.sa("apps", "web").await;
    let node = e.node("worker-1").await;
    let pod = e.pod("apps", "web-1", "web", "worker-1").await;
    // Reviewed right after it was issued: the pod and token are milliseconds old.
    let resp = e.pod_token("apps", "web", &pod, &["vault"]).await;
    let s = e.review(&resp.token, &["vault"]).await;
    assert!(s.authenticated, "{s:?}");
    assert!(s.error.is_empty());
    assert!(!s.stale);
    assert_eq!(s.audiences, strings(&["vault"]));
    let user = s.user.expect("user");
    assert_eq!(user.username, "system:serviceaccount:apps:web");
    assert_eq!(user.uid, uid(&sa.metadata));
    assert_eq!(
        user.groups,
        strings(&[
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ])
    );
    let extra: std::collections::BTreeMap<String, Vec<String>> =
        user.extra.into_iter().map(|(k, v)| (k, v.items)).collect();
    let want: std::collections::BTreeMap<String, Vec<String>> = [
        ("authentication.kubernetes.io/pod-name", "web-1".to_string()),
        ("authentication.kubernetes.io/pod-uid", uid(&pod.metadata)),
        (
            "authentication.kubernetes.io/node-name",
            "worker-1".to_string(),
        ),
        ("authentication.kubernetes.io/node-uid", uid(&node.metadata)),
        (
            "authentication.kubernetes.io/credential-id",
            resp.credential_id.clone(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), vec![v]))
    .collect();
    assert_eq!(extra, want);
    assert!(resp.credential_id.starts_with("JTI="));

    // Wrong audience: Kubernetes' text, in the order requested.
    let s = e.review(&resp.token, &["other", "more"]).await;
    assert_eq!(
        error_of(&s),
        r#"token audiences ["vault"] is invalid for the target audiences ["other" "more"]"#
    );
    // No audience asked: the API audiences (the issuers).
    let s = e.review(&resp.token, &[]).await;
    assert_eq!(
        error_of(&s),
        format!(
            r#"token audiences ["vault"] is invalid for the target audiences ["{}"]"#,
            e.issuer.issuer
        )
    );
    // Several audiences: the intersection in the order requested.
    let multi = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: strings(&["a", "b", "c"]),
            ..Default::default()
        })
        .await;
    let s = e.review(&multi.token, &["c", "x", "a"]).await;
    assert!(s.authenticated, "{s:?}");
    assert_eq!(s.audiences, strings(&["c", "a"]));
    // An unbound token carries only the credential id.
    let user = s.user.expect("user");
    assert_eq!(
        user.extra.keys().collect::<Vec<_>>(),
        vec!["authentication.kubernetes.io/credential-id"]
    );
}

#[tokio::test]
async fn tokens_of_objects_created_a_moment_ago_review_at_once() {
    let e = env().await;
    e.ns("apps").await;
    for i in 0..15 {
        let sa_name = format!("sa-{i}");
        e.sa("apps", &sa_name).await;
        let pod = e.pod("apps", &format!("p-{i}"), &sa_name, "").await;
        let resp = e.pod_token("apps", &sa_name, &pod, &["x"]).await;
        let s = e.review(&resp.token, &["x"]).await;
        assert!(s.authenticated, "round {i}: {s:?}");
    }
}

#[tokio::test]
async fn deleting_the_pod_rejects_its_tokens_within_milliseconds() {
    let e = env().await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let pod = e.pod("apps", "web-1", "web", "").await;
    let resp = e.pod_token("apps", "web", &pod, &["vault"]).await;
    // Warm the signature cache: the cached answer must still die with the pod.
    for _ in 0..3 {
        assert!(e.review(&resp.token, &["vault"]).await.authenticated);
    }
    e.delete_pod("apps", "web-1").await;
    let since = Instant::now();
    let (delay, error) = until_rejected(&e.reviews, &resp.token, &["vault"], since).await;
    println!("DeletePod returned → review rejects after {delay:?}");
    assert_eq!(error, "service account token has been invalidated");

    // A new pod with the same name does not revive the old token.
    e.pod("apps", "web-1", "web", "").await;
    let s = e.review(&resp.token, &["vault"]).await;
    assert!(error_of(&s).starts_with("pod UID ("), "{}", error_of(&s));
}

#[tokio::test]
async fn node_secret_and_service_account_deletions_reject_their_tokens() {
    let e = env().await;
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
    let bound = |kind: &str, name: &str, uid: String| CreateTokenRequest {
        namespace: "apps".into(),
        name: "web".into(),
        audiences: strings(&["a"]),
        bound_object_ref: Some(BoundObjectReference {
            kind: kind.into(),
            api_version: "v1".into(),
            name: name.into(),
            uid,
        }),
        ..Default::default()
    };
    let node_token = e
        .token(bound("Node", "worker-1", uid(&node.metadata)))
        .await;
    let secret_token = e
        .token(bound("Secret", "bound", uid(&secret.metadata)))
        .await;
    let unbound = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: strings(&["a"]),
            ..Default::default()
        })
        .await;
    for t in [&node_token, &secret_token, &unbound] {
        assert!(e.review(&t.token, &["a"]).await.authenticated);
    }
    let s = e.review(&node_token.token, &["a"]).await;
    let extra = s.user.expect("user").extra;
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"].items,
        strings(&["worker-1"])
    );

    pb::node_service_client::NodeServiceClient::new(e.id.clone())
        .delete_node(pb::DeleteNodeRequest {
            name: "worker-1".into(),
            ..Default::default()
        })
        .await
        .expect("delete node");
    let (_, err) = until_rejected(&e.reviews, &node_token.token, &["a"], Instant::now()).await;
    assert_eq!(err, "service account token has been invalidated");

    pb::secret_service_client::SecretServiceClient::new(e.id.clone())
        .delete_secret(pb::DeleteSecretRequest {
            namespace: "apps".into(),
            name: "bound".into(),
            ..Default::default()
        })
        .await
        .expect("delete secret");
    let (_, err) = until_rejected(&e.reviews, &secret_token.token, &["a"], Instant::now()).await;
    assert_eq!(err, "service account token has been invalidated");

    pb::service_account_service_client::ServiceAccountServiceClient::new(e.id.clone())
        .delete_service_account(pb::DeleteServiceAccountRequest {
            namespace: "apps".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .expect("delete sa");
    let (_, err) = until_rejected(&e.reviews, &unbound.token, &["a"], Instant::now()).await;
    assert_eq!(err, r#"serviceaccounts "web" not found"#);
}

#[tokio::test]
async fn revoked_tokens_are_rejected() {
    let e = env().await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let req = CreateTokenRequest {
        namespace: "apps".into(),
        name: "web".into(),
        audiences: strings(&["a"]),
        ..Default::default()
    };
    let revoked = e.token(req.clone()).await;
    let kept = e.token(req).await;
    assert!(e.review(&revoked.token, &["a"]).await.authenticated);
    e.tokens
        .clone()
        .revoke_token(tpb::RevokeTokenRequest {
            credential_id: revoked.credential_id.clone(),
            reason: "leaked in a log".into(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    let (delay, err) = until_rejected(&e.reviews, &revoked.token, &["a"], Instant::now()).await;
    println!("RevokeToken returned → review rejects after {delay:?}");
    assert_eq!(err, "service account token has been revoked");
    // Only that token: another of the same account still authenticates.
    assert!(e.review(&kept.token, &["a"]).await.authenticated);
}

#[tokio::test]
async fn legacy_secret_tokens_authenticate_record_their_use_and_die_with_the_secret() {
    let e = env().await;
    e.ns("apps").await;
    let sa = e.sa("apps", "legacy").await;
    let mut secrets = pb::secret_service_client::SecretServiceClient::new(e.id.clone());
    create_legacy_token_secret(e.id.clone(), "apps", "legacy-token", "legacy").await;
    let get = pb::GetSecretRequest {
        namespace: "apps".into(),
        name: "legacy-token".into(),
    };
    let mut token = None;
    for _ in 0..100 {
        let s = secrets
            .get_secret(get.clone())
            .await
            .expect("get")
            .into_inner();
        if let Some(t) = s.data.get("token") {
            token = Some(String::from_utf8(t.clone()).expect("utf8"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = token.expect("the issuer fills the token");
    assert_eq!(part(&token, 1)["iss"], "kubernetes/serviceaccount");

    // Authenticated at once (the index may be a few ms behind the issuer's write).
    let s = e.review(&token, &[]).await;
    assert!(s.authenticated, "{s:?}");
    let user = s.user.expect("user");
    assert_eq!(user.username, "system:serviceaccount:apps:legacy");
    assert_eq!(user.uid, uid(&sa.metadata));
    assert_eq!(
        user.groups,
        strings(&[
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ])
    );
    assert!(user.extra.is_empty(), "legacy tokens carry no extras");
    // No aud claim: the API audiences.
    assert_eq!(s.audiences, vec![e.issuer.issuer.clone()]);

    // The last-used label appears (today, UTC), written once.
    let mut label = None;
    for _ in 0..200 {
        let s = secrets
            .get_secret(get.clone())
            .await
            .expect("get")
            .into_inner();
        if let Some(v) = s
            .metadata
            .as_ref()
            .and_then(|m| m.labels.get("kubernetes.io/legacy-token-last-used"))
        {
            label = Some((v.clone(), s.metadata.expect("m").resource_version));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (date, version) = label.expect("last-used label set within 4 s");
    assert_eq!(date, today());
    // More uses the same day write nothing.
    for _ in 0..5 {
        assert!(e.review(&token, &[]).await.authenticated);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = secrets
        .get_secret(get.clone())
        .await
        .expect("get")
        .into_inner();
    assert_eq!(s.metadata.expect("m").resource_version, version);

    // Listed in the account's `secrets` (auto-generated): Kubernetes' warning, as
    // `warning` response metadata.
    let mut sas =
        pb::service_account_service_client::ServiceAccountServiceClient::new(e.id.clone());
    let mut account = sas
        .get_service_account(pb::GetServiceAccountRequest {
            namespace: "apps".into(),
            name: "legacy".into(),
        })
        .await
        .expect("get sa")
        .into_inner();
    account.secrets.push(badge_proto::meta::ObjectReference {
        name: "legacy-token".into(),
        ..Default::default()
    });
    sas.update_service_account(pb::UpdateServiceAccountRequest {
        service_account: Some(account),
    })
    .await
    .expect("update sa");
    let request = CreateTokenReviewRequest {
        spec: Some(TokenReviewSpec {
            token: token.clone(),
            audiences: vec![],
        }),
    };
    let mut warned = None;
    for _ in 0..100 {
        let resp = e
            .reviews
            .clone()
            .create_token_review(request.clone())
            .await
            .expect("review");
        if let Some(w) = resp.metadata().get("warning") {
            assert!(resp.get_ref().status.as_ref().expect("s").authenticated);
            warned = Some(w.to_str().expect("ascii").to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        warned.as_deref(),
        Some(
            "Use tokens from the TokenRequest API or manually created secret-based tokens instead of auto-generated secret-based tokens."
        )
    );

    // Marked invalid by the clean-up controller's label: refused with Kubernetes' text.
    let mut secret = secrets
        .get_secret(get.clone())
        .await
        .expect("get")
        .into_inner();
    secret
        .metadata
        .as_mut()
        .expect("m")
        .labels
        .insert("kubernetes.io/legacy-token-invalid-since".into(), today());
    secrets
        .update_secret(pb::UpdateSecretRequest {
            secret: Some(secret),
        })
        .await
        .expect("label");
    let (_, err) = until_rejected(&e.reviews, &token, &[], Instant::now()).await;
    assert_eq!(
        err,
        "the token in secret apps/legacy-token for service account apps/legacy has been marked invalid. Use tokens from the TokenRequest API or manually created secret-based tokens, or remove the 'kubernetes.io/legacy-token-invalid-since' label from the secret to temporarily allow use of this token"
    );

    // Deleting the Secret invalidates it.
    secrets
        .delete_secret(pb::DeleteSecretRequest {
            namespace: "apps".into(),
            name: "legacy-token".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let (_, err) = until_rejected(&e.reviews, &token, &[], Instant::now()).await;
    assert_eq!(err, "Token has been invalidated");
}

#[tokio::test]
async fn a_key_rotated_in_a_moment_ago_verifies_at_once() {
    let e = env_with(
        IssuerOptions {
            propagation_delay_seconds: 0,
            ..IssuerOptions::default()
        },
        ReviewOptions::default(),
    )
    .await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let req = CreateTokenRequest {
        namespace: "apps".into(),
        name: "web".into(),
        audiences: strings(&["a"]),
        ..Default::default()
    };
    let before = e.token(req.clone()).await;
    let old_kid = part(&before.token, 0)["kid"]
        .as_str()
        .expect("kid")
        .to_string();
    for round in 0..2 {
        // Key order is by activation second: rotate in a later second than the
        // previous key's.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let rotated = e
            .keys
            .clone()
            .rotate_keys(tpb::RotateKeysRequest {
                algorithm: if round == 1 { "RS256" } else { "ES256" }.into(),
            })
            .await
            .expect("rotate")
            .into_inner()
            .key
            .expect("key");
        // The issuer's ring applies the new key through its own feed follower.
        let mut signed = None;
        for _ in 0..200 {
            let t = e.token(req.clone()).await;
            if part(&t.token, 0)["kid"] == rotated.kid.as_str() {
                signed = Some(t);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = signed.expect("the rotated key signs");
        // Reviewed at once: the unknown kid makes the reviewer re-read the keys.
        let s = e.review(&t.token, &["a"]).await;
        assert!(s.authenticated, "round {round}: {s:?}");
    }
    // Older keys still verify (retired keys stay published).
    assert!(e.review(&before.token, &["a"]).await.authenticated);
    assert!(e.issuer_keys().await.iter().any(|k| k.kid == old_kid));
}

#[tokio::test]
async fn attack_tokens_are_refused_as_successful_reviews() {
    let e = env().await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let good = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: strings(&["a"]),
            ..Default::default()
        })
        .await
        .token;
    assert!(e.review(&good, &["a"]).await.authenticated);
    let header = part(&good, 0);
    let kid = header["kid"].as_str().expect("kid").to_string();
    let claims = part(&good, 1);
    let pem = e
        .issuer_keys()
        .await
        .into_iter()
        .find(|k| k.kid == kid)
        .expect("key")
        .public_key_pem;
    let payload = serde_json::to_vec(&claims).expect("json");

    // alg none.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg":"none","kid":kid}).to_string().as_bytes()),
        b64(&payload)
    );
    // HS256 keyed with the public key (algorithm confusion).
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()).expect("hmac key"),
    )
    .expect("hs256");
    // Payload tampered: another service account, the original signature.
    let mut evil = claims.clone();
    evil["sub"] = "system:serviceaccount:kube-system:admin".into();
    evil["kubernetes.io"]["namespace"] = "kube-system".into();
    let segs: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        segs[0],
        b64(&serde_json::to_vec(&evil).expect("json")),
        segs[2]
    );
    // Header tampered (kid of nothing).
    let header_tampered = format!(
        "{}.{}.{}",
        b64(json!({"alg":"ES256","kid":format!("{kid}x")})
            .to_string()
            .as_bytes()),
        segs[1],
        segs[2]
    );
    // Signed by another key that claims the real kid.
    let attacker = badge_keys::SigningKey::generate(badge_keys::Algorithm::ES256).expect("key");
    let other_key = attacker
        .sign_jwt(
            json!({"alg":"ES256","kid":kid}).to_string().as_bytes(),
            &payload,
        )
        .expect("sign");
    let sign_with_kid = |kid: &str| {
        attacker
            .sign_jwt(
                json!({"alg":"ES256","kid":kid}).to_string().as_bytes(),
                &payload,
            )
            .expect("sign")
    };
    // Wrong issuer, properly signed by an untrusted key.
    let mut foreign = claims.clone();
    foreign["iss"] = "https://evil.example".into();
    let wrong_issuer = attacker
        .sign_jwt(
            json!({"alg":"ES256","kid":kid}).to_string().as_bytes(),
            &serde_json::to_vec(&foreign).expect("json"),
        )
        .expect("sign");
    let huge = format!("{}.{}.{}", segs[0], "A".repeat(1 << 20), segs[2]);
    let too_long = format!(
        "token is too long: {} bytes, at most 65536 are allowed",
        huge.len()
    );

    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "invalid signature, unsupported algorithm"),
        (
            "HS256 with the public key",
            hs256,
            "invalid signature, unsupported algorithm",
        ),
        ("payload tampered", tampered, "invalid signature"),
        (
            "header tampered",
            header_tampered,
            "invalid signature, no keys found",
        ),
        ("another key, same kid", other_key, "invalid signature"),
        (
            "kid with a path",
            sign_with_kid("../../etc/passwd"),
            "invalid signature, no keys found",
        ),
        (
            "kid with SQL",
            sign_with_kid("' OR 1=1; DROP TABLE objects; --"),
            "invalid signature, no keys found",
        ),
        ("wrong issuer", wrong_issuer, "invalid bearer token"),
        ("1 MiB token", huge, too_long.as_str()),
        ("garbage", "garbage".into(), "invalid bearer token"),
        (
            "two segments",
            format!("{}.{}", segs[0], segs[1]),
            "invalid bearer token",
        ),
        ("four segments", format!("{good}.x"), "invalid bearer token"),
        (
            "bad base64",
            format!("{}.{}!.{}", segs[0], segs[1], segs[2]),
            "invalid bearer token",
        ),
        (
            "json token",
            format!("{{\"iss\":\"{}\"}}", e.issuer.issuer),
            "invalid bearer token",
        ),
        (
            "non-JSON payload",
            format!("{}.{}.{}", segs[0], b64(b"not json"), segs[2]),
            "invalid bearer token",
        ),
        (
            "deeply nested payload",
            format!(
                "{}.{}.{}",
                segs[0],
                b64(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes()),
                segs[2]
            ),
            "invalid bearer token",
        ),
        (
            "duplicate claims",
            format!(
                "{}.{}.{}",
                segs[0],
                b64(format!(r#"{{"iss":"{0}","iss":"{0}"}}"#, e.issuer.issuer).as_bytes()),
                segs[2]
            ),
            "malformed token",
        ),
    ];
    for (name, token, want) in &cases {
        let s = e.review(token, &["a"]).await;
        assert_eq!(error_of(&s), *want, "{name}");
    }

    // The original still works: nothing above poisoned the cache or the keys.
    assert!(e.review(&good, &["a"]).await.authenticated);

    // Only a missing token is an error.
    for spec in [None, Some(TokenReviewSpec::default())] {
        let err = e
            .reviews
            .clone()
            .create_token_review(CreateTokenReviewRequest { spec })
            .await
            .expect_err("empty token");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message()
                .contains("spec.token: token is required for TokenReview in authentication"),
            "{}",
            err.message()
        );
    }
}

fn webhook_body(api_version: &str, token: &str, audiences: &[&str]) -> Vec<u8> {
    // Exactly what kube-apiserver's webhook authenticator marshals.
    serde_json::to_vec(&json!({
        "apiVersion": api_version,
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": {"token": token, "audiences": audiences},
        "status": {"user": {}},
    }))
    .expect("json")
}

#[tokio::test]
async fn webhook_speaks_kubernetes_token_review_json() {
    let e = env().await;
    e.ns("apps").await;
    let sa = e.sa("apps", "web").await;
    let node = e.node("worker-1").await;
    let pod = e.pod("apps", "web-1", "web", "worker-1").await;
    let resp = e.pod_token("apps", "web", &pod, &[WEBHOOK_AUDIENCE]).await;
    let ca = e.identity.pki.ca.clone();
    // The apiserver presents its client certificate (any from the configured CA).
    let apiserver = e.identity.issue("apiserver", "kube-apiserver", &[]);
    let post = |path: &'static str, body: Vec<u8>| {
        let ca = ca.clone();
        let apiserver = apiserver.clone();
        let addr = e.review.webhook;
        async move {
            badge_tests::https_post(addr, path, &ca, Some(&apiserver), "application/json", &body)
                .await
        }
    };

    for api_version in ["authentication.k8s.io/v1beta1", "authentication.k8s.io/v1"] {
        let (status, headers, body) = post(
            "/authenticate",
            webhook_body(api_version, &resp.token, &[WEBHOOK_AUDIENCE]),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json")
        );
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            json!({
                "apiVersion": api_version,
                "kind": "TokenReview",
                "status": {
                    "authenticated": true,
                    "user": {
                        "username": "system:serviceaccount:apps:web",
                        "uid": uid(&sa.metadata),
                        "groups": ["system:serviceaccounts", "system:serviceaccounts:apps", "system:authenticated"],
                        "extra": {
                            "authentication.kubernetes.io/credential-id": [resp.credential_id],
                            "authentication.kubernetes.io/node-name": ["worker-1"],
                            "authentication.kubernetes.io/node-uid": [uid(&node.metadata)],
                            "authentication.kubernetes.io/pod-name": ["web-1"],
                            "authentication.kubernetes.io/pod-uid": [uid(&pod.metadata)],
                        },
                    },
                    "audiences": [WEBHOOK_AUDIENCE],
                },
            })
        );
        assert!(!String::from_utf8_lossy(&body).contains(&resp.token));
    }

    // Any path; a token that fails is still 200, with Kubernetes' error.
    let (status, _, body) = post(
        "/",
        webhook_body(
            "authentication.k8s.io/v1beta1",
            &resp.token,
            &["https://other"],
        ),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        v,
        json!({
            "apiVersion": "authentication.k8s.io/v1beta1",
            "kind": "TokenReview",
            "status": {
                "authenticated": false,
                "error": format!(r#"token audiences ["{WEBHOOK_AUDIENCE}"] is invalid for the target audiences ["https://other"]"#),
            },
        })
    );
    // No audiences (an apiserver without --api-audiences sends none): the API audiences.
    let (status, _, body) = post(
        "/authenticate",
        br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","metadata":{"creationTimestamp":null},"spec":{"token":"garbage"},"status":{"user":{}}}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        v["status"],
        json!({"authenticated": false, "error": "invalid bearer token"})
    );

    // Malformed requests: 400 with a Status body.
    for (body, want) in [
        (b"{not json".to_vec(), "not valid JSON"),
        (
            webhook_body("authentication.k8s.io/v2", &resp.token, &[]),
            "apiVersion",
        ),
        (
            webhook_body("authentication.k8s.io/v1", "", &[]),
            "token is required for TokenReview in authentication",
        ),
    ] {
        let (status, _, out) = post("/authenticate", body).await;
        assert_eq!(status, 400);
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["code"], 400);
        assert!(v["message"].as_str().expect("m").contains(want), "{v}");
        assert!(!String::from_utf8_lossy(&out).contains(&resp.token));
    }
    // Oversized body.
    let (status, _, _) = post("/authenticate", vec![b' '; (1 << 20) + 1]).await;
    assert_eq!(status, 413);

    // Without a credential: 401 with a Kubernetes Status, and no answer.
    let body = webhook_body("authentication.k8s.io/v1", &resp.token, &[]);
    let (status, _, out) =
        badge_tests::https_post(e.review.webhook, "/", &ca, None, "application/json", &body).await;
    assert_eq!(status, 401, "a caller without a credential is refused");
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["reason"], "Unauthorized");
}

#[tokio::test]
async fn two_replicas_agree_and_both_reject_after_delete_pod() {
    let e = env().await;
    let second = ReviewServer::start(&e.identity, &e.issuer).await;
    let other = TokenReviewServiceClient::new(second.channel(&e.identity, &e.identity.pki.admin));
    e.ns("apps").await;
    e.sa("apps", "web").await;
    e.node("worker-1").await;
    let pod = e.pod("apps", "web-1", "web", "worker-1").await;
    let resp = e.pod_token("apps", "web", &pod, &["vault"]).await;
    let a = e.review(&resp.token, &["vault"]).await;
    let b = Env::review_on(&other, &resp.token, &["vault"]).await;
    assert!(a.authenticated);
    assert_eq!(a, b, "replicas give the same answer");
    for aud in [&["x"][..], &[][..]] {
        assert_eq!(
            e.review(&resp.token, aud).await,
            Env::review_on(&other, &resp.token, aud).await
        );
    }

    e.delete_pod("apps", "web-1").await;
    let since = Instant::now();
    let (first, second_delay) = tokio::join!(
        until_rejected(&e.reviews, &resp.token, &["vault"], since),
        until_rejected(&other, &resp.token, &["vault"], since),
    );
    println!(
        "DeletePod → rejected by replica 1 after {:?}, replica 2 after {:?}",
        first.0, second_delay.0
    );
    assert_eq!(first.1, "service account token has been invalidated");
    assert_eq!(second_delay.1, first.1);
    second.stop().await.expect("clean stop");
}

/// The issue's propagation target (DeletePod returning → reviews answering false,
/// ≤ 100 ms p99 across processes) as a distribution: 30 pods, each token warm on a
/// second token-review replica (its own index and change-feed connection), each
/// pod deleted through identity, that replica polled every millisecond. Printed;
/// asserted only against the 2 s outer bound (the tests share the CI machine).
#[tokio::test]
async fn delete_pod_to_rejection_on_another_replica_distribution() {
    let e = env().await;
    let second = ReviewServer::start(&e.identity, &e.issuer).await;
    let other = TokenReviewServiceClient::new(second.channel(&e.identity, &e.identity.pki.admin));
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let mut delays = Vec::new();
    for i in 0..30 {
        let name = format!("web-{i}");
        let pod = e.pod("apps", &name, "web", "").await;
        let resp = e.pod_token("apps", "web", &pod, &["vault"]).await;
        assert!(
            Env::review_on(&other, &resp.token, &["vault"])
                .await
                .authenticated
        );
        e.delete_pod("apps", &name).await;
        let since = Instant::now();
        loop {
            let s = Env::review_on(&other, &resp.token, &["vault"]).await;
            if !s.authenticated {
                assert_eq!(s.error, "service account token has been invalidated");
                delays.push(since.elapsed());
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(2),
                "still accepted after 2 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    delays.sort();
    println!(
        "DeletePod → rejected by the other replica: p50 {:?}, p99 {:?}, max {:?} (n = {})",
        delays[delays.len() / 2],
        delays[delays.len() * 99 / 100],
        delays[delays.len() - 1],
        delays.len()
    );
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn callers_without_a_grant_may_not_review() {
    let e = env().await;
    let bob = e.identity.issue("bob", "bob", &["developers"]);
    let err = TokenReviewServiceClient::new(e.review.channel(&e.identity, &bob))
        .create_token_review(CreateTokenReviewRequest {
            spec: Some(TokenReviewSpec {
                token: "x".into(),
                audiences: vec![],
            }),
        })
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("tokenreviews"), "{}", err.message());
    assert!(
        err.message().contains("authentication.k8s.io"),
        "{}",
        err.message()
    );
}

async fn health_of(review: &ReviewServer, identity: &IdentityServer) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(
        review.channel(identity, &identity.pki.admin),
    )
    .check(tonic_health::pb::HealthCheckRequest {
        service: "badge.review.v1.TokenReviewService".into(),
    })
    .await
    .expect("health")
    .into_inner()
    .status
}

async fn until_health(review: &ReviewServer, identity: &IdentityServer, want: i32) {
    for _ in 0..200 {
        if health_of(review, identity).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health did not become {want}");
}

#[tokio::test]
async fn reviews_are_answered_from_memory_while_the_store_is_unreachable() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let proxy = badge_tests::PgProxy::start().await;
    let review = ReviewServer::start_with(
        &identity,
        &issuer,
        ReviewOptions {
            database_url: Some(proxy.url_for(&identity.config.database.url)),
            ..ReviewOptions::default()
        },
    )
    .await;
    let e = Env {
        tokens: TokenServiceClient::new(issuer.channel(&identity, &identity.pki.admin)),
        keys: KeyServiceClient::new(issuer.channel(&identity, &identity.pki.admin)),
        reviews: TokenReviewServiceClient::new(review.channel(&identity, &identity.pki.admin)),
        id: identity.admin().await,
        identity,
        issuer,
        review,
    };
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let pod = e.pod("apps", "web-1", "web", "").await;
    let token = e.pod_token("apps", "web", &pod, &["a"]).await.token;
    assert!(e.review(&token, &["a"]).await.authenticated);

    proxy.cut();
    until_health(&e.review, &e.identity, ServingStatus::NotServing as i32).await;
    // Still answered, from the index, and fast.
    let t = Instant::now();
    assert!(e.review(&token, &["a"]).await.authenticated);
    assert_eq!(
        error_of(&e.review("garbage", &["a"]).await),
        "invalid bearer token"
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // A deletion during the outage is delivered once the feed reconnects.
    e.delete_pod("apps", "web-1").await;
    let s = e.review(&token, &["a"]).await;
    println!(
        "during the outage a deleted pod's token reviews as authenticated={} (from memory)",
        s.authenticated
    );

    proxy.restore().await;
    until_health(&e.review, &e.identity, ServingStatus::Serving as i32).await;
    let mut rejected = None;
    for _ in 0..200 {
        let s = e.review(&token, &["a"]).await;
        if !s.authenticated {
            rejected = Some(s.error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        rejected.as_deref(),
        Some("service account token has been invalidated")
    );
}

/// Collects formatted log lines in memory.
#[tokio::test]
async fn every_review_is_audited_without_the_token() {
    let (captured, _guard) = Captured::start(tracing::Level::DEBUG);
    let e = env().await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let pod = e.pod("apps", "web-1", "web", "").await;
    let resp = e.pod_token("apps", "web", &pod, &[WEBHOOK_AUDIENCE]).await;
    assert!(
        e.review(&resp.token, &[WEBHOOK_AUDIENCE])
            .await
            .authenticated
    );
    assert!(!e.review(&resp.token, &["other"]).await.authenticated);
    let apiserver = e.identity.issue("apiserver", "kube-apiserver", &[]);
    let (status, _, _) = badge_tests::https_post(
        e.review.webhook,
        "/",
        &e.identity.pki.ca,
        Some(&apiserver),
        "application/json",
        &webhook_body("authentication.k8s.io/v1", &resp.token, &[WEBHOOK_AUDIENCE]),
    )
    .await;
    assert_eq!(status, 200);

    let logs = captured.text();
    let audit: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["fields"]["event"] == "token.reviewed")
        .collect();
    assert_eq!(audit.len(), 3, "one audit event per review: {audit:?}");
    let ok = &audit[0]["fields"];
    assert_eq!(ok["via"], "grpc");
    assert_eq!(ok["requester"], "admin");
    assert_eq!(ok["authenticated"], true);
    assert_eq!(ok["username"], "system:serviceaccount:apps:web");
    assert_eq!(ok["credential_id"], resp.credential_id.as_str());
    let failed = &audit[1]["fields"];
    assert_eq!(failed["authenticated"], false);
    assert!(
        failed["error"]
            .as_str()
            .expect("error")
            .starts_with("token audiences"),
        "{failed}"
    );
    assert_eq!(audit[2]["fields"]["via"], "webhook");
    assert_eq!(audit[2]["fields"]["authenticated"], true);
    // The token (or its signature) never reaches a log line.
    let signature = resp.token.rsplit('.').next().expect("sig");
    assert!(!logs.contains(&resp.token) && !logs.contains(signature));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_token_review_scenario_runs_against_the_service() {
    use badge_bench::cli::{Cli, Command};
    use clap::Parser;
    let e = env().await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let token = e
        .token(CreateTokenRequest {
            namespace: "apps".into(),
            name: "web".into(),
            audiences: strings(&["bench"]),
            ..Default::default()
        })
        .await
        .token;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("write");
    let pki = &e.identity.pki;
    let args = |audience: &str| {
        let cli = Cli::try_parse_from([
            "badge-bench",
            "run",
            "--target",
            &format!("https://{}", e.review.grpc),
            "--ca",
            pki.ca.to_str().expect("utf8"),
            "--cert",
            pki.admin.cert.to_str().expect("utf8"),
            "--key",
            pki.admin.key.to_str().expect("utf8"),
            "--connections",
            "1",
            "--in-flight",
            "4",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "token-review",
            "--token-file",
            file.to_str().expect("utf8"),
            "--audience",
            audience,
        ])
        .expect("parse");
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        *run
    };
    for (audience, ok) in [("bench", true), ("other", false)] {
        let run = args(audience);
        let config = badge_bench::load::LoadConfig {
            target: run.target,
            server_name: run.server_name,
            tls: badge_runtime::tls::TlsFiles {
                ca: run.tls.ca,
                cert: run.tls.cert,
                key: run.tls.key,
            },
            connections: run.load.connections,
            in_flight: run.load.in_flight,
            duration: run.load.duration,
            warmup: run.load.warmup,
            threads: run.load.threads,
        };
        let scenario = run.scenario.build().expect("scenario");
        assert_eq!(scenario.name(), "token-review");
        let report = badge_bench::load::run(&config, scenario)
            .await
            .expect("load");
        if ok {
            assert!(report.ok > 0 && report.errors_total() == 0, "{report}");
        } else {
            assert_eq!(report.ok, 0, "{report}");
            assert!(report.errors.contains_key("Unauthenticated"), "{report}");
        }
    }
}

#[tokio::test]
async fn subject_access_review_answers_the_cross_namespace_case() {
    use badge_proto::rbac as rb;
    use badge_proto::review::access_review_service_client::AccessReviewServiceClient;
    use badge_proto::review::{
        CreateSelfSubjectAccessReviewRequest, CreateSubjectAccessReviewRequest,
        NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReviewSpec,
        SubjectAccessReviewSpec,
    };
    let e = env().await;
    let ns = |name: &str| pb::CreateNamespaceRequest {
        namespace: Some(pb::Namespace {
            metadata: badge_tests::meta("", name),
            status: None,
        }),
    };
    let mut nss = pb::namespace_service_client::NamespaceServiceClient::new(e.id.clone());
    nss.create_namespace(ns("maintenance")).await.expect("ns");
    nss.create_namespace(ns("dev")).await.expect("ns");
    rb::role_service_client::RoleServiceClient::new(e.id.clone())
        .create_role(rb::CreateRoleRequest {
            role: Some(rb::Role {
                metadata: badge_tests::meta("maintenance", "job-reader"),
                rules: vec![rb::PolicyRule {
                    verbs: strings(&["list", "watch", "get"]),
                    api_groups: strings(&["batch"]),
                    resources: strings(&["jobs"]),
                    ..Default::default()
                }],
            }),
        })
        .await
        .expect("role");
    rb::role_binding_service_client::RoleBindingServiceClient::new(e.id.clone())
        .create_role_binding(rb::CreateRoleBindingRequest {
            role_binding: Some(rb::RoleBinding {
                metadata: badge_tests::meta("maintenance", "read-jobs"),
                subjects: vec![rb::Subject {
                    kind: "ServiceAccount".into(),
                    name: "builder".into(),
                    namespace: "dev".into(),
                    ..Default::default()
                }],
                role_ref: Some(rb::RoleRef {
                    kind: "Role".into(),
                    name: "job-reader".into(),
                    ..Default::default()
                }),
            }),
        })
        .await
        .expect("binding");
    let mut access =
        AccessReviewServiceClient::new(e.review.channel(&e.identity, &e.identity.pki.admin));
    let ask =
        |verb: &str, ns: &str, group: &str, resource: &str| CreateSubjectAccessReviewRequest {
            spec: Some(SubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: ns.into(),
                    verb: verb.into(),
                    group: group.into(),
                    resource: resource.into(),
                    ..Default::default()
                }),
                user: "system:serviceaccount:dev:builder".into(),
                groups: strings(&["system:serviceaccounts", "system:serviceaccounts:dev"]),
                ..Default::default()
            }),
        };
    // The feed reaches the review index in milliseconds; allow a moment.
    let mut allowed = None;
    for _ in 0..100 {
        let s = access
            .create_subject_access_review(ask("list", "maintenance", "batch", "jobs"))
            .await
            .expect("sar")
            .into_inner()
            .status
            .expect("status");
        if s.allowed {
            allowed = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = allowed.expect("list jobs in maintenance is allowed");
    assert!(
        s.reason.contains("read-jobs") && s.reason.contains("job-reader"),
        "{}",
        s.reason
    );
    for (verb, ns, group, resource) in [
        ("list", "dev", "batch", "jobs"),
        ("get", "maintenance", "", "secrets"),
        ("get", "dev", "", "secrets"),
        ("delete", "maintenance", "batch", "jobs"),
    ] {
        let s = access
            .create_subject_access_review(ask(verb, ns, group, resource))
            .await
            .expect("sar")
            .into_inner()
            .status
            .expect("status");
        assert!(
            !s.allowed,
            "{verb} {group}/{resource} in {ns} must be denied"
        );
    }
    // Exactly one attribute block, and a user or groups.
    let bad = [
        CreateSubjectAccessReviewRequest {
            spec: Some(SubjectAccessReviewSpec {
                user: "x".into(),
                ..Default::default()
            }),
        },
        CreateSubjectAccessReviewRequest {
            spec: Some(SubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: "get".into(),
                    ..Default::default()
                }),
                non_resource_attributes: Some(NonResourceAttributes {
                    verb: "get".into(),
                    path: "/healthz".into(),
                }),
                user: "x".into(),
                ..Default::default()
            }),
        },
        CreateSubjectAccessReviewRequest {
            spec: Some(SubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: "get".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        },
    ];
    for req in bad {
        let err = access
            .create_subject_access_review(req)
            .await
            .expect_err("invalid");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
    }
    // The same question through Kubernetes' authorization webhook, in both versions
    // (v1beta1 names the groups field `group`).
    let ca = e.identity.pki.ca.clone();
    let apiserver = e.identity.issue("apiserver", "kube-apiserver", &[]);
    for (api_version, groups_field, ns, want) in [
        ("authorization.k8s.io/v1", "groups", "maintenance", true),
        ("authorization.k8s.io/v1beta1", "group", "maintenance", true),
        ("authorization.k8s.io/v1", "groups", "dev", false),
    ] {
        let body = serde_json::json!({
            "apiVersion": api_version,
            "kind": "SubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": {
                "resourceAttributes": {"namespace": ns, "verb": "list", "group": "batch", "version": "v1", "resource": "jobs"},
                "user": "system:serviceaccount:dev:builder",
                groups_field: ["system:serviceaccounts", "system:serviceaccounts:dev", "system:authenticated"],
                "uid": "1234"
            },
            "status": {"allowed": false}
        });
        let (status, _, out) = badge_tests::https_post(
            e.review.webhook,
            "/authorize",
            &ca,
            Some(&apiserver),
            "application/json",
            &serde_json::to_vec(&body).expect("json"),
        )
        .await;
        assert_eq!(status, 200);
        let out: Value = serde_json::from_slice(&out).expect("json answer");
        assert_eq!(out["apiVersion"], api_version);
        assert_eq!(out["kind"], "SubjectAccessReview");
        assert_eq!(out["status"]["allowed"], want, "{out}");
    }

    // The admin asking about itself: system:masters is allowed everything.
    let me = access
        .create_self_subject_access_review(CreateSelfSubjectAccessReviewRequest {
            spec: Some(SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: "delete".into(),
                    resource: "pods".into(),
                    namespace: "dev".into(),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
        })
        .await
        .expect("self")
        .into_inner();
    assert!(me.status.expect("status").allowed);
    assert_eq!(me.spec.expect("spec").user, "admin");
}

/// Waits until the issuer has filled in the legacy token of `apps/<name>`.
async fn legacy_token_of(id: &Channel, namespace: &str, name: &str) -> String {
    let mut secrets = pb::secret_service_client::SecretServiceClient::new(id.clone());
    for _ in 0..200 {
        let s = secrets
            .get_secret(pb::GetSecretRequest {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await
            .expect("get")
            .into_inner();
        if let Some(t) = s.data.get("token") {
            return String::from_utf8(t.clone()).expect("utf8");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the issuer never filled the legacy token of {namespace}/{name}");
}

/// #13 finding 3: a change-feed row that cannot be decrypted (written by a
/// process with another key-encryption key) must not freeze the index. Before,
/// every later change stopped applying — a deleted pod's token kept reviewing as
/// authenticated — while health said SERVING. Now the pod's deletion still
/// rejects its token, the Secret overwritten with unreadable data no longer
/// authenticates its legacy token (the old version is not kept), and health stays
/// SERVING (the index is current).
#[tokio::test]
async fn an_undecryptable_feed_row_does_not_stop_deletions_taking_effect() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let e = env().await;
    e.ns("apps").await;
    e.sa("apps", "web").await;
    let pod = e.pod("apps", "web-1", "web", "").await;
    let resp = e.pod_token("apps", "web", &pod, &["vault"]).await;
    assert!(e.review(&resp.token, &["vault"]).await.authenticated);
    create_legacy_token_secret(e.id.clone(), "apps", "legacy-token", "web").await;
    let legacy = legacy_token_of(&e.id, "apps", "legacy-token").await;
    assert!(e.review(&legacy, &[]).await.authenticated);

    // A writer with another key-encryption key (a replica started with the wrong
    // one): its Secret rows cannot be opened by anyone else.
    let (kek, _) = badge_keys::Kek::generate().expect("kek");
    let foreign = badge_store::Store::connect(
        &e.identity.config.database.url,
        badge_store::StoreOptions {
            sealer: Some(std::sync::Arc::new(kek)),
            ..Default::default()
        },
    )
    .await
    .expect("store");
    let now = SystemTime::now();
    foreign
        .apply(
            vec![
                badge_store::Op::Create {
                    kind: badge_core::Kind::Secret,
                    namespace: "apps".into(),
                    name: "foreign".into(),
                    labels: Default::default(),
                    data: b"sealed under another key".to_vec(),
                },
                badge_store::Op::Update {
                    kind: badge_core::Kind::Secret,
                    namespace: "apps".into(),
                    name: "legacy-token".into(),
                    precondition: Default::default(),
                    labels: Default::default(),
                    data: b"sealed under another key".to_vec(),
                    deletion_timestamp: None,
                },
            ],
            now,
        )
        .await
        .expect("foreign writes");

    e.delete_pod("apps", "web-1").await;
    let (delay, error) = until_rejected(&e.reviews, &resp.token, &["vault"], Instant::now()).await;
    println!("after an undecryptable row: DeletePod → rejection in {delay:?}");
    assert_eq!(error, "service account token has been invalidated");
    let s = e.review(&legacy, &[]).await;
    assert!(
        !s.authenticated,
        "a legacy token whose Secret cannot be read is not authenticated: {s:?}"
    );
    assert_eq!(
        health_of(&e.review, &e.identity).await,
        ServingStatus::Serving as i32,
        "the index is current: nothing to report"
    );
}

/// #13 finding 3: health reports an index held behind the store. A real lock on
/// the feed table holds every index's catch-up while the store's revision moves
/// on: token-review goes NOT_SERVING once it has been behind for longer than
/// `database.max_index_lag_seconds` (1 s here), and SERVING again once the lock
/// is gone and the index caught up.
#[tokio::test]
async fn health_is_not_serving_while_the_index_is_held_behind_the_store() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let identity = IdentityServer::start_configured(&[], Default::default(), |c| {
        c.database.max_index_lag_seconds = 1;
    })
    .await;
    if identity.db.backend() != badge_store::testing::Backend::Postgres {
        println!("Postgres only (LOCK TABLE)");
        return;
    }
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let review = ReviewServer::start(&identity, &issuer).await;
    assert_eq!(review.config.database.max_index_lag_seconds, 1);
    until_health(&review, &identity, ServingStatus::Serving as i32).await;

    // Hold the feed for 6 s: every read of `changes` waits for the lock.
    let locked = Instant::now();
    let hold = identity
        .db
        .execute("BEGIN; LOCK TABLE changes IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT");
    let observe = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The store moves on (the counter, and the notification every index
        // wakes on).
        identity
            .db
            .execute(
                "UPDATE revision_counter SET revision = revision + 1 WHERE id = 1; \
                 SELECT pg_notify('badge_changes', (SELECT revision::text FROM revision_counter WHERE id = 1))",
            )
            .await;
        let held = Instant::now();
        until_health(&review, &identity, ServingStatus::NotServing as i32).await;
        println!("index held behind: NOT_SERVING after {:?}", held.elapsed());
        assert!(
            locked.elapsed() < Duration::from_secs(6),
            "reported while the feed was still held"
        );
    };
    tokio::join!(hold, observe);
    until_health(&review, &identity, ServingStatus::Serving as i32).await;
    println!(
        "feed released: SERVING again {:?} after the lock was taken",
        locked.elapsed()
    );
}

/// #13 finding 11: a legacy Secret token used only as a bearer credential (no
/// TokenReview ever sees it) is recorded as used, so the cleaner does not
/// invalidate a token in daily use. Here it calls identity directly; no
/// token-review runs at all.
#[tokio::test]
async fn a_legacy_token_used_as_a_bearer_credential_gets_its_last_used_label() {
    let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://127.0.0.1:{}",
        oidc.local_addr().expect("addr").port()
    );
    let identity = IdentityServer::start_accepting(&[url]).await;
    let issuer = IssuerServer::start_on(&identity, IssuerOptions::default(), oidc).await;
    let id = identity.admin().await;
    let mut namespaces = pb::namespace_service_client::NamespaceServiceClient::new(id.clone());
    namespaces
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                metadata: meta("", "apps"),
                ..Default::default()
            }),
        })
        .await
        .expect("namespace");
    let mut sas = pb::service_account_service_client::ServiceAccountServiceClient::new(id.clone());
    for (sa, secret) in [("legacy", "legacy-token"), ("legacy2", "legacy-token-2")] {
        sas.create_service_account(pb::CreateServiceAccountRequest {
            service_account: Some(pb::ServiceAccount {
                metadata: meta("apps", sa),
                ..Default::default()
            }),
        })
        .await
        .expect("service account");
        create_legacy_token_secret(id.clone(), "apps", secret, sa).await;
    }

    fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        req
    }
    // RBAC may refuse the call; the use counts anyway (Kubernetes records it at
    // authentication). Anything but UNAUTHENTICATED means the token was accepted.
    let authenticated = |answer: Result<_, tonic::Status>| {
        if let Err(e) = answer {
            assert_ne!(e.code(), Code::Unauthenticated, "authenticated: {e:?}");
        }
    };

    // On identity (its own store writes the label)…
    let token = legacy_token_of(&id, "apps", "legacy-token").await;
    let req = bearer(
        &token,
        pb::GetServiceAccountRequest {
            namespace: "apps".into(),
            name: "legacy".into(),
        },
    );
    authenticated(
        pb::service_account_service_client::ServiceAccountServiceClient::new(anonymous(
            &identity,
            identity.addr,
        ))
        .get_service_account(req)
        .await
        .map(drop),
    );
    // …and on the token-issuer (through identity's SecretService).
    let token2 = legacy_token_of(&id, "apps", "legacy-token-2").await;
    let req = bearer(
        &token2,
        CreateTokenRequest {
            namespace: "apps".into(),
            name: "legacy2".into(),
            audiences: vec!["a".into()],
            ..Default::default()
        },
    );
    authenticated(
        TokenServiceClient::new(anonymous(&identity, issuer.grpc))
            .create_token(req)
            .await
            .map(drop),
    );

    let mut secrets = pb::secret_service_client::SecretServiceClient::new(id.clone());
    for secret in ["legacy-token", "legacy-token-2"] {
        let mut label = None;
        for _ in 0..200 {
            let s = secrets
                .get_secret(pb::GetSecretRequest {
                    namespace: "apps".into(),
                    name: secret.into(),
                })
                .await
                .expect("get")
                .into_inner();
            label = s
                .metadata
                .as_ref()
                .and_then(|m| m.labels.get("kubernetes.io/legacy-token-last-used"))
                .cloned();
            if label.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            label.as_deref(),
            Some(today().as_str()),
            "{secret}: bearer use of a legacy token sets its last-used label within 4 s"
        );
    }
}

/// #13 finding 3: a service that needs the key-encryption key refuses to start
/// without one, naming the setting (before, identity stored Secrets in the clear
/// with a warning and token-review ran unable to check legacy tokens).
#[tokio::test]
async fn services_that_need_the_key_encryption_key_refuse_to_start_without_it() {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let unsealed = || async {
        badge_store::Store::connect(&identity.db.url, badge_store::StoreOptions::default())
            .await
            .expect("store")
    };
    let bind = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };
    let clock = || std::sync::Arc::new(badge_core::SystemClock);

    let started = tokio::time::timeout(
        Duration::from_secs(10),
        badge_identity::serve(
            &identity.config,
            unsealed().await,
            clock(),
            bind().await,
            std::future::pending(),
        ),
    )
    .await
    .expect("identity must refuse at once, not serve");
    let err = started.expect_err("identity without a KEK").to_string();
    assert!(err.contains("encryption.kek_file"), "{err}");
    assert!(err.contains("key-encryption key is required"), "{err}");

    let webhook = bind().await;
    let config = ReviewServer::config(
        &identity,
        &issuer,
        webhook.local_addr().expect("addr"),
        &ReviewOptions::default(),
    );
    let started = tokio::time::timeout(
        Duration::from_secs(10),
        badge_token_review::serve(
            &config,
            unsealed().await,
            clock(),
            badge_token_review::Listeners {
                grpc: bind().await,
                webhook: Some(webhook),
            },
            std::future::pending(),
        ),
    )
    .await
    .expect("token-review must refuse at once, not serve");
    let err = started.expect_err("token-review without a KEK").to_string();
    assert!(err.contains("encryption.kek_file"), "{err}");
}
