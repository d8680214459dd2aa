//! The two authenticators and their union (§3.1–3.6): what runs on every review
//! against the settings, the clock and the live objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::claims::{BoundClaims, LegacyClaims, Private, PublicClaims};
use super::jws::{Jws, Parsed, parse};
use super::*;
use crate::clock::last_used_needs_update;
use crate::names::{validate_dns_label, validate_dns_subdomain};
use crate::token::{LEGACY_ISSUER, credential_id, unix_seconds};
use crate::user::{SERVICE_ACCOUNT_USERNAME_PREFIX, service_account_username};

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

pub(super) struct Context<'a> {
    pub(super) token: &'a str,
    pub(super) requested_audiences: &'a [String],
    pub(super) settings: &'a ReviewSettings,
    pub(super) verifier: &'a dyn SignatureVerifier,
    pub(super) lookup: &'a dyn ObjectLookup,
    pub(super) now: SystemTime,
    pub(super) annotations: Vec<(String, String)>,
    pub(super) legacy_secret: Option<(String, String)>,
}

fn not_found(resource: &'static str, name: &str) -> ReviewError {
    ReviewError::NotFound {
        resource,
        name: name.to_owned(),
    }
}

fn mismatch(actual: &str, claim: &str) -> UidMismatch {
    UidMismatch {
        actual: actual.to_owned(),
        claim: claim.to_owned(),
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

    pub(super) fn run(&mut self) -> Result<Authenticated, ReviewError> {
        let max = match self.settings.max_token_len {
            0 => DEFAULT_MAX_TOKEN_LEN,
            n => n,
        };
        if self.token.len() > max {
            return Err(ReviewError::TooLong {
                len: self.token.len(),
                max,
            });
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
            Parsed::NotMine => return Err(ReviewError::InvalidBearerToken),
            Parsed::Malformed => return Err(ReviewError::MalformedToken),
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
        // None claimed it: "invalid bearer token"; one failure prints as itself.
        Err(ReviewError::aggregate(errors))
    }

    /// §3.2 step 3 and the claim decoding for one authenticator: what depends on
    /// the token's bytes alone (see [`VerifiedToken`]).
    fn verify_and_decode(
        &self,
        which: Authenticator,
        jws: &Jws,
    ) -> Result<VerifiedToken, ReviewError> {
        // Step 3: signature.
        let alg = jws.alg.as_str();
        if alg.is_empty()
            || alg.eq_ignore_ascii_case("none")
            || alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS"))
        {
            return Err(ReviewError::UnsupportedAlgorithm);
        }
        if jws.crit {
            return Err(ReviewError::UnsupportedCriticalHeader);
        }
        self.verifier
            .verify(&jws.kid, alg, jws.signing_input, &jws.signature)?;

        let public = PublicClaims::parse(&jws.claims).map_err(|_| ReviewError::MalformedToken)?;
        let private = match which {
            Authenticator::Legacy => Private::Legacy(
                LegacyClaims::parse(&jws.claims).map_err(|_| ReviewError::MalformedToken)?,
            ),
            Authenticator::Bound => Private::Bound(
                BoundClaims::parse(&jws.claims).map_err(|_| ReviewError::MalformedToken)?,
            ),
        };

        Ok(VerifiedToken {
            which,
            public,
            private,
        })
    }

    /// §3.2 steps 4–7: what depends on the settings, the clock and the objects,
    /// run on every review.
    fn check(&mut self, v: &VerifiedToken) -> Result<Authenticated, ReviewError> {
        let public = &v.public;
        // Step 4: issuer re-check.
        let issuer_ok = match v.which {
            Authenticator::Legacy => public.iss == LEGACY_ISSUER,
            Authenticator::Bound => self.settings.issuers.contains(&public.iss),
        };
        if !issuer_ok {
            return Err(ReviewError::InvalidIssuer(public.iss.clone()));
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
            return Err(ReviewError::InvalidAudiences {
                token: token_audiences,
                requested: requested.to_vec(),
            });
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
    ) -> Result<Authenticated, ReviewError> {
        let now = unix_nanos(self.now);
        let leeway = duration_nanos(self.settings.leeway);
        if let Some(nbf) = public.nbf
            && now.saturating_add(leeway) < seconds_nanos(nbf)
        {
            return Err(ReviewError::NotValidYet);
        }
        if let Some(exp) = public.exp
            && now.saturating_sub(leeway) > seconds_nanos(exp)
        {
            return Err(ReviewError::Expired);
        }
        if let Some(iat) = public.iat
            && now.saturating_add(leeway) < seconds_nanos(iat)
        {
            return Err(ReviewError::IssuedInFuture);
        }

        let deletion_leeway = duration_nanos(self.settings.deletion_leeway);
        let ns = private.namespace.as_str();
        let sa = &private.service_account;
        let account = self
            .lookup
            .service_account(ns, &sa.name)
            .ok_or_else(|| not_found("serviceaccounts", &sa.name))?;
        if account.uid != sa.uid {
            return Err(ReviewError::ServiceAccountUid(mismatch(
                &account.uid,
                &sa.uid,
            )));
        }
        if deleted(account.deletion_timestamp, deletion_leeway, now) {
            return Err(ReviewError::ServiceAccountDeleted {
                namespace: ns.to_owned(),
                name: sa.name.clone(),
            });
        }

        if let Some(r) = &private.secret {
            let secret = self
                .lookup
                .secret(ns, &r.name)
                .ok_or(ReviewError::Invalidated)?;
            if secret.uid != r.uid {
                return Err(ReviewError::SecretUid(mismatch(&secret.uid, &r.uid)));
            }
            if deleted(secret.deletion_timestamp, deletion_leeway, now) {
                return Err(ReviewError::Invalidated);
            }
        }

        let (mut pod_name, mut pod_uid) = ("", "");
        if let Some(r) = &private.pod {
            let pod = self
                .lookup
                .pod(ns, &r.name)
                .ok_or(ReviewError::Invalidated)?;
            if pod.uid != r.uid {
                return Err(ReviewError::PodUid(mismatch(&pod.uid, &r.uid)));
            }
            if deleted(pod.deletion_timestamp, deletion_leeway, now) {
                return Err(ReviewError::Invalidated);
            }
            (pod_name, pod_uid) = (r.name.as_str(), r.uid.as_str());
        }

        let (mut node_name, mut node_uid) = ("", "");
        if let Some(r) = &private.node {
            if private.pod.is_none() {
                // Node-bound: the node must be live. Pod-bound: informational only.
                let node = self.lookup.node(&r.name).ok_or(ReviewError::Invalidated)?;
                if node.uid != r.uid {
                    return Err(ReviewError::NodeUid(mismatch(&node.uid, &r.uid)));
                }
                if deleted(node.deletion_timestamp, deletion_leeway, now) {
                    return Err(ReviewError::Invalidated);
                }
            }
            (node_name, node_uid) = (r.name.as_str(), r.uid.as_str());
        }

        if !public.jti.is_empty() && self.lookup.revoked(&public.jti) {
            return Err(ReviewError::Revoked);
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
    ) -> Result<Authenticated, ReviewError> {
        if public.sub.is_empty() {
            return Err(ReviewError::MissingClaim("sub"));
        }
        let ns = private.namespace.as_str();
        if ns.is_empty() {
            return Err(ReviewError::MissingClaim("namespace"));
        }
        let secret_name = private.secret_name.as_str();
        if secret_name.is_empty() {
            return Err(ReviewError::MissingClaim("secretName"));
        }
        let sa_name = private.sa_name.as_str();
        if sa_name.is_empty() {
            return Err(ReviewError::MissingClaim("serviceAccountName"));
        }
        let sa_uid = private.sa_uid.as_str();
        if sa_uid.is_empty() {
            return Err(ReviewError::MissingClaim("serviceAccountUID"));
        }
        match split_username(&public.sub) {
            Some((sub_ns, sub_name)) if sub_ns == ns && sub_name == sa_name => {}
            _ => return Err(ReviewError::InvalidSubject),
        }

        // 1. The Secret.
        let secret = self
            .lookup
            .secret(ns, secret_name)
            .ok_or(ReviewError::LegacyInvalidated)?;
        if secret.deletion_timestamp.is_some() {
            return Err(ReviewError::LegacyInvalidated);
        }
        // 2. The token matches the Secret's copy.
        let presented = token_sha256(self.token.as_bytes());
        let matches = secret
            .token_sha256
            .as_ref()
            .is_some_and(|stored| constant_time_eq(stored, &presented));
        if !matches {
            return Err(ReviewError::LegacyMismatch);
        }
        // 3. The service account.
        let account = self
            .lookup
            .service_account(ns, sa_name)
            .ok_or_else(|| not_found("serviceaccounts", sa_name))?;
        if account.deletion_timestamp.is_some() {
            return Err(ReviewError::LegacyServiceAccountDeleted {
                namespace: ns.to_owned(),
                name: sa_name.to_owned(),
            });
        }
        if account.uid != sa_uid {
            return Err(ReviewError::LegacyServiceAccountUid(mismatch(
                &account.uid,
                sa_uid,
            )));
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
            return Err(ReviewError::MarkedInvalid {
                namespace: ns.to_owned(),
                secret: secret_name.to_owned(),
                service_account: sa_name.to_owned(),
            });
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::utc_date;
    use crate::review::testing::*;

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
        assert_eq!(
            report.outcome.map_err(|e| e.to_string()),
            Err(invalid_since.to_owned())
        );
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
