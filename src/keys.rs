//! The SecretKeys: loaded from a keys directory (SPEC section 5), several at once, one active.
//!
//! Each file is one key: its name is the SecretId, its content (one trailing newline trimmed)
//! the SecretKey. Kubernetes mounts a Secret as symlinks into a hidden `..data` folder, so
//! symlinks are followed and names starting with `.` are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::signature::{self, Parsed, SecretKey, SignatureError};

/// Why a keys directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The directory could not be read.
    #[error("cannot read keys directory {dir}: {source}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file name that is not a valid SecretId.
    #[error(
        "key file {path}: the name is not a valid SecretId (1 to 128 characters of A-Z a-z 0-9 _ -)"
    )]
    BadSecretId {
        /// The file.
        path: PathBuf,
    },
    /// A key file that is empty.
    #[error("key file {path} is empty")]
    EmptyKey {
        /// The file.
        path: PathBuf,
    },
    /// No key at all.
    #[error(
        "keys directory {dir} holds no key (one file per key: name = SecretId, content = SecretKey)"
    )]
    NoKeys {
        /// The directory.
        dir: PathBuf,
    },
    /// The active key is not in the directory.
    #[error("active key {0:?} is not in the keys directory")]
    UnknownActive(String),
    /// Several keys and no active one named.
    #[error(
        "keys directory holds {0} keys; name the one that issues with --active-key or a .active file"
    )]
    NoActive(usize),
}

/// The key ring in use, swapped whole when the keys directory is reloaded; calls in flight
/// keep the ring they started with.
pub type SharedKeys = Arc<arc_swap::ArcSwap<KeyRing>>;

/// Name of the optional file in the keys directory that names the active SecretId (used when
/// `--active-key` is not given), so the active key can change without a restart.
pub const ACTIVE_FILE: &str = ".active";

/// The keys that verify, and the one that issues.
#[derive(Clone)]
pub struct KeyRing {
    keys: BTreeMap<String, Arc<SecretKey>>,
    active: String,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("secret_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl KeyRing {
    /// A ring of the given keys; `active` must be one of them.
    pub fn new(
        keys: impl IntoIterator<Item = (String, SecretKey)>,
        active: &str,
    ) -> Result<KeyRing, KeyError> {
        let keys: BTreeMap<_, _> = keys.into_iter().map(|(id, k)| (id, Arc::new(k))).collect();
        if !keys.contains_key(active) {
            return Err(KeyError::UnknownActive(active.to_owned()));
        }
        Ok(KeyRing {
            keys,
            active: active.to_owned(),
        })
    }

    /// Loads every key in `dir`; `active` names the issuing one (optional when there is one key).
    pub fn load_dir(dir: &Path, active: Option<&str>) -> Result<KeyRing, KeyError> {
        let entries = std::fs::read_dir(dir).map_err(|source| KeyError::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| KeyError::ReadDir {
                dir: dir.to_owned(),
                source,
            })?;
            let name = entry.file_name();
            let path = entry.path();
            let Some(name) = name.to_str() else {
                return Err(KeyError::BadSecretId { path });
            };
            if name.starts_with('.') {
                continue;
            }
            // fs::metadata follows symlinks, as a Kubernetes Secret volume needs.
            let meta = std::fs::metadata(&path).map_err(|source| KeyError::ReadFile {
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                continue;
            }
            if !signature::is_valid_secret_id(name) {
                return Err(KeyError::BadSecretId { path });
            }
            let content =
                Zeroizing::new(std::fs::read(&path).map_err(|source| KeyError::ReadFile {
                    path: path.clone(),
                    source,
                })?);
            let mut bytes: &[u8] = &content;
            if let Some(rest) = bytes.strip_suffix(b"\n") {
                bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            if bytes.is_empty() {
                return Err(KeyError::EmptyKey { path });
            }
            keys.push((name.to_owned(), SecretKey::new(bytes)));
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys {
                dir: dir.to_owned(),
            });
        }
        let from_file = match std::fs::read_to_string(dir.join(ACTIVE_FILE)) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(KeyError::ReadFile {
                    path: dir.join(ACTIVE_FILE),
                    source,
                });
            }
        };
        let active = match (active, from_file) {
            (Some(a), _) if !a.is_empty() => a.to_owned(),
            (_, Some(a)) if !a.is_empty() => a,
            _ if keys.len() == 1 => keys[0].0.clone(),
            _ => return Err(KeyError::NoActive(keys.len())),
        };
        KeyRing::new(keys, &active)
    }

    /// This ring, shareable and swappable.
    pub fn shared(self) -> SharedKeys {
        Arc::new(arc_swap::ArcSwap::from_pointee(self))
    }

    /// The SecretId that issues.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// The key with this SecretId.
    pub fn get(&self, secret_id: &str) -> Option<&Arc<SecretKey>> {
        self.keys.get(secret_id)
    }

    /// The SecretIds, sorted.
    pub fn secret_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Parses `signature` and checks its HMAC against the key it names (not its time window).
    pub fn authenticate(&self, signature: &str) -> Result<Parsed, SignatureError> {
        let parsed = signature::parse(signature)?;
        self.verify(&parsed)?;
        Ok(parsed)
    }

    /// Checks a parsed signature's HMAC against the key it names.
    pub fn verify(&self, parsed: &Parsed) -> Result<(), SignatureError> {
        let key = self
            .get(&parsed.claims.secret_id)
            .ok_or_else(|| SignatureError::UnknownSecretId(parsed.claims.secret_id.clone()))?;
        parsed.verify(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_kubernetes_style_secret_volume() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_11_24_data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("AKIDone"), "key-one\n").unwrap();
        std::fs::write(data.join("AKIDtwo"), "key-two").unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/AKIDone", dir.path().join("AKIDone")).unwrap();
        std::os::unix::fs::symlink("..data/AKIDtwo", dir.path().join("AKIDtwo")).unwrap();
        let ring = KeyRing::load_dir(dir.path(), Some("AKIDtwo")).unwrap();
        assert_eq!(
            ring.secret_ids().collect::<Vec<_>>(),
            ["AKIDone", "AKIDtwo"]
        );
        assert_eq!(ring.active_id(), "AKIDtwo");
        assert!(!format!("{ring:?}").contains("key-one"));
        assert!(matches!(
            KeyRing::load_dir(dir.path(), None),
            Err(KeyError::NoActive(2))
        ));
    }

    #[test]
    fn refuses_bad_names_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad{id}"), "k").unwrap();
        let err = KeyRing::load_dir(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("bad{id}"), "{err}");
    }

    #[test]
    fn single_key_is_active_and_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AKID"), "secret\n").unwrap();
        let ring = KeyRing::load_dir(dir.path(), None).unwrap();
        assert_eq!(ring.active_id(), "AKID");
        let policy = Default::default();
        let req = signature::SignRequest {
            secret_id: "AKID",
            current_time_stamp: 1,
            expire_time: 2,
            random: 3,
            one_time_valid: true,
            policy: &policy,
        };
        let expected = signature::sign(&SecretKey::new(b"secret"), &req);
        ring.authenticate(&expected.signature).unwrap();
    }
}
