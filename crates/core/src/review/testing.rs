//! Fixtures of the review tests: a verifier with `badge_keys::KeySet`'s semantics
//! over a keyed hash, token builders, a world of objects, and the case runner.

#![allow(clippy::unwrap_used)]

pub(crate) use super::*;
pub(crate) use std::collections::BTreeMap;
pub(crate) use std::sync::Arc;
pub(crate) use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use base64::Engine as _;
pub(crate) use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub(crate) use sha2::{Digest as _, Sha256};
pub(crate) use std::cell::{Cell, RefCell};
pub(crate) use std::collections::{HashMap, HashSet};

pub(crate) use rand::rngs::StdRng;
pub(crate) use rand::{Rng, SeedableRng};

pub(crate) use crate::token::{
    Binding, ClaimsInput, ObjectRef, TokenPlan, bound_claims_json, legacy_claims,
};

pub(crate) const NOW: i64 = 1_700_000_000;
pub(crate) const ISSUER: &str = "https://issuer.example";
pub(crate) const OLD_ISSUER: &str = "https://old.example";
pub(crate) const KID: &str = "key-1";
pub(crate) const SECRET: &[u8] = b"key-1-secret";
pub(crate) const KID2: &str = "key-2";
pub(crate) const SECRET2: &[u8] = b"key-2-secret";
pub(crate) const HEADER: &str = r#"{"alg":"RS256","kid":"key-1"}"#;
pub(crate) const JTI: &str = "0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a";
pub(crate) const LEGACY_SECRET: &str = "sa-token-abcde";
pub(crate) const USERNAME: &str = "system:serviceaccount:ns:sa";

pub(crate) fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

