//! Envoy's ext_authz contract (`envoy.service.auth.v3`, with the messages it
//! imports), generated from the descriptor set token-review also serves by
//! reflection (`envoy-ext-authz.bin`, checked against the envoy-types crate by
//! `tests/tests/e2e/ext_authz.rs`).
//!
//! Why not envoy-types itself: it compiles all of Envoy's API (≈ 55 s of CPU, the
//! largest dependency of a first `cargo run --release`, issue #19) for the 25 files
//! Check needs. The wire format is the same; the tests drive this server with
//! envoy-types' own client.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let bin = dir.join("envoy-ext-authz.bin");
    println!("cargo:rerun-if-changed={}", bin.display());
    let fds = prost_types::FileDescriptorSet::decode(std::fs::read(&bin)?.as_slice())?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Envoy's comments are reStructuredText (`.. code-block::`), not rustdoc.
        .disable_comments(["."])
        .include_file("envoy.rs")
        // Check decodes into Badge's reading of the request (`ext_authz::wire`: the
        // fields the decision uses, maps left as byte slices); same wire format.
        .extern_path(
            ".envoy.service.auth.v3.CheckRequest",
            "crate::ext_authz::wire::CheckRequest",
        )
        .compile_fds(fds)?;
    Ok(())
}
