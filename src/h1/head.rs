//! Owned message heads for the HTTP speakers off the proxy's hot path (the health checker, the
//! admin listener, dummy_server, simulate_client and the tests): one httparse call for each
//! kind of head, with framing and persistence decided by the shared rules in [`super`]. The
//! proxy itself parses in place, without copying ([`super::request`], [`super::response`]).

use super::{keep_alive, request_body, response_body, BodyKind, MAX_HEADERS};

/// Header fields as received, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, Vec<u8>)>);

impl Fields {
    fn copy(headers: &[httparse::Header<'_>]) -> Fields {
        Fields(headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect())
    }

    /// The first value of `name` (case-insensitive), lossily as text.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub fields: Fields,
    pub body: BodyKind,
    pub keep_alive: bool,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub fields: Fields,
    pub body: BodyKind,
    pub keep_alive: bool,
}

/// Parses a request head at the start of `buf`: `Ok(None)` while incomplete, else its length
/// and the head. Shaped for [`super::Wire::read_head`].
pub fn parse_request(buf: &[u8]) -> Result<Option<(usize, Request)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid request: {e}")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err("invalid request line".to_string());
    };
    let body = request_body(req.headers)?;
    let head = Request {
        method: method.to_string(),
        target: target.to_string(),
        version,
        fields: Fields::copy(req.headers),
        body,
        keep_alive: keep_alive(version, req.headers),
    };
    Ok(Some((len, head)))
}

/// Parses the head of a response to a `method` request at the start of `buf`: `Ok(None)`
/// while incomplete. Shaped for [`super::Wire::read_head`].
pub fn parse_response(buf: &[u8], method: &str) -> Result<Option<(usize, Response)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response: {e}")),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err("invalid status line".to_string());
    };
    let head = Response {
        status,
        version,
        fields: Fields::copy(resp.headers),
        body: response_body(method, status, resp.headers),
        keep_alive: keep_alive(version, resp.headers),
    };
    Ok(Some((len, head)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_parse_with_the_shared_rules() {
        let (len, r) = parse_request(b"POST /a?b HTTP/1.0\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc")
            .expect("valid")
            .expect("complete");
        assert_eq!((len, r.method.as_str(), r.target.as_str(), r.version), (49, "POST", "/a?b", 0));
        assert_eq!(
            (r.body, r.keep_alive, r.fields.get("x-a")),
            (BodyKind::Length(3), false, Some("1".into()))
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());

        let (_, r) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD")
            .expect("valid")
            .expect("complete");
        assert_eq!((r.status, r.body, r.keep_alive), (200, BodyKind::Empty, true), "HEAD: no body");
        let (_, r) = parse_response(b"HTTP/1.1 204 No\r\nConnection: close\r\n\r\n", "GET")
            .expect("valid")
            .expect("complete");
        assert_eq!((r.body, r.keep_alive), (BodyKind::Empty, false));
        assert!(parse_response(b"HTTX 200\r\n\r\n", "GET").is_err());
    }
}
