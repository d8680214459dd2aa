//! `badge.review.v1.AccessReviewService`: Kubernetes' SubjectAccessReview and
//! SelfSubjectAccessReview, answered by `badge_core::rbac` over the roles and
//! bindings in the in-memory index (no database round trip).

use badge_core::rbac::{self, Attributes};
use badge_core::{Error, FieldViolation, Result};
use badge_proto::review::{self as pb, access_review_service_server::AccessReviewService};
use std::sync::Arc;

use badge_access::Guard;
use badge_core::review::AUTHENTICATED_GROUP;
use badge_runtime::{MethodRule, MethodTable, status};
use tonic::{Request, Response, Status};

/// Every method → what it does in RBAC terms (Kubernetes' resources in
/// `authorization.k8s.io`).
pub const METHODS: MethodTable = &[
    (
        "/badge.review.v1.AccessReviewService/CreateSubjectAccessReview",
        MethodRule::new("create", "authorization.k8s.io", "subjectaccessreviews"),
    ),
    (
        "/badge.review.v1.AccessReviewService/CreateSelfSubjectAccessReview",
        MethodRule::new("create", "authorization.k8s.io", "selfsubjectaccessreviews"),
    ),
];

/// The group that bypasses RBAC, as Kubernetes' privileged-group authorizer.

#[derive(Clone)]
pub struct AccessService {
    pub guard: Arc<Guard>,
}

/// Exactly one attribute block (Kubernetes' validation), as the rules' input.
fn attributes(
    resource: Option<&pb::ResourceAttributes>,
    non_resource: Option<&pb::NonResourceAttributes>,
) -> Result<Attributes> {
    match (resource, non_resource) {
        (Some(r), None) => {
            if r.verb.is_empty() {
                return Err(Error::invalid(
                    "spec.resource_attributes.verb",
                    "verb is required",
                ));
            }
            Ok(Attributes::Resource {
                verb: r.verb.clone(),
                namespace: r.namespace.clone(),
                api_group: r.group.clone(),
                resource: r.resource.clone(),
                subresource: r.subresource.clone(),
                name: r.name.clone(),
            })
        }
        (None, Some(n)) => {
            let mut v = Vec::new();
            if n.verb.is_empty() {
                v.push(FieldViolation::new(
                    "spec.non_resource_attributes.verb",
                    "verb is required",
                ));
            }
            if n.path.is_empty() {
                v.push(FieldViolation::new(
                    "spec.non_resource_attributes.path",
                    "path is required",
                ));
            }
            Error::check(v)?;
            Ok(Attributes::NonResource {
                verb: n.verb.clone(),
                path: n.path.clone(),
            })
        }
        (Some(_), Some(_)) => Err(Error::invalid(
            "spec.non_resource_attributes",
            "cannot be specified in combination with resource_attributes",
        )),
        (None, None) => Err(Error::invalid(
            "spec.resource_attributes",
            "exactly one of non_resource_attributes or resource_attributes must be specified",
        )),
    }
}

impl AccessService {
    fn decide(&self, user: &rbac::UserInfo, attrs: &Attributes) -> pb::SubjectAccessReviewStatus {
        let d = self.guard.decide(user, attrs);
        pb::SubjectAccessReviewStatus {
            allowed: d.allowed,
            denied: false,
            reason: d.reason,
            evaluation_error: String::new(),
        }
    }
}

#[tonic::async_trait]
impl AccessReviewService for AccessService {
    async fn create_subject_access_review(
        &self,
        req: Request<pb::CreateSubjectAccessReviewRequest>,
    ) -> std::result::Result<Response<pb::SubjectAccessReview>, Status> {
        let spec = req.into_inner().spec.unwrap_or_default();
        let attrs = attributes(
            spec.resource_attributes.as_ref(),
            spec.non_resource_attributes.as_ref(),
        )
        .map_err(status)?;
        if spec.user.is_empty() && spec.groups.is_empty() {
            return Err(status(Error::invalid(
                "spec.user",
                "at least one of user or groups must be specified",
            )));
        }
        // The groups are taken as given: Kubernetes does not add system:authenticated.
        let user = rbac::UserInfo {
            name: spec.user.clone(),
            groups: spec.groups.clone(),
        };
        let status = self.decide(&user, &attrs);
        tracing::info!(target: "audit", event = "access.reviewed", user = %spec.user, allowed = status.allowed, "subject access review");
        Ok(Response::new(pb::SubjectAccessReview {
            spec: Some(spec),
            status: Some(status),
        }))
    }

    async fn create_self_subject_access_review(
        &self,
        req: Request<pb::CreateSelfSubjectAccessReviewRequest>,
    ) -> std::result::Result<Response<pb::SubjectAccessReview>, Status> {
        let caller = badge_runtime::auth::caller(&req)?.clone();
        let spec = req.into_inner().spec.unwrap_or_default();
        let attrs = attributes(
            spec.resource_attributes.as_ref(),
            spec.non_resource_attributes.as_ref(),
        )
        .map_err(status)?;
        // An authenticated caller is in system:authenticated, as Kubernetes' group adder.
        let mut groups = caller.groups.clone();
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.into());
        }
        let user = rbac::UserInfo {
            name: caller.user.clone(),
            groups: groups.clone(),
        };
        let status = self.decide(&user, &attrs);
        Ok(Response::new(pb::SubjectAccessReview {
            spec: Some(pb::SubjectAccessReviewSpec {
                resource_attributes: spec.resource_attributes,
                non_resource_attributes: spec.non_resource_attributes,
                user: caller.user,
                groups,
                ..Default::default()
            }),
            status: Some(status),
        }))
    }
}

/// Kubernetes' authorization webhook (`--authorization-webhook-config-file`):
/// SubjectAccessReview JSON in `authorization.k8s.io/v1` or `v1beta1` (whose groups
/// field is `group`), answered in the version asked. `Err` is a 400 message.
pub fn webhook(
    guard: &Arc<Guard>,
    body: &serde_json::Value,
) -> std::result::Result<serde_json::Value, String> {
    use serde_json::{Value, json};
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    let groups_field = match api_version {
        "authorization.k8s.io/v1" => "groups",
        "authorization.k8s.io/v1beta1" => "group",
        other => return Err(format!("apiVersion: unsupported value {other:?}")),
    };
    let spec = &body["spec"];
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let resource = spec
        .get("resourceAttributes")
        .filter(|v| v.is_object())
        .map(|r| pb::ResourceAttributes {
            namespace: s(r, "namespace"),
            verb: s(r, "verb"),
            group: s(r, "group"),
            version: s(r, "version"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
        });
    let non_resource = spec
        .get("nonResourceAttributes")
        .filter(|v| v.is_object())
        .map(|n| pb::NonResourceAttributes {
            path: s(n, "path"),
            verb: s(n, "verb"),
        });
    let attrs = attributes(resource.as_ref(), non_resource.as_ref()).map_err(|e| e.to_string())?;
    let user = s(spec, "user");
    let groups = strings(&spec[groups_field]);
    if user.is_empty() && groups.is_empty() {
        return Err("spec.user: at least one of user or groups must be specified".into());
    }
    let decision = AccessService {
        guard: guard.clone(),
    }
    .decide(&rbac::UserInfo { name: user, groups }, &attrs);
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    Ok(json!({"apiVersion": api_version, "kind": "SubjectAccessReview", "status": status}))
}
