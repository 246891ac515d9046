//! TLS: the material here, and the plain-or-TLS stream with its handshakes in [`stream`].
//!
//! The material: the listener's certificates (default and per SNI name) loaded from `[tls]`,
//! checked as pairs, and swapped whole on SIGHUP; and the client configuration for `tls`
//! backends (verified against `[tls] backend_ca`, else the bundled Mozilla roots).
//!
//! Everything is loaded before it is used: a bad path, certificate or key is a [`ConfigError`]
//! naming the line (or flag) that named the file, so `--check` and a reload report it the same
//! way, and a reload that fails leaves the running certificates in place.

pub mod stream;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, Origin, TlsFile, TlsSettings, TlsVersion};

/// The crypto provider every TLS object here uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static FROM_1_2: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
static FROM_1_3: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::V1_2 => &FROM_1_2,
        TlsVersion::V1_3 => &FROM_1_3,
    }
}

/// Serves the certificate whose name matches the client's SNI, else the default one.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    names: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name().and_then(|n| self.names.get(&n.to_ascii_lowercase()));
        Some(named.unwrap_or(&self.default).clone())
    }
}

/// The listener's TLS configuration, replaced whole on reload: connections that started with
/// the old one keep it (each holds its own `Arc`).
pub struct Listener {
    current: RwLock<Configs>,
    /// HTTP mode: ALPN `http/1.1` is advertised.
    alpn: bool,
}

/// One configuration in two forms: choosing ALPN `http/1.1` (HTTP mode), and choosing none, for
/// a client that offers only protocols this listener does not speak.
struct Configs {
    alpn: Arc<ServerConfig>,
    none: Arc<ServerConfig>,
}

impl Configs {
    fn new(config: Arc<ServerConfig>) -> Configs {
        let mut none = (*config).clone();
        none.alpn_protocols.clear();
        Configs { alpn: config, none: Arc::new(none) }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tls::Listener")
    }
}

impl Listener {
    /// Loads the listener's material; `Ok(None)` when `[tls]` has no `cert`/`key`. `alpn`
    /// (HTTP mode) advertises ALPN `http/1.1`.
    pub fn load(
        settings: &TlsSettings,
        file: &str,
        alpn: bool,
    ) -> Result<Option<Listener>, Vec<ConfigError>> {
        Ok(server_config(settings, file, alpn)?
            .map(|c| Listener { current: RwLock::new(Configs::new(c)), alpn }))
    }

    /// The configuration for a new connection whose ClientHello is `hello`. A client that offers
    /// ALPN without `http/1.1` (only `h2`, only `http/1.0`) completes the handshake with no
    /// protocol chosen and is spoken to in HTTP/1.1, as nginx does, rather than refused with a
    /// `no_application_protocol` alert.
    pub fn config_for(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let configs = self.current.read();
        let offered: Option<Vec<&[u8]>> = hello.alpn().map(Iterator::collect);
        match offered {
            Some(protocols) if self.alpn && !protocols.contains(&&b"http/1.1"[..]) => {
                log::debug!(
                    "TLS client offered ALPN {:?} without http/1.1: none chosen, HTTP/1.1 spoken",
                    protocols.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>()
                );
                configs.none.clone()
            }
            _ => configs.alpn.clone(),
        }
    }

    /// Loads `settings` again and swaps them in; on any error the running material stays and
    /// the errors come back. New connections get the new certificates, open ones keep theirs.
    pub fn reload(&self, settings: &TlsSettings, file: &str) -> Result<(), Vec<ConfigError>> {
        match server_config(settings, file, self.alpn)? {
            Some(c) => {
                *self.current.write() = Configs::new(c);
                Ok(())
            }
            None => Err(vec![ConfigError {
                file: file.to_string(),
                origin: Origin::File,
                key: "[tls]".to_string(),
                message:
                    "cert and key removed: a running listener cannot stop speaking TLS (restart instead)"
                        .to_string(),
            }]),
        }
    }
}

fn error(file: &str, f: &TlsFile, message: String) -> ConfigError {
    ConfigError { file: file.to_string(), origin: f.origin.clone(), key: format!("[tls] {}", f.key), message }
}

/// Which file of a pair a problem is in.
enum PairFile {
    Cert,
    Key,
}

/// A certificate chain and its key, read from PEM and checked to belong together; an error
/// says which file it is about, so the message names that file's line.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, (PairFile, String)> {
    let show = |p: &Path| p.display().to_string();
    let in_cert = |m: String| (PairFile::Cert, m);
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| in_cert(format!("{}: {}", show(cert), pem_error(e))))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| in_cert(format!("{}: {}", show(cert), pem_error(e))))?;
    if chain.is_empty() {
        return Err(in_cert(format!("{}: no CERTIFICATE in the file", show(cert))));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| (PairFile::Key, format!("{}: {}", show(key), pem_error(e))))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| (PairFile::Key, format!("{}: unusable private key: {e}", show(key))))?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) => Ok(pair),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(pair),
        Err(e) => Err(in_cert(format!("{} and {} do not belong together: {e}", show(cert), show(key)))),
    }
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind in the file".into(),
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        other => format!("invalid PEM: {other:?}"),
    }
}

