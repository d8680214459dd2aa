//! RBAC as Kubernetes has it (`rbac.authorization.k8s.io/v1`), as plain types and pure
//! functions: matching (`k8s.io/component-helpers/auth/rbac/v1/evaluation_helpers.go`),
//! the authorizer (`plugin/pkg/auth/authorizer/rbac/rbac.go`,
//! `pkg/registry/rbac/validation/rule.go`), object validation
//! (`pkg/apis/rbac/validation/validation.go`) and escalation prevention
//! (`ConfirmNoEscalation`, `policy_comparator.go`).
//!
//! The types are Badge's own, with no proto dependency: the service converts.
//! [`Policy`] is what the evaluator reads (the in-memory index in the service).
//!
//! Where Badge differs from Kubernetes on purpose:
//!
//! - A denial says `no RBAC policy matched`, where Kubernetes leaves the reason empty.
//!   When a binding that applies to the user names a role that does not exist, the
//!   denial says so (Kubernetes reports those as `... not found` errors in the reason).
//! - Role, binding and role_ref names follow Kubernetes' path-segment rule (not `.` or
//!   `..`, no `/` or `%`; `:` is fine, as in `system:auth-delegator`), and Badge also
//!   limits them to 253 characters without whitespace or control characters.
//! - Empty strings in `verbs`, `resources`, `resource_names` and `non_resource_urls`
//!   are refused (they can never match), and a non-resource URL must be `*` or start
//!   with `/`. An empty string in `api_groups` is the core group and stays valid.
//! - A ServiceAccount subject's namespace, when given, must be a DNS label.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::FieldViolation;
use crate::names::{invalid_value, quote, validate_dns_label, validate_dns_subdomain};
use crate::user::SERVICE_ACCOUNT_USERNAME_PREFIX;

/// The API group of RBAC objects; role_refs and User/Group subjects name it.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The wildcard of verbs, api groups, resources and non-resource URLs.
pub const WILDCARD: &str = "*";
/// role_ref kind of a namespaced role.
pub const KIND_ROLE: &str = "Role";
/// role_ref kind of a cluster role.
pub const KIND_CLUSTER_ROLE: &str = "ClusterRole";
/// Subject kind: a user, matched by name.
pub const KIND_USER: &str = "User";
/// Subject kind: a group, matched by membership.
pub const KIND_GROUP: &str = "Group";
/// Subject kind: a service account, matched by `system:serviceaccount:<ns>:<name>`.
pub const KIND_SERVICE_ACCOUNT: &str = "ServiceAccount";
/// The reason of a denial.
pub const NO_MATCH_REASON: &str = "no RBAC policy matched";
/// Longest role or binding name Badge accepts.
pub const RBAC_NAME_MAX_LEN: usize = 253;

/// One rule of a role. Resource rules use `api_groups`, `resources` and
/// `resource_names`; non-resource rules (ClusterRoles only) use `non_resource_urls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// Who a binding grants to: kind `User`, `Group` or `ServiceAccount`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub kind: String,
    pub api_group: String,
    pub name: String,
    pub namespace: String,
}

/// The role a binding grants: kind `Role` or `ClusterRole`. Immutable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleRef {
    pub api_group: String,
    pub kind: String,
    pub name: String,
}

/// A Role (namespace set) or ClusterRole (namespace empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    pub namespace: String,
    pub name: String,
    pub rules: Vec<PolicyRule>,
}

impl Role {
    /// A ClusterRole: no namespace.
    pub fn is_cluster_role(&self) -> bool {
        self.namespace.is_empty()
    }
}

/// A RoleBinding (namespace set) or ClusterRoleBinding (namespace empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub namespace: String,
    pub name: String,
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

impl Binding {
    /// A ClusterRoleBinding: no namespace.
    pub fn is_cluster_binding(&self) -> bool {
        self.namespace.is_empty()
    }

    /// `ClusterRoleBinding "<name>"` or `RoleBinding "<name>/<namespace>"`, as
    /// Kubernetes names the source of a grant.
    pub fn describe(&self) -> String {
        if self.is_cluster_binding() {
            format!("ClusterRoleBinding {}", q(&self.name))
        } else {
            format!(
                "RoleBinding {}",
                q(&format!("{}/{}", self.name, self.namespace))
            )
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request does. `namespace` empty means a cluster-scoped resource (or all
/// namespaces); `name` empty means a collection (list, watch, create).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        namespace: String,
        api_group: String,
        resource: String,
        subresource: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    /// The namespace whose RoleBindings count: the request's for resource requests,
    /// none for non-resource requests.
    pub fn namespace(&self) -> &str {
        match self {
            Attributes::Resource { namespace, .. } => namespace,
            Attributes::NonResource { .. } => "",
        }
    }
}

/// The authorizer's answer. `allowed == false` is Kubernetes' "no opinion": RBAC has
/// no deny rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// What the evaluator reads (an index in the service): roles by namespace/name,
/// cluster roles, bindings. Borrowed where the policy holds them: every authorized
/// RPC walks the bindings, and copying them per decision was the largest cost of an
/// ext_authz Check (perf: 18 % of the server's CPU).
pub trait Policy {
    fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>>;
    fn role(&self, ns: &str, name: &str) -> Option<Cow<'_, Role>>;
    fn cluster_role_bindings(&self) -> Cow<'_, [Binding]>;
    fn role_bindings(&self, ns: &str) -> Cow<'_, [Binding]>;

    /// Calls `visit` for the bindings of `namespace` (empty: the
    /// ClusterRoleBindings) that may apply to `user`, in the order of
    /// [`Policy::cluster_role_bindings`] / [`Policy::role_bindings`], until it
    /// returns false; returns false if it stopped. A superset is correct (the
    /// evaluator matches every subject again), so the default is every binding; an
    /// index ([`IndexedBindings`]) skips the ones that name none of the user's
    /// names or groups.
    fn visit_candidate_bindings(
        &self,
        namespace: &str,
        user: &UserInfo,
        visit: &mut dyn FnMut(&Binding) -> bool,
    ) -> bool {
        let _ = user;
        let bindings = if namespace.is_empty() {
            self.cluster_role_bindings()
        } else {
            self.role_bindings(namespace)
        };
        bindings.iter().all(visit)
    }
}

/// Bindings (one namespace's RoleBindings, or the ClusterRoleBindings) in a fixed
/// order, with the positions of the bindings that name each user and each group.
///
/// Why: every authorized RPC and every ext_authz Check (twice: Envoy's own `create
/// checks`, then the request) decides by walking the bindings, and matching every
/// subject of every binding was most of RBAC's cost. The index only narrows the
/// walk: [`applies_to`] still decides each candidate, so the semantics are those of
/// the full walk by construction, and candidates are visited in the bindings'
/// order, so the binding named in a reason is the one the full walk names.
///
/// Keys, as [`applies_to`] matches:
/// - `User` subjects by name;
/// - `ServiceAccount` subjects by the username they match,
///   `system:serviceaccount:<ns>:<name>` (`<ns>` defaulting to the binding's
///   namespace; none in a ClusterRoleBinding matches nobody and is not indexed) —
///   the same map as users: a `User` subject `system:serviceaccount:a:b` matches
///   that service account too;
/// - `Group` subjects by group name (`system:authenticated` and the other
///   system groups are ordinary groups here: the user carries them);
/// - any other kind matches nobody and is not indexed.
#[derive(Debug, Clone, Default)]
pub struct IndexedBindings {
    bindings: Vec<Binding>,
    /// Username → ascending positions in `bindings`.
    by_user: HashMap<String, Vec<usize>>,
    /// Group → ascending positions in `bindings`.
    by_group: HashMap<String, Vec<usize>>,
}

/// How many position lists [`IndexedBindings::visit_candidates`] merges on the
/// stack; a user with more bound names and groups takes a sorted copy instead.
const MERGE_WAYS: usize = 8;

impl IndexedBindings {
    /// Indexes `bindings`, keeping their order (the caller's: sorted by name in the
    /// service).
    pub fn new(bindings: Vec<Binding>) -> Self {
        let mut by_user: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_group: HashMap<String, Vec<usize>> = HashMap::new();
        // Positions are pushed in ascending order; a binding naming the same key
        // twice is listed once.
        let add = |map: &mut HashMap<String, Vec<usize>>, key: String, at: usize| {
            let list = map.entry(key).or_default();
            if list.last() != Some(&at) {
                list.push(at);
            }
        };
        for (at, b) in bindings.iter().enumerate() {
            for s in &b.subjects {
                match s.kind.as_str() {
                    KIND_USER => add(&mut by_user, s.name.clone(), at),
                    KIND_GROUP => add(&mut by_group, s.name.clone(), at),
                    KIND_SERVICE_ACCOUNT => {
                        let ns = if s.namespace.is_empty() {
                            &b.namespace
                        } else {
                            &s.namespace
                        };
                        if !ns.is_empty() {
                            add(
                                &mut by_user,
                                crate::service_account_username(ns, &s.name),
                                at,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        IndexedBindings {
            bindings,
            by_user,
            by_group,
        }
    }

    /// Every binding, in order.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Calls `visit` for every binding that names `user`'s name or one of its
    /// groups, each once and in order, until it returns false; returns false if it
    /// stopped.
    pub fn visit_candidates(
        &self,
        user: &UserInfo,
        visit: &mut dyn FnMut(&Binding) -> bool,
    ) -> bool {
        let lists = std::iter::once(self.by_user.get(user.name.as_str()))
            .chain(user.groups.iter().map(|g| self.by_group.get(g.as_str())))
            .flatten()
            .filter(|l| !l.is_empty());
        // A k-way merge of the ascending lists, without allocating for the usual
        // few (the name, three or four groups).
        let mut heads: [&[usize]; MERGE_WAYS] = [&[]; MERGE_WAYS];
        let mut n = 0;
        for list in lists {
            let Some(slot) = heads.get_mut(n) else {
                return self.visit_sorted(user, visit);
            };
            *slot = list;
            n += 1;
        }
        let heads = heads.get_mut(..n).unwrap_or_default();
        loop {
            let Some(next) = heads.iter().filter_map(|h| h.first()).min().copied() else {
                return true;
            };
            for h in heads.iter_mut() {
                if let Some((&first, rest)) = h.split_first()
                    && first == next
                {
                    *h = rest;
                }
            }
            if let Some(b) = self.bindings.get(next)
                && !visit(b)
            {
                return false;
            }
        }
    }

    /// [`IndexedBindings::visit_candidates`] through a sorted copy of the
    /// positions: for a user with more than [`MERGE_WAYS`] bound names and groups.
    fn visit_sorted(&self, user: &UserInfo, visit: &mut dyn FnMut(&Binding) -> bool) -> bool {
        let mut at: Vec<usize> = std::iter::once(self.by_user.get(user.name.as_str()))
            .chain(user.groups.iter().map(|g| self.by_group.get(g.as_str())))
            .flatten()
            .flatten()
            .copied()
            .collect();
        at.sort_unstable();
        at.dedup();
        at.iter().filter_map(|&i| self.bindings.get(i)).all(visit)
    }
}

// ---------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------

/// A name in double quotes, as Go's `%q`, for decision reasons. Unlike
/// [`quote`] it never cuts: the names in a reason come from validated objects.
fn q(value: &str) -> String {
    format!("{value:?}")
}

fn has(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == value)
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == WILDCARD || v == verb)
}

fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    rule.api_groups.iter().any(|g| g == WILDCARD || g == group)
}

/// `*`, the exact `resource` or `resource/subresource`, or `*/subresource`.
fn resource_matches(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        if r == WILDCARD {
            return true;
        }
        if subresource.is_empty() {
            return r == resource;
        }
        // `<resource>/<subresource>` or `*/<subresource>`
        r.strip_suffix(subresource)
            .and_then(|head| head.strip_suffix('/'))
            .is_some_and(|head| head == resource || head == WILDCARD)
    })
}

/// No names means any name; otherwise the request's name must be listed (so a
/// request without a name, e.g. list, matches only rules without names).
fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    rule.resource_names.is_empty() || has(&rule.resource_names, name)
}

/// `*`, exact, or prefix when the rule URL ends in `*`.
fn url_matches(rule_url: &str, path: &str) -> bool {
    rule_url == WILDCARD
        || rule_url == path
        || (rule_url.ends_with('*') && path.starts_with(rule_url.trim_end_matches('*')))
}

/// Whether one rule allows the request (Kubernetes' `RuleAllows`).
pub fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::Resource {
            verb,
            api_group,
            resource,
            subresource,
            name,
            ..
        } => {
            verb_matches(rule, verb)
                && api_group_matches(rule, api_group)
                && resource_matches(rule, resource, subresource)
                && resource_name_matches(rule, name)
        }
        Attributes::NonResource { verb, path } => {
            verb_matches(rule, verb) && rule.non_resource_urls.iter().any(|u| url_matches(u, path))
        }
    }
}

/// Whether `subject` of a binding in `binding_namespace` (empty for a
/// ClusterRoleBinding) is `user`. A ServiceAccount subject without a namespace is one
/// of the binding's namespace; in a ClusterRoleBinding it matches nobody.
pub fn applies_to(subject: &Subject, user: &UserInfo, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        KIND_USER => user.name == subject.name,
        KIND_GROUP => has(&user.groups, &subject.name),
        KIND_SERVICE_ACCOUNT => {
            let ns = if subject.namespace.is_empty() {
                binding_namespace
            } else {
                &subject.namespace
            };
            !ns.is_empty()
                && user
                    .name
                    .strip_prefix(SERVICE_ACCOUNT_USERNAME_PREFIX)
                    .and_then(|rest| rest.strip_prefix(ns))
                    .and_then(|rest| rest.strip_prefix(':'))
                    == Some(subject.name.as_str())
        }
        _ => false,
    }
}

