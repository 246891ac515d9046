//! The `[tls]` keys of the key table (see [`super::KEYS`]): the listener's certificates and
//! the CA for TLS backends. Paths only; `crate::tls` loads the files.

use super::{flagged, key, Key, Kind};
use crate::config::{TlsFile, TlsVersion};

fn tls_path(f: &Option<TlsFile>) -> String {
    f.as_ref().map(|f| f.path.display().to_string()).unwrap_or_default()
}

/// The TLS versions `[tls] min_version` takes.
pub const TLS_VERSIONS: &[&str] = &["1.2", "1.3"];

/// `[tls] cert`.
pub const TLS_CERT: Key = flagged(
    key(
        "tls",
        "cert",
        Kind::Path,
        "",
        "PEM certificate chain for the listener; with `key`, the listener speaks TLS (both modes)",
        |c| tls_path(&c.tls.cert),
    ),
    "--tls-cert",
);
/// `[tls] key`.
pub const TLS_KEY: Key = flagged(
    key("tls", "key", Kind::Path, "", "PEM private key for `cert` (PKCS#8, PKCS#1 RSA or SEC1 EC)", |c| {
        tls_path(&c.tls.key)
    }),
    "--tls-key",
);
/// `[tls] sni_dir`.
pub const TLS_SNI_DIR: Key = key(
    "tls",
    "sni_dir",
    Kind::Path,
    "",
    "directory of NAME.pem + NAME.key pairs, served when the client's SNI is NAME; else `cert`",
    |c| tls_path(&c.tls.sni_dir),
);
/// `[tls] min_version`.
pub const TLS_MIN_VERSION: Key = key(
    "tls",
    "min_version",
    Kind::Choice(TLS_VERSIONS),
    "1.2",
    "oldest TLS version accepted from clients and backends",
    |c| (if c.tls.min_version == TlsVersion::V1_3 { "1.3" } else { "1.2" }).to_string(),
);
/// `[tls] backend_ca`.
pub const TLS_BACKEND_CA: Key = key(
    "tls",
    "backend_ca",
    Kind::Path,
    "",
    "PEM CA bundle that `tls` backends are verified against; empty: the bundled Mozilla roots",
    |c| tls_path(&c.tls.backend_ca),
);
