//! Typed views of store records and the in-memory index the token services read
//! instead of the database.

pub mod codec;
pub mod index;
pub mod rbac;

pub use codec::{Object, decode, encode};
pub use index::Index;