/// `ServiceAccount "<name>/<namespace>"`, `User "<name>"`, `Group "<name>"`, as
/// Kubernetes describes the subject of a grant.
fn describe_subject(subject: &Subject, binding_namespace: &str) -> String {
    if subject.kind == KIND_SERVICE_ACCOUNT {
        let ns = if subject.namespace.is_empty() {
            binding_namespace
        } else {
            &subject.namespace
        };
        format!("{} {}", subject.kind, q(&format!("{}/{ns}", subject.name)))
    } else {
        format!("{} {}", subject.kind, q(&subject.name))
    }
}

/// The role `role_ref` of a binding in `binding_namespace` names, if it exists. A
/// ClusterRoleBinding can only refer to a ClusterRole.
pub fn referenced_role<'p>(
    policy: &'p dyn Policy,
    binding_namespace: &str,
    role_ref: &RoleRef,
) -> Option<Cow<'p, Role>> {
    match role_ref.kind.as_str() {
        KIND_CLUSTER_ROLE => policy.cluster_role(&role_ref.name),
        KIND_ROLE if !binding_namespace.is_empty() => {
            policy.role(binding_namespace, &role_ref.name)
        }
        _ => None,
    }
}

/// Calls `visit(binding, subject, role)` for every binding that applies to `user`:
/// ClusterRoleBindings first, then the RoleBindings of `namespace` (none when empty).
/// `role` is `None` when the binding names an absent role. `visit` returns false to
/// stop.
fn visit_bindings(
    policy: &dyn Policy,
    user: &UserInfo,
    namespace: &str,
    visit: &mut dyn FnMut(&Binding, &Subject, Option<&Role>) -> bool,
) {
    let mut walk = |binding_ns: &str| -> bool {
        // The policy may narrow the bindings to candidates (an index); whether one
        // applies is decided here, subject by subject, either way.
        policy.visit_candidate_bindings(binding_ns, user, &mut |b| {
            if b.namespace != binding_ns {
                return true; // a RoleBinding grants only in its own namespace
            }
            let Some(subject) = b.subjects.iter().find(|s| applies_to(s, user, binding_ns)) else {
                return true;
            };
            let role = referenced_role(policy, binding_ns, &b.role_ref);
            visit(b, subject, role.as_deref())
        })
    };
    if !walk("") {
        return;
    }
    if !namespace.is_empty() {
        walk(namespace);
    }
}

/// Authorizes `attrs` for `user`: allowed when some rule of a role bound to the user
/// allows it. ClusterRoleBindings are walked first, then the RoleBindings of the
/// request's namespace; RoleBindings never grant non-resource URLs or cluster-scoped
/// requests. An allow names the binding, role and subject, e.g.
/// `RBAC: allowed by RoleBinding "read-jobs/maintenance" of Role "job-reader" to
/// ServiceAccount "builder/dev"`.
pub fn authorize(policy: &dyn Policy, user: &UserInfo, attrs: &Attributes) -> Decision {
    let mut allowed_by: Option<String> = None;
    let mut absent: Vec<String> = Vec::new();
    visit_bindings(policy, user, attrs.namespace(), &mut |b, subject, role| {
        let Some(role) = role else {
            absent.push(format!(
                "{} refers to absent {} {}",
                b.describe(),
                b.role_ref.kind,
                q(&b.role_ref.name)
            ));
            return true;
        };
        if role.rules.iter().any(|r| rule_allows(r, attrs)) {
            allowed_by = Some(format!(
                "RBAC: allowed by {} of {} {} to {}",
                b.describe(),
                b.role_ref.kind,
                q(&b.role_ref.name),
                describe_subject(subject, &b.namespace)
            ));
            return false;
        }
        true
    });
    match allowed_by {
        Some(reason) => Decision {
            allowed: true,
            reason,
        },
        None if absent.is_empty() => Decision {
            allowed: false,
            reason: NO_MATCH_REASON.to_owned(),
        },
        None => Decision {
            allowed: false,
            reason: format!("{NO_MATCH_REASON} ({})", absent.join("; ")),
        },
    }
}

/// Whether `user` may do `attrs`: [`authorize`]'s `allowed` without building the
/// reason. For the per-request paths (every authorized RPC, every ext_authz Check),
/// which need the reason only for a denial and then ask [`authorize`].
pub fn allows(policy: &dyn Policy, user: &UserInfo, attrs: &Attributes) -> bool {
    let mut allowed = false;
    visit_bindings(policy, user, attrs.namespace(), &mut |_, _, role| {
        if role.is_some_and(|r| r.rules.iter().any(|rule| rule_allows(rule, attrs))) {
            allowed = true;
            return false;
        }
        true
    });
    allowed
}

/// Every rule `user` holds in `namespace`: those of ClusterRoleBindings, plus those of
/// the RoleBindings of `namespace` when it is not empty (Kubernetes' `RulesFor`).
pub fn rules_for(policy: &dyn Policy, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
    let mut rules = Vec::new();
    visit_bindings(policy, user, namespace, &mut |_, _, role| {
        if let Some(role) = role {
            rules.extend(role.rules.iter().cloned());
        }
        true
    });
    rules
}

// ---------------------------------------------------------------------------------
// Escalation prevention
// ---------------------------------------------------------------------------------

fn one(value: &str) -> Vec<String> {
    vec![value.to_owned()]
}

/// Splits a rule into rules of one verb, group, resource and name (or one verb and
/// URL) each (Kubernetes' `BreakdownRule`).
pub fn breakdown_rule(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let base = PolicyRule {
                    verbs: one(verb),
                    api_groups: one(group),
                    resources: one(resource),
                    ..PolicyRule::default()
                };
                if rule.resource_names.is_empty() {
                    out.push(base);
                } else {
                    out.extend(rule.resource_names.iter().map(|n| PolicyRule {
                        resource_names: one(n),
                        ..base.clone()
                    }));
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
    }
    out
}

/// Whether a held resource list covers one requested resource: `*`, the same
/// string, or `*/<sub>` for a requested `<res>/<sub>`. A requested `*` is covered
/// only by `*`.
fn resource_covered(held: &[String], requested: &str) -> bool {
    if has(held, WILDCARD) || has(held, requested) {
        return true;
    }
    match requested.split_once('/') {
        Some((_, sub)) => has(held, &format!("*/{sub}")),
        None => false,
    }
}

fn url_covered(held: &[String], requested: &str) -> bool {
    held.iter().any(|u| url_matches(u, requested))
}

/// Whether one held rule covers a broken-down requested rule (Kubernetes'
/// `ruleCovers`): wildcards in the request are covered only by wildcards held.
fn rule_covers(held: &PolicyRule, requested: &PolicyRule) -> bool {
    let covers_all = |held: &[String], requested: &[String]| {
        has(held, WILDCARD) || requested.iter().all(|r| has(held, r))
    };
    if !covers_all(&held.verbs, &requested.verbs) {
        return false;
    }
    let names = if requested.resource_names.is_empty() {
        held.resource_names.is_empty()
    } else {
        held.resource_names.is_empty()
            || requested
                .resource_names
                .iter()
                .all(|n| has(&held.resource_names, n))
    };
    names
        && covers_all(&held.api_groups, &requested.api_groups)
        && requested
            .resources
            .iter()
            .all(|r| resource_covered(&held.resources, r))
        && requested
            .non_resource_urls
            .iter()
            .all(|u| url_covered(&held.non_resource_urls, u))
}

/// The broken-down parts of `requested` that no rule of `held` covers (Kubernetes'
/// `Covers`); empty when `held` covers everything.
pub fn uncovered(held: &[PolicyRule], requested: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    for sub in requested.iter().flat_map(breakdown_rule) {
        if !held.iter().any(|h| rule_covers(h, &sub)) && !out.contains(&sub) {
            out.push(sub);
        }
    }
    out
}

/// Escalation prevention (Kubernetes' `ConfirmNoEscalation`): the parts of `rules`
/// that `user` does not hold in `namespace` (cluster-wide rules plus the rules of
/// RoleBindings in `namespace`; only cluster-wide ones when it is empty), broken down
/// to one verb, group, resource and name (or URL) each, for the error message. Empty
/// means no escalation.
pub fn uncovered_rules(
    policy: &dyn Policy,
    user: &UserInfo,
    namespace: &str,
    rules: &[PolicyRule],
) -> Vec<PolicyRule> {
    uncovered(&rules_for(policy, user, namespace), rules)
}

/// A list as Go's `%q` prints a `[]string`: `["a" "b"]`.
fn go_list(v: &[String]) -> String {
    let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// `{APIGroups:["batch"], Resources:["jobs"], Verbs:["get" "list"]}`, as Kubernetes
/// lists the permissions an escalation attempt lacks (`CompactString`: groups,
/// resources, URLs, names, verbs).
fn describe_rule(r: &PolicyRule) -> String {
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:{}", go_list(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:{}", go_list(&r.resources)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!("NonResourceURLs:{}", go_list(&r.non_resource_urls)));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!("ResourceNames:{}", go_list(&r.resource_names)));
    }
    if !r.verbs.is_empty() {
        parts.push(format!("Verbs:{}", go_list(&r.verbs)));
    }
    format!("{{{}}}", parts.join(", "))
}

