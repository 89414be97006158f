//! Load generator for vod-signer (issue 8): drives the gRPC API with the crate's own tonic
//! client and compares the numbers with `redis-benchmark` and `h2load` run in the same command
//! against the same Redis, so ratios stay meaningful on a shared, noisy machine.
//!
//! ```sh
//! cargo run --release --example loadgen -- --scenario consume
//! cargo run --release --example loadgen -- --scenario mixed --runtime multi-thread --half
//! cargo run --release --example loadgen -- --target 127.0.0.1:50051 --redis-url redis://127.0.0.1:6379/0
//! cargo run --release --example loadgen -- --floor --requests 50000   # against the floor
//! cargo run --release --example loadgen -- --scenario complete         # CompleteUpload vs consume
//! cargo run --release --example loadgen -- --delivery                  # push latency and backlog drain
//! ```
//!
//! Without `--target` it starts its own `redis-server` (no persistence) on a free loopback port
//! and the release `vod-signer serve` next to this example's binary (`target/release`; when run
//! through `cargo run` it first runs `cargo build --release --bin vod-signer` so the server is
//! never stale; `--server-bin` picks another). Every phase is bounded by `--requests` and the
//! whole run by `--max-seconds`; children are killed on exit, on Ctrl-C and by a watchdog.
//!
//! Scenarios:
//! - `issue`: IssueSignature alone.
//! - `consume`: ConsumeSignature of distinct signatures issued in an untimed warm-up.
//! - `mixed`: consumes of fresh signatures and `--replay-percent` replays of already consumed
//!   ones; every replay must be refused with `SIGNATURE_ALREADY_USED` (checked: the exit code
//!   is 1 otherwise).
//!
//! `--half` adds a second, open-loop phase paced at half the throughput just measured, for the
//! p99 at half load (latency counted from each call's scheduled start, so a stalled server
//! cannot hide its queueing: no coordinated omission).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use prost::Message as _;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt as _;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{
    CompleteUploadRequest, ConsumeSignatureRequest, IssueSignatureRequest, UploadPolicy,
};

const SECRET_ID: &str = "AKIDloadgen0000000000000000000000000";
const SECRET_KEY: &str = "LoadgenSecretKey0123456789abcdef";
const SERVICE: &str = "vodsigner.v1.SignatureService";
const ISSUE_PATH: &str = "/vodsigner.v1.SignatureService/IssueSignature";
const CONSUME_PATH: &str = "/vodsigner.v1.SignatureService/ConsumeSignature";

mod against_floor;
mod delivery;
mod subjects;

/// A Lua script shaped like the service's consume script: GET, `string.match` of the record,
/// SET ... KEEPTTL of the new record. It always writes, whatever it finds, so every call does
/// the work of a successful consume.
const BASELINE_LUA: &str = r#"local v = redis.call('GET', KEYS[1]) or 'v1|issued|0123456789abcdef01234567|1700000000|1700000000|'
local state, fp, issued, changed, idem = string.match(v, '^v1|(%l+)|(%x*)|(%-?%d+)|(%-?%d+)|(%x*)$')
if not state then return {'missing'} end
redis.call('SET', KEYS[1], 'v1|consumed|' .. fp .. '|' .. issued .. '|' .. ARGV[1] .. '|' .. ARGV[2], 'KEEPTTL')
return {'ok', ARGV[1]}"#;

/// Redis database the baselines write to (never the service's).
const BASELINE_DB: &str = "15";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Load generator for vod-signer, with redis-benchmark and h2load baselines"
)]
struct Args {
    /// What to drive.
    #[arg(long, value_enum, default_value = "issue")]
    scenario: Scenario,
    /// `--floor`: signatures issued into an emptied Redis to measure its memory per record
    /// (0: skip).
    #[arg(long, default_value_t = 100_000)]
    memory_records: u64,
    /// Timed calls per phase.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Calls in flight at once (also the redis-benchmark client count).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 110)]
    max_seconds: u64,
    /// Open-loop pacing of the main phase, calls per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// After the main phase, a phase paced at half its throughput (p99 at half load).
    #[arg(long)]
    half: bool,
    /// Share of replays in the mixed scenario, percent.
    #[arg(long, default_value_t = 20)]
    replay_percent: u64,
    /// Issue without `subject` (no subject index work), to measure what the index costs.
    #[arg(long)]
    without_subject: bool,
    /// A running server (host:port) instead of starting one.
    #[arg(long)]
    target: Option<String>,
    /// The Redis the target uses (for the baselines and the h2load record count).
    #[arg(long)]
    redis_url: Option<String>,
    /// The target's process id, to report its CPU time and peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The vod-signer binary to start (default: `vod-signer` next to this example's directory).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Do not run `cargo build --release --bin vod-signer` first.
    #[arg(long)]
    no_build: bool,
    /// Runtime of the started server (`vod-signer serve --runtime`).
    #[arg(long, value_enum, default_value = "auto")]
    runtime: Runtime,
    /// Worker threads of the started server's multi-thread runtime (0: its default).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// More arguments for `vod-signer serve` (repeat the flag for each one).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Run the redis-benchmark baselines (default: on when this run started Redis itself).
    #[arg(long, overrides_with = "no_baseline")]
    baseline: bool,
    /// Do not run the baselines.
    #[arg(long)]
    no_baseline: bool,
    /// Run the h2load IssueSignature cross-check (default: with the baselines).
    #[arg(long, overrides_with = "no_h2load")]
    h2load: bool,
    /// Do not run the h2load cross-check.
    #[arg(long)]
    no_h2load: bool,
    /// Worker threads of this load generator's runtime (1: tokio current-thread).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Record the server with `perf record` during the main phase, into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// `perf record --call-graph` mode (`dwarf,32768`, `fp`, `lbr`) or `none`.
    #[arg(long, default_value = "dwarf,16384")]
    perf_call_graph: String,
    /// Count the server's system calls and context switches per call (`perf stat`) during
    /// the main phase.
    #[arg(long)]
    syscalls: bool,
    /// A label printed with the results (e.g. the build profile under test).
    #[arg(long, default_value = "")]
    label: String,
    /// Compare vod-signer with the floor of its stack (`examples/floor.rs`) in one run,
    /// interleaved, with this generator and h2load; print the ratios (see `against_floor.rs`).
    #[arg(long)]
    floor: bool,
    /// `--floor` with a subject profile instead of the floor: one vod-signer with a
    /// per-subject quota and the outstanding cap on, IssueSignature and ConsumeSignature with
    /// a subject interleaved with the same calls without one (see `subjects.rs`).
    #[arg(long, value_enum)]
    subjects: Option<SubjectProfile>,
    /// Rounds of the `--floor` comparison (each drives both servers in turn).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure the upload notifications' push instead (see `delivery.rs`): the latency from
    /// CompleteUpload to the receiver, and how fast one replica drains a backlog.
    #[arg(long)]
    delivery: bool,
    /// `--delivery`: notifications queued before the drain.
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// Start vod-signer with every default on (metrics endpoint, info logs) instead of the
    /// quieter settings of the single-target run.
    #[arg(skip)]
    server_defaults: bool,
}

