//! The gRPC edge: `SignatureService` as the wire sees it, adapted onto the use cases.
//!
//! - [`SignatureApi`]: the generated trait, each RPC a conversion, a use case and a
//!   conversion back ([`conversions`]);
//! - [`layers`]: what every call goes through first (span and log line, metrics, the caller
//!   check, admission, the typed size cap), as tower layers;
//! - [`propagation`]: the W3C trace context across gRPC metadata;
//! - [`refusal_log`]: the `refused` log line, repeats folded to one a second.

pub mod conversions;
pub mod layers;
pub mod propagation;
pub mod refusal_log;

use std::sync::Arc;

use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::audit::EventKind;
use crate::proto;
use crate::proto::signature_service_server::SignatureService;
use crate::refusal::Refusal;
use crate::service::UseCases;
use crate::store::Store;

pub use self::layers::MAX_REQUEST_BYTES;

/// `SignatureService` over the use cases.
pub struct SignatureApi<S> {
    use_cases: Arc<UseCases<S>>,
}

impl<S: Store> SignatureApi<S> {
    /// The gRPC service of `use_cases` (shared with the background work of the upload
    /// lifecycle).
    pub fn new(use_cases: Arc<UseCases<S>>) -> SignatureApi<S> {
        SignatureApi { use_cases }
    }
}

/// The stream WatchEvents answers with.
pub type EventProtoStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Event, Status>> + Send>>;

/// Event kinds from the wire; unknown ones are refused rather than silently dropped.
fn kinds_from_proto(kinds: &[i32]) -> Result<Vec<EventKind>, Refusal> {
    kinds
        .iter()
        .map(|&k| {
            proto::EventKind::try_from(k)
                .ok()
                .and_then(|k| EventKind::try_from(k).ok())
                .ok_or_else(|| Refusal::invalid(format!("unknown event kind {k}")))
        })
        .collect()
}

#[tonic::async_trait]
impl<S: Store> SignatureService for SignatureApi<S> {
    type WatchEventsStream = EventProtoStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<EventProtoStream>, Status> {
        let req = request.into_inner();
        let kinds = kinds_from_proto(&req.kinds)?;
        let events = self.use_cases.watch(&req.start_id, kinds).await?;
        let stream = events.map(|(id, e)| Ok(conversions::event_to_proto(id, e)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn issue_signature(
        &self,
        request: Request<proto::IssueSignatureRequest>,
    ) -> Result<Response<proto::IssueSignatureResponse>, Status> {
        let issued = self.use_cases.issue(request.into_inner().into()).await?;
        Ok(Response::new(issued.into()))
    }

    async fn verify_signature(
        &self,
        request: Request<proto::VerifySignatureRequest>,
    ) -> Result<Response<proto::VerifySignatureResponse>, Status> {
        let verified = self
            .use_cases
            .verify(&request.into_inner().signature)
            .await?;
        Ok(Response::new(verified.into()))
    }

    async fn consume_signature(
        &self,
        request: Request<proto::ConsumeSignatureRequest>,
    ) -> Result<Response<proto::ConsumeSignatureResponse>, Status> {
        let consumed = self.use_cases.consume(request.into_inner().into()).await?;
        Ok(Response::new(consumed.into()))
    }

    async fn revoke_signature(
        &self,
        request: Request<proto::RevokeSignatureRequest>,
    ) -> Result<Response<proto::RevokeSignatureResponse>, Status> {
        let previous = self
            .use_cases
            .revoke(&request.into_inner().signature)
            .await?;
        Ok(Response::new(previous.into()))
    }

    async fn list_signatures(
        &self,
        request: Request<proto::ListSignaturesRequest>,
    ) -> Result<Response<proto::ListSignaturesResponse>, Status> {
        let req = request.into_inner().try_into()?;
        let listing = self.use_cases.list_signatures(req).await?;
        Ok(Response::new(listing.into()))
    }

    async fn revoke_subject(
        &self,
        request: Request<proto::RevokeSubjectRequest>,
    ) -> Result<Response<proto::RevokeSubjectResponse>, Status> {
        let revoked = self
            .use_cases
            .revoke_subject(&request.into_inner().subject)
            .await?;
        Ok(Response::new(proto::RevokeSubjectResponse { revoked }))
    }

    async fn complete_upload(
        &self,
        request: Request<proto::CompleteUploadRequest>,
    ) -> Result<Response<proto::CompleteUploadResponse>, Status> {
        let completed = self
            .use_cases
            .complete_upload(request.into_inner().into())
            .await?;
        Ok(Response::new(completed.into()))
    }

    async fn pull_events(
        &self,
        request: Request<proto::PullEventsRequest>,
    ) -> Result<Response<proto::PullEventsResponse>, Status> {
        let req = request.into_inner();
        let notifications = self
            .use_cases
            .pull_events(req.max, req.wait_seconds)
            .await?;
        Ok(Response::new(proto::PullEventsResponse {
            notifications: notifications.into_iter().map(Into::into).collect(),
        }))
    }

    async fn confirm_events(
        &self,
        request: Request<proto::ConfirmEventsRequest>,
    ) -> Result<Response<proto::ConfirmEventsResponse>, Status> {
        let confirmed = self
            .use_cases
            .confirm_events(&request.into_inner().handles)
            .await?;
        Ok(Response::new(proto::ConfirmEventsResponse { confirmed }))
    }
}
