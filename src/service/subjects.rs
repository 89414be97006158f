//! A subject's signatures: ListSignatures, RevokeSubject, and the outstanding cap on issue.
//!
//! The store keeps an index per subject next to the records. The records stay the only
//! authority on whether a signature is accepted; the index only finds them (listing,
//! revoking all) and counts what is outstanding (the cap, atomic on the index).

use std::pin::Pin;
use std::task::Poll;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{MAX_SUBJECT_LEN, SignatureState, UseCases};
use crate::audit::{Event, EventKind};
use crate::reason::Reason;
use crate::refusal::Refusal;
use crate::store::{ListCursor, Listed, RecordState, Store, SubjectEntry, subject_digest};

/// RevokeSubject's record steps in flight at once.
const REVOKE_IN_FLIGHT: usize = 32;

/// Runs `steps` concurrently on the calling task; their outputs in order.
async fn join_all<F: Future>(steps: Vec<F>) -> Vec<F::Output> {
    let mut steps: Vec<Pin<Box<F>>> = steps.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = steps.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (step, out) in steps.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match step.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// `page_size` when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest `page_size`.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Index entries one ListSignatures call examines at most, in pages: past it, the page may
/// hold fewer than `page_size` entries (and still a `next_page_token`), so a filter that
/// matches little cannot make one call walk a huge index.
const MAX_SCANNED_PAGES: usize = 10;

/// ListSignatures' input.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// The end user whose signatures are listed: the `subject` they were issued for.
    pub subject: String,
    /// States to list; empty: ISSUED.
    pub states: Vec<SignatureState>,
    /// 0: 100; at most 1000.
    pub page_size: u32,
    /// The previous page's `next_page_token`; empty: the first page.
    pub page_token: String,
}

/// One listed signature: never the signature, its HMAC or its fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Its `secretId`.
    pub secret_id: String,
    /// Its `random`.
    pub random: u32,
    /// ISSUED, CONSUMED or REVOKED.
    pub state: SignatureState,
    /// Issue time, Unix seconds.
    pub issued_at: i64,
    /// Last state change, Unix seconds (the issue time while ISSUED).
    pub changed_at: i64,
    /// Its `expireTime`, Unix seconds.
    pub expire_time: i64,
    /// Its `sourceContext` (empty: none).
    pub source_context: String,
}

/// ListSignatures' answer.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Newest first.
    pub signatures: Vec<Summary>,
    /// Empty: no more.
    pub next_page_token: String,
}

fn summary(listed: Listed) -> Option<Summary> {
    let (state, changed_at) = match listed.state {
        RecordState::Issued => (SignatureState::Issued, listed.entry.issued_at),
        RecordState::Consumed { at } => (SignatureState::Consumed, at),
        RecordState::Revoked { at } => (SignatureState::Revoked, at),
        RecordState::Completed { at, .. } => (SignatureState::Completed, at),
        RecordState::Abandoned { at, .. } => (SignatureState::Abandoned, at),
        // The record is gone (or belongs to another signature): nothing to report.
        RecordState::NotIssued => return None,
    };
    let e = listed.entry;
    Some(Summary {
        secret_id: e.secret_id,
        random: e.random,
        state,
        issued_at: e.issued_at,
        changed_at,
        expire_time: e.expire_time,
        source_context: e.source_context,
    })
}

/// Page tokens: `v1|{subject digest}|{issued_at}|{member}`, URL-safe Base64. Opaque to the
/// caller; one subject's token is refused for another.
fn encode_token(digest: &str, cursor: &ListCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "v1|{digest}|{}|{}",
        cursor.issued_at, cursor.member
    ))
}

fn decode_token(digest: &str, token: &str) -> Result<Option<ListCursor>, Refusal> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Refusal::invalid("page_token is not a page token of this subject's listing");
    let text = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let mut parts = text.splitn(4, '|');
    if parts.next() != Some("v1") || parts.next() != Some(digest) {
        return Err(bad());
    }
    let issued_at = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let member = parts.next().ok_or_else(bad)?.to_owned();
    Ok(Some(ListCursor { issued_at, member }))
}

fn check_subject(subject: &str) -> Result<(), Refusal> {
    if subject.is_empty() {
        return Err(Refusal::invalid("subject is required"));
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(Refusal::invalid(format!(
            "subject is longer than {MAX_SUBJECT_LEN} bytes"
        )));
    }
    Ok(())
}

impl<S: Store> UseCases<S> {
    /// Entries with an `expireTime` below this are expired (state EXPIRED).
    fn expired_before(&self) -> i64 {
        self.clock.now().saturating_sub(self.leeway())
    }

