//! Histories of client calls during a fault scenario, and the checker that judges them.
//!
//! A history is one [`Call`] per RPC attempt (written as one JSON line each). The checker
//! fails on a signature consumed successfully under two idempotency keys, a consume accepted
//! after a successful revoke of the same signature, an accepted replay, and an owner that never
//! succeeded although it retried with its key after the faults healed. It also measures the
//! unavailability window (the longest gap without a successful call) and the time to recovery
//! after the heal.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a call was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rpc {
    Issue,
    /// ConsumeSignature by the signature's owner, with the owner's idempotency key.
    Consume,
    /// ConsumeSignature by someone else (another key) after the owner: must be refused.
    Replay,
    Revoke,
    /// VerifySignature after the load (the audit): the result is the state it reports.
    Verify,
}

/// The answer `ok`, or the refusal reason (`STORE_UNAVAILABLE`, ...), or the gRPC code of a
/// failure without a reason (`DeadlineExceeded`, `Unavailable`).
pub const OK: &str = "ok";

/// One RPC attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub client: String,
    pub replica: String,
    pub rpc: Rpc,
    /// `secretId:random` (empty for an issue that failed).
    pub sig: String,
    /// The idempotency key (consume and replay).
    pub key: String,
    /// Milliseconds since the scenario started.
    pub start_ms: f64,
    pub end_ms: f64,
    pub result: String,
}

impl Call {
    pub fn ok(&self) -> bool {
        self.result == OK
    }
}

/// When the fault started and when it healed (ms since the scenario started). A fault that
/// never heals gives the moment the system was expected to have worked around it (a finished
/// failover) as `healed_ms`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Marks {
    pub fault_ms: f64,
    pub healed_ms: f64,
}

/// What a history shows.
#[derive(Debug, Default)]
pub struct Report {
    pub calls: usize,
    pub issued: usize,
    pub consumed: usize,
    pub revoked: usize,
    /// Signatures consumed successfully under two or more keys.
    pub double_accepts: Vec<String>,
    /// Signatures consumed successfully after a revoke of them had answered OK.
    pub accepted_after_revoke: Vec<String>,
    /// Replays (another key than the owner's) that were accepted.
    pub replays_accepted: Vec<String>,
    /// Owners (signature, key) that never succeeded though they retried after the heal, with
    /// their last answer.
    pub owners_stuck: Vec<(String, String, String)>,
    /// Signatures whose issue answered OK but that the audit finds not issued, or whose
    /// consume answered OK but that the audit finds still issued: an acknowledged write lost.
    pub lost_records: Vec<String>,
    /// Answers `STORE_UNAVAILABLE` (during the load).
    pub store_unavailable: usize,
    /// The first and the last `STORE_UNAVAILABLE` answer after the fault (end of call, ms).
    pub store_unavailable_span: Option<(f64, f64)>,
    /// The longest gap without a successful call (any client, any replica): (ms, from, to).
    pub longest_gap: (f64, f64, f64),
    /// Per replica: the longest gap without a successful call it served.
    pub replica_gaps: BTreeMap<String, (f64, f64, f64)>,
    /// From the heal to the first successful consume that started after it, on the replica
    /// that took longest (ms).
    pub recovery_ms: Option<f64>,
    /// Replicas that were called after the heal but never answered a call OK after it.
    pub not_recovered: Vec<String>,
}

