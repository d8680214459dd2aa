//! Typed views of store records and the in-memory index the token services read
//! instead of the database.

pub mod codec;
pub mod entry;
pub mod index;
pub mod rbac;

pub use codec::{Object, decode, encode};
pub use entry::Entry;
pub use index::Index;
