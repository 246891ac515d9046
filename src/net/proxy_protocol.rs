//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the header an L4 tier puts before a
//! connection's first byte to say who the client really is. [`parse`] is a pure parser (fuzzed
//! by proptest), [`read_now`] takes exactly the header off a socket, as much as has arrived, and no byte more, and
//! [`encode`] writes the header the proxy sends to a backend (`send_proxy=`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

use rustix::io::Errno;
use rustix::net::RecvFlags;

/// v2's fixed 12-byte signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v1's longest header, CRLF included (the spec's 107 bytes).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: 16 fixed bytes and up to this many address and TLV bytes
/// (TLVs from cloud balancers are a few hundred bytes at most).
pub const V2_MAX_BODY: usize = 4096;

/// Which header version to write (`send_proxy=v1|v2` on a backend line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// `v1` or `v2`, as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Which headers a listener requires (`[proxy] accept_proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// No header is read: the connection's own address is the client's.
    Off,
    V1,
    V2,
    /// Either version, told apart by the first bytes.
    Any,
}

/// A parsed header: its length and the addresses it carries. `None` for v2's LOCAL command
/// (the L4 tier's own health check), `UNKNOWN`/`UNSPEC` or a unix-socket origin: the connection's
/// own addresses stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub addrs: Option<Addresses>,
}

/// The original client (`src`) and the address it reached (`dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Parses a header at the start of `buf`. `Ok(None)`: every byte so far fits a header, read
/// more. `Err`: not a valid header of an accepted version (the connection must be closed).
pub fn parse(buf: &[u8], accept: Accept) -> Result<Option<Header>, &'static str> {
    let v1 = b"PROXY ";
    let is_v1 = buf[..buf.len().min(v1.len())] == v1[..buf.len().min(v1.len())];
    let is_v2 = buf[..buf.len().min(12)] == V2_SIGNATURE[..buf.len().min(12)];
    if buf.is_empty() {
        return Ok(None);
    }
    match accept {
        Accept::Off => Err("no PROXY header expected"),
        Accept::V1 | Accept::Any if is_v1 => parse_v1(buf),
        Accept::V2 | Accept::Any if is_v2 => parse_v2(buf),
        Accept::V1 => Err("not a PROXY v1 header"),
        Accept::V2 => Err("not a PROXY v2 header"),
        Accept::Any => Err("not a PROXY protocol header"),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX { Err("PROXY v1 header too long") } else { Ok(None) };
    };
    if end + 1 > V1_MAX {
        return Err("PROXY v1 header too long");
    }
    if end == 0 || buf[end - 1] != b'\r' {
        return Err("PROXY v1 header not ended by CRLF");
    }
    let line = std::str::from_utf8(&buf[6..end - 1]).map_err(|_| "PROXY v1 header not ASCII")?;
    let len = end + 1;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Ok(Some(Header { len, addrs: None })),
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, &'static str> {
                let ip: IpAddr = s.parse().map_err(|_| "PROXY v1 header has a bad address")?;
                match (ip, *family) {
                    (IpAddr::V4(_), "TCP4") | (IpAddr::V6(_), "TCP6") => Ok(ip),
                    _ => Err("PROXY v1 address does not match its family"),
                }
            };
            let port = |s: &str| -> Result<u16, &'static str> {
                // The spec forbids leading zeros and signs; `u16::from_str` would take "+80".
                if s.is_empty()
                    || s.len() > 5
                    || !s.bytes().all(|b| b.is_ascii_digit())
                    || (s.len() > 1 && s.starts_with('0'))
                {
                    return Err("PROXY v1 header has a bad port");
                }
                s.parse().map_err(|_| "PROXY v1 header has a bad port")
            };
            let src = SocketAddr::new(ip(src)?, port(sport)?);
            let dst = SocketAddr::new(ip(dst)?, port(dport)?);
            Ok(Some(Header { len, addrs: Some(Addresses { src, dst }) }))
        }
        _ => Err("PROXY v1 header malformed"),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    if buf.len() < 16 {
        if buf.len() > 12 && buf[12] >> 4 != 2 {
            return Err("PROXY v2 header has a bad version");
        }
        return Ok(None);
    }
    let (version, command, family) = (buf[12] >> 4, buf[12] & 0x0f, buf[13]);
    if version != 2 {
        return Err("PROXY v2 header has a bad version");
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body > V2_MAX_BODY {
        return Err("PROXY v2 header too long");
    }
    if buf.len() < 16 + body {
        return Ok(None);
    }
    let len = 16 + body;
    let b = &buf[16..len];
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    match command {
        // LOCAL: the L4 tier speaking for itself; whatever the addresses say is ignored.
        0 => Ok(Some(Header { len, addrs: None })),
        1 => match family {
            // TCP over IPv4, TCP over IPv6. UDP (0x12, 0x22) is refused: this is a TCP proxy.
            0x11 if body >= 12 => {
                let src = SocketAddr::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(), port(8));
                let dst = SocketAddr::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]).into(), port(10));
                Ok(Some(Header { len, addrs: Some(Addresses { src, dst }) }))
            }
            0x21 if body >= 36 => {
                let ip = |at: usize| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&b[at..at + 16]);
                    IpAddr::V6(Ipv6Addr::from(o))
                };
                let src = SocketAddr::new(ip(0), port(32));
                let dst = SocketAddr::new(ip(16), port(34));
                Ok(Some(Header { len, addrs: Some(Addresses { src, dst }) }))
            }
            0x11 | 0x21 => Err("PROXY v2 address block too short"),
            // UNSPEC, or a unix-socket origin: the connection's own addresses stand.
            0x00 | 0x31 => Ok(Some(Header { len, addrs: None })),
            _ => Err("PROXY v2 header has an unsupported address family"),
        },
        _ => Err("PROXY v2 header has an unknown command"),
    }
}

