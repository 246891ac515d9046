//! One direction of the relay, from one side to the other: a small user-space buffer that
//! switches to `splice(2)` through a pipe of its own once a read fills it (both sides plain),
//! pending bytes held while the destination is full, and EOF passed on.

use std::io;
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::pipe::{splice, SpliceFlags};

use super::side::{Side, TLS_CHUNK};
use super::BUFFER_SIZE;
use crate::error::Party;

/// Pipe capacity asked for when splicing (the kernel may give less).
const PIPE_SIZE: usize = 256 * 1024;

/// What a body must still have to come for a full read to switch it to splicing.
const SPLICE_BODY_LEFT: u64 = 256 * 1024;

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

/// What one call of [`Flow::advance`] did.
pub(super) struct Advanced {
    /// Some byte moved.
    pub moved: bool,
    /// It stopped at the round limit with input perhaps left (in the socket, or in rustls
    /// where `poll` cannot see it): the next turn tries again without waiting.
    pub cut: bool,
}

/// One direction of the relay.
pub(super) struct Flow<'a> {
    /// `pending[start..]` was read but the destination could not take it yet.
    pending: &'a mut Vec<u8>,
    start: usize,
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written.
    piped: usize,
    splice_failed: bool,
    pub done: bool,
    /// Bytes written to the destination.
    pub total: u64,
    /// Bytes the source may still give (a response body's rest): at none, once what was read
    /// is sent, the direction is done without passing an end on. `None`: until its end.
    pub left: Option<u64>,
}

