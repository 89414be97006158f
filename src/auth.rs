//! Who may call what: the caller policy file (SPEC section 6).
//!
//! ```toml
//! [[caller]]
//! name = "app-server"
//! roles = ["issuer"]      # issuer: Issue, Verify, Revoke, WatchEvents, ListSignatures, RevokeSubject, PullEvents, ConfirmEvents; consumer: Verify, Consume, CompleteUpload; admin: all
//! san = ["spiffe://cluster.local/ns/app/sa/app-server"]   # client certificate SANs (DNS or URI)
//! token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! ```
//!
//! A caller is recognised by a bearer token (`authorization: Bearer ...`, compared by its
//! SHA-256; the file never holds a token) or, without one, by its client certificate's SANs.
//! This module knows nothing of gRPC: the caller check of the gRPC edge hands it the
//! credentials it found.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::reason::Reason;
use crate::rpc::Rpc;

/// The caller policy, swapped on reload; `None` lets every caller call everything.
pub type SharedPolicy = Arc<arc_swap::ArcSwapOption<CallerPolicy>>;

/// A role: a set of RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// App servers: IssueSignature, VerifySignature, RevokeSignature, WatchEvents,
    /// ListSignatures, RevokeSubject, PullEvents, ConfirmEvents.
    Issuer,
    /// Upload gateways: VerifySignature, ConsumeSignature, CompleteUpload.
    Consumer,
    /// Operators: everything.
    Admin,
}

impl Role {
    /// Whether this role may call `rpc`.
    pub fn allows(self, rpc: Rpc) -> bool {
        match self {
            Role::Admin => true,
            // The app server issues, and follows the events of what it issued.
            Role::Issuer => matches!(
                rpc,
                Rpc::Issue
                    | Rpc::Verify
                    | Rpc::Revoke
                    | Rpc::WatchEvents
                    | Rpc::ListSignatures
                    | Rpc::RevokeSubject
                    | Rpc::PullEvents
                    | Rpc::ConfirmEvents
            ),
            // The upload gateway uses the signature up, then says the upload is stored.
            Role::Consumer => matches!(rpc, Rpc::Verify | Rpc::Consume | Rpc::CompleteUpload),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    name: String,
    roles: Vec<Role>,
    #[serde(default)]
    san: Vec<String>,
    #[serde(default)]
    token_sha256: Vec<String>,
}

/// One known caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Its name, for logs.
    pub name: String,
    /// What it may call: the union of its roles' RPCs.
    pub roles: Vec<Role>,
}

/// What the service found on a call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'a> {
    /// The bearer token of the `authorization` metadata, if any.
    pub bearer: Option<&'a str>,
    /// The client certificate chain (DER, leaf first), if the connection has one.
    pub client_cert: Option<&'a [u8]>,
}

/// Why a call was not allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that names no caller.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller without a role that allows the RPC.
    #[error("caller {caller:?} may not call {rpc}")]
    PermissionDenied {
        /// The caller's name.
        caller: String,
        /// Name of the RPC it may not call.
        rpc: &'static str,
    },
}

impl AuthError {
    /// The reason the call is refused with.
    pub fn reason(&self) -> Reason {
        match self {
            AuthError::Unauthenticated(_) => Reason::CallerUnauthenticated,
            AuthError::PermissionDenied { .. } => Reason::PermissionDenied,
        }
    }
}

/// Why a caller policy's text is not a valid policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or not the policy's shape (a field missing or unknown).
    #[error("cannot parse it")]
    Toml(#[source] toml::de::Error),
    /// A caller that could call nothing.
    #[error("caller {caller:?} has no roles")]
    NoRoles {
        /// The caller's name.
        caller: String,
    },
    /// A caller nobody could ever be recognised as.
    #[error("caller {caller:?} has neither san nor token_sha256")]
    NoCredential {
        /// The caller's name.
        caller: String,
    },
    /// A token digest that is not a SHA-256 in hex.
    #[error("caller {caller:?}: token_sha256 must be 64 hex digits")]
    BadDigest {
        /// The caller's name.
        caller: String,
    },
    /// One token for two entries: which caller it names would be ambiguous.
    #[error("caller {caller:?}: a token_sha256 is listed twice")]
    DuplicateToken {
        /// The caller's name (the second listing).
        caller: String,
    },
    /// One SAN for two entries: which caller it names would be ambiguous.
    #[error("caller {caller:?}: san {san:?} is listed twice")]
    DuplicateSan {
        /// The caller's name (the second listing).
        caller: String,
        /// The client certificate subject alternative name listed twice.
        san: String,
    },
}

/// Why `--caller-policy` could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    /// The file could not be read.
    #[error("caller policy {}: cannot read it", path.display())]
    Read {
        /// Path of the caller policy file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid policy.
    #[error("caller policy {} is not valid", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: PolicyError,
    },
}

/// The loaded caller policy.
#[derive(Clone, Debug)]
pub struct CallerPolicy {
    callers: Vec<Caller>,
    by_token: HashMap<String, usize>,
    by_san: HashMap<String, usize>,
}

/// SHA-256 of a token, lower-case hex: the form the policy file stores.
pub fn token_digest(token: &str) -> String {
    crate::digest::sha256_hex(token.as_bytes(), 32)
}

