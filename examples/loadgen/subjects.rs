//! `--floor --subjects pool|one`: the call as users make it (with a `subject`) against the
//! bare call (without one), on one vod-signer, in one run.
//!
//! One Redis; one vod-signer with every default on, plus a per-subject quota and the
//! outstanding cap (`--quota-allow-missing-subject`, so the bare call is not refused). Each
//! round measures both kinds in turn (the order alternates): IssueSignature, then
//! ConsumeSignature of fresh signatures issued untimed. Then, per kind, Redis memory per
//! outstanding signature (issued into an emptied Redis); then (`one` only: the pool's cap
//! and quota stop a subject at 100) the lifecycle calls at scale: ListSignatures (page of
//! 1 000) of a subject with 1 000 outstanding under a paced background of issues, and
//! RevokeSubject of 10 000 outstanding with Redis' SLOWLOG at 10 ms.
//!
//! - `pool`: subjects `user-{i % 10000}`, quota 600/1m per subject, cap 100;
//! - `one`: every call for `user-0`, quota 10000000/3h, cap 50 000 (Redis is emptied before
//!   each round so the subject stays under it).

use vod_signer::proto::{ListSignaturesRequest, RevokeSubjectRequest};

use super::against_floor::{Measure, Medians, failed_in, ratio};
use super::*;

/// The issue and consume measurements of one kind in one round.
async fn measure_kind(
    clients: &[Client],
    args: &Args,
    pids: &Pids,
    deadline: Instant,
) -> Result<[Measure; 2], String> {
    let c = args.concurrency.max(1);
    let n = args.requests;
    let work = Work::Issue { collect: false };
    let issue = run_phase("issue", clients, c, n, 0.0, work, deadline, pids, &[]).await;
    let sigs = fresh_signatures(clients, c, n, deadline, pids).await?;
    let work = Work::Consume { sigs };
    let consume = run_phase("consume", clients, c, n, 0.0, work, deadline, pids, &[]).await;
    Ok([Measure::of_phase(&issue), Measure::of_phase(&consume)])
}

/// Issues `n` signatures for `subject`, `c` at a time; returns how many succeeded.
async fn issue_for(clients: &[Client], subject: &str, n: u64, c: usize) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..c.max(1) {
        let mut client = clients[w % clients.len()].clone();
        let (next, subject) = (next.clone(), subject.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return ok;
                }
                let mut req = issue_request(i);
                req.subject = subject.clone();
                if client.issue_signature(req).await.is_ok() {
                    ok += 1;
                }
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    ok
}

/// Redis `used_memory`.
fn used_memory(redis: &RedisAddr) -> Option<f64> {
    let info = redis.cli(&redis.db, &["INFO", "memory"]).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))?
        .trim()
        .parse()
        .ok()
}

/// Redis memory per outstanding signature of the current kind: empties Redis, issues
/// `n`, and divides the growth of `used_memory` (less the events stream) by the issues that
/// succeeded.
async fn memory_per_signature(
    args: &Args,
    clients: &[Client],
    redis: &RedisAddr,
    pids: &Pids,
    n: u64,
    deadline: Instant,
) -> Option<f64> {
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
    let (before, stream_before) = (used_memory(redis)?, stream());
    let c = args.concurrency.max(1);
    let work = Work::Issue { collect: false };
    let p = run_phase("memory", clients, c, n, 0.0, work, deadline, pids, &[]).await;
    let (after, stream_after) = (used_memory(redis)?, stream());
    let ok = p.outcome.ok;
    (ok > 0).then(|| ((after - before) - (stream_after - stream_before)) / ok as f64)
}

/// The pages `list_under_load` asks for, alternately: (`page_size` sent, signatures expected).
/// 0 is the default page (100), the one a caller that sets nothing gets; 1 000 is the largest.
const LIST_PAGES: [(u32, usize); 2] = [(0, 100), (1000, 1000)];

/// What one page size of `list_under_load` measured: p50, p99 and max in ms, and the calls.
type ListFigures = (f64, f64, f64, u64);

