//! One generic implementation of the standard methods for every kind: validation,
//! store encoding, optimistic concurrency, paging. Kind-specific rules (admission,
//! trimming, immutability) are hooks on [`Object`].

use std::sync::Arc;

use badge_core::page_token::{self, PageToken};
use badge_core::selector::LabelSelector;
use badge_core::{Clock, Error, Kind, Result, names};
use badge_store::{ListQuery, Op, Precondition, Record, Store};

use crate::cache::Cache;

pub use badge_records::codec::{Object, decode, encode};

/// Parses a client-sent resource version ("" = none).
pub fn parse_resource_version(field: &str, value: &str) -> Result<Option<i64>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!("invalid resource version {value:?}: use a value returned by the server"),
            )
        })
}

/// How many times an update without a client resource_version re-runs its
/// read-check-write when the object changed in between (then ABORTED).
pub const UPDATE_ATTEMPTS: u32 = 5;

/// Validates a name and namespace given as plain request fields (get/delete).
pub fn check_key(kind: Kind, namespace: &str, name: &str) -> Result<()> {
    names::validate_key(kind, namespace, name)
}

/// The standard methods over the store.
#[derive(Clone)]
pub struct Objects {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// The RBAC policy, for escalation checks on Role and binding writes. `None`
    /// (tools and tests without a policy): no escalation checks.
    pub guard: Option<Arc<badge_access::Guard>>,
    /// Set when the server stops: open Watch streams end (UNAVAILABLE, so clients
    /// resume elsewhere) instead of holding the graceful shutdown open forever.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// A Watch ends (OK, after a BOOKMARK) after a random time in [½, 1½] × this
    /// (`feed.watch_timeout_seconds`).
    pub watch_timeout: std::time::Duration,
    /// Get and List from the index, consistently (see [`crate::cache`]); `None`:
    /// from the store.
    pub cache: Option<Cache>,
}

/// One page of a list.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
    pub resource_version: String,
}

