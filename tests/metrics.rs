//! The Prometheus endpoint, scraped after known calls: exact counts, histograms with buckets,
//! store health and errors, bounded labels.

mod common;

use std::time::Duration;

use common::*;
use vod_signer::proto::{ConsumeSignatureRequest, IssueSignatureRequest, VerifySignatureRequest};

#[tokio::test]
async fn counts_are_exact_after_known_calls() {
    let mut redis = RedisServer::start();
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &["--redis-url", &redis.url()]);
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    let mut sigs = Vec::new();
    for _ in 0..3 {
        let req = IssueSignatureRequest {
            subject: "user-secret-subject".into(),
            ..Default::default()
        };
        sigs.push(
            client
                .issue_signature(req)
                .await
                .unwrap()
                .into_inner()
                .signature,
        );
    }
    for sig in &sigs[..2] {
        let req = ConsumeSignatureRequest {
            signature: sig.clone(),
            ..Default::default()
        };
        client.consume_signature(req).await.unwrap();
    }
    let replay = ConsumeSignatureRequest {
        signature: sigs[0].clone(),
        ..Default::default()
    };
    client.consume_signature(replay).await.unwrap_err();
    let bad = VerifySignatureRequest {
        signature: "garbage".into(),
    };
    client.verify_signature(bad).await.unwrap_err();

    let text = scrape(metrics).await;
    let count = |name: &str, labels: &[(&str, &str)]| {
        text.value(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} missing in:\n{}", text.text))
    };
    let requests = "vodsigner_requests_total";
    assert_eq!(
        count(requests, &[("rpc", "IssueSignature"), ("result", "ok")]),
        3.0
    );
    assert_eq!(
        count(requests, &[("rpc", "ConsumeSignature"), ("result", "ok")]),
        2.0
    );
    assert_eq!(
        count(
            requests,
            &[
                ("rpc", "ConsumeSignature"),
                ("result", "SIGNATURE_ALREADY_USED")
            ]
        ),
        1.0
    );
    assert_eq!(
        count(
            requests,
            &[
                ("rpc", "VerifySignature"),
                ("result", "SIGNATURE_MALFORMED")
            ]
        ),
        1.0
    );
    assert_eq!(
        count(
            "vodsigner_request_duration_seconds_count",
            &[("rpc", "ConsumeSignature")]
        ),
        3.0
    );
    let issue_buckets = text
        .buckets(
            "vodsigner_request_duration_seconds",
            &[("rpc", "IssueSignature")],
        )
        .unwrap_or_else(|| panic!("no IssueSignature histogram in:\n{}", text.text));
    assert_eq!(issue_buckets.last(), Some(&(f64::INFINITY, 3.0)));
    assert!(
        issue_buckets.iter().any(|(le, _)| *le == 0.001),
        "{issue_buckets:?}"
    );
    // Three consumes reached the store (the malformed verify never did).
    let store = "vodsigner_store_duration_seconds_count";
    assert_eq!(count(store, &[("op", "consume")]), 3.0);
    assert_eq!(count(store, &[("op", "issue")]), 3.0);
    assert_eq!(count("vodsigner_inflight_requests", &[]), 0.0);
    assert_eq!(count("vodsigner_store_up", &[]), 1.0);
    // The build's version and git revision (build.rs: VOD_SIGNER_REVISION, else the checkout's
    // HEAD, else "unknown"); the image build passes the revision in, having no .git.
    let revision = env!("VOD_SIGNER_REVISION");
    assert_eq!(
        count(
            "vodsigner_build_info",
            &[("version", "0.1.0"), ("revision", revision)]
        ),
        1.0
    );
    assert!(
        revision == "unknown"
            || (revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "revision {revision:?}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    // Unless the revision was given (VOD_SIGNER_REVISION set for the build, as the image does).
    if let (Ok(head), None) = (head, std::env::var_os("VOD_SIGNER_REVISION"))
        && head.status.success()
    {
        let head = String::from_utf8_lossy(&head.stdout);
        assert_eq!(revision, head.trim(), "built from this checkout's HEAD");
    }
    // Nothing from a request is a label.
    assert!(
        !text.text.contains("user-secret-subject") && !text.text.contains(SECRET_ID),
        "{}",
        text.text
    );

    redis.stop();
    wait_health(server.addr, "", false, Duration::from_secs(5)).await;
    // Health may turn first: a round whose ping answered just before the kill can find Redis'
    // memory settings already marked unread (the lost connection). The next round's failed
    // ping sets the gauge.
    wait_metric(metrics, "vodsigner_store_up", 0.0, Duration::from_secs(5)).await;
    let text = scrape(metrics).await;
    // Counted by operation and cause: the server went away, so the connection broke (or
    // there was none to use any more).
    assert!(
        text.sum("vodsigner_store_errors_total", &[("op", "ping")]) >= 1.0,
        "{}",
        text.text
    );
    let by_cause = text.sum(
        "vodsigner_store_errors_total",
        &[("op", "ping"), ("cause", "connection")],
    ) + text.sum(
        "vodsigner_store_errors_total",
        &[("op", "ping"), ("cause", "not_connected")],
    ) + text.sum(
        "vodsigner_store_errors_total",
        &[("op", "ping"), ("cause", "timeout")],
    );
    assert_eq!(
        by_cause,
        text.sum("vodsigner_store_errors_total", &[("op", "ping")]),
        "{}",
        text.text
    );
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let keys = keys_dir();
    // On: the process listens on its gRPC port and the metrics port.
    let on = ServerProcess::start(keys.path(), &[]);
    let metrics = on.metrics_addr();
    assert_eq!(
        listening_ports(on.child.id()),
        [on.addr.port(), metrics.port()].into_iter().collect(),
    );
    // Off: on its gRPC port only, whatever else it serves.
    let off = ServerProcess::start(keys.path(), &["--metrics-listen", "off"]);
    connect(off.addr)
        .await
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap();
    assert_eq!(
        listening_ports(off.child.id()),
        [off.addr.port()].into_iter().collect(),
        "with --metrics-listen off the process still listens on another port"
    );
}

#[tokio::test]
async fn the_in_memory_store_reports_its_records() {
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &[]);
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    for _ in 0..3 {
        client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Updated with each health check (every 100 ms in tests).
        if scrape(metrics).await.value("vodsigner_store_records", &[]) == Some(3.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "vodsigner_store_records never reached 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
