//! One direction of the relay: a small user-space buffer that switches to `splice(2)` through
//! a pipe of its own once a read fills it, pending bytes held while the destination is full,
//! and EOF passed on.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;

use rustix::buffer::spare_capacity;
use rustix::io::Errno;
use rustix::pipe::{splice, SpliceFlags};

use super::BUFFER_SIZE;
use crate::error::Party;

/// Pipe capacity asked for when splicing (the kernel may give less).
const PIPE_SIZE: usize = 256 * 1024;

/// Reads (or splices) per direction per wakeup: a bulk flow one way takes turns with the other.
const ROUNDS: usize = 8;

/// What a direction needs next from `poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Nothing pending: input from the source.
    Read,
    /// Bytes pending (in the buffer or the pipe): room in the destination.
    Write,
    /// EOF passed on; nothing more to do.
    Done,
}

/// One direction of the relay.
pub(super) struct Flow<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    from_side: Party,
    /// `pending[start..]` was read but the destination could not take it yet.
    pending: &'a mut Vec<u8>,
    start: usize,
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written.
    piped: usize,
    splice_failed: bool,
    pub(super) done: bool,
    /// Bytes written to the destination.
    pub(super) total: u64,
}

impl<'a> Flow<'a> {
    pub(super) fn new(
        from: &'a TcpStream,
        to: &'a TcpStream,
        from_side: Party,
        pending: &'a mut Vec<u8>,
    ) -> Flow<'a> {
        pending.clear();
        Flow {
            from,
            to,
            from_side,
            pending,
            start: 0,
            pipe: None,
            piped: 0,
            splice_failed: false,
            done: false,
            total: 0,
        }
    }

    fn to_side(&self) -> Party {
        if self.from_side == Party::Client {
            Party::Backend
        } else {
            Party::Client
        }
    }

    pub(super) fn wait(&self) -> Wait {
        if self.done {
            Wait::Done
        } else if self.start < self.pending.len() || self.piped > 0 {
            Wait::Write
        } else {
            Wait::Read
        }
    }

    /// Moves what can be moved without blocking, in at most [`ROUNDS`] reads. Returns whether
    /// any byte moved.
    pub(super) fn advance(&mut self, read: &mut Vec<u8>) -> Result<bool, (Party, io::Error)> {
        let mut moved = false;
        for _ in 0..ROUNDS {
            // Pending bytes go first, and nothing more is read until they are gone.
            if !self.flush(&mut moved)? || !self.fill(read, &mut moved)? {
                break;
            }
        }
        Ok(moved)
    }

    /// Writes the pending bytes. `Ok(false)` when the destination is full.
    fn flush(&mut self, moved: &mut bool) -> Result<bool, (Party, io::Error)> {
        if self.start < self.pending.len() {
            let sent = send(self.to, self.to_side(), &self.pending[self.start..])?;
            self.start += sent;
            self.total += sent as u64;
            *moved |= sent > 0;
            if self.start < self.pending.len() {
                return Ok(false);
            }
            self.pending.clear();
            self.start = 0;
        }
        let Some(pipe) = &self.pipe else { return Ok(true) };
        while self.piped > 0 {
            match splice(&pipe.read, None, self.to, None, self.piped, FLAGS) {
                Ok(0) => return Err((self.to_side(), io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.piped -= n;
                    self.total += n as u64;
                    *moved = true;
                }
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => {}
                Err(e) => return Err((self.to_side(), e.into())),
            }
        }
        Ok(true)
    }

    /// Reads what the source has (nothing is pending) and sends it on as far as the
    /// destination takes it; the rest becomes pending. `Ok(false)` when the source has nothing
    /// now, at EOF (passed on to the destination at once), or when the destination is full.
    fn fill(&mut self, read: &mut Vec<u8>, moved: &mut bool) -> Result<bool, (Party, io::Error)> {
        // The pipe is empty here: EAGAIN means the socket has nothing.
        read.clear();
        if read.capacity() == 0 {
            // Given back while the connection idled.
            read.reserve_exact(BUFFER_SIZE);
        }
        let got = match &self.pipe {
            Some(pipe) => splice(self.from, None, &pipe.write, None, PIPE_SIZE, FLAGS),
            None => rustix::io::read(self.from, spare_capacity(read)),
        };
        let n = match got {
            Ok(0) => {
                // The peer may already be gone (ENOTCONN); the other direction finds out.
                let _ = self.to.shutdown(Shutdown::Write);
                self.done = true;
                return Ok(false);
            }
            Ok(n) => n,
            Err(Errno::AGAIN) => return Ok(false),
            Err(Errno::INTR) => return Ok(true),
            Err(e) => return Err((self.from_side, e.into())),
        };
        *moved = true;
        log::trace!("relay: read {n} bytes from {:?}", self.from_side);
        if self.pipe.is_some() {
            self.piped = n;
            return Ok(true);
        }
        let sent = send(self.to, self.to_side(), &read[..n])?;
        self.total += sent as u64;
        if sent < n {
            // Kept at most a buffer's worth: nothing more is read until it is gone.
            self.pending.reserve_exact(BUFFER_SIZE);
            self.pending.extend_from_slice(&read[sent..n]);
        }
        if n == read.capacity() && !self.splice_failed {
            match Pipe::new() {
                Ok(p) => self.pipe = Some(p),
                Err(e) => {
                    log::debug!("relay: no pipe for splicing ({e}); copying instead");
                    self.splice_failed = true;
                }
            }
        }
        Ok(sent == n)
    }
}

/// Writes as much of `bytes` to `to` as it takes without blocking; returns how much that was.
fn send(mut to: &TcpStream, to_side: Party, bytes: &[u8]) -> Result<usize, (Party, io::Error)> {
    let mut sent = 0;
    while sent < bytes.len() {
        match to.write(&bytes[sent..]) {
            Ok(0) => return Err((to_side, io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((to_side, e)),
        }
    }
    Ok(sent)
}

/// Splice flags: move pages rather than copy where the kernel can, and never block (the pipe
/// side; the socket side is non-blocking already), since `poll` does the waiting.
const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// A pipe for splicing one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // A larger pipe moves more per call; the default (64 KiB) works too.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        Ok(Pipe { read, write })
    }
}
