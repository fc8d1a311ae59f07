//! What `/stats` and `/metrics` report: one [`Numbers`] struct, serialized
//! as JSON for `/stats` (serde) and encoded in the OpenMetrics text format
//! for `/metrics` (prometheus-client).
//!
//! The values live only in `Numbers`; [`METRICS`] adds what a metric needs
//! beyond a value (its name, type and help), keyed by field name. A test
//! checks that every number has a metric and every metric a number, so the
//! two cannot drift apart.
//!
//! Counters follow OpenMetrics: the family is named without `_total`
//! (`# TYPE frostheap_admitted counter`) and its sample with it
//! (`frostheap_admitted_total 5`), so queries read the names they always
//! did.

use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::state::State;

/// The numbers `/stats` and `/metrics` report.
#[derive(Serialize, Debug, Default)]
pub(super) struct Numbers {
    budget: usize,
    in_use: usize,
    peak_in_use: usize,
    clients: usize,
    peak_clients: usize,
    admitted: u64,
    shed: u64,
    shed_connections: u64,
    waited: u64,
    waiting: usize,
    /// Requests that waited for memory and were dropped, their client gone.
    abandoned: u64,
    per_client: usize,
    #[serde(rename = "per_client_measured")]
    measured: bool,
    samples: u64,
    capacity: usize,
    /// The estimate's quantile of recorded usage (0.95).
    per_client_quantile: f64,
    /// The estimate's window, seconds.
    per_client_window_seconds: f64,
    /// Measurements in the window now, and the largest of them.
    per_client_window_samples: u64,
    per_client_window_max: usize,
    requests: u64,
    /// Handlers' 2xx answers written to the socket whole, and those whose
    /// connection ended first.
    completed: u64,
    undelivered: u64,
    /// Open connections, and those of them waiting at the gate (no
    /// admitted request) with the gate's capacity and peak.
    connections: usize,
    pending: usize,
    pending_capacity: usize,
    peak_pending: usize,
    /// Waiting connections closed (503) to make room for a newcomer.
    evicted: u64,
    /// The slow-body pool (`slow.rs`): requests whose body is still
    /// arriving past the grace, holding no client place, now and at most
    /// at once; those that entered it, and those answered 503 because it
    /// could not hold them; its bytes in use and its size.
    slow_bodies: usize,
    peak_slow_bodies: usize,
    slow_entered: u64,
    slow_shed: u64,
    slow_in_use: usize,
    slow_memory: usize,
    timeouts_header: u64,
    timeouts_body: u64,
    timeouts_idle: u64,
    timeouts_send: u64,
    /// Lingering closes under way, and those cut short.
    lingering: usize,
    linger_cut: u64,
    /// True until a shutdown begins.
    ready: bool,
    rss: usize,
    peak_rss: usize,
    /// What the process's heaps have committed (`frostheap::stats()`):
    /// live blocks and the free memory the heaps keep for reuse; and the
    /// bytes of live blocks in the main and thread heaps. Their difference
    /// is free memory the allocator holds, not a leak.
    heap_committed: usize,
    heap_in_use: usize,
    /// Times the server went idle and asked its workers to give their
    /// heaps' free memory back, the worker threads' trims (each its own
    /// heap), and the bytes given back.
    idle_trims: u64,
    idle_trim_threads: u64,
    idle_trimmed: u64,
    load_trims: u64,
    load_trimmed: u64,
    memory_bound: usize,
    /// `256 MiB: 2,048 clients at ≈128 KiB each` (`null` without a budget).
    summary: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Gauge,
    Counter,
}

