//! What a newcomer does from a clean clone, with the real binaries as processes:
//! the one command (`badge up`, embedded SQLite, nothing installed), then
//! `badgectl apply` of the issue's ServiceAccount manifest and a Pod using it, a
//! pod-bound token reviewed as authenticated, `badge-agent` keeping the pod's
//! projected token in a directory (that token reviews too), the pod deleted, the
//! first token rejected and the agent removing its files and exiting.
//!
//! The binaries come from the same target directory as this test (built on first
//! use when a cold `cargo nextest run --workspace` has not built them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join(name);
    if !path.is_file() {
        // `cargo nextest run --workspace` builds test targets, not other packages'
        // binaries: on a cold target directory, build this one (same profile and
        // target directory; cargo's lock serialises concurrent builds).
        let package = match name {
            "badge" => "badge-cli",
            other => other,
        };
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "-q", "-p", package, "--bin", name, "--target-dir"]);
        build.arg(dir.parent().expect("target dir"));
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {name} failed"
        );
    }
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A command with none of the caller's Badge settings leaking in.
fn clean<'a>(cmd: &'a mut Command, cwd: &Path) -> &'a mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("BADGE_") || k.starts_with("BADGECTL_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn badgectl(cwd: &Path, args: &[&str]) -> Output {
    clean(&mut Command::new(bin("badgectl")), cwd)
        .arg("--config")
        .arg("badge-data/badge.env")
        .args(args)
        .output()
        .expect("run badgectl")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: my-namespace
---
apiVersion: v1
kind: ServiceAccount
metadata:
  annotations:
    kubernetes.io/enforce-mountable-secrets: "true"
  name: my-serviceaccount
  namespace: my-namespace
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: my-namespace
spec:
  serviceAccountName: my-serviceaccount
  containers:
    - name: app
      image: example.com/app:1
      volumeMounts:
        - name: vault-token
          mountPath: /var/run/secrets/tokens
  volumes:
    - name: vault-token
      projected:
        sources:
          - serviceAccountToken:
              audience: vault
              expirationSeconds: 3600
              path: vault-token
"#;

#[test]
fn a_newcomer_runs_badge_applies_yaml_and_uses_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let started = Instant::now();
    // The one command (README: `cargo run --release --bin badge -- up`), on ports
    // of its own so it can run beside other tests.
    let up = clean(&mut Command::new(bin("badge")), cwd)
        .args([
            "up",
            "--identity-listen",
            &addr(0),
            "--issuer-listen",
            &addr(1),
        ])
        .args(["--oidc-listen", &addr(2), "--review-listen", &addr(3)])
        .args(["--webhook-listen", &addr(4)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start badge up");
    let mut up = Killed(up);

    // Ready when badgectl can list namespaces through the env file it wrote.
    let mut ready = None;
    for _ in 0..600 {
        assert!(
            up.0.try_wait().expect("poll").is_none(),
            "badge up exited during start-up"
        );
        if cwd.join("badge-data/badge.env").is_file() {
            let o = badgectl(cwd, &["get", "namespaces"]);
            if o.status.success() {
                ready = Some(o);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = ready.expect("badge up did not become ready in 60 s");
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("default"),
        "{}",
        text(&ready)
    );
    assert!(
        cwd.join("badge-data/badge.db").is_file(),
        "embedded SQLite store"
    );

    // The manifest, verbatim ServiceAccount included, plus a Pod using it.
    std::fs::write(cwd.join("app.yaml"), MANIFEST).expect("manifest");
    let o = badgectl(cwd, &["apply", "-f", "app.yaml"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("serviceaccount/my-serviceaccount created"),
        "{out}"
    );
    assert!(out.contains("pod/web created"), "{out}");

    // A token bound to the pod, reviewed: authenticated.
    let o = badgectl(
        cwd,
        &[
            "create",
            "token",
            "my-serviceaccount",
            "-n",
            "my-namespace",
            "--audience",
            "vault",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "web",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT");
    let o = badgectl(cwd, &["review", &token, "--audience", "vault"]);
    assert!(o.status.success(), "{}", text(&o));
    let first_review = started.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("system:serviceaccount:my-namespace:my-serviceaccount"),
        "{out}"
    );
    println!("from `badge up` to the first successful review: {first_review:?}");

    // The agent keeps the pod's projected token in a directory.
    let tokens = cwd.join("tokens");
    let agent = clean(&mut Command::new(bin("badge-agent")), cwd)
        .args(["--config", "badge-data/badge.env"])
        .args(["--namespace", "my-namespace", "--pod", "web", "--dir"])
        .arg(&tokens)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start badge-agent");
    let mut agent = Killed(agent);
    let written = tokens.join("vault-token");
    for _ in 0..300 {
        if written.is_file() && tokens.join("ca.crt").is_file() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_token = std::fs::read_to_string(&written).expect("the agent wrote the token");
    assert_eq!(
        std::fs::read_to_string(tokens.join("namespace")).expect("namespace file"),
        "my-namespace"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&written)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token file mode");
    }
    let o = badgectl(cwd, &["review", agent_token.trim(), "--audience", "vault"]);
    assert!(o.status.success(), "agent's token: {}", text(&o));

    // Delete the pod: its tokens stop working and the agent cleans up and exits.
    let o = badgectl(cwd, &["delete", "pod", "web", "-n", "my-namespace"]);
    assert!(o.status.success(), "{}", text(&o));
    let mut rejected = None;
    for _ in 0..100 {
        let o = badgectl(cwd, &["review", &token, "--audience", "vault"]);
        if !o.status.success() {
            rejected = Some(o);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rejected = rejected.expect("the pod-bound token is rejected after DeletePod");
    assert!(
        text(&rejected).contains("invalidated") || text(&rejected).contains("not found"),
        "{}",
        text(&rejected)
    );
    let mut exited = None;
    for _ in 0..300 {
        if let Some(status) = agent.0.try_wait().expect("poll agent") {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = exited.expect("the agent exits once its pod is gone");
    assert!(status.success(), "agent exit {status:?}");
    assert!(!written.exists(), "the agent removed the token");
    assert!(!tokens.join("ca.crt").exists(), "the agent removed ca.crt");

    // Ctrl-C / SIGTERM stops `badge up` promptly.
    let _ = Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status();
    let mut stopped = false;
    for _ in 0..100 {
        if up.0.try_wait().expect("poll").is_some() {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stopped, "badge up did not stop within 10 s of SIGTERM");
}
