//! Kubernetes-format objects (what `apply -f` reads and `get -o yaml|json` prints),
//! and their conversion to and from Badge's protobuf messages. Every struct refuses
//! unknown fields, so a typo is an error naming the field instead of being dropped.

use std::collections::BTreeMap;

use badge_proto::{identity as id, meta, rbac};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalObjectReference {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field_path: String,
}

// ---- core/v1 ----

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccount {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ObjectReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Secret {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    /// Values in base64, as Kubernetes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolumeSource>,
    /// Stored as a projected volume with one configMap source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// Stored as a projected volume with one downwardAPI source.
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<DownwardApiVolumeSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretVolumeSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DownwardApiVolumeSource {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiVolumeFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProjectedVolumeSource {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<VolumeProjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeProjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_token: Option<ServiceAccountTokenProjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyedProjection>,
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<DownwardApiProjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeyedProjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_certificate: Option<PodCertificateProjection>,
}

/// Kubernetes' `podCertificate` projected source (core/v1 `PodCertificateProjection`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodCertificateProjection {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signer_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_expiration_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_bundle_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_chain_path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccountTokenProjection {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audience: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i64>,
    #[serde(default)]
    pub path: String,
}

/// configMap and secret projections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyedProjection {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DownwardApiProjection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiVolumeFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DownwardApiVolumeFile {
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectFieldSelector {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default)]
    pub field_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeySelector {
    #[serde(default)]
    pub name: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvFromSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<EnvSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<EnvSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvSource {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
}

// ---- rbac.authorization.k8s.io/v1 ----

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Role {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleRef {
    #[serde(default)]
    pub api_group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleBinding {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
}

/// One object of a supported kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    Secret(Secret),
    Pod(Pod),
    Node(Node),
    Role(Role),
    ClusterRole(Role),
    RoleBinding(RoleBinding),
    ClusterRoleBinding(RoleBinding),
}

pub const CORE: &str = "v1";
pub const RBAC: &str = "rbac.authorization.k8s.io/v1";

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::Secret(_) => Kind::Secret,
            Object::Pod(_) => Kind::Pod,
            Object::Node(_) => Kind::Node,
            Object::Role(_) => Kind::Role,
            Object::ClusterRole(_) => Kind::ClusterRole,
            Object::RoleBinding(_) => Kind::RoleBinding,
            Object::ClusterRoleBinding(_) => Kind::ClusterRoleBinding,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Role(o) | Object::ClusterRole(o) => &o.metadata,
            Object::RoleBinding(o) | Object::ClusterRoleBinding(o) => &o.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Role(o) | Object::ClusterRole(o) => &mut o.metadata,
            Object::RoleBinding(o) | Object::ClusterRoleBinding(o) => &mut o.metadata,
        }
    }

    /// As JSON in Kubernetes' shape.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::ServiceAccount(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
            Object::Role(o) | Object::ClusterRole(o) => serde_json::to_value(o),
            Object::RoleBinding(o) | Object::ClusterRoleBinding(o) => serde_json::to_value(o),
        };
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// The kinds badgectl knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Namespace,
    ServiceAccount,
    Secret,
    Pod,
    Node,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::Pod,
        Kind::Node,
        Kind::Role,
        Kind::ClusterRole,
        Kind::RoleBinding,
        Kind::ClusterRoleBinding,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Secret => "Secret",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Role => "Role",
            Kind::ClusterRole => "ClusterRole",
            Kind::RoleBinding => "RoleBinding",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding => RBAC,
            _ => CORE,
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::ClusterRole | Kind::ClusterRoleBinding
        )
    }

    /// Plural resource name (`serviceaccounts`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Secret => "secrets",
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::Role => "roles",
            Kind::ClusterRole => "clusterroles",
            Kind::RoleBinding => "rolebindings",
            Kind::ClusterRoleBinding => "clusterrolebindings",
        }
    }

    /// How kubectl names it in output: `serviceaccount`, `role.rbac.authorization.k8s.io`.
    pub fn display(self) -> String {
        let lower = self.name().to_ascii_lowercase();
        if self.api_version() == RBAC {
            format!("{lower}.rbac.authorization.k8s.io")
        } else {
            lower
        }
    }

    /// Parses a kind as `get` and `delete` take it: singular, plural, short name,
    /// optionally with `.rbac.authorization.k8s.io`.
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let s = lower
            .strip_suffix(".rbac.authorization.k8s.io")
            .unwrap_or(&lower);
        Some(match s {
            "ns" | "namespace" | "namespaces" => Kind::Namespace,
            "sa" | "serviceaccount" | "serviceaccounts" => Kind::ServiceAccount,
            "secret" | "secrets" => Kind::Secret,
            "po" | "pod" | "pods" => Kind::Pod,
            "no" | "node" | "nodes" => Kind::Node,
            "role" | "roles" => Kind::Role,
            "clusterrole" | "clusterroles" => Kind::ClusterRole,
            "rolebinding" | "rolebindings" => Kind::RoleBinding,
            "clusterrolebinding" | "clusterrolebindings" => Kind::ClusterRoleBinding,
            _ => return None,
        })
    }

    /// The kind a manifest's `kind` / `apiVersion` pair names.
    pub fn from_manifest(api_version: &str, kind: &str) -> Option<Kind> {
        let k = Kind::ALL.into_iter().find(|k| k.name() == kind)?;
        (k.api_version() == api_version).then_some(k)
    }
}

