//! The axum example (`examples/axum.rs`) on a loopback port: a request
//! that fits is served and charged, one larger than the budget gets a 413
//! the client can act on.

#![cfg(feature = "tower")]

#[path = "../examples/axum.rs"]
mod example;

use std::io::{Read, Write};
use std::net::TcpStream;

use frostheap_budget::{Budget, PerClient};

fn post(addr: std::net::SocketAddr, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST /upper HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A refused request is answered before its body is read.
    let _ = s.write_all(body);
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_axum_example_admits_what_fits_and_sheds_the_rest() {
    let budget =
        Budget::with_per_client(64 << 10, PerClient::Measured { initial: 16 << 10 }).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(budget.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let ok = post(addr, b"frostheap");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("FROSTHEAP"), "{ok}");

    // Larger than the whole budget: refused at once with 413, and no
    // `Retry-After` (no retry can fit it).
    let shed = post(addr, &vec![b'a'; 100 << 10]);
    assert!(shed.starts_with("HTTP/1.1 413"), "{shed}");
    let head = shed.to_ascii_lowercase();
    assert!(
        !head.contains("retry-after") && head.contains("connection: close"),
        "{shed}"
    );

    let stats = post_get(addr, "/stats");
    assert!(stats.contains("64 KiB"), "{stats}");
    let s = budget.stats();
    assert_eq!((s.admitted, s.refused, s.in_use), (1, 1, 0));
    assert_eq!(s.samples, 1, "the handler's recorded usage was measured");
}

fn post_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
