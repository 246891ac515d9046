//! Zero-downtime binary upgrade: the running proxy hands its listening sockets to a new process
//! over a unix socket (`SCM_RIGHTS`), as HAProxy's `-x`, Pingora and sozu do.
//!
//! ```text
//! old: [proxy] control_socket = PATH    new: proxy_server --takeover PATH
//!   serve(): listen on PATH  <-------------- receive(): connect
//!   send "lbproxy-takeover N" + fds ------->  adopt the same kernel sockets (shared backlog)
//!                                             start workers and the acceptor
//!   read "accepting" <---------------------- Handoff::confirm()
//!   stop accepting (no shutdown(): the socket is shared), drain, summary, exit 0
//! ```
//!
//! Because both processes hold the same listening socket, a connect during the handoff waits
//! in the one backlog for whichever process accepts first: nothing is refused.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The message that goes with the descriptors; its number says how many there are.
const HELLO: &str = "lbproxy-takeover";
/// What the new process says once its acceptor runs.
const ACCEPTING: &str = "accepting";
/// How long the old process waits for the new one to say it accepts.
const CONFIRM_WITHIN: Duration = Duration::from_secs(60);
/// How often the control thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// The new process's side: the sockets it received and the line back to the old process.
pub struct Handoff {
    /// The proxy listener, then the admin listener if the old process had one.
    pub listeners: Vec<TcpListener>,
    link: UnixStream,
}

impl Handoff {
    /// Tells the old process that this one accepts now: it stops accepting and drains.
    pub fn confirm(mut self) -> io::Result<()> {
        self.link.write_all(format!("{ACCEPTING}\n").as_bytes())
    }
}

/// Connects to the running proxy's control socket at `path` and receives its listeners.
pub fn receive(path: &Path) -> io::Result<Handoff> {
    let link = UnixStream::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("control socket {}: {e}", path.display())))?;
    link.set_read_timeout(Some(CONFIRM_WITHIN))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut data = [0u8; 64];
    let got = recvmsg(&link, &mut [IoSliceMut::new(&mut data)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let text = String::from_utf8_lossy(&data[..got.bytes]);
    let count = text.trim().strip_prefix(HELLO).and_then(|n| n.trim().parse::<usize>().ok());
    if count != Some(fds.len()) || fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control socket {}: not a takeover answer ({text:?}, {} fds)", path.display(), fds.len()),
        ));
    }
    link.set_read_timeout(None)?;
    let listeners = fds.into_iter().map(TcpListener::from).collect();
    Ok(Handoff { listeners, link })
}

/// The control socket's file while this process serves it: removed when this drops, unless
/// it was handed over (the new process binds its own at the same path) or replaced since.
pub struct Bound {
    path: PathBuf,
    /// Its device and inode, to know it is still ours.
    id: (u64, u64),
    /// Set once a new process took the listeners: the path is its own now, whatever inode
    /// number its socket got (a freed one is often reused at once).
    handed: Arc<AtomicBool>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if !self.handed.load(Ordering::SeqCst) && file_id(&self.path) == Some(self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Serves `listeners` on the unix socket `path` until `stopping` is set: to each process that
/// connects, sends them, and when it says it accepts, sends `()` on `taken` (the old process
/// then stops accepting and drains). A stale socket file (no process listening) is replaced;
/// one another proxy serves is left to it, as an error, unless `taking_over` (this process
/// took that proxy's listeners, and the socket with them).
pub fn serve(
    path: PathBuf,
    listeners: Vec<Arc<TcpListener>>,
    taken: Sender<()>,
    stopping: Arc<AtomicBool>,
    taking_over: bool,
) -> io::Result<Bound> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()));
    // The probe is a connection as a takeover's is: the serving proxy logs it as a takeover
    // that did not complete (from its side it is one), and goes on serving.
    if !taking_over && UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "control socket {0}: another proxy_server serves it (upgrade that one with \
                 `proxy_server --takeover {0}`, or give this one its own control_socket)",
                path.display()
            ),
        ));
    }
    // Only a stale socket is replaced: never a file put there since the config was checked.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_socket()) {
        return Err(named(io::Error::new(io::ErrorKind::AlreadyExists, "not a socket; left alone")));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(named(e)),
    }
    let control = UnixListener::bind(&path).map_err(named)?;
    let handed = Arc::new(AtomicBool::new(false));
    let bound = Bound { id: file_id(&path).unwrap_or_default(), path: path.clone(), handed: handed.clone() };
    control.set_nonblocking(true)?;
    log::info!("control socket {} (proxy_server --takeover {0} upgrades in place)", path.display());
    thread::Builder::new().name("control".into()).spawn(move || {
        while !stopping.load(Ordering::SeqCst) {
            let link = match control.accept() {
                Ok((link, _)) => link,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(POLL);
                    continue;
                }
                Err(e) => {
                    log::warn!("control socket: accept: {e}");
                    thread::sleep(POLL);
                    continue;
                }
            };
            match hand_over(link, &listeners) {
                Ok(()) => {
                    handed.store(true, Ordering::SeqCst);
                    log::warn!("takeover: the new process accepts; stopping accepting here");
                    let _ = taken.send(());
                    return;
                }
                Err(e) => log::warn!("takeover aborted, still serving: {e}"),
            }
        }
    })?;
    Ok(bound)
}

/// Sends the listeners over `link` and waits for the new process to confirm.
fn hand_over(link: UnixStream, listeners: &[Arc<TcpListener>]) -> io::Result<()> {
    link.set_nonblocking(false)?;
    link.set_read_timeout(Some(CONFIRM_WITHIN))?;
    let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let hello = format!("{HELLO} {}\n", fds.len());
    sendmsg(&link, &[IoSlice::new(hello.as_bytes())], &mut control, SendFlags::empty())?;
    log::info!("takeover: sent {} listener(s); waiting for the new process to accept", fds.len());
    let mut line = String::new();
    BufReader::new(&link).read_line(&mut line)?;
    if line.trim() == ACCEPTING {
        Ok(())
    } else {
        Err(io::Error::other("the new process closed the control connection before accepting"))
    }
}
