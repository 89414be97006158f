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

fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty host in the node list".into());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            let port = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
            Ok((host.trim_matches(['[', ']']).to_owned(), port))
        }
        _ => Ok((s.to_owned(), default_port)),
    }
}

impl Topology {
    /// Parses `--redis-url`. Credentials in cluster and sentinel URLs are refused (use
    /// `--redis-username` and `--redis-password-file`).
    pub fn parse(url: &str) -> Result<Topology, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("a Redis URL needs a scheme, e.g. redis://")?;
        let no_userinfo = |rest: &str| -> Result<(), String> {
            if rest.split('/').next().unwrap_or("").contains('@') {
                Err("put Redis credentials in --redis-username / --redis-password-file, not in a cluster or sentinel URL".into())
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
                    .map(|h| {
                        host_port(h, 6379).map(|(host, port)| format!("{plain}://{host}:{port}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Topology::Cluster(nodes))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                no_userinfo(rest)?;
                let mut parts = rest.splitn(3, '/');
                let hosts = parts.next().unwrap_or("");
                let master = parts.next().unwrap_or("").to_owned();
                if master.is_empty() {
                    return Err(
                        "a sentinel URL names the master: redis+sentinel://h:p,h:p/MASTER_NAME"
                            .into(),
                    );
                }
                let db = match parts.next() {
                    None | Some("") => 0,
                    Some(db) => db
                        .parse()
                        .map_err(|_| format!("bad database number {db:?}"))?,
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
            other => Err(format!(
                "unknown Redis URL scheme {other:?}: use redis://, rediss://, redis+cluster://, redis+sentinel:// (or their rediss+ forms)"
            )),
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
}
