//! `badge-agent`: see [`badge_agent`]. `badge-agent node --agent-config agent.yaml` runs
//! the node agent ([`badge_agent::node`]); anything else the projected-token agent.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let result = if std::env::args().nth(1).as_deref() == Some("node") {
        let args = badge_agent::node::NodeArgs::parse_from(
            std::iter::once("badge-agent node".to_string()).chain(std::env::args().skip(2)),
        );
        badge_agent::node::run_with_signals(args).await
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        badge_agent::run_with_signals(badge_agent::AgentArgs::parse()).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