// ---- conversions: Kubernetes -> proto ----

fn meta_to_proto(m: &ObjectMeta) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: String::new(),
        resource_version: m.resource_version.clone(),
        labels: m.labels.clone().into_iter().collect(),
        annotations: m.annotations.clone().into_iter().collect(),
        creation_timestamp: None,
        deletion_timestamp: None,
    })
}

fn local_refs(v: &[LocalObjectReference]) -> Vec<meta::LocalObjectReference> {
    v.iter()
        .map(|r| meta::LocalObjectReference {
            name: r.name.clone(),
        })
        .collect()
}

fn key_to_path(v: &[KeyToPath]) -> Vec<id::KeyToPath> {
    v.iter()
        .map(|k| id::KeyToPath {
            key: k.key.clone(),
            path: k.path.clone(),
            mode: k.mode,
        })
        .collect()
}

fn field_sel(f: &Option<ObjectFieldSelector>) -> Option<id::ObjectFieldSelector> {
    f.as_ref().map(|f| id::ObjectFieldSelector {
        api_version: f.api_version.clone(),
        field_path: f.field_path.clone(),
    })
}

fn downward_files(v: &[DownwardApiVolumeFile]) -> Vec<id::DownwardApiVolumeFile> {
    v.iter()
        .map(|f| id::DownwardApiVolumeFile {
            path: f.path.clone(),
            field_ref: field_sel(&f.field_ref),
            mode: f.mode,
        })
        .collect()
}

