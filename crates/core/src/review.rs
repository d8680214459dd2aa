//! TokenReview for service-account tokens, with no IO, no crypto and no clock
//! (`k8s.io/kubernetes/pkg/serviceaccount/jwt.go`, `claims.go`, `legacy.go`;
//! reference §3.1–3.6 and §4.1).
//!
//! [`review`] runs what kube-apiserver's two service-account authenticators do for a
//! bearer token: the legacy one (issuer `kubernetes/serviceaccount`, §3.6) and the
//! bound one (the configured issuers, §3.2–3.3), combined as Kubernetes' token union
//! (§3.1: the first success wins, errors are aggregated, a token neither claims is
//! "invalid bearer token"). Signatures are checked through [`SignatureVerifier`]
//! (`badge_keys::KeySet` is the real one); live objects come from [`ObjectLookup`].
//!
//! Check order of bound tokens (§3.4): issuer pre-filter → signature → iss → audience
//! → nbf/exp/iat → service account (exists, uid, deletion) → secret → pod → node →
//! (Badge) revocation → warnafter.
//!
//! Where Badge differs from Kubernetes on purpose:
//!
//! - Tokens longer than [`ReviewSettings::max_token_len`] are refused before any
//!   decoding, with "token is too long: …".
//! - Base64url is strict: no padding, no line breaks, canonical trailing bits (Go's
//!   decoder skips `\r`/`\n` and go-jose strips `=` from the header and signature).
//!   A bad segment is "not mine", so the error is "invalid bearer token".
//! - The header must be a JSON object with a string `alg` (go-jose parses a missing
//!   `alg` and fails later); a non-string `kid` or `crit` is "not mine" as in go-jose.
//! - `alg` `none` and every `HS*` are refused before the verifier is called
//!   ("invalid signature, unsupported algorithm"); the verifier accepts only the one
//!   algorithm of each key (Kubernetes, through go-jose, also accepts RS384/RS512/PS*
//!   for RSA keys and any ES* length for EC keys). A non-empty `crit` header is refused
//!   ("invalid signature, unsupported critical header"; go-jose: a crypto failure).
//!   `jwk`, `jku`, `x5c` and `x5u` headers are ignored: keys come only from the
//!   verifier.
//! - Duplicate keys anywhere in the header or payload JSON: "malformed token" (Go
//!   keeps the last value). Claims of the wrong JSON type, and dates that do not fit an
//!   int64 after truncation (Go wraps them), are "malformed token" too (go-jose returns
//!   its unmarshal error).
//! - Objects count as deleted when `deletion_timestamp + deletion_leeway < now`;
//!   Kubernetes' leeway is 60 s, Badge's default 0.
//! - A revoked `jti` ([`ObjectLookup::revoked`]) fails with "service account token
//!   has been revoked", after every Kubernetes check.
//! - Unassigned code points are printed as they are by [`go_quote`] (Go escapes them).

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use sha2::{Digest as _, Sha256};

use crate::names::{validate_dns_label, validate_dns_subdomain};
use crate::token::{LEGACY_ISSUER, credential_id, unix_seconds};
use crate::user::{SERVICE_ACCOUNT_USERNAME_PREFIX, service_account_username};

/// go-jose's `DefaultLeeway` for nbf/exp/iat, and Kubernetes' deletion leeway.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The default cap on a token's length, in bytes.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 64 * 1024;

/// A token no authenticator claims (§3.1, `bearertoken.go`).
pub const INVALID_BEARER_TOKEN: &str = "invalid bearer token";
/// No trusted key has the header's kid (§3.2 step 3).
pub const NO_KEYS_FOUND: &str = "invalid signature, no keys found";
/// The signature does not verify with any candidate key.
pub const INVALID_SIGNATURE: &str = "invalid signature";
/// `alg` is `none`, `HS*`, or not the algorithm of the candidate key.
pub const UNSUPPORTED_ALGORITHM: &str = "invalid signature, unsupported algorithm";
/// The header lists critical extensions (`crit`), which Badge does not implement.
pub const UNSUPPORTED_CRITICAL_HEADER: &str = "invalid signature, unsupported critical header";
/// Duplicate JSON keys or claims of the wrong type.
pub const MALFORMED_TOKEN: &str = "malformed token";
/// A bound object is missing, deleted or (node-bound) gone (§3.3).
pub const TOKEN_INVALIDATED: &str = "service account token has been invalidated";
/// Badge: the token's jti was revoked.
pub const TOKEN_REVOKED: &str = "service account token has been revoked";
/// §3.3 time checks.
pub const TOKEN_NOT_VALID_YET: &str = "service account token is not valid yet";
pub const TOKEN_EXPIRED: &str = "service account token has expired";
pub const TOKEN_ISSUED_IN_FUTURE: &str = "service account token is issued in the future";
/// §3.6 step 1: the legacy token's Secret is gone or being deleted.
pub const LEGACY_TOKEN_INVALIDATED: &str = "Token has been invalidated";
/// §3.6 step 2.
pub const LEGACY_TOKEN_MISMATCH: &str = "Token does not match server's copy";
/// §3.6 step 5, the warning for tokens of auto-generated Secrets.
pub const AUTOGENERATED_SECRET_WARNING: &str = "Use tokens from the TokenRequest API or manually created secret-based tokens instead of auto-generated secret-based tokens.";

