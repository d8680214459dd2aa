//! `badge-agent`: see [`badge_agent`]. `badge-agent node --agent-config agent.yaml`
//! runs the node agent ([`badge_agent::node`]).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = badge_agent::AgentArgs::parse();
    // The node agent sets up Badge's telemetry (logs, OTLP traces and metrics) from
    // its configuration; the projected-token agent logs to stderr.
    if args.mode.is_none() {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match badge_agent::run_with_signals(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
