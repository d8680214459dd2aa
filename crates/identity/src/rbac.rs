//! RBAC objects (rbac.authorization.k8s.io/v1): Role, ClusterRole, RoleBinding,
//! ClusterRoleBinding with the standard methods and the change feed. Validation
//! and defaulting are Kubernetes' (reference §11), in `badge_core::rbac`.

use badge_core::Kind;
use badge_core::rbac::{Attributes, PolicyRule, RBAC_GROUP, escalation_error, uncovered_rules};
use badge_core::{Error, Result};
use badge_proto::rbac::{
    self as pb, ClusterRole, ClusterRoleBinding, Role, RoleBinding,
    cluster_role_binding_service_server::ClusterRoleBindingService,
    cluster_role_service_server::ClusterRoleService,
    role_binding_service_server::RoleBindingService, role_service_server::RoleService,
};
use badge_runtime::{Caller, MethodRule, status};
use tonic::{Request, Response, Status};

use crate::objects::{Object, Objects};

type R<T> = std::result::Result<Response<T>, Status>;

/// The rules of a kind that holds rules.
trait Rules: Object {
    fn rules(&self) -> &[pb::PolicyRule];
}

/// The parts of a kind that binds subjects to a role.
trait Bind: Object {
    fn parts(&mut self) -> (&mut Vec<pb::Subject>, &mut Option<pb::RoleRef>);
}

macro_rules! rules {
    ($t:ty) => {
        impl Rules for $t {
            fn rules(&self) -> &[pb::PolicyRule] {
                &self.rules
            }
        }
    };
}
macro_rules! bind {
    ($t:ty) => {
        impl Bind for $t {
            fn parts(&mut self) -> (&mut Vec<pb::Subject>, &mut Option<pb::RoleRef>) {
                (&mut self.subjects, &mut self.role_ref)
            }
        }
    };
}
rules!(Role);
rules!(ClusterRole);
bind!(RoleBinding);
bind!(ClusterRoleBinding);

/// Metadata problems are reported once (by `prepare`), not again by the rules.
fn without_metadata(v: Vec<badge_core::FieldViolation>, field: &str) -> Result<()> {
    let meta = format!("{field}.metadata");
    Error::check(
        v.into_iter()
            .filter(|x| !x.field.starts_with(&meta))
            .collect(),
    )
}

fn check_rules<T: Rules>(obj: &T, field: &str) -> Result<()> {
    let role = badge_records::rbac::role(obj.meta(), obj.rules());
    without_metadata(badge_core::rbac::validate_role(&role, field), field)
}

/// Defaults then validates a binding in place.
fn check_binding<T: Bind>(obj: &mut T, field: &str) -> Result<badge_core::rbac::Binding> {
    let meta = obj.meta().cloned();
    let (subjects, role_ref) = obj.parts();
    let b = badge_records::rbac::default_binding(meta.as_ref(), subjects, role_ref);
    without_metadata(badge_core::rbac::validate_binding(&b, field), field)?;
    Ok(b)
}

fn rbac_attrs(verb: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
    Attributes::Resource {
        verb: verb.to_owned(),
        namespace: namespace.to_owned(),
        api_group: RBAC_GROUP.to_owned(),
        resource: resource.to_owned(),
        subresource: String::new(),
        name: name.to_owned(),
    }
}