/// Label that marks a legacy token invalid (§3.6 step 4, §6.3).
pub const INVALID_SINCE_LABEL: &str = "kubernetes.io/legacy-token-invalid-since";
/// Label with the UTC date a legacy token was last used (§6.2).
pub const LAST_USED_LABEL: &str = "kubernetes.io/legacy-token-last-used";

/// User extra keys (§3.5).
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Groups of every service account (§3.5), plus the one the group adder puts on
/// every authenticated user (§3.1).
pub const ALL_SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
pub const SERVICE_ACCOUNTS_GROUP_PREFIX: &str = "system:serviceaccounts:";
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// Audit annotation keys Kubernetes adds while authenticating (§3.2, §3.3, §3.6).
pub const AUDIT_LEGACY_TOKEN: &str = "authentication.k8s.io/legacy-token";
pub const AUDIT_STALE_TOKEN: &str = "authentication.k8s.io/stale-token";
pub const AUDIT_LEGACY_TOKEN_INVALIDATED: &str = "authentication.k8s.io/legacy-token-invalidated";
pub const AUDIT_LEGACY_TOKEN_AUTOGENERATED: &str =
    "authentication.k8s.io/legacy-token-autogenerated-secret";
pub const AUDIT_LEGACY_TOKEN_MANUAL: &str = "authentication.k8s.io/legacy-token-manual-secret";

/// Checks a JWS signature. `kid` is the header's kid ("" when absent); `alg` the
/// header's alg. Returns `Ok(())` when some trusted key with that kid (all keys when
/// kid is empty) verifies it with an algorithm that key supports; `Err(text)`
/// otherwise, where text is Kubernetes' wording ([`NO_KEYS_FOUND`] when no candidate
/// key exists; several failures aggregated with [`aggregate_errors`]).
pub trait SignatureVerifier {
    fn verify(
        &self,
        kid: &str,
        alg: &str,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), String>;
}

/// What the liveness checks need of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectState {
    pub uid: String,
    pub deletion_timestamp: Option<SystemTime>,
}

/// What the checks need of a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretState {
    pub uid: String,
    pub deletion_timestamp: Option<SystemTime>,
    /// SHA-256 of `data.token` ([`token_sha256`]); `None` when there is no token.
    pub token_sha256: Option<[u8; 32]>,
    /// The label `kubernetes.io/legacy-token-invalid-since` is present and non-empty.
    pub invalid_since: bool,
    /// The label `kubernetes.io/legacy-token-last-used`, if present.
    pub last_used: Option<String>,
}

/// Live objects, from the service's in-memory index. `None`: not found.
pub trait ObjectLookup {
    fn service_account(&self, ns: &str, name: &str) -> Option<ObjectState>;
    /// The names in the service account's `secrets` list (auto-generated token
    /// Secrets); empty when the account is missing.
    fn service_account_secrets(&self, ns: &str, name: &str) -> Vec<String>;
    fn pod(&self, ns: &str, name: &str) -> Option<ObjectState>;
    fn secret(&self, ns: &str, name: &str) -> Option<SecretState>;
    fn node(&self, name: &str) -> Option<ObjectState>;
    /// Badge extension: the credential id (`jti`) was revoked.
    fn revoked(&self, jti: &str) -> bool;
}

/// The authenticator settings (`--service-account-issuer`, `--api-audiences`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSettings {
    /// Issuers of bound tokens. Legacy tokens (`kubernetes/serviceaccount`) are
    /// always accepted.
    pub issuers: Vec<String>,
    /// The API audiences: used when the request names none, and as the audiences of
    /// tokens without `aud`. When empty, an empty audience intersection is no error
    /// (as in Kubernetes).
    pub api_audiences: Vec<String>,
    /// Clock skew allowed on nbf/exp/iat (go-jose: 60 s).
    pub leeway: Duration,
    /// How long a deleted service account, secret, pod or node keeps bound tokens
    /// valid after its deletion timestamp (Kubernetes: 60 s; Badge default: 0).
    pub deletion_leeway: Duration,
    /// Longer tokens are refused before any decoding; 0 means
    /// [`DEFAULT_MAX_TOKEN_LEN`].
    pub max_token_len: usize,
}

