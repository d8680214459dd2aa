//! `badgectl` end to end: the library's commands against real identity, token-issuer
//! and token-review servers over mTLS on Postgres (with the admin certificate, and
//! with a service-account bearer token).

use std::path::Path;
use std::time::Duration;

use clap::Parser as _;

use crate::common::{Stack, openssl};

impl Stack {
    /// Endpoints and CA as flags (no config file involved).
    fn endpoints(&self) -> Vec<String> {
        vec![
            "--identity-endpoint".into(),
            self.identity.url(),
            "--issuer-endpoint".into(),
            format!("https://{}", self.issuer.grpc),
            "--review-endpoint".into(),
            format!("https://{}", self.review.grpc),
            "--ca".into(),
            self.identity.pki.ca.display().to_string(),
        ]
    }

    /// As the admin certificate (system:masters).
    fn admin(&self) -> Vec<String> {
        let mut v = self.endpoints();
        v.extend([
            "--client-cert".into(),
            self.identity.pki.admin.cert.display().to_string(),
            "--client-key".into(),
            self.identity.pki.admin.key.display().to_string(),
        ]);
        v
    }

    async fn ctl(&self, args: &[&str]) -> (anyhow::Result<u8>, String) {
        run_ctl(args, &self.admin()).await
    }
}