impl Objects {
    /// Escalation prevention (Kubernetes' `ConfirmNoEscalation`): a caller may write
    /// a role only with rules it holds itself (in the role's namespace), unless it
    /// may `escalate` roles. Without this, `create roles` + `create rolebindings`
    /// would be a path to any permission.
    ///
    /// `creating`: Kubernetes asks `escalate` with the request's attributes, and a
    /// create request names no object (its URL is the collection), so `escalate`
    /// limited by resourceNames never lifts the check on create — only on update
    /// of the named role. Asking with the new role's name here would let such a
    /// grant mint a role of that name with any rules once it is deleted or before
    /// it exists.
    fn confirm_role(
        &self,
        caller: &Caller,
        resource: &str,
        role: &badge_core::rbac::Role,
        creating: bool,
    ) -> Result<()> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let (namespace, name, rules) = (role.namespace.as_str(), role.name.as_str(), &role.rules);
        let user = badge_access::user_info(caller);
        let request_name = if creating { "" } else { name };
        if guard
            .decide(
                &user,
                &rbac_attrs("escalate", resource, namespace, request_name),
            )
            .allowed
        {
            return Ok(());
        }
        let missing = uncovered_rules(&*guard.policy().snapshot(), &user, namespace, rules);
        escalation_error(&caller.user, &caller.groups, resource, name, &missing)
    }

    /// A caller may bind a role only when it holds every rule of that role (in the
    /// binding's namespace), unless it may `bind` that role. The role is read from
    /// the store, not memory: a role created a moment ago must not look empty.
    async fn confirm_binding(
        &self,
        caller: &Caller,
        resource: &str,
        b: &badge_core::rbac::Binding,
    ) -> Result<()> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let user = badge_access::user_info(caller);
        let (role_resource, kind, role_ns) = match b.role_ref.kind.as_str() {
            badge_core::rbac::KIND_ROLE => ("roles", Kind::Role, b.namespace.as_str()),
            _ => ("clusterroles", Kind::ClusterRole, ""),
        };
        if guard
            .decide(
                &user,
                &rbac_attrs("bind", role_resource, &b.namespace, &b.role_ref.name),
            )
            .allowed
        {
            return Ok(());
        }
        // Security: a missing role is refused, never read as "no rules". Otherwise a
        // caller could bind herself to a name nobody has created yet and gain
        // whatever an operator later puts in it (the role's creator is checked for
        // escalation, not the binding's). Kubernetes returns the role lookup's
        // NotFound here; only a caller that may `bind` the name (checked above) can
        // bind a role before it exists.
        let rules = match self.store.get(kind, role_ns, &b.role_ref.name).await {
            Ok(rec) => match kind {
                Kind::Role => badge_records::decode::<Role>(&rec).map(|r| r.rules)?,
                _ => badge_records::decode::<ClusterRole>(&rec).map(|r| r.rules)?,
            },
            Err(Error::NotFound(_)) => {
                // Kubernetes' text: its rule resolver reads the role through the
                // registry, whose NotFound names the qualified (plural) resource,
                // e.g. `clusterroles.rbac.authorization.k8s.io "future" not found`.
                return Err(Error::NotFound(format!(
                    "{role_resource}.{RBAC_GROUP} {:?} not found",
                    b.role_ref.name
                )));
            }
            Err(e) => return Err(e),
        };
        let rules: Vec<PolicyRule> = rules.iter().map(badge_records::rbac::rule).collect();
        let missing = uncovered_rules(&*guard.policy().snapshot(), &user, &b.namespace, &rules);
        escalation_error(&caller.user, &caller.groups, resource, &b.name, &missing)
    }

    async fn create_rules<T: Rules>(
        &self,
        caller: &Caller,
        obj: Option<T>,
        field: &str,
        resource: &str,
    ) -> Result<T> {
        let obj: T = self.prepare(obj, field)?;
        check_rules(&obj, field)?;
        let role = badge_records::rbac::role(obj.meta(), obj.rules());
        self.confirm_role(caller, resource, &role, true)?;
        self.create(obj, vec![]).await
    }

    /// As Kubernetes: the object is validated and the stored one read (a missing
    /// role is NOT_FOUND) before the escalation check, which judges the rules that
    /// will be written (validated, in the namespace that will be written).
    async fn update_rules<T: Rules>(
        &self,
        caller: &Caller,
        obj: Option<T>,
        field: &str,
        resource: &str,
    ) -> Result<T> {
        self.update(obj, field, |_, new| {
            check_rules(new, field)?;
            let role = badge_records::rbac::role(new.meta(), new.rules());
            self.confirm_role(caller, resource, &role, false)
        })
        .await
    }

    async fn create_binding<T: Bind>(
        &self,
        caller: &Caller,
        obj: Option<T>,
        field: &str,
        resource: &str,
    ) -> Result<T> {
        let mut obj: T = self.prepare(obj, field)?;
        let b = check_binding(&mut obj, field)?;
        self.confirm_binding(caller, resource, &b).await?;
        self.create(obj, vec![]).await
    }

    async fn update_binding<T: Bind>(
        &self,
        caller: &Caller,
        obj: Option<T>,
        field: &str,
        resource: &str,
    ) -> Result<T> {
        // Validated first (metadata included: a ClusterRoleBinding carrying a
        // namespace must fail as invalid, not be judged as a RoleBinding), and the
        // binding must exist (its NOT_FOUND before the role's, as Kubernetes reads
        // the old object first). role_ref is immutable (the check below refuses a
        // change), so judging the incoming role_ref is judging the stored one.
        let mut obj: T = self.prepare(obj, field)?;
        let b = check_binding(&mut obj, field)?;
        self.store.get(T::KIND, &b.namespace, &b.name).await?;
        self.confirm_binding(caller, resource, &b).await?;
        self.update(Some(obj), field, |old, new| {
            let b = check_binding(new, field)?;
            let mut old = old.clone();
            let was = check_binding(&mut old, field)?;
            // role_ref is immutable: delete and recreate to change it.
            if let Some(mut v) = badge_core::rbac::role_ref_changed(&was, &b) {
                v.field = format!("{field}.{}", v.field);
                return Err(Error::Invalid(vec![v]));
            }
            Ok(())
        })
        .await
    }
}

