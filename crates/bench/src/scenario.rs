//! What one request of a run is. Adding a scenario is one variant here (its
//! prepared request) plus one arm in [`Scenario::call`], and one subcommand in
//! [`crate::cli`].

use std::sync::Arc;

use badge_proto::identity::pod_service_client::PodServiceClient;
use badge_proto::identity::service_account_service_client::ServiceAccountServiceClient;
use badge_proto::identity::{CreatePodRequest, Pod, PodSpec};
use badge_proto::identity::{
    CreateServiceAccountRequest, DeleteServiceAccountRequest, ServiceAccount,
    UpdateServiceAccountRequest,
};
use badge_proto::identity::{GetServiceAccountRequest, ListServiceAccountsRequest};
use badge_proto::meta::ObjectMeta;
use badge_proto::review::access_review_service_client::AccessReviewServiceClient;
use badge_proto::review::token_review_service_client::TokenReviewServiceClient;
use badge_proto::review::{CreateSubjectAccessReviewRequest, CreateTokenReviewRequest};
use badge_proto::token::CreateTokenRequest;
use badge_proto::token::token_service_client::TokenServiceClient;
use prost::bytes::Bytes;
use tonic::Status;
use tonic::transport::Channel;

use crate::proto::EchoRequest;
use crate::proto::echo_service_client::EchoServiceClient;

/// A prepared request, sent again and again.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// `badge.bench.v1.EchoService/Echo`; the answer must carry the same payload.
    Echo { payload: Bytes },
    /// `badge.token.v1.TokenService/CreateToken`.
    CreateToken(CreateTokenRequest),
    /// `badge.identity.v1.ServiceAccountService/GetServiceAccount`.
    GetServiceAccount(GetServiceAccountRequest),
    /// `badge.identity.v1.ServiceAccountService/ListServiceAccounts`; an answer with
    /// fewer than `expect_items` items is an error (a list that silently shrank
    /// would look fast).
    ListServiceAccounts {
        request: ListServiceAccountsRequest,
        expect_items: usize,
    },
    /// `badge.identity.v1.ServiceAccountService/CreateServiceAccount`, a new name
    /// per request (see [`CreateServiceAccounts`]): every request is a write.
    CreateServiceAccount(Arc<CreateServiceAccounts>),
    /// `badge.identity.v1.PodService/CreatePod`, a new name per request (see
    /// [`CreatePods`]): every request is a write through pod admission.
    CreatePod(Arc<CreatePods>),
    /// Create, Update and Delete of service accounts in turn (see
    /// [`ServiceAccountChurn`]): every request is one write of the three kinds.
    ServiceAccountChurn(Arc<ServiceAccountChurn>),
    /// `badge.review.v1.TokenReviewService/CreateTokenReview`; an answer with
    /// `authenticated = false` counts as an `Unauthenticated` error.
    TokenReview(CreateTokenReviewRequest),
    /// `badge.review.v1.AccessReviewService/CreateSubjectAccessReview` (an RBAC
    /// decision); with `expect_allowed`, a denial counts as a `PermissionDenied`
    /// error.
    SubjectAccessReview {
        request: CreateSubjectAccessReviewRequest,
        expect_allowed: bool,
    },
    /// `envoy.service.auth.v3.Authorization/Check` (see [`crate::check`]); with
    /// `expect_allowed`, a denial counts as an error.
    Check {
        request: Box<crate::check::Prepared>,
        expect_allowed: bool,
    },
    /// `istio.v1.auth.IstioCertificateService/CreateCertificate` with the next
    /// pooled CSR and its workload's bearer token (see [`crate::certificates`]); a
    /// chain of fewer than two certificates is an error.
    IstioCertificate(Arc<crate::certificates::IstioPool>),
    /// `badge.certificates.v1.PodCertificateService/CreatePodCertificate` with the
    /// next pooled stub CSR; an answer that is not `Issued` with a chain is an
    /// error.
    PodCertificate(Arc<crate::certificates::PodPool>),
}

impl Scenario {
    /// An echo of `bytes` bytes.
    pub fn echo(bytes: usize) -> Scenario {
        Scenario::Echo {
            payload: Bytes::from(vec![0x5a; bytes]),
        }
    }

