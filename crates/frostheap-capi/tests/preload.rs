//! Real, unmodified programs on `libfrostheap.so` through `LD_PRELOAD`:
//! C programs compiled here (every exported function and its edge cases,
//! cross-thread frees, fork), CPython hitting its limit, and CPython
//! running some of its own standard-library tests.
//!
//! The library is the cdylib cargo builds next to this test's executable
//! (`target/<profile>/deps/`, or one level up). Nothing here measures
//! time: every check is about behaviour.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// `libfrostheap.so` of this build.
fn lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe.parent().expect("test executable directory");
        let candidates = [dir.join("libfrostheap.so"), dir.parent().unwrap_or(dir).join("libfrostheap.so")];
        candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
            panic!("libfrostheap.so not found at {candidates:?}: cargo builds it with this test (cargo test -p frostheap-capi)")
        })
    })
}

/// Compiles `tests/c/NAME.c` once per test process into the test scratch
/// directory. Tests run in parallel and several use the same program: it is
/// compiled under a lock, to a private name, and renamed into place, so no
/// test ever executes a file a linker is still writing (ETXTBSY).
fn c_program(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capi-{name}"));
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("capi-{name}.{}.tmp", std::process::id()));
    let status = Command::new("cc")
        .args([
            "-O1",
            "-fno-builtin",
            "-Wall",
            "-Wno-use-after-free",
            "-pthread",
            "-o",
        ])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("a C compiler `cc` is needed for these tests");
    assert!(status.success(), "cc failed on {}", src.display());
    std::fs::rename(&tmp, &out).expect("renaming the compiled test program into place");
    built.push((name.to_string(), out.clone()));
    out
}

/// The real Python interpreter (not a pyenv shim script, which would run
/// bash and friends under the library too).
fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed for these tests");
        assert!(out.status.success(), "python3 -c failed");
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
    })
    .clone()
}

/// Runs `cmd` with the library preloaded and `env` set.
fn preloaded(cmd: &mut Command, env: &[(&str, &str)]) -> Output {
    cmd.env("LD_PRELOAD", lib())
        .env_remove("FROSTHEAP_MIN")
        .env_remove("FROSTHEAP_STATS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn")
}

/// The program exited 0 and printed `marker` on stdout (its own checks
/// passed); otherwise fails with its whole output.
fn assert_succeeded_saying(out: &Output, marker: &str) {
    assert!(out.status.success(), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(marker),
        "no {marker:?} in stdout\n{}",
        text(out)
    );
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The statistics line FROSTHEAP_STATS=1 prints at exit.
fn stats_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find(|l| l.starts_with("frostheap: main heap:"))
        .unwrap_or_default()
        .to_string()
}

/// The process statistics line FROSTHEAP_STATS=1 prints at exit; fails
/// with the whole output when there is none.
fn process_stats_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with("frostheap: process:"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no statistics line\n{}", text(out)))
}

#[test]
fn api_program_passes_on_glibc_alone() {
    // The C checks themselves are right: they pass on the system allocator.
    let out = Command::new(c_program("api"))
        .arg("glibc")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// `malloc_trim`, `mallinfo2`, `mallinfo`, `malloc_info` and
/// `malloc_stats` answer for frostheap's heaps (`malloc_info`'s totals
/// hold the 20 MB of blocks made): a program that frees them and trims is
/// back down by half of it at least, on its main thread and on a thread
/// whose blocks another thread freed (its spans that filled up are brought
/// back by its trim). The same program passes on glibc alone first, so its
/// checks are right; before the library answered them, glibc's versions
/// saw none of the blocks and gave nothing back.
#[test]
fn malloc_trim_and_mallinfo2_answer_for_the_heaps() {
    let glibc = limited(Command::new(c_program("trim")).arg("glibc"), 120);
    assert_succeeded_saying(&glibc, "trim: 12 checks, 0 failures");
    let out = preloaded_limited(Command::new(c_program("trim")).arg("frostheap"), &[], 120);
    assert_succeeded_saying(&out, "trim: 18 checks, 0 failures");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frostheap: main heap: in use")
            && stderr.contains("frostheap: process: committed"),
        "malloc_stats printed no frostheap lines\n{}",
        text(&out)
    );
}

/// A large block that cannot grow where it is moves its pages and is
/// charged its growth alone: under `FROSTHEAP_MAX=256M` a block of 60% of
/// the limit grows to 70%, where, copied, it needed both (a user's trial:
/// 600 MiB to 700 MiB under 1G failed with `ENOMEM`, as glibc's `mremap`
/// of such a block does not); its contents move with it and `mallinfo2`'s
/// in use and committed grow by the blocks' bytes alone.
#[test]
fn a_large_block_grows_from_60_to_70_percent_of_the_limit() {
    let out = preloaded_limited(
        Command::new(c_program("realloc_move")).args(["grow", "256"]),
        &[("FROSTHEAP_MAX", "256M")],
        120,
    );
    assert_succeeded_saying(&out, "realloc_move: 8 checks, 0 failures");
}

/// A buffer reallocated past 32 KiB is made of whole pages, as a large
/// block is: 2 MiB shrunk to 40,000 bytes stays where it is, grows back to
/// 1 MiB and shrinks to 100,000 bytes where it is (each a copy before, into
/// and out of a class), and moves into a class at 32 KiB; contents,
/// `malloc_usable_size` and `mallinfo2`'s in use follow each step.
#[test]
fn a_buffer_past_32_kib_grows_and_shrinks_where_it_is() {
    let out = preloaded_limited(
        Command::new(c_program("realloc_move")).arg("buffer"),
        &[],
        60,
    );
    assert_succeeded_saying(&out, "realloc_move: 22 checks, 0 failures");
}

/// What the heaps of exited threads keep for the next threads (up to 32
/// MiB) goes back once no thread exited for a second and the program
/// allocates on (`tests/c/warm_decay.c`): four threads of 16 MiB made and
/// freed, then the main thread alone; what the library has committed
/// (`mallinfo2`) falls by 8 MiB or more, not before 0.9 s. Before, it
/// stayed until a thread adopted a heap or the process grew.
#[test]
fn what_exited_threads_keep_goes_back_a_second_after_the_last_exit() {
    let out = preloaded_limited(&mut Command::new(c_program("warm_decay")), &[], 60);
    assert_succeeded_saying(&out, "warm_decay: 6 checks, 0 failures");
}

