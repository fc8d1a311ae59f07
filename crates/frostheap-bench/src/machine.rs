//! What a report says about the machine it was measured on: CPUs, model,
//! and the load average before and after (a figure measured while other
//! work ran says so).

/// The number of CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model from `/proc/cpuinfo`, or `unknown CPU`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// The one-minute load average from `/proc/loadavg`, or `?`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// The machine at the start of a run; [`Machine::describe`] at its end
/// gives the sentence a report opens with.
#[derive(Clone, Debug)]
pub struct Machine {
    load_before: String,
}

impl Machine {
    /// Notes the load average now.
    pub fn now() -> Machine {
        Machine {
            load_before: loadavg(),
        }
    }

    /// `2 CPUs (model), load average 0.98 before / 1.06 after`.
    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), load average {} before / {} after",
            cpus(),
            cpu_model(),
            self.load_before,
            loadavg()
        )
    }
}

/// Writes `path` back to disk and drops its pages from the page cache, so
/// that the next process to map it reads it from disk, as a program reads
/// an installed library. A file the build has just written is in the page
/// cache as it was written, and the kernel then maps more of it around
/// each fault than it maps of a file read from disk: a trivial C program
/// under a freshly built `libfrostheap.so` peaked at 1,768 KiB, and at
/// 1,668–1,676 KiB once the file had been read back, while the baselines'
/// libraries, installed long before, are always read from disk. Pages
/// that a running process maps stay (the kernel drops only unmapped
/// ones).
pub fn read_from_disk_next(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    f.sync_data()?;
    // SAFETY: posix_fadvise only reads its arguments; the descriptor is
    // open for the call.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_cpus_and_load() {
        let d = Machine::now().describe();
        assert!(d.starts_with(&format!("{} CPUs (", cpus())), "{d}");
        assert!(d.contains(" before / ") && d.ends_with(" after"), "{d}");
    }
}
