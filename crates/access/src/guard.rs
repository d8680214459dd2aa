//! [`Guard`]: the [`Authorizer`] every Badge service puts in its auth layer.
//!
//! - `system:masters` may do everything (Kubernetes' superuser group; the dev
//!   PKI's admin certificate is in it).
//! - Everyone else is decided by RBAC over the in-memory policy ([`RbacPolicy`]);
//!   until the index has loaded once, calls are UNAVAILABLE rather than denied, so
//!   a starting replica never answers "forbidden" for a caller who is allowed.
//! - A bearer token is reviewed exactly as TokenReview reviews it (same index, same
//!   keys, the API audiences); the caller is the service account it stands for,
//!   with its groups and extra. A token that fails is UNAUTHENTICATED with
//!   Kubernetes' review error text (never the token).

use std::sync::Arc;

use badge_core::Error;
use badge_core::rbac::{Attributes, UserInfo, allows, authorize};
use badge_core::review::{Authenticated, INVALID_BEARER_TOKEN};
use badge_runtime::{Authorizer, Caller, forbidden, status};
use futures_util::future::BoxFuture;
use tonic::Status;

use crate::policy::RbacPolicy;
use crate::reviewer::{Reviewer, Via};

use badge_runtime::pki::MASTERS_GROUP;

pub struct Guard {
    policy: RbacPolicy,
    /// `None`: this service accepts no bearer tokens (no issuers configured).
    reviewer: Option<Arc<Reviewer>>,
}

impl Guard {
    pub fn new(policy: RbacPolicy, reviewer: Option<Arc<Reviewer>>) -> Self {
        Guard { policy, reviewer }
    }

    pub fn policy(&self) -> &RbacPolicy {
        &self.policy
    }

    /// [`Authorizer::authenticate_token`], also handing back what the review
    /// established (expiry, credential id, legacy): a Watch keeps its caller's
    /// token and re-reviews it as the objects behind it change.
    pub async fn authenticate_bearer(
        &self,
        token: &str,
    ) -> Result<(Caller, Authenticated), Status> {
        let Some(reviewer) = &self.reviewer else {
            return Err(status(Error::Unauthenticated(
                "bearer tokens are not accepted by this server (no token issuers configured): present a client certificate".into(),
            )));
        };
        let report = reviewer
            .review(token, &[], Via::Bearer, "")
            .await
            .map_err(status)?;
        match report.outcome {
            Ok(a) => Ok((
                Caller {
                    user: a.user.username.clone(),
                    uid: a.user.uid.clone(),
                    groups: a.user.groups.clone(),
                    extra: a.user.extra.clone(),
                },
                a,
            )),
            Err(e) => Err(status(Error::Unauthenticated(format!(
                "{INVALID_BEARER_TOKEN}: {e}"
            )))),
        }
    }

    /// RBAC's decision for `user` (masters included), for callers that need more
    /// than yes/no (escalation checks, SubjectAccessReview).
    pub fn decide(&self, user: &UserInfo, attrs: &Attributes) -> badge_core::rbac::Decision {
        if user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return badge_core::rbac::Decision {
                allowed: true,
                reason: format!("{MASTERS_GROUP} may do everything"),
            };
        }
        authorize(&*self.policy.snapshot(), user, attrs)
    }

    /// Whether RBAC allows `attrs` to `user` (masters included): [`Guard::decide`]'s
    /// answer without its reason, for per-request paths.
    pub fn allows(&self, user: &UserInfo, attrs: &Attributes) -> bool {
        user.groups.iter().any(|g| g == MASTERS_GROUP)
            || allows(&*self.policy.snapshot(), user, attrs)
    }
}

/// The RBAC user of a caller.
pub fn user_info(caller: &Caller) -> UserInfo {
    UserInfo {
        name: caller.user.clone(),
        groups: caller.groups.clone(),
    }
}

impl Authorizer for Guard {
    fn authorize(&self, caller: &Caller, attrs: &Attributes) -> Result<(), Status> {
        if caller.in_group(MASTERS_GROUP) {
            return Ok(());
        }
        if !self.policy.is_loaded() {
            return Err(status(Error::Unavailable(
                "authorization policy is still loading from the store: retry".into(),
            )));
        }
        let policy = self.policy.snapshot();
        let user = user_info(caller);
        // The reason is only built for a denial (or when traced): on the allow path
        // every RPC takes, formatting it cost more than the decision.
        if allows(&*policy, &user, attrs) {
            if tracing::enabled!(tracing::Level::TRACE) {
                let reason = authorize(&*policy, &user, attrs).reason;
                tracing::trace!(user = %caller.user, reason = %reason, "allowed");
            }
            Ok(())
        } else {
            Err(forbidden(
                caller,
                attrs,
                &authorize(&*policy, &user, attrs).reason,
            ))
        }
    }

    fn authenticate_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, Status>> {
        Box::pin(async move { self.authenticate_bearer(token).await.map(|(c, _)| c) })
    }
}
