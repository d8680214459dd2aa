//! The RBAC policy as decoded objects, rebuilt from the index only when an RBAC
//! object changed (the index's per-kind generation), so a decision decodes nothing
//! and reads no database: a binding change takes effect as soon as the feed
//! delivers it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use badge_core::Kind;
use badge_core::rbac::{Binding, IndexedBindings, Policy, Role, UserInfo};
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
    /// Namespace → name → Role (looked up by `&str`, without building a key).
    roles: HashMap<String, HashMap<String, Role>>,
    /// Sorted by name and indexed by subject: a decision visits only the bindings
    /// that name the user or one of its groups.
    cluster_role_bindings: IndexedBindings,
    /// Namespace → its RoleBindings, likewise.
    role_bindings: HashMap<String, IndexedBindings>,
}

impl Snapshot {
    fn build(index: &Index, generation: u64) -> Snapshot {
        let mut s = Snapshot {
            generation,
            ..Snapshot::default()
        };
        let mut cluster_role_bindings = Vec::new();
        let mut role_bindings: HashMap<String, Vec<Binding>> = HashMap::new();
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
                    .entry(role.namespace.clone())
                    .or_default()
                    .insert(role.name.clone(), role);
            }
        }
        for r in index.list(Kind::ClusterRoleBinding) {
            if let Ok(o) = decode::<pb::ClusterRoleBinding>(&r) {
                cluster_role_bindings.push(badge_records::rbac::binding(
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
                role_bindings
                    .entry(b.namespace.clone())
                    .or_default()
                    .push(b);
            }
        }
        // Deterministic order, so the binding named in a reason does not depend on
        // hash order.
        cluster_role_bindings.sort_by(|a, b| a.name.cmp(&b.name));
        s.cluster_role_bindings = IndexedBindings::new(cluster_role_bindings);
        s.role_bindings = role_bindings
            .into_iter()
            .map(|(ns, mut list)| {
                list.sort_by(|a, b| a.name.cmp(&b.name));
                (ns, IndexedBindings::new(list))
            })
            .collect();
        s
    }
}

impl Policy for Snapshot {
    fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>> {
        self.cluster_roles.get(name).map(Cow::Borrowed)
    }

    fn role(&self, ns: &str, name: &str) -> Option<Cow<'_, Role>> {
        self.roles
            .get(ns)
            .and_then(|roles| roles.get(name))
            .map(Cow::Borrowed)
    }

    fn cluster_role_bindings(&self) -> Cow<'_, [Binding]> {
        Cow::Borrowed(self.cluster_role_bindings.bindings())
    }

    fn role_bindings(&self, ns: &str) -> Cow<'_, [Binding]> {
        self.role_bindings
            .get(ns)
            .map_or(Cow::Borrowed(&[]), |b| Cow::Borrowed(b.bindings()))
    }

    fn visit_candidate_bindings(
        &self,
        namespace: &str,
        user: &UserInfo,
        visit: &mut dyn FnMut(&Binding) -> bool,
    ) -> bool {
        let bindings = if namespace.is_empty() {
            Some(&self.cluster_role_bindings)
        } else {
            self.role_bindings.get(namespace)
        };
        bindings.is_none_or(|b| b.visit_candidates(user, visit))
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
