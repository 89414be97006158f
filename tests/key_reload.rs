//! Key reloads on a running `vod-signer serve` process (issue 16): a key removed from the keys
//! directory stops verifying at the next reload, always; without its active key the server
//! refuses IssueSignature with `NO_ACTIVE_KEY` and goes on verifying, consuming and revoking
//! with the keys that remain, until a reload finds the active key again.
//!
//! Reloads are triggered with SIGHUP (or come from `--keys-reload-interval`), and each test
//! waits for the server's `keys reload done` log line (debug level; the suite's servers log at
//! trace), so the state after a reload is checked without guessing how long it takes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use vod_signer::proto::signature_service_client::SignatureServiceClient;
use vod_signer::proto::{
    IssueSignatureRequest, RevokeSignatureRequest, SignatureState, VerifySignatureRequest,
};
use vod_signer::reason::Reason;

/// A third key, added during the tests.
const THIRD_ID: &str = "AKIDthree";
const THIRD_KEY: &str = "third-secret-key-00112233445566";

/// Bound on one SIGHUP-triggered reload (it reads a directory of a few files).
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

type Client = SignatureServiceClient<Channel>;

fn write_key(dir: &Path, id: &str, key: &str) {
    std::fs::write(dir.join(id), format!("{key}\n")).unwrap();
}

fn remove(dir: &Path, name: &str) {
    std::fs::remove_file(dir.join(name)).unwrap();
}

