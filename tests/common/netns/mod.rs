//! Network namespaces for network-level fault tests.
//!
//! A [`Net`] is a hub namespace holding a bridge, plus one namespace per host (a Redis node,
//! a sentinel, a vod-signer replica, a client), each wired to the bridge by a veth pair and
//! addressed `10.77.0.N/24`. Those addresses exist only inside the namespaces the test made,
//! so parallel tests (each with its own hub) never clash, and nothing on the machine's own
//! network changes. Namespace names carry the test process id and a counter.
//!
//! Faults are nftables `drop` rules in the hub's bridge (`table bridge fault`): a dropped
//! packet is silence, never a reset, and no sender sees a local error (rules in a sender's own
//! output hook would fail its `send` with EPERM instead). A link can also be taken down.
//!
//! Dropping the [`Net`] (also while a test panics) kills every process left in its namespaces
//! and deletes them; namespaces of a test process that died without cleaning up are deleted
//! by the next [`Net::new`].

pub mod load;
pub mod nodes;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const NS_PREFIX: &str = "vsnf";

static NETS: AtomicUsize = AtomicUsize::new(0);

/// Fails the test with a clear message unless it runs as root with `ip` and `nft` available.
pub fn require_netns() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the network fault suite needs root (it creates network namespaces, veth pairs and \
         nftables rules); running as uid {euid}"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` not found: the network fault suite needs it (apt-get install -y {package})"
        );
    }
}

/// Runs `cmd`, panicking with its stderr when it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// `ip netns exec NS program` as a command to complete.
pub fn ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Kills every process in `ns` (SIGKILL) and deletes it.
fn delete_ns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Deletes the namespaces of test processes that no longer exist (killed before their Drop).
fn delete_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_ns(name);
        }
    }
}

/// One host: a namespace with one interface on the hub's bridge.
#[derive(Clone, Debug)]
pub struct Host {
    /// What it is in the scenario (`master`, `signer-1`, ...).
    pub label: String,
    /// Its namespace.
    pub ns: String,
    /// Its address (only reachable from the namespaces of the same [`Net`]).
    pub ip: Ipv4Addr,
    /// Its veth end in the hub (for link faults).
    hub_port: String,
}

impl Host {
    /// `ip netns exec NS program`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        ns_command(&self.ns, program)
    }

    /// Runs `redis-cli -h IP -p port args` from inside this host: its trimmed output, or None.
    pub fn redis_cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = self
            .command("redis-cli")
            .args(["-h", &self.ip.to_string(), "-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Runs `f` on a new thread inside this host's namespace: every socket it opens (a tokio
    /// runtime built there included) belongs to the host.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; setns changes only the calling thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Runs the future `f` to completion on a current-thread runtime inside this namespace.
    pub fn block_on<T: Send + 'static, F: Future<Output = T> + 'static>(
        &self,
        f: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        self.spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// A child process in a namespace, killed on drop.
pub struct NsProcess {
    pub host: Host,
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl NsProcess {
    /// Spawns `cmd` (made with [`Host::command`]), stdout discarded, stderr to `log`.
    pub fn spawn(host: &Host, mut cmd: Command, log: &Path) -> NsProcess {
        let file = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        NsProcess {
            host: host.clone(),
            child,
            log: log.to_owned(),
        }
    }

    /// Waits (up to `within`) until its log has a line containing `needle`.
    pub fn wait_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}: {text}",
                    self.host.label
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {within:?}: {text}",
                self.host.label
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub with a bridge and the hosts wired to it; see the module comment.
pub struct Net {
    prefix: String,
    hub: String,
    hosts: Mutex<Vec<Host>>,
}

impl Net {
    /// A fresh hub namespace with a bridge and an empty `fault` table.
    pub fn new() -> Net {
        require_netns();
        delete_orphans();
        let prefix = format!(
            "{NS_PREFIX}{}x{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{prefix}-hub");
        let made = Command::new("ip").args(["netns", "add", &hub]).output();
        match made {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "network namespaces unavailable: `ip netns add` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("network namespaces unavailable: cannot run `ip`: {e}"),
        }
        let net = Net {
            prefix,
            hub,
            hosts: Mutex::new(Vec::new()),
        };
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        net.nft_hub(
            "table bridge fault {\n  chain forward { type filter hook forward priority 0; policy accept; }\n}\n",
        );
        net
    }

    fn nft_hub(&self, script: &str) {
        use std::io::Write as _;
        let mut child = ns_command(&self.hub, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f failed on {script:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new host `label` (`10.77.0.N`, N from 1 up), loopback and its interface up.
    pub fn host(&self, label: &str) -> Host {
        let mut hosts = self.hosts.lock().unwrap();
        let n = hosts.len() + 1;
        assert!(n < 250, "too many hosts");
        let host = Host {
            label: label.to_owned(),
            ns: format!("{}-{n}", self.prefix),
            ip: Ipv4Addr::new(10, 77, 0, n as u8),
            hub_port: format!("p{n}"),
        };
        ip(&["netns", "add", &host.ns]);
        hosts.push(host.clone());
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &host.ns,
            "type",
            "veth",
            "peer",
            "name",
            &host.hub_port,
            "netns",
            &self.hub,
        ]);
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &host.hub_port,
            "master",
            "br0",
        ]);
        ip(&["-n", &self.hub, "link", "set", &host.hub_port, "up"]);
        ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"]);
        host
    }

    /// Drops every packet between any host of `a` and any host of `b`, both ways.
    pub fn cut(&self, a: &[&Host], b: &[&Host]) {
        let set = |hosts: &[&Host]| {
            hosts
                .iter()
                .map(|h| h.ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (a, b) = (set(a), set(b));
        self.nft_hub(&format!(
            "add rule bridge fault forward ip saddr {{ {a} }} ip daddr {{ {b} }} drop\n\
             add rule bridge fault forward ip saddr {{ {b} }} ip daddr {{ {a} }} drop\n"
        ));
    }

    /// The host goes dark: every packet to or from it is dropped.
    pub fn isolate(&self, host: &Host) {
        self.nft_hub(&format!(
            "add rule bridge fault forward ip saddr {0} drop\n\
             add rule bridge fault forward ip daddr {0} drop\n",
            host.ip
        ));
    }

    /// Removes every drop rule.
    pub fn heal(&self) {
        self.nft_hub("flush chain bridge fault forward\n");
    }

    /// Takes the host's link down (its hub port: the host sees no carrier) or up again.
    pub fn link(&self, host: &Host, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hub, "link", "set", &host.hub_port, state]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let hosts = std::mem::take(&mut *self.hosts.lock().unwrap_or_else(|e| e.into_inner()));
        for host in hosts {
            delete_ns(&host.ns);
        }
        delete_ns(&self.hub);
    }
}

/// Where fault histories and process logs go: `target/fault-histories/`.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("fault-histories");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `probe` every 50 ms until it returns Some, for at most `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