impl Args {
    /// ` [label]` for the headings, or nothing without `--label`.
    fn label_suffix(&self) -> String {
        if self.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.label)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Issue,
    Consume,
    Mixed,
    /// ConsumeSignature of fresh signatures, then CompleteUpload of the same: two timed
    /// phases, with their CPU per call side by side.
    Complete,
}

/// `--subjects`: whose signatures the subject calls are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SubjectProfile {
    /// A pool of 10 000 subjects (`user-{i % 10000}`).
    Pool,
    /// One subject, up to 50 000 outstanding signatures.
    One,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Runtime {
    Auto,
    CurrentThread,
    MultiThread,
}

impl Runtime {
    fn flag(self) -> &'static str {
        match self {
            Runtime::Auto => "auto",
            Runtime::CurrentThread => "current-thread",
            Runtime::MultiThread => "multi-thread",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes: killed on drop, and by the watchdog if the run overstays.

static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process killed (SIGKILL) when dropped.
struct Guard {
    child: Child,
}

impl Guard {
    fn new(child: Child) -> Guard {
        CHILD_PIDS.lock().unwrap().push(child.id());
        Guard { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILD_PIDS.lock().unwrap().retain(|p| *p != self.child.id());
    }
}

fn kill_registered_children() {
    for pid in CHILD_PIDS.lock().unwrap().iter() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

fn start_watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("loadgen: --max-seconds exceeded by far: killing children and exiting");
        kill_registered_children();
        std::process::exit(3);
    });
}

/// Runs `cmd` to completion within `limit`, capturing stdout and stderr.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<(String, String), String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut guard = Guard::new(child);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.exited() {
            break status;
        }
        if Instant::now() > deadline {
            drop(guard);
            return Err(format!("{shown} did not finish within {limit:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(guard);
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{shown} failed ({status}): {stderr}{stdout}"));
    }
    Ok((stdout, stderr))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// Clock ticks per second of /proc/PID/stat.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds (threads that exited included).
fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: field 3 (state) is index 0; utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// A `/proc/PID/status` field in KiB (VmHWM, VmRSS) or a count (Threads).
fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[derive(Clone, Copy, Default)]
struct CpuSnap {
    server: Option<f64>,
    redis: Option<f64>,
    client: Option<f64>,
}

struct Pids {
    server: Option<u32>,
    redis: Option<u32>,
    ticks: f64,
}

impl Pids {
    fn snap(&self) -> CpuSnap {
        CpuSnap {
            server: self.server.and_then(|p| cpu_seconds(p, self.ticks)),
            redis: self.redis.and_then(|p| cpu_seconds(p, self.ticks)),
            client: cpu_seconds(std::process::id(), self.ticks),
        }
    }
}

/// CPU microseconds per call between two snapshots.
fn per_call(before: Option<f64>, after: Option<f64>, calls: u64) -> Option<f64> {
    Some((after? - before?) * 1e6 / calls.max(1) as f64)
}

// ---------------------------------------------------------------------------------------------
// Redis: the one this run starts, or the one --redis-url names.

#[derive(Clone, Debug)]
struct RedisAddr {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    db: String,
}

impl RedisAddr {
    /// `redis://[user[:password]@]host[:port][/db]`; TLS and cluster URLs are not handled.
    fn parse(url: &str) -> Result<RedisAddr, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("only redis:// URLs are handled here, not {url:?}"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = rest.split_once('/').unwrap_or((rest, "0"));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in {url:?}"))?),
            None => (hostport, 6379),
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(p.to_owned())),
                None => (None, Some(a.to_owned())),
            },
            None => (None, None),
        };
        Ok(RedisAddr {
            host: host.to_owned(),
            port,
            user,
            password,
            db: if db.is_empty() { "0".into() } else { db.into() },
        })
    }

    fn conn_args(&self) -> Vec<String> {
        let mut args = vec![
            "-h".into(),
            self.host.clone(),
            "-p".into(),
            self.port.to_string(),
        ];
        if let Some(user) = &self.user {
            args.extend(["--user".into(), user.clone()]);
        }
        if let Some(password) = &self.password {
            args.extend(["-a".into(), password.clone()]);
        }
        args
    }

    fn cli(&self, db: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(self.conn_args()).args(["-n", db]).args(args);
        run_bounded(&mut cmd, Duration::from_secs(10)).map(|(out, _)| out.trim().to_owned())
    }

    fn dbsize(&self) -> Option<u64> {
        self.cli(&self.db, &["DBSIZE"]).ok()?.parse().ok()
    }
}

