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
/// A review carries a token someone else presented, of any size: requests up to
/// kube-apiserver's request-body limit (3 MiB) are read, so an oversized token gets
/// Kubernetes' "token is too long" answer rather than a transport error.
pub const METHODS: MethodTable = &[(
    "/badge.review.v1.TokenReviewService/CreateTokenReview",
    MethodRule::new("create", "authentication.k8s.io", "tokenreviews")
        .max_request(REVIEW_MAX_REQUEST),
)];

/// kube-apiserver's limit on a request body (`MaxRequestBodyBytes`).
pub const REVIEW_MAX_REQUEST: usize = 3 * 1024 * 1024;

/// Kubernetes' text for a review without a token (HTTP 400).
pub const TOKEN_REQUIRED: &str = "token is required for TokenReview in authentication";

#[derive(Clone)]
pub struct ReviewService {
    pub reviewer: Arc<Reviewer>,
}

/// The status of a finished review, as the proto has it (the report's strings move
/// into the answer).
pub fn review_status(report: ReviewReport) -> pb::TokenReviewStatus {
    match report.outcome {
        Ok(a) => authenticated(a),
        Err(error) => pb::TokenReviewStatus {
            authenticated: false,
            error: error.to_string(),
            ..Default::default()
        },
    }
}

fn authenticated(a: Authenticated) -> pb::TokenReviewStatus {
    pb::TokenReviewStatus {
        authenticated: true,
        user: Some(pb::UserInfo {
            username: a.user.username,
            uid: a.user.uid,
            groups: a.user.groups,
            extra: a
                .user
                .extra
                .into_iter()
                .map(|(k, items)| (k, pb::ExtraValue { items }))
                .collect(),
        }),
        audiences: a.audiences,
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
        let (_, extensions, message) = req.into_parts();
        let requester = extensions.get::<Caller>().map_or("", |c| c.user.as_str());
        let spec = message.spec.unwrap_or_default();
        if spec.token.is_empty() {
            return Err(status(Error::invalid("spec.token", TOKEN_REQUIRED)));
        }
        let mut report = self
            .reviewer
            .review(&spec.token, &spec.audiences, Via::Grpc, requester)
            .await
            .map_err(status)?;
        // Kubernetes returns warnings as `Warning` headers.
        let warnings = match &mut report.outcome {
            Ok(a) => std::mem::take(&mut a.warnings),
            Err(_) => Vec::new(),
        };
        let review = pb::TokenReview {
            spec: Some(pb::TokenReviewSpec {
                token: String::new(),
                audiences: spec.audiences,
            }),
            status: Some(review_status(report)),
        };
        Ok(status::with_warnings(review, warnings))
    }
}
