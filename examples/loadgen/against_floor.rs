//! `--floor`: vod-signer against the floor of its own stack (`examples/floor.rs`), in one run.
//!
//! One Redis; vod-signer with every default on (audit events, metrics endpoint, info logs,
//! per-call spans, load shedding) and the floor, both started here. Each round drives both in
//! turn (the order alternates), each with this load generator and with h2load:
//!
//! - IssueSignature: the load generator, then h2load (the same request body);
//! - ConsumeSignature: the load generator on fresh signatures (issued untimed first), then
//!   h2load repeating one consume with its idempotency key (h2load sends one body: the repeat
//!   is the script's success path without its write, for both servers alike).
//!
//! Requests carry no subject (the floor keeps no subject index). Printed: per target, the median over rounds of server CPU per call, Redis CPU per call,
//! throughput and latency; and the ratios vod-signer / floor, which are what counts on a
//! shared machine (both sides see the same load, interleaved).

use std::path::Path;

use super::*;

/// Reads one figure (possibly missing) from a measurement.
type Column = dyn Fn(&Measure) -> Option<f64>;

/// One measured phase of one target (also what `subjects.rs` measures).
#[derive(Clone, Debug, Default)]
pub(super) struct Measure {
    pub(super) server_us: Option<f64>,
    pub(super) redis_us: Option<f64>,
    pub(super) rps: f64,
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
    pub(super) failed: u64,
}

impl Measure {
    pub(super) fn of_phase(p: &PhaseResult) -> Measure {
        let calls = p.outcome.calls();
        Measure {
            server_us: per_call(p.cpu_before.server, p.cpu_after.server, calls),
            redis_us: per_call(p.cpu_before.redis, p.cpu_after.redis, calls),
            rps: p.throughput(),
            p50_ms: Some(p.pct_ms(0.5)),
            p99_ms: Some(p.pct_ms(0.99)),
            failed: calls - p.outcome.ok,
        }
    }

    fn of_h2load(h: &H2loadResult) -> Measure {
        Measure {
            server_us: h.server_cpu_us,
            redis_us: h.redis_cpu_us,
            rps: h.rps,
            p50_ms: h.mean_ms,
            p99_ms: None,
            failed: h.requests.saturating_sub(h.status_2xx),
        }
    }
}

/// The four measurements of a round, per target.
const KINDS: [&str; 4] = [
    "issue (loadgen)",
    "issue (h2load)",
    "consume (loadgen)",
    "consume repeat (h2load)",
];

/// The five figures a comparison prints per row, each the median over the rounds: server
/// CPU and Redis CPU per call (us), calls/s, p50 and p99 (ms).
pub(super) struct Medians([Option<f64>; 5]);

impl Medians {
    /// Row `row` of every round of one side.
    pub(super) fn of<const N: usize>(rounds: &[[Measure; N]], row: usize) -> Medians {
        let cols: [&Column; 5] = [
            &|m| m.server_us,
            &|m| m.redis_us,
            &|m| Some(m.rps),
            &|m| m.p50_ms,
            &|m| m.p99_ms,
        ];
        Medians(cols.map(|f| median(rounds.iter().filter_map(|m| f(&m[row])).collect())))
    }

    /// Column `i` as `this / base = ratio x`, the figures with `digits` decimals.
    pub(super) fn cell(&self, base: &Medians, i: usize, digits: usize) -> String {
        format!(
            "{} / {} = {}x",
            fmt_opt(self.0[i], digits),
            fmt_opt(base.0[i], digits),
            fmt_opt(ratio(self.0[i], base.0[i]), 2)
        )
    }

    /// The figures as JSON.
    pub(super) fn json(&self) -> serde_json::Value {
        let [server, redis, rps, p50, p99] = self.0;
        json!({"server_cpu_us": server, "redis_cpu_us": redis, "calls_per_s": rps, "p50_ms": p50, "p99_ms": p99})
    }

    /// Each figure's ratio to `base`'s, as JSON.
    pub(super) fn ratios_json(&self, base: &Medians) -> serde_json::Value {
        let r = |i: usize| ratio(self.0[i], base.0[i]);
        json!({"server_cpu": r(0), "redis_cpu": r(1), "throughput": r(2), "p50": r(3), "p99": r(4)})
    }
}

/// `a / b`, when both are known and `b` is not zero.
pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The calls of row `row` that failed, over every round of both sides.
pub(super) fn failed_in<const N: usize>(results: &[Vec<[Measure; N]>], row: usize) -> u64 {
    results
        .iter()
        .flat_map(|rounds| rounds.iter().map(|m| m[row].failed))
        .sum()
}

/// The median of `v` (the upper one of an even count); `None` when empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The gRPC frame of a request message (flag, length, protobuf), as h2load sends it.
fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let msg = msg.encode_to_vec();
    let mut b = Vec::with_capacity(msg.len() + 5);
    b.push(0u8);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(&msg);
    b
}