/// The server's log lines, parsed (JSON, flattened events).
fn log(server: &ServerProcess) -> Vec<serde_json::Value> {
    server
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn reloads_done(server: &ServerProcess) -> usize {
    log(server)
        .iter()
        .filter(|v| v["message"] == "keys reload done")
        .count()
}

/// Waits until the server has finished `n` more reloads than `before`, within `within`.
fn wait_reloads(server: &ServerProcess, before: usize, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while reloads_done(server) < before + n {
        assert!(
            Instant::now() < deadline,
            "{n} reload(s) did not finish within {within:?}: {:#?}",
            server.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP, then waits until that reload is done.
fn reload(server: &ServerProcess) {
    let before = reloads_done(server);
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_reloads(server, before, 1, RELOAD_DEADLINE);
}

/// Error-level log lines whose text mentions `needle`.
fn errors_naming(server: &ServerProcess, needle: &str) -> Vec<serde_json::Value> {
    log(server)
        .into_iter()
        .filter(|v| v["level"] == "ERROR" && v.to_string().contains(needle))
        .collect()
}

/// `vodsigner_active_key_missing`, scraped from `/metrics`.
async fn active_key_missing(metrics: SocketAddr) -> f64 {
    let body = scrape(metrics).await;
    body.value("vodsigner_active_key_missing", &[])
        .unwrap_or_else(|| panic!("no vodsigner_active_key_missing in {}", body.text))
}

/// Issues with `secret_id` (empty: the active key); the signature and the SecretId it names.
async fn issue(client: &mut Client, secret_id: &str) -> Result<(String, String), tonic::Status> {
    let reply = client
        .issue_signature(IssueSignatureRequest {
            secret_id: secret_id.to_owned(),
            subject: "user-42".to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((reply.signature, reply.claims.unwrap().secret_id))
}

async fn verify(client: &mut Client, signature: &str) -> Result<i32, tonic::Status> {
    Ok(client
        .verify_signature(VerifySignatureRequest {
            signature: signature.to_owned(),
        })
        .await?
        .into_inner()
        .state)
}

/// Asserts that IssueSignature for the active key is refused with NO_ACTIVE_KEY, in the usual
/// shape, naming the missing SecretId.
async fn assert_no_active_key(client: &mut Client, missing: &str) {
    let status = issue(client, "").await.expect_err("issued without its key");
    assert_eq!(reason_of(&status), Reason::NoActiveKey, "{status:?}");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with("NO_ACTIVE_KEY: ") && status.message().contains(missing),
        "{status:?}"
    );
}

/// Asserts that `signature`'s key is gone: verify, consume and revoke all say so.
async fn assert_unknown(client: &mut Client, signature: &str) {
    assert_eq!(
        refused(verify(client, signature).await),
        Reason::UnknownSecretId
    );
    assert_eq!(
        refused(client.consume_signature(consume_req(signature)).await),
        Reason::UnknownSecretId
    );
    let revoke = RevokeSignatureRequest {
        signature: signature.to_owned(),
    };
    assert_eq!(
        refused(client.revoke_signature(revoke).await),
        Reason::UnknownSecretId
    );
}

fn start(dir: &Path, active: Option<&str>, interval_s: u64) -> ServerProcess {
    ServerProcess::spawn(serve_with_keys(dir, active, interval_s))
}

fn serve_with_keys(dir: &Path, active: Option<&str>, interval_s: u64) -> std::process::Command {
    keys_args(serve_command(), dir, active, interval_s)
}

/// `cmd` with the keys directory `dir`, the active key and the reload interval.
fn keys_args(
    mut cmd: std::process::Command,
    dir: &Path,
    active: Option<&str>,
    interval_s: u64,
) -> std::process::Command {
    cmd.arg("--keys-dir")
        .arg(dir)
        .args(["--keys-reload-interval", &interval_s.to_string()]);
    if let Some(active) = active {
        cmd.args(["--active-key", active]);
    }
    cmd
}

/// The uid and gid of `nobody`: a user file permissions apply to, even when the tests run
/// as root (root may read any directory, so a permission test must not run the server as
/// root).
const NOBODY: u32 = 65534;

fn assert_no_key_logged(server: &ServerProcess) {
    let text = server.stderr.lock().unwrap().join("\n");
    assert!(!text.contains(THIRD_KEY), "a key leaked into the log");
}

#[tokio::test]
async fn a_removed_key_stops_verifying_at_the_next_reload() {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), SECRET_ID, SECRET_KEY);
    write_key(dir.path(), OTHER_ID, OTHER_KEY);
    let server = start(dir.path(), Some(SECRET_ID), 0);
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    let (active_sig, id) = issue(&mut client, "").await.unwrap();
    assert_eq!(id, SECRET_ID);
    // A loaded key that is not active issues when named.
    let (other_sig, id) = issue(&mut client, OTHER_ID).await.unwrap();
    assert_eq!(id, OTHER_ID);

    // The other key leaked: remove it.
    remove(dir.path(), OTHER_ID);
    reload(&server);
    assert_unknown(&mut client, &other_sig).await;
    assert_eq!(
        refused(issue(&mut client, OTHER_ID).await),
        Reason::UnknownSecretId
    );
    // The active key goes on.
    assert_eq!(
        verify(&mut client, &active_sig).await.unwrap(),
        SignatureState::Issued as i32
    );
    issue(&mut client, "").await.unwrap();
    assert_eq!(active_key_missing(metrics).await, 0.0);
    let reloaded = log(&server)
        .into_iter()
        .find(|v| v["message"] == "keys reloaded")
        .expect("a 'keys reloaded' line");
    assert!(
        reloaded["removed"].as_str().unwrap().contains(OTHER_ID),
        "{reloaded}"
    );

    // Every key removed: nothing verifies, nothing issues, the rest of the server stays up.
    remove(dir.path(), SECRET_ID);
    reload(&server);
    assert_unknown(&mut client, &active_sig).await;
    assert_no_active_key(&mut client, SECRET_ID).await;
    assert_eq!(active_key_missing(metrics).await, 1.0);
    assert_eq!(health(server.addr, "").await, Some(1), "still SERVING");
}

#[tokio::test]
async fn removing_the_active_key_refuses_issuing_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), SECRET_ID, SECRET_KEY);
    let server = start(dir.path(), Some(SECRET_ID), 0);
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    let (leaked_sig, _) = issue(&mut client, "").await.unwrap();
    assert_eq!(active_key_missing(metrics).await, 0.0);

    // The active key leaked: a new key is added and the leaked one deleted, in one reload.
    write_key(dir.path(), THIRD_ID, THIRD_KEY);
    remove(dir.path(), SECRET_ID);
    reload(&server);
    assert_unknown(&mut client, &leaked_sig).await;
    assert_no_active_key(&mut client, SECRET_ID).await;
    assert_eq!(active_key_missing(metrics).await, 1.0);
    let lines = errors_naming(&server, SECRET_ID);
    assert!(
        lines.iter().any(|v| v["active"] == SECRET_ID),
        "no error line naming the missing active key: {lines:#?}"
    );
    let body = scrape(metrics).await;
    assert_eq!(
        body.value(
            "vodsigner_requests_total",
            &[("rpc", "IssueSignature"), ("result", "NO_ACTIVE_KEY")]
        ),
        Some(1.0),
        "refusals are counted by reason: {}",
        body.text
    );

    // The new key verifies, consumes and, named explicitly, issues.
    let (new_sig, id) = issue(&mut client, THIRD_ID).await.unwrap();
    assert_eq!(id, THIRD_ID);
    assert_eq!(
        verify(&mut client, &new_sig).await.unwrap(),
        SignatureState::Issued as i32
    );
    client
        .consume_signature(consume_req(&new_sig))
        .await
        .unwrap();

    // The active key is back: issuing resumes by itself.
    write_key(dir.path(), SECRET_ID, SECRET_KEY);
    reload(&server);
    let (_, id) = issue(&mut client, "").await.unwrap();
    assert_eq!(id, SECRET_ID);
    assert_eq!(active_key_missing(metrics).await, 0.0);
    assert!(
        log(&server).iter().any(|v| v["level"] == "INFO"
            && v["active"] == SECRET_ID
            && v["message"].as_str().unwrap().contains("issuing resumes")),
        "no 'issuing resumes' line"
    );
    assert_no_key_logged(&server);
}

