//! Caller security: TLS, mTLS, caller roles by certificate SAN and bearer token, certificate
//! and key rotation without restart, Redis ACL credentials over TLS.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pki::{Ca, Leaf};
use common::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use vod_signer::auth::token_digest;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{ConsumeSignatureRequest, IssueSignatureRequest, VerifySignatureRequest};
use vod_signer::reason::Reason;

const APP: &str = "spiffe://cluster.local/ns/app/sa/app-server";
const GATEWAY: &str = "spiffe://cluster.local/ns/vod/sa/upload-gateway";
const OPS_TOKEN: &str = "ops-token-4f1d2a";
const APP_TOKEN: &str = "app-token-91ce07";

fn policy_text() -> String {
    format!(
        r#"
[[caller]]
name = "app-server"
roles = ["issuer"]
san = ["{APP}"]
token_sha256 = ["{}"]

[[caller]]
name = "upload-gateway"
roles = ["consumer"]
san = ["{GATEWAY}"]

[[caller]]
name = "operator"
roles = ["admin"]
token_sha256 = ["{}"]
"#,
        token_digest(APP_TOKEN),
        token_digest(OPS_TOKEN)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A signature issued by the caller holding `token`.
async fn issue_as(client: &mut SignatureServiceClient<Channel>, token: &str) -> String {
    client
        .issue_signature(with_token(IssueSignatureRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .signature
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn mtls_roles_by_certificate_and_token() {
    let ca = Ca::new("test CA");
    let files = tempfile::tempdir().unwrap();
    let server_leaf = ca.leaf(&["localhost"]);
    let args = [
        "--tls-cert".to_owned(),
        write(files.path(), "tls.crt", &server_leaf.cert),
        "--tls-key".to_owned(),
        write(files.path(), "tls.key", &server_leaf.key),
        "--tls-client-ca".to_owned(),
        write(files.path(), "ca.crt", &ca.pem()),
        "--caller-policy".to_owned(),
        write(files.path(), "policy.toml", &policy_text()),
        "--health-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    let keys = keys_dir();
    let server = ServerProcess::start(
        keys.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Plaintext, and TLS without a client certificate, cannot talk to it.
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let r = SignatureServiceClient::new(channel)
            .issue_signature(IssueSignatureRequest::default())
            .await;
        assert!(r.is_err(), "plaintext call went through");
    }
    let anonymous = tls_channel(server.addr, &ca.pem(), None).await;
    if let Ok(channel) = anonymous {
        let r = SignatureServiceClient::new(channel)
            .issue_signature(IssueSignatureRequest::default())
            .await;
        assert!(
            r.is_err(),
            "a call without a client certificate went through"
        );
    }

    let app = SignatureServiceClient::new(
        tls_channel(server.addr, &ca.pem(), Some(&ca.leaf(&[APP])))
            .await
            .unwrap(),
    );
    let gateway = SignatureServiceClient::new(
        tls_channel(server.addr, &ca.pem(), Some(&ca.leaf(&[GATEWAY])))
            .await
            .unwrap(),
    );
    let stranger_cert = ca.leaf(&["spiffe://cluster.local/ns/x/sa/stranger"]);
    let stranger = SignatureServiceClient::new(
        tls_channel(server.addr, &ca.pem(), Some(&stranger_cert))
            .await
            .unwrap(),
    );
    let (mut app, mut gateway, mut stranger) = (app, gateway, stranger);

    let sig = app
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signature;
    app.verify_signature(VerifySignatureRequest {
        signature: sig.clone(),
    })
    .await
    .unwrap();
    let consume = || ConsumeSignatureRequest {
        signature: sig.clone(),
        ..Default::default()
    };
    assert_eq!(
        refused(app.consume_signature(consume()).await),
        Reason::PermissionDenied
    );
    assert_eq!(
        refused(
            gateway
                .issue_signature(IssueSignatureRequest::default())
                .await
        ),
        Reason::PermissionDenied
    );
    assert_eq!(
        refused(
            stranger
                .verify_signature(VerifySignatureRequest {
                    signature: sig.clone()
                })
                .await
        ),
        Reason::CallerUnauthenticated
    );
    assert_eq!(
        refused(
            stranger
                .issue_signature(with_token(IssueSignatureRequest::default(), "wrong"))
                .await
        ),
        Reason::CallerUnauthenticated
    );
    gateway.consume_signature(consume()).await.unwrap();
    // A token names its caller, whatever the certificate: the operator may do anything.
    let sig2 = issue_as(&mut stranger, OPS_TOKEN).await;
    stranger
        .consume_signature(with_token(
            ConsumeSignatureRequest {
                signature: sig2,
                ..Default::default()
            },
            OPS_TOKEN,
        ))
        .await
        .unwrap();

    // Health stays open to anyone with a TLS connection, and to kubelet on the plaintext probe port.
    let status = health_over(
        tls_channel(server.addr, &ca.pem(), Some(&stranger_cert))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 1, "SERVING over TLS");
    let probe = probe_addr(&server);
    let probe_channel = Channel::from_shared(format!("http://{probe}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        health_over(probe_channel).await,
        1,
        "SERVING on the probe port"
    );
}

async fn health_over(channel: Channel) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    reply.into_inner().status
}

fn probe_addr(server: &ServerProcess) -> std::net::SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for line in server.stderr.lock().unwrap().iter() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && v["message"] == "serving plaintext health probes"
            {
                return v["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no probe port logged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn bearer_tokens_over_plaintext() {
    let files = tempfile::tempdir().unwrap();
    let policy = write(files.path(), "policy.toml", &policy_text());
    let keys = keys_dir();
    let server = ServerProcess::start(keys.path(), &["--caller-policy", &policy]);
    let mut client = connect(server.addr).await;
    assert_eq!(
        refused(
            client
                .issue_signature(IssueSignatureRequest::default())
                .await
        ),
        Reason::CallerUnauthenticated
    );
    let sig = issue_as(&mut client, APP_TOKEN).await;
    let consume = ConsumeSignatureRequest {
        signature: sig.clone(),
        ..Default::default()
    };
    assert_eq!(
        refused(
            client
                .consume_signature(with_token(consume.clone(), APP_TOKEN))
                .await
        ),
        Reason::PermissionDenied
    );
    client
        .consume_signature(with_token(consume, OPS_TOKEN))
        .await
        .unwrap();
    // A subject's signatures: the app server (issuer) and the operator (admin) may list and
    // revoke them; nobody without a credential may.
    let list = vod_signer::proto::ListSignaturesRequest {
        subject: "user-1".into(),
        ..Default::default()
    };
    let revoke_all = vod_signer::proto::RevokeSubjectRequest {
        subject: "user-1".into(),
    };
    assert_eq!(
        refused(client.list_signatures(list.clone()).await),
        Reason::CallerUnauthenticated
    );
    assert_eq!(
        refused(client.revoke_subject(revoke_all.clone()).await),
        Reason::CallerUnauthenticated
    );
    for token in [APP_TOKEN, OPS_TOKEN] {
        client
            .list_signatures(with_token(list.clone(), token))
            .await
            .unwrap();
        client
            .revoke_subject(with_token(revoke_all.clone(), token))
            .await
            .unwrap();
    }
    // Health is never behind the policy.
    assert_eq!(health(server.addr, "").await, Some(1));
}

/// At the default log level a refused call logs one `refused` line naming the reason, the RPC,
/// the caller, the signature's SecretId and nonce and the caller's `x-request-id`; a call that
/// succeeds logs nothing.
#[tokio::test]
async fn a_refusal_logs_one_line_with_the_calls_fields() {
    let files = tempfile::tempdir().unwrap();
    let policy = write(files.path(), "policy.toml", &policy_text());
    let keys = keys_dir();
    let mut cmd = serve_command();
    cmd.env("RUST_LOG", "info")
        .arg("--keys-dir")
        .arg(keys.path())
        .args(["--active-key", SECRET_ID, "--caller-policy", &policy]);
    let server = ServerProcess::spawn(cmd);
    let mut client = connect(server.addr).await;
    let sig = issue_as(&mut client, APP_TOKEN).await;
    let random = vod_signer::signature::parse(&sig).unwrap().claims.random;
    let consume = |request_id: &str| {
        let mut request = with_token(
            ConsumeSignatureRequest {
                signature: sig.clone(),
                ..Default::default()
            },
            OPS_TOKEN,
        );
        request
            .metadata_mut()
            .insert("x-request-id", request_id.parse().unwrap());
        request
    };
    client
        .consume_signature(consume("req-first"))
        .await
        .unwrap();
    let replay = client
        .consume_signature(consume("req-replay"))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&replay), Reason::SignatureAlreadyUsed);
    // The nonce reaches the log line in a private header that the server takes off first.
    let metadata = replay.metadata().clone().into_headers();
    assert!(
        !metadata.contains_key(vod_signer::refusal::ABOUT_HEADER),
        "{metadata:?}"
    );
    // A forgery's refusal names the nonce it claimed too.
    let forged = forge(
        SECRET_ID,
        "not-the-key",
        now(),
        now() + 600,
        7,
        &Default::default(),
    );
    let mut forgery = with_token(
        ConsumeSignatureRequest {
            signature: forged,
            ..Default::default()
        },
        OPS_TOKEN,
    );
    forgery
        .metadata_mut()
        .insert("x-request-id", "req-forged".parse().unwrap());
    assert_eq!(
        refused(client.consume_signature(forgery).await),
        Reason::SignatureMismatch
    );

    // The line is written before the answer; the pipe may deliver it a little later.
    let refused_lines = || log_lines(&server, "refused");
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused_lines().len() < 2 {
        assert!(Instant::now() < deadline, "no refused lines were logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = refused_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let forged_line = &lines[1];
    assert_eq!(forged_line["reason"], "SIGNATURE_MISMATCH");
    assert_eq!(forged_line["secret_id"], SECRET_ID);
    assert_eq!(forged_line["random"], 7);
    assert_eq!(forged_line["request_id"], "req-forged");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["reason"], "SIGNATURE_ALREADY_USED");
    assert_eq!(line["rpc"], "ConsumeSignature");
    assert_eq!(line["caller"], "operator");
    assert_eq!(line["secret_id"], SECRET_ID);
    assert_eq!(line["random"], random);
    assert_eq!(line["request_id"], "req-replay");
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(
        !log.contains("req-first"),
        "a successful call logged: {log}"
    );
    assert!(!log.contains(&sig), "the signature reached the log");
}

#[tokio::test]
async fn certificate_files_reload_without_a_restart() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let files = tempfile::tempdir().unwrap();
    let old = old_ca.leaf(&["localhost"]);
    let cert = write(files.path(), "tls.crt", &old.cert);
    let key = write(files.path(), "tls.key", &old.key);
    let keys = keys_dir();
    let server = ServerProcess::start(
        keys.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-reload-interval",
            "1",
        ],
    );
    let mut before =
        SignatureServiceClient::new(tls_channel(server.addr, &old_ca.pem(), None).await.unwrap());
    before
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap();
    assert!(
        tls_channel(server.addr, &new_ca.pem(), None).await.is_err(),
        "the new CA is not in use yet"
    );

    // cert-manager style: new files appear under the same names.
    let new = new_ca.leaf(&["localhost"]);
    write(files.path(), "tls.key.tmp", &new.key);
    write(files.path(), "tls.crt.tmp", &new.cert);
    // A different modification time, set rather than waited for (coarse file systems).
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    for name in ["tls.key.tmp", "tls.crt.tmp"] {
        std::fs::File::options()
            .write(true)
            .open(files.path().join(name))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    std::fs::rename(files.path().join("tls.key.tmp"), &key).unwrap();
    std::fs::rename(files.path().join("tls.crt.tmp"), &cert).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let channel = loop {
        if let Ok(channel) = tls_channel(server.addr, &new_ca.pem(), None).await {
            break channel;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    SignatureServiceClient::new(channel)
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap();
    // The connection made before the rotation still works.
    before
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("AKIDone"), "key-one").unwrap();
    let mut cmd = serve_command();
    cmd.arg("--keys-dir")
        .arg(dir.path())
        .args(["--keys-reload-interval", "0"]);
    let server = ServerProcess::spawn(cmd);
    let mut client = connect(server.addr).await;
    let issue = async |client: &mut SignatureServiceClient<Channel>| {
        let reply = client
            .issue_signature(IssueSignatureRequest::default())
            .await
            .unwrap()
            .into_inner();
        (reply.signature, reply.claims.unwrap().secret_id)
    };
    let (old_sig, id) = issue(&mut client).await;
    assert_eq!(id, "AKIDone");

    // Add a key and make it active, then SIGHUP.
    std::fs::write(dir.path().join("AKIDtwo"), "key-two").unwrap();
    std::fs::write(dir.path().join(".active"), "AKIDtwo\n").unwrap();
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_sig = loop {
        let (sig, id) = issue(&mut client).await;
        if id == "AKIDtwo" {
            break sig;
        }
        assert!(
            Instant::now() < deadline,
            "the new active key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Outstanding signatures of the old key still verify.
    let state = client
        .verify_signature(VerifySignatureRequest {
            signature: old_sig.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        state.into_inner().state,
        vod_signer::proto::SignatureState::Issued as i32
    );

    // A bad file name is skipped (logged); the other keys stay in force.
    std::fs::write(dir.path().join("bad name"), "x").unwrap();
    let reloads_before = reloads_done(&server);
    hangup(&server);
    // Waits for that reload to be done (its log line), not for a time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads_done(&server) <= reloads_before {
        assert!(
            Instant::now() < deadline,
            "the SIGHUP reload did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.wait_log(&["bad name", "skipped"], Duration::from_secs(1));
    client
        .verify_signature(VerifySignatureRequest {
            signature: old_sig.clone(),
        })
        .await
        .unwrap();
    std::fs::remove_file(dir.path().join("bad name")).unwrap();

    // Retire the old key: its outstanding signatures are refused (polled with Verify, which
    // changes nothing, until the reload is in force).
    std::fs::remove_file(dir.path().join("AKIDone")).unwrap();
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let verify = VerifySignatureRequest {
            signature: old_sig.clone(),
        };
        match client.verify_signature(verify).await {
            Err(s) if reason_of(&s) == Reason::UnknownSecretId => break,
            Err(s) => panic!("unexpected {s:?}"),
            Ok(_) => assert!(Instant::now() < deadline, "the old key was not retired"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consume = ConsumeSignatureRequest {
        signature: old_sig.clone(),
        ..Default::default()
    };
    assert_eq!(
        refused(client.consume_signature(consume).await),
        Reason::UnknownSecretId
    );
    client
        .consume_signature(ConsumeSignatureRequest {
            signature: new_sig,
            ..Default::default()
        })
        .await
        .unwrap();
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("keys reloaded") && log.contains("bad name") && log.contains("skipped"),
        "{log}"
    );
    assert!(
        !log.contains("key-one") && !log.contains("key-two"),
        "a key leaked into the log"
    );
}

/// The server's JSON log lines with this message, so far.
fn log_lines(server: &ServerProcess, message: &str) -> Vec<serde_json::Value> {
    server
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// How many key reloads the server has finished (its `keys reload done` lines).
fn reloads_done(server: &ServerProcess) -> usize {
    log_lines(server, "keys reload done").len()
}

fn hangup(server: &ServerProcess) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn redis_over_tls_with_acl_credentials() {
    let ca = Ca::new("redis CA");
    let files = tempfile::tempdir().unwrap();
    let leaf = ca.leaf(&["localhost"]);
    let (cert, key, ca_file) = (
        write(files.path(), "redis.crt", &leaf.cert),
        write(files.path(), "redis.key", &leaf.key),
        write(files.path(), "ca.crt", &ca.pem()),
    );
    let password = "s3cret-redis-pw";
    let password_file = write(files.path(), "redis-password", &format!("{password}\n"));
    let secret = format!(">{password}");
    let redis = RedisServer::start_configured(
        &[
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
            "--user",
            "vodsigner",
            "on",
            &secret,
            "~vodsigner:*",
            "+@all",
            "--user",
            "default",
            "off",
        ],
        &[
            "--tls",
            "--cacert",
            &ca_file,
            "--user",
            "vodsigner",
            "--pass",
            password,
            "--no-auth-warning",
        ],
    );
    let url = format!("rediss://localhost:{}/0", redis.port);
    let keys = keys_dir();
    let args = [
        "--redis-url",
        &url,
        "--redis-username",
        "vodsigner",
        "--redis-password-file",
        &password_file,
        "--redis-tls-ca",
        &ca_file,
    ];
    let server = ServerProcess::start(keys.path(), &args);
    wait_health(server.addr, "", true, Duration::from_secs(10)).await;
    let mut client = connect(server.addr).await;
    let reply = client
        .issue_signature(IssueSignatureRequest::default())
        .await
        .unwrap()
        .into_inner();
    client
        .consume_signature(ConsumeSignatureRequest {
            signature: reply.signature,
            ..Default::default()
        })
        .await
        .unwrap();
    let stored = redis.cli(&["KEYS", "vodsigner:*"]).unwrap();
    assert!(
        stored.contains(&reply.claims.unwrap().random.to_string()),
        "{stored}"
    );

    // A wrong password: never serving, calls fail closed, and the password is never logged.
    let wrong = write(files.path(), "wrong-password", "not-it");
    let args = [
        "--redis-url",
        &url,
        "--redis-username",
        "vodsigner",
        "--redis-password-file",
        &wrong,
        "--redis-tls-ca",
        &ca_file,
    ];
    let bad = ServerProcess::start(keys.path(), &args);
    let mut client = connect(bad.addr).await;
    assert_eq!(
        refused(
            client
                .issue_signature(IssueSignatureRequest::default())
                .await
        ),
        Reason::StoreUnavailable
    );
    assert_eq!(health(bad.addr, "").await, Some(2), "NOT_SERVING");
    for log in [&server.stderr, &bad.stderr] {
        let log = log.lock().unwrap().join("\n");
        assert!(
            !log.contains(password) && !log.contains("not-it"),
            "a password leaked: {log}"
        );
    }
}