fn start_redis(dir: &Path) -> Result<(Guard, RedisAddr), String> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server (apt-get install redis-server): {e}"))?;
    let mut guard = Guard::new(child);
    let addr = RedisAddr {
        host: "127.0.0.1".into(),
        port,
        user: None,
        password: None,
        db: "0".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if addr.cli("0", &["PING"]).as_deref() == Ok("PONG") {
            return Ok((guard, addr));
        }
        if guard.exited().is_some() || Instant::now() > deadline {
            return Err(format!("redis-server on port {port} did not start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// The vod-signer server this run starts.

fn server_binary(args: &Args) -> Result<PathBuf, String> {
    if let Some(bin) = &args.server_bin {
        return Ok(bin.clone());
    }
    built_binary(args, &["--bin", "vod-signer"], "vod-signer")
}

/// The floor (`examples/floor.rs`), next to this example's binary; built first when run
/// through cargo.
fn floor_binary(args: &Args) -> Result<PathBuf, String> {
    built_binary(args, &["--example", "floor"], "examples/floor")
}

/// A binary of this package in this example's target directory (`relative` to it), built
/// first with `cargo build TARGET` when run through cargo.
fn built_binary(args: &Args, target: &[&str], relative: &str) -> Result<PathBuf, String> {
    // target/release/examples/loadgen -> target/release/vod-signer
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    if !args.no_build
        && let (Ok(cargo), Ok(manifest_dir)) =
            (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR"))
    {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        let profile_flag = if profile == "debug" {
            "--profile=dev".to_owned()
        } else {
            format!("--profile={profile}")
        };
        let target = target.join(" ");
        eprintln!("loadgen: cargo build {profile_flag} {target} (skip with --no-build)");
        let status = Command::new(cargo)
            .current_dir(&manifest_dir)
            .arg("build")
            .arg(&profile_flag)
            .args(target.split(' '))
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build {target} failed"));
        }
    }
    let bin = dir.join(relative);
    if !bin.exists() {
        return Err(format!(
            "{} not found: cargo build --release {} (or pass --server-bin)",
            bin.display(),
            target.join(" ")
        ));
    }
    Ok(bin)
}

async fn health_serving(addr: &str) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(endpoint) = Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await;
    matches!(reply, Ok(r) if r.get_ref().status == 1)
}

async fn start_server(
    args: &Args,
    bin: &Path,
    dir: &Path,
    redis_url: &str,
) -> Result<(Guard, String, PathBuf), String> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(|e| e.to_string())?;
    std::fs::write(keys.join(SECRET_ID), SECRET_KEY).map_err(|e| e.to_string())?;
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.join("server.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .args(["--listen", &addr])
        .arg("--keys-dir")
        .arg(&keys)
        .args(["--active-key", SECRET_ID, "--redis-url", redis_url])
        .args(["--runtime", args.runtime.flag()]);
    if args.server_defaults {
        // The metrics endpoint on, on a port of its own; the default log level.
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())]);
    } else {
        cmd.args(["--metrics-listen", "off", "--log-level", "warn"]);
    }
    if args.worker_threads > 0 {
        cmd.args(["--worker-threads", &args.worker_threads.to_string()]);
    }
    cmd.args(&args.server_arg);
    for (name, _) in std::env::vars() {
        if name.starts_with("VOD_SIGNER_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut guard = Guard::new(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if health_serving(&addr).await {
            return Ok((guard, addr, log));
        }
        if let Some(status) = guard.exited() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("vod-signer exited ({status}): {text}"));
        }
        if Instant::now() > deadline {
            return Err("vod-signer did not become SERVING within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The calls.

type Client = SignatureServiceClient<Channel>;

/// `--without-subject`.
static WITHOUT_SUBJECT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// How many subjects the issues are spread over (`user-{i % SUBJECT_POOL}`).
static SUBJECT_POOL: AtomicU64 = AtomicU64::new(1000);

fn issue_request(i: u64) -> IssueSignatureRequest {
    IssueSignatureRequest {
        secret_id: String::new(),
        ttl_seconds: 0,
        policy: Some(UploadPolicy {
            class_id: Some(1024),
            procedure: "QCVB_SimpleProcessFile".into(),
            source_context: format!("user-{}/upload-{i}", i % 1000),
            max_file_size: Some(1 << 30),
            ..UploadPolicy::default()
        }),
        subject: if WITHOUT_SUBJECT.load(Ordering::Relaxed) {
            String::new()
        } else {
            format!("user-{}", i % SUBJECT_POOL.load(Ordering::Relaxed).max(1))
        },
    }
}

/// The reason token of a refusal: the ErrorInfo's, else the message's prefix, else the code.
fn reason_of(status: &tonic::Status) -> String {
    if let Some(info) = status.get_details_error_info() {
        return info.reason;
    }
    let prefix = status.message().split(':').next().unwrap_or("");
    if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return prefix.to_owned();
    }
    format!("grpc:{:?}", status.code())
}

#[derive(Clone)]
enum Work {
    /// IssueSignature; keep the signatures when `collect`.
    Issue { collect: bool },
    /// ConsumeSignature of `sigs[i]`.
    Consume { sigs: Arc<Vec<String>> },
    /// CompleteUpload of consumed `sigs[i]`.
    Complete { sigs: Arc<Vec<String>> },
    /// Consume fresh ones, replay consumed ones (`pct` percent of the calls).
    Mixed {
        sigs: Arc<Vec<String>>,
        pct: u64,
        consumed: Arc<Mutex<Vec<u32>>>,
    },
}

fn is_replay(i: u64, pct: u64) -> bool {
    (i + 1) * pct / 100 > i * pct / 100
}

/// How many fresh signatures a phase of `n` calls needs.
fn fresh_needed(scenario: Scenario, n: u64, pct: u64) -> u64 {
    match scenario {
        Scenario::Issue => 0,
        Scenario::Consume | Scenario::Complete => n,
        Scenario::Mixed => n - n * pct / 100,
    }
}

#[derive(Default)]
struct Outcome {
    /// Latency from sending each call.
    hist: Option<Histogram<u64>>,
    /// Paced phases: latency from each call's scheduled start (includes the pacer's lag, about
    /// 0.1 ms, and any wait for a free worker: no coordinated omission).
    hist_scheduled: Option<Histogram<u64>>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    replays: u64,
    replays_refused_used: u64,
    replays_accepted: u64,
    fresh_refused: u64,
    collected: Vec<String>,
    last: Option<Instant>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            hist: Some(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
            hist_scheduled: Some(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
            ..Outcome::default()
        }
    }

    fn merge(&mut self, other: Outcome) {
        if let (Some(h), Some(o)) = (self.hist.as_mut(), other.hist.as_ref()) {
            h.add(o).expect("same bounds");
        }
        if let (Some(h), Some(o)) = (self.hist_scheduled.as_mut(), other.hist_scheduled.as_ref()) {
            h.add(o).expect("same bounds");
        }
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.replays += other.replays;
        self.replays_refused_used += other.replays_refused_used;
        self.replays_accepted += other.replays_accepted;
        self.fresh_refused += other.fresh_refused;
        self.collected.extend(other.collected);
        self.last = self.last.max(other.last);
    }

    fn calls(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

struct PhaseShared {
    next: AtomicU64,
    /// Paced phases: call indices as they fall due, from the pacer thread.
    due: Option<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<u64>>>,
    n: u64,
    start: Instant,
    rate: f64,
    deadline: Instant,
    work: Work,
    /// The latency histograms, a few shared by all workers: one pair per worker would cost
    /// 300 KB each, gigabytes to fault in and merge at 6 400 workers, which the phase's wall
    /// time and the client's CPU would then measure instead of the calls.
    latencies: Vec<Mutex<Outcome>>,
}

/// How many latency shards a phase has: enough that workers rarely wait for one.
const LATENCY_SHARDS: usize = 16;

/// What one call of a phase does.
enum Call {
    Issue,
    Consume(usize),
    Complete(usize),
    /// A fresh signature of the mixed scenario.
    Fresh(usize),
    /// A replay of an already consumed one.
    Replay(usize),
}

async fn worker(shared: Arc<PhaseShared>, mut client: Client, w: usize) -> Outcome {
    // The counts; the latencies go to the phase's shared histograms.
    let mut out = Outcome::default();
    let latencies = &shared.latencies[w % LATENCY_SHARDS];
    let mut rng = (0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1)) | 1;
    loop {
        let i = match &shared.due {
            Some(due) => {
                let next = due.lock().await.recv().await;
                let Some(i) = next else { break };
                i
            }
            None => shared.next.fetch_add(1, Ordering::Relaxed),
        };
        if i >= shared.n || Instant::now() > shared.deadline {
            break;
        }
        let scheduled = (shared.rate > 0.0)
            .then(|| shared.start + Duration::from_secs_f64(i as f64 / shared.rate));
        let call = match &shared.work {
            Work::Issue { .. } => Call::Issue,
            Work::Consume { .. } => Call::Consume(i as usize),
            Work::Complete { .. } => Call::Complete(i as usize),
            Work::Mixed { pct, consumed, .. } if is_replay(i, *pct) => {
                // A signature whose consume has completed (the first ones are moments away).
                let pick = loop {
                    {
                        let done = consumed.lock().unwrap();
                        if !done.is_empty() {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            break Some(done[(rng % done.len() as u64) as usize]);
                        }
                    }
                    if Instant::now() > shared.deadline {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                };
                let Some(j) = pick else { break };
                Call::Replay(j as usize)
            }
            Work::Mixed { pct, .. } => Call::Fresh((i - i * pct / 100) as usize),
        };
        let consume = |sigs: &Arc<Vec<String>>, j: usize, key: String| ConsumeSignatureRequest {
            signature: sigs[j].clone(),
            file_size: Some(5 << 20),
            idempotency_key: key,
        };
        let sent = Instant::now();
        let result: Result<(), tonic::Status> = match (&shared.work, call) {
            (Work::Issue { collect }, _) => {
                client.issue_signature(issue_request(i)).await.map(|r| {
                    if *collect {
                        out.collected.push(r.into_inner().signature);
                    }
                })
            }
            (Work::Consume { sigs }, Call::Consume(j)) => client
                .consume_signature(consume(sigs, j, format!("lg-{i}")))
                .await
                .map(drop),
            (Work::Complete { sigs }, Call::Complete(j)) => client
                .complete_upload(CompleteUploadRequest {
                    signature: sigs[j].clone(),
                    file_id: format!("5285890{j:012}"),
                    file_size: 5 << 20,
                    media_url: format!("https://vod.example/media/5285890{j:012}.mp4"),
                    media_type: "mp4".into(),
                })
                .await
                .map(drop),
            (Work::Mixed { sigs, .. }, Call::Replay(j)) => {
                let r = client
                    .consume_signature(consume(sigs, j, format!("replay-{i}")))
                    .await;
                out.replays += 1;
                match &r {
                    Ok(_) => out.replays_accepted += 1,
                    Err(s) if reason_of(s) == "SIGNATURE_ALREADY_USED" => {
                        out.replays_refused_used += 1
                    }
                    Err(_) => {}
                }
                r.map(drop)
            }
            (Work::Mixed { sigs, consumed, .. }, Call::Fresh(j)) => {
                let r = client
                    .consume_signature(consume(sigs, j, format!("lg-{i}")))
                    .await;
                match &r {
                    Ok(_) => consumed.lock().unwrap().push(j as u32),
                    Err(_) => out.fresh_refused += 1,
                }
                r.map(drop)
            }
            _ => unreachable!("calls match their phase"),
        };
        let done = Instant::now();
        match result {
            Ok(()) => out.ok += 1,
            Err(status) => *out.errors.entry(reason_of(&status)).or_default() += 1,
        }
        let micros = |d: Duration| d.as_micros().max(1) as u64;
        let mut hists = latencies.lock().unwrap();
        if let Some(h) = hists.hist.as_mut() {
            h.saturating_record(micros(done - sent));
        }
        if let (Some(h), Some(at)) = (hists.hist_scheduled.as_mut(), scheduled) {
            // From the call's due time: includes the pacer's lag and any wait for a free worker.
            h.saturating_record(micros(done.saturating_duration_since(at)));
        }
    }
    out.last = Some(Instant::now());
    out
}

struct PhaseResult {
    name: String,
    outcome: Outcome,
    elapsed: Duration,
    rate: f64,
    cpu_before: CpuSnap,
    cpu_after: CpuSnap,
    complete: bool,
}

impl PhaseResult {
    fn throughput(&self) -> f64 {
        self.outcome.calls() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn pct_ms(&self, q: f64) -> f64 {
        self.outcome
            .hist
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    fn max_ms(&self) -> f64 {
        self.outcome
            .hist
            .as_ref()
            .map_or(0.0, |h| h.max() as f64 / 1000.0)
    }

    /// p50, p99, p99.9 and max from the scheduled starts (paced phases only).
    fn scheduled_ms(&self) -> Option<[f64; 4]> {
        let h = self.outcome.hist_scheduled.as_ref()?;
        (self.rate > 0.0 && !h.is_empty()).then(|| {
            [
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
            ]
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    name: &str,
    clients: &[Client],
    concurrency: usize,
    n: u64,
    rate: f64,
    work: Work,
    deadline: Instant,
    pids: &Pids,
    perf: &[PerfRecorder],
) -> PhaseResult {
    for p in perf {
        p.resume();
    }
    let cpu_before = pids.snap();
    let start = Instant::now();
    // Paced: a thread hands out call indices as they fall due, checking every ~100 us. (tokio's
    // timer has a 1 ms resolution: sleeping until each call's time would release the calls in
    // bursts of rate/1000 and measure the bursts, not the server.)
    let due = (rate > 0.0).then(|| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        std::thread::spawn(move || {
            let mut next = 0u64;
            while next < n && Instant::now() < deadline {
                let now = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                while next < now.min(n) {
                    if tx.send(next).is_err() {
                        return;
                    }
                    next += 1;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        tokio::sync::Mutex::new(rx)
    });
    let shared = Arc::new(PhaseShared {
        next: AtomicU64::new(0),
        due,
        n,
        start,
        rate,
        deadline,
        work,
        latencies: (0..LATENCY_SHARDS)
            .map(|_| Mutex::new(Outcome::new()))
            .collect(),
    });
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            tokio::spawn(worker(shared.clone(), client, w))
        })
        .collect();
    let mut outcome = Outcome::new();
    for t in tasks {
        if let Ok(o) = t.await {
            outcome.merge(o);
        }
    }
    for shard in &shared.latencies {
        outcome.merge(std::mem::take(&mut *shard.lock().unwrap()));
    }
    let elapsed = outcome.last.unwrap_or_else(Instant::now) - start;
    let cpu_after = pids.snap();
    for p in perf {
        p.pause();
    }
    let complete = outcome.calls() >= n;
    PhaseResult {
        name: name.to_owned(),
        outcome,
        elapsed,
        rate,
        cpu_before,
        cpu_after,
        complete,
    }
}

/// Issues `n` signatures in an untimed phase, `c` at a time, for a consume phase to use.
async fn fresh_signatures(
    clients: &[Client],
    c: usize,
    n: u64,
    deadline: Instant,
    pids: &Pids,
) -> Result<Arc<Vec<String>>, String> {
    let work = Work::Issue { collect: true };
    let fresh = run_phase(
        "issue (untimed)",
        clients,
        c,
        n,
        0.0,
        work,
        deadline,
        pids,
        &[],
    )
    .await;
    if (fresh.outcome.collected.len() as u64) < n {
        return Err(format!(
            "could issue only {} of {n} signatures (errors {:?}; --max-seconds?)",
            fresh.outcome.collected.len(),
            fresh.outcome.errors
        ));
    }
    Ok(Arc::new(fresh.outcome.collected))
}

// ---------------------------------------------------------------------------------------------
// perf record of the server during the timed phases.

/// The server's system calls and context switches counted by `perf stat`.
const SYSCALL_EVENTS: &[&str] = &[
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_epoll_wait",
    "context-switches",
];

enum PerfMode {
    /// `perf record` into this file.
    Record { file: PathBuf, call_graph: String },
    /// `perf stat` of [`SYSCALL_EVENTS`], written to this file (CSV).
    Stat { file: PathBuf },
}

struct PerfRecorder {
    pid: u32,
    child: Mutex<Option<Guard>>,
    mode: PerfMode,
    used: Mutex<bool>,
}

impl PerfRecorder {
    fn new(pid: u32, mode: PerfMode) -> PerfRecorder {
        PerfRecorder {
            pid,
            child: Mutex::new(None),
            mode,
            used: Mutex::new(false),
        }
    }

    /// Starts perf on the server's process for the phase (only the main phase).
    fn resume(&self) {
        let mut used = self.used.lock().unwrap();
        if *used {
            return;
        }
        *used = true;
        let mut cmd = Command::new("perf");
        match &self.mode {
            PerfMode::Record { file, call_graph } => {
                cmd.args(["record", "-e", "cpu-clock", "-F", "1999", "-o"])
                    .arg(file);
                if call_graph != "none" {
                    cmd.args(["--call-graph", call_graph]);
                }
            }
            PerfMode::Stat { file } => {
                cmd.args(["stat", "-x", ",", "-e", &SYSCALL_EVENTS.join(","), "-o"])
                    .arg(file);
            }
        }
        cmd.arg("-p").arg(self.pid.to_string());
        match cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => {
                *self.child.lock().unwrap() = Some(Guard::new(child));
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => eprintln!("loadgen: cannot run perf ({e}); no profile"),
        }
    }

    fn pause(&self) {
        if let Some(mut guard) = self.child.lock().unwrap().take() {
            let _ = Command::new("kill")
                .args(["-INT", &guard.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while guard.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let PerfMode::Record { file, .. } = &self.mode {
                eprintln!("loadgen: perf data in {}", file.display());
            }
        }
    }

    /// `perf stat` counts per call, by event.
    fn counts_per_call(&self, calls: u64) -> BTreeMap<String, f64> {
        let PerfMode::Stat { file } = &self.mode else {
            return BTreeMap::new();
        };
        let text = std::fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let count: f64 = f.first()?.trim().parse().ok()?;
                let event = f.get(2)?.trim();
                let short = event.strip_prefix("syscalls:sys_enter_").unwrap_or(event);
                Some((short.to_owned(), count / calls.max(1) as f64))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Baselines.

/// The requests/s of a `redis-benchmark -q` run (the last line that names them).
fn parse_rps(output: &str) -> Option<f64> {
    output
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .filter_map(|l| {
            let before = l.split("requests per second").next()?;
            before.split_whitespace().next_back()?.parse().ok()
        })
        .next_back()
}

struct Baselines {
    set: Vec<f64>,
    evalsha: Vec<f64>,
}

impl Baselines {
    fn mean(v: &[f64]) -> Option<f64> {
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

fn redis_benchmark(redis: &RedisAddr, args: &Args, command: &[&str]) -> Result<f64, String> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(redis.conn_args())
        .args(["-c", &args.concurrency.to_string()])
        .args(["-n", &args.requests.to_string()])
        .args(["--dbnum", BASELINE_DB, "-q"])
        .args(command);
    let (out, err) = run_bounded(&mut cmd, Duration::from_secs(60))?;
    parse_rps(&out).ok_or_else(|| format!("no requests per second in: {out}{err}"))
}

fn run_baselines(redis: &RedisAddr, args: &Args, sha: &str, into: &mut Baselines, when: &str) {
    match redis_benchmark(redis, args, &["-t", "set"]) {
        Ok(rps) => {
            eprintln!("loadgen: redis-benchmark SET ({when}): {rps:.0} req/s");
            into.set.push(rps);
        }
        Err(e) => eprintln!("loadgen: redis-benchmark SET failed: {e}"),
    }
    let key = "loadgen:sig:AKIDbench:__rand_int__";
    match redis_benchmark(
        redis,
        args,
        &[
            "-r",
            "1000000",
            "evalsha",
            sha,
            "1",
            key,
            "1700000000",
            "0123456789abcdef",
        ],
    ) {
        Ok(rps) => {
            eprintln!("loadgen: redis-benchmark EVALSHA consume-shaped ({when}): {rps:.0} req/s");
            into.evalsha.push(rps);
        }
        Err(e) => eprintln!("loadgen: redis-benchmark EVALSHA failed: {e}"),
    }
}

struct H2loadResult {
    rps: f64,
    requests: u64,
    succeeded_http: u64,
    status_2xx: u64,
    records_added: Option<u64>,
    mean_ms: Option<f64>,
    server_cpu_us: Option<f64>,
    redis_cpu_us: Option<f64>,
    streams_per_conn: usize,
}

/// h2load against `target`'s `path` with one request `body` (a gRPC frame); with `redis`, the
/// records it added are counted (IssueSignature).
fn run_h2load(
    target: &str,
    redis: Option<&RedisAddr>,
    args: &Args,
    dir: &Path,
    pids: &Pids,
    path: &str,
    body: &[u8],
) -> Result<H2loadResult, String> {
    let body_path = dir.join("request.grpc");
    std::fs::write(&body_path, body).map_err(|e| e.to_string())?;
    let conns = args.connections.max(1);
    let streams = args.concurrency.div_ceil(conns).max(1);
    let before = redis.and_then(RedisAddr::dbsize);
    let cpu_before = pids.snap();
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &args.requests.to_string()])
        .args([
            "-c",
            &conns.to_string(),
            "-m",
            &streams.to_string(),
            "-t",
            "1",
        ])
        .arg("-d")
        .arg(&body_path)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://{target}{path}"));
    let (out, _) = run_bounded(&mut cmd, Duration::from_secs(90))
        .map_err(|e| format!("{e} (h2load: apt-get install -y nghttp2-client)"))?;
    let cpu_after = pids.snap();
    let after = redis.and_then(RedisAddr::dbsize);
    let line = |prefix: &str| out.lines().find(|l| l.trim_start().starts_with(prefix));
    let number_before = |text: &str, word: &str| -> Option<f64> {
        let idx = text.find(word)?;
        text[..idx]
            .split([' ', ','])
            .rfind(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    let finished = line("finished in").ok_or_else(|| format!("unexpected h2load output: {out}"))?;
    let rps = number_before(finished, "req/s").unwrap_or(0.0);
    let requests = line("requests:").unwrap_or("");
    let status = line("status codes:").unwrap_or("");
    let mean_ms = line("time for request:").and_then(|l| {
        // min max mean sd +/- sd: the third value, with its unit.
        let v: Vec<&str> = l.split(':').nth(1)?.split_whitespace().collect();
        let mean = v.get(2)?;
        let (num, factor) = if let Some(us) = mean.strip_suffix("us") {
            (us, 0.001)
        } else if let Some(ms) = mean.strip_suffix("ms") {
            (ms, 1.0)
        } else {
            (mean.strip_suffix('s')?, 1000.0)
        };
        num.parse::<f64>().ok().map(|x| x * factor)
    });
    let calls = args.requests;
    Ok(H2loadResult {
        rps,
        requests: calls,
        succeeded_http: number_before(requests, "succeeded").unwrap_or(0.0) as u64,
        status_2xx: number_before(status, "2xx").unwrap_or(0.0) as u64,
        records_added: match (before, after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        },
        mean_ms,
        server_cpu_us: per_call(cpu_before.server, cpu_after.server, calls),
        redis_cpu_us: per_call(cpu_before.redis, cpu_after.redis, calls),
        streams_per_conn: streams,
    })
}

// ---------------------------------------------------------------------------------------------
// Reporting.

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.digits$}"))
}

fn phase_json(p: &PhaseResult, set: Option<f64>, evalsha: Option<f64>) -> Value {
    let calls = p.outcome.calls();
    json!({
        "phase": p.name,
        "calls": calls,
        "ok": p.outcome.ok,
        "errors": p.outcome.errors,
        "complete": p.complete,
        "seconds": p.elapsed.as_secs_f64(),
        "rate_target": p.rate,
        "calls_per_s": p.throughput(),
        "p50_ms": p.pct_ms(0.5),
        "p99_ms": p.pct_ms(0.99),
        "p999_ms": p.pct_ms(0.999),
        "max_ms": p.max_ms(),
        "from_schedule_p50_p99_p999_max_ms": p.scheduled_ms(),
        "server_cpu_us_per_call": per_call(p.cpu_before.server, p.cpu_after.server, calls),
        "redis_cpu_us_per_call": per_call(p.cpu_before.redis, p.cpu_after.redis, calls),
        "client_cpu_us_per_call": per_call(p.cpu_before.client, p.cpu_after.client, calls),
        "ratio_to_set": set.map(|s| p.throughput() / s),
        "ratio_to_evalsha": evalsha.map(|s| p.throughput() / s),
        "replays": p.outcome.replays,
        "replays_refused_already_used": p.outcome.replays_refused_used,
        "replays_accepted": p.outcome.replays_accepted,
        "fresh_refused": p.outcome.fresh_refused,
    })
}

fn print_phase(p: &PhaseResult, set: Option<f64>, evalsha: Option<f64>) {
    let calls = p.outcome.calls();
    let pace = if p.rate > 0.0 {
        format!(", paced at {:.0}/s (open loop)", p.rate)
    } else {
        String::new()
    };
    println!(
        "== {}: {calls} calls in {:.2} s{pace}{}",
        p.name,
        p.elapsed.as_secs_f64(),
        if p.complete {
            ""
        } else {
            "  (INCOMPLETE: --max-seconds)"
        }
    );
    println!("   throughput     {:>10.0} calls/s", p.throughput());
    println!(
        "   latency ms     p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        p.pct_ms(0.5),
        p.pct_ms(0.99),
        p.pct_ms(0.999),
        p.max_ms()
    );
    if let Some([p50, p99, p999, max]) = p.scheduled_ms() {
        println!(
            "   from schedule  p50 {p50:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}  (includes the pacer's lag and waits for a free worker)"
        );
    }
    println!(
        "   CPU us/call    server {}  redis {}  loadgen {}",
        fmt_opt(per_call(p.cpu_before.server, p.cpu_after.server, calls), 1),
        fmt_opt(per_call(p.cpu_before.redis, p.cpu_after.redis, calls), 1),
        fmt_opt(per_call(p.cpu_before.client, p.cpu_after.client, calls), 1),
    );
    if set.is_some() || evalsha.is_some() {
        println!(
            "   vs redis-benchmark   {}x SET   {}x EVALSHA(consume-shaped)",
            fmt_opt(set.map(|s| p.throughput() / s), 2),
            fmt_opt(evalsha.map(|s| p.throughput() / s), 2)
        );
    }
    print!("   ok {}", p.outcome.ok);
    for (reason, n) in &p.outcome.errors {
        print!("  {reason} {n}");
    }
    println!();
    if p.outcome.replays > 0 {
        println!(
            "   replays {}: refused SIGNATURE_ALREADY_USED {}, ACCEPTED {}, other {}; fresh refused {}",
            p.outcome.replays,
            p.outcome.replays_refused_used,
            p.outcome.replays_accepted,
            p.outcome.replays - p.outcome.replays_refused_used - p.outcome.replays_accepted,
            p.outcome.fresh_refused,
        );
    }
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = Args::parse();
    WITHOUT_SUBJECT.store(args.without_subject, Ordering::Relaxed);
    // Built (when run through cargo) before the clock starts: a build is not part of the run.
    let bin = match args.target {
        Some(_) => None,
        None => match server_binary(&args) {
            Ok(bin) => Some(bin),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // `--subjects` compares vod-signer with itself: no floor to build.
    let floor = match (args.floor && args.subjects.is_none(), &bin) {
        (false, _) => None,
        (true, None) => {
            eprintln!("loadgen: --floor starts its own servers: drop --target");
            return ExitCode::from(2);
        }
        (true, Some(_)) => match floor_binary(&args) {
            Ok(floor) => Some(floor),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return ExitCode::from(2);
            }
        },
    };
    start_watchdog(Duration::from_secs(args.max_seconds + 30));
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    let result = runtime.block_on(async {
        let work = async {
            match (floor, bin) {
                (None, Some(bin)) if args.floor && args.subjects.is_some() => {
                    subjects::run(args, bin).await
                }
                (Some(floor), Some(bin)) => against_floor::run(args, bin, floor).await,
                (None, Some(bin)) if args.delivery => delivery::run(args, bin).await,
                (_, bin) => run(args, bin).await,
            }
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

async fn connect(target: &str, k: usize) -> Result<Vec<Client>, String> {
    let mut clients = Vec::with_capacity(k);
    for _ in 0..k.max(1) {
        let channel = Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {target}: {e}"))?;
        clients.push(SignatureServiceClient::new(channel));
    }
    Ok(clients)
}

/// The first three fields of /proc/loadavg: how busy the machine was besides this run.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(args: Args, bin: Option<PathBuf>) -> Result<bool, String> {
    let started = Instant::now();
    let load_before = loadavg();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let ticks = clock_ticks();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let own = args.target.is_none();

    // Redis and the server.
    let mut _redis_guard = None;
    let mut server_guard = None;
    let redis: Option<RedisAddr>;
    let target: String;
    let mut server_log = None;
    if own {
        let (guard, addr) = start_redis(dir.path())?;
        let url = format!("redis://127.0.0.1:{}/0", addr.port);
        redis = Some(addr);
        _redis_guard = Some(guard);
        let bin = bin.ok_or("no server binary")?;
        let (guard, listen, log) = start_server(&args, &bin, dir.path(), &url).await?;
        eprintln!(
            "loadgen: started {} (pid {}) on {listen}, redis {url}, --runtime {}",
            bin.display(),
            guard.pid(),
            args.runtime.flag()
        );
        target = listen;
        server_guard = Some(guard);
        server_log = Some(log);
    } else {
        target = args.target.clone().expect("target");
        redis = args
            .redis_url
            .as_deref()
            .map(RedisAddr::parse)
            .transpose()?;
    }
    let pids = Pids {
        server: server_guard.as_ref().map(Guard::pid).or(args.server_pid),
        redis: _redis_guard.as_ref().map(Guard::pid),
        ticks,
    };
    let baseline = (own || args.baseline) && !args.no_baseline && redis.is_some();
    let h2load = (args.h2load || baseline) && !args.no_h2load;

    let mut perf = Vec::new();
    if args.perf.is_some() || args.syscalls {
        let pid = pids
            .server
            .ok_or("--perf and --syscalls need the server's pid (--server-pid)")?;
        if let Some(file) = &args.perf {
            perf.push(PerfRecorder::new(
                pid,
                PerfMode::Record {
                    file: file.clone(),
                    call_graph: args.perf_call_graph.clone(),
                },
            ));
        }
        if args.syscalls {
            perf.push(PerfRecorder::new(
                pid,
                PerfMode::Stat {
                    file: dir.path().join("perf-stat.csv"),
                },
            ));
        }
    }

    let clients = connect(&target, args.connections).await?;
    let mut baselines = Baselines {
        set: Vec::new(),
        evalsha: Vec::new(),
    };
    let mut sha = String::new();
    if baseline {
        let r = redis.as_ref().expect("checked");
        sha = r.cli(BASELINE_DB, &["SCRIPT", "LOAD", BASELINE_LUA])?;
        run_baselines(r, &args, &sha, &mut baselines, "before");
    }

    let c = args.concurrency.max(1);
    let pct = args.replay_percent.min(100);
    let mut phases: Vec<PhaseResult> = Vec::new();
    let mut all_ok = true;

    // Warm-up: a short untimed run primes connections, the script cache and the allocator.
    let warm = run_phase(
        "warm-up",
        &clients,
        c,
        (args.requests / 20).clamp(100, 5000),
        0.0,
        Work::Issue { collect: false },
        deadline,
        &pids,
        &[],
    )
    .await;
    if warm.outcome.ok == 0 {
        return Err(format!(
            "warm-up failed: {:?}{}",
            warm.outcome.errors,
            server_log
                .as_ref()
                .map(|l| format!(
                    "; server log: {}",
                    std::fs::read_to_string(l).unwrap_or_default()
                ))
                .unwrap_or_default()
        ));
    }

    let mut rates = vec![args.rate];
    if args.half {
        rates.push(-0.5); // resolved after the first phase
    }
    for (k, rate) in rates.into_iter().enumerate() {
        let rate = if rate < 0.0 {
            match phases.first() {
                Some(p) => p.throughput() * -rate,
                None => break,
            }
        } else {
            rate
        };
        let name = format!(
            "{:?}{}",
            args.scenario,
            if k == 0 { "" } else { " @ half of max" }
        )
        .to_lowercase();
        let need = fresh_needed(args.scenario, args.requests, pct);
        let work = if need > 0 {
            let sigs = fresh_signatures(&clients, c, need, deadline, &pids).await?;
            match args.scenario {
                Scenario::Consume => Work::Consume { sigs },
                Scenario::Complete => {
                    // The same signatures consumed first, in a timed phase of its own: the
                    // completion's cost is read against it.
                    let consumed = run_phase(
                        "consume (before complete)",
                        &clients,
                        c,
                        args.requests,
                        rate,
                        Work::Consume { sigs: sigs.clone() },
                        deadline,
                        &pids,
                        &[],
                    )
                    .await;
                    phases.push(consumed);
                    Work::Complete { sigs }
                }
                _ => Work::Mixed {
                    sigs,
                    pct,
                    consumed: Arc::new(Mutex::new(Vec::with_capacity(need as usize))),
                },
            }
        } else {
            Work::Issue { collect: false }
        };
        let phase = run_phase(
            &name,
            &clients,
            c,
            args.requests,
            rate,
            work,
            deadline,
            &pids,
            if k == 0 { &perf } else { &[] },
        )
        .await;
        phases.push(phase);
    }

    let main_calls = phases.first().map_or(0, |p| p.outcome.calls());
    let syscalls: BTreeMap<String, f64> = perf
        .iter()
        .flat_map(|p| p.counts_per_call(main_calls))
        .collect();
    if baseline {
        let r = redis.as_ref().expect("checked");
        run_baselines(r, &args, &sha, &mut baselines, "after");
    }
    let h2 = if h2load && Instant::now() < deadline {
        let body = {
            let msg = issue_request(7).encode_to_vec();
            let mut b = Vec::with_capacity(msg.len() + 5);
            b.push(0u8);
            b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            b.extend_from_slice(&msg);
            b
        };
        match run_h2load(
            &target,
            redis.as_ref(),
            &args,
            dir.path(),
            &pids,
            ISSUE_PATH,
            &body,
        ) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("loadgen: h2load cross-check failed: {e}");
                None
            }
        }
    } else {
        None
    };

    // Server memory, read before it is stopped.
    let hwm_kib = pids.server.and_then(|p| status_field(p, "VmHWM"));
    let rss_kib = pids.server.and_then(|p| status_field(p, "VmRSS"));
    let threads = pids.server.and_then(|p| status_field(p, "Threads"));

    let set = Baselines::mean(&baselines.set);
    let evalsha = Baselines::mean(&baselines.evalsha);
    println!();
    println!(
        "vod-signer loadgen{}: scenario {:?}, {} calls per phase, concurrency {c}, {} connections, server runtime {}{}",
        args.label_suffix(),
        args.scenario,
        args.requests,
        args.connections,
        args.runtime.flag(),
        if args.worker_threads > 0 {
            format!(" ({} workers)", args.worker_threads)
        } else {
            String::new()
        }
    );
    for p in &phases {
        print_phase(p, set, evalsha);
        if p.outcome.replays_accepted > 0
            || p.outcome.fresh_refused > 0
            || p.outcome.replays != p.outcome.replays_refused_used
            || (p.outcome.replays == 0 && !p.outcome.errors.is_empty())
            || !p.complete
        {
            all_ok = false;
        }
    }
    if let [consume, complete, ..] = &phases[..]
        && args.scenario == Scenario::Complete
    {
        let ratio = |of: fn(&CpuSnap) -> Option<f64>| {
            let per =
                |p: &PhaseResult| per_call(of(&p.cpu_before), of(&p.cpu_after), p.outcome.calls());
            Some(per(complete)? / per(consume)?)
        };
        println!(
            "== complete / consume, CPU per call: server {}x  redis {}x;  throughput {:.2}x",
            fmt_opt(ratio(|c| c.server), 2),
            fmt_opt(ratio(|c| c.redis), 2),
            complete.throughput() / consume.throughput().max(1e-9)
        );
    }
    if !syscalls.is_empty() {
        print!("== server per call (main phase, perf stat):");
        for (event, n) in &syscalls {
            print!("  {event} {n:.2}");
        }
        println!();
    }
    if baseline {
        println!(
            "== redis-benchmark -c {c} -n {} (before, after): SET {:?} req/s, EVALSHA consume-shaped {:?} req/s",
            args.requests, baselines.set, baselines.evalsha
        );
    }
    if let Some(h) = &h2 {
        println!(
            "== h2load IssueSignature -c {} -m {} (concurrency {}): {:.0} req/s, mean {} ms, server CPU {} us/call, redis {} us/call",
            args.connections,
            h.streams_per_conn,
            args.connections * h.streams_per_conn,
            h.rps,
            fmt_opt(h.mean_ms, 3),
            fmt_opt(h.server_cpu_us, 1),
            fmt_opt(h.redis_cpu_us, 1),
        );
        println!(
            "   HTTP: {} of {} succeeded ({} 2xx; h2load cannot see grpc-status); records added in Redis: {}{}",
            h.succeeded_http,
            h.requests,
            h.status_2xx,
            h.records_added
                .map_or_else(|| "n/a (no --redis-url)".to_owned(), |n| n.to_string()),
            match (h.records_added, set) {
                (Some(n), _) if n != h.requests =>
                    format!("  ({} calls did NOT issue)", h.requests.saturating_sub(n)),
                _ => "  (every call issued one)".to_owned(),
            }
        );
        if let Some(s) = set {
            println!(
                "   vs redis-benchmark   {:.2}x SET   {}x EVALSHA",
                h.rps / s,
                fmt_opt(evalsha.map(|e| h.rps / e), 2)
            );
        }
    }
    let load_after = loadavg();
    println!("== machine load average: {load_before} at start, {load_after} at end");
    println!(
        "== server: peak RSS (VmHWM) {} MiB, RSS now {} MiB, threads {}",
        fmt_opt(hwm_kib.map(|k| k as f64 / 1024.0), 1),
        fmt_opt(rss_kib.map(|k| k as f64 / 1024.0), 1),
        threads.map_or_else(|| "n/a".into(), |t| t.to_string()),
    );
    let summary = json!({
        "label": args.label,
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "requests": args.requests,
        "concurrency": c,
        "connections": args.connections,
        "runtime": args.runtime.flag(),
        "worker_threads": args.worker_threads,
        "phases": phases.iter().map(|p| phase_json(p, set, evalsha)).collect::<Vec<_>>(),
        "redis_benchmark_set": baselines.set,
        "redis_benchmark_evalsha": baselines.evalsha,
        "h2load": h2.as_ref().map(|h| json!({
            "calls_per_s": h.rps,
            "http_succeeded": h.succeeded_http,
            "status_2xx": h.status_2xx,
            "records_added": h.records_added,
            "mean_ms": h.mean_ms,
            "server_cpu_us_per_call": h.server_cpu_us,
            "redis_cpu_us_per_call": h.redis_cpu_us,
            "ratio_to_set": set.map(|s| h.rps / s),
            "ratio_to_evalsha": evalsha.map(|e| h.rps / e),
        })),
        "server_vmhwm_mib": hwm_kib.map(|k| k as f64 / 1024.0),
        "server_threads": threads,
        "loadavg_start": load_before,
        "loadavg_end": load_after,
        "server_per_call_events": syscalls,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    println!("JSON {summary}");
    if let Some(h) = &h2
        && h.records_added.is_some_and(|n| n != h.requests)
    {
        all_ok = false;
    }
    if !all_ok {
        eprintln!("loadgen: unexpected outcomes (see above): exit 1");
    }
    drop(server_guard);
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_spread_and_fresh_indices_dense() {
        let n = 1000;
        let pct = 20;
        let replays = (0..n).filter(|&i| is_replay(i, pct)).count() as u64;
        assert_eq!(replays, n * pct / 100);
        let fresh: Vec<u64> = (0..n)
            .filter(|&i| !is_replay(i, pct))
            .map(|i| i - i * pct / 100)
            .collect();
        assert_eq!(
            fresh,
            (0..fresh_needed(Scenario::Mixed, n, pct)).collect::<Vec<_>>()
        );
        assert!(!is_replay(0, pct));
    }

    #[test]
    fn parses_redis_benchmark_and_urls() {
        let out = "SET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
                   SET: 74962.52 requests per second, p50=0.327 msec\n";
        assert_eq!(parse_rps(out), Some(74962.52));
        let a = RedisAddr::parse("redis://:pw@10.0.0.1:6380/2").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.db.as_str()),
            ("10.0.0.1", 6380, "2")
        );
        assert_eq!(a.password.as_deref(), Some("pw"));
        let b = RedisAddr::parse("redis://localhost").unwrap();
        assert_eq!((b.port, b.db.as_str()), (6379, "0"));
    }
}
