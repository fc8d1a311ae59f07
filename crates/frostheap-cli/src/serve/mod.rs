//! `frostheap serve`: an HTTP/1.1 server (tokio + hyper) that is told how
//! much memory it has, not how many clients, and never outgrows it — and
//! that slow clients cannot starve, that sheds load with answers clients
//! can read, and that shuts down without losing a request.
//!
//! **Memory.** A client is charged when its request head has arrived,
//! through the tower layer [`MemoryLimitLayer`]: `max(per-client cost,
//! what the request builds)`, where the per-client cost covers the
//! connection's buffers too and what a request builds is its buffers and
//! what the endpoint builds from an ordinary body of its length (see
//! `endpoints.rs`). Past the budget, `shed` answers 503 and
//! `wait` queues (at most `--max-waiting` requests; past that, 503). A
//! body still arriving a second after its head (`--body-grace`) gives its
//! client place back and keeps only what it has sent, in a pool of its own
//! (`--slow-memory`, `slow.rs`), growing with what comes (503 when the
//! pool cannot, in either mode); once whole it takes a place again before
//! its handler runs: a slow sender cannot hold memory it has not used, nor
//! a client place while it trickles. While requests are refused or queued
//! for want of a place, the grace is a tenth as long. A
//! request whose client closes its connection (or shuts its side: the
//! server takes it for gone, as nginx and Go's net/http do) while it
//! waits for memory is dropped, and counted in `abandoned`, instead of
//! being run when its turn comes.
//! Connections without an admitted request — still sending their head, or
//! idle between keep-alive requests — hold no client place: they wait at
//! the [`ConnectionGate`], a separate budget of `--max-pending`
//! connections (default: a sixteenth of the budget at [`CONNECTION_BYTES`]
//! each). The memory bound ([`memory_bound`], `memory_bound` in `/stats`,
//! the README's one statement of it) is `--max-memory` plus the slow-body
//! pool plus (`--max-pending` + `--max-waiting`) × `CONNECTION_BYTES` plus
//! [`OWN_BYTES`] and [`LOAD_BYTES`].
//!
//! A request for an unknown endpoint (404), or whose `Content-Length` is
//! past `--max-body` (413), is answered from its head before the layer:
//! no charge, no client place. A request whose cost is more than the
//! whole budget gets 413 from the layer in either mode (no retry could
//! admit it). `HEAD` is answered as `GET`, without the body.
//!
//! **Time.** Every phase of a connection has a deadline (`clock.rs`): the
//! head (`--header-timeout`; 408, on a kept-alive connection too), the
//! body (`--body-timeout` plus a minimum rate, `--body-max-time` in all),
//! the response
//! (`--send-timeout` without the client taking any of it), the idle wait
//! between requests (`--idle-timeout`). Timeouts are
//! counted in `/stats` and `/metrics`. A request's memory stays charged
//! until its response is written to the socket, not merely handed to
//! hyper: a client slow to read holds its bytes, as it holds the memory.
//!
//! **Closing.** A shed request gets `503` with `Retry-After: 1` and
//! `Connection: close`, then a lingering close (`conn.rs`), so the client
//! reads the answer instead of a reset.
//!
//! **Shutdown.** SIGTERM or SIGINT: `/ready` answers 503 at once (`/live`
//! stays 200), the listener keeps accepting for `--shutdown-delay` (time
//! for a balancer to notice), then closes; idle connections close, a
//! connection still sending its request head gets a 503 ("server shutting
//! down") and a clean close, and requests in flight finish (answered with
//! `Connection: close`) for up to `--shutdown-timeout`. The exit status is
//! 0. A second signal stops the wait.
//!
//! Each handler records what it really held ([`Permit`]`::record_usage`),
//! so with the default `--per-client` the declared 128 KiB is only the
//! first estimate: the budget follows the 95th percentile of recorded
//! usage over `--estimate-window` (see frostheap-budget's estimator).
//! `--fixed-per-client` keeps the declared figure.
//!
//! **Idle.** Each worker thread allocates from its own frostheap heap,
//! which keeps the memory its requests freed for the next ones (up to 32
//! MiB of it resident before it purges any, so that a burst reuses pages
//! instead of faulting them in again) and gives it back only as it frees
//! more. A server whose load stopped kept it for good: 40–46 MiB committed
//! for 0.13 MiB of live blocks after 5 to 15 minutes of mixed load, 4 MiB
//! at start (a user's trial saw resident memory go from 17 to 49 MB). Once
//! no request has arrived for a whole [`IDLE_TRIM`] (the monitoring
//! endpoints do not count), the server gives its heaps' free memory back,
//! once per idle spell: each worker thread trims its own heap
//! (`frostheap::trim`) as it next parks. `idle_trims`,
//! `idle_trim_threads` and `idle_trimmed` in `/stats`, beside
//! `heap_committed` and `heap_in_use`.
//!
//! `/stats`, `/metrics`, `/ready` and `/live` bypass the layer so that a
//! balancer can read them while the server sheds, and a full connection
//! gate answers them too (outside it, a few at once: `conn.rs`). HTTP/1.0
//! connections that ask for `keep-alive` wait at the gate between requests
//! as HTTP/1.1 ones do; any response after which a connection does not
//! wait there says `Connection: close`. `--no-budget` serves the
//! same endpoints with no layer and no gate: plain hyper (with the same
//! timeouts), the baseline of the load benchmarks.
//!
//! [`Permit`]: frostheap_budget::Permit

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use frostheap::{parse_size, Bytes};
use frostheap_budget::gate::ConnectionGate;
use frostheap_budget::tower::{MemoryLimitLayer, Overload};
use frostheap_budget::{Budget, PerClient};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};
use tower_layer::Layer;