/// With `.active` naming the active key, and reloads from `--keys-reload-interval` alone.
#[tokio::test]
async fn an_active_file_naming_a_missing_key_refuses_issuing() {
    const INTERVAL_S: u64 = 1;
    // A change is in force after at most two reloads: the one running when it is made may
    // have read the directory before it.
    let within = Duration::from_secs(2 * INTERVAL_S + 5);
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), SECRET_ID, SECRET_KEY);
    write_key(dir.path(), OTHER_ID, OTHER_KEY);
    std::fs::write(dir.path().join(".active"), format!("{SECRET_ID}\n")).unwrap();
    let server = start(dir.path(), None, INTERVAL_S);
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    let (sig, id) = issue(&mut client, "").await.unwrap();
    assert_eq!(id, SECRET_ID);
    let settle = |server: &ServerProcess| {
        let before = reloads_done(server);
        wait_reloads(server, before, 2, within);
    };

    // The key .active names is removed.
    remove(dir.path(), SECRET_ID);
    settle(&server);
    assert_unknown(&mut client, &sig).await;
    assert_no_active_key(&mut client, SECRET_ID).await;
    assert_eq!(active_key_missing(metrics).await, 1.0);
    assert!(!errors_naming(&server, SECRET_ID).is_empty());
    // The other key still issues when named.
    issue(&mut client, OTHER_ID).await.unwrap();

    // Restored: issuing resumes.
    write_key(dir.path(), SECRET_ID, SECRET_KEY);
    settle(&server);
    assert_eq!(issue(&mut client, "").await.unwrap().1, SECRET_ID);
    assert_eq!(active_key_missing(metrics).await, 0.0);

    // .active names a key that was never there.
    std::fs::write(dir.path().join(".active"), "AKIDnope\n").unwrap();
    settle(&server);
    assert_no_active_key(&mut client, "AKIDnope").await;
    assert_eq!(active_key_missing(metrics).await, 1.0);
    assert!(
        errors_naming(&server, "AKIDnope")
            .iter()
            .any(|v| v["active"] == "AKIDnope")
    );

    // .active switched to a loaded key: issuing resumes with it.
    std::fs::write(dir.path().join(".active"), format!("{OTHER_ID}\n")).unwrap();
    settle(&server);
    assert_eq!(issue(&mut client, "").await.unwrap().1, OTHER_ID);
    assert_eq!(active_key_missing(metrics).await, 0.0);
}

