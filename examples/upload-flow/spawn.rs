//! `--spawn`: a throwaway `redis-server` and a `vod-signer serve` on free loopback ports,
//! with a fresh random key, pushing its upload notifications to the app server; both are
//! killed when dropped.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The SecretId of the key made for the spawned vod-signer.
pub const SECRET_ID: &str = "AKIDuploadflowdemo";

/// A child process, killed (SIGKILL) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The `vod-signer` binary next to this program: `target/<profile>/vod-signer` when this is
/// `target/<profile>/examples/upload-flow`.
pub fn binary_next_to_example() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let binary = profile_dir.join(format!("vod-signer{}", std::env::consts::EXE_SUFFIX));
    binary.is_file().then_some(binary)
}

/// A `redis-server` that keeps nothing on disk.
pub struct Redis {
    /// Its loopback port.
    pub port: u16,
    _child: Killed,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a free loopback port and waits until it answers `PING`. The port is
    /// picked free but may be taken before the server binds it: the server that answers must
    /// be this child (`INFO server`'s `process_id`), else another port is tried.
    pub fn start() -> Result<Redis, String> {
        const ATTEMPTS: usize = 5;
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match Redis::start_on(free_port()) {
                Ok(redis) => return Ok(redis),
                Err(Taken(why)) => last = why,
                Err(Failed(why)) => return Err(why),
            }
        }
        Err(format!(
            "redis-server did not start on {ATTEMPTS} ports; last: {last}"
        ))
    }

    fn start_on(port: u16) -> Result<Redis, StartError> {
        let dir = tempfile::tempdir().map_err(|e| Failed(e.to_string()))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Failed(format!(
                    "cannot start redis-server ({e}): install it (apt-get install redis-server) \
                     or run vod-signer yourself and pass --vod-signer URL"
                ))
            })?;
        let mut child = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                return Err(Taken(format!(
                    "redis-server on port {port} exited: {status}"
                )));
            }
            if ping(port) {
                match server_pid(port) {
                    Some(pid) if pid == child.0.id() => break,
                    Some(pid) => {
                        return Err(Taken(format!(
                            "port {port} is answered by another redis-server (pid {pid})"
                        )));
                    }
                    None => {}
                }
            }
            if Instant::now() > deadline {
                return Err(Failed(format!(
                    "redis-server on port {port} did not answer PING"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis {
            port,
            _child: child,
            _dir: dir,
        })
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// The address in vod-signer's `serving gRPC addr=...` log line (text format), waited for up
/// to `within`.
fn serving_addr(
    child: &mut Killed,
    log: &Mutex<Vec<String>>,
    within: Duration,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + within;
    loop {
        let found = log.lock().unwrap().iter().find_map(|line| {
            let rest = line.split("serving gRPC").nth(1)?;
            let addr = rest.split("addr=").nth(1)?.split_whitespace().next()?;
            addr.parse::<SocketAddr>().ok()
        });
        if let Some(addr) = found {
            return Ok(addr);
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "vod-signer exited ({status}):\n{}",
                log.lock().unwrap().join("\n")
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "vod-signer did not log its address within {within:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why a Redis did not start: its port was taken (try another), or anything else.
enum StartError {
    Taken(String),
    Failed(String),
}
use StartError::{Failed, Taken};

/// The `process_id` the Redis on `port` reports in `INFO server`.
fn server_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Where a spawned vod-signer sends its upload notifications.
pub struct NotifyTo {
    /// The app server's receiver (`--notify-url`).
    pub url: String,
    /// The Standard Webhooks secret that signs each push (`whsec_...`); written to a file for
    /// `--notify-secret-file`.
    pub secret: String,
    /// `--completion-window`: a consumed upload without CompleteUpload this long is abandoned.
    pub completion_window: Duration,
}

/// A `vod-signer serve` child process on a free loopback port, backed by a Redis.
pub struct Signer {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Every line it logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    child: Killed,
    _keys: tempfile::TempDir,
    /// The notification secret's file (not in the keys directory: each file there is a key).
    _notify: tempfile::TempDir,
}

impl Signer {
    /// Starts `binary serve` with a fresh random key and `redis_url`, pushing to `notify`
    /// when given, and waits until its health says SERVING. Its log lines are kept, and
    /// echoed to stderr when `echo`.
    pub async fn start(
        binary: &Path,
        redis_url: &str,
        echo: bool,
        notify: Option<&NotifyTo>,
    ) -> Result<Signer, String> {
        let keys = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(
            keys.path().join(SECRET_ID),
            crate::web::random_hex(20) + "\n",
        )
        .map_err(|e| e.to_string())?;
        let notify_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // Port 0: the system picks a free port, which nobody can take first; the address
        // is read back from the "serving gRPC" log line.
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .arg("--keys-dir")
            .arg(keys.path())
            .args(["--active-key", SECRET_ID, "--redis-url", redis_url])
            .args(["--log-format", "text", "--health-interval-ms", "100"]);
        if let Some(notify) = notify {
            let secret_file = notify_dir.path().join("notify-secret");
            std::fs::write(&secret_file, format!("{}\n", notify.secret))
                .map_err(|e| e.to_string())?;
            command
                .args(["--notify-url", &notify.url])
                .arg("--notify-secret-file")
                .arg(&secret_file)
                .arg("--completion-window")
                .arg(format!("{}ms", notify.completion_window.as_millis()));
        }
        for (name, _) in std::env::vars() {
            if name.starts_with("VOD_SIGNER_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        let mut child = command
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let child = Killed(child);
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[vod-signer] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut child = child;
        let addr = serving_addr(&mut child, &log, Duration::from_secs(20))?;
        let mut signer = Signer {
            addr,
            log,
            child,
            _keys: keys,
            _notify: notify_dir,
        };
        signer.wait_serving(Duration::from_secs(20)).await?;
        Ok(signer)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_serving(&mut self, within: Duration) -> Result<(), String> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return Err(format!(
                    "vod-signer exited ({status}):\n{}",
                    self.log.lock().unwrap().join("\n")
                ));
            }
            let endpoint = tonic::transport::Endpoint::from_shared(self.endpoint())
                .map_err(|e| e.to_string())?;
            if let Ok(channel) = endpoint.connect().await {
                let reply = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await;
                if let Ok(reply) = reply
                    && reply.into_inner().status == ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "vod-signer at {} did not become SERVING within {within:?}:\n{}",
                    self.addr,
                    self.log.lock().unwrap().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A Redis and a vod-signer in front of it.
pub struct Stack {
    /// The vod-signer (drop order: it stops before its Redis).
    pub signer: Signer,
    /// Its Redis.
    pub redis: Redis,
}

impl Stack {
    /// Starts both; `binary` is the `vod-signer` to run, pushing to `notify` when given.
    pub async fn start(
        binary: &Path,
        echo: bool,
        notify: Option<&NotifyTo>,
    ) -> Result<Stack, String> {
        let redis = tokio::task::spawn_blocking(Redis::start)
            .await
            .map_err(|e| e.to_string())??;
        let signer = Signer::start(binary, &redis.url(), echo, notify).await?;
        Ok(Stack { signer, redis })
    }
}
