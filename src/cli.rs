//! The offline subcommands: `issue` signs with a key from the keys directory, `inspect`
//! decodes a signature. Neither touches a store.

use std::io::Read as _;

use serde_json::json;

use crate::config::{InspectArgs, IssueArgs, PolicyArgs};
use crate::keys::{KeyError, KeyRing};
use crate::signature::{self, PolicyError, SignRequest, SignatureError, UploadPolicy};

/// Why `issue` or `inspect` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `issue` signs with a key from a directory, and none was named.
    #[error("--keys-dir (or VOD_SIGNER_KEYS_DIR) is required")]
    NoKeysDir,
    /// The keys directory is unusable.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The flags describe a policy the platform would refuse.
    #[error("invalid policy")]
    Policy(#[source] PolicyError),
    /// `inspect -` could not read its input.
    #[error("cannot read standard input")]
    Stdin(#[source] std::io::Error),
    /// The input does not decode as a signature.
    #[error("not a valid signature")]
    NotASignature(#[source] SignatureError),
}

/// The policy the flags describe.
pub fn policy_from_args(p: &PolicyArgs) -> UploadPolicy {
    UploadPolicy {
        class_id: p.class_id,
        procedure: p.procedure.clone(),
        task_priority: p.task_priority,
        task_notify_mode: p.task_notify_mode.clone(),
        source_context: p.source_context.clone(),
        session_context: p.session_context.clone(),
        vod_sub_app_id: p.vod_sub_app_id,
        storage_region: p.storage_region.clone(),
        max_file_size: p.max_file_size,
    }
}

/// `vod-signer issue`: prints a signature (or, with `--json`, the signature and its claims).
pub fn issue(args: &IssueArgs) -> Result<String, CliError> {
    let dir = args.keys.keys_dir.as_deref().ok_or(CliError::NoKeysDir)?;
    let keys = KeyRing::load_dir(dir, args.keys.active_key.as_deref())?;
    let policy = policy_from_args(&args.policy);
    policy.validate().map_err(CliError::Policy)?;
    let secret_id = keys.active_id();
    let key = keys.get(secret_id).expect("the active key is in the ring");
    let now = crate::clock::unix_now();
    let signed = signature::sign(
        key,
        &SignRequest {
            secret_id,
            current_time_stamp: now,
            expire_time: now + args.ttl as i64,
            random: rand::random(),
            one_time_valid: true,
            policy: &policy,
        },
    );
    if args.json {
        let out = json!({ "signature": signed.signature, "claims": signed.claims });
        Ok(serde_json::to_string_pretty(&out).expect("claims serialize"))
    } else {
        Ok(signed.signature)
    }
}

/// `vod-signer inspect`: the claims as JSON, or why the input is not a signature.
pub fn inspect(args: &InspectArgs) -> Result<String, CliError> {
    let mut input = args.signature.clone();
    if input == "-" {
        input.clear();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(CliError::Stdin)?;
    }
    let parsed = signature::parse(input.trim()).map_err(CliError::NotASignature)?;
    let tag = crate::digest::hex(&parsed.tag);
    let out = json!({ "claims": parsed.claims, "tag_hex": tag, "verified": false });
    Ok(serde_json::to_string_pretty(&out).expect("claims serialize"))
}
