//! Shutdown signals: Ctrl-C (SIGINT, via ctrlc) and SIGTERM (via signal-hook) both arrive as
//! one message on a channel naming the signal.

use crossbeam_channel::Receiver;
use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;

use crate::error::Error;

/// Installs the handlers; the receiver yields `"SIGINT"` or `"SIGTERM"`.
pub fn shutdown_channel() -> Result<Receiver<&'static str>, Error> {
    let (tx, rx) = crossbeam_channel::bounded(4);
    let int_tx = tx.clone();
    ctrlc::set_handler(move || {
        let _ = int_tx.try_send("SIGINT");
    })
    .map_err(|e| Error::Resource(std::io::Error::other(e)))?;
    let mut signals = Signals::new([SIGTERM]).map_err(Error::Resource)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                let _ = tx.try_send("SIGTERM");
            }
        })
        .map_err(Error::Resource)?;
    Ok(rx)
}