/// Kubernetes' `CompactRules`: broken-down rules of one group, one resource and at
/// most one name that differ only by verb become one rule with those verbs; other
/// rules stay as they are.
fn compact_rules(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    let mut simple: Vec<PolicyRule> = Vec::new();
    for r in rules {
        let is_simple = r.api_groups.len() == 1
            && r.resources.len() == 1
            && r.resource_names.len() <= 1
            && r.non_resource_urls.is_empty();
        if !is_simple {
            out.push(r.clone());
            continue;
        }
        match simple.iter_mut().find(|s| {
            s.api_groups == r.api_groups
                && s.resources == r.resources
                && s.resource_names == r.resource_names
        }) {
            Some(s) => s.verbs.extend(r.verbs.iter().cloned()),
            None => simple.push(r.clone()),
        }
    }
    out.extend(simple);
    out
}

/// `Err(PermissionDenied)` with Kubernetes' `ConfirmNoEscalation` text when `missing`
/// (from [`uncovered_rules`]) is not empty: `user` in `groups` tried to write
/// `resource` `name` with rules it does not hold.
pub fn escalation_error(
    user: &str,
    groups: &[String],
    resource: &str,
    name: &str,
    missing: &[PolicyRule],
) -> crate::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    // Kubernetes' `ConfirmNoEscalation` text: the compacted missing rules, sorted
    // and without duplicates, one a line; the groups as Go's `%q` prints them.
    let rules: std::collections::BTreeSet<String> =
        compact_rules(missing).iter().map(describe_rule).collect();
    let rules: Vec<String> = rules.into_iter().collect();
    Err(crate::Error::PermissionDenied(format!(
        "{resource}.{RBAC_GROUP} {name:?} is forbidden: user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user,
        go_list(groups),
        rules.join("\n")
    )))
}

// ---------------------------------------------------------------------------------
// Validation and defaulting
// ---------------------------------------------------------------------------------

/// Problems with a Role, ClusterRole, binding or role_ref name (empty = valid):
/// Kubernetes' `ValidateRBACName` (a path segment: not `.` or `..`, no `/` or `%`),
/// plus Badge's length limit and no whitespace or control characters.
pub fn validate_rbac_name(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    let mut errs = Vec::new();
    if name.len() > RBAC_NAME_MAX_LEN {
        errs.push(format!(
            "must be no more than {RBAC_NAME_MAX_LEN} characters"
        ));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errs.push("may not contain whitespace or control characters".to_owned());
    }
    errs
}

fn check_name(out: &mut Vec<FieldViolation>, field: String, name: &str, what: &str) {
    if name.is_empty() {
        out.push(FieldViolation::new(field, format!("{what} is required")));
    } else {
        for e in validate_rbac_name(name) {
            out.push(FieldViolation::new(&field, invalid_value(name, &e)));
        }
    }
}

fn check_namespace(out: &mut Vec<FieldViolation>, field: String, namespace: &str) {
    for e in validate_dns_label(namespace) {
        out.push(FieldViolation::new(&field, invalid_value(namespace, &e)));
    }
}

fn check_no_empty(out: &mut Vec<FieldViolation>, field: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            out.push(FieldViolation::new(
                format!("{field}[{i}]"),
                "must not be empty",
            ));
        }
    }
}

fn unsupported(value: &str, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| quote(s)).collect();
    format!(
        "unsupported value {}: supported values: {}",
        quote(value),
        list.join(", ")
    )
}

