//! How simulate_client connects: plain TCP, or TLS over it with `--tls` (the proxy terminates
//! TLS, so https and wss load go through the same code), verified against `--cacert`, the
//! bundled Mozilla roots, or nothing with `--insecure` (as curl's `-k`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned,
};
use rustls_pki_types::pem::PemObject;

use super::ClientArgs;

/// A connection to the proxy.
pub enum Dialed {
    Plain(TcpStream),
    /// Boxed: rustls' state is large.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Dialed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Dialed::Plain(s) => s.read(buf),
            Dialed::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Dialed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Dialed::Plain(s) => s.write(buf),
            Dialed::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Dialed::Plain(s) => s.flush(),
            Dialed::Tls(s) => s.flush(),
        }
    }
}

/// Opens connections as the arguments say.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    timeout: Duration,
}

impl Dialer {
    /// From `--tls`, `--cacert`, `--insecure` and `--servername` (default: the target's host).
    pub fn new(args: &ClientArgs, target: SocketAddr) -> io::Result<Dialer> {
        let timeout = Duration::from_millis(args.timeout_ms);
        if !args.tls {
            if args.cacert.is_some() || args.insecure {
                let e = "--cacert and --insecure go with --tls (the proxy's listener must speak TLS)";
                return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
            }
            return Ok(Dialer { tls: None, timeout });
        }
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?;
        let config = if args.insecure {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify)).with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            match &args.cacert {
                Some(path) => {
                    let bad = |e: String| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("--cacert {}: {e}", path.display()),
                        )
                    };
                    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
                    }
                    if roots.is_empty() {
                        return Err(bad("no CA certificate in the file".into()));
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let name = match &args.servername {
            Some(n) => ServerName::try_from(n.clone()),
            None => Ok(ServerName::from(target.ip())),
        }
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("--servername: {e}")))?;
        Ok(Dialer { tls: Some((Arc::new(config), name)), timeout })
    }

    /// Whether connections speak TLS (for `https://` and `wss://` in URLs).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects (and, with TLS, shakes hands), with the read timeout and `TCP_NODELAY` set.
    pub fn dial(&self, target: SocketAddr) -> io::Result<Dialed> {
        let sock = TcpStream::connect_timeout(&target, self.timeout)?;
        let _ = sock.set_read_timeout(Some(self.timeout));
        let _ = sock.set_write_timeout(Some(self.timeout));
        let _ = sock.set_nodelay(true);
        let Some((config, name)) = &self.tls else { return Ok(Dialed::Plain(sock)) };
        let conn = ClientConnection::new(config.clone(), name.clone()).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        // The handshake now, so a certificate problem is reported as one.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
        }
        Ok(Dialed::Tls(Box::new(tls)))
    }
}

/// `--insecure`: accepts any certificate, as curl's `-k`. For trying things on one's own
/// machine only; the signatures are still checked by rustls' own algorithms.
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = crate::tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = crate::tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::provider().signature_verification_algorithms.supported_schemes()
    }
}
