//! A TCP proxy between the service and a real `redis-server` that a test can slow down,
//! stall (black-hole), make lose replies, or cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    Pass,
    /// Forward replies this long after they arrive (latency, not a queue).
    Delay(Duration),
    /// Hold every chunk (both ways) until the fault changes: a black hole that keeps
    /// connections open and answers nothing.
    Stall,
    /// Forward requests, but from the first reply on, deliver no reply on that connection ever
    /// again (the connection stays open until its client closes it): the commands ran on
    /// Redis, the client never hears of them. Requests keep flowing, so a command sent on
    /// a connection after an earlier reply (say a health `PING`'s) was lost still reaches
    /// Redis. New connections are affected too while the fault lasts.
    LoseReplies,
    /// Refuse new connections (accept and close at once).
    Refuse,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    /// The port the service should connect to.
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    connections: Arc<Mutex<Vec<Carried>>>,
    accept: JoinHandle<()>,
    /// Connections that lost their replies so far (by [`Fault::LoseReplies`]).
    lost: Arc<tokio::sync::watch::Sender<usize>>,
}

/// One carried connection, and whether it went dark.
struct Carried {
    task: JoinHandle<()>,
    dark: Arc<AtomicBool>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let connections: Arc<Mutex<Vec<Carried>>> = Arc::default();
        let lost = Arc::new(tokio::sync::watch::Sender::new(0));
        let (f, conns, l) = (fault.clone(), connections.clone(), lost.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *f.lock().unwrap() == Fault::Refuse {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let dark = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(carry(client, server, f.clone(), dark.clone(), l.clone()));
                let mut conns = conns.lock().unwrap();
                conns.retain(|c| !c.task.is_finished());
                conns.push(Carried { task, dark });
            }
        });
        FaultProxy {
            port,
            fault,
            connections,
            accept,
            lost,
        }
    }

    /// Waits until `n` connections in all lost their replies by [`Fault::LoseReplies`].
    pub async fn replies_lost(&self, n: usize) {
        let mut lost = self.lost.subscribe();
        let _ = lost.wait_for(|lost| *lost >= n).await;
    }

    /// `redis://127.0.0.1:PORT/0` through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Changes the fault; connections open now are affected too.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Closes every open connection, both ways.
    pub fn cut_all(&self) {
        for carried in self.connections.lock().unwrap().drain(..) {
            carried.task.abort();
        }
    }

    /// The connections open now go dark for good (bytes held both ways, no reset: a dead
    /// host, or a stale conntrack entry after the server moved); new connections pass.
    /// Returns how many went dark.
    pub fn darken_open_connections(&self) -> usize {
        let conns = self.connections.lock().unwrap();
        let open: Vec<&Carried> = conns.iter().filter(|c| !c.task.is_finished()).collect();
        for carried in &open {
            carried.dark.store(true, Ordering::SeqCst);
        }
        open.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn carry(
    client: TcpStream,
    server: TcpStream,
    fault: Arc<Mutex<Fault>>,
    dark: Arc<AtomicBool>,
    lost: Arc<tokio::sync::watch::Sender<usize>>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let requests = pump(client_read, server_write, fault.clone(), dark.clone(), None);
    let replies = pump(server_read, client_write, fault, dark, Some(lost));
    // When either direction ends (or is cut), the connection is closed both ways.
    tokio::select! {
        () = requests => {}
        () = replies => {}
    }
}

/// Carries one direction: a reader stamps each chunk with the time it may leave, a writer
/// sends chunks in order once due, so a delay is latency, not a queue.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    fault: Arc<Mutex<Fault>>,
    dark: Arc<AtomicBool>,
    // Replies only: counts the replies lost.
    replies_lost: Option<Arc<tokio::sync::watch::Sender<usize>>>,
) {
    let is_reply = replies_lost.is_some();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read_fault = fault.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut deaf = false;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = *read_fault.lock().unwrap();
            if is_reply && (deaf || now == Fault::LoseReplies) {
                // Once a reply is lost no later one may arrive: TCP does not drop bytes
                // mid-stream, so the connection stays deaf for good.
                if !deaf {
                    deaf = true;
                    if let Some(lost) = &replies_lost {
                        lost.send_modify(|n| *n += 1);
                    }
                }
                continue;
            }
            let delay = match now {
                // Only replies are delayed: one-way latency on the way back.
                Fault::Delay(d) if is_reply => d,
                _ => Duration::ZERO,
            };
            if tx
                .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while *fault.lock().unwrap() == Fault::Stall || dark.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The writer drains what was read before the reader ended.
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}
