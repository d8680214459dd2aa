//! Pod spec validation: the subset of Kubernetes' `ValidatePodSpec`
//! (`k8s.io/kubernetes/pkg/apis/core/validation/validation.go`) that covers the fields
//! Badge models.
//!
//! It runs on the spec as the client sent it, before admission adds the token volume
//! and mounts. Every violation is reported (none short-circuits), each naming the full
//! field path (e.g. `pod.spec.volumes[1].name`) and quoting the offending value.
//!
//! Where Badge differs from Kubernetes on purpose:
//!
//! - A volume mount may refer to any named volume, even one that has its own
//!   violations; Kubernetes drops invalid volumes first and then also reports every
//!   mount of them as "not found", which says the same thing twice.
//! - Duplicate and "not found" checks skip empty names, which are already reported as
//!   required.
//! - Containers and an image are not required: a pod without a spec is accepted too
//!   (admission defaults it).

use std::collections::HashSet;

use badge_proto::identity::{
    Container, DownwardApiVolumeFile, EnvFromSource, EnvVar, KeyToPath, ObjectFieldSelector,
    PodCertificateProjection, PodSpec, ProjectedVolumeSource, SecretVolumeSource,
    ServiceAccountTokenProjection, VolumeMount, volume, volume_projection,
};

use crate::names::{
    invalid_value, quote, validate_annotations, validate_dns_label, validate_dns_subdomain,
};
use crate::{Error, FieldViolation, Result};

/// The largest file mode (`0777`) a volume file may be given.
pub const MAX_FILE_MODE: i32 = 0o777;
/// The shortest token lifetime a projected token may ask for (10 minutes).
pub const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 10 * 60;
/// The longest token lifetime a projected token may ask for (2^32 seconds).
pub const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 1 << 32;
/// The shortest certificate lifetime a `podCertificate` source may cap at (1 hour).
pub const MIN_POD_CERTIFICATE_EXPIRATION_SECONDS: i32 = 3600;
/// The longest certificate lifetime a `podCertificate` source may ask for (91 days).
pub const MAX_POD_CERTIFICATE_EXPIRATION_SECONDS: i32 = 7_862_400;
/// The longest lifetime for `kubernetes.io/*` signers (24 hours).
pub const MAX_KUBERNETES_POD_CERTIFICATE_EXPIRATION_SECONDS: i32 = 86_400;
/// The key types a `podCertificate` source may ask for, in Kubernetes' spelling.
pub const POD_CERTIFICATE_KEY_TYPES: [&str; 6] = [
    "RSA3072",
    "RSA4096",
    "ECDSAP256",
    "ECDSAP384",
    "ECDSAP521",
    "ED25519",
];

const FILE_MODE_ERR: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const ENV_VAR_NAME_ERR: &str = "a valid environment variable name must consist only of printable ASCII characters other than '='";
const MORE_THAN_ONE_FIELD_ERR: &str = "may not have more than one field specified at a time";

/// Validates `spec` (found at `path` in the request, e.g. `pod.spec`).
///
/// Errors: `Invalid` with every violation found; see [`pod_spec_violations`] for the
/// rules.
pub fn validate_pod_spec(spec: Option<&PodSpec>, path: &str) -> Result<()> {
    Error::check(pod_spec_violations(spec, path))
}

/// Every violation in `spec` (found at `path`), in spec order; empty when it is valid.
/// For callers that merge them with other checks (e.g. the metadata's) into one
/// `Invalid` error.
///
/// Rules (Kubernetes' wording where it has one):
///
/// - no spec at all is fine (admission defaults it);
/// - `service_account_name` and `node_name`, when set, are DNS subdomains;
/// - volumes: name required, a DNS label, unique; exactly one source;
///   - secret: `secret_name` required and a DNS subdomain; `default_mode` and item
///     modes in `0..=0777`; items need a key and a relative path without `..`
///     elements that does not start with `..`;
///   - projected: `default_mode` in `0..=0777`; each source has a type;
///     service-account token: path required (relative, no `..`), expiration, when
///     set, in `600..=2^32` seconds; config map and secret: name required and a DNS
///     subdomain, items as above; downward API: items need a path (as above) and a
///     `field_ref.field_path`, modes in range; pod certificate: see
///     [`pod_certificate_violations`]; no two files of the volume share a path;
/// - init containers and containers: name required, a DNS label, unique across both
///   lists; env names required, printable ASCII without `=`; `value_from` has exactly
///   one source and no `value` beside it; key refs need a name and a key, field refs
///   a field path; `env_from` has exactly one of `secret_ref` / `config_map_ref`
///   whose name is required and a DNS subdomain, and a valid prefix if any; volume
///   mounts name an existing volume (token volumes included: no exception), need a
///   mount path unique within the container, and a relative `sub_path` without `..`
///   elements if any;
/// - image pull secrets need a name.
pub fn pod_spec_violations(spec: Option<&PodSpec>, path: &str) -> Vec<FieldViolation> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    let mut c = Checker::default();

    if !spec.service_account_name.is_empty() {
        c.dns_subdomain(
            &format!("{path}.service_account_name"),
            &spec.service_account_name,
        );
    }
    if !spec.node_name.is_empty() {
        c.dns_subdomain(&format!("{path}.node_name"), &spec.node_name);
    }

    let mut volume_names = HashSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        let name_field = format!("{vp}.name");
        if c.dns_label(&name_field, &v.name) && !volume_names.insert(v.name.as_str()) {
            c.push(
                &name_field,
                format!("duplicate volume name {}", quote(&v.name)),
            );
        }
        match &v.source {
            None => c.push(&vp, "must specify a volume type"),
            Some(volume::Source::Secret(s)) => c.secret_volume(&format!("{vp}.secret"), s),
            Some(volume::Source::Projected(p)) => {
                c.projected_volume(&format!("{vp}.projected"), p);
            }
        }
    }

    // As in Kubernetes, an init container clashing with a regular container is the
    // one reported.
    let regular: HashSet<&str> = spec
        .containers
        .iter()
        .map(|ct| ct.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    let mut seen = HashSet::new();
    for (i, ct) in spec.init_containers.iter().enumerate() {
        let cp = format!("{path}.init_containers[{i}]");
        let fresh = !regular.contains(ct.name.as_str()) && seen.insert(ct.name.as_str());
        c.container(&cp, ct, fresh, &volume_names);
    }
    let mut seen = HashSet::new();
    for (i, ct) in spec.containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        let fresh = seen.insert(ct.name.as_str());
        c.container(&cp, ct, fresh, &volume_names);
    }

    for (i, r) in spec.image_pull_secrets.iter().enumerate() {
        c.required(&format!("{path}.image_pull_secrets[{i}].name"), &r.name);
    }
    c.out
}

