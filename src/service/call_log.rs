//! What a call's `refused` log line says about the call (caller, SecretId, nonce, request
//! id), gathered while it runs.
//!
//! The per-call `call` span is debug-level (as tower-http's trace layer makes it): at info, a
//! span the log layer keeps costs its fields' formatting on every call, most of which log
//! nothing. So at the default level the one line a call may log, `refused`, carries these
//! fields itself; they are noted here, in a task-local the api layer scopes around each call
//! that parses a signature (the others keep their log in the layer), and on the span too (for
//! `--log-level debug` and traces).

use std::cell::RefCell;
use std::future::Future;

use crate::rpc::Rpc;

tokio::task_local! {
    static CALL: RefCell<CallLog>;
}

/// The fields of one call's log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallLog {
    /// The caller's `x-request-id` metadata, bounded and printable.
    pub request_id: Option<String>,
    /// The caller's name under the caller policy.
    pub caller: Option<String>,
    /// The SecretId of the signature the call is about.
    pub secret_id: Option<String>,
    /// Its nonce.
    pub random: Option<u32>,
}

/// Whether calls of `rpc` note a signature on their log while they run: the RPCs whose use
/// case authenticates a presented signature. Only they need [`scope`]; the others keep their
/// log outside the call, without the task-local's cost on every poll.
pub fn notes_signature(rpc: Rpc) -> bool {
    matches!(rpc, Rpc::Verify | Rpc::Consume | Rpc::Revoke)
}

/// Runs `call` with `log` as its call log.
pub fn scope<F: Future>(log: CallLog, call: F) -> impl Future<Output = F::Output> {
    CALL.scope(RefCell::new(log), call)
}

/// The signature the call is about, once known: on the call log and the current span.
pub fn note_signature(secret_id: &str, random: u32) {
    record_on_span(secret_id, random);
    // Outside a call (a unit test of the use cases) there is nothing to note it on.
    let _ = CALL.try_with(|log| {
        let mut log = log.borrow_mut();
        log.secret_id = Some(secret_id.to_owned());
        log.random = Some(random);
    });
}

/// The signature an issue produced, on the current span only: it is noted once nothing can
/// refuse the call any more, so no `refused` line will need it (and a successful issue pays
/// for no copy of the SecretId).
pub fn note_issued(secret_id: &str, random: u32) {
    record_on_span(secret_id, random);
}

fn record_on_span(secret_id: &str, random: u32) {
    let span = tracing::Span::current();
    span.record("secret_id", secret_id);
    span.record("random", random);
}

/// Reads the current call's log; `None` outside a call.
pub fn with<R>(read: impl FnOnce(&CallLog) -> R) -> Option<R> {
    CALL.try_with(|log| read(&log.borrow())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_reach_the_calls_log_and_only_its() {
        let start = CallLog {
            request_id: Some("r-1".into()),
            ..CallLog::default()
        };
        let seen = scope(start, async {
            note_signature("AKIDone", 7);
            with(Clone::clone)
        })
        .await
        .unwrap();
        assert_eq!(seen.secret_id.as_deref(), Some("AKIDone"));
        assert_eq!(seen.random, Some(7));
        assert_eq!(seen.request_id.as_deref(), Some("r-1"));
        // Outside a call: noted nowhere, read as nothing.
        note_signature("AKIDtwo", 8);
        assert_eq!(with(|log| log.random), None);
    }
}
