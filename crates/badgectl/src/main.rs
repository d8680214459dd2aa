//! `badgectl`: see [`badgectl::cli`].

#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    badgectl::run(badgectl::Cli::parse()).await
}