    /// ListSignatures: the subject's signatures in `states` (default ISSUED), newest first;
    /// expired ones are not listed.
    pub async fn list_signatures(&self, req: ListRequest) -> Result<Listing, Refusal> {
        check_subject(&req.subject)?;
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(Refusal::invalid(format!(
                    "page_size {n} is above the maximum of {MAX_PAGE_SIZE}"
                )));
            }
            n => n,
        } as usize;
        let states = if req.states.is_empty() {
            vec![SignatureState::Issued]
        } else {
            req.states
        };
        if let Some(bad) = states
            .iter()
            .find(|s| matches!(s, SignatureState::Expired | SignatureState::NotIssued))
        {
            return Err(Refusal::invalid(format!(
                "states may hold ISSUED, CONSUMED, REVOKED, COMPLETED and ABANDONED only \
                 (expired signatures are not listed), not {bad:?}"
            )));
        }
        let digest = subject_digest(&req.subject);
        let mut cursor = decode_token(&digest, &req.page_token)?;
        let expired_before = self.expired_before();
        let keys = self.keys.load_full();
        let ids: Vec<&str> = keys.secret_ids().collect();
        let mut signatures = Vec::new();
        for _ in 0..MAX_SCANNED_PAGES {
            let batch = self
                .store
                .list_subject(&digest, cursor.as_ref(), page_size, expired_before, &ids)
                .await?;
            let exhausted = batch.len() < page_size;
            let last = batch.len();
            for (i, listed) in batch.into_iter().enumerate() {
                cursor = Some(listed.cursor.clone());
                if let Some(s) = summary(listed).filter(|s| states.contains(&s.state)) {
                    signatures.push(s);
                    if signatures.len() == page_size {
                        let more = !exhausted || i + 1 < last;
                        return Ok(Listing {
                            signatures,
                            next_page_token: match (&cursor, more) {
                                (Some(c), true) => encode_token(&digest, c),
                                _ => String::new(),
                            },
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Listing {
                    signatures,
                    next_page_token: String::new(),
                });
            }
        }
        // Scanned enough for one call: a short page, and where to go on.
        Ok(Listing {
            signatures,
            next_page_token: cursor
                .map(|c| encode_token(&digest, &c))
                .unwrap_or_default(),
        })
    }

    /// RevokeSubject: revokes every ISSUED, unexpired signature of the subject, each in the
    /// same atomic record step as RevokeSignature (and with the same audit event); answers
    /// how many this call revoked. A store failure midway answers STORE_UNAVAILABLE: what
    /// was revoked stays revoked, and a retry revokes the rest.
    pub async fn revoke_subject(&self, subject: &str) -> Result<u32, Refusal> {
        check_subject(subject)?;
        let digest = subject_digest(subject);
        let expired_before = self.expired_before();
        let keys = self.keys.load_full();
        let ids: Vec<&str> = keys.secret_ids().collect();
        let page = MAX_PAGE_SIZE as usize;
        let mut cursor: Option<ListCursor> = None;
        let mut revoked = 0u32;
        loop {
            let batch = self
                .store
                .list_subject(&digest, cursor.as_ref(), page, expired_before, &ids)
                .await?;
            let exhausted = batch.len() < page;
            if let Some(last) = batch.last() {
                cursor = Some(last.cursor.clone());
            }
            let issued: Vec<Listed> = batch
                .into_iter()
                .filter(|l| l.state == RecordState::Issued)
                .collect();
            // Each record is its own atomic step (on Redis Cluster each lives in its own slot,
            // so no one script may take several): sent REVOKE_IN_FLIGHT at a time, pipelined
            // on the one connection, so 10 000 take a fraction of a second and no Redis
            // command runs long.
            for chunk in issued.chunks(REVOKE_IN_FLIGHT) {
                let now = self.clock.now();
                let steps = chunk
                    .iter()
                    .map(|l| self.store.revoke_in_subject(&l.entry, &digest, now))
                    .collect();
                let mut failed = None;
                for (listed, before) in chunk.iter().zip(join_all(steps).await) {
                    match before {
                        Ok(RecordState::Issued) => {
                            revoked += 1;
                            self.publish_entry(EventKind::Revoked, &listed.entry, subject);
                        }
                        Ok(_) => {}
                        Err(e) => failed = failed.or(Some(e)),
                    }
                }
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
            if exhausted {
                return Ok(revoked);
            }
        }
    }

    /// The audit event of an index entry (RevokeSubject has no signature to take it from).
    fn publish_entry(&self, kind: EventKind, entry: &SubjectEntry, subject: &str) {
        self.events.publish(Event {
            kind,
            secret_id: entry.secret_id.clone(),
            random: entry.random,
            subject: subject.to_owned(),
            source_context: entry.source_context.clone(),
            reason: String::new(),
            file_id: String::new(),
            time: self.clock.now(),
        });
    }
}

/// The refusal of an issue that would exceed the outstanding cap: no RetryInfo, since only
/// a consume, a revoke or an expiry frees a slot.
pub(super) fn outstanding_refusal(cap: u32) -> Refusal {
    Refusal::new(
        Reason::RateLimited,
        format!(
            "the subject already has {cap} outstanding signatures (issued, unused, unexpired); \
             consume or revoke one first"
        ),
    )
    .with_metadata("quota", "outstanding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_stay_with_their_subject() {
        let c = ListCursor {
            issued_at: 1_700_000_000,
            member: "AKID:42:1700003600:a|b:c".into(),
        };
        let token = encode_token("abc", &c);
        assert_eq!(decode_token("abc", &token).unwrap(), Some(c));
        assert!(decode_token("abd", &token).is_err());
        assert!(decode_token("abc", "!!").is_err());
        assert_eq!(decode_token("abc", "").unwrap(), None);
    }
}
