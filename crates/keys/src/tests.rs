#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

use crate::*;

const K8S_KEYID_VECTOR: &str = include_str!("../testdata/k8s_keyid_test_rsa_public.pem");
const K8S_KEYID_EXPECTED: &str = "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU";

const RSA2048_PKCS1: &str = include_str!("../testdata/rsa2048_pkcs1.pem");
const RSA2048_PKCS1_PUBLIC: &str = include_str!("../testdata/rsa2048_pkcs1_public.pem");
const RSA2048_KID: &str = "PtvcIRYG3hDeOksUNAPHbcNdjG0gzlx9oKG1h7b36UM";
const EC_P256_SEC1_WITH_PARAMS: &str = include_str!("../testdata/ec_p256_sec1_with_params.pem");
const EC_P256_KID: &str = "g0fyji8WNIJrIpPl6PFX13sGyU-5XDaCZbQX4S2ZhzY";
const EC_P384_SEC1: &str = include_str!("../testdata/ec_p384_sec1.pem");
const EC_P384_CERT: &str = include_str!("../testdata/ec_p384_cert.pem");
const EC_P384_KID: &str = "ANamtfIMqNxjd0497vL2KZQ_LDKanbebvhCUG39mVZ8";
const EC_P521_SEC1: &str = include_str!("../testdata/ec_p521_sec1.pem");
const EC_P521_PUBLIC: &str = include_str!("../testdata/ec_p521_public.pem");
const RSA1024_PKCS1: &str = include_str!("../testdata/rsa1024_pkcs1.pem");
const RSA1024_PKCS8: &str = include_str!("../testdata/rsa1024_pkcs8.pem");
const RSA1024_PUBLIC: &str = include_str!("../testdata/rsa1024_public.pem");
const ED25519: &str = include_str!("../testdata/ed25519.pem");
const ED25519_PUBLIC: &str = include_str!("../testdata/ed25519_public.pem");

fn no_claims_validation(alg: jsonwebtoken::Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    v
}

fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::ES384 => jsonwebtoken::Algorithm::ES384,
    }
}

const PAYLOAD: &str = r#"{"aud":["https://kubernetes.default.svc"],"exp":1924992000,"iat":1700000000,"iss":"https://kubernetes.default.svc","jti":"5a7c9a52-6c3f-4a4b-9d55-0c6f6e1d2a11","kubernetes.io":{"namespace":"default","serviceaccount":{"name":"default","uid":"0b0d2f1e-3c4a-4b5c-8d9e-0f1a2b3c4d5e"}},"nbf":1700000000,"sub":"system:serviceaccount:default:default"}"#;

/// Verifies `token` with jsonwebtoken, once from the PEM and once from the JWK.
fn cross_check(key: &SigningKey, token: &str, expect_typ: bool) {
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, jwt_alg(key.algorithm()));
    assert_eq!(header.kid.as_deref(), Some(key.kid()));
    assert_eq!(header.typ.as_deref(), expect_typ.then_some("JWT"));

    let public = key.public_key();
    let pem = public.to_pem();
    let from_pem = match key.algorithm() {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    };
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(serde_json::to_value(public.jwk()).unwrap()).unwrap();
    let from_jwk = DecodingKey::from_jwk(&jwk).unwrap();
    let validation = no_claims_validation(jwt_alg(key.algorithm()));
    for decoding_key in [from_pem, from_jwk] {
        let data = decode::<serde_json::Value>(token, &decoding_key, &validation).unwrap();
        assert_eq!(data.claims["sub"], "system:serviceaccount:default:default");
    }

    // And a token signed by someone else's key must fail with ours.
    let other = SigningKey::generate(match key.algorithm() {
        Algorithm::RS256 => Algorithm::RS256,
        _ => Algorithm::ES256,
    })
    .unwrap();
    if other.algorithm() == key.algorithm() {
        let forged = other
            .sign_jwt(&key.jwt_header(false), PAYLOAD.as_bytes())
            .unwrap();
        let decoding_key = DecodingKey::from_jwk(&jwk).unwrap();
        assert!(decode::<serde_json::Value>(&forged, &decoding_key, &validation).is_err());
    }
}

// ---------------------------------------------------------------- key ids

