//! The ServiceAccount admission plugin for pod CREATE
//! (`k8s.io/kubernetes/plugin/pkg/admission/serviceaccount/admission.go`), as pure
//! functions. The caller does the IO:
//!
//! 1. if [`is_mirror_pod`]: [`validate_mirror_pod`] and stop (mirror pods are never
//!    mutated);
//! 2. [`default_service_account_name`];
//! 3. look the service account up; a miss is [`missing_service_account`];
//! 4. [`admit_pod`] (mutations, then the enforce-mountable-secrets check).
//!
//! Service-account create/update use [`trim_service_account`] and
//! [`enforce_mountable_secrets_warning`].

use std::collections::HashSet;

use badge_proto::identity::{
    ConfigMapProjection, DownwardApiProjection, DownwardApiVolumeFile, KeyToPath,
    ObjectFieldSelector, Pod, PodSpec, ProjectedVolumeSource, ServiceAccount,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection, volume,
    volume_projection,
};
use badge_proto::meta::{LocalObjectReference, ObjectReference};
use rand::Rng;

use crate::names::quote;
use crate::secret_refs::{ContainerKind, SecretRef, SecretRefKind, visit_pod_secret_refs};
use crate::{Error, FieldViolation, Result};

/// The service account a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where the token volume is mounted in every container.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Token volumes are named this plus [`SUFFIX_LEN`] random characters.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// Kubernetes' name-generator alphabet (no vowels, no look-alikes), so generated names
/// never spell words.
pub const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
pub const SUFFIX_LEN: usize = 5;
/// The token lifetime kubelet-managed volumes ask for. 3607 (not 3600) marks the token
/// as "kubelet default", which the issuer may extend (reference §1.3, §1.5).
pub const TOKEN_VOLUME_EXPIRATION_SECONDS: i64 = 3607;
/// `0644`, set explicitly as Kubernetes does (kubernetes#104464).
pub const TOKEN_VOLUME_DEFAULT_MODE: i32 = 0o644;
/// The ConfigMap with the cluster CA, published into every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// When this service-account annotation parses as true, pods of the account may only
/// use the secrets it lists.
pub const ENFORCE_MOUNTABLE_SECRETS_ANNOTATION: &str = "kubernetes.io/enforce-mountable-secrets";
/// Pods carrying this annotation are static pods mirrored by a kubelet.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether a pod gets the API token volume: the pod's own setting wins, then the
/// service account's, and with neither the answer is yes.
pub fn automount(pod_value: Option<bool>, sa_value: Option<bool>) -> bool {
    pod_value.or(sa_value).unwrap_or(true)
}

/// Step 1 of admission: a pod that names no service account runs as `default`.
/// A pod without a spec gets an empty one.
pub fn default_service_account_name(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    if spec.service_account_name.is_empty() {
        spec.service_account_name = DEFAULT_SERVICE_ACCOUNT.to_owned();
    }
}

/// [`SUFFIX_LEN`] characters from [`SUFFIX_ALPHABET`] (production uses
/// `random_suffix(&mut rand::rng())`).
pub fn random_suffix(rng: &mut impl Rng) -> String {
    (0..SUFFIX_LEN)
        // The index is drawn from the alphabet's own range, so indexing cannot fail.
        .map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())]))
        .collect()
}

/// The projected volume source of the token volume: the token, the cluster CA, and
/// the namespace, in that order.
pub fn token_volume_source() -> ProjectedVolumeSource {
    let source = |p| VolumeProjection {
        projection: Some(p),
    };
    ProjectedVolumeSource {
        default_mode: Some(TOKEN_VOLUME_DEFAULT_MODE),
        sources: vec![
            source(volume_projection::Projection::ServiceAccountToken(
                ServiceAccountTokenProjection {
                    // Empty: the API server's own audiences.
                    audience: String::new(),
                    expiration_seconds: Some(TOKEN_VOLUME_EXPIRATION_SECONDS),
                    path: "token".to_owned(),
                },
            )),
            source(volume_projection::Projection::ConfigMap(
                ConfigMapProjection {
                    name: ROOT_CA_CONFIG_MAP.to_owned(),
                    items: vec![KeyToPath {
                        key: "ca.crt".to_owned(),
                        path: "ca.crt".to_owned(),
                        mode: None,
                    }],
                    optional: None,
                },
            )),
            source(volume_projection::Projection::DownwardApi(
                DownwardApiProjection {
                    items: vec![DownwardApiVolumeFile {
                        path: "namespace".to_owned(),
                        field_ref: Some(ObjectFieldSelector {
                            api_version: "v1".to_owned(),
                            field_path: "metadata.namespace".to_owned(),
                        }),
                        mode: None,
                    }],
                },
            )),
        ],
    }
}

