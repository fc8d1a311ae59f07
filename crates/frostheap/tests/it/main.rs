//! The integration tests of frostheap: one binary with its own runner
//! ([`harness`]), shared helpers in [`check`], the op model in [`ops`]
//! (shared with the fuzz target).
//!
//! | module | checks |
//! |---|---|
//! | `heap_model` | random alloc / realloc / free against a naive model (proptest) |
//! | `fuzz_replay` | the fuzz target's op encoding, replayed from fixed-seed byte strings |
//! | `limits` | `max`: refusals with the right numbers, recovery; invalid configurations |
//! | `remote` | millions of blocks crossing threads: remote frees, the locked shared path |
//! | `collections` | `allocator_api2::vec::Vec` and hashbrown maps in a heap |
//! | `global_mode` | `frostheap::Global` in fixture programs (tests/fixtures/) run as child processes |
//! | `violations` | the violation matrix: backend × policy × twelve ways to write a frozen heap; reports |
//! | `freeze` | backends, bystander threads, kernel writes, sealed heaps, env config; the cap, abort, and foreign faults in child processes |
//! | `runtime` | `map` / `for_each` / `scope` against sequential code, panics, violations, budgets, context heaps; global mode through the `runtime_global` fixture |
//! | `recovery` | after violations: no hang (threads tasks start, locks, stdout), no leak (runtimes, parked threads, large results), no `Ok` unless every task ran; soaks in child processes |
//! | `par` | `rt.par(..)`: adapters and terminals against std's iterators, panics, violations, `for_each_mut` and its up-front check, sorts, the default runtime |
//! | `harness` | the runner itself: registration is complete, its arguments |
//!
//! # Adding a test
//!
//! Write a plain `fn` that panics on failure, and register it on the line
//! above (above its doc comment, if it has one):
//!
//! ```ignore
//! test!(frees_after_seal_are_no_ops_on_every_path, needs: [Mseal]);
//! /// Regression: after `seal`, frees are no-ops on every path …
//! fn frees_after_seal_are_no_ops_on_every_path() { … }
//! ```
//!
//! Its name in the output is `<module>::<fn>` (`freeze::frees_after_…`),
//! as with libtest. Do not write `#[test]`: this binary has its own runner
//! (`harness = false`), where `#[test]` compiles to nothing. Forgetting
//! `test!` is caught: an unregistered test function is dead code, which
//! this binary denies; a stray `#[test]` fails
//! `harness::no_test_attribute_is_left_in_the_sources`; a new file must be
//! listed in `modules!` below (`harness::every_source_file_is_a_module`).
//! In a `proptest!` block, leave out `#[test]` and register the function
//! with `test!` outside the block. Inside a macro that generates tests,
//! generate `test!` lines (see `matrix!` in violations.rs).
//!
//! # Declaring what a test needs
//!
//! `needs: [..]` lists [`harness::Need`]s: `Pkey` (protection keys),
//! `Mseal` (the `mseal` call, Linux ≥ 6.10), `Thp` (transparent huge
//! pages), `Avx2`, `Avx512f`, `Avx512bw`, `SourceTree`, `MemoryCgroup` (a memory
//! cgroup this process may make, with a limit). Each is probed once at run time; where one is missing the
//! test is reported `ignored (needs pkey: <why>)` — never `ok` — and listed
//! in the `SKIPPED` summary after the result line. Declare the need rather
//! than returning early: an early `return` counts as a pass.
//! `FROSTHEAP_TEST_REQUIRE=pkey` (comma-separated keys, or `all`) turns the
//! skip of a listed need into a failure; CI's guest run sets it.
//!
//! # Child processes and fixture programs
//!
//! Run a child with `check::output_within(&mut cmd, what)` (or a fixture
//! with `check::run_fixture(name, args, env)`): it is killed, and the test
//! fails with its output so far, after `FROSTHEAP_TEST_CHILD_TIMEOUT`
//! seconds (default 120). A new fixture program is a file in
//! tests/fixtures/, a `[[bin]]` in crates/frostheap/Cargo.toml and a name in
//! `fixtures!` in check.rs; cargo then builds it with this binary.
//!
//! # Running
//!
//! `cargo test --release -p frostheap --test it -- <filter>` as usual;
//! also `--exact`, `--skip`, `--test-threads N`, `--list`,
//! `--include-ignored`, and `--shuffle` (prints its seed) or
//! `--shuffle-seed N`. `FROSTHEAP_TEST_TIMEOUT=<s>` bounds one test
//! (default 900 s; past it the binary stops with a failure naming the test).

// A test function not registered with `test!` is never called: an error.
#![deny(dead_code)]

/// Registers the function `$name` of the calling module as a test, with
/// the [`harness::Need`]s it declares.
macro_rules! test {
    ($name:ident $(, needs: [$($need:ident),* $(,)?])? $(,)?) => {
        ::inventory::submit! {
            $crate::harness::Test {
                module: ::core::module_path!(),
                name: ::core::stringify!($name),
                run: $name,
                needs: &[$($($crate::harness::Need::$need),*)?],
            }
        }
    };
}
pub(crate) use test;

/// Declares the modules of the binary and keeps their sources, so the
/// harness can check them wherever it runs.
macro_rules! modules {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*
        /// Each module's file name and text.
        const SOURCES: &[(&str, &str)] = &[
            ("main.rs", include_str!("main.rs")),
            $((concat!(stringify!($module), ".rs"), include_str!(concat!(stringify!($module), ".rs"))),)*
        ];
    };
}

modules!(
    check,
    collections,
    freeze,
    fuzz_replay,
    global_mode,
    harness,
    heap_model,
    limits,
    ops,
    recovery,
    par,
    remote,
    runtime,
    violations,
);

fn main() -> std::process::ExitCode {
    harness::main()
}