#[test]
fn kid_matches_kubernetes_keyid_test_vector() {
    let keys = PublicKey::from_pem(K8S_KEYID_VECTOR).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid(), K8S_KEYID_EXPECTED);
    assert_eq!(keys[0].algorithm(), Algorithm::RS256);
    // The free function over the DER as it sits in the PEM gives the same id.
    let body: String = K8S_KEYID_VECTOR
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(body).unwrap();
    assert_eq!(key_id(&der), K8S_KEYID_EXPECTED);
    assert_eq!(keys[0].spki_der(), der.as_slice());
}

#[test]
fn kids_match_openssl_for_fixed_keys() {
    assert_eq!(
        SigningKey::from_pem(RSA2048_PKCS1).unwrap().kid(),
        RSA2048_KID
    );
    assert_eq!(
        SigningKey::from_pem(EC_P256_SEC1_WITH_PARAMS)
            .unwrap()
            .kid(),
        EC_P256_KID
    );
    assert_eq!(
        SigningKey::from_pem(EC_P384_SEC1).unwrap().kid(),
        EC_P384_KID
    );
}

#[test]
fn public_key_spki_round_trip_keeps_kid() {
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let key = SigningKey::generate(alg).unwrap();
        let public = PublicKey::from_spki_der(key.public_key().spki_der()).unwrap();
        assert_eq!(&public, key.public_key());
        assert_eq!(public.kid(), key_id(public.spki_der()));
        let reparsed = PublicKey::from_pem(&public.to_pem()).unwrap();
        assert_eq!(reparsed, vec![public]);
    }
}

#[test]
fn external_kid_is_kept() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let public =
        PublicKey::from_spki_der_with_kid(key.public_key().spki_der(), "signer-key-7").unwrap();
    assert_eq!(public.kid(), "signer-key-7");
    assert_eq!(public.jwk().kid, "signer-key-7");
    let sig = key.sign(b"x.y").unwrap();
    assert!(public.verify(b"x.y", &sig));
}

// ---------------------------------------------------------------- algorithm

#[test]
fn algorithm_names() {
    for (alg, name) in [
        (Algorithm::RS256, "RS256"),
        (Algorithm::ES256, "ES256"),
        (Algorithm::ES384, "ES384"),
    ] {
        assert_eq!(alg.to_string(), name);
        assert_eq!(name.parse::<Algorithm>().unwrap(), alg);
        assert_eq!(serde_json::to_string(&alg).unwrap(), format!("\"{name}\""));
    }
    assert!(matches!(
        "HS256".parse::<Algorithm>(),
        Err(Error::UnknownAlgorithm(_))
    ));
    assert!(matches!(
        "rs256".parse::<Algorithm>(),
        Err(Error::UnknownAlgorithm(_))
    ));
    let mut algs = [Algorithm::RS256, Algorithm::ES384, Algorithm::ES256];
    algs.sort();
    let names: Vec<_> = algs.iter().map(|a| a.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(matches!(
        SigningKey::generate(Algorithm::ES384),
        Err(Error::UnsupportedGeneration(Algorithm::ES384))
    ));
}

// ---------------------------------------------------------------- signing

#[test]
fn generate_sign_verify_rs256() {
    let key = SigningKey::generate(Algorithm::RS256).unwrap();
    assert_eq!(key.algorithm(), Algorithm::RS256);
    let sig = key.sign(b"header.payload").unwrap();
    assert_eq!(sig.len(), 256);
    assert!(key.public_key().verify(b"header.payload", &sig));
    assert!(!key.public_key().verify(b"header.payloaD", &sig));
    let mut bad = sig.clone();
    bad[10] ^= 1;
    assert!(!key.public_key().verify(b"header.payload", &bad));
    // PKCS#1 v1.5 is deterministic.
    assert_eq!(key.sign(b"header.payload").unwrap(), sig);
}

#[test]
fn generate_sign_verify_es256() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    assert_eq!(key.algorithm(), Algorithm::ES256);
    let sig = key.sign(b"header.payload").unwrap();
    assert_eq!(sig.len(), 64, "JOSE r||s, not DER");
    assert!(key.public_key().verify(b"header.payload", &sig));
    assert!(!key.public_key().verify(b"header.payloaD", &sig));
    let other = SigningKey::generate(Algorithm::ES256).unwrap();
    assert!(!other.public_key().verify(b"header.payload", &sig));
}

#[test]
fn jwt_rs256_verifies_with_jsonwebtoken() {
    let key = SigningKey::generate(Algorithm::RS256).unwrap();
    let token = key
        .sign_jwt(&key.jwt_header(false), PAYLOAD.as_bytes())
        .unwrap();
    cross_check(&key, &token, false);
}

