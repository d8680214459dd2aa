//! Badge's rules, with no IO: names, labels and selectors, admission, page tokens,
//! errors. Time is always a parameter. Never depends on tokio, sqlx or tonic.

pub mod clock;
pub mod error;
pub mod kind;

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::{Error, FieldViolation, Result};
pub use kind::Kind;