/// Builds the listener's configuration: the default pair, the `sni_dir` pairs, the minimum
/// version, and ALPN `http/1.1` when `alpn` (HTTP mode). `Ok(None)` without cert/key.
fn server_config(
    settings: &TlsSettings,
    file: &str,
    alpn: bool,
) -> Result<Option<Arc<ServerConfig>>, Vec<ConfigError>> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else { return Ok(None) };
    let provider = provider();
    let default = load_pair(&cert.path, &key.path, &provider).map_err(|(which, m)| match which {
        PairFile::Key => vec![error(file, key, m)],
        PairFile::Cert => vec![error(file, cert, m)],
    })?;
    let mut names = HashMap::new();
    if let Some(dir) = &settings.sni_dir {
        names = load_sni_dir(&dir.path, &provider).map_err(|m| vec![error(file, dir, m)])?;
    }
    let resolver = BySni { default: Arc::new(default), names };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(settings.min_version))
        .map_err(|e| vec![error(file, cert, e.to_string())])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // HTTP mode: a client offering h2 learns that this listener speaks HTTP/1.1 only. TCP mode
    // advertises nothing, so any client ALPN passes through unanswered.
    if alpn {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Some(Arc::new(config)))
}

/// `NAME.pem` + `NAME.key` pairs in `dir`, by lowercase NAME.
fn load_sni_dir(dir: &Path, provider: &CryptoProvider) -> Result<HashMap<String, Arc<CertifiedKey>>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names = HashMap::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "pem") {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            let key = path.with_extension("key");
            let pair = load_pair(&path, &key, provider).map_err(|(_, m)| m)?;
            names.insert(name.to_ascii_lowercase(), Arc::new(pair));
        }
    }
    Ok(names)
}

/// The configuration for connecting to `tls` backends: verified against `backend_ca` when
/// given, else the bundled Mozilla roots.
pub fn backend_config(settings: &TlsSettings, file: &str) -> Result<Arc<ClientConfig>, Vec<ConfigError>> {
    let mut roots = RootCertStore::empty();
    match &settings.backend_ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(&ca.path)
                .map_err(|e| vec![error(file, ca, format!("{}: {}", ca.path.display(), pem_error(e)))])?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| vec![error(file, ca, format!("{}: {}", ca.path.display(), pem_error(e)))])?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                let m = format!("{}: no usable CA certificate in the file", ca.path.display());
                return Err(vec![error(file, ca, m)]);
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(settings.min_version))
        .map_err(|e| {
            vec![ConfigError {
                file: file.to_string(),
                origin: Origin::File,
                key: "[tls]".into(),
                message: e.to_string(),
            }]
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// TLS to backends: the client configuration, and which `[backends]` keys use TLS with which
/// server name. Replaced whole on reload.
pub struct Backends {
    current: RwLock<(Arc<ClientConfig>, HashMap<String, String>)>,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tls::Backends")
    }
}

impl Backends {
    /// Loads the CA (`backend_ca`, else the bundled roots) and the `tls` backends' names.
    pub fn load(config: &crate::config::Config) -> Result<Backends, Vec<ConfigError>> {
        let client = backend_config(&config.tls, &config.file)?;
        Ok(Backends { current: RwLock::new((client, names(config))) })
    }

    /// Takes the backends and CA of a reloaded configuration; on error the running ones stay.
    pub fn reload(&self, config: &crate::config::Config) -> Result<(), Vec<ConfigError>> {
        let client = backend_config(&config.tls, &config.file)?;
        *self.current.write() = (client, names(config));
        Ok(())
    }

    /// The client configuration and server name for the backend line `spec` (of any pool),
    /// when it is a TLS backend.
    pub fn get(&self, spec: &str) -> Option<(Arc<ClientConfig>, String)> {
        let current = self.current.read();
        current.1.get(spec).map(|name| (current.0.clone(), name.clone()))
    }
}

fn names(config: &crate::config::Config) -> HashMap<String, String> {
    // Every pool's: names are unique across pools. (Only `[backends]`' were, and a pool's `tls`
    // member was connected in plain text.)
    config.every_backend().filter_map(|b| b.tls.clone().map(|sni| (b.name.clone(), sni))).collect()
}

/// Loads everything `[tls]` names, for `--check` and start: the listener's pairs and the
/// backend CA.
pub fn check(settings: &TlsSettings, file: &str, backends_use_tls: bool) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    if let Err(e) = server_config(settings, file, false) {
        errors.extend(e);
    }
    if settings.backend_ca.is_some() || backends_use_tls {
        if let Err(e) = backend_config(settings, file) {
            errors.extend(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
