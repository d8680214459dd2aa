//! Badge on a real highly-available Postgres (issue 18): a three-node Patroni
//! cluster on loopback (`scripts/ha-postgres.sh`), the three services on its
//! multi-host URL, steady mixed load, then the primary's node crashes (`kill -9`).
//!
//! Asserted: no acknowledged write is lost; the watch sees every acknowledged
//! change exactly once, in order (resuming from its last resource_version after an
//! UNAVAILABLE); warm reviews never fail; failed requests answer UNAVAILABLE (never
//! INTERNAL, never past their deadline); writes and issuance recover within 15 s of
//! the kill; key rotation and the default-ServiceAccount controller work after.
//!
//! Needs patroni, etcd and Postgres (`.ci/run` installs them); never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use badge_proto::review::{
    CreateTokenReviewRequest, TokenReviewSpec,
    token_review_service_client::TokenReviewServiceClient,
};
use badge_proto::token::{
    self as tpb, CreateTokenRequest, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use badge_tests::{IdentityServer, IssuerOptions, IssuerServer, ReviewServer, meta, pb};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::service_account;

const CLUSTER_URL: &str = "postgres://postgres@127.0.0.1:5441,127.0.0.1:5442,127.0.0.1:5443/postgres?target_session_attrs=read-write";
/// Every request's deadline: an answer must come before it.
const DEADLINE: Duration = Duration::from_secs(3);
/// Writes and issuance must work again this soon after the kill.
const RECOVERY: Duration = Duration::from_secs(15);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/ha-postgres.sh")
}

fn ha(arg: &str) -> String {
    let out = Command::new(script())
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("running scripts/ha-postgres.sh {arg}: {e}"));
    assert!(
        out.status.success(),
        "\n\n*** scripts/ha-postgres.sh {arg} failed (this test needs patroni, etcd-server and \
         postgresql: .ci/run installs them; it never skips):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster, torn down (stopped by PID, data removed) however the test ends.
/// Holds an exclusive lock file: the cluster's ports are fixed, so the tests of
/// this file (separate processes under nextest) take turns.
struct Cluster {
    _lock: std::fs::File,
}

impl Cluster {
    fn up() -> Cluster {
        let lock = std::fs::File::create(std::env::temp_dir().join("badge-ha-test.lock"))
            .expect("lock file");
        lock.lock().expect("lock");
        // A cluster left by an aborted run would make `up` fail.
        let _ = Command::new(script()).arg("down").output();
        ha("up");
        Cluster { _lock: lock }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("thaw").output();
        let _ = Command::new(script()).arg("down").output();
    }
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(DEADLINE);
    r
}

/// One identity write as the load sends it, and what the watch must show for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Change {
    kind: i32,
    name: String,
}

#[derive(Default)]
struct Outcomes {
    /// Acknowledged watched changes, in the order they were acknowledged.
    acked: Vec<Change>,
    /// Failed watched writes: their outcome is unknown (they may have committed).
    unknown: Vec<Change>,
    /// Acknowledged Node creates.
    nodes: Vec<String>,
    /// (when sent, how long it took, code) of every failed call.
    failures: Vec<(Instant, Duration, Code, String)>,
    /// When each successful write was sent.
    write_ok: Vec<Instant>,
    issue_ok: Vec<Instant>,
}

