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
use std::sync::Arc;
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

    /// Whether [`Self::remember`] keeps anything (the token's digest is only
    /// computed then). Default: no cache.
    fn caches(&self) -> bool {
        false
    }

    /// A token verified before, by its SHA-256 ([`token_sha256`]).
    fn verified(&self, _token_sha256: &[u8; 32]) -> Option<Arc<VerifiedToken>> {
        None
    }

    /// Keeps a token whose signature verified and whose claims parsed.
    fn remember(&self, _token_sha256: [u8; 32], _verified: Arc<VerifiedToken>) {}
}

/// A token whose signature verified and whose claims parsed (§3.2 steps 1–3 and
/// the claim decoding). It is a pure function of the token's bytes and the key
/// that verified it, so a [`SignatureVerifier`] may keep it by the token's SHA-256
/// and hand it back instead of decoding and verifying again. It is never a
/// verdict: the issuer, audiences, time and every liveness and revocation check
/// run on each review against the current state. A verifier must forget it when
/// the key that verified it is no longer trusted.
pub struct VerifiedToken {
    which: Authenticator,
    public: PublicClaims,
    private: Private,
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

/// The result of a review: the user, or Kubernetes' `status.error` text.
pub type ReviewOutcome = Result<Authenticated, String>;

/// Everything [`review_with_report`] learned, for callers that audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewReport {
    /// Kubernetes' `status.error` text on failure.
    pub outcome: ReviewOutcome,
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
        let digest = self
            .verifier
            .caches()
            .then(|| token_sha256(self.token.as_bytes()));
        if let Some(d) = &digest
            && let Some(v) = self.verifier.verified(d)
        {
            // Both authenticators claim the token only when `kubernetes/serviceaccount`
            // is also a configured issuer; a failure then needs the full union below
            // for Kubernetes' aggregated error text.
            let both =
                v.public.iss == LEGACY_ISSUER && self.settings.issuers.contains(&v.public.iss);
            match self.check(&v) {
                Ok(a) => return Ok(a),
                Err(e) if !both => return Err(e),
                Err(_) => {
                    self.annotations.clear();
                    self.legacy_secret = None;
                }
            }
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
            let checked = self.verify_and_decode(which, &jws).and_then(|v| {
                let v = Arc::new(v);
                if let Some(d) = digest {
                    self.verifier.remember(d, Arc::clone(&v));
                }
                self.check(&v)
            });
            match checked {
                Ok(a) => return Ok(a),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            return Err(INVALID_BEARER_TOKEN.to_owned());
        }
        Err(aggregate_errors(&errors))
    }

    /// §3.2 step 3 and the claim decoding for one authenticator: what depends on
    /// the token's bytes alone (see [`VerifiedToken`]).
    fn verify_and_decode(&self, which: Authenticator, jws: &Jws) -> Result<VerifiedToken, String> {
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

        Ok(VerifiedToken {
            which,
            public,
            private,
        })
    }

