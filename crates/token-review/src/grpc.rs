//! `badge.review.v1.TokenReviewService`.

use std::sync::Arc;

use badge_core::Error;
use badge_core::review::{Authenticated, ReviewReport};
use badge_proto::review::{self as pb, token_review_service_server::TokenReviewService};
use badge_runtime::{Caller, MethodRule, MethodTable, status};
use tonic::{Request, Response, Status};

use badge_access::{Reviewer, Via};

/// Every method → what it does in RBAC terms: Kubernetes' `create` on
/// `tokenreviews` in `authentication.k8s.io` (granted by `system:auth-delegator`).
pub const METHODS: MethodTable = &[(
    "/badge.review.v1.TokenReviewService/CreateTokenReview",
    MethodRule::new("create", "authentication.k8s.io", "tokenreviews"),
)];

/// Kubernetes' text for a review without a token (HTTP 400).
pub const TOKEN_REQUIRED: &str = "token is required for TokenReview in authentication";

#[derive(Clone)]
pub struct ReviewService {
    pub reviewer: Arc<Reviewer>,
}

/// The status of a finished review, as the proto has it.
pub fn review_status(report: &ReviewReport) -> pb::TokenReviewStatus {
    match &report.outcome {
        Ok(a) => authenticated(a),
        Err(e) => pb::TokenReviewStatus {
            authenticated: false,
            error: e.clone(),
            ..Default::default()
        },
    }
}

fn authenticated(a: &Authenticated) -> pb::TokenReviewStatus {
    pb::TokenReviewStatus {
        authenticated: true,
        user: Some(pb::UserInfo {
            username: a.user.username.clone(),
            uid: a.user.uid.clone(),
            groups: a.user.groups.clone(),
            extra: a
                .user
                .extra
                .iter()
                .map(|(k, v)| (k.clone(), pb::ExtraValue { items: v.clone() }))
                .collect(),
        }),
        audiences: a.audiences.clone(),
        error: String::new(),
        stale: a.stale,
    }
}

#[tonic::async_trait]
impl TokenReviewService for ReviewService {
    /// A token that fails is an OK answer with `authenticated = false` and
    /// Kubernetes' error text; only an empty token is INVALID_ARGUMENT (and
    /// UNAVAILABLE while the index loads). The response's `spec` carries the
    /// audiences asked for but never the token.
    async fn create_token_review(
        &self,
        req: Request<pb::CreateTokenReviewRequest>,
    ) -> Result<Response<pb::TokenReview>, Status> {
        let requester = req
            .extensions()
            .get::<Caller>()
            .map(|c| c.user.clone())
            .unwrap_or_default();
        let spec = req.into_inner().spec.unwrap_or_default();
        if spec.token.is_empty() {
            return Err(status(Error::invalid("spec.token", TOKEN_REQUIRED)));
        }
        let report = self
            .reviewer
            .review(&spec.token, &spec.audiences, Via::Grpc, &requester)
            .await
            .map_err(status)?;
        let mut out = Response::new(pb::TokenReview {
            spec: Some(pb::TokenReviewSpec {
                token: String::new(),
                audiences: spec.audiences,
            }),
            status: Some(review_status(&report)),
        });
        // Kubernetes returns warnings as `Warning` headers.
        if let Ok(a) = &report.outcome {
            for w in &a.warnings {
                if let Ok(v) = w.parse() {
                    out.metadata_mut().append("warning", v);
                }
            }
        }
        Ok(out)
    }
}
