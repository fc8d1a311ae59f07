//! The process-wide default runtime, like rayon's global pool:
//! [`global_runtime`] builds it on first use from the environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `FROSTHEAP_WORKERS` | worker threads, 1 to 1024 | available parallelism |
//! | `FROSTHEAP_MEMORY_BUDGET` | memory budget for batches (`256M`, `1G`, ...) | none |
//! | `FROSTHEAP_MAX_PARKED` | parked threads tolerated (cancel policy; workers + parked ≤ 1024) | 64 (`DEFAULT_MAX_PARKED`), or `1024 - workers` if less |
//!
//! plus what every runtime reads (`FROSTHEAP_PROTECT`,
//! `FROSTHEAP_ON_VIOLATION`, `FROSTHEAP_TRACK_ALLOCS`). A bad value stops
//! the process with one line naming the variable, the value and what is
//! accepted ([`try_global_runtime`] returns it as an error instead). The
//! variables are read at first use, after `main` started, so std's
//! environment access is used here, not the allocation-free parser of
//! `config`.

use std::sync::OnceLock;

use super::builder::RuntimeBuilder;
use super::pool::Runtime;
use crate::error::Error;

/// The most worker threads `FROSTHEAP_WORKERS` accepts (one context heap
/// each, see `context::N_SLOTS`).
const MAX_WORKERS: usize = crate::context::N_SLOTS;

static GLOBAL: OnceLock<Result<Runtime, Error>> = OnceLock::new();

/// The process-wide runtime, built on first use from the environment:
/// `FROSTHEAP_WORKERS` (worker threads, 1 to 1024; default: available
/// parallelism), `FROSTHEAP_MEMORY_BUDGET` (a size such as `256M`; default:
/// none), `FROSTHEAP_MAX_PARKED` (workers + parked ≤ 1024; default 64,
/// or `1024 - workers` if less), plus what every runtime reads
/// (`FROSTHEAP_PROTECT`, `FROSTHEAP_ON_VIOLATION`). It guards the main
/// heap in global mode, like any runtime.
///
/// A bad environment value, or a runtime that cannot start, stops the
/// process with one line on stderr and exit status 2.
///
/// ```
/// let rt = frostheap::global_runtime();
/// assert_eq!(rt.map(0..4u32, |x| x * 2)?, [0, 2, 4, 6]);
/// # Ok::<(), frostheap::Error>(())
/// ```
pub fn global_runtime() -> &'static Runtime {
    match try_global_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            crate::os::write_stderr(format!("frostheap: {e}\n").as_bytes());
            std::process::exit(2)
        }
    }
}

/// [`global_runtime`], with a bad environment value or a failed start
/// returned as the error (every later call returns the same error).
pub fn try_global_runtime() -> Result<&'static Runtime, Error> {
    GLOBAL
        .get_or_init(|| {
            from_env(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))?
                .build()
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A builder configured from the variables `lookup` returns.
pub(crate) fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<RuntimeBuilder, Error> {
    let mut b = Runtime::builder();
    if let Some(v) = lookup("FROSTHEAP_WORKERS") {
        let expected = || format!("a whole number of worker threads from 1 to {MAX_WORKERS}");
        let n: usize = v
            .trim()
            .parse()
            .map_err(|_| Error::invalid("FROSTHEAP_WORKERS", &v, expected()))?;
        if !(1..=MAX_WORKERS).contains(&n) {
            return Err(Error::invalid("FROSTHEAP_WORKERS", &v, expected()));
        }
        b = b.workers(n);
    }
    if let Some(v) = lookup("FROSTHEAP_MEMORY_BUDGET") {
        let expected = "a size of at least 1 byte, such as 256M or 1G";
        match crate::size::parse_size(&v) {
            Ok(0) | Err(_) => return Err(Error::invalid("FROSTHEAP_MEMORY_BUDGET", &v, expected)),
            Ok(bytes) => b = b.memory_budget(bytes),
        }
    }
    if let Some(v) = lookup("FROSTHEAP_MAX_PARKED") {
        let n: usize = v.trim().parse().map_err(|_| {
            Error::invalid(
                "FROSTHEAP_MAX_PARKED",
                &v,
                "a whole number of parked threads",
            )
        })?;
        b = b.max_parked(n);
        // A count that does not fit beside the workers is refused by
        // `build` as the builder's `max_parked`; the line names the
        // variable the value came from instead.
        if let Err(Error::InvalidConfig {
            name: "max_parked",
            expected,
            ..
        }) = b.counts(super::builder::available_parallelism())
        {
            return Err(Error::invalid("FROSTHEAP_MAX_PARKED", &v, expected));
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn err_line(vars: &[(&str, &str)]) -> String {
        match from_env(env(vars)) {
            Err(e) => e.to_string(),
            Ok(b) => panic!("{vars:?} was accepted: {b:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_what_is_accepted() {
        let line = err_line(&[("FROSTHEAP_WORKERS", "two")]);
        assert!(
            line.contains("FROSTHEAP_WORKERS")
                && line.contains("\"two\"")
                && line.contains("1 to 1024"),
            "{line}"
        );
        let line = err_line(&[("FROSTHEAP_WORKERS", "0")]);
        assert!(line.contains("FROSTHEAP_WORKERS=\"0\""), "{line}");
        let line = err_line(&[("FROSTHEAP_WORKERS", "1025")]);
        assert!(line.contains("1025"), "{line}");
        let line = err_line(&[("FROSTHEAP_MEMORY_BUDGET", "lots")]);
        assert!(
            line.contains("FROSTHEAP_MEMORY_BUDGET") && line.contains("256M"),
            "{line}"
        );
        let line = err_line(&[("FROSTHEAP_MEMORY_BUDGET", "0")]);
        assert!(line.contains("at least 1 byte"), "{line}");
        let line = err_line(&[("FROSTHEAP_MAX_PARKED", "-1")]);
        assert!(line.contains("FROSTHEAP_MAX_PARKED"), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }

    #[test]
    fn a_max_parked_that_does_not_fit_beside_the_workers_names_the_variable() {
        let line = err_line(&[
            ("FROSTHEAP_WORKERS", "100"),
            ("FROSTHEAP_MAX_PARKED", "1000"),
        ]);
        assert!(
            line.contains("FROSTHEAP_MAX_PARKED=\"1000\"")
                && line.contains("at most 924 with 100 workers"),
            "{line}"
        );
        assert!(!line.contains("invalid max_parked"), "{line}");
        // What fits is accepted.
        from_env(env(&[
            ("FROSTHEAP_WORKERS", "100"),
            ("FROSTHEAP_MAX_PARKED", "924"),
        ]))
        .expect("924 fits beside 100 workers");
    }

    #[test]
    fn good_values_configure_the_builder() {
        let b = from_env(env(&[
            ("FROSTHEAP_WORKERS", " 3 "),
            ("FROSTHEAP_MEMORY_BUDGET", "64M"),
            ("FROSTHEAP_MAX_PARKED", "7"),
        ]))
        .expect("valid values");
        let text = format!("{b:?}");
        assert!(text.contains("workers: Some(3)"), "{text}");
        assert!(text.contains("memory_budget: Some(67108864)"), "{text}");
        assert!(text.contains("max_parked: Some(7)"), "{text}");
        let b = from_env(env(&[])).expect("nothing set");
        assert!(format!("{b:?}").contains("workers: None"));
    }
}