/// Three large blocks grown from 4 to 18 MiB and made again, 3,000 times,
/// under `FROSTHEAP_MAX=64M`: some 700 growths move, none is refused (a
/// copy needed the old block and the new one together: refused at the
/// limit), in use is exact after every call, the mappings a move may split
/// stay few, and once the blocks are freed and the heap trimmed, nothing
/// more is committed than before them.
#[test]
fn large_blocks_growing_thousands_of_times_stay_under_the_limit_with_exact_counts() {
    let out = preloaded_limited(
        Command::new(c_program("realloc_move")).arg("loop"),
        &[("FROSTHEAP_MAX", "64M")],
        120,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 0 failures"),
        "{}",
        text(&out)
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// Another thread's block of 60% of `FROSTHEAP_MAX` grows to 70% (a
/// producer's buffer a consumer grows), its maker running, or exited, or
/// the main thread growing it: its pages move into the grower's heap and
/// only the growth is charged, where a copy needed 130% of the limit and
/// was refused; its contents follow, and `mallinfo2`'s in use and
/// committed grow by the new block alone. Grown by the main thread and
/// left live, the statistics at exit count it in the main heap alone: the
/// thread heaps hold nothing. And a block of 80% shrunk to 40% by its
/// maker, the rest left free in its heap, grows to 65% in another thread:
/// the free part goes back first (refused before: the move holds both
/// heaps' span locks, and the reclaimer skips a busy heap).
#[test]
fn another_threads_block_of_60_percent_of_the_limit_grows_to_70() {
    for (mode, checks) in [("grow", 5), ("exited", 5), ("shrunk", 6), ("main", 5)] {
        let out = preloaded_limited(
            Command::new(c_program("realloc_cross")).args([mode, "256"]),
            &[("FROSTHEAP_MAX", "256M"), ("FROSTHEAP_STATS", "1")],
            120,
        );
        assert_succeeded_saying(&out, &format!("realloc_cross: {checks} checks, 0 failures"));
        if mode == "main" {
            let line = process_stats_line(&out);
            assert!(line.contains("thread heaps in use 0 B"), "{}", text(&out));
            assert!(
                stats_line(&out).contains("main heap: in use 179.2 MiB"),
                "{}",
                text(&out)
            );
        }
    }
}

/// Blocks of 1-16 MiB handed from thread to thread 4,000 times, each
/// handoff a `realloc` that grows or shrinks the block (growths by another
/// thread than its heap's move its pages into the grower's heap), while
/// the owners allocate blocks of their own and exit after 100-300
/// handoffs, new threads adopting their heaps: contents follow every call,
/// no growth is refused under 256 MiB, and once the blocks are freed and
/// the heaps trimmed, in use and committed are back at their baseline.
#[test]
fn blocks_handed_between_threads_thousands_of_times_keep_contents_and_counts() {
    let out = preloaded_limited(
        Command::new(c_program("realloc_cross")).args(["stress", "0", "4", "4000"]),
        &[("FROSTHEAP_MAX", "256M")],
        120,
    );
    assert_succeeded_saying(&out, " 0 failures");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed_value(&stdout, "refused="), 0, "{}", text(&out));
    assert_eq!(printed_value(&stdout, "handoffs="), 4000, "{}", text(&out));
}

/// Blocks that threads left behind, freed by the main thread after the
/// threads exited, go back as they are freed (every 64 spans the frees
/// bring back) beyond what the heaps keep for the next threads (32 MiB of
/// the 64 here), the rest as the process grows, and growth through `mmap`
/// counts: 32 MiB of them stayed committed in the exited threads' heaps
/// while the program mapped 32 MiB more (the heaps kept them until a
/// thread adopted one, a trim, or the limit).
#[test]
fn results_freed_after_their_threads_exited_go_back_as_they_are_freed() {
    let (_, stdout) = run_intact(&mut Command::new(c_program("results")), &[]);
    let value = |key: &str| printed_value(&stdout, key);
    let (made, before, after) = (value("made="), value("before="), value("after="));
    assert!(
        made >= 56 << 20,
        "the threads' blocks were not committed: {stdout}"
    );
    // What they keep (32 MiB), and the spans freed since the last
    // collection (up to 64).
    assert!(
        before <= 40 << 20,
        "the heaps of exited threads kept {before} of {made} bytes committed once their \
         blocks were freed: {stdout}"
    );
    assert!(
        after <= 4 << 20,
        "the heaps of exited threads kept {after} of {made} bytes committed while the \
         program mapped 32 MiB: {stdout}"
    );
}

/// A worker thread that waits, alive, for its next job while the main
/// thread frees its 40 MiB of results and makes 40 MiB of its own, ten
/// rounds under `FROSTHEAP_MAX=64M`: nothing is refused (the worker's
/// spans, freed whole, waited for its next allocation to be collected, and
/// the main thread was refused at 16 MiB in use); with no limit, the
/// process grows by little more than one 40 MiB (it held both: 84 MB; the
/// main thread pauses 20 ms halfway, after which the worker, idle for
/// more than 10 ms, gives them back as the process grows);
/// and a `malloc_trim` while the worker waits gives its freed results
/// back.
#[test]
fn a_waiting_workers_results_freed_by_the_main_thread_serve_it_under_the_limit() {
    let (_, stdout) = run_intact(Command::new(c_program("idle_owner")).arg("limit"), &[]);
    let most = printed_value(&stdout, "most=");
    assert!(
        most <= 56 << 20,
        "the heaps committed {most} bytes with the main thread's 40 MiB made: the waiting \
         worker's freed results were not given back as the process grew: {stdout}"
    );
    let (out, stdout) = run_intact(
        Command::new(c_program("idle_owner")).arg("limit"),
        &[("FROSTHEAP_MAX", "64M")],
    );
    assert_eq!(printed_value(&stdout, "refused="), 0, "{}", text(&out));
    let (_, stdout) = run_intact(Command::new(c_program("idle_owner")).arg("trim"), &[]);
    let (before, after) = (
        printed_value(&stdout, "before="),
        printed_value(&stdout, "after="),
    );
    assert!(
        before >= 32 << 20 && after <= 2 << 20,
        "the heaps' committed bytes: {before} before the trim, {after} after: {stdout}"
    );
}

/// Producer threads that pause while consumers free their blocks, their
/// own frees racing with the spans freed whole that a thread trimming in a
/// loop retires for them, and, under a 48 MiB limit, the reclaimer too:
/// every block stays intact, and nothing is left in use at the end.
#[test]
fn spans_freed_whole_retired_for_running_owners_keep_every_block_intact() {
    for limit in [None, Some("48M")] {
        let mut env = vec![("FROSTHEAP_STATS", "1")];
        env.extend(limit.map(|l| ("FROSTHEAP_MAX", l)));
        let (out, stdout) = run_intact(Command::new(c_program("idle_stress")).arg("3"), &env);
        assert!(printed_value(&stdout, "blocks=") > 10_000, "{stdout}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("thread heaps in use 0 B,"),
            "limit {limit:?}: blocks left in use in the thread heaps: {stderr}"
        );
    }
}

/// Runs `cmd` under the library with `env` (killed after 120 s), checks
/// that it succeeded and found every block as it wrote it (`corrupt=0` in
/// its output), and returns its output and its standard output.
fn run_intact(cmd: &mut Command, env: &[(&str, &str)]) -> (Output, String) {
    let out = preloaded_limited(cmd, env, 120);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(printed_value(&stdout, "corrupt="), 0, "{stdout}");
    (out, stdout)
}

/// The number printed after `key` (`key=N`) in `stdout`.
fn printed_value(stdout: &str, key: &str) -> usize {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
}

/// Threads that exit with free memory resident leave some of it to the
/// next thread (32 MiB in all at most), which reuses it instead of
/// committing more; a trim gives it back, and the statistics line at exit
/// says how much is kept.
#[test]
fn exited_threads_keep_free_memory_for_the_next_ones_until_a_trim() {
    let (out, stdout) = run_intact(
        &mut Command::new(c_program("warm")),
        &[("FROSTHEAP_STATS", "1")],
    );
    let value = |key: &str| printed_value(&stdout, key);
    let (kept, holding, trimmed) = (value("kept="), value("holding="), value("trimmed="));
    assert!(
        (6 << 20..=34 << 20).contains(&kept),
        "the eight exited threads' heaps commit {kept} bytes, expected 6 to 34 MiB: {stdout}"
    );
    assert!(
        holding <= kept + (2 << 20),
        "the ninth thread's 6 MiB took the heaps from {kept} to {holding} bytes: it did not \
         reuse what an exited thread kept: {stdout}"
    );
    assert!(
        trimmed <= 1 << 20,
        "{trimmed} bytes committed after malloc_trim: {stdout}"
    );
    let process = process_stats_line(&out);
    assert!(
        process.contains("keeping 0 B for them)"),
        "after the trim the heaps still keep memory for the next threads: {process}"
    );
}

/// glibc's second names for its allocator (`__libc_malloc` and the rest,
/// `cfree`) are the heaps' under the library: blocks pass between the
/// names on one thread and across threads, `__libc_malloc` is refused past
/// the limit with `ENOMEM`, and `__libc_mallinfo` sees them all. Left to
/// glibc, `__libc_malloc` allocated 400 MiB under a 64 MiB limit, and
/// `__libc_free` of a heap block aborted the process (this program
/// crashed). The program also makes a thread allocate after it gave its
/// heap up (a later pthread key's destructor): those blocks are glibc's,
/// reached past the library's own `__libc_malloc`, charged while live
/// (`malloc_stats` prints them) and released when the main thread frees
/// them.
#[test]
fn glibc_second_names_are_the_heaps_and_count_against_the_limit() {
    let glibc = limited(Command::new(c_program("libc_names")).arg("glibc"), 120);
    assert_succeeded_saying(&glibc, "libc_names: 16 checks, 0 failures");
    let out = preloaded_limited(
        Command::new(c_program("libc_names")).arg("frostheap"),
        &[("FROSTHEAP_MAX", "64M"), ("FROSTHEAP_STATS", "1")],
        120,
    );
    assert_succeeded_saying(&out, "libc_names: 20 checks, 0 failures");
    // __libc_malloc's refusal is reported like malloc's.
    assert_eq!(refusal_lines(&out).len(), 1, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("frostheap: main heap:"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "malloc_stats and the exit print\n{}",
        text(&out)
    );
    assert!(
        !lines[0].contains("threads without a heap (glibc) 0 B,"),
        "the late thread's blocks were not glibc's: {}",
        lines[0]
    );
    assert!(
        lines[1].contains("threads without a heap (glibc) 0 B,"),
        "glibc blocks still charged at exit: {}",
        lines[1]
    );
}

#[test]
fn api_program_passes_on_frostheap() {
    let out = preloaded(
        Command::new(c_program("api")).arg("frostheap"),
        &[("FROSTHEAP_MAX", "1G"), ("FROSTHEAP_STATS", "1")],
    );
    assert_succeeded_saying(&out, ", 0 failures");
    // The main thread's blocks really came from the main heap.
    let stats = stats_line(&out);
    assert!(stats.contains("limit 1 GiB"), "{stats}");
    assert!(!stats.contains(" 0 in total"), "{stats}");
}

#[test]
fn the_library_leaves_nothing_of_its_own_on_the_programs_heap() {
    // The program frees the one block it allocates and prints nothing: the
    // main heap must end empty. frostheap's constructor for Rust programs
    // (std's stdout, created in system memory) does nothing in the C
    // library; when it ran here, its 1 KiB buffer was left live on the
    // main heap and its code mapped into every process.
    let out = preloaded(
        &mut Command::new(c_program("startup")),
        &[("FROSTHEAP_STATS", "1")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stats = stats_line(&out);
    assert!(
        stats.contains("in use 0 B,") && stats.contains(" 0 live allocations, 1 in total"),
        "the main heap holds blocks the program did not allocate: {stats}"
    );
}

#[test]
fn the_library_brings_no_unwinder_library_into_the_process() {
    // build.rs links GCC's unwinder into the library when the C compiler
    // has libgcc_eh.a (and says FROSTHEAP_UNWINDER=static): then a C
    // program under the library maps no libgcc_s.so.1, 96 KiB of resident
    // memory it would load only for the library's sake. Built without
    // it, the library needs libgcc_s, and this checks that too.
    let out = preloaded(Command::new("cat").arg("/proc/self/maps"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let maps = String::from_utf8_lossy(&out.stdout);
    assert!(maps.contains("libfrostheap.so"), "not preloaded:\n{maps}");
    let loaded = maps.contains("libgcc_s");
    match env!("FROSTHEAP_UNWINDER") {
        "static" => assert!(
            !loaded,
            "libgcc_s mapped under a library with its own unwinder:\n{maps}"
        ),
        "shared" => assert!(
            loaded,
            "libgcc_s not mapped, yet the library was built to need it:\n{maps}"
        ),
        other => panic!("FROSTHEAP_UNWINDER={other}: build.rs says static or shared"),
    }
}

/// What the layout test below checks by the names of the functions
/// expected to run, checked by what does run: a process that starts, makes
/// two threads that allocate and exit, has the library's code resident in
/// one 64 KiB window. A std function called at start-up (the cgroup's
/// limit was read with `CStr::from_bytes_until_nul`, then a slice's
/// `contains`, both out of line far from the start-up code) mapped a
/// second one in every process: 64 KiB more of it, and then 12. So did
/// a limit written with a unit or as a percentage (`FROSTHEAP_MAX=1G`,
/// `75%`): the u128 divisions of their parsing called the compiler's
/// `__udivti3`, 6 pages more. The windows are counted as the kernel
/// counts them, in addresses: counted from the mapping's start, they hid
/// that the code's segment began 32 KiB into a window, and CI saw 24
/// pages resident in two windows with code that fits one (layout.ld).
/// Where the library is not loaded 64 KiB-aligned (from tmpfs: the
/// kernel aligns a large file mapping on ext4), the first 64 KiB span two
/// windows, which is what is allowed then.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "the layout checked is a release build's: unoptimised code does not fit one window"
)]
fn a_process_has_one_window_of_the_library_code_resident() {
    for env in [
        &[][..],
        &[("FROSTHEAP_MAX", "1G")],
        &[("FROSTHEAP_MAX", "1.5G")],
        &[("FROSTHEAP_MAX", "75%")],
        &[("FROSTHEAP_MAX", "4000000000"), ("FROSTHEAP_MIN", "1%")],
    ] {
        let out = preloaded(
            Command::new(c_program("code_windows")).env_remove("FROSTHEAP_MAX"),
            env,
        );
        assert!(out.status.success(), "{env:?}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let number_after = |key: &str| -> usize {
            stdout
                .split(key)
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {key:?} in {stdout}"))
        };
        // The code's first 64 KiB are one window where the library is
        // loaded 64 KiB-aligned, as the kernel loads it from ext4; from
        // tmpfs it is not, and they span two.
        let (windows, span) = (number_after(" pages in "), number_after(" span "));
        assert!(
            windows <= span,
            "with {env:?}, the library's code is resident in more 64 KiB windows than its \
             first 64 KiB span: {stdout}\n(a function the start-up, malloc, free or a \
             thread's exit calls lies past the first 64 KiB: see \
             crates/frostheap-capi/layout.ld)"
        );
    }
}

/// malloc, free, calloc, realloc and the free of another heap's block
/// start at 64-byte boundaries (layout.ld's `.text.hot`), so that where
/// they start within a cache line does not move with the code laid
/// before them: a change that left them as they were made the `threads`
/// benchmark's `local` case 1.13x slower with the linker's layout
/// (docs/threads.md).
#[test]
fn the_entry_points_start_on_cache_lines() {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(lib()).expect("reading libfrostheap.so");
    let elf = object::File::parse(&*data).expect("libfrostheap.so is an ELF file");
    // The free of another heap's block is a Rust function: by its
    // mangled name's path.
    let is = |name: &str, symbol: &str| match name {
        "free_not_own" => symbol.contains("9frostheap12free_not_own"),
        _ => symbol == name,
    };
    for name in ["malloc", "free", "calloc", "realloc", "free_not_own"] {
        let sym = elf
            .symbols()
            .find(|s| s.kind() == object::SymbolKind::Text && s.name().is_ok_and(|n| is(name, n)))
            .unwrap_or_else(|| panic!("the library has no function {name}"));
        assert_eq!(
            sym.address() % 64,
            0,
            "{name} at {:#x}, not on a 64-byte boundary: see .text.hot in \
             crates/frostheap-capi/layout.ld",
            sym.address()
        );
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "the layout checked is a release build's: unoptimised code does not fit one window"
)]
fn the_library_touches_one_window_of_code_and_one_of_tables() {
    // A page fault on a file maps the file's cached pages around it, up
    // to 64 KiB (Linux's default fault_around_bytes) of aligned addresses
    // within the mapping, so each 64 KiB stretch of the library that a process touches at all
    // costs up to 64 KiB of resident memory. Every process runs the
    // functions of `.init_array` and `.fini_array`, malloc, free and
    // pthread_atfork, and each thread its first allocation and its exit;
    // every process calls libc through the PLT, and has the loader read
    // the library's symbol and relocation tables. layout.ld lays the code in the first 64 KiB
    // of the executable segment (the linker left std's start-up function
    // in the middle of std's code, the PLT and pthread_atfork at the end)
    // and the unwind tables after the code, out of the loader's segment.
    use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionKind};
    const WINDOW: u64 = 64 << 10;
    let data = std::fs::read(lib()).expect("reading libfrostheap.so");
    let elf = object::File::parse(&*data).expect("libfrostheap.so is an ELF file");
    // The windows a fault maps are aligned in addresses: the code's
    // segment starts on a 64 KiB boundary (layout.ld), so that its first
    // 64 KiB are one window. It started 0x268 bytes into a page 32 KiB
    // into a window, and CI saw 24 pages of it resident in two windows.
    let code_start = elf
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .map(|s| s.address())
        .min()
        .expect("the library has code");
    assert!(
        code_start % WINDOW == 0,
        "the code starts at {code_start:#x}, not on a 64 KiB boundary: see .init in \
         crates/frostheap-capi/layout.ld"
    );
    let in_first_window = |addr: u64| (code_start..code_start + WINDOW).contains(&addr);
    let fix = "name their sections in crates/frostheap-capi/layout.ld";
    for name in ["malloc", "free", "pthread_atfork"] {
        let sym = elf
            .symbols()
            .find(|s| s.name() == Ok(name) && s.kind() == object::SymbolKind::Text)
            .unwrap_or_else(|| panic!("the library has no function {name}"));
        assert!(
            in_first_window(sym.address()),
            "{name} at {:#x}, not in the first 64 KiB of code from {code_start:#x}; {fix}",
            sym.address()
        );
    }
    let plt = elf.section_by_name(".plt").expect("the library has a PLT");
    assert!(
        in_first_window(plt.address()) && in_first_window(plt.address() + plt.size() - 1),
        "the PLT at {:#x}..{:#x}, not in the first 64 KiB of code from {code_start:#x}; {fix}",
        plt.address(),
        plt.address() + plt.size()
    );
    // Each entry of .init_array and .fini_array is a relative relocation:
    // a RELA entry's addend, or, when the relocations are packed
    // (DT_RELR), the slot's own content.
    let addends: std::collections::HashMap<u64, u64> = elf
        .dynamic_relocations()
        .expect("the library has dynamic relocations")
        .map(|(offset, r)| (offset, r.addend() as u64))
        .collect();
    let name_of = |addr: u64| {
        elf.symbols()
            .find(|s| s.address() == addr && s.kind() == object::SymbolKind::Text)
            .and_then(|s| s.name().ok().map(str::to_string))
            .unwrap_or_else(|| "(no symbol)".to_string())
    };
    // Every process runs these at start-up and at exit.
    for array in [".init_array", ".fini_array"] {
        let section = elf
            .section_by_name(array)
            .unwrap_or_else(|| panic!("the library has an {array}"));
        let slots = section.data().expect("reading the array");
        let entries: Vec<u64> = slots
            .chunks_exact(8)
            .enumerate()
            .map(|(i, slot)| {
                let at = section.address() + 8 * i as u64;
                addends
                    .get(&at)
                    .copied()
                    .unwrap_or_else(|| u64::from_le_bytes(slot.try_into().expect("8 bytes")))
            })
            .collect();
        assert!(!entries.is_empty(), "the library's {array} is empty");
        let outside: Vec<String> = entries
            .iter()
            .filter(|&&a| !in_first_window(a))
            .map(|&a| format!("{a:#x} {}", name_of(a)))
            .collect();
        assert!(
            outside.is_empty(),
            "{array} functions outside the first 64 KiB of code (from {code_start:#x}): {outside:?}; {fix}"
        );
    }
    // So are these, at start-up (glibc's functions found for threads
    // without a heap) and in every thread (its first allocation, its exit).
    for part in [
        "foreign7resolve",
        "route6decide",
        "3raw5local",
        "heaps6detach",
        "hand_back_held_blocks",
        "give_up_at_exit",
        "6config8from_env",
    ] {
        let sym = elf
            .symbols()
            .find(|s| {
                s.name().is_ok_and(|n| n.contains(part)) && s.kind() == object::SymbolKind::Text
            })
            .unwrap_or_else(|| panic!("the library has no function named like {part}"));
        assert!(
            in_first_window(sym.address()) && in_first_window(sym.address() + sym.size() - 1),
            "{} at {:#x}..{:#x}, not in the first 64 KiB of code from {code_start:#x}; {fix}",
            part,
            sym.address(),
            sym.address() + sym.size()
        );
    }
    // The segment the loader reads (symbols, relocations) holds constants
    // too, but no unwind tables, and maps as less than one window.
    let dynsym = elf
        .section_by_name(".dynsym")
        .expect("the library has .dynsym");
    let tables = elf
        .segments()
        .find(|seg| (seg.address()..seg.address() + seg.size()).contains(&dynsym.address()))
        .expect("a segment holds .dynsym");
    let unwind: Vec<&str> = [".eh_frame", ".eh_frame_hdr", ".gcc_except_table"]
        .into_iter()
        .filter(|name| {
            elf.section_by_name(name).is_some_and(|s| {
                (tables.address()..tables.address() + tables.size()).contains(&s.address())
            })
        })
        .collect();
    assert!(
        unwind.is_empty() && tables.size() < WINDOW,
        "the loader's segment is {} bytes and holds {unwind:?}; layout.ld lays the unwind \
         tables after the code",
        tables.size()
    );
}

#[test]
fn threads_with_the_smallest_stack_get_their_heaps() {
    // A thread's first malloc builds its heap in its slot, not on the
    // thread's stack; with PTHREAD_STACK_MIN stacks that once crashed.
    let out = preloaded(&mut Command::new(c_program("small_stack")), &[]);
    assert_succeeded_saying(&out, "small stack: 8 threads ok");
}

#[test]
fn threads_allocate_when_the_process_has_no_pthread_key_left() {
    // A thread's heap is given up at exit by a pthread key's destructor.
    // With every key taken before the first thread allocates, threads get
    // no heap of their own and allocate on the main heap's shared path.
    let out = preloaded(
        &mut Command::new(c_program("no_keys")),
        &[("FROSTHEAP_STATS", "1")],
    );
    assert_succeeded_saying(&out, ", 8 threads ok");
    let process = process_stats_line(&out);
    assert!(
        process.contains("; 0 thread heaps ("),
        "a thread got a heap it could not give up at exit: {process}"
    );
}

#[test]
fn statistics_at_exit_reach_the_standard_error_the_program_closed() {
    // coreutils close standard error before they exit, and a file opened
    // next takes its number: `frostheap run --stats -- ls` printed nothing
    // (the line's write failed with EBADF). The library keeps a copy.
    let out = preloaded(
        &mut Command::new(c_program("stderr_closed")),
        &[("FROSTHEAP_STATS", "1"), ("FROSTHEAP_MAX", "64M")],
    );
    assert_succeeded_saying(&out, "stderr_closed: closed");
    assert!(!stats_line(&out).is_empty(), "{}", text(&out));
    assert!(
        process_stats_line(&out).contains(", limit 64 MiB;"),
        "{}",
        text(&out)
    );
    // A program that never allocates still gets its lines.
    let out = preloaded(
        Command::new(c_program("stderr_closed")).arg("none"),
        &[("FROSTHEAP_STATS", "1"), ("FROSTHEAP_MAX", "64M")],
    );
    assert_succeeded_saying(&out, "stderr_closed: no allocation");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("frostheap: main heap: none (the program made no allocation)\n"),
        "{}",
        text(&out)
    );
    assert!(
        process_stats_line(&out).contains(", limit 64 MiB;"),
        "{}",
        text(&out)
    );
}

#[path = "support/address_space.rs"]
mod address_space;
use address_space::with_address_space;

#[test]
fn a_process_under_an_address_space_limit_starts_with_a_limit_that_fits() {
    // Every heap lives in one reservation at least as large as the limit.
    // With physical memory as FROSTHEAP_MAX's default, a process under
    // `ulimit -v` below it could not make that reservation and stopped at
    // its first malloc. The default is now a quarter of the address space.
    let gib = 1u64 << 30;
    let out = preloaded(
        with_address_space(&mut Command::new(c_program("small_stack")), 4 * gib),
        &[("FROSTHEAP_STATS", "1")],
    );
    assert_succeeded_saying(&out, "small stack: 8 threads ok");
    let process = process_stats_line(&out);
    assert!(process.contains("limit 1 GiB;"), "{process}");
    // A limit set above what fits stops start-up with one line that names
    // the variable, its value, what fits (a quarter of the address space,
    // as a power of two) and the address-space limit.
    let out = preloaded(
        with_address_space(&mut Command::new(c_program("small_stack")), 4 * gib),
        &[("FROSTHEAP_MAX", "16G")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{}", text(&out));
    assert!(
        err.starts_with("frostheap: invalid FROSTHEAP_MAX=\"16G\" (17179869184 bytes): expected a size this process's address space can reserve, at most 1G here")
            && err.contains("the address-space limit (ulimit -v) is 4294967296 bytes"),
        "{}",
        text(&out)
    );
}

#[test]
fn limit_counts_main_heap_and_other_threads() {
    let out = preloaded(
        Command::new(c_program("api")).args(["limits", "256"]),
        &[("FROSTHEAP_MAX", "256M")],
    );
    assert_succeeded_saying(&out, "7 checks, 0 failures");
}

#[test]
fn cross_thread_frees() {
    let out = preloaded(
        &mut Command::new(c_program("threads")),
        &[("FROSTHEAP_STATS", "1")],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Every glibc block charged to the limit was released again.
    let stats = stats_line(&out);
    assert!(
        stats.contains("threads without a heap (glibc) 0 B"),
        "{stats}"
    );
}

#[test]
fn a_thread_hands_out_the_blocks_of_other_threads_it_freed_first() {
    let out = preloaded(&mut Command::new(c_program("remote_cache")), &[]);
    assert_succeeded_saying(&out, "checks, 0 failures");
}

#[test]
fn threads_that_only_free_get_a_heap_and_give_every_block_back() {
    // 300 consumer threads in turn, each freeing 2,000 of a producer's
    // blocks and never allocating: the first free gives each a heap (one,
    // adopted by the next consumer), whose cache and batch of remote frees
    // take the blocks; every block arrives intact and is back with the
    // producer's heap once the consumers have exited.
    let out = preloaded_limited(
        Command::new(c_program("consumer")).args(["300", "2000"]),
        &[("FROSTHEAP_STATS", "1")],
        120,
    );
    assert_succeeded_saying(&out, "checks, 0 failures");
    let process = process_stats_line(&out);
    assert!(
        process.contains("thread heaps in use 0 B"),
        "blocks the consumers freed are still in use: {process}"
    );
    assert!(
        process.contains("; 2 thread heaps"),
        "the producer's heap and one consumer heap expected: {process}"
    );
}

#[test]
fn a_double_free_of_a_cached_block_stops_the_process_with_a_report() {
    double_free_reported("double");
}

/// The cache's class full, the block goes to the batch of remote frees;
/// its second free, found by address in the word the batch holds, is
/// reported as the first would have been.
#[test]
fn a_double_free_of_a_batched_block_stops_the_process_with_a_report() {
    double_free_reported("double-batched");
}

/// Runs `remote_cache MODE`, which frees a block of another thread twice,
/// and checks the process stopped at the second free with a report naming
/// the block.
fn double_free_reported(mode: &str) {
    let out = preloaded(Command::new(c_program("remote_cache")).arg(mode), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let p = stdout
        .strip_prefix("freeing 0x")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pointer printed\n{}", text(&out)));
    assert!(!stdout.contains("survived"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "free of an invalid or already freed pointer 0x{p}"
        )),
        "{}",
        text(&out)
    );
}

#[test]
fn fork_then_allocate_in_the_child() {
    let out = preloaded(&mut Command::new(c_program("fork")), &[]);
    assert_succeeded_saying(&out, "fork: 0 failures");
}

#[test]
fn children_forked_while_threads_allocate_never_hang() {
    // 500 forks while three threads allocate and free without pause: some
    // land in the middle of an allocation (the old code hung a child in
    // one run of three of `fork_churn 300 2`). Each child frees blocks of
    // those threads' heaps and grows past the growth hook's step; a child
    // that hangs is killed by its own 20 s alarm (so no spinning child
    // outlives the test) and counted.
    let out = preloaded_limited(
        Command::new(c_program("fork_churn")).args(["500", "3"]),
        &[],
        600,
    );
    assert_succeeded_saying(&out, "fork_churn: 500 children ok");
}

#[test]
fn children_forked_by_a_thread_while_the_main_thread_allocates_never_hang() {
    // The forks come from a thread of their own while the main thread and
    // another allocate without pause: the child's only thread is not the
    // main one, and the main heap's owner may have been in the middle of an
    // allocation. The old code made the forking thread the main heap's
    // owner through that state: 2 to 4 children of 1,500 hung or were
    // refused an allocation far below the limit, in each of 3 runs.
    let out = preloaded_limited(
        Command::new(c_program("fork_churn")).args(["1500", "1", "thread"]),
        &[],
        600,
    );
    assert_succeeded_saying(&out, "fork_churn: 1500 children ok");
}

#[test]
fn bad_environment_stops_with_one_line() {
    let out = preloaded(
        &mut Command::new(c_program("fork")),
        &[("FROSTHEAP_MAX", "lots")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("FROSTHEAP_MAX=\"lots\""), "{err}");
}

/// `FROSTHEAP_STATS` is checked with the other variables: `1` prints the
/// statistics at exit, `0` and empty nothing, and any other value stops
/// the process with one line naming it (it turned the statistics on,
/// whatever it said).
#[test]
fn frostheap_stats_takes_0_or_1() {
    for bad in ["abc", "2", "yes"] {
        let out = preloaded(
            &mut Command::new(c_program("fork")),
            &[("FROSTHEAP_STATS", bad)],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim_end(),
            format!("frostheap: invalid FROSTHEAP_STATS=\"{bad}\": expected 0 or 1"),
            "{err}"
        );
    }
    for (value, prints) in [("1", true), ("0", false), ("", false)] {
        let out = preloaded(
            &mut Command::new(c_program("fork")),
            &[("FROSTHEAP_STATS", value)],
        );
        assert!(out.status.success(), "{value:?}: {}", text(&out));
        assert_eq!(
            stats_line(&out).is_empty(),
            !prints,
            "{value:?}: {}",
            text(&out)
        );
    }
}

/// The lines the library prints at the first refused allocation.
fn refusal_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("frostheap: refused an allocation of "))
        .map(str::to_string)
        .collect()
}

/// Under a tiny limit a small request is refused with room left beside
/// what is committed: its heap charges a whole span of pages. The line
/// says how much the heap needed, which the limit could not hold; it used
/// to show only the limit and the few KiB committed, as if the refusal
/// made no sense.
#[test]
fn a_refusal_under_a_tiny_limit_says_what_the_heap_needed() {
    let out = preloaded(
        Command::new(c_program("tiny_limit")).arg("5000"),
        // Huge pages off (an environment's `on` makes the first commits
        // larger, and the stdout buffer the refused block).
        &[("FROSTHEAP_MAX", "128K"), ("FROSTHEAP_HUGE_PAGES", "off")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok 10\nrefused 5000",
        "{}",
        text(&out)
    );
    let refused = refusal_lines(&out);
    assert_eq!(refused.len(), 1, "{}", text(&out));
    let line = &refused[0];
    assert!(
        line.starts_with("frostheap: refused an allocation of 4.8 KiB: the process limit (FROSTHEAP_MAX) is 128 KiB, ")
            && line.contains(" committed, and its heap needed ")
            && line.contains(" more for it; the call fails with ENOMEM"),
        "{line}"
    );
}

/// A request larger than the limit itself (`malloc(SIZE_MAX / 2)`, an
/// overflow probe, then one of 100 MiB under 64 MiB) has a line of its
/// own, once, and the first refusal of a request that fits under the limit
/// still gets its line (`tests/c/firstline.c`): the probe used up the
/// process's one line, and the refusal at the limit was silent.
#[test]
fn a_request_larger_than_the_limit_leaves_the_limits_line_to_the_first_that_fits() {
    let out = preloaded_limited(
        &mut Command::new(c_program("firstline")),
        &[("FROSTHEAP_MAX", "64M")],
        60,
    );
    assert_succeeded_saying(&out, "firstline: ");
    let refused = refusal_lines(&out);
    assert_eq!(refused.len(), 2, "{}", text(&out));
    assert!(
        refused[0].contains(": larger than the process limit (FROSTHEAP_MAX) of 64 MiB itself;"),
        "{}",
        text(&out)
    );
    assert!(
        refused[1].starts_with(
            "frostheap: refused an allocation of 1 MiB: the process limit (FROSTHEAP_MAX) is 64 MiB, "
        ),
        "{}",
        text(&out)
    );
}

/// A thread with a deferred cancel pending that reaches a refused `malloc`
/// or `mmap` comes back from it: neither is a cancellation point, and the
/// refusal line is written with the raw system call, not `write(2)`, which
/// is one (`tests/c/cancel.c`). The thread was cancelled inside `malloc`
/// holding the program's mutex, or inside `mmap` holding the record of
/// mappings' lock: main then waited for good. Each mode with a request
/// under the limit and one larger than it (each has its own line).
#[test]
fn a_pending_cancel_is_not_acted_on_inside_malloc_or_mmap() {
    for mode in ["lock", "refuse", "mmap"] {
        for mib in ["48", "100"] {
            let out = preloaded_limited(
                Command::new(c_program("cancel")).args([mode, mib]),
                &[("FROSTHEAP_MAX", "64M")],
                30,
            );
            assert_succeeded_saying(&out, &format!("cancel {mode}: ok"));
            assert_eq!(refusal_lines(&out).len(), 1, "{}", text(&out));
        }
    }
}

/// Past the limit CPython raises `MemoryError` and goes on; the library
/// says once, on standard error, that it refused (with the limit and what
/// is committed), however many times it refuses.
#[test]
fn python_raises_memory_error_at_the_limit() {
    let script = "try:\n    x = bytearray(10**9)\n    print('allocated')\nexcept MemoryError:\n    print('MemoryError')\n\
try:\n    y = bytearray(10**9)\nexcept MemoryError:\n    pass\n";
    let out = preloaded(
        Command::new(python()).args(["-c", script]),
        &[("FROSTHEAP_MAX", "256M"), ("FROSTHEAP_STATS", "1")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "MemoryError",
        "{}",
        text(&out)
    );
    let stats = stats_line(&out);
    assert!(
        stats.contains("limit 256 MiB") && !stats.contains(" 0 refused"),
        "{stats}"
    );
    let refused = refusal_lines(&out);
    assert_eq!(
        refused.len(),
        1,
        "one line for two refusals\n{}",
        text(&out)
    );
    // 953.6 MiB is larger than the limit itself: that line.
    assert!(
        refused[0].starts_with("frostheap: refused an allocation of 953.")
            && refused[0].contains("larger than the process limit (FROSTHEAP_MAX) of 256 MiB"),
        "{}",
        refused[0]
    );
}

#[test]
fn python_under_the_limit_allocates() {
    // The same request passes with room: the refusal above is the limit.
    let script = "x = bytearray(10**8); x[-1] = 1; print(sum(x))";
    let out = preloaded(
        Command::new(python()).args(["-c", script]),
        &[("FROSTHEAP_MAX", "256M")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

/// Modules of CPython's own test suite run under the library: dicts,
/// lists, strings, bytes, pickling, GC, weak references, threads and fork.
const PYTHON_TEST_MODULES: [&str; 20] = [
    "test_dict",
    "test_list",
    "test_set",
    "test_unicode",
    "test_bytes",
    "test_json",
    "test_re",
    "test_collections",
    "test_itertools",
    "test_gc",
    "test_weakref",
    "test_threading",
    "test_thread",
    "test_fork1",
    "test_array",
    "test_struct",
    "test_deque",
    "test_sort",
    "test_long",
    "test_pickle",
];

/// What one run of CPython's test runner (regrtest) reported.
struct Regrtest {
    out: Output,
    /// Exit status 0 and "Result: SUCCESS".
    passed: bool,
    /// Ids of the test cases that failed or raised
    /// (`test.test_dict.DictTest.test_x`), from its JUnit XML.
    failed: Vec<String>,
    /// Modules with at least one reported case (a crash loses the rest).
    reported: std::collections::BTreeSet<String>,
}

/// The test module of a case id: `test.test_json.test_decode.X.y` is in
/// `test_json`.
fn module_of(id: &str) -> &str {
    id.split('.').nth(1).unwrap_or(id)
}

/// Runs regrtest on `modules` (only the cases `only`, if given), under
/// the library or not. `test_import_from_another_thread` fails on this
/// machine without the library too (its site imports threading first), so
/// it is always left out. regrtest's `--timeout` bounds every case, so a
/// hang ends the run instead of the test.
fn regrtest(modules: &[&str], only: Option<&str>, with_library: bool) -> Regrtest {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let xml = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("capi-regrtest-{}-{n}.xml", std::process::id()));
    let _ = std::fs::remove_file(&xml);
    let mut cmd = Command::new(python());
    cmd.args(["-m", "test", "--timeout", "600", "--junit-xml"])
        .arg(&xml)
        .args(["--ignore", "test_import_from_another_thread"]);
    if let Some(id) = only {
        cmd.args(["--match", id]);
    }
    cmd.args(modules);
    let out = if with_library {
        preloaded(&mut cmd, &[("FROSTHEAP_MAX", "4G")])
    } else {
        cmd.env_remove("LD_PRELOAD");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FROSTHEAP_") {
                cmd.env_remove(k);
            }
        }
        cmd.output().expect("spawn python3")
    };
    let passed =
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Result: SUCCESS");
    let mut failed = Vec::new();
    let mut reported = std::collections::BTreeSet::new();
    if let Ok(text) = std::fs::read_to_string(&xml) {
        let doc = roxmltree::Document::parse(&text)
            .unwrap_or_else(|e| panic!("regrtest's JUnit XML {}: {e}", xml.display()));
        for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
            let Some(id) = case.attribute("name") else {
                continue;
            };
            reported.insert(module_of(id).to_string());
            if case
                .children()
                .any(|c| c.has_tag_name("failure") || c.has_tag_name("error"))
            {
                failed.push(id.to_string());
            }
        }
        let _ = std::fs::remove_file(&xml);
    }
    Regrtest {
        out,
        passed,
        failed,
        reported,
    }
}

/// CPython's own tests pass under the library. A machine under load makes
/// some of them fail now and then, with or without the library, so a
/// failure counts only if it is the library's:
/// every failed case (or a whole module, when a crash lost its cases) is
/// run again, once under the library and once without it, in this run; it
/// counts if it fails again under the library and passes without. Every
/// failure of the first run is printed either way.
#[test]
fn python_standard_library_tests_pass() {
    let first = regrtest(&PYTHON_TEST_MODULES, None, true);
    let stdout = String::from_utf8_lossy(&first.out.stdout);
    let all_ok = format!("All {} tests OK", PYTHON_TEST_MODULES.len());
    if first.passed && stdout.contains(&all_ok) {
        return;
    }
    eprintln!(
        "CPython's tests under the library did not all pass on the first run; rerunning what failed\n{}",
        text(&first.out)
    );
    // What to run again: each failed case, and each module that reported
    // nothing (the interpreter died in it, or before it).
    let mut units: Vec<(&str, Option<&str>)> = first
        .failed
        .iter()
        .map(|id| (module_of(id), Some(id.as_str())))
        .collect();
    for m in PYTHON_TEST_MODULES {
        if !first.reported.contains(m) {
            units.push((m, None));
        }
    }
    assert!(
        !units.is_empty(),
        "regrtest failed without a failed case or a silent module (a module skipped? the summary should say \"{all_ok}\")\n{}",
        text(&first.out)
    );
    let mut counted = Vec::new();
    for (module, only) in units {
        let what = only.unwrap_or(module);
        let again = regrtest(&[module], only, true);
        let without = regrtest(&[module], only, false);
        let verdict = match (again.passed, without.passed) {
            (false, true) => "fails again under the library and passes without it: counted",
            (true, _) => "passes when run again under the library: not counted (load)",
            (false, false) => "fails without the library too: not counted (not the library's)",
        };
        eprintln!("{what}: {verdict}");
        if !again.passed && without.passed {
            counted.push(format!(
                "{what}\n--- under the library\n{}\n--- without it\n{}",
                text(&again.out),
                text(&without.out)
            ));
        }
    }
    assert!(
        counted.is_empty(),
        "CPython tests that fail under the library and pass without it in the same run:\n{}",
        counted.join("\n")
    );
}

/// Runs `cmd` with the library preloaded and `env` set, killing it after
/// `secs` seconds: a hang fails the test instead of stalling the run.
fn preloaded_limited(cmd: &mut Command, env: &[(&str, &str)], secs: u64) -> Output {
    cmd.env("LD_PRELOAD", lib())
        .env_remove("FROSTHEAP_MIN")
        .env_remove("FROSTHEAP_STATS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    limited(cmd, secs)
}

/// Runs `cmd`, killing it after `secs` seconds.
fn limited(cmd: &mut Command, secs: u64) -> Output {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("the killed child");
            panic!("no exit within {secs} s\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn ten_thousand_threads_with_frees_after_their_owner_exited() {
    let out = preloaded_limited(
        &mut Command::new(c_program("thread_churn")),
        &[("FROSTHEAP_MAX", "256M")],
        300,
    );
    assert_succeeded_saying(&out, "thread_churn: ok");
}

#[test]
fn threads_that_come_and_go_swap_blocks_of_every_size_intact() {
    // Four threads at a time, eight waves, swapping blocks of 1 B-400 KiB
    // through shared slots (remote frees, the freer's cache, large blocks,
    // reallocs of other threads' blocks, heaps adopted meanwhile); every
    // block is checked when it is taken. `ci/chaos.sh` runs it on a build
    // with debug checks and widened race windows.
    let out = preloaded_limited(
        Command::new(c_program("mixer")).args(["4", "5000", "8"]),
        &[],
        300,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checks, 0 failures"), "{}", text(&out));
}

#[test]
fn large_thread_heaps_cache_their_frees_and_keep_every_block_intact() {
    // Two threads of about 40 MiB each: past 8 MiB their frees of blocks
    // up to 4 KiB go to the owner's cache (heap/own_cache.rs), which hands
    // them out again without touching them. One replaced block in eight is
    // freed by the other thread, every thread trims now and then (the
    // cache back to its spans while the other allocates), and one thread
    // forks halfway (the other heap's cache forgotten in the child, which
    // checks, allocates and frees). Every block is checked when it is
    // replaced, handed over and freed: a block handed out twice, or
    // written after its free, breaks its pattern.
    let out = preloaded_limited(
        Command::new(c_program("own_cache")).args(["2", "200000"]),
        &[],
        300,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checks, 0 failures"), "{}", text(&out));
}

#[test]
fn heaps_trimmed_while_threads_swap_blocks_stay_intact() {
    // The same waves with every thread calling malloc_trim about once in 64
    // operations, and the main thread once in 256 of its own: free tops
    // decommitted and free spans purged while other threads allocate, free
    // into those heaps and adopt them. Every block is still checked when
    // it is taken. `ci/chaos.sh` runs it with widened race windows too.
    let out = preloaded_limited(
        Command::new(c_program("mixer")).args(["4", "3000", "6", "64"]),
        &[],
        300,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checks, 0 failures"), "{}", text(&out));
}

#[test]
fn python_with_pymalloc_raises_memory_error_under_the_cap() {
    // pymalloc takes its arenas with mmap: the library counts them against
    // the same limit, so the list of five million strings cannot pass it.
    let script = "import resource\n\
try:\n    x = [str(i) * 3 for i in range(5 * 10**6)]\n    print('allocated')\n\
except MemoryError:\n    print('MemoryError')\n\
print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n";
    let out = preloaded_limited(
        Command::new(python())
            .args(["-c", script])
            .env_remove("PYTHONMALLOC"),
        &[("FROSTHEAP_MAX", "100M")],
        300,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("MemoryError"), "{}", text(&out));
    let rss_kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss line\n{}", text(&out)));
    // The cap, plus the interpreter's binary and libraries (not counted).
    assert!(
        rss_kib < 140 * 1024,
        "peak RSS {rss_kib} KiB under a 100 MiB cap\n{}",
        text(&out)
    );
}

#[test]
fn a_refused_mmap_returns_map_failed_with_enomem() {
    let script = "import mmap, errno\n\
try:\n    m = mmap.mmap(-1, 512 << 20, flags=mmap.MAP_PRIVATE)\n    print('mapped')\n\
except OSError as e:\n    print('refused', errno.errorcode[e.errno])\n\
m = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE)\nm[-1:] = b'x'\nprint('small ok')\n";
    let out = preloaded_limited(
        Command::new(python()).args(["-c", script]),
        &[("FROSTHEAP_MAX", "128M")],
        120,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused ENOMEM"), "{}", text(&out));
    assert!(stdout.contains("small ok"), "{}", text(&out));
    let refused = refusal_lines(&out);
    assert!(
        refused.len() == 1 && refused[0].contains("of 512 MiB:"),
        "{}",
        text(&out)
    );
}

/// A block whose alignment's slack the heaps' ranges cannot hold (16 bytes
/// aligned to 1 GiB under a 64 MiB limit) is refused with a line that
/// says so: it read "the process limit (FROSTHEAP_MAX) is 64 MiB, 0 B
/// committed", blaming the limit for a request of 16 bytes.
#[test]
fn a_refused_alignment_is_named_as_the_cause() {
    let out = preloaded_limited(
        &mut Command::new(c_program("big_align")),
        &[("FROSTHEAP_MAX", "64M")],
        60,
    );
    assert_succeeded_saying(&out, "big_align: 3 checks, 0 failures");
    let refused = refusal_lines(&out);
    assert!(
        refused.len() == 1
            && refused[0].contains("of 16 B:")
            && refused[0].contains("cannot hold it with the slack its alignment needs"),
        "{}",
        text(&out)
    );
}

/// A call that succeeds leaves `errno` as the program had it, as glibc's
/// allocator does (`tests/c/errno_kept.c`: every allocation and mapping
/// call, with no limit and under 256M, where a `malloc` is served by a
/// waiting thread's free memory and a refusal comes before a success).
/// Before, a thread that grew another thread's block of 100 MiB found
/// `ENOMEM` in `errno` after its `realloc` succeeded: the library's probe
/// of the block's mapping (an `mremap` that fails either way) left it. The
/// program passes on glibc alone first, so its checks are right.
#[test]
fn a_call_that_succeeds_leaves_errno_as_it_was() {
    let program = c_program("errno_kept");
    let out = limited(&mut Command::new(&program), 60);
    assert_succeeded_saying(&out, "errno_kept: 80275 checks, 0 failures");
    let out = preloaded_limited(&mut Command::new(&program), &[], 60);
    assert_succeeded_saying(&out, "errno_kept: 80275 checks, 0 failures");
    let out = preloaded_limited(
        &mut Command::new(&program),
        &[("FROSTHEAP_MAX", "256M")],
        60,
    );
    assert_succeeded_saying(&out, "errno_kept: 80280 checks, 0 failures");
}

/// The free memory the heaps hold serves the program's own mappings under
/// the limit, as it serves `malloc`: with 16 MiB freed and kept by the
/// main thread's heap and 16 MiB by a waiting thread's, `mmap` and
/// `mprotect` each reach 56 MiB or more of 64 (`tests/c/map_room.c`;
/// before, the mapping's charge never asked the heaps, and both stopped at
/// 47).
#[test]
fn a_mapping_under_the_limit_takes_the_memory_the_heaps_hold_free() {
    let out = preloaded_limited(
        &mut Command::new(c_program("map_room")),
        &[("FROSTHEAP_MAX", "64M")],
        120,
    );
    assert_succeeded_saying(&out, "map_room: 9 checks, 0 failures");
}

/// A runtime that reserves address space and commits it with `MAP_FIXED`
/// mappings (the JVM's heap) is capped: the program (`tests/c/fixed.c`)
/// commits 32 MiB steps of a 1 GiB reservation until `ENOMEM` (under
/// glibc alone it commits all 8), recommits a step at no cost, uncommits
/// one and commits another in its place, and unmaps everything, which
/// gives it all back; a mapping then grows and shrinks with `mremap`
/// (charged and released). It makes its first allocation after these mappings:
/// before the library started at its first `mmap`, the limit was not set
/// yet, and the process committed 288 MiB under a 128 MiB limit.
#[test]
fn mappings_committed_with_map_fixed_count_against_the_limit() {
    let out = capped_program("fixed", 30, 26, 128);
    assert_eq!(refusal_lines(&out).len(), 1, "{}", text(&out));
}

/// A runtime that reserves address space and commits it with `mprotect`
/// (V8's heap, .NET's) is capped: the program (`tests/c/protect.c`)
/// commits 32 MiB steps of a 1 GiB `MAP_NORESERVE` reservation by making
/// them writable, until `ENOMEM` (under glibc alone it commits all 8);
/// making a committed step writable again costs nothing, also after it was
/// read-only and executable (a JIT's code); a step made `PROT_NONE` and
/// discarded is given back; unmapping gives everything back. Before
/// `mprotect` was seen, the process committed 288 MiB under 128 MiB.
#[test]
fn reservations_committed_with_mprotect_count_against_the_limit() {
    let out = capped_program("protect", 11, 14, 128);
    assert_eq!(refusal_lines(&out).len(), 1, "{}", text(&out));
}

/// `FROSTHEAP_MIN` equal to `FROSTHEAP_MAX` (as `-Xms` equal to `-Xmx`
/// for a JVM) leaves room for the other threads' heaps and the program's
/// mappings (`tests/c/min_max.c` under 64 MiB: a thread's 1 MiB block, a
/// 4 MiB mapping, then the main heap grows past its pre-commit to 48 MiB
/// or more): the pre-commit stops an eighth of the limit short of it.
/// When it committed the whole limit to the main heap, the thread's block
/// and the mapping were refused, and CPython could not start.
#[test]
fn a_min_equal_to_the_limit_leaves_room_for_threads_and_mappings() {
    let out = preloaded_limited(
        &mut Command::new(c_program("min_max")),
        &[
            ("FROSTHEAP_MAX", "64M"),
            ("FROSTHEAP_MIN", "64M"),
            ("FROSTHEAP_STATS", "1"),
        ],
        120,
    );
    assert_succeeded_saying(&out, "min_max: 7 checks, 0 failures");
    let out = preloaded_limited(
        Command::new(python()).args(["-c", "import threading; t = threading.Thread(target=lambda: bytearray(1 << 20)); t.start(); t.join(); print('ran')"]),
        &[("FROSTHEAP_MAX", "64M"), ("FROSTHEAP_MIN", "64M")],
        120,
    );
    assert_succeeded_saying(&out, "ran");
}

/// A change of protection that fails at a hole in its range changed the
/// mappings before the hole (Linux applies it in address order and stops
/// with `ENOMEM` there), and the record follows (`tests/c/protect_hole.c`
/// under 64 MiB): a reservation made writable up to the hole counts (it
/// was left uncounted, and a third 16 MiB mapping was granted beside it),
/// a writable mapping made `PROT_NONE` up to the hole stops counting (it
/// stayed counted, and one 16 MiB mapping fitted beside it instead of
/// two), and a range that starts in a hole changes nothing.
#[test]
fn a_change_of_protection_stopped_by_a_hole_is_recorded_up_to_the_hole() {
    let out = capped_program("protect_hole", 50, 28, 64);
    assert_eq!(refusal_lines(&out).len(), 1, "{}", text(&out));
}

/// A program that grows its break itself (`sbrk`, `brk`: an allocator of
/// its own) is capped too (`tests/c/brk.c`: 8 MiB steps until `ENOMEM`;
/// under glibc alone all 8), and a shrink gives the memory back.
///
/// `brk(0)`, which glibc answers with 0 while the kernel leaves the break
/// where it is, gives nothing back: the charge follows the break the
/// kernel reports (it gave back what the break held, and the program then
/// had 100 MiB under a 64 MiB limit).
#[test]
fn a_program_break_grown_by_the_program_counts_against_the_limit() {
    capped_program("brk", 16, 17, 32);
}

/// A private mapping of `/dev/zero` is anonymous memory and counts as such
/// (`tests/c/devzero.c`: 16 MiB steps until `ENOMEM`, a read-only one
/// charged when made writable); a shared one and a private writable
/// mapping of a file do not. Before, 256 MiB of private `/dev/zero` were
/// written under a 64 MiB limit.
#[test]
fn private_mappings_of_dev_zero_count_against_the_limit() {
    capped_program("devzero", 20, 15, 32);
}

/// `mremap` keeps each page's state (`tests/c/mremap_states.c`): a mapping
/// whose first 39 of 40 MiB were made `PROT_NONE`, shrunk to them, counts
/// nothing (it counted 39 MiB: any counted page made the whole mapping
/// counted); one shrunk across its two parts and moved keeps its
/// `PROT_NONE` part uncounted; a writable one grown is charged for the
/// growth, a `PROT_NONE` one not.
#[test]
fn mremap_keeps_the_state_of_each_page() {
    capped_program("mremap_states", 21, 23, 64);
}

/// Four threads map, commit, uncommit, replace and unmap anonymous memory
/// at random (20,000 operations each) while a fifth forks 20 times, each
/// child mapping and unmapping once: every byte written is still there,
/// every child exits cleanly (the record's lock is not left held across
/// `fork`), nothing hangs, and once all is unmapped nothing counts.
#[test]
fn threads_mapping_at_once_leave_nothing_counted() {
    leaves_nothing_mapped(
        "mapstress",
        &["4", "20000"],
        "mapstress: 80000 operations, 0 failures",
        1,
    );
}

/// Runs the C program `name` with `args` on glibc alone (it says `marker`:
/// its own checks hold), then `runs` times under the library: each run
/// says `marker` too and ends with no mapping counted ("mapped 0 B" in the
/// statistics at exit).
fn leaves_nothing_mapped(name: &str, args: &[&str], marker: &str, runs: usize) {
    let glibc = limited(Command::new(c_program(name)).args(args), 120);
    assert_succeeded_saying(&glibc, marker);
    for _ in 0..runs {
        let out = preloaded_limited(
            Command::new(c_program(name)).args(args),
            &[("FROSTHEAP_STATS", "1")],
            120,
        );
        assert_succeeded_saying(&out, marker);
        let process = process_stats_line(&out);
        assert!(process.contains("mapped 0 B,"), "{}", text(&out));
    }
}

/// Sixteen threads map, grow, shrink, move and unmap anonymous memory at
/// once (`maprace`), so that the kernel hands one thread addresses another
/// has just given back: the record of counted ranges must change in the
/// kernel's order. Before the record's lock was held across the system
/// call, a mapping given the addresses of one whose unmapping was not yet
/// recorded lost part of its record, and its next `mremap` left that part
/// recorded at the old address for good: "mapped 60 KiB" to "1.8 MiB" at
/// exit in every run of a stress program with a yield in that window
/// (ci/chaos.sh runs this program on such a build), once in a dozen runs
/// without.
#[test]
fn threads_moving_mappings_at_once_leave_nothing_counted() {
    leaves_nothing_mapped(
        "maprace",
        &["16", "20000"],
        "maprace: 320000 operations, 0 failures",
        3,
    );
}

/// Eight threads call `malloc_trim` at the same moment, first thing, in a
/// process where glibc never allocated: the library must not reach
/// glibc's own `malloc_trim` then, which initialises glibc's allocator on
/// the way (threads doing that together crashed in its half-initialised
/// main arena: 17 of 200 runs of this program, a segmentation fault or an
/// abort). 100 runs.
#[test]
fn threads_trimming_at_once_before_glibc_allocated_do_not_crash() {
    for run in 0..100 {
        let out = preloaded_limited(&mut Command::new(c_program("trim_race")), &[], 60);
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("8 threads trimmed"),
            "run {run}: {}",
            text(&out)
        );
    }
}

/// Runs the C program `name` on glibc alone (`name glibc`: `glibc_checks`
/// checks, none failed, so the checks are right), then under the library
/// with `FROSTHEAP_MAX` at `max_mib` MiB (`name frostheap`: `checks`
/// checks, none failed); the process must not have committed past the
/// limit at its peak, and must end with no mapping counted. Returns the
/// run under the library.
fn capped_program(name: &str, glibc_checks: u32, checks: u32, max_mib: u32) -> Output {
    let glibc = limited(Command::new(c_program(name)).arg("glibc"), 120);
    assert_succeeded_saying(
        &glibc,
        &format!("{name}: {glibc_checks} checks, 0 failures"),
    );
    let max = format!("{max_mib}M");
    let out = preloaded_limited(
        Command::new(c_program(name)).arg("frostheap"),
        &[("FROSTHEAP_MAX", &max), ("FROSTHEAP_STATS", "1")],
        120,
    );
    assert_succeeded_saying(&out, &format!("{name}: {checks} checks, 0 failures"));
    let process = process_stats_line(&out);
    assert!(
        peak_mib(&process) <= f64::from(max_mib),
        "committed past the limit: {process}"
    );
    assert!(process.contains("mapped 0 B,"), "{}", text(&out));
    out
}

/// The process's peak committed figure, in MiB, from its statistics line.
fn peak_mib(process: &str) -> f64 {
    process
        .split("(peak ")
        .nth(1)
        .and_then(|r| r.split(" MiB)").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak in MiB: {process}"))
}

#[test]
fn dlopen_then_allocate() {
    // The library keeps each thread's heap in initial-exec TLS; loaded with
    // dlopen (not preloaded), that comes from glibc's static TLS surplus.
    let mut cmd = Command::new(c_program("dlopen"));
    cmd.arg(lib()).env_remove("LD_PRELOAD");
    let out = limited(&mut cmd, 120);
    assert_succeeded_saying(&out, "dlopen: 0 failures");
}
