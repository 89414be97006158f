//! The SecretKeys: loaded from a keys directory (SPEC section 5), several at once, one active.
//!
//! Each file is one key: its name is the SecretId, its content (one trailing newline trimmed)
//! the SecretKey. Kubernetes mounts a Secret as symlinks into a hidden `..data` folder, so
//! symlinks are followed and names starting with `.` are ignored.
//!
//! Two ways to read the directory:
//!
//! - [`KeyRing::load_dir`], at start-up (and for the offline `issue`): strict. Any file that is
//!   not a usable key, no key at all, or an active key that is not there is an error.
//! - [`KeyRing::reload_dir`], on a running server: what the directory holds now is what
//!   verifies, always. A key whose file is gone stops verifying; a file that is not a usable
//!   key is skipped (and reported) while the rest loads; an active key that is not there
//!   leaves the ring without one ([`KeyRing::active_key`] is `None`) rather than keeping a
//!   removed key in force. Only a directory that cannot be listed at all is an error (the
//!   caller keeps the previous ring).

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::signature::{self, Parsed, SecretKey, SignatureError};

/// Why a keys directory (or one of its files) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The directory could not be read.
    #[error("cannot read keys directory {dir}: {source}")]
    ReadDir {
        /// Path of the keys directory (`--keys-dir`).
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    ReadFile {
        /// Path of the key file (its name is the SecretId).
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file name that is not a valid SecretId.
    #[error(
        "key file {path}: the name is not a valid SecretId (1 to 128 characters of A-Z a-z 0-9 _ -)"
    )]
    BadSecretId {
        /// Path of the key file whose name is refused.
        path: PathBuf,
    },
    /// A key file that is empty.
    #[error("key file {path} is empty")]
    EmptyKey {
        /// Path of the key file (its name is the SecretId).
        path: PathBuf,
    },
    /// No key at all.
    #[error(
        "keys directory {dir} holds no key (one file per key: name = SecretId, content = SecretKey)"
    )]
    NoKeys {
        /// Path of the keys directory (`--keys-dir`).
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

/// The keys that verify, and the SecretId of the one that issues.
///
/// A ring made by [`KeyRing::new`] or [`KeyRing::load_dir`] always holds its active key. One
/// made by [`KeyRing::reload_dir`] may not (the active key was removed from the directory):
/// then every key it holds still verifies, and [`KeyRing::active_key`] is `None`.
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
            .field("active_loaded", &self.has_active())
            .finish()
    }
}

/// What [`KeyRing::reload_dir`] found.
#[derive(Debug)]
pub struct Reloaded {
    /// The new ring: every usable key in the directory, and the active SecretId (which may
    /// not be among them).
    pub ring: KeyRing,
    /// Files that were skipped, each error naming its file: a name that is not a valid
    /// SecretId, an empty key, a dangling symlink, a file that could not be read.
    pub skipped: Vec<KeyError>,
    /// SecretIds whose file exists but could not be read: their previous key stays in force.
    pub kept: Vec<String>,
}

/// One pass over the directory: the usable keys and what went wrong with the other files.
struct Scan {
    keys: Vec<(String, SecretKey)>,
    /// Files that are not usable keys, in directory order; with the SecretId when the name
    /// is valid and the file exists but could not be read (a reload keeps its previous key).
    problems: Vec<(KeyError, Option<String>)>,
    /// The `.active` file's SecretId (`None`: absent or empty), or why it could not be read.
    active_file: Result<Option<String>, KeyError>,
}

