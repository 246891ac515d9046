//! Log files that can be reopened, as nginx's on SIGUSR1: logrotate renames the file, sends the
//! signal, and every line written after it goes to a new file at the old path.
//!
//! [`reopen`] bumps a process-wide generation; each [`ReopenFile`] sees the new generation on
//! its next line and opens its path again. The check is between lines, never within one, so a
//! line is whole in one file or the other: nothing is lost or written twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped by [`reopen`]; each file compares it with the generation it opened at.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Asks every [`ReopenFile`] to open its path again before its next line.
pub fn reopen() {
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The current generation: a writer that opened at an older one reopens.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Opens `path` for appending, creating it and its directory.
pub fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// An appending log file that reopens its path, between lines, after [`reopen`].
#[derive(Debug)]
pub struct ReopenFile {
    path: PathBuf,
    file: File,
    generation: u64,
    /// The last write ended a line: the next may switch files.
    line_start: bool,
}

impl ReopenFile {
    /// Opens (creates) `path` for appending; its directory is created.
    pub fn open(path: &Path) -> io::Result<ReopenFile> {
        let generation = generation();
        let file = open_append(path)?;
        Ok(ReopenFile { path: path.to_path_buf(), file, generation, line_start: true })
    }

    /// The path this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again if [`reopen`] was called since it was last opened. When that
    /// fails (a directory removed, no descriptors), lines keep going to the old file and the
    /// error says why; the next signal tries again.
    pub fn follow(&mut self) -> io::Result<()> {
        let now = generation();
        if now == self.generation {
            return Ok(());
        }
        self.generation = now;
        self.file.flush()?;
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

impl Write for ReopenFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.line_start {
            if let Err(e) = self.follow() {
                // The logger's own lock is held here: a log line would deadlock. Say it on stderr.
                crate::logging::out::err_line(format_args!(
                    "cannot reopen {}: {e}; still writing to the old file",
                    self.path.display()
                ));
            }
        }
        let n = self.file.write(buf)?;
        if n > 0 {
            self.line_start = buf[..n].ends_with(b"\n");
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lbproxy-reopen-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_renamed_file_keeps_lines_until_reopen_then_the_path_gets_a_new_file_or_the_old_one_stays() {
        let d = dir("rename");
        let path = d.join("sub/access.log");
        let mut f = ReopenFile::open(&path).expect("open creates the directory");
        f.write_all(b"one\n").expect("write");
        fs::rename(&path, d.join("sub/access.log.1")).expect("rename");
        f.write_all(b"two\n").expect("write");
        reopen();
        // A line written in pieces is never split across the two files.
        f.write_all(b"thr").expect("write");
        reopen();
        f.write_all(b"ee\n").expect("write");
        f.write_all(b"four\n").expect("write");
        let old = fs::read_to_string(d.join("sub/access.log.1")).expect("old");
        let new = fs::read_to_string(&path).expect("new");
        assert_eq!(old, "one\ntwo\n");
        assert_eq!(new, "three\nfour\n");
        let _ = fs::remove_dir_all(&d);

        // One test, since the generation is process-wide: a failed reopen keeps writing to
        // the old file.
        let d = dir("fail");
        let path = d.join("x/access.log");
        let mut f = ReopenFile::open(&path).expect("open");
        fs::rename(d.join("x"), d.join("y")).expect("rename the directory");
        // The directory is created again by the reopen, so block it with a file.
        fs::write(d.join("x"), b"not a directory").expect("block");
        reopen();
        f.write_all(b"kept\n").expect("the line still goes somewhere");
        assert_eq!(fs::read_to_string(d.join("y/access.log")).expect("old"), "kept\n");
        let _ = fs::remove_dir_all(&d);
    }
}
