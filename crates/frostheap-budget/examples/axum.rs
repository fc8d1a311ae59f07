//! A user's own axum server admitting requests by memory with
//! frostheap-budget's tower layer: `cargo run --example axum --features
//! tower -p frostheap-budget`, then `curl -d hello 127.0.0.1:3000/upper`.
//!
//! What the layer adds to an existing stack is the `MemoryLimitLayer` line
//! (and, to measure what requests really cost, the `Extension<Permit>` in
//! the handler). Routes added after `.layer(..)` (here `/stats`) are not
//! limited, so a balancer can read them while the server sheds. The
//! integration test `tests/axum_example.rs` runs this same `app`.

use axum::body::Bytes;
use axum::extract::Extension;
use axum::routing::{get, post};
use axum::Router;
use frostheap_budget::tower::MemoryLimitLayer;
use frostheap_budget::{Budget, Permit};

/// The application: `/upper` behind the budget, `/stats` beside it.
pub fn app(budget: Budget) -> Router {
    let stats = budget.clone();
    Router::new()
        .route("/upper", post(upper))
        .layer(MemoryLimitLayer::new(budget))
        .route("/stats", get(move || async move { stats.to_string() }))
}

/// Upper-cases the body; records the body and the output as this
/// request's usage, which the budget's per-client estimate follows.
async fn upper(Extension(permit): Extension<Permit>, body: Bytes) -> Vec<u8> {
    permit.record_usage(2 * body.len());
    body.to_ascii_uppercase()
}

#[allow(dead_code)] // the test uses `app` only
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let budget = Budget::new(64 << 20);
    println!("{budget}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app(budget)).await
}
