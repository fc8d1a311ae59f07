//! `frostheap info`: what this machine offers and what limits are in force.

use frostheap::__private::os;
use frostheap::Bytes;

use crate::out::outln;

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = frostheap::__private::from_env()?;
    outln!("frostheap {}", env!("CARGO_PKG_VERSION"));
    outln!("page size            {}", Bytes(os::page_size()));
    outln!(
        "heap page            {}",
        Bytes(frostheap::__private::PAGE_SIZE)
    );
    let thp = match os::thp_mode() {
        os::ThpMode::Always => "always",
        os::ThpMode::Madvise => "madvise (frostheap advises MADV_HUGEPAGE)",
        os::ThpMode::Never => "never (not available)",
    };
    outln!(
        "transparent huge     {thp}, {} pages",
        Bytes(os::HUGE_PAGE_SIZE)
    );
    outln!(
        "huge pages in use    {} (FROSTHEAP_HUGE_PAGES={})",
        match cfg.huge_pages {
            _ if !cfg.huge_pages.enabled() => "no",
            frostheap::HugePages::Auto if !cfg.huge_pages.enabled_for(cfg.max) => {
                "no for the main heap (FROSTHEAP_MAX under 64 MiB); explicit heaps of 64 MiB or more"
            }
            frostheap::HugePages::Auto => {
                "yes; a Rust program's main heap from its first mprotect-backend guard"
            }
            _ => "yes",
        },
        cfg.huge_pages
    );
    let pkeys = match frostheap::__private::pkey() {
        Ok(k) => format!("available (key {k} allocated)"),
        Err(e) => format!("not available ({e})"),
    };
    outln!("protection keys      {pkeys}");
    let backend = frostheap::__private::resolve(cfg.protect)?;
    outln!(
        "freeze backend       {} (FROSTHEAP_PROTECT={}), policy {} (FROSTHEAP_ON_VIOLATION)",
        backend.name(),
        cfg.protect,
        cfg.on_violation.name()
    );
    let physical = os::physical_memory();
    outln!("physical memory      {}", Bytes(physical));
    let cgroup = os::cgroup::memory_limit();
    if let Some(limit) = cgroup {
        outln!(
            "cgroup memory limit  {} (a container's, a unit's)",
            Bytes(limit)
        );
    }
    let address_space = os::address_space_limit();
    if let Some(limit) = address_space {
        outln!("address space        {} (ulimit -v)", Bytes(limit));
    }
    // Which bound gave the default: the least of the three
    // (config::default_max), the first named on a tie.
    let why = if cfg.max_from_env {
        " (FROSTHEAP_MAX)"
    } else if cfg.max == frostheap::__private::default_max(physical, None, None) {
        " (physical memory; set FROSTHEAP_MAX to cap it)"
    } else if cgroup.is_some()
        && cfg.max == frostheap::__private::default_max(usize::MAX, cgroup, None)
    {
        " (three quarters of the cgroup's memory limit; set FROSTHEAP_MAX to change it)"
    } else {
        " (within a quarter of the address space; set FROSTHEAP_MAX to change it)"
    };
    outln!("process limit        {}{why}", Bytes(cfg.max));
    let precommit = frostheap::__private::main_precommit(cfg.min, cfg.max);
    if precommit < cfg.min {
        outln!(
            "main heap min        {} (FROSTHEAP_MIN), {} of it committed up front: the limit less {} kept for other threads and mappings",
            Bytes(cfg.min),
            Bytes(precommit),
            Bytes(cfg.max - precommit)
        );
    } else {
        outln!("main heap min        {} (FROSTHEAP_MIN)", Bytes(cfg.min));
    }
    Ok(())
}

/// The least process limit the `frostheap` command starts with: it parses
/// its arguments from 1.8 MiB on (`frostheap serve`, measured with
/// `FROSTHEAP_MAX`; at 1 MiB even `--version` ran out), with room for
/// its first steps.
const LEAST_LIMIT: usize = 4 << 20;

/// Refuses to start under a process limit (`FROSTHEAP_MAX`) too small for
/// the command itself, with one line: under `FROSTHEAP_MAX=1M` every
/// command aborted in its argument parser with a backtrace. Called first,
/// before anything allocates much: it allocates nothing itself.
pub(crate) fn limit_too_small() -> bool {
    let limit = frostheap::stats().limit;
    if limit >= LEAST_LIMIT {
        return false;
    }
    crate::out::errln!(
        "frostheap: the process limit of {} (FROSTHEAP_MAX) is too small for the frostheap command itself; expected FROSTHEAP_MAX of at least {}",
        Bytes(limit),
        Bytes(LEAST_LIMIT),
    );
    true
}
