//! TLS on the Raft transport: mutual TLS between nodes, every certificate chaining to the cluster's CA,
//! and a node's certificate naming its node id.
//!
//! A node's certificate carries the DNS subject alternative name `bop-node-<ID>` ([`node_name`]). A client
//! dialling node `to` accepts only a server certificate valid for `bop-node-<to>`; a server accepts only
//! clients with a certificate of the CA, and once the hello arrived, only if that certificate is valid for
//! `bop-node-<from>` of the hello (so a node cannot speak as another). Providers are ring's; protocol
//! versions TLS 1.2 and 1.3 (rustls's safe defaults).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The DNS name a node's certificate carries for node id `id`.
pub fn node_name(id: u64) -> String {
    format!("bop-node-{id}")
}

/// A node's TLS material for the transport: what it presents, and the CA it accepts peers of.
#[derive(Clone)]
pub struct TransportTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TransportTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportTls")
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

impl TransportTls {
    /// From PEM files: the cluster CA's certificate(s), this node's certificate chain, and its private key.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> io::Result<TransportTls> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| invalid(&path.display().to_string(), e));
        TransportTls::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    /// From PEM bytes, as [`TransportTls::from_pem_files`].
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> io::Result<TransportTls> {
        let certs = |pem: &[u8], what: &str| -> io::Result<Vec<CertificateDer<'static>>> {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(what, e))?;
            if certs.is_empty() {
                return Err(invalid(what, "no certificate in the PEM"));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca in certs(ca, "CA certificate")? {
            roots.add(ca).map_err(|e| invalid("CA certificate", e))?;
        }
        let roots = Arc::new(roots);
        let chain = certs(cert, "node certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("node key", e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| invalid("client verifier", e))?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| invalid("node certificate and key", e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid("node certificate and key", e))?;
        Ok(TransportTls { server: Arc::new(server), client: Arc::new(client) })
    }

    /// Opens TLS over `stream` to node `to`, whose certificate must name it.
    pub(super) async fn connect<S>(
        &self,
        stream: S,
        to: u64,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(node_name(to)).map_err(|e| invalid("node name", e))?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.client)).connect(name, stream).await
    }

    /// Accepts TLS over `stream`: the client presented a certificate of the CA. Returns the stream and that
    /// certificate, for the hello's check.
    pub(super) async fn accept<S>(
        &self,
        stream: S,
    ) -> io::Result<(tokio_rustls::server::TlsStream<S>, CertificateDer<'static>)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let stream = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server)).accept(stream).await?;
        let cert =
            stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).cloned().ok_or_else(
                || io::Error::new(io::ErrorKind::PermissionDenied, "the peer presented no certificate"),
            )?;
        Ok((stream, cert))
    }
}

/// Whether `cert` is valid for node `id`'s name (its chain was verified by the handshake).
pub(super) fn names_node(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(name) = ServerName::try_from(node_name(id)) else { return false };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// One node's certificate and key from [`throwaway_pki`], PEM: (node id, certificate, key).
pub type NodePem = (u64, String, String);

/// A throwaway cluster CA and node certificates (for `bop up --tls` and tests): PEM of the CA certificate,
/// and per node id its certificate and key. Node certificates also name `localhost` and `127.0.0.1`.
pub fn throwaway_pki(ids: &[u64]) -> io::Result<(String, Vec<NodePem>)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let fail = |e: rcgen::Error| io::Error::other(format!("generating certificates: {e}"));
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "bop throwaway cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(fail)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut nodes = Vec::with_capacity(ids.len());
    for &id in ids {
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::new(vec![node_name(id), "localhost".into(), "127.0.0.1".into()])
            .map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, node_name(id));
        let cert = params.signed_by(&key, &issuer).map_err(fail)?;
        nodes.push((id, cert.pem(), key.serialize_pem()));
    }
    Ok((ca_cert.pem(), nodes))
}

/// [`throwaway_pki`] written to `dir` (created if missing) for tools and tests that take PEM files:
/// `ca.pem`, and per node id `ID.pem` and `ID-key.pem` (readable by the owner only). Returns the CA's PEM.
pub fn write_throwaway_pki(dir: &std::path::Path, ids: &[u64]) -> io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (ca, certs) = throwaway_pki(ids)?;
    std::fs::create_dir_all(dir)?;
    let write = |name: String, pem: &str, mode: u32| -> io::Result<()> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path)?;
        file.write_all(pem.as_bytes())
    };
    write("ca.pem".into(), &ca, 0o644)?;
    for (id, cert, key) in certs {
        write(format!("{id}.pem"), &cert, 0o644)?;
        write(format!("{id}-key.pem"), &key, 0o600)?;
    }
    Ok(ca)
}

/// A client's connection to a peer: plain, or TLS over it.
pub enum PeerStream<S> {
    /// No TLS.
    Plain(S),
    /// TLS over the connection.
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for PeerStream<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for PeerStream<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
