//! TLS on the gRPC port (rustls), optional client-certificate verification (mTLS), and
//! reloading of the certificate files when they change on disk (cert-manager rotates them
//! under a running pod), without dropping the server or its open connections.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, error, info, warn};

use crate::report::Chain;
use crate::shutdown::Shutdown;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate files (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA bundle for client certificates; set, every client must present one it signed.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or is not PEM.
    #[error("TLS certificate {}", path.display())]
    Cert {
        /// Path of the certificate file (`--tls-cert`).
        path: PathBuf,
        /// Why it cannot be read.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("TLS certificate {}: no certificate in it", path.display())]
    NoCert {
        /// Path of the certificate file (`--tls-cert`).
        path: PathBuf,
    },
    /// The key file cannot be read or holds no private key.
    #[error("TLS key {}", path.display())]
    Key {
        /// Path of the key file (`--tls-key`).
        path: PathBuf,
        /// Why it cannot be read.
        source: rustls_pki_types::pem::Error,
    },
    /// The client CA bundle cannot be read or is not PEM.
    #[error("TLS client CA {}", path.display())]
    ClientCa {
        /// Path of the client CA file (`--tls-client-ca`).
        path: PathBuf,
        /// Why it cannot be read.
        source: rustls_pki_types::pem::Error,
    },
    /// The client CA bundle holds no certificate rustls can use.
    #[error("TLS client CA {}: no usable CA certificate", path.display())]
    NoClientCa {
        /// Path of the client CA file (`--tls-client-ca`).
        path: PathBuf,
    },
    /// The client CA bundle cannot verify client certificates.
    #[error("TLS client CA {}", path.display())]
    Verifier {
        /// Path of the client CA file (`--tls-client-ca`).
        path: PathBuf,
        /// What rustls said.
        source: tokio_rustls::rustls::server::VerifierBuilderError,
    },
    /// The certificate and the key do not make a usable pair.
    #[error("TLS certificate {} and key {}", cert.display(), key.display())]
    CertAndKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: tokio_rustls::rustls::Error,
    },
}

/// Installs rustls' ring provider as the process default (the Redis client's TLS uses it too).
pub fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key]
            .into_iter()
            .chain(self.client_ca.as_ref())
    }

    /// The files' modification times, to notice a rotation.
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Reads the files into a rustls server configuration (HTTP/2 only, as gRPC needs).
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        install_crypto_provider();
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::Cert {
                path: self.cert.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCert {
                path: self.cert.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| TlsError::Key {
            path: self.key.clone(),
            source,
        })?;
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|source| TlsError::ClientCa {
                        path: ca.clone(),
                        source,
                    })?;
                let (added, _) = roots.add_parsable_certificates(cas);
                if added == 0 {
                    return Err(TlsError::NoClientCa { path: ca.clone() });
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        path: ca.clone(),
                        source,
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder
                .with_single_cert(certs, key)
                .map_err(|source| TlsError::CertAndKey {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                    source,
                })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A TLS acceptor whose configuration is swapped when the files change.
#[derive(Clone)]
pub struct ReloadingAcceptor {
    current: Arc<ArcSwap<TlsAcceptor>>,
    /// Its tasks (reloading, accepting, handshakes) end on it.
    tasks: Shutdown,
}

impl ReloadingAcceptor {
    /// Loads `files` now (an error stops the start), then re-reads them every `interval` when
    /// their modification times change, until `tasks` shuts down. A failed reload keeps the
    /// previous configuration.
    pub fn start(
        files: TlsFiles,
        interval: Duration,
        tasks: &Shutdown,
    ) -> Result<ReloadingAcceptor, TlsError> {
        let config = files.load()?;
        let current = Arc::new(ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(config))));
        let swap = current.clone();
        let stop = tasks.clone();
        tasks.spawn(async move {
            let mut stamp = files.stamp();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stop.requested() => return,
                }
                let now = files.stamp();
                if now == stamp {
                    continue;
                }
                stamp = now;
                match files.load() {
                    Ok(config) => {
                        swap.store(Arc::new(TlsAcceptor::from(Arc::new(config))));
                        info!("TLS certificate files changed: reloaded");
                    }
                    Err(e) => error!(
                        "TLS certificate files changed but cannot be loaded ({}); keeping the previous ones",
                        Chain(&e)
                    ),
                }
            }
        });
        Ok(ReloadingAcceptor {
            current,
            tasks: tasks.clone(),
        })
    }

    /// Accepts TCP connections on `listener` and yields those that complete a TLS handshake,
    /// until the stream is dropped or shutdown.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let current = self.current.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                    () = tasks.requested() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                // See server::nodelay: without it every answer waits for a delayed ACK.
                let _ = tcp.set_nodelay(true);
                let acceptor = current.load_full();
                let tx = tx.clone();
                let stop = tasks.requested();
                tasks.spawn(async move {
                    tokio::pin!(stop);
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let handshake = tokio::select! {
                        handshake = handshake => handshake,
                        () = &mut stop => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => {
                            // The server no longer taking connections (draining) must not
                            // hold this task.
                            tokio::select! {
                                _ = tx.send(Ok(tls)) => {}
                                () = &mut stop => {}
                            }
                        }
                        Ok(Err(e)) => debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}