    /// The name reports use.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Echo { .. } => "echo",
            Scenario::CreateToken(_) => "create-token",
            Scenario::GetServiceAccount(_) => "get-service-account",
            Scenario::ListServiceAccounts { .. } => "list-service-accounts",
            Scenario::CreateServiceAccount(_) => "create-service-account",
            Scenario::CreatePod(_) => "create-pod",
            Scenario::ServiceAccountChurn(_) => "service-account-churn",
            Scenario::TokenReview(_) => "token-review",
            Scenario::SubjectAccessReview { .. } => "subject-access-review",
            Scenario::Check { .. } => "check",
            Scenario::IstioCertificate(_) => "istio-certificate",
            Scenario::PodCertificate(_) => "pod-certificate",
        }
    }

    /// The encoded size of the request message (bytes), so an echo ceiling can be
    /// measured with the same payload size; `None` for pooled scenarios, whose
    /// requests differ.
    pub fn request_size(&self) -> Option<usize> {
        use prost::Message as _;
        Some(match self {
            Scenario::Echo { payload } => EchoRequest {
                payload: payload.clone(),
            }
            .encoded_len(),
            Scenario::CreateToken(r) => r.encoded_len(),
            Scenario::GetServiceAccount(r) => r.encoded_len(),
            Scenario::ListServiceAccounts { request, .. } => request.encoded_len(),
            Scenario::CreateServiceAccount(c) => c.request(0).encoded_len(),
            Scenario::CreatePod(c) => c.request(0).encoded_len(),
            Scenario::ServiceAccountChurn(c) => c.creates.request(0).encoded_len(),
            Scenario::TokenReview(r) => r.encoded_len(),
            Scenario::SubjectAccessReview { request, .. } => request.encoded_len(),
            Scenario::Check { request, .. } => request.encoded_len(),
            Scenario::IstioCertificate(_) | Scenario::PodCertificate(_) => return None,
        })
    }

    /// Sends one request on `channel`; any non-OK status is the error.
    pub async fn call(&self, channel: &Channel) -> Result<(), Status> {
        let channel = channel.clone();
        match self {
            Scenario::Echo { payload } => {
                let reply = EchoServiceClient::new(channel)
                    .echo(EchoRequest {
                        payload: payload.clone(),
                    })
                    .await?;
                if reply.get_ref().payload != *payload {
                    return Err(Status::data_loss("echo returned a different payload"));
                }
            }
            Scenario::CreateToken(request) => {
                TokenServiceClient::new(channel)
                    .create_token(request.clone())
                    .await?;
            }
            Scenario::GetServiceAccount(request) => {
                ServiceAccountServiceClient::new(channel)
                    .get_service_account(request.clone())
                    .await?;
            }
            Scenario::ListServiceAccounts {
                request,
                expect_items,
            } => {
                let reply = ServiceAccountServiceClient::new(channel)
                    .list_service_accounts(request.clone())
                    .await?;
                let got = reply.get_ref().service_accounts.len();
                if got < *expect_items {
                    return Err(Status::data_loss(format!(
                        "the list had {got} items, expected at least {expect_items}"
                    )));
                }
            }
            Scenario::CreateServiceAccount(creates) => {
                ServiceAccountServiceClient::new(channel)
                    .create_service_account(creates.next())
                    .await?;
            }
            Scenario::CreatePod(creates) => {
                PodServiceClient::new(channel)
                    .create_pod(creates.next())
                    .await?;
            }
            Scenario::ServiceAccountChurn(churn) => churn.call(channel).await?,
            Scenario::TokenReview(request) => {
                let reply = TokenReviewServiceClient::new(channel)
                    .create_token_review(request.clone())
                    .await?;
                let status = reply.into_inner().status.unwrap_or_default();
                if !status.authenticated {
                    // The reason only: never the token.
                    return Err(Status::unauthenticated(format!(
                        "token not authenticated: {}",
                        status.error
                    )));
                }
            }
            Scenario::SubjectAccessReview {
                request,
                expect_allowed,
            } => {
                let reply = AccessReviewServiceClient::new(channel)
                    .create_subject_access_review(request.clone())
                    .await?;
                let status = reply.into_inner().status.unwrap_or_default();
                if *expect_allowed && !status.allowed {
                    return Err(Status::permission_denied(format!(
                        "not allowed: {}",
                        status.reason
                    )));
                }
            }
            Scenario::Check {
                request,
                expect_allowed,
            } => crate::check::call(channel, request, *expect_allowed).await?,
            Scenario::IstioCertificate(pool) => pool.call(channel).await?,
            Scenario::PodCertificate(pool) => pool.call(channel).await?,
        }
        Ok(())
    }
}