impl ReviewSettings {
    /// Leeway 60 s, deletion leeway 0, tokens up to 64 KiB.
    pub fn new(issuers: Vec<String>, api_audiences: Vec<String>) -> Self {
        ReviewSettings {
            issuers,
            api_audiences,
            leeway: DEFAULT_LEEWAY,
            deletion_leeway: Duration::ZERO,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
        }
    }
}

/// The authenticated user (§3.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A successful review.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserInfo,
    /// The token's audiences ∩ the requested ones, in the requested order.
    pub audiences: Vec<String>,
    /// The `warnafter` time has passed (an extended token; still valid).
    pub stale: bool,
    /// A legacy (Secret-based) token.
    pub legacy: bool,
    /// Warnings for the response.
    pub warnings: Vec<String>,
    /// `(namespace, secret)` when the caller must set the Secret's
    /// `kubernetes.io/legacy-token-last-used` label to [`utc_date`]`(now)`: a legacy
    /// token whose label is neither today nor tomorrow (UTC) (§6.2).
    pub legacy_secret: Option<(String, String)>,
    /// `JTI=<jti>` for bound tokens with a jti, else empty.
    pub credential_id: String,
    /// The JWT `exp`, unix seconds.
    pub expires_at: Option<i64>,
}

/// Everything [`review_with_report`] learned, for callers that audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewReport {
    /// Kubernetes' `status.error` text on failure.
    pub outcome: Result<Authenticated, String>,
    /// The audit annotations Kubernetes adds, in order (key, value).
    pub audit_annotations: Vec<(String, String)>,
    /// As [`Authenticated::legacy_secret`], but also set when the review failed because
    /// the Secret is marked invalid: Kubernetes still records the use (§3.6 step 4).
    pub legacy_secret: Option<(String, String)>,
}

/// Full review: `requested_audiences` empty → API audiences. The error is
/// Kubernetes' `status.error` text.
pub fn review(
    token: &str,
    requested_audiences: &[String],
    settings: &ReviewSettings,
    verifier: &dyn SignatureVerifier,
    lookup: &dyn ObjectLookup,
    now: SystemTime,
) -> Result<Authenticated, String> {
    review_with_report(token, requested_audiences, settings, verifier, lookup, now).outcome
}

/// [`review`] with the audit annotations and the legacy Secret to mark as used.
pub fn review_with_report(
    token: &str,
    requested_audiences: &[String],
    settings: &ReviewSettings,
    verifier: &dyn SignatureVerifier,
    lookup: &dyn ObjectLookup,
    now: SystemTime,
) -> ReviewReport {
    let mut ctx = Context {
        token,
        requested_audiences,
        settings,
        verifier,
        lookup,
        now,
        annotations: Vec::new(),
        legacy_secret: None,
    };
    let outcome = ctx.run();
    ReviewReport {
        outcome,
        audit_annotations: ctx.annotations,
        legacy_secret: ctx.legacy_secret,
    }
}

/// SHA-256 of a token, as [`SecretState::token_sha256`] holds it.
pub fn token_sha256(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Equality of two digests in time independent of where they differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Go's `%q` of a string (`strconv.Quote`): `"` and `\` escaped, `\a \b \f \n \r \t
/// \v`, other ASCII controls as `\xhh`, other non-printable characters as `\uhhhh` or
/// `\Uhhhhhhhh`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if go_is_print(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint` for assigned code points: letters, marks, numbers,
/// punctuation, symbols and U+0020. Controls, format characters, private use, and
/// separators other than the ASCII space are not printable.
fn go_is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() {
        return false;
    }
    !matches!(
        c as u32,
        0x00A0
            | 0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x1680
            | 0x180E
            | 0x2000..=0x200F
            | 0x2028..=0x202F
            | 0x205F..=0x206F
            | 0x3000
            | 0xD800..=0xDFFF
            | 0xE000..=0xF8FF
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0xFFFE..=0xFFFF
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xF0000..=0x10FFFF
    )
}

/// Go's `%q` of a `[]string`: `["a" "b"]`, `[]` when empty.
pub fn go_quote_list(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&go_quote(item));
    }
    out.push(']');
    out
}