async fn run_ctl(args: &[&str], conn: &[String]) -> (anyhow::Result<u8>, String) {
    let mut argv: Vec<String> = vec!["badgectl".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.extend(conn.iter().cloned());
    let cli = badgectl::Cli::try_parse_from(&argv).expect("arguments parse");
    let mut out = Vec::new();
    let r = badgectl::execute(cli, &mut out).await;
    (r, String::from_utf8(out).expect("utf-8"))
}

/// Succeeds with exit code 0; the output.
async fn ok(s: &Stack, args: &[&str]) -> String {
    let (r, out) = s.ctl(args).await;
    match r {
        Ok(0) => out,
        Ok(c) => panic!("badgectl {args:?} exited {c}: {out}"),
        Err(e) => panic!("badgectl {args:?} failed: {e:#}"),
    }
}

async fn err(s: &Stack, args: &[&str]) -> String {
    match s.ctl(args).await {
        (Err(e), _) => format!("{e:#}"),
        (Ok(c), out) => panic!("badgectl {args:?} succeeded ({c}): {out}"),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p.display().to_string()
}

const SERVICE_ACCOUNT: &str = "apiVersion: v1
kind: ServiceAccount
metadata:
  annotations:
    kubernetes.io/enforce-mountable-secrets: \"true\"
  name: my-serviceaccount
  namespace: my-namespace
";

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: my-namespace
  labels:
    app: web
spec:
  serviceAccountName: my-serviceaccount
  containers:
  - name: app
    image: example/web:1
    volumeMounts:
    - name: vault-token
      mountPath: /var/run/secrets/vault
      readOnly: true
  volumes:
  - name: vault-token
    projected:
      sources:
      - serviceAccountToken:
          audience: vault
          expirationSeconds: 600
          path: vault-token
";

#[tokio::test]
async fn apply_get_token_can_i_review_keys_delete() {
    let s = Stack::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = write(dir.path(), "sa.yaml", SERVICE_ACCOUNT);

    // The namespace must exist: a clear error, nothing created.
    let e = err(&s, &["apply", "-f", &sa]).await;
    assert!(e.contains("namespace \"my-namespace\" not found"), "{e}");
    let ns = write(
        dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: my-namespace\n",
    );
    assert_eq!(
        ok(&s, &["apply", "-f", &ns]).await,
        "namespace/my-namespace created\n"
    );

    // The manifest, verbatim; then idempotent; then changed.
    assert_eq!(
        ok(&s, &["apply", "-f", &sa]).await,
        "serviceaccount/my-serviceaccount created\n"
    );
    assert_eq!(
        ok(&s, &["apply", "-f", &sa]).await,
        "serviceaccount/my-serviceaccount unchanged\n"
    );
    let labelled = write(
        dir.path(),
        "sa2.yaml",
        &SERVICE_ACCOUNT.replace(
            "  name: my-serviceaccount\n",
            "  name: my-serviceaccount\n  labels:\n    team: a\n",
        ),
    );
    assert_eq!(
        ok(&s, &["apply", "-f", &labelled]).await,
        "serviceaccount/my-serviceaccount configured\n"
    );

    // A pod of that account with a projected token volume; re-applying it is a
    // no-op even though admission added the kube-api-access volume.
    let pod = write(dir.path(), "pod.yaml", POD);
    assert_eq!(ok(&s, &["apply", "-f", &pod]).await, "pod/web created\n");
    assert_eq!(ok(&s, &["apply", "-f", &pod]).await, "pod/web unchanged\n");
    let changed = write(
        dir.path(),
        "pod2.yaml",
        &POD.replace("image: example/web:1", "image: example/web:2"),
    );
    let e = err(&s, &["apply", "-f", &changed]).await;
    assert!(e.contains("spec is immutable"), "{e}");

    // get: table, wide, yaml, json.
    let table = ok(&s, &["get", "sa", "-n", "my-namespace"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("SECRETS") && lines[0].contains("AGE"),
        "{table}"
    );
    assert!(lines.iter().any(|l| l.starts_with("default ")), "{table}");
    assert!(
        lines.iter().any(|l| l.starts_with("my-serviceaccount ")),
        "{table}"
    );
    let all = ok(&s, &["get", "serviceaccounts", "-A"]).await;
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("my-namespace ") && l.contains("my-serviceaccount")),
        "{all}"
    );

    let yaml = ok(
        &s,
        &[
            "get",
            "sa",
            "my-serviceaccount",
            "-n",
            "my-namespace",
            "-o",
            "yaml",
        ],
    )
    .await;
    let v: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "ServiceAccount");
    assert_eq!(v["metadata"]["name"], "my-serviceaccount");
    assert_eq!(v["metadata"]["namespace"], "my-namespace");
    assert_eq!(v["metadata"]["labels"]["team"], "a");
    assert_eq!(
        v["metadata"]["annotations"]["kubernetes.io/enforce-mountable-secrets"],
        "true"
    );
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(
        v["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let json = ok(&s, &["get", "pods", "-n", "my-namespace", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["kind"], "List");
    let web = &v["items"][0];
    assert_eq!(web["kind"], "Pod");
    assert_eq!(web["spec"]["serviceAccountName"], "my-serviceaccount");
    let volumes = web["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(
        volumes[0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "vault"
    );
    assert!(
        volumes.iter().any(|v| v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))),
        "admission's volume: {json}"
    );
    let pod_uid = web["metadata"]["uid"].as_str().expect("uid").to_string();
    let wide = ok(
        &s,
        &["get", "po", "web", "-n", "my-namespace", "-o", "wide"],
    )
    .await;
    assert!(
        wide.contains("example/web:1") && wide.contains(&pod_uid),
        "{wide}"
    );
    let nss = ok(&s, &["get", "ns"]).await;
    assert!(
        nss.lines()
            .any(|l| l.starts_with("my-namespace ") && l.contains("Active")),
        "{nss}"
    );
    let e = err(&s, &["get", "deployments"]).await;
    assert!(
        e.contains("doesn't have a resource type \"deployments\""),
        "{e}"
    );

    // create token bound to the pod, then review it.
    let token = ok(
        &s,
        &[
            "create",
            "token",
            "my-serviceaccount",
            "-n",
            "my-namespace",
            "--audience",
            "vault",
            "--duration",
            "10m",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "web",
        ],
    )
    .await;
    let token = token.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT");
    let review = ok(&s, &["review", &token, "--audience", "vault"]).await;
    assert!(review.contains("authenticated: true"), "{review}");
    assert!(
        review.contains("user: system:serviceaccount:my-namespace:my-serviceaccount"),
        "{review}"
    );
    assert!(
        review.contains("authentication.kubernetes.io/pod-name: web"),
        "{review}"
    );
    assert!(
        review.contains(&format!("authentication.kubernetes.io/pod-uid: {pod_uid}")),
        "{review}"
    );
    assert!(review.contains("audiences: vault"), "{review}");
    let (r, out) = s.ctl(&["review", &token, "--audience", "other"]).await;
    assert_eq!(r.expect("review"), 1, "wrong audience: {out}");
    assert!(
        out.contains("authenticated: false") && out.contains("error: "),
        "{out}"
    );
    assert!(!out.contains(&token));

    // auth can-i: as myself (system:masters), and --as the service account.
    assert_eq!(
        ok(&s, &["auth", "can-i", "list", "pods", "-n", "my-namespace"]).await,
        "yes\n"
    );
    let sa_user = "system:serviceaccount:my-namespace:my-serviceaccount";
    let as_sa = [
        "auth",
        "can-i",
        "list",
        "jobs.batch",
        "-n",
        "maintenance",
        "--as",
        sa_user,
        "--as-group",
        "system:serviceaccounts",
    ];
    let (r, out) = s.ctl(&as_sa).await;
    assert_eq!((r.expect("can-i"), out.as_str()), (1, "no\n"));
    let rbac = write(
        dir.path(),
        "rbac.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: maintenance\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: job-reader\n  namespace: maintenance\nrules:\n- apiGroups: [batch]\n  resources: [jobs]\n  verbs: [get, list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: read-jobs\n  namespace: maintenance\nsubjects:\n- kind: ServiceAccount\n  name: my-serviceaccount\n  namespace: my-namespace\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: job-reader\n",
    );
    assert_eq!(
        ok(&s, &["apply", "-f", &rbac]).await,
        "namespace/maintenance created\nrole.rbac.authorization.k8s.io/job-reader created\nrolebinding.rbac.authorization.k8s.io/read-jobs created\n"
    );
    // The binding reaches token-review through the change feed within milliseconds.
    let mut answer = String::new();
    for _ in 0..100 {
        let (r, out) = s.ctl(&as_sa).await;
        answer = out;
        if r.expect("can-i") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer, "yes\n");
    let rb = ok(
        &s,
        &["get", "rolebindings", "-n", "maintenance", "-o", "wide"],
    )
    .await;
    assert!(
        rb.contains("Role/job-reader") && rb.contains("my-namespace/my-serviceaccount"),
        "{rb}"
    );

    // A bearer token instead of the client certificate: the service account itself.
    let api_token = ok(
        &s,
        &["create", "token", "my-serviceaccount", "-n", "my-namespace"],
    )
    .await;
    let mut as_token = s.endpoints();
    as_token.extend(["--token".to_string(), api_token.trim().to_string()]);
    let (r, out) = run_ctl(
        &["auth", "can-i", "list", "jobs.batch", "-n", "maintenance"],
        &as_token,
    )
    .await;
    assert_eq!((r.expect("self can-i"), out.as_str()), (0, "yes\n"));
    let (r, out) = run_ctl(
        &["auth", "can-i", "list", "secrets", "-n", "maintenance"],
        &as_token,
    )
    .await;
    assert_eq!((r.expect("self can-i"), out.as_str()), (1, "no\n"));
    let (r, _) = run_ctl(&["get", "secrets", "-n", "my-namespace"], &as_token).await;
    let e = format!("{:#}", r.expect_err("no RBAC for secrets"));
    assert!(
        e.contains("Forbidden") && e.contains("cannot list resource \"secrets\""),
        "{e}"
    );
    assert!(
        !e.contains(api_token.trim()),
        "the token never appears in errors"
    );

    // keys.
    let keys = ok(&s, &["keys", "list"]).await;
    assert!(keys.starts_with("KID"), "{keys}");
    assert!(
        keys.lines()
            .any(|l| l.contains("ES256") && l.contains("active")),
        "{keys}"
    );
    let rotated = ok(&s, &["keys", "rotate"]).await;
    assert!(
        rotated.starts_with("key/") && rotated.contains("created"),
        "{rotated}"
    );
    let kid = rotated
        .trim_start_matches("key/")
        .split_whitespace()
        .next()
        .expect("kid")
        .to_string();
    // The issuer's key set picks the new key up on its next check (1 s here).
    let mut keys = String::new();
    for _ in 0..100 {
        keys = ok(&s, &["keys", "list"]).await;
        if keys.contains(&kid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        keys.lines()
            .any(|l| l.starts_with(&kid) && l.contains("ES256")),
        "{keys}"
    );

    // delete.
    assert_eq!(
        ok(&s, &["delete", "pod", "web", "-n", "my-namespace"]).await,
        "pod \"web\" deleted\n"
    );
    let e = err(&s, &["get", "po", "web", "-n", "my-namespace"]).await;
    assert!(e.starts_with("NotFound: "), "{e}");
    // The pod-bound token died with the pod.
    let (r, out) = s.ctl(&["review", &token, "--audience", "vault"]).await;
    assert_eq!(r.expect("review"), 1, "{out}");
}

#[tokio::test]
async fn invalid_documents_apply_nothing() {
    let s = Stack::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-a\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namespace: ns-a\n  foo: bar\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns-a\nspec:\n  containers:\n  - name: c\n    image: i\n    ports:\n    - containerPort: 80\n",
    );
    let e = err(&s, &["apply", "-f", &bad]).await;
    assert!(
        e.contains("document 2 (ServiceAccount ns-a/x): unknown field \"foo\" at metadata.foo"),
        "{e}"
    );
    assert!(
        e.contains(
            "document 3 (Deployment d): unknown kind \"Deployment\" in apiVersion \"apps/v1\""
        ),
        "{e}"
    );
    assert!(
        e.contains("document 4 (Pod ns-a/p): unknown field \"ports\" at spec.containers[0].ports"),
        "{e}"
    );
    assert!(e.contains("nothing was applied"), "{e}");
    // Document 1 was valid, but nothing was sent.
    let e = err(&s, &["get", "ns", "ns-a"]).await;
    assert!(e.starts_with("NotFound"), "{e}");

    // A directory: every file validated together, applied in name order.
    let d = dir.path().join("manifests");
    std::fs::create_dir(&d).expect("mkdir");
    write(
        &d,
        "1-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-b\n",
    );
    write(
        &d,
        "2-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: hunter2\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n",
    );
    write(&d, "notes.txt", "not a manifest");
    let out = ok(&s, &["apply", "-f", &d.display().to_string(), "-n", "ns-b"]).await;
    assert_eq!(
        out,
        "namespace/ns-b created\nsecret/creds created\nnode/node-1 created\n"
    );
    let out = ok(&s, &["apply", "-f", &d.display().to_string(), "-n", "ns-b"]).await;
    assert_eq!(
        out,
        "namespace/ns-b unchanged\nsecret/creds unchanged\nnode/node-1 unchanged\n"
    );
    let secrets = ok(&s, &["get", "secret", "creds", "-n", "ns-b"]).await;
    assert!(
        secrets
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("Opaque") && l.contains(" 1 ")),
        "{secrets}"
    );
    let yaml = ok(&s, &["get", "secret", "creds", "-n", "ns-b", "-o", "yaml"]).await;
    let v: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
    assert_eq!(v["data"]["password"], "aHVudGVyMg==");
    let nodes = ok(&s, &["get", "nodes"]).await;
    assert!(nodes.lines().any(|l| l.starts_with("node-1 ")), "{nodes}");
    // -n that disagrees with the manifest's namespace.
    let other = write(
        dir.path(),
        "other.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namespace: ns-b\n",
    );
    let e = err(&s, &["apply", "-f", &other, "-n", "default"]).await;
    assert!(
        e.contains("does not match the namespace \"default\""),
        "{e}"
    );

    // Completion scripts.
    let bash = ok(&s, &["completion", "bash"]).await;
    assert!(
        bash.contains("badgectl") && bash.contains("apply"),
        "bash completion"
    );
}