/// Writes `<prefix>sa-<k>` ServiceAccounts and `<prefix>node-<k>` Nodes.
async fn write_load(
    id: Channel,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Outcomes>>,
) {
    let mut sas = pb::service_account_service_client::ServiceAccountServiceClient::new(id.clone());
    let mut nodes = pb::node_service_client::NodeServiceClient::new(id);
    let added = pb::EventType::Added as i32;
    let modified = pb::EventType::Modified as i32;
    let deleted = pb::EventType::Deleted as i32;
    let mut k = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let name = format!("{prefix}sa-{k}");
        // create, update, (every other round) delete one ServiceAccount; one Node.
        let sent = Instant::now();
        let r = sas
            .create_service_account(req(pb::CreateServiceAccountRequest {
                service_account: Some(service_account("ha", &name)),
            }))
            .await;
        let created = record(&out, sent, added, &name, r.map(|r| r.into_inner()));
        if let Some(mut o) = created {
            o.automount_service_account_token = Some(false);
            let sent = Instant::now();
            let r = sas
                .update_service_account(req(pb::UpdateServiceAccountRequest {
                    service_account: Some(o),
                }))
                .await;
            record(&out, sent, modified, &name, r.map(|_| ()));
            if k.is_multiple_of(2) {
                let sent = Instant::now();
                let r = sas
                    .delete_service_account(req(pb::DeleteServiceAccountRequest {
                        namespace: "ha".into(),
                        name: name.clone(),
                        ..Default::default()
                    }))
                    .await;
                record(&out, sent, deleted, &name, r.map(|_| ()));
            }
        }
        let node = format!("{prefix}node-{k}");
        let sent = Instant::now();
        let r = nodes
            .create_node(req(pb::CreateNodeRequest {
                node: Some(pb::Node {
                    metadata: meta("", &node),
                }),
            }))
            .await;
        match r {
            Ok(_) => {
                let mut o = out.lock().expect("lock");
                o.nodes.push(node);
                o.write_ok.push(sent);
            }
            Err(s) => fail(&out, sent, &s),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fail(out: &Mutex<Outcomes>, sent: Instant, s: &tonic::Status) {
    out.lock().expect("lock").failures.push((
        sent,
        sent.elapsed(),
        s.code(),
        s.message().to_owned(),
    ));
}

fn record<T>(
    out: &Mutex<Outcomes>,
    sent: Instant,
    kind: i32,
    name: &str,
    r: Result<T, tonic::Status>,
) -> Option<T> {
    let change = Change {
        kind,
        name: name.to_owned(),
    };
    match r {
        Ok(v) => {
            let mut o = out.lock().expect("lock");
            o.acked.push(change);
            o.write_ok.push(sent);
            Some(v)
        }
        Err(s) => {
            fail(out, sent, &s);
            out.lock().expect("lock").unknown.push(change);
            None
        }
    }
}

async fn issue_load(
    tokens: TokenServiceClient<Channel>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Outcomes>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let r = tokens
            .clone()
            .create_token(req(CreateTokenRequest {
                namespace: "ha".into(),
                name: "web".into(),
                audiences: vec!["a".into()],
                ..Default::default()
            }))
            .await;
        match r {
            Ok(_) => out.lock().expect("lock").issue_ok.push(sent),
            Err(s) => fail(&out, sent, &s),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Warm reviews of one token; returns (reviews, failures).
async fn review_load(
    reviews: TokenReviewServiceClient<Channel>,
    token: String,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<String>) {
    let mut n = 0;
    let mut failed = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let r = reviews
            .clone()
            .create_token_review(req(CreateTokenReviewRequest {
                spec: Some(TokenReviewSpec {
                    token: token.clone(),
                    audiences: vec!["a".into()],
                }),
            }))
            .await;
        match r {
            Ok(r) => {
                let st = r.into_inner().status.unwrap_or_default();
                if !st.authenticated {
                    failed.push(format!("not authenticated: {}", st.error));
                }
            }
            Err(s) => failed.push(format!("{:?}: {}", s.code(), s.message())),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (n, failed)
}

/// Follows ServiceAccounts in "ha" until told to stop, resuming after its last
/// resource_version when the stream ends; returns the changes and the codes the
/// stream ended with.
async fn watcher(
    id: Channel,
    from: String,
    stop: Arc<AtomicBool>,
    seen_rv: Arc<AtomicU64>,
) -> (Vec<(Change, i64)>, Vec<Code>) {
    let mut client = pb::watch_service_client::WatchServiceClient::new(id);
    let mut events = Vec::new();
    let mut ends = Vec::new();
    let mut last = from;
    while !stop.load(Ordering::Relaxed) {
        let stream = client
            .watch(pb::WatchRequest {
                kinds: vec![pb::Kind::ServiceAccount as i32],
                namespace: "ha".into(),
                resource_version: last.clone(),
                ..Default::default()
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) => {
                ends.push(s.code());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            match next {
                Err(_) if stop.load(Ordering::Relaxed) => return (events, ends),
                Err(_) => continue,
                Ok(None) => {
                    ends.push(Code::Ok);
                    break;
                }
                Ok(Some(Err(s))) => {
                    ends.push(s.code());
                    break;
                }
                Ok(Some(Ok(e))) => {
                    last = e.resource_version.clone();
                    let rv: i64 = e.resource_version.parse().unwrap_or(0);
                    seen_rv.store(u64::try_from(rv).unwrap_or(0), Ordering::Relaxed);
                    if e.r#type == pb::EventType::Bookmark as i32 {
                        continue;
                    }
                    let name = match &e.object {
                        Some(pb::watch_event::Object::ServiceAccount(o)) => o
                            .metadata
                            .as_ref()
                            .map(|m| m.name.clone())
                            .unwrap_or_default(),
                        _ => String::new(),
                    };
                    events.push((
                        Change {
                            kind: e.r#type,
                            name,
                        },
                        rv,
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (events, ends)
}

/// First success sent after `t`, as an offset from `t`.
fn first_after(oks: &[Instant], t: Instant) -> Option<Duration> {
    oks.iter().filter(|s| **s >= t).map(|s| *s - t).min()
}

/// The longest time without a success from `t` on: the largest spacing between
/// consecutive successful calls (by when they were sent), counting from the last
/// success before `t`.
fn longest_gap(oks: &[Instant], t: Instant) -> Duration {
    let mut oks = oks.to_vec();
    oks.sort();
    let from = oks.iter().rposition(|s| *s < t).unwrap_or(0);
    oks[from..]
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_crash_under_load_loses_nothing_and_recovers() {
    scenario(Outage::Crash).await;
}

/// The classic way a client hangs forever: the primary stops answering (SIGSTOP)
/// with its connections open. Badge must time out and fail over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_primary_under_load_loses_nothing_and_recovers() {
    scenario(Outage::Freeze).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// `kill -9` of the primary's Patroni and postmaster.
    Crash,
    /// SIGSTOP of the primary's postmaster and backends.
    Freeze,
}

async fn scenario(outage: Outage) {
    let _cluster = Cluster::up();
    badge_store::testing::use_test_server(CLUSTER_URL);
    let identity = IdentityServer::start().await;
    let issuer = IssuerServer::start(
        &identity,
        IssuerOptions {
            propagation_delay_seconds: 0,
            ..IssuerOptions::default()
        },
    )
    .await;
    let review = ReviewServer::start(&identity, &issuer).await;
    let id = identity.admin().await;
    let ich = issuer.channel(&identity, &identity.pki.admin);
    let tokens = TokenServiceClient::new(ich.clone());
    let mut keys = KeyServiceClient::new(ich);
    let reviews = TokenReviewServiceClient::new(review.channel(&identity, &identity.pki.admin));

    pb::namespace_service_client::NamespaceServiceClient::new(id.clone())
        .create_namespace(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                metadata: meta("", "ha"),
                status: None,
            }),
        })
        .await
        .expect("namespace");
    pb::service_account_service_client::ServiceAccountServiceClient::new(id.clone())
        .create_service_account(pb::CreateServiceAccountRequest {
            service_account: Some(service_account("ha", "web")),
        })
        .await
        .expect("sa");
    let token = tokens
        .clone()
        .create_token(CreateTokenRequest {
            namespace: "ha".into(),
            name: "web".into(),
            audiences: vec!["a".into()],
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    // Warm: the reviewer has seen this token's account and key.
    let warm = reviews
        .clone()
        .create_token_review(CreateTokenReviewRequest {
            spec: Some(TokenReviewSpec {
                token: token.clone(),
                audiences: vec!["a".into()],
            }),
        })
        .await
        .expect("review")
        .into_inner();
    assert!(warm.status.expect("status").authenticated);
    // The watch starts after everything so far: only the load's changes follow.
    let start_rv = pb::service_account_service_client::ServiceAccountServiceClient::new(id.clone())
        .list_service_accounts(pb::ListServiceAccountsRequest {
            namespace: "ha".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .resource_version;

    let stop = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let seen_rv = Arc::new(AtomicU64::new(0));
    let w = tokio::spawn(watcher(
        id.clone(),
        start_rv,
        stop_watch.clone(),
        seen_rv.clone(),
    ));
    let writes = tokio::spawn(write_load(id.clone(), "", stop.clone(), out.clone()));
    let issues = tokio::spawn(issue_load(tokens.clone(), stop.clone(), out.clone()));
    let revs = tokio::spawn(review_load(reviews.clone(), token.clone(), stop.clone()));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = ha("primary");
    let killed = Instant::now();
    ha(match outage {
        Outage::Crash => "failover",
        Outage::Freeze => "freeze",
    });
    eprintln!("{outage:?} of the primary (port {})", old.trim());
    let promoted = Instant::now();
    let new = loop {
        let p = Command::new(script())
            .arg("primary")
            .output()
            .expect("primary");
        let p = String::from_utf8_lossy(&p.stdout).trim().to_owned();
        if !p.is_empty() && p != old.trim() || promoted.elapsed() > Duration::from_secs(30) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let promotion = killed.elapsed();
    eprintln!("Patroni promoted port {new} {promotion:?} after the kill");
    // Load until writes and issuance have worked again for a while (bounded).
    let give_up = killed + Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (w_ok, i_ok) = {
            let o = out.lock().expect("lock");
            (
                first_after(&o.write_ok, killed + Duration::from_secs(1)),
                first_after(&o.issue_ok, killed + Duration::from_secs(1)),
            )
        };
        if (w_ok.is_some() && i_ok.is_some()) || Instant::now() > give_up {
            tokio::time::sleep(Duration::from_secs(3)).await;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writes.await.expect("writes");
    issues.await.expect("issues");
    let (reviewed, review_failures) = revs.await.expect("reviews");

    // A last write marks the end of the feed the watch must reach.
    let end = pb::service_account_service_client::ServiceAccountServiceClient::new(id.clone())
        .create_service_account(req(pb::CreateServiceAccountRequest {
            service_account: Some(service_account("ha", "the-end")),
        }))
        .await
        .expect("a write after the failover")
        .into_inner();
    let end_rv: u64 = end
        .metadata
        .expect("meta")
        .resource_version
        .parse()
        .expect("rv");
    let waited = Instant::now();
    while seen_rv.load(Ordering::Relaxed) < end_rv && waited.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_watch.store(true, Ordering::Relaxed);
    let (events, ends) = w.await.expect("watch");

    let o = std::mem::take(&mut *out.lock().expect("lock"));
    // Write gap: the longest time without a successful write from the kill on
    // (writes keep working for a moment after the kill, on connections that
    // have not noticed yet).
    let write_gap = longest_gap(&o.write_ok, killed);
    let issue_gap = longest_gap(&o.issue_ok, killed);
    let last_ok_before = o.write_ok.iter().filter(|s| **s < killed).max().copied();
    assert!(
        first_after(&o.write_ok, killed + write_gap).is_some(),
        "writes recovered"
    );
    let failures_by_code: BTreeMap<String, usize> =
        o.failures.iter().fold(BTreeMap::new(), |mut m, f| {
            *m.entry(format!("{:?}", f.2)).or_default() += 1;
            m
        });
    let slowest = o.failures.iter().map(|f| f.1).max().unwrap_or_default();
    eprintln!(
        "{outage:?}: write gap {write_gap:?} (last ok write sent {:?} before the kill), issuance \
         gap {issue_gap:?}, {} acknowledged watched writes ({} failed, outcome unknown), \
         {} nodes, failures {failures_by_code:?} (slowest answer {slowest:?}), {reviewed} warm \
         reviews / {} failed, watch events {} / stream ends {ends:?}",
        last_ok_before.map(|t| killed - t),
        o.acked.len(),
        o.unknown.len(),
        o.nodes.len(),
        review_failures.len(),
        events.len(),
    );

    // Failed calls answer UNAVAILABLE, before their deadline. A call in flight on
    // a connection to a frozen server can only end at its deadline (the client's
    // DEADLINE_EXCEEDED / CANCELLED), never later — and so can one sent before the
    // store noticed the freeze: its monitor probes every 500 ms with a 1 s bound,
    // so that is up to 1.5 s after the freeze (plus scheduling on a busy machine).
    for (sent, took, code, msg) in &o.failures {
        if outage == Outage::Freeze
            && matches!(code, Code::DeadlineExceeded | Code::Cancelled)
            && *sent < killed + Duration::from_secs(2)
        {
            assert!(
                *took < DEADLINE + Duration::from_millis(500),
                "answered after {took:?}: {msg}"
            );
            continue;
        }
        assert_eq!(*code, Code::Unavailable, "{msg}");
        assert!(*took < DEADLINE, "answered after {took:?}: {msg}");
    }
    assert!(review_failures.is_empty(), "{review_failures:?}");
    assert!(reviewed > 100, "only {reviewed} reviews");
    // Badge follows Patroni's promotion promptly: it does not wait on the old
    // primary (crashed or frozen).
    assert!(
        write_gap <= promotion + Duration::from_secs(3),
        "writes came back {write_gap:?} after the kill, Patroni promoted after {promotion:?}"
    );
    if outage == Outage::Crash {
        assert!(
            write_gap <= RECOVERY,
            "writes came back {write_gap:?} after the kill"
        );
    }
    assert!(
        issue_gap <= promotion + Duration::from_secs(3),
        "issuance came back {issue_gap:?} after the kill, Patroni promoted after {promotion:?}"
    );
    if outage == Outage::Crash {
        assert!(
            issue_gap <= RECOVERY,
            "issuance came back {issue_gap:?} after the kill"
        );
    }

    // The watch: every acknowledged change exactly once, in order; any other
    // event is a failed write that did commit, also at most once.
    let mut seen: Vec<Change> = events
        .iter()
        .map(|(c, _)| c.clone())
        .filter(|c| c.name != "the-end")
        .collect();
    let rvs: Vec<i64> = events.iter().map(|(_, r)| *r).collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "watch out of order: {rvs:?}"
    );
    let distinct: BTreeSet<&Change> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "a change seen twice");
    let unknown: BTreeSet<&Change> = o.unknown.iter().collect();
    let acked: BTreeSet<&Change> = o.acked.iter().collect();
    for c in &seen {
        assert!(
            acked.contains(c) || unknown.contains(c),
            "the watch shows a change nobody made: {c:?}"
        );
    }
    seen.retain(|c| acked.contains(c));
    assert_eq!(
        seen, o.acked,
        "acknowledged changes missing or out of order in the watch"
    );
    assert!(events.iter().any(|(c, _)| c.name == "the-end"));

    // No acknowledged write lost: the final state has every acknowledged create
    // and update, and no acknowledged delete.
    let mut sac = pb::service_account_service_client::ServiceAccountServiceClient::new(id.clone());
    let mut last: BTreeMap<&str, i32> = BTreeMap::new();
    for c in &o.acked {
        last.insert(&c.name, c.kind);
    }
    for (name, kind) in &last {
        let unknown_later = o.unknown.iter().any(|u| u.name == *name);
        let got = sac
            .get_service_account(pb::GetServiceAccountRequest {
                namespace: "ha".into(),
                name: (*name).to_owned(),
            })
            .await;
        if *kind == pb::EventType::Deleted as i32 {
            assert_eq!(got.expect_err("deleted").code(), Code::NotFound, "{name}");
        } else if !unknown_later {
            let sa = got
                .unwrap_or_else(|e| panic!("{name} lost: {e:?}"))
                .into_inner();
            if *kind == pb::EventType::Modified as i32 {
                assert_eq!(sa.automount_service_account_token, Some(false), "{name}");
            }
        }
    }
    let mut nc = pb::node_service_client::NodeServiceClient::new(id.clone());
    for n in &o.nodes {
        nc.get_node(pb::GetNodeRequest { name: n.clone() })
            .await
            .unwrap_or_else(|e| panic!("node {n} lost: {e:?}"));
    }

    // Key rotation and the default-ServiceAccount controller work after.
    let key = keys
        .rotate_keys(req(tpb::RotateKeysRequest {
            algorithm: "ES256".into(),
        }))
        .await
        .expect("rotate after the failover")
        .into_inner()
        .key
        .expect("key");
    assert!(!key.kid.is_empty());
    pb::namespace_service_client::NamespaceServiceClient::new(id.clone())
        .create_namespace(req(pb::CreateNamespaceRequest {
            namespace: Some(pb::Namespace {
                metadata: meta("", "after"),
                status: None,
            }),
        }))
        .await
        .expect("namespace after the failover");
    let mut found = false;
    for _ in 0..100 {
        if sac
            .get_service_account(pb::GetServiceAccountRequest {
                namespace: "after".into(),
                name: "default".into(),
            })
            .await
            .is_ok()
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found,
        "the default ServiceAccount controller works after the failover"
    );
    // The reviewer's change feed follows the new primary (its LISTEN moved there):
    // deleting the account rejects its warm token within seconds.
    sac.delete_service_account(req(pb::DeleteServiceAccountRequest {
        namespace: "ha".into(),
        name: "web".into(),
        ..Default::default()
    }))
    .await
    .expect("delete after the failover");
    let deleted = Instant::now();
    loop {
        let st = reviews
            .clone()
            .create_token_review(req(CreateTokenReviewRequest {
                spec: Some(TokenReviewSpec {
                    token: token.clone(),
                    audiences: vec!["a".into()],
                }),
            }))
            .await
            .expect("review")
            .into_inner()
            .status
            .unwrap_or_default();
        if !st.authenticated {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "the reviewer did not see the delete: its feed does not follow the new primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{outage:?}: the reviewer saw the delete after {:?}",
        deleted.elapsed()
    );
    if outage == Outage::Crash {
        rejoin_then_switchover(&id).await;
    }
    drop((review, issuer, identity));
}

/// A planned switchover may cost at most this much write unavailability.
const SWITCHOVER: Duration = Duration::from_secs(2);

/// The crashed node comes back as a replica (Patroni rewinds it onto the new
/// timeline), then a planned switchover under write load costs at most
/// [`SWITCHOVER`] without a successful write, and loses nothing.
async fn rejoin_then_switchover(id: &Channel) {
    ha("rejoin");
    let began = Instant::now();
    loop {
        let st = ha("status");
        // `name role state port P lag L timeline T`: both non-leaders are
        // replicas again (Patroni says `running` or, from 3.0, `streaming`) on the
        // leader's timeline.
        let members: Vec<Vec<&str>> = st.lines().map(|l| l.split_whitespace().collect()).collect();
        let timeline = |f: &Vec<&str>| f.last().copied().unwrap_or_default().to_owned();
        let leader_timeline = members
            .iter()
            .find(|f| f.get(1) == Some(&"leader"))
            .map(timeline);
        let replicas = members
            .iter()
            .filter(|f| {
                matches!(f.get(1), Some(&"replica" | &"sync_standby"))
                    && matches!(f.get(2), Some(&"running" | &"streaming"))
                    && Some(timeline(f)) == leader_timeline
            })
            .count();
        if replicas == 2 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(90),
            "the crashed node did not rejoin as a replica:\n{st}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "the crashed node rejoined as a streaming replica {:?} after its restart",
        began.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let writes = tokio::spawn(write_load(id.clone(), "s-", stop.clone(), out.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = ha("primary");
    let switched = Instant::now();
    ha("switchover");
    loop {
        let p = ha("primary");
        if !p.trim().is_empty() && p.trim() != old.trim() {
            break;
        }
        assert!(
            switched.elapsed() < Duration::from_secs(30),
            "the switchover did not happen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = switched.elapsed();
    let resumed = Instant::now();
    while first_after(&out.lock().expect("lock").write_ok, resumed).is_none()
        && resumed.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writes.await.expect("writes");
    let o = std::mem::take(&mut *out.lock().expect("lock"));
    let gap = longest_gap(&o.write_ok, switched);
    eprintln!(
        "Switchover: the new primary answered Patroni {promoted:?} after the request; \
         write gap {gap:?}, {} acknowledged writes, failures {:?}",
        o.acked.len(),
        o.failures.iter().map(|f| f.2).collect::<Vec<_>>()
    );
    for (_, took, code, msg) in &o.failures {
        assert_eq!(*code, Code::Unavailable, "{msg}");
        assert!(*took < DEADLINE, "answered after {took:?}: {msg}");
    }
    assert!(
        gap <= SWITCHOVER,
        "a planned switchover cost {gap:?} without a successful write"
    );
    // Nothing acknowledged is lost across the switchover.
    let mut sac = pb::service_account_service_client::ServiceAccountServiceClient::new(id.clone());
    let mut last: BTreeMap<&str, i32> = BTreeMap::new();
    for c in &o.acked {
        last.insert(&c.name, c.kind);
    }
    for (name, kind) in &last {
        if o.unknown.iter().any(|u| u.name == *name) {
            continue;
        }
        let got = sac
            .get_service_account(pb::GetServiceAccountRequest {
                namespace: "ha".into(),
                name: (*name).to_owned(),
            })
            .await;
        if *kind == pb::EventType::Deleted as i32 {
            assert_eq!(got.expect_err("deleted").code(), Code::NotFound, "{name}");
        } else {
            got.unwrap_or_else(|e| panic!("{name} lost in the switchover: {e:?}"));
        }
    }
}
