//! Measures one-core signing rates of pre-parsed keys: `cargo run --release -p badge-keys --example sign_rate`.
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
        let start = std::time::Instant::now();
        let mut n = 0u32;
        while start.elapsed() < std::time::Duration::from_secs(3) {
            let _ = key.sign_jwt(&header, payload);
            n += 1;
        }
        println!(
            "{alg}: {:.0} signs/s on one core",
            f64::from(n) / start.elapsed().as_secs_f64()
        );
    }
}
