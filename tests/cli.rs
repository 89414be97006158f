//! The `vod-signer` binary's offline subcommands (SPEC section 5): `issue`, `inspect`, `--help`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use vod_signer::signature::{self, SecretKey};

const BIN: &str = env!("CARGO_BIN_EXE_vod-signer");
const SECRET_ID: &str = "AKIDcli";
const KEY: &str = "cli-secret-key";

/// The binary with no `VOD_SIGNER_*` variable inherited from the environment.
fn vod_signer() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("VOD_SIGNER_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn keys_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SECRET_ID), format!("{KEY}\n")).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[track_caller]
fn success(out: Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[track_caller]
fn failure(out: Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure\nstdout: {}",
        stdout(&out)
    );
    assert!(stdout(&out).is_empty(), "stdout: {}", stdout(&out));
    stderr(&out)
}

fn issue(dir: &Path, args: &[&str]) -> Output {
    run(vod_signer()
        .arg("issue")
        .arg("--keys-dir")
        .arg(dir)
        .args(args))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn issue_prints_a_signature_that_parses_and_verifies() {
    let dir = keys_dir();
    let before = now();
    let out = success(issue(dir.path(), &[]));
    let after = now();
    let sig = out.trim_end_matches('\n');
    assert!(!sig.contains('\n'), "one line: {out:?}");
    let parsed = signature::parse(sig).unwrap();
    parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
    assert_eq!(
        parsed.verify(&SecretKey::new(format!("{KEY}\n").as_bytes())),
        Err(signature::SignatureError::Mismatch),
        "the trailing newline is not part of the key"
    );
    let c = &parsed.claims;
    assert_eq!(c.secret_id, SECRET_ID);
    assert!(c.one_time_valid);
    assert!((before..=after).contains(&c.current_time_stamp));
    assert_eq!(c.expire_time - c.current_time_stamp, 3600, "default --ttl");
    assert_eq!(c.policy, Default::default());
    signature::check_time(c, now(), 0).unwrap();
}

#[test]
fn issue_json_prints_signature_and_claims() {
    let dir = keys_dir();
    let out = success(issue(dir.path(), &["--json", "--ttl", "60"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let sig = v["signature"].as_str().unwrap();
    let parsed = signature::parse(sig).unwrap();
    parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
    assert_eq!(v["claims"], serde_json::to_value(&parsed.claims).unwrap());
    assert_eq!(v["claims"]["secret_id"], SECRET_ID);
    assert_eq!(v["claims"]["one_time_valid"], true);
    let (t, e) = (
        v["claims"]["current_time_stamp"].as_i64().unwrap(),
        v["claims"]["expire_time"].as_i64().unwrap(),
    );
    assert_eq!(e - t, 60);
    assert!(!out.contains(KEY), "the key never shows: {out}");
}

#[test]
fn issue_policy_flags_show_up_in_claims() {
    let dir = keys_dir();
    let out = success(issue(
        dir.path(),
        &[
            "--json",
            "--procedure",
            "QCVB_SimpleProcessFile",
            "--source-context",
            "user-42/上传 #1",
            "--session-context",
            "a&b=c",
            "--task-priority",
            "-5",
            "--task-notify-mode",
            "Change",
            "--class-id",
            "18446744073709551615",
            "--vod-sub-app-id",
            "1500000001",
            "--storage-region",
            "ap-chongqing",
            "--max-file-size",
            "1048576",
        ],
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    let policy = &v["claims"]["policy"];
    assert_eq!(policy["procedure"], "QCVB_SimpleProcessFile");
    assert_eq!(policy["source_context"], "user-42/上传 #1");
    assert_eq!(policy["session_context"], "a&b=c");
    assert_eq!(policy["task_priority"], -5);
    assert_eq!(policy["task_notify_mode"], "Change");
    assert_eq!(policy["class_id"], 18446744073709551615u64);
    assert_eq!(policy["vod_sub_app_id"], 1500000001);
    assert_eq!(policy["storage_region"], "ap-chongqing");
    assert_eq!(policy["max_file_size"], 1048576);

    let parsed = signature::parse(v["signature"].as_str().unwrap()).unwrap();
    parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
    let p = &parsed.claims.policy;
    assert_eq!(p.task_priority, Some(-5));
    assert_eq!(p.max_file_size, Some(1_048_576));
    assert_eq!(p.source_context.as_deref(), Some("user-42/上传 #1"));
    assert!(
        parsed
            .claims
            .original
            .contains("&sourceContext=user-42%2F%E4%B8%8A%E4%BC%A0%20%231"),
        "{}",
        parsed.claims.original
    );
}

#[test]
fn issue_refuses_an_invalid_policy_with_a_clear_message() {
    let dir = keys_dir();
    let err = failure(issue(dir.path(), &["--task-priority", "3"]));
    assert!(err.contains("invalid policy"), "{err}");
    assert!(
        err.contains("taskPriority is only allowed together with procedure"),
        "{err}"
    );

    let err = failure(issue(
        dir.path(),
        &["--procedure", "P", "--task-priority", "11"],
    ));
    assert!(err.contains("taskPriority 11 is outside -10..=10"), "{err}");

    let err = failure(issue(
        dir.path(),
        &["--procedure", "P", "--task-notify-mode", "Always"],
    ));
    assert!(err.contains("taskNotifyMode must be"), "{err}");

    let long = "x".repeat(251);
    let err = failure(issue(dir.path(), &["--source-context", &long]));
    assert!(err.contains("sourceContext is 251 bytes"), "{err}");

    let err = failure(issue(dir.path(), &["--ttl", "7776001"]));
    assert!(err.contains("--ttl"), "{err}");
    let err = failure(issue(dir.path(), &["--ttl", "0"]));
    assert!(err.contains("--ttl"), "{err}");
}

#[test]
fn issue_reports_key_problems() {
    let err = failure(run(vod_signer().arg("issue")));
    assert!(err.contains("--keys-dir"), "{err}");

    let dir = keys_dir();
    std::fs::write(dir.path().join("AKIDsecond"), "second").unwrap();
    let err = failure(issue(dir.path(), &[]));
    assert!(err.contains("--active-key"), "{err}");
    let out = success(issue(dir.path(), &["--active-key", "AKIDsecond"]));
    let parsed = signature::parse(out.trim()).unwrap();
    assert_eq!(parsed.claims.secret_id, "AKIDsecond");
    parsed.verify(&SecretKey::new(b"second")).unwrap();

    std::fs::write(dir.path().join("bad name"), "k").unwrap();
    let err = failure(issue(dir.path(), &["--active-key", "AKIDsecond"]));
    assert!(err.contains("bad name"), "{err}");
    assert!(!err.contains("second\n") && !err.contains(KEY), "{err}");
}

#[test]
fn issue_reads_the_keys_dir_from_the_environment() {
    let dir = keys_dir();
    let out = success(run(vod_signer()
        .arg("issue")
        .env("VOD_SIGNER_KEYS_DIR", dir.path())
        .env("VOD_SIGNER_PROCEDURE", "FromEnv")));
    let parsed = signature::parse(out.trim()).unwrap();
    parsed.verify(&SecretKey::new(KEY.as_bytes())).unwrap();
    assert_eq!(parsed.claims.policy.procedure.as_deref(), Some("FromEnv"));

    // The flag wins over the variable.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("AKIDenv"), "env-key").unwrap();
    let out = success(run(vod_signer()
        .arg("issue")
        .arg("--keys-dir")
        .arg(dir.path())
        .env("VOD_SIGNER_KEYS_DIR", other.path())));
    assert_eq!(
        signature::parse(out.trim()).unwrap().claims.secret_id,
        SECRET_ID
    );
}

#[test]
fn inspect_prints_the_claims() {
    let dir = keys_dir();
    let sig = success(issue(
        dir.path(),
        &["--procedure", "P", "--max-file-size", "42"],
    ));
    let sig = sig.trim();
    let out = success(run(vod_signer().arg("inspect").arg(sig)));
    let v: Value = serde_json::from_str(&out).unwrap();
    let parsed = signature::parse(sig).unwrap();
    assert_eq!(v["claims"], serde_json::to_value(&parsed.claims).unwrap());
    assert_eq!(v["claims"]["secret_id"], SECRET_ID);
    assert_eq!(v["claims"]["policy"]["procedure"], "P");
    assert_eq!(v["claims"]["policy"]["max_file_size"], 42);
    assert_eq!(v["verified"], false, "inspect has no key");
    let tag_hex: String = parsed.tag.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["tag_hex"], tag_hex);

    // From standard input, trailing newline and all.
    let mut child = vod_signer()
        .args(["inspect", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{sig}").unwrap();
    }
    let out = success(child.wait_with_output().unwrap());
    let v2: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v2, v);
}

#[test]
fn inspect_of_the_spec_example() {
    let spec = "kfBPqxhVp5sB0fXpreEftY/kUKlzZWNyZXRJZD1BS0lEejhrcmJzSjV5S0JaUXBuNzRXRmttTFB4M0VYQU1QTEUmY3VycmVudFRpbWVTdGFtcD0xNzAwMDAwMDAwJmV4cGlyZVRpbWU9MTcwMDAwMzYwMCZyYW5kb209MzE0MTU5MjY1MyZvbmVUaW1lVmFsaWQ9MSZwcm9jZWR1cmU9UUNWQl9TaW1wbGVQcm9jZXNzRmlsZSZzb3VyY2VDb250ZXh0PXVzZXItNDIlMkYlRTQlQjglOEElRTQlQkMlQTAlMjAlMjMx";
    let v: Value =
        serde_json::from_str(&success(run(vod_signer().arg("inspect").arg(spec)))).unwrap();
    assert_eq!(
        v["claims"]["secret_id"],
        "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
    );
    assert_eq!(v["claims"]["current_time_stamp"], 1_700_000_000);
    assert_eq!(v["claims"]["expire_time"], 1_700_003_600);
    assert_eq!(v["claims"]["random"], 3_141_592_653u32);
    assert_eq!(v["claims"]["policy"]["source_context"], "user-42/上传 #1");
}

#[test]
fn inspect_refuses_garbage() {
    for garbage in ["garbage", "", "AAAA", "!!!!"] {
        let err = failure(run(vod_signer().arg("inspect").arg(garbage)));
        assert!(err.contains("not a valid signature"), "{garbage:?}: {err}");
    }
    let err = failure(run(vod_signer().arg("inspect")));
    assert!(err.to_lowercase().contains("signature"), "{err}");
}

#[test]
fn help_works_on_every_subcommand() {
    for (sub, expected) in [
        (
            "serve",
            &["--listen", "--keys-dir", "--redis-url", "--dev"][..],
        ),
        (
            "issue",
            &["--keys-dir", "--ttl", "--procedure", "--json"][..],
        ),
        ("inspect", &["SIGNATURE"][..]),
    ] {
        let out = success(run(vod_signer().args([sub, "--help"])));
        for flag in expected {
            assert!(out.contains(flag), "{sub} --help lacks {flag}:\n{out}");
        }
        let out = success(run(vod_signer().args(["help", sub])));
        assert!(out.contains(expected[0]), "help {sub}:\n{out}");
    }
    let out = success(run(vod_signer().arg("--help")));
    for sub in ["serve", "issue", "inspect"] {
        assert!(out.contains(sub), "--help lacks {sub}:\n{out}");
    }
    let out = success(run(vod_signer().arg("--version")));
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    assert!(
        out.contains(&format!("(revision {})", env!("VOD_SIGNER_REVISION"))),
        "{out}"
    );
}

/// `serve --help` shows the defaults the code uses: each is written once, next to what it
/// configures, and clap reads it from there; a literal that drifted would show here.
#[test]
fn help_shows_the_defaults_of_the_code() {
    use vod_signer::notify::Lifecycle;
    use vod_signer::redis::RedisSettings;
    use vod_signer::server::ServerSettings;
    use vod_signer::service::Settings;

    let help = success(run(vod_signer().args(["serve", "--help"])));
    // Each flag's block of the long help, with its `[default: ...]` line.
    let default_of = |flag: &str| -> Option<String> {
        let start = help.find(&format!("--{flag} "))?;
        let block = &help[start..];
        let end = block[2..].find("\n      -").map_or(block.len(), |e| e + 2);
        let block = &block[..end];
        let d = block.find("[default: ")?;
        Some(block[d + 10..].split(']').next()?.to_owned())
    };
    let settings = Settings::default();
    let redis = RedisSettings::default();
    let lifecycle = Lifecycle::default();
    let human = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let expected: Vec<(&str, String)> = vec![
        ("listen", ServerSettings::LISTEN.to_owned()),
        ("metrics-listen", ServerSettings::METRICS_LISTEN.to_owned()),
        ("default-ttl", settings.default_ttl.to_string()),
        ("max-ttl", settings.max_ttl.to_string()),
        ("leeway", settings.leeway.to_string()),
        ("key-prefix", redis.key_prefix.clone()),
        ("store-timeout-ms", redis.timeout.as_millis().to_string()),
        (
            "health-interval-ms",
            ServerSettings::HEALTH_INTERVAL.as_millis().to_string(),
        ),
        (
            "max-concurrent-calls",
            ServerSettings::MAX_CONCURRENT_CALLS.to_string(),
        ),
        (
            "drain-timeout",
            ServerSettings::DRAIN_TIMEOUT.as_secs().to_string(),
        ),
        (
            "keys-reload-interval",
            vod_signer::reload::Sources::INTERVAL.as_secs().to_string(),
        ),
        (
            "tls-reload-interval",
            ServerSettings::TLS_RELOAD_INTERVAL.as_secs().to_string(),
        ),
        ("min-replicas-ack", redis.min_replicas_ack.to_string()),
        ("redis-memory-reserve", redis.memory_reserve.to_string()),
        (
            "events-maxlen",
            vod_signer::audit::DEFAULT_MAXLEN.to_string(),
        ),
        (
            "max-outstanding-per-subject",
            settings.max_outstanding_per_subject.to_string(),
        ),
        ("completion-window", human(lifecycle.completion_window)),
        ("notify-max-age", human(lifecycle.max_age)),
        ("notify-timeout", human(Lifecycle::ATTEMPT_TIMEOUT)),
        ("notify-concurrency", Lifecycle::CONCURRENCY.to_string()),
        ("runtime", "auto".to_owned()),
        ("worker-threads", vod_signer::config::PER_CORE.to_string()),
        ("log-format", "text".to_owned()),
        ("log-level", vod_signer::config::LOG_LEVEL.to_owned()),
    ];
    for (flag, want) in expected {
        assert_eq!(
            default_of(flag).as_deref(),
            Some(want.as_str()),
            "--{flag}\n{help}"
        );
    }
    // And the largest TTL accepted is the codec's 90 days, for serve and for issue alike.
    let over = (vod_signer::signature::MAX_VALIDITY_SECONDS + 1).to_string();
    let refused = failure(run(vod_signer().args(["serve", "--max-ttl", &over])));
    assert!(refused.contains("7776000"), "{refused}");
    let keys = keys_dir();
    let refused = failure(issue(keys.path(), &["--ttl", &over]));
    assert!(refused.contains("7776000"), "{refused}");
}
