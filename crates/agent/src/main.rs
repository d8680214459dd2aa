//! `badge-agent`: see [`badge_agent`].

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = badge_agent::AgentArgs::parse();
    let (handle, control) = badge_agent::control();
    if let Err(e) = forward_signals(handle) {
        eprintln!("error: installing signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match badge_agent::run(args, control).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP: refresh every token now; SIGTERM / Ctrl-C: stop, leaving the files.
fn forward_signals(handle: badge_agent::Handle) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => handle.refresh(),
                    _ = term.recv() => { handle.stop(); return; }
                    _ = tokio::signal::ctrl_c() => { handle.stop(); return; }
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop();
    });
    Ok(())
}
