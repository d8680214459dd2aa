//! proto -> Kubernetes: what `get -o yaml|json` prints.

use std::collections::BTreeMap;

use badge_core::Kind;
use badge_proto::{identity as id, meta, rbac};
use base64::Engine as _;

use super::KindExt as _;
use super::types::*;

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
        let tm = |k: Kind| (k.api_version().to_string(), k.as_str().to_string());
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
            Proto::Role(p) => Object::Role(role_back(Kind::Role, &p.metadata, &p.rules)),
            Proto::ClusterRole(p) => {
                Object::ClusterRole(role_back(Kind::ClusterRole, &p.metadata, &p.rules))
            }
            Proto::RoleBinding(p) => Object::RoleBinding(binding_back(
                Kind::RoleBinding,
                &p.metadata,
                &p.subjects,
                &p.role_ref,
            )),
            Proto::ClusterRoleBinding(p) => Object::ClusterRoleBinding(binding_back(
                Kind::ClusterRoleBinding,
                &p.metadata,
                &p.subjects,
                &p.role_ref,
            )),
        }
    }
}

/// A Role or ClusterRole: one shape in Kubernetes, two messages in Badge.
fn role_back(kind: Kind, metadata: &Option<meta::ObjectMeta>, rules: &[rbac::PolicyRule]) -> Role {
    Role {
        api_version: kind.api_version().to_string(),
        kind: kind.as_str().to_string(),
        metadata: meta_from_proto(metadata),
        rules: rules_back(rules),
    }
}

/// A RoleBinding or ClusterRoleBinding: one shape in Kubernetes, two messages in
/// Badge.
fn binding_back(
    kind: Kind,
    metadata: &Option<meta::ObjectMeta>,
    subjects: &[rbac::Subject],
    role_ref: &Option<rbac::RoleRef>,
) -> RoleBinding {
    RoleBinding {
        api_version: kind.api_version().to_string(),
        kind: kind.as_str().to_string(),
        metadata: meta_from_proto(metadata),
        subjects: subjects_back(subjects),
        role_ref: role_ref_back(role_ref),
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
}