impl Report {
    /// Everything that must not happen; empty for a correct history.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut add = |what: &str, list: &[String]| {
            if !list.is_empty() {
                v.push(format!(
                    "{what}: {} ({:?})",
                    list.len(),
                    &list[..list.len().min(5)]
                ));
            }
        };
        add("consumed under two keys", &self.double_accepts);
        add(
            "consumed after a successful revoke",
            &self.accepted_after_revoke,
        );
        add("replays accepted", &self.replays_accepted);
        let stuck: Vec<String> = self
            .owners_stuck
            .iter()
            .map(|(s, k, r)| format!("{s} key {k}: {r}"))
            .collect();
        add("owners that never succeeded after the heal", &stuck);
        add(
            "replicas with no successful call after the heal",
            &self.not_recovered,
        );
        v
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        let span = self
            .store_unavailable_span
            .map_or("none".to_owned(), |(a, b)| format!("{a:.0}..{b:.0} ms"));
        let gaps: Vec<String> = self
            .replica_gaps
            .iter()
            .map(|(r, g)| format!("{r} {:.2} s", g.0 / 1000.0))
            .collect();
        format!(
            "calls {}, issued {}, consumed {}, revoked {}; STORE_UNAVAILABLE {} answers ({span}); \
             longest gap without a successful call {:.2} s ({:.0}..{:.0} ms; per replica: {}); \
             recovery after heal {}; double accepts {}, replays accepted {}, consumed after revoke \
             {}, lost records {}, owners stuck {}",
            self.calls,
            self.issued,
            self.consumed,
            self.revoked,
            self.store_unavailable,
            self.longest_gap.0 / 1000.0,
            self.longest_gap.1,
            self.longest_gap.2,
            gaps.join(", "),
            self.recovery_ms
                .map_or("n/a".to_owned(), |ms| format!("{:.2} s", ms / 1000.0)),
            self.double_accepts.len(),
            self.replays_accepted.len(),
            self.accepted_after_revoke.len(),
            self.lost_records.len(),
            self.owners_stuck.len(),
        )
    }
}

/// The longest gap between consecutive successful calls (end times), from the first call's
/// start to the last call's end.
fn longest_gap<'a>(calls: impl Iterator<Item = &'a Call> + Clone) -> (f64, f64, f64) {
    let start = calls
        .clone()
        .map(|c| c.start_ms)
        .fold(f64::INFINITY, f64::min);
    let end = calls.clone().map(|c| c.end_ms).fold(0.0, f64::max);
    if !start.is_finite() {
        return (0.0, 0.0, 0.0);
    }
    let mut times: Vec<f64> = calls.filter(|c| c.ok()).map(|c| c.end_ms).collect();
    times.push(start);
    times.push(end);
    times.sort_by(f64::total_cmp);
    times
        .windows(2)
        .map(|w| (w[1] - w[0], w[0], w[1]))
        .fold(
            (0.0, 0.0, 0.0),
            |best, g| if g.0 > best.0 { g } else { best },
        )
}

