//! Kubernetes-format objects (what `apply -f` reads and `get -o yaml|json` prints),
//! and their conversion to and from Badge's protobuf messages. Every struct refuses
//! unknown fields, so a typo is an error naming the field instead of being dropped.
//!
//! `types` holds the serde types, `to_proto` and `from_proto` the two directions,
//! `kind` badgectl's names for core's [`Kind`].

mod from_proto;
mod kind;
mod to_proto;
mod types;

pub use badge_core::Kind;
pub use from_proto::{meta_from_proto, rfc3339};
pub use kind::KindExt;
pub use types::*;