/// Starts the floor on a free port and waits until it answers.
async fn start_floor(bin: &Path, dir: &Path, redis_url: &str) -> Result<(Guard, String), String> {
    let key = dir.join("floor-key");
    std::fs::create_dir_all(&key).map_err(|e| e.to_string())?;
    let key_file = key.join(SECRET_ID);
    std::fs::write(&key_file, SECRET_KEY).map_err(|e| e.to_string())?;
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(&addr)
        .arg(redis_url)
        .arg(&key_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut guard = Guard::new(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = connect(&addr, 1).await
            && c[0].issue_signature(issue_request(0)).await.is_ok()
        {
            return Ok((guard, addr));
        }
        if let Some(status) = guard.exited() {
            return Err(format!("the floor exited ({status})"));
        }
        if Instant::now() > deadline {
            return Err("the floor did not answer within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One round's four measurements of one target.
async fn measure_target(
    target: &str,
    clients: &[Client],
    args: &Args,
    dir: &Path,
    pids: &Pids,
    redis: &RedisAddr,
    deadline: Instant,
) -> Result<[Measure; 4], String> {
    let c = args.concurrency.max(1);
    let n = args.requests;
    let issue = run_phase(
        "issue",
        clients,
        c,
        n,
        0.0,
        Work::Issue { collect: false },
        deadline,
        pids,
        &[],
    )
    .await;
    let issue_h2 = run_h2load(
        target,
        Some(redis),
        args,
        dir,
        pids,
        ISSUE_PATH,
        &grpc_frame(&issue_request(7)),
    )?;
    let sigs = fresh_signatures(clients, c, n, deadline, pids)
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    let consume = run_phase(
        "consume",
        clients,
        c,
        n,
        0.0,
        Work::Consume { sigs: sigs.clone() },
        deadline,
        pids,
        &[],
    )
    .await;
    // One more signature, consumed once with a key; h2load repeats that consume.
    let mut client = clients[0].clone();
    let last = client
        .issue_signature(issue_request(9))
        .await
        .map_err(|s| format!("{target}: issue: {s}"))?
        .into_inner()
        .signature;
    let repeat = ConsumeSignatureRequest {
        signature: last,
        file_size: Some(5 << 20),
        idempotency_key: "h2load-repeat".into(),
    };
    // Twice: h2load sees only HTTP statuses, so the repeat must be known to succeed (a
    // refusal travels as HTTP 200 too).
    for _ in 0..2 {
        client
            .consume_signature(repeat.clone())
            .await
            .map_err(|s| format!("{target}: consume: {s}"))?;
    }
    let consume_h2 = run_h2load(
        target,
        None,
        args,
        dir,
        pids,
        CONSUME_PATH,
        &grpc_frame(&repeat),
    )?;
    Ok([
        Measure::of_phase(&issue),
        Measure::of_h2load(&issue_h2),
        Measure::of_phase(&consume),
        Measure::of_h2load(&consume_h2),
    ])
}

/// `--floor`: runs the comparison; true when every call that should succeed did.
pub async fn run(args: Args, signer_bin: PathBuf, floor_bin: PathBuf) -> Result<bool, String> {
    // Like for like: the floor keeps no per-subject index, so neither side is given a subject
    // (the index's own cost is measured with `--without-subject` runs, docs/redis.md "A subject's
    // signatures").
    WITHOUT_SUBJECT.store(true, Ordering::Relaxed);
    let load_before = loadavg();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let ticks = clock_ticks();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (redis_guard, redis) = start_redis(dir.path())?;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    // Every default on: no --metrics-listen off, no quieter log level.
    let mut signer_args = args.clone();
    signer_args.server_defaults = true;
    let (signer_guard, signer_addr, _log) =
        start_server(&signer_args, &signer_bin, dir.path(), &url).await?;
    let (floor_guard, floor_addr) = start_floor(&floor_bin, dir.path(), &url).await?;
    let targets = [
        ("floor", floor_addr.clone(), floor_guard.pid()),
        ("vod-signer", signer_addr.clone(), signer_guard.pid()),
    ];
    let mut clients = Vec::new();
    for (_, addr, _) in &targets {
        clients.push(connect(addr, args.connections).await?);
    }
    let pids_of = |pid: u32| Pids {
        server: Some(pid),
        redis: Some(redis_guard.pid()),
        ticks,
    };
    // Warm-up: connections, script caches, allocators.
    for (t, (_, _, pid)) in targets.iter().enumerate() {
        let warm = (args.requests / 10).clamp(200, 5000);
        run_phase(
            "warm-up",
            &clients[t],
            args.concurrency.max(1),
            warm,
            0.0,
            Work::Issue { collect: false },
            deadline,
            &pids_of(*pid),
            &[],
        )
        .await;
    }

    let mut results: Vec<Vec<[Measure; 4]>> = vec![Vec::new(), Vec::new()];
    for round in 0..args.rounds.max(1) {
        // The order alternates, so a drift in the machine's load falls on both alike.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for t in order {
            let (name, addr, pid) = &targets[t];
            eprintln!("loadgen: round {} of {}: {name}", round + 1, args.rounds);
            let m = measure_target(
                addr,
                &clients[t],
                &args,
                dir.path(),
                &pids_of(*pid),
                &redis,
                deadline,
            )
            .await?;
            results[t].push(m);
        }
    }

    println!();
    println!(
        "vod-signer against the floor of its stack{}: {} rounds, {} calls per phase, concurrency {}, {} connections (h2load -c {} -m {}); medians over rounds",
        args.label_suffix(),
        args.rounds,
        args.requests,
        args.concurrency,
        args.connections,
        args.connections,
        args.concurrency.div_ceil(args.connections.max(1)),
    );
    println!(
        "{:<24} {:>22} {:>22} {:>20} {:>16} {:>16}",
        "", "server CPU us/call", "redis CPU us/call", "calls/s", "p50 ms", "p99 ms"
    );
    let mut json_rows = Vec::new();
    let mut all_ok = true;
    for (k, kind) in KINDS.iter().enumerate() {
        let floor = Medians::of(&results[0], k);
        let signer = Medians::of(&results[1], k);
        let cell = |i: usize| signer.cell(&floor, i, if i < 2 { 1 } else { 3 });
        let p50_label = if kind.contains("h2load") {
            "(mean)"
        } else {
            ""
        };
        println!(
            "{:<24} {:>22} {:>22} {:>20} {:>16} {:>16} {p50_label}",
            kind,
            cell(0),
            cell(1),
            signer.cell(&floor, 2, 0),
            cell(3),
            cell(4),
        );
        let failed = failed_in(&results, k);
        if failed > 0 {
            println!("   {failed} calls failed in this row (see the phase outputs above)");
            all_ok = false;
        }
        json_rows.push(json!({
            "kind": kind,
            "signer": signer.json(),
            "floor": floor.json(),
            "ratio": signer.ratios_json(&floor),
            "failed": failed,
        }));
    }
    let memory = record_memory(
        &args,
        &clients[1],
        &redis,
        &pids_of(signer_guard.pid()),
        deadline,
    )
    .await;
    match memory {
        Some((records, bytes)) => println!(
            "== Redis memory per outstanding signature: {bytes:.0} B ({records} records issued \
             through vod-signer into an emptied Redis; used_memory delta less the events stream)"
        ),
        None => println!("== Redis memory per outstanding signature: not measured"),
    }
    let hwm = status_field(signer_guard.pid(), "VmHWM");
    let load_after = loadavg();
    println!(
        "== vod-signer peak RSS (VmHWM) {} MiB; machine load average {load_before} at start, {load_after} at end; {:.0} s",
        fmt_opt(hwm.map(|k| k as f64 / 1024.0), 1),
        started.elapsed().as_secs_f64()
    );
    println!(
        "JSON {}",
        json!({
            "label": args.label,
            "rounds": args.rounds,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "rows": json_rows,
            "signer_vmhwm_mib": hwm.map(|k| k as f64 / 1024.0),
            "redis_bytes_per_record": memory.map(|(_, b)| b),
            "loadavg_start": load_before,
            "loadavg_end": load_after,
        })
    );
    drop(floor_guard);
    drop(signer_guard);
    drop(redis_guard);
    Ok(all_ok)
}

/// Redis memory per outstanding signature: empties the Redis, issues `--memory-records`
/// signatures through vod-signer, and divides the growth of `used_memory` (less what the
/// events stream holds) by the records added.
async fn record_memory(
    args: &Args,
    clients: &[Client],
    redis: &RedisAddr,
    pids: &Pids,
    deadline: Instant,
) -> Option<(u64, f64)> {
    let n = args.memory_records;
    if n == 0 {
        return None;
    }
    let used = || -> Option<f64> {
        let info = redis.cli(&redis.db, &["INFO", "memory"]).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))?
            .trim()
            .parse()
            .ok()
    };
    let stream = || -> f64 {
        redis
            .cli(
                &redis.db,
                &["MEMORY", "USAGE", "vodsigner:events", "SAMPLES", "0"],
            )
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    redis.cli(&redis.db, &["FLUSHALL"]).ok()?;
    let (before, stream_before, keys_before) = (used()?, stream(), redis.dbsize()?);
    run_phase(
        "memory",
        clients,
        args.concurrency.max(1),
        n,
        0.0,
        Work::Issue { collect: false },
        deadline,
        pids,
        &[],
    )
    .await;
    let (after, stream_after, keys_after) = (used()?, stream(), redis.dbsize()?);
    // The events stream is one key of its own: it is not a record.
    let records = keys_after.checked_sub(keys_before)?.saturating_sub(1);
    if records == 0 {
        return None;
    }
    let bytes = (after - before) - (stream_after - stream_before);
    Some((records, bytes / records as f64))
}
