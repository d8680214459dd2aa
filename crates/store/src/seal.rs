//! Sealing the data of sensitive kinds at rest, and opening it after reads.

use badge_core::{Error, Kind, Result};

use crate::Store;
use crate::types::{Change, EventType, Op, Record};

/// Kinds whose data is sealed at rest when a sealer is configured. (Signing keys
/// arrive with their private part already sealed by the token-issuer.)
pub const SEALED_KINDS: [Kind; 1] = [Kind::Secret];

/// Prefix of sealed data. Protobuf never starts with a zero byte (field 0 does not
/// exist), so sealed and plain rows cannot be confused: plain rows written before
/// encryption was turned on stay readable and are sealed on their next write.
const SEALED_PREFIX: &[u8] = b"\0badge:sealed:v1\0";

fn seal_aad(kind: Kind, namespace: &str, name: &str) -> Vec<u8> {
    format!("badge/{}/{namespace}/{name}", kind.as_str()).into_bytes()
}

impl Store {
    /// Whether Secret data is sealed at rest.
    pub fn seals_data(&self) -> bool {
        self.inner.sealer.is_some()
    }

    /// Seals the data of sensitive kinds before it is written.
    pub(crate) fn seal_ops(&self, mut ops: Vec<Op>) -> Result<Vec<Op>> {
        let Some(sealer) = &self.inner.sealer else {
            return Ok(ops);
        };
        for op in &mut ops {
            if let Op::Create {
                kind,
                namespace,
                name,
                data,
                ..
            }
            | Op::Update {
                kind,
                namespace,
                name,
                data,
                ..
            } = op
                && SEALED_KINDS.contains(kind)
            {
                let sealed = sealer
                    .seal(data, &seal_aad(*kind, namespace, name))
                    .map_err(|e| {
                        Error::Internal(format!("sealing {} data: {e}", kind.resource()))
                    })?;
                let mut out = Vec::with_capacity(SEALED_PREFIX.len() + sealed.len());
                out.extend_from_slice(SEALED_PREFIX);
                out.extend_from_slice(&sealed);
                *data = out;
            }
        }
        Ok(ops)
    }

    /// Opens sealed data after it is read. Sealed data without a sealer, or one that
    /// does not open (wrong key, tampering), is an error — never garbage.
    pub(crate) fn open(&self, mut record: Record) -> Result<Record> {
        let Some(sealed) = record.data.strip_prefix(SEALED_PREFIX) else {
            return Ok(record);
        };
        let Some(sealer) = &self.inner.sealer else {
            return Err(Error::Internal(format!(
                "{} {}/{} is encrypted at rest but no key-encryption key is configured",
                record.kind.resource(),
                record.namespace,
                record.name
            )));
        };
        record.data = sealer
            .open(
                sealed,
                &seal_aad(record.kind, &record.namespace, &record.name),
            )
            .map_err(|e| {
                Error::Internal(format!(
                    "{} {}/{} cannot be decrypted with the configured key-encryption key: {e}",
                    record.kind.resource(),
                    record.namespace,
                    record.name
                ))
            })?;
        Ok(record)
    }

    /// [`Self::open`], or on failure the object's namespace, name and the reason
    /// (the sealed data is dropped here, so it cannot travel further).
    pub(crate) fn open_or_key(
        &self,
        record: Record,
    ) -> std::result::Result<Record, (String, String, String)> {
        if !record.data.starts_with(SEALED_PREFIX) {
            // The common case (every unsealed kind): no copies of the key.
            return Ok(record);
        }
        let (namespace, name) = (record.namespace.clone(), record.name.clone());
        self.open(record).map_err(|e| {
            let reason = match e {
                Error::Internal(m) => m,
                other => other.to_string(),
            };
            (namespace, name, reason)
        })
    }

    /// Opens the changes of a committed write for the caller. This process sealed
    /// whatever it wrote; only a deletion can carry data sealed by someone else
    /// (the last state of an object another key sealed). The delete has been
    /// committed: answering an error would make the caller believe it failed (and
    /// an operator deleting an unreadable Secret could never see it succeed), so
    /// such a change comes back with its metadata and empty data.
    pub(crate) fn open_applied(&self, changes: Vec<Change>) -> Result<Vec<Change>> {
        changes
            .into_iter()
            .map(|c| {
                if c.event != EventType::Deleted || !c.record.data.starts_with(SEALED_PREFIX) {
                    return Ok(Change {
                        record: self.open(c.record)?,
                        ..c
                    });
                }
                let mut record = c.record;
                let data = std::mem::take(&mut record.data);
                let opened = self.open(Record {
                    data,
                    ..record.clone()
                });
                Ok(Change {
                    record: match opened {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(
                                kind = record.kind.as_str(),
                                namespace = %record.namespace,
                                name = %record.name,
                                revision = c.revision,
                                reason = %e,
                                "deleted an object whose data cannot be opened"
                            );
                            record
                        }
                    },
                    ..c
                })
            })
            .collect()
    }
}
