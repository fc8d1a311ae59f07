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

use super::State;

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
    per_client: usize,
    #[serde(rename = "per_client_measured")]
    measured: bool,
    samples: u64,
    capacity: usize,
    requests: u64,
    completed: u64,
    rss: usize,
    peak_rss: usize,
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
const METRICS: &[(&str, &str, Kind, &str)] = &[
    (
        "budget",
        "frostheap_budget_bytes",
        Kind::Gauge,
        "Memory budget for clients, in bytes.",
    ),
    (
        "in_use",
        "frostheap_in_use_bytes",
        Kind::Gauge,
        "Bytes held by admitted requests and open connections.",
    ),
    (
        "peak_in_use",
        "frostheap_peak_in_use_bytes",
        Kind::Gauge,
        "Highest in-use bytes seen.",
    ),
    (
        "clients",
        "frostheap_clients",
        Kind::Gauge,
        "Requests admitted and not yet finished.",
    ),
    (
        "peak_clients",
        "frostheap_peak_clients",
        Kind::Gauge,
        "Most requests admitted at once.",
    ),
    (
        "capacity",
        "frostheap_capacity_clients",
        Kind::Gauge,
        "How many clients fit: budget / per-client bytes.",
    ),
    (
        "per_client",
        "frostheap_per_client_bytes",
        Kind::Gauge,
        "Per-client cost in force (declared or measured estimate).",
    ),
    (
        "measured",
        "frostheap_per_client_measured",
        Kind::Gauge,
        "1 when the per-client cost is measured, 0 when declared.",
    ),
    (
        "samples",
        "frostheap_per_client_samples",
        Kind::Counter,
        "Usage measurements fed to the per-client estimate.",
    ),
    (
        "admitted",
        "frostheap_admitted",
        Kind::Counter,
        "Requests admitted.",
    ),
    (
        "shed",
        "frostheap_shed",
        Kind::Counter,
        "Requests and connections refused because memory was spent.",
    ),
    (
        "shed_connections",
        "frostheap_shed_connections",
        Kind::Counter,
        "Connections answered 503 at accept.",
    ),
    (
        "waited",
        "frostheap_waited",
        Kind::Counter,
        "Requests admitted after waiting for memory.",
    ),
    (
        "waiting",
        "frostheap_waiting",
        Kind::Gauge,
        "Requests and connections waiting for memory now.",
    ),
    (
        "requests",
        "frostheap_requests",
        Kind::Counter,
        "Requests routed to an endpoint behind the budget.",
    ),
    (
        "completed",
        "frostheap_completed",
        Kind::Counter,
        "Requests answered with a 2xx status.",
    ),
    (
        "rss",
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident set size (VmRSS).",
    ),
    (
        "peak_rss",
        "frostheap_peak_resident_memory_bytes",
        Kind::Gauge,
        "Peak resident set size (VmHWM).",
    ),
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
    let requests = state.requests.load(Ordering::Relaxed);
    let mut n = Numbers {
        requests,
        completed: state.completed.load(Ordering::Relaxed),
        shed_connections: state.shed_connections.load(Ordering::Relaxed),
        rss,
        peak_rss,
        ..Numbers::default()
    };
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
            n.waiting = s.waiting + state.gate.as_ref().map_or(0, |g| g.waiting());
            n.per_client = s.per_client;
            n.measured = s.measured;
            n.samples = s.samples;
            n.capacity = s.capacity;
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
        let key = if *field == "measured" {
            "per_client_measured"
        } else {
            field
        };
        let value = match &fields[key] {
            serde_json::Value::Bool(b) => u64::from(*b),
            v => v.as_u64().expect("a metric's field is a number"),
        };
        match kind {
            Kind::Gauge => registry.register(*name, *help, ConstGauge::new(value as i64)),
            Kind::Counter => registry.register(*name, *help, ConstCounter::new(value)),
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
