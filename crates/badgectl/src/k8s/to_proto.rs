//! Kubernetes -> proto: what `apply -f` sends.

use badge_proto::{identity as id, meta, rbac};
use base64::Engine as _;

use super::types::*;

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
