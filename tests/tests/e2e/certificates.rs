//! The workload CA end to end (issue 14): identity + token-issuer on one Postgres,
//! real mTLS, real service-account tokens. Keys and CSRs are made by the openssl
//! CLI; issued chains are checked by `openssl verify` (with the trust bundle served
//! by Badge as CA file) and by the Rust `spiffe` crate's X.509-SVID parser.

use std::path::Path;
use std::time::Duration;

use badge_proto::certificates::{
    self as cpb, certificate_authority_service_client::CertificateAuthorityServiceClient,
};
use badge_proto::istio::v1::auth::{
    IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
};
use badge_proto::token::{
    BoundObjectReference, CreateTokenRequest, token_service_client::TokenServiceClient,
};
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, pb};
use serde_json::Value;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::common::{Captured, Objects, anonymous, ec_csr, grant_pod_certificates, openssl};

const POD_BINDING_OID: &str = "2.25.2310844054200458026.1";

struct Env {
    identity: IdentityServer,
    issuer: IssuerServer,
    id: Channel,
    admin: Channel,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(&identity, IssuerOptions::default()).await;
    let admin = issuer.channel(&identity, &identity.pki.admin);
    let id = identity.admin().await;
    let e = Env {
        identity,
        issuer,
        id,
        admin,
        dir: tempfile::tempdir().expect("tempdir"),
    };
    e.ns("shop").await;
    e.sa("shop", "web").await;
    e.sa("shop", "db").await;
    e.node("node-a").await;
    e
}

impl Objects for Env {
    fn identity_admin(&self) -> Channel {
        self.id.clone()
    }
}

impl Env {
    async fn sa_uid(&self, ns: &str, name: &str) -> String {
        pb::service_account_service_client::ServiceAccountServiceClient::new(self.id.clone())
            .get_service_account(pb::GetServiceAccountRequest {
                namespace: ns.into(),
                name: name.into(),
            })
            .await
            .expect("get sa")
            .into_inner()
            .metadata
            .expect("meta")
            .uid
    }

    async fn node_uid(&self, name: &str) -> String {
        pb::node_service_client::NodeServiceClient::new(self.id.clone())
            .get_node(pb::GetNodeRequest { name: name.into() })
            .await
            .expect("get node")
            .into_inner()
            .metadata
            .expect("meta")
            .uid
    }

    /// A token for shop/<sa> with `audiences`, bound to `pod` when given.
    async fn token(&self, sa: &str, audiences: &[&str], pod: Option<(&str, &str)>) -> String {
        TokenServiceClient::new(self.admin.clone())
            .create_token(CreateTokenRequest {
                namespace: "shop".into(),
                name: sa.into(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                    kind: "Pod".into(),
                    api_version: "v1".into(),
                    name: name.into(),
                    uid: uid.into(),
                }),
                ..Default::default()
            })
            .await
            .expect("token")
            .into_inner()
            .token
    }

    /// A channel with no client certificate (as istio-agent connects): TLS trusting
    /// Badge's server CA only.
    fn anonymous(&self) -> Channel {
        anonymous(&self.identity, self.issuer.grpc)
    }

    async fn istio(
        &self,
        token: Option<&str>,
        csr: &str,
        validity: i64,
    ) -> Result<Vec<String>, tonic::Status> {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr.into(),
            validity_duration: validity,
            metadata: None,
        });
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        IstioCertificateServiceClient::new(self.anonymous())
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
    }

    async fn bundle(&self, token: &str) -> cpb::GetTrustBundleResponse {
        let mut req = tonic::Request::new(cpb::GetTrustBundleRequest {});
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        CertificateAuthorityServiceClient::new(self.anonymous())
            .get_trust_bundle(req)
            .await
            .expect("GetTrustBundle")
            .into_inner()
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("certificate PEM")
        .to_vec()
}

/// openssl verify: the leaf against the bundle's roots, with the chain's middle as
/// untrusted intermediates.
fn openssl_verify(dir: &Path, chain: &[String], roots_pem: &str) {
    std::fs::write(dir.join("bundle.pem"), roots_pem).expect("write");
    std::fs::write(dir.join("leaf.pem"), &chain[0]).expect("write");
    std::fs::write(dir.join("inter.pem"), chain[1..chain.len() - 1].concat()).expect("write");
    let out = openssl(
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "inter.pem",
            "leaf.pem",
        ]
        .map(String::from),
        dir,
    );
    assert!(out.contains("leaf.pem: OK"), "{out}");
}

fn status_has(r: Result<Vec<String>, tonic::Status>, code: Code, text: &str) {
    match r {
        Ok(_) => panic!("expected {code:?} ({text}), got a certificate"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(
                s.message().contains(text),
                "{:?} lacks {text:?}",
                s.message()
            );
        }
    }
}

