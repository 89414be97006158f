//! One signature's record, its text form in Redis, and its state transitions.
//!
//! Redis value, two forms:
//!
//! - issued without a subject (written with `SET NX` at issue): the fingerprint's bits as a
//!   decimal integer ([`compact_issued`]). Redis keeps an integer inside the key's object
//!   header instead of allocating a string, which is most of the value's memory: an
//!   outstanding signature costs ~64 bytes less. Its issue time is the signature's own
//!   `currentTimeStamp`.
//! - issued for a subject: the fingerprint's first 15 hex digits and the subject's digest,
//!   `{fingerprint prefix}:{subject digest}` ([`compact_issued_with_subject`]): 40 bytes, which
//!   Redis keeps in one allocation with the key's object header (48 bytes less than the text
//!   form). `--text-subject-records` writes the text form instead, which versions before 6
//!   December 2026 read (for the rolling upgrade from one).
//! - otherwise (after a change, or written by an older version):
//!   `v1|{state}|{fingerprint}|{issued_at}|{changed_at}|{idempotency token}`, and for a
//!   signature issued for a `subject` a seventh field, the subject's digest
//!   (`|{subject digest}`), which names its subject index and lets RevokeSubject revoke it
//!   without the signature. A record of the compact subject form revoked by RevokeSubject
//!   keeps only the fingerprint's first 15 digits (all it held); such a fingerprint stands
//!   for every one that starts with it, as in the compact forms.
//! - once the upload is over (`completed` or `abandoned`), six more fields:
//!   `...|{subject digest}|{consumed_at}|{late 0/1}|{file id}|{file size}|{media type}|{media url}`
//!   (the subject field is then always there, empty without one; the file's fields are
//!   empty while abandoned, and percent-encoded so that no `|` or control character appears).
//!   The record alone can then rebuild the upload's notification.
//!
//! The Lua scripts in `lua/` implement the same transitions as [`Record::consume`],
//! [`Record::revoke`], [`Record::complete`] and [`Record::abandon`] on every form.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::{CompleteOutcome, ConsumeOutcome, RecordRef, RecordState, Upload};

/// What a record's free-text fields escape: what would end a field or break a line.
const FIELD: &AsciiSet = &CONTROLS.add(b'|').add(b'%');

/// A free-text value as a record field (and as the scripts compare it).
pub fn encode_field(value: &str) -> String {
    utf8_percent_encode(value, FIELD).to_string()
}

/// A record field back to its value.
pub(super) fn decode_field(field: &str) -> String {
    percent_decode_str(field).decode_utf8_lossy().into_owned()
}

/// Hex digits of the fingerprint the compact forms keep: 60 bits, which still tell two
/// signatures with the same nonce apart.
const FINGERPRINT_PREFIX: usize = 15;

/// The longest value Redis keeps in one allocation with its object header (`embstr`).
const EMBEDDED_STRING: usize = 44;

/// Whether a string is all hex digits (and not empty).
fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a stored fingerprint is the signature's: the same, or its first 15 digits (kept by
/// a compact record revoked by its subject).
fn same_fingerprint(stored: &str, fingerprint: &str) -> bool {
    stored == fingerprint
        || (stored.len() == FINGERPRINT_PREFIX
            && fingerprint.get(..FINGERPRINT_PREFIX) == Some(stored))
}

/// The compact Redis value of a freshly issued record: the first 60 bits (15 hex digits) of
/// its fingerprint as a decimal integer, which fits Redis' integer encoding and still tells
/// two signatures with the same nonce apart. `None` for a fingerprint that is not hex (never,
/// for [`crate::signature::fingerprint`]'s): such a record is written in the text form.
pub fn compact_issued(fingerprint: &str) -> Option<String> {
    if !is_hex(fingerprint) {
        return None;
    }
    let prefix = &fingerprint[..fingerprint.len().min(FINGERPRINT_PREFIX)];
    // itoa rather than `to_string`: this runs on every issue and consume.
    let n = u64::from_str_radix(prefix, 16).ok()?;
    Some(itoa::Buffer::new().format(n).to_owned())
}