    /// §3.2 steps 4–7: what depends on the settings, the clock and the objects,
    /// run on every review.
    fn check(&mut self, v: &VerifiedToken) -> Result<Authenticated, String> {
        let public = &v.public;
        // Step 4: issuer re-check.
        let issuer_ok = match v.which {
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
        match &v.private {
            Private::Legacy(l) => self.validate_legacy(public, l, audiences),
            Private::Bound(b) => self.validate_bound(public, b, audiences),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::{HashMap, HashSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::token::{
        Binding, ClaimsInput, ObjectRef, TokenPlan, bound_claims_json, legacy_claims,
    };

    const NOW: i64 = 1_700_000_000;
    const ISSUER: &str = "https://issuer.example";
    const OLD_ISSUER: &str = "https://old.example";
    const KID: &str = "key-1";
    const SECRET: &[u8] = b"key-1-secret";
    const KID2: &str = "key-2";
    const SECRET2: &[u8] = b"key-2-secret";
    const HEADER: &str = r#"{"alg":"RS256","kid":"key-1"}"#;
    const JTI: &str = "0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a";
    const LEGACY_SECRET: &str = "sa-token-abcde";
    const USERNAME: &str = "system:serviceaccount:ns:sa";

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    fn now() -> SystemTime {
        at(NOW)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn settings() -> ReviewSettings {
        ReviewSettings::new(
            strings(&[ISSUER, OLD_ISSUER]),
            strings(&[ISSUER, OLD_ISSUER]),
        )
    }

    // ---- a verifier with the semantics of badge_keys::KeySet, over a keyed hash

    struct TestKey {
        kid: &'static str,
        alg: &'static str,
        secret: &'static [u8],
    }

    struct TestVerifier {
        keys: Vec<TestKey>,
        calls: Cell<usize>,
        /// `Some`: verified tokens are kept, as badge-access's verifier keeps them.
        cache: Option<RefCell<HashMap<[u8; 32], Arc<VerifiedToken>>>>,
    }

    impl TestVerifier {
        fn new() -> Self {
            TestVerifier {
                keys: vec![
                    TestKey {
                        kid: KID,
                        alg: "RS256",
                        secret: SECRET,
                    },
                    TestKey {
                        kid: KID2,
                        alg: "ES256",
                        secret: SECRET2,
                    },
                ],
                calls: Cell::new(0),
                cache: None,
            }
        }

        fn caching() -> Self {
            TestVerifier {
                cache: Some(RefCell::default()),
                ..TestVerifier::new()
            }
        }
    }

    fn mac(secret: &[u8], input: &[u8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(secret);
        h.update([0]);
        h.update(input);
        h.finalize().to_vec()
    }

    impl SignatureVerifier for TestVerifier {
        fn verify(
            &self,
            kid: &str,
            alg: &str,
            signing_input: &[u8],
            signature: &[u8],
        ) -> Result<(), String> {
            self.calls.set(self.calls.get() + 1);
            let candidates: Vec<&TestKey> = self
                .keys
                .iter()
                .filter(|k| kid.is_empty() || k.kid == kid)
                .collect();
            if candidates.is_empty() {
                return Err(NO_KEYS_FOUND.to_owned());
            }
            let mut errors = Vec::new();
            for k in candidates {
                if k.alg != alg {
                    errors.push(UNSUPPORTED_ALGORITHM.to_owned());
                } else if mac(k.secret, signing_input) == signature {
                    return Ok(());
                } else {
                    errors.push(INVALID_SIGNATURE.to_owned());
                }
            }
            Err(aggregate_errors(&errors))
        }

        fn caches(&self) -> bool {
            self.cache.is_some()
        }

        fn verified(&self, token_sha256: &[u8; 32]) -> Option<Arc<VerifiedToken>> {
            self.cache.as_ref()?.borrow().get(token_sha256).cloned()
        }

        fn remember(&self, token_sha256: [u8; 32], verified: Arc<VerifiedToken>) {
            if let Some(c) = &self.cache {
                c.borrow_mut().insert(token_sha256, verified);
            }
        }
    }

    // ---- tokens

    fn b64e(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn sign_with(header: &str, payload: &[u8], secret: &[u8]) -> String {
        let mut t = format!("{}.{}", b64e(header.as_bytes()), b64e(payload));
        let sig = mac(secret, t.as_bytes());
        t.push('.');
        t.push_str(&b64e(&sig));
        t
    }

    fn sign(payload: &[u8]) -> String {
        sign_with(HEADER, payload, SECRET)
    }

    fn segments(token: &str) -> (String, String, String) {
        let p: Vec<&str> = token.split('.').collect();
        (p[0].to_owned(), p[1].to_owned(), p[2].to_owned())
    }

    fn plan(auds: &[&str], iat: i64, exp: i64, warn_after: Option<i64>) -> TokenPlan {
        TokenPlan {
            audiences: strings(auds),
            issued_at: iat,
            expires_at: exp,
            status_expiration: exp,
            warn_after,
            warnings: Vec::new(),
        }
    }

    fn pod_binding() -> Binding {
        Binding::Pod {
            pod: ObjectRef::new("web-0", "pod-uid"),
            node: Some(ObjectRef::new("node-a", "node-uid")),
        }
    }

    fn claims_with(binding: Binding, plan: &TokenPlan, jti: &str) -> Vec<u8> {
        bound_claims_json(&ClaimsInput {
            issuer: ISSUER,
            namespace: "ns",
            service_account: ObjectRef::new("sa", "sa-uid"),
            binding,
            plan,
            jti,
        })
    }

    fn bound_token_with(binding: Binding, plan: &TokenPlan) -> String {
        sign(&claims_with(binding, plan, JTI))
    }

    fn bound_token(binding: Binding) -> String {
        bound_token_with(binding, &plan(&[ISSUER], NOW, NOW + 3600, None))
    }

    fn pod_token() -> String {
        bound_token(pod_binding())
    }

    fn timed_token(iat: i64, exp: i64) -> String {
        bound_token_with(Binding::None, &plan(&[ISSUER], iat, exp, None))
    }

    fn aud_token(auds: &[&str]) -> String {
        bound_token_with(Binding::None, &plan(auds, NOW, NOW + 3600, None))
    }

    /// A signed payload of exactly this JSON.
    fn payload_token(json: &str) -> String {
        sign(json.as_bytes())
    }

    fn legacy_payload() -> serde_json::Value {
        legacy_claims("ns", "sa", "sa-uid", LEGACY_SECRET)
    }

    fn legacy_token() -> String {
        sign(legacy_payload().to_string().as_bytes())
    }

    // ---- objects

    #[derive(Default, Clone)]
    struct World {
        sas: HashMap<(String, String), ObjectState>,
        sa_secrets: HashMap<(String, String), Vec<String>>,
        pods: HashMap<(String, String), ObjectState>,
        secrets: HashMap<(String, String), SecretState>,
        nodes: HashMap<String, ObjectState>,
        revoked: HashSet<String>,
    }

    fn k(ns: &str, name: &str) -> (String, String) {
        (ns.to_owned(), name.to_owned())
    }

    fn live(uid: &str) -> ObjectState {
        ObjectState {
            uid: uid.to_owned(),
            deletion_timestamp: None,
        }
    }

    fn legacy_secret_state(token: &str) -> SecretState {
        SecretState {
            uid: "legacy-secret-uid".into(),
            deletion_timestamp: None,
            token_sha256: Some(token_sha256(token.as_bytes())),
            invalid_since: false,
            last_used: None,
        }
    }

    fn world() -> World {
        let mut w = World::default();
        w.sas.insert(k("ns", "sa"), live("sa-uid"));
        w.pods.insert(k("ns", "web-0"), live("pod-uid"));
        w.nodes.insert("node-a".into(), live("node-uid"));
        w.secrets.insert(
            k("ns", "s"),
            SecretState {
                uid: "secret-uid".into(),
                ..SecretState::default()
            },
        );
        w.secrets
            .insert(k("ns", LEGACY_SECRET), legacy_secret_state(&legacy_token()));
        w
    }

    impl ObjectLookup for World {
        fn service_account(&self, ns: &str, name: &str) -> Option<ObjectState> {
            self.sas.get(&k(ns, name)).cloned()
        }
        fn service_account_secrets(&self, ns: &str, name: &str) -> Vec<String> {
            self.sa_secrets
                .get(&k(ns, name))
                .cloned()
                .unwrap_or_default()
        }
        fn pod(&self, ns: &str, name: &str) -> Option<ObjectState> {
            self.pods.get(&k(ns, name)).cloned()
        }
        fn secret(&self, ns: &str, name: &str) -> Option<SecretState> {
            self.secrets.get(&k(ns, name)).cloned()
        }
        fn node(&self, name: &str) -> Option<ObjectState> {
            self.nodes.get(name).cloned()
        }
        fn revoked(&self, jti: &str) -> bool {
            self.revoked.contains(jti)
        }
    }

    struct Env {
        settings: ReviewSettings,
        world: World,
        verifier: TestVerifier,
        now: SystemTime,
        requested: Vec<String>,
    }

    impl Env {
        fn new() -> Self {
            Env {
                settings: settings(),
                world: world(),
                verifier: TestVerifier::new(),
                now: now(),
                requested: Vec::new(),
            }
        }

        fn report(&self, token: &str) -> ReviewReport {
            review_with_report(
                token,
                &self.requested,
                &self.settings,
                &self.verifier,
                &self.world,
                self.now,
            )
        }

        fn review(&self, token: &str) -> Result<Authenticated, String> {
            self.report(token).outcome
        }
    }

    struct Case {
        name: &'static str,
        token: String,
        edit: fn(&mut Env),
        want: Result<(), String>,
    }

    fn keep(_: &mut Env) {}

    fn err(s: &str) -> Result<(), String> {
        Err(s.to_owned())
    }

    /// Runs every case twice: as is, and with a caching verifier warmed by a
    /// review of the same token while the world, the clock and the requested
    /// audiences were still the defaults — so a cached token must meet every
    /// check exactly as a fresh one does (settings and keys are per process, so
    /// the edit applies to them before warming).
    fn check(cases: Vec<Case>) {
        for c in cases {
            let mut env = Env::new();
            (c.edit)(&mut env);
            let fresh = env.report(&c.token);
            assert_eq!(
                fresh.outcome.clone().map(|_| ()),
                c.want,
                "case {:?}",
                c.name
            );

            let mut cached = Env::new();
            (c.edit)(&mut cached);
            cached.verifier.cache = Some(RefCell::default());
            let edited = (
                std::mem::replace(&mut cached.world, world()),
                std::mem::replace(&mut cached.now, now()),
                std::mem::take(&mut cached.requested),
            );
            let _ = cached.review(&c.token);
            (cached.world, cached.now, cached.requested) = edited;
            let again = cached.report(&c.token);
            assert_eq!(
                again.outcome, fresh.outcome,
                "case {:?} with a warm cache",
                c.name
            );
            assert_eq!(
                (again.audit_annotations, again.legacy_secret),
                (fresh.audit_annotations, fresh.legacy_secret),
                "case {:?} with a warm cache: audit annotations",
                c.name
            );
        }
    }

    fn case(name: &'static str, token: String, want: Result<(), String>) -> Case {
        Case {
            name,
            token,
            edit: keep,
            want,
        }
    }

    #[test]
    fn a_cached_token_is_checked_again_but_not_verified_again() {
        let mut env = Env::new();
        env.verifier = TestVerifier::caching();
        let token = pod_token();
        assert!(env.review(&token).is_ok());
        assert_eq!(env.verifier.calls.get(), 1);
        assert!(env.review(&token).is_ok());
        assert_eq!(
            env.verifier.calls.get(),
            1,
            "the second review used the cache"
        );

        // Liveness, time and audiences still decide on every review.
        env.world.pods.remove(&k("ns", "web-0"));
        assert_eq!(env.review(&token).map(|_| ()), err(TOKEN_INVALIDATED));
        env.world = world();
        env.now = at(NOW + 3600 + 61);
        assert_eq!(env.review(&token).map(|_| ()), err(TOKEN_EXPIRED));
        env.now = now();
        env.requested = strings(&["other"]);
        assert!(env.review(&token).is_err());
        env.requested.clear();
        env.world.revoked.insert(JTI.to_owned());
        assert_eq!(env.review(&token).map(|_| ()), err(TOKEN_REVOKED));
        assert_eq!(env.verifier.calls.get(), 1);

        // A bad signature is never kept: it is verified (and refused) every time.
        let (h, p, _) = segments(&token);
        let forged = format!("{h}.{p}.{}", b64e(&[7; 32]));
        assert_eq!(env.review(&forged).map(|_| ()), err(INVALID_SIGNATURE));
        assert_eq!(env.review(&forged).map(|_| ()), err(INVALID_SIGNATURE));
        assert_eq!(env.verifier.calls.get(), 3);
        assert_eq!(
            env.verifier.cache.as_ref().map(|c| c.borrow().len()),
            Some(1)
        );
    }

    fn extra(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
            .collect()
    }

    fn groups() -> Vec<String> {
        strings(&[
            "system:serviceaccounts",
            "system:serviceaccounts:ns",
            "system:authenticated",
        ])
    }

    // ---- success

    #[test]
    fn pod_bound_token_user_info() {
        let env = Env::new();
        let report = env.report(&pod_token());
        let a = report.outcome.unwrap();
        assert_eq!(
            a.user,
            UserInfo {
                username: USERNAME.into(),
                uid: "sa-uid".into(),
                groups: groups(),
                extra: extra(&[
                    (
                        EXTRA_CREDENTIAL_ID,
                        "JTI=0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a"
                    ),
                    (EXTRA_NODE_NAME, "node-a"),
                    (EXTRA_NODE_UID, "node-uid"),
                    (EXTRA_POD_NAME, "web-0"),
                    (EXTRA_POD_UID, "pod-uid"),
                ]),
            }
        );
        assert_eq!(
            a.user.extra.keys().collect::<Vec<_>>(),
            [
                "authentication.kubernetes.io/credential-id",
                "authentication.kubernetes.io/node-name",
                "authentication.kubernetes.io/node-uid",
                "authentication.kubernetes.io/pod-name",
                "authentication.kubernetes.io/pod-uid",
            ]
        );
        assert_eq!(a.audiences, strings(&[ISSUER]));
        assert!(!a.stale);
        assert!(!a.legacy);
        assert!(a.warnings.is_empty());
        assert_eq!(a.legacy_secret, None);
        assert_eq!(a.credential_id, format!("JTI={JTI}"));
        assert_eq!(a.expires_at, Some(NOW + 3600));
        assert!(report.audit_annotations.is_empty());
        assert_eq!(report.legacy_secret, None);
        assert_eq!(env.verifier.calls.get(), 1);
    }

    #[test]
    fn bindings_and_extras() {
        let env = Env::new();

        // Unbound, no jti: no extras at all.
        let t = sign(&claims_with(
            Binding::None,
            &plan(&[ISSUER], NOW, NOW + 3600, None),
            "",
        ));
        let a = env.review(&t).unwrap();
        assert_eq!(a.user.extra, BTreeMap::new());
        assert_eq!(a.credential_id, "");
        assert_eq!(a.user.username, USERNAME);
        assert_eq!(a.user.groups, groups());

        // Secret-bound.
        let a = env
            .review(&bound_token(Binding::Secret(ObjectRef::new(
                "s",
                "secret-uid",
            ))))
            .unwrap();
        assert_eq!(
            a.user.extra,
            extra(&[(
                EXTRA_CREDENTIAL_ID,
                "JTI=0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a"
            )])
        );

        // Node-bound: node extras, no pod extras.
        let a = env
            .review(&bound_token(Binding::Node(ObjectRef::new(
                "node-a", "node-uid",
            ))))
            .unwrap();
        assert_eq!(
            a.user.extra,
            extra(&[
                (
                    EXTRA_CREDENTIAL_ID,
                    "JTI=0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a"
                ),
                (EXTRA_NODE_NAME, "node-a"),
                (EXTRA_NODE_UID, "node-uid"),
            ])
        );

        // Pod-bound, pod not scheduled: pod extras only.
        let a = env
            .review(&bound_token(Binding::Pod {
                pod: ObjectRef::new("web-0", "pod-uid"),
                node: None,
            }))
            .unwrap();
        assert!(a.user.extra.contains_key(EXTRA_POD_NAME));
        assert!(!a.user.extra.contains_key(EXTRA_NODE_NAME));

        // Pod-bound whose node stub has no uid: node-name only.
        let a = env
            .review(&bound_token(Binding::Pod {
                pod: ObjectRef::new("web-0", "pod-uid"),
                node: Some(ObjectRef::new("node-gone", "")),
            }))
            .unwrap();
        assert_eq!(a.user.extra[EXTRA_NODE_NAME], strings(&["node-gone"]));
        assert!(!a.user.extra.contains_key(EXTRA_NODE_UID));
    }

    #[test]
    fn pod_bound_token_survives_its_node() {
        // §12: for pod-bound tokens the node is informational; it is never looked up.
        let mut env = Env::new();
        env.world.nodes.clear();
        let a = env.review(&pod_token()).unwrap();
        assert_eq!(a.user.extra[EXTRA_NODE_NAME], strings(&["node-a"]));
        assert_eq!(a.user.extra[EXTRA_NODE_UID], strings(&["node-uid"]));

        // Even a node uid mismatch does not matter.
        env.world
            .nodes
            .insert("node-a".into(), live("another-node-uid"));
        assert!(env.review(&pod_token()).is_ok());
    }

    #[test]
    fn claim_shapes_go_jose_accepts() {
        let env = Env::new();
        let sa =
            r#""kubernetes.io":{"namespace":"ns","serviceaccount":{"name":"sa","uid":"sa-uid"}}"#;
        let cases = [
            (
                "aud string",
                format!(r#"{{"iss":"{ISSUER}","aud":"{ISSUER}",{sa}}}"#),
            ),
            (
                "float dates",
                format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"exp":1700003600.9,"iat":1.7e9,"nbf":1699999999.5,{sa}}}"#
                ),
            ),
            (
                "no dates",
                format!(r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],{sa}}}"#),
            ),
            (
                "nulls",
                format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"exp":null,"jti":null,"sub":null,"kubernetes.io":{{"namespace":"ns","pod":null,"serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#
                ),
            ),
            (
                "unknown claims",
                format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"x":[[[[{{"y":1}}]]]],"ISS":7,{sa}}}"#
                ),
            ),
        ];
        for (name, json) in cases {
            let a = env.review(&payload_token(&json));
            assert!(a.is_ok(), "{name}: {a:?}");
        }
        let a = env.review(&payload_token(&cases_exp_float())).unwrap();
        assert_eq!(a.expires_at, Some(NOW + 3600));
    }

    fn cases_exp_float() -> String {
        format!(
            r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"exp":1700003600.9,"kubernetes.io":{{"namespace":"ns","serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#
        )
    }

    // ---- signature and header attacks

    #[test]
    fn signature_attacks() {
        let token = pod_token();
        let (h, p, s) = segments(&token);
        let payload = URL_SAFE_NO_PAD.decode(&p).unwrap();
        let payload_str = String::from_utf8(payload.clone()).unwrap();
        let with_header = |header: &str| format!("{}.{p}.{s}", b64e(header.as_bytes()));
        let tampered = payload_str.replace(USERNAME, "system:serviceaccount:ns:admin");
        assert_ne!(tampered, payload_str);
        let tampered_sa = payload_str.replace(r#""name":"sa""#, r#""name":"admin""#);
        assert_ne!(tampered_sa, payload_str);

        let cases = vec![
            case(
                "alg none, empty signature",
                format!("{}.{p}.", b64e(br#"{"alg":"none","kid":"key-1"}"#)),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg none, no kid",
                format!("{}.{p}.", b64e(br#"{"alg":"none"}"#)),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg NoNe",
                format!("{}.{p}.{s}", b64e(br#"{"alg":"NoNe","kid":"key-1"}"#)),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg HS256 keyed with the key id",
                sign_with(r#"{"alg":"HS256","kid":"key-1"}"#, &payload, KID.as_bytes()),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg hs512",
                sign_with(r#"{"alg":"hs512","kid":"key-1"}"#, &payload, SECRET),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "alg empty",
                sign_with(r#"{"alg":"","kid":"key-1"}"#, &payload, SECRET),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "kid pointing nowhere",
                sign_with(r#"{"alg":"RS256","kid":"no-such-key"}"#, &payload, SECRET),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid path traversal",
                sign_with(
                    r#"{"alg":"RS256","kid":"../../etc/passwd"}"#,
                    &payload,
                    SECRET,
                ),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid SQL",
                sign_with(r#"{"alg":"RS256","kid":"' OR 1=1 --"}"#, &payload, SECRET),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid with escapes and NUL",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1\u0000\"\\"}"#,
                    &payload,
                    SECRET,
                ),
                err(NO_KEYS_FOUND),
            ),
            case(
                "kid a prefix of a real one",
                sign_with(r#"{"alg":"RS256","kid":"key-"}"#, &payload, SECRET),
                err(NO_KEYS_FOUND),
            ),
            case(
                "header alg swapped, signature kept",
                with_header(r#"{"alg":"ES256","kid":"key-1"}"#),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "header alg swapped to RS384",
                with_header(r#"{"alg":"RS384","kid":"key-1"}"#),
                err(UNSUPPORTED_ALGORITHM),
            ),
            case(
                "header kid swapped to the other key",
                with_header(r#"{"alg":"ES256","kid":"key-2"}"#),
                err(INVALID_SIGNATURE),
            ),
            case(
                "header gains a typ, signature kept",
                with_header(r#"{"alg":"RS256","kid":"key-1","typ":"JWT"}"#),
                err(INVALID_SIGNATURE),
            ),
            case(
                "payload tampered: sub",
                format!("{h}.{}.{s}", b64e(tampered.as_bytes())),
                err(INVALID_SIGNATURE),
            ),
            case(
                "payload tampered: service account",
                format!("{h}.{}.{s}", b64e(tampered_sa.as_bytes())),
                err(INVALID_SIGNATURE),
            ),
            case(
                "signature from another key with the same kid",
                sign_with(HEADER, &payload, b"attacker-secret"),
                err(INVALID_SIGNATURE),
            ),
            case(
                "empty signature",
                format!("{h}.{p}."),
                err(INVALID_SIGNATURE),
            ),
            case(
                "signature of another token",
                format!("{h}.{p}.{}", segments(&legacy_token()).2),
                err(INVALID_SIGNATURE),
            ),
            case(
                "no kid, no key verifies: every key tried",
                sign_with(r#"{"alg":"RS256"}"#, &payload, b"attacker-secret"),
                err("[invalid signature, invalid signature, unsupported algorithm]"),
            ),
            case(
                "no kid, second key verifies",
                sign_with(r#"{"alg":"ES256"}"#, &payload, SECRET2),
                Ok(()),
            ),
            case(
                "embedded attacker jwk is ignored",
                sign_with(
                    r#"{"alg":"RS256","kid":"attacker","jwk":{"kty":"oct","k":"YXR0YWNrZXI"}}"#,
                    &payload,
                    b"attacker",
                ),
                err(NO_KEYS_FOUND),
            ),
            case(
                "jku header is ignored",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1","jku":"https://evil.example/jwks"}"#,
                    &payload,
                    b"attacker",
                ),
                err(INVALID_SIGNATURE),
            ),
            case(
                "crit header",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1","crit":["b64"],"b64":false}"#,
                    &payload,
                    SECRET,
                ),
                err(UNSUPPORTED_CRITICAL_HEADER),
            ),
            case(
                "empty crit is fine",
                sign_with(
                    r#"{"alg":"RS256","kid":"key-1","crit":[]}"#,
                    &payload,
                    SECRET,
                ),
                Ok(()),
            ),
            case(
                "duplicate alg in the header",
                sign_with(
                    r#"{"alg":"RS256","alg":"none","kid":"key-1"}"#,
                    &payload,
                    SECRET,
                ),
                err(MALFORMED_TOKEN),
            ),
            case(
                "header without alg",
                sign_with(r#"{"kid":"key-1"}"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header alg not a string",
                sign_with(r#"{"alg":["RS256"],"kid":"key-1"}"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header kid not a string",
                sign_with(r#"{"alg":"RS256","kid":1}"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header not an object",
                sign_with(r#"["RS256"]"#, &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header not JSON",
                sign_with("alg=RS256", &payload, SECRET),
                err(INVALID_BEARER_TOKEN),
            ),
            case("the real token", token.clone(), Ok(())),
        ];
        check(cases);
    }

    #[test]
    fn unsupported_algorithms_never_reach_the_verifier() {
        let payload = claims_with(pod_binding(), &plan(&[ISSUER], NOW, NOW + 3600, None), JTI);
        for alg in [
            "none", "None", "NONE", "HS256", "HS384", "HS512", "hs256", "",
        ] {
            let env = Env::new();
            let header = format!(r#"{{"alg":"{alg}","kid":"key-1"}}"#);
            for token in [
                sign_with(&header, &payload, SECRET),
                sign_with(&header, &payload, KID.as_bytes()),
                format!("{}.{}.", b64e(header.as_bytes()), b64e(&payload)),
            ] {
                assert_eq!(
                    env.review(&token),
                    Err(UNSUPPORTED_ALGORITHM.into()),
                    "{alg}"
                );
            }
            assert_eq!(env.verifier.calls.get(), 0, "{alg}");
        }
    }

    // ---- structure

    #[test]
    fn structural_garbage_is_not_mine() {
        let token = pod_token();
        let (h, p, s) = segments(&token);
        let payload = URL_SAFE_NO_PAD.decode(&p).unwrap();
        let iss_only = |json: &str| format!("{h}.{}.{s}", b64e(json.as_bytes()));
        let cases = vec![
            case("empty", String::new(), err(INVALID_BEARER_TOKEN)),
            case("one part", h.clone(), err(INVALID_BEARER_TOKEN)),
            case("two parts", format!("{h}.{p}"), err(INVALID_BEARER_TOKEN)),
            case(
                "four parts",
                format!("{token}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "trailing dot",
                format!("{token}."),
                err(INVALID_BEARER_TOKEN),
            ),
            case("dots only", "..".into(), err(INVALID_BEARER_TOKEN)),
            case(
                "JSON serialization",
                format!(r#"{{"payload":"{p}"}}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "leading brace after spaces",
                format!(" \t{{.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "padded header",
                format!("{h}=.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "padded payload",
                format!("{h}.{p}==.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "padded signature",
                format!("{h}.{p}.{s}="),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "standard alphabet in payload",
                format!("{h}.+{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "slash in header",
                format!("/{h}.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "star in signature",
                format!("{h}.{p}.{s}*"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "newline in signature",
                format!("{h}.{p}.{s}\n"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "space in payload",
                format!("{h}. {p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "non-ASCII",
                format!("{h}.{p}é.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload truncated by one char",
                format!("{h}.{}.{s}", &p[..p.len() - 1]),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload not JSON",
                iss_only("not json"),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload array",
                iss_only(r#"[{"iss":"https://issuer.example"}]"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case("payload null", iss_only("null"), err(INVALID_BEARER_TOKEN)),
            case(
                "payload string",
                iss_only(r#""https://issuer.example""#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload with trailing garbage",
                iss_only(r#"{"iss":"https://issuer.example"} x"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload invalid UTF-8",
                format!(
                    "{h}.{}.{s}",
                    b64e(b"{\"iss\":\"https://issuer.example\xff\"}")
                ),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "payload lone surrogate",
                iss_only(r#"{"iss":"https://issuer.example","x":"\ud800"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "wrong issuer",
                payload_token(r#"{"iss":"https://evil.example"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "issuer case",
                payload_token(r#"{"iss":"HTTPS://ISSUER.EXAMPLE"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "issuer with trailing slash",
                payload_token(r#"{"iss":"https://issuer.example/"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "no issuer",
                payload_token(r#"{"sub":"system:serviceaccount:ns:sa"}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "issuer not a string",
                payload_token(r#"{"iss":["https://issuer.example"]}"#),
                err(INVALID_BEARER_TOKEN),
            ),
            case(
                "header bad base64",
                format!("{h}*.{p}.{s}"),
                err(INVALID_BEARER_TOKEN),
            ),
            case("control", sign(&payload), Ok(())),
        ];
        check(cases);
    }

    #[test]
    fn non_canonical_base64_is_refused() {
        // "{}" → "e30"; "e31" decodes to the same bytes with non-zero trailing bits.
        let env = Env::new();
        let payload = format!(r#"{{"iss":"{ISSUER}"}}"#);
        let good = sign(payload.as_bytes());
        let (h, p, s) = segments(&good);
        assert_eq!(URL_SAFE_NO_PAD.decode(&s).unwrap().len(), 32);
        // 32 bytes → 43 chars, 2 trailing bits; flip one of them.
        let last = s.chars().last().unwrap();
        let idx = base64_index(last);
        let bumped = base64_char(idx ^ 1);
        let odd = format!("{}{bumped}", &s[..s.len() - 1]);
        assert_eq!(
            env.review(&format!("{h}.{p}.{odd}")),
            Err(INVALID_BEARER_TOKEN.into())
        );
    }

    fn base64_index(c: char) -> u8 {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        u8::try_from(A.iter().position(|&x| x == c as u8).unwrap()).unwrap()
    }

    fn base64_char(i: u8) -> char {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        A[usize::from(i)] as char
    }

    #[test]
    fn duplicate_claims_are_malformed() {
        let cases = vec![
            case(
                "iss twice",
                payload_token(r#"{"iss":"a","iss":"b"}"#),
                err(MALFORMED_TOKEN),
            ),
            case(
                "iss twice, same value",
                payload_token(r#"{"iss":"https://issuer.example","iss":"https://issuer.example"}"#),
                err(MALFORMED_TOKEN),
            ),
            case(
                "sub twice",
                payload_token(&format!(r#"{{"iss":"{ISSUER}","sub":"a","sub":"b"}}"#)),
                err(MALFORMED_TOKEN),
            ),
            case(
                "nested duplicate",
                payload_token(&format!(
                    r#"{{"iss":"{ISSUER}","kubernetes.io":{{"namespace":"ns","namespace":"kube-system"}}}}"#
                )),
                err(MALFORMED_TOKEN),
            ),
            case(
                "escaped duplicate",
                payload_token(&format!(
                    r#"{{"iss":"{ISSUER}","aud":["a"],"\u0061ud":["b"]}}"#
                )),
                err(MALFORMED_TOKEN),
            ),
        ];
        check(cases);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut env = Env::new();
        for depth in [129usize, 200, 20_000] {
            let json = format!(
                r#"{{"iss":"{ISSUER}","x":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert_eq!(
                env.review(&payload_token(&json)),
                Err(INVALID_BEARER_TOKEN.into()),
                "{depth}"
            );
            let json = format!(
                r#"{{"iss":"{ISSUER}","x":{}1{}}}"#,
                r#"{"a":"#.repeat(depth),
                "}".repeat(depth)
            );
            assert!(env.review(&payload_token(&json)).is_err(), "{depth}");
        }
        // A million levels with the length cap lifted: still no stack overflow.
        env.settings.max_token_len = 16 << 20;
        let depth = 1_000_000;
        let json = format!(
            r#"{{"iss":"{ISSUER}","x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(
            env.review(&payload_token(&json)),
            Err(INVALID_BEARER_TOKEN.into())
        );
        // Nesting within serde_json's limit is just an unknown claim.
        let json = format!(
            r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"x":{}{},"kubernetes.io":{{"namespace":"ns","serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(env.review(&payload_token(&json)).is_ok());
        assert_eq!(env.verifier.calls.get(), 1);
    }

    #[test]
    fn oversized_tokens_are_refused_by_length() {
        let env = Env::new();
        let huge = "a".repeat(1 << 20);
        assert_eq!(
            env.review(&huge),
            Err("token is too long: 1048576 bytes, at most 65536 are allowed".into())
        );
        // A well-formed, signed token over the limit too.
        let padding = "x".repeat(70_000);
        let json = format!(r#"{{"iss":"{ISSUER}","pad":"{padding}"}}"#);
        let t = payload_token(&json);
        assert!(
            env.review(&t)
                .unwrap_err()
                .starts_with("token is too long: ")
        );
        assert_eq!(env.verifier.calls.get(), 0);

        // Exactly at the limit is decoded.
        let mut env = Env::new();
        let t = pod_token();
        env.settings.max_token_len = t.len();
        assert!(env.review(&t).is_ok());
        env.settings.max_token_len = t.len() - 1;
        assert!(env.review(&t).unwrap_err().starts_with("token is too long"));
        // 0 means the default.
        env.settings.max_token_len = 0;
        assert!(env.review(&t).is_ok());
        assert!(
            env.review(&huge)
                .unwrap_err()
                .ends_with("at most 65536 are allowed")
        );
    }

    #[test]
    fn claims_of_the_wrong_type_are_malformed() {
        let sa =
            r#""kubernetes.io":{"namespace":"ns","serviceaccount":{"name":"sa","uid":"sa-uid"}}"#;
        let cases = [
            format!(r#"{{"iss":"{ISSUER}","aud":1,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","aud":["{ISSUER}",1],{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","aud":["{ISSUER}",null],{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","aud":{{"a":1}},{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":"1700003600",{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":true,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":1e300,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":-1e19,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","exp":18446744073709551615,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","nbf":[1],{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","sub":1,{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","jti":{{}},{sa}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":[]}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"namespace":1}}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"serviceaccount":"sa"}}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"pod":{{"name":1}}}}}}"#),
            format!(r#"{{"iss":"{ISSUER}","kubernetes.io":{{"warnafter":"soon"}}}}"#),
        ];
        let env = Env::new();
        for json in cases {
            assert_eq!(
                env.review(&payload_token(&json)),
                Err(MALFORMED_TOKEN.into()),
                "{json}"
            );
        }
        // Before the signature is checked, types are not looked at.
        let json = format!(r#"{{"iss":"{ISSUER}","aud":1}}"#);
        let t = sign_with(HEADER, json.as_bytes(), b"attacker");
        assert_eq!(env.review(&t), Err(INVALID_SIGNATURE.into()));
    }

    // ---- time

    #[test]
    fn time_checks_with_leeway() {
        let iat_only = |iat: i64| {
            payload_token(&format!(
                r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"iat":{iat},"kubernetes.io":{{"namespace":"ns","serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#
            ))
        };
        let cases = vec![
            case(
                "exp exactly 60 s ago",
                timed_token(NOW - 3600, NOW - 60),
                Ok(()),
            ),
            case(
                "exp 61 s ago",
                timed_token(NOW - 3600, NOW - 61),
                err(TOKEN_EXPIRED),
            ),
            case("exp long ago", timed_token(1, 2), err(TOKEN_EXPIRED)),
            case("exp now", timed_token(NOW - 3600, NOW), Ok(())),
            case("nbf in 60 s", timed_token(NOW + 60, NOW + 3600), Ok(())),
            case(
                "nbf in 61 s",
                timed_token(NOW + 61, NOW + 3600),
                err(TOKEN_NOT_VALID_YET),
            ),
            case("iat in 60 s", iat_only(NOW + 60), Ok(())),
            case(
                "iat in 61 s",
                iat_only(NOW + 61),
                err(TOKEN_ISSUED_IN_FUTURE),
            ),
            case(
                "nbf checked before exp",
                timed_token(NOW + 61, NOW - 61),
                err(TOKEN_NOT_VALID_YET),
            ),
            case(
                "exp checked before iat",
                payload_token(&format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"iat":{},"exp":{}}}"#,
                    NOW + 61,
                    NOW - 61
                )),
                err(TOKEN_EXPIRED),
            ),
            case("negative exp", timed_token(-10, -5), err(TOKEN_EXPIRED)),
            case(
                "exp as a float just beyond the leeway",
                payload_token(&format!(
                    r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"],"exp":{}.99}}"#,
                    NOW - 61
                )),
                err(TOKEN_EXPIRED),
            ),
        ];
        check(cases);

        // Sub-second now: the comparison is exact, as Go's time.Time.
        let mut env = Env::new();
        env.now = now() + Duration::from_millis(500);
        assert_eq!(
            env.review(&timed_token(NOW - 3600, NOW - 60)),
            Err(TOKEN_EXPIRED.into())
        );
        assert!(env.review(&timed_token(NOW + 60, NOW + 3600)).is_ok());

        // A different leeway.
        let mut env = Env::new();
        env.settings.leeway = Duration::ZERO;
        assert_eq!(
            env.review(&timed_token(NOW - 3600, NOW - 1)),
            Err(TOKEN_EXPIRED.into())
        );
        assert!(env.review(&timed_token(NOW - 3600, NOW)).is_ok());
        assert_eq!(
            env.review(&timed_token(NOW + 1, NOW + 3600)),
            Err(TOKEN_NOT_VALID_YET.into())
        );

        // A clock before 1970 does not overflow anything.
        let mut env = Env::new();
        env.now = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(env.review(&pod_token()), Err(TOKEN_NOT_VALID_YET.into()));
    }

    // ---- audiences

    #[test]
    fn audiences() {
        let mut env = Env::new();
        assert_eq!(
            env.review(&aud_token(&["vault"])),
            Err(r#"token audiences ["vault"] is invalid for the target audiences ["https://issuer.example" "https://old.example"]"#.into())
        );
        // Audience before expiry (§12).
        let expired_vault = bound_token_with(Binding::None, &plan(&["vault"], 1, 2, None));
        assert_eq!(
            env.review(&expired_vault),
            Err(r#"token audiences ["vault"] is invalid for the target audiences ["https://issuer.example" "https://old.example"]"#.into())
        );

        env.requested = strings(&["other"]);
        assert_eq!(
            env.review(&aud_token(&["vault", "x\"y"])),
            Err(
                r#"token audiences ["vault" "x\"y"] is invalid for the target audiences ["other"]"#
                    .into()
            )
        );

        // Intersection in the order of the request, duplicates kept.
        env.requested = strings(&["c", "x", "a", "c"]);
        let a = env.review(&aud_token(&["a", "b", "c"])).unwrap();
        assert_eq!(a.audiences, strings(&["c", "a", "c"]));

        // Requested empty → the API audiences, in their order.
        env.requested.clear();
        let a = env
            .review(&aud_token(&[OLD_ISSUER, "vault", ISSUER]))
            .unwrap();
        assert_eq!(a.audiences, strings(&[ISSUER, OLD_ISSUER]));

        // No API audiences: an empty intersection is no error.
        env.settings.api_audiences.clear();
        let a = env.review(&aud_token(&["vault"])).unwrap();
        assert_eq!(a.audiences, Vec::<String>::new());
        env.requested = strings(&["vault"]);
        let a = env.review(&aud_token(&["vault"])).unwrap();
        assert_eq!(a.audiences, strings(&["vault"]));

        // A bound token without aud gets the API audiences and the legacy annotation.
        let mut env = Env::new();
        let json = format!(
            r#"{{"iss":"{ISSUER}","sub":"{USERNAME}","kubernetes.io":{{"namespace":"ns","serviceaccount":{{"name":"sa","uid":"sa-uid"}}}}}}"#
        );
        let report = env.report(&payload_token(&json));
        assert_eq!(
            report.outcome.unwrap().audiences,
            strings(&[ISSUER, OLD_ISSUER])
        );
        assert_eq!(
            report.audit_annotations,
            vec![(AUDIT_LEGACY_TOKEN.to_owned(), USERNAME.to_owned())]
        );
        env.requested = strings(&["vault"]);
        assert_eq!(
            env.review(&payload_token(&json)),
            Err(r#"token audiences ["https://issuer.example" "https://old.example"] is invalid for the target audiences ["vault"]"#.into())
        );
    }

    // ---- objects

    fn deleted_at(uid: &str, t: SystemTime) -> ObjectState {
        ObjectState {
            uid: uid.into(),
            deletion_timestamp: Some(t),
        }
    }

    #[test]
    fn service_account_checks() {
        let cases = vec![
            Case {
                name: "missing",
                token: pod_token(),
                edit: |e| {
                    e.world.sas.clear();
                },
                want: err(r#"serviceaccounts "sa" not found"#),
            },
            Case {
                name: "uid mismatch",
                token: pod_token(),
                edit: |e| {
                    e.world.sas.insert(k("ns", "sa"), live("new-uid"));
                },
                want: err("service account UID (new-uid) does not match claim (sa-uid)"),
            },
            Case {
                name: "deleted a second ago, no leeway",
                token: pod_token(),
                edit: |e| {
                    e.world
                        .sas
                        .insert(k("ns", "sa"), deleted_at("sa-uid", at(NOW - 1)));
                },
                want: err("service account ns/sa has been deleted"),
            },
            Case {
                name: "deletion timestamp now",
                token: pod_token(),
                edit: |e| {
                    e.world
                        .sas
                        .insert(k("ns", "sa"), deleted_at("sa-uid", now()));
                },
                want: Ok(()),
            },
            Case {
                name: "deleted a second ago, Kubernetes leeway",
                token: pod_token(),
                edit: |e| {
                    e.settings.deletion_leeway = DEFAULT_LEEWAY;
                    e.world
                        .sas
                        .insert(k("ns", "sa"), deleted_at("sa-uid", at(NOW - 1)));
                },
                want: Ok(()),
            },
            Case {
                name: "deleted 61 s ago, Kubernetes leeway",
                token: pod_token(),
                edit: |e| {
                    e.settings.deletion_leeway = DEFAULT_LEEWAY;
                    e.world
                        .sas
                        .insert(k("ns", "sa"), deleted_at("sa-uid", at(NOW - 61)));
                },
                want: err("service account ns/sa has been deleted"),
            },
            Case {
                name: "uid checked before deletion",
                token: pod_token(),
                edit: |e| {
                    e.world
                        .sas
                        .insert(k("ns", "sa"), deleted_at("new-uid", at(NOW - 100)));
                },
                want: err("service account UID (new-uid) does not match claim (sa-uid)"),
            },
            Case {
                name: "service account before pod",
                token: pod_token(),
                edit: |e| {
                    e.world.sas.clear();
                    e.world.pods.clear();
                },
                want: err(r#"serviceaccounts "sa" not found"#),
            },
            Case {
                name: "missing, token without kubernetes.io",
                token: payload_token(&format!(r#"{{"iss":"{ISSUER}","aud":["{ISSUER}"]}}"#)),
                edit: keep,
                want: err("resource name may not be empty"),
            },
        ];
        check(cases);
    }

    #[test]
    fn bound_object_checks() {
        let secret_token = bound_token(Binding::Secret(ObjectRef::new("s", "secret-uid")));
        let node_token = bound_token(Binding::Node(ObjectRef::new("node-a", "node-uid")));
        let cases = vec![
            Case {
                name: "pod missing",
                token: pod_token(),
                edit: |e| {
                    e.world.pods.clear();
                },
                want: err(TOKEN_INVALIDATED),
            },
            Case {
                name: "pod uid mismatch",
                token: pod_token(),
                edit: |e| {
                    e.world.pods.insert(k("ns", "web-0"), live("pod-uid-2"));
                },
                want: err(
                    "pod UID (pod-uid-2) does not match service account pod ref claim (pod-uid)",
                ),
            },
            Case {
                name: "pod deleted, no leeway",
                token: pod_token(),
                edit: |e| {
                    e.world
                        .pods
                        .insert(k("ns", "web-0"), deleted_at("pod-uid", at(NOW - 1)));
                },
                want: err(TOKEN_INVALIDATED),
            },
            Case {
                name: "pod deleted 30 s ago, 60 s leeway",
                token: pod_token(),
                edit: |e| {
                    e.settings.deletion_leeway = DEFAULT_LEEWAY;
                    e.world
                        .pods
                        .insert(k("ns", "web-0"), deleted_at("pod-uid", at(NOW - 30)));
                },
                want: Ok(()),
            },
            Case {
                name: "pod deleted exactly 60 s ago, 60 s leeway",
                token: pod_token(),
                edit: |e| {
                    e.settings.deletion_leeway = DEFAULT_LEEWAY;
                    e.world
                        .pods
                        .insert(k("ns", "web-0"), deleted_at("pod-uid", at(NOW - 60)));
                },
                want: Ok(()),
            },
            Case {
                name: "pod deleted 61 s ago, 60 s leeway",
                token: pod_token(),
                edit: |e| {
                    e.settings.deletion_leeway = DEFAULT_LEEWAY;
                    e.world
                        .pods
                        .insert(k("ns", "web-0"), deleted_at("pod-uid", at(NOW - 61)));
                },
                want: err(TOKEN_INVALIDATED),
            },
            Case {
                name: "pod in graceful deletion (timestamp in the future)",
                token: pod_token(),
                edit: |e| {
                    e.world
                        .pods
                        .insert(k("ns", "web-0"), deleted_at("pod-uid", at(NOW + 30)));
                },
                want: Ok(()),
            },
            Case {
                name: "secret missing",
                token: secret_token.clone(),
                edit: |e| {
                    e.world.secrets.remove(&k("ns", "s"));
                },
                want: err(TOKEN_INVALIDATED),
            },
            Case {
                name: "secret uid mismatch",
                token: secret_token.clone(),
                edit: |e| {
                    e.world.secrets.get_mut(&k("ns", "s")).unwrap().uid = "secret-uid-2".into();
                },
                want: err(
                    "secret UID (secret-uid-2) does not match service account secret ref claim (secret-uid)",
                ),
            },
            Case {
                name: "secret deleted",
                token: secret_token.clone(),
                edit: |e| {
                    e.world
                        .secrets
                        .get_mut(&k("ns", "s"))
                        .unwrap()
                        .deletion_timestamp = Some(at(NOW - 1));
                },
                want: err(TOKEN_INVALIDATED),
            },
            Case {
                name: "node-bound, node gone",
                token: node_token.clone(),
                edit: |e| {
                    e.world.nodes.clear();
                },
                want: err(TOKEN_INVALIDATED),
            },
            Case {
                name: "node-bound, node recreated",
                token: node_token.clone(),
                edit: |e| {
                    e.world.nodes.insert("node-a".into(), live("node-uid-2"));
                },
                want: err(
                    "node UID (node-uid-2) does not match service account node ref claim (node-uid)",
                ),
            },
            Case {
                name: "node-bound, node deleted",
                token: node_token.clone(),
                edit: |e| {
                    e.world
                        .nodes
                        .insert("node-a".into(), deleted_at("node-uid", at(NOW - 1)));
                },
                want: err(TOKEN_INVALIDATED),
            },
            Case {
                name: "node-bound, node deleted within leeway",
                token: node_token.clone(),
                edit: |e| {
                    e.settings.deletion_leeway = DEFAULT_LEEWAY;
                    e.world
                        .nodes
                        .insert("node-a".into(), deleted_at("node-uid", at(NOW - 1)));
                },
                want: Ok(()),
            },
            Case {
                name: "pod-bound, node gone",
                token: pod_token(),
                edit: |e| {
                    e.world.nodes.clear();
                },
                want: Ok(()),
            },
            Case {
                name: "revoked jti",
                token: pod_token(),
                edit: |e| {
                    e.world.revoked.insert(JTI.into());
                },
                want: err(TOKEN_REVOKED),
            },
            Case {
                name: "another jti revoked",
                token: pod_token(),
                edit: |e| {
                    e.world.revoked.insert("other".into());
                },
                want: Ok(()),
            },
            Case {
                name: "Kubernetes checks come before revocation",
                token: pod_token(),
                edit: |e| {
                    e.world.revoked.insert(JTI.into());
                    e.world.pods.clear();
                },
                want: err(TOKEN_INVALIDATED),
            },
        ];
        check(cases);

        // Revocation only looks at non-empty jtis.
        let mut env = Env::new();
        env.world.revoked.insert(String::new());
        let t = sign(&claims_with(
            Binding::None,
            &plan(&[ISSUER], NOW, NOW + 3600, None),
            "",
        ));
        assert!(env.review(&t).is_ok());
    }

    #[test]
    fn warnafter_marks_stale_tokens() {
        let year = 365 * 24 * 3600;
        let stale = bound_token_with(
            pod_binding(),
            &plan(&[ISSUER], NOW - 4000, NOW - 4000 + year, Some(NOW - 10)),
        );
        let env = Env::new();
        let report = env.report(&stale);
        let a = report.outcome.unwrap();
        assert!(a.stale);
        assert_eq!(a.expires_at, Some(NOW - 4000 + year));
        assert_eq!(
            report.audit_annotations,
            vec![(
                AUDIT_STALE_TOKEN.to_owned(),
                "subject: system:serviceaccount:ns:sa, seconds after warning threshold: 10"
                    .to_owned()
            )]
        );

        for (warn, want) in [(NOW + 10, false), (NOW, false), (NOW - 1, true), (0, false)] {
            let t = bound_token_with(
                pod_binding(),
                &plan(&[ISSUER], NOW - 100, NOW + year, Some(warn)),
            );
            assert_eq!(env.review(&t).unwrap().stale, want, "{warn}");
        }
        // Sub-second: now is after warnafter.
        let mut env = Env::new();
        env.now = now() + Duration::from_millis(1);
        let t = bound_token_with(
            pod_binding(),
            &plan(&[ISSUER], NOW - 100, NOW + year, Some(NOW)),
        );
        assert!(env.review(&t).unwrap().stale);
    }

    // ---- legacy tokens

    fn legacy_env(token: &str) -> Env {
        let mut env = Env::new();
        env.world
            .secrets
            .insert(k("ns", LEGACY_SECRET), legacy_secret_state(token));
        env
    }

    #[test]
    fn legacy_token_success() {
        let env = Env::new();
        let report = env.report(&legacy_token());
        let a = report.outcome.unwrap();
        assert_eq!(
            a,
            Authenticated {
                user: UserInfo {
                    username: USERNAME.into(),
                    uid: "sa-uid".into(),
                    groups: groups(),
                    extra: BTreeMap::new(),
                },
                audiences: strings(&[ISSUER, OLD_ISSUER]),
                stale: false,
                legacy: true,
                warnings: Vec::new(),
                legacy_secret: Some(("ns".into(), LEGACY_SECRET.into())),
                credential_id: String::new(),
                expires_at: None,
            }
        );
        assert_eq!(
            report.audit_annotations,
            vec![
                (AUDIT_LEGACY_TOKEN.to_owned(), USERNAME.to_owned()),
                (
                    AUDIT_LEGACY_TOKEN_MANUAL.to_owned(),
                    LEGACY_SECRET.to_owned()
                ),
            ]
        );
        assert_eq!(
            report.legacy_secret,
            Some(("ns".into(), LEGACY_SECRET.into()))
        );

        // Auto-generated: a warning.
        let mut env = Env::new();
        env.world
            .sa_secrets
            .insert(k("ns", "sa"), strings(&["other", LEGACY_SECRET]));
        let report = env.report(&legacy_token());
        assert_eq!(
            report.outcome.unwrap().warnings,
            strings(&[AUTOGENERATED_SECRET_WARNING])
        );
        assert_eq!(
            report.audit_annotations[1],
            (
                AUDIT_LEGACY_TOKEN_AUTOGENERATED.to_owned(),
                LEGACY_SECRET.to_owned()
            )
        );

        // Requested audiences outside the API audiences.
        let mut env = Env::new();
        env.requested = strings(&["vault"]);
        assert_eq!(
            env.review(&legacy_token()),
            Err(r#"token audiences ["https://issuer.example" "https://old.example"] is invalid for the target audiences ["vault"]"#.into())
        );
        env.requested = strings(&[OLD_ISSUER, "vault"]);
        assert_eq!(
            env.review(&legacy_token()).unwrap().audiences,
            strings(&[OLD_ISSUER])
        );

        // No time checks: an expired legacy token still works.
        let mut p = legacy_payload();
        p["exp"] = 1.into();
        p["nbf"] = (NOW + 100_000).into();
        let t = sign(p.to_string().as_bytes());
        assert!(legacy_env(&t).review(&t).is_ok());

        // Deletion leeway does not apply to legacy tokens.
        let mut env = Env::new();
        env.settings.deletion_leeway = DEFAULT_LEEWAY;
        env.world
            .sas
            .insert(k("ns", "sa"), deleted_at("sa-uid", at(NOW + 30)));
        assert_eq!(
            env.review(&legacy_token()),
            Err("ServiceAccount ns/sa has been deleted".into())
        );
    }

    #[test]
    fn legacy_last_used_tracking() {
        let today = utc_date(now());
        assert_eq!(today, "2023-11-14");
        for (label, want) in [
            (None, true),
            (Some("2023-11-14"), false),
            (Some("2023-11-15"), false),
            (Some("2023-11-13"), true),
            (Some("2023-11-16"), true),
            (Some(""), true),
            (Some("garbage"), true),
        ] {
            let mut env = Env::new();
            env.world
                .secrets
                .get_mut(&k("ns", LEGACY_SECRET))
                .unwrap()
                .last_used = label.map(str::to_owned);
            let a = env.review(&legacy_token()).unwrap();
            assert_eq!(
                a.legacy_secret,
                want.then(|| ("ns".to_owned(), LEGACY_SECRET.to_owned())),
                "{label:?}"
            );
        }
    }

    #[test]
    fn legacy_token_failures() {
        let invalid_since = "the token in secret ns/sa-token-abcde for service account ns/sa has been marked invalid. Use tokens from the TokenRequest API or manually created secret-based tokens, or remove the 'kubernetes.io/legacy-token-invalid-since' label from the secret to temporarily allow use of this token";
        let cases = vec![
            Case {
                name: "secret deleted",
                token: legacy_token(),
                edit: |e| {
                    e.world.secrets.remove(&k("ns", LEGACY_SECRET));
                },
                want: err(LEGACY_TOKEN_INVALIDATED),
            },
            Case {
                name: "secret being deleted (no leeway)",
                token: legacy_token(),
                edit: |e| {
                    e.settings.deletion_leeway = DEFAULT_LEEWAY;
                    e.world
                        .secrets
                        .get_mut(&k("ns", LEGACY_SECRET))
                        .unwrap()
                        .deletion_timestamp = Some(at(NOW + 30));
                },
                want: err(LEGACY_TOKEN_INVALIDATED),
            },
            Case {
                name: "secret data changed",
                token: legacy_token(),
                edit: |e| {
                    e.world
                        .secrets
                        .get_mut(&k("ns", LEGACY_SECRET))
                        .unwrap()
                        .token_sha256 = Some(token_sha256(b"another token"));
                },
                want: err(LEGACY_TOKEN_MISMATCH),
            },
            Case {
                name: "secret without a token",
                token: legacy_token(),
                edit: |e| {
                    e.world
                        .secrets
                        .get_mut(&k("ns", LEGACY_SECRET))
                        .unwrap()
                        .token_sha256 = None;
                },
                want: err(LEGACY_TOKEN_MISMATCH),
            },
            Case {
                name: "service account missing",
                token: legacy_token(),
                edit: |e| {
                    e.world.sas.clear();
                },
                want: err(r#"serviceaccounts "sa" not found"#),
            },
            Case {
                name: "service account being deleted",
                token: legacy_token(),
                edit: |e| {
                    e.world
                        .sas
                        .insert(k("ns", "sa"), deleted_at("sa-uid", at(NOW + 3600)));
                },
                want: err("ServiceAccount ns/sa has been deleted"),
            },
            Case {
                name: "service account recreated",
                token: legacy_token(),
                edit: |e| {
                    e.world.sas.insert(k("ns", "sa"), live("new-uid"));
                },
                want: err("ServiceAccount UID (new-uid) does not match claim (sa-uid)"),
            },
            Case {
                name: "secret checked before the service account",
                token: legacy_token(),
                edit: |e| {
                    e.world.sas.clear();
                    e.world.secrets.clear();
                },
                want: err(LEGACY_TOKEN_INVALIDATED),
            },
            Case {
                name: "digest checked before the service account",
                token: legacy_token(),
                edit: |e| {
                    e.world.sas.clear();
                    e.world
                        .secrets
                        .get_mut(&k("ns", LEGACY_SECRET))
                        .unwrap()
                        .token_sha256 = None;
                },
                want: err(LEGACY_TOKEN_MISMATCH),
            },
            Case {
                name: "invalid-since label",
                token: legacy_token(),
                edit: |e| {
                    e.world
                        .secrets
                        .get_mut(&k("ns", LEGACY_SECRET))
                        .unwrap()
                        .invalid_since = true;
                },
                want: err(invalid_since),
            },
            Case {
                name: "bound-token checks do not apply (pod gone, revoked)",
                token: legacy_token(),
                edit: |e| {
                    e.world.pods.clear();
                    e.world.revoked.insert(String::new());
                },
                want: Ok(()),
            },
        ];
        check(cases);

        // invalid-since: the use is still recorded.
        let mut env = Env::new();
        env.world
            .secrets
            .get_mut(&k("ns", LEGACY_SECRET))
            .unwrap()
            .invalid_since = true;
        let report = env.report(&legacy_token());
        assert_eq!(report.outcome, Err(invalid_since.to_owned()));
        assert_eq!(
            report.legacy_secret,
            Some(("ns".into(), LEGACY_SECRET.into()))
        );
        assert!(report.audit_annotations.contains(&(
            AUDIT_LEGACY_TOKEN_INVALIDATED.to_owned(),
            "sa-token-abcde/ns".to_owned()
        )));
    }

    #[test]
    fn legacy_required_claims() {
        let cases = [
            ("sub", "sub claim is missing"),
            (
                "kubernetes.io/serviceaccount/namespace",
                "namespace claim is missing",
            ),
            (
                "kubernetes.io/serviceaccount/secret.name",
                "secretName claim is missing",
            ),
            (
                "kubernetes.io/serviceaccount/service-account.name",
                "serviceAccountName claim is missing",
            ),
            (
                "kubernetes.io/serviceaccount/service-account.uid",
                "serviceAccountUID claim is missing",
            ),
        ];
        for (key, want) in cases {
            for blank in [None, Some(serde_json::Value::Null), Some("".into())] {
                let mut p = legacy_payload();
                let m = p.as_object_mut().unwrap();
                match &blank {
                    None => {
                        m.remove(key);
                    }
                    Some(v) => {
                        m.insert(key.to_owned(), v.clone());
                    }
                }
                let t = sign(p.to_string().as_bytes());
                assert_eq!(
                    legacy_env(&t).review(&t),
                    Err(want.to_owned()),
                    "{key} {blank:?}"
                );
            }
        }
        for sub in [
            "system:serviceaccount:ns:other",
            "system:serviceaccount:other:sa",
            "system:serviceaccount:ns:sa:x",
            "system:serviceaccount:ns",
            "system:serviceaccounts:ns:sa",
            "ns:sa",
        ] {
            let mut p = legacy_payload();
            p["sub"] = sub.into();
            let t = sign(p.to_string().as_bytes());
            assert_eq!(
                legacy_env(&t).review(&t),
                Err("sub claim is invalid".into()),
                "{sub}"
            );
        }
        // Names that are not DNS names fail the split even when they match.
        let mut p = legacy_payload();
        p["sub"] = "system:serviceaccount:NS:sa".into();
        p["kubernetes.io/serviceaccount/namespace"] = "NS".into();
        let t = sign(p.to_string().as_bytes());
        assert_eq!(
            legacy_env(&t).review(&t),
            Err("sub claim is invalid".into())
        );
    }

    #[test]
    fn legacy_issuer_configured_as_bound_issuer_is_a_union() {
        // Both authenticators claim the token; legacy fails, bound succeeds.
        let mut env = Env::new();
        env.settings.issuers.push(LEGACY_ISSUER.into());
        let p = plan(&[ISSUER], NOW, NOW + 3600, None);
        let t = sign(&bound_claims_json(&ClaimsInput {
            issuer: LEGACY_ISSUER,
            namespace: "ns",
            service_account: ObjectRef::new("sa", "sa-uid"),
            binding: Binding::None,
            plan: &p,
            jti: JTI,
        }));
        assert!(env.review(&t).is_ok());
        // Both fail: the errors are aggregated.
        env.world.sas.clear();
        assert_eq!(
            env.review(&t),
            Err(r#"[namespace claim is missing, serviceaccounts "sa" not found]"#.into())
        );
        // Without it, only the legacy authenticator claims such a token.
        let env = Env::new();
        assert_eq!(env.review(&t), Err("namespace claim is missing".into()));
    }

    // ---- helpers

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote("a"), r#""a""#);
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\u{7}\u{8}\u{c}\n\r\t\u{b}\u{0}\u{1b}\u{7f}"),
            r#""\a\b\f\n\r\t\v\x00\x1b\x7f""#
        );
        assert_eq!(go_quote("é日本 'x'"), "\"é日本 'x'\"");
        assert_eq!(go_quote("\u{85}\u{a0}\u{ad}"), r#""\u0085\u00a0\u00ad""#);
        assert_eq!(
            go_quote("\u{200b}\u{2028}\u{feff}"),
            r#""\u200b\u2028\ufeff""#
        );
        assert_eq!(go_quote("\u{e000}\u{f0000}"), r#""\ue000\U000f0000""#);
        assert_eq!(go_quote("😀"), "\"😀\"");
        assert_eq!(go_quote_list(&[]), "[]");
        assert_eq!(go_quote_list(&strings(&["a"])), r#"["a"]"#);
        assert_eq!(
            go_quote_list(&strings(&["a", "b c", ""])),
            r#"["a" "b c" ""]"#
        );
    }

    #[test]
    fn aggregates() {
        assert_eq!(aggregate_errors(&[]), "");
        assert_eq!(aggregate_errors(&strings(&["a"])), "a");
        assert_eq!(aggregate_errors(&strings(&["a", "a"])), "a");
        assert_eq!(aggregate_errors(&strings(&["a", "b", "a"])), "[a, b]");
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(utc_date(at(86_399)), "1970-01-01");
        assert_eq!(utc_date(at(86_400)), "1970-01-02");
        assert_eq!(utc_date(at(951_782_400)), "2000-02-29");
        assert_eq!(utc_date(at(951_868_800)), "2000-03-01");
        assert_eq!(utc_date(at(4_107_542_400)), "2100-03-01");
        assert_eq!(utc_date(UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31");
        assert!(!last_used_needs_update(Some("2023-11-15"), at(NOW)));
        // Just before midnight UTC, today and tomorrow.
        let late = at(1_700_006_399);
        assert_eq!(utc_date(late), "2023-11-14");
        assert!(!last_used_needs_update(Some("2023-11-15"), late));
        assert!(last_used_needs_update(
            Some("2023-11-15"),
            at(1_700_006_400 + 86_400)
        ));
    }

    #[test]
    fn digests() {
        assert_eq!(token_sha256(b"")[..4], [0xe3, 0xb0, 0xc4, 0x42]);
        let a = token_sha256(b"a");
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!constant_time_eq(&a, &b));
    }

    // ---- no panics

    #[test]
    fn random_and_mutated_tokens_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x0bad_9e55);
        let mut env = Env::new();
        env.world
            .sa_secrets
            .insert(k("ns", "sa"), strings(&[LEGACY_SECRET]));
        env.world
            .secrets
            .get_mut(&k("ns", "s"))
            .unwrap()
            .token_sha256 = None;
        let good = [
            pod_token(),
            legacy_token(),
            bound_token(Binding::Node(ObjectRef::new("node-a", "node-uid"))),
            bound_token(Binding::Secret(ObjectRef::new("s", "secret-uid"))),
        ];
        const ALPHABET: &[u8] = b"AQgw09-_.={}[]\":, \\+/*eyJ";
        const FRAGMENTS: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"iss\"",
            "\"aud\"",
            "\"exp\"",
            "\"nbf\"",
            "\"kubernetes.io\"",
            "\"serviceaccount\"",
            "\"pod\"",
            "\"name\"",
            "\"uid\"",
            "\"https://issuer.example\"",
            "\"kubernetes/serviceaccount\"",
            "1",
            "-0.5",
            "1e999",
            "18446744073709551616",
            "null",
            "true",
            "\"\\ud800\"",
            "\"\\u0000\"",
            "\"sa\"",
            "\"ns\"",
            "\"warnafter\"",
            "\"namespace\"",
            "\"sub\"",
        ];
        let mut accepted = 0;
        for i in 0..1000 {
            let (token, mutated) = match i % 4 {
                0 => {
                    let len = rng.random_range(0..300);
                    let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    (String::from_utf8_lossy(&bytes).into_owned(), false)
                }
                1 => {
                    let mut bytes = good[rng.random_range(0..good.len())].clone().into_bytes();
                    for _ in 0..rng.random_range(1..4) {
                        let pos = rng.random_range(0..bytes.len());
                        let c = ALPHABET[rng.random_range(0..ALPHABET.len())];
                        match rng.random_range(0..4) {
                            0 => bytes[pos] = c,
                            1 => {
                                bytes.remove(pos);
                            }
                            2 => bytes.insert(pos, c),
                            _ => bytes.truncate(pos),
                        }
                        if bytes.is_empty() {
                            break;
                        }
                    }
                    (String::from_utf8(bytes).unwrap(), true)
                }
                2 => {
                    let mut json = format!(r#"{{"iss":"{ISSUER}","#);
                    for _ in 0..rng.random_range(0..24) {
                        json.push_str(FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]);
                    }
                    json.push('}');
                    (payload_token(&json), false)
                }
                _ => {
                    let a = segments(&good[rng.random_range(0..good.len())]);
                    let b = segments(&good[rng.random_range(0..good.len())]);
                    let c = segments(&good[rng.random_range(0..good.len())]);
                    (format!("{}.{}.{}", a.0, b.1, c.2), false)
                }
            };
            let report = env.report(&token);
            if let Ok(a) = &report.outcome {
                accepted += 1;
                assert!(a.user.username.starts_with("system:serviceaccount:"));
                if mutated {
                    assert!(
                        good.contains(&token),
                        "a mutated token was accepted: {token}"
                    );
                }
            }
        }
        // Some splices of the same token pass; most inputs fail.
        assert!(accepted < 500, "{accepted}");
    }
}
