//! `--delivery`: the upload notifications' push, measured end to end with a real HTTP
//! receiver (in this process, answering 204 at once) and one Redis, both started here.
//!
//! 1. Latency: vod-signer pushes to the receiver while uploads complete at `--rate` (issue,
//!    consume, complete per upload); per notification, the time from CompleteUpload's answer
//!    to the receiver's answer (matched by `webhook-id`, which the client derives from the
//!    signature's claims as the server does).
//! 2. Backlog: `--backlog` uploads complete while the server only queues (`--notify-mode
//!    pull`, nobody pulls); then a pushing server starts and drains them. The drain rate is
//!    counted twice: by the receiver, and by Redis (the outbox's length, polled).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use vod_signer::notify::body::{NEW_FILE_UPLOAD, UploadFacts, webhook_id};

use super::*;

/// The secret the pushes are signed with.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver saw: each webhook-id's first arrival.
#[derive(Default)]
struct Inbox {
    first: HashMap<String, Instant>,
    pushes: u64,
}

async fn start_receiver(inbox: Arc<Mutex<Inbox>>) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let inbox = inbox.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let mut inbox = inbox.lock().unwrap();
                inbox.pushes += 1;
                inbox.first.entry(id).or_insert_with(Instant::now);
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// One upload end to end; answers its notification's webhook-id and when CompleteUpload
/// answered.
async fn upload(client: &mut Client, i: u64) -> Result<(String, Instant), String> {
    let issued = client
        .issue_signature(issue_request(i))
        .await
        .map_err(|e| reason_of(&e))?
        .into_inner();
    client
        .consume_signature(ConsumeSignatureRequest {
            signature: issued.signature.clone(),
            file_size: Some(5 << 20),
            idempotency_key: format!("d-{i}"),
        })
        .await
        .map_err(|e| reason_of(&e))?;
    client
        .complete_upload(CompleteUploadRequest {
            signature: issued.signature,
            file_id: format!("5285890{i:012}"),
            file_size: 5 << 20,
            media_url: format!("https://vod.example/media/5285890{i:012}.mp4"),
            media_type: "mp4".into(),
        })
        .await
        .map_err(|e| reason_of(&e))?;
    let done = Instant::now();
    let claims = issued.claims.unwrap_or_default();
    let facts = UploadFacts {
        secret_id: &claims.secret_id,
        random: claims.random,
        issued_at: claims.current_time_stamp,
        subject: "",
        source_context: "",
        storage_region: "",
        class_id: 0,
        consumed_at: 0,
    };
    Ok((webhook_id(&facts, NEW_FILE_UPLOAD), done))
}

/// `n` uploads from `concurrency` workers, paced at `rate` per second (0: as fast as
/// possible); answers each one's (webhook-id, completed) and the errors.
async fn uploads(
    clients: &[Client],
    concurrency: usize,
    n: u64,
    rate: f64,
    deadline: Instant,
) -> (Vec<(String, Instant)>, BTreeMap<String, u64>) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let mut client = clients[w % clients.len()].clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || Instant::now() > deadline {
                        break;
                    }
                    if rate > 0.0 {
                        let at = start + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    match upload(&mut client, i).await {
                        Ok(d) => done.push(d),
                        Err(e) => *errors.entry(e).or_default() += 1,
                    }
                }
                (done, errors)
            })
        })
        .collect();
    let mut done = Vec::new();
    let mut errors = BTreeMap::new();
    for t in tasks {
        if let Ok((d, e)) = t.await {
            done.extend(d);
            for (k, v) in e {
                *errors.entry(k).or_default() += v;
            }
        }
    }
    (done, errors)
}

/// Notifications still in the outbox (every shard).
/// Notifications in the outbox, all shards, in one `redis-cli` call (a script summing the
/// shards' `XLEN`): the drain loop polls it, and sixteen processes a poll would take the
/// cores the pusher and the receiver are being measured on.
fn outbox_len(redis: &RedisAddr) -> Option<u64> {
    let script = format!(
        "local n = 0 for i = 0, {} do n = n + redis.call('XLEN', 'vodsigner:uploads:{{' .. i .. '}}:outbox') end return n",
        vod_signer::store::outbox::SHARDS - 1
    );
    redis.cli("0", &["EVAL", &script, "0"]).ok()?.parse().ok()
}

