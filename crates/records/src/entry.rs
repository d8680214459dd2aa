//! One object as the index holds it: packed, because the index of a large
//! installation holds millions (1 M service accounts + 1 M pods must fit in
//! 512 MB). Compared with a [`Record`]: the namespace is the map key above it; the
//! name and the encoded object share one allocation; a canonical UUID is 16 bytes,
//! not a 36-byte string; times are microseconds; labels are boxed (most objects
//! have none).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::SystemTime;

use badge_core::Kind;
use badge_core::clock::{from_unix_micros, unix_micros};
use badge_store::Record;

/// `deletion_micros` of an object without a deletion timestamp.
const NOT_DELETED: i64 = i64::MIN;

#[derive(Debug, Clone)]
pub struct Entry {
    /// The name's bytes, then the uid's text when it is not a canonical UUID, then
    /// the encoded object.
    bytes: Box<[u8]>,
    /// The uid when it is a canonical (lowercase, hyphenated) UUID.
    uuid: [u8; 16],
    resource_version: i64,
    creation_micros: i64,
    /// [`NOT_DELETED`] when none.
    deletion_micros: i64,
    /// Boxed on purpose: 8 bytes in every entry instead of 24, and most objects
    /// have no labels (no allocation at all).
    #[allow(clippy::box_collection)]
    labels: Option<Box<BTreeMap<String, String>>>,
    name_len: u16,
    /// Length of the uid's text in `bytes` (when `uid_is_text`).
    uid_len: u16,
    /// false: the uid is `uuid`.
    uid_is_text: bool,
}

/// The bytes of a canonical UUID, if `uid` is one (only that form round-trips).
fn canonical_uuid(uid: &str) -> Option<[u8; 16]> {
    let u = uuid::Uuid::try_parse(uid).ok()?;
    (u.hyphenated().to_string() == uid).then(|| *u.as_bytes())
}

impl Entry {
    pub fn new(r: Record) -> Entry {
        let uuid = canonical_uuid(&r.uid);
        let uid_text: &[u8] = if uuid.is_some() {
            b""
        } else {
            r.uid.as_bytes()
        };
        // Names are at most 253 bytes and uids short; anything longer (never
        // written by Badge) is cut rather than stored wrong-sized.
        let name = &r.name.as_bytes()[..r.name.len().min(usize::from(u16::MAX))];
        let uid_text = &uid_text[..uid_text.len().min(usize::from(u16::MAX))];
        let mut bytes = Vec::with_capacity(name.len() + uid_text.len() + r.data.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(uid_text);
        bytes.extend_from_slice(&r.data);
        Entry {
            bytes: bytes.into_boxed_slice(),
            uuid: uuid.unwrap_or_default(),
            resource_version: r.resource_version,
            creation_micros: unix_micros(r.creation_timestamp),
            deletion_micros: r.deletion_timestamp.map_or(NOT_DELETED, unix_micros),
            labels: (!r.labels.is_empty()).then(|| Box::new(r.labels)),
            name_len: u16::try_from(name.len()).unwrap_or(u16::MAX),
            uid_len: u16::try_from(uid_text.len()).unwrap_or(u16::MAX),
            uid_is_text: uuid.is_none(),
        }
    }

    /// The name as bytes (bytewise order is the store's `COLLATE "C"` order).
    pub fn name_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.name_len)]
    }

    pub fn name(&self) -> String {
        String::from_utf8_lossy(self.name_bytes()).into_owned()
    }

    /// The encoded object.
    pub fn data(&self) -> &[u8] {
        &self.bytes[usize::from(self.name_len) + usize::from(self.uid_len)..]
    }

    pub fn uid(&self) -> String {
        if !self.uid_is_text {
            uuid::Uuid::from_bytes(self.uuid).hyphenated().to_string()
        } else {
            let start = usize::from(self.name_len);
            String::from_utf8_lossy(&self.bytes[start..start + usize::from(self.uid_len)])
                .into_owned()
        }
    }

    pub fn resource_version(&self) -> i64 {
        self.resource_version
    }

    pub fn creation_timestamp(&self) -> SystemTime {
        from_unix_micros(self.creation_micros)
    }

    pub fn deletion_timestamp(&self) -> Option<SystemTime> {
        (self.deletion_micros != NOT_DELETED).then(|| from_unix_micros(self.deletion_micros))
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// The record back, as the store would return it.
    pub fn record(&self, kind: Kind, namespace: &str) -> Record {
        Record {
            kind,
            namespace: namespace.to_owned(),
            name: self.name(),
            uid: self.uid(),
            resource_version: self.resource_version,
            labels: self.labels.as_deref().cloned().unwrap_or_default(),
            data: self.data().to_vec(),
            creation_timestamp: from_unix_micros(self.creation_micros),
            deletion_timestamp: self.deletion_timestamp(),
        }
    }
}

// Entries live in a set keyed by name: hashing and equality are the name's
// (as bytes, so lookups by `&[u8]` find them).
impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name_bytes().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.name_bytes() == other.name_bytes()
    }
}

impl Eq for Entry {}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.name_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str, labels: &[(&str, &str)], deleted: bool) -> Record {
        Record {
            kind: Kind::Pod,
            namespace: "apps".into(),
            name: "web-1".into(),
            uid: uid.into(),
            resource_version: 42,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            data: vec![1, 2, 3, 0, 255],
            creation_timestamp: from_unix_micros(1_790_000_000_123_456),
            deletion_timestamp: deleted.then(|| from_unix_micros(1_790_000_100_000_000)),
        }
    }

    #[test]
    fn records_round_trip() {
        let cases = [
            record("7c4b1f3e-2f6a-4d5b-9a0e-1c2d3e4f5a6b", &[], false),
            record("7C4B1F3E-2F6A-4D5B-9A0E-1C2D3E4F5A6B", &[("a", "b")], true),
            record("not-a-uuid", &[], true),
            record("", &[("x", "")], false),
            record("7c4b1f3e-2f6a-4d5b-9a0e-1c2d3e4f5a6b-extra", &[], false),
        ];
        for r in cases {
            let e = Entry::new(r.clone());
            assert_eq!(e.record(Kind::Pod, "apps"), r);
            assert_eq!(e.uid(), r.uid);
            assert_eq!(e.data(), &r.data[..]);
            assert_eq!(e.deletion_timestamp(), r.deletion_timestamp);
        }
    }

    #[test]
    fn found_by_name_bytes() {
        let mut set = std::collections::HashSet::new();
        set.insert(Entry::new(record("u", &[], false)));
        assert!(set.contains("web-1".as_bytes()));
        assert!(!set.contains("web-2".as_bytes()));
        assert!(
            std::mem::size_of::<Entry>() <= 96,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }
}
