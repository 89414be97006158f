//! The RPCs of `SignatureService`, as one enum: what the caller policy grants, what the metrics
//! and logs label, what a refusal is about. Below every module that names them, so none
//! imports another for an enum.

/// An RPC of `SignatureService`, named by its gRPC method name (`IssueSignature`, ...).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
pub enum Rpc {
    /// IssueSignature.
    #[strum(serialize = "IssueSignature")]
    Issue,
    /// VerifySignature.
    #[strum(serialize = "VerifySignature")]
    Verify,
    /// ConsumeSignature.
    #[strum(serialize = "ConsumeSignature")]
    Consume,
    /// RevokeSignature.
    #[strum(serialize = "RevokeSignature")]
    Revoke,
    /// WatchEvents.
    #[strum(serialize = "WatchEvents")]
    WatchEvents,
    /// ListSignatures.
    #[strum(serialize = "ListSignatures")]
    ListSignatures,
    /// RevokeSubject.
    #[strum(serialize = "RevokeSubject")]
    RevokeSubject,
    /// CompleteUpload.
    #[strum(serialize = "CompleteUpload")]
    CompleteUpload,
    /// PullEvents.
    #[strum(serialize = "PullEvents")]
    PullEvents,
    /// ConfirmEvents.
    #[strum(serialize = "ConfirmEvents")]
    ConfirmEvents,
}

impl Rpc {
    /// The RPC's gRPC method name.
    pub fn name(self) -> &'static str {
        self.into()
    }
}
