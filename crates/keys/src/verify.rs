//! The trusted verification keys of service-account tokens, as the signature check of
//! TokenReview (`badge_core::review`) needs them.
//!
//! Candidates are chosen as Kubernetes' `PublicKeysGetter.GetPublicKeys(kid)` does: the
//! keys whose kid equals the header's, or every key when the header has none
//! (`k/k:pkg/serviceaccount/jwt.go`). Each candidate is tried in turn and the first one
//! that verifies wins. Unlike go-jose, a key verifies only with its own algorithm:
//! RS256 for RSA, ES256 for P-256, ES384 for P-384. `none`, HMAC (a public key used as
//! an HMAC secret), RS384/RS512/PS* and an ES* of the wrong curve are all refused, so
//! algorithm confusion cannot turn a public key into a signing secret.

use badge_core::review::{KeyFailure, SignatureError, SignatureVerifier};

use crate::PublicKey;

/// The trusted public keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

impl KeySet {
    /// A set of keys, tried in this order.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        KeySet { keys }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys at all: every token fails with "invalid signature, no keys found".
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key has this kid.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == kid)
    }

    /// The keys, in order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// `GetPublicKeys(kid)`: the keys with this kid, or all keys when `kid` is empty.
    pub fn candidates<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_empty() || k.kid() == kid)
    }
}

impl FromIterator<PublicKey> for KeySet {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        KeySet::new(iter.into_iter().collect())
    }
}

impl SignatureVerifier for KeySet {
    /// No candidate: "invalid signature, no keys found". Otherwise each candidate whose
    /// algorithm is not `alg` adds "invalid signature, unsupported algorithm", each
    /// failed verification "invalid signature", and the texts are aggregated as
    /// Kubernetes does (one distinct message prints alone).
    fn verify(
        &self,
        kid: &str,
        alg: &str,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let mut errors = Vec::new();
        for key in self.candidates(kid) {
            if key.algorithm().as_str() != alg {
                errors.push(KeyFailure::UnsupportedAlgorithm);
            } else if key.verify(signing_input, signature) {
                return Ok(());
            } else {
                errors.push(KeyFailure::InvalidSignature);
            }
        }
        if errors.is_empty() {
            return Err(SignatureError::NoKeysFound);
        }
        Err(SignatureError::Failed(errors))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::hmac;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    };
    use badge_core::review::{
        Authenticated, INVALID_SIGNATURE, MALFORMED_TOKEN, NO_KEYS_FOUND, ObjectLookup,
        ObjectState, ReviewSettings, SecretState, TOKEN_EXPIRED, TOKEN_INVALIDATED,
        UNSUPPORTED_ALGORITHM, review, token_sha256,
    };
    use badge_core::token::{
        Binding, ClaimsInput, ObjectRef, TokenPlan, bound_claims_json, legacy_claims,
    };
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::{Algorithm, SigningKey};

    const NOW: i64 = 1_700_000_000;
    const ISSUER: &str = "https://issuer.example";
    const JTI: &str = "0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a";
    const LEGACY_SECRET: &str = "sa-token-abcde";