/// The text of Kubernetes' error aggregate (`utilerrors.NewAggregate(...).Error()`):
/// one error prints as itself; several print as `[a, b]` with duplicates dropped
/// (and as the single message when all are equal).
pub fn aggregate_errors(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => one.clone(),
        _ => {
            let mut seen: Vec<&str> = Vec::new();
            for e in errors {
                if !seen.contains(&e.as_str()) {
                    seen.push(e);
                }
            }
            if seen.len() == 1 {
                seen.concat()
            } else {
                format!("[{}]", seen.join(", "))
            }
        }
    }
}

/// `YYYY-MM-DD`, the UTC date of `t` (the last-used label's value, §6.2).
pub fn utc_date(t: SystemTime) -> String {
    date_of_day(unix_seconds(t).div_euclid(86_400))
}

/// Whether a legacy token's last-used label must be set to today: Kubernetes patches
/// it only when it is neither today nor tomorrow (UTC) (§6.2).
pub fn last_used_needs_update(last_used: Option<&str>, now: SystemTime) -> bool {
    let day = unix_seconds(now).div_euclid(86_400);
    let value = last_used.unwrap_or("");
    value != date_of_day(day) && value != date_of_day(day.saturating_add(1))
}

fn date_of_day(days: i64) -> String {
    // Howard Hinnant's civil_from_days; `days` comes from an i64 of seconds / 86400,
    // far from overflowing.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

// ---------------------------------------------------------------------------------
// Parsing

/// JSON that failed for a reason other than duplicate keys, or duplicate keys.
enum JsonError {
    Invalid,
    Duplicate,
}

/// A `serde_json::Value` that refuses duplicate object keys at any depth. serde_json
/// limits nesting to 128 levels, so recursion is bounded.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

const DUPLICATE_KEY: &str = "duplicate key";

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, JsonError> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(v)) => Ok(v),
        // The visitor's only data error is a duplicate key (finite floats always
        // convert); syntax, EOF and recursion-limit errors are other categories.
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(JsonError::Duplicate),
        Err(_) => Err(JsonError::Invalid),
    }
}

/// A compact JWS that passed the pre-filter and parsed.
struct Jws<'a> {
    /// `b64(header).b64(payload)`.
    signing_input: &'a [u8],
    alg: String,
    kid: String,
    crit: bool,
    signature: Vec<u8>,
    claims: Map<String, Value>,
    iss: String,
}

enum Parsed<'a> {
    /// No authenticator claims the token.
    NotMine,
    /// Duplicate JSON keys.
    Malformed,
    Jws(Jws<'a>),
}

fn b64(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

/// §3.2 steps 1–2: `hasCorrectIssuer`, then go-jose's `ParseSigned`.
fn parse<'a>(token: &'a str, settings: &ReviewSettings) -> Parsed<'a> {
    if token.trim_start().starts_with('{') {
        return Parsed::NotMine;
    }
    let mut parts = token.split('.');
    let (header_b64, payload_b64, signature_b64) = match (parts.next(), parts.next(), parts.next())
    {
        (Some(h), Some(p), Some(s)) => (h, p, s),
        _ => return Parsed::NotMine,
    };
    if parts.next().is_some() {
        return Parsed::NotMine;
    }

    let Some(payload_bytes) = b64(payload_b64) else {
        return Parsed::NotMine;
    };
    let claims = match parse_json(&payload_bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(JsonError::Invalid) => return Parsed::NotMine,
        Err(JsonError::Duplicate) => return Parsed::Malformed,
    };
    let iss = match claims.get("iss") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Parsed::NotMine,
    };
    if iss != LEGACY_ISSUER && !settings.issuers.contains(&iss) {
        return Parsed::NotMine;
    }

    let Some(header_bytes) = b64(header_b64) else {
        return Parsed::NotMine;
    };
    let header = match parse_json(&header_bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(JsonError::Invalid) => return Parsed::NotMine,
        Err(JsonError::Duplicate) => return Parsed::Malformed,
    };
    let alg = match header.get("alg") {
        Some(Value::String(s)) => s.clone(),
        _ => return Parsed::NotMine,
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Parsed::NotMine,
    };
    let crit = match header.get("crit") {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => !a.is_empty(),
        Some(_) => return Parsed::NotMine,
    };
    let Some(signature) = b64(signature_b64) else {
        return Parsed::NotMine;
    };

    let signing_len = header_b64.len() + 1 + payload_b64.len();
    Parsed::Jws(Jws {
        signing_input: token.as_bytes().get(..signing_len).unwrap_or_default(),
        alg,
        kid,
        crit,
        signature,
        claims,
        iss,
    })
}

// ---------------------------------------------------------------------------------
// Claims

struct WrongType;

type ClaimResult<T> = Result<T, WrongType>;

/// A string claim: absent or null → "" (Go's zero value).
fn string_claim(v: Option<&Value>) -> ClaimResult<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(WrongType),
    }
}

