//! A real HTTP receiver of pushed notifications, as an app server runs one: it records every
//! POST (headers and body) and answers as the test tells it (2xx, an error status, or never).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One POST as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
    /// The raw body.
    pub body: Vec<u8>,
    /// What the receiver answered (`None`: it never answered).
    pub answered: Option<u16>,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How the receiver answers a POST, given how many came before it.
pub type Answer = Arc<dyn Fn(usize) -> Option<StatusCode> + Send + Sync>;

/// What the receiver got and how it answers; a handle any thread may hold.
#[derive(Clone)]
pub struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
    delay: Arc<Mutex<Duration>>,
}

impl Shared {
    /// Answers with `answer` from now on.
    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Takes this long to answer from now on (a slow receiver).
    pub fn delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }
}

/// The receiver, serving on a free loopback port until dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn hook(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answer = shared.answer.lock().unwrap().clone();
    let status = {
        // Counted and recorded under one lock: concurrent pushes each get their own number.
        let mut received = shared.received.lock().unwrap();
        let status = answer(received.len());
        received.push(Received {
            id: header(&headers, "webhook-id"),
            timestamp: header(&headers, "webhook-timestamp").parse().unwrap_or(0),
            signature: header(&headers, "webhook-signature"),
            body: body.to_vec(),
            answered: status.map(|s| s.as_u16()),
            at: std::time::Instant::now(),
        });
        status
    };
    let delay = *shared.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    match status {
        Some(status) => status,
        // Never answers: the pusher's attempt timeout must end it.
        None => std::future::pending::<StatusCode>().await,
    }
}

impl Receiver {
    /// A receiver answering 200 to everything.
    pub async fn start() -> Receiver {
        Receiver::answering(Arc::new(|_| Some(StatusCode::OK))).await
    }

    /// A receiver answering with `answer`.
    pub async fn answering(answer: Answer) -> Receiver {
        Receiver::serving(Receiver::new_shared(answer), "127.0.0.1:0".parse().unwrap()).await
    }

    /// A receiver on `addr` recording into (and answering as) `shared`: a receiver that
    /// stopped and starts again keeps what it received.
    pub async fn serving(shared: Shared, addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    /// The URL vod-signer pushes to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// A handle on what it receives and how it answers.
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// A fresh record and `answer`, for [`Receiver::serving`].
    pub fn new_shared(answer: Answer) -> Shared {
        Shared {
            received: Arc::default(),
            answer: Arc::new(Mutex::new(answer)),
            delay: Arc::default(),
        }
    }

    /// Answers with `answer` from now on.
    pub fn answer(&self, answer: Answer) {
        self.shared.answer(answer);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received()
    }

    /// Waits (at most `within`) until `done` holds for what was received.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {within:?}; received {} pushes",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
