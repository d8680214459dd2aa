//! Names, labels and annotations, validated as Kubernetes does
//! (`k8s.io/apimachinery/pkg/util/validation`, `.../api/validation/objectmeta.go`,
//! `.../apis/meta/v1/validation`).
//!
//! The `validate_*` string checks return the problems found (empty = valid), worded as
//! Kubernetes words them, without the value; [`validate_object_meta`] turns them into
//! [`FieldViolation`]s that name the field and quote the value.

use std::collections::HashMap;

use badge_proto::meta::ObjectMeta;

use crate::{FieldViolation, Kind};

/// Longest RFC 1123 label (namespace names, label-key name parts are 63 too).
pub const DNS_LABEL_MAX_LEN: usize = 63;
/// Longest RFC 1123 subdomain (most object names, label-key prefixes).
pub const DNS_SUBDOMAIN_MAX_LEN: usize = 253;
/// Longest name part of a qualified name (label and annotation keys).
pub const QUALIFIED_NAME_MAX_LEN: usize = 63;
/// Longest label value.
pub const LABEL_VALUE_MAX_LEN: usize = 63;
/// Kubernetes' `TotalAnnotationSizeLimitB`: the sum of every annotation key and value
/// length, in bytes.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Quoted values longer than this many characters are cut and end in `...`, so one
/// oversized input cannot blow up an error message (or a log line).
pub const QUOTE_MAX_CHARS: usize = 64;

const DNS_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUALIFIED_NAME_SHAPE_ERR: &str = "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn max_len_err(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// `value` in double quotes, cut to [`QUOTE_MAX_CHARS`] characters (plus `...`).
/// Control characters and quotes are escaped, so the result is one printable line.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// `invalid value "<value>": <problem>`, the description of a [`FieldViolation`].
pub fn invalid_value(value: &str, problem: &str) -> String {
    format!("invalid value {}: {problem}", quote(value))
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without a length limit.
fn is_dns_label_shape(value: &str) -> bool {
    let b = value.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            is_lower_alnum(*first)
                && is_lower_alnum(*last)
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, the charset of label-key names and
/// label values.
fn is_qualified_shape(value: &str) -> bool {
    let b = value.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// RFC 1123 label (`IsDNS1123Label`): at most 63 characters of `[a-z0-9-]`,
/// alphanumeric at both ends. Namespace names are labels.
pub fn validate_dns_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS_LABEL_MAX_LEN {
        errs.push(max_len_err(DNS_LABEL_MAX_LEN));
    }
    if !is_dns_label_shape(value) {
        errs.push(DNS_LABEL_ERR.to_owned());
    }
    errs
}

/// RFC 1123 subdomain (`IsDNS1123Subdomain`): at most 253 characters, dot-separated
/// non-empty labels. As in Kubernetes the parts are not limited to 63 characters each.
pub fn validate_dns_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS_SUBDOMAIN_MAX_LEN {
        errs.push(max_len_err(DNS_SUBDOMAIN_MAX_LEN));
    }
    if !value.split('.').all(is_dns_label_shape) {
        errs.push(DNS_SUBDOMAIN_ERR.to_owned());
    }
    errs
}

/// A label or annotation key (`IsQualifiedName`): an optional DNS-subdomain prefix and
/// `/`, then a name of at most 63 characters of `[-A-Za-z0-9_.]`, alphanumeric at both
/// ends.
pub fn validate_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    validate_dns_subdomain(prefix)
                        .into_iter()
                        .map(|e| format!("prefix part {e}")),
                );
            }
            *name
        }
        _ => return vec![QUALIFIED_NAME_SHAPE_ERR.to_owned()],
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > QUALIFIED_NAME_MAX_LEN {
            errs.push(format!("name part {}", max_len_err(QUALIFIED_NAME_MAX_LEN)));
        }
        if !is_qualified_shape(name) {
            errs.push(format!("name part {QUALIFIED_NAME_ERR}"));
        }
    }
    errs
}

/// A label value (`IsValidLabelValue`): empty, or at most 63 characters of
/// `[-A-Za-z0-9_.]`, alphanumeric at both ends.
pub fn validate_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LEN {
        errs.push(max_len_err(LABEL_VALUE_MAX_LEN));
    }
    if !value.is_empty() && !is_qualified_shape(value) {
        errs.push(LABEL_VALUE_ERR.to_owned());
    }
    errs
}

/// Keys in a stable order: prost maps are `HashMap`s, and the same input must give
/// the same violations in the same order.
fn sorted(map: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort();
    entries
}

