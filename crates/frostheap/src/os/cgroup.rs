//! The memory limit of the process's cgroup: a container's `--memory`, a
//! Kubernetes pod's limit, a systemd unit's `MemoryMax`.
//!
//! Past that limit the kernel kills the process (the cgroup's OOM killer),
//! whatever `FROSTHEAP_MAX` says; a JVM in a container sizes its default
//! heap from it for that reason (`UseContainerSupport`), and so does the
//! default process limit here ([`crate::config::default_max`]).
//!
//! The cgroup is read from `/proc/self/cgroup`: the `memory` controller's
//! line of a cgroup v1 (or hybrid) hierarchy if there is one, else the v2
//! line (`0::PATH`). Its limit, and its ancestors' (a parent's limit binds
//! its children too), are read under the standard mount points:
//! `/sys/fs/cgroup/memory/PATH/memory.limit_in_bytes` (v1) and
//! `/sys/fs/cgroup/PATH/memory.max` (v2). The lowest is the limit. A
//! container that sees its own cgroup as its root (a cgroup namespace, or
//! its cgroup mounted at the mount point) finds it there, the host's path
//! in `/proc/self/cgroup` then naming files that do not exist. A file that
//! cannot be read is skipped; v1's "no limit" (a value near `i64::MAX`)
//! and v2's `max` are none. Nothing is allocated: this runs before `main`,
//! inside the global allocator's start.

use core::ffi::CStr;

use super::read_small_file;

/// Which hierarchy the process's memory cgroup is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: `memory.limit_in_bytes` under `/sys/fs/cgroup/memory`.
    V1,
    /// cgroup v2: `memory.max` under `/sys/fs/cgroup`.
    V2,
}

impl Hierarchy {
    /// Where the hierarchy is mounted (the standard place).
    pub fn mount(self) -> &'static [u8] {
        match self {
            Hierarchy::V1 => b"/sys/fs/cgroup/memory",
            Hierarchy::V2 => b"/sys/fs/cgroup",
        }
    }

    /// The limit's file in a cgroup's directory, from its `/`.
    pub fn file(self) -> &'static [u8] {
        match self {
            Hierarchy::V1 => b"/memory.limit_in_bytes",
            Hierarchy::V2 => b"/memory.max",
        }
    }
}

/// v1 reports "no limit" as the largest page-aligned counter value
/// (`PAGE_COUNTER_MAX` pages, near `i64::MAX`): anything from here up is
/// none.
const V1_UNLIMITED: u64 = 1 << 62;

/// The process's memory cgroup from the contents of `/proc/self/cgroup`:
/// its hierarchy and its path (`/` for the root). A v1 `memory` line comes
/// first: on a hybrid system the v2 line names a hierarchy without the
/// memory controller.
pub fn own_cgroup(proc_self_cgroup: &[u8]) -> Option<(Hierarchy, &[u8])> {
    let mut v2 = None;
    for line in proc_self_cgroup.split(|&b| b == b'\n') {
        // ID:CONTROLLERS:PATH; the path may itself hold colons.
        let mut fields = line.splitn(3, |&b| b == b':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !path.starts_with(b"/") {
            continue;
        }
        if controllers.split(|&b| b == b',').any(|c| c == b"memory") {
            return Some((Hierarchy::V1, path));
        }
        if id == b"0" && controllers.is_empty() {
            v2 = Some((Hierarchy::V2, path));
        }
    }
    v2
}

/// The limit a cgroup's limit file holds, if it sets one.
pub fn parse_limit(hierarchy: Hierarchy, contents: &[u8]) -> Option<usize> {
    let text = contents.strip_suffix(b"\n").unwrap_or(contents);
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None; // v2's "max", or nothing readable
    }
    let mut n: u64 = 0;
    for &d in text {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if hierarchy == Hierarchy::V1 && n >= V1_UNLIMITED {
        return None;
    }
    usize::try_from(n).ok()
}