/// A metric for each number of [`Numbers`]: (field, metric family, type,
/// help).
#[rustfmt::skip]
const METRICS: &[(&str, &str, Kind, &str)] = &[
    ("budget", "frostheap_budget_bytes", Kind::Gauge, "Memory budget for clients, in bytes."),
    ("in_use", "frostheap_in_use_bytes", Kind::Gauge, "Bytes held by admitted requests (not those whose body arrives slowly: slow_in_use)."),
    ("peak_in_use", "frostheap_peak_in_use_bytes", Kind::Gauge, "Highest in-use bytes seen."),
    ("clients", "frostheap_clients", Kind::Gauge, "Requests admitted and not yet finished that hold a client place (not those whose body arrives slowly: slow_bodies)."),
    ("peak_clients", "frostheap_peak_clients", Kind::Gauge, "Most requests admitted at once."),
    ("capacity", "frostheap_capacity_clients", Kind::Gauge, "How many clients fit: budget / per-client bytes."),
    ("per_client", "frostheap_per_client_bytes", Kind::Gauge, "Per-client cost in force (declared or measured estimate)."),
    ("measured", "frostheap_per_client_measured", Kind::Gauge, "1 when the per-client cost is measured, 0 when declared."),
    ("samples", "frostheap_per_client_samples", Kind::Counter, "Usage measurements fed to the per-client estimate."),
    ("per_client_quantile", "frostheap_per_client_quantile", Kind::Gauge, "The quantile of recorded usage the measured estimate follows."),
    ("per_client_window_seconds", "frostheap_per_client_window_seconds", Kind::Gauge, "The time window of the measured estimate."),
    ("per_client_window_samples", "frostheap_per_client_window_samples", Kind::Gauge, "Usage measurements in the estimate's window now."),
    ("per_client_window_max", "frostheap_per_client_window_max_bytes", Kind::Gauge, "The largest usage measurement in the estimate's window now."),
    ("admitted", "frostheap_admitted", Kind::Counter, "Requests admitted."),
    ("shed", "frostheap_shed", Kind::Counter, "Requests answered 503 because memory was spent: at admission, or after it (a handler whose charge could not grow, a slow body that found no client place once whole), those counted in admitted too."),
    ("shed_connections", "frostheap_shed_connections", Kind::Counter, "Connections answered 503 at accept because the gate was full."),
    ("waited", "frostheap_waited", Kind::Counter, "Requests admitted after waiting for memory."),
    ("waiting", "frostheap_waiting", Kind::Gauge, "Requests waiting for memory now."),
    ("abandoned", "frostheap_abandoned", Kind::Counter, "Requests that waited for memory and were dropped, while waiting or at their turn, because their client had closed the connection."),
    ("requests", "frostheap_requests", Kind::Counter, "Requests other than the monitoring endpoints': admitted, shed at admission, or refused from their head (404, 413)."),
    ("completed", "frostheap_completed", Kind::Counter, "Requests answered with a 2xx status, the answer written to the socket whole."),
    ("undelivered", "frostheap_undelivered", Kind::Counter, "Requests answered with a 2xx status whose answer was not written whole: the connection ended first."),
    ("connections", "frostheap_connections", Kind::Gauge, "Open connections."),
    ("pending", "frostheap_pending_connections", Kind::Gauge, "Connections without an admitted request (sending their head, idle), held at the gate."),
    ("pending_capacity", "frostheap_pending_capacity_connections", Kind::Gauge, "How many connections the gate holds at most."),
    ("peak_pending", "frostheap_peak_pending_connections", Kind::Gauge, "Most connections held at the gate at once."),
    ("evicted", "frostheap_evicted_connections", Kind::Counter, "Waiting connections closed (503) to make room for a newcomer."),
    ("slow_bodies", "frostheap_slow_bodies", Kind::Gauge, "Requests whose body is still arriving past the grace, held apart from the clients: no client place, only what they have sent."),
    ("peak_slow_bodies", "frostheap_peak_slow_bodies", Kind::Gauge, "Most requests with a slow body at once."),
    ("slow_entered", "frostheap_slow_entered", Kind::Counter, "Requests whose body was still arriving past the grace."),
    ("slow_shed", "frostheap_slow_shed", Kind::Counter, "Requests with a slow body answered 503 because the slow-body memory could not hold them."),
    ("slow_in_use", "frostheap_slow_in_use_bytes", Kind::Gauge, "Bytes held by requests with a slow body (connection, head and body so far)."),
    ("slow_memory", "frostheap_slow_memory_bytes", Kind::Gauge, "Memory for requests with a slow body, apart from the budget."),
    ("timeouts_header", "frostheap_timeouts_header", Kind::Counter, "Connections closed because a request head was not received in time."),
    ("timeouts_body", "frostheap_timeouts_body", Kind::Counter, "Requests whose body was slower than the body timeout and minimum rate."),
    ("timeouts_idle", "frostheap_timeouts_idle", Kind::Counter, "Kept-alive connections closed after waiting too long for a request."),
    ("timeouts_send", "frostheap_timeouts_send", Kind::Counter, "Connections closed because the client took none of its response for the send timeout."),
    ("lingering", "frostheap_lingering_connections", Kind::Gauge, "Connections in a lingering close now."),
    ("linger_cut", "frostheap_linger_cut", Kind::Counter, "Lingering closes cut short by their time or byte bound."),
    ("ready", "frostheap_ready", Kind::Gauge, "1 while the server takes new clients, 0 once a shutdown has begun."),
    ("rss", "process_resident_memory_bytes", Kind::Gauge, "Resident set size (VmRSS)."),
    ("peak_rss", "frostheap_peak_resident_memory_bytes", Kind::Gauge, "Peak resident set size (VmHWM)."),
    ("heap_committed", "frostheap_heap_committed_bytes", Kind::Gauge, "Bytes the process's heaps have committed: live blocks and free memory kept for reuse."),
    ("heap_in_use", "frostheap_heap_in_use_bytes", Kind::Gauge, "Bytes of live blocks in the main and thread heaps."),
    ("idle_trims", "frostheap_idle_trims", Kind::Counter, "Times the server went idle and asked its worker threads to give their heaps' free memory back."),
    ("idle_trim_threads", "frostheap_idle_trim_threads", Kind::Counter, "Worker threads' trims of their own heaps as the server went idle."),
    ("idle_trimmed", "frostheap_idle_trimmed_bytes", Kind::Counter, "Bytes of free heap memory given back as the server went idle."),
    ("load_trims", "frostheap_load_trims", Kind::Counter, "Times the heaps kept more free memory than the server allows under load (8 MiB) and gave it back."),
    ("load_trimmed", "frostheap_load_trimmed_bytes", Kind::Counter, "Bytes of free heap memory given back under load."),
    ("memory_bound", "frostheap_memory_bound_bytes", Kind::Gauge, "The memory the server stays within: the budget, the slow-body memory, its waiting connections, its own and its load's (0 without a budget)."),
];

