//! In-flight connections: counted so shutdown can drain them, and closable when the drain
//! deadline passes. Taking a client connection (the TLS handshake on a TLS port) is [`accept`].
//!
//! The registry keeps raw descriptor numbers rather than cloned sockets, so a connection costs
//! no extra descriptor. A client socket is registered under the registry's lock; the backend
//! socket a request or relay uses is attached under the connection's own lock, so the per-request
//! attach never contends on a global lock. Each is unregistered under its lock before the socket
//! closes, and forced shutdowns take the same locks, so a number is never shut down after it was
//! reused by another socket.

pub mod accept;
pub mod greet;
pub mod policy;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::clock::now_ms;
use crate::error::Failure;
use crate::h1::respond::refusal;
use crate::logging::access;
use crate::relay::{Interest, Progress};

/// At a graceful stop, a keep-alive connection that has waited less than this since its last
/// response may still be sending its next request: it gets the rest of this time, and an
/// answer with `Connection: close`. One idle longer is closed at once, as nginx and HAProxy
/// close idle keep-alive connections at a graceful stop. A new connection that has sent
/// nothing yet gets this time too (for its PROXY header, TLS flight or first request). The
/// parker, the HTTP worker and the drain all go by it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Entry {
    client: RawFd,
    shared: Arc<Shared>,
}

/// What a connection shares with the registry. The attached backend socket has a lock of its
/// own, so attaching one per request never takes the registry's global lock.
#[derive(Debug, Default)]
struct Shared {
    idle: AtomicBool,
    /// When it last started waiting ([`now_ms`]).
    idle_since: AtomicU64,
    /// The attached backend socket and its backend's id.
    backend: Mutex<Option<(RawFd, u64)>>,
}

/// The set of connections accepted and not yet closed.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<HashMap<u64, Entry>>,
    emptied: Condvar,
    /// Set by `close_all`: sockets registered or attached afterwards are shut at once.
    closing: AtomicBool,
}

