//! The endpoints of `frostheap serve`: what a request may ask for and what
//! it costs.
//!
//! `POST /echo` parses a JSON body and writes it back; `POST /transform`
//! changes a body (`op=upper|reverse|words`); `GET /hold?ms=N` sleeps;
//! `hold_ms=N` holds any request's memory that long. Each handler records
//! what it really held ([`Permit::record_usage`]: request overhead, body
//! buffer, parsed tree, output), which feeds the measured per-client cost.
//!
//! A request declares its cost from its head ([`request_cost`]): fixed
//! overhead plus its body times what the endpoint builds from it (2 for a
//! transform: body and output; 4 for a JSON echo: body, parsed tree,
//! output).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use frostheap::Bytes;
use frostheap_budget::Permit;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tower_service::Service;

use super::{State, CONNECTION_BYTES, REQUEST_BYTES};

/// Longest `/hold` or `hold_ms` accepted.
const MAX_HOLD_MS: u64 = 10_000;

/// The bytes a request declares from its head: fixed overhead plus what the
/// endpoint builds from its body.
pub(super) fn request_cost(parts: &hyper::http::request::Parts) -> usize {
    let body = frostheap_budget::tower::content_length(parts);
    let factor = match parts.uri.path() {
        "/echo" => 4,
        "/transform" => 2,
        _ => 1,
    };
    REQUEST_BYTES.saturating_add(body.saturating_mul(factor))
}

/// The endpoints, as a tower service for the layer.
#[derive(Clone)]
pub(super) struct App {
    pub(super) state: Arc<State>,
}

impl Service<Request<Incoming>> for App {
    type Response = Response<Full<hyper::body::Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(handle(&state, req).await) })
    }
}

pub(super) fn respond(
    status: StatusCode,
    kind: &'static str,
    body: Vec<u8>,
) -> Response<Full<hyper::body::Bytes>> {
    let mut r = Response::new(Full::new(hyper::body::Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    r
}

pub(super) fn text(status: StatusCode, msg: &str) -> Response<Full<hyper::body::Bytes>> {
    respond(status, "text/plain", format!("{msg}\n").into_bytes())
}

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

pub(super) async fn handle(
    state: &State,
    mut req: Request<Incoming>,
) -> Response<Full<hyper::body::Bytes>> {
    // Taken, not cloned: the response body holds the layer's own handle.
    let permit = req.extensions_mut().remove::<Permit>();
    if let Some(p) = &permit {
        // Its share of the connection counts: a client is both.
        p.record_usage(CONNECTION_BYTES + REQUEST_BYTES);
    }
    let hold_ms = query(&req, "hold_ms")
        .or_else(|| query(&req, "ms"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_HOLD_MS);
    let response = match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/") => text(StatusCode::OK, "frostheap serve: POST /echo, POST /transform?op=upper|reverse|words, GET /hold?ms=N, GET /stats, GET /metrics"),
        (Method::GET, "/hold") => {
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            text(StatusCode::OK, "held")
        }
        (Method::POST, "/echo") => match read_body(state, req, permit.as_ref()).await {
            Err(r) => r,
            Ok(body) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Err(e) => text(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
                Ok(value) => {
                    let out = serde_json::to_vec(&value).expect("a Value serializes");
                    // Walking the document costs; only a measuring budget
                    // uses the figure.
                    if let Some(p) = permit.as_ref().filter(|p| p.measuring()) {
                        p.record_usage(json_bytes(&value) + out.capacity());
                    }
                    hold(hold_ms).await;
                    drop(value);
                    respond(StatusCode::OK, "application/json", out)
                }
            },
        },
        (Method::POST, "/transform") => {
            let op = query(&req, "op").unwrap_or("upper").to_owned();
            match read_body(state, req, permit.as_ref()).await {
                Err(r) => r,
                Ok(body) => {
                    let out = match op.as_str() {
                        "upper" => body.to_ascii_uppercase(),
                        "reverse" => String::from_utf8_lossy(&body).chars().rev().collect::<String>().into_bytes(),
                        "words" => word_counts(&body),
                        other => return text(StatusCode::BAD_REQUEST, &format!("unknown op {other:?}: expected upper, reverse or words")),
                    };
                    if let Some(p) = &permit {
                        p.record_usage(out.capacity());
                    }
                    hold(hold_ms).await;
                    drop(body);
                    respond(StatusCode::OK, "application/octet-stream", out)
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try GET /"),
    };
    if response.status().is_success() {
        state.completed.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn hold(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Reads the whole body into one buffer, refusing past `--max-body` (413)
/// and growing the permit when a body without `Content-Length` outgrows it
/// (503 when the budget cannot).
async fn read_body(
    state: &State,
    req: Request<Incoming>,
    permit: Option<&Permit>,
) -> Result<Vec<u8>, Response<Full<hyper::body::Bytes>>> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than --max-body ({})", Bytes(state.max_body)),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    let mut charged = permit.map_or(0, |p| p.bytes());
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > state.max_body {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
            if let Some(p) = permit {
                let need = REQUEST_BYTES + buf.capacity();
                if need > charged {
                    if !p.try_grow(need - charged) {
                        return Err(text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "over memory budget: retry later",
                        ));
                    }
                    charged = need;
                }
            }
        }
    }
    if let Some(p) = permit {
        p.record_usage(buf.capacity());
    }
    Ok(buf)
}

/// Counts words (a hash table proportional to the body) and answers with
/// the number of distinct words and the ten most frequent.
fn word_counts(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(w).or_insert(0) += 1;
    }
    let mut top: Vec<(&str, u64)> = counts.iter().map(|(w, c)| (*w, *c)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(10);
    serde_json::to_vec(&serde_json::json!({ "distinct": counts.len(), "top": top }))
        .expect("serializes")
}

/// Heap bytes of a parsed JSON tree: one `Value` per node plus string
/// and container buffers (capacities are not exposed: lengths are used).
fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    let node = std::mem::size_of::<Value>();
    match v {
        Value::String(s) => node + s.len(),
        Value::Array(a) => node + a.iter().map(json_bytes).sum::<usize>(),
        // A map entry: the key string, its node and the map's overhead.
        Value::Object(m) => {
            node + m
                .iter()
                .map(|(k, v)| k.len() + 3 * std::mem::size_of::<usize>() + json_bytes(v))
                .sum::<usize>()
        }
        _ => node,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frostheap_budget::Thousands;

    #[test]
    fn words_are_counted() {
        let out = word_counts(b"a b a, c a b");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["distinct"], 3);
        assert_eq!(v["top"][0], serde_json::json!(["a", 3]));
    }

    #[test]
    fn json_bytes_grow_with_the_tree() {
        let small = serde_json::json!({"a": 1});
        let big = serde_json::json!({"a": 1, "b": [1, 2, 3], "c": "x".repeat(1000)});
        assert!(json_bytes(&big) > json_bytes(&small) + 1000);
    }

    #[test]
    fn thousands_in_the_capacity_line() {
        assert_eq!(Thousands(2048).to_string(), "2,048");
    }
}
