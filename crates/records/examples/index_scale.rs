//! How big and how fast the in-memory index is at scale: fills a Postgres database
//! with N service accounts and N pods (realistic encoded objects, by SQL, once),
//! then loads an index over both kinds and reports the load time, the process RSS
//! and the rate of the lookups a review makes.
//!
//! `cargo run --release -p badge-records --example index_scale -- [N] [DATABASE_URL]`
//! (defaults: 1000000, postgres://postgres@127.0.0.1:5432/badge_scale).

use std::time::{Duration, Instant};

use badge_core::Kind;
use badge_proto::identity as pb;
use badge_records::Index;
use badge_store::{Store, StoreOptions};
use prost::Message as _;

// The allocator every Badge binary runs on (badge-runtime declares it there), so the
// RSS reported here is the services'.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What identity stores for an SA and a pod (metadata lives in columns).
fn samples() -> (Vec<u8>, Vec<u8>) {
    let sa = pb::ServiceAccount {
        metadata: Some(Default::default()),
        automount_service_account_token: Some(true),
        ..Default::default()
    };
    let pod = pb::Pod {
        metadata: Some(Default::default()),
        spec: Some(pb::PodSpec {
            service_account_name: "sa-000000".into(),
            node_name: "node-0001".into(),
            containers: vec![pb::Container {
                name: "app".into(),
                image: "registry.example.com/team/app:1.2.3".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    (sa.encode_to_vec(), pod.encode_to_vec())
}

/// Inserts the objects with SQL (the API would take minutes for 2 M writes).
async fn fill(url: &str, n: i64, sa: &[u8], pod: &[u8]) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM objects")
        .fetch_one(&pool)
        .await?;
    if have >= 2 * n {
        return Ok(());
    }
    println!("filling {n} service accounts and {n} pods ...");
    let t = Instant::now();
    sqlx::query("DELETE FROM objects").execute(&pool).await?;
    for (kind, prefix, data, offset) in [("ServiceAccount", "sa-", sa, 0), ("Pod", "pod-", pod, n)]
    {
        sqlx::query(
            "INSERT INTO objects (kind, namespace, name, uid, resource_version, labels, data, \
             creation_timestamp, deletion_timestamp) \
             SELECT $1, 'ns-' || lpad((i % 1000)::text, 3, '0'), $2 || lpad(i::text, 6, '0'), \
             md5($1 || i::text)::uuid::text, $3 + i + 1, '{}', $4, 1790000000000000, NULL \
             FROM generate_series(0, $5 - 1) AS i",
        )
        .bind(kind)
        .bind(prefix)
        .bind(offset)
        .bind(data)
        .bind(n)
        .execute(&pool)
        .await?;
    }
    sqlx::query("UPDATE revision_counter SET revision = $1 WHERE id = 1")
        .bind(2 * n)
        .execute(&pool)
        .await?;
    println!("filled in {:.1?}", t.elapsed());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: i64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/badge_scale".into());
    Store::create_database_if_missing(&url).await?;
    let store = Store::connect(&url, StoreOptions::default()).await?;
    store.migrate().await?;
    let (sa, pod) = samples();
    fill(&url, n, &sa, &pod).await?;
    let base = rss_mib();
    let t = Instant::now();
    let index = Index::start(store.clone(), &[Kind::ServiceAccount, Kind::Pod]);
    index.ready().await;
    let load = t.elapsed();
    // Let the allocator settle (freed list buffers).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss = rss_mib();
    println!(
        "index: {} objects loaded in {load:.2?}; RSS {rss:.0} MiB (before {base:.0} MiB, +{:.0} MiB)",
        index.len(),
        rss - base
    );
    // The lookups one review makes: the SA and the pod, uid and deletion only.
    let t = Instant::now();
    let rounds = 1_000_000u64;
    let mut hits = 0u64;
    for i in 0..rounds {
        let k = (i * 7919) % u64::try_from(n)?;
        let ns = format!("ns-{:03}", k % 1000);
        let name = format!("sa-{k:06}");
        let pod_name = format!("pod-{k:06}");
        if index
            .map(Kind::ServiceAccount, &ns, &name, |r| {
                r.deletion_timestamp().is_none()
            })
            .unwrap_or(false)
            && index
                .map(Kind::Pod, &ns, &pod_name, |r| !r.uid().is_empty())
                .unwrap_or(false)
        {
            hits += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "lookups: {:.0} SA+pod pairs/s on one core ({hits} of {rounds} found)",
        rounds as f64 / secs
    );
    Ok(())
}