/// Istio's CreateCertificate with an `istio-ca`-only, pod-bound token over a TLS
/// connection without a client certificate: a 3-entry chain (leaf, intermediate,
/// root last) for exactly the caller's SPIFFE ID, the requested lifetime, the pod
/// in Badge's extension; verified by openssl against the served trust bundle and by
/// the spiffe crate. Then the refusals a user would hit.
#[tokio::test]
async fn istio_create_certificate() {
    let e = env().await;
    let uid = e
        .pod("shop", "web-0", "web", "node-a")
        .await
        .metadata
        .expect("meta")
        .uid;
    let token = e.token("web", &["istio-ca"], Some(("web-0", &uid))).await;
    let api_token = e.token("web", &[], None).await;
    let bundle = e.bundle(&api_token).await;
    let td = bundle.trust_domain.clone();
    assert!(!td.is_empty());
    let me = format!("spiffe://{td}/ns/shop/sa/web");

    let csr = ec_csr(e.dir.path(), "web", &me);
    let chain = e
        .istio(Some(&token), &csr, 3600)
        .await
        .expect("certificate");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert!(
        bundle.roots_pem.contains(chain[2].trim()),
        "the chain ends at a root of the trust bundle"
    );
    openssl_verify(e.dir.path(), &chain, &bundle.roots_pem);

    // The leaf, as a relying party sees it.
    let leaf = der_of(&chain[0]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("leaf parses");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600, "validity_duration honoured");
    let text = openssl(
        &["x509", "-noout", "-text", "-in", "leaf.pem"].map(String::from),
        e.dir.path(),
    );
    assert!(text.contains(&format!("URI:{me}")), "{text}");
    assert!(
        text.contains(POD_BINDING_OID),
        "pod-binding extension: {text}"
    );

    // The spiffe crate: an X.509-SVID for exactly the caller's ID, with its key.
    let key_der = openssl(
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "web.key", "-outform", "DER", "-out", "web.der",
        ]
        .map(String::from),
        e.dir.path(),
    );
    drop(key_der);
    let key = std::fs::read(e.dir.path().join("web.der")).expect("key der");
    let mut chain_der = leaf.clone();
    chain_der.extend(der_of(&chain[1]));
    let svid = spiffe::X509Svid::parse_from_der(&chain_der, &key).expect("a valid X.509-SVID");
    assert_eq!(svid.spiffe_id().to_string(), me);
    let roots: Vec<u8> = [der_of(&chain[2])].concat();
    let sb = spiffe::X509Bundle::parse_from_der(spiffe::TrustDomain::new(&td).expect("td"), &roots)
        .expect("bundle");
    assert_eq!(sb.authorities().len(), 1);

    // No URI SAN: the caller's identity is used.
    let chain = e
        .istio(Some(&token), &ec_csr(e.dir.path(), "nosan", ""), 0)
        .await
        .expect("certificate without a requested SAN");
    let leaf2 = der_of(&chain[0]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf2).expect("leaf");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 86_400, "validity_duration 0: the default (24 h)");

    // Another service account's identity: PERMISSION_DENIED naming both.
    let other = format!("spiffe://{td}/ns/shop/sa/db");
    status_has(
        e.istio(Some(&token), &ec_csr(e.dir.path(), "db", &other), 3600)
            .await,
        Code::PermissionDenied,
        &format!("[{other:?}] do not match the caller's identity {me:?}"),
    );
    // Another trust domain, same path.
    status_has(
        e.istio(
            Some(&token),
            &ec_csr(e.dir.path(), "td", "spiffe://evil.example/ns/shop/sa/web"),
            3600,
        )
        .await,
        Code::PermissionDenied,
        "spiffe://evil.example/ns/shop/sa/web",
    );
    // Above the cap: istiod's text.
    status_has(
        e.istio(Some(&token), &csr, 172_800).await,
        Code::InvalidArgument,
        "requested TTL 48h0m0s is greater than the max allowed TTL 24h0m0s",
    );
    // Not a CSR.
    status_has(
        e.istio(
            Some(&token),
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            3600,
        )
        .await,
        Code::InvalidArgument,
        "csr",
    );
    // No credential; a token for the API audience only; a token for another audience.
    status_has(
        e.istio(None, &csr, 3600).await,
        Code::Unauthenticated,
        "Bearer",
    );
    status_has(
        e.istio(Some(&api_token), &csr, 3600).await,
        Code::Unauthenticated,
        "request authenticate failure",
    );
    let other_aud = e.token("web", &["vault"], None).await;
    status_has(
        e.istio(Some(&other_aud), &csr, 3600).await,
        Code::Unauthenticated,
        "request authenticate failure",
    );
    // The pod is deleted: its token, and so the certificate, is refused.
    e.delete_pod("shop", "web-0").await;
    let mut last = Ok(vec![]);
    for _ in 0..100 {
        last = e.istio(Some(&token), &csr, 3600).await;
        if last.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status_has(last, Code::Unauthenticated, "request authenticate failure");
}

