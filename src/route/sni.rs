//! The server name a TLS ClientHello asks for, read by rustls's own ClientHello parser
//! ([`rustls::server::Acceptor`]) from a copy of the bytes, so the connection itself is
//! relayed untouched (HAProxy's `req.ssl_sni`, Kubernetes ingress "ssl passthrough").

use rustls::server::Acceptor;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello naming this server (as sent).
    Name(String),
    /// A ClientHello without SNI.
    NoName,
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
    /// A ClientHello so far: read more.
    Incomplete,
}

/// Reads `bytes`, the start of a connection.
pub fn server_name(bytes: &[u8]) -> Hello {
    match bytes.first() {
        None => return Hello::Incomplete,
        // A TLS record of type handshake.
        Some(&0x16) => {}
        Some(_) => return Hello::NotTls,
    }
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => match accepted.client_hello().server_name() {
            Some(name) => Hello::Name(name.to_string()),
            None => Hello::NoName,
        },
        Ok(None) => Hello::Incomplete,
        Err(_) => Hello::NotTls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello from rustls's client, asking for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn the_name_is_read_whole_and_only_whole() {
        let hello = client_hello("api.example.com");
        assert_eq!(server_name(&hello), Hello::Name("api.example.com".into()));
        assert_eq!(server_name(&hello[..hello.len() - 1]), Hello::Incomplete);
        assert_eq!(server_name(&hello[..3]), Hello::Incomplete);
        assert_eq!(server_name(b""), Hello::Incomplete);
    }

    #[test]
    fn plain_text_and_an_ip_literal_name_are_told_apart() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        // rustls sends no SNI for an IP address, as RFC 6066 requires.
        assert_eq!(server_name(&client_hello("127.0.0.1")), Hello::NoName);
        // A whole handshake record that is no ClientHello (a ServerHello, empty).
        assert_eq!(server_name(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]), Hello::NotTls);
    }
}
