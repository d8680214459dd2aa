//! The `badge` command: operator tasks and `badge up`.

pub mod up;