/// The lowest memory limit of the process's cgroup and its ancestors, if
/// any sets one (see the module documentation).
pub fn memory_limit() -> Option<usize> {
    let mut buf = [0u8; 4096];
    let n = read_small_file(c"/proc/self/cgroup", &mut buf);
    if n == buf.len() {
        return None; // cut off: a line may be incomplete
    }
    let (hierarchy, path) = own_cgroup(&buf[..n])?;
    let mut name = [0u8; 1024];
    let (mount, file) = (hierarchy.mount(), hierarchy.file());
    // (A loop, not `contains`, which calls std's `memchr`: out of line,
    // far from the start-up code, see below.)
    #[allow(clippy::manual_contains)]
    if path.iter().any(|&b| b == 0) {
        return None; // no file name holds a NUL
    }
    let mut dir = path.strip_suffix(b"/").unwrap_or(path);
    let mut lowest: Option<usize> = None;
    loop {
        let len = mount.len() + dir.len() + file.len();
        if len >= name.len() {
            return None; // a path this long names no cgroup we can read
        }
        name[..mount.len()].copy_from_slice(mount);
        name[mount.len()..mount.len() + dir.len()].copy_from_slice(dir);
        name[mount.len() + dir.len()..len].copy_from_slice(file);
        name[len] = 0;
        // SAFETY: name[len] is the only NUL in name[..=len]: the mount
        // point and the file name hold none, and the path was checked.
        // (Not `from_bytes_until_nul`: std's function, out of line, lies
        // far from the library's start-up code, and calling it at every
        // start mapped 64 KiB more of the library's code.)
        let path = unsafe { CStr::from_bytes_with_nul_unchecked(&name[..=len]) };
        let mut contents = [0u8; 32];
        let got = read_small_file(path, &mut contents);
        if let Some(limit) = parse_limit(hierarchy, &contents[..got]) {
            lowest = Some(lowest.map_or(limit, |l| l.min(limit)));
        }
        // Up one level; the root's own file last.
        match dir.iter().rposition(|&b| b == b'/') {
            Some(slash) if !dir.is_empty() => dir = &dir[..slash],
            _ => return lowest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_system_reads_the_v1_memory_line() {
        let cgroup = b"9:name=systemd:/\n4:memory:/process_api/93f4\n3:cpuset:/\n0::/\n";
        assert_eq!(
            own_cgroup(cgroup),
            Some((Hierarchy::V1, &b"/process_api/93f4"[..]))
        );
        let shared = b"5:cpu,memory,pids:/docker/abc\n0::/init.scope\n";
        assert_eq!(
            own_cgroup(shared),
            Some((Hierarchy::V1, &b"/docker/abc"[..]))
        );
    }

    #[test]
    fn a_v2_system_reads_its_unified_line() {
        let cgroup = b"0::/user.slice/user-0.slice/session-3.scope\n";
        assert_eq!(
            own_cgroup(cgroup),
            Some((
                Hierarchy::V2,
                &b"/user.slice/user-0.slice/session-3.scope"[..]
            ))
        );
        assert_eq!(own_cgroup(b"0::/\n"), Some((Hierarchy::V2, &b"/"[..])));
        assert_eq!(
            own_cgroup(b"0::/a:b\n"),
            Some((Hierarchy::V2, &b"/a:b"[..]))
        );
        assert_eq!(own_cgroup(b""), None);
        assert_eq!(own_cgroup(b"garbage\n1:cpu\n"), None);
    }

    #[test]
    fn limits_parse_and_no_limit_is_none() {
        assert_eq!(parse_limit(Hierarchy::V2, b"1073741824\n"), Some(1 << 30));
        assert_eq!(parse_limit(Hierarchy::V2, b"max\n"), None);
        assert_eq!(parse_limit(Hierarchy::V1, b"536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit(Hierarchy::V1, b"9223372036854771712\n"), None);
        assert_eq!(parse_limit(Hierarchy::V1, b""), None);
        assert_eq!(
            parse_limit(Hierarchy::V2, b"99999999999999999999999\n"),
            None
        );
        assert_eq!(parse_limit(Hierarchy::V2, b"12 \n"), None);
    }
}