/// The content type of [`metrics_text`].
pub(super) const METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Resident and peak resident bytes (VmRSS, VmHWM) of this process.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub(super) fn numbers(state: &State) -> Numbers {
    let (rss, peak_rss) = rss();
    let heap = frostheap::stats();
    let requests = state.requests.load(Ordering::Relaxed);
    let mut n = Numbers {
        requests,
        completed: state.completed.load(Ordering::Relaxed),
        undelivered: state.undelivered.load(Ordering::Relaxed),
        abandoned: state.abandoned.load(Ordering::Relaxed),
        shed_connections: state.shed_connections.load(Ordering::Relaxed),
        connections: state.connections.load(Ordering::Relaxed),
        timeouts_header: state.timeouts_header.load(Ordering::Relaxed),
        timeouts_body: state.timeouts_body.load(Ordering::Relaxed),
        timeouts_idle: state.timeouts_idle.load(Ordering::Relaxed),
        timeouts_send: state.timeouts_send.load(Ordering::Relaxed),
        lingering: state.lingering.load(Ordering::Relaxed),
        linger_cut: state.linger_cut.load(Ordering::Relaxed),
        ready: state.ready.load(Ordering::Relaxed),
        rss,
        peak_rss,
        heap_committed: heap.committed,
        heap_in_use: heap.in_use(),
        idle_trims: state.idle.asked.load(Ordering::Relaxed),
        idle_trim_threads: state.idle.threads.load(Ordering::Relaxed),
        idle_trimmed: state.idle.bytes.load(Ordering::Relaxed),
        load_trims: state.idle.load_trims.load(Ordering::Relaxed),
        load_trimmed: state.idle.load_trimmed.load(Ordering::Relaxed),
        memory_bound: state.memory_bound.unwrap_or(0),
        ..Numbers::default()
    };
    if let Some(g) = &state.gate {
        let g = g.stats();
        n.pending = g.waiting;
        n.pending_capacity = g.capacity;
        n.peak_pending = g.peak;
        n.evicted = g.evicted;
    }
    if let Some(slow) = &state.slow {
        let s = slow.stats();
        n.slow_bodies = s.bodies;
        n.peak_slow_bodies = s.peak_bodies;
        n.slow_entered = s.entered;
        n.slow_shed = s.shed;
        n.slow_in_use = s.in_use;
        n.slow_memory = s.memory;
    }
    match &state.budget {
        Some(b) => {
            let s = b.stats();
            n.budget = s.budget;
            n.in_use = s.in_use;
            n.peak_in_use = s.peak_in_use;
            n.clients = s.clients;
            n.peak_clients = s.peak_clients;
            n.admitted = s.admitted;
            n.shed = s.refused;
            n.waited = s.waited;
            n.waiting = s.waiting;
            n.per_client = s.per_client;
            n.measured = s.measured;
            n.samples = s.samples;
            n.capacity = s.capacity;
            n.per_client_quantile = frostheap_budget::QUANTILE;
            n.per_client_window_seconds = s.window.as_secs_f64();
            n.per_client_window_samples = s.window_samples;
            n.per_client_window_max = s.window_max;
            n.summary = Some(b.to_string());
        }
        // Without a budget every routed request is admitted.
        None => n.admitted = requests,
    }
    n
}