#[test]
fn jwt_es256_verifies_with_jsonwebtoken() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let token = key
        .sign_jwt(&key.jwt_header(false), PAYLOAD.as_bytes())
        .unwrap();
    cross_check(&key, &token, false);
}

#[test]
fn jwt_with_typ_verifies_with_jsonwebtoken() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let token = key
        .sign_jwt(&key.jwt_header(true), PAYLOAD.as_bytes())
        .unwrap();
    cross_check(&key, &token, true);
}

#[test]
fn jwt_from_file_keys_verify_with_jsonwebtoken() {
    for pem in [RSA2048_PKCS1, EC_P256_SEC1_WITH_PARAMS, EC_P384_SEC1] {
        let key = SigningKey::from_pem(pem).unwrap();
        let token = key
            .sign_jwt(&key.jwt_header(false), PAYLOAD.as_bytes())
            .unwrap();
        cross_check(&key, &token, false);
    }
    let p384 = SigningKey::from_pem(EC_P384_SEC1).unwrap();
    assert_eq!(p384.algorithm(), Algorithm::ES384);
    assert_eq!(p384.sign(b"a.b").unwrap().len(), 96);
}

#[test]
fn jwt_structure_and_header_bytes() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let kid = key.kid().to_owned();
    assert_eq!(
        key.jwt_header(false),
        format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#).into_bytes()
    );
    assert_eq!(
        key.jwt_header(true),
        format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JWT"}}"#).into_bytes()
    );
    let header = key.jwt_header(false);
    let token = key.sign_jwt(&header, PAYLOAD.as_bytes()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), header);
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts[1]).unwrap(),
        PAYLOAD.as_bytes()
    );
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    assert!(key.public_key().verify(signing_input.as_bytes(), &sig));
    assert!(!token.contains('='));

    let rsa = SigningKey::from_pem(RSA2048_PKCS1).unwrap();
    assert_eq!(
        rsa.jwt_header(false),
        format!(r#"{{"alg":"RS256","kid":"{RSA2048_KID}"}}"#).into_bytes()
    );
}

#[test]
fn one_key_signs_many_rs256_tokens() {
    let key = SigningKey::generate(Algorithm::RS256).unwrap();
    let header = key.jwt_header(false);
    let decoding_key = DecodingKey::from_rsa_pem(key.public_key().to_pem().as_bytes()).unwrap();
    let validation = no_claims_validation(jsonwebtoken::Algorithm::RS256);
    for i in 0..100 {
        let payload = format!(r#"{{"sub":"system:serviceaccount:ns:sa-{i}","n":{i}}}"#);
        let token = key.sign_jwt(&header, payload.as_bytes()).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        assert!(
            key.public_key()
                .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        );
        if i % 25 == 0 {
            let data = decode::<serde_json::Value>(&token, &decoding_key, &validation).unwrap();
            assert_eq!(data.claims["n"], i);
        }
    }
}

#[test]
fn signing_key_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SigningKey>();
    assert_send_sync::<PublicKey>();
    assert_send_sync::<Kek>();
}

// ---------------------------------------------------------------- PEM loading

#[test]
fn pkcs8_der_and_pem_round_trip() {
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let key = SigningKey::generate(alg).unwrap();
        let der = key.to_pkcs8_der();
        let from_der = SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(from_der.kid(), key.kid());
        assert_eq!(from_der.algorithm(), alg);
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let from_pem = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(from_pem.kid(), key.kid());
        // The reloaded key signs tokens the original's public key accepts.
        let sig = from_pem.sign(b"a.b").unwrap();
        assert!(key.public_key().verify(b"a.b", &sig));
        // Its public half from the private PEM, as --service-account-key-file allows.
        assert_eq!(
            PublicKey::from_pem(&pem).unwrap(),
            vec![key.public_key().clone()]
        );
    }
}