/// Judges `calls` (in any order).
pub fn check(calls: &[Call], marks: Marks) -> Report {
    let mut report = Report {
        calls: calls.len(),
        ..Report::default()
    };
    let mut by_sig: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for c in calls {
        if !c.sig.is_empty() {
            by_sig.entry(&c.sig).or_default().push(c);
        }
        if c.result == "STORE_UNAVAILABLE" && c.rpc != Rpc::Verify {
            report.store_unavailable += 1;
            if c.end_ms < marks.fault_ms {
                continue;
            }
            let span = report
                .store_unavailable_span
                .get_or_insert((c.end_ms, c.end_ms));
            span.0 = span.0.min(c.end_ms);
            span.1 = span.1.max(c.end_ms);
        }
    }
    for (sig, calls) in &by_sig {
        let sig = sig.to_string();
        let issued_ok = calls.iter().find(|c| c.rpc == Rpc::Issue && c.ok());
        report.issued += usize::from(issued_ok.is_some());
        let accepted: Vec<&&Call> = calls
            .iter()
            .filter(|c| matches!(c.rpc, Rpc::Consume | Rpc::Replay) && c.ok())
            .collect();
        let keys: BTreeSet<&str> = accepted.iter().map(|c| c.key.as_str()).collect();
        report.consumed += usize::from(!keys.is_empty());
        if keys.len() > 1 {
            report.double_accepts.push(sig.clone());
        }
        if accepted.iter().any(|c| c.rpc == Rpc::Replay) {
            report.replays_accepted.push(sig.clone());
        }
        let revoked_at = calls
            .iter()
            .filter(|c| c.rpc == Rpc::Revoke && c.ok())
            .map(|c| c.end_ms)
            .fold(f64::INFINITY, f64::min);
        if revoked_at.is_finite() {
            report.revoked += 1;
            if accepted.iter().any(|c| c.start_ms > revoked_at) {
                report.accepted_after_revoke.push(sig.clone());
            }
        }
        // The audit's final states against what was acknowledged.
        let finals: Vec<&str> = calls
            .iter()
            .filter(|c| c.rpc == Rpc::Verify)
            .map(|c| c.result.as_str())
            .collect();
        let missing = finals
            .iter()
            .any(|r| matches!(*r, "NOT_ISSUED" | "SIGNATURE_NOT_ISSUED"));
        let unconsumed = !keys.is_empty() && finals.contains(&"ISSUED");
        if (issued_ok.is_some() && missing) || unconsumed {
            report.lost_records.push(sig.clone());
        }
        // Owners: the consume attempts under one key. Signatures with a revoke have no owner
        // that must succeed.
        if calls.iter().any(|c| c.rpc == Rpc::Revoke) {
            continue;
        }
        let mut owners: BTreeMap<&str, Vec<&&Call>> = BTreeMap::new();
        for c in calls.iter().filter(|c| c.rpc == Rpc::Consume) {
            owners.entry(&c.key).or_default().push(c);
        }
        for (key, attempts) in owners {
            let succeeded = attempts.iter().any(|c| c.ok());
            let retried_after_heal = attempts.iter().any(|c| c.start_ms >= marks.healed_ms);
            if !succeeded && retried_after_heal {
                let last = attempts
                    .iter()
                    .max_by(|a, b| a.start_ms.total_cmp(&b.start_ms))
                    .unwrap();
                report
                    .owners_stuck
                    .push((sig.clone(), key.to_owned(), last.result.clone()));
            }
        }
    }
    // Availability is the load's; the audit comes after it.
    let calls: Vec<&Call> = calls.iter().filter(|c| c.rpc != Rpc::Verify).collect();
    report.longest_gap = longest_gap(calls.iter().copied());
    let replicas: BTreeSet<&str> = calls.iter().map(|c| c.replica.as_str()).collect();
    let mut recovery: Option<f64> = None;
    for replica in replicas {
        let mine = calls.iter().copied().filter(|c| c.replica == replica);
        report
            .replica_gaps
            .insert(replica.to_owned(), longest_gap(mine.clone()));
        let after: Vec<&Call> = mine
            .clone()
            .filter(|c| c.start_ms >= marks.healed_ms)
            .collect();
        if !after.is_empty() && !after.iter().any(|c| c.ok()) {
            report.not_recovered.push(replica.to_owned());
        }
        let first = mine
            .filter(|c| c.rpc == Rpc::Consume && c.ok() && c.start_ms >= marks.healed_ms)
            .map(|c| c.end_ms - marks.healed_ms)
            .fold(f64::INFINITY, f64::min);
        if first.is_finite() {
            recovery = Some(recovery.map_or(first, |r: f64| r.max(first)));
        }
    }
    report.recovery_ms = recovery;
    report
}

