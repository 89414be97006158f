//! The whole upload flow end to end, in a real browser: redis-server and `vod-signer serve`
//! as child processes, the example's app server and upload gateway in this process, and
//! Debian's headless chromium driven over WebDriver (chromedriver, from `chromium-driver`).
//!
//! The browser signs in, uploads a small video and sees it confirmed (the gateway called
//! `CompleteUpload`, and vod-signer's signed push reached the app server), replays the same
//! signature (refused `SIGNATURE_ALREADY_USED`), and uploads a file over the signature's
//! `maxFileSize` (refused `FILE_TOO_LARGE`). The app server must have kept exactly one
//! verified `NewFileUpload` and refused forged or stale pushes. An upload cut off mid-body
//! (sent by the test over a raw socket) ends ABANDONED after the short completion window, and
//! the app server receives the `UploadAbandoned` push. A screenshot of the page is saved as
//! `target/upload-flow.png`.
//!
//! Needs `chromium` and `chromedriver` (`apt-get install -y chromium chromium-driver`); run as
//! root with apt, the test installs them itself. `CHROMIUM` and `CHROMEDRIVER` override the
//! binaries' paths.

#[path = "../examples/upload-flow/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "../examples/upload-flow/gateway.rs"]
#[allow(dead_code)]
mod gateway;
#[path = "../examples/upload-flow/spawn.rs"]
#[allow(dead_code)]
mod spawn;
#[path = "../examples/upload-flow/web.rs"]
#[allow(dead_code)]
mod web;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use vod_signer::client::{Client, ClientConfig};
use vod_signer::notify::Secrets;
use vod_signer::proto::SignatureState;

const MAX_FILE_SIZE: u64 = 1 << 20;
/// vod-signer's `--completion-window` here: short, so the cut-off upload is abandoned within
/// the test, yet far longer than the good upload takes from consume to CompleteUpload.
const COMPLETION_WINDOW: Duration = Duration::from_secs(5);

