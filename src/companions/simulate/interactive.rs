//! `simulate_client --interactive`: what `nc` does for the classic demo, for machines without
//! netcat. One connection through the proxy; each line typed is sent, each line the backend
//! answers is printed.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::{not_running_hint, ClientArgs};
use crate::logging::out;

/// Connects to `args.target`, then copies stdin's lines to the connection and the
/// connection's lines to stdout until either side ends. Returns once the proxy has closed
/// after our end of input; when it closes first, the process exits (status 0), as nc does.
pub fn run(args: &ClientArgs) -> io::Result<()> {
    let target = super::target(args)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let stream = TcpStream::connect_timeout(&target, timeout).map_err(|e| not_running_hint(target, e))?;
    let _ = stream.set_nodelay(true);
    out::err_line(format_args!(
        "connected to {target}; type a line and press Enter (Ctrl-D ends). This is one connection, \
         so every line goes to the same backend: run again for a new choice."
    ));
    let input_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stream, input_done) = (stream.try_clone()?, input_done.clone());
        thread::Builder::new()
            .name("replies".into())
            .spawn(move || print_replies(stream, target, &input_done))?
    };
    let mut writer = &stream;
    for line in io::stdin().lock().lines() {
        let line = line?;
        if writer.write_all(format!("{line}\n").as_bytes()).is_err() {
            break;
        }
    }
    // Like `nc -N`: end of input half-closes, and the replies still on their way are printed.
    input_done.store(true, Ordering::SeqCst);
    let _ = stream.shutdown(Shutdown::Write);
    let _ = reader.join();
    Ok(())
}

fn print_replies(stream: TcpStream, target: SocketAddr, input_done: &AtomicBool) {
    for line in BufReader::new(stream).lines() {
        match line {
            Ok(line) => {
                if out::line(format_args!("{line}")).is_err() {
                    return;
                }
            }
            Err(e) => {
                out::err_line(format_args!("connection to {target}: {e}"));
                return;
            }
        }
    }
    // After our own end of input the close is the ordinary end; before it, the proxy (or the
    // backend) ended the conversation, and the proxy's log says why. As nc does then, exit:
    // the main thread is blocked reading the terminal, and nothing typed could go anywhere.
    if !input_done.load(Ordering::SeqCst) {
        out::err_line(format_args!("connection closed by {target} (the proxy's log says why)"));
        let _ = io::stdout().flush();
        std::process::exit(0);
    }
}
