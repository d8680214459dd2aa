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
    let mut fds = prost_types::FileDescriptorSet::decode(std::fs::read(&bin)?.as_slice())?;
    // Check answers with `ext_authz::wire::CheckAnswer`: a CheckResponse already
    // encoded (the same bytes prost would write), so an answer kept for a repeat
    // request is sent without being rebuilt and re-encoded. Only the generated
    // server's view changes: the message itself is still generated (the answers are
    // built with it), and reflection serves the descriptor set unchanged.
    let check = fds
        .file
        .iter_mut()
        .filter(|f| f.package() == "envoy.service.auth.v3")
        .flat_map(|f| f.service.iter_mut())
        .filter(|s| s.name() == "Authorization")
        .flat_map(|s| s.method.iter_mut())
        .find(|m| m.name() == "Check")
        .ok_or("envoy.service.auth.v3.Authorization/Check not in the descriptor set")?;
    check.output_type = Some(".badge.ext_authz.CheckAnswer".into());
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // Envoy's comments are reStructuredText (`.. code-block::`), not rustdoc.
        .disable_comments(["."])
        .include_file("envoy.rs")
        // Check receives the request's bytes and reads them its own way
        // (`ext_authz::wire`: a lean reading for the answer cache, else the fields
        // the decision uses, maps left as byte slices); same wire format.
        .extern_path(
            ".envoy.service.auth.v3.CheckRequest",
            "crate::ext_authz::wire::RawCheckRequest",
        )
        .extern_path(
            ".badge.ext_authz.CheckAnswer",
            "crate::ext_authz::wire::CheckAnswer",
        )
        .compile_fds(fds)?;
    Ok(())
}
