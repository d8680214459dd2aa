//! The RBAC policy as decoded objects, rebuilt from the index only when an RBAC
//! object changed (the index's per-kind generation), so a decision decodes nothing
//! and reads no database: a binding change takes effect as soon as the feed
//! delivers it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use badge_core::Kind;
use badge_core::rbac::{Binding, Policy, Role};
use badge_proto::rbac as pb;
use badge_records::{Index, decode};

/// The four RBAC kinds.
pub const RBAC_KINDS: [Kind; 4] = [
    Kind::Role,
    Kind::ClusterRole,
    Kind::RoleBinding,
    Kind::ClusterRoleBinding,
];

/// Decoded roles and bindings at one index generation.
#[derive(Default)]
pub struct Snapshot {
    generation: u64,
    cluster_roles: HashMap<String, Role>,
    roles: HashMap<(String, String), Role>,
    cluster_role_bindings: Vec<Binding>,
    role_bindings: HashMap<String, Vec<Binding>>,
}

impl Snapshot {
    fn build(index: &Index, generation: u64) -> Snapshot {
        let mut s = Snapshot {
            generation,
            ..Snapshot::default()
        };
        // A record that does not decode (never written by this version) grants
        // nothing rather than failing every decision.
        for r in index.list(Kind::ClusterRole) {
            if let Ok(o) = decode::<pb::ClusterRole>(&r) {
                let role = badge_records::rbac::role(o.metadata.as_ref(), &o.rules);
                s.cluster_roles.insert(role.name.clone(), role);
            }
        }
        for r in index.list(Kind::Role) {
            if let Ok(o) = decode::<pb::Role>(&r) {
                let role = badge_records::rbac::role(o.metadata.as_ref(), &o.rules);
                s.roles
                    .insert((role.namespace.clone(), role.name.clone()), role);
            }
        }
        for r in index.list(Kind::ClusterRoleBinding) {
            if let Ok(o) = decode::<pb::ClusterRoleBinding>(&r) {
                s.cluster_role_bindings.push(badge_records::rbac::binding(
                    o.metadata.as_ref(),
                    &o.subjects,
                    o.role_ref.as_ref(),
                ));
            }
        }
        for r in index.list(Kind::RoleBinding) {
            if let Ok(o) = decode::<pb::RoleBinding>(&r) {
                let b = badge_records::rbac::binding(
                    o.metadata.as_ref(),
                    &o.subjects,
                    o.role_ref.as_ref(),
                );
                s.role_bindings
                    .entry(b.namespace.clone())
                    .or_default()
                    .push(b);
            }
        }
        // Deterministic order, so the binding named in a reason does not depend on
        // hash order.
        s.cluster_role_bindings.sort_by(|a, b| a.name.cmp(&b.name));
        for list in s.role_bindings.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        s
    }
}

impl Policy for Snapshot {
    fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>> {
        self.cluster_roles.get(name).map(Cow::Borrowed)
    }

    fn role(&self, ns: &str, name: &str) -> Option<Cow<'_, Role>> {
        self.roles
            .get(&(ns.to_owned(), name.to_owned()))
            .map(Cow::Borrowed)
    }

    fn cluster_role_bindings(&self) -> Cow<'_, [Binding]> {
        Cow::Borrowed(&self.cluster_role_bindings)
    }

    fn role_bindings(&self, ns: &str) -> Cow<'_, [Binding]> {
        self.role_bindings
            .get(ns)
            .map_or(Cow::Borrowed(&[]), |b| Cow::Borrowed(b))
    }
}

/// The current policy of an index that follows [`RBAC_KINDS`].
pub struct RbacPolicy {
    index: Index,
    current: RwLock<Arc<Snapshot>>,
}

impl RbacPolicy {
    pub fn new(index: Index) -> Self {
        RbacPolicy {
            index,
            current: RwLock::new(Arc::new(Snapshot {
                generation: u64::MAX,
                ..Snapshot::default()
            })),
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Whether the index has loaded once (before that, nothing is known).
    pub fn is_loaded(&self) -> bool {
        self.index.revision() > 0
    }

    /// The policy as the index has it now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let generation = self.index.generation(&RBAC_KINDS);
        if let Ok(s) = self.current.read()
            && s.generation == generation
        {
            return s.clone();
        }
        let fresh = Arc::new(Snapshot::build(&self.index, generation));
        if let Ok(mut s) = self.current.write() {
            *s = fresh.clone();
        }
        fresh
    }
}