fn volume_to_proto(v: &Volume) -> Result<id::Volume, String> {
    use id::volume::Source;
    use id::volume_projection::Projection;
    let set = [
        v.secret.is_some(),
        v.projected.is_some(),
        v.config_map.is_some(),
        v.downward_api.is_some(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    if set != 1 {
        return Err(format!(
            "volume {:?}: exactly one of secret, projected, configMap, downwardAPI must be set",
            v.name
        ));
    }
    let source = if let Some(s) = &v.secret {
        Source::Secret(id::SecretVolumeSource {
            secret_name: s.secret_name.clone(),
            items: key_to_path(&s.items),
            default_mode: s.default_mode,
            optional: s.optional,
        })
    } else if let Some(c) = &v.config_map {
        Source::Projected(id::ProjectedVolumeSource {
            sources: vec![id::VolumeProjection {
                projection: Some(Projection::ConfigMap(id::ConfigMapProjection {
                    name: c.name.clone(),
                    items: key_to_path(&c.items),
                    optional: c.optional,
                })),
            }],
            default_mode: c.default_mode,
        })
    } else if let Some(d) = &v.downward_api {
        Source::Projected(id::ProjectedVolumeSource {
            sources: vec![id::VolumeProjection {
                projection: Some(Projection::DownwardApi(id::DownwardApiProjection {
                    items: downward_files(&d.items),
                })),
            }],
            default_mode: d.default_mode,
        })
    } else {
        let p = v.projected.as_ref().ok_or("unreachable")?;
        let mut sources = Vec::new();
        for (i, s) in p.sources.iter().enumerate() {
            let set = [
                s.service_account_token.is_some(),
                s.config_map.is_some(),
                s.downward_api.is_some(),
                s.secret.is_some(),
                s.pod_certificate.is_some(),
            ]
            .into_iter()
            .filter(|b| *b)
            .count();
            if set != 1 {
                return Err(format!(
                    "volume {:?}: projected.sources[{i}]: exactly one of serviceAccountToken, configMap, downwardAPI, secret, podCertificate must be set",
                    v.name
                ));
            }
            let projection = if let Some(t) = &s.service_account_token {
                Projection::ServiceAccountToken(id::ServiceAccountTokenProjection {
                    audience: t.audience.clone(),
                    expiration_seconds: t.expiration_seconds,
                    path: t.path.clone(),
                })
            } else if let Some(c) = &s.config_map {
                Projection::ConfigMap(id::ConfigMapProjection {
                    name: c.name.clone(),
                    items: key_to_path(&c.items),
                    optional: c.optional,
                })
            } else if let Some(d) = &s.downward_api {
                Projection::DownwardApi(id::DownwardApiProjection {
                    items: downward_files(&d.items),
                })
            } else if let Some(c) = &s.pod_certificate {
                Projection::PodCertificate(id::PodCertificateProjection {
                    signer_name: c.signer_name.clone(),
                    key_type: c.key_type.clone(),
                    max_expiration_seconds: c.max_expiration_seconds,
                    credential_bundle_path: c.credential_bundle_path.clone(),
                    key_path: c.key_path.clone(),
                    certificate_chain_path: c.certificate_chain_path.clone(),
                    user_annotations: c
                        .user_annotations
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
            } else {
                let c = s.secret.as_ref().ok_or("unreachable")?;
                Projection::Secret(id::SecretProjection {
                    name: c.name.clone(),
                    items: key_to_path(&c.items),
                    optional: c.optional,
                })
            };
            sources.push(id::VolumeProjection {
                projection: Some(projection),
            });
        }
        Source::Projected(id::ProjectedVolumeSource {
            sources,
            default_mode: p.default_mode,
        })
    };
    Ok(id::Volume {
        name: v.name.clone(),
        source: Some(source),
    })
}

fn key_sel_secret(k: &Option<KeySelector>) -> Option<id::SecretKeySelector> {
    k.as_ref().map(|k| id::SecretKeySelector {
        name: k.name.clone(),
        key: k.key.clone(),
        optional: k.optional,
    })
}

fn key_sel_cm(k: &Option<KeySelector>) -> Option<id::ConfigMapKeySelector> {
    k.as_ref().map(|k| id::ConfigMapKeySelector {
        name: k.name.clone(),
        key: k.key.clone(),
        optional: k.optional,
    })
}

fn container_to_proto(c: &Container) -> id::Container {
    id::Container {
        name: c.name.clone(),
        image: c.image.clone(),
        env: c
            .env
            .iter()
            .map(|e| id::EnvVar {
                name: e.name.clone(),
                value: e.value.clone(),
                value_from: e.value_from.as_ref().map(|f| id::EnvVarSource {
                    secret_key_ref: key_sel_secret(&f.secret_key_ref),
                    config_map_key_ref: key_sel_cm(&f.config_map_key_ref),
                    field_ref: field_sel(&f.field_ref),
                }),
            })
            .collect(),
        env_from: c
            .env_from
            .iter()
            .map(|e| id::EnvFromSource {
                prefix: e.prefix.clone(),
                secret_ref: e.secret_ref.as_ref().map(|s| id::SecretEnvSource {
                    name: s.name.clone(),
                    optional: s.optional,
                }),
                config_map_ref: e.config_map_ref.as_ref().map(|s| id::ConfigMapEnvSource {
                    name: s.name.clone(),
                    optional: s.optional,
                }),
            })
            .collect(),
        volume_mounts: c
            .volume_mounts
            .iter()
            .map(|m| id::VolumeMount {
                name: m.name.clone(),
                read_only: m.read_only,
                mount_path: m.mount_path.clone(),
                sub_path: m.sub_path.clone(),
            })
            .collect(),
    }
}

fn rules_to_proto(v: &[PolicyRule]) -> Vec<rbac::PolicyRule> {
    v.iter()
        .map(|r| rbac::PolicyRule {
            verbs: r.verbs.clone(),
            api_groups: r.api_groups.clone(),
            resources: r.resources.clone(),
            resource_names: r.resource_names.clone(),
            non_resource_urls: r.non_resource_urls.clone(),
        })
        .collect()
}

fn subjects_to_proto(v: &[Subject]) -> Vec<rbac::Subject> {
    v.iter()
        .map(|s| rbac::Subject {
            kind: s.kind.clone(),
            api_group: s.api_group.clone(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
        })
        .collect()
}

fn role_ref_to_proto(r: &RoleRef) -> Option<rbac::RoleRef> {
    Some(rbac::RoleRef {
        api_group: r.api_group.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
    })
}

/// An object as Badge's message.
#[derive(Debug, Clone, PartialEq)]
pub enum Proto {
    Namespace(id::Namespace),
    ServiceAccount(id::ServiceAccount),
    Secret(id::Secret),
    Pod(id::Pod),
    Node(id::Node),
    Role(rbac::Role),
    ClusterRole(rbac::ClusterRole),
    RoleBinding(rbac::RoleBinding),
    ClusterRoleBinding(rbac::ClusterRoleBinding),
}

impl Object {
    /// The message to send; `Err` names what is wrong (local validation).
    pub fn to_proto(&self) -> Result<Proto, String> {
        Ok(match self {
            Object::Namespace(o) => Proto::Namespace(id::Namespace {
                metadata: meta_to_proto(&o.metadata),
                status: None,
            }),
            Object::ServiceAccount(o) => Proto::ServiceAccount(id::ServiceAccount {
                metadata: meta_to_proto(&o.metadata),
                secrets: o
                    .secrets
                    .iter()
                    .map(|r| meta::ObjectReference {
                        kind: r.kind.clone(),
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        uid: r.uid.clone(),
                        api_version: r.api_version.clone(),
                        resource_version: r.resource_version.clone(),
                        field_path: r.field_path.clone(),
                    })
                    .collect(),
                image_pull_secrets: local_refs(&o.image_pull_secrets),
                automount_service_account_token: o.automount_service_account_token,
            }),
            Object::Secret(o) => {
                let mut data = std::collections::HashMap::new();
                for (k, v) in &o.data {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .map_err(|e| format!("data.{k}: not base64: {e}"))?;
                    data.insert(k.clone(), bytes);
                }
                Proto::Secret(id::Secret {
                    metadata: meta_to_proto(&o.metadata),
                    r#type: o.type_.clone(),
                    data,
                    string_data: o.string_data.clone().into_iter().collect(),
                })
            }
            Object::Pod(o) => {
                let s = &o.spec;
                let mut volumes = Vec::new();
                for (i, v) in s.volumes.iter().enumerate() {
                    volumes
                        .push(volume_to_proto(v).map_err(|e| format!("spec.volumes[{i}]: {e}"))?);
                }
                Proto::Pod(id::Pod {
                    metadata: meta_to_proto(&o.metadata),
                    spec: Some(id::PodSpec {
                        service_account_name: s.service_account_name.clone(),
                        automount_service_account_token: s.automount_service_account_token,
                        node_name: s.node_name.clone(),
                        volumes,
                        init_containers: s.init_containers.iter().map(container_to_proto).collect(),
                        containers: s.containers.iter().map(container_to_proto).collect(),
                        image_pull_secrets: local_refs(&s.image_pull_secrets),
                    }),
                })
            }
            Object::Node(o) => Proto::Node(id::Node {
                metadata: meta_to_proto(&o.metadata),
            }),
            Object::Role(o) => Proto::Role(rbac::Role {
                metadata: meta_to_proto(&o.metadata),
                rules: rules_to_proto(&o.rules),
            }),
            Object::ClusterRole(o) => Proto::ClusterRole(rbac::ClusterRole {
                metadata: meta_to_proto(&o.metadata),
                rules: rules_to_proto(&o.rules),
            }),
            Object::RoleBinding(o) => Proto::RoleBinding(rbac::RoleBinding {
                metadata: meta_to_proto(&o.metadata),
                subjects: subjects_to_proto(&o.subjects),
                role_ref: role_ref_to_proto(&o.role_ref),
            }),
            Object::ClusterRoleBinding(o) => Proto::ClusterRoleBinding(rbac::ClusterRoleBinding {
                metadata: meta_to_proto(&o.metadata),
                subjects: subjects_to_proto(&o.subjects),
                role_ref: role_ref_to_proto(&o.role_ref),
            }),
        })
    }
}

// ---- conversions: proto -> Kubernetes ----

/// RFC 3339 in UTC, seconds precision, as Kubernetes prints timestamps.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    let secs = ts.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = badge_core::clock::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub fn meta_from_proto(m: &Option<meta::ObjectMeta>) -> ObjectMeta {
    let Some(m) = m else {
        return ObjectMeta::default();
    };
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        labels: m.labels.clone().into_iter().collect(),
        annotations: m.annotations.clone().into_iter().collect(),
        creation_timestamp: m.creation_timestamp.as_ref().map(rfc3339),
        deletion_timestamp: m.deletion_timestamp.as_ref().map(rfc3339),
    }
}

fn local_refs_back(v: &[meta::LocalObjectReference]) -> Vec<LocalObjectReference> {
    v.iter()
        .map(|r| LocalObjectReference {
            name: r.name.clone(),
        })
        .collect()
}

fn key_to_path_back(v: &[id::KeyToPath]) -> Vec<KeyToPath> {
    v.iter()
        .map(|k| KeyToPath {
            key: k.key.clone(),
            path: k.path.clone(),
            mode: k.mode,
        })
        .collect()
}

fn field_sel_back(f: &Option<id::ObjectFieldSelector>) -> Option<ObjectFieldSelector> {
    f.as_ref().map(|f| ObjectFieldSelector {
        api_version: f.api_version.clone(),
        field_path: f.field_path.clone(),
    })
}

fn downward_back(v: &[id::DownwardApiVolumeFile]) -> Vec<DownwardApiVolumeFile> {
    v.iter()
        .map(|f| DownwardApiVolumeFile {
            path: f.path.clone(),
            field_ref: field_sel_back(&f.field_ref),
            mode: f.mode,
        })
        .collect()
}

fn volume_back(v: &id::Volume) -> Volume {
    use id::volume::Source;
    use id::volume_projection::Projection;
    let mut out = Volume {
        name: v.name.clone(),
        ..Volume::default()
    };
    match &v.source {
        Some(Source::Secret(s)) => {
            out.secret = Some(SecretVolumeSource {
                secret_name: s.secret_name.clone(),
                items: key_to_path_back(&s.items),
                default_mode: s.default_mode,
                optional: s.optional,
            });
        }
        Some(Source::Projected(p)) => {
            out.projected = Some(ProjectedVolumeSource {
                default_mode: p.default_mode,
                sources: p
                    .sources
                    .iter()
                    .map(|s| {
                        let mut o = VolumeProjection::default();
                        match &s.projection {
                            Some(Projection::ServiceAccountToken(t)) => {
                                o.service_account_token = Some(ServiceAccountTokenProjection {
                                    audience: t.audience.clone(),
                                    expiration_seconds: t.expiration_seconds,
                                    path: t.path.clone(),
                                });
                            }
                            Some(Projection::ConfigMap(c)) => {
                                o.config_map = Some(KeyedProjection {
                                    name: c.name.clone(),
                                    items: key_to_path_back(&c.items),
                                    optional: c.optional,
                                });
                            }
                            Some(Projection::DownwardApi(d)) => {
                                o.downward_api = Some(DownwardApiProjection {
                                    items: downward_back(&d.items),
                                });
                            }
                            Some(Projection::Secret(c)) => {
                                o.secret = Some(KeyedProjection {
                                    name: c.name.clone(),
                                    items: key_to_path_back(&c.items),
                                    optional: c.optional,
                                });
                            }
                            Some(Projection::PodCertificate(c)) => {
                                o.pod_certificate = Some(PodCertificateProjection {
                                    signer_name: c.signer_name.clone(),
                                    key_type: c.key_type.clone(),
                                    max_expiration_seconds: c.max_expiration_seconds,
                                    credential_bundle_path: c.credential_bundle_path.clone(),
                                    key_path: c.key_path.clone(),
                                    certificate_chain_path: c.certificate_chain_path.clone(),
                                    user_annotations: c
                                        .user_annotations
                                        .iter()
                                        .map(|(k, v)| (k.clone(), v.clone()))
                                        .collect(),
                                });
                            }
                            None => {}
                        }
                        o
                    })
                    .collect(),
            });
        }
        None => {}
    }
    out
}

fn container_back(c: &id::Container) -> Container {
    Container {
        name: c.name.clone(),
        image: c.image.clone(),
        env: c
            .env
            .iter()
            .map(|e| EnvVar {
                name: e.name.clone(),
                value: e.value.clone(),
                value_from: e.value_from.as_ref().map(|f| EnvVarSource {
                    secret_key_ref: f.secret_key_ref.as_ref().map(|k| KeySelector {
                        name: k.name.clone(),
                        key: k.key.clone(),
                        optional: k.optional,
                    }),
                    config_map_key_ref: f.config_map_key_ref.as_ref().map(|k| KeySelector {
                        name: k.name.clone(),
                        key: k.key.clone(),
                        optional: k.optional,
                    }),
                    field_ref: field_sel_back(&f.field_ref),
                }),
            })
            .collect(),
        env_from: c
            .env_from
            .iter()
            .map(|e| EnvFromSource {
                prefix: e.prefix.clone(),
                secret_ref: e.secret_ref.as_ref().map(|s| EnvSource {
                    name: s.name.clone(),
                    optional: s.optional,
                }),
                config_map_ref: e.config_map_ref.as_ref().map(|s| EnvSource {
                    name: s.name.clone(),
                    optional: s.optional,
                }),
            })
            .collect(),
        volume_mounts: c
            .volume_mounts
            .iter()
            .map(|m| VolumeMount {
                name: m.name.clone(),
                read_only: m.read_only,
                mount_path: m.mount_path.clone(),
                sub_path: m.sub_path.clone(),
            })
            .collect(),
    }
}

fn rules_back(v: &[rbac::PolicyRule]) -> Vec<PolicyRule> {
    v.iter()
        .map(|r| PolicyRule {
            verbs: r.verbs.clone(),
            api_groups: r.api_groups.clone(),
            resources: r.resources.clone(),
            resource_names: r.resource_names.clone(),
            non_resource_urls: r.non_resource_urls.clone(),
        })
        .collect()
}

fn subjects_back(v: &[rbac::Subject]) -> Vec<Subject> {
    v.iter()
        .map(|s| Subject {
            kind: s.kind.clone(),
            api_group: s.api_group.clone(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
        })
        .collect()
}

fn role_ref_back(r: &Option<rbac::RoleRef>) -> RoleRef {
    r.as_ref()
        .map(|r| RoleRef {
            api_group: r.api_group.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
        .unwrap_or_default()
}

impl Proto {
    pub fn to_object(&self) -> Object {
        let tm = |k: Kind| (k.api_version().to_string(), k.name().to_string());
        match self {
            Proto::Namespace(p) => {
                let (api_version, kind) = tm(Kind::Namespace);
                Object::Namespace(Namespace {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    status: p.status.as_ref().map(|s| NamespaceStatus {
                        phase: s.phase.clone(),
                    }),
                })
            }
            Proto::ServiceAccount(p) => {
                let (api_version, kind) = tm(Kind::ServiceAccount);
                Object::ServiceAccount(ServiceAccount {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    secrets: p
                        .secrets
                        .iter()
                        .map(|r| ObjectReference {
                            kind: r.kind.clone(),
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            uid: r.uid.clone(),
                            api_version: r.api_version.clone(),
                            resource_version: r.resource_version.clone(),
                            field_path: r.field_path.clone(),
                        })
                        .collect(),
                    image_pull_secrets: local_refs_back(&p.image_pull_secrets),
                    automount_service_account_token: p.automount_service_account_token,
                })
            }
            Proto::Secret(p) => {
                let (api_version, kind) = tm(Kind::Secret);
                Object::Secret(Secret {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    type_: p.r#type.clone(),
                    data: p
                        .data
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                base64::engine::general_purpose::STANDARD.encode(v),
                            )
                        })
                        .collect(),
                    string_data: BTreeMap::new(),
                })
            }
            Proto::Pod(p) => {
                let (api_version, kind) = tm(Kind::Pod);
                let s = p.spec.clone().unwrap_or_default();
                Object::Pod(Pod {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    spec: PodSpec {
                        service_account_name: s.service_account_name.clone(),
                        automount_service_account_token: s.automount_service_account_token,
                        node_name: s.node_name.clone(),
                        volumes: s.volumes.iter().map(volume_back).collect(),
                        init_containers: s.init_containers.iter().map(container_back).collect(),
                        containers: s.containers.iter().map(container_back).collect(),
                        image_pull_secrets: local_refs_back(&s.image_pull_secrets),
                    },
                })
            }
            Proto::Node(p) => {
                let (api_version, kind) = tm(Kind::Node);
                Object::Node(Node {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                })
            }
            Proto::Role(p) => {
                let (api_version, kind) = tm(Kind::Role);
                Object::Role(Role {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    rules: rules_back(&p.rules),
                })
            }
            Proto::ClusterRole(p) => {
                let (api_version, kind) = tm(Kind::ClusterRole);
                Object::ClusterRole(Role {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    rules: rules_back(&p.rules),
                })
            }
            Proto::RoleBinding(p) => {
                let (api_version, kind) = tm(Kind::RoleBinding);
                Object::RoleBinding(RoleBinding {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    subjects: subjects_back(&p.subjects),
                    role_ref: role_ref_back(&p.role_ref),
                })
            }
            Proto::ClusterRoleBinding(p) => {
                let (api_version, kind) = tm(Kind::ClusterRoleBinding);
                Object::ClusterRoleBinding(RoleBinding {
                    api_version,
                    kind,
                    metadata: meta_from_proto(&p.metadata),
                    subjects: subjects_back(&p.subjects),
                    role_ref: role_ref_back(&p.role_ref),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = |s| {
            rfc3339(&prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(t(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(Kind::parse("sa"), Some(Kind::ServiceAccount));
        assert_eq!(Kind::parse("Pods"), Some(Kind::Pod));
        assert_eq!(
            Kind::parse("roles.rbac.authorization.k8s.io"),
            Some(Kind::Role)
        );
        assert_eq!(Kind::parse("deployments"), None);
        assert_eq!(Kind::from_manifest("v1", "Pod"), Some(Kind::Pod));
        assert_eq!(
            Kind::from_manifest("rbac.authorization.k8s.io/v1", "Pod"),
            None
        );
        assert_eq!(Kind::Role.display(), "role.rbac.authorization.k8s.io");
    }
}