#[test]
fn pkcs1_rsa_private_key_pem() {
    assert!(RSA2048_PKCS1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let key = SigningKey::from_pem(RSA2048_PKCS1).unwrap();
    assert_eq!(key.algorithm(), Algorithm::RS256);
    assert_eq!(key.kid(), RSA2048_KID);
    // PKCS#8 export of a PKCS#1-loaded key reloads to the same key.
    assert_eq!(
        SigningKey::from_pkcs8_der(&key.to_pkcs8_der())
            .unwrap()
            .kid(),
        RSA2048_KID
    );
}

#[test]
fn sec1_ec_private_key_pem_with_ec_parameters_block() {
    assert!(EC_P256_SEC1_WITH_PARAMS.starts_with("-----BEGIN EC PARAMETERS-----"));
    let key = SigningKey::from_pem(EC_P256_SEC1_WITH_PARAMS).unwrap();
    assert_eq!(key.algorithm(), Algorithm::ES256);
    assert_eq!(key.kid(), EC_P256_KID);
    let public = PublicKey::from_pem(EC_P256_SEC1_WITH_PARAMS).unwrap();
    assert_eq!(public.len(), 1, "EC PARAMETERS is skipped");
    assert_eq!(public[0].kid(), EC_P256_KID);
}

#[test]
fn p384_private_key_and_certificate() {
    let key = SigningKey::from_pem(EC_P384_SEC1).unwrap();
    assert_eq!(key.algorithm(), Algorithm::ES384);
    let from_cert = PublicKey::from_pem(EC_P384_CERT).unwrap();
    assert_eq!(from_cert.len(), 1);
    assert_eq!(from_cert[0].kid(), EC_P384_KID);
    assert_eq!(from_cert[0].algorithm(), Algorithm::ES384);
    let sig = key.sign(b"a.b").unwrap();
    assert!(from_cert[0].verify(b"a.b", &sig));
}

#[test]
fn rsa_public_key_pkcs1_pem() {
    assert!(RSA2048_PKCS1_PUBLIC.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
    let keys = PublicKey::from_pem(RSA2048_PKCS1_PUBLIC).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid(), RSA2048_KID);
}

#[test]
fn public_key_file_with_several_blocks_keeps_order() {
    let file = format!(
        "# comment lines outside blocks are ignored\n{K8S_KEYID_VECTOR}{RSA2048_PKCS1_PUBLIC}\n{EC_P384_CERT}{EC_P256_SEC1_WITH_PARAMS}{RSA2048_PKCS1}"
    );
    let kids: Vec<String> = PublicKey::from_pem(&file)
        .unwrap()
        .iter()
        .map(|k| k.kid().to_owned())
        .collect();
    assert_eq!(
        kids,
        [
            K8S_KEYID_EXPECTED,
            RSA2048_KID,
            EC_P384_KID,
            EC_P256_KID,
            RSA2048_KID
        ]
    );
    // The signing-key loader takes the first private key.
    let crlf = file.replace('\n', "\r\n");
    assert_eq!(SigningKey::from_pem(&crlf).unwrap().kid(), EC_P256_KID);
    assert_eq!(PublicKey::from_pem(&crlf).unwrap().len(), 5);
}

#[test]
fn rsa_1024_is_rejected() {
    for pem in [RSA1024_PKCS1, RSA1024_PKCS8] {
        let err = SigningKey::from_pem(pem).unwrap_err();
        assert!(matches!(err, Error::RsaKeyTooSmall), "{err}");
        assert!(err.to_string().contains("2048"));
        assert!(matches!(
            PublicKey::from_pem(pem),
            Err(Error::RsaKeyTooSmall)
        ));
    }
    assert!(matches!(
        PublicKey::from_pem(RSA1024_PUBLIC),
        Err(Error::RsaKeyTooSmall)
    ));
}

#[test]
fn unsupported_key_types_are_rejected() {
    for pem in [ED25519, EC_P521_SEC1] {
        let err = SigningKey::from_pem(pem).unwrap_err();
        assert!(matches!(err, Error::UnsupportedKey(_)), "{err}");
    }
    for pem in [ED25519_PUBLIC, EC_P521_PUBLIC] {
        let err = PublicKey::from_pem(pem).unwrap_err();
        assert!(matches!(err, Error::UnsupportedKey(_)), "{err}");
    }
}

#[test]
fn malformed_pem_errors_do_not_echo_content() {
    let no_end =
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ\n";
    let err = SigningKey::from_pem(no_end).unwrap_err();
    assert!(matches!(err, Error::Pem(_)), "{err}");
    assert!(!err.to_string().contains("MIIE"));

    let bad_base64 = "-----BEGIN PRIVATE KEY-----\nTOPSECRET!!!@@@\n-----END PRIVATE KEY-----\n";
    let err = SigningKey::from_pem(bad_base64).unwrap_err();
    assert!(!err.to_string().contains("TOPSECRET"), "{err}");
    assert!(!format!("{err:?}").contains("TOPSECRET"));

    let not_a_key = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n";
    let err = SigningKey::from_pem(not_a_key).unwrap_err();
    assert!(!err.to_string().contains("U0VDUkVU"), "{err}");

    let mismatched = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        PublicKey::from_pem(mismatched),
        Err(Error::Pem(_))
    ));

    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let err = SigningKey::from_pem(encrypted).unwrap_err();
    assert!(err.to_string().contains("passphrase"), "{err}");
    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0123456789ABCDEF0123456789ABCDEF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    let err = SigningKey::from_pem(legacy).unwrap_err();
    assert!(err.to_string().contains("passphrase"), "{err}");

    assert!(matches!(SigningKey::from_pem(""), Err(Error::NoPrivateKey)));
    assert!(matches!(
        SigningKey::from_pem(K8S_KEYID_VECTOR),
        Err(Error::NoPrivateKey)
    ));
    assert!(matches!(
        PublicKey::from_pem("hello"),
        Err(Error::NoPublicKey)
    ));
    assert!(matches!(
        PublicKey::from_spki_der(b"\x30\x03\x02\x01\x00"),
        Err(Error::InvalidKey(_))
    ));
    assert!(SigningKey::from_pkcs8_der(b"not der").is_err());
}