/// The requests of the create-service-account scenario: `<prefix><n>` in one
/// namespace, `n` counting up across every connection of the run (one shared
/// counter, so no two requests of a run ever ask for the same name and an
/// `AlreadyExists` is a real error, not the benchmark colliding with itself).
#[derive(Debug)]
pub struct CreateServiceAccounts {
    namespace: String,
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl CreateServiceAccounts {
    pub fn new(namespace: String, prefix: String) -> CreateServiceAccounts {
        CreateServiceAccounts {
            namespace,
            prefix,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The request for the `n`th name.
    pub fn request(&self, n: u64) -> CreateServiceAccountRequest {
        CreateServiceAccountRequest {
            service_account: Some(ServiceAccount {
                metadata: Some(ObjectMeta {
                    name: format!("{}{n}", self.prefix),
                    namespace: self.namespace.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// The request for a name no request of this run has used.
    fn next(&self) -> CreateServiceAccountRequest {
        // Relaxed: the counter only has to hand out distinct numbers.
        self.request(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// The requests of the create-pod scenario: pods `<prefix><n>` of one service
/// account in one namespace, `n` counting up across every connection (as for
/// [`CreateServiceAccounts`]). Admission fills in the token volume; the service
/// account must exist.
#[derive(Debug)]
pub struct CreatePods {
    namespace: String,
    service_account: String,
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl CreatePods {
    pub fn new(namespace: String, service_account: String, prefix: String) -> CreatePods {
        CreatePods {
            namespace,
            service_account,
            prefix,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The request for the `n`th name.
    pub fn request(&self, n: u64) -> CreatePodRequest {
        CreatePodRequest {
            pod: Some(Pod {
                metadata: Some(ObjectMeta {
                    name: format!("{}{n}", self.prefix),
                    namespace: self.namespace.clone(),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: self.service_account.clone(),
                    ..Default::default()
                }),
            }),
        }
    }

    fn next(&self) -> CreatePodRequest {
        // Relaxed: the counter only has to hand out distinct numbers.
        self.request(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// The requests of the service-account-churn scenario: request n of the run
/// (counted across every connection) updates an account an earlier request
/// created when n % 3 == 1, deletes one an earlier request updated when
/// n % 3 == 2, and otherwise (or when no account is waiting for that step)
/// creates a new one. So every request is exactly one write and the mix settles
/// at a third of each, with optimistic concurrency in play: the update and the
/// delete send the resource_version (and the delete the uid) of the previous
/// answer, so an answer the server got wrong shows up as a Conflict. An account
/// is taken off its queue while a request works on it: no two requests of a run
/// touch the same account at once.
#[derive(Debug)]
pub struct ServiceAccountChurn {
    creates: CreateServiceAccounts,
    step: std::sync::atomic::AtomicU64,
    /// Created, waiting for their update.
    created: std::sync::Mutex<std::collections::VecDeque<ServiceAccount>>,
    /// Updated, waiting for their delete.
    updated: std::sync::Mutex<std::collections::VecDeque<ServiceAccount>>,
}

impl ServiceAccountChurn {
    pub fn new(namespace: String, prefix: String) -> ServiceAccountChurn {
        ServiceAccountChurn {
            creates: CreateServiceAccounts::new(namespace, prefix),
            step: std::sync::atomic::AtomicU64::new(0),
            created: Default::default(),
            updated: Default::default(),
        }
    }

    async fn call(&self, channel: Channel) -> Result<(), Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut client = ServiceAccountServiceClient::new(channel);
        let step = self.step.fetch_add(1, Relaxed);
        let take = |queue: &std::sync::Mutex<std::collections::VecDeque<ServiceAccount>>| {
            // A poisoned queue only means another task panicked mid-push.
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()
        };
        let put = |queue: &std::sync::Mutex<std::collections::VecDeque<ServiceAccount>>,
                   sa: ServiceAccount| {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_back(sa);
        };
        if step % 3 == 1
            && let Some(mut sa) = take(&self.created)
        {
            let meta = sa.metadata.get_or_insert_with(Default::default);
            meta.labels
                .insert("bench.badge.dev/step".into(), step.to_string());
            let updated = client
                .update_service_account(UpdateServiceAccountRequest {
                    service_account: Some(sa),
                })
                .await?;
            put(&self.updated, updated.into_inner());
            return Ok(());
        }
        if step % 3 == 2
            && let Some(sa) = take(&self.updated)
        {
            let meta = sa.metadata.unwrap_or_default();
            client
                .delete_service_account(DeleteServiceAccountRequest {
                    namespace: meta.namespace,
                    name: meta.name,
                    resource_version: meta.resource_version,
                    uid: meta.uid,
                })
                .await?;
            return Ok(());
        }
        let created = client.create_service_account(self.creates.next()).await?;
        put(&self.created, created.into_inner());
        Ok(())
    }
}
