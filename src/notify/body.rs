//! The notification bodies: Tencent VOD's upload-complete event (`NewFileUpload`), so an app's
//! existing Tencent callback handler parses ours unchanged, and the same envelope for an
//! upload that never completed (`UploadAbandoned`, vod-signer's own event type).
//!
//! Tencent's shape has no place for who the upload was for; a handler reads the fields it
//! knows and ignores the others, so vod-signer adds one object beside `EventType`:
//! `"VodSigner": {"Subject", "SecretId", "Random", "ConsumedAt", "CompletedAt" | "AbandonedAt",
//! "Late"}`. `SourceInfo.SourceContext` carries the signature's `sourceContext`, as Tencent's
//! does.

use serde_json::{Value, json};

use crate::clock::rfc3339;
use crate::store::Upload;

/// `EventType` of a completed upload (Tencent's).
pub const NEW_FILE_UPLOAD: &str = "NewFileUpload";
/// `EventType` of an abandoned upload (vod-signer's).
pub const UPLOAD_ABANDONED: &str = "UploadAbandoned";

/// What a notification says about one upload.
#[derive(Clone, Copy, Debug)]
pub struct UploadFacts<'a> {
    /// The signature's SecretId.
    pub secret_id: &'a str,
    /// Its nonce.
    pub random: u32,
    /// Its issue time (`currentTimeStamp`), Unix seconds.
    pub issued_at: i64,
    /// The end user it was issued for (empty: none, or forgotten).
    pub subject: &'a str,
    /// Its `sourceContext`.
    pub source_context: &'a str,
    /// Its `storageRegion`, when known.
    pub storage_region: &'a str,
    /// Its `classId`, when known.
    pub class_id: u64,
    /// When it was consumed, Unix seconds.
    pub consumed_at: i64,
}

/// The `webhook-id` of an upload's notification of `event_type`: derived from the upload, so
/// every delivery of it, and a second queueing after a crash, carries the same one.
pub fn webhook_id(facts: &UploadFacts<'_>, event_type: &str) -> String {
    let seed = format!(
        "{}:{}:{}:{event_type}",
        facts.secret_id, facts.random, facts.issued_at
    );
    format!("msg_{}", crate::digest::sha256_hex(seed.as_bytes(), 16))
}

fn media_basic_info(facts: &UploadFacts<'_>, upload: Option<&Upload>, at: i64) -> Value {
    let empty = Upload::default();
    let upload = upload.unwrap_or(&empty);
    json!({
        "Name": "",
        "Description": "",
        "CreateTime": rfc3339(at),
        "UpdateTime": rfc3339(at),
        "ExpireTime": "9999-12-31T23:59:59Z",
        "ClassId": facts.class_id,
        "ClassName": "",
        "ClassPath": "",
        "CoverUrl": "",
        "Type": upload.media_type,
        "MediaUrl": upload.media_url,
        "TagSet": [],
        "StorageRegion": facts.storage_region,
        "SourceInfo": {"SourceType": "Upload", "SourceContext": facts.source_context},
        "Vid": upload.file_id,
    })
}

/// The body of a completed upload's notification.
pub fn new_file_upload(
    facts: &UploadFacts<'_>,
    upload: &Upload,
    completed_at: i64,
    late: bool,
) -> String {
    json!({
        "EventType": NEW_FILE_UPLOAD,
        "FileUploadEvent": {
            "FileId": upload.file_id,
            "MediaBasicInfo": media_basic_info(facts, Some(upload), completed_at),
            "MetaData": {"Size": upload.file_size},
            "ProcedureTaskId": "",
            "ReviewAudioVideoTaskId": "",
        },
        "VodSigner": {
            "Subject": facts.subject,
            "SecretId": facts.secret_id,
            "Random": facts.random,
            "ConsumedAt": rfc3339(facts.consumed_at),
            "CompletedAt": rfc3339(completed_at),
            "Late": late,
        },
    })
    .to_string()
}

/// The body of an abandoned upload's notification: the same envelope, no file.
pub fn upload_abandoned(facts: &UploadFacts<'_>, abandoned_at: i64) -> String {
    json!({
        "EventType": UPLOAD_ABANDONED,
        "FileUploadEvent": {
            "FileId": "",
            "MediaBasicInfo": media_basic_info(facts, None, abandoned_at),
            "ProcedureTaskId": "",
            "ReviewAudioVideoTaskId": "",
        },
        "VodSigner": {
            "Subject": facts.subject,
            "SecretId": facts.secret_id,
            "Random": facts.random,
            "ConsumedAt": rfc3339(facts.consumed_at),
            "AbandonedAt": rfc3339(abandoned_at),
            "Late": false,
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> UploadFacts<'static> {
        UploadFacts {
            secret_id: "AKIDx",
            random: 42,
            issued_at: 1_700_000_000,
            subject: "user-42",
            source_context: "user-42/upload-1",
            storage_region: "ap-chongqing",
            class_id: 7,
            consumed_at: 1_700_000_100,
        }
    }

    #[test]
    fn a_completion_has_tencents_shape_and_ours_beside_it() {
        let upload = Upload {
            file_id: "5285890784273533167".into(),
            file_size: 1024,
            media_type: "mp4".into(),
            media_url: "http://example.invalid/f.mp4".into(),
        };
        let body: Value =
            serde_json::from_str(&new_file_upload(&facts(), &upload, 1_700_000_200, true)).unwrap();
        assert_eq!(body["EventType"], "NewFileUpload");
        let event = &body["FileUploadEvent"];
        assert_eq!(event["FileId"], "5285890784273533167");
        assert_eq!(event["ProcedureTaskId"], "");
        let info = &event["MediaBasicInfo"];
        assert_eq!(info["SourceInfo"]["SourceType"], "Upload");
        assert_eq!(info["SourceInfo"]["SourceContext"], "user-42/upload-1");
        assert_eq!(info["MediaUrl"], "http://example.invalid/f.mp4");
        assert_eq!(info["Type"], "mp4");
        assert_eq!(info["StorageRegion"], "ap-chongqing");
        assert_eq!(info["ClassId"], 7);
        assert_eq!(event["MetaData"]["Size"], 1024);
        assert_eq!(body["VodSigner"]["Subject"], "user-42");
        assert_eq!(body["VodSigner"]["Random"], 42);
        assert_eq!(body["VodSigner"]["Late"], true);
        assert_eq!(body["VodSigner"]["CompletedAt"], "2023-11-14T22:16:40Z");
    }

    #[test]
    fn an_abandonment_has_the_same_envelope() {
        let body: Value = serde_json::from_str(&upload_abandoned(&facts(), 1_700_003_700)).unwrap();
        assert_eq!(body["EventType"], "UploadAbandoned");
        assert_eq!(body["FileUploadEvent"]["FileId"], "");
        assert_eq!(
            body["FileUploadEvent"]["MediaBasicInfo"]["SourceInfo"]["SourceContext"],
            "user-42/upload-1"
        );
        assert_eq!(body["VodSigner"]["AbandonedAt"], "2023-11-14T23:15:00Z");
    }

    #[test]
    fn webhook_ids_are_stable_per_upload_and_event() {
        let a = webhook_id(&facts(), NEW_FILE_UPLOAD);
        assert_eq!(a, webhook_id(&facts(), NEW_FILE_UPLOAD));
        assert_ne!(a, webhook_id(&facts(), UPLOAD_ABANDONED));
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
    }
}
