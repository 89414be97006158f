//! One signature's record, its text form in Redis, and its state transitions.
//!
//! Redis value, two forms:
//!
//! - issued without a subject (written with `SET NX` at issue): the fingerprint's bits as a
//!   decimal integer ([`compact_issued`]). Redis keeps an integer inside the key's object
//!   header instead of allocating a string, which is most of the value's memory: an
//!   outstanding signature costs ~64 bytes less. Its issue time is the signature's own
//!   `currentTimeStamp`.
//! - otherwise (issued for a subject, after a change, or written by an older version):
//!   `v1|{state}|{fingerprint}|{issued_at}|{changed_at}|{idempotency token}`, and for a
//!   signature issued for a `subject` a seventh field, the subject's digest
//!   (`|{subject digest}`), which names its subject index and lets RevokeSubject revoke it
//!   without the signature.
//!
//! The Lua scripts in `redis.rs` implement the same transitions as [`Record::consume`] and
//! [`Record::revoke`] on both forms.

use super::{ConsumeOutcome, RecordRef, RecordState};

/// The compact Redis value of a freshly issued record: the first 60 bits (15 hex digits) of
/// its fingerprint as a decimal integer, which fits Redis' integer encoding and still tells
/// two signatures with the same nonce apart. `None` for a fingerprint that is not hex (never,
/// for [`crate::signature::fingerprint`]'s): such a record is written in the text form.
pub fn compact_issued(fingerprint: &str) -> Option<String> {
    if fingerprint.is_empty() || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let prefix = &fingerprint[..fingerprint.len().min(15)];
    // itoa rather than `to_string`: this runs on every issue and consume.
    let n = u64::from_str_radix(prefix, 16).ok()?;
    Some(itoa::Buffer::new().format(n).to_owned())
}

/// Whether a Redis value is in the compact (issued) form: digits only.
fn is_compact(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// A record's state as stored (a signature with another fingerprint sees `NotIssued`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Issued, unused.
    Issued,
    /// Used up.
    Consumed,
    /// Made unusable before use.
    Revoked,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Issued => "issued",
            State::Consumed => "consumed",
            State::Revoked => "revoked",
        }
    }
}

/// What the store keeps per signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its state.
    state: State,
    /// Fingerprint of the signature's tag.
    pub fingerprint: String,
    /// Issue time, Unix seconds.
    pub issued_at: i64,
    /// Time of the last state change, Unix seconds.
    pub changed_at: i64,
    /// Token of the idempotency key of the consume that used it (empty: none).
    pub idempotency: String,
    /// Digest of the subject it was issued for (empty: none).
    pub subject: String,
}

impl Record {
    /// A freshly issued record.
    pub fn issued(fingerprint: &str, now: i64, subject: &str) -> Record {
        Record {
            state: State::Issued,
            fingerprint: fingerprint.to_owned(),
            issued_at: now,
            changed_at: now,
            idempotency: String::new(),
            subject: subject.to_owned(),
        }
    }