/// Takes what has arrived of a header off `stream` without waiting, after the bytes `got`
/// holds (taken before), and no byte past the header: `Ok(Some)` once it is complete,
/// `Ok(None)` while the rest has not arrived (call again when the socket is readable), `Err`
/// for a header that is bad or cut short by the client closing.
pub fn read_now(stream: &TcpStream, accept: Accept, got: &mut Vec<u8>) -> Result<Option<Header>, String> {
    const MOST: usize = 16 + V2_MAX_BODY;
    let mut peeked = [0u8; MOST];
    loop {
        let room = MOST.saturating_sub(got.len()).max(1);
        let n = match rustix::net::recv(stream, &mut peeked[..room], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Err("closed before a complete PROXY header".to_string()),
            Ok((n, _)) => n,
            Err(Errno::AGAIN) => return Ok(None),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(format!("reading the PROXY header: {e}")),
        };
        let at = got.len();
        got.extend_from_slice(&peeked[..n]);
        // Only the header's own bytes leave the socket: what follows is the connection's.
        let (found, take) = match parse(got, accept)? {
            Some(h) => (Some(h), h.len - at),
            None => (None, n),
        };
        got.truncate(at + take);
        take_exactly(stream, take)?;
        if found.is_some() {
            return Ok(found);
        }
    }
}

/// Reads and drops `n` bytes that a peek found waiting.
fn take_exactly(stream: &TcpStream, mut n: usize) -> Result<(), String> {
    let mut sink = [0u8; 512];
    while n > 0 {
        let want = n.min(sink.len());
        match rustix::net::recv(stream, &mut sink[..want], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Err("closed before a complete PROXY header".to_string()),
            Ok((got, _)) => n -= got,
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("reading the PROXY header: {e}")),
        }
    }
    Ok(())
}

/// The header that tells a backend the connection came from `a.src` to `a.dst`. Mixed
/// families are both written as IPv6 (an IPv4 address mapped), as HAProxy does.
pub fn encode(version: Version, a: Addresses) -> Vec<u8> {
    let (src, dst) = match (a.src.ip().to_canonical(), a.dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(to_v6(s)), IpAddr::V6(to_v6(d))),
    };
    let (sport, dport) = (a.src.port(), a.dst.port());
    match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {src} {dst} {sport} {dport}\r\n").into_bytes()
        }
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21); // version 2, PROXY
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&to_v6(s).octets());
                    out.extend_from_slice(&to_v6(d).octets());
                }
            }
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
            out
        }
    }
}

/// The header for a connection the proxy makes on its own behalf (a health check): v1
/// `UNKNOWN`, v2 `LOCAL`; the backend then uses the connection's own addresses, as HAProxy's
/// `check-send-proxy` does.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;