/// Where the browser binaries are, installing them when missing (root with apt only).
fn browser_binaries() -> (PathBuf, PathBuf) {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    let driver =
        PathBuf::from(std::env::var("CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into()));
    let present = || chromium.is_file() && driver.is_file();
    if !present() {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let apt = Path::new("/usr/bin/apt-get").is_file();
        if root && apt {
            eprintln!("upload_flow: installing chromium and chromium-driver with apt-get");
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "chromium", "chromium-driver"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !install() {
                let _ = Command::new("apt-get")
                    .args(["update", "-q"])
                    .stdout(Stdio::null())
                    .status();
                install();
            }
        }
    }
    assert!(
        present(),
        "this test drives a headless browser: {} and {} are needed. Install them with \
         `apt-get install -y chromium chromium-driver` (Debian), or point CHROMIUM and \
         CHROMEDRIVER at a Chromium and its matching chromedriver",
        chromium.display(),
        driver.display()
    );
    (chromium, driver)
}

/// A chromedriver child process on a free loopback port, killed on drop.
struct Driver {
    port: u16,
    child: Child,
}

impl Driver {
    /// Starts chromedriver on a free port; another port when it exits at start (its port was
    /// taken meanwhile). It must answer its own `/status` while the child is alive.
    fn start(binary: &Path) -> Driver {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let port = spawn::free_port();
            let mut child = Command::new(binary)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let deadline = Instant::now() + Duration::from_secs(15);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let up = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!("chromedriver on port {port} exited at start ({status})");
                    break false;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    // Up, and still ours: a chromedriver that lost the port race exits.
                    break child.try_wait().unwrap().is_none();
                }
                assert!(Instant::now() < deadline, "chromedriver did not start");
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                return Driver { port, child };
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                attempt < ATTEMPTS,
                "chromedriver did not start on {ATTEMPTS} ports"
            );
        }
        unreachable!()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Browser {
    let args = [
        "--headless".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--no-proxy-server".to_owned(),
        "--window-size=1000,1250".to_owned(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium, "args": args }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with chromium")
}

/// The text of the element with this id.
async fn text(browser: &Browser, id: &str) -> String {
    browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Clicks `#button` and waits for the page to show the outcome of that upload attempt.
async fn attempt(browser: &Browser, button: &str, number: u32) -> String {
    browser
        .find(Locator::Id(button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let selector = format!("#result[data-attempt='{number}']");
    let result = browser
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(&selector))
        .await
        .unwrap_or_else(|e| panic!("upload attempt {number} did not finish: {e}"));
    result.attr("data-outcome").await.unwrap().unwrap()
}

/// Chooses `file` in the page's file picker.
async fn choose(browser: &Browser, file: &Path) {
    let input = browser.find(Locator::Id("file")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(&file.display().to_string()).await.unwrap();
}

/// A plain HTTP/1.1 client.
fn http_client()
-> hyper_util::client::legacy::Client<HttpConnector, http_body_util::Full<axum::body::Bytes>> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// `GET url`: the status and the body.
async fn get(url: &str) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::BodyExt as _;
    let client = http_client();
    let uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes().to_vec()))
}

/// `POST url` with `headers` and `body`: the status, the `Set-Cookie` header and the body.
async fn post(url: &str, headers: &[(&str, String)], body: &str) -> (u16, String, Vec<u8>) {
    use http_body_util::BodyExt as _;
    let mut request = axum::http::Request::post(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(http_body_util::Full::new(body.to_owned().into()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), http_client().request(request))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cookie, body.to_vec())
}

/// A push to the app server as vod-signer sends one, signed with `secret` at `timestamp`: the
/// status it gets.
async fn push(app_url: &str, secret: &str, id: &str, timestamp: i64, body: &str) -> u16 {
    let signature = Secrets::parse(secret)
        .unwrap()
        .sign(id, timestamp, body.as_bytes());
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    post(&format!("{app_url}/notify"), &headers, body).await.0
}

/// Waits up to `within` for `done`, checking every 50 ms.
async fn eventually(within: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file that looks like an MP4 (an `ftyp` box) followed by random bytes.
fn video(path: &Path, size: usize) -> Vec<u8> {
    let mut bytes = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom".to_vec();
    bytes.extend((bytes.len()..size).map(|_| rand::random::<u8>()));
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_flow_in_a_browser() {
    let started = Instant::now();
    let (chromium, chromedriver) = browser_binaries();
    let work = tempfile::tempdir().unwrap();
    let small = work.path().join("holiday.mp4");
    let small_bytes = video(&small, 300 * 1024);
    let big = work.path().join("too-big.mp4");
    video(&big, 4 << 20);

    // redis-server and vod-signer, real processes on free loopback ports; vod-signer pushes
    // its notifications to the app server, signed with a secret made for this run.
    let bound = web::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("listeners");
    let secret = web::new_webhook_secret();
    let notify = spawn::NotifyTo {
        url: bound.notify_url(),
        secret: secret.clone(),
        completion_window: COMPLETION_WINDOW,
    };
    let stack = spawn::Stack::start(
        Path::new(env!("CARGO_BIN_EXE_vod-signer")),
        false,
        Some(&notify),
    )
    .await
    .expect("redis-server and vod-signer");
    let flow = web::start(
        bound,
        web::FlowOptions {
            vod_signer: stack.signer.endpoint(),
            issuer_token: None,
            consumer_token: None,
            webhook_secrets: Some(secret.clone()),
            storage: work.path().join("storage"),
            max_file_size: MAX_FILE_SIZE,
            ttl_seconds: 600,
        },
    )
    .await
    .expect("app server and gateway");

    let driver = Driver::start(&chromedriver);
    let browser = open_browser(&driver, &chromium, &work.path().join("profile")).await;
    browser.goto(&flow.app_url).await.unwrap();

    // Wrong password first, then the demo account.
    browser
        .find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys(web::DEMO_USER)
        .await
        .unwrap();
    browser
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    browser
        .find(Locator::Id("login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::XPath(
            "//span[@id='login-error' and string-length(text()) > 0]",
        ))
        .await
        .expect("a refused sign-in");
    let password = browser.find(Locator::Id("password")).await.unwrap();
    password.clear().await.unwrap();
    password.send_keys(web::DEMO_PASSWORD).await.unwrap();
    browser
        .find(Locator::Id("login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#upload-section:not([hidden])"))
        .await
        .expect("signed in");
    assert_eq!(text(&browser, "whoami-user").await, "demo");

    // 1. A small video: stored, with a file id and a play URL serving the same bytes, and
    // confirmed: the page saw the app server receive vod-signer's push for it.
    choose(&browser, &small).await;
    assert_eq!(attempt(&browser, "upload-button", 1).await, "ok");
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#confirmation[data-state='confirmed']"))
        .await
        .expect("the page shows the upload confirmed by vod-signer's push");
    let file_id = text(&browser, "file-id").await;
    let play_url = text(&browser, "play-url").await;
    let source_context = text(&browser, "source-context").await;
    assert!(file_id.starts_with('f'), "file id {file_id:?}");
    assert!(
        source_context.starts_with("demo/"),
        "sourceContext {source_context:?}"
    );
    assert_eq!(play_url, format!("{}/files/{file_id}", flow.gateway_url));
    let (status, served) = get(&play_url).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        served == small_bytes,
        "the play URL serves the uploaded bytes"
    );
    let first_signature: String = browser
        .execute("return window.lastSignature.signature", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();

    // 2. The same signature again: refused, nothing stored.
    assert_eq!(attempt(&browser, "replay-button", 2).await, "refused");
    assert_eq!(text(&browser, "reason").await, "SIGNATURE_ALREADY_USED");
    assert_eq!(text(&browser, "http-status").await, "403");

    // 3. Over maxFileSize: refused before the body is read; the new signature stays unused.
    choose(&browser, &big).await;
    assert_eq!(attempt(&browser, "upload-button", 3).await, "refused");
    assert_eq!(text(&browser, "reason").await, "FILE_TOO_LARGE");
    assert_eq!(text(&browser, "http-status").await, "413");
    let big_signature: String = browser
        .execute("return window.lastSignature.signature", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(big_signature, first_signature);
    let checker = Client::connect(ClientConfig::new(stack.signer.endpoint())).unwrap();
    let state = checker.verify(&big_signature).await.unwrap().state;
    assert_eq!(
        state,
        SignatureState::Issued as i32,
        "FILE_TOO_LARGE leaves it unused"
    );
    let state = checker.verify(&first_signature).await.unwrap().state;
    assert_eq!(state, SignatureState::Completed as i32, "CompleteUpload");

    // The gateway stored exactly the one file.
    let files = flow.gateway.files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].id, file_id);
    assert_eq!(files[0].source_context, source_context);
    assert_eq!(files[0].name, "holiday.mp4");
    assert_eq!(
        std::fs::read_dir(work.path().join("storage"))
            .unwrap()
            .count(),
        1
    );

    // The app server kept exactly one verified NewFileUpload for it (vod-signer may deliver a
    // push twice: the app keeps one per webhook-id), and the page lists it.
    browser
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(&format!(
            "#uploads li[data-source-context='{source_context}'][data-event='NewFileUpload']"
        )))
        .await
        .expect("the page lists the notification");
    assert_eq!(flow.gateway.completions_pending(), 0);
    let completed: Vec<app::Notification> = flow
        .app
        .notifications()
        .into_iter()
        .filter(|n| n.source_context == source_context && n.event_type == app::NEW_FILE_UPLOAD)
        .collect();
    assert_eq!(completed.len(), 1, "{completed:?}");
    let notification = &completed[0];
    assert_eq!(notification.file_id, file_id);
    assert_eq!(notification.size, small_bytes.len() as u64);
    assert_eq!(notification.media_url, play_url);
    assert_eq!(notification.media_type, "mp4");
    assert!(notification.webhook_id.starts_with("msg_"));
    assert_eq!(notification.user.as_deref(), Some("demo"));
    assert_eq!(
        flow.app.refused_pushes(),
        0,
        "vod-signer's own pushes all verify"
    );

    // Pushes not provably vod-signer's are refused; a valid one is kept once per webhook-id.
    let now = vod_signer::clock::unix_now();
    let forged = r#"{"EventType":"NewFileUpload","FileUploadEvent":{"FileId":"forged","MediaBasicInfo":{"SourceInfo":{"SourceType":"Upload","SourceContext":"demo/forged"}}}}"#;
    let no_headers = post(&format!("{}/notify", flow.app_url), &[], forged).await;
    assert_eq!(no_headers.0, 400);
    let other = web::new_webhook_secret();
    assert_eq!(
        push(&flow.app_url, &other, "msg_forged", now, forged).await,
        401
    );
    let stale = now - 600;
    assert_eq!(
        push(&flow.app_url, &secret, "msg_stale", stale, forged).await,
        401
    );
    assert_eq!(flow.app.refused_pushes(), 3);
    assert_eq!(
        push(&flow.app_url, &secret, "msg_twice", now, forged).await,
        200
    );
    assert_eq!(
        push(&flow.app_url, &secret, "msg_twice", now, forged).await,
        200
    );
    let kept = flow.app.notifications();
    assert_eq!(
        kept.iter().filter(|n| n.webhook_id == "msg_twice").count(),
        1
    );
    assert!(
        kept.iter()
            .all(|n| !n.webhook_id.contains("forged") && n.webhook_id != "msg_stale")
    );
    let listed = browser
        .find_all(Locator::Css("#uploads li[data-event='NewFileUpload']"))
        .await
        .unwrap()
        .len();
    assert_eq!(listed, 1);

    // 4. An upload cut off mid-body (a raw socket: a browser cannot be made to do it): the
    // gateway consumed its signature, never stores the file nor completes it, so vod-signer
    // marks it ABANDONED after the completion window and tells the app server.
    let (status, cookie, _) = post(
        &format!("{}/login", flow.app_url),
        &[("content-type", "application/json".into())],
        r#"{"user": "demo", "password": "demo"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let session = cookie.split(';').next().unwrap().to_owned();
    let (status, _, grant) = post(
        &format!("{}/signature", flow.app_url),
        &[("cookie", session)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let grant: serde_json::Value = serde_json::from_slice(&grant).unwrap();
    let cut_signature = grant["signature"].as_str().unwrap().to_owned();
    let cut_context = grant["source_context"].as_str().unwrap().to_owned();
    let gateway_addr: SocketAddr = flow
        .gateway_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut socket = TcpStream::connect(gateway_addr).unwrap();
    write!(
        socket,
        "POST /upload HTTP/1.1\r\nHost: {gateway_addr}\r\nx-vod-signature: {cut_signature}\r\n\
         content-type: video/mp4\r\ncontent-length: 200000\r\n\r\n"
    )
    .unwrap();
    socket.write_all(&[0u8; 50_000]).unwrap();
    // Cut only once the gateway has consumed (it does before reading the body).
    eventually(
        Duration::from_secs(10),
        "the cut-off upload consumed",
        async || {
            checker.verify(&cut_signature).await.unwrap().state == SignatureState::Consumed as i32
        },
    )
    .await;
    drop(socket);
    eventually(
        COMPLETION_WINDOW + Duration::from_secs(30),
        "the UploadAbandoned push",
        async || {
            flow.app
                .notifications()
                .iter()
                .any(|n| n.source_context == cut_context && n.event_type == app::UPLOAD_ABANDONED)
        },
    )
    .await;
    let abandoned = flow
        .app
        .notifications()
        .into_iter()
        .find(|n| n.source_context == cut_context)
        .unwrap();
    assert_eq!(abandoned.event_type, app::UPLOAD_ABANDONED);
    assert_eq!(abandoned.user.as_deref(), Some("demo"));
    assert_eq!(abandoned.file_id, "");
    let state = checker.verify(&cut_signature).await.unwrap().state;
    assert_eq!(state, SignatureState::Abandoned as i32);
    assert_eq!(
        flow.gateway.files().len(),
        1,
        "the cut-off upload was not kept"
    );
    // The page lists it once it asks the app server again.
    browser
        .execute("return refreshUploads().then(() => true)", vec![])
        .await
        .unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&format!(
            "#uploads li[data-source-context='{cut_context}'][data-event='UploadAbandoned']"
        )))
        .await
        .expect("the page lists the abandoned upload");

    // A screenshot of the page, as a test artifact.
    let png = browser.screenshot().await.unwrap();
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("upload-flow.png");
    std::fs::write(&artifact, &png).unwrap();
    eprintln!("upload_flow: screenshot in {}", artifact.display());

    browser.close().await.unwrap();
    // vod-signer never logged a signature, nor the notification secret.
    let log = stack.signer.log.lock().unwrap().join("\n");
    for signature in [&first_signature, &big_signature, &cut_signature] {
        assert!(!log.contains(signature.as_str()), "a signature was logged");
    }
    assert!(
        !log.contains(secret.trim_start_matches("whsec_")),
        "the secret was logged"
    );
    eprintln!("upload_flow: {:?}", started.elapsed());
}
