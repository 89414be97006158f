//! Conversions between the wire types (`proto`) and the use cases' types, in one place.

use crate::audit::{Event, EventKind};
use crate::proto;
use crate::refusal::Refusal;
use crate::service::{
    CompleteRequest, CompletedUpload, ConsumeRequest, Consumed, IssueRequest, Issued, ListRequest,
    Listing, Notification, SignatureState, Summary, Verified,
};
use crate::signature::{Claims, UploadPolicy};

/// Empty strings mean absent on the wire.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<proto::UploadPolicy> for UploadPolicy {
    fn from(p: proto::UploadPolicy) -> UploadPolicy {
        UploadPolicy {
            class_id: p.class_id,
            procedure: non_empty(p.procedure),
            task_priority: p.task_priority,
            task_notify_mode: non_empty(p.task_notify_mode),
            source_context: non_empty(p.source_context),
            session_context: non_empty(p.session_context),
            vod_sub_app_id: p.vod_sub_app_id,
            storage_region: non_empty(p.storage_region),
            max_file_size: p.max_file_size,
        }
    }
}

impl From<UploadPolicy> for proto::UploadPolicy {
    fn from(p: UploadPolicy) -> proto::UploadPolicy {
        proto::UploadPolicy {
            class_id: p.class_id,
            procedure: p.procedure.unwrap_or_default(),
            task_priority: p.task_priority,
            task_notify_mode: p.task_notify_mode.unwrap_or_default(),
            source_context: p.source_context.unwrap_or_default(),
            session_context: p.session_context.unwrap_or_default(),
            vod_sub_app_id: p.vod_sub_app_id,
            storage_region: p.storage_region.unwrap_or_default(),
            max_file_size: p.max_file_size,
        }
    }
}

impl From<Claims> for proto::Claims {
    fn from(c: Claims) -> proto::Claims {
        proto::Claims {
            secret_id: c.secret_id,
            current_time_stamp: c.current_time_stamp,
            expire_time: c.expire_time,
            random: c.random,
            one_time_valid: c.one_time_valid,
            policy: Some(c.policy.into()),
            extra: c.extra.into_iter().collect(),
            original: c.original,
        }
    }
}

impl From<proto::IssueSignatureRequest> for IssueRequest {
    fn from(r: proto::IssueSignatureRequest) -> IssueRequest {
        IssueRequest {
            secret_id: r.secret_id,
            ttl_seconds: r.ttl_seconds,
            policy: r.policy.unwrap_or_default().into(),
            subject: r.subject,
        }
    }
}

impl From<Issued> for proto::IssueSignatureResponse {
    fn from(i: Issued) -> proto::IssueSignatureResponse {
        proto::IssueSignatureResponse {
            signature: i.signature,
            claims: Some(i.claims.into()),
        }
    }
}

impl From<SignatureState> for proto::SignatureState {
    fn from(s: SignatureState) -> proto::SignatureState {
        match s {
            SignatureState::Issued => proto::SignatureState::Issued,
            SignatureState::Consumed => proto::SignatureState::Consumed,
            SignatureState::Revoked => proto::SignatureState::Revoked,
            SignatureState::Expired => proto::SignatureState::Expired,
            SignatureState::NotIssued => proto::SignatureState::NotIssued,
            SignatureState::Completed => proto::SignatureState::Completed,
            SignatureState::Abandoned => proto::SignatureState::Abandoned,
        }
    }
}

impl TryFrom<proto::ListSignaturesRequest> for ListRequest {
    type Error = Refusal;

    fn try_from(r: proto::ListSignaturesRequest) -> Result<ListRequest, Refusal> {
        let states = r
            .states
            .iter()
            .map(|&s| match proto::SignatureState::try_from(s) {
                Ok(proto::SignatureState::Issued) => Ok(SignatureState::Issued),
                Ok(proto::SignatureState::Consumed) => Ok(SignatureState::Consumed),
                Ok(proto::SignatureState::Revoked) => Ok(SignatureState::Revoked),
                Ok(proto::SignatureState::Expired) => Ok(SignatureState::Expired),
                Ok(proto::SignatureState::NotIssued) => Ok(SignatureState::NotIssued),
                Ok(proto::SignatureState::Completed) => Ok(SignatureState::Completed),
                Ok(proto::SignatureState::Abandoned) => Ok(SignatureState::Abandoned),
                _ => Err(Refusal::invalid(format!("unknown signature state {s}"))),
            })
            .collect::<Result<_, _>>()?;
        Ok(ListRequest {
            subject: r.subject,
            states,
            page_size: r.page_size,
            page_token: r.page_token,
        })
    }
}

