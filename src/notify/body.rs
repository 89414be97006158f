//! The notification bodies: Tencent VOD's upload-complete event (`NewFileUpload`), so an app's
//! existing Tencent callback handler parses ours unchanged, and the same envelope for an
//! upload that never completed (`UploadAbandoned`, vod-signer's own event type).
//!
//! Tencent's shape has no place for who the upload was for; a handler reads the fields it
//! knows and ignores the others, so vod-signer adds one object beside `EventType`:
//! `"VodSigner": {"Subject", "SecretId", "Random", "ConsumedAt", "CompletedAt" | "AbandonedAt",
//! "Late"}`. `SourceInfo.SourceContext` carries the signature's `sourceContext`, as Tencent's
//! does.

use serde::Serialize;

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
    /// The signature's nonce (`Random`); with `secret_id`, it names the record.
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

// The event as Tencent names its fields, written straight from borrowed values (no JSON
// tree built first): the body is made on every completion.

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope<'a> {
    event_type: &'a str,
    file_upload_event: FileUploadEvent<'a>,
    vod_signer: VodSigner<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FileUploadEvent<'a> {
    file_id: &'a str,
    media_basic_info: MediaBasicInfo<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta_data: Option<MetaData>,
    procedure_task_id: &'a str,
    review_audio_video_task_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MediaBasicInfo<'a> {
    name: &'a str,
    description: &'a str,
    create_time: &'a str,
    update_time: &'a str,
    expire_time: &'a str,
    class_id: u64,
    class_name: &'a str,
    class_path: &'a str,
    cover_url: &'a str,
    #[serde(rename = "Type")]
    media_type: &'a str,
    media_url: &'a str,
    tag_set: [&'a str; 0],
    storage_region: &'a str,
    source_info: SourceInfo<'a>,
    vid: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SourceInfo<'a> {
    source_type: &'a str,
    source_context: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MetaData {
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VodSigner<'a> {
    subject: &'a str,
    secret_id: &'a str,
    random: u32,
    consumed_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    abandoned_at: Option<&'a str>,
    late: bool,
}

fn envelope<'a>(
    facts: &UploadFacts<'a>,
    event_type: &'a str,
    upload: &'a Upload,
    at: &'a str,
    consumed_at: &'a str,
) -> Envelope<'a> {
    Envelope {
        event_type,
        file_upload_event: FileUploadEvent {
            file_id: &upload.file_id,
            media_basic_info: MediaBasicInfo {
                name: "",
                description: "",
                create_time: at,
                update_time: at,
                expire_time: "9999-12-31T23:59:59Z",
                class_id: facts.class_id,
                class_name: "",
                class_path: "",
                cover_url: "",
                media_type: &upload.media_type,
                media_url: &upload.media_url,
                tag_set: [],
                storage_region: facts.storage_region,
                source_info: SourceInfo {
                    source_type: "Upload",
                    source_context: facts.source_context,
                },
                vid: &upload.file_id,
            },
            meta_data: None,
            procedure_task_id: "",
            review_audio_video_task_id: "",
        },
        vod_signer: VodSigner {
            subject: facts.subject,
            secret_id: facts.secret_id,
            random: facts.random,
            consumed_at,
            completed_at: None,
            abandoned_at: None,
            late: false,
        },
    }
}

/// The body of a completed upload's notification.
pub fn new_file_upload(
    facts: &UploadFacts<'_>,
    upload: &Upload,
    completed_at: i64,
    late: bool,
) -> String {
    let (at, consumed) = (rfc3339(completed_at), rfc3339(facts.consumed_at));
    let mut body = envelope(facts, NEW_FILE_UPLOAD, upload, &at, &consumed);
    body.file_upload_event.meta_data = Some(MetaData {
        size: upload.file_size,
    });
    body.vod_signer.completed_at = Some(&at);
    body.vod_signer.late = late;
    serde_json::to_string(&body).expect("a body of strings and numbers serializes")
}

/// The body of an abandoned upload's notification: the same envelope, no file.
pub fn upload_abandoned(facts: &UploadFacts<'_>, abandoned_at: i64) -> String {
    let (at, consumed) = (rfc3339(abandoned_at), rfc3339(facts.consumed_at));
    let none = Upload::default();
    let mut body = envelope(facts, UPLOAD_ABANDONED, &none, &at, &consumed);
    body.vod_signer.abandoned_at = Some(&at);
    serde_json::to_string(&body).expect("a body of strings and numbers serializes")
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

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