/// A NumericDate: an integer or float, truncated to whole seconds; absent or null →
/// `None`. Values outside int64 are refused.
fn date_claim(v: Option<&Value>) -> ClaimResult<Option<i64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            if n.is_u64() {
                return Err(WrongType);
            }
            let f = n.as_f64().ok_or(WrongType)?.trunc();
            // -2^63 ≤ f < 2^63 fits; both bounds are exact in f64.
            if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
                Ok(Some(f as i64))
            } else {
                Err(WrongType)
            }
        }
        Some(_) => Err(WrongType),
    }
}

/// `aud`: a string or an array of strings (go-jose `Audience`).
fn audience_claim(v: Option<&Value>) -> ClaimResult<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(WrongType),
            })
            .collect(),
        Some(_) => Err(WrongType),
    }
}

#[derive(Debug, Default, Clone)]
struct Ref {
    name: String,
    uid: String,
}

fn ref_claim(v: Option<&Value>) -> ClaimResult<Option<Ref>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(Ref {
            name: string_claim(m.get("name"))?,
            uid: string_claim(m.get("uid"))?,
        })),
        Some(_) => Err(WrongType),
    }
}

/// go-jose's `jwt.Claims`.
struct PublicClaims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    jti: String,
}

impl PublicClaims {
    fn parse(m: &Map<String, Value>) -> ClaimResult<Self> {
        Ok(PublicClaims {
            iss: string_claim(m.get("iss"))?,
            sub: string_claim(m.get("sub"))?,
            aud: audience_claim(m.get("aud"))?,
            exp: date_claim(m.get("exp"))?,
            nbf: date_claim(m.get("nbf"))?,
            iat: date_claim(m.get("iat"))?,
            jti: string_claim(m.get("jti"))?,
        })
    }
}

/// `privateClaims` of bound tokens (`kubernetes.io`).
#[derive(Default)]
struct BoundClaims {
    namespace: String,
    service_account: Ref,
    pod: Option<Ref>,
    secret: Option<Ref>,
    node: Option<Ref>,
    warn_after: Option<i64>,
}

impl BoundClaims {
    fn parse(m: &Map<String, Value>) -> ClaimResult<Self> {
        let k = match m.get("kubernetes.io") {
            None | Some(Value::Null) => return Ok(BoundClaims::default()),
            Some(Value::Object(k)) => k,
            Some(_) => return Err(WrongType),
        };
        Ok(BoundClaims {
            namespace: string_claim(k.get("namespace"))?,
            service_account: ref_claim(k.get("serviceaccount"))?.unwrap_or_default(),
            pod: ref_claim(k.get("pod"))?,
            secret: ref_claim(k.get("secret"))?,
            node: ref_claim(k.get("node"))?,
            warn_after: date_claim(k.get("warnafter"))?,
        })
    }
}

/// `legacyPrivateClaims`.
struct LegacyClaims {
    namespace: String,
    secret_name: String,
    sa_name: String,
    sa_uid: String,
}

impl LegacyClaims {
    fn parse(m: &Map<String, Value>) -> ClaimResult<Self> {
        Ok(LegacyClaims {
            namespace: string_claim(m.get("kubernetes.io/serviceaccount/namespace"))?,
            secret_name: string_claim(m.get("kubernetes.io/serviceaccount/secret.name"))?,
            sa_name: string_claim(m.get("kubernetes.io/serviceaccount/service-account.name"))?,
            sa_uid: string_claim(m.get("kubernetes.io/serviceaccount/service-account.uid"))?,
        })
    }
}

// ---------------------------------------------------------------------------------
// Time

const NANOS_PER_SEC: i128 = 1_000_000_000;

fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => i128::try_from(e.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

fn duration_nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

fn seconds_nanos(secs: i64) -> i128 {
    i128::from(secs) * NANOS_PER_SEC
}

/// `deletionTimestamp.Before(now - leeway)`.
fn deleted(ts: Option<SystemTime>, leeway: i128, now: i128) -> bool {
    ts.is_some_and(|t| unix_nanos(t) < now.saturating_sub(leeway))
}

// ---------------------------------------------------------------------------------
// The authenticators

#[derive(Clone, Copy, PartialEq, Eq)]
enum Authenticator {
    Legacy,
    Bound,
}

struct Context<'a> {
    token: &'a str,
    requested_audiences: &'a [String],
    settings: &'a ReviewSettings,
    verifier: &'a dyn SignatureVerifier,
    lookup: &'a dyn ObjectLookup,
    now: SystemTime,
    annotations: Vec<(String, String)>,
    legacy_secret: Option<(String, String)>,
}