/// The compact Redis value of a record freshly issued for the subject with digest `subject`:
/// `{first 15 hex digits of the fingerprint}:{subject digest}`, short enough for Redis' embedded
/// strings. `None` when either is not hex or the value would be longer (the text form then).
pub fn compact_issued_with_subject(fingerprint: &str, subject: &str) -> Option<String> {
    let prefix = fingerprint.get(..FINGERPRINT_PREFIX)?;
    (is_hex(prefix) && is_hex(subject) && FINGERPRINT_PREFIX + 1 + subject.len() <= EMBEDDED_STRING)
        .then(|| format!("{prefix}:{subject}"))
}

/// A value in the compact subject form: (fingerprint prefix, subject digest).
fn compact_with_subject(text: &str) -> Option<(&str, &str)> {
    let (prefix, subject) = text.split_once(':')?;
    (prefix.len() == FINGERPRINT_PREFIX && is_hex(prefix) && is_hex(subject))
        .then_some((prefix, subject))
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
    /// Consumed, and the upload was stored.
    Completed,
    /// Consumed, and the upload did not complete within the completion window.
    Abandoned,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Issued => "issued",
            State::Consumed => "consumed",
            State::Revoked => "revoked",
            State::Completed => "completed",
            State::Abandoned => "abandoned",
        }
    }

    /// Whether records in this state carry the upload's fields.
    fn is_over(self) -> bool {
        matches!(self, State::Completed | State::Abandoned)
    }
}