#[tokio::test]
async fn connection_from_the_badge_up_env_file() {
    let s = Stack::start().await;
    // `badge up` writes paths relative to the directory it ran in.
    let up = tempfile::tempdir().expect("tempdir");
    let data = up.path().join("badge-data");
    let pki = data.join("pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    for (from, to) in [
        (&s.identity.pki.ca, "ca.pem"),
        (&s.identity.pki.admin.cert, "admin.pem"),
        (&s.identity.pki.admin.key, "admin-key.pem"),
    ] {
        std::fs::copy(from, pki.join(to)).expect("copy");
    }
    let env = data.join("badge.env");
    std::fs::write(
        &env,
        format!(
            "BADGE_IDENTITY_ENDPOINT={}\nBADGE_ISSUER_ENDPOINT=https://{}\nBADGE_REVIEW_ENDPOINT=https://{}\nBADGE_CA=badge-data/pki/ca.pem\nBADGE_CLIENT_CERT=badge-data/pki/admin.pem\nBADGE_CLIENT_KEY=badge-data/pki/admin-key.pem\n",
            s.identity.url(),
            s.issuer.grpc,
            s.review.grpc
        ),
    )
    .expect("write env");
    let conn = vec!["--config".to_string(), env.display().to_string()];
    let (r, out) = run_ctl(&["get", "ns", "default"], &conn).await;
    assert_eq!(r.expect("get"), 0);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("default ")),
        "{out}"
    );
    let (r, out) = run_ctl(&["keys", "list"], &conn).await;
    assert_eq!(r.expect("keys"), 0, "{out}");

    // A kubeconfig-like file, paths relative to it.
    let cfg = up.path().join("config");
    std::fs::write(
        &cfg,
        format!(
            "current-context: up\ncontexts:\n- name: up\n  identity: {}\n  certificate-authority: badge-data/pki/ca.pem\n  client-certificate: badge-data/pki/admin.pem\n  client-key: badge-data/pki/admin-key.pem\n  namespace: my-ns\n",
            s.identity.url()
        ),
    )
    .expect("write config");
    let conn = vec!["--config".to_string(), cfg.display().to_string()];
    // The context's namespace is the default for namespaced commands.
    let ns = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(ns.path(), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: my-ns\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: from-context\n").expect("write");
    let (r, out) = run_ctl(&["apply", "-f", &ns.path().display().to_string()], &conn).await;
    assert_eq!(r.expect("apply"), 0, "{out}");
    let (r, out) = run_ctl(&["get", "sa"], &conn).await;
    assert_eq!(r.expect("get"), 0, "{out}");
    assert!(out.lines().any(|l| l.starts_with("from-context ")), "{out}");
    // No issuer endpoint in that context: a clear error.
    let (r, _) = run_ctl(&["keys", "list"], &conn).await;
    let e = format!("{:#}", r.expect_err("no issuer endpoint"));
    assert!(e.contains("no issuer endpoint configured"), "{e}");
}

