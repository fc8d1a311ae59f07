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