use crate::out::errln;

mod charged;
mod clock;
mod conn;
mod endpoints;
mod metrics;
mod slow;
mod state;

use endpoints::{request_cost, serve_request, Endpoints, Limited};
use slow::SlowBodies;
use state::{IdleTrims, State, Timeouts, CONNECTION_BYTES, MIN_CHARGE};

/// How long a connection waits at a full gate before a newcomer may take
/// its place (see frostheap-budget's gate): far above the time a client
/// that sends its request at once spends there, far below a slow one's.
const GATE_GRACE: Duration = Duration::from_secs(1);

/// How long the server waits without a request before it gives its
/// heaps' free memory back: a server busy at one request every few
/// seconds or more keeps it, for its next request to reuse.
const IDLE_TRIM: Duration = Duration::from_secs(5);

/// The most worker threads `--threads` accepts: frostheap's own ceiling
/// on worker threads (`FROSTHEAP_WORKERS`, one context slot each). The
/// handlers never block, so workers past the core count add no
/// throughput, only memory the budget does not count: idle, each costs
/// about 25 KiB resident and 10 mappings (1,024 workers: 30.5 MiB
/// resident, against 4.4 MiB with 2; 2026-12-05, `/proc/PID/status`).
/// 100,000 asked for a million mappings, past the kernel's default
/// `vm.max_map_count` of 65,530: the process aborted while spawning them.
const MAX_THREADS: usize = 1024;

/// What the server uses besides its budget and its waiting connections,
/// at most: the runtime, its worker threads' heaps, the binary's own data
/// (4.2 MiB committed at start with two workers, `heap_committed` in
/// `/stats`; each worker adds about 25 KiB), with room to spare. The
/// process limit must hold it on top of the rest (`within_process_limit`).
const OWN_BYTES: usize = 8 << 20;

/// What the server uses under load besides its budget, its waiting
/// connections and its own: the free memory its heaps keep (at most
/// [`FREE_KEPT`] in free spans, given back every [`LOAD_CHECK`] past it;
/// more inside spans that still hold a live block, which no trim gives
/// back: each size class keeps the most blocks it had live at once), and
/// the connections the gate turns away or that are answered 503 and
/// closed, which hold a few KiB each while they are. Measured at the
/// peak of wrk's 10× overload (`crates/frostheap-cli/bench/serve-wrk.sh`:
/// 2,560 clients on a 32 MiB budget; 2026-12-06, load 3-14,
/// `/proc/PID/smaps_rollup` and `/stats` sampled every 50 ms): 64.6 MiB
/// resident (VmHWM) = the budget + 32.6 MiB, of which 2.1 MB file pages
/// (the code of the binary and libc: the 21 MB binary is mostly debug
/// information, never mapped in), the rest anonymous: the heaps had 42.0
/// MB in use (33.5 MB charged to requests, the rest the 2,762 open
/// connections', most being turned away) and 70.7 MB committed; two
/// threads' stacks touch a few KiB. The same run peaked at 75.4-78.4 MiB
/// before the heaps were trimmed under load (`give_back_under_load`): a
/// heap purges on its own only past max(32 MiB, twice what is live)
/// free. The kernel's socket buffers are not in the process's memory.
const LOAD_BYTES: usize = 28 << 20;