/// The CA lifecycle over gRPC: one generated CA signs; the trust bundle is readable
/// with any service-account token (SPIFFE JSON with x509-svid and jwt-svid keys,
/// PEM roots); rotation is an operator action (RBAC) that publishes a new CA in the
/// bundle without making it sign yet.
#[tokio::test]
async fn ca_lifecycle_and_trust_bundle() {
    let e = env().await;
    let mut ca = CertificateAuthorityServiceClient::new(e.admin.clone());
    let list = ca
        .list_certificate_authorities(cpb::ListCertificateAuthoritiesRequest {})
        .await
        .expect("list")
        .into_inner()
        .authorities;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, cpb::CertificateAuthorityState::Active as i32);
    assert_eq!(list[0].source, "generated");
    assert!(!list[0].certificate_chain_pem.contains("PRIVATE"));

    let token = e.token("web", &[], None).await;
    let b = e.bundle(&token).await;
    let doc: Value = serde_json::from_str(&b.spiffe_bundle_json).expect("json");
    let keys = doc["keys"].as_array().expect("keys");
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1);
    assert_eq!(x509[0]["x5c"].as_array().expect("x5c").len(), 1);
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string())
    );
    assert_eq!(doc["spiffe_sequence"].as_u64(), Some(b.sequence));
    assert_eq!(doc["spiffe_refresh_hint"].as_u64(), Some(300));
    assert_eq!(b.roots_pem.matches("BEGIN CERTIFICATE").count(), 1);
    // The same bundle over HTTPS beside OIDC discovery, without any credential.
    let (code, headers, body) = badge_tests::https_get(
        e.issuer.oidc,
        "/.well-known/spiffe-bundle",
        &e.identity.pki.ca,
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    let https_doc: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(https_doc["keys"], doc["keys"]);
    let (code, _, pem) = badge_tests::https_get(
        e.issuer.oidc,
        "/.well-known/spiffe-bundle.pem",
        &e.identity.pki.ca,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8(pem).expect("pem"), b.roots_pem);

    // A workload may not rotate the CA.
    let mut req = tonic::Request::new(cpb::RotateCertificateAuthorityRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let err = CertificateAuthorityServiceClient::new(e.anonymous())
        .rotate_certificate_authority(req)
        .await
        .expect_err("a service account cannot rotate the CA");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("certificateauthorities"),
        "{}",
        err.message()
    );

    let rotated = ca
        .rotate_certificate_authority(cpb::RotateCertificateAuthorityRequest {})
        .await
        .expect("rotate")
        .into_inner()
        .authority
        .expect("authority");
    assert_eq!(
        rotated.state,
        cpb::CertificateAuthorityState::Published as i32
    );
    // The new root reaches the bundle through the change feed; the old CA signs.
    let mut b2 = e.bundle(&token).await;
    for _ in 0..100 {
        if b2.roots_pem.matches("BEGIN CERTIFICATE").count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        b2 = e.bundle(&token).await;
    }
    assert_eq!(b2.roots_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(b2.sequence > b.sequence);
    let (_, _, body) = badge_tests::https_get(
        e.issuer.oidc,
        "/.well-known/spiffe-bundle",
        &e.identity.pki.ca,
    )
    .await;
    let https_doc: Value = serde_json::from_slice(&body).expect("json");
    let roots = https_doc["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .count();
    assert_eq!(roots, 2, "old and new roots over HTTPS");
    assert!(https_doc["spiffe_sequence"].as_u64() > Some(b.sequence));
    let list = ca
        .list_certificate_authorities(cpb::ListCertificateAuthoritiesRequest {})
        .await
        .expect("list")
        .into_inner()
        .authorities;
    let state = |k: &str| list.iter().find(|a| a.key_id == k).expect("listed").state;
    assert_eq!(
        state(&rotated.key_id),
        cpb::CertificateAuthorityState::Published as i32
    );
    assert_eq!(
        list.iter()
            .filter(|a| a.state == cpb::CertificateAuthorityState::Active as i32)
            .count(),
        1
    );
}

/// A DER PKCS#10 request signed by a fresh P-256 key (openssl), for
/// `stubPKCS10Request`.
fn stub_csr(dir: &Path, stem: &str) -> Vec<u8> {
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/O=kubelet",
            "-keyout",
            &format!("{stem}.key"),
            "-outform",
            "DER",
            "-out",
            &format!("{stem}.der"),
        ]
        .map(String::from),
        dir,
    );
    std::fs::read(dir.join(format!("{stem}.der"))).expect("csr")
}

