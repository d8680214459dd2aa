//! The gRPC resource services. Each method is a thin call into [`Objects`]; the
//! kind-specific rules (namespace cascade, pod admission, pod immutability, graceful
//! pod deletion) live here or in `badge_core`.

use std::time::Duration;

use badge_core::{Error, Kind, admission};
use badge_proto::identity::{
    self as pb, Namespace, Node, Pod, Secret, ServiceAccount,
    namespace_service_server::NamespaceService, node_service_server::NodeService,
    pod_service_server::PodService, secret_service_server::SecretService,
    service_account_service_server::ServiceAccountService,
};
use badge_runtime::status;
use badge_store::{Op, Precondition};
use tonic::{Request, Response, Status};

use crate::objects::{Object, Objects, check_key, encode, parse_resource_version};

type R<T> = Result<Response<T>, Status>;

/// The `default` ServiceAccount every namespace gets.
pub fn default_service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: Some(badge_proto::meta::ObjectMeta {
            name: "default".into(),
            namespace: namespace.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Kubernetes' Secret validation beyond metadata: data keys are
/// `[-._a-zA-Z0-9]+`, the total size is at most 1 MiB, and a service-account token
/// Secret names its account.
fn validate_secret(s: &Secret) -> badge_core::Result<()> {
    const MAX_SECRET_SIZE: usize = 1024 * 1024;
    let mut v = Vec::new();
    let mut total = 0usize;
    for (k, val) in &s.data {
        total += val.len();
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            v.push(badge_core::FieldViolation::new(
                format!("secret.data[{k:?}]"),
                format!(
                    "invalid key {}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                    badge_core::names::quote(k)
                ),
            ));
        }
    }
    if total > MAX_SECRET_SIZE {
        v.push(badge_core::FieldViolation::new(
            "secret.data",
            format!("too long: must have at most {MAX_SECRET_SIZE} bytes, got {total}"),
        ));
    }
    if s.r#type == "kubernetes.io/service-account-token"
        && s.metadata
            .as_ref()
            .and_then(|m| m.annotations.get("kubernetes.io/service-account.name"))
            .is_none_or(|n| n.is_empty())
    {
        v.push(badge_core::FieldViolation::new(
            "secret.metadata.annotations[kubernetes.io/service-account.name]",
            "required for a secret of type kubernetes.io/service-account-token",
        ));
    }
    Error::check(v)
}

/// UpdateSecret's rules, given the stored Secret and the incoming one: the new
/// one is valid and its type unchanged (Kubernetes: a Secret's type is immutable).
pub fn check_secret_update(old: &Secret, new: &mut Secret) -> badge_core::Result<()> {
    validate_secret(new)?;
    if old.r#type != new.r#type {
        return Err(Error::invalid(
            "secret.type",
            format!(
                "field is immutable: {:?} cannot become {:?}",
                old.r#type, new.r#type
            ),
        ));
    }
    Ok(())
}