/// The longest duration a time flag accepts. Deadlines are instants
/// (`Instant + Duration`), which panicked past the clock's range: with
/// `--idle-timeout 500000000000y` every kept-alive connection panicked its
/// task, and its client got no answer. A day is far past any phase of an
/// HTTP exchange, and past any drain a balancer waits for.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// What to do past capacity.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OverloadArg {
    /// Answer 503 (with `Retry-After: 1`) at once.
    Shed,
    /// Make the client wait (backpressure) until memory is free.
    Wait,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Memory budget for clients: a size such as 256M or 1G, or a
    /// percentage (of physical memory, or the cgroup's limit if less); at
    /// most that memory [default: 256M, or 75% of that memory if less]
    #[arg(long, allow_hyphen_values = true)]
    max_memory: Option<String>,
    /// Address to listen on; port 0 picks a free port (the address is
    /// printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Declared cost of one client, the starting point of the measured
    /// estimate; at least 28K (what every request is charged: its
    /// connection's buffers and its head).
    #[arg(long, default_value = "128K", allow_hyphen_values = true)]
    per_client: String,
    /// Keep the declared per-client cost instead of refining it by
    /// measurement.
    #[arg(long)]
    fixed_per_client: bool,
    /// The window of the measured per-client cost (its 95th percentile
    /// over this time).
    #[arg(long, default_value = "10s", value_parser = positive_duration, allow_hyphen_values = true)]
    estimate_window: Duration,
    /// What to do past capacity.
    #[arg(long, value_enum, default_value = "shed")]
    overload: OverloadArg,
    /// Largest request body accepted (413 past it).
    #[arg(long, default_value = "1M", allow_hyphen_values = true)]
    max_body: String,
    /// Time for a request head to arrive (from accept, or from its first
    /// byte on a kept-alive connection).
    #[arg(long, default_value = "10s", value_parser = positive_duration, allow_hyphen_values = true)]
    header_timeout: Duration,
    /// Time for a request body to arrive, extended by one second per
    /// `--body-min-rate` bytes received.
    #[arg(long, default_value = "20s", value_parser = positive_duration, allow_hyphen_values = true)]
    body_timeout: Duration,
    /// Bytes per second a body must keep up past `--body-timeout` (0: the
    /// whole body within `--body-timeout`).
    #[arg(long, default_value = "500", allow_hyphen_values = true)]
    body_min_rate: String,
    /// Time for a whole request body to arrive, however fast it keeps
    /// coming (408 past it; never less than --body-timeout): a body that
    /// keeps --body-min-rate holds its memory in the slow-body pool at
    /// most this long (a 1 MB body at 500 B/s took 35 minutes).
    #[arg(long, default_value = "60s", value_parser = positive_duration, allow_hyphen_values = true)]
    body_max_time: Duration,
    /// Time a request body may take to arrive holding its client place
    /// (a tenth of it while requests are refused or queued for want of
    /// one); a body still arriving past it gives the place back and keeps
    /// only what it has sent, in the slow-body pool (--slow-memory), until
    /// it is whole and takes a place again.
    #[arg(long, default_value = "1s", value_parser = positive_duration, allow_hyphen_values = true)]
    body_grace: Duration,
    /// Memory for request bodies still arriving --body-grace after their
    /// head (slow senders), apart from --max-memory: each holds its
    /// connection and head (28 KiB) and its body so far, and holds no
    /// client place; past it, 503 to the slow sender. Default: a
    /// sixteenth of --max-memory, at least twice --max-body + 28K.
    #[arg(long, allow_hyphen_values = true)]
    slow_memory: Option<String>,
    /// Time a kept-alive connection may wait for its next request.
    #[arg(long, default_value = "5s", value_parser = positive_duration, allow_hyphen_values = true)]
    idle_timeout: Duration,
    /// Time a response may wait for the client to take any of it (the
    /// connection is closed past it; its memory stays charged until then).
    #[arg(long, default_value = "30s", value_parser = positive_duration, allow_hyphen_values = true)]
    send_timeout: Duration,
    /// Connections without an admitted request (sending their head, idle)
    /// held at once; default: a sixteenth of --max-memory at 24 KiB each,
    /// at least 64 (at most what the memory this server may use holds at
    /// 24 KiB each). Past it, a connection whose request head has arrived
    /// takes the place of one still sending its head; any other takes the
    /// place of a waiter older than 1 s, or gets 503 "server busy": when
    /// more clients than this connect at once, those that do not send
    /// their request at once can be refused well before --header-timeout.
    #[arg(long, allow_negative_numbers = true)]
    max_pending: Option<usize>,
    /// With --overload wait: requests waiting for memory at once, past
    /// which they are shed (default: --max-pending).
    #[arg(long, allow_negative_numbers = true)]
    max_waiting: Option<usize>,
    /// After SIGTERM/SIGINT, how long `/ready` reports 503 while new
    /// connections are still accepted.
    #[arg(long, default_value = "0s", value_parser = duration, allow_hyphen_values = true)]
    shutdown_delay: Duration,
    /// After that, how long requests in flight may take to finish.
    #[arg(long, default_value = "30s", value_parser = duration, allow_hyphen_values = true)]
    shutdown_timeout: Duration,
    /// Serve without any budget (plain hyper, for comparison).
    #[arg(long)]
    no_budget: bool,
    /// Worker threads, 1 to 1024 (default: one per core).
    #[arg(long, allow_negative_numbers = true)]
    threads: Option<usize>,
}