impl From<Summary> for proto::SignatureSummary {
    fn from(s: Summary) -> proto::SignatureSummary {
        proto::SignatureSummary {
            secret_id: s.secret_id,
            random: s.random,
            state: proto::SignatureState::from(s.state).into(),
            issued_at: s.issued_at,
            changed_at: s.changed_at,
            expire_time: s.expire_time,
            source_context: s.source_context,
        }
    }
}

impl From<Listing> for proto::ListSignaturesResponse {
    fn from(l: Listing) -> proto::ListSignaturesResponse {
        proto::ListSignaturesResponse {
            signatures: l.signatures.into_iter().map(Into::into).collect(),
            next_page_token: l.next_page_token,
        }
    }
}

impl From<Verified> for proto::VerifySignatureResponse {
    fn from(v: Verified) -> proto::VerifySignatureResponse {
        proto::VerifySignatureResponse {
            state: proto::SignatureState::from(v.state).into(),
            claims: Some(v.claims.into()),
        }
    }
}

impl From<proto::ConsumeSignatureRequest> for ConsumeRequest {
    fn from(r: proto::ConsumeSignatureRequest) -> ConsumeRequest {
        ConsumeRequest {
            signature: r.signature,
            file_size: r.file_size,
            idempotency_key: r.idempotency_key,
        }
    }
}

impl From<Consumed> for proto::ConsumeSignatureResponse {
    fn from(c: Consumed) -> proto::ConsumeSignatureResponse {
        proto::ConsumeSignatureResponse {
            claims: Some(c.claims.into()),
            consumed_at: c.consumed_at,
        }
    }
}

impl From<SignatureState> for proto::RevokeSignatureResponse {
    fn from(previous: SignatureState) -> proto::RevokeSignatureResponse {
        proto::RevokeSignatureResponse {
            previous_state: proto::SignatureState::from(previous).into(),
        }
    }
}

impl From<EventKind> for proto::EventKind {
    fn from(k: EventKind) -> proto::EventKind {
        match k {
            EventKind::Issued => proto::EventKind::Issued,
            EventKind::Consumed => proto::EventKind::Consumed,
            EventKind::Revoked => proto::EventKind::Revoked,
            EventKind::ConsumeRefused => proto::EventKind::ConsumeRefused,
            EventKind::Completed => proto::EventKind::Completed,
            EventKind::Abandoned => proto::EventKind::Abandoned,
            EventKind::CompleteRefused => proto::EventKind::CompleteRefused,
        }
    }
}

impl TryFrom<proto::EventKind> for EventKind {
    type Error = ();

    fn try_from(k: proto::EventKind) -> Result<EventKind, ()> {
        match k {
            proto::EventKind::Issued => Ok(EventKind::Issued),
            proto::EventKind::Consumed => Ok(EventKind::Consumed),
            proto::EventKind::Revoked => Ok(EventKind::Revoked),
            proto::EventKind::ConsumeRefused => Ok(EventKind::ConsumeRefused),
            proto::EventKind::Completed => Ok(EventKind::Completed),
            proto::EventKind::Abandoned => Ok(EventKind::Abandoned),
            proto::EventKind::CompleteRefused => Ok(EventKind::CompleteRefused),
            proto::EventKind::Unspecified => Err(()),
        }
    }
}

/// A watched event with its stream id.
pub fn event_to_proto(id: String, e: Event) -> proto::Event {
    proto::Event {
        id,
        kind: proto::EventKind::from(e.kind).into(),
        secret_id: e.secret_id,
        random: e.random,
        subject: e.subject,
        source_context: e.source_context,
        reason: e.reason,
        time: e.time,
        file_id: e.file_id,
    }
}

impl From<proto::CompleteUploadRequest> for CompleteRequest {
    fn from(r: proto::CompleteUploadRequest) -> CompleteRequest {
        CompleteRequest {
            signature: r.signature,
            file_id: r.file_id,
            file_size: r.file_size,
            media_url: r.media_url,
            media_type: r.media_type,
        }
    }
}

impl From<CompletedUpload> for proto::CompleteUploadResponse {
    fn from(c: CompletedUpload) -> proto::CompleteUploadResponse {
        proto::CompleteUploadResponse {
            claims: Some(c.claims.into()),
            completed_at: c.completed_at,
            late: c.late,
        }
    }
}

impl From<Notification> for proto::Notification {
    fn from(n: Notification) -> proto::Notification {
        proto::Notification {
            handle: n.handle,
            webhook_id: n.webhook_id,
            body: n.body,
            created_at: n.created_at,
        }
    }
}
