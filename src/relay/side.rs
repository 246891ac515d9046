//! One side of a relay, plain or TLS: plaintext in and out of its socket. A TLS side also
//! holds what `poll` cannot see (records not yet sent, plaintext rustls decrypted but nobody
//! read yet), and passes the other side's EOF on as `close_notify` before its FIN.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

use rustix::buffer::spare_capacity;
use rustix::io::Errno;
use rustls::Connection;

use crate::error::Party;

/// Plaintext handed to rustls per write: one TLS record's worth.
pub(super) const TLS_CHUNK: usize = 16 * 1024;

pub(super) struct Side<'a> {
    pub sock: &'a TcpStream,
    tls: Option<&'a mut Connection>,
    pub party: Party,
    /// Its input ended (EOF, or `close_notify`).
    pub eof: bool,
    /// The other side's EOF was passed on to it: `close_notify` queued, FIN once the records
    /// are out.
    closing: bool,
    closed: bool,
}

impl<'a> Side<'a> {
    /// A side whose input ended earlier (`eof`), and which was told of the other's (`told`):
    /// its FIN sent, unless `fin_owed` (its `close_notify` was still queued when the relay
    /// parked).
    pub fn new(
        sock: &'a TcpStream,
        tls: Option<&'a mut Connection>,
        party: Party,
        eof: bool,
        (told, fin_owed): (bool, bool),
    ) -> Side<'a> {
        Side { sock, tls, party, eof, closing: told, closed: told && !fin_owed }
    }

    /// The other side's EOF was passed on, but the FIN waits for queued records.
    pub fn fin_owed(&self) -> bool {
        self.closing && !self.closed
    }

    pub fn is_plain(&self) -> bool {
        self.tls.is_none()
    }

    /// Plaintext from this side into `buf`, up to its capacity and `most`: `Some(n)` with the bytes in
    /// `buf[..n]` (`Some(0)` at its end), `None` when nothing is there now. A buffer not yet
    /// initialized is read into its spare capacity, never zeroed (a plain relay of short
    /// lines keeps one resident page); rustls wants initialized memory, so a TLS side zeroes
    /// it once and both sides then read into all of it.
    pub fn read(&mut self, buf: &mut Vec<u8>, most: usize) -> io::Result<Option<usize>> {
        if buf.capacity() == 0 {
            // An empty buffer would read as the end.
            buf.reserve_exact(super::BUFFER_SIZE);
        }
        let mut sock = self.sock;
        let Some(tls) = &mut self.tls else {
            let got = if most < buf.capacity() {
                // A body's last read: zeroed up to its size, once.
                buf.resize(most.max(buf.len()), 0);
                rustix::io::read(sock, &mut buf[..most])
            } else if buf.len() == buf.capacity() {
                rustix::io::read(sock, &mut buf[..])
            } else {
                buf.clear();
                rustix::io::read(sock, spare_capacity(buf))
            };
            return match got {
                Ok(n) => Ok(Some(n)),
                Err(Errno::AGAIN | Errno::INTR) => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        if buf.len() < buf.capacity() {
            buf.resize(buf.capacity(), 0);
        }
        loop {
            let most = buf.len().min(most);
            match tls.reader().read(&mut buf[..most]) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut sock) {
                // rustls reports the end through `reader()` on the next turn.
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // Its alert goes out before the error closes the connection.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// Writes what this side takes now; 0 when it is full.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut sock = self.sock;
        let Some(tls) = &mut self.tls else {
            return match sock.write(data) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(n),
                Err(e) if would_block(&e) || e.kind() == io::ErrorKind::Interrupted => Ok(0),
                Err(e) => Err(e),
            };
        };
        if tls.wants_write() && !self.flush()? {
            return Ok(0);
        }
        let Some(tls) = &mut self.tls else { return Ok(0) };
        let n = tls.writer().write(&data[..data.len().min(TLS_CHUNK)])?;
        self.flush()?;
        Ok(n)
    }

    /// Sends queued TLS records; `Ok(true)` when none is left. Finishes a pending close.
    pub fn flush(&mut self) -> io::Result<bool> {
        let mut sock = self.sock;
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut sock) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        }
        if self.closing && !self.closed {
            self.closed = true;
            // The peer may be gone already (ENOTCONN); the other direction finds out.
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        Ok(true)
    }

    /// Whether TLS records wait to be sent.
    pub fn wants_out(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Passes the other side's EOF on.
    pub fn close(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
        }
        self.closing = true;
        self.flush().map(|_| ())
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}