/// Labels (`ValidateLabels`): every key a qualified name, every value a label value.
/// Violations are reported at `<path>["<key>"]`.
pub fn validate_labels(labels: &HashMap<String, String>, path: &str) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    for (key, value) in sorted(labels) {
        let field = format!("{path}[{}]", quote(key));
        for e in validate_qualified_name(key) {
            out.push(FieldViolation::new(
                &field,
                format!("invalid key {}: {e}", quote(key)),
            ));
        }
        for e in validate_label_value(value) {
            out.push(FieldViolation::new(&field, invalid_value(value, &e)));
        }
    }
    out
}

/// Annotations (`ValidateAnnotations`): every key a qualified name (checked lowercased,
/// as Kubernetes does), values free-form, and at most [`TOTAL_ANNOTATION_SIZE_LIMIT`]
/// bytes of keys plus values in total.
///
/// The size limit bounds what one object can make every reader of the change feed
/// hold in memory.
pub fn validate_annotations(
    annotations: &HashMap<String, String>,
    path: &str,
) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let mut total: usize = 0;
    for (key, value) in sorted(annotations) {
        total = total.saturating_add(key.len()).saturating_add(value.len());
        for e in validate_qualified_name(&key.to_lowercase()) {
            out.push(FieldViolation::new(
                format!("{path}[{}]", quote(key)),
                format!("invalid key {}: {e}", quote(key)),
            ));
        }
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(FieldViolation::new(
            path,
            format!(
                "too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes, got {total} bytes"
            ),
        ));
    }
    out
}

/// Validates the client-settable parts of `metadata` for an object of `kind`:
///
/// - metadata and name are required; the name is a DNS label for namespaces and a DNS
///   subdomain for every other kind;
/// - namespaced kinds need a namespace that is a DNS label; cluster-scoped kinds must
///   leave it empty;
/// - labels and annotations as [`validate_labels`] and [`validate_annotations`].
///
/// `path_prefix` is where the metadata sits in the request (usually `metadata`, or e.g.
/// `service_account.metadata`). Every violation is returned, none short-circuits.
/// Server-set fields (uid, resource_version, timestamps) are not checked here: the
/// server overwrites or compares them.
/// The name rule of a kind: DNS label for namespaces, path segment for RBAC
/// objects, DNS subdomain for everything else.
pub fn validate_name_for(kind: Kind, name: &str) -> Vec<String> {
    if kind == Kind::Namespace {
        validate_dns_label(name)
    } else if kind.is_rbac() {
        crate::rbac::validate_rbac_name(name)
    } else {
        validate_dns_subdomain(name)
    }
}

/// Validates a namespace and name given as plain request fields (get, delete,
/// token requests): fields `namespace` and `name`.
pub fn validate_key(kind: Kind, namespace: &str, name: &str) -> crate::Result<()> {
    let mut v = Vec::new();
    if kind.namespaced() {
        if namespace.is_empty() {
            v.push(FieldViolation::new("namespace", "namespace is required"));
        } else {
            for e in validate_dns_label(namespace) {
                v.push(FieldViolation::new(
                    "namespace",
                    invalid_value(namespace, &e),
                ));
            }
        }
    }
    if name.is_empty() {
        v.push(FieldViolation::new("name", "name is required"));
    } else {
        for e in validate_name_for(kind, name) {
            v.push(FieldViolation::new("name", invalid_value(name, &e)));
        }
    }
    crate::Error::check(v)
}

