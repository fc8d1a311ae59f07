//! `ulimit -v` for a child process, shared by the C ABI's tests and the
//! command's (`#[path]`-included by both).

use std::process::Command;

/// `cmd` under an address-space limit (`RLIMIT_AS`) of `bytes`, set in
/// the child before it executes the program.
pub fn with_address_space(cmd: &mut Command, bytes: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}