fn scan(dir: &Path) -> Result<Scan, KeyError> {
    let read_dir_error = |source| KeyError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let entries = std::fs::read_dir(dir).map_err(read_dir_error)?;
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_dir_error)?;
        let name = entry.file_name();
        let path = entry.path();
        let Some(name) = name.to_str() else {
            problems.push((KeyError::BadSecretId { path }, None));
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let valid = signature::is_valid_secret_id(name);
        // The key it held stays in force only when the file is there but unreadable; a
        // dangling symlink or a file gone since the listing is a removed key.
        let kept_if = |source: &std::io::Error| {
            (valid && source.kind() != ErrorKind::NotFound).then(|| name.to_owned())
        };
        // fs::metadata follows symlinks, as a Kubernetes Secret volume needs.
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(source) => {
                let kept = kept_if(&source);
                problems.push((KeyError::ReadFile { path, source }, kept));
                continue;
            }
        };
        if !meta.is_file() {
            continue;
        }
        if !valid {
            problems.push((KeyError::BadSecretId { path }, None));
            continue;
        }
        let content = match std::fs::read(&path) {
            Ok(content) => Zeroizing::new(content),
            Err(source) => {
                let kept = kept_if(&source);
                problems.push((KeyError::ReadFile { path, source }, kept));
                continue;
            }
        };
        let mut bytes: &[u8] = &content;
        if let Some(rest) = bytes.strip_suffix(b"\n") {
            bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        if bytes.is_empty() {
            problems.push((KeyError::EmptyKey { path }, None));
            continue;
        }
        keys.push((name.to_owned(), SecretKey::new(bytes)));
    }
    let active_file = match std::fs::read_to_string(dir.join(ACTIVE_FILE)) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|a| !a.is_empty())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::ReadFile {
            path: dir.join(ACTIVE_FILE),
            source,
        }),
    };
    Ok(Scan {
        keys,
        problems,
        active_file,
    })
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

    /// Loads every key in `dir`, strictly (start-up): any file that is not a usable key is an
    /// error naming it. `active` names the issuing key (else the `.active` file; optional
    /// when there is one key), and it must be there.
    pub fn load_dir(dir: &Path, active: Option<&str>) -> Result<KeyRing, KeyError> {
        let Scan {
            keys,
            problems,
            active_file,
        } = scan(dir)?;
        if let Some((first, _)) = problems.into_iter().next() {
            return Err(first);
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys {
                dir: dir.to_owned(),
            });
        }
        let active = match (active.filter(|a| !a.is_empty()), active_file?) {
            (Some(a), _) => a.to_owned(),
            (None, Some(a)) => a,
            (None, None) if keys.len() == 1 => keys[0].0.clone(),
            (None, None) => return Err(KeyError::NoActive(keys.len())),
        };
        KeyRing::new(keys, &active)
    }

    /// Re-reads `dir` for a running server whose ring is `previous`. What the directory holds
    /// now is what verifies: a removed key stops verifying, whatever else is wrong.
    ///
    /// - A file that is not a usable key (a name that is not a valid SecretId, an empty key, a
    ///   dangling symlink) is skipped and reported in [`Reloaded::skipped`]; the rest loads.
    ///   A key file that exists but cannot be read keeps its previous key, if it had one.
    /// - The active SecretId is `active` (the flag), else the `.active` file's, else the only
    ///   key, else the previous one. When it is not among the loaded keys (removed, or named
    ///   but never added; an empty directory) the ring has no active key.
    /// - Only a directory that cannot be listed (missing, not a directory, no permission) is an
    ///   error: the caller keeps `previous`.
    pub fn reload_dir(
        dir: &Path,
        active: Option<&str>,
        previous: &KeyRing,
    ) -> Result<Reloaded, KeyError> {
        let Scan {
            keys,
            problems,
            active_file,
        } = scan(dir)?;
        let mut ring: BTreeMap<String, Arc<SecretKey>> =
            keys.into_iter().map(|(id, k)| (id, Arc::new(k))).collect();
        let mut skipped = Vec::new();
        let mut kept = Vec::new();
        for (error, keep) in problems {
            if let Some(id) = keep
                && let Some(key) = previous.keys.get(&id)
            {
                ring.insert(id.clone(), key.clone());
                kept.push(id);
            }
            skipped.push(error);
        }
        let from_file = match active_file {
            Ok(a) => a,
            Err(e) => {
                // Unreadable `.active`: the active SecretId stays what it was.
                skipped.push(e);
                Some(previous.active.clone())
            }
        };
        let active = match (active.filter(|a| !a.is_empty()), from_file) {
            (Some(a), _) => a.to_owned(),
            (None, Some(a)) => a,
            (None, None) if ring.len() == 1 => ring.keys().next().cloned().unwrap_or_default(),
            (None, None) => previous.active.clone(),
        };
        Ok(Reloaded {
            ring: KeyRing { keys: ring, active },
            skipped,
            kept,
        })
    }

    /// This ring, shareable and swappable.
    pub fn shared(self) -> SharedKeys {
        Arc::new(arc_swap::ArcSwap::from_pointee(self))
    }

    /// The SecretId that issues. After a reload it may name a key that is not loaded: see
    /// [`KeyRing::active_key`].
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// The key that issues, or `None` when the active SecretId is not loaded (it was removed
    /// from the keys directory): issuing with the active key is refused until it is back.
    pub fn active_key(&self) -> Option<&Arc<SecretKey>> {
        self.keys.get(&self.active)
    }

    /// Whether the active key is loaded.
    pub fn has_active(&self) -> bool {
        self.keys.contains_key(&self.active)
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

    fn ids(ring: &KeyRing) -> Vec<&str> {
        ring.secret_ids().collect()
    }

    #[test]
    fn reload_applies_removals_and_skips_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AKIDone"), "key-one").unwrap();
        std::fs::write(dir.path().join("AKIDtwo"), "key-two").unwrap();
        let start = KeyRing::load_dir(dir.path(), Some("AKIDone")).unwrap();

        // A bad name, an empty key and a dangling symlink are skipped, naming their files;
        // the other keys load, the removed one is gone.
        std::fs::remove_file(dir.path().join("AKIDtwo")).unwrap();
        std::fs::write(dir.path().join("AKIDthree"), "key-three\n").unwrap();
        std::fs::write(dir.path().join("bad name"), "x").unwrap();
        std::fs::write(dir.path().join("AKIDempty"), "\n").unwrap();
        std::os::unix::fs::symlink("..data/AKIDgone", dir.path().join("AKIDgone")).unwrap();
        let Reloaded {
            ring,
            skipped,
            kept,
        } = KeyRing::reload_dir(dir.path(), Some("AKIDone"), &start).unwrap();
        assert_eq!(ids(&ring), ["AKIDone", "AKIDthree"]);
        assert!(ring.has_active());
        assert!(kept.is_empty(), "{kept:?}");
        let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        for name in ["bad name", "AKIDempty", "AKIDgone"] {
            assert!(
                skipped.iter().any(|e| e.contains(name)),
                "{name}: {skipped:?}"
            );
        }
        assert!(!format!("{skipped:?}{ring:?}").contains("key-"));
        // Start-up still refuses the same directory.
        assert!(KeyRing::load_dir(dir.path(), Some("AKIDone")).is_err());
    }

    #[test]
    fn reload_without_the_active_key_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AKIDone"), "key-one").unwrap();
        std::fs::write(dir.path().join("AKIDtwo"), "key-two").unwrap();
        let start = KeyRing::load_dir(dir.path(), Some("AKIDone")).unwrap();
        std::fs::remove_file(dir.path().join("AKIDone")).unwrap();
        let ring = KeyRing::reload_dir(dir.path(), Some("AKIDone"), &start)
            .unwrap()
            .ring;
        assert_eq!(ids(&ring), ["AKIDtwo"]);
        assert_eq!(ring.active_id(), "AKIDone");
        assert!(!ring.has_active() && ring.active_key().is_none());
        assert!(ring.get("AKIDtwo").is_some());

        // .active naming a key that is not there: no active key either.
        std::fs::write(dir.path().join(ACTIVE_FILE), "AKIDnope\n").unwrap();
        let ring = KeyRing::reload_dir(dir.path(), None, &start).unwrap().ring;
        assert_eq!(ring.active_id(), "AKIDnope");
        assert!(!ring.has_active());
        // ... until it names one that is.
        std::fs::write(dir.path().join(ACTIVE_FILE), "AKIDtwo").unwrap();
        let ring = KeyRing::reload_dir(dir.path(), None, &ring).unwrap().ring;
        assert_eq!(ring.active_id(), "AKIDtwo");
        assert!(ring.has_active());

        // All keys removed: nothing verifies, nothing issues.
        for name in ["AKIDtwo", ACTIVE_FILE] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        let empty = KeyRing::reload_dir(dir.path(), None, &ring).unwrap().ring;
        assert_eq!(ids(&empty), Vec::<&str>::new());
        assert_eq!(empty.active_id(), "AKIDtwo");
        assert!(!empty.has_active());
    }

    #[test]
    fn reload_without_a_named_active_key_keeps_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AKIDone"), "key-one").unwrap();
        let start = KeyRing::load_dir(dir.path(), None).unwrap();
        // A second key and nothing naming the active one: the previous active key goes on.
        std::fs::write(dir.path().join("AKIDtwo"), "key-two").unwrap();
        let ring = KeyRing::reload_dir(dir.path(), None, &start).unwrap().ring;
        assert_eq!(ring.active_id(), "AKIDone");
        assert!(ring.has_active());
        // The old key removed: the only key left issues.
        std::fs::remove_file(dir.path().join("AKIDone")).unwrap();
        let ring = KeyRing::reload_dir(dir.path(), None, &ring).unwrap().ring;
        assert_eq!(ring.active_id(), "AKIDtwo");
        // Two keys again, the previous active one among them.
        std::fs::write(dir.path().join("AKIDthree"), "key-three").unwrap();
        let ring = KeyRing::reload_dir(dir.path(), None, &ring).unwrap().ring;
        assert_eq!(ring.active_id(), "AKIDtwo");
    }

    #[test]
    fn reload_of_an_unreadable_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AKIDone"), "key-one").unwrap();
        let start = KeyRing::load_dir(dir.path(), None).unwrap();
        let missing = dir.path().join("missing");
        assert!(matches!(
            KeyRing::reload_dir(&missing, None, &start),
            Err(KeyError::ReadDir { .. })
        ));
        let file = dir.path().join("AKIDone");
        assert!(matches!(
            KeyRing::reload_dir(&file, None, &start),
            Err(KeyError::ReadDir { .. })
        ));
    }
}