/// Every violation in a `podCertificate` projected source found at `path` (e.g.
/// `pod.spec.volumes[0].projected.sources[1].pod_certificate`), as Kubernetes'
/// `validatePodCertificateProjection`:
///
/// - `signer_name` required and a signer name (`<domain>/<path>`: the domain a DNS
///   subdomain of at least two labels, the path dot-separated DNS subdomains);
/// - `key_type` required and one of [`POD_CERTIFICATE_KEY_TYPES`];
/// - `max_expiration_seconds`, when set, in `[3600, 7862400]` (`[3600, 86400]` for
///   `kubernetes.io/` signers);
/// - exactly one of `credential_bundle_path` or `key_path` + `certificate_chain_path`
///   (key and chain both or neither); each path relative, without `..` elements, not
///   starting with `..`;
/// - `user_annotations` keys qualified names (annotation rules, size limit included).
///
/// Paths repeated across the volume's sources are checked by the caller; a path
/// repeated within this source is reported here.
pub fn pod_certificate_violations(
    pc: &PodCertificateProjection,
    path: &str,
) -> Vec<FieldViolation> {
    let mut c = Checker::default();
    let sf = format!("{path}.signer_name");
    if c.required(&sf, &pc.signer_name) {
        c.problems(&sf, &pc.signer_name, validate_signer_name(&pc.signer_name));
    }
    let kf = format!("{path}.key_type");
    if c.required(&kf, &pc.key_type) && !POD_CERTIFICATE_KEY_TYPES.contains(&pc.key_type.as_str()) {
        let supported: Vec<String> = POD_CERTIFICATE_KEY_TYPES.iter().map(|t| quote(t)).collect();
        c.push(
            &kf,
            format!(
                "Unsupported value: {}: supported values: {}",
                quote(&pc.key_type),
                supported.join(", ")
            ),
        );
    }
    if let Some(e) = pc.max_expiration_seconds {
        let max = if pc.signer_name.starts_with("kubernetes.io/") {
            MAX_KUBERNETES_POD_CERTIFICATE_EXPIRATION_SECONDS
        } else {
            MAX_POD_CERTIFICATE_EXPIRATION_SECONDS
        };
        if !(MIN_POD_CERTIFICATE_EXPIRATION_SECONDS..=max).contains(&e) {
            c.push(
                &format!("{path}.max_expiration_seconds"),
                format!(
                    "invalid value {e}: must be in the range [{MIN_POD_CERTIFICATE_EXPIRATION_SECONDS}, {max}]"
                ),
            );
        }
    }
    let bundle = !pc.credential_bundle_path.is_empty();
    let key = !pc.key_path.is_empty();
    let chain = !pc.certificate_chain_path.is_empty();
    if !bundle && !key && !chain {
        c.push(
            path,
            "must specify one of: `credential_bundle_path` or `key_path` and `certificate_chain_path`",
        );
    }
    if bundle && (key || chain) {
        c.push(
            path,
            "may not specify `credential_bundle_path` together with `key_path` or `certificate_chain_path`",
        );
    }
    if key && !chain {
        c.push(
            &format!("{path}.certificate_chain_path"),
            "certificate_chain_path is required when key_path is set",
        );
    }
    if chain && !key {
        c.push(
            &format!("{path}.key_path"),
            "key_path is required when certificate_chain_path is set",
        );
    }
    let mut own = HashSet::new();
    for (name, value) in [
        ("credential_bundle_path", &pc.credential_bundle_path),
        ("key_path", &pc.key_path),
        ("certificate_chain_path", &pc.certificate_chain_path),
    ] {
        if value.is_empty() {
            continue;
        }
        let f = format!("{path}.{name}");
        c.local_path(&f, value, true);
        if !own.insert(value.as_str()) {
            c.push(&f, format!("conflicting duplicate path {}", quote(value)));
        }
    }
    c.out.extend(validate_annotations(
        &pc.user_annotations,
        &format!("{path}.user_annotations"),
    ));
    c.out
}

