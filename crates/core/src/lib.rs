//! Badge's rules, with no IO: names, labels and selectors, admission, page tokens,
//! errors. Time is always a parameter. Never depends on tokio, sqlx or tonic.

pub mod admission;
pub mod bootstrap_policy;
pub mod clock;
pub mod error;
pub mod key_lifecycle;
pub mod kind;
pub mod legacy_cleanup;
pub mod names;
pub mod oidc;
pub mod page_token;
pub mod quote;
pub mod rbac;
pub mod review;
pub mod revocation;
pub mod seal;
pub mod secret_refs;
pub mod selector;
pub mod spiffe;
pub mod token;
pub mod user;
pub mod validation;

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::{Error, FieldViolation, Result};
pub use kind::Kind;
pub use page_token::{PageToken, page_size};
pub use selector::LabelSelector;
pub use user::service_account_username;