/// Writes `calls` (sorted by start) to `path`, one JSON object per line.
pub fn write_jsonl(path: &Path, calls: &[Call]) {
    let mut sorted: Vec<&Call> = calls.iter().collect();
    sorted.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for c in sorted {
        serde_json::to_writer(&mut out, c).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
}

/// Reads a history written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> Vec<Call> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(rpc: Rpc, sig: &str, key: &str, start: f64, result: &str) -> Call {
        Call {
            client: "c".into(),
            replica: "r1".into(),
            rpc,
            sig: sig.into(),
            key: key.into(),
            start_ms: start,
            end_ms: start + 1.0,
            result: result.into(),
        }
    }

    const MARKS: Marks = Marks {
        fault_ms: 10.0,
        healed_ms: 100.0,
    };

    fn good() -> Vec<Call> {
        vec![
            call(Rpc::Issue, "s1", "", 0.0, OK),
            call(Rpc::Consume, "s1", "k1", 5.0, "STORE_UNAVAILABLE"),
            call(Rpc::Consume, "s1", "k1", 110.0, OK),
            call(Rpc::Replay, "s1", "r1", 120.0, "SIGNATURE_ALREADY_USED"),
            call(Rpc::Issue, "s2", "", 130.0, OK),
            call(Rpc::Revoke, "s2", "", 140.0, OK),
            call(Rpc::Consume, "s2", "k2", 150.0, "SIGNATURE_REVOKED"),
        ]
    }

    #[test]
    fn a_correct_history_passes_and_is_measured() {
        let report = check(&good(), MARKS);
        assert!(report.violations().is_empty(), "{report:?}");
        assert_eq!((report.issued, report.consumed, report.revoked), (2, 1, 1));
        assert_eq!(report.store_unavailable, 1);
        // ok calls end at 1, 111, 131, 141; the calls span 0..151.
        assert_eq!(report.longest_gap, (110.0, 1.0, 111.0));
        assert_eq!(report.recovery_ms, Some(11.0));
        assert!(report.lost_records.is_empty());
    }

    #[test]
    fn consumed_under_two_keys_fails() {
        let mut h = good();
        h.push(call(Rpc::Consume, "s1", "k9", 200.0, OK));
        let report = check(&h, MARKS);
        assert_eq!(report.double_accepts, ["s1"]);
        assert_eq!(report.violations().len(), 1, "{:?}", report.violations());
    }

    #[test]
    fn an_accepted_replay_fails() {
        let mut h = good();
        h[3].result = OK.into();
        let report = check(&h, MARKS);
        assert_eq!(report.replays_accepted, ["s1"]);
        assert_eq!(report.double_accepts, ["s1"]);
        assert_eq!(report.violations().len(), 2);
    }

    #[test]
    fn a_consume_after_a_successful_revoke_fails() {
        let mut h = good();
        h[6].result = OK.into();
        let report = check(&h, MARKS);
        assert_eq!(report.accepted_after_revoke, ["s2"]);
        assert!(!report.violations().is_empty());
        // A consume that raced the revoke (started before it answered) is not judged.
        let mut h = good();
        h[6].start_ms = 140.5;
        h[6].result = OK.into();
        assert!(check(&h, MARKS).accepted_after_revoke.is_empty());
    }

    #[test]
    fn an_owner_stuck_after_the_heal_fails_but_not_one_that_gave_up_before() {
        let mut h = good();
        h[2].result = "STORE_UNAVAILABLE".into();
        let report = check(&h, MARKS);
        assert_eq!(
            report.owners_stuck,
            [("s1".into(), "k1".into(), "STORE_UNAVAILABLE".into())]
        );
        assert!(!report.violations().is_empty());
        h.remove(2);
        assert!(check(&h, MARKS).violations().is_empty());
    }

    #[test]
    fn a_replica_that_never_recovers_fails() {
        let mut h = good();
        h.push(call(Rpc::Issue, "", "", 160.0, "STORE_UNAVAILABLE"));
        h.last_mut().unwrap().replica = "r2".into();
        let report = check(&h, MARKS);
        assert_eq!(report.not_recovered, ["r2"]);
        assert_eq!(report.violations().len(), 1);
    }

    #[test]
    fn a_lost_record_is_counted() {
        let mut h = good();
        h.push(call(Rpc::Verify, "s1", "", 300.0, "CONSUMED"));
        h.push(call(Rpc::Verify, "s2", "", 300.0, "REVOKED"));
        assert!(check(&h, MARKS).lost_records.is_empty());
        // A consume that answered OK, its record back to issued: a second use would pass.
        h[7].result = "ISSUED".into();
        assert_eq!(check(&h, MARKS).lost_records, ["s1"]);
        // An issue that answered OK, its record gone.
        h[7].result = "NOT_ISSUED".into();
        assert_eq!(check(&h, MARKS).lost_records, ["s1"]);
        // A refusal seen by one side of a partition is not a loss by itself.
        let mut h = good();
        h[3].result = "SIGNATURE_NOT_ISSUED".into();
        h.push(call(Rpc::Verify, "s1", "", 300.0, "CONSUMED"));
        let report = check(&h, MARKS);
        assert!(report.lost_records.is_empty() && report.violations().is_empty());
        // The audit does not count as availability.
        assert_eq!(report.longest_gap.0, 110.0);
    }

    #[test]
    fn histories_round_trip_through_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        write_jsonl(&path, &good());
        assert_eq!(read_jsonl(&path), good());
    }
}