/// Go's `strconv.ParseBool`: exactly `1 t T TRUE true True` and
/// `0 f F FALSE false False`; anything else is `None`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether pods of `sa` are limited to the secrets it lists. As in Kubernetes an
/// unparseable annotation value means "no": the annotation is opt-in, and a typo
/// must not be read as a stricter setting the owner did not ask for either way.
pub fn enforce_mountable_secrets(sa: &ServiceAccount) -> bool {
    sa.metadata
        .as_ref()
        .and_then(|m| m.annotations.get(ENFORCE_MOUNTABLE_SECRETS_ANNOTATION))
        .and_then(|v| parse_go_bool(v))
        .unwrap_or(false)
}

fn name_of(meta: Option<&badge_proto::meta::ObjectMeta>) -> (&str, &str) {
    meta.map_or(("", ""), |m| (m.namespace.as_str(), m.name.as_str()))
}

/// Admits a pod being created to run as `sa`: mounts the API token (when
/// [`automount`] says so), copies the account's image pull secrets into a pod that
/// has none, then, when [`enforce_mountable_secrets`] applies, rejects references to
/// secrets the account does not list.
///
/// Preconditions: [`default_service_account_name`] ran and `sa` is the account the pod
/// names, looked up in the pod's namespace. `random_suffix` names a new token volume
/// (tests pass a fixed one).
///
/// Returns the warnings for the response. Kubernetes returns none on pod create (not
/// even for the deprecated annotation), so today the list is always empty.
///
/// Errors: `FailedPrecondition` with one violation per disallowed reference (all of
/// them, not just the first), or when the pod names no account; `Internal` when `sa`
/// is not the account the pod names (a caller bug that would check the wrong list).
pub fn admit_pod(
    pod: &mut Pod,
    sa: &ServiceAccount,
    random_suffix: &mut impl FnMut() -> String,
) -> Result<Vec<String>> {
    let (pod_ns, _) = name_of(pod.metadata.as_ref());
    let pod_ns = pod_ns.to_owned();
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    if spec.service_account_name.is_empty() {
        return Err(Error::FailedPrecondition {
            message: "no service account specified for pod".to_owned(),
            violations: vec![FieldViolation::new(
                "spec.service_account_name",
                "no service account specified for pod",
            )],
        });
    }
    let (sa_ns, sa_name) = name_of(sa.metadata.as_ref());
    // Enforcement below checks the pod against this account's lists: checking against
    // any other account's lists would let a pod use secrets its own account does not
    // allow, so a mix-up is refused rather than admitted.
    if sa_name != spec.service_account_name || (!pod_ns.is_empty() && sa_ns != pod_ns) {
        return Err(Error::Internal(format!(
            "admission was given service account {sa_ns}/{sa_name} for a pod in namespace \
             {pod_ns:?} naming service account {:?}",
            spec.service_account_name
        )));
    }

    if automount(
        spec.automount_service_account_token,
        sa.automount_service_account_token,
    ) {
        mount_service_account_token(spec, random_suffix);
    }

    if spec.image_pull_secrets.is_empty() {
        spec.image_pull_secrets = sa
            .image_pull_secrets
            .iter()
            .map(|r| LocalObjectReference {
                name: r.name.clone(),
            })
            .collect();
    }

    if enforce_mountable_secrets(sa) {
        let violations = limit_secret_references(spec, sa, sa_name);
        if !violations.is_empty() {
            let message = violations
                .iter()
                .map(|v| v.description.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::FailedPrecondition {
                message,
                violations,
            });
        }
    }
    Ok(Vec::new())
}

/// Adds the token mount to every init container and container without a mount at
/// [`TOKEN_MOUNT_PATH`], reusing the first `kube-api-access-*` volume if there is one,
/// and adds the volume only if it is new and some container mounts it.
fn mount_service_account_token(spec: &mut PodSpec, random_suffix: &mut impl FnMut() -> String) {
    let existing = spec
        .volumes
        .iter()
        .find(|v| v.name.starts_with(TOKEN_VOLUME_PREFIX))
        .map(|v| v.name.clone());
    let has_volume = existing.is_some();
    let volume_name =
        existing.unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", random_suffix()));

    let mut needs_volume = false;
    for c in spec
        .init_containers
        .iter_mut()
        .chain(spec.containers.iter_mut())
    {
        // A container that mounts something of its own at the path keeps it.
        if c.volume_mounts
            .iter()
            .any(|m| m.mount_path == TOKEN_MOUNT_PATH)
        {
            continue;
        }
        c.volume_mounts.push(VolumeMount {
            name: volume_name.clone(),
            read_only: true,
            mount_path: TOKEN_MOUNT_PATH.to_owned(),
            sub_path: String::new(),
        });
        needs_volume = true;
    }

    if needs_volume && !has_volume {
        spec.volumes.push(Volume {
            name: volume_name,
            source: Some(volume::Source::Projected(token_volume_source())),
        });
    }
}

