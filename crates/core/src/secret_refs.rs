//! The one walk over every Secret a pod references.
//!
//! Kubernetes' CVE-2024-3177 (mountable-secrets bypass through `envFrom` in
//! containers) came from several hand-written loops, one per reference kind, that
//! drifted apart. Badge has this single visitor: admission, mirror-pod checks and
//! anything else that asks "which secrets does this pod use?" go through it, so a new
//! reference kind is added in one place and every check sees it.

use badge_proto::identity::{Container, PodSpec, volume, volume_projection};

/// Where a secret reference sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretRefKind {
    /// `spec.volumes[i].secret.secret_name`.
    VolumeSecret,
    /// `spec.volumes[i].projected.sources[j].secret.name`.
    ProjectedSecret,
    /// `spec.{init_,}containers[i].env[j].value_from.secret_key_ref.name`.
    EnvSecretKeyRef,
    /// `spec.{init_,}containers[i].env_from[j].secret_ref.name`.
    EnvFromSecretRef,
    /// `spec.image_pull_secrets[i].name`.
    ImagePullSecret,
}

/// Which container list a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    Init,
    Regular,
}

/// The container an env/envFrom reference belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerRef<'a> {
    pub name: &'a str,
    pub kind: ContainerKind,
}

/// One reference to a Secret from a pod spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef<'a> {
    /// The referenced Secret's name (never empty).
    pub name: &'a str,
    /// The field path of the reference, e.g. `spec.volumes[0].secret.secret_name`.
    pub path: String,
    pub kind: SecretRefKind,
    /// For `EnvSecretKeyRef` and `EnvFromSecretRef`: the container.
    pub container: Option<ContainerRef<'a>>,
    /// For `EnvSecretKeyRef`: the environment variable's name.
    pub env_var: Option<&'a str>,
}

