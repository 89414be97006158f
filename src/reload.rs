//! Re-reading the keys directory and the caller policy while serving: on SIGHUP and every
//! `--keys-reload-interval`, so key rotation and caller changes need no restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use crate::auth::{CallerPolicy, SharedPolicy};
use crate::keys::{KeyRing, SharedKeys};
use crate::metrics::Metrics;
use crate::report::Chain;

/// What is re-read.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The keys directory (`--keys-dir`), re-read whole each time.
    pub keys_dir: PathBuf,
    /// `--active-key`, if given (else the directory's `.active`).
    pub active_key: Option<String>,
    /// The caller policy file, if any.
    pub caller_policy: Option<PathBuf>,
    /// How often, besides SIGHUP; zero: only on SIGHUP.
    pub interval: Duration,
}

impl Sources {
    /// Default of `--keys-reload-interval`: a Kubernetes Secret update reaches the pod's files
    /// within about a minute, so half a minute more is in the same range.
    pub const INTERVAL: Duration = Duration::from_secs(30);
}

/// Listens for SIGHUP; `None` (logged) where that is not possible.
pub fn listen_for_hangup() -> Option<Hangup> {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                error!("cannot listen for SIGHUP ({e}): keys reload on the interval only");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// SIGHUP, listened for before the server says it serves (so an early SIGHUP reloads rather
/// than ends the process).
#[cfg(unix)]
pub type Hangup = tokio::signal::unix::Signal;
/// No SIGHUP on this platform.
#[cfg(not(unix))]
pub type Hangup = std::convert::Infallible;

/// Re-reads the keys directory and the caller policy on SIGHUP and every
/// `--keys-reload-interval`, until `stop` resolves.
///
/// Keys ([`KeyRing::reload_dir`]): what the directory holds now is what verifies, so a removed
/// key stops verifying at the next reload, always. Files that are not usable keys are skipped
/// (logged at error level, naming each); when the active key is not there, issuing is refused
/// with `NO_ACTIVE_KEY` (logged at error level naming the SecretId, and
/// `vodsigner_active_key_missing` is 1) until a reload finds it again. Only a directory that
/// cannot be listed keeps the previous keys. A caller policy that fails to load keeps the
/// previous one.
pub async fn reload_keys_and_policy(
    sources: Sources,
    keys: SharedKeys,
    policy: SharedPolicy,
    metrics: Arc<Metrics>,
    #[cfg_attr(not(unix), allow(unused_mut))] mut hangup: Option<Hangup>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let Sources {
        keys_dir: dir,
        active_key,
        caller_policy,
        interval,
    } = sources;
    metrics.set_active_key_missing(!keys.load().has_active());
    // What was last reported about skipped files, so an unchanged problem is not logged again
    // every interval (a SIGHUP always logs it).
    let mut reported_skipped: Vec<String> = Vec::new();
    loop {
        let timer = async {
            if interval.is_zero() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(interval).await
            }
        };
        let hup = async {
            match hangup.as_mut() {
                #[cfg(unix)]
                Some(s) => {
                    s.recv().await;
                }
                #[cfg(not(unix))]
                Some(never) => match *never {},
                None => std::future::pending::<()>().await,
            }
        };
        let by_signal = tokio::select! {
            () = timer => false,
            () = hup => true,
            () = &mut stop => return,
        };
        let old = keys.load_full();
        match KeyRing::reload_dir(&dir, active_key.as_deref(), &old) {
            Ok(reloaded) => {
                let ring = reloaded.ring;
                let skipped: Vec<String> =
                    reloaded.skipped.iter().map(ToString::to_string).collect();
                if by_signal || skipped != reported_skipped {
                    for problem in &skipped {
                        error!("{problem}: skipped; the other keys are loaded");
                    }
                    if !reloaded.kept.is_empty() {
                        warn!(secret_ids = ?reloaded.kept, "key files that cannot be read keep their previous key");
                    }
                    reported_skipped = skipped;
                }
                let removed: Vec<&str> = old
                    .secret_ids()
                    .filter(|id| ring.get(id).is_none())
                    .collect();
                let added: Vec<&str> = ring
                    .secret_ids()
                    .filter(|id| old.get(id).is_none())
                    .collect();
                let changed =
                    old.active_id() != ring.active_id() || !old.secret_ids().eq(ring.secret_ids());
                if changed || by_signal {
                    info!(
                        secret_ids = ?ring.secret_ids().collect::<Vec<_>>(),
                        active = ring.active_id(),
                        ?added,
                        ?removed,
                        "keys reloaded"
                    );
                }
                let missing = !ring.has_active();
                let was_missing = !old.has_active();
                if missing && (by_signal || !was_missing || old.active_id() != ring.active_id()) {
                    error!(
                        active = ring.active_id(),
                        "active key {} is not in the keys directory: IssueSignature is refused \
                         with NO_ACTIVE_KEY until a reload finds it (or another key is made active); \
                         verify, consume and revoke go on with the remaining keys",
                        ring.active_id()
                    );
                } else if !missing && was_missing {
                    info!(
                        active = ring.active_id(),
                        "active key {} is loaded: issuing resumes",
                        ring.active_id()
                    );
                }
                metrics.set_active_key_missing(missing);
                keys.store(Arc::new(ring));
            }
            Err(e) => error!("keys directory reload failed ({e}); keeping the previous keys"),
        }
        if let Some(path) = &caller_policy {
            match CallerPolicy::load(path) {
                Ok(p) => policy.store(Some(Arc::new(p))),
                Err(e) => error!(
                    "caller policy reload failed ({}); keeping the previous policy",
                    Chain(&e)
                ),
            }
        }
        debug!(by_signal, "keys reload done");
    }
}
