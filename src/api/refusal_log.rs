//! The `refused` log line of a call, without floods: a refusal that comes in bursts when
//! something outside the call is wrong (`STORE_UNAVAILABLE`, `STORE_FULL`, `RATE_LIMITED`) is
//! logged at info at most once a second per reason and RPC, with `folded`, the number of
//! such refusals since the previous line that were not logged loud. Each refusal still gets
//! its own line at debug, and the metrics count every one. Other refusals (a replay, a
//! forgery: each one is news) keep one line each. A line is a warning when the service failed
//! to serve (its store unavailable or full), information when the call was the caller's own
//! doing.

use std::time::Instant;

use strum::IntoEnumIterator as _;
use tracing::{debug, info, warn};

use crate::fold::LogFold;
use crate::reason::Reason;
use crate::rpc::Rpc;

/// What a call's `refused` line says about the call besides the refusal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallLog {
    /// The caller's `x-request-id` metadata, bounded and printable.
    pub request_id: Option<String>,
    /// The caller's name under the caller policy.
    pub caller: Option<String>,
    /// The SecretId of the signature the call is about (from the refusal itself).
    pub secret_id: Option<String>,
    /// That signature's nonce (`Random`), when the refusal names one.
    pub random: Option<u32>,
}

/// The reasons whose refusals are folded: they repeat for every call while they last.
const FOLDED: [Reason; 3] = [
    Reason::StoreUnavailable,
    Reason::StoreFull,
    Reason::RateLimited,
];

/// How loud a refusal's line is, by what it says about the service: the caller's own doing
/// (a replay, a forgery, a bad request, a quota) is information; the service failing to
/// serve (its store unavailable or full) is a warning an operator should see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Info,
    Warn,
}

fn level_of(reason: &str) -> Level {
    match Reason::from_token(reason) {
        Some(Reason::StoreUnavailable | Reason::StoreFull) | None => Level::Warn,
        Some(_) => Level::Info,
    }
}

/// The folds of the `refused` lines, one per RPC and folded reason.
#[derive(Debug)]
pub struct RefusalLog {
    folds: Vec<LogFold>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new()
    }
}

impl RefusalLog {
    /// Nothing logged yet: the first refusal of each kind is logged at info.
    pub fn new() -> RefusalLog {
        RefusalLog {
            folds: (0..Rpc::iter().count() * FOLDED.len())
                .map(|_| LogFold::new())
                .collect(),
        }
    }

    /// The fold of refusals of `rpc` for `reason` (a reason token), if that reason folds.
    fn fold(&self, rpc: Rpc, reason: &str) -> Option<&LogFold> {
        let i = FOLDED.iter().position(|r| r.as_str() == reason)?;
        self.folds.get(rpc as usize * FOLDED.len() + i)
    }

    /// Logs one refused call of `rpc` at `now`: `reason` (its token), what the call noted
    /// (`log`) and the refusal's sentence (`detail`).
    pub fn refused(&self, rpc: Rpc, reason: &str, log: &CallLog, detail: &str, now: Instant) {
        let (loud, folded) = match self.fold(rpc, reason) {
            None => (true, None),
            Some(fold) => match fold.occurred(now) {
                Some(folded) => (true, Some(folded)),
                None => (false, None),
            },
        };
        macro_rules! line {
            ($level:ident) => {
                $level!(
                    reason,
                    rpc = rpc.name(),
                    caller = log.caller.as_deref(),
                    secret_id = log.secret_id.as_deref(),
                    random = log.random,
                    request_id = log.request_id.as_deref(),
                    detail,
                    folded,
                    "refused"
                )
            };
        }
        match (loud, level_of(reason)) {
            (false, _) => line!(debug),
            (true, Level::Warn) => line!(warn),
            (true, Level::Info) => line!(info),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_failing_warns_the_caller_failing_informs() {
        assert_eq!(level_of("STORE_UNAVAILABLE"), Level::Warn);
        assert_eq!(level_of("STORE_FULL"), Level::Warn);
        // An answer without a known reason (tonic's own error) is the service failing too.
        assert_eq!(level_of("error"), Level::Warn);
        for info in [
            "SIGNATURE_ALREADY_USED",
            "SIGNATURE_MISMATCH",
            "RATE_LIMITED",
            "INVALID_REQUEST",
        ] {
            assert_eq!(level_of(info), Level::Info, "{info}");
        }
    }

    #[test]
    fn only_the_repeating_reasons_fold_each_per_rpc() {
        let log = RefusalLog::new();
        for reason in FOLDED {
            for rpc in Rpc::iter() {
                assert!(log.fold(rpc, reason.as_str()).is_some(), "{rpc:?} {reason}");
            }
        }
        assert!(log.fold(Rpc::Consume, "SIGNATURE_ALREADY_USED").is_none());
        assert!(log.fold(Rpc::Consume, "error").is_none());
        let now = Instant::now();
        // One kind folding does not hold back another.
        let issue_full = log.fold(Rpc::Issue, "STORE_FULL").unwrap();
        assert_eq!(issue_full.occurred(now), Some(0));
        assert_eq!(issue_full.occurred(now), None);
        let consume_full = log.fold(Rpc::Consume, "STORE_FULL").unwrap();
        assert_eq!(consume_full.occurred(now), Some(0));
        let issue_limited = log.fold(Rpc::Issue, "RATE_LIMITED").unwrap();
        assert_eq!(issue_limited.occurred(now), Some(0));
    }
}