/// One violation for every reference to a secret `sa` does not allow. Volumes and
/// env/envFrom of every (init) container are checked against `sa.secrets`, image pull
/// secrets against `sa.image_pull_secrets` (a separate list). Projected secret sources
/// are not checked, exactly as in Kubernetes (reference §7, §12): Badge does not
/// restrict more or less than the system it re-implements.
fn limit_secret_references(
    spec: &PodSpec,
    sa: &ServiceAccount,
    sa_name: &str,
) -> Vec<FieldViolation> {
    let mountable: HashSet<&str> = sa.secrets.iter().map(|r| r.name.as_str()).collect();
    let pullable: HashSet<&str> = sa
        .image_pull_secrets
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let not_allowed =
        format!("is not allowed because service account {sa_name} does not reference that secret");
    let container_desc = |r: &SecretRef<'_>| {
        let (kind, name) = r.container.map_or(("container", ""), |c| {
            let kind = match c.kind {
                ContainerKind::Init => "init container",
                ContainerKind::Regular => "container",
            };
            (kind, c.name)
        });
        format!("{kind} {name}")
    };

    let mut out = Vec::new();
    visit_pod_secret_refs(spec, |r| {
        let description = match r.kind {
            SecretRefKind::ProjectedSecret => return,
            SecretRefKind::ImagePullSecret => {
                if pullable.contains(r.name) {
                    return;
                }
                format!(
                    "image pull secret {} is not allowed because service account {sa_name} \
                     does not reference that image pull secret",
                    quote(r.name)
                )
            }
            _ if mountable.contains(r.name) => return,
            SecretRefKind::VolumeSecret => {
                format!(
                    "volume with secret.secretName={} {not_allowed}",
                    quote(r.name)
                )
            }
            SecretRefKind::EnvSecretKeyRef => format!(
                "{} with envVar {} referencing secret.secretName={} {not_allowed}",
                container_desc(&r),
                r.env_var.unwrap_or_default(),
                quote(r.name)
            ),
            SecretRefKind::EnvFromSecretRef => format!(
                "{} with envFrom referencing secret.secretName={} {not_allowed}",
                container_desc(&r),
                quote(r.name)
            ),
        };
        out.push(FieldViolation::new(r.path, description));
    });
    out
}

/// Whether `pod` is a kubelet's mirror of a static pod.
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.metadata
        .as_ref()
        .is_some_and(|m| m.annotations.contains_key(MIRROR_POD_ANNOTATION))
}

/// Admission for mirror pods, which are stored as the kubelet sent them (mutating them
/// would make the kubelet delete them). Since nothing mounts a token or checks
/// secrets for them, they may not name a service account, reference any secret, or
/// project a service-account token: otherwise the annotation would be a way around
/// every other rule here.
pub fn validate_mirror_pod(pod: &Pod) -> Result<()> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let forbidden = |field: &str, message: &str| Error::FailedPrecondition {
        message: message.to_owned(),
        violations: vec![FieldViolation::new(field, message)],
    };
    if !spec.service_account_name.is_empty() {
        return Err(forbidden(
            "spec.service_account_name",
            "a mirror pod may not reference service accounts",
        ));
    }
    let mut first_secret = None;
    visit_pod_secret_refs(spec, |r| {
        first_secret.get_or_insert(r.path);
    });
    if let Some(path) = first_secret {
        return Err(forbidden(&path, "a mirror pod may not reference secrets"));
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        let Some(volume::Source::Projected(p)) = &v.source else {
            continue;
        };
        if let Some(j) = p.sources.iter().position(|s| {
            matches!(
                s.projection,
                Some(volume_projection::Projection::ServiceAccountToken(_))
            )
        }) {
            return Err(forbidden(
                &format!("spec.volumes[{i}].projected.sources[{j}].service_account_token"),
                "a mirror pod may not use ServiceAccountToken volume projections",
            ));
        }
    }
    Ok(())
}

/// The error for a pod whose service account does not exist (Kubernetes answers 403).
pub fn missing_service_account(namespace: &str, name: &str) -> Error {
    let message = format!(
        "error looking up service account {namespace}/{name}: serviceaccount {name:?} not found"
    );
    Error::FailedPrecondition {
        violations: vec![FieldViolation::new("spec.service_account_name", &message)],
        message,
    }
}

/// Trims every `secrets[]` entry to just its name, on create and update (reference
/// §7.1): the other reference fields are meaningless here and would otherwise be
/// stored unvalidated.
pub fn trim_service_account(sa: &mut ServiceAccount) {
    for s in &mut sa.secrets {
        *s = ObjectReference {
            name: std::mem::take(&mut s.name),
            ..Default::default()
        };
    }
}