    struct Keys {
        rsa: SigningKey,
        ec: SigningKey,
        ec384: SigningKey,
        /// An RSA key that is not trusted.
        attacker: SigningKey,
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| Keys {
            rsa: SigningKey::generate(Algorithm::RS256).unwrap(),
            ec: SigningKey::generate(Algorithm::ES256).unwrap(),
            ec384: SigningKey::from_pem(include_str!("../testdata/ec_p384_sec1.pem")).unwrap(),
            attacker: SigningKey::from_pem(include_str!("../testdata/rsa2048_pkcs1.pem")).unwrap(),
        })
    }

    fn key_set() -> KeySet {
        let k = keys();
        KeySet::new(vec![
            k.rsa.public_key().clone(),
            k.ec.public_key().clone(),
            k.ec384.public_key().clone(),
        ])
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW as u64)
    }

    fn settings() -> ReviewSettings {
        ReviewSettings::new(vec![ISSUER.into()], vec![ISSUER.into()])
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn plan(iat: i64, exp: i64) -> TokenPlan {
        TokenPlan {
            audiences: vec![ISSUER.into()],
            issued_at: iat,
            expires_at: exp,
            status_expiration: exp,
            warn_after: None,
            warnings: Vec::new(),
        }
    }

    fn claims(plan: &TokenPlan) -> Vec<u8> {
        bound_claims_json(&ClaimsInput {
            issuer: ISSUER,
            namespace: "ns",
            service_account: ObjectRef::new("sa", "sa-uid"),
            binding: Binding::Pod {
                pod: ObjectRef::new("web-0", "pod-uid"),
                node: Some(ObjectRef::new("node-a", "node-uid")),
            },
            plan,
            jti: JTI,
        })
    }

    fn payload() -> Vec<u8> {
        claims(&plan(NOW, NOW + 3600))
    }

    fn token(key: &SigningKey) -> String {
        key.sign_jwt(&key.jwt_header(false), &payload()).unwrap()
    }

    fn header(alg: &str, kid: &str) -> Vec<u8> {
        format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#).into_bytes()
    }

    fn legacy_token() -> String {
        let k = &keys().rsa;
        let p = legacy_claims("ns", "sa", "sa-uid", LEGACY_SECRET).to_string();
        k.sign_jwt(&k.jwt_header(false), p.as_bytes()).unwrap()
    }

    fn hs256(header: &[u8], payload: &[u8], secret: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    }

    #[derive(Clone)]
    struct World {
        sa: Option<ObjectState>,
        pod: Option<ObjectState>,
        node: Option<ObjectState>,
        legacy: Option<SecretState>,
    }

    fn world() -> World {
        let live = |uid: &str| ObjectState {
            uid: uid.into(),
            deletion_timestamp: None,
        };
        World {
            sa: Some(live("sa-uid")),
            pod: Some(live("pod-uid")),
            node: Some(live("node-uid")),
            legacy: Some(SecretState {
                uid: "secret-uid".into(),
                deletion_timestamp: None,
                token_sha256: Some(token_sha256(legacy_token().as_bytes())),
                invalid_since: false,
                last_used: None,
            }),
        }
    }

    impl ObjectLookup for World {
        fn service_account(&self, ns: &str, name: &str) -> Option<ObjectState> {
            (ns == "ns" && name == "sa")
                .then(|| self.sa.clone())
                .flatten()
        }
        fn service_account_secrets(&self, _: &str, _: &str) -> Vec<String> {
            Vec::new()
        }
        fn pod(&self, ns: &str, name: &str) -> Option<ObjectState> {
            (ns == "ns" && name == "web-0")
                .then(|| self.pod.clone())
                .flatten()
        }
        fn secret(&self, ns: &str, name: &str) -> Option<SecretState> {
            (ns == "ns" && name == LEGACY_SECRET)
                .then(|| self.legacy.clone())
                .flatten()
        }
        fn node(&self, name: &str) -> Option<ObjectState> {
            (name == "node-a").then(|| self.node.clone()).flatten()
        }
        fn revoked(&self, _: &str) -> bool {
            false
        }
    }

    fn run(token: &str) -> Result<Authenticated, String> {
        review(token, &[], &settings(), &key_set(), &world(), now()).map_err(|e| e.to_string())
    }

    fn err(s: &str) -> Result<(), String> {
        Err(s.to_owned())
    }

    #[test]
    fn key_set_basics() {
        let k = keys();
        let set = key_set();
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
        assert!(set.contains(k.rsa.kid()));
        assert!(set.contains(k.ec384.kid()));
        assert!(!set.contains(k.attacker.kid()));
        assert!(!set.contains(""));
        assert_eq!(set.candidates("").count(), 3);
        assert_eq!(set.candidates(k.ec.kid()).count(), 1);
        assert_eq!(set.candidates("nope").count(), 0);
        assert_eq!(set.keys()[0], *k.rsa.public_key());
        let collected: KeySet = set.keys().iter().cloned().collect();
        assert_eq!(collected, set);

        let empty = KeySet::default();
        assert!(empty.is_empty());
        assert_eq!(
            empty
                .verify("", "RS256", b"a.b", b"sig")
                .map_err(|e| e.to_string()),
            Err(NO_KEYS_FOUND.into())
        );
        assert_eq!(run_with(&empty, &token(&k.rsa)), err(NO_KEYS_FOUND));
    }

    fn run_with(set: &KeySet, token: &str) -> Result<(), String> {
        review(token, &[], &settings(), set, &world(), now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn real_tokens_authenticate() {
        let k = keys();
        for key in [&k.rsa, &k.ec, &k.ec384] {
            let a = run(&token(key)).unwrap();
            assert_eq!(a.user.username, "system:serviceaccount:ns:sa", "{key:?}");
            assert_eq!(a.user.uid, "sa-uid");
            assert_eq!(
                a.user.groups,
                [
                    "system:serviceaccounts",
                    "system:serviceaccounts:ns",
                    "system:authenticated"
                ]
            );
            let extra: BTreeMap<&str, Vec<&str>> = a
                .user
                .extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
                .collect();
            assert_eq!(
                extra,
                BTreeMap::from([
                    (
                        "authentication.kubernetes.io/credential-id",
                        vec!["JTI=0f8e6a2c-1d3b-4c5e-9f7a-8b6c4d2e0f1a"]
                    ),
                    ("authentication.kubernetes.io/node-name", vec!["node-a"]),
                    ("authentication.kubernetes.io/node-uid", vec!["node-uid"]),
                    ("authentication.kubernetes.io/pod-name", vec!["web-0"]),
                    ("authentication.kubernetes.io/pod-uid", vec!["pod-uid"]),
                ])
            );
            assert_eq!(a.audiences, [ISSUER]);
            assert_eq!(a.expires_at, Some(NOW + 3600));
            // With the typ header of external signers too.
            let t = key.sign_jwt(&key.jwt_header(true), &payload()).unwrap();
            assert!(run(&t).is_ok());
        }
        // No kid: every key is tried, the RSA one verifies.
        let t = k.rsa.sign_jwt(br#"{"alg":"RS256"}"#, &payload()).unwrap();
        assert!(run(&t).is_ok());
        let t = k.ec384.sign_jwt(br#"{"alg":"ES384"}"#, &payload()).unwrap();
        assert!(run(&t).is_ok());
    }

    #[test]
    fn attack_corpus() {
        let k = keys();
        let rsa_kid = k.rsa.kid();
        let ec_kid = k.ec.kid();
        let good = token(&k.rsa);
        let mut parts = good.split('.');
        let (h, p, s) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let payload = payload();
        let pem = k.rsa.public_key().to_pem();
        let der = k.rsa.public_key().spki_der().to_vec();
        let tampered = String::from_utf8(payload.clone()).unwrap().replace(
            "system:serviceaccount:ns:sa",
            "system:serviceaccount:kube-system:admin",
        );
        let sig = URL_SAFE_NO_PAD.decode(s).unwrap();

        let cases: Vec<(&str, String, Result<(), String>)> = vec![
            ("control", good.clone(), Ok(())),
            (
                "alg none, empty signature",
                format!("{}.{p}.", b64(&header("none", rsa_kid))),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "alg none, signature kept",
                format!("{}.{p}.{s}", b64(&header("none", rsa_kid))),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "HS256 with the public key PEM as the secret",
                hs256(&header("HS256", rsa_kid), &payload, pem.as_bytes()),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "HS256 with the SPKI DER as the secret",
                hs256(&header("HS256", rsa_kid), &payload, &der),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "HS256 without kid",
                hs256(br#"{"alg":"HS256"}"#, &payload, pem.as_bytes()),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "kid pointing nowhere",
                k.rsa
                    .sign_jwt(&header("RS256", "no-such-key"), &payload)
                    .unwrap(),
                err(NO_KEYS_FOUND),
            ),
            (
                "kid path traversal",
                k.rsa
                    .sign_jwt(&header("RS256", "../../etc/passwd"), &payload)
                    .unwrap(),
                err(NO_KEYS_FOUND),
            ),
            (
                "kid SQL injection",
                k.rsa
                    .sign_jwt(&header("RS256", "' OR 1=1 --"), &payload)
                    .unwrap(),
                err(NO_KEYS_FOUND),
            ),
            (
                "kid of the attacker's own key",
                token(&k.attacker),
                err(NO_KEYS_FOUND),
            ),
            (
                "header alg swapped to ES256, signature kept",
                format!("{}.{p}.{s}", b64(&header("ES256", rsa_kid))),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "header alg swapped to RS384",
                format!("{}.{p}.{s}", b64(&header("RS384", rsa_kid))),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "header alg swapped to PS256",
                format!("{}.{p}.{s}", b64(&header("PS256", rsa_kid))),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "RS256 token claiming the EC key",
                k.rsa.sign_jwt(&header("RS256", ec_kid), &payload).unwrap(),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "ES256 header, RSA signature, EC kid",
                k.rsa.sign_jwt(&header("ES256", ec_kid), &payload).unwrap(),
                err(INVALID_SIGNATURE),
            ),
            (
                "ES384 signature on the P-256 key",
                k.ec384
                    .sign_jwt(&header("ES384", ec_kid), &payload)
                    .unwrap(),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "ES256 signature claiming the P-384 key",
                k.ec.sign_jwt(&header("ES256", k.ec384.kid()), &payload)
                    .unwrap(),
                err(UNSUPPORTED_ALGORITHM),
            ),
            (
                "payload tampered, signature kept",
                format!("{h}.{}.{s}", b64(tampered.as_bytes())),
                err(INVALID_SIGNATURE),
            ),
            (
                "signature from another key with the same kid",
                k.attacker
                    .sign_jwt(&header("RS256", rsa_kid), &payload)
                    .unwrap(),
                err(INVALID_SIGNATURE),
            ),
            (
                "signature truncated",
                format!("{h}.{p}.{}", b64(&sig[..sig.len() - 1])),
                err(INVALID_SIGNATURE),
            ),
            (
                "signature extended",
                format!("{h}.{p}.{}", b64(&[sig.as_slice(), &[0]].concat())),
                err(INVALID_SIGNATURE),
            ),
            (
                "signature bit flipped",
                {
                    let mut bad = sig.clone();
                    bad[10] ^= 1;
                    format!("{h}.{p}.{}", b64(&bad))
                },
                err(INVALID_SIGNATURE),
            ),
            (
                "signature empty",
                format!("{h}.{p}."),
                err(INVALID_SIGNATURE),
            ),
            (
                "no kid, no key verifies: every key tried",
                k.attacker
                    .sign_jwt(br#"{"alg":"RS256"}"#, &payload)
                    .unwrap(),
                err("[invalid signature, invalid signature, unsupported algorithm]"),
            ),
            (
                "expired just beyond the leeway",
                k.rsa
                    .sign_jwt(
                        &k.rsa.jwt_header(false),
                        &claims(&plan(NOW - 3600, NOW - 61)),
                    )
                    .unwrap(),
                err(TOKEN_EXPIRED),
            ),
            (
                "expired just within the leeway",
                k.rsa
                    .sign_jwt(
                        &k.rsa.jwt_header(false),
                        &claims(&plan(NOW - 3600, NOW - 60)),
                    )
                    .unwrap(),
                Ok(()),
            ),
            (
                "not valid yet just beyond the leeway",
                k.ec.sign_jwt(
                    &k.ec.jwt_header(false),
                    &claims(&plan(NOW + 61, NOW + 3600)),
                )
                .unwrap(),
                err("service account token is not valid yet"),
            ),
            (
                "not valid yet just within the leeway",
                k.ec.sign_jwt(
                    &k.ec.jwt_header(false),
                    &claims(&plan(NOW + 60, NOW + 3600)),
                )
                .unwrap(),
                Ok(()),
            ),
            (
                "wrong issuer",
                k.rsa
                    .sign_jwt(
                        &k.rsa.jwt_header(false),
                        br#"{"iss":"https://evil.example","sub":"system:serviceaccount:ns:sa"}"#,
                    )
                    .unwrap(),
                err("invalid bearer token"),
            ),
            (
                "duplicate claims",
                k.rsa
                    .sign_jwt(
                        &k.rsa.jwt_header(false),
                        br#"{"iss":"https://issuer.example","iss":"https://evil.example"}"#,
                    )
                    .unwrap(),
                err(MALFORMED_TOKEN),
            ),
            (
                "1 MiB",
                "a".repeat(1 << 20),
                err("token is too long: 1048576 bytes, at most 65536 are allowed"),
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(run(&token).map(|_| ()), want, "{name}");
        }
    }

    #[test]
    fn verifier_refuses_directly() {
        // Defence in depth: the verifier refuses what review() filters out first.
        let k = keys();
        let set = key_set();
        let input = b"header.payload";
        let pem = k.rsa.public_key().to_pem();
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, pem.as_bytes()), input);
        for alg in ["HS256", "none", "", "rs256", "RS512", "PS256", "ES512"] {
            assert_eq!(
                set.verify(k.rsa.kid(), alg, input, tag.as_ref())
                    .map_err(|e| e.to_string()),
                Err(UNSUPPORTED_ALGORITHM.into()),
                "{alg}"
            );
        }
        let sig = k.rsa.sign(input).unwrap();
        assert_eq!(set.verify(k.rsa.kid(), "RS256", input, &sig), Ok(()));
        assert_eq!(set.verify("", "RS256", input, &sig), Ok(()));
        assert_eq!(
            set.verify(k.ec.kid(), "RS256", input, &sig)
                .map_err(|e| e.to_string()),
            Err(UNSUPPORTED_ALGORITHM.into())
        );
        assert_eq!(
            set.verify(k.rsa.kid(), "RS256", b"header.payloaD", &sig)
                .map_err(|e| e.to_string()),
            Err(INVALID_SIGNATURE.into())
        );
        for kid in ["../../etc/passwd", "' OR 1=1 --", "*", "%", "\0"] {
            assert_eq!(
                set.verify(kid, "RS256", input, &sig)
                    .map_err(|e| e.to_string()),
                Err(NO_KEYS_FOUND.into()),
                "{kid}"
            );
        }
    }

    #[test]
    fn ecdsa_der_signatures_are_refused() {
        // JOSE wants r||s; an ASN.1 DER signature from the same key must not verify.
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let fixed =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let asn1 =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let public =
            PublicKey::from_spki_der(fixed.public_key().as_der().unwrap().as_ref()).unwrap();
        let set = KeySet::new(vec![public.clone()]);
        let input = format!(
            "{}.{}",
            b64(&header("ES256", public.kid())),
            b64(&payload())
        );
        let good = fixed.sign(&rng, input.as_bytes()).unwrap();
        let der = asn1.sign(&rng, input.as_bytes()).unwrap();
        assert_eq!(
            set.verify(public.kid(), "ES256", input.as_bytes(), good.as_ref()),
            Ok(())
        );
        assert_eq!(
            set.verify(public.kid(), "ES256", input.as_bytes(), der.as_ref())
                .map_err(|e| e.to_string()),
            Err(INVALID_SIGNATURE.into())
        );
        assert_eq!(
            run_with(&set, &format!("{input}.{}", b64(der.as_ref()))),
            err(INVALID_SIGNATURE)
        );
        assert_eq!(
            run_with(&set, &format!("{input}.{}", b64(good.as_ref()))),
            Ok(())
        );
    }

    #[test]
    fn keys_sharing_a_kid_are_all_tried() {
        // External signers name their keys; two keys may share a name during rotation.
        let k = keys();
        let first = PublicKey::from_spki_der_with_kid(k.attacker.public_key().spki_der(), "shared")
            .unwrap();
        let second =
            PublicKey::from_spki_der_with_kid(k.rsa.public_key().spki_der(), "shared").unwrap();
        let set = KeySet::new(vec![first, second]);
        let t = k
            .rsa
            .sign_jwt(&header("RS256", "shared"), &payload())
            .unwrap();
        assert_eq!(run_with(&set, &t), Ok(()));
        let set = KeySet::new(vec![set.keys()[0].clone()]);
        assert_eq!(run_with(&set, &t), err(INVALID_SIGNATURE));
    }

    #[test]
    fn node_and_object_checks_with_real_keys() {
        let k = keys();
        let settings = settings();
        let set = key_set();
        let t = token(&k.ec);

        let mut w = world();
        w.node = None;
        // Pod-bound: the node is informational.
        assert!(review(&t, &[], &settings, &set, &w, now()).is_ok());

        let mut w = world();
        w.pod = None;
        assert_eq!(
            review(&t, &[], &settings, &set, &w, now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            err(TOKEN_INVALIDATED)
        );

        let mut w = world();
        w.sa = Some(ObjectState {
            uid: "sa-uid".into(),
            deletion_timestamp: Some(now() - Duration::from_secs(1)),
        });
        assert_eq!(
            review(&t, &[], &settings, &set, &w, now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            err("service account ns/sa has been deleted")
        );

        let mut w = world();
        w.sa = None;
        assert_eq!(
            review(&t, &[], &settings, &set, &w, now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            err(r#"serviceaccounts "sa" not found"#)
        );
    }

    #[test]
    fn legacy_tokens_with_real_keys() {
        let set = key_set();
        let settings = settings();
        let t = legacy_token();
        let a = review(&t, &[], &settings, &set, &world(), now()).unwrap();
        assert!(a.legacy);
        assert_eq!(a.user.username, "system:serviceaccount:ns:sa");
        assert!(a.user.extra.is_empty());
        assert_eq!(a.legacy_secret, Some(("ns".into(), LEGACY_SECRET.into())));

        let mut w = world();
        w.legacy = None;
        assert_eq!(
            review(&t, &[], &settings, &set, &w, now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            err("Token has been invalidated")
        );

        let mut w = world();
        if let Some(s) = w.legacy.as_mut() {
            s.token_sha256 = Some(token_sha256(b"rotated"));
        }
        assert_eq!(
            review(&t, &[], &settings, &set, &w, now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            err("Token does not match server's copy")
        );

        let mut w = world();
        if let Some(s) = w.legacy.as_mut() {
            s.invalid_since = true;
        }
        let got = review(&t, &[], &settings, &set, &w, now())
            .unwrap_err()
            .to_string();
        assert!(got.starts_with("the token in secret ns/sa-token-abcde for service account ns/sa has been marked invalid."), "{got}");

        // Same claims signed by the attacker: the signature fails before any lookup.
        let p = legacy_claims("ns", "sa", "sa-uid", LEGACY_SECRET).to_string();
        let forged = keys()
            .attacker
            .sign_jwt(&header("RS256", keys().rsa.kid()), p.as_bytes())
            .unwrap();
        assert_eq!(
            review(&forged, &[], &settings, &set, &world(), now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            err(INVALID_SIGNATURE)
        );
    }

    #[test]
    fn mutated_real_tokens_never_pass() {
        let k = keys();
        let good = [token(&k.rsa), token(&k.ec), legacy_token()];
        let set = key_set();
        let settings = settings();
        let w = world();
        // xorshift64*, fixed seed.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        };
        const ALPHABET: &[u8] = b"AQgw09-_.=+/*{}\"eyJ";
        for i in 0..300 {
            let original = &good[i % good.len()];
            let mut bytes = original.clone().into_bytes();
            for _ in 0..1 + next(3) {
                let pos = next(bytes.len());
                let c = ALPHABET[next(ALPHABET.len())];
                match next(3) {
                    0 => bytes[pos] = c,
                    1 => {
                        bytes.remove(pos);
                    }
                    _ => bytes.insert(pos, c),
                }
            }
            let mutated = String::from_utf8(bytes).unwrap();
            let got = review(&mutated, &[], &settings, &set, &w, now());
            if got.is_ok() {
                assert!(
                    good.contains(&mutated),
                    "accepted a mutated token: {mutated}"
                );
            }
        }
    }
}