const G: &str = badge_core::rbac::RBAC_GROUP;

macro_rules! crud_rules {
    ($svc:literal, $res:literal, $singular:literal, $plural:literal, $create:ty, $get:ty, $list:ty, $update:ty, $delete:ty) => {
        [
            (
                concat!("/badge.rbac.v1.", $svc, "/Create", $singular),
                MethodRule::new("create", G, $res).scoped::<$create>(),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/Get", $singular),
                MethodRule::new("get", G, $res).scoped::<$get>(),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/List", $plural),
                MethodRule::new("list", G, $res).scoped::<$list>(),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/Update", $singular),
                MethodRule::new("update", G, $res).scoped::<$update>(),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/Delete", $singular),
                MethodRule::new("delete", G, $res).scoped::<$delete>(),
            ),
        ]
    };
}

/// Every RBAC method → what it does in RBAC terms.
pub const METHODS: [(&str, MethodRule); 20] = {
    let a = crud_rules!(
        "RoleService",
        "roles",
        "Role",
        "Roles",
        pb::CreateRoleRequest,
        pb::GetRoleRequest,
        pb::ListRolesRequest,
        pb::UpdateRoleRequest,
        pb::DeleteRoleRequest
    );
    let b = crud_rules!(
        "ClusterRoleService",
        "clusterroles",
        "ClusterRole",
        "ClusterRoles",
        pb::CreateClusterRoleRequest,
        pb::GetClusterRoleRequest,
        pb::ListClusterRolesRequest,
        pb::UpdateClusterRoleRequest,
        pb::DeleteClusterRoleRequest
    );
    let c = crud_rules!(
        "RoleBindingService",
        "rolebindings",
        "RoleBinding",
        "RoleBindings",
        pb::CreateRoleBindingRequest,
        pb::GetRoleBindingRequest,
        pb::ListRoleBindingsRequest,
        pb::UpdateRoleBindingRequest,
        pb::DeleteRoleBindingRequest
    );
    let d = crud_rules!(
        "ClusterRoleBindingService",
        "clusterrolebindings",
        "ClusterRoleBinding",
        "ClusterRoleBindings",
        pb::CreateClusterRoleBindingRequest,
        pb::GetClusterRoleBindingRequest,
        pb::ListClusterRoleBindingsRequest,
        pb::UpdateClusterRoleBindingRequest,
        pb::DeleteClusterRoleBindingRequest
    );
    [
        a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4], c[0], c[1], c[2], c[3], c[4],
        d[0], d[1], d[2], d[3], d[4],
    ]
};

#[tonic::async_trait]
impl RoleService for Objects {
    async fn create_role(&self, req: Request<pb::CreateRoleRequest>) -> R<Role> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.create_rules(&caller, req.into_inner().role, "role", "roles")
                .await
                .map_err(status)?,
        ))
    }
    async fn get_role(&self, req: Request<pb::GetRoleRequest>) -> R<Role> {
        let r = req.into_inner();
        Ok(Response::new(
            self.get(&r.namespace, &r.name).await.map_err(status)?,
        ))
    }
    async fn list_roles(&self, req: Request<pb::ListRolesRequest>) -> R<pb::ListRolesResponse> {
        let r = req.into_inner();
        let p = self
            .list::<Role>(&r.namespace, r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: p.items,
            next_page_token: p.next_page_token,
            resource_version: p.resource_version,
        }))
    }
    async fn update_role(&self, req: Request<pb::UpdateRoleRequest>) -> R<Role> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.update_rules(&caller, req.into_inner().role, "role", "roles")
                .await
                .map_err(status)?,
        ))
    }
    async fn delete_role(&self, req: Request<pb::DeleteRoleRequest>) -> R<Role> {
        let r = req.into_inner();
        Ok(Response::new(
            self.delete(&r.namespace, &r.name, &r.resource_version, &r.uid, vec![])
                .await
                .map_err(status)?,
        ))
    }
}