/// ListSignatures of a subject with 1 000 outstanding, the default page and the largest one in
/// turn, while issues run paced at `rate` per second: the figures per [`LIST_PAGES`] entry.
async fn list_under_load(
    clients: &[Client],
    args: &Args,
    pids: &Pids,
    rate: f64,
    deadline: Instant,
) -> Result<[ListFigures; 2], String> {
    let target = "list-target";
    let issued = issue_for(clients, target, 1000, args.concurrency).await;
    if issued < 1000 {
        return Err(format!("could issue only {issued} of 1000 for the listing"));
    }
    let seconds = 4.0;
    let background = run_phase(
        "background issues",
        clients,
        args.concurrency.max(1),
        (rate * seconds) as u64,
        rate,
        Work::Issue { collect: false },
        deadline,
        pids,
        &[],
    );
    let mut client = clients[0].clone();
    let lists = async move {
        let mut hists = LIST_PAGES
            .map(|_| Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"));
        let end = Instant::now() + Duration::from_secs_f64(seconds - 0.5);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut wrong = 0u64;
        for k in (0..LIST_PAGES.len()).cycle() {
            if Instant::now() >= end {
                break;
            }
            let (page_size, expected) = LIST_PAGES[k];
            let sent = Instant::now();
            let r = client
                .list_signatures(ListSignaturesRequest {
                    subject: target.into(),
                    states: Vec::new(),
                    page_size,
                    page_token: String::new(),
                })
                .await;
            let _ = hists[k].record(sent.elapsed().as_micros() as u64);
            if !matches!(&r, Ok(page) if page.get_ref().signatures.len() == expected) {
                wrong += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (hists, wrong)
    };
    let (bg, (hists, wrong)) = tokio::join!(background, lists);
    eprintln!(
        "loadgen: background issues during the listing: {:.0}/s, {} failed, their own p50 {:.2} ms, p99 {:.2} ms",
        bg.throughput(),
        bg.outcome.calls() - bg.outcome.ok,
        bg.pct_ms(0.5),
        bg.pct_ms(0.99)
    );
    if wrong > 0 {
        return Err(format!("{wrong} listings did not return a full page"));
    }
    Ok(hists.map(|h| {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (ms(0.5), ms(0.99), h.max() as f64 / 1000.0, h.len())
    }))
}

/// RevokeSubject of `n` outstanding: (seconds, revoked, SLOWLOG entries over 10 ms).
async fn revoke_at_scale(
    clients: &[Client],
    args: &Args,
    redis: &RedisAddr,
    n: u64,
) -> Result<(f64, u32, u64), String> {
    let target = "revoke-target";
    let issued = issue_for(clients, target, n, args.concurrency).await;
    if issued < n {
        return Err(format!(
            "could issue only {issued} of {n} for RevokeSubject"
        ));
    }
    redis.cli(
        &redis.db,
        &["CONFIG", "SET", "slowlog-log-slower-than", "10000"],
    )?;
    redis.cli(&redis.db, &["SLOWLOG", "RESET"])?;
    let mut client = clients[0].clone();
    let start = Instant::now();
    let revoked = client
        .revoke_subject(RevokeSubjectRequest {
            subject: target.into(),
        })
        .await
        .map_err(|s| format!("RevokeSubject: {s}"))?
        .into_inner()
        .revoked;
    let secs = start.elapsed().as_secs_f64();
    let slow = redis
        .cli(&redis.db, &["SLOWLOG", "LEN"])?
        .parse()
        .unwrap_or(u64::MAX);
    Ok((secs, revoked, slow))
}

/// `--floor --subjects`: runs the comparison; true when every call that should succeed did.
pub async fn run(args: Args, signer_bin: PathBuf) -> Result<bool, String> {
    let profile = args.subjects.expect("--subjects");
    let (pool, cap, quota, memory_n) = match profile {
        SubjectProfile::Pool => (10_000u64, 100u64, "600/1m", args.memory_records),
        // GCRA keeps milliseconds: a sustained rate above 1 000/s is a burst of 10 million in 3 h.
        SubjectProfile::One => (1, 50_000, "10000000/3h", args.memory_records.min(50_000)),
    };
    SUBJECT_POOL.store(pool, Ordering::Relaxed);
    let load_before = loadavg();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let ticks = clock_ticks();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (redis_guard, redis) = start_redis(dir.path())?;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let mut signer_args = args.clone();
    signer_args.server_defaults = true;
    signer_args.server_arg.extend(
        [
            "--max-outstanding-per-subject",
            &cap.to_string(),
            "--quota-per-subject",
            quota,
            "--quota-allow-missing-subject",
        ]
        .map(String::from),
    );
    let (signer_guard, addr, _log) =
        start_server(&signer_args, &signer_bin, dir.path(), &url).await?;
    let clients = connect(&addr, args.connections).await?;
    let pids = Pids {
        server: Some(signer_guard.pid()),
        redis: Some(redis_guard.pid()),
        ticks,
    };
    let kinds = ["no subject", "subject"];
    let set_kind = |k: usize| WITHOUT_SUBJECT.store(k == 0, Ordering::Relaxed);
    for k in 0..2 {
        set_kind(k);
        let warm = (args.requests / 10).clamp(200, 5000);
        let work = Work::Issue { collect: false };
        let c = args.concurrency.max(1);
        run_phase(
            "warm-up",
            &clients,
            c,
            warm,
            0.0,
            work,
            deadline,
            &pids,
            &[],
        )
        .await;
    }
    let mut results: Vec<Vec<[Measure; 2]>> = vec![Vec::new(), Vec::new()];
    for round in 0..args.rounds.max(1) {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            eprintln!(
                "loadgen: round {} of {}: {}",
                round + 1,
                args.rounds,
                kinds[k]
            );
            if profile == SubjectProfile::One {
                redis.cli(&redis.db, &["FLUSHALL"])?;
            }
            set_kind(k);
            results[k].push(measure_kind(&clients, &args, &pids, deadline).await?);
        }
    }
    let mut memory = [None, None];
    for (k, m) in memory.iter_mut().enumerate() {
        set_kind(k);
        *m = memory_per_signature(&args, &clients, &redis, &pids, memory_n, deadline).await;
    }
    // The lifecycle calls at scale need a subject with 1 000 and 10 000 outstanding: under
    // the one-subject profile's cap and quota, not the pool's (cap 100, 600/1m).
    let (mut listing, mut revoke) = (None, None);
    if profile == SubjectProfile::One {
        redis.cli(&redis.db, &["FLUSHALL"])?;
        set_kind(1);
        listing = Some(list_under_load(&clients, &args, &pids, 10_000.0, deadline).await);
        redis.cli(&redis.db, &["FLUSHALL"])?;
        revoke = Some(revoke_at_scale(&clients, &args, &redis, 10_000).await);
    }

    println!();
    println!(
        "subject ({profile:?}: {pool} subjects, quota {quota} per subject, cap {cap}) against no subject{}: {} rounds, {} calls per phase, concurrency {}, {} connections; medians over rounds",
        args.label_suffix(),
        args.rounds,
        args.requests,
        args.concurrency,
        args.connections,
    );
    println!(
        "{:<10} {:>24} {:>24} {:>22} {:>22} {:>22}",
        "", "server CPU us/call", "redis CPU us/call", "calls/s", "p50 ms", "p99 ms"
    );
    let mut all_ok = true;
    let mut json_rows = Vec::new();
    for (row, name) in ["issue", "consume"].iter().enumerate() {
        let bare = Medians::of(&results[0], row);
        let with = Medians::of(&results[1], row);
        let cell = |i: usize, digits: usize| with.cell(&bare, i, digits);
        println!(
            "{:<10} {:>24} {:>24} {:>22} {:>22} {:>22}",
            name,
            cell(0, 1),
            cell(1, 1),
            cell(2, 0),
            cell(3, 3),
            cell(4, 3)
        );
        let failed = failed_in(&results, row);
        if failed > 0 {
            println!("   {failed} calls failed in this row");
            all_ok = false;
        }
        json_rows.push(json!({
            "kind": name,
            "subject": with.json(),
            "bare": bare.json(),
            "ratio": with.ratios_json(&bare),
        }));
    }
    println!(
        "== Redis memory per outstanding signature ({memory_n} issued into an emptied Redis): subject {} B / no subject {} B = {}x",
        fmt_opt(memory[1], 0),
        fmt_opt(memory[0], 0),
        fmt_opt(ratio(memory[1], memory[0]), 2)
    );
    match &listing {
        None => {
            println!("== ListSignatures and RevokeSubject at scale: measured by --subjects one")
        }
        Some(Ok(pages)) => {
            for ((page_size, expected), (p50, p99, max, calls)) in LIST_PAGES.iter().zip(pages) {
                println!(
                    "== ListSignatures (page_size {page_size}: a page of {expected}) of a subject with 1000 outstanding, issues at 10 000/s beside: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({calls} calls)"
                );
            }
        }
        Some(Err(e)) => {
            println!("== ListSignatures: {e}");
            all_ok = false;
        }
    }
    match &revoke {
        None => {}
        Some(Ok((secs, revoked, slow))) => println!(
            "== RevokeSubject of 10000 outstanding: {revoked} revoked in {secs:.2} s; SLOWLOG entries over 10 ms: {slow}"
        ),
        Some(Err(e)) => {
            println!("== RevokeSubject: {e}");
            all_ok = false;
        }
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
            "profile": format!("{profile:?}"),
            "label": args.label,
            "rounds": args.rounds,
            "requests": args.requests,
            "rows": json_rows,
            "memory_bytes": {"subject": memory[1], "bare": memory[0]},
            "list_ms": listing.as_ref().and_then(|l| l.as_ref().ok()).map(|pages| {
                LIST_PAGES.iter().zip(pages).map(|((size, _), l)| json!({"page_size": size, "p50": l.0, "p99": l.1, "max": l.2})).collect::<Vec<_>>()
            }),
            "revoke": revoke.as_ref().and_then(|r| r.as_ref().ok()).map(|r| json!({"seconds": r.0, "revoked": r.1, "slowlog_over_10ms": r.2})),
            "loadavg_start": load_before,
            "loadavg_end": load_after,
        })
    );
    drop(signer_guard);
    drop(redis_guard);
    Ok(all_ok)
}