/// Validates one rule at `path` (e.g. `role.rules[0]`); `namespaced` for a Role.
pub fn validate_rule(rule: &PolicyRule, namespaced: bool, path: &str) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let verbs = format!("{path}.verbs");
    if rule.verbs.is_empty() {
        out.push(FieldViolation::new(
            &verbs,
            "verbs must contain at least one value",
        ));
    }
    check_no_empty(&mut out, &verbs, &rule.verbs);

    if !rule.non_resource_urls.is_empty() {
        let urls = format!("{path}.non_resource_urls");
        if namespaced {
            out.push(FieldViolation::new(
                &urls,
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !rule.api_groups.is_empty()
            || !rule.resources.is_empty()
            || !rule.resource_names.is_empty()
        {
            out.push(FieldViolation::new(
                &urls,
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        for (i, u) in rule.non_resource_urls.iter().enumerate() {
            if u != WILDCARD && !u.starts_with('/') {
                out.push(FieldViolation::new(
                    format!("{urls}[{i}]"),
                    invalid_value(u, "a non-resource URL must be '*' or start with '/'"),
                ));
            }
        }
        return out;
    }

    if rule.api_groups.is_empty() {
        out.push(FieldViolation::new(
            format!("{path}.api_groups"),
            "resource rules must supply at least one api group",
        ));
    }
    let resources = format!("{path}.resources");
    if rule.resources.is_empty() {
        out.push(FieldViolation::new(
            &resources,
            "resource rules must supply at least one resource",
        ));
    }
    check_no_empty(&mut out, &resources, &rule.resources);
    check_no_empty(
        &mut out,
        &format!("{path}.resource_names"),
        &rule.resource_names,
    );
    out
}

/// Validates a Role (namespace set) or ClusterRole at `path` (e.g. `role`): the name
/// at `<path>.metadata.name`, a non-empty namespace at `<path>.metadata.namespace`, and
/// every rule at `<path>.rules[i].<field>`. Every violation is returned.
///
/// The name is checked as an RBAC name ([`validate_rbac_name`]), not as a DNS
/// subdomain, so `system:auth-delegator` is valid: the service should check labels
/// and annotations but not run the generic name check on RBAC objects.
pub fn validate_role(role: &Role, path: &str) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    check_name(
        &mut out,
        format!("{path}.metadata.name"),
        &role.name,
        "name",
    );
    if !role.namespace.is_empty() {
        check_namespace(
            &mut out,
            format!("{path}.metadata.namespace"),
            &role.namespace,
        );
    }
    for (i, rule) in role.rules.iter().enumerate() {
        out.extend(validate_rule(
            rule,
            !role.is_cluster_role(),
            &format!("{path}.rules[{i}]"),
        ));
    }
    out
}

/// Validates a RoleBinding (namespace set) or ClusterRoleBinding at `path` (e.g.
/// `role_binding`): name and namespace as [`validate_role`]; `role_ref.api_group` is
/// `rbac.authorization.k8s.io`, `role_ref.kind` is `Role` (RoleBindings only) or
/// `ClusterRole`, `role_ref.name` is required; each subject is a `User` or `Group`
/// (api_group `rbac.authorization.k8s.io`) or a `ServiceAccount` (api_group empty, a
/// DNS-subdomain name, a namespace that is required in ClusterRoleBindings), and has a
/// name. Run [`default_binding`] first to fill what Kubernetes defaults.
pub fn validate_binding(b: &Binding, path: &str) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let cluster = b.is_cluster_binding();
    check_name(&mut out, format!("{path}.metadata.name"), &b.name, "name");
    if !cluster {
        check_namespace(&mut out, format!("{path}.metadata.namespace"), &b.namespace);
    }

    let rr = &b.role_ref;
    if rr.api_group != RBAC_GROUP {
        out.push(FieldViolation::new(
            format!("{path}.role_ref.api_group"),
            unsupported(&rr.api_group, &[RBAC_GROUP]),
        ));
    }
    let kinds: &[&str] = if cluster {
        &[KIND_CLUSTER_ROLE]
    } else {
        &[KIND_ROLE, KIND_CLUSTER_ROLE]
    };
    if !kinds.contains(&rr.kind.as_str()) {
        out.push(FieldViolation::new(
            format!("{path}.role_ref.kind"),
            unsupported(&rr.kind, kinds),
        ));
    }
    check_name(
        &mut out,
        format!("{path}.role_ref.name"),
        &rr.name,
        "role_ref name",
    );

    for (i, s) in b.subjects.iter().enumerate() {
        let sp = format!("{path}.subjects[{i}]");
        let name_field = format!("{sp}.name");
        if s.name.is_empty() {
            out.push(FieldViolation::new(&name_field, "name is required"));
        }
        match s.kind.as_str() {
            KIND_SERVICE_ACCOUNT => {
                if !s.name.is_empty() {
                    for e in validate_dns_subdomain(&s.name) {
                        out.push(FieldViolation::new(&name_field, invalid_value(&s.name, &e)));
                    }
                }
                if !s.api_group.is_empty() {
                    out.push(FieldViolation::new(
                        format!("{sp}.api_group"),
                        unsupported(&s.api_group, &[""]),
                    ));
                }
                if s.namespace.is_empty() {
                    if cluster {
                        out.push(FieldViolation::new(
                            format!("{sp}.namespace"),
                            "namespace is required for a ServiceAccount subject of a ClusterRoleBinding",
                        ));
                    }
                } else {
                    check_namespace(&mut out, format!("{sp}.namespace"), &s.namespace);
                }
            }
            KIND_USER | KIND_GROUP => {
                if s.api_group != RBAC_GROUP {
                    out.push(FieldViolation::new(
                        format!("{sp}.api_group"),
                        unsupported(&s.api_group, &[RBAC_GROUP]),
                    ));
                }
            }
            other => out.push(FieldViolation::new(
                format!("{sp}.kind"),
                unsupported(other, &[KIND_SERVICE_ACCOUNT, KIND_USER, KIND_GROUP]),
            )),
        }
    }
    out
}

/// A ServiceAccount subject without a namespace in a RoleBinding gets the binding's
/// namespace. ClusterRoleBindings are left alone (their SA subjects need one).
pub fn default_subject_namespaces(b: &mut Binding) {
    if b.is_cluster_binding() {
        return;
    }
    for s in &mut b.subjects {
        if s.kind == KIND_SERVICE_ACCOUNT && s.namespace.is_empty() {
            s.namespace = b.namespace.clone();
        }
    }
}

/// Kubernetes' `rbac/v1` defaulting plus [`default_subject_namespaces`]: an empty
/// `role_ref.api_group`, and an empty api_group of User and Group subjects, become
/// `rbac.authorization.k8s.io`.
pub fn default_binding(b: &mut Binding) {
    if b.role_ref.api_group.is_empty() {
        b.role_ref.api_group = RBAC_GROUP.to_owned();
    }
    for s in &mut b.subjects {
        if s.api_group.is_empty() && (s.kind == KIND_USER || s.kind == KIND_GROUP) {
            s.api_group = RBAC_GROUP.to_owned();
        }
    }
    default_subject_namespaces(b);
}

/// role_ref is immutable: a violation at `role_ref` when `new` changes it.
pub fn role_ref_changed(old: &Binding, new: &Binding) -> Option<FieldViolation> {
    if old.role_ref == new.role_ref {
        return None;
    }
    let show = |r: &RoleRef| format!("{} {} ({})", r.kind, quote(&r.name), quote(&r.api_group));
    Some(FieldViolation::new(
        "role_ref",
        format!(
            "cannot change role_ref (immutable): from {} to {}; delete and recreate the binding",
            show(&old.role_ref),
            show(&new.role_ref)
        ),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn res_rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: s(verbs),
            api_groups: s(groups),
            resources: s(resources),
            ..PolicyRule::default()
        }
    }

    fn named_rule(
        verbs: &[&str],
        groups: &[&str],
        resources: &[&str],
        names: &[&str],
    ) -> PolicyRule {
        PolicyRule {
            resource_names: s(names),
            ..res_rule(verbs, groups, resources)
        }
    }

    fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: s(verbs),
            non_resource_urls: s(urls),
            ..PolicyRule::default()
        }
    }

    fn req(verb: &str, ns: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            namespace: ns.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
        }
    }

    fn url(verb: &str, path: &str) -> Attributes {
        Attributes::NonResource {
            verb: verb.into(),
            path: path.into(),
        }
    }

    fn sa(ns: &str, name: &str) -> Subject {
        Subject {
            kind: KIND_SERVICE_ACCOUNT.into(),
            api_group: String::new(),
            name: name.into(),
            namespace: ns.into(),
        }
    }

    fn user_subject(name: &str) -> Subject {
        Subject {
            kind: KIND_USER.into(),
            api_group: RBAC_GROUP.into(),
            name: name.into(),
            namespace: String::new(),
        }
    }

    fn group_subject(name: &str) -> Subject {
        Subject {
            kind: KIND_GROUP.into(),
            api_group: RBAC_GROUP.into(),
            name: name.into(),
            namespace: String::new(),
        }
    }

    fn role(ns: &str, name: &str, rules: Vec<PolicyRule>) -> Role {
        Role {
            namespace: ns.into(),
            name: name.into(),
            rules,
        }
    }

    fn binding(ns: &str, name: &str, kind: &str, role: &str, subjects: Vec<Subject>) -> Binding {
        Binding {
            namespace: ns.into(),
            name: name.into(),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: kind.into(),
                name: role.into(),
            },
            subjects,
        }
    }

    fn sa_user(ns: &str, name: &str) -> UserInfo {
        UserInfo {
            name: crate::service_account_username(ns, name),
            groups: s(&[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
                "system:authenticated",
            ]),
        }
    }

    fn plain_user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: s(groups),
        }
    }

    #[derive(Default)]
    struct MemPolicy {
        roles: Vec<Role>,
        bindings: Vec<Binding>,
    }

    impl Policy for MemPolicy {
        fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>> {
            self.roles
                .iter()
                .find(|r| r.namespace.is_empty() && r.name == name)
                .map(Cow::Borrowed)
        }
        fn role(&self, ns: &str, name: &str) -> Option<Cow<'_, Role>> {
            self.roles
                .iter()
                .find(|r| !ns.is_empty() && r.namespace == ns && r.name == name)
                .map(Cow::Borrowed)
        }
        fn cluster_role_bindings(&self) -> Cow<'_, [Binding]> {
            self.bindings
                .iter()
                .filter(|b| b.namespace.is_empty())
                .cloned()
                .collect()
        }
        fn role_bindings(&self, ns: &str) -> Cow<'_, [Binding]> {
            self.bindings
                .iter()
                .filter(|b| !ns.is_empty() && b.namespace == ns)
                .cloned()
                .collect()
        }
    }

    #[test]
    fn rule_matching_table() {
        #[rustfmt::skip]
        let cases: Vec<(&str, PolicyRule, Attributes, bool)> = vec![
            // verbs
            ("verb exact", res_rule(&["get"], &[""], &["pods"]), req("get", "a", "", "pods", "", "p"), true),
            ("verb other", res_rule(&["get"], &[""], &["pods"]), req("delete", "a", "", "pods", "", "p"), false),
            ("verb wildcard", res_rule(&["*"], &[""], &["pods"]), req("delete", "a", "", "pods", "", "p"), true),
            ("verb one of many", res_rule(&["list", "watch"], &[""], &["pods"]), req("watch", "a", "", "pods", "", ""), true),
            ("verbs are case-sensitive", res_rule(&["GET"], &[""], &["pods"]), req("get", "a", "", "pods", "", ""), false),
            // groups
            ("core group", res_rule(&["get"], &[""], &["pods"]), req("get", "a", "", "pods", "", ""), true),
            ("core rule, other group", res_rule(&["get"], &[""], &["deployments"]), req("get", "a", "apps", "deployments", "", ""), false),
            ("group exact", res_rule(&["get"], &["apps"], &["deployments"]), req("get", "a", "apps", "deployments", "", ""), true),
            ("group wildcard", res_rule(&["get"], &["*"], &["deployments"]), req("get", "a", "apps", "deployments", "", ""), true),
            ("group wildcard matches core", res_rule(&["get"], &["*"], &["pods"]), req("get", "a", "", "pods", "", ""), true),
            ("group mismatch", res_rule(&["get"], &["batch"], &["jobs"]), req("get", "a", "apps", "jobs", "", ""), false),
            // resources
            ("resource wildcard", res_rule(&["get"], &[""], &["*"]), req("get", "a", "", "secrets", "", "x"), true),
            ("resource wildcard covers subresources", res_rule(&["get"], &[""], &["*"]), req("get", "a", "", "pods", "log", "x"), true),
            ("resource mismatch", res_rule(&["get"], &[""], &["pods"]), req("get", "a", "", "secrets", "", ""), false),
            ("pods does not cover pods/log", res_rule(&["get"], &[""], &["pods"]), req("get", "a", "", "pods", "log", "p"), false),
            ("pods/log covers pods/log", res_rule(&["get"], &[""], &["pods/log"]), req("get", "a", "", "pods", "log", "p"), true),
            ("pods/log does not cover pods", res_rule(&["get"], &[""], &["pods/log"]), req("get", "a", "", "pods", "", "p"), false),
            ("pods/log does not cover pods/exec", res_rule(&["get"], &[""], &["pods/log"]), req("get", "a", "", "pods", "exec", "p"), false),
            ("*/scale covers deployments/scale", res_rule(&["update"], &["apps"], &["*/scale"]), req("update", "a", "apps", "deployments", "scale", "d"), true),
            ("*/scale covers statefulsets/scale", res_rule(&["update"], &["apps"], &["*/scale"]), req("update", "a", "apps", "statefulsets", "scale", "d"), true),
            ("*/scale does not cover deployments", res_rule(&["update"], &["apps"], &["*/scale"]), req("update", "a", "apps", "deployments", "", "d"), false),
            ("*/scale does not cover deployments/status", res_rule(&["update"], &["apps"], &["*/scale"]), req("update", "a", "apps", "deployments", "status", "d"), false),
            ("*/scale does not cover a resource named scale", res_rule(&["get"], &[""], &["*/scale"]), req("get", "a", "", "scale", "", ""), false),
            ("*/scale is not a suffix match", res_rule(&["get"], &["apps"], &["*/scale"]), req("get", "a", "apps", "deployments", "ale", "d"), false),
            ("pods/log is not a suffix match", res_rule(&["get"], &[""], &["pods/log"]), req("get", "a", "", "pods", "og", "p"), false),
            ("resource containing a slash", res_rule(&["get"], &[""], &["a/b/c"]), req("get", "a", "", "a/b", "c", ""), true),
            ("token subresource", res_rule(&["create"], &[""], &["serviceaccounts/token"]), req("create", "a", "", "serviceaccounts", "token", "builder"), true),
            // resource names
            ("name listed", named_rule(&["get"], &[""], &["secrets"], &["db", "tls"]), req("get", "a", "", "secrets", "", "tls"), true),
            ("name not listed", named_rule(&["get"], &[""], &["secrets"], &["db"]), req("get", "a", "", "secrets", "", "tls"), false),
            ("names rule vs collection request", named_rule(&["list"], &[""], &["secrets"], &["db"]), req("list", "a", "", "secrets", "", ""), false),
            ("no names = any name", res_rule(&["get"], &[""], &["secrets"]), req("get", "a", "", "secrets", "", "anything"), true),
            ("no names matches collection", res_rule(&["list"], &[""], &["secrets"]), req("list", "a", "", "secrets", "", ""), true),
            // non-resource URLs
            ("url exact", url_rule(&["get"], &["/healthz"]), url("get", "/healthz"), true),
            ("url exact is not prefix", url_rule(&["get"], &["/healthz"]), url("get", "/healthz/etcd"), false),
            ("url prefix", url_rule(&["get"], &["/healthz*"]), url("get", "/healthz/etcd"), true),
            ("url prefix matches itself", url_rule(&["get"], &["/healthz*"]), url("get", "/healthz"), true),
            ("url prefix is a plain string prefix", url_rule(&["get"], &["/healthz*"]), url("get", "/healthzzz"), true),
            ("url prefix mismatch", url_rule(&["get"], &["/healthz*"]), url("get", "/livez"), false),
            ("url /api/* not /api", url_rule(&["get"], &["/api/*"]), url("get", "/api"), false),
            ("url /api/* matches /api/v1", url_rule(&["get"], &["/api/*"]), url("get", "/api/v1"), true),
            ("url wildcard", url_rule(&["get"], &["*"]), url("get", "/anything/at/all"), true),
            ("url verb mismatch", url_rule(&["get"], &["*"]), url("post", "/healthz"), false),
            ("url verb wildcard", url_rule(&["*"], &["/metrics"]), url("post", "/metrics"), true),
            ("star inside url is literal", url_rule(&["get"], &["/a*/b"]), url("get", "/ax/b"), false),
            // kinds do not cross
            ("resource rule vs url request", res_rule(&["*"], &["*"], &["*"]), url("get", "/healthz"), false),
            ("url rule vs resource request", url_rule(&["*"], &["*"]), req("get", "a", "", "pods", "", ""), false),
            ("empty rule", PolicyRule::default(), req("get", "a", "", "pods", "", ""), false),
        ];
        for (what, rule, attrs, want) in cases {
            assert_eq!(rule_allows(&rule, &attrs), want, "{what}");
        }
    }

    #[test]
    fn subject_matching_table() {
        let builder = sa_user("dev", "builder");
        let plain_builder = plain_user("builder", &[]);
        let alice = plain_user("alice", &["team-a", "system:authenticated"]);
        let robot = Subject {
            kind: "Robot".into(),
            name: "alice".into(),
            ..Subject::default()
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Subject, &UserInfo, &str, bool)> = vec![
            ("sa with namespace", sa("dev", "builder"), &builder, "maintenance", true),
            ("sa other namespace", sa("prod", "builder"), &builder, "", false),
            ("sa other name", sa("dev", "deployer"), &builder, "", false),
            ("sa defaults to binding namespace", sa("", "builder"), &builder, "dev", true),
            ("sa default, other binding namespace", sa("", "builder"), &builder, "maintenance", false),
            ("sa without namespace in crb", sa("", "builder"), &builder, "", false),
            ("sa name prefix is not a match", sa("dev", "build"), &builder, "", false),
            ("sa ns prefix is not a match", sa("de", "v:builder"), &builder, "", false),
            ("sa vs plain user of that name", sa("dev", "builder"), &plain_builder, "dev", false),
            ("user by name", user_subject("alice"), &alice, "", true),
            ("user other name", user_subject("bob"), &alice, "", false),
            ("user subject vs sa username", user_subject("system:serviceaccount:dev:builder"), &builder, "", true),
            ("group member", group_subject("team-a"), &alice, "x", true),
            ("group non-member", group_subject("team-b"), &alice, "x", false),
            ("sa namespace group", group_subject("system:serviceaccounts:dev"), &builder, "", true),
            ("other sa namespace group", group_subject("system:serviceaccounts:prod"), &builder, "", false),
            ("group name is not a user name", group_subject("alice"), &alice, "", false),
            ("unknown kind", robot, &alice, "", false),
        ];
        for (what, subject, user, ns, want) in cases {
            assert_eq!(applies_to(&subject, user, ns), want, "{what}");
        }
    }

    /// The policy of issue 5 and a few more grants.
    #[rustfmt::skip]
    fn fixture() -> MemPolicy {
        MemPolicy {
            roles: vec![
                role("maintenance", "job-reader", vec![res_rule(&["list", "watch", "get"], &["batch"], &["jobs"])]),
                role("", "pod-reader", vec![res_rule(&["get", "list"], &[""], &["pods"])]),
                role("", "view", vec![res_rule(&["get", "list", "watch"], &["", "apps"], &["pods", "deployments", "configmaps"])]),
                role("", "health", vec![url_rule(&["get"], &["/healthz*", "/version"])]),
                role("", "nodes-reader", vec![res_rule(&["get"], &[""], &["nodes"])]),
                role("", "secret-one", vec![named_rule(&["get"], &[""], &["secrets"], &["db"])]),
                role("", "scaler", vec![res_rule(&["update", "patch"], &["apps"], &["*/scale"])]),
                role("", "url-and-nodes", vec![url_rule(&["get"], &["/metrics"]), res_rule(&["list"], &[""], &["nodes"])]),
                role("ops", "cm-editor", vec![res_rule(&["*"], &[""], &["configmaps"])]),
            ],
            bindings: vec![
                binding("maintenance", "read-jobs", KIND_ROLE, "job-reader", vec![sa("dev", "builder")]),
                binding("", "everyone-health", KIND_CLUSTER_ROLE, "health", vec![group_subject("system:authenticated")]),
                binding("", "alice-pods", KIND_CLUSTER_ROLE, "pod-reader", vec![user_subject("alice")]),
                binding("team", "alice-pods-local", KIND_CLUSTER_ROLE, "pod-reader", vec![user_subject("alice")]),
                binding("team", "dev-sas-view", KIND_CLUSTER_ROLE, "view", vec![group_subject("system:serviceaccounts:dev")]),
                binding("team", "local-nodes", KIND_CLUSTER_ROLE, "nodes-reader", vec![user_subject("carol")]),
                binding("team", "local-urls", KIND_CLUSTER_ROLE, "url-and-nodes", vec![user_subject("carol")]),
                binding("ops", "default-sa-cm", KIND_ROLE, "cm-editor", vec![sa("", "default")]),
                binding("", "db-secret", KIND_CLUSTER_ROLE, "secret-one", vec![user_subject("dave")]),
                binding("", "scale", KIND_CLUSTER_ROLE, "scaler", vec![user_subject("dave")]),
                binding("", "dangling", KIND_CLUSTER_ROLE, "does-not-exist", vec![user_subject("erin")]),
                binding("ops", "dangling-local", KIND_ROLE, "nope", vec![user_subject("erin")]),
                binding("", "crb-to-role", KIND_ROLE, "cm-editor", vec![user_subject("frank")]),
                binding("maintenance", "role-elsewhere", KIND_ROLE, "cm-editor", vec![user_subject("frank")]),
            ],
        }
    }

    #[test]
    fn authorize_table() {
        let p = fixture();
        let builder = sa_user("dev", "builder");
        let other_sa = sa_user("dev", "other");
        let alice = plain_user("alice", &["system:authenticated"]);
        let bob = plain_user("bob", &["system:authenticated"]);
        let carol = plain_user("carol", &[]);
        let ops_default = sa_user("ops", "default");
        let dev_default = sa_user("dev", "default");
        let dave = plain_user("dave", &[]);
        let frank = plain_user("frank", &[]);
        let no = "";
        #[rustfmt::skip]
        let cases: Vec<(&str, &UserInfo, Attributes, &str)> = vec![
            // the cross-namespace case of issue 5
            ("builder lists jobs in maintenance", &builder, req("list", "maintenance", "batch", "jobs", "", ""),
             r#"RBAC: allowed by RoleBinding "read-jobs/maintenance" of Role "job-reader" to ServiceAccount "builder/dev""#),
            ("builder watches jobs in maintenance", &builder, req("watch", "maintenance", "batch", "jobs", "", ""),
             r#"RBAC: allowed by RoleBinding "read-jobs/maintenance" of Role "job-reader" to ServiceAccount "builder/dev""#),
            ("builder gets a job in maintenance", &builder, req("get", "maintenance", "batch", "jobs", "", "nightly"),
             r#"RBAC: allowed by RoleBinding "read-jobs/maintenance" of Role "job-reader" to ServiceAccount "builder/dev""#),
            ("builder may not list jobs in dev", &builder, req("list", "dev", "batch", "jobs", "", ""), no),
            ("builder may not list jobs cluster-wide", &builder, req("list", "", "batch", "jobs", "", ""), no),
            ("builder may not delete jobs in maintenance", &builder, req("delete", "maintenance", "batch", "jobs", "", "nightly"), no),
            ("builder may not get jobs of another group", &builder, req("get", "maintenance", "", "jobs", "", "nightly"), no),
            ("builder may not get secrets in maintenance", &builder, req("get", "maintenance", "", "secrets", "", "db"), no),
            ("builder may not get secrets in dev", &builder, req("get", "dev", "", "secrets", "", "db"), no),
            ("builder may not list secrets anywhere", &builder, req("list", "", "", "secrets", "", ""), no),
            ("another dev sa may not list jobs", &other_sa, req("list", "maintenance", "batch", "jobs", "", ""), no),
            // group binding system:serviceaccounts:dev
            ("dev sas view in team", &other_sa, req("list", "team", "apps", "deployments", "", ""),
             r#"RBAC: allowed by RoleBinding "dev-sas-view/team" of ClusterRole "view" to Group "system:serviceaccounts:dev""#),
            ("dev sas do not view elsewhere", &other_sa, req("list", "maintenance", "apps", "deployments", "", ""), no),
            ("ops sas are not in the dev group", &ops_default, req("list", "team", "apps", "deployments", "", ""), no),
            // ClusterRoleBindings first
            ("crb wins over rb", &alice, req("get", "team", "", "pods", "", "p"),
             r#"RBAC: allowed by ClusterRoleBinding "alice-pods" of ClusterRole "pod-reader" to User "alice""#),
            ("crb grants everywhere", &alice, req("list", "anywhere", "", "pods", "", ""),
             r#"RBAC: allowed by ClusterRoleBinding "alice-pods" of ClusterRole "pod-reader" to User "alice""#),
            ("crb grants cluster-wide", &alice, req("list", "", "", "pods", "", ""),
             r#"RBAC: allowed by ClusterRoleBinding "alice-pods" of ClusterRole "pod-reader" to User "alice""#),
            ("crb grants urls by group", &bob, url("get", "/healthz/etcd"),
             r#"RBAC: allowed by ClusterRoleBinding "everyone-health" of ClusterRole "health" to Group "system:authenticated""#),
            ("crb url exact", &bob, url("get", "/version"),
             r#"RBAC: allowed by ClusterRoleBinding "everyone-health" of ClusterRole "health" to Group "system:authenticated""#),
            ("crb url not listed", &bob, url("get", "/metrics"), no),
            ("crb url wrong verb", &bob, url("post", "/healthz"), no),
            // a RoleBinding to a ClusterRole is limited to its namespace
            ("rb to cluster role grants in its namespace", &carol, req("get", "team", "", "nodes", "", "n1"),
             r#"RBAC: allowed by RoleBinding "local-nodes/team" of ClusterRole "nodes-reader" to User "carol""#),
            ("rb to cluster role: not cluster-scoped", &carol, req("get", "", "", "nodes", "", "n1"), no),
            ("rb to cluster role: not other namespaces", &carol, req("get", "other", "", "nodes", "", "n1"), no),
            ("rb never grants urls", &carol, url("get", "/metrics"), no),
            ("rb to cluster role with urls grants its resource part", &carol, req("list", "team", "", "nodes", "", ""),
             r#"RBAC: allowed by RoleBinding "local-urls/team" of ClusterRole "url-and-nodes" to User "carol""#),
            // a ServiceAccount subject defaulting to the binding's namespace
            ("sa subject defaults to the binding namespace", &ops_default, req("delete", "ops", "", "configmaps", "", "c"),
             r#"RBAC: allowed by RoleBinding "default-sa-cm/ops" of Role "cm-editor" to ServiceAccount "default/ops""#),
            ("same-named sa of another namespace", &dev_default, req("delete", "ops", "", "configmaps", "", "c"), no),
            // resource names and */scale
            ("named secret", &dave, req("get", "prod", "", "secrets", "", "db"),
             r#"RBAC: allowed by ClusterRoleBinding "db-secret" of ClusterRole "secret-one" to User "dave""#),
            ("other secret", &dave, req("get", "prod", "", "secrets", "", "tls"), no),
            ("list secrets with names rule", &dave, req("list", "prod", "", "secrets", "", ""), no),
            ("scale any", &dave, req("patch", "prod", "apps", "statefulsets", "scale", "s"),
             r#"RBAC: allowed by ClusterRoleBinding "scale" of ClusterRole "scaler" to User "dave""#),
            ("scale is not the resource", &dave, req("patch", "prod", "apps", "statefulsets", "", "s"), no),
            // bindings to roles that cannot be found grant nothing
            ("crb to a role kind grants nothing", &frank, req("get", "ops", "", "configmaps", "", "c"), no),
            ("rb to a role of another namespace grants nothing", &frank, req("get", "maintenance", "", "configmaps", "", "c"), no),
        ];
        for (what, user, attrs, want) in cases {
            let d = authorize(&p, user, &attrs);
            // The fast path every RPC takes must agree with the full decision.
            assert_eq!(allows(&p, user, &attrs), d.allowed, "{what}: allows()");
            if want.is_empty() {
                assert!(!d.allowed, "{what}: {}", d.reason);
                assert!(
                    d.reason.starts_with(NO_MATCH_REASON),
                    "{what}: {}",
                    d.reason
                );
            } else {
                assert!(d.allowed, "{what}: {}", d.reason);
                assert_eq!(d.reason, want, "{what}");
            }
        }
    }

    #[test]
    fn denial_reasons() {
        let p = fixture();
        // bindings naming absent roles: allowed to exist, grant nothing, named in the reason
        let erin = plain_user("erin", &[]);
        let d = authorize(&p, &erin, &req("get", "ops", "", "pods", "", ""));
        assert!(!d.allowed);
        assert_eq!(
            d.reason,
            r#"no RBAC policy matched (ClusterRoleBinding "dangling" refers to absent ClusterRole "does-not-exist"; RoleBinding "dangling-local/ops" refers to absent Role "nope")"#
        );
        // only bindings that apply to the caller are mentioned
        let bob = plain_user("bob", &["system:authenticated"]);
        let d = authorize(&p, &bob, &req("get", "ops", "", "pods", "", ""));
        assert_eq!(d.reason, NO_MATCH_REASON);
        // an empty policy denies everything
        let d = authorize(&MemPolicy::default(), &bob, &url("get", "/healthz"));
        assert_eq!(
            d,
            Decision {
                allowed: false,
                reason: NO_MATCH_REASON.into()
            }
        );
    }

    #[test]
    fn reasons_quote_long_names_whole() {
        let long = "r".repeat(200);
        let p = MemPolicy {
            roles: vec![role("", &long, vec![res_rule(&["*"], &["*"], &["*"])])],
            bindings: vec![binding(
                "",
                &long,
                KIND_CLUSTER_ROLE,
                &long,
                vec![user_subject("u")],
            )],
        };
        let d = authorize(
            &p,
            &plain_user("u", &[]),
            &req("get", "", "", "pods", "", ""),
        );
        assert!(d.allowed);
        assert_eq!(
            d.reason,
            format!(
                r#"RBAC: allowed by ClusterRoleBinding "{long}" of ClusterRole "{long}" to User "u""#
            )
        );
    }

    #[test]
    fn role_binding_lists_are_filtered_by_namespace() {
        // An index that wrongly returns bindings of other namespaces must not grant there.
        struct Leaky(MemPolicy);
        impl Policy for Leaky {
            fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>> {
                self.0.cluster_role(name)
            }
            fn role(&self, ns: &str, name: &str) -> Option<Cow<'_, Role>> {
                self.0.role(ns, name)
            }
            fn cluster_role_bindings(&self) -> Cow<'_, [Binding]> {
                self.0.cluster_role_bindings()
            }
            fn role_bindings(&self, _ns: &str) -> Cow<'_, [Binding]> {
                Cow::Borrowed(&self.0.bindings)
            }
        }
        let p = Leaky(fixture());
        let builder = sa_user("dev", "builder");
        let list_jobs = |ns: &str| req("list", ns, "batch", "jobs", "", "");
        assert!(authorize(&p, &builder, &list_jobs("maintenance")).allowed);
        assert!(!authorize(&p, &builder, &list_jobs("dev")).allowed);
        // a RoleBinding to a ClusterRole in `team` must not grant in `other`
        let carol = plain_user("carol", &[]);
        let get_node = |ns: &str| req("get", ns, "", "nodes", "", "n1");
        assert!(authorize(&p, &carol, &get_node("team")).allowed);
        assert!(!authorize(&p, &carol, &get_node("other")).allowed);
    }

    /// [`MemPolicy`] with its bindings in [`IndexedBindings`], as the service holds
    /// them.
    struct Indexed {
        roles: MemPolicy,
        cluster: IndexedBindings,
        namespaced: HashMap<String, IndexedBindings>,
    }

    impl Indexed {
        fn new(p: MemPolicy) -> Self {
            let cluster = IndexedBindings::new(p.cluster_role_bindings().into_owned());
            let mut by_ns: HashMap<String, Vec<Binding>> = HashMap::new();
            for b in p.bindings.iter().filter(|b| !b.namespace.is_empty()) {
                by_ns
                    .entry(b.namespace.clone())
                    .or_default()
                    .push(b.clone());
            }
            Indexed {
                roles: p,
                cluster,
                namespaced: by_ns
                    .into_iter()
                    .map(|(ns, list)| (ns, IndexedBindings::new(list)))
                    .collect(),
            }
        }
    }

    impl Policy for Indexed {
        fn cluster_role(&self, name: &str) -> Option<Cow<'_, Role>> {
            self.roles.cluster_role(name)
        }
        fn role(&self, ns: &str, name: &str) -> Option<Cow<'_, Role>> {
            self.roles.role(ns, name)
        }
        fn cluster_role_bindings(&self) -> Cow<'_, [Binding]> {
            Cow::Borrowed(self.cluster.bindings())
        }
        fn role_bindings(&self, ns: &str) -> Cow<'_, [Binding]> {
            self.namespaced
                .get(ns)
                .map_or(Cow::Borrowed(&[]), |b| Cow::Borrowed(b.bindings()))
        }
        fn visit_candidate_bindings(
            &self,
            namespace: &str,
            user: &UserInfo,
            visit: &mut dyn FnMut(&Binding) -> bool,
        ) -> bool {
            let b = if namespace.is_empty() {
                Some(&self.cluster)
            } else {
                self.namespaced.get(namespace)
            };
            b.is_none_or(|b| b.visit_candidates(user, visit))
        }
    }

    fn candidate_names(b: &IndexedBindings, user: &UserInfo) -> Vec<String> {
        let mut out = Vec::new();
        b.visit_candidates(user, &mut |b| {
            out.push(b.name.clone());
            true
        });
        out
    }

    #[test]
    fn binding_index_candidates_table() {
        let other = Subject {
            kind: "Robot".into(),
            name: "alice".into(),
            ..Subject::default()
        };
        // Cluster bindings, in name order as the service sorts them.
        #[rustfmt::skip]
        let cluster = IndexedBindings::new(vec![
            binding("", "a-authenticated", KIND_CLUSTER_ROLE, "r", vec![group_subject("system:authenticated")]),
            binding("", "b-alice", KIND_CLUSTER_ROLE, "r", vec![user_subject("alice")]),
            binding("", "c-alice-twice", KIND_CLUSTER_ROLE, "r", vec![user_subject("alice"), group_subject("team-a"), user_subject("alice")]),
            binding("", "d-sa", KIND_CLUSTER_ROLE, "r", vec![sa("dev", "builder")]),
            binding("", "e-sa-no-namespace", KIND_CLUSTER_ROLE, "r", vec![sa("", "builder")]),
            binding("", "f-sa-as-user", KIND_CLUSTER_ROLE, "r", vec![user_subject("system:serviceaccount:dev:builder")]),
            binding("", "g-dev-sas", KIND_CLUSTER_ROLE, "r", vec![group_subject("system:serviceaccounts:dev")]),
            binding("", "h-robot", KIND_CLUSTER_ROLE, "r", vec![other]),
            binding("", "i-team-a", KIND_CLUSTER_ROLE, "r", vec![group_subject("team-a")]),
            binding("", "j-unauthenticated", KIND_CLUSTER_ROLE, "r", vec![group_subject("system:unauthenticated")]),
        ]);
        // RoleBindings of `dev`: a ServiceAccount subject without a namespace is one
        // of the binding's.
        #[rustfmt::skip]
        let dev = IndexedBindings::new(vec![
            binding("dev", "a-default-sa", KIND_ROLE, "r", vec![sa("", "builder")]),
            binding("dev", "b-other-ns-sa", KIND_ROLE, "r", vec![sa("ops", "builder")]),
            binding("dev", "c-alice", KIND_ROLE, "r", vec![user_subject("alice")]),
        ]);
        let builder = sa_user("dev", "builder");
        let ops_builder = sa_user("ops", "builder");
        let alice = plain_user("alice", &["team-a", "system:authenticated", "team-a"]);
        let anonymous = plain_user("system:anonymous", &["system:unauthenticated"]);
        let nobody = plain_user("nobody", &[]);
        #[rustfmt::skip]
        let cases: Vec<(&str, &IndexedBindings, &UserInfo, &[&str])> = vec![
            ("user, groups, in order, once each", &cluster, &alice, &["a-authenticated", "b-alice", "c-alice-twice", "i-team-a"]),
            ("sa: its username, as a User subject too, and its groups", &cluster, &builder, &["a-authenticated", "d-sa", "f-sa-as-user", "g-dev-sas"]),
            ("sa of another namespace", &cluster, &ops_builder, &["a-authenticated"]),
            ("unauthenticated group", &cluster, &anonymous, &["j-unauthenticated"]),
            ("no subject names the user", &cluster, &nobody, &[]),
            ("rb: sa defaults to the binding namespace", &dev, &builder, &["a-default-sa"]),
            ("rb: sa of another namespace named", &dev, &ops_builder, &["b-other-ns-sa"]),
            ("rb: user", &dev, &alice, &["c-alice"]),
        ];
        for (what, b, user, want) in cases {
            assert_eq!(candidate_names(b, user), *want, "{what}");
        }
        // Every binding that applies is a candidate (the index may only narrow).
        for user in [&builder, &ops_builder, &alice, &anonymous, &nobody] {
            for (ns, b) in [("", &cluster), ("dev", &dev)] {
                let applies: Vec<String> = b
                    .bindings()
                    .iter()
                    .filter(|x| x.subjects.iter().any(|s| applies_to(s, user, ns)))
                    .map(|x| x.name.clone())
                    .collect();
                assert_eq!(candidate_names(b, user), applies, "{}", user.name);
            }
        }
        // Stopping: the visit ends at the first false.
        let mut seen = 0;
        assert!(!cluster.visit_candidates(&alice, &mut |_| {
            seen += 1;
            seen < 2
        }));
        assert_eq!(seen, 2);
    }

    #[test]
    fn binding_index_merges_many_groups_in_order() {
        // More bound groups than the stack merge holds: the sorted fallback, same
        // answer.
        let groups: Vec<String> = (0..2 * MERGE_WAYS).map(|i| format!("g{i:02}")).collect();
        let bindings: Vec<Binding> = groups
            .iter()
            .rev()
            .enumerate()
            .map(|(i, g)| {
                binding(
                    "",
                    &format!("b{i:02}"),
                    KIND_CLUSTER_ROLE,
                    "r",
                    vec![group_subject(g), group_subject("all")],
                )
            })
            .collect();
        let index = IndexedBindings::new(bindings.clone());
        let mut user_groups = groups.clone();
        user_groups.push("all".into());
        let user = UserInfo {
            name: "u".into(),
            groups: user_groups,
        };
        let all: Vec<String> = bindings.iter().map(|b| b.name.clone()).collect();
        assert_eq!(candidate_names(&index, &user), all);
        let few = UserInfo {
            name: "u".into(),
            groups: vec!["g03".into(), "g01".into()],
        };
        // g01 is bound by the binding at position 2*MERGE_WAYS-2, g03 before it.
        let want = [
            format!("b{:02}", 2 * MERGE_WAYS - 4),
            format!("b{:02}", 2 * MERGE_WAYS - 2),
        ];
        assert_eq!(candidate_names(&index, &few), want);
    }

    #[test]
    fn indexed_policy_decides_as_the_full_walk() {
        // The fixture's every decision, reason included, through the index.
        let full = fixture();
        let indexed = Indexed::new(fixture());
        let users = [
            sa_user("dev", "builder"),
            sa_user("dev", "other"),
            sa_user("ops", "default"),
            sa_user("dev", "default"),
            plain_user("alice", &["system:authenticated"]),
            plain_user("bob", &["system:authenticated"]),
            plain_user("carol", &[]),
            plain_user("dave", &[]),
            plain_user("erin", &[]),
            plain_user("frank", &[]),
        ];
        let mut requests = vec![
            url("get", "/healthz"),
            url("get", "/metrics"),
            url("get", "/version"),
        ];
        for ns in ["", "maintenance", "team", "ops", "dev", "other"] {
            requests.extend([
                req("list", ns, "batch", "jobs", "", ""),
                req("get", ns, "", "pods", "", "p"),
                req("list", ns, "apps", "deployments", "", ""),
                req("get", ns, "", "nodes", "", "n1"),
                req("list", ns, "", "nodes", "", ""),
                req("delete", ns, "", "configmaps", "", "c"),
                req("get", ns, "", "secrets", "", "db"),
                req("patch", ns, "apps", "statefulsets", "scale", "s"),
            ]);
        }
        for user in &users {
            for attrs in &requests {
                let want = authorize(&full, user, attrs);
                assert_eq!(authorize(&indexed, user, attrs), want, "{user:?} {attrs:?}");
                assert_eq!(allows(&indexed, user, attrs), want.allowed);
                assert_eq!(
                    rules_for(&indexed, user, attrs.namespace()),
                    rules_for(&full, user, attrs.namespace())
                );
            }
        }
    }

    #[test]
    fn rules_for_collects_cluster_and_namespace_rules() {
        let p = fixture();
        let carol = plain_user("carol", &[]);
        assert!(rules_for(&p, &carol, "").is_empty());
        assert_eq!(rules_for(&p, &carol, "team").len(), 3);
        let alice = plain_user("alice", &[]);
        assert_eq!(rules_for(&p, &alice, "").len(), 1);
        assert_eq!(rules_for(&p, &alice, "team").len(), 2);
    }

    fn fields(v: &[FieldViolation]) -> Vec<&str> {
        v.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn validate_role_table() {
        let good = res_rule(&["get"], &[""], &["pods"]);
        #[rustfmt::skip]
        let cases: Vec<(&str, Role, Vec<&str>)> = vec![
            ("valid role", role("dev", "reader", vec![good.clone()]), vec![]),
            ("valid cluster role with colon", role("", "system:auth-delegator", vec![good.clone()]), vec![]),
            ("valid cluster role with urls", role("", "system:discovery", vec![url_rule(&["get"], &["/healthz", "/api/*", "*"])]), vec![]),
            ("no rules is fine", role("dev", "empty", vec![]), vec![]),
            ("core group is an empty string", role("dev", "r", vec![res_rule(&["get"], &[""], &["pods"])]), vec![]),
            ("missing name", role("dev", "", vec![good.clone()]), vec!["role.metadata.name"]),
            ("name with slash", role("dev", "a/b", vec![]), vec!["role.metadata.name"]),
            ("name with percent and slash", role("", "a%/b", vec![]), vec!["role.metadata.name", "role.metadata.name"]),
            ("name dot-dot", role("", "..", vec![]), vec!["role.metadata.name"]),
            ("name with space", role("", "a b", vec![]), vec!["role.metadata.name"]),
            ("name too long", role("", &"a".repeat(254), vec![]), vec!["role.metadata.name"]),
            ("bad namespace", role("Dev_1", "r", vec![]), vec!["role.metadata.namespace"]),
            ("empty verbs", role("dev", "r", vec![res_rule(&[], &[""], &["pods"])]), vec!["role.rules[0].verbs"]),
            ("empty verb string", role("dev", "r", vec![res_rule(&["get", ""], &[""], &["pods"])]), vec!["role.rules[0].verbs[1]"]),
            ("no api groups", role("dev", "r", vec![good.clone(), res_rule(&["get"], &[], &["pods"])]), vec!["role.rules[1].api_groups"]),
            ("no resources", role("dev", "r", vec![res_rule(&["get"], &[""], &[])]), vec!["role.rules[0].resources"]),
            ("empty rule", role("", "r", vec![PolicyRule::default()]), vec!["role.rules[0].verbs", "role.rules[0].api_groups", "role.rules[0].resources"]),
            ("empty resource string", role("dev", "r", vec![res_rule(&["get"], &[""], &["pods", ""])]), vec!["role.rules[0].resources[1]"]),
            ("empty resource name", role("dev", "r", vec![named_rule(&["get"], &[""], &["pods"], &[""])]), vec!["role.rules[0].resource_names[0]"]),
            ("urls in a namespaced role", role("dev", "r", vec![url_rule(&["get"], &["/healthz"])]), vec!["role.rules[0].non_resource_urls"]),
            ("urls mixed with resources", role("", "r", vec![PolicyRule { non_resource_urls: s(&["/healthz"]), ..good.clone() }]), vec!["role.rules[0].non_resource_urls"]),
            ("urls mixed with names only", role("", "r", vec![PolicyRule { resource_names: s(&["x"]), ..url_rule(&["get"], &["/healthz"]) }]), vec!["role.rules[0].non_resource_urls"]),
            ("urls mixed and namespaced", role("dev", "r", vec![PolicyRule { non_resource_urls: s(&["/x"]), ..good.clone() }]), vec!["role.rules[0].non_resource_urls", "role.rules[0].non_resource_urls"]),
            ("url without slash", role("", "r", vec![url_rule(&["get"], &["/ok", "healthz"])]), vec!["role.rules[0].non_resource_urls[1]"]),
            ("url rule without verbs", role("", "r", vec![url_rule(&[], &["/healthz"])]), vec!["role.rules[0].verbs"]),
            ("several at once", role("dev", "", vec![good, res_rule(&[], &[], &["x"]), url_rule(&["get"], &["/x"])]),
             vec!["role.metadata.name", "role.rules[1].verbs", "role.rules[1].api_groups", "role.rules[2].non_resource_urls"]),
        ];
        for (what, r, want) in cases {
            let got = validate_role(&r, "role");
            assert_eq!(fields(&got), want, "{what}: {got:?}");
        }
    }

    #[test]
    fn validation_messages_say_what_is_wrong() {
        let r = role("dev", "r", vec![url_rule(&["get"], &["/x"])]);
        let v = validate_role(&r, "cluster_role");
        assert_eq!(v[0].field, "cluster_role.rules[0].non_resource_urls");
        assert_eq!(
            v[0].description,
            "namespaced rules cannot apply to non-resource URLs"
        );
        let v = validate_role(&role("", "r", vec![res_rule(&[], &[""], &["pods"])]), "r");
        assert_eq!(v[0].description, "verbs must contain at least one value");
        let mut b = binding("dev", "b", "Thing", "r", vec![]);
        b.role_ref.api_group = "rbac".into();
        let v = validate_binding(&b, "role_binding");
        assert_eq!(v[0].field, "role_binding.role_ref.api_group");
        assert_eq!(
            v[0].description,
            r#"unsupported value "rbac": supported values: "rbac.authorization.k8s.io""#
        );
        assert_eq!(v[1].field, "role_binding.role_ref.kind");
        assert_eq!(
            v[1].description,
            r#"unsupported value "Thing": supported values: "Role", "ClusterRole""#
        );
        let v = validate_role(&role("", "a/b", vec![]), "r");
        assert_eq!(
            v[0].description,
            r#"invalid value "a/b": may not contain '/'"#
        );
    }

    #[test]
    fn validate_binding_table() {
        let with = |mut b: Binding, f: &dyn Fn(&mut Binding)| {
            f(&mut b);
            b
        };
        let rb = binding("dev", "rb", KIND_ROLE, "reader", vec![sa("", "builder")]);
        let crb = binding(
            "",
            "crb",
            KIND_CLUSTER_ROLE,
            "view",
            vec![sa("dev", "builder")],
        );
        let everything_wrong = Binding {
            namespace: String::new(),
            name: String::new(),
            role_ref: RoleRef::default(),
            subjects: vec![Subject::default(), sa("", "")],
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Binding, Vec<&str>)> = vec![
            ("valid role binding, sa without namespace", rb.clone(), vec![]),
            ("valid role binding to cluster role", with(rb.clone(), &|b| b.role_ref.kind = KIND_CLUSTER_ROLE.into()), vec![]),
            ("valid cross-namespace sa", with(rb.clone(), &|b| b.subjects = vec![sa("maintenance", "builder")]), vec![]),
            ("valid crb", crb.clone(), vec![]),
            ("valid users and groups", with(crb.clone(), &|b| b.subjects = vec![user_subject("alice"), group_subject("system:serviceaccounts:dev")]), vec![]),
            ("no subjects is fine", with(crb.clone(), &|b| b.subjects.clear()), vec![]),
            ("colon names", with(crb.clone(), &|b| { b.name = "system:discovery".into(); b.role_ref.name = "system:discovery".into(); }), vec![]),
            ("missing name", with(rb.clone(), &|b| b.name.clear()), vec!["rb.metadata.name"]),
            ("bad namespace", with(rb.clone(), &|b| b.namespace = "Dev".into()), vec!["rb.metadata.namespace"]),
            ("role_ref group empty", with(rb.clone(), &|b| b.role_ref.api_group.clear()), vec!["rb.role_ref.api_group"]),
            ("role_ref group wrong", with(rb.clone(), &|b| b.role_ref.api_group = "rbac.example.com".into()), vec!["rb.role_ref.api_group"]),
            ("role_ref kind unknown", with(rb.clone(), &|b| b.role_ref.kind = "Thing".into()), vec!["rb.role_ref.kind"]),
            ("role_ref kind empty", with(rb.clone(), &|b| b.role_ref.kind.clear()), vec!["rb.role_ref.kind"]),
            ("crb to a role", with(crb.clone(), &|b| b.role_ref.kind = KIND_ROLE.into()), vec!["rb.role_ref.kind"]),
            ("role_ref name missing", with(rb.clone(), &|b| b.role_ref.name.clear()), vec!["rb.role_ref.name"]),
            ("role_ref name bad", with(rb.clone(), &|b| b.role_ref.name = "a/b".into()), vec!["rb.role_ref.name"]),
            ("crb sa without namespace", with(crb.clone(), &|b| b.subjects = vec![user_subject("a"), sa("", "builder")]), vec!["rb.subjects[1].namespace"]),
            ("sa with bad namespace", with(rb.clone(), &|b| b.subjects = vec![sa("Dev", "builder")]), vec!["rb.subjects[0].namespace"]),
            ("sa with api group", with(rb.clone(), &|b| b.subjects[0].api_group = RBAC_GROUP.into()), vec!["rb.subjects[0].api_group"]),
            ("sa without name", with(rb.clone(), &|b| b.subjects[0].name.clear()), vec!["rb.subjects[0].name"]),
            ("sa with bad name", with(rb.clone(), &|b| b.subjects[0].name = "Builder".into()), vec!["rb.subjects[0].name"]),
            ("user without group", with(rb.clone(), &|b| b.subjects = vec![Subject { api_group: String::new(), ..user_subject("alice") }]), vec!["rb.subjects[0].api_group"]),
            ("group with other group", with(rb.clone(), &|b| b.subjects = vec![Subject { api_group: "x".into(), ..group_subject("g") }]), vec!["rb.subjects[0].api_group"]),
            ("user without name", with(rb.clone(), &|b| b.subjects = vec![user_subject("")]), vec!["rb.subjects[0].name"]),
            ("unknown kind", with(rb.clone(), &|b| b.subjects = vec![Subject { kind: "Robot".into(), ..user_subject("r2") }]), vec!["rb.subjects[0].kind"]),
            ("empty kind", with(rb.clone(), &|b| b.subjects = vec![Subject { kind: String::new(), ..user_subject("r2") }]), vec!["rb.subjects[0].kind"]),
            ("everything wrong", everything_wrong,
             vec!["rb.metadata.name", "rb.role_ref.api_group", "rb.role_ref.kind", "rb.role_ref.name",
                  "rb.subjects[0].name", "rb.subjects[0].kind", "rb.subjects[1].name", "rb.subjects[1].namespace"]),
        ];
        for (what, b, want) in cases {
            let got = validate_binding(&b, "rb");
            assert_eq!(fields(&got), want, "{what}: {got:?}");
        }
    }

    #[test]
    fn defaulting() {
        let subjects = vec![sa("", "a"), sa("other", "b"), user_subject("u")];
        let mut b = binding("dev", "rb", KIND_ROLE, "r", subjects);
        default_subject_namespaces(&mut b);
        assert_eq!(b.subjects[0].namespace, "dev");
        assert_eq!(b.subjects[1].namespace, "other");
        assert_eq!(b.subjects[2].namespace, "");

        let mut crb = binding("", "crb", KIND_CLUSTER_ROLE, "r", vec![sa("", "a")]);
        default_subject_namespaces(&mut crb);
        assert_eq!(crb.subjects[0].namespace, "");
        assert_eq!(
            fields(&validate_binding(&crb, "b")),
            vec!["b.subjects[0].namespace"]
        );

        let mut b = Binding {
            namespace: "dev".into(),
            name: "rb".into(),
            role_ref: RoleRef {
                api_group: String::new(),
                kind: KIND_ROLE.into(),
                name: "r".into(),
            },
            subjects: vec![
                Subject {
                    api_group: String::new(),
                    ..user_subject("u")
                },
                Subject {
                    api_group: String::new(),
                    ..group_subject("g")
                },
                sa("", "a"),
            ],
        };
        assert_eq!(validate_binding(&b, "b").len(), 3);
        default_binding(&mut b);
        assert_eq!(validate_binding(&b, "b"), vec![]);
        assert_eq!(b.role_ref.api_group, RBAC_GROUP);
        assert_eq!(b.subjects[2].api_group, "");
        assert_eq!(b.subjects[2].namespace, "dev");
    }

    #[test]
    fn role_ref_is_immutable() {
        let old = binding("dev", "rb", KIND_ROLE, "reader", vec![sa("", "a")]);
        let mut same = old.clone();
        same.subjects.push(user_subject("u"));
        assert_eq!(role_ref_changed(&old, &same), None);
        for change in [
            |b: &mut Binding| b.role_ref.name = "writer".into(),
            |b: &mut Binding| b.role_ref.kind = KIND_CLUSTER_ROLE.into(),
            |b: &mut Binding| b.role_ref.api_group = "x".into(),
        ] {
            let mut new = old.clone();
            change(&mut new);
            let v = role_ref_changed(&old, &new).unwrap();
            assert_eq!(v.field, "role_ref");
            assert!(
                v.description.starts_with("cannot change role_ref"),
                "{}",
                v.description
            );
        }
        let mut new = old.clone();
        new.role_ref.name = "writer".into();
        assert_eq!(
            role_ref_changed(&old, &new).unwrap().description,
            r#"cannot change role_ref (immutable): from Role "reader" ("rbac.authorization.k8s.io") to Role "writer" ("rbac.authorization.k8s.io"); delete and recreate the binding"#
        );
    }

    #[test]
    fn breakdown() {
        let r = named_rule(&["get", "list"], &["", "apps"], &["pods"], &["a", "b"]);
        assert_eq!(breakdown_rule(&r).len(), 8);
        let r = url_rule(&["get", "post"], &["/a", "/b*"]);
        let parts = breakdown_rule(&r);
        assert_eq!(parts.len(), 4);
        assert!(parts.contains(&url_rule(&["post"], &["/b*"])));
        assert!(breakdown_rule(&PolicyRule::default()).is_empty());
    }

    #[test]
    fn covering_table() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<PolicyRule>, PolicyRule, bool)> = vec![
            ("same rule", vec![res_rule(&["get"], &[""], &["pods"])], res_rule(&["get"], &[""], &["pods"]), true),
            ("get pods does not cover * pods", vec![res_rule(&["get"], &[""], &["pods"])], res_rule(&["*"], &[""], &["pods"]), false),
            ("all verbs listed still not *", vec![res_rule(&["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"], &[""], &["pods"])], res_rule(&["*"], &[""], &["pods"]), false),
            ("* pods covers get pods", vec![res_rule(&["*"], &[""], &["pods"])], res_rule(&["get", "delete"], &[""], &["pods"]), true),
            ("* everything covers anything", vec![res_rule(&["*"], &["*"], &["*"])], named_rule(&["*", "escalate"], &["*", "apps"], &["*", "pods/log", "*/scale"], &["x"]), true),
            ("resource * does not cover urls", vec![res_rule(&["*"], &["*"], &["*"])], url_rule(&["get"], &["/healthz"]), false),
            ("url * covers urls", vec![url_rule(&["*"], &["*"])], url_rule(&["get", "post"], &["/healthz", "/api/*", "*"]), true),
            ("url prefix covers longer", vec![url_rule(&["get"], &["/api/*"])], url_rule(&["get"], &["/api/v1/x", "/api/*"]), true),
            ("url prefix does not cover *", vec![url_rule(&["get"], &["/api/*"])], url_rule(&["get"], &["*"]), false),
            ("url exact does not cover prefix", vec![url_rule(&["get"], &["/healthz"])], url_rule(&["get"], &["/healthz*"]), false),
            ("url verb missing", vec![url_rule(&["get"], &["*"])], url_rule(&["post"], &["/healthz"]), false),
            ("group listed", vec![res_rule(&["get"], &["", "apps"], &["pods", "deployments"])], res_rule(&["get"], &["apps"], &["deployments"]), true),
            ("group * needs *", vec![res_rule(&["get"], &["", "apps", "batch"], &["pods"])], res_rule(&["get"], &["*"], &["pods"]), false),
            ("group missing", vec![res_rule(&["get"], &["apps"], &["pods"])], res_rule(&["get"], &[""], &["pods"]), false),
            ("resource * needs *", vec![res_rule(&["get"], &[""], &["pods", "secrets"])], res_rule(&["get"], &[""], &["*"]), false),
            ("pods does not cover pods/log", vec![res_rule(&["get"], &[""], &["pods"])], res_rule(&["get"], &[""], &["pods/log"]), false),
            ("*/log covers pods/log", vec![res_rule(&["get"], &[""], &["*/log"])], res_rule(&["get"], &[""], &["pods/log"]), true),
            ("*/log covers */log", vec![res_rule(&["get"], &[""], &["*/log"])], res_rule(&["get"], &[""], &["*/log"]), true),
            ("pods/log does not cover */log", vec![res_rule(&["get"], &[""], &["pods/log"])], res_rule(&["get"], &[""], &["*/log"]), false),
            ("*/log does not cover pods", vec![res_rule(&["get"], &[""], &["*/log"])], res_rule(&["get"], &[""], &["pods"]), false),
            ("any-name covers names", vec![res_rule(&["get"], &[""], &["secrets"])], named_rule(&["get"], &[""], &["secrets"], &["a", "b"]), true),
            ("names cover listed names", vec![named_rule(&["get"], &[""], &["secrets"], &["a", "b"])], named_rule(&["get"], &[""], &["secrets"], &["b"]), true),
            ("names do not cover other names", vec![named_rule(&["get"], &[""], &["secrets"], &["a"])], named_rule(&["get"], &[""], &["secrets"], &["a", "c"]), false),
            ("names do not cover any-name", vec![named_rule(&["get"], &[""], &["secrets"], &["a"])], res_rule(&["get"], &[""], &["secrets"]), false),
            ("split across held rules", vec![res_rule(&["get"], &[""], &["pods"]), res_rule(&["list"], &[""], &["pods"]), res_rule(&["get", "list"], &["apps"], &["*"])], res_rule(&["get", "list"], &["", "apps"], &["pods"]), true),
            ("nothing held", vec![], res_rule(&["get"], &[""], &["pods"]), false),
            ("empty request", vec![], PolicyRule::default(), true),
        ];
        for (what, held, requested, want) in cases {
            let missing = uncovered(&held, std::slice::from_ref(&requested));
            assert_eq!(missing.is_empty(), want, "{what}: {missing:?}");
        }
    }

    #[test]
    fn uncovered_rules_reports_the_missing_parts() {
        let p = MemPolicy {
            roles: vec![
                role("", "pod-getter", vec![res_rule(&["get"], &[""], &["pods"])]),
                role(
                    "",
                    "god",
                    vec![res_rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
                ),
                role(
                    "dev",
                    "local-lister",
                    vec![res_rule(&["list"], &[""], &["pods"])],
                ),
            ],
            bindings: vec![
                binding(
                    "",
                    "get-pods",
                    KIND_CLUSTER_ROLE,
                    "pod-getter",
                    vec![user_subject("alice")],
                ),
                binding(
                    "",
                    "admins",
                    KIND_CLUSTER_ROLE,
                    "god",
                    vec![group_subject("admins")],
                ),
                binding(
                    "dev",
                    "lister",
                    KIND_ROLE,
                    "local-lister",
                    vec![user_subject("alice")],
                ),
            ],
        };
        let alice = plain_user("alice", &[]);
        let root = plain_user("root", &["admins"]);
        let want = [res_rule(&["get", "list", "delete"], &[""], &["pods"])];

        // in dev alice holds get (cluster-wide) and list (RoleBinding): only delete is missing
        assert_eq!(
            uncovered_rules(&p, &alice, "dev", &want),
            vec![res_rule(&["delete"], &[""], &["pods"])]
        );
        // cluster-wide, and in another namespace, list is missing too
        assert_eq!(
            uncovered_rules(&p, &alice, "", &want),
            vec![
                res_rule(&["list"], &[""], &["pods"]),
                res_rule(&["delete"], &[""], &["pods"])
            ]
        );
        assert_eq!(uncovered_rules(&p, &alice, "prod", &want).len(), 2);
        // holding get pods does not cover * pods
        let star_pods = [res_rule(&["*"], &[""], &["pods"])];
        assert_eq!(
            uncovered_rules(&p, &alice, "dev", &star_pods),
            star_pods.to_vec()
        );
        let get_list = [res_rule(&["get", "list"], &[""], &["pods"])];
        assert!(uncovered_rules(&p, &alice, "dev", &get_list).is_empty());
        // holding * covers anything
        let anything = [
            res_rule(&["*"], &["*"], &["*"]),
            named_rule(
                &["escalate", "bind"],
                &[RBAC_GROUP],
                &["clusterroles"],
                &["admin"],
            ),
            url_rule(&["*"], &["*", "/healthz*"]),
        ];
        assert!(uncovered_rules(&p, &root, "", &anything).is_empty());
        assert!(uncovered_rules(&p, &root, "dev", &anything).is_empty());
        // a caller holding nothing misses everything; duplicates are reported once
        let nobody = plain_user("nobody", &[]);
        let twice = [want[0].clone(), want[0].clone()];
        assert_eq!(uncovered_rules(&p, &nobody, "dev", &twice).len(), 3);
    }

    fn esc_rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect();
        PolicyRule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: Vec::new(),
        }
    }

    /// The message Kubernetes' escalation check gives for the same missing rules:
    /// verbs of one resource merged, lines sorted, groups as `["a" "b"]`.
    #[test]
    fn escalation_error_has_kubernetes_text() {
        let groups = s(&["devs", "system:authenticated"]);
        let missing = uncovered(
            &[],
            &[
                esc_rule(&["get", "list"], &[""], &["secrets"], &[]),
                esc_rule(&["get"], &["batch"], &["jobs"], &["nightly"]),
                esc_rule(&["get"], &[""], &["secrets"], &[]),
                PolicyRule {
                    verbs: vec!["get".into()],
                    non_resource_urls: vec!["/metrics".into()],
                    ..PolicyRule::default()
                },
            ],
        );
        let e =
            escalation_error("dana", &groups, "roles", "special", &missing).expect_err("missing");
        assert_eq!(
            e.to_string(),
            crate::Error::PermissionDenied(
                "roles.rbac.authorization.k8s.io \"special\" is forbidden: user \"dana\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
                 {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\"]}\n\
                 {APIGroups:[\"batch\"], Resources:[\"jobs\"], ResourceNames:[\"nightly\"], Verbs:[\"get\"]}\n\
                 {NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"
                    .into()
            )
            .to_string()
        );
        assert!(escalation_error("dana", &groups, "roles", "x", &[]).is_ok());
    }
}
