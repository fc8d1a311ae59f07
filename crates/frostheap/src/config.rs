//! Configuration from the environment, read once at start-up.
//!
//! `FROSTHEAP_MIN`, `FROSTHEAP_MAX` (sizes such as `64M`, `1G`, `1.5GiB`),
//! `FROSTHEAP_HUGE_PAGES=auto|on|off`, `FROSTHEAP_PROTECT=auto|pkey|mprotect|off`,
//! `FROSTHEAP_ON_VIOLATION=cancel|abort|audit` and `FROSTHEAP_TRACK_ALLOCS=0|1`. Parsing never allocates: the
//! global allocator reads these at the first allocation, before `main`. A
//! bad value is an [`EnvError`], which the global allocator prints as one
//! line before exiting with status 2.

use crate::os;
use crate::size::{parse_size_bytes, SizeError, SIZE_SYNTAX};

/// Whether a region uses transparent huge pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugePages {
    /// On where the kernel offers THP (`always` or `madvise` mode).
    #[default]
    Auto,
    /// Always align to 2 MiB and advise `MADV_HUGEPAGE`.
    On,
    /// Plain 64 KiB alignment, no advice.
    Off,
}

impl HugePages {
    /// Resolves `Auto` against the running kernel.
    pub fn enabled(self) -> bool {
        match self {
            HugePages::On => true,
            HugePages::Off => false,
            HugePages::Auto => os::thp_mode() != os::ThpMode::Never,
        }
    }
}

/// The main heap's limits as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvConfig {
    /// Bytes committed at start.
    pub min: usize,
    /// The hard cap.
    pub max: usize,
    /// `FROSTHEAP_MAX` was set (otherwise `max` is physical memory).
    pub max_from_env: bool,
    /// Huge-page policy.
    pub huge_pages: HugePages,
    /// Protection backend requested by `FROSTHEAP_PROTECT`.
    pub protect: crate::trap::Protect,
    /// Violation policy from `FROSTHEAP_ON_VIOLATION`.
    pub on_violation: crate::trap::OnViolation,
    /// `FROSTHEAP_TRACK_ALLOCS=1`.
    pub track_allocs: bool,
}

/// A bad environment value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: &'static [u8],
    /// What is accepted.
    pub expected: &'static str,
}

impl EnvError {
    /// Writes the one-line message to `buf` without allocating.
    pub fn render<'a>(&self, buf: &'a mut [u8]) -> &'a [u8] {
        crate::fmt_buf::Buf::new(buf)
            .str("frostheap: invalid ")
            .str(self.var)
            .str("=\"")
            .bytes(self.value)
            .str("\": expected ")
            .str(self.expected)
            .str("\n")
            .finish()
    }
}

impl core::fmt::Display for EnvError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut buf = [0u8; 512];
        let line = self.render(&mut buf);
        f.write_str(
            core::str::from_utf8(line)
                .unwrap_or("frostheap: invalid environment")
                .trim_end(),
        )
    }
}

impl std::error::Error for EnvError {}

fn size_var(var: &'static str, c: &'static core::ffi::CStr) -> Result<Option<usize>, EnvError> {
    match os::getenv(c) {
        None => Ok(None),
        Some(value) => match parse_size_bytes(value) {
            Ok(n) => Ok(Some(n)),
            Err(SizeError::Malformed) => Err(EnvError {
                var,
                value,
                expected: SIZE_SYNTAX,
            }),
            Err(SizeError::TooLarge) => Err(EnvError {
                var,
                value,
                expected: "a size that fits in 64 bits",
            }),
        },
    }
}

/// Reads the configuration from the environment.
pub fn from_env() -> Result<EnvConfig, EnvError> {
    let min = size_var("FROSTHEAP_MIN", c"FROSTHEAP_MIN")?;
    let max = size_var("FROSTHEAP_MAX", c"FROSTHEAP_MAX")?;
    let huge_pages = match os::getenv(c"FROSTHEAP_HUGE_PAGES") {
        None | Some(b"auto") => HugePages::Auto,
        Some(b"on") => HugePages::On,
        Some(b"off") => HugePages::Off,
        Some(value) => {
            return Err(EnvError {
                var: "FROSTHEAP_HUGE_PAGES",
                value,
                expected: "auto, on or off",
            })
        }
    };
    if let Some(max) = max {
        if max < crate::region::PAGE_SIZE {
            return Err(EnvError {
                var: "FROSTHEAP_MAX",
                value: os::getenv(c"FROSTHEAP_MAX").unwrap_or(b""),
                expected: "at least 64K (one heap page)",
            });
        }
    }
    let protect = match os::getenv(c"FROSTHEAP_PROTECT") {
        None => crate::trap::Protect::Auto,
        Some(value) => core::str::from_utf8(value)
            .ok()
            .and_then(crate::trap::Protect::parse)
            .ok_or(EnvError {
                var: "FROSTHEAP_PROTECT",
                value,
                expected: "auto, pkey, mprotect or off",
            })?,
    };
    let on_violation = match os::getenv(c"FROSTHEAP_ON_VIOLATION") {
        None => crate::trap::OnViolation::Cancel,
        Some(value) => core::str::from_utf8(value)
            .ok()
            .and_then(crate::trap::OnViolation::parse)
            .ok_or(EnvError {
                var: "FROSTHEAP_ON_VIOLATION",
                value,
                expected: "cancel, abort or audit",
            })?,
    };
    let track_allocs = match os::getenv(c"FROSTHEAP_TRACK_ALLOCS") {
        None | Some(b"0") | Some(b"") => false,
        Some(b"1") => true,
        Some(value) => {
            return Err(EnvError {
                var: "FROSTHEAP_TRACK_ALLOCS",
                value,
                expected: "0 or 1",
            })
        }
    };
    let max_from_env = max.is_some();
    let max = max.unwrap_or_else(os::physical_memory);
    let min = min.unwrap_or(0);
    if min > max {
        return Err(EnvError {
            var: "FROSTHEAP_MIN",
            value: os::getenv(c"FROSTHEAP_MIN").unwrap_or(b""),
            expected: "a size no larger than FROSTHEAP_MAX (or physical memory when FROSTHEAP_MAX is unset)",
        });
    }
    Ok(EnvConfig {
        min,
        max,
        max_from_env,
        huge_pages,
        protect,
        on_violation,
        track_allocs,
    })
}