/// The deprecation warning for a service-account create (`old` = `None`) or update
/// that newly sets the enforce-mountable-secrets annotation (any value). Keeping an
/// annotation that was already there does not warn again.
pub fn enforce_mountable_secrets_warning(
    old: Option<&ServiceAccount>,
    new: &ServiceAccount,
) -> Option<String> {
    let has = |sa: &ServiceAccount| {
        sa.metadata.as_ref().is_some_and(|m| {
            m.annotations
                .contains_key(ENFORCE_MOUNTABLE_SECRETS_ANNOTATION)
        })
    };
    if has(new) && !old.is_some_and(has) {
        Some(format!(
            "metadata.annotations[{ENFORCE_MOUNTABLE_SECRETS_ANNOTATION}]: deprecated in v1.32+; \
             prefer separate namespaces to isolate access to mounted secrets"
        ))
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::secret_refs::tests::{
        env_from_secret, env_secret, projected_secret_volume, pull_secret, secret_volume,
    };
    use badge_proto::identity::Container;
    use badge_proto::meta::ObjectMeta;
    use rand::SeedableRng;

    const NS: &str = "team-a";

    fn meta(name: &str, annotations: &[(&str, &str)]) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            namespace: NS.into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        })
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: "img".into(),
            ..Default::default()
        }
    }

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: meta("p", &[]),
            spec: Some(spec),
        }
    }

    fn app_pod() -> Pod {
        pod(PodSpec {
            service_account_name: "default".into(),
            containers: vec![container("app")],
            ..Default::default()
        })
    }

    fn sa(name: &str) -> ServiceAccount {
        ServiceAccount {
            metadata: meta(name, &[]),
            ..Default::default()
        }
    }

    fn enforcing_sa(value: &str) -> ServiceAccount {
        ServiceAccount {
            metadata: meta("default", &[(ENFORCE_MOUNTABLE_SECRETS_ANNOTATION, value)]),
            secrets: vec![ObjectReference {
                name: "allowed".into(),
                ..Default::default()
            }],
            image_pull_secrets: vec![pull_secret("allowed-pull")],
            automount_service_account_token: Some(false),
        }
    }

    fn fixed() -> impl FnMut() -> String {
        || "abcde".to_owned()
    }

    fn never() -> impl FnMut() -> String {
        || panic!("no new token volume name should be generated")
    }

    fn spec(p: &Pod) -> &PodSpec {
        p.spec.as_ref().unwrap()
    }

    fn token_mount(name: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            read_only: true,
            mount_path: TOKEN_MOUNT_PATH.into(),
            sub_path: String::new(),
        }
    }

    #[test]
    fn automount_matrix() {
        // Kubernetes' conformance test "should allow opting out of API token automount".
        let cases = [
            (None, None, true),
            (None, Some(true), true),
            (None, Some(false), false),
            (Some(true), None, true),
            (Some(true), Some(true), true),
            (Some(true), Some(false), true),
            (Some(false), None, false),
            (Some(false), Some(true), false),
            (Some(false), Some(false), false),
        ];
        for (pod_value, sa_value, want) in cases {
            assert_eq!(
                automount(pod_value, sa_value),
                want,
                "pod {pod_value:?} sa {sa_value:?}"
            );

            let mut p = app_pod();
            p.spec.as_mut().unwrap().automount_service_account_token = pod_value;
            let mut account = sa("default");
            account.automount_service_account_token = sa_value;
            let warnings = admit_pod(&mut p, &account, &mut fixed()).unwrap();
            assert!(warnings.is_empty());
            let s = spec(&p);
            let has_volume = s.volumes.iter().any(|v| v.name == "kube-api-access-abcde");
            let has_mount = s.containers[0]
                .volume_mounts
                .iter()
                .any(|m| m.mount_path == TOKEN_MOUNT_PATH);
            assert_eq!(
                has_volume, want,
                "volume: pod {pod_value:?} sa {sa_value:?}"
            );
            assert_eq!(has_mount, want, "mount: pod {pod_value:?} sa {sa_value:?}");
        }
    }

    #[test]
    fn adds_the_exact_token_volume_and_mounts() {
        let mut p = pod(PodSpec {
            service_account_name: "default".into(),
            init_containers: vec![container("init")],
            containers: vec![container("a"), container("b")],
            volumes: vec![secret_volume("data", "s")],
            ..Default::default()
        });
        admit_pod(&mut p, &sa("default"), &mut fixed()).unwrap();
        let s = spec(&p);
        let want_volume = Volume {
            name: "kube-api-access-abcde".into(),
            source: Some(volume::Source::Projected(ProjectedVolumeSource {
                default_mode: Some(420),
                sources: vec![
                    VolumeProjection {
                        projection: Some(volume_projection::Projection::ServiceAccountToken(
                            ServiceAccountTokenProjection {
                                audience: String::new(),
                                expiration_seconds: Some(3607),
                                path: "token".into(),
                            },
                        )),
                    },
                    VolumeProjection {
                        projection: Some(volume_projection::Projection::ConfigMap(
                            ConfigMapProjection {
                                name: "kube-root-ca.crt".into(),
                                items: vec![KeyToPath {
                                    key: "ca.crt".into(),
                                    path: "ca.crt".into(),
                                    mode: None,
                                }],
                                optional: None,
                            },
                        )),
                    },
                    VolumeProjection {
                        projection: Some(volume_projection::Projection::DownwardApi(
                            DownwardApiProjection {
                                items: vec![DownwardApiVolumeFile {
                                    path: "namespace".into(),
                                    field_ref: Some(ObjectFieldSelector {
                                        api_version: "v1".into(),
                                        field_path: "metadata.namespace".into(),
                                    }),
                                    mode: None,
                                }],
                            },
                        )),
                    },
                ],
            })),
        };
        assert_eq!(s.volumes.len(), 2);
        assert_eq!(
            s.volumes[0],
            secret_volume("data", "s"),
            "existing volume untouched"
        );
        assert_eq!(s.volumes[1], want_volume);
        for c in s.init_containers.iter().chain(&s.containers) {
            assert_eq!(
                c.volume_mounts,
                [token_mount("kube-api-access-abcde")],
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn mount_cases() {
        struct Case {
            name: &'static str,
            spec: PodSpec,
            /// Volume names after admission.
            want_volumes: &'static [&'static str],
            /// For each init container then container: the names of its mounts at the
            /// token path.
            want_mounts: &'static [&'static [&'static str]],
            /// Whether a fresh name may be generated.
            generates: bool,
        }
        let has_own_mount = |name: &str| Container {
            volume_mounts: vec![VolumeMount {
                name: "my-token".into(),
                read_only: false,
                mount_path: TOKEN_MOUNT_PATH.into(),
                sub_path: String::new(),
            }],
            ..container(name)
        };
        let cases = [
            Case {
                name: "reuses an existing kube-api-access volume",
                spec: PodSpec {
                    volumes: vec![
                        secret_volume("kube-api-access", "x"),
                        projected_secret_volume("kube-api-access-zzzzz", &[]),
                    ],
                    containers: vec![container("a")],
                    ..Default::default()
                },
                want_volumes: &["kube-api-access", "kube-api-access-zzzzz"],
                want_mounts: &[&["kube-api-access-zzzzz"]],
                generates: false,
            },
            Case {
                name: "the first kube-api-access volume wins",
                spec: PodSpec {
                    volumes: vec![
                        projected_secret_volume("kube-api-access-11111", &[]),
                        projected_secret_volume("kube-api-access-22222", &[]),
                    ],
                    containers: vec![container("a")],
                    ..Default::default()
                },
                want_volumes: &["kube-api-access-11111", "kube-api-access-22222"],
                want_mounts: &[&["kube-api-access-11111"]],
                generates: false,
            },
            Case {
                name: "a container with its own mount at the path keeps it",
                spec: PodSpec {
                    containers: vec![has_own_mount("a"), container("b")],
                    ..Default::default()
                },
                want_volumes: &["kube-api-access-abcde"],
                want_mounts: &[&["my-token"], &["kube-api-access-abcde"]],
                generates: true,
            },
            Case {
                name: "no volume when every container has its own mount",
                spec: PodSpec {
                    init_containers: vec![has_own_mount("i")],
                    containers: vec![has_own_mount("a")],
                    ..Default::default()
                },
                want_volumes: &[],
                want_mounts: &[&["my-token"], &["my-token"]],
                generates: true,
            },
            Case {
                name: "no volume for a pod without containers",
                spec: PodSpec::default(),
                want_volumes: &[],
                want_mounts: &[],
                generates: true,
            },
            Case {
                name: "init containers get the mount too",
                spec: PodSpec {
                    init_containers: vec![container("i1"), container("i2")],
                    containers: vec![has_own_mount("a")],
                    ..Default::default()
                },
                want_volumes: &["kube-api-access-abcde"],
                want_mounts: &[
                    &["kube-api-access-abcde"],
                    &["kube-api-access-abcde"],
                    &["my-token"],
                ],
                generates: true,
            },
        ];
        for c in cases {
            let mut p = pod(PodSpec {
                service_account_name: "default".into(),
                ..c.spec
            });
            if c.generates {
                admit_pod(&mut p, &sa("default"), &mut fixed())
            } else {
                admit_pod(&mut p, &sa("default"), &mut never())
            }
            .unwrap();
            let s = spec(&p);
            let volumes: Vec<&str> = s.volumes.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(volumes, c.want_volumes, "{}", c.name);
            let mounts: Vec<Vec<&str>> = s
                .init_containers
                .iter()
                .chain(&s.containers)
                .map(|ct| {
                    ct.volume_mounts
                        .iter()
                        .filter(|m| m.mount_path == TOKEN_MOUNT_PATH)
                        .map(|m| m.name.as_str())
                        .collect()
                })
                .collect();
            assert_eq!(mounts, c.want_mounts, "{}", c.name);
        }
    }

    #[test]
    fn image_pull_secrets_copied_only_when_pod_has_none() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            // pod, service account, result
            (&[], &["a", "b"], &["a", "b"]),
            (&["x"], &["a", "b"], &["x"]),
            (&[], &[], &[]),
            (&["x"], &[], &["x"]),
        ];
        for (pod_pulls, sa_pulls, want) in cases {
            let mut p = app_pod();
            p.spec.as_mut().unwrap().image_pull_secrets =
                pod_pulls.iter().map(|n| pull_secret(n)).collect();
            let mut account = sa("default");
            account.image_pull_secrets = sa_pulls.iter().map(|n| pull_secret(n)).collect();
            admit_pod(&mut p, &account, &mut fixed()).unwrap();
            let got: Vec<&str> = spec(&p)
                .image_pull_secrets
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(&got, want, "pod {pod_pulls:?} sa {sa_pulls:?}");
        }
    }

    /// A pod that breaks the rules in each checked place, and uses allowed secrets and
    /// an unlisted projected secret (not checked) alongside.
    fn violating_pod() -> Pod {
        pod(PodSpec {
            service_account_name: "default".into(),
            volumes: vec![
                secret_volume("ok", "allowed"),
                secret_volume("bad", "bad-vol"),
                projected_secret_volume("proj", &["not-listed-but-projected"]),
            ],
            init_containers: vec![Container {
                env: vec![
                    env_secret("OK", "allowed"),
                    env_secret("TOKEN", "bad-init-env"),
                ],
                ..container("setup")
            }],
            containers: vec![Container {
                env_from: vec![env_from_secret("allowed"), env_from_secret("bad-envfrom")],
                ..container("app")
            }],
            image_pull_secrets: vec![pull_secret("allowed-pull"), pull_secret("bad-pull")],
            ..Default::default()
        })
    }

    #[test]
    fn enforce_mountable_secrets_reports_every_violation() {
        let mut p = violating_pod();
        let err = admit_pod(&mut p, &enforcing_sa("true"), &mut fixed()).unwrap_err();
        let Error::FailedPrecondition {
            message,
            violations,
        } = err
        else {
            panic!("want FailedPrecondition, got {err:?}");
        };
        let want = [
            (
                "spec.volumes[1].secret.secret_name",
                "volume with secret.secretName=\"bad-vol\" is not allowed because service account default does not reference that secret",
            ),
            (
                "spec.init_containers[0].env[1].value_from.secret_key_ref.name",
                "init container setup with envVar TOKEN referencing secret.secretName=\"bad-init-env\" is not allowed because service account default does not reference that secret",
            ),
            (
                "spec.containers[0].env_from[1].secret_ref.name",
                "container app with envFrom referencing secret.secretName=\"bad-envfrom\" is not allowed because service account default does not reference that secret",
            ),
            (
                "spec.image_pull_secrets[1].name",
                "image pull secret \"bad-pull\" is not allowed because service account default does not reference that image pull secret",
            ),
        ];
        let got: Vec<(&str, &str)> = violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            message,
            want.iter().map(|(_, d)| *d).collect::<Vec<_>>().join("; ")
        );
    }

    #[test]
    fn enforce_mountable_secrets_other_places() {
        let enforcing = enforcing_sa("true");
        let cases: Vec<(&str, PodSpec, Option<String>)> = vec![
            (
                "init container envFrom",
                PodSpec {
                    init_containers: vec![Container {
                        env_from: vec![env_from_secret("nope")],
                        ..container("i")
                    }],
                    ..Default::default()
                },
                Some("init container i with envFrom referencing secret.secretName=\"nope\"".into()),
            ),
            (
                "container env",
                PodSpec {
                    containers: vec![Container {
                        env: vec![env_secret("PASSWORD", "nope")],
                        ..container("c")
                    }],
                    ..Default::default()
                },
                Some(
                    "container c with envVar PASSWORD referencing secret.secretName=\"nope\""
                        .into(),
                ),
            ),
            (
                "a name in sa.secrets is not an allowed image pull secret",
                PodSpec {
                    image_pull_secrets: vec![pull_secret("allowed")],
                    ..Default::default()
                },
                Some("image pull secret \"allowed\"".into()),
            ),
            (
                "a name in sa.image_pull_secrets is not an allowed volume",
                PodSpec {
                    volumes: vec![secret_volume("v", "allowed-pull")],
                    ..Default::default()
                },
                Some("volume with secret.secretName=\"allowed-pull\"".into()),
            ),
            (
                "projected secret sources are not checked",
                PodSpec {
                    volumes: vec![projected_secret_volume("v", &["anything"])],
                    ..Default::default()
                },
                None,
            ),
            (
                "image pull secrets copied from the account are allowed",
                PodSpec::default(),
                None,
            ),
            (
                "a long secret name is quoted truncated",
                PodSpec {
                    volumes: vec![secret_volume("v", &"s".repeat(100))],
                    ..Default::default()
                },
                Some(format!(
                    "volume with secret.secretName=\"{}\"... is not",
                    "s".repeat(64)
                )),
            ),
        ];
        for (name, s, want) in cases {
            let mut p = pod(PodSpec {
                service_account_name: "default".into(),
                ..s
            });
            let got = admit_pod(&mut p, &enforcing, &mut fixed());
            match (got, want) {
                (Ok(_), None) => {}
                (Err(Error::FailedPrecondition { violations, .. }), Some(w)) => {
                    let w = w.as_str();
                    assert_eq!(violations.len(), 1, "{name}: {violations:?}");
                    assert!(
                        violations[0].description.starts_with(w),
                        "{name}: {:?} does not start with {w:?}",
                        violations[0].description
                    );
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn enforce_annotation_values() {
        let cases = [
            ("true", true),
            ("True", true),
            ("TRUE", true),
            ("t", true),
            ("T", true),
            ("1", true),
            ("false", false),
            ("0", false),
            ("F", false),
            ("garbage", false),
            ("yes", false),
            ("tRue", false),
            (" true", false),
            ("", false),
        ];
        for (value, enforced) in cases {
            let account = enforcing_sa(value);
            assert_eq!(enforce_mountable_secrets(&account), enforced, "{value:?}");
            let mut p = violating_pod();
            let got = admit_pod(&mut p, &account, &mut fixed());
            assert_eq!(got.is_err(), enforced, "{value:?}: {got:?}");
        }
        // No annotation, no metadata: not enforced.
        assert!(!enforce_mountable_secrets(&sa("default")));
        assert!(!enforce_mountable_secrets(&ServiceAccount::default()));
        let mut p = violating_pod();
        assert_eq!(admit_pod(&mut p, &sa("default"), &mut fixed()), Ok(vec![]));
    }

    #[test]
    fn go_parse_bool() {
        for s in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(s), Some(true), "{s}");
        }
        for s in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(s), Some(false), "{s}");
        }
        for s in ["", "yes", "no", "tRUE", "2", "true ", "on"] {
            assert_eq!(parse_go_bool(s), None, "{s}");
        }
    }

    #[test]
    fn no_warnings_even_for_an_annotated_account() {
        // Kubernetes' integration test: creating a pod whose account carries the
        // deprecated annotation gives no warning.
        let mut p = app_pod();
        assert_eq!(
            admit_pod(&mut p, &enforcing_sa("true"), &mut fixed()),
            Ok(vec![])
        );
    }

    #[test]
    fn admit_preconditions() {
        let mut no_name = pod(PodSpec::default());
        match admit_pod(&mut no_name, &sa("default"), &mut fixed()) {
            Err(Error::FailedPrecondition { message, .. }) => {
                assert_eq!(message, "no service account specified for pod");
            }
            other => panic!("{other:?}"),
        }

        let mut p = app_pod();
        let wrong_name = sa("other");
        assert!(matches!(
            admit_pod(&mut p, &wrong_name, &mut fixed()),
            Err(Error::Internal(_))
        ));

        let mut wrong_ns = sa("default");
        wrong_ns.metadata.as_mut().unwrap().namespace = "elsewhere".into();
        assert!(matches!(
            admit_pod(&mut p, &wrong_ns, &mut fixed()),
            Err(Error::Internal(_))
        ));
        assert_eq!(p, app_pod(), "a refused pod is not mutated");
    }

    #[test]
    fn defaults_the_service_account_name() {
        let cases = [
            (Pod::default(), "default"),
            (pod(PodSpec::default()), "default"),
            (
                pod(PodSpec {
                    service_account_name: "builder".into(),
                    ..Default::default()
                }),
                "builder",
            ),
        ];
        for (mut p, want) in cases {
            default_service_account_name(&mut p);
            assert_eq!(spec(&p).service_account_name, want);
        }
    }

    #[test]
    fn random_suffixes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let s = random_suffix(&mut rng);
            assert_eq!(s.len(), SUFFIX_LEN);
            assert!(s.bytes().all(|b| SUFFIX_ALPHABET.contains(&b)), "{s}");
            seen.insert(s);
        }
        assert!(
            seen.len() > 190,
            "suffixes should rarely repeat: {}",
            seen.len()
        );
        // With the real generator a created volume is named kube-api-access-xxxxx.
        let mut p = app_pod();
        admit_pod(&mut p, &sa("default"), &mut || {
            random_suffix(&mut rand::rng())
        })
        .unwrap();
        let name = &spec(&p).volumes[0].name;
        assert_eq!(name.len(), TOKEN_VOLUME_PREFIX.len() + SUFFIX_LEN);
        assert!(name.starts_with(TOKEN_VOLUME_PREFIX));
    }

    #[test]
    fn mirror_pods() {
        let mirror = |s: PodSpec| Pod {
            metadata: meta("static-web", &[(MIRROR_POD_ANNOTATION, "abc")]),
            spec: Some(s),
        };
        let cases: Vec<(&str, Pod, Option<&str>)> = vec![
            (
                "plain mirror pod",
                mirror(PodSpec {
                    containers: vec![container("web")],
                    ..Default::default()
                }),
                None,
            ),
            (
                "no spec",
                Pod {
                    spec: None,
                    ..mirror(PodSpec::default())
                },
                None,
            ),
            (
                "names a service account",
                mirror(PodSpec {
                    service_account_name: "default".into(),
                    ..Default::default()
                }),
                Some("a mirror pod may not reference service accounts"),
            ),
            (
                "references a secret through envFrom",
                mirror(PodSpec {
                    containers: vec![Container {
                        env_from: vec![env_from_secret("s")],
                        ..container("web")
                    }],
                    ..Default::default()
                }),
                Some("a mirror pod may not reference secrets"),
            ),
            (
                "references a projected secret",
                mirror(PodSpec {
                    volumes: vec![Volume {
                        name: "v".into(),
                        source: Some(volume::Source::Projected(ProjectedVolumeSource {
                            sources: vec![VolumeProjection {
                                projection: Some(volume_projection::Projection::Secret(
                                    badge_proto::identity::SecretProjection {
                                        name: "s".into(),
                                        ..Default::default()
                                    },
                                )),
                            }],
                            default_mode: None,
                        })),
                    }],
                    ..Default::default()
                }),
                Some("a mirror pod may not reference secrets"),
            ),
            (
                "projects a service account token",
                mirror(PodSpec {
                    volumes: vec![Volume {
                        name: "t".into(),
                        source: Some(volume::Source::Projected(token_volume_source())),
                    }],
                    ..Default::default()
                }),
                Some("a mirror pod may not use ServiceAccountToken volume projections"),
            ),
        ];
        for (name, p, want) in cases {
            assert!(is_mirror_pod(&p), "{name}");
            match (validate_mirror_pod(&p), want) {
                (Ok(()), None) => {}
                (
                    Err(Error::FailedPrecondition {
                        message,
                        violations,
                    }),
                    Some(w),
                ) => {
                    assert_eq!(message, w, "{name}");
                    assert_eq!(violations.len(), 1, "{name}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        assert!(!is_mirror_pod(&app_pod()));
        assert!(!is_mirror_pod(&Pod::default()));
    }

    #[test]
    fn missing_account_error() {
        let err = missing_service_account("team-a", "builder");
        assert_eq!(
            err.to_string(),
            "error looking up service account team-a/builder: serviceaccount \"builder\" not found"
        );
        assert!(
            matches!(err, Error::FailedPrecondition { ref violations, .. } if violations.len() == 1)
        );
    }

    #[test]
    fn trims_secret_references_to_names() {
        let mut account = sa("default");
        account.secrets = vec![
            ObjectReference {
                kind: "Secret".into(),
                namespace: "other".into(),
                name: "s1".into(),
                uid: "u".into(),
                api_version: "v1".into(),
                resource_version: "9".into(),
                field_path: "f".into(),
            },
            ObjectReference {
                name: "s2".into(),
                ..Default::default()
            },
        ];
        trim_service_account(&mut account);
        assert_eq!(
            account.secrets,
            [
                ObjectReference {
                    name: "s1".into(),
                    ..Default::default()
                },
                ObjectReference {
                    name: "s2".into(),
                    ..Default::default()
                },
            ]
        );
    }

    #[test]
    fn deprecation_warning() {
        let with = |v: &str| ServiceAccount {
            metadata: meta("sa", &[(ENFORCE_MOUNTABLE_SECRETS_ANNOTATION, v)]),
            ..Default::default()
        };
        let without = sa("sa");
        let warning = "metadata.annotations[kubernetes.io/enforce-mountable-secrets]: deprecated in v1.32+; prefer separate namespaces to isolate access to mounted secrets";
        let cases: Vec<(&str, Option<ServiceAccount>, ServiceAccount, bool)> = vec![
            ("create with it", None, with("true"), true),
            ("create with it set false", None, with("false"), true),
            ("create without", None, without.clone(), false),
            ("update adds it", Some(without.clone()), with("true"), true),
            ("update keeps it", Some(with("true")), with("true"), false),
            (
                "update changes its value",
                Some(with("false")),
                with("true"),
                false,
            ),
            (
                "update removes it",
                Some(with("true")),
                without.clone(),
                false,
            ),
            (
                "update without",
                Some(without.clone()),
                without.clone(),
                false,
            ),
            (
                "create without metadata",
                None,
                ServiceAccount::default(),
                false,
            ),
        ];
        for (name, old, new, warns) in cases {
            let got = enforce_mountable_secrets_warning(old.as_ref(), &new);
            assert_eq!(got.as_deref(), warns.then_some(warning), "{name}");
        }
    }
}