impl<'a> Flow<'a> {
    /// A direction that starts with `early` to send (bytes already read from its source), then
    /// what it `held` when it went quiet, and `total` sent before; `done` when its source ended
    /// before.
    pub fn new(pending: &'a mut Vec<u8>, early: &[u8], held: &[u8], total: u64, done: bool) -> Flow<'a> {
        pending.clear();
        pending.extend_from_slice(early);
        pending.extend_from_slice(held);
        Flow { pending, start: 0, pipe: None, piped: 0, splice_failed: false, done, total, left: None }
    }

    /// What this direction holds for its destination, taken for the parker: the unsent bytes
    /// copied out of the worker's buffer, then those in the pipe (read out, so a parked relay
    /// keeps no pipe: two descriptors and up to `PIPE_SIZE` of pipe pages each, where a crowd
    /// of slow readers would run into the per-user pipe limit and shrink every other relay's).
    pub fn hold(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = self.pending[self.start..].to_vec();
        self.pending.clear();
        self.start = 0;
        if let Some(pipe) = self.pipe.take().filter(|_| self.piped > 0) {
            bytes.reserve_exact(self.piped);
            while self.piped > 0 {
                // Exactly `piped` bytes are in the pipe: the read cannot wait.
                match rustix::io::read(&pipe.read, rustix::buffer::spare_capacity(&mut bytes)) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => self.piped -= n,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(bytes)
    }

    /// Bytes wait for room in the destination.
    pub fn holds(&self) -> bool {
        self.wait() == Wait::Write
    }

    pub fn wait(&self) -> Wait {
        if self.done {
            Wait::Done
        } else if self.start < self.pending.len() || self.piped > 0 {
            Wait::Write
        } else if self.left == Some(0) {
            Wait::Done
        } else {
            Wait::Read
        }
    }

    /// Moves what can be moved from `from` to `to` without blocking, in at most [`ROUNDS`]
    /// reads.
    pub fn advance(
        &mut self,
        from: &mut Side,
        to: &mut Side,
        read: &mut Vec<u8>,
    ) -> Result<Advanced, (Party, io::Error)> {
        // Ended: its source is not read again (a body's client sends its next request, which
        // is not the backend's).
        if self.done {
            return Ok(Advanced { moved: false, cut: false });
        }
        let mut moved = false;
        for _ in 0..ROUNDS {
            // Pending bytes go first, and nothing more is read until they are gone.
            if !self.flush(to, &mut moved)? || !self.fill(from, to, read, &mut moved)? {
                return Ok(Advanced { moved, cut: false });
            }
        }
        Ok(Advanced { moved, cut: !self.done })
    }

    /// Writes the pending bytes. `Ok(false)` when the destination is full.
    fn flush(&mut self, to: &mut Side, moved: &mut bool) -> Result<bool, (Party, io::Error)> {
        while self.start < self.pending.len() {
            let sent = to.write(&self.pending[self.start..]).map_err(|e| (to.party, e))?;
            if sent == 0 {
                return Ok(false);
            }
            self.start += sent;
            self.total += sent as u64;
            *moved = true;
        }
        self.pending.clear();
        self.start = 0;
        let Some(pipe) = &self.pipe else { return Ok(true) };
        while self.piped > 0 {
            match splice(&pipe.read, None, to.sock, None, self.piped, FLAGS) {
                Ok(0) => return Err((to.party, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.piped -= n;
                    self.total += n as u64;
                    *moved = true;
                }
                Err(Errno::AGAIN) => return Ok(false),
                Err(Errno::INTR) => {}
                Err(e) => return Err((to.party, e.into())),
            }
        }
        Ok(true)
    }

    /// Reads what the source has (nothing is pending) and sends it on as far as the
    /// destination takes it; the rest becomes pending. `Ok(false)` when the source has nothing
    /// now, at its end (passed on to the destination at once), or when the destination is full.
    fn fill(
        &mut self,
        from: &mut Side,
        to: &mut Side,
        read: &mut Vec<u8>,
        moved: &mut bool,
    ) -> Result<bool, (Party, io::Error)> {
        if self.left == Some(0) {
            self.done = true;
            return Ok(false);
        }
        // At most what the source may still give.
        let most = self.left.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let plain = from.is_plain() && to.is_plain();
        if read.capacity() == 0 {
            // Given back while the connection idled.
            read.reserve_exact(if plain { BUFFER_SIZE } else { TLS_CHUNK });
        }
        let got = match &self.pipe {
            // The pipe is empty here: EAGAIN means the socket has nothing.
            Some(pipe) => match splice(from.sock, None, &pipe.write, None, PIPE_SIZE.min(most), FLAGS) {
                Ok(n) => Ok(Some(n)),
                Err(Errno::AGAIN) => Ok(None),
                Err(Errno::INTR) => return Ok(true),
                Err(e) => Err(e.into()),
            },
            None => from.read(read, most),
        };
        let n = match got.map_err(|e| (from.party, e))? {
            None => return Ok(false),
            Some(0) => {
                from.eof = true;
                self.done = true;
                to.close().map_err(|e| (to.party, e))?;
                *moved = true;
                return Ok(false);
            }
            Some(n) => n,
        };
        if let Some(left) = &mut self.left {
            *left -= n as u64;
        }
        *moved = true;
        log::trace!("relay: read {n} bytes from {:?}", from.party);
        if self.pipe.is_some() {
            self.piped = n;
            return Ok(true);
        }
        let mut sent = 0;
        while sent < n {
            match to.write(&read[sent..n]).map_err(|e| (to.party, e))? {
                0 => break,
                w => sent += w,
            }
        }
        self.total += sent as u64;
        if sent < n {
            // Kept at most a read's worth: nothing more is read until it is gone.
            self.pending.reserve_exact(n - sent);
            self.pending.extend_from_slice(&read[sent..n]);
        }
        // A body's rest must be worth a pipe (two descriptors and a few syscalls to make).
        let worth = self.left.is_none_or(|l| l >= SPLICE_BODY_LEFT);
        if plain && n == read.capacity() && !self.splice_failed && worth {
            // A body's keeps the default size: what a parked one holds is read out of its pipe,
            // and the many a single GET each can make stay at 64 KiB.
            match Pipe::new(self.left.is_none()) {
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

impl Drop for Flow<'_> {
    /// A backlog brought back from the parker (a pipe's worth) leaves no large buffer in the
    /// worker.
    fn drop(&mut self) {
        if self.pending.capacity() > TLS_CHUNK {
            *self.pending = Vec::new();
        }
    }
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
    /// A pipe, `large` (`PIPE_SIZE`) or of the default size (64 KiB).
    fn new(large: bool) -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // A larger pipe moves more per call; the default works too.
        if large {
            let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        }
        Ok(Pipe { read, write })
    }
}