async fn create_pod_cert(
    ch: Channel,
    bearer: Option<&str>,
    spec: cpb::PodCertificateRequestSpec,
) -> Result<cpb::CreatePodCertificateResponse, tonic::Status> {
    let mut req = tonic::Request::new(cpb::CreatePodCertificateRequest {
        namespace: "shop".into(),
        spec: Some(spec),
    });
    if let Some(t) = bearer {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    // The binding reaches the issuer through the change feed within milliseconds.
    let mut last = None;
    for _ in 0..50 {
        let r = cpb::pod_certificate_service_client::PodCertificateServiceClient::new(ch.clone())
            .create_pod_certificate(clone_req(&req))
            .await
            .map(|r| r.into_inner());
        match &r {
            Err(s) if s.code() == Code::PermissionDenied && s.message().contains("RBAC") => {
                last = Some(r);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return r,
        }
    }
    last.expect("tried")
}

fn clone_req(
    r: &tonic::Request<cpb::CreatePodCertificateRequest>,
) -> tonic::Request<cpb::CreatePodCertificateRequest> {
    let mut out = tonic::Request::new(r.get_ref().clone());
    *out.metadata_mut() = r.metadata().clone();
    out
}

fn pcr_err(r: Result<cpb::CreatePodCertificateResponse, tonic::Status>, code: Code, text: &str) {
    match r {
        Ok(_) => panic!("expected {code:?} ({text}), got a certificate"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(
                s.message().contains(text),
                "{:?} lacks {text:?}",
                s.message()
            );
        }
    }
}

/// Kubernetes' PodCertificateRequest, answered synchronously: the kubelet (node
/// certificate) gets a chain (leaf + intermediate) whose status times equal the
/// leaf's and whose refresh time lies inside Kubernetes' window; the pod itself
/// may ask with its own pod-bound token; everything else is refused as Kubernetes
/// would — another node, another pod, an unknown signer, a lifetime out of range,
/// no RBAC grant, a wrong, deleted or re-created pod.
#[tokio::test]
async fn kubernetes_pod_certificate() {
    let e = env().await;
    grant_pod_certificates(&e.id).await;
    let sa_uid = e.sa("shop", "api").await.metadata.expect("meta").uid;
    let node_uid = e.node("node-b").await.metadata.expect("meta").uid;
    let pod_uid = e
        .pod("shop", "api-0", "api", "node-b")
        .await
        .metadata
        .expect("meta")
        .uid;
    let node_b = e
        .identity
        .issue("node-b", "system:node:node-b", &["system:nodes"]);
    let kubelet = e.issuer.channel(&e.identity, &node_b);
    let spec = |csr: Vec<u8>| cpb::PodCertificateRequestSpec {
        signer_name: "badge.dev/spiffe".into(),
        pod_name: "api-0".into(),
        pod_uid: pod_uid.clone(),
        service_account_name: "api".into(),
        service_account_uid: sa_uid.clone(),
        node_name: "node-b".into(),
        node_uid: node_uid.clone(),
        max_expiration_seconds: Some(7200),
        stub_pkcs10_request: csr,
        ..Default::default()
    };
    let csr = stub_csr(e.dir.path(), "api");
    let resp = create_pod_cert(kubelet.clone(), None, spec(csr.clone()))
        .await
        .expect("the kubelet gets its pod's certificate");
    let status = resp.status.expect("status");
    assert_eq!(status.conditions.len(), 1);
    assert_eq!(status.conditions[0].r#type, "Issued");
    assert_eq!(status.conditions[0].status, "True");
    let blocks: Vec<String> = status
        .certificate_chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(String::from)
        .collect();
    assert_eq!(blocks.len(), 2, "leaf + intermediate, no root");
    let leaf = der_of(&blocks[0]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("leaf");
    let nb = status.not_before.expect("notBefore").seconds;
    let na = status.not_after.expect("notAfter").seconds;
    let refresh = status.begin_refresh_at.expect("beginRefreshAt").seconds;
    assert_eq!(
        cert.validity().not_before.timestamp(),
        nb,
        "notBefore = the leaf's"
    );
    assert_eq!(
        cert.validity().not_after.timestamp(),
        na,
        "notAfter = the leaf's"
    );
    assert_eq!(na - nb, 7200, "maxExpirationSeconds honoured");
    assert!(
        refresh >= nb + 600 && refresh <= na - 600,
        "beginRefreshAt in Kubernetes' window"
    );
    let td = e.bundle(&e.token("web", &[], None).await).await;
    let me = format!("spiffe://{}/ns/shop/sa/api", td.trust_domain);
    assert_eq!(resp.spiffe_id, me);
    let mut chain = blocks.clone();
    chain.push(String::new()); // openssl_verify takes the middle as intermediates
    openssl_verify(e.dir.path(), &chain, &td.roots_pem);
    let text = openssl(
        &["x509", "-noout", "-text", "-in", "leaf.pem"].map(String::from),
        e.dir.path(),
    );
    assert!(text.contains(&format!("URI:{me}")), "{text}");
    assert!(text.contains(POD_BINDING_OID), "{text}");

    // Unknown signer; lifetime below Kubernetes' minimum; no proof of possession.
    pcr_err(
        create_pod_cert(
            kubelet.clone(),
            None,
            cpb::PodCertificateRequestSpec {
                signer_name: "example.com/other".into(),
                ..spec(csr.clone())
            },
        )
        .await,
        Code::InvalidArgument,
        "spec.signerName: Unsupported value: \"example.com/other\": supported values: \"badge.dev/spiffe\"",
    );
    pcr_err(
        create_pod_cert(
            kubelet.clone(),
            None,
            cpb::PodCertificateRequestSpec {
                max_expiration_seconds: Some(600),
                ..spec(csr.clone())
            },
        )
        .await,
        Code::InvalidArgument,
        "spec.maxExpirationSeconds: invalid value \"600\": must be in the range [3600, 7862400]",
    );
    pcr_err(
        create_pod_cert(kubelet.clone(), None, spec(b"not a CSR".to_vec())).await,
        Code::InvalidArgument,
        "spec.stubPKCS10Request",
    );
    // Another node's kubelet.
    e.node("node-c").await;
    let node_c = e
        .identity
        .issue("node-c", "system:node:node-c", &["system:nodes"]);
    pcr_err(
        create_pod_cert(
            e.issuer.channel(&e.identity, &node_c),
            None,
            spec(csr.clone()),
        )
        .await,
        Code::PermissionDenied,
        "PodCertificateRequest.Spec.NodeName=\"node-b\", which is not the requesting node \"node-c\"",
    );
    // The pod's node names it right but the pod is elsewhere.
    pcr_err(
        create_pod_cert(
            kubelet.clone(),
            None,
            cpb::PodCertificateRequestSpec {
                pod_uid: "0000".into(),
                ..spec(csr.clone())
            },
        )
        .await,
        Code::Aborted,
        "spec.podUID (0000) does not match the UID of pods \"api-0\"",
    );

    // The pod itself, with its pod-bound token (shop/web is granted; shop/api is not).
    let web_uid = e
        .pod("shop", "web-0", "web", "node-a")
        .await
        .metadata
        .expect("meta")
        .uid;
    let web_sa_uid = e.sa_uid("shop", "web").await;
    let node_a_uid = e.node_uid("node-a").await;
    let web_token = e.token("web", &[], Some(("web-0", &web_uid))).await;
    let web_spec = cpb::PodCertificateRequestSpec {
        pod_name: "web-0".into(),
        pod_uid: web_uid.clone(),
        service_account_name: "web".into(),
        service_account_uid: web_sa_uid,
        node_name: "node-a".into(),
        node_uid: node_a_uid,
        ..spec(csr.clone())
    };
    let ok = create_pod_cert(e.anonymous(), Some(&web_token), web_spec.clone())
        .await
        .expect("the pod's own token");
    assert!(ok.spiffe_id.ends_with("/ns/shop/sa/web"));
    // The same token for another pod.
    pcr_err(
        create_pod_cert(e.anonymous(), Some(&web_token), spec(csr.clone())).await,
        Code::PermissionDenied,
        "a pod may only request its own certificate",
    );
    // No RBAC grant: shop/api's own pod-bound token.
    let api_token = e.token("api", &[], Some(("api-0", &pod_uid))).await;
    let err = cpb::pod_certificate_service_client::PodCertificateServiceClient::new(e.anonymous())
        .create_pod_certificate({
            let mut r = tonic::Request::new(cpb::CreatePodCertificateRequest {
                namespace: "shop".into(),
                spec: Some(spec(csr.clone())),
            });
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {api_token}").parse().expect("header"),
            );
            r
        })
        .await
        .expect_err("no RBAC grant");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("podcertificaterequests"),
        "{}",
        err.message()
    );

    // The pod is deleted, then re-created under the same name.
    e.delete_pod("shop", "api-0").await;
    pcr_err(
        create_pod_cert(kubelet.clone(), None, spec(csr.clone())).await,
        Code::NotFound,
        "pods \"api-0\" not found",
    );
    e.pod("shop", "api-0", "api", "node-b").await;
    pcr_err(
        create_pod_cert(kubelet.clone(), None, spec(csr.clone())).await,
        Code::Aborted,
        "might have been deleted and then recreated",
    );
}

/// Istio's plug-in CA layout made by openssl: a root, an intermediate it signs
/// (`ca-cert.pem`, `ca-key.pem`), `root-cert.pem`, `cert-chain.pem`.
fn plugin_files(dir: &Path) {
    let run = |args: &[&str]| {
        openssl(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), dir);
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "[v3_ca]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "root-key.pem",
        "-out",
        "root-cert.pem",
        "-days",
        "30",
        "-subj",
        "/O=Acme/CN=Acme Root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.csr",
        "-subj",
        "/O=Acme/CN=Acme Mesh CA",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "root-cert.pem",
        "-CAkey",
        "root-key.pem",
        "-CAcreateserial",
        "-out",
        "ca-cert.pem",
        "-days",
        "20",
        "-extfile",
        "ext.cnf",
        "-extensions",
        "v3_ca",
    ]);
    let chain = std::fs::read_to_string(dir.join("ca-cert.pem")).expect("ca")
        + &std::fs::read_to_string(dir.join("root-cert.pem")).expect("root");
    std::fs::write(dir.join("cert-chain.pem"), chain).expect("chain");
    // Only the four plug-in files stay: the root key never reaches Badge.
    for f in ["root-key.pem", "ca.csr", "ext.cnf", "root-cert.srl"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Runs a token-issuer with `config` until the returned sender fires.
async fn serve_issuer(
    identity: &IdentityServer,
    config: badge_token_issuer::IssuerConfig,
    grpc: tokio::net::TcpListener,
    oidc: tokio::net::TcpListener,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let store = badge_store::Store::connect(
        &config.database.url,
        badge_store::StoreOptions {
            sealer: identity.config.encryption.sealer().expect("kek"),
            ..badge_store::StoreOptions::default()
        },
    )
    .await
    .expect("store");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        badge_token_issuer::serve(
            &config,
            store,
            std::sync::Arc::new(badge_core::SystemClock),
            badge_token_issuer::Listeners { grpc, oidc },
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    (task, stop)
}

/// A plug-in CA (`[ca] plugin_dir`, Istio's cacerts layout): it signs at once, the
/// chain is leaf, the operator's intermediate, the operator's root (last), verified
/// by openssl against the operator's root; the bundle publishes that root; on-demand
/// rotation is refused (the operator rotates the files); and a key that does not
/// belong to ca-cert.pem stops start-up with the file named.
#[tokio::test]
async fn plugin_ca() {
    let identity = IdentityServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).expect("mkdir");
    plugin_files(&cacerts);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_addr = grpc.local_addr().expect("addr");
    let mut config = IssuerServer::config(
        &identity,
        dir.path(),
        oidc.local_addr().expect("addr"),
        &IssuerOptions {
            socket: false,
            legacy_tokens: false,
            ..Default::default()
        },
    );
    config.ca.plugin_dir = Some(cacerts.clone());
    let (task, stop) = serve_issuer(&identity, config.clone(), grpc, oidc).await;
    let ca_pem = std::fs::read(&identity.pki.ca).expect("ca");
    let admin = Channel::from_shared(format!("https://{grpc_addr}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .identity(badge_tests::identity(&identity.pki.admin))
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect_lazy();
    let mut ca = CertificateAuthorityServiceClient::new(admin.clone());
    let mut list = Vec::new();
    for _ in 0..200 {
        if let Ok(r) = ca
            .list_certificate_authorities(cpb::ListCertificateAuthoritiesRequest {})
            .await
        {
            list = r.into_inner().authorities;
            break;
        }
        assert!(!task.is_finished(), "token-issuer exited during start-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].source, "plugin");
    assert_eq!(list[0].state, cpb::CertificateAuthorityState::Active as i32);
    let err = ca
        .rotate_certificate_authority(cpb::RotateCertificateAuthorityRequest {})
        .await
        .expect_err("a plug-in CA is rotated by its files");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("ca.plugin_dir"), "{}", err.message());

    // A workload certificate through Istio's API.
    let objects = identity.admin().await;
    objects.ns("shop").await;
    objects.sa("shop", "web").await;
    let token = TokenServiceClient::new(admin.clone())
        .create_token(CreateTokenRequest {
            namespace: "shop".into(),
            name: "web".into(),
            audiences: vec!["istio-ca".into()],
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/O=w",
            "-keyout",
            "w.key",
            "-out",
            "w.csr",
        ]
        .map(String::from),
        &work,
    );
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: std::fs::read_to_string(work.join("w.csr")).expect("csr"),
        validity_duration: 3600,
        metadata: None,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let chain = IstioCertificateServiceClient::new(admin.clone())
        .create_certificate(req)
        .await
        .expect("certificate")
        .into_inner()
        .cert_chain;
    let root = std::fs::read_to_string(cacerts.join("root-cert.pem")).expect("root");
    let ca_cert = std::fs::read_to_string(cacerts.join("ca-cert.pem")).expect("ca-cert");
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[1].trim(), ca_cert.trim());
    assert_eq!(chain[2].trim(), root.trim());
    openssl_verify(&work, &chain, &root);
    let mut breq = tonic::Request::new(cpb::GetTrustBundleRequest {});
    breq.metadata_mut().insert(
        "authorization",
        format!(
            "Bearer {}",
            TokenServiceClient::new(admin.clone())
                .create_token(CreateTokenRequest {
                    namespace: "shop".into(),
                    name: "web".into(),
                    ..Default::default()
                })
                .await
                .expect("token")
                .into_inner()
                .token
        )
        .parse()
        .expect("header"),
    );
    let bundle = CertificateAuthorityServiceClient::new(admin.clone())
        .get_trust_bundle(breq)
        .await
        .expect("bundle")
        .into_inner();
    assert_eq!(bundle.roots_pem.trim(), root.trim());
    let _ = stop.send(());
    task.await.expect("join").expect("clean stop");

    // A key that is not ca-cert.pem's: start-up refuses, naming the file.
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca-key.pem",
        ]
        .map(String::from),
        &cacerts,
    );
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (task, _stop) = serve_issuer(&identity, config, grpc, oidc).await;
    let err = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("start-up ends")
        .expect("join")
        .expect_err("a mismatched plug-in key must stop start-up");
    let text = format!("{err:#}");
    assert!(
        text.contains("ca.plugin_dir") && text.contains("ca-key.pem"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

/// CA rotation under issuance load: four workers request Istio certificates
/// continuously while the CA is rotated three times (propagation delay 1 s). No
/// request fails, each chain's root is in the trust bundle fetched right after it
/// was issued (sampled chains also pass `openssl verify` against that bundle), and
/// certificates come from more than one CA — the rotations took effect mid-load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ca_rotation_under_issuance_load() {
    let identity = IdentityServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_addr = grpc.local_addr().expect("addr");
    let mut config = IssuerServer::config(
        &identity,
        dir.path(),
        oidc.local_addr().expect("addr"),
        &IssuerOptions {
            socket: false,
            legacy_tokens: false,
            ..Default::default()
        },
    );
    config.ca.propagation_delay_seconds = 1;
    config.ca.check_interval_seconds = 1;
    let (task, stop) = serve_issuer(&identity, config, grpc, oidc).await;
    let ca_pem = std::fs::read(&identity.pki.ca).expect("ca");
    let channel = |with_cert: bool| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem.clone()))
            .domain_name("localhost");
        if with_cert {
            tls = tls.identity(badge_tests::identity(&identity.pki.admin));
        }
        Channel::from_shared(format!("https://{grpc_addr}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy()
    };
    let admin = channel(true);
    let mut ca = CertificateAuthorityServiceClient::new(admin.clone());
    for _ in 0..200 {
        if ca
            .list_certificate_authorities(cpb::ListCertificateAuthoritiesRequest {})
            .await
            .is_ok()
        {
            break;
        }
        assert!(!task.is_finished(), "token-issuer exited during start-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let objects = identity.admin().await;
    objects.ns("shop").await;
    objects.sa("shop", "web").await;
    let token = |aud: Vec<String>| {
        let admin = admin.clone();
        async move {
            TokenServiceClient::new(admin)
                .create_token(CreateTokenRequest {
                    namespace: "shop".into(),
                    name: "web".into(),
                    audiences: aud,
                    ..Default::default()
                })
                .await
                .expect("token")
                .into_inner()
                .token
        }
    };
    let istio_token = token(vec!["istio-ca".into()]).await;
    let api_token = token(vec![]).await;
    // A pool of CSRs (a fresh key per request is not the point here).
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let csrs: Vec<String> = (0..4)
        .map(|i| {
            openssl(
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/O=w",
                    "-keyout",
                    &format!("k{i}.pem"),
                    "-out",
                    &format!("c{i}.csr"),
                ]
                .map(String::from),
                &work,
            );
            std::fs::read_to_string(work.join(format!("c{i}.csr"))).expect("csr")
        })
        .collect();

    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let mut workers = Vec::new();
    for csr in csrs {
        let ch = channel(false);
        let (istio_token, api_token) = (istio_token.clone(), api_token.clone());
        workers.push(tokio::spawn(async move {
            let mut out: Vec<(Vec<String>, String)> = Vec::new();
            while std::time::Instant::now() < deadline {
                let mut req = tonic::Request::new(IstioCertificateRequest {
                    csr: csr.clone(),
                    validity_duration: 3600,
                    metadata: None,
                });
                req.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {istio_token}").parse().expect("header"),
                );
                let chain = IstioCertificateServiceClient::new(ch.clone())
                    .create_certificate(req)
                    .await
                    .map_err(|s| format!("issuance failed: {:?} {}", s.code(), s.message()))?
                    .into_inner()
                    .cert_chain;
                let mut breq = tonic::Request::new(cpb::GetTrustBundleRequest {});
                breq.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {api_token}").parse().expect("header"),
                );
                let bundle = CertificateAuthorityServiceClient::new(ch.clone())
                    .get_trust_bundle(breq)
                    .await
                    .map_err(|s| format!("bundle: {s:?}"))?
                    .into_inner();
                if !bundle.roots_pem.contains(chain[chain.len() - 1].trim()) {
                    return Err("a chain's root is not in the bundle published after it".into());
                }
                out.push((chain, bundle.roots_pem));
            }
            Ok::<_, String>(out)
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ca.rotate_certificate_authority(cpb::RotateCertificateAuthorityRequest {})
            .await
            .expect("rotate under load");
    }
    let mut issued = Vec::new();
    for w in workers {
        issued.extend(w.await.expect("join").expect("no failed issuance"));
    }
    assert!(issued.len() >= 20, "only {} certificates", issued.len());
    let intermediates: std::collections::BTreeSet<&String> =
        issued.iter().map(|(c, _)| &c[1]).collect();
    assert!(
        intermediates.len() >= 2,
        "all {} certificates came from one CA: the rotations never took effect",
        issued.len()
    );
    eprintln!(
        "{} certificates from {} CAs, 3 rotations, no failure",
        issued.len(),
        intermediates.len()
    );
    // openssl verify on a sample, each against the bundle of its moment.
    for (chain, roots) in issued.iter().step_by(issued.len() / 8 + 1) {
        openssl_verify(&work, chain, roots);
    }
    let _ = stop.send(());
    task.await.expect("join").expect("clean stop");
}

/// One audit event per certificate (requester, SPIFFE ID, pod, serial, not-after, CA
/// key id) and one per refusal (with the code and reason); no log line holds the
/// token, the CSR or a private key.
#[tokio::test]
async fn certificates_and_refusals_are_audited_without_secrets() {
    let (captured, _guard) = Captured::start(tracing::Level::INFO);
    let e = env().await;
    let uid = e
        .pod("shop", "web-0", "web", "node-a")
        .await
        .metadata
        .expect("meta")
        .uid;
    let token = e.token("web", &["istio-ca"], Some(("web-0", &uid))).await;
    let csr = ec_csr(e.dir.path(), "web", "");
    let chain = e
        .istio(Some(&token), &csr, 3600)
        .await
        .expect("certificate");
    let other = ec_csr(e.dir.path(), "other", "spiffe://127.0.0.1/ns/shop/sa/db");
    e.istio(Some(&token), &other, 3600)
        .await
        .expect_err("another identity");

    let logs = captured.text();
    let events = |name: &str| -> Vec<Value> {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "audit" && v["fields"]["event"] == name)
            .collect()
    };
    let issued = events("certificate.issued");
    assert_eq!(issued.len(), 1, "one event per certificate");
    let f = &issued[0]["fields"];
    assert_eq!(f["api"], "istio");
    assert_eq!(f["requester"], "system:serviceaccount:shop:web");
    assert!(
        f["spiffe_id"]
            .as_str()
            .expect("id")
            .ends_with("/ns/shop/sa/web")
    );
    assert_eq!(f["pod"], "web-0");
    let leaf = der_of(&chain[0]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("leaf");
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(f["serial"].as_str(), Some(serial.trim_start_matches("00")));
    assert_eq!(
        f["not_after"].as_i64(),
        Some(cert.validity().not_after.timestamp())
    );
    assert!(f["ca_key_id"].as_str().is_some_and(|k| !k.is_empty()));
    let refused = events("certificate.refused");
    assert_eq!(refused.len(), 1, "one event per refusal");
    let r = &refused[0]["fields"];
    assert_eq!(r["code"], "PermissionDenied");
    assert_eq!(r["requester"], "system:serviceaccount:shop:web");
    assert!(
        r["reason"]
            .as_str()
            .expect("reason")
            .contains("/ns/shop/sa/db")
    );

    let key = std::fs::read_to_string(e.dir.path().join("web.key")).expect("key");
    let key_body = key.lines().nth(1).expect("key line");
    let csr_body = csr.lines().nth(1).expect("csr line");
    let signature = token.rsplit('.').next().expect("sig");
    for secret in [token.as_str(), signature, key_body, csr_body] {
        assert!(
            !logs.contains(secret),
            "a log line holds a secret: {secret:.20}…"
        );
    }
}

/// Two token-issuer replicas on one database: started together they generate one
/// CA between them (the advisory lock: one rotator at a time), and a rotation on one
/// reaches the other's trust bundle through the change feed within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_ca_and_follow_rotations() {
    let identity = IdentityServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_pem = std::fs::read(&identity.pki.ca).expect("ca");
    let mut replicas = Vec::new();
    let mut starts = Vec::new();
    for i in 0..2 {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let oidc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = grpc.local_addr().expect("addr");
        let sub = dir.path().join(format!("r{i}"));
        std::fs::create_dir(&sub).expect("mkdir");
        let config = IssuerServer::config(
            &identity,
            &sub,
            oidc.local_addr().expect("addr"),
            &IssuerOptions {
                socket: false,
                legacy_tokens: false,
                ..Default::default()
            },
        );
        starts.push(serve_issuer(&identity, config, grpc, oidc));
        let ch = Channel::from_shared(format!("https://{addr}"))
            .expect("url")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca_pem.clone()))
                    .identity(badge_tests::identity(&identity.pki.admin))
                    .domain_name("localhost"),
            )
            .expect("tls")
            .connect_lazy();
        replicas.push(CertificateAuthorityServiceClient::new(ch));
    }
    // Both start at the same moment.
    let mut handles = Vec::new();
    for s in starts {
        handles.push(s.await);
    }
    let list = |mut c: CertificateAuthorityServiceClient<Channel>| async move {
        for _ in 0..200 {
            if let Ok(r) = c
                .list_certificate_authorities(cpb::ListCertificateAuthoritiesRequest {})
                .await
            {
                return r
                    .into_inner()
                    .authorities
                    .into_iter()
                    .map(|a| a.key_id)
                    .collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica not ready");
    };
    let a = list(replicas[0].clone()).await;
    let mut b = list(replicas[1].clone()).await;
    for _ in 0..50 {
        if b == a {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        b = list(replicas[1].clone()).await;
    }
    assert_eq!(a.len(), 1, "one CA between two replicas: {a:?}");
    assert_eq!(a, b);

    let rotated = replicas[0]
        .clone()
        .rotate_certificate_authority(cpb::RotateCertificateAuthorityRequest {})
        .await
        .expect("rotate")
        .into_inner()
        .authority
        .expect("authority")
        .key_id;
    let began = std::time::Instant::now();
    loop {
        let b = list(replicas[1].clone()).await;
        if b.contains(&rotated) {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "the other replica did not learn the new CA within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (task, stop) in handles {
        let _ = stop.send(());
        task.await.expect("join").expect("clean stop");
    }
}