/// `/stats`: the numbers as one JSON object and a newline.
pub(super) fn stats_json(state: &State) -> String {
    let mut out = serde_json::to_string(&numbers(state)).expect("numbers serialize");
    out.push('\n');
    out
}

/// `/metrics`: the numbers in the OpenMetrics text format.
pub(super) fn metrics_text(state: &State) -> String {
    encode(&numbers(state))
}

fn encode(numbers: &Numbers) -> String {
    let serde_json::Value::Object(fields) =
        serde_json::to_value(numbers).expect("numbers serialize")
    else {
        unreachable!("Numbers is a struct")
    };
    let mut registry = Registry::default();
    for (field, name, kind, help) in METRICS {
        // The registry ends each help text with a period of its own.
        let help = &help.trim_end_matches('.');
        let key = if *field == "measured" {
            "per_client_measured"
        } else {
            field
        };
        let value = &fields[key];
        let whole = match value {
            serde_json::Value::Bool(b) => Some(u64::from(*b)),
            v => v.as_u64(),
        };
        match (kind, whole) {
            (Kind::Gauge, Some(v)) => registry.register(*name, *help, ConstGauge::new(v as i64)),
            (Kind::Counter, Some(v)) => registry.register(*name, *help, ConstCounter::new(v)),
            (Kind::Gauge, None) => {
                let v = value.as_f64().expect("a metric's field is a number");
                registry.register(*name, *help, ConstGauge::new(v))
            }
            (Kind::Counter, None) => unreachable!("counters are whole numbers: {field}"),
        }
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_has_a_metric_and_every_metric_a_number() {
        let serde_json::Value::Object(fields) = serde_json::to_value(Numbers::default()).unwrap()
        else {
            panic!("not an object")
        };
        for (key, value) in &fields {
            if key == "summary" {
                continue;
            }
            let field = if key == "per_client_measured" {
                "measured"
            } else {
                key
            };
            assert!(
                METRICS.iter().any(|m| m.0 == field),
                "/stats number {key} ({value}) has no metric"
            );
        }
        for m in METRICS {
            let key = if m.0 == "measured" {
                "per_client_measured"
            } else {
                m.0
            };
            assert!(fields.contains_key(key), "metric {} has no number", m.1);
        }
    }

    #[test]
    fn counters_are_named_the_openmetrics_way() {
        let text = encode(&Numbers {
            admitted: 7,
            budget: 1 << 20,
            ..Numbers::default()
        });
        assert!(
            text.contains("# TYPE frostheap_admitted counter\n"),
            "{text}"
        );
        assert!(text.contains("\nfrostheap_admitted_total 7\n"), "{text}");
        assert!(
            text.contains("\nfrostheap_budget_bytes 1048576\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