#[tokio::test]
async fn an_unreadable_keys_directory_keeps_the_previous_keys() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("keys");
    std::fs::create_dir(&dir).unwrap();
    write_key(&dir, SECRET_ID, SECRET_KEY);
    write_key(&dir, OTHER_ID, OTHER_KEY);
    let mut cmd = serve_with_keys(&dir, Some(SECRET_ID), 0);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // As root the server would read the directory whatever its mode: it runs as nobody,
        // who may read the keys until the mode says otherwise. Nobody runs a copy of the
        // binary here: the checkout's own may sit under a directory only root may enter (a
        // clone in `mktemp -d`).
        let program = parent.path().join("vod-signer");
        std::fs::copy(binary(), &program).unwrap();
        cmd = keys_args(serve_command_of(&program), &dir, Some(SECRET_ID), 0);
        for path in [parent.path(), dir.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for key in [SECRET_ID, OTHER_ID] {
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let server = ServerProcess::spawn(cmd);
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    let (sig, _) = issue(&mut client, "").await.unwrap();
    let (other_sig, _) = issue(&mut client, OTHER_ID).await.unwrap();

    let failed =
        |server: &ServerProcess| errors_naming(server, "keys directory reload failed").len();
    let still_in_force = async |client: &mut Client| {
        for s in [&sig, &other_sig] {
            assert_eq!(
                verify(client, s).await.unwrap(),
                SignatureState::Issued as i32
            );
        }
        assert_eq!(issue(client, "").await.unwrap().1, SECRET_ID);
        assert_eq!(active_key_missing(metrics).await, 0.0);
    };

    // Missing.
    let away = parent.path().join("keys.away");
    std::fs::rename(&dir, &away).unwrap();
    reload(&server);
    assert_eq!(failed(&server), 1);
    still_in_force(&mut client).await;

    // Not a directory.
    std::fs::write(&dir, "not a directory").unwrap();
    reload(&server);
    assert_eq!(failed(&server), 2);
    still_in_force(&mut client).await;
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&away, &dir).unwrap();

    // No permission to list it (the server never runs as root here, see above).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    reload(&server);
    assert_eq!(failed(&server), 3);
    still_in_force(&mut client).await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Readable again: removals apply again.
    remove(&dir, OTHER_ID);
    reload(&server);
    assert_unknown(&mut client, &other_sig).await;
    assert_eq!(
        verify(&mut client, &sig).await.unwrap(),
        SignatureState::Issued as i32
    );
}

#[tokio::test]
async fn a_badly_named_file_is_skipped_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), SECRET_ID, SECRET_KEY);
    let server = start(dir.path(), Some(SECRET_ID), 0);
    let metrics = server.metrics_addr();
    let mut client = connect(server.addr).await;
    let (sig, _) = issue(&mut client, "").await.unwrap();

    // A bad name and a new key in one reload: the bad file is skipped, the rest loads.
    std::fs::write(dir.path().join("bad name"), "x").unwrap();
    write_key(dir.path(), THIRD_ID, THIRD_KEY);
    reload(&server);
    let skipped = errors_naming(&server, "bad name");
    assert!(
        skipped
            .iter()
            .any(|v| v["message"].as_str().unwrap().contains("skipped")),
        "no error line naming the skipped file: {skipped:#?}"
    );
    let (third_sig, _) = issue(&mut client, THIRD_ID).await.unwrap();
    assert_eq!(issue(&mut client, "").await.unwrap().1, SECRET_ID);
    assert_eq!(active_key_missing(metrics).await, 0.0);

    // With the bad file still there, a removal still applies.
    remove(dir.path(), SECRET_ID);
    reload(&server);
    assert_unknown(&mut client, &sig).await;
    assert_no_active_key(&mut client, SECRET_ID).await;
    assert_eq!(
        verify(&mut client, &third_sig).await.unwrap(),
        SignatureState::Issued as i32
    );
    assert_eq!(active_key_missing(metrics).await, 1.0);
    assert_no_key_logged(&server);
}

/// At start-up the rules stay strict: a missing active key stops the start with a message.
#[test]
fn a_missing_active_key_at_start_up_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), OTHER_ID, OTHER_KEY);
    let with_flag = serve_command()
        .arg("--keys-dir")
        .arg(dir.path())
        .args(["--active-key", SECRET_ID])
        .output()
        .unwrap();
    std::fs::write(dir.path().join(".active"), SECRET_ID).unwrap();
    let with_file = serve_command()
        .arg("--keys-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    for out in [with_flag, with_file] {
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(SECRET_ID) && stderr.contains("not in the keys directory"),
            "{stderr}"
        );
        assert!(!stderr.contains(OTHER_KEY), "{stderr}");
    }
}
