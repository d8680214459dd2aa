//! Reading Kubernetes YAML: multi-document files, directories, stdin; every document
//! parsed into a typed object and validated before anything is sent.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::k8s::{self, Kind, KindExt as _, Object};

/// One parsed document, ready to apply.
#[derive(Debug, Clone)]
pub struct Document {
    /// `document N` (1-based, in its file), prefixed with the file for directories.
    pub label: String,
    pub object: Object,
    pub proto: k8s::Proto,
}

impl Document {
    /// `document 2 (ServiceAccount my-ns/x)`.
    pub fn describe(&self) -> String {
        let m = self.object.metadata();
        format!(
            "{} ({} {})",
            self.label,
            self.object.kind().as_str(),
            qualified(&m.namespace, &m.name)
        )
    }
}

fn qualified(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// `unknown field "foo" at metadata.foo`, `missing field "name" at spec.containers[0]`.
fn describe_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let path = e.path().to_string();
    let msg = e.inner().to_string();
    // serde_yaml appends a position that is meaningless for a re-read Value.
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let join = |field: &str| {
        if path == "." || path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        // serde_path_to_error already ends the path with the unknown key.
        let at = if path == field || path.ends_with(&format!(".{field}")) {
            path.clone()
        } else {
            join(field)
        };
        return format!("unknown field {field:?} at {at}");
    }
    if let Some(rest) = msg.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        return format!("missing field {field:?} at {}", join(field));
    }
    if path == "." || path.is_empty() {
        msg
    } else {
        format!("{msg} at {path}")
    }
}

fn typed<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(describe_error)
}

/// Parses one document (already read as a YAML value).
pub fn parse_value(
    label: &str,
    v: Value,
    default_namespace: &str,
    explicit_namespace: Option<&str>,
) -> Result<Document, String> {
    let kind = str_at(&v, &["kind"]).unwrap_or("").to_string();
    let api_version = str_at(&v, &["apiVersion"]).unwrap_or("").to_string();
    let name = str_at(&v, &["metadata", "name"]).unwrap_or("").to_string();
    let ns = str_at(&v, &["metadata", "namespace"])
        .unwrap_or("")
        .to_string();
    let what = if kind.is_empty() {
        label.to_string()
    } else {
        format!("{label} ({kind} {})", qualified(&ns, &name))
    };
    let fail = |msg: String| format!("{what}: {msg}");
    if !v.is_mapping() {
        return Err(fail("not a mapping (expected a Kubernetes object)".into()));
    }
    if kind.is_empty() {
        return Err(fail("missing field \"kind\" at kind".into()));
    }
    if api_version.is_empty() {
        return Err(fail("missing field \"apiVersion\" at apiVersion".into()));
    }
    let unknown = || {
        fail(format!(
            "unknown kind {kind:?} in apiVersion {api_version:?} at kind: badgectl applies v1 Namespace, ServiceAccount, Secret, Pod, Node and rbac.authorization.k8s.io/v1 Role, ClusterRole, RoleBinding, ClusterRoleBinding"
        ))
    };
    let Some(k) = Kind::from_manifest(&api_version, &kind) else {
        return Err(unknown());
    };
    let mut object = match k {
        Kind::Namespace => Object::Namespace(typed(v).map_err(&fail)?),
        Kind::ServiceAccount => Object::ServiceAccount(typed(v).map_err(&fail)?),
        Kind::Secret => Object::Secret(typed(v).map_err(&fail)?),
        Kind::Pod => Object::Pod(typed(v).map_err(&fail)?),
        Kind::Node => Object::Node(typed(v).map_err(&fail)?),
        Kind::Role => Object::Role(typed(v).map_err(&fail)?),
        Kind::ClusterRole => Object::ClusterRole(typed(v).map_err(&fail)?),
        Kind::RoleBinding => Object::RoleBinding(typed(v).map_err(&fail)?),
        Kind::ClusterRoleBinding => Object::ClusterRoleBinding(typed(v).map_err(&fail)?),
        // The token-issuer's own kinds: from_manifest never names them.
        Kind::SigningKey | Kind::Revocation | Kind::CertificateAuthority => return Err(unknown()),
    };
    if name.is_empty() {
        return Err(fail("missing field \"name\" at metadata.name".into()));
    }
    let meta = object.metadata_mut();
    if k.namespaced() {
        if meta.namespace.is_empty() {
            meta.namespace = default_namespace.to_string();
        } else if let Some(n) = explicit_namespace
            && n != meta.namespace
        {
            return Err(fail(format!(
                "the namespace from the provided object {:?} does not match the namespace {n:?}: pass --namespace={} or remove metadata.namespace",
                meta.namespace, meta.namespace
            )));
        }
    } else {
        // Cluster-scoped: a namespace is meaningless (kubectl ignores it too).
        meta.namespace.clear();
    }
    // Server-set fields are not sent.
    meta.uid.clear();
    meta.creation_timestamp = None;
    meta.deletion_timestamp = None;
    let proto = object.to_proto().map_err(&fail)?;
    Ok(Document {
        label: label.to_string(),
        object,
        proto,
    })
}

