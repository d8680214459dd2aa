//! RBAC objects between their wire form and the rules in `badge_core::rbac`.

use badge_core::rbac;
use badge_proto::meta::ObjectMeta;
use badge_proto::rbac as pb;

pub fn rule(r: &pb::PolicyRule) -> rbac::PolicyRule {
    rbac::PolicyRule {
        verbs: r.verbs.clone(),
        api_groups: r.api_groups.clone(),
        resources: r.resources.clone(),
        resource_names: r.resource_names.clone(),
        non_resource_urls: r.non_resource_urls.clone(),
    }
}

fn subject(s: &pb::Subject) -> rbac::Subject {
    rbac::Subject {
        kind: s.kind.clone(),
        api_group: s.api_group.clone(),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
    }
}

fn subject_to_pb(s: &rbac::Subject) -> pb::Subject {
    pb::Subject {
        kind: s.kind.clone(),
        api_group: s.api_group.clone(),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
    }
}

fn role_ref(r: Option<&pb::RoleRef>) -> rbac::RoleRef {
    let r = r.cloned().unwrap_or_default();
    rbac::RoleRef {
        api_group: r.api_group,
        kind: r.kind,
        name: r.name,
    }
}

/// A Role (namespace set) or ClusterRole (namespace empty).
pub fn role(meta: Option<&ObjectMeta>, rules: &[pb::PolicyRule]) -> rbac::Role {
    let m = meta.cloned().unwrap_or_default();
    rbac::Role {
        namespace: m.namespace,
        name: m.name,
        rules: rules.iter().map(rule).collect(),
    }
}

/// A RoleBinding (namespace set) or ClusterRoleBinding (namespace empty).
pub fn binding(
    meta: Option<&ObjectMeta>,
    subjects: &[pb::Subject],
    role_ref_: Option<&pb::RoleRef>,
) -> rbac::Binding {
    let m = meta.cloned().unwrap_or_default();
    rbac::Binding {
        namespace: m.namespace,
        name: m.name,
        role_ref: role_ref(role_ref_),
        subjects: subjects.iter().map(subject).collect(),
    }
}

/// Applies Kubernetes' defaults to a binding's wire form (api groups, a
/// ServiceAccount subject's namespace in a RoleBinding) and returns the rules'
/// view of it.
pub fn default_binding(
    meta: Option<&ObjectMeta>,
    subjects: &mut [pb::Subject],
    role_ref_: &mut Option<pb::RoleRef>,
) -> rbac::Binding {
    let mut b = binding(meta, subjects, role_ref_.as_ref());
    rbac::default_binding(&mut b);
    for (wire, rule) in subjects.iter_mut().zip(&b.subjects) {
        *wire = subject_to_pb(rule);
    }
    *role_ref_ = Some(pb::RoleRef {
        api_group: b.role_ref.api_group.clone(),
        kind: b.role_ref.kind.clone(),
        name: b.role_ref.name.clone(),
    });
    b
}

/// A rule in its wire form.
pub fn rule_to_pb(r: &rbac::PolicyRule) -> pb::PolicyRule {
    pb::PolicyRule {
        verbs: r.verbs.clone(),
        api_groups: r.api_groups.clone(),
        resources: r.resources.clone(),
        resource_names: r.resource_names.clone(),
        non_resource_urls: r.non_resource_urls.clone(),
    }
}

/// A ClusterRole in its wire form, with `meta`.
pub fn cluster_role_to_pb(role: &rbac::Role, meta: ObjectMeta) -> pb::ClusterRole {
    pb::ClusterRole {
        metadata: Some(meta),
        rules: role.rules.iter().map(rule_to_pb).collect(),
    }
}

/// A ClusterRoleBinding in its wire form, with `meta`.
pub fn cluster_role_binding_to_pb(b: &rbac::Binding, meta: ObjectMeta) -> pb::ClusterRoleBinding {
    pb::ClusterRoleBinding {
        metadata: Some(meta),
        subjects: b.subjects.iter().map(subject_to_pb).collect(),
        role_ref: Some(pb::RoleRef {
            api_group: b.role_ref.api_group.clone(),
            kind: b.role_ref.kind.clone(),
            name: b.role_ref.name.clone(),
        }),
    }
}