/// What the store keeps per signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the signature is in its life, as stored.
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
    /// When it was consumed (completed and abandoned records; the others say 0).
    pub consumed_at: i64,
    /// Completed after it was marked abandoned.
    pub late: bool,
    /// The stored file (completed records).
    pub upload: Option<Upload>,
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
            consumed_at: 0,
            late: false,
            upload: None,
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
        if !self.subject.is_empty() || self.state.is_over() {
            text.push('|');
            text.push_str(&self.subject);
        }
        if self.state.is_over() {
            let empty = Upload::default();
            let upload = self.upload.as_ref().unwrap_or(&empty);
            text.push_str(&format!(
                "|{}|{}|{}|{}|{}|{}",
                self.consumed_at,
                u8::from(self.late),
                encode_field(&upload.file_id),
                upload.file_size,
                encode_field(&upload.media_type),
                encode_field(&upload.media_url)
            ));
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
        if let Some((prefix, subject)) = compact_with_subject(text) {
            return same_fingerprint(prefix, sig.fingerprint)
                .then(|| Record::issued(sig.fingerprint, sig.issued_at, subject));
        }
        Record::decode(text)
    }

    /// Parses the value stored in Redis without its signature: the text form, and the compact
    /// subject form (then with the fingerprint's first 15 digits, and issue time 0); `None`
    /// for anything else (treated as no record).
    pub fn decode(text: &str) -> Option<Record> {
        if let Some((prefix, subject)) = compact_with_subject(text) {
            return Some(Record::issued(prefix, 0, subject));
        }
        let mut parts = text.split('|');
        if parts.next()? != "v1" {
            return None;
        }
        let state = match parts.next()? {
            "issued" => State::Issued,
            "consumed" => State::Consumed,
            "revoked" => State::Revoked,
            "completed" => State::Completed,
            "abandoned" => State::Abandoned,
            _ => return None,
        };
        let fingerprint = parts.next()?.to_owned();
        let issued_at = parts.next()?.parse().ok()?;
        let changed_at = parts.next()?.parse().ok()?;
        let idempotency = parts.next()?.to_owned();
        let subject = parts.next().unwrap_or_default().to_owned();
        let mut record = Record {
            state,
            fingerprint,
            issued_at,
            changed_at,
            idempotency,
            subject,
            consumed_at: 0,
            late: false,
            upload: None,
        };
        if state.is_over() {
            record.consumed_at = parts.next()?.parse().ok()?;
            record.late = parts.next()? == "1";
            let file_id = decode_field(parts.next()?);
            let file_size = parts.next()?.parse().ok()?;
            let media_type = decode_field(parts.next()?);
            let media_url = decode_field(parts.next()?);
            if state == State::Completed {
                record.upload = Some(Upload {
                    file_id,
                    file_size,
                    media_type,
                    media_url,
                });
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(record)
    }

    /// The state this record gives the signature with `fingerprint`.
    pub fn state_for(&self, fingerprint: &str) -> RecordState {
        if !same_fingerprint(&self.fingerprint, fingerprint) {
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
            State::Completed => RecordState::Completed {
                at: self.changed_at,
                consumed_at: self.consumed_at,
            },
            State::Abandoned => RecordState::Abandoned {
                at: self.changed_at,
                consumed_at: self.consumed_at,
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
            | RecordState::Completed {
                consumed_at: at, ..
            }
            | RecordState::Abandoned {
                consumed_at: at, ..
            } if !idempotency.is_empty() && self.idempotency == idempotency => {
                ConsumeOutcome::Consumed { at }
            }
            other => ConsumeOutcome::Refused(other),
        }
    }

    /// Records the stored upload of the signature with `fingerprint`: consumed (or abandoned:
    /// then late) becomes completed. The same file again answers the first call's success.
    pub fn complete(&mut self, fingerprint: &str, now: i64, upload: &Upload) -> CompleteOutcome {
        let state = self.state_for(fingerprint);
        match state {
            RecordState::Consumed { at }
            | RecordState::Abandoned {
                consumed_at: at, ..
            } => {
                self.late = self.state == State::Abandoned;
                self.state = State::Completed;
                self.consumed_at = at;
                self.changed_at = now;
                self.upload = Some(upload.clone());
                CompleteOutcome::Completed {
                    at: now,
                    late: self.late,
                    repeat: false,
                    consumed_at: at,
                    subject: self.subject.clone(),
                }
            }
            RecordState::Completed { at, .. } => {
                if self.upload.as_ref().map(|u| u.file_id.as_str()) == Some(&upload.file_id) {
                    CompleteOutcome::Completed {
                        at,
                        late: self.late,
                        repeat: true,
                        consumed_at: self.consumed_at,
                        subject: self.subject.clone(),
                    }
                } else {
                    CompleteOutcome::OtherFile {
                        at,
                        file_id: self
                            .upload
                            .as_ref()
                            .map(|u| u.file_id.clone())
                            .unwrap_or_default(),
                    }
                }
            }
            other => CompleteOutcome::Refused(other),
        }
    }

    /// Marks the record abandoned if it is still consumed `window` seconds after its
    /// consume; answers whether it did.
    pub fn abandon(&mut self, now: i64, window: i64) -> bool {
        if self.state != State::Consumed || self.changed_at.saturating_add(window) > now {
            return false;
        }
        self.state = State::Abandoned;
        self.consumed_at = self.changed_at;
        self.changed_at = now;
        true
    }

    /// Whether the record is consumed and still awaits its upload.
    pub fn awaits_upload(&self) -> bool {
        self.state == State::Consumed
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
    fn compact_subject_form_is_the_fingerprint_prefix_and_the_subject() {
        let fp = "2b8605336081e7e6ca577c8d";
        let digest = "0123456789abcdef01234567";
        let stored = compact_issued_with_subject(fp, digest).unwrap();
        assert_eq!(stored, "2b8605336081e7e:0123456789abcdef01234567");
        assert!(stored.len() <= EMBEDDED_STRING);
        assert_eq!(
            Record::decode_for(&stored, &sig(fp)),
            Some(Record::issued(fp, 10, digest))
        );
        // Another signature with the same nonce (another 60-bit prefix): no record of its own.
        assert_eq!(
            Record::decode_for(&stored, &sig("2b8605336081e7f6ca577c8d")),
            None
        );
        // Read without the signature (a subject's listing): issued, and the subject's only.
        let listed = Record::decode(&stored).unwrap();
        assert_eq!(listed.state_in_subject(digest), RecordState::Issued);
        assert_eq!(listed.state_in_subject("other"), RecordState::NotIssued);
        // Revoked by its subject, it keeps the prefix, which stands for the signature.
        let revoked =
            Record::decode("v1|revoked|2b8605336081e7e|10|12||0123456789abcdef01234567").unwrap();
        assert_eq!(revoked.state_for(fp), RecordState::Revoked { at: 12 });
        assert_eq!(
            revoked.state_for("2b8605336081e7f6ca577c8d"),
            RecordState::NotIssued
        );
        // What does not fit Redis' embedded strings, or is not hex, stays in the text form.
        assert_eq!(compact_issued_with_subject(fp, &"a".repeat(29)), None);
        assert_eq!(compact_issued_with_subject(fp, "subject"), None);
        assert_eq!(compact_issued_with_subject("fp", digest), None);
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
