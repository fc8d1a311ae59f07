//! `frostheap info`: what this machine offers and what limits are in force.

use frostheap::__private::os;
use frostheap::Bytes;

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = frostheap::__private::from_env()?;
    println!("frostheap {}", env!("CARGO_PKG_VERSION"));
    println!("page size            {}", Bytes(os::page_size()));
    println!(
        "heap page            {}",
        Bytes(frostheap::__private::PAGE_SIZE)
    );
    let thp = match os::thp_mode() {
        os::ThpMode::Always => "always",
        os::ThpMode::Madvise => "madvise (frostheap advises MADV_HUGEPAGE)",
        os::ThpMode::Never => "never (not available)",
    };
    println!(
        "transparent huge     {thp}, {} pages",
        Bytes(os::HUGE_PAGE_SIZE)
    );
    println!(
        "huge pages in use    {} (FROSTHEAP_HUGE_PAGES={:?})",
        match cfg.huge_pages {
            _ if !cfg.huge_pages.enabled() => "no",
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
    println!("protection keys      {pkeys}");
    let backend = frostheap::__private::resolve(cfg.protect)?;
    println!(
        "freeze backend       {} (FROSTHEAP_PROTECT={:?}), policy {} (FROSTHEAP_ON_VIOLATION)",
        backend.name(),
        cfg.protect,
        cfg.on_violation.name()
    );
    let physical = os::physical_memory();
    println!("physical memory      {}", Bytes(physical));
    let cgroup = os::cgroup::memory_limit();
    if let Some(limit) = cgroup {
        println!(
            "cgroup memory limit  {} (a container's, a unit's)",
            Bytes(limit)
        );
    }
    let address_space = os::address_space_limit();
    if let Some(limit) = address_space {
        println!("address space        {} (ulimit -v)", Bytes(limit));
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
    println!("process limit        {}{why}", Bytes(cfg.max));
    println!("main heap min        {} (FROSTHEAP_MIN)", Bytes(cfg.min));
    Ok(())
}
