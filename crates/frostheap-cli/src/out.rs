//! Lines to stdout and stderr that do not fail when their reader has gone.
//!
//! `println!` and `eprintln!` panic when the write fails: with stderr a
//! pipe whose reader had left (a log shipper restarted), the line `serve`
//! writes at SIGTERM panicked, the process exited with status 101 and the
//! requests in flight were cut, where the shutdown promises to finish them
//! and exit with 0; `frostheap tour | head -1` ended the same way. A
//! diagnostic nobody reads is no reason to stop: these macros write the
//! line on a locked handle and drop the error (Rust ignores `SIGPIPE`, so
//! the write fails with `EPIPE` instead of killing the process).

/// `println!` that ignores a failed write.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a failed write.
#[allow(unused_macros)] // frostheap-load writes to stdout only
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

#[allow(unused_imports)]
pub(crate) use {errln, outln};