// ---------------------------------------------------------------- JWK

#[test]
fn rsa_jwk_shape() {
    let key = SigningKey::from_pem(RSA2048_PKCS1).unwrap();
    let jwk = key.public_key().jwk();
    assert_eq!(jwk.key_use, "sig");
    assert_eq!(jwk.kty, "RSA");
    assert_eq!(jwk.alg, "RS256");
    assert_eq!(jwk.kid, RSA2048_KID);
    assert_eq!(jwk.e.as_deref(), Some("AQAB"));
    let n = URL_SAFE_NO_PAD.decode(jwk.n.as_deref().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "no leading zero byte");
    assert_ne!(n[0], 0);
    assert!(jwk.crv.is_none() && jwk.x.is_none() && jwk.y.is_none());
    let json = serde_json::to_string(&jwk).unwrap();
    let expected = format!(
        r#"{{"use":"sig","kty":"RSA","kid":"{RSA2048_KID}","alg":"RS256","n":"{}","e":"AQAB"}}"#,
        jwk.n.as_deref().unwrap()
    );
    assert_eq!(json, expected);
    // The upstream vector's modulus also has its top bit set: still 256 bytes, no zero prefix.
    let vector = &PublicKey::from_pem(K8S_KEYID_VECTOR).unwrap()[0];
    assert_eq!(vector.jwk().n.unwrap().len(), 342);
}

#[test]
fn ec_jwk_shape() {
    for _ in 0..8 {
        // Several keys, so some have coordinates with leading zero bytes.
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let jwk = key.public_key().jwk();
        assert_eq!(jwk.kty, "EC");
        assert_eq!(jwk.crv.as_deref(), Some("P-256"));
        assert_eq!(jwk.alg, "ES256");
        assert_eq!(jwk.x.as_deref().unwrap().len(), 43);
        assert_eq!(jwk.y.as_deref().unwrap().len(), 43);
        assert!(jwk.n.is_none() && jwk.e.is_none());
        let json = serde_json::to_string(&jwk).unwrap();
        let expected = format!(
            r#"{{"use":"sig","kty":"EC","kid":"{}","crv":"P-256","alg":"ES256","x":"{}","y":"{}"}}"#,
            key.kid(),
            jwk.x.as_deref().unwrap(),
            jwk.y.as_deref().unwrap()
        );
        assert_eq!(json, expected);
        let back: Jwk = serde_json::from_str(&json).unwrap();
        assert_eq!(back, jwk);
    }
    let p384 = SigningKey::from_pem(EC_P384_SEC1)
        .unwrap()
        .public_key()
        .jwk();
    assert_eq!(p384.crv.as_deref(), Some("P-384"));
    assert_eq!(p384.alg, "ES384");
    assert_eq!(p384.x.unwrap().len(), 64);
    assert_eq!(p384.y.unwrap().len(), 64);
}

// ---------------------------------------------------------------- no key material in output

