//! Issuance quotas: how many signatures one end user (`subject`), or one SecretId, may be
//! issued per period (`--quota-per-subject 20/1h`, `--quota-per-subject-burst 5/1m`,
//! `--quota-per-secret-id 100000/1d`).
//!
//! Counting is GCRA (the generic cell rate algorithm, as in leaky-bucket-as-a-meter): per
//! key, one number, the "theoretical arrival time" (TAT). A quota of N per P allows N at once,
//! then one more every P/N; a key is one integer with an expiry, updated by one atomic step.
//! Compared with a sliding-window log it needs O(1) memory per subject instead of O(N), and
//! compared with fixed windows it has no double burst at a window edge. The arithmetic lives
//! here, so the in-memory store and Redis (its quota script, and the admission's plain
//! commands, `store::redis::subjects`) agree; the store applies it atomically.

use std::time::Duration;

/// What a quota counts per.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Per end user (`IssueSignatureRequest.subject`).
    Subject,
    /// Per SecretId.
    SecretId,
}

/// Why a quota's text (`N/PERIOD`) is not one.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// No `/` between the count and the period.
    #[error("quota {text:?}: expected N/PERIOD, e.g. 20/1h")]
    Shape {
        /// The quota as written on the command line.
        text: String,
    },
    /// The part before `/` is not a whole number.
    #[error("quota {text:?}: {count:?} is not a count")]
    Count {
        /// The quota as written on the command line.
        text: String,
        /// Its count part.
        count: String,
        /// Why it does not parse.
        source: std::num::ParseIntError,
    },
    /// The part after `/` is not a duration.
    #[error("quota {text:?}: bad period {period:?}; use 30s, 1m, 1h or 1d")]
    Period {
        /// The quota as written on the command line.
        text: String,
        /// Its period part.
        period: String,
        /// Why it does not parse.
        source: humantime::DurationError,
    },
    /// A zero count, or a period under a second.
    #[error("quota {text:?}: the count must be at least 1 and the period at least 1s")]
    TooSmall {
        /// The quota as written on the command line.
        text: String,
    },
}

/// One quota: `limit` issues per `period` and `scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// What it counts per.
    pub scope: Scope,
    /// How many per period.
    pub limit: u32,
    /// Length of the window the limit applies to (the `1h` of `20/1h`).
    pub period: Duration,
    /// A short name for keys and messages (`subject`, `subject-burst`, `secret-id`).
    pub name: &'static str,
}

impl Quota {
    /// Parses `N/PERIOD` (`20/1h`, `5/30s`, `1000/1d`).
    pub fn parse(scope: Scope, name: &'static str, text: &str) -> Result<Quota, QuotaError> {
        let (n, period) = text.split_once('/').ok_or_else(|| QuotaError::Shape {
            text: text.to_owned(),
        })?;
        let limit: u32 = n.trim().parse().map_err(|source| QuotaError::Count {
            text: text.to_owned(),
            count: n.to_owned(),
            source,
        })?;
        let period =
            humantime::parse_duration(period.trim()).map_err(|source| QuotaError::Period {
                text: text.to_owned(),
                period: period.to_owned(),
                source,
            })?;
        if limit == 0 || period < Duration::from_secs(1) {
            return Err(QuotaError::TooSmall {
                text: text.to_owned(),
            });
        }
        Ok(Quota {
            scope,
            limit,
            period,
            name,
        })
    }

    /// Milliseconds between two issues at the sustained rate (P/N), at least 1.
    pub fn interval_ms(&self) -> u64 {
        (self.period.as_millis() as u64 / u64::from(self.limit)).max(1)
    }

    /// The burst tolerance: how far ahead of now the TAT may run (P - P/N).
    pub fn tolerance_ms(&self) -> u64 {
        (self.period.as_millis() as u64).saturating_sub(self.interval_ms())
    }
}

/// One quota to charge, with its store key already chosen.
#[derive(Clone, Debug)]
pub struct Charge {
    /// Store key (the store adds its prefix).
    pub key: String,
    /// Sustained interval, ms.
    pub interval_ms: u64,
    /// Burst tolerance, ms.
    pub tolerance_ms: u64,
    /// Which quota, for the refusal.
    pub name: &'static str,
}

/// The GCRA step: with stored TAT `tat` (0: none) at `now_ms`, either the new TAT to store
/// (allowed) or how long to wait (refused).
pub fn gcra(tat: u64, now_ms: u64, interval_ms: u64, tolerance_ms: u64) -> Result<u64, u64> {
    let tat = tat.max(now_ms);
    let allow_at = tat.saturating_sub(tolerance_ms);
    if now_ms < allow_at {
        Err(allow_at - now_ms)
    } else {
        Ok(tat + interval_ms)
    }
}

/// The quotas that apply to one issue, as the store charges them: (the per-subject ones,
/// one atomic step with the subject's index; the per-SecretId ones, one atomic step). The
/// subject is given by its digest (`store::subject_digest`), inside braces in the key: any
/// subject makes a short, safe key, and every per-subject key of one subject, its quotas and
/// its signature index alike, is one Redis Cluster hash tag (one slot), so the issue's
/// admission charges the quotas and indexes the signature in one transaction.
pub fn charges(
    quotas: &[Quota],
    subject_digest: Option<&str>,
    secret_id: &str,
) -> (Vec<Charge>, Vec<Charge>) {
    let mut by_subject = Vec::new();
    let mut by_secret = Vec::new();
    for q in quotas {
        let (group, key) = match (q.scope, subject_digest) {
            (Scope::Subject, Some(digest)) => {
                (&mut by_subject, format!("quota:{{{digest}}}:{}", q.name))
            }
            (Scope::Subject, None) => continue,
            (Scope::SecretId, _) => (
                &mut by_secret,
                format!("quota:{{k:{secret_id}}}:{}", q.name),
            ),
        };
        group.push(Charge {
            key,
            interval_ms: q.interval_ms(),
            tolerance_ms: q.tolerance_ms(),
            name: q.name,
        });
    }
    (by_subject, by_secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotas() {
        let q = Quota::parse(Scope::Subject, "subject", "20/1h").unwrap();
        assert_eq!((q.limit, q.period), (20, Duration::from_secs(3600)));
        assert_eq!(q.interval_ms(), 180_000);
        assert!(Quota::parse(Scope::Subject, "subject", "0/1h").is_err());
        assert!(Quota::parse(Scope::Subject, "subject", "5").is_err());
        assert!(Quota::parse(Scope::Subject, "subject", "5/fortnight").is_err());
        assert_eq!(
            Quota::parse(Scope::SecretId, "secret-id", "7/1d")
                .unwrap()
                .period,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn gcra_allows_exactly_the_limit_then_one_per_interval() {
        let q = Quota::parse(Scope::Subject, "subject", "3/3s").unwrap();
        let (i, t) = (q.interval_ms(), q.tolerance_ms());
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra(tat, 10_000, i, t).unwrap();
        }
        assert_eq!(gcra(tat, 10_000, i, t), Err(1000));
        assert!(gcra(tat, 10_999, i, t).is_err());
        let tat = gcra(tat, 11_000, i, t).unwrap();
        assert!(gcra(tat, 11_000, i, t).is_err());
        // After a whole period of silence, the full burst is back.
        let mut tat = tat;
        for _ in 0..3 {
            tat = gcra(tat, 20_000, i, t).unwrap();
        }
    }
}
