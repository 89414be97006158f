//! Why reaching Redis failed. The redis crate's error is kept as the source, so whoever
//! classifies a failure (the store's causes, the memory watch's refused `INFO`) reads its kind
//! rather than its text.

use std::time::Duration;

use redis::{ParsingError, RedisError};

use super::url::UrlError;

/// Why a Redis client could not be built, a connection not made, or a call not answered.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// `--redis-url` names no deployment this service knows.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A URL the redis crate refuses. Only its text is kept, with the URL replaced: the
    /// crate's error may quote the URL, password included.
    #[error("bad Redis URL: {0}")]
    BadUrl(String),
    /// Settings the redis crate refuses (`what`: Redis, Redis TLS, Redis Cluster, sentinel).
    #[error("bad {what} settings: {source}")]
    Settings {
        /// Whose settings.
        what: &'static str,
        /// The redis crate's reason.
        #[source]
        source: RedisError,
    },
    /// Redis, or the connection to it, failed the call.
    #[error("{0}")]
    Redis(#[from] RedisError),
    /// A reply that is not the type asked for.
    #[error("{0}")]
    Reply(#[from] ParsingError),
    /// No answer within the bound this step is allowed.
    #[error("{what} within {} ms", .after.as_millis())]
    Timeout {
        /// What did not happen in time.
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The connection was replaced or closed while the call waited on it.
    #[error("the connection was closed")]
    Closed,
    /// A sentinel that does not know the master it was asked about.
    #[error("it knows no master {0:?}")]
    UnknownMaster(String),
    /// A reply of a shape the command never gives.
    #[error("unexpected {command} reply {reply}")]
    UnexpectedReply {
        /// The Redis command that got the reply, by name.
        command: &'static str,
        /// The reply, as debug text.
        reply: String,
    },
}

impl Error {
    /// Whether Redis refused the command for good (no permission for this user, or a command
    /// renamed away), not because of a passing failure.
    pub fn is_refused(&self) -> bool {
        let text = self.to_string();
        text.contains("NOPERM") || text.contains("unknown command")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::{Connector, RedisSettings};

    #[test]
    fn settings_keep_the_redis_cause_and_their_message() {
        let cause = RedisError::from((redis::ErrorKind::InvalidClientConfig, "no key"));
        let e = Error::Settings {
            what: "Redis TLS",
            source: cause.clone(),
        };
        assert_eq!(e.to_string(), format!("bad Redis TLS settings: {cause}"));
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(source.to_string(), cause.to_string());
    }

    #[test]
    fn a_bad_url_is_refused_without_quoting_it() {
        let config = RedisSettings {
            url: "redis://user:s3cret@host:notaport".into(),
            ..RedisSettings::default()
        };
        let Err(e) = Connector::start(&config) else {
            panic!("a URL without a valid port was accepted");
        };
        assert!(matches!(e, Error::BadUrl(_)), "{e:?}");
        assert!(e.to_string().starts_with("bad Redis URL: "), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let unknown = RedisSettings {
            url: "memcached://x".into(),
            ..RedisSettings::default()
        };
        let Err(e) = Connector::start(&unknown) else {
            panic!("an unknown scheme was accepted");
        };
        assert!(matches!(e, Error::Url(UrlError::UnknownScheme(_))), "{e:?}");
    }
}
