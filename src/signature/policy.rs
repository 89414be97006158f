//! What the platform does with an upload: Tencent's optional parameters, and their rules.

use serde::Serialize;

/// Longest `sourceContext`, in bytes.
pub const MAX_SOURCE_CONTEXT: usize = 250;
/// Longest `sessionContext`, in bytes.
pub const MAX_SESSION_CONTEXT: usize = 1000;
/// Longest `procedure` name, in bytes (a cap of vod-signer's, so every valid policy signs
/// into a signature the parser accepts).
pub const MAX_PROCEDURE: usize = 1000;
/// Longest `storageRegion`, in bytes.
pub const MAX_STORAGE_REGION: usize = 64;

/// What the platform does with the upload: Tencent's optional parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UploadPolicy {
    /// `classId`: category id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_id: Option<u64>,
    /// `procedure`: task-flow template run after upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procedure: Option<String>,
    /// `taskPriority`: -10..=10, only with `procedure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_priority: Option<i32>,
    /// `taskNotifyMode`: `Finish`, `Change` or `None`, only with `procedure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_notify_mode: Option<String>,
    /// `sourceContext`: at most 250 bytes, echoed in the upload-complete event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_context: Option<String>,
    /// `sessionContext`: at most 1000 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_context: Option<String>,
    /// `vodSubAppId`: sub-application id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vod_sub_app_id: Option<u64>,
    /// `storageRegion`, e.g. `ap-chongqing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_region: Option<String>,
    /// `maxFileSize` (vod-signer extension): largest upload in bytes, enforced at consume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
}

/// Why a policy breaks Tencent's rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `taskPriority` outside -10..=10.
    #[error("taskPriority {0} is outside -10..=10")]
    TaskPriorityRange(i32),
    /// `taskNotifyMode` not one of the three values.
    #[error("taskNotifyMode must be Finish, Change or None")]
    TaskNotifyMode,
    /// A parameter that needs `procedure` without it.
    #[error("{0} is only allowed together with procedure")]
    NeedsProcedure(&'static str),
    /// A context longer than allowed.
    #[error("{name} is {len} bytes, at most {max} allowed")]
    TooLong {
        /// Parameter name.
        name: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The longest allowed, in bytes.
        max: usize,
    },
}

impl UploadPolicy {
    /// Checks Tencent's rules for the optional parameters (SPEC section 2's table).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let has_procedure = self.procedure.is_some();
        if let Some(p) = self.task_priority {
            if !(-10..=10).contains(&p) {
                return Err(PolicyError::TaskPriorityRange(p));
            }
            if !has_procedure {
                return Err(PolicyError::NeedsProcedure("taskPriority"));
            }
        }
        if let Some(mode) = &self.task_notify_mode {
            if !matches!(mode.as_str(), "Finish" | "Change" | "None") {
                return Err(PolicyError::TaskNotifyMode);
            }
            if !has_procedure {
                return Err(PolicyError::NeedsProcedure("taskNotifyMode"));
            }
        }
        check_len("procedure", &self.procedure, MAX_PROCEDURE)?;
        check_len("storageRegion", &self.storage_region, MAX_STORAGE_REGION)?;
        check_len("sourceContext", &self.source_context, MAX_SOURCE_CONTEXT)?;
        check_len("sessionContext", &self.session_context, MAX_SESSION_CONTEXT)?;
        Ok(())
    }
}

fn check_len(name: &'static str, value: &Option<String>, max: usize) -> Result<(), PolicyError> {
    match value {
        Some(v) if v.len() > max => Err(PolicyError::TooLong {
            name,
            len: v.len(),
            max,
        }),
        _ => Ok(()),
    }
}
