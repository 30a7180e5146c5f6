//! TLS on the HTTP API (rustls, ring's provider, TLS 1.2 and 1.3): the node's certificate, reloaded when
//! its files change or on SIGHUP; optionally client certificates required (mutual TLS); and the client side
//! a node uses to reach another's API (forwarding to the leader, `/nodes` probes) and `bop`'s client
//! subcommands use.
//!
//! - [`HttpTls::from_pem_files`]: `--http-tls-cert`, `--http-tls-key` (the node's certificate chain and
//!   key) and `--http-tls-ca` (the CA that the nodes' HTTP certificates chain to, trusted when one node
//!   calls another), and optionally `--http-tls-client-ca`: clients must present a certificate of that CA.
//!   With it, a node calling another presents its own HTTP certificate, which must then chain to that CA.
//! - [`HttpTls::reload`] reads the certificate and key again; a pair that does not load is refused and the
//!   one in use stays (logged). New connections get the new certificate; open ones keep theirs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| invalid(&path.display().to_string(), e))
}

fn certs(pem: &[u8], what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(what, e))?;
    if certs.is_empty() {
        return Err(invalid(what, "no certificate in the PEM"));
    }
    Ok(certs)
}

fn roots(pem: &[u8], what: &str) -> io::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certs(pem, what)? {
        roots.add(cert).map_err(|e| invalid(what, e))?;
    }
    Ok(Arc::new(roots))
}

/// The certificate in use, swapped whole on reload.
#[derive(Debug)]
struct CurrentKey(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read()))
    }
}

impl ResolvesClientCert for CurrentKey {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read()))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A certificate chain and key from PEM, checked to belong together.
fn certified_key(cert: &[u8], key: &[u8]) -> io::Result<CertifiedKey> {
    let chain = certs(cert, "HTTP certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("HTTP key", e))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| invalid("HTTP key", e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| invalid("HTTP certificate and key", e))?;
    Ok(certified)
}

/// A node's TLS on its HTTP API, and what it trusts when it calls another node's.
pub struct HttpTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: Arc<CurrentKey>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    mutual: bool,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls").field("cert", &self.cert_path).field("mutual", &self.mutual).finish()
    }
}

impl HttpTls {
    /// From PEM files: this node's certificate chain and key, the CA the nodes' HTTP certificates chain to,
    /// and optionally the CA clients must present a certificate of.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        ca: &Path,
        client_ca: Option<&Path>,
    ) -> io::Result<HttpTls> {
        let current = Arc::new(CurrentKey(RwLock::new(Arc::new(certified_key(&read(cert)?, &read(key)?)?))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", e))?;
        let server = match client_ca {
            Some(path) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    roots(&read(path)?, "HTTP client CA certificate")?,
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| invalid("HTTP client verifier", e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = server.with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", e))?
            .with_root_certificates(roots(&read(ca)?, "HTTP CA certificate")?);
        let client = if client_ca.is_some() {
            client.with_client_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesClientCert>)
        } else {
            client.with_no_client_auth()
        };
        Ok(HttpTls {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current,
            server: Arc::new(server),
            client: Arc::new(client),
            mutual: client_ca.is_some(),
        })
    }

    /// Reads the certificate and key again and serves them to new connections; on any error the
    /// certificate in use stays.
    pub fn reload(&self) -> io::Result<()> {
        let fresh = certified_key(&read(&self.cert_path)?, &read(&self.key_path)?)?;
        *self.current.0.write() = Arc::new(fresh);
        Ok(())
    }

    /// The client configuration a node uses to call another node's HTTP API.
    pub fn client(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }

    /// Accepts TLS over `stream`.
    pub async fn accept<S>(&self, stream: S) -> io::Result<tokio_rustls::server::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server)).accept(stream).await
    }

    /// The modification times and sizes of the certificate and key files (a change means: reload).
    fn stamp(&self) -> Option<[(std::time::SystemTime, u64); 2]> {
        let stamp =
            |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Some([stamp(&self.cert_path)?, stamp(&self.key_path)?])
    }

    /// Reloads the certificate whenever its files change (checked every [`RELOAD_POLL`]) or the process
    /// gets SIGHUP, until dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = self.stamp();
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                () = hangup => "SIGHUP",
                () = tokio::time::sleep(RELOAD_POLL) => {
                    let now = self.stamp();
                    if now == seen || now.is_none() {
                        continue;
                    }
                    "its files changed"
                }
            };
            seen = self.stamp();
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.cert_path.display(), "HTTP certificate reloaded ({why})")
                }
                Err(e) => tracing::error!(
                    cert = %self.cert_path.display(),
                    "HTTP certificate not reloaded ({why}): {e}; the one in use stays"
                ),
            }
        }
    }
}

/// How often [`HttpTls::watch`] looks at the certificate's files.
pub const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The client configuration for `bop`'s client subcommands: trust the CA in `ca` (PEM).
pub fn client_trusting(ca: &Path) -> io::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", e))?
        .with_root_certificates(roots(&read(ca)?, "CA certificate")?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens TLS over `stream` to `addr` (`HOST:PORT`; the certificate must be valid for HOST, a DNS name or
/// an IP address).
pub async fn connect<S>(
    config: &Arc<ClientConfig>,
    stream: S,
    addr: &str,
) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let host = addr.rsplit_once(':').map(|(host, _)| host).unwrap_or(addr);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|e| invalid(&format!("host {host:?}"), e))?;
    tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, stream).await
}
