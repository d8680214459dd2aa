//! The `badge` command: operator tasks, `badge up` and `badge health`.

pub mod cli;
pub mod health;
pub mod up;