    /// The text stored in Redis.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "v1|{}|{}|{}|{}|{}",
            self.state.as_str(),
            self.fingerprint,
            self.issued_at,
            self.changed_at,
            self.idempotency
        );
        if !self.subject.is_empty() {
            text.push('|');
            text.push_str(&self.subject);
        }
        text
    }

    /// Parses the value stored in Redis for the signature `sig`; `None` for anything else,
    /// and for a compact record of another signature (both read as no record).
    pub fn decode_for(text: &str, sig: &RecordRef<'_>) -> Option<Record> {
        if is_compact(text) {
            return (compact_issued(sig.fingerprint).as_deref() == Some(text))
                .then(|| Record::issued(sig.fingerprint, sig.issued_at, ""));
        }
        Record::decode(text)
    }

    /// Parses the text form stored in Redis; `None` for anything else (treated as no record).
    pub fn decode(text: &str) -> Option<Record> {
        let mut parts = text.split('|');
        if parts.next()? != "v1" {
            return None;
        }
        let state = match parts.next()? {
            "issued" => State::Issued,
            "consumed" => State::Consumed,
            "revoked" => State::Revoked,
            _ => return None,
        };
        let fingerprint = parts.next()?.to_owned();
        let issued_at = parts.next()?.parse().ok()?;
        let changed_at = parts.next()?.parse().ok()?;
        let idempotency = parts.next()?.to_owned();
        let subject = parts.next().unwrap_or_default().to_owned();
        if parts.next().is_some() {
            return None;
        }
        Some(Record {
            state,
            fingerprint,
            issued_at,
            changed_at,
            idempotency,
            subject,
        })
    }

    /// The state this record gives the signature with `fingerprint`.
    pub fn state_for(&self, fingerprint: &str) -> RecordState {
        if self.fingerprint != fingerprint {
            return RecordState::NotIssued;
        }
        match self.state {
            State::Issued => RecordState::Issued,
            State::Consumed => RecordState::Consumed {
                at: self.changed_at,
            },
            State::Revoked => RecordState::Revoked {
                at: self.changed_at,
            },
        }
    }

    /// Consumes the record for the signature with `fingerprint` if it is issued.
    pub fn consume(&mut self, fingerprint: &str, now: i64, idempotency: &str) -> ConsumeOutcome {
        match self.state_for(fingerprint) {
            RecordState::Issued => {
                self.state = State::Consumed;
                self.changed_at = now;
                self.idempotency = idempotency.to_owned();
                ConsumeOutcome::Consumed { at: now }
            }
            RecordState::Consumed { at }
                if !idempotency.is_empty() && self.idempotency == idempotency =>
            {
                ConsumeOutcome::Consumed { at }
            }
            other => ConsumeOutcome::Refused(other),
        }
    }

    /// The state this record gives a signature of the subject with digest `subject`.
    pub fn state_in_subject(&self, subject: &str) -> RecordState {
        if self.subject.is_empty() || self.subject != subject {
            return RecordState::NotIssued;
        }
        self.state_for(&self.fingerprint)
    }

    /// Revokes the record for the signature with `fingerprint` if it is issued; the state before.
    pub fn revoke(&mut self, fingerprint: &str, now: i64) -> RecordState {
        let before = self.state_for(fingerprint);
        if before == RecordState::Issued {
            self.state = State::Revoked;
            self.changed_at = now;
        }
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let mut r = Record::issued("abc", 10, "");
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        r.consume("abc", 11, "ff");
        assert_eq!(r.encode(), "v1|consumed|abc|10|11|ff");
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode("v2|issued|a|1|1|"), None);
        assert_eq!(Record::decode("v1|issued|a|1|1||x|y"), None);
        let mut s = Record::issued("abc", 10, "5ub");
        assert_eq!(s.encode(), "v1|issued|abc|10|10||5ub");
        s.revoke("abc", 12);
        assert_eq!(Record::decode(&s.encode()), Some(s.clone()));
        assert_eq!(s.state_in_subject("5ub"), RecordState::Revoked { at: 12 });
        assert_eq!(s.state_in_subject("other"), RecordState::NotIssued);
    }

    fn sig(fingerprint: &str) -> RecordRef<'_> {
        RecordRef {
            key: super::super::RecordKey {
                secret_id: "AKID",
                random: 1,
            },
            fingerprint,
            issued_at: 10,
        }
    }

    #[test]
    fn compact_form_is_the_fingerprint_as_an_integer() {
        assert_eq!(compact_issued("00000000ff10").as_deref(), Some("65296"));
        assert_eq!(compact_issued("fp"), None);
        assert_eq!(
            compact_issued("2b8605336081e7e6ca577c8d").as_deref(),
            Some("196012494295670398")
        );
        let stored = compact_issued("00000000ff10").unwrap();
        assert_eq!(
            Record::decode_for(&stored, &sig("00000000ff10")),
            Some(Record::issued("00000000ff10", 10, ""))
        );
        // Another signature with the same nonce: no record of its own.
        assert_eq!(Record::decode_for(&stored, &sig("00000000ff11")), None);
        // A fingerprint of digits only that reads like the stored decimal is still another.
        assert_eq!(Record::decode_for("65296", &sig("000000065296")), None);
        // The text form still reads.
        assert_eq!(
            Record::decode_for("v1|consumed|abc|10|11|ff", &sig("abc")).map(|r| r.state_for("abc")),
            Some(RecordState::Consumed { at: 11 })
        );
    }
}