fn server_args(args: &Args, extra: &[&str]) -> Args {
    let mut args = args.clone();
    args.server_arg.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub async fn run(args: Args, bin: PathBuf) -> Result<bool, String> {
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (_redis_guard, redis) = start_redis(dir.path())?;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let receiver = start_receiver(inbox.clone()).await?;
    let secret = dir.path().join("notify-secret");
    std::fs::write(&secret, SECRET).map_err(|e| e.to_string())?;
    let hook = format!("http://{receiver}/hook");
    let push = [
        "--notify-url",
        hook.as_str(),
        "--notify-secret-file",
        secret.to_str().ok_or("temp path")?,
    ];
    let c = args.concurrency.max(1);

    // 1. Latency while healthy, paced.
    let rate = if args.rate > 0.0 { args.rate } else { 500.0 };
    let n = args.requests.min((rate * 20.0) as u64).max(100);
    let (server, listen, _) =
        start_server(&server_args(&args, &push), &bin, dir.path(), &url).await?;
    let clients = connect(&listen, args.connections).await?;
    let (done, errors) = uploads(&clients, c, n, rate, deadline).await;
    let wait_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < wait_until {
        let seen = inbox.lock().unwrap().first.len();
        if seen >= done.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
    let mut missing = 0;
    {
        let inbox = inbox.lock().unwrap();
        for (id, completed) in &done {
            match inbox.first.get(id) {
                Some(at) => latency.saturating_record(
                    at.saturating_duration_since(*completed).as_micros().max(1) as u64,
                ),
                None => missing += 1,
            }
        }
    }
    drop(server);
    let q = |p: f64| latency.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "== delivery latency (CompleteUpload answered -> receiver got the push), {} uploads at {rate:.0}/s: \
         p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; not delivered {missing}; errors {errors:?}",
        done.len(),
        q(0.5),
        q(0.99),
        latency.max() as f64 / 1000.0
    );

    // 2. A backlog queued with nobody delivering, then drained by one pushing replica.
    let backlog = args.backlog;
    let (queuer, listen, _) = start_server(
        &server_args(&args, &["--notify-mode", "pull"]),
        &bin,
        dir.path(),
        &url,
    )
    .await?;
    let clients = connect(&listen, args.connections).await?;
    let made = Instant::now();
    let (queued, errors) = uploads(&clients, c, backlog, 0.0, deadline).await;
    drop(queuer);
    let in_outbox = outbox_len(&redis).unwrap_or(0);
    println!(
        "== backlog: {} uploads completed in {:.1} s with nobody delivering; {in_outbox} notifications in the outbox; errors {errors:?}",
        queued.len(),
        made.elapsed().as_secs_f64()
    );
    inbox.lock().unwrap().first.clear();
    let before = inbox.lock().unwrap().pushes;
    let (pusher, _, _) = start_server(&server_args(&args, &push), &bin, dir.path(), &url).await?;
    let ticks = clock_ticks();
    let cpu_before = cpu_seconds(pusher.pid(), ticks);
    let started = Instant::now();
    let mut emptied: Option<Duration> = None;
    let mut received: Option<Duration> = None;
    while Instant::now() < deadline && (emptied.is_none() || received.is_none()) {
        // Off the runtime's threads: the receiver being measured runs on them.
        let polled = redis.clone();
        if emptied.is_none()
            && tokio::task::spawn_blocking(move || outbox_len(&polled))
                .await
                .ok()
                .flatten()
                == Some(0)
        {
            emptied = Some(started.elapsed());
        }
        if received.is_none() && inbox.lock().unwrap().first.len() as u64 >= in_outbox {
            received = Some(started.elapsed());
        }
        // 50 ms: a small error on a drain of seconds, and few processes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = per_call(cpu_before, cpu_seconds(pusher.pid(), ticks), in_outbox);
    let pushes = inbox.lock().unwrap().pushes - before;
    let rate_of = |d: Option<Duration>| d.map(|d| in_outbox as f64 / d.as_secs_f64().max(1e-9));
    println!(
        "== drain by one replica: {in_outbox} notifications; receiver: all in {} s ({} /s); Redis: outbox empty in {} s ({} /s); {pushes} pushes; server CPU {} us per notification",
        fmt_opt(received.map(|d| d.as_secs_f64()), 2),
        fmt_opt(rate_of(received), 0),
        fmt_opt(emptied.map(|d| d.as_secs_f64()), 2),
        fmt_opt(rate_of(emptied), 0),
        fmt_opt(cpu, 1),
    );
    drop(pusher);
    Ok(missing == 0 && received.is_some() && emptied.is_some())
}
