//! The example configurations in `examples/` stay in step with the config types:
//! every key they set is known and well-typed; the only complaints allowed are the
//! PEM/KEK files they point at, which exist only after `badge dev-pki` / `badge up`.

use badge_runtime::config::{ConfigError, load};

fn only_missing_files<T: serde::de::DeserializeOwned + badge_runtime::config::Validate>(
    file: &str,
) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    match load::<T>(Some(&path), vec![], &[]) {
        Ok(_) => {}
        Err(ConfigError::Invalid(errors)) => {
            for e in &errors {
                assert!(
                    e.contains("does not exist"),
                    "{file}: unexpected complaint: {e}"
                );
            }
        }
        Err(e) => panic!("{file}: {e}"),
    }
}

#[test]
fn identity_example_is_valid() {
    only_missing_files::<badge_identity::IdentityConfig>("identity.toml");
}

#[test]
fn token_issuer_example_is_valid() {
    only_missing_files::<badge_token_issuer::IssuerConfig>("token-issuer.toml");
}

#[test]
fn token_review_example_is_valid() {
    only_missing_files::<badge_token_review::ReviewConfig>("token-review.toml");
}
