//! Typed views of store records: the identity kinds as prost messages.
//!
//! The store keeps server-managed metadata (uid, resource_version, timestamps) in
//! columns; [`encode`] strips it from the blob and [`decode`] overlays it back, so
//! the two can never disagree.

use std::collections::BTreeMap;

use badge_core::{Error, Kind, Result};
use badge_proto::identity::{
    Namespace, NamespaceStatus, Node, Pod, Secret, ServiceAccount, watch_event,
};
use badge_proto::meta::ObjectMeta;
use badge_proto::rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use badge_store::Record;
use prost::Message;

/// A stored kind.
pub trait Object: Message + Default + Clone + Send + Sync + 'static {
    const KIND: Kind;

    fn meta(&self) -> Option<&ObjectMeta>;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    fn into_event_object(self) -> watch_event::Object;

    /// Normalises what the server owns or rewrites before storing (e.g. Secret
    /// string_data merged into data). Runs on create and update.
    fn normalize(&mut self) {}

    /// Fills server-computed fields after reading (e.g. Namespace status).
    fn on_read(&mut self) {}
}

macro_rules! object {
    ($t:ty, $kind:expr, $variant:ident) => {
        impl Object for $t {
            const KIND: Kind = $kind;
            fn meta(&self) -> Option<&ObjectMeta> {
                self.metadata.as_ref()
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                self.metadata.get_or_insert_with(ObjectMeta::default)
            }
            fn into_event_object(self) -> watch_event::Object {
                watch_event::Object::$variant(self)
            }
            fn normalize(&mut self) {
                normalize_hook(self);
            }
            fn on_read(&mut self) {
                read_hook(self);
            }
        }
    };
}

trait Hooks {
    fn normalize(&mut self) {}
    fn on_read(&mut self) {}
}
fn normalize_hook<T: Hooks>(t: &mut T) {
    t.normalize();
}
fn read_hook<T: Hooks>(t: &mut T) {
    t.on_read();
}

impl Hooks for Namespace {
    fn on_read(&mut self) {
        // Deletion is synchronous, so every stored namespace is active.
        self.status = Some(NamespaceStatus {
            phase: "Active".into(),
        });
    }
    fn normalize(&mut self) {
        self.status = None;
    }
}
impl Hooks for ServiceAccount {
    fn normalize(&mut self) {
        badge_core::admission::trim_service_account(self);
    }
}
impl Hooks for Secret {
    fn normalize(&mut self) {
        // string_data is write-only: merged into data, never stored or returned.
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, v.into_bytes());
        }
        if self.r#type.is_empty() {
            self.r#type = "Opaque".into();
        }
    }
}
impl Hooks for Pod {}
impl Hooks for Node {}
impl Hooks for Role {}
impl Hooks for ClusterRole {}
impl Hooks for RoleBinding {}
impl Hooks for ClusterRoleBinding {}

object!(Namespace, Kind::Namespace, Namespace);
object!(ServiceAccount, Kind::ServiceAccount, ServiceAccount);
object!(Secret, Kind::Secret, Secret);
object!(Pod, Kind::Pod, Pod);
object!(Node, Kind::Node, Node);
object!(Role, Kind::Role, Role);
object!(ClusterRole, Kind::ClusterRole, ClusterRole);
object!(RoleBinding, Kind::RoleBinding, RoleBinding);
object!(
    ClusterRoleBinding,
    Kind::ClusterRoleBinding,
    ClusterRoleBinding
);

/// Encodes for the store: server-managed metadata lives in columns, not in the blob.
pub fn encode<T: Object>(obj: &T) -> (BTreeMap<String, String>, Vec<u8>) {
    let mut copy = obj.clone();
    let meta = copy.meta_mut();
    meta.uid.clear();
    meta.resource_version.clear();
    meta.creation_timestamp = None;
    meta.deletion_timestamp = None;
    let labels = meta
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (labels, copy.encode_to_vec())
}

/// Decodes a stored record, overlaying the server-managed metadata.
pub fn decode<T: Object>(record: &Record) -> Result<T> {
    let mut obj = decode_data::<T>(&record.data, &record.namespace, &record.name)?;
    let meta = obj.meta_mut();
    meta.name.clone_from(&record.name);
    meta.namespace.clone_from(&record.namespace);
    meta.uid.clone_from(&record.uid);
    meta.resource_version = record.resource_version.to_string();
    meta.creation_timestamp = Some(badge_core::clock::timestamp(record.creation_timestamp));
    meta.deletion_timestamp = record.deletion_timestamp.map(badge_core::clock::timestamp);
    obj.on_read();
    Ok(obj)
}

/// As [`decode`], straight from an index entry of `namespace`: the same object,
/// without first copying the entry into a [`Record`] (a List from memory decodes
/// a thousand of these per request).
pub fn decode_entry<T: Object>(entry: &crate::Entry, namespace: &str) -> Result<T> {
    let name = entry.name();
    let mut obj = decode_data::<T>(entry.data(), namespace, &name)?;
    let meta = obj.meta_mut();
    meta.name = name;
    namespace.clone_into(&mut meta.namespace);
    meta.uid = entry.uid();
    meta.resource_version = entry.resource_version().to_string();
    meta.creation_timestamp = Some(badge_core::clock::timestamp(entry.creation_timestamp()));
    meta.deletion_timestamp = entry.deletion_timestamp().map(badge_core::clock::timestamp);
    obj.on_read();
    Ok(obj)
}

fn decode_data<T: Object>(data: &[u8], namespace: &str, name: &str) -> Result<T> {
    T::decode(data).map_err(|e| {
        Error::Internal(format!(
            "stored {} {namespace}/{name} does not decode: {e}",
            T::KIND,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use badge_core::clock::from_unix_micros;

    /// An object decoded straight from an index entry is the object decoded from
    /// the record the entry holds: same server-managed metadata, same hooks.
    #[test]
    fn an_entry_decodes_as_its_record() {
        let mut sa = ServiceAccount::default();
        let meta = sa.meta_mut();
        meta.labels.insert("app".into(), "web".into());
        meta.annotations.insert("note".into(), "x".into());
        let (labels, data) = encode(&sa);
        for (uid, deleted) in [
            ("7c4b1f3e-2f6a-4d5b-9a0e-1c2d3e4f5a6b", None),
            ("not-a-uuid", Some(from_unix_micros(1_790_000_100_000_000))),
        ] {
            let record = Record {
                kind: Kind::ServiceAccount,
                namespace: "shop".into(),
                name: "web".into(),
                uid: uid.into(),
                resource_version: 42,
                labels: labels.clone(),
                data: data.clone(),
                creation_timestamp: from_unix_micros(1_790_000_000_123_456),
                deletion_timestamp: deleted,
            };
            let entry = crate::Entry::new(record.clone());
            let from_entry: ServiceAccount = decode_entry(&entry, "shop").expect("entry");
            let from_record: ServiceAccount = decode(&record).expect("record");
            assert_eq!(from_entry, from_record);
            assert_eq!(from_entry.meta().expect("meta").resource_version, "42");
        }
    }
}
