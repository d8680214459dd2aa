//! Measures one-core signing and verification rates of pre-parsed keys:
//! `cargo run --release -p badge-keys --example sign_rate`.
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Calls `f` for three seconds; calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(3) {
        f();
        n += 1;
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn main() {
    for alg in [badge_keys::Algorithm::RS256, badge_keys::Algorithm::ES256] {
        let Ok(fresh) = badge_keys::SigningKey::generate(alg) else {
            return;
        };
        // As the issuer holds it: unsealed from PKCS#8.
        let Ok(key) = badge_keys::SigningKey::from_pkcs8_der(&fresh.to_pkcs8_der()) else {
            return;
        };
        let header = key.jwt_header(false);
        let payload = br#"{"aud":["https://badge.example"],"exp":1795913462,"iat":1795909862,"iss":"https://badge.example","jti":"14adc389-9619-409b-a490-b1ffed8c2fe0","kubernetes.io":{"namespace":"default","serviceaccount":{"name":"default","uid":"4d2cfa10-8f7f-4e50-82a6-3fdee88be0ab"}},"nbf":1795909862,"sub":"system:serviceaccount:default:default"}"#;
        let signs = rate(|| {
            let _ = key.sign_jwt(&header, payload);
        });
        println!("{alg}: {signs:.0} signs/s on one core");
        let Ok(token) = key.sign_jwt(&header, payload) else {
            return;
        };
        let Some((input, signature)) = token.rsplit_once('.') else {
            return;
        };
        let Ok(signature) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature)
        else {
            return;
        };
        let public = key.public_key();
        let verifies = rate(|| {
            let _ = public.verify(input.as_bytes(), &signature);
        });
        println!("{alg}: {verifies:.0} verifications/s on one core");
    }
}
