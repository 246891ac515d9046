//! Process signals: Ctrl-C (SIGINT, via ctrlc) and SIGTERM stop the proxy, and a second one
//! during the drain stops it at once (each is queued on `stop`); SIGHUP reloads its
//! configuration; SIGUSR1 reopens the log files (after logrotate renamed them), as nginx does.
//! SIGTERM, SIGHUP and SIGUSR1 come through signal-hook, since ctrlc's `termination` feature
//! would also take SIGHUP.

use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals as SignalIter;

use crate::error::Error;

/// What the proxy listens to: `stop` yields the signal's name, `reload` a unit per SIGHUP.
pub struct Signals {
    pub stop: Receiver<&'static str>,
    pub reload: Receiver<()>,
}

impl Signals {
    /// Channels that never fire (tests, embedding); keep the senders to fire them.
    pub fn manual() -> (crossbeam_channel::Sender<&'static str>, crossbeam_channel::Sender<()>, Signals) {
        let (stop_tx, stop) = crossbeam_channel::bounded(4);
        let (reload_tx, reload) = crossbeam_channel::bounded(4);
        (stop_tx, reload_tx, Signals { stop, reload })
    }
}

/// Installs the handlers.
pub fn install() -> Result<Signals, Error> {
    let (stop_tx, reload_tx, signals) = Signals::manual();
    let int_tx = stop_tx.clone();
    ctrlc::set_handler(move || {
        let _ = int_tx.try_send("SIGINT");
    })
    .map_err(|e| Error::Resource(std::io::Error::other(e)))?;
    let mut iter = SignalIter::new([SIGTERM, SIGHUP, SIGUSR1]).map_err(Error::Resource)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in iter.forever() {
                if sig == SIGHUP {
                    let _ = reload_tx.try_send(());
                } else if sig == SIGUSR1 {
                    // Each file moves to its path's new file before its next line; this line is
                    // the main log's first in its new file. When the path cannot be opened, it and
                    // the lines after it go on in the old file (stderr says "cannot reopen")
                    // until a signal finds the path free.
                    crate::logging::reopen::reopen();
                    log::info!("SIGUSR1: reopening the log files");
                } else {
                    let _ = stop_tx.try_send("SIGTERM");
                }
            }
        })
        .map_err(Error::Resource)?;
    Ok(signals)
}
