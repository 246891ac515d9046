//! Memory an idle worker can give back: the pages of its own stack that a deep call touched
//! once it has returned, and (at most once a second, process-wide) the allocator's free pages,
//! so thousands of idle workers don't each keep their busiest moment resident.
//!
//! A worker serving a request runs deep (head parsing keeps a hundred header slots on the
//! stack, logging formats in place); waiting for the next request it runs shallow. The pages in
//! between stay resident until the kernel is told they are free: `madvise(MADV_DONTNEED)` on
//! the part of the stack below the current frame (less a margin) does that, and they come back
//! zeroed, on demand, the next time the thread runs deep.

use std::cell::Cell;

/// Kept below the current frame: what is live below it while `madvise` runs, which is the
/// rest of [`release_unused`]'s own frame, the red zone (128 bytes) and the libc wrapper's
/// frame, a few hundred bytes in all. A signal's frame needs no room here: it is written
/// after the call returns (or before it starts), and the pages it lands on come back
/// zeroed, on demand. Measured: a waiting worker's frames plus its TLS and thread
/// descriptor take about 5.7 KiB, so this margin keeps it at two resident pages, not four.
const MARGIN: usize = 2 * 1024;

thread_local! {
    /// The lowest usable address of this thread's stack (0: unknown).
    static LOW: Cell<usize> = const { Cell::new(0) };
}

fn page_size() -> usize {
    rustix::param::page_size()
}

/// The lowest usable address of the calling thread's stack, from pthread.
fn stack_low() -> Option<usize> {
    let known = LOW.with(Cell::get);
    if known != 0 {
        return Some(known);
    }
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is read and destroyed
    // after; the out-pointers point at locals.
    let low = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if got != 0 {
            return None;
        }
        addr as usize
    };
    LOW.with(|l| l.set(low));
    Some(low)
}

/// Tells the kernel that this thread's stack pages below the current frame (less a margin)
/// hold nothing, so it may reclaim them. Returns the bytes given back (0 when there is
/// nothing to give, or the stack's bounds are unknown).
#[inline(never)]
pub fn release_unused() -> usize {
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    let Some(low) = stack_low() else { return 0 };
    let page = page_size();
    let top = sp.saturating_sub(MARGIN) & !(page - 1);
    let start = (low + page - 1) & !(page - 1);
    if top <= start {
        return 0;
    }
    // SAFETY: [start, top) lies inside this thread's own stack, below the current frame by
    // MARGIN: no live frame is there (the stack grows down), and no other thread uses it. A
    // signal handler runs in this thread only before or after the call, on the stack above
    // `top`. MADV_DONTNEED on private anonymous memory only makes the pages read as zero later.
    let done = unsafe { libc::madvise(start as *mut libc::c_void, top - start, libc::MADV_DONTNEED) };
    if done == 0 {
        top - start
    } else {
        0
    }
}

/// How long a worker waits idle (for a request, or for a connection) before it gives back
/// memory: long enough that a busy worker never pays for it.
pub const TRIM_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// What an idle worker does once it has dropped its own buffers: gives back its stack pages
/// below the current frame ([`release_unused`]) and asks the main thread to trim the heap
/// ([`want_heap_trim`]). Inlined, so the stack is measured from the caller's frame.
#[inline]
pub fn give_back() {
    release_unused();
    want_heap_trim();
}

static TRIM_WANTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks for [`trim_heap_if_wanted`]: a worker freed its buffers as its connection went idle.
pub fn want_heap_trim() {
    TRIM_WANTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Returns the allocator's free pages to the kernel (glibc `malloc_trim`) if a worker asked
/// since the last call: freed buffers otherwise stay resident in malloc's arenas. Called about
/// once a second by the server's main thread, never on a request's path.
pub fn trim_heap_if_wanted() {
    if !TRIM_WANTED.swap(false, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn deep(n: usize) -> u64 {
        let mut buf = [0u8; 4096];
        buf[n % 4096] = n as u8;
        let below = if n > 0 { deep(n - 1) } else { 0 };
        std::hint::black_box(&buf).iter().map(|&b| u64::from(b)).sum::<u64>() + below
    }

    #[test]
    fn a_deep_call_is_given_back_and_the_thread_runs_on() {
        let t = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let before = deep(40);
                let released = release_unused();
                // Deep again after the release: the pages come back, zeroed, and work.
                let after = deep(40);
                (released, before, after)
            })
            .expect("spawn");
        let (released, before, after) = t.join().expect("join");
        assert!(released >= 100 * 1024, "released {released} bytes of a 160 KiB deep call");
        assert_eq!(before, after);
    }
}