pub fn validate_object_meta(
    meta: Option<&ObjectMeta>,
    path_prefix: &str,
    kind: Kind,
) -> Vec<FieldViolation> {
    let Some(meta) = meta else {
        return vec![FieldViolation::new(path_prefix, "metadata is required")];
    };
    let mut out = Vec::new();

    let name_field = format!("{path_prefix}.name");
    if meta.name.is_empty() {
        out.push(FieldViolation::new(&name_field, "name is required"));
    } else {
        let errs = validate_name_for(kind, &meta.name);
        out.extend(
            errs.iter()
                .map(|e| FieldViolation::new(&name_field, invalid_value(&meta.name, e))),
        );
    }

    let ns_field = format!("{path_prefix}.namespace");
    if kind.namespaced() {
        if meta.namespace.is_empty() {
            out.push(FieldViolation::new(&ns_field, "namespace is required"));
        } else {
            out.extend(
                validate_dns_label(&meta.namespace)
                    .iter()
                    .map(|e| FieldViolation::new(&ns_field, invalid_value(&meta.namespace, e))),
            );
        }
    } else if !meta.namespace.is_empty() {
        out.push(FieldViolation::new(
            &ns_field,
            format!(
                "namespace must be empty for cluster-scoped kind {kind}, got {}",
                quote(&meta.namespace)
            ),
        ));
    }

    out.extend(validate_labels(
        &meta.labels,
        &format!("{path_prefix}.labels"),
    ));
    out.extend(validate_annotations(
        &meta.annotations,
        &format!("{path_prefix}.annotations"),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_truncates_long_values() {
        let cases: &[(&str, String)] = &[
            ("", "\"\"".to_owned()),
            ("abc", "\"abc\"".to_owned()),
            ("a\"b", "\"a\\\"b\"".to_owned()),
            ("a\nb", "\"a\\nb\"".to_owned()),
            (&"x".repeat(64), format!("\"{}\"", "x".repeat(64))),
            (&"x".repeat(65), format!("\"{}\"...", "x".repeat(64))),
            // Multi-byte characters are cut on a character boundary, never mid-char.
            (&"é".repeat(70), format!("\"{}\"...", "é".repeat(64))),
        ];
        for (input, want) in cases {
            assert_eq!(&quote(input), want, "quote({input:?})");
        }
    }

    #[test]
    fn dns_label() {
        let ok = [
            "a",
            "0",
            "abc",
            "a-b",
            "a--b",
            "123-abc",
            "my-name",
            &"a".repeat(63),
        ];
        for v in ok {
            assert!(validate_dns_label(v).is_empty(), "{v:?} should be valid");
        }
        let bad: &[(&str, &[&str])] = &[
            ("", &["RFC 1123 label"]),
            ("-a", &["RFC 1123 label"]),
            ("a-", &["RFC 1123 label"]),
            ("A", &["RFC 1123 label"]),
            ("a.b", &["RFC 1123 label"]),
            ("a_b", &["RFC 1123 label"]),
            ("a b", &["RFC 1123 label"]),
            ("ä", &["RFC 1123 label"]),
            (&"a".repeat(64), &["no more than 63 characters"]),
            (
                &"A".repeat(64),
                &["no more than 63 characters", "RFC 1123 label"],
            ),
        ];
        for (v, want) in bad {
            let errs = validate_dns_label(v);
            assert_eq!(errs.len(), want.len(), "{v:?}: {errs:?}");
            for (e, w) in errs.iter().zip(want.iter()) {
                assert!(e.contains(w), "{v:?}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn dns_subdomain() {
        let long_label = "a".repeat(100);
        let ok = [
            "a",
            "example.com",
            "a.b.c",
            "a-1.b-2",
            "kube-root-ca.crt",
            long_label.as_str(),
            &"a".repeat(253),
        ];
        for v in ok {
            assert!(
                validate_dns_subdomain(v).is_empty(),
                "{v:?} should be valid"
            );
        }
        let bad: &[(&str, &[&str])] = &[
            ("", &["RFC 1123 subdomain"]),
            (".a", &["RFC 1123 subdomain"]),
            ("a.", &["RFC 1123 subdomain"]),
            ("a..b", &["RFC 1123 subdomain"]),
            ("a.-b", &["RFC 1123 subdomain"]),
            ("a-.b", &["RFC 1123 subdomain"]),
            ("Example.com", &["RFC 1123 subdomain"]),
            ("a_b", &["RFC 1123 subdomain"]),
            ("a/b", &["RFC 1123 subdomain"]),
            (&"a".repeat(254), &["no more than 253 characters"]),
        ];
        for (v, want) in bad {
            let errs = validate_dns_subdomain(v);
            assert_eq!(errs.len(), want.len(), "{v:?}: {errs:?}");
            for (e, w) in errs.iter().zip(want.iter()) {
                assert!(e.contains(w), "{v:?}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn qualified_name() {
        let ok = [
            "app",
            "App",
            "a",
            "a.b_c-d",
            "MyName",
            "123-abc",
            "example.com/MyName",
            "kubernetes.io/enforce-mountable-secrets",
            &"a".repeat(63),
            &format!("{}/{}", "a".repeat(253), "b".repeat(63)),
        ];
        for v in ok {
            assert!(
                validate_qualified_name(v).is_empty(),
                "{v:?} should be valid"
            );
        }
        let bad: &[(&str, &[&str])] = &[
            ("", &["name part must be non-empty"]),
            (
                "/",
                &[
                    "prefix part must be non-empty",
                    "name part must be non-empty",
                ],
            ),
            ("/a", &["prefix part must be non-empty"]),
            ("a/", &["name part must be non-empty"]),
            ("a/b/c", &["a qualified name must consist"]),
            ("-a", &["name part must consist"]),
            ("a-", &["name part must consist"]),
            ("a b", &["name part must consist"]),
            (
                "Example.com/a",
                &["prefix part a lowercase RFC 1123 subdomain"],
            ),
            (
                &"a".repeat(64),
                &["name part must be no more than 63 characters"],
            ),
            (
                &format!("{}/a", "a".repeat(254)),
                &["prefix part must be no more than 253 characters"],
            ),
        ];
        for (v, want) in bad {
            let errs = validate_qualified_name(v);
            assert_eq!(errs.len(), want.len(), "{v:?}: {errs:?}");
            for (e, w) in errs.iter().zip(want.iter()) {
                assert!(e.contains(w), "{v:?}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn label_value() {
        let ok = [
            "",
            "a",
            "A",
            "MyValue",
            "my_value",
            "12345",
            "a.b-c_d",
            &"v".repeat(63),
        ];
        for v in ok {
            assert!(validate_label_value(v).is_empty(), "{v:?} should be valid");
        }
        let bad: &[(&str, &[&str])] = &[
            ("-a", &["a valid label must be an empty string"]),
            ("a-", &["a valid label must be an empty string"]),
            ("a/b", &["a valid label must be an empty string"]),
            ("a b", &["a valid label must be an empty string"]),
            (&"v".repeat(64), &["must be no more than 63 characters"]),
        ];
        for (v, want) in bad {
            let errs = validate_label_value(v);
            assert_eq!(errs.len(), want.len(), "{v:?}: {errs:?}");
            for (e, w) in errs.iter().zip(want.iter()) {
                assert!(e.contains(w), "{v:?}: {e:?} lacks {w:?}");
            }
        }
    }

    fn meta(name: &str, namespace: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            ..Default::default()
        }
    }

    fn fields(v: &[FieldViolation]) -> Vec<&str> {
        v.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn object_meta_names_and_namespaces() {
        struct Case {
            name: &'static str,
            meta: Option<ObjectMeta>,
            kind: Kind,
            want_fields: &'static [&'static str],
            want_text: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "valid service account",
                meta: Some(meta("build-bot", "ci")),
                kind: Kind::ServiceAccount,
                want_fields: &[],
                want_text: &[],
            },
            Case {
                name: "dotted name is fine for subdomain kinds",
                meta: Some(meta("kube-root-ca.crt", "ci")),
                kind: Kind::Secret,
                want_fields: &[],
                want_text: &[],
            },
            Case {
                name: "missing metadata",
                meta: None,
                kind: Kind::Pod,
                want_fields: &["metadata"],
                want_text: &["metadata is required"],
            },
            Case {
                name: "missing name and namespace, both reported",
                meta: Some(meta("", "")),
                kind: Kind::Pod,
                want_fields: &["metadata.name", "metadata.namespace"],
                want_text: &["name is required", "namespace is required"],
            },
            Case {
                name: "namespace name must be a label (no dots)",
                meta: Some(meta("a.b", "")),
                kind: Kind::Namespace,
                want_fields: &["metadata.name"],
                want_text: &["invalid value \"a.b\": a lowercase RFC 1123 label"],
            },
            Case {
                name: "valid namespace",
                meta: Some(meta("kube-system", "")),
                kind: Kind::Namespace,
                want_fields: &[],
                want_text: &[],
            },
            Case {
                name: "cluster-scoped kinds refuse a namespace",
                meta: Some(meta("node-1", "default")),
                kind: Kind::Node,
                want_fields: &["metadata.namespace"],
                want_text: &["must be empty for cluster-scoped kind Node, got \"default\""],
            },
            Case {
                name: "uppercase name",
                meta: Some(meta("Build_Bot", "ci")),
                kind: Kind::ServiceAccount,
                want_fields: &["metadata.name"],
                want_text: &["invalid value \"Build_Bot\": a lowercase RFC 1123 subdomain"],
            },
            Case {
                name: "namespace must be a label",
                meta: Some(meta("a", "my.ns")),
                kind: Kind::Pod,
                want_fields: &["metadata.namespace"],
                want_text: &["invalid value \"my.ns\": a lowercase RFC 1123 label"],
            },
            Case {
                name: "overlong name is quoted truncated",
                meta: Some(meta(&"a".repeat(254), "ci")),
                kind: Kind::Secret,
                want_fields: &["metadata.name"],
                want_text: &["\"...: must be no more than 253 characters"],
            },
        ];
        for c in cases {
            let got = validate_object_meta(c.meta.as_ref(), "metadata", c.kind);
            assert_eq!(fields(&got), c.want_fields, "{}: {got:?}", c.name);
            for (v, w) in got.iter().zip(c.want_text) {
                assert!(v.description.contains(w), "{}: {v:?} lacks {w:?}", c.name);
            }
        }
    }

    #[test]
    fn object_meta_uses_the_prefix() {
        let got = validate_object_meta(
            Some(&meta("", "")),
            "service_account.metadata",
            Kind::ServiceAccount,
        );
        assert_eq!(
            fields(&got),
            [
                "service_account.metadata.name",
                "service_account.metadata.namespace"
            ]
        );
        let got = validate_object_meta(None, "service_account.metadata", Kind::ServiceAccount);
        assert_eq!(fields(&got), ["service_account.metadata"]);
    }

    #[test]
    fn object_meta_labels() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("app", "web", &[]),
            ("app", "", &[]),
            ("example.com/tier", "Front_End.1", &[]),
            (
                "app",
                "-web",
                &["invalid value \"-web\": a valid label must be"],
            ),
            (
                "app",
                &"v".repeat(64),
                &["must be no more than 63 characters"],
            ),
            (
                "-app",
                "web",
                &["invalid key \"-app\": name part must consist"],
            ),
            (
                "a/b/c",
                "x/y",
                &[
                    "invalid key \"a/b/c\": a qualified name must consist",
                    "invalid value \"x/y\": a valid label must be",
                ],
            ),
        ];
        for (key, value, want) in cases {
            let mut m = meta("a", "ns");
            m.labels.insert((*key).to_owned(), (*value).to_owned());
            let got = validate_object_meta(Some(&m), "metadata", Kind::Pod);
            assert_eq!(got.len(), want.len(), "{key:?}={value:?}: {got:?}");
            for (v, w) in got.iter().zip(want.iter()) {
                assert_eq!(v.field, format!("metadata.labels[{key:?}]"));
                assert!(v.description.contains(w), "{v:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn object_meta_reports_every_label_in_key_order() {
        let mut m = meta("a", "ns");
        for k in ["z-", "-a", "ok", "m_"] {
            m.labels.insert(k.to_owned(), "v".to_owned());
        }
        let got = validate_object_meta(Some(&m), "metadata", Kind::Pod);
        assert_eq!(
            fields(&got),
            [
                "metadata.labels[\"-a\"]",
                "metadata.labels[\"m_\"]",
                "metadata.labels[\"z-\"]"
            ]
        );
    }

    #[test]
    fn object_meta_annotations() {
        let cases: &[(&str, &str, usize)] = &[
            ("kubernetes.io/enforce-mountable-secrets", "true", 0),
            // Values are free-form.
            ("note", "any text at all / with spaces\n", 0),
            // Keys are checked lowercased, so an uppercase prefix is accepted.
            ("Example.COM/Note", "x", 0),
            ("bad key", "x", 1),
            ("a/b/c", "x", 1),
            ("", "x", 1),
        ];
        for (key, value, n) in cases {
            let mut m = meta("a", "ns");
            m.annotations.insert((*key).to_owned(), (*value).to_owned());
            let got = validate_object_meta(Some(&m), "metadata", Kind::Pod);
            assert_eq!(got.len(), *n, "{key:?}: {got:?}");
            for v in &got {
                assert_eq!(v.field, format!("metadata.annotations[{key:?}]"));
                assert!(v.description.starts_with(&format!("invalid key {key:?}")));
            }
        }
    }

    #[test]
    fn object_meta_annotation_total_size() {
        // Exactly at the limit: key "k" (1 byte) + value (limit - 1 bytes).
        let mut m = meta("a", "ns");
        m.annotations
            .insert("k".to_owned(), "v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT - 1));
        assert!(validate_object_meta(Some(&m), "metadata", Kind::Pod).is_empty());

        // One byte over, spread over two annotations (the sum counts).
        m.annotations.insert("j".to_owned(), String::new());
        let got = validate_object_meta(Some(&m), "metadata", Kind::Pod);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].field, "metadata.annotations");
        assert_eq!(
            got[0].to_string(),
            "metadata.annotations: too long: must have at most 262144 bytes, got 262145 bytes"
        );
    }
}