#[test]
fn debug_output_shows_no_key_material() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let debug = format!("{key:?}");
    assert!(debug.contains(key.kid()));
    assert!(debug.contains("ES256"));
    let pkcs8_b64 = STANDARD.encode(&*key.to_pkcs8_der());
    assert!(!debug.contains(&pkcs8_b64[..20]));
    assert!(!debug.contains("PRIVATE"));

    let public_debug = format!("{:?}", key.public_key());
    assert!(public_debug.contains(key.kid()));

    let (kek, b64) = Kek::generate().unwrap();
    let debug = format!("{kek:?}");
    assert!(debug.contains(&kek.id()));
    assert!(!debug.contains(b64.trim_end_matches('=')));
    let raw = STANDARD.decode(b64.as_bytes()).unwrap();
    assert!(!debug.contains(&format!("{:?}", &raw[..4])));
}

// ---------------------------------------------------------------- KEK

#[test]
fn kek_round_trip() {
    let (kek, _) = Kek::generate().unwrap();
    for plaintext in [&b""[..], b"x", &[7u8; 5000][..]] {
        let blob = kek.encrypt(plaintext, b"aad").unwrap();
        assert_eq!(blob.len(), 1 + 12 + plaintext.len() + 16);
        assert_eq!(blob[0], 1);
        assert_eq!(&*kek.decrypt(&blob, b"aad").unwrap(), plaintext);
    }
    // Random nonces: the same input seals differently each time.
    let a = kek.encrypt(b"same", b"").unwrap();
    let b = kek.encrypt(b"same", b"").unwrap();
    assert_ne!(a, b);
    assert_ne!(a[1..13], b[1..13]);
}

#[test]
fn kek_wrong_key_fails() {
    let (kek, _) = Kek::generate().unwrap();
    let (other, _) = Kek::generate().unwrap();
    let blob = kek.encrypt(b"secret", b"aad").unwrap();
    let err = other.decrypt(&blob, b"aad").unwrap_err();
    assert!(matches!(err, Error::Decrypt));
    assert_eq!(
        err.to_string(),
        "cannot decrypt: wrong key-encryption key or corrupted data"
    );
}

#[test]
fn kek_tampered_blob_fails() {
    let (kek, _) = Kek::generate().unwrap();
    let blob = kek.encrypt(b"secret data", b"aad").unwrap();
    for i in 0..blob.len() {
        let mut tampered = blob.clone();
        tampered[i] ^= 0x01;
        assert!(
            matches!(kek.decrypt(&tampered, b"aad"), Err(Error::Decrypt)),
            "byte {i}"
        );
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert!(matches!(kek.decrypt(&longer, b"aad"), Err(Error::Decrypt)));
}

#[test]
fn kek_wrong_aad_fails() {
    let (kek, _) = Kek::generate().unwrap();
    let blob = kek.encrypt(b"secret", b"signing-key/abc").unwrap();
    assert!(matches!(
        kek.decrypt(&blob, b"signing-key/abd"),
        Err(Error::Decrypt)
    ));
    assert!(matches!(kek.decrypt(&blob, b""), Err(Error::Decrypt)));
}

#[test]
fn kek_truncated_blob_fails_without_panic() {
    let (kek, _) = Kek::generate().unwrap();
    let blob = kek.encrypt(b"secret", b"").unwrap();
    for len in 0..blob.len() {
        assert!(
            matches!(kek.decrypt(&blob[..len], b""), Err(Error::Decrypt)),
            "length {len}"
        );
    }
}

#[test]
fn kek_from_base64_and_id() {
    let raw = [0x42u8; 32];
    let b64 = STANDARD.encode(raw);
    let kek = Kek::from_base64(&b64).unwrap();
    let id = kek.id();
    assert_eq!(id.len(), 16);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    // Whitespace and a missing padding are tolerated; the key (and so the id) is the same.
    assert_eq!(Kek::from_base64(&format!("  {b64}\n")).unwrap().id(), id);
    assert_eq!(
        Kek::from_base64(b64.trim_end_matches('=')).unwrap().id(),
        id
    );
    assert_eq!(Kek::from_bytes(&raw).unwrap().id(), id);
    assert_ne!(Kek::from_bytes(&[0x43u8; 32]).unwrap().id(), id);
    // Known value: SHA-256("badge-kek" || 0x42 * 32)[..8].
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"badge-kek");
    h.update(raw);
    let digest = h.finalize();
    let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(id, expected);

    let short = STANDARD.encode([1u8; 16]);
    let err = Kek::from_base64(&short).unwrap_err();
    assert!(err.to_string().contains("32 bytes"), "{err}");
    assert!(err.to_string().contains("got 16"), "{err}");
    let err = Kek::from_base64("this is not base64 *&^%").unwrap_err();
    assert!(matches!(err, Error::InvalidKek(_)));
    assert!(!err.to_string().contains("*&^%"));
}