impl Objects {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Objects {
            store,
            clock,
            guard: None,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            watch_timeout: std::time::Duration::from_secs(1800),
            cache: None,
        }
    }

    /// Checks Role and binding writes against the caller's own permissions.
    pub fn with_guard(mut self, guard: Arc<badge_access::Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Answers Get and List from `cache` (see [`crate::cache`]).
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Validates metadata of an object in a request field (`field` = e.g.
    /// "service_account") and returns it prepared for storing.
    pub fn prepare<T: Object>(&self, obj: Option<T>, field: &str) -> Result<T> {
        let Some(mut obj) = obj else {
            return Err(Error::invalid(field, format!("{field} is required")));
        };
        let violations =
            names::validate_object_meta(obj.meta(), &format!("{field}.metadata"), T::KIND);
        Error::check(violations)?;
        obj.normalize();
        Ok(obj)
    }

    pub fn create_op<T: Object>(obj: &T) -> Op {
        let (labels, data) = encode(obj);
        let meta = obj.meta().cloned().unwrap_or_default();
        Op::Create {
            kind: T::KIND,
            namespace: meta.namespace,
            name: meta.name,
            labels,
            data,
        }
    }

    /// Stores a prepared object (and any extra ops in the same transaction).
    pub async fn create<T: Object>(&self, obj: T, extra: Vec<Op>) -> Result<T> {
        let mut ops = vec![Self::create_op(&obj)];
        ops.extend(extra);
        let changes = self.store.apply(ops, self.clock.now()).await?;
        let first = changes
            .first()
            .ok_or_else(|| Error::Internal("create returned no change".into()))?;
        decode(&first.record)
    }

    pub async fn get<T: Object>(&self, namespace: &str, name: &str) -> Result<T> {
        check_key(T::KIND, namespace, name)?;
        match &self.cache {
            Some(cache) => cache.get(namespace, name).await,
            None => decode(&self.store.get(T::KIND, namespace, name).await?),
        }
    }

    pub async fn list<T: Object>(
        &self,
        namespace: &str,
        page_size: i32,
        page_token: &str,
        label_selector: &str,
    ) -> Result<Page<T>> {
        if !namespace.is_empty()
            && let Some(e) = names::validate_dns_label(namespace).into_iter().next()
        {
            return Err(Error::invalid(
                "namespace",
                names::invalid_value(namespace, &e),
            ));
        }
        let limit = page_token::page_size(page_size)?;
        let selector = LabelSelector::parse_field("label_selector", label_selector)?;
        let after = PageToken::decode_optional(page_token, T::KIND, namespace, &selector)?
            .map(|t| (t.after_namespace, t.after_name));
        let namespace_filter = (!namespace.is_empty()).then_some(namespace);
        let cached = match &self.cache {
            Some(cache) => {
                cache
                    .list::<T>(namespace_filter, after.as_ref(), limit, &selector)
                    .await
            }
            None => None,
        };
        let (items, more, revision) = match cached {
            Some(page) => {
                let page = page?;
                (page.items, page.more, page.revision)
            }
            None => {
                let filter =
                    |r: &Record| selector.matches_with(|k| r.labels.get(k).map(String::as_str));
                let page = self
                    .store
                    .list(ListQuery {
                        kind: T::KIND,
                        namespace: namespace_filter,
                        after,
                        limit,
                        filter: &filter,
                    })
                    .await?;
                let items = page.items.iter().map(decode).collect::<Result<Vec<T>>>()?;
                (items, page.more, page.revision)
            }
        };
        let next_page_token = match (more, items.last().and_then(|i| i.meta())) {
            (true, Some(last)) => {
                PageToken::new(T::KIND, namespace, &selector, &last.namespace, &last.name).encode()
            }
            _ => String::new(),
        };
        Ok(Page {
            items,
            next_page_token,
            resource_version: revision.to_string(),
        })
    }

    /// Replaces an object. `metadata.resource_version`, when set, must be current;
    /// `metadata.uid`, when set, must match. `check` sees (stored, incoming) and may
    /// refuse changes to immutable fields or carry stored fields over.
    ///
    /// Security: the write is pinned to the exact version `check` saw (its
    /// resource_version and uid), so the immutability rules cannot be bypassed by
    /// an object that changed — or was deleted and re-created with other immutable
    /// fields — between the read and the write. Without a client resource_version
    /// a conflict re-runs the whole read-check-write (Kubernetes' GuaranteedUpdate)
    /// up to [`UPDATE_ATTEMPTS`] times, then answers ABORTED; with one, the client
    /// asked for that version only, so its conflict is answered at once.
    pub async fn update<T: Object>(
        &self,
        obj: Option<T>,
        field: &str,
        mut check: impl FnMut(&T, &mut T) -> Result<()>,
    ) -> Result<T> {
        let obj = self.prepare(obj, field)?;
        let meta = obj.meta().cloned().unwrap_or_default();
        let rv = parse_resource_version(
            &format!("{field}.metadata.resource_version"),
            &meta.resource_version,
        )?;
        let mut attempt = 1;
        loop {
            let record = self.store.get(T::KIND, &meta.namespace, &meta.name).await?;
            let current: T = decode(&record)?;
            let mut incoming = obj.clone();
            check(&current, &mut incoming)?;
            let (labels, data) = encode(&incoming);
            // A graceful deletion in progress survives label/annotation updates.
            let deletion_timestamp = record.deletion_timestamp;
            let precondition = Precondition {
                // The client's version when it sent one (a stale one must fail
                // even though `check` passed on the newer object), else the one
                // checked.
                resource_version: Some(rv.unwrap_or(record.resource_version)),
                uid: Some(if meta.uid.is_empty() {
                    record.uid.clone()
                } else {
                    meta.uid.clone()
                }),
            };
            let applied = self
                .store
                .apply(
                    vec![Op::Update {
                        kind: T::KIND,
                        namespace: meta.namespace.clone(),
                        name: meta.name.clone(),
                        precondition,
                        labels,
                        data,
                        deletion_timestamp,
                    }],
                    self.clock.now(),
                )
                .await;
            let changes = match applied {
                Ok(c) => c,
                Err(Error::Conflict(_)) if rv.is_none() && attempt < UPDATE_ATTEMPTS => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let first = changes
                .first()
                .ok_or_else(|| Error::Internal("update returned no change".into()))?;
            return decode(&first.record);
        }
    }

    /// Deletes an object now (with optional preconditions); `extra_before` ops run
    /// first in the same transaction (namespace contents).
    pub async fn delete<T: Object>(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
        uid: &str,
        extra_before: Vec<Op>,
    ) -> Result<T> {
        check_key(T::KIND, namespace, name)?;
        let precondition = Precondition {
            resource_version: parse_resource_version("resource_version", resource_version)?,
            uid: (!uid.is_empty()).then(|| uid.to_string()),
        };
        let mut ops = extra_before;
        ops.push(Op::Delete {
            kind: T::KIND,
            namespace: namespace.to_string(),
            name: name.to_string(),
            precondition,
        });
        let changes = self.store.apply(ops, self.clock.now()).await?;
        let last = changes
            .last()
            .ok_or_else(|| Error::Internal("delete returned no change".into()))?;
        decode(&last.record)
    }
}