#[tonic::async_trait]
impl ClusterRoleService for Objects {
    async fn create_cluster_role(
        &self,
        req: Request<pb::CreateClusterRoleRequest>,
    ) -> R<ClusterRole> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.create_rules(
                &caller,
                req.into_inner().cluster_role,
                "cluster_role",
                "clusterroles",
            )
            .await
            .map_err(status)?,
        ))
    }
    async fn get_cluster_role(&self, req: Request<pb::GetClusterRoleRequest>) -> R<ClusterRole> {
        Ok(Response::new(
            self.get("", &req.into_inner().name).await.map_err(status)?,
        ))
    }
    async fn list_cluster_roles(
        &self,
        req: Request<pb::ListClusterRolesRequest>,
    ) -> R<pb::ListClusterRolesResponse> {
        let r = req.into_inner();
        let p = self
            .list::<ClusterRole>("", r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListClusterRolesResponse {
            cluster_roles: p.items,
            next_page_token: p.next_page_token,
            resource_version: p.resource_version,
        }))
    }
    async fn update_cluster_role(
        &self,
        req: Request<pb::UpdateClusterRoleRequest>,
    ) -> R<ClusterRole> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.update_rules(
                &caller,
                req.into_inner().cluster_role,
                "cluster_role",
                "clusterroles",
            )
            .await
            .map_err(status)?,
        ))
    }
    async fn delete_cluster_role(
        &self,
        req: Request<pb::DeleteClusterRoleRequest>,
    ) -> R<ClusterRole> {
        let r = req.into_inner();
        Ok(Response::new(
            self.delete("", &r.name, &r.resource_version, &r.uid, vec![])
                .await
                .map_err(status)?,
        ))
    }
}

#[tonic::async_trait]
impl RoleBindingService for Objects {
    async fn create_role_binding(
        &self,
        req: Request<pb::CreateRoleBindingRequest>,
    ) -> R<RoleBinding> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.create_binding(
                &caller,
                req.into_inner().role_binding,
                "role_binding",
                "rolebindings",
            )
            .await
            .map_err(status)?,
        ))
    }
    async fn get_role_binding(&self, req: Request<pb::GetRoleBindingRequest>) -> R<RoleBinding> {
        let r = req.into_inner();
        Ok(Response::new(
            self.get(&r.namespace, &r.name).await.map_err(status)?,
        ))
    }
    async fn list_role_bindings(
        &self,
        req: Request<pb::ListRoleBindingsRequest>,
    ) -> R<pb::ListRoleBindingsResponse> {
        let r = req.into_inner();
        let p = self
            .list::<RoleBinding>(&r.namespace, r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRoleBindingsResponse {
            role_bindings: p.items,
            next_page_token: p.next_page_token,
            resource_version: p.resource_version,
        }))
    }
    async fn update_role_binding(
        &self,
        req: Request<pb::UpdateRoleBindingRequest>,
    ) -> R<RoleBinding> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.update_binding(
                &caller,
                req.into_inner().role_binding,
                "role_binding",
                "rolebindings",
            )
            .await
            .map_err(status)?,
        ))
    }
    async fn delete_role_binding(
        &self,
        req: Request<pb::DeleteRoleBindingRequest>,
    ) -> R<RoleBinding> {
        let r = req.into_inner();
        Ok(Response::new(
            self.delete(&r.namespace, &r.name, &r.resource_version, &r.uid, vec![])
                .await
                .map_err(status)?,
        ))
    }
}

#[tonic::async_trait]
impl ClusterRoleBindingService for Objects {
    async fn create_cluster_role_binding(
        &self,
        req: Request<pb::CreateClusterRoleBindingRequest>,
    ) -> R<ClusterRoleBinding> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.create_binding(
                &caller,
                req.into_inner().cluster_role_binding,
                "cluster_role_binding",
                "clusterrolebindings",
            )
            .await
            .map_err(status)?,
        ))
    }
    async fn get_cluster_role_binding(
        &self,
        req: Request<pb::GetClusterRoleBindingRequest>,
    ) -> R<ClusterRoleBinding> {
        Ok(Response::new(
            self.get("", &req.into_inner().name).await.map_err(status)?,
        ))
    }
    async fn list_cluster_role_bindings(
        &self,
        req: Request<pb::ListClusterRoleBindingsRequest>,
    ) -> R<pb::ListClusterRoleBindingsResponse> {
        let r = req.into_inner();
        let p = self
            .list::<ClusterRoleBinding>("", r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListClusterRoleBindingsResponse {
            cluster_role_bindings: p.items,
            next_page_token: p.next_page_token,
            resource_version: p.resource_version,
        }))
    }
    async fn update_cluster_role_binding(
        &self,
        req: Request<pb::UpdateClusterRoleBindingRequest>,
    ) -> R<ClusterRoleBinding> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        Ok(Response::new(
            self.update_binding(
                &caller,
                req.into_inner().cluster_role_binding,
                "cluster_role_binding",
                "clusterrolebindings",
            )
            .await
            .map_err(status)?,
        ))
    }
    async fn delete_cluster_role_binding(
        &self,
        req: Request<pb::DeleteClusterRoleBindingRequest>,
    ) -> R<ClusterRoleBinding> {
        let r = req.into_inner();
        Ok(Response::new(
            self.delete("", &r.name, &r.resource_version, &r.uid, vec![])
                .await
                .map_err(status)?,
        ))
    }
}
