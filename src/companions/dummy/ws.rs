//! The dummy server's WebSocket endpoint, `GET /ws`: a real handshake (`Sec-WebSocket-Accept`
//! from the client's key), then every text or binary message echoed back prefixed with the
//! server's name (`[dummy-9090] hi`), until the client closes. Uses tungstenite's blocking API.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message;

/// Answers the upgrade in `head` on `stream` and echoes messages; `rest` holds bytes the client
/// sent after the head (frames already buffered).
pub fn serve(mut stream: TcpStream, head: &[u8], rest: Vec<u8>, peer: SocketAddr, name: &str) {
    let parsed = crate::h1::head::parse_request(head).ok().flatten().map(|(_, req)| req.fields);
    let key = parsed.as_ref().and_then(|f| f.get("sec-websocket-key"));
    let upgrade = parsed
        .as_ref()
        .and_then(|f| f.get("upgrade"))
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket")));
    let (Some(key), true) = (key, upgrade) else {
        let why = "/ws needs Upgrade: websocket and Sec-WebSocket-Key";
        let _ = super::reply::write_error(&mut stream, name, 400, why);
        return;
    };
    let accept = derive_accept_key(key.trim().as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nX-Served-By: {name}\r\n\r\n"
    );
    if stream.write_all(answer.as_bytes()).is_err() {
        return;
    }
    // Messages may be quiet for long: no read timeout on an open WebSocket.
    let _ = stream.set_read_timeout(None);
    log::info!("{peer} WebSocket open on /ws");
    let mut ws = WebSocket::from_partially_read(stream, rest, Role::Server, None);
    let mut echoed = 0u64;
    loop {
        let reply = match ws.read() {
            Ok(Message::Text(t)) => Message::Text(format!("[{name}] {t}")),
            Ok(Message::Binary(b)) => {
                let mut out = format!("[{name}] ").into_bytes();
                out.extend_from_slice(&b);
                Message::Binary(out)
            }
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(e) => {
                log::warn!("{peer} WebSocket: {e}");
                break;
            }
        };
        if let Err(e) = ws.send(reply) {
            log::warn!("{peer} WebSocket send: {e}");
            break;
        }
        echoed += 1;
    }
    log::info!("{peer} WebSocket closed after {echoed} message(s)");
}