fn shut(fd: RawFd, how: std::net::Shutdown) {
    // SAFETY: callers hold the lock that registers `fd`: the registry's for a client socket, the
    // connection's own for a backend socket. Each is unregistered under that lock before the
    // socket closes (`Conn::drop`; `Attached::drop`, which the borrow checker orders before the
    // socket's since the guard borrows it), so `fd` is still the registered socket.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&fd).shutdown(how);
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Number of connections in flight, queued ones included.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether no connection is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the registry is empty or `deadline` passes; true if it emptied.
    pub fn wait_empty(&self, deadline: Instant) -> bool {
        let mut entries = self.entries.lock();
        while !entries.is_empty() {
            if self.emptied.wait_until(&mut entries, deadline).timed_out() {
                return entries.is_empty();
            }
        }
        true
    }

    /// Shuts down every registered socket (both directions), waking their threads.
    /// Returns how many connections were closed.
    /// From now on, sockets registered or attached are shut down at once too, so work that
    /// starts after the deadline (a queued connection, a connect under way) ends promptly.
    pub fn close_all(&self) -> usize {
        let entries = self.entries.lock();
        self.closing.store(true, Ordering::SeqCst);
        for entry in entries.values() {
            shut(entry.client, std::net::Shutdown::Both);
            if let Some((fd, _)) = *entry.shared.backend.lock() {
                shut(fd, std::net::Shutdown::Both);
            }
        }
        entries.len()
    }

    /// Shuts down connections attached to any backend in `ids` (removed backends past their
    /// drain time). Returns how many.
    pub fn close_backends(&self, ids: &[u64]) -> usize {
        let entries = self.entries.lock();
        let mut closed = 0;
        for entry in entries.values() {
            let backend = entry.shared.backend.lock();
            if let Some((fd, id)) = *backend {
                if ids.contains(&id) {
                    shut(entry.client, std::net::Shutdown::Both);
                    shut(fd, std::net::Shutdown::Both);
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Closes the read side of connections that have waited idle for their next request (HTTP
    /// keep-alive) at least `min_idle`, so their workers finish at once instead of at the drain
    /// deadline. Ones idle for less may be a busy client between two requests, whose next one
    /// could be on its way: their workers see the shutdown themselves and answer that request
    /// with `Connection: close` (as HAProxy's `idle-close-on-response`), or close when they
    /// have idled `min_idle` too.
    pub fn close_idle(&self, min_idle: std::time::Duration) -> usize {
        let entries = self.entries.lock();
        let now = now_ms();
        let min = min_idle.as_millis() as u64;
        let idle = |e: &&Entry| {
            e.shared.idle.load(Ordering::SeqCst)
                && now.saturating_sub(e.shared.idle_since.load(Ordering::SeqCst)) >= min
        };
        let mut closed = 0;
        for entry in entries.values().filter(idle) {
            shut(entry.client, std::net::Shutdown::Read);
            closed += 1;
        }
        closed
    }

    fn remove(&self, id: u64) {
        let mut entries = self.entries.lock();
        entries.remove(&id);
        if entries.is_empty() {
            self.emptied.notify_all();
        }
    }
}

/// A request head begun but not finished when its connection parked (or not begun, for a new
/// connection that had sent nothing yet): the bytes so far and when its `header_ms` clock
/// started, which parking does not reset.
#[derive(Debug)]
pub struct PartialHead {
    pub started: Instant,
    pub bytes: Vec<u8>,
    /// Not a request head but a TLS ClientHello, read in tcp mode to route by SNI: at
    /// `header_ms` it goes back to a worker, which decides (the default pool for a client that
    /// sent nothing, a close for half a ClientHello); it is never answered 408.
    pub hello: bool,
}

/// A relay or tunnel gone quiet, waiting in the parker with its connection: the backend socket
/// (still registered, so a forced close shuts it), what to watch on each side, when the idle
/// limit ends it, and what the mode needs to resume (its slot, counts, TLS state, held bytes).
pub struct Quiet {
    pub backend: TcpStream,
    /// The backend's id, for [`Registry::close_backends`].
    pub backend_id: u64,
    /// What the client's socket is watched for: input while it is open and the relay could
    /// take it (an ended input reads EOF for ever), room while bytes wait for it.
    pub on_client: Interest,
    /// What the backend's is watched for.
    pub on_backend: Interest,
    /// When the idle limit (`idle_ms`, `tunnel_ms`) ends it: it goes back to a worker then,
    /// which closes and logs it.
    pub deadline: Option<Instant>,
    /// The mode's own state.
    pub state: Box<dyn std::any::Any + Send>,
}

impl Quiet {
    /// A relay or tunnel gone quiet at `progress`: it watches what [`Progress::interest`] says,
    /// and `idle` (zero: none) after its last byte ends it. The mode's state is put in
    /// [`Quiet::with`].
    pub fn after(progress: &Progress, idle: Duration, backend: TcpStream, backend_id: u64) -> Quiet {
        let (on_client, on_backend) = progress.interest();
        let deadline = progress.deadline(idle);
        Quiet { backend, backend_id, on_client, on_backend, deadline, state: Box::new(()) }
    }

    /// This, carrying the mode's `state`.
    pub fn with(self, state: Box<dyn std::any::Any + Send>) -> Quiet {
        Quiet { state, ..self }
    }
}

impl std::fmt::Debug for Quiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quiet")
            .field("backend", &self.backend)
            .field("on_client", &self.on_client)
            .field("on_backend", &self.on_backend)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// An accepted client connection, registered until dropped.
#[derive(Debug)]
pub struct Conn {
    /// Sequence number, as in the logs (`conn 17`).
    pub id: u64,
    /// The client's address: the socket's peer, or the one a PROXY protocol header named.
    pub peer: SocketAddr,
    /// The address the client reached, when a PROXY protocol header named it; otherwise the
    /// socket's own local address is looked up when needed.
    pub local: Option<SocketAddr>,
    /// When it was accepted.
    pub accepted: Instant,
    /// The client socket.
    pub stream: TcpStream,
    /// Set when the connection comes back from the parker ([`crate::park`]): idle since then,
    /// between two requests, its next one arriving.
    pub parked_since: Option<Instant>,
    /// Sent back by [`crate::park::Parker::requeue`], not found readable: read without waiting.
    pub requeued: bool,
    /// Set when the connection comes back from the parker in the middle of a request head
    /// (or of a TLS handshake: then `handshake` holds its state, and `head` its clock).
    pub head: Option<PartialHead>,
    /// A PROXY protocol header begun (its bytes so far) while the connection waits in the
    /// parker for the rest ([`Conn::greet`]).
    pub greeting: Option<Vec<u8>>,
    /// A TLS handshake waiting in the parker.
    pub handshake: Option<crate::tls::stream::Pending>,
    /// A TLS session's state while its connection waits in the parker.
    pub tls_session: Option<Box<parking_lot::Mutex<rustls::Connection>>>,
    /// The client socket's read and write timeouts as HTTP mode last set them (`None`: not
    /// known), kept across a park so that a resumed connection does not set them again.
    pub timeouts: (Option<Duration>, Option<Duration>),
    /// A quiet relay or tunnel's backend side and state (see [`Conn::go_quiet`]).
    quiet: Option<Box<Quiet>>,
    /// Per-client policy: checked once (`allow`, `deny`, the connection limit), and the slot
    /// held against `max_conns_per_client` while the connection lives, parked or not.
    pub admitted: Option<Option<policy::Slot>>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
}

impl Conn {
    /// Registers `stream` under `id`.
    pub fn register(registry: &Arc<Registry>, id: u64, stream: TcpStream, peer: SocketAddr) -> Conn {
        let shared = Arc::new(Shared::default());
        let entry = Entry { client: stream.as_raw_fd(), shared: shared.clone() };
        let mut entries = registry.entries.lock();
        if registry.closing.load(Ordering::SeqCst) {
            shut(entry.client, std::net::Shutdown::Both);
        }
        entries.insert(id, entry);
        drop(entries);
        Conn {
            id,
            peer,
            local: None,
            accepted: Instant::now(),
            stream,
            parked_since: None,
            requeued: false,
            head: None,
            greeting: None,
            handshake: None,
            tls_session: None,
            quiet: None,
            timeouts: (None, None),
            admitted: None,
            shared,
            registry: registry.clone(),
        }
    }

    /// Whether the proxy has cut every connection ([`Registry::close_all`]: the drain deadline
    /// passed, or a second Ctrl-C). A failure from then on is the proxy's doing, not a peer's:
    /// neither retried nor counted against a backend.
    pub fn cut(&self) -> bool {
        self.registry.closing.load(Ordering::SeqCst)
    }

    /// Whether, waiting for a head, it is new: nothing of a request (nor of a PROXY header)
    /// came yet. At a stop such a connection still gets [`SHUTDOWN_GRACE`] for it.
    pub fn sent_nothing(&self) -> bool {
        self.head.as_ref().is_none_or(|h| h.bytes.is_empty())
            && self.greeting.as_ref().is_none_or(Vec::is_empty)
    }

    /// Whether it waits for the rest of a ClientHello read to route by SNI (tcp mode).
    pub fn reading_hello(&self) -> bool {
        self.head.as_ref().is_some_and(|h| h.hello)
    }

    /// Whether it comes back from the parker (greeted before: no PROXY header to read).
    pub fn was_parked(&self) -> bool {
        self.parked_since.is_some() || self.head.is_some() || self.quiet.is_some()
    }

    /// Keeps a quiet relay's backend side with the connection while it waits in the parker,
    /// the backend socket registered as an attached one is (no guard is alive then).
    pub fn go_quiet(&mut self, quiet: Quiet) {
        let mut slot = self.shared.backend.lock();
        *slot = Some((quiet.backend.as_raw_fd(), quiet.backend_id));
        if self.registry.closing.load(Ordering::SeqCst) {
            shut(quiet.backend.as_raw_fd(), std::net::Shutdown::Both);
        }
        drop(slot);
        self.quiet = Some(Box::new(quiet));
    }

    /// The quiet relay's side, while it waits.
    pub fn quiet(&self) -> Option<&Quiet> {
        self.quiet.as_deref()
    }

    /// Takes the quiet relay's side back to resume it (attach its socket again to relay).
    pub fn take_quiet(&mut self) -> Option<Box<Quiet>> {
        let quiet = self.quiet.take()?;
        *self.shared.backend.lock() = None;
        Some(quiet)
    }

    /// Registers the backend socket too, until the returned guard drops. The guard borrows
    /// `backend`, so the socket cannot close (and its descriptor be reused) while registered.
    pub fn attach<'a>(&'a self, backend: &'a TcpStream, backend_id: u64) -> Attached<'a> {
        let mut slot = self.shared.backend.lock();
        *slot = Some((backend.as_raw_fd(), backend_id));
        // `close_all` sets the flag before it visits entries, so either it sees this socket or
        // this sees the flag.
        if self.registry.closing.load(Ordering::SeqCst) {
            shut(backend.as_raw_fd(), std::net::Shutdown::Both);
        }
        drop(slot);
        Attached { conn: self, _backend: backend }
    }

    /// The answer to a request head refused before any backend was asked, logged once: in the
    /// main log at warn, and, when the access log is a standard one, a line there too (as
    /// nginx logs its 400s and 408s), with no request to name. The caller writes it and closes;
    /// `None` when the close is the only answer. A worker's refusals and the parker's 408 alike.
    pub fn refuse_head(&self, f: &Failure) -> Option<Vec<u8>> {
        let answer = refusal(f)?;
        // The client's own affair, as nginx logs "client sent invalid request" and "client
        // timed out": info, so that a crowd of them cannot flood the warnings.
        log::info!("conn {} from {}: refused with {}: {f}", self.id, self.peer, answer.status);
        let (status, ip) = (answer.status, self.peer.ip());
        access::refused(ip, status, &answer.bytes, self.accepted.elapsed(), f, |note| {
            format!("conn {} from {}: refused with {status}: {note}", self.id, self.peer)
        });
        Some(answer.bytes)
    }

    /// A client that closed with its request head unfinished (`buffered`): a line at info, and
    /// in a standard access log a 400 with nothing sent, as nginx logs it. Empty lines before a
    /// head (RFC 9112 2.2) are no head begun.
    pub fn abandoned_head(&self, buffered: &[u8], failed: Option<&std::io::Error>) {
        if crate::h1::empty_lines(buffered) {
            return;
        }
        let how = failed.map_or("closed".to_string(), |e| format!("failed ({})", crate::net::describe(e)));
        let why =
            format!("client connection {how} with its request head unfinished ({} bytes)", buffered.len());
        log::info!("conn {} from {}: {why}", self.id, self.peer);
        access::refused(self.peer.ip(), 400, &[], self.accepted.elapsed(), &why, |note| {
            format!("conn {} from {}: {note}", self.id, self.peer)
        });
    }

    /// Marks the connection as waiting for its next request (true) or busy (false); waiting
    /// ones are closed at once on shutdown.
    pub fn set_idle(&self, idle: bool) {
        if idle && !self.shared.idle.load(Ordering::Relaxed) {
            self.shared.idle_since.store(now_ms(), Ordering::SeqCst);
        }
        self.shared.idle.store(idle, Ordering::SeqCst);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Runs before the fields drop, so the entry goes before the socket closes.
        self.registry.remove(self.id);
    }
}

/// Keeps a backend socket registered with its connection; it borrows the socket, which
/// therefore outlives the registration (what `shut` relies on).
#[derive(Debug)]
pub struct Attached<'a> {
    conn: &'a Conn,
    _backend: &'a TcpStream,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        *self.conn.shared.backend.lock() = None;
    }
}