/// The PEM labels of a file, in order.
fn pem_labels(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .map(str::to_string)
        .collect()
}

/// A credential bundle written by `create certificate`, checked by openssl (a
/// third-party verifier): mode 0600; the PKCS#8 key first, then leaf and
/// intermediate (no root); the chain verifies against `get trust-bundle`'s roots;
/// the key is the leaf's; the leaf's only URI SAN is `spiffe_id`. The leaf's
/// lifetime in seconds.
fn check_bundle(dir: &Path, file: &str, spiffe_id: &str) -> i64 {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(file);
    let mode = std::fs::metadata(&path)
        .expect("bundle")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{file}: mode {mode:o}");
    let text = std::fs::read_to_string(&path).expect("read bundle");
    assert_eq!(
        pem_labels(&text),
        ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"],
        "{file}: key, leaf, intermediate"
    );
    let verified = openssl(
        &["verify", "-CAfile", "bundle.pem", "-untrusted", file, file],
        dir,
    );
    assert_eq!(verified.trim(), format!("{file}: OK"));
    let from_key = openssl(&["pkey", "-in", file, "-pubout"], dir);
    let from_leaf = openssl(&["x509", "-in", file, "-noout", "-pubkey"], dir);
    assert!(from_key.contains("BEGIN PUBLIC KEY"), "{from_key}");
    assert_eq!(from_key, from_leaf, "{file}: the key is the leaf's");
    let san = openssl(
        &["x509", "-in", file, "-noout", "-ext", "subjectAltName"],
        dir,
    );
    let names: Vec<&str> = san
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .collect();
    assert_eq!(names, [format!("URI:{spiffe_id}")], "{san}");
    // Lifetime, read by x509-parser from the leaf (the file's second block).
    let leaf_pem = &text[text.find("-----BEGIN CERTIFICATE-----").expect("leaf")..];
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes()).expect("leaf pem");
    let leaf = pem.parse_x509().expect("leaf");
    leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp()
}

