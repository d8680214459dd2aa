//! A SPIFFE Workload API client (the `spiffe` crate) against `badge-agent node`:
//! prints the caller's X.509-SVID and bundle, fetches a JWT-SVID for an audience and
//! has the agent validate it, then (with `--watch`) prints every rotation.
//!
//! ```sh
//! SPIFFE_ENDPOINT_SOCKET=unix://$PWD/badge-data/agent.sock \
//!   cargo run -p badge-agent --example workload_client -- my-api --watch
//! ```

use tokio_stream::StreamExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let audience = args.next().unwrap_or_else(|| "my-api".into());
    let watch = args.any(|a| a == "--watch");
    // SPIFFE_ENDPOINT_SOCKET, as every Workload API client reads it.
    let client = spiffe::WorkloadApiClient::connect_env().await?;

    let ctx = client.fetch_x509_context().await?;
    let svid = ctx
        .default_svid()
        .ok_or_else(|| anyhow::anyhow!("no X.509-SVID"))?;
    let roots = ctx
        .bundle_set()
        .get(svid.spiffe_id().trust_domain())
        .map(|b| b.authorities().len())
        .unwrap_or(0);
    println!(
        "X.509-SVID {} (hint {}), chain of {} certificates, {roots} trusted root(s)",
        svid.spiffe_id(),
        svid.hint().unwrap_or("-"),
        svid.cert_chain().len(),
    );

    let jwt = client.fetch_jwt_svid([audience.as_str()], None).await?;
    println!(
        "JWT-SVID {} for {:?} ({} bytes)",
        jwt.spiffe_id(),
        jwt.audience(),
        jwt.token().len()
    );
    let checked = client.validate_jwt_token(&audience, jwt.token()).await?;
    println!("validated by the agent: {}", checked.spiffe_id());

    if watch {
        let mut updates = client.stream_x509_contexts().await?;
        while let Some(ctx) = updates.next().await {
            let ctx = ctx?;
            if let Some(s) = ctx.default_svid() {
                println!(
                    "update: {} leaf of {} bytes",
                    s.spiffe_id(),
                    s.leaf().as_bytes().len()
                );
            }
        }
        println!("stream ended");
    }
    Ok(())
}
