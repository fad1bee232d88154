//! The message printed on Ctrl-C, with the way to resume.

/// Installs a SIGINT handler that prints how to resume and exits with status 130, the shell's
/// code for an interrupt. Files are written under temporary names and renamed, so stopping at
/// any point leaves no half-written file under its final name.
#[cfg(unix)]
pub fn report_interrupts() {
    use std::ffi::{c_int, c_void};

    const SIGINT: c_int = 2;
    unsafe extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        fn write(fd: c_int, buffer: *const c_void, count: usize) -> isize;
        fn _exit(status: c_int) -> !;
    }

    extern "C" fn on_interrupt(_: c_int) {
        let message = b"\ninterrupted: finished epochs and generated images are kept; run the same command again to resume\n";
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            write(2, message.as_ptr().cast(), message.len());
            _exit(130);
        }
    }

    // SAFETY: the handler only calls async-signal-safe functions.
    unsafe {
        signal(SIGINT, on_interrupt);
    }
}

#[cfg(not(unix))]
pub fn report_interrupts() {}
