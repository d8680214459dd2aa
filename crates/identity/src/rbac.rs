//! RBAC objects (rbac.authorization.k8s.io/v1): Role, ClusterRole, RoleBinding,
//! ClusterRoleBinding with the standard methods and the change feed. Validation
//! and defaulting are Kubernetes' (reference §11), in `badge_core::rbac`.

use badge_core::{Error, Result};
use badge_proto::rbac::{
    self as pb, ClusterRole, ClusterRoleBinding, Role, RoleBinding,
    cluster_role_binding_service_server::ClusterRoleBindingService,
    cluster_role_service_server::ClusterRoleService,
    role_binding_service_server::RoleBindingService, role_service_server::RoleService,
};
use badge_runtime::{MethodRule, status};
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

impl Objects {
    async fn create_rules<T: Rules>(&self, obj: Option<T>, field: &str) -> Result<T> {
        let obj: T = self.prepare(obj, field)?;
        check_rules(&obj, field)?;
        self.create(obj, vec![]).await
    }

    async fn update_rules<T: Rules>(&self, obj: Option<T>, field: &str) -> Result<T> {
        self.update(obj, field, |_, new| check_rules(new, field))
            .await
    }

    async fn create_binding<T: Bind>(&self, obj: Option<T>, field: &str) -> Result<T> {
        let mut obj: T = self.prepare(obj, field)?;
        check_binding(&mut obj, field)?;
        self.create(obj, vec![]).await
    }

    async fn update_binding<T: Bind>(&self, obj: Option<T>, field: &str) -> Result<T> {
        self.update(obj, field, |old, new| {
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
    ($svc:literal, $res:literal, $singular:literal, $plural:literal) => {
        [
            (
                concat!("/badge.rbac.v1.", $svc, "/Create", $singular),
                MethodRule::new("create", G, $res),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/Get", $singular),
                MethodRule::new("get", G, $res),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/List", $plural),
                MethodRule::new("list", G, $res),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/Update", $singular),
                MethodRule::new("update", G, $res),
            ),
            (
                concat!("/badge.rbac.v1.", $svc, "/Delete", $singular),
                MethodRule::new("delete", G, $res),
            ),
        ]
    };
}

/// Every RBAC method → what it does in RBAC terms.
pub const METHODS: [(&str, MethodRule); 20] = {
    let a = crud_rules!("RoleService", "roles", "Role", "Roles");
    let b = crud_rules!(
        "ClusterRoleService",
        "clusterroles",
        "ClusterRole",
        "ClusterRoles"
    );
    let c = crud_rules!(
        "RoleBindingService",
        "rolebindings",
        "RoleBinding",
        "RoleBindings"
    );
    let d = crud_rules!(
        "ClusterRoleBindingService",
        "clusterrolebindings",
        "ClusterRoleBinding",
        "ClusterRoleBindings"
    );
    [
        a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4], c[0], c[1], c[2], c[3], c[4],
        d[0], d[1], d[2], d[3], d[4],
    ]
};

#[tonic::async_trait]
impl RoleService for Objects {
    async fn create_role(&self, req: Request<pb::CreateRoleRequest>) -> R<Role> {
        Ok(Response::new(
            self.create_rules(req.into_inner().role, "role")
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
        Ok(Response::new(
            self.update_rules(req.into_inner().role, "role")
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
        Ok(Response::new(
            self.create_rules(req.into_inner().cluster_role, "cluster_role")
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
        Ok(Response::new(
            self.update_rules(req.into_inner().cluster_role, "cluster_role")
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
        Ok(Response::new(
            self.create_binding(req.into_inner().role_binding, "role_binding")
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
        Ok(Response::new(
            self.update_binding(req.into_inner().role_binding, "role_binding")
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
        Ok(Response::new(
            self.create_binding(
                req.into_inner().cluster_role_binding,
                "cluster_role_binding",
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
        Ok(Response::new(
            self.update_binding(
                req.into_inner().cluster_role_binding,
                "cluster_role_binding",
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