/// UpdatePod's rule, given the stored Pod and the incoming one: the spec is
/// immutable (admission ran on create), so an omitted spec keeps the stored one and
/// a different one is refused.
pub fn check_pod_update(old: &Pod, new: &mut Pod) -> badge_core::Result<()> {
    match &new.spec {
        None => new.spec.clone_from(&old.spec),
        Some(spec) if Some(spec) != old.spec.as_ref() => {
            return Err(Error::invalid(
                "pod.spec",
                "pod updates may not change the spec: only metadata.labels and metadata.annotations can change",
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

#[tonic::async_trait]
impl NamespaceService for Objects {
    async fn create_namespace(&self, req: Request<pb::CreateNamespaceRequest>) -> R<Namespace> {
        let ns: Namespace = self
            .prepare(req.into_inner().namespace, "namespace")
            .map_err(status)?;
        let name = ns.meta().map(|m| m.name.clone()).unwrap_or_default();
        // The namespace and its `default` ServiceAccount commit together.
        let sa = Objects::create_op(&default_service_account(&name));
        Ok(Response::new(
            self.create(ns, vec![sa]).await.map_err(status)?,
        ))
    }

    async fn get_namespace(&self, req: Request<pb::GetNamespaceRequest>) -> R<Namespace> {
        Ok(Response::new(
            self.get("", &req.into_inner().name).await.map_err(status)?,
        ))
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> R<pb::ListNamespacesResponse> {
        let r = req.into_inner();
        let page = self
            .list::<Namespace>("", r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: page.items,
            next_page_token: page.next_page_token,
            resource_version: page.resource_version,
        }))
    }

    async fn update_namespace(&self, req: Request<pb::UpdateNamespaceRequest>) -> R<Namespace> {
        let ns = self
            .update(req.into_inner().namespace, "namespace", |_, _| Ok(()))
            .await
            .map_err(status)?;
        Ok(Response::new(ns))
    }

    async fn delete_namespace(&self, req: Request<pb::DeleteNamespaceRequest>) -> R<Namespace> {
        let r = req.into_inner();
        check_key(Kind::Namespace, "", &r.name).map_err(status)?;
        if r.name == "default" {
            // As Kubernetes: the namespace objects land in by default stays.
            return Err(status(Error::precondition(
                "namespace \"default\" may not be deleted",
            )));
        }
        // Everything in the namespace goes in the same transaction as the namespace,
        // so no object outlives it and nothing can be created in between.
        let contents = vec![Op::DeleteNamespaceContents {
            namespace: r.name.clone(),
        }];
        let ns = self
            .delete::<Namespace>("", &r.name, &r.resource_version, &r.uid, contents)
            .await
            .map_err(status)?;
        Ok(Response::new(ns))
    }
}

#[tonic::async_trait]
impl ServiceAccountService for Objects {
    async fn create_service_account(
        &self,
        req: Request<pb::CreateServiceAccountRequest>,
    ) -> R<ServiceAccount> {
        let sa: ServiceAccount = self
            .prepare(req.into_inner().service_account, "service_account")
            .map_err(status)?;
        let warning = admission::enforce_mountable_secrets_warning(None, &sa);
        let sa = self.create(sa, vec![]).await.map_err(status)?;
        Ok(status::with_warnings(sa, warning.into_iter().collect()))
    }

    async fn get_service_account(
        &self,
        req: Request<pb::GetServiceAccountRequest>,
    ) -> R<ServiceAccount> {
        let r = req.into_inner();
        Ok(Response::new(
            self.get(&r.namespace, &r.name).await.map_err(status)?,
        ))
    }

    async fn list_service_accounts(
        &self,
        req: Request<pb::ListServiceAccountsRequest>,
    ) -> R<pb::ListServiceAccountsResponse> {
        let r = req.into_inner();
        let page = self
            .list::<ServiceAccount>(&r.namespace, r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListServiceAccountsResponse {
            service_accounts: page.items,
            next_page_token: page.next_page_token,
            resource_version: page.resource_version,
        }))
    }

    async fn update_service_account(
        &self,
        req: Request<pb::UpdateServiceAccountRequest>,
    ) -> R<ServiceAccount> {
        let mut warning = None;
        let sa = self
            .update(
                req.into_inner().service_account,
                "service_account",
                |old, new| {
                    warning = admission::enforce_mountable_secrets_warning(Some(old), new);
                    Ok(())
                },
            )
            .await
            .map_err(status)?;
        Ok(status::with_warnings(sa, warning.into_iter().collect()))
    }

    async fn delete_service_account(
        &self,
        req: Request<pb::DeleteServiceAccountRequest>,
    ) -> R<ServiceAccount> {
        let r = req.into_inner();
        let sa = self
            .delete(&r.namespace, &r.name, &r.resource_version, &r.uid, vec![])
            .await
            .map_err(status)?;
        Ok(Response::new(sa))
    }
}

#[tonic::async_trait]
impl SecretService for Objects {
    async fn create_secret(&self, req: Request<pb::CreateSecretRequest>) -> R<Secret> {
        let s: Secret = self
            .prepare(req.into_inner().secret, "secret")
            .map_err(status)?;
        validate_secret(&s).map_err(status)?;
        Ok(Response::new(self.create(s, vec![]).await.map_err(status)?))
    }

    async fn get_secret(&self, req: Request<pb::GetSecretRequest>) -> R<Secret> {
        let r = req.into_inner();
        Ok(Response::new(
            self.get(&r.namespace, &r.name).await.map_err(status)?,
        ))
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> R<pb::ListSecretsResponse> {
        let r = req.into_inner();
        let page = self
            .list::<Secret>(&r.namespace, r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: page.items,
            next_page_token: page.next_page_token,
            resource_version: page.resource_version,
        }))
    }

    async fn update_secret(&self, req: Request<pb::UpdateSecretRequest>) -> R<Secret> {
        let s = self
            .update(req.into_inner().secret, "secret", check_secret_update)
            .await
            .map_err(status)?;
        Ok(Response::new(s))
    }

    async fn delete_secret(&self, req: Request<pb::DeleteSecretRequest>) -> R<Secret> {
        let r = req.into_inner();
        let s = self
            .delete(&r.namespace, &r.name, &r.resource_version, &r.uid, vec![])
            .await
            .map_err(status)?;
        Ok(Response::new(s))
    }
}

#[tonic::async_trait]
impl NodeService for Objects {
    async fn create_node(&self, req: Request<pb::CreateNodeRequest>) -> R<Node> {
        let n: Node = self
            .prepare(req.into_inner().node, "node")
            .map_err(status)?;
        Ok(Response::new(self.create(n, vec![]).await.map_err(status)?))
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> R<Node> {
        Ok(Response::new(
            self.get("", &req.into_inner().name).await.map_err(status)?,
        ))
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> R<pb::ListNodesResponse> {
        let r = req.into_inner();
        let page = self
            .list::<Node>("", r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: page.items,
            next_page_token: page.next_page_token,
            resource_version: page.resource_version,
        }))
    }

    async fn update_node(&self, req: Request<pb::UpdateNodeRequest>) -> R<Node> {
        let n = self
            .update(req.into_inner().node, "node", |_, _| Ok(()))
            .await
            .map_err(status)?;
        Ok(Response::new(n))
    }

    async fn delete_node(&self, req: Request<pb::DeleteNodeRequest>) -> R<Node> {
        let r = req.into_inner();
        let n = self
            .delete("", &r.name, &r.resource_version, &r.uid, vec![])
            .await
            .map_err(status)?;
        Ok(Response::new(n))
    }
}

impl Objects {
    /// ServiceAccount admission (reference §7) then store.
    async fn admit_and_create(&self, pod: Option<Pod>) -> badge_core::Result<Pod> {
        let mut pod: Pod = self.prepare(pod, "pod")?;
        badge_core::validation::validate_pod_spec(pod.spec.as_ref(), "pod.spec")?;
        if admission::is_mirror_pod(&pod) {
            // Mirror pods (static pods reported by a node) are never mutated and may
            // not use service-account credentials at all.
            admission::validate_mirror_pod(&pod)?;
            return self.create(pod, vec![]).await;
        }
        admission::default_service_account_name(&mut pod);
        let ns = pod.meta().map(|m| m.namespace.clone()).unwrap_or_default();
        let sa_name = pod
            .spec
            .as_ref()
            .map(|s| s.service_account_name.clone())
            .unwrap_or_default();
        let mut found = self.get::<ServiceAccount>(&ns, &sa_name).await;
        // As Kubernetes' admission: `default` may be in the middle of being
        // recreated by its controller, so look again for a moment before refusing.
        if sa_name == "default" {
            for _ in 0..10 {
                if !matches!(found, Err(Error::NotFound(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                found = self.get::<ServiceAccount>(&ns, &sa_name).await;
            }
        }
        let sa: ServiceAccount = match found {
            Ok(sa) => sa,
            Err(Error::NotFound(_)) => {
                // A missing namespace is the better answer when that is the cause.
                self.get::<Namespace>("", &ns).await?;
                return Err(admission::missing_service_account(&ns, &sa_name));
            }
            Err(Error::Invalid(_)) => {
                return Err(Error::invalid(
                    "pod.spec.service_account_name",
                    format!("{sa_name:?} is not a valid service account name"),
                ));
            }
            Err(e) => return Err(e),
        };
        {
            // The thread-local RNG is not Send: keep it out of the await below.
            let mut rng = rand::rng();
            admission::admit_pod(&mut pod, &sa, &mut || admission::random_suffix(&mut rng))?;
        }
        self.create(pod, vec![]).await
    }

    async fn delete_pod_graceful(&self, r: pb::DeletePodRequest) -> badge_core::Result<Pod> {
        let grace = r.grace_period_seconds.unwrap_or(0);
        if grace < 0 {
            return Err(Error::invalid(
                "grace_period_seconds",
                format!("must not be negative, got {grace}"),
            ));
        }
        if grace == 0 {
            return self
                .delete(&r.namespace, &r.name, &r.resource_version, &r.uid, vec![])
                .await;
        }
        check_key(Kind::Pod, &r.namespace, &r.name)?;
        let record = self.store.get(Kind::Pod, &r.namespace, &r.name).await?;
        let deadline = self.clock.now() + Duration::from_secs(grace.unsigned_abs());
        // As Kubernetes: a second graceful delete may shorten the grace, never extend it.
        let deletion = match record.deletion_timestamp {
            Some(existing) if existing <= deadline => existing,
            _ => deadline,
        };
        let pod: Pod = crate::objects::decode(&record)?;
        let (labels, data) = encode(&pod);
        let precondition = Precondition {
            resource_version: parse_resource_version("resource_version", &r.resource_version)?
                .or(Some(record.resource_version)),
            uid: (!r.uid.is_empty()).then(|| r.uid.clone()),
        };
        let changes = self
            .store
            .apply(
                vec![Op::Update {
                    kind: Kind::Pod,
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    precondition,
                    labels,
                    data,
                    deletion_timestamp: Some(deletion),
                }],
                self.clock.now(),
            )
            .await?;
        let change = changes
            .first()
            .ok_or_else(|| Error::Internal("graceful delete returned no change".into()))?;
        crate::objects::decode(&change.record)
    }
}

#[tonic::async_trait]
impl PodService for Objects {
    async fn create_pod(&self, req: Request<pb::CreatePodRequest>) -> R<Pod> {
        Ok(Response::new(
            self.admit_and_create(req.into_inner().pod)
                .await
                .map_err(status)?,
        ))
    }

    async fn get_pod(&self, req: Request<pb::GetPodRequest>) -> R<Pod> {
        let r = req.into_inner();
        Ok(Response::new(
            self.get(&r.namespace, &r.name).await.map_err(status)?,
        ))
    }

    async fn list_pods(&self, req: Request<pb::ListPodsRequest>) -> R<pb::ListPodsResponse> {
        let r = req.into_inner();
        let page = self
            .list::<Pod>(&r.namespace, r.page_size, &r.page_token, &r.label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListPodsResponse {
            pods: page.items,
            next_page_token: page.next_page_token,
            resource_version: page.resource_version,
        }))
    }

    async fn update_pod(&self, req: Request<pb::UpdatePodRequest>) -> R<Pod> {
        let pod = self
            .update(req.into_inner().pod, "pod", check_pod_update)
            .await
            .map_err(status)?;
        Ok(Response::new(pod))
    }

    async fn delete_pod(&self, req: Request<pb::DeletePodRequest>) -> R<Pod> {
        Ok(Response::new(
            self.delete_pod_graceful(req.into_inner())
                .await
                .map_err(status)?,
        ))
    }
}
