//! What callers of the store pass and get back: records, changes, the feed, ops
//! and list pages.

use std::collections::BTreeMap;
use std::time::SystemTime;

use badge_core::{Error, Kind, Result};

#[cfg(doc)]
use crate::Store;

/// One stored object with its server-managed metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The revision of the object's last write.
    pub resource_version: i64,
    pub labels: BTreeMap<String, String>,
    /// The encoded object (opaque to the store).
    pub data: Vec<u8>,
    pub creation_timestamp: SystemTime,
    pub deletion_timestamp: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "ADDED" => Ok(EventType::Added),
            "MODIFIED" => Ok(EventType::Modified),
            "DELETED" => Ok(EventType::Deleted),
            other => Err(Error::Internal(format!(
                "unknown event type {other:?} in the change feed"
            ))),
        }
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: i64,
    pub event: EventType,
    /// The object after the change; for `Deleted`, its last state with
    /// `resource_version` set to the revision of the delete (as Kubernetes does).
    pub record: Record,
}

/// An object or feed entry whose data could not be opened: sealed under another
/// key-encryption key, tampered with, or sealed while this process has no key.
/// Only its key and the reason travel on — never its data (which is ciphertext
/// anyway, and must not end up in a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The feed revision; for an object read by [`Store::scan`], its
    /// resource_version.
    pub revision: i64,
    /// The feed event; `None` for an object read by [`Store::scan`].
    pub event: Option<EventType>,
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The revision of the object's write (for a delete: of the delete).
    pub resource_version: i64,
    /// Why it could not be opened (names the object and the sealer's error).
    pub reason: String,
}

/// One entry of [`Store::read_feed`]: a change, or a change whose object could
/// not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEntry {
    Change(Change),
    Unreadable(Unreadable),
}

impl FeedEntry {
    pub fn revision(&self) -> i64 {
        match self {
            FeedEntry::Change(c) => c.revision,
            FeedEntry::Unreadable(u) => u.revision,
        }
    }

    /// The change; for an unreadable entry, the error [`Store::changes_since`]
    /// answers (for a follower that must not skip an event silently).
    pub fn change(&self) -> Result<&Change> {
        match self {
            FeedEntry::Change(c) => Ok(c),
            FeedEntry::Unreadable(u) => Err(Error::Internal(u.reason.clone())),
        }
    }
}

/// A batch of [`Store::read_feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Ascending by revision.
    pub entries: Vec<FeedEntry>,
    /// The revision counter in the snapshot the entries were read from. When
    /// `entries` is empty, nothing up to this revision remains to be read.
    pub revision: i64,
}

/// Optimistic-concurrency preconditions of an update or delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    pub resource_version: Option<i64>,
    pub uid: Option<String>,
}

/// One write of an [`Store::apply`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// uid = a new UUIDv4, creation_timestamp = `now`.
    Create {
        kind: Kind,
        namespace: String,
        name: String,
        labels: BTreeMap<String, String>,
        data: Vec<u8>,
    },
    /// Replaces labels, data and deletion_timestamp; uid and creation_timestamp stay.
    Update {
        kind: Kind,
        namespace: String,
        name: String,
        precondition: Precondition,
        labels: BTreeMap<String, String>,
        data: Vec<u8>,
        deletion_timestamp: Option<SystemTime>,
    },
    /// Removes the object. Deleting a Namespace does not cascade by itself.
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
        precondition: Precondition,
    },
    /// Deletes every namespaced object in the namespace (all kinds), one `Deleted`
    /// change each, ordered by (kind, name).
    DeleteNamespaceContents { namespace: String },
}

/// A page request of [`Store::list`].
pub struct ListQuery<'a> {
    pub kind: Kind,
    /// `None` lists all namespaces.
    pub namespace: Option<&'a str>,
    /// Exclusive `(namespace, name)` cursor: items strictly after it.
    pub after: Option<(String, String)>,
    /// At most this many items; 0 means no limit.
    pub limit: usize,
    /// Applied in Rust to every row; only matching rows count toward `limit`.
    pub filter: &'a (dyn Fn(&Record) -> bool + Send + Sync),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Ordered by (namespace, name), bytewise.
    pub items: Vec<Record>,
    /// True when further matching items may exist after the last item.
    pub more: bool,
    /// The revision of exactly the state listed: watch from here.
    pub revision: i64,
}