/// Kubernetes' `ValidateSignerName`: `<domain>/<path>`, the domain DNS labels joined
/// by dots (at least two), the path DNS subdomains joined by dots. Problems, empty
/// when valid; the caller reports emptiness as required.
pub fn validate_signer_name(value: &str) -> Vec<String> {
    const MAX_DOMAIN: usize = 253;
    const MAX_TOTAL: usize = 253 + 1 + 253 + 1 + 253;
    let mut out = Vec::new();
    let Some((domain, rest)) = value.split_once('/') else {
        out.push(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .to_owned(),
        );
        return out;
    };
    if rest.contains('/') {
        out.push(
            "must be a fully qualified domain and path of the form 'example.com/signer-name'"
                .to_owned(),
        );
        return out;
    }
    if domain.len() > MAX_DOMAIN {
        out.push(format!(
            "domain {}: must be no more than {MAX_DOMAIN} characters",
            quote(domain)
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if let Some((l, errs)) = labels
        .iter()
        .map(|l| (l, validate_dns_label(l)))
        .find(|(_, e)| !e.is_empty())
    {
        for e in errs {
            out.push(format!(
                "domain {}: validating label {}: {e}",
                quote(domain),
                quote(l)
            ));
        }
    }
    if labels.len() < 2 {
        out.push(format!(
            "domain {}: should be a domain with at least two segments separated by dots",
            quote(domain)
        ));
    }
    if let Some((l, errs)) = rest
        .split('.')
        .map(|l| (l, validate_dns_subdomain(l)))
        .find(|(_, e)| !e.is_empty())
    {
        for e in errs {
            out.push(format!(
                "path {}: validating component {}: {e}",
                quote(rest),
                quote(l)
            ));
        }
    }
    if value.len() > MAX_TOTAL {
        out.push(format!("must be no more than {MAX_TOTAL} characters"));
    }
    out
}

#[derive(Default)]
struct Checker {
    out: Vec<FieldViolation>,
}

impl Checker {
    fn push(&mut self, field: &str, description: impl Into<String>) {
        self.out.push(FieldViolation::new(field, description));
    }

    /// Reports an empty `value` as `<last part of field> is required`; returns whether
    /// the value is set.
    fn required(&mut self, field: &str, value: &str) -> bool {
        if value.is_empty() {
            let what = field.rsplit('.').next().unwrap_or(field);
            self.push(field, format!("{what} is required"));
            false
        } else {
            true
        }
    }

    fn problems(&mut self, field: &str, value: &str, problems: Vec<String>) -> bool {
        let ok = problems.is_empty();
        for p in problems {
            self.push(field, invalid_value(value, &p));
        }
        ok
    }

    /// Required and a DNS label; returns whether the value is set (valid or not).
    fn dns_label(&mut self, field: &str, value: &str) -> bool {
        if !self.required(field, value) {
            return false;
        }
        self.problems(field, value, validate_dns_label(value));
        true
    }

    /// Required and a DNS subdomain.
    fn dns_subdomain(&mut self, field: &str, value: &str) {
        if self.required(field, value) {
            self.problems(field, value, validate_dns_subdomain(value));
        }
    }

    fn mode(&mut self, field: &str, mode: Option<i32>) {
        if let Some(m) = mode
            && !(0..=MAX_FILE_MODE).contains(&m)
        {
            self.push(field, format!("invalid value {m}: {FILE_MODE_ERR}"));
        }
    }

    /// `validateLocalDescendingPath`: relative, no `..` element. With `non_reserved`
    /// (`validateLocalNonReservedPath`) it also may not start with `..`, which the
    /// kubelet's atomic writer reserves (`..data`).
    fn local_path(&mut self, field: &str, value: &str, non_reserved: bool) {
        let mut problems = Vec::new();
        if value.starts_with('/') {
            problems.push("must be a relative path".to_owned());
        }
        if value.split('/').any(|part| part == "..") {
            problems.push("must not contain '..'".to_owned());
        } else if non_reserved && value.starts_with("..") {
            problems.push("must not start with '..'".to_owned());
        }
        self.problems(field, value, problems);
    }

    /// A required file path inside a volume; returns whether it is set.
    fn file_path(&mut self, field: &str, value: &str) -> bool {
        if !self.required(field, value) {
            return false;
        }
        self.local_path(field, value, true);
        true
    }

    /// Items of a secret or config map source. `paths`, when given, collects the
    /// paths of a projected volume, which must not repeat.
    fn key_to_paths(
        &mut self,
        field: &str,
        items: &[KeyToPath],
        mut paths: Option<&mut HashSet<String>>,
    ) {
        for (k, item) in items.iter().enumerate() {
            let ip = format!("{field}[{k}]");
            self.required(&format!("{ip}.key"), &item.key);
            let path_field = format!("{ip}.path");
            if self.file_path(&path_field, &item.path)
                && let Some(paths) = paths.as_deref_mut()
            {
                self.unique_path(&path_field, &item.path, paths);
            }
            self.mode(&format!("{ip}.mode"), item.mode);
        }
    }

    fn unique_path(&mut self, field: &str, value: &str, paths: &mut HashSet<String>) {
        if !paths.insert(value.to_owned()) {
            self.push(
                field,
                format!("conflicting duplicate path {}", quote(value)),
            );
        }
    }

    fn secret_volume(&mut self, field: &str, s: &SecretVolumeSource) {
        self.dns_subdomain(&format!("{field}.secret_name"), &s.secret_name);
        self.key_to_paths(&format!("{field}.items"), &s.items, None);
        self.mode(&format!("{field}.default_mode"), s.default_mode);
    }

    fn projected_volume(&mut self, field: &str, p: &ProjectedVolumeSource) {
        use volume_projection::Projection;

        let mut paths = HashSet::new();
        for (j, src) in p.sources.iter().enumerate() {
            let sp = format!("{field}.sources[{j}]");
            match &src.projection {
                None => self.push(&sp, "must specify a projection type"),
                Some(Projection::ServiceAccountToken(t)) => {
                    self.token_projection(&format!("{sp}.service_account_token"), t, &mut paths);
                }
                Some(Projection::ConfigMap(cm)) => {
                    let cp = format!("{sp}.config_map");
                    self.dns_subdomain(&format!("{cp}.name"), &cm.name);
                    self.key_to_paths(&format!("{cp}.items"), &cm.items, Some(&mut paths));
                }
                Some(Projection::Secret(s)) => {
                    let cp = format!("{sp}.secret");
                    self.dns_subdomain(&format!("{cp}.name"), &s.name);
                    self.key_to_paths(&format!("{cp}.items"), &s.items, Some(&mut paths));
                }
                Some(Projection::DownwardApi(d)) => {
                    let dp = format!("{sp}.downward_api.items");
                    for (k, item) in d.items.iter().enumerate() {
                        self.downward_api_file(&format!("{dp}[{k}]"), item, &mut paths);
                    }
                }
                Some(Projection::PodCertificate(pc)) => {
                    let pp = format!("{sp}.pod_certificate");
                    self.out.extend(pod_certificate_violations(pc, &pp));
                    for (name, value) in [
                        ("credential_bundle_path", &pc.credential_bundle_path),
                        ("key_path", &pc.key_path),
                        ("certificate_chain_path", &pc.certificate_chain_path),
                    ] {
                        if !value.is_empty() {
                            self.unique_path(&format!("{pp}.{name}"), value, &mut paths);
                        }
                    }
                }
            }
        }
        self.mode(&format!("{field}.default_mode"), p.default_mode);
    }

    fn token_projection(
        &mut self,
        field: &str,
        t: &ServiceAccountTokenProjection,
        paths: &mut HashSet<String>,
    ) {
        if let Some(e) = t.expiration_seconds {
            let ef = format!("{field}.expiration_seconds");
            if e < MIN_TOKEN_EXPIRATION_SECONDS {
                self.push(
                    &ef,
                    format!("invalid value {e}: may not specify a duration less than 10 minutes"),
                );
            }
            if e > MAX_TOKEN_EXPIRATION_SECONDS {
                self.push(
                    &ef,
                    format!(
                        "invalid value {e}: may not specify a duration larger than 2^32 seconds"
                    ),
                );
            }
        }
        let pf = format!("{field}.path");
        if self.file_path(&pf, &t.path) {
            self.unique_path(&pf, &t.path, paths);
        }
    }

    fn downward_api_file(
        &mut self,
        field: &str,
        item: &DownwardApiVolumeFile,
        paths: &mut HashSet<String>,
    ) {
        let pf = format!("{field}.path");
        if self.file_path(&pf, &item.path) {
            self.unique_path(&pf, &item.path, paths);
        }
        self.field_ref(&format!("{field}.field_ref"), item.field_ref.as_ref());
        self.mode(&format!("{field}.mode"), item.mode);
    }

    fn field_ref(&mut self, field: &str, r: Option<&ObjectFieldSelector>) {
        match r {
            None => self.push(field, "field_ref is required"),
            Some(r) => {
                self.required(&format!("{field}.field_path"), &r.field_path);
            }
        }
    }

    /// `fresh`: the name was not seen before (in the lists it must be unique across).
    fn container(&mut self, field: &str, c: &Container, fresh: bool, volumes: &HashSet<&str>) {
        let name_field = format!("{field}.name");
        if self.dns_label(&name_field, &c.name) && !fresh {
            self.push(
                &name_field,
                format!("duplicate container name {}", quote(&c.name)),
            );
        }
        for (j, e) in c.env.iter().enumerate() {
            self.env_var(&format!("{field}.env[{j}]"), e);
        }
        for (j, e) in c.env_from.iter().enumerate() {
            self.env_from(&format!("{field}.env_from[{j}]"), e);
        }
        let mut mount_paths = HashSet::new();
        for (j, m) in c.volume_mounts.iter().enumerate() {
            self.volume_mount(
                &format!("{field}.volume_mounts[{j}]"),
                m,
                volumes,
                &mut mount_paths,
            );
        }
    }

    fn env_var_name(&mut self, field: &str, name: &str) {
        if name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
        {
            return;
        }
        self.push(field, invalid_value(name, ENV_VAR_NAME_ERR));
    }

    fn env_var(&mut self, field: &str, e: &EnvVar) {
        let name_field = format!("{field}.name");
        if self.required(&name_field, &e.name) {
            self.env_var_name(&name_field, &e.name);
        }
        let Some(from) = &e.value_from else {
            return;
        };
        let fp = format!("{field}.value_from");
        if !e.value.is_empty() {
            self.push(&fp, "may not be specified when `value` is not empty");
        }
        let set = usize::from(from.secret_key_ref.is_some())
            + usize::from(from.config_map_key_ref.is_some())
            + usize::from(from.field_ref.is_some());
        match set {
            0 => self.push(
                &fp,
                "must specify one of: `field_ref`, `config_map_key_ref` or `secret_key_ref`",
            ),
            1 => {}
            _ => self.push(&fp, MORE_THAN_ONE_FIELD_ERR),
        }
        if let Some(r) = &from.secret_key_ref {
            let rp = format!("{fp}.secret_key_ref");
            self.required(&format!("{rp}.name"), &r.name);
            self.required(&format!("{rp}.key"), &r.key);
        }
        if let Some(r) = &from.config_map_key_ref {
            let rp = format!("{fp}.config_map_key_ref");
            self.required(&format!("{rp}.name"), &r.name);
            self.required(&format!("{rp}.key"), &r.key);
        }
        if let Some(r) = &from.field_ref {
            self.field_ref(&format!("{fp}.field_ref"), Some(r));
        }
    }

    fn env_from(&mut self, field: &str, e: &EnvFromSource) {
        if !e.prefix.is_empty() {
            self.env_var_name(&format!("{field}.prefix"), &e.prefix);
        }
        match (&e.secret_ref, &e.config_map_ref) {
            (None, None) => self.push(
                field,
                "must specify one of: `config_map_ref` or `secret_ref`",
            ),
            (Some(_), Some(_)) => self.push(field, MORE_THAN_ONE_FIELD_ERR),
            _ => {}
        }
        if let Some(r) = &e.secret_ref {
            self.dns_subdomain(&format!("{field}.secret_ref.name"), &r.name);
        }
        if let Some(r) = &e.config_map_ref {
            self.dns_subdomain(&format!("{field}.config_map_ref.name"), &r.name);
        }
    }

    fn volume_mount<'a>(
        &mut self,
        field: &str,
        m: &'a VolumeMount,
        volumes: &HashSet<&str>,
        mount_paths: &mut HashSet<&'a str>,
    ) {
        let name_field = format!("{field}.name");
        if self.required(&name_field, &m.name) && !volumes.contains(m.name.as_str()) {
            self.push(&name_field, format!("volume {} not found", quote(&m.name)));
        }
        let path_field = format!("{field}.mount_path");
        if self.required(&path_field, &m.mount_path) && !mount_paths.insert(&m.mount_path) {
            self.push(&path_field, invalid_value(&m.mount_path, "must be unique"));
        }
        if !m.sub_path.is_empty() {
            self.local_path(&format!("{field}.sub_path"), &m.sub_path, false);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::admission::{TOKEN_MOUNT_PATH, token_volume_source};
    use badge_proto::identity::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, DownwardApiProjection,
        EnvVarSource, SecretEnvSource, SecretKeySelector, SecretProjection, Volume,
        VolumeProjection,
    };
    use badge_proto::meta::LocalObjectReference;
    use volume_projection::Projection;

    const P: &str = "pod.spec";

    fn projection(p: Projection) -> VolumeProjection {
        VolumeProjection {
            projection: Some(p),
        }
    }

    fn item(key: &str, path: &str) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode: None,
        }
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            read_only: true,
            mount_path: path.into(),
            sub_path: String::new(),
        }
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        }
    }

    fn env_from(from: EnvVarSource) -> EnvVar {
        EnvVar {
            name: "FROM".into(),
            value: String::new(),
            value_from: Some(from),
        }
    }

    fn field_ref(path: &str) -> ObjectFieldSelector {
        ObjectFieldSelector {
            api_version: "v1".into(),
            field_path: path.into(),
        }
    }

    /// A pod using every field the validator looks at, all valid. Volume 1 is the
    /// token volume admission would add.
    fn full() -> PodSpec {
        PodSpec {
            service_account_name: "build-bot".into(),
            automount_service_account_token: Some(true),
            node_name: "node-1.example.com".into(),
            volumes: vec![
                Volume {
                    name: "creds".into(),
                    source: Some(volume::Source::Secret(SecretVolumeSource {
                        secret_name: "db-creds".into(),
                        items: vec![KeyToPath {
                            key: "password".into(),
                            path: "db/password".into(),
                            mode: Some(0o400),
                        }],
                        default_mode: Some(0o440),
                        optional: None,
                    })),
                },
                Volume {
                    name: "kube-api-access-abcde".into(),
                    source: Some(volume::Source::Projected(token_volume_source())),
                },
                Volume {
                    name: "extra".into(),
                    source: Some(volume::Source::Projected(ProjectedVolumeSource {
                        sources: vec![
                            projection(Projection::ServiceAccountToken(
                                ServiceAccountTokenProjection {
                                    audience: "vault".into(),
                                    expiration_seconds: Some(600),
                                    path: "vault/token".into(),
                                },
                            )),
                            projection(Projection::Secret(SecretProjection {
                                name: "tls".into(),
                                items: vec![item("tls.crt", "tls.crt")],
                                optional: Some(true),
                            })),
                            projection(Projection::ConfigMap(ConfigMapProjection {
                                name: "app-config".into(),
                                items: vec![],
                                optional: None,
                            })),
                            projection(Projection::DownwardApi(DownwardApiProjection {
                                items: vec![DownwardApiVolumeFile {
                                    path: "labels".into(),
                                    field_ref: Some(field_ref("metadata.labels")),
                                    mode: Some(0o777),
                                }],
                            })),
                        ],
                        default_mode: Some(0),
                    })),
                },
            ],
            init_containers: vec![Container {
                name: "init".into(),
                image: "busybox".into(),
                volume_mounts: vec![mount("creds", "/creds")],
                ..Default::default()
            }],
            containers: vec![
                Container {
                    name: "app".into(),
                    image: "app:1".into(),
                    env: vec![
                        env("MODE", "prod"),
                        env("weird.name-1 ok", ""),
                        env_from(EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: "db-creds".into(),
                                key: "password".into(),
                                optional: None,
                            }),
                            ..Default::default()
                        }),
                        env_from(EnvVarSource {
                            config_map_key_ref: Some(ConfigMapKeySelector {
                                name: "app-config".into(),
                                key: "level".into(),
                                optional: None,
                            }),
                            ..Default::default()
                        }),
                        env_from(EnvVarSource {
                            field_ref: Some(field_ref("metadata.name")),
                            ..Default::default()
                        }),
                    ],
                    env_from: vec![
                        EnvFromSource {
                            prefix: String::new(),
                            secret_ref: Some(SecretEnvSource {
                                name: "app-secrets".into(),
                                optional: None,
                            }),
                            config_map_ref: None,
                        },
                        EnvFromSource {
                            prefix: "CFG_".into(),
                            secret_ref: None,
                            config_map_ref: Some(ConfigMapEnvSource {
                                name: "app-config".into(),
                                optional: Some(true),
                            }),
                        },
                    ],
                    volume_mounts: vec![
                        mount("creds", "/etc/creds"),
                        mount("kube-api-access-abcde", TOKEN_MOUNT_PATH),
                        VolumeMount {
                            sub_path: "vault".into(),
                            ..mount("extra", "/vault")
                        },
                    ],
                },
                Container {
                    name: "sidecar".into(),
                    image: "sidecar:1".into(),
                    // The same volume and path as "app": paths are unique per container.
                    volume_mounts: vec![mount("creds", "/etc/creds")],
                    ..Default::default()
                },
            ],
            image_pull_secrets: vec![LocalObjectReference {
                name: "registry".into(),
            }],
        }
    }

    fn violations(spec: &PodSpec) -> Vec<FieldViolation> {
        match validate_pod_spec(Some(spec), P) {
            Ok(()) => Vec::new(),
            Err(Error::Invalid(v)) => v,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    fn fields(v: &[FieldViolation]) -> Vec<&str> {
        v.iter().map(|f| f.field.as_str()).collect()
    }

    fn secret_source(spec: &mut PodSpec) -> &mut SecretVolumeSource {
        match &mut spec.volumes[0].source {
            Some(volume::Source::Secret(s)) => s,
            _ => unreachable!("volume 0 is a secret volume"),
        }
    }

    fn extra_sources(spec: &mut PodSpec) -> &mut ProjectedVolumeSource {
        match &mut spec.volumes[2].source {
            Some(volume::Source::Projected(p)) => p,
            _ => unreachable!("volume 2 is projected"),
        }
    }

    fn token(spec: &mut PodSpec) -> &mut ServiceAccountTokenProjection {
        match &mut extra_sources(spec).sources[0].projection {
            Some(Projection::ServiceAccountToken(t)) => t,
            _ => unreachable!("source 0 is a token"),
        }
    }

    fn projected_secret(spec: &mut PodSpec) -> &mut SecretProjection {
        match &mut extra_sources(spec).sources[1].projection {
            Some(Projection::Secret(s)) => s,
            _ => unreachable!("source 1 is a secret"),
        }
    }

    fn projected_config_map(spec: &mut PodSpec) -> &mut ConfigMapProjection {
        match &mut extra_sources(spec).sources[2].projection {
            Some(Projection::ConfigMap(c)) => c,
            _ => unreachable!("source 2 is a config map"),
        }
    }

    fn downward(spec: &mut PodSpec) -> &mut DownwardApiVolumeFile {
        match &mut extra_sources(spec).sources[3].projection {
            Some(Projection::DownwardApi(d)) => &mut d.items[0],
            _ => unreachable!("source 3 is downward API"),
        }
    }

    /// Adds a copy of volume 0 named `name`.
    fn add_volume(spec: &mut PodSpec, name: &str) {
        let mut v = spec.volumes[0].clone();
        v.name = name.into();
        spec.volumes.push(v);
    }

    fn app(spec: &mut PodSpec) -> &mut Container {
        &mut spec.containers[0]
    }

    fn value_from(spec: &mut PodSpec, j: usize) -> &mut EnvVarSource {
        app(spec).env[j].value_from.as_mut().unwrap()
    }

    #[test]
    fn valid_specs_pass() {
        assert_eq!(validate_pod_spec(None, P), Ok(()));
        assert_eq!(validate_pod_spec(Some(&PodSpec::default()), P), Ok(()));
        assert_eq!(validate_pod_spec(Some(&full()), P), Ok(()));
        // Token lifetime bounds are inclusive.
        let mut s = full();
        token(&mut s).expiration_seconds = Some(1 << 32);
        assert_eq!(validate_pod_spec(Some(&s), P), Ok(()));
        // Unset expiration defaults later.
        token(&mut s).expiration_seconds = None;
        assert_eq!(validate_pod_spec(Some(&s), P), Ok(()));
        // A projected volume with no sources is allowed, as in Kubernetes.
        extra_sources(&mut s).sources.clear();
        assert_eq!(validate_pod_spec(Some(&s), P), Ok(()));
    }

    #[test]
    fn admitted_pod_stays_valid() {
        use crate::admission::{admit_pod, default_service_account_name};
        use badge_proto::identity::{Pod, ServiceAccount};
        use badge_proto::meta::ObjectMeta;

        let meta = |name: &str| {
            Some(ObjectMeta {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            })
        };
        let mut pod = Pod {
            metadata: meta("p"),
            spec: Some(PodSpec {
                init_containers: vec![Container {
                    name: "init".into(),
                    ..Default::default()
                }],
                containers: vec![Container {
                    name: "app".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        assert_eq!(validate_pod_spec(pod.spec.as_ref(), P), Ok(()));
        default_service_account_name(&mut pod);
        let sa = ServiceAccount {
            metadata: meta("default"),
            ..Default::default()
        };
        admit_pod(&mut pod, &sa, &mut || "abcde".to_owned()).unwrap();
        assert_eq!(pod.spec.as_ref().unwrap().volumes.len(), 1);
        assert_eq!(validate_pod_spec(pod.spec.as_ref(), P), Ok(()));
    }

    #[test]
    fn each_rule_reports_its_field() {
        struct Case {
            name: &'static str,
            edit: fn(&mut PodSpec),
            field: &'static str,
            text: &'static str,
        }
        let cases = [
            Case {
                name: "service account name not a subdomain",
                edit: |s| s.service_account_name = "Build_Bot".into(),
                field: "pod.spec.service_account_name",
                text: "invalid value \"Build_Bot\": a lowercase RFC 1123 subdomain",
            },
            Case {
                name: "node name not a subdomain",
                edit: |s| s.node_name = "node 1".into(),
                field: "pod.spec.node_name",
                text: "invalid value \"node 1\": a lowercase RFC 1123 subdomain",
            },
            // Renaming a mounted volume would also break its mounts: these add a fourth.
            Case {
                name: "volume name missing",
                edit: |s| add_volume(s, ""),
                field: "pod.spec.volumes[3].name",
                text: "name is required",
            },
            Case {
                name: "volume name not a label",
                edit: |s| add_volume(s, "extra.vol"),
                field: "pod.spec.volumes[3].name",
                text: "invalid value \"extra.vol\": a lowercase RFC 1123 label",
            },
            Case {
                name: "duplicate volume name",
                edit: |s| add_volume(s, "creds"),
                field: "pod.spec.volumes[3].name",
                text: "duplicate volume name \"creds\"",
            },
            Case {
                name: "duplicate token volume name",
                edit: |s| add_volume(s, "kube-api-access-abcde"),
                field: "pod.spec.volumes[3].name",
                text: "duplicate volume name \"kube-api-access-abcde\"",
            },
            Case {
                name: "volume without a source",
                edit: |s| s.volumes[2].source = None,
                field: "pod.spec.volumes[2]",
                text: "must specify a volume type",
            },
            Case {
                name: "secret volume without a secret name",
                edit: |s| secret_source(s).secret_name = String::new(),
                field: "pod.spec.volumes[0].secret.secret_name",
                text: "secret_name is required",
            },
            Case {
                name: "secret volume secret name not a subdomain",
                edit: |s| secret_source(s).secret_name = "DB".into(),
                field: "pod.spec.volumes[0].secret.secret_name",
                text: "invalid value \"DB\": a lowercase RFC 1123 subdomain",
            },
            Case {
                name: "secret volume default mode too large",
                edit: |s| secret_source(s).default_mode = Some(0o1000),
                field: "pod.spec.volumes[0].secret.default_mode",
                text: "invalid value 512: must be a number between 0 and 0777",
            },
            Case {
                name: "secret volume default mode negative",
                edit: |s| secret_source(s).default_mode = Some(-1),
                field: "pod.spec.volumes[0].secret.default_mode",
                text: "invalid value -1: must be a number between 0 and 0777",
            },
            Case {
                name: "secret item key missing",
                edit: |s| secret_source(s).items[0].key = String::new(),
                field: "pod.spec.volumes[0].secret.items[0].key",
                text: "key is required",
            },
            Case {
                name: "secret item path missing",
                edit: |s| secret_source(s).items[0].path = String::new(),
                field: "pod.spec.volumes[0].secret.items[0].path",
                text: "path is required",
            },
            Case {
                name: "secret item path absolute",
                edit: |s| secret_source(s).items[0].path = "/etc/passwd".into(),
                field: "pod.spec.volumes[0].secret.items[0].path",
                text: "invalid value \"/etc/passwd\": must be a relative path",
            },
            Case {
                name: "secret item path climbs out",
                edit: |s| secret_source(s).items[0].path = "db/../../x".into(),
                field: "pod.spec.volumes[0].secret.items[0].path",
                text: "invalid value \"db/../../x\": must not contain '..'",
            },
            Case {
                name: "secret item path reserved",
                edit: |s| secret_source(s).items[0].path = "..data".into(),
                field: "pod.spec.volumes[0].secret.items[0].path",
                text: "invalid value \"..data\": must not start with '..'",
            },
            Case {
                name: "secret item mode too large",
                edit: |s| secret_source(s).items[0].mode = Some(0o7777),
                field: "pod.spec.volumes[0].secret.items[0].mode",
                text: "invalid value 4095: must be a number between 0 and 0777",
            },
            Case {
                name: "projected default mode too large",
                edit: |s| extra_sources(s).default_mode = Some(1000),
                field: "pod.spec.volumes[2].projected.default_mode",
                text: "invalid value 1000: must be a number",
            },
            Case {
                name: "projection without a type",
                edit: |s| extra_sources(s).sources[2].projection = None,
                field: "pod.spec.volumes[2].projected.sources[2]",
                text: "must specify a projection type",
            },
            Case {
                name: "token path missing",
                edit: |s| token(s).path = String::new(),
                field: "pod.spec.volumes[2].projected.sources[0].service_account_token.path",
                text: "path is required",
            },
            Case {
                name: "token path absolute",
                edit: |s| token(s).path = "/token".into(),
                field: "pod.spec.volumes[2].projected.sources[0].service_account_token.path",
                text: "invalid value \"/token\": must be a relative path",
            },
            Case {
                name: "token path climbs out",
                edit: |s| token(s).path = "../token".into(),
                field: "pod.spec.volumes[2].projected.sources[0].service_account_token.path",
                text: "invalid value \"../token\": must not contain '..'",
            },
            Case {
                name: "token lifetime too short",
                edit: |s| token(s).expiration_seconds = Some(599),
                field: "pod.spec.volumes[2].projected.sources[0].service_account_token.expiration_seconds",
                text: "invalid value 599: may not specify a duration less than 10 minutes",
            },
            Case {
                name: "token lifetime negative",
                edit: |s| token(s).expiration_seconds = Some(-1),
                field: "pod.spec.volumes[2].projected.sources[0].service_account_token.expiration_seconds",
                text: "invalid value -1: may not specify a duration less than 10 minutes",
            },
            Case {
                name: "token lifetime too long",
                edit: |s| token(s).expiration_seconds = Some((1 << 32) + 1),
                field: "pod.spec.volumes[2].projected.sources[0].service_account_token.expiration_seconds",
                text: "invalid value 4294967297: may not specify a duration larger than 2^32 seconds",
            },
            Case {
                name: "token path clashes with another file",
                edit: |s| token(s).path = "tls.crt".into(),
                field: "pod.spec.volumes[2].projected.sources[1].secret.items[0].path",
                text: "conflicting duplicate path \"tls.crt\"",
            },
            Case {
                name: "projected secret name missing",
                edit: |s| projected_secret(s).name = String::new(),
                field: "pod.spec.volumes[2].projected.sources[1].secret.name",
                text: "name is required",
            },
            Case {
                name: "projected secret name not a subdomain",
                edit: |s| projected_secret(s).name = "TLS".into(),
                field: "pod.spec.volumes[2].projected.sources[1].secret.name",
                text: "invalid value \"TLS\": a lowercase RFC 1123 subdomain",
            },
            Case {
                name: "projected secret item path absolute",
                edit: |s| projected_secret(s).items[0].path = "/tls.crt".into(),
                field: "pod.spec.volumes[2].projected.sources[1].secret.items[0].path",
                text: "must be a relative path",
            },
            Case {
                name: "projected config map name not a subdomain",
                edit: |s| projected_config_map(s).name = "app_config".into(),
                field: "pod.spec.volumes[2].projected.sources[2].config_map.name",
                text: "invalid value \"app_config\": a lowercase RFC 1123 subdomain",
            },
            Case {
                name: "projected config map item key missing",
                edit: |s| projected_config_map(s).items.push(item("", "level")),
                field: "pod.spec.volumes[2].projected.sources[2].config_map.items[0].key",
                text: "key is required",
            },
            Case {
                name: "downward API path missing",
                edit: |s| downward(s).path = String::new(),
                field: "pod.spec.volumes[2].projected.sources[3].downward_api.items[0].path",
                text: "path is required",
            },
            Case {
                name: "downward API path climbs out",
                edit: |s| downward(s).path = "a/..".into(),
                field: "pod.spec.volumes[2].projected.sources[3].downward_api.items[0].path",
                text: "invalid value \"a/..\": must not contain '..'",
            },
            Case {
                name: "downward API field ref missing",
                edit: |s| downward(s).field_ref = None,
                field: "pod.spec.volumes[2].projected.sources[3].downward_api.items[0].field_ref",
                text: "field_ref is required",
            },
            Case {
                name: "downward API field path missing",
                edit: |s| downward(s).field_ref = Some(field_ref("")),
                field: "pod.spec.volumes[2].projected.sources[3].downward_api.items[0].field_ref.field_path",
                text: "field_path is required",
            },
            Case {
                name: "downward API mode too large",
                edit: |s| downward(s).mode = Some(0o1777),
                field: "pod.spec.volumes[2].projected.sources[3].downward_api.items[0].mode",
                text: "must be a number between 0 and 0777",
            },
            Case {
                name: "container name missing",
                edit: |s| app(s).name = String::new(),
                field: "pod.spec.containers[0].name",
                text: "name is required",
            },
            Case {
                name: "container name not a label",
                edit: |s| app(s).name = "App".into(),
                field: "pod.spec.containers[0].name",
                text: "invalid value \"App\": a lowercase RFC 1123 label",
            },
            Case {
                name: "duplicate container name",
                edit: |s| s.containers[1].name = "app".into(),
                field: "pod.spec.containers[1].name",
                text: "duplicate container name \"app\"",
            },
            Case {
                name: "init container clashes with a container",
                edit: |s| s.init_containers[0].name = "sidecar".into(),
                field: "pod.spec.init_containers[0].name",
                text: "duplicate container name \"sidecar\"",
            },
            Case {
                name: "duplicate init container name",
                edit: |s| {
                    let again = s.init_containers[0].clone();
                    s.init_containers.push(again);
                },
                field: "pod.spec.init_containers[1].name",
                text: "duplicate container name \"init\"",
            },
            Case {
                name: "init container name not a label",
                edit: |s| s.init_containers[0].name = "-init".into(),
                field: "pod.spec.init_containers[0].name",
                text: "invalid value \"-init\": a lowercase RFC 1123 label",
            },
            Case {
                name: "env name missing",
                edit: |s| app(s).env[0].name = String::new(),
                field: "pod.spec.containers[0].env[0].name",
                text: "name is required",
            },
            Case {
                name: "env name with =",
                edit: |s| app(s).env[0].name = "A=B".into(),
                field: "pod.spec.containers[0].env[0].name",
                text: "invalid value \"A=B\": a valid environment variable name",
            },
            Case {
                name: "env name with a control character",
                edit: |s| app(s).env[0].name = "A\nB".into(),
                field: "pod.spec.containers[0].env[0].name",
                text: "invalid value \"A\\nB\": a valid environment variable name",
            },
            Case {
                name: "env value beside value_from",
                edit: |s| app(s).env[2].value = "x".into(),
                field: "pod.spec.containers[0].env[2].value_from",
                text: "may not be specified when `value` is not empty",
            },
            Case {
                name: "env value_from without a source",
                edit: |s| *value_from(s, 2) = EnvVarSource::default(),
                field: "pod.spec.containers[0].env[2].value_from",
                text: "must specify one of",
            },
            Case {
                name: "env value_from with two sources",
                edit: |s| value_from(s, 2).field_ref = Some(field_ref("metadata.uid")),
                field: "pod.spec.containers[0].env[2].value_from",
                text: "may not have more than one field specified at a time",
            },
            Case {
                name: "secret key ref name missing",
                edit: |s| value_from(s, 2).secret_key_ref.as_mut().unwrap().name = String::new(),
                field: "pod.spec.containers[0].env[2].value_from.secret_key_ref.name",
                text: "name is required",
            },
            Case {
                name: "secret key ref key missing",
                edit: |s| value_from(s, 2).secret_key_ref.as_mut().unwrap().key = String::new(),
                field: "pod.spec.containers[0].env[2].value_from.secret_key_ref.key",
                text: "key is required",
            },
            Case {
                name: "config map key ref key missing",
                edit: |s| {
                    value_from(s, 3).config_map_key_ref.as_mut().unwrap().key = String::new();
                },
                field: "pod.spec.containers[0].env[3].value_from.config_map_key_ref.key",
                text: "key is required",
            },
            Case {
                name: "env field ref path missing",
                edit: |s| value_from(s, 4).field_ref = Some(field_ref("")),
                field: "pod.spec.containers[0].env[4].value_from.field_ref.field_path",
                text: "field_path is required",
            },
            Case {
                name: "env_from secret name missing",
                edit: |s| app(s).env_from[0].secret_ref.as_mut().unwrap().name = String::new(),
                field: "pod.spec.containers[0].env_from[0].secret_ref.name",
                text: "name is required",
            },
            Case {
                name: "env_from secret name not a subdomain",
                edit: |s| app(s).env_from[0].secret_ref.as_mut().unwrap().name = "A".into(),
                field: "pod.spec.containers[0].env_from[0].secret_ref.name",
                text: "invalid value \"A\": a lowercase RFC 1123 subdomain",
            },
            Case {
                name: "env_from config map name missing",
                edit: |s| {
                    app(s).env_from[1].config_map_ref.as_mut().unwrap().name = String::new();
                },
                field: "pod.spec.containers[0].env_from[1].config_map_ref.name",
                text: "name is required",
            },
            Case {
                name: "env_from prefix with =",
                edit: |s| app(s).env_from[1].prefix = "CFG=".into(),
                field: "pod.spec.containers[0].env_from[1].prefix",
                text: "invalid value \"CFG=\": a valid environment variable name",
            },
            Case {
                name: "env_from without a source",
                edit: |s| app(s).env_from[1].config_map_ref = None,
                field: "pod.spec.containers[0].env_from[1]",
                text: "must specify one of: `config_map_ref` or `secret_ref`",
            },
            Case {
                name: "env_from with two sources",
                edit: |s| {
                    app(s).env_from[1].secret_ref = Some(SecretEnvSource {
                        name: "s".into(),
                        optional: None,
                    });
                },
                field: "pod.spec.containers[0].env_from[1]",
                text: "may not have more than one field specified at a time",
            },
            Case {
                name: "mount name missing",
                edit: |s| app(s).volume_mounts[0].name = String::new(),
                field: "pod.spec.containers[0].volume_mounts[0].name",
                text: "name is required",
            },
            Case {
                name: "mount of an unknown volume",
                edit: |s| app(s).volume_mounts[0].name = "nope".into(),
                field: "pod.spec.containers[0].volume_mounts[0].name",
                text: "volume \"nope\" not found",
            },
            Case {
                name: "mount of an unknown token volume",
                edit: |s| app(s).volume_mounts[1].name = "kube-api-access-zzzzz".into(),
                field: "pod.spec.containers[0].volume_mounts[1].name",
                text: "volume \"kube-api-access-zzzzz\" not found",
            },
            Case {
                name: "init container mount of an unknown volume",
                edit: |s| s.init_containers[0].volume_mounts[0].name = "gone".into(),
                field: "pod.spec.init_containers[0].volume_mounts[0].name",
                text: "volume \"gone\" not found",
            },
            Case {
                name: "mount path missing",
                edit: |s| app(s).volume_mounts[0].mount_path = String::new(),
                field: "pod.spec.containers[0].volume_mounts[0].mount_path",
                text: "mount_path is required",
            },
            Case {
                name: "mount path repeated in a container",
                edit: |s| app(s).volume_mounts[2].mount_path = "/etc/creds".into(),
                field: "pod.spec.containers[0].volume_mounts[2].mount_path",
                text: "invalid value \"/etc/creds\": must be unique",
            },
            Case {
                name: "sub path absolute",
                edit: |s| app(s).volume_mounts[2].sub_path = "/vault".into(),
                field: "pod.spec.containers[0].volume_mounts[2].sub_path",
                text: "invalid value \"/vault\": must be a relative path",
            },
            Case {
                name: "sub path climbs out",
                edit: |s| app(s).volume_mounts[2].sub_path = "vault/../..".into(),
                field: "pod.spec.containers[0].volume_mounts[2].sub_path",
                text: "must not contain '..'",
            },
            Case {
                name: "image pull secret name missing",
                edit: |s| s.image_pull_secrets.push(LocalObjectReference::default()),
                field: "pod.spec.image_pull_secrets[1].name",
                text: "name is required",
            },
        ];
        for c in cases {
            let mut spec = full();
            (c.edit)(&mut spec);
            let got = violations(&spec);
            assert_eq!(fields(&got), [c.field], "{}: {got:?}", c.name);
            assert!(
                got[0].description.contains(c.text),
                "{}: {:?} lacks {:?}",
                c.name,
                got[0].description,
                c.text
            );
        }
    }

    #[test]
    fn every_violation_is_reported_in_spec_order() {
        let mut spec = full();
        spec.service_account_name = "Bad".into();
        token(&mut spec).expiration_seconds = Some(60);
        add_volume(&mut spec, "creds");
        spec.init_containers[0].volume_mounts[0].name = "missing".into();
        app(&mut spec).env[0].name = String::new();
        spec.containers[1].name = "app".into();
        spec.image_pull_secrets[0].name = String::new();

        let got = violations(&spec);
        assert_eq!(
            fields(&got),
            [
                "pod.spec.service_account_name",
                "pod.spec.volumes[2].projected.sources[0].service_account_token.expiration_seconds",
                "pod.spec.volumes[3].name",
                "pod.spec.init_containers[0].volume_mounts[0].name",
                "pod.spec.containers[0].env[0].name",
                "pod.spec.containers[1].name",
                "pod.spec.image_pull_secrets[0].name",
            ],
            "{got:?}"
        );
        let err = validate_pod_spec(Some(&spec), P).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pod.spec.service_account_name: invalid value \"Bad\""),
            "{err}"
        );
    }

    #[test]
    fn one_value_can_break_several_rules() {
        let mut spec = full();
        // Too long and the wrong shape: both problems, on the one field.
        app(&mut spec).name = "A".repeat(70);
        // Absolute and climbing out.
        secret_source(&mut spec).items[0].path = "/../x".into();
        let got = violations(&spec);
        assert_eq!(
            fields(&got),
            [
                "pod.spec.volumes[0].secret.items[0].path",
                "pod.spec.volumes[0].secret.items[0].path",
                "pod.spec.containers[0].name",
                "pod.spec.containers[0].name",
            ],
            "{got:?}"
        );
        assert!(got[2].description.contains("no more than 63 characters"));
        // Long values are quoted cut short.
        assert!(got[2].description.contains("...:"), "{:?}", got[2]);
    }

    #[test]
    fn empty_names_are_not_also_duplicates_or_missing_volumes() {
        let mut spec = full();
        spec.volumes[0].name = String::new();
        spec.volumes[1].name = String::new();
        spec.containers[0].name = String::new();
        spec.containers[1].name = String::new();
        // Mounts of "creds" and the token volume now name no volume.
        let got = violations(&spec);
        assert_eq!(
            fields(&got),
            [
                "pod.spec.volumes[0].name",
                "pod.spec.volumes[1].name",
                "pod.spec.init_containers[0].volume_mounts[0].name",
                "pod.spec.containers[0].name",
                "pod.spec.containers[0].volume_mounts[0].name",
                "pod.spec.containers[0].volume_mounts[1].name",
                "pod.spec.containers[1].name",
                "pod.spec.containers[1].volume_mounts[0].name",
            ],
            "{got:?}"
        );
    }

    #[test]
    fn path_prefix_is_used() {
        let mut spec = full();
        spec.node_name = "-".into();
        let got = pod_spec_violations(Some(&spec), "spec");
        assert_eq!(fields(&got), ["spec.node_name"]);
    }

    fn pod_cert() -> PodCertificateProjection {
        PodCertificateProjection {
            signer_name: "badge.dev/spiffe".into(),
            key_type: "ECDSAP256".into(),
            max_expiration_seconds: None,
            credential_bundle_path: "credentialbundle.pem".into(),
            key_path: String::new(),
            certificate_chain_path: String::new(),
            user_annotations: Default::default(),
        }
    }

    #[test]
    fn pod_certificate_table() {
        const F: &str = "pod.spec.volumes[0].projected.sources[1].pod_certificate";
        type Edit = fn(&mut PodCertificateProjection);
        // (field suffix, description substring)
        type Want = Vec<(&'static str, &'static str)>;
        // (name, edit, expected violations)
        let cases: Vec<(&str, Edit, Want)> = vec![
            ("valid bundle", |_| {}, vec![]),
            (
                "valid key and chain",
                |p| {
                    p.credential_bundle_path.clear();
                    p.key_path = "tls.key".into();
                    p.certificate_chain_path = "certs/tls.crt".into();
                },
                vec![],
            ),
            ("every key type", |p| p.key_type = "ED25519".into(), vec![]),
            (
                "bounds inclusive low",
                |p| p.max_expiration_seconds = Some(3600),
                vec![],
            ),
            (
                "bounds inclusive high",
                |p| p.max_expiration_seconds = Some(7_862_400),
                vec![],
            ),
            (
                "annotations qualified",
                |p| {
                    p.user_annotations
                        .insert("example.com/team".into(), "a".into());
                },
                vec![],
            ),
            (
                "signer required",
                |p| p.signer_name.clear(),
                vec![(".signer_name", "signer_name is required")],
            ),
            (
                "signer without path",
                |p| p.signer_name = "badge.dev".into(),
                vec![(".signer_name", "example.com/signer-name")],
            ),
            (
                "signer two slashes",
                |p| p.signer_name = "badge.dev/a/b".into(),
                vec![(".signer_name", "example.com/signer-name")],
            ),
            (
                "signer single-label domain",
                |p| p.signer_name = "badge/spiffe".into(),
                vec![(".signer_name", "at least two segments")],
            ),
            (
                "signer bad domain label",
                |p| p.signer_name = "Badge.dev/spiffe".into(),
                vec![(".signer_name", "validating label \"Badge\"")],
            ),
            (
                "signer bad path",
                |p| p.signer_name = "badge.dev/Spiffe_".into(),
                vec![(".signer_name", "validating component \"Spiffe_\"")],
            ),
            (
                "key type required",
                |p| p.key_type.clear(),
                vec![(".key_type", "key_type is required")],
            ),
            (
                "key type unknown",
                |p| p.key_type = "RSA2048".into(),
                vec![(".key_type", "Unsupported value: \"RSA2048\"")],
            ),
            (
                "key type case",
                |p| p.key_type = "ecdsap256".into(),
                vec![(".key_type", "supported values: \"RSA3072\"")],
            ),
            (
                "expiration too short",
                |p| p.max_expiration_seconds = Some(3599),
                vec![(
                    ".max_expiration_seconds",
                    "invalid value 3599: must be in the range [3600, 7862400]",
                )],
            ),
            (
                "expiration too long",
                |p| p.max_expiration_seconds = Some(7_862_401),
                vec![(".max_expiration_seconds", "[3600, 7862400]")],
            ),
            (
                "kubernetes.io signer caps at a day",
                |p| {
                    p.signer_name = "kubernetes.io/kube-apiserver-client-pod".into();
                    p.max_expiration_seconds = Some(86_401);
                },
                vec![(".max_expiration_seconds", "[3600, 86400]")],
            ),
            (
                "no path at all",
                |p| p.credential_bundle_path.clear(),
                vec![("", "must specify one of")],
            ),
            (
                "bundle and key",
                |p| {
                    p.key_path = "k".into();
                    p.certificate_chain_path = "c".into();
                },
                vec![("", "may not specify `credential_bundle_path` together")],
            ),
            (
                "key without chain",
                |p| {
                    p.credential_bundle_path.clear();
                    p.key_path = "k".into();
                },
                vec![(".certificate_chain_path", "required when key_path")],
            ),
            (
                "chain without key",
                |p| {
                    p.credential_bundle_path.clear();
                    p.certificate_chain_path = "c".into();
                },
                vec![(".key_path", "required when certificate_chain_path")],
            ),
            (
                "absolute path",
                |p| p.credential_bundle_path = "/etc/bundle.pem".into(),
                vec![(
                    ".credential_bundle_path",
                    "invalid value \"/etc/bundle.pem\": must be a relative path",
                )],
            ),
            (
                "dot-dot element",
                |p| p.credential_bundle_path = "a/../b".into(),
                vec![(".credential_bundle_path", "must not contain '..'")],
            ),
            (
                "reserved dot-dot prefix",
                |p| p.credential_bundle_path = "..data".into(),
                vec![(".credential_bundle_path", "must not start with '..'")],
            ),
            (
                "key and chain the same file",
                |p| {
                    p.credential_bundle_path.clear();
                    p.key_path = "same".into();
                    p.certificate_chain_path = "same".into();
                },
                vec![(
                    ".certificate_chain_path",
                    "conflicting duplicate path \"same\"",
                )],
            ),
            (
                "annotation key invalid",
                |p| {
                    p.user_annotations.insert("bad key".into(), "v".into());
                },
                vec![(".user_annotations[\"bad key\"]", "invalid key \"bad key\"")],
            ),
        ];
        for (name, edit, want) in cases {
            let mut p = pod_cert();
            edit(&mut p);
            let got = pod_certificate_violations(&p, F);
            assert_eq!(got.len(), want.len(), "{name}: {got:?}");
            for (v, (suffix, text)) in got.iter().zip(&want) {
                assert_eq!(v.field, format!("{F}{suffix}"), "{name}: {got:?}");
                assert!(v.description.contains(text), "{name}: {got:?}");
            }
        }
    }

    #[test]
    fn pod_certificate_paths_unique_across_sources() {
        let mut spec = PodSpec::default();
        spec.volumes.push(Volume {
            name: "certs".into(),
            source: Some(volume::Source::Projected(ProjectedVolumeSource {
                sources: vec![
                    projection(Projection::ServiceAccountToken(
                        ServiceAccountTokenProjection {
                            audience: String::new(),
                            expiration_seconds: None,
                            path: "credentialbundle.pem".into(),
                        },
                    )),
                    projection(Projection::PodCertificate(pod_cert())),
                    projection(Projection::PodCertificate(PodCertificateProjection {
                        credential_bundle_path: String::new(),
                        key_path: "tls.key".into(),
                        certificate_chain_path: "credentialbundle.pem".into(),
                        ..pod_cert()
                    })),
                ],
                default_mode: None,
            })),
        });
        let got = violations(&spec);
        assert_eq!(
            fields(&got),
            [
                "pod.spec.volumes[0].projected.sources[1].pod_certificate.credential_bundle_path",
                "pod.spec.volumes[0].projected.sources[2].pod_certificate.certificate_chain_path",
            ],
            "{got:?}"
        );
        assert!(
            got[1]
                .description
                .contains("conflicting duplicate path \"credentialbundle.pem\"")
        );
        // A valid source passes inside a pod spec.
        let mut ok = PodSpec::default();
        ok.volumes.push(Volume {
            name: "certs".into(),
            source: Some(volume::Source::Projected(ProjectedVolumeSource {
                sources: vec![projection(Projection::PodCertificate(pod_cert()))],
                default_mode: None,
            })),
        });
        assert_eq!(validate_pod_spec(Some(&ok), P), Ok(()));
    }
}
