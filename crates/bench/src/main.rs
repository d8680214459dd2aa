//! `badge-bench`: see [`badge_bench::cli`].

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    badge_bench::cli::main(badge_bench::cli::Cli::parse())
}