/// `get trust-bundle` and `create certificate` end to end, the certificate checked by
/// openssl against the bundle; every key type; an existing token (--token-file,
/// --token); and the errors a user hits.
#[tokio::test]
async fn create_certificate_and_get_trust_bundle() {
    let s = Stack::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let objects = write(
        dir,
        "shop.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n  namespace: shop\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: db\n  namespace: shop\n",
    );
    ok(&s, &["apply", "-f", &objects]).await;
    // The trust domain is the issuer URL's host (no `[ca] trust_domain` here).
    let web_id = "spiffe://127.0.0.1/ns/shop/sa/web";

    // The trust bundle: PEM roots (what the HTTPS endpoint serves too), and the SPIFFE
    // bundle document.
    let pem = ok(&s, &["get", "trust-bundle"]).await;
    assert_eq!(pem_labels(&pem), ["CERTIFICATE"], "one CA: {pem}");
    let (status, _, served) = badge_tests::https_get(
        s.issuer.oidc,
        "/.well-known/spiffe-bundle.pem",
        &s.identity.pki.ca,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(pem.trim(), String::from_utf8_lossy(&served).trim());
    std::fs::write(dir.join("bundle.pem"), &pem).expect("write bundle");
    let json = ok(&s, &["get", "trust-bundle", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let keys = v["keys"].as_array().expect("keys");
    assert!(
        keys.iter()
            .any(|k| k["use"] == "x509-svid" && k["x5c"].as_array().is_some_and(|c| c.len() == 1)),
        "{json}"
    );
    assert!(keys.iter().any(|k| k["use"] == "jwt-svid"), "{json}");
    assert!(v["spiffe_refresh_hint"].as_i64().is_some(), "{json}");
    let e = err(&s, &["get", "trust-bundle", "-o", "yaml"]).await;
    assert!(e.contains("pem (default) or json"), "{e}");
    let e = err(&s, &["get", "sa", "-o", "pem"]).await;
    assert!(e.contains("-o pem is for trust-bundle only"), "{e}");

    // create certificate: a token requested for the account (admin certificate), a
    // P-256 key, the requested lifetime.
    let out = ok(
        &s,
        &[
            "create",
            "certificate",
            "web",
            "-n",
            "shop",
            "-o",
            &dir.join("web.pem").display().to_string(),
            "--duration",
            "2h",
        ],
    )
    .await;
    assert_eq!(out, "", "nothing on stdout: the key only goes to the file");
    assert_eq!(check_bundle(dir, "web.pem", web_id), 7200);
    let text = openssl(&["pkey", "-in", "web.pem", "-noout", "-text"], dir);
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );
    // Again: the file is replaced in place (a renewal), still 0600.
    ok(
        &s,
        &[
            "create",
            "certificate",
            "web",
            "-n",
            "shop",
            "-o",
            &dir.join("web.pem").display().to_string(),
        ],
    )
    .await;
    assert_eq!(
        check_bundle(dir, "web.pem", web_id),
        86_400,
        "the server's default"
    );

    // Every other key type the CA takes (RSA4096 is RSA3072's code, only slower).
    for (key_type, file, marker) in [
        ("ECDSAP384", "p384.pem", "secp384r1"),
        ("ECDSAP521", "p521.pem", "secp521r1"),
        ("ED25519", "ed.pem", "ED25519"),
        ("RSA3072", "rsa.pem", "3072 bit"),
    ] {
        let path = dir.join(file).display().to_string();
        ok(
            &s,
            &[
                "create",
                "certificate",
                "web",
                "-n",
                "shop",
                "--key-type",
                key_type,
                "-o",
                &path,
            ],
        )
        .await;
        check_bundle(dir, file, web_id);
        let text = openssl(&["pkey", "-in", file, "-noout", "-text"], dir);
        assert!(text.contains(marker), "{key_type}: {text}");
    }

    // An existing token (audience istio-ca), as a workload has it: --token-file and
    // --token, with no client certificate at all. Such a token may not read the trust
    // bundle, so the CSR names no identity and the CA issues for the token's.
    let token = ok(
        &s,
        &[
            "create",
            "token",
            "web",
            "-n",
            "shop",
            "--audience",
            "istio-ca",
        ],
    )
    .await;
    let token = token.trim().to_string();
    let token_file = write(dir, "web.token", &format!("{token}\n"));
    let (r, out) = run_ctl(
        &[
            "create",
            "certificate",
            "web",
            "-n",
            "shop",
            "--token-file",
            &token_file,
            "-o",
            &dir.join("from-file.pem").display().to_string(),
        ],
        &s.endpoints(),
    )
    .await;
    assert_eq!(r.expect("with --token-file"), 0, "{out}");
    check_bundle(dir, "from-file.pem", web_id);
    let mut as_token = s.endpoints();
    as_token.extend(["--token".to_string(), token.clone()]);
    // (Why the fallback: GetTrustBundle reviews with the API audiences.)
    let (r, _) = run_ctl(&["get", "trust-bundle"], &as_token).await;
    let e = format!(
        "{:#}",
        r.expect_err("an istio-ca token is not an API credential")
    );
    assert!(e.starts_with("Unauthorized: "), "{e}");
    let (r, out) = run_ctl(
        &[
            "create",
            "certificate",
            "web",
            "-n",
            "shop",
            "--trust-domain",
            "127.0.0.1",
            "-o",
            &dir.join("from-flag.pem").display().to_string(),
        ],
        &as_token,
    )
    .await;
    assert_eq!(r.expect("with --token"), 0, "{out}");
    check_bundle(dir, "from-flag.pem", web_id);
    // web's token, asking for db's certificate: the CA refuses, naming both.
    let (r, _) = run_ctl(
        &[
            "create",
            "certificate",
            "db",
            "-n",
            "shop",
            "--trust-domain",
            "127.0.0.1",
            "-o",
            &dir.join("db.pem").display().to_string(),
        ],
        &as_token,
    )
    .await;
    let e = format!("{:#}", r.expect_err("another account's identity"));
    assert!(
        e.starts_with("Forbidden: ")
            && e.contains("spiffe://127.0.0.1/ns/shop/sa/db")
            && e.contains(web_id),
        "{e}"
    );
    assert!(!e.contains(&token), "the token never appears in errors");
    // Without the trust domain, the CA issues web's certificate: badgectl refuses it.
    let (r, _) = run_ctl(
        &[
            "create",
            "certificate",
            "db",
            "-n",
            "shop",
            "-o",
            &dir.join("db.pem").display().to_string(),
        ],
        &as_token,
    )
    .await;
    let e = format!("{:#}", r.expect_err("not db's certificate"));
    assert!(
        e.contains(&format!("issued a certificate for {web_id}")),
        "{e}"
    );
    assert!(!dir.join("db.pem").exists(), "nothing written");
    let (r, _) = run_ctl(
        &[
            "create",
            "certificate",
            "web",
            "--token-file",
            &token_file,
            "-o",
            "x.pem",
        ],
        &as_token,
    )
    .await;
    let e = format!("{:#}", r.expect_err("both"));
    assert!(
        e.contains("either --token (BADGE_TOKEN) or --token-file"),
        "{e}"
    );

    // Errors. An unknown account: named, nothing written.
    let missing = dir.join("nope.pem").display().to_string();
    let e = err(
        &s,
        &[
            "create",
            "certificate",
            "nope",
            "-n",
            "shop",
            "-o",
            &missing,
        ],
    )
    .await;
    assert!(
        e.contains("service account shop/nope") && e.contains("NotFound") && e.contains("\"nope\""),
        "{e}"
    );
    assert!(!dir.join("nope.pem").exists());
    // Below Istio's minimum lifetime: the server's INVALID_ARGUMENT text.
    let short = dir.join("short.pem").display().to_string();
    let e = err(
        &s,
        &[
            "create",
            "certificate",
            "web",
            "-n",
            "shop",
            "--duration",
            "10m",
            "-o",
            &short,
        ],
    )
    .await;
    assert!(
        e.starts_with("Invalid: ")
            && e.contains("requested TTL 10m0s is less than the min allowed TTL 1h0m0s"),
        "{e}"
    );
    assert!(!dir.join("short.pem").exists());
    // No -o: refused before anything is requested.
    let e = err(&s, &["create", "certificate", "web", "-n", "shop"]).await;
    assert!(e.contains("pass -o FILE"), "{e}");
    // A symbolic link: refused, its target untouched.
    std::fs::write(dir.join("target"), "keep").expect("write");
    std::os::unix::fs::symlink(dir.join("target"), dir.join("link.pem")).expect("symlink");
    let link = dir.join("link.pem").display().to_string();
    let e = err(
        &s,
        &["create", "certificate", "web", "-n", "shop", "-o", &link],
    )
    .await;
    assert!(e.contains("is a symbolic link"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.join("target")).expect("read"),
        "keep"
    );
    // A key type the CA does not take: clap names the value and the choices.
    let e = badgectl::Cli::try_parse_from([
        "badgectl",
        "create",
        "certificate",
        "web",
        "--key-type",
        "DSA1024",
        "-o",
        "x.pem",
    ])
    .err()
    .expect("refused")
    .to_string();
    assert!(
        e.contains("invalid value 'DSA1024' for '--key-type")
            && e.contains("ECDSAP256")
            && e.contains("ED25519"),
        "{e}"
    );
}

/// A pod with Kubernetes' `podCertificate` projected sources: applied, unchanged on
/// re-apply, rendered back by `get -o yaml`; identity's refusal names the field.
#[tokio::test]
async fn apply_and_get_a_pod_certificate_source() {
    let s = Stack::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = "apiVersion: v1
kind: Namespace
metadata: {name: certs}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: certs}
";
    let pod = "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: certs}
spec:
  serviceAccountName: web
  containers: [{name: app, image: example/web:1}]
  volumes:
  - name: tls
    projected:
      sources:
      - podCertificate:
          signerName: badge.dev/spiffe
          keyType: ECDSAP256
          maxExpirationSeconds: 86400
          credentialBundlePath: credentialbundle.pem
          userAnnotations: {example.com/team: web}
      - podCertificate:
          signerName: badge.dev/spiffe
          keyType: RSA3072
          keyPath: tls.key
          certificateChainPath: tls.crt
";
    let o = write(dir.path(), "objects.yaml", objects);
    ok(&s, &["apply", "-f", &o]).await;
    let p = write(dir.path(), "pod.yaml", pod);
    assert_eq!(ok(&s, &["apply", "-f", &p]).await, "pod/web created\n");
    assert_eq!(ok(&s, &["apply", "-f", &p]).await, "pod/web unchanged\n");
    let yaml = ok(&s, &["get", "pod", "web", "-n", "certs", "-o", "yaml"]).await;
    for want in [
        "podCertificate:",
        "signerName: badge.dev/spiffe",
        "keyType: ECDSAP256",
        "maxExpirationSeconds: 86400",
        "credentialBundlePath: credentialbundle.pem",
        "example.com/team: web",
        "keyType: RSA3072",
        "keyPath: tls.key",
        "certificateChainPath: tls.crt",
    ] {
        assert!(yaml.contains(want), "{want:?} in {yaml}");
    }

    let bad = write(
        dir.path(),
        "bad.yaml",
        &pod.replace("name: web, namespace", "name: web2, namespace")
            .replace("keyType: RSA3072", "keyType: RSA1024"),
    );
    let e = err(&s, &["apply", "-f", &bad]).await;
    assert!(
        e.contains("spec.volumes[0].projected.sources[1].pod_certificate.key_type")
            && e.contains("\"RSA1024\""),
        "{e}"
    );
}