type Error = Box<dyn std::error::Error>;

fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Err(e) => Err(format!("{e}: expected a duration such as 500ms, 10s or 1m")),
        Ok(d) if d > MAX_DURATION => Err("expected a duration of at most 1 day (24h)".into()),
        Ok(d) => Ok(d),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err("expected a duration above zero, such as 10s".into()),
        d => Ok(d),
    }
}

fn size_arg(flag: &str, text: &str) -> Result<usize, Error> {
    parse_size(text).map_err(|_| {
        format!(
            "invalid {flag} {text:?}: expected {}",
            frostheap::__private::SIZE_SYNTAX
        )
        .into()
    })
}

pub fn run(args: ServeArgs) -> Result<(), Error> {
    // A budget past the memory there is cannot shed before the kernel's
    // OOM killer steps in (a percentage past 100% is refused the same way).
    let machine = frostheap::__private::process_memory();
    let max_memory = match &args.max_memory {
        None => (256 << 20).min(machine / 4 * 3),
        Some(text) => {
            let bytes = crate::run::limit_arg("--max-memory", text)?;
            if bytes > machine {
                return Err(format!(
                    "invalid --max-memory \"{text}\": {:#} is more than the memory this server may use ({:#}: physical memory, or its cgroup's limit if less), so the budget could not keep it within memory; expected at most that, or a percentage such as 75%",
                    Bytes(bytes),
                    Bytes(machine),
                )
                .into());
            }
            bytes
        }
    };
    let per_client = size_arg("--per-client", &args.per_client)?;
    let max_body = size_arg("--max-body", &args.max_body)?;
    let body_min_rate = size_arg("--body-min-rate", &args.body_min_rate)? as u64;
    if per_client < MIN_CHARGE && !args.no_budget {
        return Err(format!(
            "invalid --per-client \"{}\": below the {} every request is charged (its connection's buffers and its head), the capacity shown would overstate what is admitted; expected at least {}K",
            args.per_client,
            Bytes(MIN_CHARGE),
            MIN_CHARGE >> 10,
        )
        .into());
    }
    if let Some(text) = &args.slow_memory {
        let bytes = size_arg("--slow-memory", text)?;
        if bytes < MIN_CHARGE {
            return Err(format!(
                "invalid --slow-memory \"{text}\": below the {} one slow request holds with no body yet (its connection's buffers and its head); expected at least {}K",
                Bytes(MIN_CHARGE),
                MIN_CHARGE >> 10,
            )
            .into());
        }
        if bytes > machine {
            return Err(format!(
                "invalid --slow-memory \"{text}\": {:#} is more than the memory this server may use ({:#}: physical memory, or its cgroup's limit if less); expected at most that",
                Bytes(bytes),
                Bytes(machine),
            )
            .into());
        }
    }
    if let Some(n) = args.threads.filter(|n| !(1..=MAX_THREADS).contains(n)) {
        return Err(format!(
            "invalid --threads {n}: expected 1 to {MAX_THREADS} (or leave it out for one per core)"
        )
        .into());
    }
    // Connections at the gate or waiting for memory hold their buffers
    // outside the budget: as many as the memory this server may use (the
    // bound of --max-memory) at most.
    let most_connections = machine / CONNECTION_BYTES;
    for (flag, value) in [
        ("--max-pending", args.max_pending),
        ("--max-waiting", args.max_waiting),
    ] {
        match value {
            Some(0) => {
                return Err(
                    format!("invalid {flag} 0: expected 1 to {most_connections}").into(),
                )
            }
            Some(n) if n > most_connections => {
                return Err(format!(
                    "invalid {flag} {n}: {n} connections at {} each is more than the memory this server may use ({}: physical memory, or its cgroup's limit if less); expected 1 to {most_connections}",
                    Bytes(CONNECTION_BYTES),
                    Bytes(machine),
                )
                .into())
            }
            _ => {}
        }
    }
    let budget = if args.no_budget {
        None
    } else {
        let mode = if args.fixed_per_client {
            PerClient::Declared(per_client)
        } else {
            PerClient::Measured {
                initial: per_client,
            }
        };
        if max_memory < per_client {
            return Err(format!(
                "--max-memory {:#} is smaller than one client ({:#} per client): raise --max-memory or lower --per-client",
                Bytes(max_memory),
                Bytes(per_client),
            )
            .into());
        }
        let budget = Budget::with_per_client(max_memory, mode)?;
        budget.set_estimate_window(args.estimate_window)?;
        Some(budget)
    };
    let (max_pending, max_waiting) = waiting_connections(&args, max_memory);
    if !args.no_budget {
        within_process_limit(&args, max_memory, per_client)?;
    }
    let fd_limit = raise_fd_limit();
    let listener =
        listen(&args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let idle = Arc::new(IdleTrims::default());
    let on_park = idle.clone();
    rt.on_thread_park(move || on_park.trim_if_asked());
    let rt = rt.enable_all().build()?;

    let overload = match args.overload {
        OverloadArg::Shed => Overload::Shed,
        OverloadArg::Wait => Overload::Wait,
    };
    let timeouts = Timeouts {
        header: args.header_timeout,
        body: args.body_timeout,
        body_grace: args.body_grace,
        body_min_rate,
        body_max: args.body_max_time.max(args.body_timeout),
        idle: args.idle_timeout,
        send: args.send_timeout,
    };
    let state = Arc::new(State {
        memory_bound: (!args.no_budget).then(|| memory_bound(&args, max_memory)),
        gate: budget
            .as_ref()
            .map(|_| ConnectionGate::new(max_pending, GATE_GRACE)),
        slow: budget
            .as_ref()
            .map(|_| SlowBodies::new(slow_memory(&args, max_memory), MIN_CHARGE)),
        budget,
        max_body,
        waits: matches!(overload, Overload::Wait) && !args.no_budget,
        timeouts,
        requests: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        undelivered: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        shed_connections: AtomicU64::new(0),
        timeouts_header: AtomicU64::new(0),
        timeouts_body: AtomicU64::new(0),
        timeouts_idle: AtomicU64::new(0),
        timeouts_send: AtomicU64::new(0),
        probation: AtomicUsize::new(0),
        outside_gate: AtomicUsize::new(0),
        lingering: AtomicUsize::new(0),
        linger_cut: AtomicU64::new(0),
        idle: idle.clone(),
        connections: AtomicUsize::new(0),
        all_closed: Notify::new(),
        pressure: Notify::new(),
        ready: AtomicBool::new(true),
        shutdown: watch::channel(false).0,
    });
    rt.block_on(async {
        // Before the banner: a signal sent once the address is known must
        // find the handlers in place.
        let signals = Signals::new()?;
        {
            let mut out = std::io::stdout().lock();
            match &state.budget {
                Some(b) => {
                    let how = if args.fixed_per_client {
                        "declared"
                    } else {
                        "declared, refined by measurement"
                    };
                    let past = match overload {
                        Overload::Shed => "503 past capacity",
                        Overload::Wait => "clients wait past capacity",
                    };
                    let _ = writeln!(out, "frostheap serve: {b} ({how}; {past})");
                }
                None => {
                    let _ = writeln!(
                        out,
                        "frostheap serve: no budget (plain hyper, memory grows with load)"
                    );
                }
            }
            let _ = writeln!(out, "listening on http://{addr}");
            let gate = if let Some(slow) = &state.slow {
                format!(
                    "; up to {max_pending} connections waiting without a request ({}); {} for bodies still arriving {:?} after their head",
                    Bytes(max_pending * CONNECTION_BYTES),
                    Bytes(slow.stats().memory),
                    timeouts.body_grace,
                )
            } else {
                String::new()
            };
            // The two lines above are what scripts read; the rest goes to
            // stderr (a reader may close stdout after them). No write stops
            // the server: a reader gone is no reason not to serve (`out`).
            let _ = out.flush();
            let rate = match body_min_rate {
                0 => String::new(),
                r => format!(" + 1 s per {r} B, {:?} at most", timeouts.body_max),
            };
            errln!(
                "frostheap serve: timeouts: head {:?}, body {:?}{rate}, send {:?}, idle {:?}{gate}; descriptors: {fd_limit}",
                timeouts.header, timeouts.body, timeouts.send, timeouts.idle
            );
        }
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let limited = state.budget.as_ref().map(|b| {
            MemoryLimitLayer::new(b.clone())
                .overload(overload)
                .cost(request_cost)
                .max_waiting(max_waiting)
                .layer(Endpoints({
                    let state = state.clone();
                    move |req| serve_request(state.clone(), req)
                }))
        });
        serve(
            listener,
            state,
            limited,
            signals,
            args.shutdown_delay,
            args.shutdown_timeout,
        )
        .await
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// The memory the server stays within with a budget of `max_memory`:
/// the budget, + the slow-body pool ([`slow_memory`]), +
/// (`--max-pending` + `--max-waiting`) × [`CONNECTION_BYTES`], +
/// [`OWN_BYTES`] + [`LOAD_BYTES`]. Its only statement: the README's, the
/// bench's check and the process-limit check at start all follow it.
pub(super) fn memory_bound(args: &ServeArgs, max_memory: usize) -> usize {
    let (pending, waiting) = waiting_connections(args, max_memory);
    max_memory
        .saturating_add(slow_memory(args, max_memory))
        .saturating_add((pending + waiting).saturating_mul(CONNECTION_BYTES))
        .saturating_add(OWN_BYTES)
        .saturating_add(LOAD_BYTES)
}

/// Refuses a budget that the process's own allocator limit (frostheap's
/// `FROSTHEAP_MAX`, or its default) cannot hold with the rest of what the
/// server promises to stay within ([`memory_bound`]). Until 2026-12-06 the
/// load's share ([`LOAD_BYTES`]) was left out: under `FROSTHEAP_MAX=44M`, a
/// 32 MiB budget started and aborted at 10× load. Past the limit
/// an allocation fails, and the process aborts: with `FROSTHEAP_MAX=16M`
/// and a 256 MiB budget the server promised 2,048 clients and aborted
/// under load (a user's trial), where it should have shed.
fn within_process_limit(
    args: &ServeArgs,
    max_memory: usize,
    per_client: usize,
) -> Result<(), Error> {
    let limit = frostheap::stats().limit;
    // What a budget of `bytes` makes the server use at most.
    let uses = |bytes: usize| memory_bound(args, bytes);
    let needed = uses(max_memory);
    if needed <= limit {
        return Ok(());
    }
    let (pending, waiting) = waiting_connections(args, max_memory);
    let given = match &args.max_memory {
        Some(text) => format!("--max-memory \"{text}\" ({})", Bytes(max_memory)),
        None => format!("--max-memory {} (the default)", Bytes(max_memory)),
    };
    let env = match std::env::var("FROSTHEAP_MAX") {
        Ok(v) => format!("FROSTHEAP_MAX={v}"),
        Err(_) => "FROSTHEAP_MAX unset: its default, from this machine's memory".into(),
    };
    // The largest budget within the limit (the default connection counts
    // follow the budget): the least budget is one client.
    let (mut fits, mut over) = (0, max_memory);
    while fits + 1 < over {
        let mid = fits + (over - fits) / 2;
        if uses(mid) <= limit {
            fits = mid;
        } else {
            over = mid;
        }
    }
    let hint = if fits >= per_client {
        format!("a --max-memory of at most {} or ", Bytes(fits))
    } else {
        String::new()
    };
    Err(format!(
        "invalid {given}: with {} for slow request bodies (--slow-memory), {pending} + {waiting} connections waiting (--max-pending + --max-waiting, {} each), {} of the server's own and {} more under load, the server may use {}, more than the process's allocator limit of {} ({env}), at which it would abort instead of shedding; expected {hint}FROSTHEAP_MAX of at least {}",
        Bytes(slow_memory(args, max_memory)),
        Bytes(CONNECTION_BYTES),
        Bytes(OWN_BYTES),
        Bytes(LOAD_BYTES),
        Bytes(needed),
        Bytes(limit),
        Bytes(needed),
    )
    .into())
}

/// The slow-body pool's memory (`slow.rs`): `--slow-memory`, or by
/// default a sixteenth of `max_memory`, at least twice `--max-body` +
/// [`MIN_CHARGE`] (a body of `--max-body` holds its buffer and the half
/// as large one it is copied from, as it doubles). Both flags are checked
/// at start, before this is used.
fn slow_memory(args: &ServeArgs, max_memory: usize) -> usize {
    if let Some(bytes) = args.slow_memory.as_deref().and_then(|t| parse_size(t).ok()) {
        return bytes;
    }
    let max_body = parse_size(&args.max_body).unwrap_or(0);
    (max_memory / 16).max(max_body.saturating_mul(2).saturating_add(MIN_CHARGE))
}

/// `--max-pending` and `--max-waiting`, or their defaults for a budget of
/// `max_memory`.
fn waiting_connections(args: &ServeArgs, max_memory: usize) -> (usize, usize) {
    let pending = args
        .max_pending
        .unwrap_or((max_memory / 16 / CONNECTION_BYTES).max(64));
    (pending, args.max_waiting.unwrap_or(pending))
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal that arrives.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn serve<S: Limited>(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    limited: Option<S>,
    mut signals: Signals,
    delay: Duration,
    timeout: Duration,
) -> Result<(), Error> {
    let accept = |stream: std::io::Result<(tokio::net::TcpStream, _)>| match stream {
        Ok((stream, _)) => {
            let _ = stream.set_nodelay(true);
            let open = conn::Open::new(state.clone());
            tokio::spawn(conn::connection(stream, open, limited.clone()));
            None
        }
        // Out of descriptors and the like: back off, keep serving.
        Err(e) => Some(e),
    };
    tokio::spawn(give_back_when_idle(state.clone()));
    tokio::spawn(give_back_under_load(state.clone()));
    let name = loop {
        tokio::select! {
            stream = listener.accept() => if let Some(e) = accept(stream) {
                errln!("frostheap serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            },
            name = signals.next() => break name,
        }
    };
    let started = Instant::now();
    state.ready.store(false, Ordering::Relaxed);
    errln!(
        "frostheap serve: {name}: not ready; closing the listener in {delay:?}, then finishing requests in flight for up to {timeout:?}"
    );
    let stop_accepting = tokio::time::sleep(delay);
    tokio::pin!(stop_accepting);
    let mut again = false;
    loop {
        tokio::select! {
            stream = listener.accept() => if let Some(e) = accept(stream) {
                errln!("frostheap serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            },
            _ = &mut stop_accepting => break,
            _ = signals.next() => { again = true; break }
        }
    }
    drop(listener);
    state.shutdown.send_replace(true);
    let drained = async {
        loop {
            let closed = state.all_closed.notified();
            if state.connections.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    };
    if !again {
        tokio::select! {
            _ = drained => {},
            _ = tokio::time::sleep(timeout) => {},
            _ = signals.next() => {},
        }
    }
    let cut = state.connections.load(Ordering::Acquire);
    errln!(
        "frostheap serve: stopped after {:.1?}: {} requests completed, {cut} connections cut",
        started.elapsed(),
        state.completed.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Gives the heaps' free memory back once no request has arrived for a
/// whole [`IDLE_TRIM`], once per idle spell. The heaps keep what requests
/// freed, up to their purge threshold, and give it back only as they free
/// more: nothing does while no request comes. Not done under load, where
/// the memory kept is what the next requests reuse (none in 5 minutes of
/// the mixed load above, at the same resident memory as before).
///
/// Each worker thread trims its own heap ([`IdleTrims`]) as it next parks.
/// A worker parked before the ask would sleep through it, so the monitor
/// then spawns a task per worker that blocks its thread until all of them
/// run at once ([`occupy_every_worker`]): they can only on as many
/// distinct workers, which tokio wakes to take them, and which each park
/// again after. Tokio wakes workers one after another as they find work,
/// not all at once, so one may still sleep through: while the server
/// stays idle, each tick that finds a worker short of its trim does it
/// again.
///
/// Until 2026-12-06 only the monitor's thread trimmed. Against that build
/// (`crates/frostheap-cli/bench/idle-trim.py`, 8 workers, the two builds
/// alternating, committed KiB once idle): after `--mixed 1500` (24,000
/// requests), five pairs, 11,648 before and 10,320 now (medians; lower in
/// every pair, by 0.5–1.7 MiB); after the default 2,400 requests, no
/// difference (9,148 and 9,160): the cached blocks a worker keeps grow
/// with its requests.
async fn give_back_when_idle(state: Arc<State>) {
    let mut tick = tokio::time::interval(IDLE_TRIM);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    // Nothing to give back before the first request.
    let (mut seen, mut trimmed) = (state.requests.load(Ordering::Relaxed), true);
    loop {
        tick.tick().await;
        let requests = state.requests.load(Ordering::Relaxed);
        if requests != seen {
            (seen, trimmed) = (requests, false);
        } else if !trimmed {
            trimmed = true;
            // Under the trims' lock: a trim of the spell before, still
            // under way, counts for that spell, not this one.
            state.idle.ask();
            occupy_every_worker(workers);
        } else if state.idle.this_spell.load(Ordering::Acquire) < workers as u64 {
            // Still idle, and a worker was missed (tokio woke no worker
            // for its task): once more, a tick later.
            occupy_every_worker(workers);
        }
    }
}

/// The free memory the heaps may keep under load, past what is live.
pub(super) const FREE_KEPT: usize = 8 << 20;

/// How often [`give_back_under_load`] looks.
const LOAD_CHECK: Duration = Duration::from_millis(100);

/// Gives the heaps' free memory back whenever they keep more than
/// [`FREE_KEPT`] past what is live, looking every [`LOAD_CHECK`]. A heap
/// purges on its own only once its free memory passes max(32 MiB, twice
/// what is live): at 10× overload of a 32 MiB budget the heaps held up to
/// 56 MiB free beside 29 MiB live, and the server's peak RSS was the
/// budget + 44–46 MiB.
async fn give_back_under_load(state: Arc<State>) {
    let mut tick = tokio::time::interval(LOAD_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = frostheap::stats();
        if s.committed > s.in_use().saturating_add(FREE_KEPT) {
            state.idle.trim_under_load();
        }
    }
}

/// How long [`occupy_every_worker`]'s tasks wait for each other at most:
/// a worker busy with a long request meanwhile is not waited for (it trims
/// when it parks after), and the others are free again after this.
const OCCUPY_AT_MOST: Duration = Duration::from_millis(250);

/// Spawns `workers` tasks that each block their worker thread until all of
/// them have started (or [`OCCUPY_AT_MOST`] has passed): blocking on
/// purpose, so that a worker holding one takes no other and tokio wakes
/// the parked workers to take the rest. Measured with the whole test suite
/// running beside the server: one task per worker that only slept for a
/// millisecond left one worker of four parked, and untrimmed, for a minute.
fn occupy_every_worker(workers: usize) {
    let started = Arc::new(AtomicUsize::new(0));
    // One deadline for all: a worker that runs several of the tasks in
    // turn (the others slow to wake) waits for it once, not once each.
    let until = Instant::now() + OCCUPY_AT_MOST;
    for _ in 0..workers {
        let started = started.clone();
        tokio::spawn(async move {
            started.fetch_add(1, Ordering::AcqRel);
            while started.load(Ordering::Acquire) < workers && Instant::now() < until {
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    }
}

/// A listening socket with a backlog of 1,024 (std's is 128: a burst of
/// connections would overflow it and wait a second for the SYN retry).
fn listen(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Raises the soft limit on open descriptors to the hard limit (a server
/// holds one per connection; Go's runtime does the same at start). Returns
/// the limit in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    lim.rlim_cur
}