fn not_found(resource: &str, name: &str) -> String {
    // The live GET (`tokengetter.go`) fails before the request for an empty name.
    if name.is_empty() {
        "resource name may not be empty".to_owned()
    } else {
        format!("{resource} {} not found", go_quote(name))
    }
}

/// `SplitUsername`: `system:serviceaccount:<ns>:<name>` with a DNS-label namespace and
/// a DNS-subdomain name.
fn split_username(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_USERNAME_PREFIX)?;
    let mut parts = rest.split(':');
    let (ns, name) = (parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !validate_dns_label(ns).is_empty()
        || !validate_dns_subdomain(name).is_empty()
    {
        return None;
    }
    Some((ns, name))
}

fn user_info(
    namespace: &str,
    name: &str,
    uid: &str,
    extra: BTreeMap<String, Vec<String>>,
) -> UserInfo {
    UserInfo {
        username: service_account_username(namespace, name),
        uid: uid.to_owned(),
        groups: vec![
            ALL_SERVICE_ACCOUNTS_GROUP.to_owned(),
            format!("{SERVICE_ACCOUNTS_GROUP_PREFIX}{namespace}"),
            AUTHENTICATED_GROUP.to_owned(),
        ],
        extra,
    }
}

impl Context<'_> {
    fn annotate(&mut self, key: &str, value: String) {
        self.annotations.push((key.to_owned(), value));
    }

    fn run(&mut self) -> Result<Authenticated, String> {
        let max = match self.settings.max_token_len {
            0 => DEFAULT_MAX_TOKEN_LEN,
            n => n,
        };
        if self.token.len() > max {
            return Err(format!(
                "token is too long: {} bytes, at most {max} are allowed",
                self.token.len()
            ));
        }
        let jws = match parse(self.token, self.settings) {
            Parsed::NotMine => return Err(INVALID_BEARER_TOKEN.to_owned()),
            Parsed::Malformed => return Err(MALFORMED_TOKEN.to_owned()),
            Parsed::Jws(jws) => jws,
        };

        // The union (§3.1): legacy first, then bound; the first success wins.
        let mut errors = Vec::new();
        let candidates = [
            (Authenticator::Legacy, jws.iss == LEGACY_ISSUER),
            (
                Authenticator::Bound,
                self.settings.issuers.contains(&jws.iss),
            ),
        ];
        for (which, claims) in candidates {
            if !claims {
                continue;
            }
            match self.authenticate(which, &jws) {
                Ok(a) => return Ok(a),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            return Err(INVALID_BEARER_TOKEN.to_owned());
        }
        Err(aggregate_errors(&errors))
    }

    /// §3.2 steps 3–7 for one authenticator.
    fn authenticate(&mut self, which: Authenticator, jws: &Jws) -> Result<Authenticated, String> {
        // Step 3: signature.
        let alg = jws.alg.as_str();
        if alg.is_empty()
            || alg.eq_ignore_ascii_case("none")
            || alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS"))
        {
            return Err(UNSUPPORTED_ALGORITHM.to_owned());
        }
        if jws.crit {
            return Err(UNSUPPORTED_CRITICAL_HEADER.to_owned());
        }
        self.verifier
            .verify(&jws.kid, alg, jws.signing_input, &jws.signature)?;

        let public = PublicClaims::parse(&jws.claims).map_err(|_| MALFORMED_TOKEN.to_owned())?;
        let private = match which {
            Authenticator::Legacy => {
                Private::Legacy(LegacyClaims::parse(&jws.claims).map_err(|_| MALFORMED_TOKEN)?)
            }
            Authenticator::Bound => {
                Private::Bound(BoundClaims::parse(&jws.claims).map_err(|_| MALFORMED_TOKEN)?)
            }
        };

        // Step 4: issuer re-check.
        let issuer_ok = match which {
            Authenticator::Legacy => public.iss == LEGACY_ISSUER,
            Authenticator::Bound => self.settings.issuers.contains(&public.iss),
        };
        if !issuer_ok {
            return Err(format!("token issuer {} is invalid", go_quote(&public.iss)));
        }

        // Step 5: audiences.
        let api_audiences = &self.settings.api_audiences;
        let token_audiences = if public.aud.is_empty() {
            self.annotate(AUDIT_LEGACY_TOKEN, public.sub.clone());
            api_audiences.clone()
        } else {
            public.aud.clone()
        };
        let requested = if self.requested_audiences.is_empty() {
            api_audiences.as_slice()
        } else {
            self.requested_audiences
        };
        let audiences: Vec<String> = requested
            .iter()
            .filter(|r| token_audiences.contains(r))
            .cloned()
            .collect();
        if audiences.is_empty() && !api_audiences.is_empty() {
            return Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quote_list(&token_audiences),
                go_quote_list(requested)
            ));
        }

        // Step 6: the validator.
        match private {
            Private::Legacy(l) => self.validate_legacy(&public, &l, audiences),
            Private::Bound(b) => self.validate_bound(&public, &b, audiences),
        }
    }

    /// §3.3, `validator.Validate`.
    fn validate_bound(
        &mut self,
        public: &PublicClaims,
        private: &BoundClaims,
        audiences: Vec<String>,
    ) -> Result<Authenticated, String> {
        let now = unix_nanos(self.now);
        let leeway = duration_nanos(self.settings.leeway);
        if let Some(nbf) = public.nbf
            && now.saturating_add(leeway) < seconds_nanos(nbf)
        {
            return Err(TOKEN_NOT_VALID_YET.to_owned());
        }
        if let Some(exp) = public.exp
            && now.saturating_sub(leeway) > seconds_nanos(exp)
        {
            return Err(TOKEN_EXPIRED.to_owned());
        }
        if let Some(iat) = public.iat
            && now.saturating_add(leeway) < seconds_nanos(iat)
        {
            return Err(TOKEN_ISSUED_IN_FUTURE.to_owned());
        }

        let deletion_leeway = duration_nanos(self.settings.deletion_leeway);
        let ns = private.namespace.as_str();
        let sa = &private.service_account;
        let account = self
            .lookup
            .service_account(ns, &sa.name)
            .ok_or_else(|| not_found("serviceaccounts", &sa.name))?;
        if account.uid != sa.uid {
            return Err(format!(
                "service account UID ({}) does not match claim ({})",
                account.uid, sa.uid
            ));
        }
        if deleted(account.deletion_timestamp, deletion_leeway, now) {
            return Err(format!("service account {ns}/{} has been deleted", sa.name));
        }

        if let Some(r) = &private.secret {
            let secret = self.lookup.secret(ns, &r.name).ok_or(TOKEN_INVALIDATED)?;
            if secret.uid != r.uid {
                return Err(format!(
                    "secret UID ({}) does not match service account secret ref claim ({})",
                    secret.uid, r.uid
                ));
            }
            if deleted(secret.deletion_timestamp, deletion_leeway, now) {
                return Err(TOKEN_INVALIDATED.to_owned());
            }
        }

        let (mut pod_name, mut pod_uid) = ("", "");
        if let Some(r) = &private.pod {
            let pod = self.lookup.pod(ns, &r.name).ok_or(TOKEN_INVALIDATED)?;
            if pod.uid != r.uid {
                return Err(format!(
                    "pod UID ({}) does not match service account pod ref claim ({})",
                    pod.uid, r.uid
                ));
            }
            if deleted(pod.deletion_timestamp, deletion_leeway, now) {
                return Err(TOKEN_INVALIDATED.to_owned());
            }
            (pod_name, pod_uid) = (r.name.as_str(), r.uid.as_str());
        }

        let (mut node_name, mut node_uid) = ("", "");
        if let Some(r) = &private.node {
            if private.pod.is_none() {
                // Node-bound: the node must be live. Pod-bound: informational only.
                let node = self.lookup.node(&r.name).ok_or(TOKEN_INVALIDATED)?;
                if node.uid != r.uid {
                    return Err(format!(
                        "node UID ({}) does not match service account node ref claim ({})",
                        node.uid, r.uid
                    ));
                }
                if deleted(node.deletion_timestamp, deletion_leeway, now) {
                    return Err(TOKEN_INVALIDATED.to_owned());
                }
            }
            (node_name, node_uid) = (r.name.as_str(), r.uid.as_str());
        }

        if !public.jti.is_empty() && self.lookup.revoked(&public.jti) {
            return Err(TOKEN_REVOKED.to_owned());
        }

        let mut stale = false;
        if let Some(w) = private.warn_after
            && w != 0
            && now > seconds_nanos(w)
        {
            stale = true;
            let seconds = unix_seconds(self.now).saturating_sub(w);
            self.annotate(
                AUDIT_STALE_TOKEN,
                format!(
                    "subject: {}, seconds after warning threshold: {seconds}",
                    public.sub
                ),
            );
        }

        let credential_id = credential_id(&public.jti);
        let mut extra = BTreeMap::new();
        if !pod_name.is_empty() && !pod_uid.is_empty() {
            extra.insert(EXTRA_POD_NAME.to_owned(), vec![pod_name.to_owned()]);
            extra.insert(EXTRA_POD_UID.to_owned(), vec![pod_uid.to_owned()]);
        }
        if !credential_id.is_empty() {
            extra.insert(EXTRA_CREDENTIAL_ID.to_owned(), vec![credential_id.clone()]);
        }
        if !node_name.is_empty() {
            extra.insert(EXTRA_NODE_NAME.to_owned(), vec![node_name.to_owned()]);
            if !node_uid.is_empty() {
                extra.insert(EXTRA_NODE_UID.to_owned(), vec![node_uid.to_owned()]);
            }
        }

        Ok(Authenticated {
            user: user_info(ns, &sa.name, &sa.uid, extra),
            audiences,
            stale,
            legacy: false,
            warnings: Vec::new(),
            legacy_secret: None,
            credential_id,
            expires_at: public.exp,
        })
    }

    /// §3.6, `legacyValidator.Validate` with lookup on.
    fn validate_legacy(
        &mut self,
        public: &PublicClaims,
        private: &LegacyClaims,
        audiences: Vec<String>,
    ) -> Result<Authenticated, String> {
        if public.sub.is_empty() {
            return Err("sub claim is missing".to_owned());
        }
        let ns = private.namespace.as_str();
        if ns.is_empty() {
            return Err("namespace claim is missing".to_owned());
        }
        let secret_name = private.secret_name.as_str();
        if secret_name.is_empty() {
            return Err("secretName claim is missing".to_owned());
        }
        let sa_name = private.sa_name.as_str();
        if sa_name.is_empty() {
            return Err("serviceAccountName claim is missing".to_owned());
        }
        let sa_uid = private.sa_uid.as_str();
        if sa_uid.is_empty() {
            return Err("serviceAccountUID claim is missing".to_owned());
        }
        match split_username(&public.sub) {
            Some((sub_ns, sub_name)) if sub_ns == ns && sub_name == sa_name => {}
            _ => return Err("sub claim is invalid".to_owned()),
        }

        // 1. The Secret.
        let secret = self
            .lookup
            .secret(ns, secret_name)
            .ok_or(LEGACY_TOKEN_INVALIDATED)?;
        if secret.deletion_timestamp.is_some() {
            return Err(LEGACY_TOKEN_INVALIDATED.to_owned());
        }
        // 2. The token matches the Secret's copy.
        let presented = token_sha256(self.token.as_bytes());
        let matches = secret
            .token_sha256
            .as_ref()
            .is_some_and(|stored| constant_time_eq(stored, &presented));
        if !matches {
            return Err(LEGACY_TOKEN_MISMATCH.to_owned());
        }
        // 3. The service account.
        let account = self
            .lookup
            .service_account(ns, sa_name)
            .ok_or_else(|| not_found("serviceaccounts", sa_name))?;
        if account.deletion_timestamp.is_some() {
            return Err(format!("ServiceAccount {ns}/{sa_name} has been deleted"));
        }
        if account.uid != sa_uid {
            return Err(format!(
                "ServiceAccount UID ({}) does not match claim ({sa_uid})",
                account.uid
            ));
        }

        let legacy_secret = last_used_needs_update(secret.last_used.as_deref(), self.now)
            .then(|| (ns.to_owned(), secret_name.to_owned()));

        // 4. Marked invalid: the use is still recorded.
        if secret.invalid_since {
            self.annotate(
                AUDIT_LEGACY_TOKEN_INVALIDATED,
                format!("{secret_name}/{ns}"),
            );
            self.legacy_secret.clone_from(&legacy_secret);
            return Err(format!(
                "the token in secret {ns}/{secret_name} for service account {ns}/{sa_name} has been marked invalid. Use tokens from the TokenRequest API or manually created secret-based tokens, or remove the '{INVALID_SINCE_LABEL}' label from the secret to temporarily allow use of this token"
            ));
        }

        // 5. Auto-generated or manual.
        let mut warnings = Vec::new();
        let auto_generated = self
            .lookup
            .service_account_secrets(ns, sa_name)
            .iter()
            .any(|s| s == secret_name);
        if auto_generated {
            warnings.push(AUTOGENERATED_SECRET_WARNING.to_owned());
            self.annotate(AUDIT_LEGACY_TOKEN_AUTOGENERATED, secret_name.to_owned());
        } else {
            self.annotate(AUDIT_LEGACY_TOKEN_MANUAL, secret_name.to_owned());
        }

        // 6. Last used.
        self.legacy_secret.clone_from(&legacy_secret);

        Ok(Authenticated {
            user: user_info(ns, sa_name, sa_uid, BTreeMap::new()),
            audiences,
            stale: false,
            legacy: true,
            warnings,
            legacy_secret,
            credential_id: String::new(),
            expires_at: None,
        })
    }
}

enum Private {
    Legacy(LegacyClaims),
    Bound(BoundClaims),
}
