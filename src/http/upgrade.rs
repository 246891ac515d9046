//! HTTP upgrades (WebSocket): after a backend's `101` to a request that asked for one, the
//! head goes to the client and the connection becomes a two-way tunnel ([`crate::tunnel`]),
//! idle-limited by `tunnel_ms`, counted per backend in /stats.

use std::io::{self, Write};

use super::exchange::{BackendStream, Exchange};
use super::proxy::{Record, Scratch};
use crate::backend::Backend;
use crate::error::{Cause, Failure, Party, Phase};
use crate::h1::{Coalesce, Wire};
use crate::tls_accept::ClientStream;
use crate::tls_stream::Stream;
use crate::tunnel::{self, End};

/// After a `101`: the head goes to the client, then bytes flow both ways (those already
/// buffered on either side first) until both sides close, an error, or `tunnel_ms` idle.
/// The pick stays held, so the tunnel counts as one active connection.
pub(super) fn switch(
    ex: &Exchange<'_>,
    cw: &mut Wire<&ClientStream<'_>>,
    bw: &mut Wire<&BackendStream>,
    stream: &BackendStream,
    backend: &Backend,
    scratch: &mut Scratch,
    record: &mut Record,
) -> Result<(), Failure> {
    let client_gone = |e: io::Error| Failure::new(Party::Client, Phase::Body, Cause::Io(e));
    // Counted before the 101 leaves, so whoever sees the switch also sees the tunnel in /stats.
    let _open = ex.ctx.counters.open_tunnel(&backend.name);
    let mut cout = Coalesce::new(ex.client, &mut scratch.client_out);
    cout.write_all(&scratch.resp_head).and_then(|()| cout.flush()).map_err(client_gone)?;
    record.bytes_out += scratch.resp_head.len() as u64;
    log::debug!("req {}: {} switched protocols; tunnelling", ex.head.request_id, backend.name);
    let mut guard;
    let (sock, tls) = match ex.client {
        Stream::Plain(s) => (*s, None),
        Stream::Tls(s, c) => {
            guard = c.lock();
            (*s, Some(&mut *guard))
        }
    };
    let client = End { sock, tls, early: cw.buffered() };
    let mut backend_guard;
    let up = match stream {
        Stream::Plain(s) => End { sock: s, tls: None, early: bw.buffered() },
        Stream::Tls(s, c) => {
            backend_guard = c.lock();
            End { sock: s, tls: Some(&mut *backend_guard), early: bw.buffered() }
        }
    };
    let mut bufs = crate::relay::Buffers::default();
    let out = tunnel::tunnel(client, up, ex.ctx.config.timeouts.tunnel, &mut bufs);
    record.bytes_in += out.up;
    record.bytes_out += out.down;
    backend.record_bytes(out.up, out.down);
    match out.error {
        None => Ok(()),
        Some((_, e)) if e.kind() == io::ErrorKind::TimedOut => {
            record.note = "tunnel idle timeout".into();
            log::info!("req {}: tunnel to {} idle for tunnel_ms, closed", ex.head.request_id, backend.name);
            Ok(())
        }
        Some((party, e)) => {
            let by = if party == Party::Client { "client" } else { "backend" };
            record.note = format!("tunnel ended by {by} error: {e}");
            Ok(())
        }
    }
}