/// Deeper flow nesting (`[`/`{`) than this is refused before YAML parsing. serde_yaml
/// refuses more than 128 levels anyway, but only after its scanner (libyaml's) has
/// read the whole text, and that scanner is quadratic in the nesting depth: 64 KiB of
/// `[` took 13 s, 1 MiB would take an hour (found by `tests/prop_manifest.rs`).
const MAX_FLOW_DEPTH: usize = 128;

/// The line (1-based) where flow nesting first goes past [`MAX_FLOW_DEPTH`]. A rough
/// scan: quoted scalars and comments are skipped, and in block context a `[`/`{`
/// counts only where a value can start, so brackets inside plain text do not add up.
fn too_deep_at(text: &str) -> Option<usize> {
    let (mut depth, mut line, mut quote, mut comment) = (0usize, 1, None, false);
    let mut prev = '\n';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\n') => {
                line += 1;
                comment = false;
            }
            _ if comment => {}
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') if !prev.is_alphanumeric() => quote = Some(c),
            (None, '#') if prev.is_whitespace() => comment = true,
            (None, '[' | '{') if depth > 0 || matches!(prev, '\n' | ' ' | '\t' | ':' | '-') => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    None
}

/// Parses a multi-document YAML text. Every document is checked; the error lists
/// each failing document.
pub fn parse_text(
    text: &str,
    prefix: &str,
    default_namespace: &str,
    explicit_namespace: Option<&str>,
) -> Result<Vec<Document>, Vec<String>> {
    use serde::Deserialize as _;
    if let Some(line) = too_deep_at(text) {
        return Err(vec![format!(
            "{prefix}invalid YAML: nesting deeper than {MAX_FLOW_DEPTH} levels at line {line}"
        )]);
    }
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("{prefix}document {}", i + 1);
        let v = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{label}: invalid YAML: {e}"));
                // The stream cannot continue past a syntax error.
                break;
            }
        };
        if v.is_null() {
            continue;
        }
        match parse_value(&label, v, default_namespace, explicit_namespace) {
            Ok(d) => docs.push(d),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Reads `-f`: a file, a directory (its `.yaml`, `.yml` and `.json` files, sorted,
/// not recursive) or `-` (stdin).
pub fn read_sources(
    path: &Path,
    default_namespace: &str,
    explicit_namespace: Option<&str>,
) -> anyhow::Result<Vec<Document>> {
    let mut inputs: Vec<(String, String)> = Vec::new();
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        inputs.push((String::new(), s));
    } else if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
            inputs.push((format!("{}: ", f.display()), text));
        }
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        inputs.push((String::new(), text));
    }
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (prefix, text) in inputs {
        match parse_text(&text, &prefix, default_namespace, explicit_namespace) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{}\nnothing was applied", errors.join("\n"));
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SA: &str = "apiVersion: v1
kind: ServiceAccount
metadata:
  annotations:
    kubernetes.io/enforce-mountable-secrets: \"true\"
  name: my-serviceaccount
  namespace: my-namespace
";

    #[test]
    fn the_issue_manifest_parses() {
        let docs = parse_text(SA, "", "default", None).expect("parses");
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0].describe(),
            "document 1 (ServiceAccount my-namespace/my-serviceaccount)"
        );
        let k8s::Proto::ServiceAccount(sa) = &docs[0].proto else {
            panic!("not a service account");
        };
        let m = sa.metadata.as_ref().expect("metadata");
        assert_eq!(
            m.annotations
                .get("kubernetes.io/enforce-mountable-secrets")
                .map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn errors_name_document_and_field_path() {
        let text = format!(
            "{SA}---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namespace: my-ns\n  foo: 1\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: i\n    ports: []\n"
        );
        let errors = parse_text(&text, "", "default", None).expect_err("fails");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(
            errors[0],
            "document 2 (ServiceAccount my-ns/x): unknown field \"foo\" at metadata.foo"
        );
        assert!(
            errors[1].starts_with("document 3 (Deployment d): unknown kind \"Deployment\""),
            "{}",
            errors[1]
        );
        assert_eq!(
            errors[2],
            "document 4 (Pod p): unknown field \"ports\" at spec.containers[0].ports"
        );
    }

    #[test]
    fn namespaces_default_and_must_agree() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: [{name: c, image: i}]\n";
        let d = parse_text(pod, "", "dev", Some("dev")).expect("parses");
        assert_eq!(d[0].object.metadata().namespace, "dev");
        let e = parse_text(SA, "", "dev", Some("dev")).expect_err("mismatch");
        assert!(e[0].contains("does not match"), "{e:?}");
        let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  namespace: x\n";
        let d = parse_text(node, "", "dev", None).expect("parses");
        assert_eq!(d[0].object.metadata().namespace, "");
    }

    #[test]
    fn secrets_and_volumes() {
        let s = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: aGVsbG8=}\nstringData: {b: world}\n";
        let d = parse_text(s, "", "default", None).expect("parses");
        let k8s::Proto::Secret(p) = &d[0].proto else {
            panic!("secret")
        };
        assert_eq!(p.data.get("a").map(Vec::as_slice), Some(&b"hello"[..]));
        let bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: '***'}\n";
        let e = parse_text(bad, "", "default", None).expect_err("base64");
        assert!(e[0].contains("data.a: not base64"), "{e:?}");
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  serviceAccountName: sa\n  volumes:\n  - name: t\n    projected:\n      sources:\n      - serviceAccountToken: {audience: vault, expirationSeconds: 600, path: vault-token}\n  - name: cm\n    configMap: {name: c}\n  containers: [{name: c, image: i, volumeMounts: [{name: t, mountPath: /var/run/t}]}]\n";
        let d = parse_text(pod, "", "default", None).expect("parses");
        let k8s::Proto::Pod(p) = &d[0].proto else {
            panic!("pod")
        };
        assert_eq!(p.spec.as_ref().expect("spec").volumes.len(), 2);
    }

    #[test]
    fn pod_certificate_sources_parse_and_round_trip() {
        let pod = "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  serviceAccountName: sa
  volumes:
  - name: certs
    projected:
      sources:
      - podCertificate:
          signerName: badge.dev/spiffe
          keyType: ECDSAP256
          maxExpirationSeconds: 86400
          credentialBundlePath: credentialbundle.pem
          userAnnotations: {example.com/team: payments}
      - podCertificate:
          signerName: badge.dev/spiffe
          keyType: ED25519
          keyPath: tls.key
          certificateChainPath: tls.crt
  containers: [{name: c, image: i}]
";
        let d = parse_text(pod, "", "default", None).expect("parses");
        let k8s::Proto::Pod(p) = &d[0].proto else {
            panic!("pod")
        };
        let spec = p.spec.as_ref().expect("spec");
        let Some(badge_proto::identity::volume::Source::Projected(v)) = &spec.volumes[0].source
        else {
            panic!("projected")
        };
        use badge_proto::identity::volume_projection::Projection;
        let Some(Projection::PodCertificate(a)) = &v.sources[0].projection else {
            panic!("pod certificate")
        };
        assert_eq!(a.signer_name, "badge.dev/spiffe");
        assert_eq!(a.key_type, "ECDSAP256");
        assert_eq!(a.max_expiration_seconds, Some(86400));
        assert_eq!(a.credential_bundle_path, "credentialbundle.pem");
        assert_eq!(
            a.user_annotations
                .get("example.com/team")
                .map(String::as_str),
            Some("payments")
        );
        let Some(Projection::PodCertificate(b)) = &v.sources[1].projection else {
            panic!("pod certificate")
        };
        assert_eq!(
            (b.key_path.as_str(), b.certificate_chain_path.as_str()),
            ("tls.key", "tls.crt")
        );
        assert_eq!(b.max_expiration_seconds, None);

        // get -o yaml renders the same source back in camelCase; it parses again to
        // the same proto.
        let yaml = serde_yaml::to_string(&d[0].proto.to_object().to_json()).expect("yaml");
        assert!(yaml.contains("podCertificate:"), "{yaml}");
        assert!(
            yaml.contains("credentialBundlePath: credentialbundle.pem"),
            "{yaml}"
        );
        assert!(yaml.contains("certificateChainPath: tls.crt"), "{yaml}");
        let again = parse_text(&yaml, "", "default", None).expect("parses again");
        let k8s::Proto::Pod(q) = &again[0].proto else {
            panic!("pod")
        };
        assert_eq!(q.spec, p.spec);

        // Typos are unknown fields with their path; two sources in one entry refused.
        let bad = pod.replace("keyType: ED25519", "keytype: ED25519");
        let e = parse_text(&bad, "", "default", None).expect_err("typo");
        assert!(
            e[0].contains("unknown field \"keytype\" at spec.volumes[0].projected.sources[1].podCertificate.keytype"),
            "{e:?}"
        );
        let both = pod.replace(
            "      - podCertificate:\n          signerName: badge.dev/spiffe\n          keyType: ED25519",
            "      - serviceAccountToken: {path: t}\n        podCertificate:\n          signerName: badge.dev/spiffe\n          keyType: ED25519",
        );
        let e = parse_text(&both, "", "default", None).expect_err("two sources");
        assert!(e[0].contains("exactly one of"), "{e:?}");
    }
}
