//! `--redis-url`: which of the three deployments, and where.
//!
//! | URL | deployment |
//! |---|---|
//! | `redis://host:6379/0`, `rediss://...` | one server |
//! | `redis+cluster://h:p,h:p` (`rediss+cluster://`) | Redis Cluster, seed nodes |
//! | `redis+sentinel://h:p,h:p/MASTER[/DB]` (`rediss+sentinel://`) | Sentinel-managed replication |
//!
//! Credentials never go in a cluster or sentinel URL (they come from files or the environment).

/// Where Redis is, from `--redis-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One server: the URL as the redis crate takes it.
    Single(String),
    /// Redis Cluster: seed nodes as `redis://h:p` (or `rediss://`) URLs.
    Cluster(Vec<String>),
    /// Sentinel: sentinel addresses, master name, database, TLS.
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<(String, u16)>,
        /// The monitored master's name.
        master: String,
        /// Database number.
        db: i64,
        /// Whether data nodes and sentinels speak TLS.
        tls: bool,
    },
}

/// Why `--redis-url` was refused. Never quotes a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://`.
    #[error("a Redis URL needs a scheme, e.g. redis://")]
    NoScheme,
    /// A scheme that names no deployment.
    #[error(
        "unknown Redis URL scheme {0:?}: use redis://, rediss://, redis+cluster://, \
         redis+sentinel:// (or their rediss+ forms)"
    )]
    UnknownScheme(String),
    /// Credentials inside a cluster or sentinel URL.
    #[error(
        "put Redis credentials in --redis-username / --redis-password-file, not in a cluster \
         or sentinel URL"
    )]
    Credentials,
    /// A node of the list that is no `host[:port]`.
    #[error(
        "{0:?} in the node list is not host[:port] (an IPv6 address goes in brackets: [::1]:6379)"
    )]
    BadNode(String),
    /// A sentinel URL without the master's name.
    #[error("a sentinel URL names the master: redis+sentinel://h:p,h:p/MASTER_NAME")]
    NoMaster,
    /// A database that is no number.
    #[error("bad database number {0:?}")]
    BadDatabase(String),
}

/// One node of a list: its host (an IPv6 address without brackets) and port.
fn host_port(node: &str, default_port: u16) -> Result<(String, u16), UrlError> {
    let node = node.trim();
    let bad = || UrlError::BadNode(node.to_owned());
    if node.is_empty() || node.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    let parsed = url::Url::parse(&format!("redis://{node}")).map_err(|_| bad())?;
    let host = match parsed.host().ok_or_else(bad)? {
        url::Host::Domain(d) => d.to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    Ok((host, parsed.port().unwrap_or(default_port)))
}

/// A node as a URL of the redis crate: brackets around an IPv6 address.
fn node_url(scheme: &str, host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

impl Topology {
    /// Parses `--redis-url`. Credentials in cluster and sentinel URLs are refused (use
    /// `--redis-username` and `--redis-password-file`).
    pub fn parse(url: &str) -> Result<Topology, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::NoScheme)?;
        let no_userinfo = |rest: &str| -> Result<(), UrlError> {
            if rest.split('/').next().unwrap_or("").contains('@') {
                Err(UrlError::Credentials)
            } else {
                Ok(())
            }
        };
        match scheme {
            "redis" | "rediss" | "unix" | "redis+unix" => Ok(Topology::Single(url.to_owned())),
            "redis+cluster" | "rediss+cluster" => {
                no_userinfo(rest)?;
                let hosts = rest.split('/').next().unwrap_or("");
                let plain = if scheme.starts_with("rediss") {
                    "rediss"
                } else {
                    "redis"
                };
                let nodes = hosts
                    .split(',')
                    .map(|h| host_port(h, 6379).map(|(host, port)| node_url(plain, &host, port)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Topology::Cluster(nodes))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                no_userinfo(rest)?;
                let mut parts = rest.splitn(3, '/');
                let hosts = parts.next().unwrap_or("");
                let master = parts.next().unwrap_or("").to_owned();
                if master.is_empty() {
                    return Err(UrlError::NoMaster);
                }
                let db = match parts.next() {
                    None | Some("") => 0,
                    Some(db) => db
                        .parse()
                        .map_err(|_| UrlError::BadDatabase(db.to_owned()))?,
                };
                let sentinels = hosts
                    .split(',')
                    .map(|h| host_port(h, 26379))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Topology::Sentinel {
                    sentinels,
                    master,
                    db,
                    tls: scheme.starts_with("rediss"),
                })
            }
            other => Err(UrlError::UnknownScheme(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_deployments() {
        assert_eq!(
            Topology::parse("redis://r:6379/0").unwrap(),
            Topology::Single("redis://r:6379/0".into())
        );
        assert_eq!(
            Topology::parse("rediss+cluster://a:7000,b:7001,c").unwrap(),
            Topology::Cluster(vec![
                "rediss://a:7000".into(),
                "rediss://b:7001".into(),
                "rediss://c:6379".into()
            ])
        );
        assert_eq!(
            Topology::parse("redis+sentinel://s1:26379,s2/mymaster/2").unwrap(),
            Topology::Sentinel {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26379)],
                master: "mymaster".into(),
                db: 2,
                tls: false
            }
        );
        assert!(Topology::parse("redis+sentinel://s1:26379").is_err());
        assert!(Topology::parse("redis+cluster://user:pw@a:7000").is_err());
        assert!(Topology::parse("memcached://x").is_err());
        assert!(Topology::parse("redis+cluster://a:notaport").is_err());
    }

    #[test]
    fn ipv6_nodes_with_and_without_ports() {
        assert_eq!(
            Topology::parse("redis+cluster://[::1]:7000,[fd00::2],10.0.0.3").unwrap(),
            Topology::Cluster(vec![
                "redis://[::1]:7000".into(),
                "redis://[fd00::2]:6379".into(),
                "redis://10.0.0.3:6379".into(),
            ])
        );
        assert_eq!(
            Topology::parse("rediss+sentinel://[::1],[fd00::2]:26380/mymaster").unwrap(),
            Topology::Sentinel {
                sentinels: vec![("::1".into(), 26379), ("fd00::2".into(), 26380)],
                master: "mymaster".into(),
                db: 0,
                tls: true
            }
        );
        for bad in [
            "redis+cluster://::1:7000",
            "redis+cluster://[::1",
            "redis+cluster://a:7000,,b",
            "redis+cluster://a:70000",
        ] {
            assert!(
                matches!(Topology::parse(bad), Err(UrlError::BadNode(_))),
                "{bad}: {:?}",
                Topology::parse(bad)
            );
        }
        assert_eq!(
            Topology::parse("redis+sentinel://s/m/x"),
            Err(UrlError::BadDatabase("x".into()))
        );
    }
}
