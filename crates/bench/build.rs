//! Compiles `proto/` with protox (pure Rust), as `badge-proto` does, so building
//! needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let file = root.join("badge/bench/v1/echo.proto");
    println!("cargo:rerun-if-changed={}", file.display());

    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Payloads are `Bytes`: echoing one back is a reference-count bump.
        .bytes(".badge.bench.v1")
        .compile_fds(fds)?;
    Ok(())
}