#[test]
fn kek_generate_output_reloads() {
    let (kek, b64) = Kek::generate().unwrap();
    let again = Kek::from_base64(&b64).unwrap();
    assert_eq!(again.id(), kek.id());
    let blob = kek.encrypt(b"x", b"y").unwrap();
    assert_eq!(&*again.decrypt(&blob, b"y").unwrap(), b"x");
}

#[test]
fn kek_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("kek");
    let (kek, b64) = Kek::generate().unwrap();
    std::fs::write(&good, format!("{}\n", &*b64)).unwrap();
    assert_eq!(Kek::from_file(&good).unwrap().id(), kek.id());

    let bad = dir.path().join("kek-bad");
    std::fs::write(&bad, "c2VjcmV0LXNob3J0LWtleQ==\n").unwrap();
    let err = Kek::from_file(&bad).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::KekFile { .. }));
    assert!(msg.contains(&bad.display().to_string()), "{msg}");
    assert!(msg.contains("32 bytes"), "{msg}");
    assert!(!msg.contains("c2VjcmV0"), "{msg}");

    let garbage = dir.path().join("kek-garbage");
    std::fs::write(&garbage, "p@ssw0rd-not-base64").unwrap();
    let msg = Kek::from_file(&garbage).unwrap_err().to_string();
    assert!(
        msg.contains("kek-garbage") && msg.contains("base64"),
        "{msg}"
    );
    assert!(!msg.contains("p@ssw0rd"), "{msg}");

    let binary = dir.path().join("kek-binary");
    std::fs::write(&binary, [0xffu8, 0xfe, 0x00]).unwrap();
    assert!(matches!(
        Kek::from_file(&binary),
        Err(Error::KekFile { .. })
    ));

    let missing = dir.path().join("missing");
    let msg = Kek::from_file(&missing).unwrap_err().to_string();
    assert!(msg.contains("missing"), "{msg}");
}

// ---------------------------------------------------------------- StoredKey

#[test]
fn stored_key_seal_unseal_round_trip() {
    let (kek, _) = Kek::generate().unwrap();
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let key = SigningKey::generate(alg).unwrap();
        let aad = format!("signing-key/{}", key.kid());
        let stored = StoredKey::seal(
            &key,
            &kek,
            aad.as_bytes(),
            1_700_000_000,
            1_700_000_060,
            KeySource::Generated,
        )
        .unwrap();
        assert_eq!(stored.kid, key.kid());
        assert_eq!(stored.algorithm, alg);
        assert_eq!(stored.kek_id.as_deref(), Some(kek.id().as_str()));
        assert!(stored.has_private_key());

        let bytes = stored.to_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["source"], "generated");
        assert_eq!(json["algorithm"], alg.as_str());
        assert_eq!(json["activates_at_unix"], 1_700_000_060);
        assert!(json["retired_at_unix"].is_null());
        assert_eq!(
            STANDARD
                .decode(json["public_spki_der"].as_str().unwrap())
                .unwrap(),
            key.public_key().spki_der()
        );
        assert!(json["encrypted_private_key"].is_string());
        let text = String::from_utf8(bytes.clone()).unwrap();
        let pkcs8_b64 = STANDARD.encode(&*key.to_pkcs8_der());
        assert!(
            !text.contains(&pkcs8_b64[40..80]),
            "private key stored in clear"
        );

        let back = StoredKey::from_bytes(&bytes).unwrap();
        assert_eq!(back, stored);
        let unsealed = back.unseal(&kek, aad.as_bytes()).unwrap();
        assert_eq!(unsealed.kid(), key.kid());
        let sig = unsealed.sign(b"a.b").unwrap();
        assert!(key.public_key().verify(b"a.b", &sig));
        assert_eq!(&back.public_key().unwrap(), key.public_key());

        // Wrong aad: same KEK id, but authentication fails.
        assert!(matches!(back.unseal(&kek, b"other"), Err(Error::Decrypt)));
    }
}