impl CallerPolicy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<CallerPolicy, PolicyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        CallerPolicy::parse(&text).map_err(|source| PolicyFileError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses and checks a policy.
    pub fn parse(text: &str) -> Result<CallerPolicy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(PolicyError::Toml)?;
        let mut policy = CallerPolicy {
            callers: Vec::new(),
            by_token: HashMap::new(),
            by_san: HashMap::new(),
        };
        for entry in file.caller {
            let index = policy.callers.len();
            let caller = || entry.name.clone();
            if entry.roles.is_empty() {
                return Err(PolicyError::NoRoles { caller: caller() });
            }
            if entry.san.is_empty() && entry.token_sha256.is_empty() {
                return Err(PolicyError::NoCredential { caller: caller() });
            }
            for digest in &entry.token_sha256 {
                let digest = digest.to_ascii_lowercase();
                if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(PolicyError::BadDigest { caller: caller() });
                }
                if policy.by_token.insert(digest, index).is_some() {
                    return Err(PolicyError::DuplicateToken { caller: caller() });
                }
            }
            for san in &entry.san {
                if policy.by_san.insert(san.clone(), index).is_some() {
                    return Err(PolicyError::DuplicateSan {
                        caller: caller(),
                        san: san.clone(),
                    });
                }
            }
            policy.callers.push(Caller {
                name: entry.name,
                roles: entry.roles,
            });
        }
        Ok(policy)
    }

    /// How many callers the policy knows.
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    /// Whether the policy knows no caller (then every call is refused).
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// The caller these credentials name, if it may call `rpc`.
    pub fn authorize(&self, rpc: Rpc, creds: Credentials<'_>) -> Result<&Caller, AuthError> {
        let index = if let Some(token) = creds.bearer {
            *self
                .by_token
                .get(&token_digest(token))
                .ok_or_else(|| AuthError::Unauthenticated("the bearer token is not known".into()))?
        } else if let Some(der) = creds.client_cert {
            let sans = subject_alt_names(der);
            sans.iter()
                .find_map(|san| self.by_san.get(san).copied())
                .ok_or_else(|| {
                    AuthError::Unauthenticated(
                        "no SAN of the client certificate names a known caller".into(),
                    )
                })?
        } else {
            return Err(AuthError::Unauthenticated(
                "no credential: send `authorization: Bearer <token>` or a client certificate"
                    .into(),
            ));
        };
        let caller = &self.callers[index];
        if caller.roles.iter().any(|r| r.allows(rpc)) {
            Ok(caller)
        } else {
            Err(AuthError::PermissionDenied {
                caller: caller.name.clone(),
                rpc: rpc.name(),
            })
        }
    }
}

/// The DNS and URI subject alternative names of a DER certificate.
pub fn subject_alt_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(s) | GeneralName::URI(s) => Some((*s).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[caller]]
name = "app-server"
roles = ["issuer"]
san = ["spiffe://cluster.local/ns/app/sa/app-server"]
token_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]

[[caller]]
name = "gateway"
roles = ["consumer"]
token_sha256 = ["60303AE22B998861BCE3B28F33EEC1BE758A213C86C93C076DBE9F558C11C752"]
"#;

    #[test]
    fn a_subject_s_signatures_are_for_issuers_and_admins() {
        for rpc in [Rpc::ListSignatures, Rpc::RevokeSubject] {
            assert!(Role::Issuer.allows(rpc));
            assert!(Role::Admin.allows(rpc));
            assert!(!Role::Consumer.allows(rpc));
        }
        assert_eq!(Rpc::ListSignatures.name(), "ListSignatures");
        assert_eq!(Rpc::RevokeSubject.name(), "RevokeSubject");
    }

    #[test]
    fn roles_grant_their_rpcs() {
        let policy = CallerPolicy::parse(POLICY).unwrap();
        let app = Credentials {
            bearer: Some("test"),
            client_cert: None,
        };
        assert_eq!(
            policy.authorize(Rpc::Issue, app).unwrap().name,
            "app-server"
        );
        assert!(matches!(
            policy.authorize(Rpc::Consume, app),
            Err(AuthError::PermissionDenied { .. })
        ));
        let gw = Credentials {
            bearer: Some("test2"),
            client_cert: None,
        };
        assert_eq!(
            token_digest("test2"),
            "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
        );
        assert_eq!(policy.authorize(Rpc::Consume, gw).unwrap().name, "gateway");
        assert!(matches!(
            policy.authorize(Rpc::Issue, gw),
            Err(AuthError::PermissionDenied { .. })
        ));
        let none = Credentials::default();
        assert!(matches!(
            policy.authorize(Rpc::Verify, none),
            Err(AuthError::Unauthenticated(_))
        ));
        let wrong = Credentials {
            bearer: Some("nope"),
            client_cert: None,
        };
        assert!(matches!(
            policy.authorize(Rpc::Verify, wrong),
            Err(AuthError::Unauthenticated(_))
        ));
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(
            CallerPolicy::parse("[[caller]]\nname='x'\nroles=[]\ntoken_sha256=['00']").is_err()
        );
        assert!(CallerPolicy::parse("[[caller]]\nname='x'\nroles=['issuer']").is_err());
        assert!(CallerPolicy::parse("[[caller]]\nname='x'\nroles=['root']\nsan=['a']").is_err());
        assert!(
            CallerPolicy::parse("[[caller]]\nname='x'\nroles=['issuer']\nsan=['a']\ncolour='red'")
                .is_err()
        );
    }
}