pub(crate) fn now() -> SystemTime {
    at(NOW)
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn settings() -> ReviewSettings {
    ReviewSettings::new(
        strings(&[ISSUER, OLD_ISSUER]),
        strings(&[ISSUER, OLD_ISSUER]),
    )
}

// ---- a verifier with the semantics of badge_keys::KeySet, over a keyed hash

pub(crate) struct TestKey {
    pub(crate) kid: &'static str,
    pub(crate) alg: &'static str,
    pub(crate) secret: &'static [u8],
}

pub(crate) struct TestVerifier {
    pub(crate) keys: Vec<TestKey>,
    pub(crate) calls: Cell<usize>,
    /// `Some`: verified tokens are kept, as badge-access's verifier keeps them.
    pub(crate) cache: Option<RefCell<HashMap<[u8; 32], Arc<VerifiedToken>>>>,
}

impl TestVerifier {
    pub(crate) fn new() -> Self {
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

    pub(crate) fn caching() -> Self {
        TestVerifier {
            cache: Some(RefCell::default()),
            ..TestVerifier::new()
        }
    }
}

pub(crate) fn mac(secret: &[u8], input: &[u8]) -> Vec<u8> {
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
    ) -> Result<(), SignatureError> {
        self.calls.set(self.calls.get() + 1);
        let candidates: Vec<&TestKey> = self
            .keys
            .iter()
            .filter(|k| kid.is_empty() || k.kid == kid)
            .collect();
        if candidates.is_empty() {
            return Err(SignatureError::NoKeysFound);
        }
        let mut errors = Vec::new();
        for k in candidates {
            if k.alg != alg {
                errors.push(KeyFailure::UnsupportedAlgorithm);
            } else if mac(k.secret, signing_input) == signature {
                return Ok(());
            } else {
                errors.push(KeyFailure::InvalidSignature);
            }
        }
        Err(SignatureError::Failed(errors))
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

pub(crate) fn b64e(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn sign_with(header: &str, payload: &[u8], secret: &[u8]) -> String {
    let mut t = format!("{}.{}", b64e(header.as_bytes()), b64e(payload));
    let sig = mac(secret, t.as_bytes());
    t.push('.');
    t.push_str(&b64e(&sig));
    t
}

pub(crate) fn sign(payload: &[u8]) -> String {
    sign_with(HEADER, payload, SECRET)
}

pub(crate) fn segments(token: &str) -> (String, String, String) {
    let p: Vec<&str> = token.split('.').collect();
    (p[0].to_owned(), p[1].to_owned(), p[2].to_owned())
}

pub(crate) fn plan(auds: &[&str], iat: i64, exp: i64, warn_after: Option<i64>) -> TokenPlan {
    TokenPlan {
        audiences: strings(auds),
        issued_at: iat,
        expires_at: exp,
        status_expiration: exp,
        warn_after,
        warnings: Vec::new(),
    }
}

pub(crate) fn pod_binding() -> Binding {
    Binding::Pod {
        pod: ObjectRef::new("web-0", "pod-uid"),
        node: Some(ObjectRef::new("node-a", "node-uid")),
    }
}

pub(crate) fn claims_with(binding: Binding, plan: &TokenPlan, jti: &str) -> Vec<u8> {
    bound_claims_json(&ClaimsInput {
        issuer: ISSUER,
        namespace: "ns",
        service_account: ObjectRef::new("sa", "sa-uid"),
        binding,
        plan,
        jti,
    })
}

pub(crate) fn bound_token_with(binding: Binding, plan: &TokenPlan) -> String {
    sign(&claims_with(binding, plan, JTI))
}

pub(crate) fn bound_token(binding: Binding) -> String {
    bound_token_with(binding, &plan(&[ISSUER], NOW, NOW + 3600, None))
}

pub(crate) fn pod_token() -> String {
    bound_token(pod_binding())
}

pub(crate) fn timed_token(iat: i64, exp: i64) -> String {
    bound_token_with(Binding::None, &plan(&[ISSUER], iat, exp, None))
}

pub(crate) fn aud_token(auds: &[&str]) -> String {
    bound_token_with(Binding::None, &plan(auds, NOW, NOW + 3600, None))
}

/// A signed payload of exactly this JSON.
pub(crate) fn payload_token(json: &str) -> String {
    sign(json.as_bytes())
}

pub(crate) fn legacy_payload() -> serde_json::Value {
    legacy_claims("ns", "sa", "sa-uid", LEGACY_SECRET)
}

pub(crate) fn legacy_token() -> String {
    sign(legacy_payload().to_string().as_bytes())
}

// ---- objects

#[derive(Default, Clone)]
pub(crate) struct World {
    pub(crate) sas: HashMap<(String, String), ObjectState>,
    pub(crate) sa_secrets: HashMap<(String, String), Vec<String>>,
    pub(crate) pods: HashMap<(String, String), ObjectState>,
    pub(crate) secrets: HashMap<(String, String), SecretState>,
    pub(crate) nodes: HashMap<String, ObjectState>,
    pub(crate) revoked: HashSet<String>,
}

pub(crate) fn k(ns: &str, name: &str) -> (String, String) {
    (ns.to_owned(), name.to_owned())
}

pub(crate) fn live(uid: &str) -> ObjectState {
    ObjectState {
        uid: uid.to_owned(),
        deletion_timestamp: None,
    }
}

pub(crate) fn legacy_secret_state(token: &str) -> SecretState {
    SecretState {
        uid: "legacy-secret-uid".into(),
        deletion_timestamp: None,
        token_sha256: Some(token_sha256(token.as_bytes())),
        invalid_since: false,
        last_used: None,
    }
}

pub(crate) fn world() -> World {
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

pub(crate) struct Env {
    pub(crate) settings: ReviewSettings,
    pub(crate) world: World,
    pub(crate) verifier: TestVerifier,
    pub(crate) now: SystemTime,
    pub(crate) requested: Vec<String>,
}

impl Env {
    pub(crate) fn new() -> Self {
        Env {
            settings: settings(),
            world: world(),
            verifier: TestVerifier::new(),
            now: now(),
            requested: Vec::new(),
        }
    }

    pub(crate) fn report(&self, token: &str) -> ReviewReport {
        review_with_report(
            token,
            &self.requested,
            &self.settings,
            &self.verifier,
            &self.world,
            self.now,
        )
    }

    /// The outcome with the error as its text, which the tests compare.
    pub(crate) fn review(&self, token: &str) -> Result<Authenticated, String> {
        self.report(token).outcome.map_err(|e| e.to_string())
    }
}

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) token: String,
    pub(crate) edit: fn(&mut Env),
    pub(crate) want: Result<(), String>,
}

pub(crate) fn keep(_: &mut Env) {}

pub(crate) fn err(s: &str) -> Result<(), String> {
    Err(s.to_owned())
}

/// Runs every case twice: as is, and with a caching verifier warmed by a
/// review of the same token while the world, the clock and the requested
/// audiences were still the defaults — so a cached token must meet every
/// check exactly as a fresh one does (settings and keys are per process, so
/// the edit applies to them before warming).
pub(crate) fn check(cases: Vec<Case>) {
    for c in cases {
        let mut env = Env::new();
        (c.edit)(&mut env);
        let fresh = env.report(&c.token);
        assert_eq!(
            fresh.outcome.clone().map(|_| ()).map_err(|e| e.to_string()),
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

pub(crate) fn case(name: &'static str, token: String, want: Result<(), String>) -> Case {
    Case {
        name,
        token,
        edit: keep,
        want,
    }
}

pub(crate) fn extra(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
        .collect()
}

pub(crate) fn groups() -> Vec<String> {
    strings(&[
        "system:serviceaccounts",
        "system:serviceaccounts:ns",
        "system:authenticated",
    ])
}