/// Calls `f` once for every secret reference in `spec`, in spec order: volumes (plain
/// and projected sources), init containers, containers (each: `env`, then
/// `env_from`), image pull secrets. References with an empty name are skipped: they
/// name no Secret (pod validation rejects them separately).
pub fn visit_pod_secret_refs<'a>(spec: &'a PodSpec, mut f: impl FnMut(SecretRef<'a>)) {
    let mut emit = |name: &'a str,
                    path: String,
                    kind: SecretRefKind,
                    container: Option<ContainerRef<'a>>,
                    env_var: Option<&'a str>| {
        if !name.is_empty() {
            f(SecretRef {
                name,
                path,
                kind,
                container,
                env_var,
            });
        }
    };

    for (i, v) in spec.volumes.iter().enumerate() {
        match &v.source {
            Some(volume::Source::Secret(s)) => emit(
                &s.secret_name,
                format!("spec.volumes[{i}].secret.secret_name"),
                SecretRefKind::VolumeSecret,
                None,
                None,
            ),
            Some(volume::Source::Projected(p)) => {
                for (j, src) in p.sources.iter().enumerate() {
                    if let Some(volume_projection::Projection::Secret(s)) = &src.projection {
                        emit(
                            &s.name,
                            format!("spec.volumes[{i}].projected.sources[{j}].secret.name"),
                            SecretRefKind::ProjectedSecret,
                            None,
                            None,
                        );
                    }
                }
            }
            None => {}
        }
    }

    let lists: [(&'a [Container], &str, ContainerKind); 2] = [
        (
            &spec.init_containers,
            "init_containers",
            ContainerKind::Init,
        ),
        (&spec.containers, "containers", ContainerKind::Regular),
    ];
    for (containers, field, kind) in lists {
        for (i, c) in containers.iter().enumerate() {
            let container = Some(ContainerRef {
                name: &c.name,
                kind,
            });
            for (j, e) in c.env.iter().enumerate() {
                if let Some(r) = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                {
                    emit(
                        &r.name,
                        format!("spec.{field}[{i}].env[{j}].value_from.secret_key_ref.name"),
                        SecretRefKind::EnvSecretKeyRef,
                        container,
                        Some(&e.name),
                    );
                }
            }
            for (j, e) in c.env_from.iter().enumerate() {
                if let Some(r) = &e.secret_ref {
                    emit(
                        &r.name,
                        format!("spec.{field}[{i}].env_from[{j}].secret_ref.name"),
                        SecretRefKind::EnvFromSecretRef,
                        container,
                        None,
                    );
                }
            }
        }
    }

    for (i, r) in spec.image_pull_secrets.iter().enumerate() {
        emit(
            &r.name,
            format!("spec.image_pull_secrets[{i}].name"),
            SecretRefKind::ImagePullSecret,
            None,
            None,
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use badge_proto::identity::{
        ConfigMapEnvSource, ConfigMapProjection, EnvFromSource, EnvVar, EnvVarSource,
        ProjectedVolumeSource, SecretEnvSource, SecretKeySelector, SecretProjection,
        SecretVolumeSource, ServiceAccountTokenProjection, Volume, VolumeProjection,
    };
    use badge_proto::meta::LocalObjectReference;

    pub(crate) fn secret_volume(name: &str, secret: &str) -> Volume {
        Volume {
            name: name.into(),
            source: Some(volume::Source::Secret(SecretVolumeSource {
                secret_name: secret.into(),
                ..Default::default()
            })),
        }
    }

    pub(crate) fn projected_secret_volume(name: &str, secrets: &[&str]) -> Volume {
        let mut sources = vec![VolumeProjection {
            projection: Some(volume_projection::Projection::ServiceAccountToken(
                ServiceAccountTokenProjection {
                    path: "token".into(),
                    ..Default::default()
                },
            )),
        }];
        sources.extend(secrets.iter().map(|s| VolumeProjection {
            projection: Some(volume_projection::Projection::Secret(SecretProjection {
                name: (*s).into(),
                ..Default::default()
            })),
        }));
        Volume {
            name: name.into(),
            source: Some(volume::Source::Projected(ProjectedVolumeSource {
                sources,
                default_mode: None,
            })),
        }
    }

    pub(crate) fn env_secret(var: &str, secret: &str) -> EnvVar {
        EnvVar {
            name: var.into(),
            value: String::new(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: "k".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        }
    }

    pub(crate) fn env_from_secret(secret: &str) -> EnvFromSource {
        EnvFromSource {
            prefix: String::new(),
            secret_ref: Some(SecretEnvSource {
                name: secret.into(),
                optional: None,
            }),
            config_map_ref: None,
        }
    }

    pub(crate) fn pull_secret(name: &str) -> LocalObjectReference {
        LocalObjectReference { name: name.into() }
    }

    /// A pod that references a secret in every place a pod can, plus decoys (config
    /// maps, plain values, empty names) that must not be reported.
    fn everything_pod() -> PodSpec {
        PodSpec {
            volumes: vec![
                secret_volume("v0", "vol-secret"),
                projected_secret_volume("v1", &["proj-a", "proj-b"]),
                Volume {
                    name: "v2".into(),
                    source: Some(volume::Source::Projected(ProjectedVolumeSource {
                        sources: vec![VolumeProjection {
                            projection: Some(volume_projection::Projection::ConfigMap(
                                ConfigMapProjection {
                                    name: "not-a-secret".into(),
                                    ..Default::default()
                                },
                            )),
                        }],
                        default_mode: None,
                    })),
                },
                secret_volume("v3", ""),
                Volume {
                    name: "v4".into(),
                    source: None,
                },
            ],
            init_containers: vec![
                Container {
                    name: "init0".into(),
                    env: vec![
                        EnvVar {
                            name: "PLAIN".into(),
                            value: "x".into(),
                            value_from: None,
                        },
                        env_secret("INIT_VAR", "init-env-secret"),
                    ],
                    ..Default::default()
                },
                Container {
                    name: "init1".into(),
                    env_from: vec![
                        EnvFromSource {
                            prefix: "CM_".into(),
                            secret_ref: None,
                            config_map_ref: Some(ConfigMapEnvSource {
                                name: "cm".into(),
                                optional: None,
                            }),
                        },
                        env_from_secret("init-envfrom-secret"),
                    ],
                    ..Default::default()
                },
            ],
            containers: vec![Container {
                name: "app".into(),
                env: vec![env_secret("APP_VAR", "app-env-secret"), env_secret("E", "")],
                env_from: vec![env_from_secret("app-envfrom-secret")],
                ..Default::default()
            }],
            image_pull_secrets: vec![
                pull_secret("pull-a"),
                pull_secret(""),
                pull_secret("pull-b"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn visits_every_reference_once_with_its_path() {
        use ContainerKind::{Init, Regular};
        use SecretRefKind::*;
        let spec = everything_pod();
        let mut got = Vec::new();
        visit_pod_secret_refs(&spec, |r| got.push(r));

        type Want = (
            &'static str,
            &'static str,
            SecretRefKind,
            Option<(&'static str, ContainerKind)>,
            Option<&'static str>,
        );
        let want: &[Want] = &[
            (
                "vol-secret",
                "spec.volumes[0].secret.secret_name",
                VolumeSecret,
                None,
                None,
            ),
            (
                "proj-a",
                "spec.volumes[1].projected.sources[1].secret.name",
                ProjectedSecret,
                None,
                None,
            ),
            (
                "proj-b",
                "spec.volumes[1].projected.sources[2].secret.name",
                ProjectedSecret,
                None,
                None,
            ),
            (
                "init-env-secret",
                "spec.init_containers[0].env[1].value_from.secret_key_ref.name",
                EnvSecretKeyRef,
                Some(("init0", Init)),
                Some("INIT_VAR"),
            ),
            (
                "init-envfrom-secret",
                "spec.init_containers[1].env_from[1].secret_ref.name",
                EnvFromSecretRef,
                Some(("init1", Init)),
                None,
            ),
            (
                "app-env-secret",
                "spec.containers[0].env[0].value_from.secret_key_ref.name",
                EnvSecretKeyRef,
                Some(("app", Regular)),
                Some("APP_VAR"),
            ),
            (
                "app-envfrom-secret",
                "spec.containers[0].env_from[0].secret_ref.name",
                EnvFromSecretRef,
                Some(("app", Regular)),
                None,
            ),
            (
                "pull-a",
                "spec.image_pull_secrets[0].name",
                ImagePullSecret,
                None,
                None,
            ),
            (
                "pull-b",
                "spec.image_pull_secrets[2].name",
                ImagePullSecret,
                None,
                None,
            ),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, (name, path, kind, container, env_var)) in got.iter().zip(want) {
            assert_eq!(g.name, *name);
            assert_eq!(g.path, *path);
            assert_eq!(g.kind, *kind, "{path}");
            assert_eq!(g.container.map(|c| (c.name, c.kind)), *container, "{path}");
            assert_eq!(g.env_var, *env_var, "{path}");
        }
        // Every kind of reference was exercised.
        for k in [
            VolumeSecret,
            ProjectedSecret,
            EnvSecretKeyRef,
            EnvFromSecretRef,
            ImagePullSecret,
        ] {
            assert!(got.iter().any(|r| r.kind == k), "{k:?} not visited");
        }
    }

    #[test]
    fn empty_spec_visits_nothing() {
        let mut n = 0;
        visit_pod_secret_refs(&PodSpec::default(), |_| n += 1);
        assert_eq!(n, 0);
    }

    /// One reference at a time, in each place: each is found alone, so no place is
    /// only "found" because a neighbour was.
    #[test]
    fn each_place_alone() {
        let cases: Vec<(PodSpec, &str)> = vec![
            (
                PodSpec {
                    volumes: vec![secret_volume("v", "s")],
                    ..Default::default()
                },
                "spec.volumes[0].secret.secret_name",
            ),
            (
                PodSpec {
                    volumes: vec![projected_secret_volume("v", &["s"])],
                    ..Default::default()
                },
                "spec.volumes[0].projected.sources[1].secret.name",
            ),
            (
                PodSpec {
                    init_containers: vec![Container {
                        env: vec![env_secret("V", "s")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "spec.init_containers[0].env[0].value_from.secret_key_ref.name",
            ),
            (
                PodSpec {
                    init_containers: vec![Container {
                        env_from: vec![env_from_secret("s")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "spec.init_containers[0].env_from[0].secret_ref.name",
            ),
            (
                PodSpec {
                    containers: vec![Container {
                        env: vec![env_secret("V", "s")],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "spec.containers[0].env[0].value_from.secret_key_ref.name",
            ),
            (
                PodSpec {
                    containers: vec![
                        Container::default(),
                        Container {
                            env_from: vec![env_from_secret("s")],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                "spec.containers[1].env_from[0].secret_ref.name",
            ),
            (
                PodSpec {
                    image_pull_secrets: vec![pull_secret("s")],
                    ..Default::default()
                },
                "spec.image_pull_secrets[0].name",
            ),
        ];
        for (spec, want) in cases {
            let mut paths = Vec::new();
            visit_pod_secret_refs(&spec, |r| {
                assert_eq!(r.name, "s");
                paths.push(r.path);
            });
            assert_eq!(paths, [want]);
        }
    }
}