#[test]
fn stored_key_refuses_wrong_kek() {
    let (kek, _) = Kek::generate().unwrap();
    let (other, _) = Kek::generate().unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let stored = StoredKey::seal(&key, &kek, b"aad", 1, 1, KeySource::File).unwrap();
    let err = stored.unseal(&other, b"aad").unwrap_err();
    assert!(matches!(err, Error::KekMismatch { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "signing key {} was encrypted with key-encryption key {}, not {}",
            key.kid(),
            kek.id(),
            other.id()
        )
    );
    // Without a recorded KEK id the blob is still protected by AES-GCM.
    let mut anonymous = stored.clone();
    anonymous.kek_id = None;
    assert!(matches!(
        anonymous.unseal(&other, b"aad"),
        Err(Error::Decrypt)
    ));
    assert!(anonymous.unseal(&kek, b"aad").is_ok());
}

#[test]
fn stored_key_refuses_swapped_blob_and_tampering() {
    let (kek, _) = Kek::generate().unwrap();
    let a = SigningKey::generate(Algorithm::ES256).unwrap();
    let b = SigningKey::generate(Algorithm::ES256).unwrap();
    let stored_a = StoredKey::seal(&a, &kek, b"k", 1, 1, KeySource::Generated).unwrap();
    let mut stored_b = StoredKey::seal(&b, &kek, b"k", 1, 1, KeySource::Generated).unwrap();
    stored_b.encrypted_private_key = stored_a.encrypted_private_key.clone();
    assert!(matches!(stored_b.unseal(&kek, b"k"), Err(Error::Record(_))));

    let mut tampered = stored_a.clone();
    if let Some(blob) = tampered.encrypted_private_key.as_mut() {
        let last = blob.len() - 1;
        blob[last] ^= 0x80;
    }
    assert!(matches!(tampered.unseal(&kek, b"k"), Err(Error::Decrypt)));

    let mut wrong_kid = stored_a.clone();
    wrong_kid.kid = b.kid().to_owned();
    assert!(matches!(wrong_kid.public_key(), Err(Error::Record(_))));
}

#[test]
fn stored_key_verify_only() {
    let public = PublicKey::from_pem(K8S_KEYID_VECTOR).unwrap().remove(0);
    let stored = StoredKey::verify_only(&public, 10, 10, KeySource::File);
    let bytes = stored.to_bytes().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["kid"], K8S_KEYID_EXPECTED);
    assert_eq!(json["source"], "file");
    assert!(json["encrypted_private_key"].is_null());
    let back = StoredKey::from_bytes(&bytes).unwrap();
    assert_eq!(back.public_key().unwrap(), public);
    let (kek, _) = Kek::generate().unwrap();
    let err = back.unseal(&kek, b"").unwrap_err();
    assert!(matches!(err, Error::NoPrivateKeyStored { .. }));
    assert!(err.to_string().contains(K8S_KEYID_EXPECTED));

    // Optional fields may be absent from older records.
    let minimal = format!(
        r#"{{"kid":"{K8S_KEYID_EXPECTED}","algorithm":"RS256","public_spki_der":"{}","created_at_unix":1,"activates_at_unix":1,"source":"file"}}"#,
        STANDARD.encode(public.spki_der())
    );
    let parsed = StoredKey::from_bytes(minimal.as_bytes()).unwrap();
    assert_eq!(parsed.encrypted_private_key, None);
    assert_eq!(parsed.retired_at_unix, None);
}

#[test]
fn stored_key_malformed_json_error_has_no_content() {
    let err = StoredKey::from_bytes(br#"{"kid": 12, "algorithm": "SECRETALG"}"#).unwrap_err();
    assert!(matches!(err, Error::Record(_)));
    let err = StoredKey::from_bytes(
        br#"{"kid":"k","algorithm":"SECRETALG","public_spki_der":"","created_at_unix":1,"activates_at_unix":1,"source":"file"}"#,
    )
    .unwrap_err();
    assert!(!err.to_string().contains("SECRETALG"), "{err}");
    let debug = format!(
        "{:?}",
        StoredKey::seal(
            &SigningKey::generate(Algorithm::ES256).unwrap(),
            &Kek::generate().unwrap().0,
            b"",
            0,
            0,
            KeySource::Generated
        )
        .unwrap()
    );
    assert!(debug.contains("has_private_key: true"), "{debug}");
}
