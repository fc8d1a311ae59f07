//! `frostheap serve` end to end: the binary on a loopback port, clients
//! held open up to and past capacity, the refusals, the waiting, and the
//! statistics adding up; bad configuration ending with one line and exit
//! status 2.
//!
//! A client is "held" by sending a request head that declares a body and
//! only half of the body: the handler waits for the rest while its bytes
//! stay charged. No test depends on timing: each waits for the state it
//! needs, read from `/stats`, for at most [`PATIENCE`] beyond the server's
//! own times (its timeouts, its linger bound) — generous, so that a loaded
//! or emulated machine ten times slower passes, yet bounded, so that a
//! server that never gets there fails instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits, beyond the server's own times, for something
/// that should happen (an answer, a count in `/stats`).
const PATIENCE: Duration = Duration::from_secs(30);

/// The bounds of `frostheap serve`'s lingering close (serve/conn.rs): at
/// most `LINGER_TIME` in all, and `LINGER_IDLE` without a byte from the
/// client.
const LINGER_TIME: Duration = Duration::from_secs(30);
const LINGER_IDLE: Duration = Duration::from_secs(5);

struct Server {
    child: Child,
    addr: String,
    banner: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        // Two workers unless the test asks for its own count.
        let threads: &[&str] = if args.iter().any(|a| a.starts_with("--threads")) {
            &[]
        } else {
            &["--threads", "2"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_frostheap"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(threads)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start frostheap serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().expect("a capacity line").unwrap();
        let listening = lines.next().expect("a listening line").unwrap();
        let addr = listening
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected line {listening:?}"))
            .to_owned();
        Server {
            child,
            addr,
            banner,
        }
    }

    fn stats(&self) -> Value {
        let (status, body) = request(&self.addr, "GET", "/stats", b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("/stats is JSON")
    }

    /// Polls `/stats` until `ready` holds (at most [`PATIENCE`]).
    fn wait_for(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        self.wait_within(Duration::ZERO, what, ready)
    }

    /// Polls `/stats` until `ready` holds, for at most `server_time` (what
    /// the server may take by its configuration) + [`PATIENCE`].
    fn wait_within(
        &self,
        server_time: Duration,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let s = self.stats();
            if ready(&s) {
                return s;
            }
            assert!(
                start.elapsed() < server_time + PATIENCE,
                "timed out after {:?} waiting for {what}: {s}",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child`, a server this test started.
fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// Waits for `child` to exit, failing with `what` past `deadline`.
fn exit_by(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the server");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads one response to the end (the requests say `Connection: close`).
fn read_response(mut s: TcpStream) -> (u16, Vec<u8>) {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, raw[split + 4..].to_vec())
}

fn head(method: &str, path: &str, len: usize) -> String {
    format!("{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
}

fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = connect(addr);
    s.write_all(head(method, path, body.len()).as_bytes())
        .unwrap();
    s.write_all(body).unwrap();
    read_response(s)
}

/// A request whose body is half sent: the server holds it until `finish`.
/// It holds its client place only for `--body-grace` (1 s; past it, a body
/// still arriving leaves its place for the slow-body pool): a test that
/// holds places with it gives the server [`HOLDING`].
struct Held {
    stream: TcpStream,
    rest: Vec<u8>,
}

fn hold(addr: &str, body: &[u8]) -> Held {
    let mut stream = connect(addr);
    stream
        .write_all(head("POST", "/transform?op=upper", body.len()).as_bytes())
        .unwrap();
    let half = body.len() / 2;
    stream.write_all(&body[..half]).unwrap();
    Held {
        stream,
        rest: body[half..].to_vec(),
    }
}

impl Held {
    fn finish(mut self) -> (u16, Vec<u8>) {
        // The server may already have answered (and closed) if it shed us.
        let _ = self.stream.write_all(&self.rest);
        read_response(self.stream)
    }
}

/// The flags of a server whose held requests ([`hold`]) keep their client
/// places while the test runs: a body grace longer than any test, even
/// cut to a tenth while requests find no place (6 minutes; a held body
/// still meets `--body-timeout`, 20 s, as before).
const HOLDING: [&str; 2] = ["--body-grace", "1h"];

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats has no number {key:?}: {v}"))
}

const BODY: &[u8] = b"frostheap holds this body while half of it is in flight";

#[test]
fn shed_mode_admits_up_to_capacity_and_sheds_the_rest_with_503() {
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--per-client",
        "1M",
        "--fixed-per-client",
        "--overload",
        "shed",
        HOLDING[0],
        HOLDING[1],
    ]);
    assert!(
        server.banner.contains("8 MiB: 8 clients at ≈1 MiB each"),
        "{}",
        server.banner
    );
    let capacity = n(&server.stats(), "capacity");
    assert_eq!(capacity, 8);

    let held: Vec<Held> = (0..capacity).map(|_| hold(&server.addr, BODY)).collect();
    let full = server.wait_for("capacity clients in flight", |s| {
        n(s, "clients") == capacity
    });
    assert_eq!(
        n(&full, "in_use"),
        n(&full, "budget"),
        "connections + requests fill the budget exactly"
    );

    // Past capacity: refused with 503 at once, both of them.
    let extra = 4;
    for _ in 0..extra {
        let (status, body) = request(&server.addr, "POST", "/transform", BODY);
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("memory budget"));
    }
    // The held ones complete normally.
    for h in held {
        let (status, body) = h.finish();
        assert_eq!(status, 200);
        assert_eq!(body, BODY.to_ascii_uppercase());
    }
    let s = server.wait_for("everything released", |s| {
        n(s, "in_use") == 0 && n(s, "clients") == 0
    });
    assert!(
        n(&s, "peak_clients") <= capacity,
        "admitted at once ≤ capacity: {s}"
    );
    assert_eq!(n(&s, "peak_clients"), capacity);
    assert_eq!(n(&s, "admitted"), capacity);
    assert_eq!(n(&s, "shed"), extra);
    assert_eq!(
        n(&s, "admitted") + n(&s, "shed"),
        capacity + extra,
        "every request was admitted or shed"
    );
    assert_eq!(
        n(&s, "requests") + n(&s, "shed_connections"),
        capacity + extra
    );
    assert_eq!(n(&s, "completed"), capacity);
    assert!(n(&s, "peak_in_use") <= n(&s, "budget"));
}

#[test]
fn wait_mode_queues_past_capacity_and_serves_when_memory_returns() {
    let server = Server::start(&[
        "--max-memory",
        "4M",
        "--per-client",
        "1M",
        "--fixed-per-client",
        "--overload",
        "wait",
        HOLDING[0],
        HOLDING[1],
    ]);
    let capacity = n(&server.stats(), "capacity");
    assert_eq!(capacity, 4);
    let mut held: Vec<Held> = (0..capacity).map(|_| hold(&server.addr, BODY)).collect();
    server.wait_for("capacity clients in flight", |s| {
        n(s, "clients") == capacity
    });

    // Two more: they wait instead of failing.
    let addr = server.addr.clone();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || request(&addr, "POST", "/transform?op=reverse", BODY))
        })
        .collect();
    let s = server.wait_for("two waiters", |s| n(s, "waiting") == 2);
    assert_eq!(
        n(&s, "clients"),
        capacity,
        "nobody past capacity was admitted: {s}"
    );
    assert_eq!(n(&s, "shed"), 0);

    // Each finished client lets one waiter in.
    for h in held.drain(..) {
        assert_eq!(h.finish().0, 200);
    }
    let reversed: Vec<u8> = BODY.iter().rev().copied().collect();
    for w in waiting {
        let (status, body) = w.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, reversed);
    }
    let s = server.wait_for("everything released", |s| n(s, "in_use") == 0);
    assert_eq!(n(&s, "admitted"), capacity + 2);
    assert_eq!(n(&s, "shed"), 0);
    assert_eq!(n(&s, "waiting"), 0);
    assert!(n(&s, "peak_clients") <= capacity, "{s}");
    // The two that waited are counted so (they were not: the layer waits
    // for a reservation, which became a client uncounted).
    assert_eq!(n(&s, "waited"), 2, "{s}");
    let (_, metrics) = request(&server.addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("\nfrostheap_waited_total 2\n"),
        "{metrics}"
    );
}

#[test]
fn wait_mode_drops_a_waiting_request_whose_client_has_left() {
    let server = Server::start(&[
        "--max-memory",
        "2M",
        "--per-client",
        "1M",
        "--fixed-per-client",
        "--overload",
        "wait",
        HOLDING[0],
        HOLDING[1],
    ]);
    let held: Vec<Held> = (0..2).map(|_| hold(&server.addr, BODY)).collect();
    server.wait_for("capacity clients in flight", |s| n(s, "clients") == 2);
    // Two requests wait: one whose client closes its connection, one whose
    // client shuts its side (taken for gone too, as nginx does). They were
    // run when their turn came, on memory the clients still there waited
    // for.
    let mut gone = Vec::new();
    for close in [true, false] {
        let mut s = connect(&server.addr);
        s.write_all(head("POST", "/transform", BODY.len()).as_bytes())
            .unwrap();
        s.write_all(BODY).unwrap();
        gone.push((s, close));
    }
    server.wait_for("two waiters", |s| n(s, "waiting") == 2);
    for (s, close) in gone {
        if close {
            drop(s);
        } else {
            s.shutdown(std::net::Shutdown::Write).unwrap();
            // Kept open: read below.
            let (status, _) = read_response(s);
            assert_eq!(status, 503, "the half-closed client's answer");
        }
    }
    let s = server.wait_for("both waiters dropped", |s| {
        n(s, "abandoned") == 2 && n(s, "waiting") == 0
    });
    assert_eq!(n(&s, "admitted"), 2, "neither ran: {s}");
    // A waiter whose client stays is still served.
    let addr = server.addr.clone();
    let stays = std::thread::spawn(move || request(&addr, "POST", "/transform", BODY));
    server.wait_for("a waiter", |s| n(s, "waiting") == 1);
    for h in held {
        assert_eq!(h.finish().0, 200);
    }
    assert_eq!(stays.join().unwrap().0, 200);
    let s = server.wait_for("everything released", |s| n(s, "in_use") == 0);
    assert_eq!(
        (n(&s, "admitted"), n(&s, "completed"), n(&s, "abandoned")),
        (3, 3, 2),
        "{s}"
    );
    let (_, metrics) = request(&server.addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("\nfrostheap_abandoned_total 2\n"),
        "{metrics}"
    );
}

#[test]
fn endpoints_work_and_measurement_refines_the_per_client_cost() {
    let server = Server::start(&["--max-memory", "64M"]);
    assert!(
        server
            .banner
            .contains("64 MiB: 512 clients at ≈128 KiB each"),
        "{}",
        server.banner
    );
    let doc = serde_json::json!({"name": "frostheap", "list": [1, 2.5, null, true], "nested": {"s": "x".repeat(300)}});
    let rounds = 20;
    for _ in 0..rounds {
        let (status, body) = request(&server.addr, "POST", "/echo", doc.to_string().as_bytes());
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), doc);
    }
    let (status, body) = request(
        &server.addr,
        "POST",
        "/transform?op=words",
        b"to be or not to be",
    );
    assert_eq!(status, 200);
    let words: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(words["distinct"], 4);
    assert_eq!(request(&server.addr, "POST", "/echo", b"{not json").0, 400);
    assert_eq!(request(&server.addr, "GET", "/nope", b"").0, 404);

    // The 404 is answered before the budget: not admitted, not measured.
    let s = server.wait_for("all measured", |s| n(s, "samples") == rounds + 2);
    // Small requests measured well under the declared 128 KiB: capacity grows.
    assert!(n(&s, "per_client") < 128 << 10, "{s}");
    assert_eq!(n(&s, "capacity"), n(&s, "budget") / n(&s, "per_client"));
    assert_eq!(n(&s, "admitted"), rounds + 2);
    assert_eq!(n(&s, "requests"), rounds + 3);
    assert_eq!(n(&s, "shed"), 0);
    assert!(s["per_client_measured"].as_bool().unwrap());

    let (status, metrics) = request(&server.addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    // (family, sample): OpenMetrics names a counter's family without
    // `_total` and its sample with it.
    for (family, sample) in [
        ("frostheap_budget_bytes", "frostheap_budget_bytes"),
        ("frostheap_in_use_bytes", "frostheap_in_use_bytes"),
        ("frostheap_admitted", "frostheap_admitted_total"),
        ("frostheap_shed", "frostheap_shed_total"),
        ("frostheap_per_client_bytes", "frostheap_per_client_bytes"),
        ("frostheap_capacity_clients", "frostheap_capacity_clients"),
    ] {
        assert!(
            metrics.contains(&format!("# HELP {family} ")),
            "{family} has no HELP line"
        );
        assert!(!metrics.contains(".."), "a HELP text ends with two periods");
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{family} has no TYPE line"
        );
        assert!(
            metrics.contains(&format!("\n{sample} ")),
            "{sample} has no sample"
        );
    }
    assert!(metrics.contains(&format!("\nfrostheap_admitted_total {}\n", rounds + 2)));
    assert!(metrics.contains(&format!("frostheap_budget_bytes {}\n", 64 << 20)));
}

#[test]
fn a_request_larger_than_max_body_gets_413() {
    let server = Server::start(&["--max-memory", "8M", "--max-body", "1K"]);
    let (status, _) = request(&server.addr, "POST", "/transform", &[b'a'; 2000]);
    assert_eq!(status, 413);
}

#[test]
fn no_budget_serves_the_same_endpoints() {
    let server = Server::start(&["--no-budget"]);
    assert!(server.banner.contains("no budget"), "{}", server.banner);
    let (status, body) = request(&server.addr, "POST", "/transform?op=upper", b"abc");
    assert_eq!((status, body.as_slice()), (200, &b"ABC"[..]));
    let s = server.stats();
    assert_eq!((n(&s, "budget"), n(&s, "requests")), (0, 1));
}

/// Runs `frostheap serve` with `args` until it exits (at most
/// [`PATIENCE`]: one that serves instead fails the test); its exit status
/// and stderr.
fn serve_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`frostheap serve {}` did not exit", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

/// Runs `frostheap serve` with `args` and expects exit status 2 and one
/// line on stderr containing `expected`.
fn bad_config(args: &[&str], expected: &str) {
    let (code, stderr) = serve_to_exit(args);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, got {stderr:?}");
    assert!(
        stderr.contains(expected),
        "{stderr:?} should mention {expected:?}"
    );
}

#[test]
fn bad_configuration_gives_one_line_and_exit_status_2() {
    bad_config(
        &["--max-memory", "lots", "--listen", "127.0.0.1:0"],
        "invalid --max-memory \"lots\"",
    );
    // The same words as `frostheap run --max-memory` (one parser).
    bad_config(
        &["--max-memory", "200%", "--listen", "127.0.0.1:0"],
        "1% to 100%",
    );
    bad_config(
        &[
            "--max-memory",
            "99999999999999999999999",
            "--listen",
            "127.0.0.1:0",
        ],
        "a size that fits in 64 bits",
    );
    bad_config(
        &["--max-memory", "64K", "--listen", "127.0.0.1:0"],
        "smaller than one client",
    );
    // More than the machine has: the budget could never shed in time.
    bad_config(
        &["--max-memory", "1000T", "--listen", "127.0.0.1:0"],
        "more than the memory this server may use",
    );
    bad_config(
        &["--threads", "0", "--listen", "127.0.0.1:0"],
        "invalid --threads 0: expected 1 to 1024",
    );
    // The slow-body pool must hold one slow request's connection and head.
    bad_config(
        &["--slow-memory", "20K", "--listen", "127.0.0.1:0"],
        "invalid --slow-memory \"20K\": below the 28 KiB one slow request holds",
    );
    bad_config(
        &["--slow-memory", "1000T", "--listen", "127.0.0.1:0"],
        "more than the memory this server may use",
    );
    bad_config(
        &[
            "--max-memory",
            "8M",
            "--per-client",
            "9M",
            "--listen",
            "127.0.0.1:0",
        ],
        "smaller than one client",
    );
    bad_config(
        &["--per-client", "1.5B", "--listen", "127.0.0.1:0"],
        "invalid --per-client",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    bad_config(
        &["--max-memory", "8M", "--listen", &addr],
        "cannot listen on",
    );
    bad_config(&["--listen", "not-an-address"], "cannot listen on");
    // Each flag named alone, and a duration of 0 refused by name.
    bad_config(
        &["--max-memory", "8M", "--max-waiting", "0"],
        "invalid --max-waiting 0",
    );
    // Durations are checked by the argument parser, whose message names
    // the flag first (and adds a hint line).
    for flag in ["--estimate-window", "--send-timeout", "--idle-timeout"] {
        let out = Command::new(env!("CARGO_BIN_EXE_frostheap"))
            .args(["serve", "--max-memory", "8M", flag, "0s"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(flag) && first.contains("above zero"),
            "{flag}: {stderr}"
        );
    }
}

/// Runs `frostheap serve` with `args`, which the argument parser refuses:
/// exit status 2, and a first line naming `flag` and containing
/// `expected` (the parser adds a hint line).
fn refused_by_the_parser(args: &[&str], flag: &str, expected: &str) {
    let args = [&["--listen", "127.0.0.1:0"], args].concat();
    let (code, stderr) = serve_to_exit(&args);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(flag) && first.contains(expected),
        "{args:?}: {stderr}"
    );
}

#[test]
fn durations_past_a_day_and_counts_past_memory_are_refused_at_start() {
    // Accepted, they panicked each connection's task when its deadline
    // was computed ("overflow when adding duration to instant").
    for flag in [
        "--header-timeout",
        "--idle-timeout",
        "--body-timeout",
        "--send-timeout",
        "--estimate-window",
        "--shutdown-delay",
        "--shutdown-timeout",
    ] {
        refused_by_the_parser(
            &[flag, "500000000000y"],
            flag,
            "expected a duration of at most 1 day",
        );
        refused_by_the_parser(&[flag, "25h"], flag, "at most 1 day");
    }
    // 2235.2 TiB of connections at the gate were accepted.
    bad_config(
        &["--max-pending", "100000000000", "--listen", "127.0.0.1:0"],
        "invalid --max-pending 100000000000: 100000000000 connections at 24 KiB each is more than the memory this server may use",
    );
    bad_config(
        &["--max-waiting", "100000000000", "--listen", "127.0.0.1:0"],
        "invalid --max-waiting 100000000000",
    );
    // A negative value reaches the flag's own parser, which names it
    // (the argument parser said only "unexpected argument '-1' found").
    bad_config(
        &["--max-memory", "-1", "--listen", "127.0.0.1:0"],
        "invalid --max-memory \"-1\": expected",
    );
    bad_config(
        &["--per-client", "-1K", "--listen", "127.0.0.1:0"],
        "invalid --per-client \"-1K\": expected",
    );
    refused_by_the_parser(&["--threads", "-1"], "--threads", "'-1'");
    refused_by_the_parser(&["--max-pending", "-1"], "--max-pending", "'-1'");
    refused_by_the_parser(&["--header-timeout", "-1s"], "--header-timeout", "'-1s'");
}

#[test]
fn a_per_client_cost_below_a_requests_least_charge_is_refused_and_capacity_is_what_is_admitted() {
    // 1,024 clients were shown on 1 MiB at 1 KiB each; each request is
    // charged at least 28 KiB, and 36 were admitted.
    bad_config(
        &[
            "--max-memory",
            "1M",
            "--per-client",
            "1K",
            "--fixed-per-client",
        ],
        "invalid --per-client \"1K\": below the 28 KiB every request is charged",
    );
    bad_config(
        &["--max-memory", "1M", "--per-client", "1"],
        "expected at least 28K",
    );
    // At the least charge, the capacity shown is what is admitted: 36
    // clients held, the next one shed.
    let server = Server::start(&[
        "--max-memory",
        "1M",
        "--per-client",
        "28K",
        "--fixed-per-client",
        HOLDING[0],
        HOLDING[1],
    ]);
    assert!(
        server.banner.contains("1 MiB: 36 clients at ≈28 KiB each"),
        "{}",
        server.banner
    );
    let capacity = n(&server.stats(), "capacity");
    assert_eq!(capacity, 36);
    let held: Vec<Held> = (0..capacity).map(|_| hold(&server.addr, BODY)).collect();
    server.wait_for("capacity clients in flight", |s| {
        n(s, "clients") == capacity
    });
    let (status, body) = request(&server.addr, "POST", "/transform", BODY);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    for h in held {
        assert_eq!(h.finish().0, 200);
    }
    let s = server.wait_for("everything released", |s| n(s, "in_use") == 0);
    assert_eq!(n(&s, "peak_clients"), capacity, "{s}");
}

/// Sends a request head declaring a body of `length` bytes (none of it
/// sent) and reads the answer.
fn head_only(addr: &str, method: &str, path: &str, length: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let (status, body) = read_response(s);
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_body_no_budget_could_hold_gets_413_in_both_modes_and_an_unknown_path_404() {
    for mode in ["shed", "wait"] {
        let server = Server::start(&["--max-memory", "32M", "--overload", mode]);
        // Past --max-body (1M), and past the whole budget: 413, not a 503
        // inviting a retry that could never succeed.
        for length in ["2000000", "20000000", "10000000000"] {
            let (status, body) = head_only(&server.addr, "POST", "/transform", length);
            assert_eq!(
                (status, body.as_str()),
                (413, "body larger than --max-body (1 MiB)\n"),
                "--overload {mode}, content-length {length}"
            );
        }
        // An unknown path is not found, whatever its body.
        let (status, body) = head_only(&server.addr, "POST", "/nope", "10000000000");
        assert_eq!(
            (status, body.as_str()),
            (404, "not found: try GET /\n"),
            "{mode}"
        );
        let s = server.stats();
        assert_eq!((n(&s, "admitted"), n(&s, "shed")), (0, 0), "{mode}: {s}");
    }
    // Within --max-body but more than the budget holds (2 × the body for
    // a transform): the layer's 413, in the default shed mode too.
    let server = Server::start(&["--max-memory", "32M", "--max-body", "64M"]);
    let (status, body) = head_only(&server.addr, "POST", "/transform", "20000000");
    assert_eq!(
        (status, body.as_str()),
        (413, "request larger than the whole memory budget\n")
    );
    let s = server.stats();
    assert_eq!((n(&s, "admitted"), n(&s, "shed")), (0, 1), "{s}");
}

#[test]
fn a_body_still_arriving_is_charged_what_has_arrived_not_what_it_declares() {
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--max-body",
        "4M",
        "--per-client",
        "1M",
        "--fixed-per-client",
    ]);
    // Two bodies declared at 1.9 MB, a few bytes of each sent (a slow
    // sender). Charged from their heads at 2 × their length each (a
    // transform's body and output), they held 7.7 MB of the 8 MiB for as
    // long as they trickled in, and every other client got 503. Now the
    // declared charge goes back a second after the head (the server's
    // grace for a body to arrive; waited for, not timed, below).
    const DECLARED: usize = 1_900_000;
    let slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&server.addr);
            s.write_all(head("POST", "/transform?op=upper", DECLARED).as_bytes())
                .unwrap();
            s.write_all(b"aaa").unwrap();
            s
        })
        .collect();
    server.wait_for("the two slow requests admitted", |s| n(s, "admitted") == 2);
    // Each keeps the 3 bytes it sent (a 16 KiB buffer) and its connection
    // and head (28 KiB), in the slow-body pool, and no client place. (Each
    // kept its place, 1 MiB, in the budget until 2026-12-06.)
    let st = server.wait_for("the declared charges given back", |s| {
        n(s, "slow_bodies") == 2 && n(s, "in_use") == 0
    });
    assert_eq!(n(&st, "clients"), 0, "{st}");
    assert_eq!(n(&st, "slow_in_use"), 2 * (44 << 10), "{st}");
    // Another client is served meanwhile.
    let (status, body) = request(&server.addr, "POST", "/transform", BODY);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The slow bodies still arrive whole, their charge growing as they
    // do, one after the other.
    for mut s in slow {
        s.write_all(&vec![b'a'; DECLARED - 3]).unwrap();
        let (status, body) = read_response(s);
        assert_eq!((status, body.len()), (200, DECLARED));
        assert!(body.iter().all(|&b| b == b'A'));
    }
    let s = server.wait_for("everything released", |s| {
        n(s, "in_use") == 0 && n(s, "slow_in_use") == 0
    });
    assert_eq!((n(&s, "admitted"), n(&s, "shed")), (3, 0), "{s}");
    assert!(n(&s, "peak_in_use") <= n(&s, "budget"), "{s}");
    assert_eq!((n(&s, "slow_entered"), n(&s, "slow_bodies")), (2, 0), "{s}");
}

#[test]
fn head_is_answered_like_get_without_a_body() {
    let server = Server::start(&["--max-memory", "8M"]);
    for path in ["/", "/ready", "/live", "/stats", "/hold?ms=1"] {
        let s = connect(&server.addr);
        let mut w = &s;
        write!(
            w,
            "HEAD {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let (status, body) = read_response(s);
        assert_eq!((status, body.len()), (200, 0), "HEAD {path}");
    }
    let s = connect(&server.addr);
    let mut w = &s;
    write!(
        w,
        "HEAD /nope HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(s).0, 404);
}

#[test]
fn more_threads_than_1024_are_refused_at_start() {
    // The server spawned 100,000 workers and aborted (a million mappings,
    // past the kernel's default limit), or ran past its memory.
    bad_config(
        &["--threads", "100000", "--listen", "127.0.0.1:0"],
        "invalid --threads 100000: expected 1 to 1024",
    );
    bad_config(
        &["--threads", "1025", "--listen", "127.0.0.1:0"],
        "invalid --threads 1025: expected 1 to 1024",
    );
}

// ---------------------------------------------------------------------------
// Under attack, overloaded, shutting down (issue 16)
// ---------------------------------------------------------------------------

/// Raises this process's soft limit on descriptors to hold `needed`, or
/// fails saying why.
fn raise_nofile(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= needed {
        return;
    }
    assert!(
        lim.rlim_max >= needed,
        "this test opens {needed} sockets but the hard descriptor limit is {} (ulimit -Hn): raise it",
        lim.rlim_max
    );
    lim.rlim_cur = needed;
    // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the
    // hard one needs no privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// What a client saw: a status, or an error (a reset, an early close).
fn try_request(addr: &str, head: &str, body: &[u8]) -> Result<u16, String> {
    try_request_within(addr, head, body, Duration::ZERO)
}

/// [`try_request`] to a server that may take `server_time` (by its
/// configuration) to answer: each read and write waits at most that plus
/// [`PATIENCE`].
fn try_request_within(
    addr: &str,
    head: &str,
    body: &[u8],
    server_time: Duration,
) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(server_time + PATIENCE)).unwrap();
    s.set_write_timeout(Some(server_time + PATIENCE)).unwrap();
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    // A whole response: a status, and the body its content-length says
    // (a client that gets less counts the response as lost).
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let body = raw.len() - split - 4;
    if body != length {
        return Err(format!("{status} with {body} of {length} body bytes"));
    }
    Ok(status)
}

#[test]
fn slow_headers_on_2000_connections_do_not_starve_a_prompt_client() {
    const SLOW: usize = 2_000;
    /// Requests of the prompt client during the attack.
    const PROMPT: u32 = 100;
    raise_nofile(SLOW as u64 + 256);
    // The header timeout outlasts the attack (the test gives up before):
    // the gate alone must keep the prompt client served.
    let server = Server::start(&["--max-memory", "64M", "--header-timeout", "300s"]);
    let addr = server.addr.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            // One header byte a second per connection, reconnecting every
            // connection the server closes, as slowloris does.
            let head = b"GET / HTTP/1.1\r\nhost: slow\r\nx-slow: ".repeat(64);
            let open = |addr: &str| {
                let s = TcpStream::connect(addr).expect("attacker connect");
                s.set_nonblocking(true).unwrap();
                (s, 0usize)
            };
            let mut conns: Vec<(TcpStream, usize)> = (0..SLOW).map(|_| open(&addr)).collect();
            let mut reconnects = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    let mut buf = [0u8; 512];
                    let closed = match c.0.read(&mut buf) {
                        Ok(_) => true, // an answer (503, 408) or the end
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    } || c.0.write(&head[c.1 % head.len()..][..1]).is_err();
                    c.1 += 1;
                    if closed {
                        *c = open(&addr);
                        reconnects += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
            reconnects
        })
    };
    // Once the attack has filled the gate, be a prompt client: a number of
    // requests (not a time: a slow machine takes longer, and the attack
    // goes on until they are done).
    server.wait_for("the attack to fill the gate", |s| {
        n(s, "peak_pending") == n(s, "pending_capacity")
    });
    let (mut ok, mut failed) = (0u32, Vec::new());
    let start = Instant::now();
    while ok + (failed.len() as u32) < PROMPT {
        assert!(
            start.elapsed() < 2 * PATIENCE,
            "the prompt client made only {} of {PROMPT} requests in {:?} ({ok} served)",
            ok + failed.len() as u32,
            start.elapsed()
        );
        match try_request(
            &addr,
            &head("POST", "/transform?op=upper", BODY.len()),
            BODY,
        ) {
            Ok(200) => ok += 1,
            other => failed.push(other),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = server.stats();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reconnects = attacker.join().unwrap();
    assert!(
        ok as f64 >= 0.99 * PROMPT as f64,
        "prompt client served {ok} of {PROMPT} during the attack; failures {:?}: {s}",
        &failed[..failed.len().min(10)]
    );
    // The slow connections waited apart, within the gate's bound, and the
    // full gate pushed them out.
    assert!(n(&s, "peak_pending") <= n(&s, "pending_capacity"), "{s}");
    assert!(n(&s, "evicted") + n(&s, "shed_connections") > 0, "{s}");
    assert!(n(&s, "connections") >= n(&s, "pending"), "{s}");
    eprintln!(
        "slowloris: {ok}/{PROMPT} served in {:?}, {reconnects} attacker reconnects, {s}",
        start.elapsed()
    );
}

#[test]
fn shed_clients_with_large_bodies_all_read_their_503() {
    const CLIENTS: usize = 600;
    /// How long each admitted request holds its memory (`hold_ms`).
    const HOLD: Duration = Duration::from_millis(3000);
    raise_nofile(CLIENTS as u64 + 256);
    let server = Server::start(&["--max-memory", "64M"]);
    // A 512 KiB JSON document: each admitted request costs 4 × 512 KiB.
    let doc = serde_json::json!({ "items": vec!["frostheap ".repeat(100); 512] }).to_string();
    let doc = std::sync::Arc::new(doc.into_bytes());
    assert!(doc.len() >= 500 << 10);
    let start = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, doc, start) = (server.addr.clone(), doc.clone(), start.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    start.wait();
                    try_request_within(
                        &addr,
                        &head(
                            "POST",
                            &format!("/echo?hold_ms={}", HOLD.as_millis()),
                            doc.len(),
                        ),
                        &doc,
                        HOLD + LINGER_TIME,
                    )
                })
                .unwrap()
        })
        .collect();
    let outcomes: Vec<Result<u16, String>> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    let served = outcomes.iter().filter(|o| **o == Ok(200)).count();
    let shed = outcomes.iter().filter(|o| **o == Ok(503)).count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o, Ok(200) | Ok(503)))
        .collect();
    let s = server.wait_for("everything released", |s| n(s, "clients") == 0);
    assert!(
        other.is_empty(),
        "{} of {CLIENTS} clients did not read a 200 or 503 ({served} served, {shed} shed): {:?}: {s}",
        other.len(),
        &other[..other.len().min(10)]
    );
    assert!(served > 0 && shed > 0, "{served} served, {shed} shed: {s}");
    // A body still arriving when a request is refused has its grace cut,
    // moves to the slow-body pool, and gets its 503 there when the pool is
    // full (`slow_shed`): a debug build in CI read 44 of its 581.
    assert_eq!(
        n(&s, "shed") + n(&s, "shed_connections") + n(&s, "slow_shed"),
        shed as u64,
        "every 503 the clients read is counted: {s}"
    );
    assert!(n(&s, "peak_in_use") <= n(&s, "budget"), "{s}");
    eprintln!("large bodies: {served} served, {shed} shed (503 read by every one), {s}");
}

#[test]
fn sigterm_finishes_requests_in_flight_reports_not_ready_and_exits_0() {
    let mut server = Server::start(&[
        "--max-memory",
        "64M",
        "--shutdown-delay",
        "1s",
        "--shutdown-timeout",
        "10s",
    ]);
    let addr = server.addr.clone();
    let draining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (addr, draining) = (addr.clone(), draining.clone());
            std::thread::spawn(move || {
                let mut results = Vec::new();
                // Like a balancer: no new request once /ready says 503.
                while !draining.load(std::sync::atomic::Ordering::Relaxed) {
                    results.push(try_request(
                        &addr,
                        &head("POST", "/transform?op=upper&hold_ms=300", BODY.len()),
                        BODY,
                    ));
                }
                results
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    sigterm(&server.child);
    let signalled = Instant::now();
    loop {
        let (status, _) = request(&addr, "GET", "/ready", b"");
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "/ready still 200 after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        request(&addr, "GET", "/live", b"").0,
        200,
        "alive while draining"
    );
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let lost: Vec<_> = results.iter().filter(|r| **r != Ok(200)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} requests in flight were lost: {:?}",
        lost.len(),
        results.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(results.len() >= 32, "{} requests", results.len());
    let deadline = signalled + Duration::from_secs(1 + 10 + 2);
    let status = exit_by(
        &mut server.child,
        deadline,
        "no exit within the shutdown deadline",
    );
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "the listener is closed after shutdown"
    );
}

#[test]
fn sigterm_answers_a_half_sent_head_with_503_and_a_clean_close() {
    // Each of these clients has sent half a request head when the server
    // is told to stop: each reads a 503 and then the end of the stream.
    // Before, the server dropped them with the head unread, and every one
    // saw a reset (a user's trial: 10 of 10).
    let mut server = Server::start(&["--max-memory", "32M", "--shutdown-timeout", "10s"]);
    let mut clients: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut c = TcpStream::connect(&server.addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c
        })
        .collect();
    // The server has taken them in: a request after them is answered.
    assert_eq!(request(&server.addr, "GET", "/live", b"").0, 200);
    sigterm(&server.child);
    for c in &mut clients {
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(r.is_ok(), "{r:?} after {text:?}");
        assert!(
            text.starts_with("HTTP/1.1 503") && text.contains("server shutting down"),
            "{text:?}"
        );
    }
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status");
}

#[test]
fn header_body_and_idle_timeouts_are_enforced_and_counted() {
    // Each client below writes its request in one call right after
    // connecting: a timeout this long is missed only where the test means
    // it to be, even on a loaded machine.
    const TIMEOUT: Duration = Duration::from_secs(1);
    let timeout = format!("{}ms", TIMEOUT.as_millis());
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--header-timeout",
        &timeout,
        "--body-timeout",
        &timeout,
        "--body-min-rate",
        "0",
        "--idle-timeout",
        &timeout,
    ]);
    // A head that never ends: 408, readable.
    let mut s = connect(&server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nhost: slow\r\n").unwrap();
    assert_eq!(read_response(s).0, 408);
    // A body that stops half way: 408.
    let mut s = connect(&server.addr);
    s.write_all(head("POST", "/transform", 100).as_bytes())
        .unwrap();
    s.write_all(&[b'a'; 10]).unwrap();
    assert_eq!(read_response(s).0, 408);
    // A kept-alive connection left idle: closed by the server. Its client
    // stays silent and keeps its socket open, so the server's lingering
    // close ends only at its time bound.
    let mut idle_client = connect(&server.addr);
    idle_client
        .write_all(b"GET /live HTTP/1.1\r\nhost: idle\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    idle_client
        .read_to_end(&mut raw)
        .expect("the idle connection ends cleanly");
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // Every connection has been answered and closed by the server: none
    // waits at the gate (a lingering connection holds no place there).
    // The linger of the silent client is cut after LINGER_IDLE without a
    // byte, and then only the snapshot's own connection is open.
    let s = server.wait_within(
        LINGER_IDLE + 3 * TIMEOUT,
        "three timeouts, and their connections gone",
        |s| {
            n(s, "timeouts_idle") == 1
                && n(s, "timeouts_header") == 1
                && n(s, "timeouts_body") == 1
                && n(s, "pending") == 0
                && n(s, "lingering") == 0
                && n(s, "connections") == 1
        },
    );
    assert!(
        n(&s, "linger_cut") >= 1,
        "the silent client's linger ended at its bound: {s}"
    );
    let (_, metrics) = request(&server.addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    for name in ["header", "body", "idle"] {
        assert!(
            metrics.contains(&format!("\nfrostheap_timeouts_{name}_total 1\n")),
            "{name}: {metrics}"
        );
    }
    assert_eq!(
        n(&s, "admitted"),
        1,
        "only the body request was a client: {s}"
    );
    drop(idle_client);
}

#[test]
fn a_head_cut_off_by_the_client_closing_frees_its_connection_at_once() {
    // A header timeout far past the test's patience: only the close can
    // end these connections in time.
    let mut server = Server::start(&[
        "--max-memory",
        "8M",
        "--header-timeout",
        "600s",
        "--shutdown-delay",
        "0s",
        "--shutdown-timeout",
        "10s",
    ]);
    // Half a head, then a close (a scanner, a client that timed out) or a
    // shut write side with the socket kept open. The server saw the
    // socket readable for good and peeked at it in a loop: a runtime
    // thread spun, the header deadline never came, and with two such
    // connections the whole server stopped answering, SIGTERM included.
    let mut kept = Vec::new();
    for i in 0..4 {
        let mut s = connect(&server.addr);
        s.write_all(b"GET /stats HTTP/1.1\r\nhost: cut\r\n")
            .unwrap();
        if i % 2 == 0 {
            drop(s);
        } else {
            s.shutdown(std::net::Shutdown::Write).unwrap();
            kept.push(s);
        }
    }
    let s = server.wait_for("the cut-off connections to go", |s| {
        n(s, "pending") == 0 && n(s, "connections") <= 1
    });
    assert_eq!(n(&s, "timeouts_header"), 0, "closed, not timed out: {s}");
    // The half-closed ones are told why, and closed cleanly: they were
    // reset, as their unread half head was still in the server's socket.
    for s in kept {
        let (status, body) = read_response(s);
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (
                400,
                "request head cut off: the client closed its side of the connection before the head ended\n"
            )
        );
    }
    // A whole head followed by a shut write side is a request.
    let mut s = connect(&server.addr);
    s.write_all(b"GET /live HTTP/1.1\r\nhost: whole\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_response(s).0, 200);
    sigterm(&server.child);
    let status = exit_by(
        &mut server.child,
        Instant::now() + PATIENCE,
        "no exit after SIGTERM",
    );
    assert_eq!(status.code(), Some(0), "exit status");
}

#[test]
fn a_second_head_that_misses_the_header_timeout_gets_408() {
    // An idle timeout far past the header timeout: only the head's
    // deadline can end the connection in time.
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "600s",
    ]);
    let mut s = connect(&server.addr);
    s.write_all(b"GET /live HTTP/1.1\r\nhost: first\r\n\r\n")
        .unwrap();
    let (head, body) = read_one_response(&mut s);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"live\n");
    // The next head on the kept-alive connection never ends: 408, as for
    // a first head (the connection was closed without an answer).
    s.write_all(b"GET /live HTTP/1.1\r\nhost: second\r\n")
        .unwrap();
    let (status, body) = read_response(s);
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (408, "request head not received within the header timeout\n")
    );
    let st = server.wait_for("the timeout counted", |st| n(st, "timeouts_header") == 1);
    assert_eq!(n(&st, "timeouts_idle"), 0, "{st}");
}

/// The body of the answers the send tests leave unread: more than the
/// sockets' buffers take on loopback (3–4 MB).
const UNREAD_BYTES: usize = 6 << 20;

/// A server for the send tests (64M budget, 8M bodies, the declared
/// per-client cost), with `timeout` (a flag) at 1 s.
fn send_test_server(timeout: &str) -> Server {
    Server::start(&[
        "--max-memory",
        "64M",
        "--max-body",
        "8M",
        "--fixed-per-client",
        timeout,
        "1s",
    ])
}

/// Sends `bytes` of `a` to `/transform?op=upper` on a new connection,
/// whose answer the caller reads (or not).
fn post_transform(server: &Server, bytes: usize) -> TcpStream {
    let s = connect(&server.addr);
    let mut w = &s;
    w.write_all(head("POST", "/transform?op=upper", bytes).as_bytes())
        .unwrap();
    w.write_all(&vec![b'a'; bytes]).unwrap();
    s
}

#[test]
fn a_response_stays_charged_until_the_client_has_taken_it() {
    let server = send_test_server("--idle-timeout");
    // A client that does not read its 6 MB answer for a while (a slow
    // link): the answer cannot fit in the sockets' buffers. The server
    // gave the request's bytes back, and started the idle timer, as hyper
    // took the answer's last frame: the budget no longer saw the 12 MB it
    // held, and the idle timeout cut the answer off while the client was
    // still to read most of it.
    // (The kernel takes 3–4 MB of it into the sockets' buffers on
    // loopback; the rest waits in the server.)
    let s = post_transform(&server, UNREAD_BYTES);
    let held = server.wait_for("the answer to be charged while unread", |st| {
        n(st, "in_use") >= 2 * UNREAD_BYTES as u64
    });
    // Longer than the idle timeout without reading: still charged.
    std::thread::sleep(Duration::from_millis(2500));
    let st = server.stats();
    assert!(
        n(&st, "in_use") >= 2 * UNREAD_BYTES as u64 && n(&st, "timeouts_idle") == 0,
        "the unread answer went uncharged or was cut: {st}\n(before: {held})"
    );
    // Read it all: every byte arrives, then the bytes go back.
    let (status, answer) = read_response(s);
    assert_eq!(status, 200);
    assert_eq!(
        answer.len(),
        UNREAD_BYTES,
        "the answer was cut short: {}",
        server.stats()
    );
    assert!(answer.iter().all(|&b| b == b'A'));
    let st = server.wait_for("the bytes to go back", |st| n(st, "in_use") == 0);
    assert_eq!(n(&st, "timeouts_send"), 0, "{st}");
    assert_eq!((n(&st, "completed"), n(&st, "undelivered")), (1, 0), "{st}");
}

#[test]
fn a_client_that_takes_none_of_its_response_is_cut_at_the_send_timeout() {
    let server = send_test_server("--send-timeout");
    let s = post_transform(&server, UNREAD_BYTES);
    // Never read: the connection is closed, counted, and its bytes go back.
    // The answer was never delivered: not completed (it was, counted as
    // the handler returned).
    let st = server.wait_within(Duration::from_secs(1), "the send timeout", |st| {
        n(st, "timeouts_send") == 1 && n(st, "in_use") == 0
    });
    assert_eq!((n(&st, "completed"), n(&st, "undelivered")), (0, 1), "{st}");
    let (_, metrics) = request(&server.addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("\nfrostheap_completed_total 0\n")
            && metrics.contains("\nfrostheap_undelivered_total 1\n"),
        "{metrics}"
    );
    drop(s);
}

#[test]
fn an_answer_whose_client_has_gone_is_not_counted_completed() {
    let server = send_test_server("--send-timeout");
    // A client that sends its request and leaves at once: its answer is
    // written into a closed connection (a reset), or not at all.
    let s = post_transform(&server, UNREAD_BYTES);
    drop(s);
    let st = server.wait_within(Duration::from_secs(1), "the answer to end", |st| {
        n(st, "undelivered") + n(st, "completed") == 1 && n(st, "in_use") == 0
    });
    assert_eq!((n(&st, "completed"), n(&st, "undelivered")), (0, 1), "{st}");
    // One that reads its answer is completed, HEAD answers too.
    let (status, body) = request(&server.addr, "POST", "/transform", BODY);
    assert_eq!((status, body), (200, BODY.to_ascii_uppercase()));
    let (status, _) = head_only(&server.addr, "HEAD", "/", "0");
    assert_eq!(status, 200);
    let st = server.wait_for("two answers delivered", |st| n(st, "completed") == 2);
    assert_eq!(n(&st, "undelivered"), 1, "{st}");
}

/// The most free memory the heaps of an idle server may keep, in this
/// test: the main heap's committed minimum (2.75 MiB) and what the thread
/// heaps keep after a trim (partly used spans, each thread's current span
/// per size class: well under 1 MiB here), with room to spare; the rounds
/// below leave 16 MiB or more free in the worker threads' heaps.
const IDLE_FREE_BYTES: u64 = 8 << 20;

/// How long the test waits for a server to notice it is idle: two of its
/// checks (serve/mod.rs's `IDLE_TRIM`, 5 s) at most, and the trim itself,
/// with room for a loaded 2-core machine (the wait ends as soon as the
/// memory is back).
const IDLE_TRIM: Duration = Duration::from_secs(30);

#[test]
fn an_idle_server_gives_back_the_free_memory_its_requests_left_in_its_heaps() {
    // Four workers on two cores: each worker thread trims its own heap
    // (its cached blocks, and the spans they pin, only it can give back),
    // so each must be reached, not only the one that noticed the spell.
    const WORKERS: u64 = 4;
    let server = Server::start(&[
        "--max-memory",
        "64M",
        "--max-body",
        "8M",
        "--threads",
        &WORKERS.to_string(),
    ]);
    // Rounds of large requests at once, as a burst makes them: each holds
    // its 4 MB body and its 4 MB answer. A worker's heap keeps what they
    // freed, for the next burst to reuse (up to 32 MiB of it resident
    // before it purges any), and nothing frees it while no request comes:
    // an idle server stayed at 40–46 MiB committed with 0.13 MiB live
    // after 5 to 15 minutes of mixed load, against 4 MiB at its start (a
    // user's trial: resident memory from 17 to 49 MB).
    const BYTES: usize = 4 << 20;
    for _ in 0..3 {
        let clients: Vec<TcpStream> = (0..4).map(|_| post_transform(&server, BYTES)).collect();
        for s in clients {
            let (status, answer) = read_response(s);
            assert_eq!((status, answer.len()), (200, BYTES));
        }
    }
    let busy = server.stats();
    // `/stats` is not a request: polling it leaves the server idle.
    // The trim under load (past 8 MiB free, every 100 ms) may give back
    // most of it before the idle spell begins: the idle trim is waited
    // for too, and what both gave back is counted.
    let st = server.wait_within(IDLE_TRIM, "the heaps' free memory to go back", |st| {
        n(st, "heap_committed") <= n(st, "heap_in_use") + IDLE_FREE_BYTES
            && n(st, "idle_trims") >= 1
    });
    assert!(
        n(&st, "idle_trimmed") + n(&st, "load_trimmed") > 0,
        "{st}\n(before: {busy})"
    );
    // The committed bound above may be met before every worker has parked
    // again: wait for the rest.
    let st = server.wait_within(IDLE_TRIM, "every worker thread to trim its heap", |st| {
        n(st, "idle_trim_threads") >= WORKERS * n(st, "idle_trims")
    });
    assert_eq!(
        n(&st, "idle_trim_threads"),
        WORKERS * n(&st, "idle_trims"),
        "one trim per worker per idle spell: {st}"
    );
}

#[test]
fn sigterm_with_stderr_a_pipe_whose_reader_left_still_finishes_and_exits_0() {
    // A log shipper that restarted: every line the server writes to stderr
    // fails with EPIPE. The shutdown line panicked (exit status 101) and
    // cut the request in flight.
    let mut child = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .args(["serve", "--listen", "127.0.0.1:0", "--threads", "2"])
        .args(["--max-memory", "16M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start frostheap serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    lines.next().expect("a capacity line").unwrap();
    let listening = lines.next().expect("a listening line").unwrap();
    let addr = listening
        .strip_prefix("listening on http://")
        .unwrap()
        .to_owned();
    drop(child.stderr.take());
    drop(lines);
    let in_flight = {
        let addr = addr.clone();
        std::thread::spawn(move || request(&addr, "GET", "/hold?ms=1000", b""))
    };
    // The request is in flight once it is admitted.
    let start = Instant::now();
    while request(&addr, "GET", "/stats", b"")
        .1
        .windows(12)
        .all(|w| w != b"\"clients\":1,")
    {
        assert!(start.elapsed() < PATIENCE, "the request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    sigterm(&child);
    let (status, body) = in_flight.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"held\n"[..]));
    let status = exit_by(
        &mut child,
        Instant::now() + PATIENCE,
        "no exit after SIGTERM",
    );
    assert_eq!(status.code(), Some(0), "exit status");
}

/// Reads one response on a connection that may stay open: its head, and
/// its body by `content-length`. The head in lower case.
fn read_one_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("read a response head"), 1);
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn http_1_0_keep_alive_connections_hold_their_gate_place() {
    // hyper keeps an HTTP/1.0 connection open when its request says
    // `Connection: keep-alive`; the server counted it as closing and gave
    // its gate place back, so 5,000 idle ones were held past a gate of 64.
    const GATE: usize = 4;
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--max-pending",
        &GATE.to_string(),
        "--idle-timeout",
        "60s",
    ]);
    let mut open = Vec::new();
    for _ in 0..3 * GATE {
        let mut s = connect(&server.addr);
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (head, _) = read_one_response(&mut s);
        if head.contains("connection: keep-alive") {
            assert!(!head.contains("close"), "{head}");
            open.push(s);
        } else {
            // Closed by the server: the stream ends.
            assert!(
                head.contains("connection: close"),
                "neither kept nor closed: {head}"
            );
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
        }
    }
    assert!(
        !open.is_empty() && open.len() <= GATE,
        "{} connections kept open past a gate of {GATE}",
        open.len()
    );
    let s = server.stats();
    assert!(n(&s, "pending") as usize <= GATE, "{s}");
    // The kept ones serve their next request as HTTP/1.1 ones do.
    let mut first = open.swap_remove(0);
    first
        .write_all(b"GET /live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, body) = read_one_response(&mut first);
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert_eq!(body, b"live\n");
}

#[test]
fn bodies_that_parse_or_transform_into_far_more_than_charged_stay_within_the_budget() {
    // `[0,0,…]` parses into 32 bytes a value and more; `op=reverse` on
    // invalid UTF-8 made three bytes of each; `op=words` a hash table far
    // past the body. Charged body × 4 (echo) or × 2 (transform), they took
    // a 16 MiB budget to 148 MiB committed (a user's trial).
    const BUDGET: u64 = 16 << 20;
    let server = Server::start(&["--max-memory", "16M", "--max-body", "1M"]);
    let zeros = {
        let mut b = b"[".to_vec();
        b.extend(std::iter::repeat_n(&b"0,"[..], 100_000).flatten());
        b.extend_from_slice(b"0]");
        b
    };
    let objects = {
        let mut b = b"[".to_vec();
        b.extend(std::iter::repeat_n(&br#"{"":0},"#[..], 5_000).flatten());
        b.extend_from_slice(b"0]");
        b
    };
    let invalid = vec![0xffu8; 800_000];
    let words: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("w{i} ").into_bytes())
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("/echo?hold_ms=300", zeros),
        ("/echo?hold_ms=300", objects),
        ("/transform?op=reverse&hold_ms=300", invalid),
        ("/transform?op=words&hold_ms=300", words),
    ];
    let clients: Vec<_> = (0..3)
        .flat_map(|_| cases.iter().cloned())
        .map(|(path, body)| {
            let addr = server.addr.clone();
            std::thread::spawn(move || (path, request(&addr, "POST", path, &body).0))
        })
        .collect();
    let (mut most, mut most_in_use) = (0, 0);
    let mut statuses = Vec::new();
    let mut running = clients;
    while !running.is_empty() {
        let s = server.stats();
        most = most.max(n(&s, "heap_committed"));
        most_in_use = most_in_use.max(n(&s, "heap_in_use"));
        let (done, still): (Vec<_>, Vec<_>) = running.into_iter().partition(|c| c.is_finished());
        statuses.extend(done.into_iter().map(|c| c.join().unwrap()));
        running = still;
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each is served or refused for want of memory, never the process.
    for (path, status) in &statuses {
        assert!(matches!(status, 200 | 503), "{path}: {status}");
    }
    assert!(statuses.iter().any(|(_, s)| *s == 200), "{statuses:?}");
    let s = server.stats();
    // The bound the server promises (`memory_bound`: the budget, the
    // slow-body pool, twice the 1 MiB `--max-body` and 28 KiB, the
    // waiting connections, 64 + 64 at 24 KiB, its own 8 MiB and its
    // load's 28 MiB).
    let bound = n(&s, "memory_bound");
    assert_eq!(
        bound,
        BUDGET + (2 << 20) + (28 << 10) + 128 * (24 << 10) + (36 << 20),
        "{s}"
    );
    most = most.max(n(&s, "heap_committed"));
    eprintln!("committed up to {most}, in use up to {most_in_use}, bound {bound}: {s}");
    assert!(
        most <= bound && most_in_use <= bound && n(&s, "peak_in_use") <= BUDGET,
        "committed up to {most} bytes (in use {most_in_use}), past {bound}: {s}"
    );
    // And the answers are what they were.
    let (status, body) = request(&server.addr, "POST", "/transform?op=reverse", b"ab\xffc");
    assert_eq!((status, body), (200, "c\u{FFFD}ba".as_bytes().to_vec()));
    let (status, body) = request(
        &server.addr,
        "POST",
        "/echo",
        br#"{"b":[1,2.5,"\n"],"a":{}}"#,
    );
    assert_eq!(
        (status, body),
        (200, br#"{"a":{},"b":[1,2.5,"\n"]}"#.to_vec())
    );
}

/// [`serve_to_exit`] with `FROSTHEAP_MAX` set to `max`.
fn serve_to_exit_under(max: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .arg("serve")
        .args(args)
        .env("FROSTHEAP_MAX", max)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap().code(), stderr)
}

#[test]
fn a_process_limit_that_cannot_hold_the_budget_is_refused_at_start() {
    // Under FROSTHEAP_MAX=16M a 256 MiB budget promised 2,048 clients and
    // aborted under load; under 1M the process aborted at start with a
    // backtrace.
    // The bound counts the load's share (28 MiB) too: under
    // FROSTHEAP_MAX=44M a 32 MiB budget started, and aborted at 10× load.
    let (code, stderr) =
        serve_to_exit_under("44M", &["--max-memory", "256M", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, got {stderr:?}");
    for part in [
        "invalid --max-memory \"256M\"",
        "FROSTHEAP_MAX=44M",
        "allocator limit of 44 MiB",
        "28 MiB more under load",
        "16 MiB for slow request bodies",
        "339.9 MiB",
        "a --max-memory of at most 2.9 MiB",
    ] {
        assert!(stderr.contains(part), "{stderr:?} should say {part:?}");
    }
    let (code, stderr) = serve_to_exit_under("1M", &["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, got {stderr:?}");
    assert!(
        stderr.contains("FROSTHEAP_MAX") && stderr.contains("at least 4 MiB"),
        "{stderr}"
    );
    // What fits starts (5 MiB did, until the slow-body pool's 2 MiB
    // joined the bound on 2026-12-06).
    let mut child = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .args(["serve", "--listen", "127.0.0.1:0", "--max-memory", "2M"])
        .env("FROSTHEAP_MAX", "44M")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let banner = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .expect("a capacity line")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(banner.contains("2 MiB: 16 clients"), "{banner}");
}

#[test]
fn monitoring_endpoints_answer_while_the_gate_is_full() {
    // Requests waiting for memory hold the gate's places: a fresh
    // connection is refused (503) — the probes were too, so a balancer
    // read a busy server as a dead one.
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--per-client",
        "1M",
        "--fixed-per-client",
        "--overload",
        "wait",
        "--max-pending",
        "2",
        HOLDING[0],
        HOLDING[1],
    ]);
    let held: Vec<Held> = (0..8).map(|_| hold(&server.addr, BODY)).collect();
    server.wait_for("capacity clients in flight", |s| n(s, "clients") == 8);
    // The gate has two places, and the test's own polls of /stats take
    // one while they run and until the server has seen them close: a
    // waiter that meets one is refused (503) at once. Such a waiter
    // connects again.
    let waiters: Vec<Held> = (0..2)
        .map(|_| {
            for _ in 0..50 {
                let w = hold(&server.addr, BODY);
                w.stream
                    .set_read_timeout(Some(std::time::Duration::from_millis(200)))
                    .unwrap();
                let mut first = [0u8; 12];
                match w.stream.peek(&mut first) {
                    Ok(n) if n > 0 => {
                        assert!(first.starts_with(b"HTTP/1.1 503"), "{first:?}");
                        continue; // refused at the gate: try again
                    }
                    _ => {
                        w.stream.set_read_timeout(None).unwrap();
                        return w;
                    }
                }
            }
            panic!("a waiter refused at the gate 50 times")
        })
        .collect();
    server.wait_for("two waiters holding the gate", |s| {
        n(s, "waiting") == 2 && n(s, "pending") == 2
    });
    let (status, body) = request(&server.addr, "GET", "/", b"");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("too many connections"));
    assert_eq!(
        request(&server.addr, "GET", "/live", b""),
        (200, b"live\n".to_vec())
    );
    assert_eq!(request(&server.addr, "GET", "/ready", b"").0, 200);
    let s = server.stats();
    assert_eq!((n(&s, "clients"), n(&s, "pending")), (8, 2), "{s}");
    let (status, metrics) = request(&server.addr, "GET", "/metrics?x=1", b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&metrics).contains("frostheap_clients 8"));
    let (status, rest) = head_only(&server.addr, "HEAD", "/live", "0");
    assert_eq!((status, rest.as_str()), (200, ""));
    for h in held.into_iter().chain(waiters) {
        assert_eq!(h.finish().0, 200);
    }
}

#[test]
fn query_values_out_of_range_are_refused_with_400_naming_the_parameter() {
    let server = Server::start(&["--max-memory", "8M", "--per-client", "1M"]);
    assert!(
        server.banner.contains("8 MiB: 8 clients"),
        "{}",
        server.banner
    );
    for (path, named) in [
        ("/hold?ms=99999999999999999999999", "ms="),
        ("/hold?ms=10001", "ms="),
        ("/hold?ms=-1", "ms="),
        ("/hold?ms=", "ms="),
        ("/?hold_ms=1.5", "hold_ms="),
    ] {
        let (status, body) = request(&server.addr, "GET", path, b"");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{path}: {text}");
        assert!(
            text.contains(named) && text.contains("0 to 10000"),
            "{path}: {text}"
        );
    }
    let (status, body) = request(&server.addr, "POST", "/transform?op=sideways", b"abc");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("op=\"sideways\""), "{text}");
    assert_eq!(request(&server.addr, "GET", "/hold?ms=5", b"").0, 200);
    let one = Server::start(&[
        "--max-memory",
        "1M",
        "--per-client",
        "1M",
        "--fixed-per-client",
    ]);
    assert!(one.banner.contains("1 MiB: 1 client at"), "{}", one.banner);
}

/// Refused clients that keep sending after their 503 are in a lingering
/// close; a shutdown ends those at once. 150 of them, a byte a second
/// each, held a user's trial server for the whole 30 s of its shutdown
/// timeout, with nothing in flight.
#[test]
fn sigterm_does_not_wait_for_the_lingering_closes_of_refused_clients() {
    let server = Server::start(&["--max-memory", "1M"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..100)
        .map(|_| {
            let (addr, stop) = (server.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    return;
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.write_all(b"X").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    server.wait_for("refused clients lingering", |s| n(s, "lingering") > 0);
    sigterm(&server.child);
    let mut server = server;
    let status = exit_by(
        &mut server.child,
        Instant::now() + Duration::from_secs(5),
        "no exit within 5 s of SIGTERM while refused clients linger",
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(status.code(), Some(0), "exit status");
    for t in senders {
        t.join().unwrap();
    }
}

#[test]
fn an_admitted_64_kib_transform_needs_no_more_than_its_head_charge() {
    // 27 held requests of 32 KiB each leave 160 KiB of the 1 MiB budget:
    // a 64 KiB transform is charged 156 KiB from its head (its place,
    // body and output) and builds that much. Its buffers were counted as
    // 80 KiB blocks each (188 KiB), so it grew past its head's charge and,
    // the budget full, got 503 once admitted: in `--overload wait` at 10×
    // load, 83% of the admitted requests ended so.
    let server = Server::start(&[
        "--max-memory",
        "1M",
        "--per-client",
        "32K",
        "--fixed-per-client",
        "--overload",
        "wait",
        HOLDING[0],
        HOLDING[1],
    ]);
    let held: Vec<Held> = (0..27).map(|_| hold(&server.addr, BODY)).collect();
    let s = server.wait_for("27 held requests", |s| n(s, "clients") == 27);
    assert_eq!(n(&s, "in_use"), 27 * (32 << 10), "{s}");
    let body: Vec<u8> = (0..64 << 10).map(|i| b"frostheap "[i % 10]).collect();
    let (status, answer) = request(&server.addr, "POST", "/transform?op=upper", &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(answer, body.to_ascii_uppercase());
    for h in held {
        assert_eq!(h.finish().0, 200);
    }
    let s = server.wait_for("everything released", |s| n(s, "in_use") == 0);
    assert_eq!((n(&s, "admitted"), n(&s, "shed")), (28, 0), "{s}");
}

#[test]
fn a_busy_server_gives_back_the_free_memory_its_heaps_keep_past_8_mib() {
    // The heaps purge on their own only past max(32 MiB, twice what is
    // live) of free memory, and the idle trim waits for 5 s without a
    // request: under load the free memory stayed, and the peak RSS of a
    // 32 MiB budget at 10× load was the budget + 43-46 MiB. Now it is
    // given back past 8 MiB (`FREE_KEPT`), checked every 100 ms, so the
    // server stays within the bound it states.
    let server = Server::start(&["--max-memory", "64M", "--max-body", "8M", "--threads", "1"]);
    const BYTES: usize = 4 << 20;
    for _ in 0..2 {
        let clients: Vec<TcpStream> = (0..4).map(|_| post_transform(&server, BYTES)).collect();
        for s in clients {
            let (status, answer) = read_response(s);
            assert_eq!((status, answer.len()), (200, BYTES));
        }
    }
    // A request between each look: the server is never idle.
    let st = server.wait_for("the heaps' free memory past 8 MiB to go back", |st| {
        assert_eq!(request(&server.addr, "GET", "/", b"").0, 200);
        n(st, "heap_committed") <= n(st, "heap_in_use") + (8 << 20) + (1 << 20)
    });
    assert!(
        n(&st, "load_trims") >= 1 && n(&st, "load_trimmed") > 0,
        "{st}"
    );
    assert_eq!(n(&st, "idle_trims"), 0, "{st}");
    // The slow-body pool's default for 8 MiB bodies: twice that and a
    // connection and head (more than a sixteenth of the budget).
    assert_eq!(n(&st, "slow_memory"), (16 << 20) + (28 << 10), "{st}");
    assert_eq!(
        n(&st, "memory_bound"),
        (64 << 20) + n(&st, "slow_memory") + 2 * 170 * (24 << 10) + (36 << 20),
        "{st}"
    );
}

#[test]
fn a_body_that_keeps_the_minimum_rate_still_ends_at_the_body_max_time() {
    // A sender keeping the minimum rate held its client place until its
    // body was whole: 1 MB at 500 B/s, 35 minutes, and 128 such senders
    // held a 16 MiB server's capacity. Here a byte every 20 ms keeps far
    // above the 1 B/s asked, and the 100,000-byte body would take half an
    // hour: it gets 408 at --body-max-time.
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--body-timeout",
        "1s",
        "--body-min-rate",
        "1",
        "--body-max-time",
        "2s",
    ]);
    let mut s = connect(&server.addr);
    s.write_all(head("POST", "/transform", 100_000).as_bytes())
        .unwrap();
    let start = Instant::now();
    let mut answered = false;
    while start.elapsed() < 2 * Duration::from_secs(2) + PATIENCE {
        if s.write_all(b"a").is_err() {
            answered = true;
            break;
        }
        if server.stats()["timeouts_body"].as_u64() == Some(1) {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answered, "the trickle was never cut: {}", server.stats());
    let (status, body) = read_response(s);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    let st = server.wait_for("the body timeout counted", |st| n(st, "timeouts_body") == 1);
    assert_eq!(n(&st, "clients"), 0, "{st}");
}

/// Slow senders, twice as many as the server's client places, trickle
/// their bodies (a byte every 100 ms each) while a prompt client makes
/// [`PROMPT`] requests one after the other; `overload` is the server's
/// mode. Every prompt request is served, and every slow sender, once it
/// sends the rest of its body, gets its whole answer. Until 2026-12-06 a
/// body still arriving past the grace kept its client place until it
/// ended (up to `--body-max-time`): the first eight slow senders held all
/// eight places, and all 200 prompt requests got 503 (in `--overload
/// wait`, they waited for as long).
fn slow_senders_leave_their_places_to_prompt_clients(overload: &str) {
    const PLACES: usize = 8;
    const SLOW: usize = 2 * PLACES;
    const PROMPT: usize = 200;
    const DECLARED: usize = 20_000;
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--per-client",
        "1M",
        "--fixed-per-client",
        "--overload",
        overload,
        // No slow sender is cut while the test runs, however slow the
        // machine: the body deadlines are past the test's patience.
        "--body-timeout",
        "10m",
        "--body-max-time",
        "10m",
    ]);
    assert_eq!(n(&server.stats(), "capacity"), PLACES as u64);
    // Each slow sender's stream and the body bytes it has sent.
    let slow = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(TcpStream, usize)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let (slow, stop) = (slow.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (s, sent) in slow.lock().unwrap().iter_mut() {
                    // A write error is an answer (a refusal): seen below.
                    if *sent < DECLARED - 1 && s.write_all(b"a").is_ok() {
                        *sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // In waves of as many as there are places: before its body is late
    // the server cannot tell a slow sender from a prompt one, and a wave
    // larger than the places free would be shed from its heads.
    for wave in 1..=SLOW / PLACES {
        for _ in 0..PLACES {
            let mut s = connect(&server.addr);
            s.write_all(head("POST", "/transform?op=upper", DECLARED).as_bytes())
                .unwrap();
            s.write_all(b"a").unwrap();
            slow.lock().unwrap().push((s, 1));
        }
        server.wait_for("the slow senders to leave their client places", |s| {
            n(s, "admitted") == (wave * PLACES) as u64 && n(s, "clients") == 0
        });
    }
    let during = server.stats();
    assert_eq!(n(&during, "slow_bodies"), SLOW as u64, "{during}");
    assert_eq!(n(&during, "in_use"), 0, "{during}");
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..PROMPT {
        let (status, _) = request(&server.addr, "POST", "/transform", BODY);
        *statuses.entry(status).or_default() += 1;
    }
    let st = server.stats();
    assert_eq!(
        statuses.get(&200),
        Some(&PROMPT),
        "prompt requests by status while {SLOW} slow senders trickled: {statuses:?}: {st}"
    );
    assert_eq!(n(&st, "slow_bodies"), SLOW as u64, "still trickling: {st}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    // The slow senders end their bodies one after the other: each takes a
    // client place again, and its answer is whole.
    let slow = std::mem::take(&mut *slow.lock().unwrap());
    for (mut s, sent) in slow {
        s.write_all(&vec![b'a'; DECLARED - sent]).unwrap();
        let (status, body) = read_response(s);
        assert_eq!((status, body.len()), (200, DECLARED), "{}", server.stats());
        assert!(body.iter().all(|&b| b == b'A'));
    }
    let s = server.wait_for("everything released", |s| {
        n(s, "in_use") == 0
            && n(s, "slow_in_use") == 0
            && n(s, "completed") == (SLOW + PROMPT) as u64
    });
    assert_eq!(
        (n(&s, "admitted"), n(&s, "shed"), n(&s, "slow_shed")),
        ((SLOW + PROMPT) as u64, 0, 0),
        "{s}"
    );
    assert_eq!(
        (
            n(&s, "slow_entered"),
            n(&s, "peak_slow_bodies"),
            n(&s, "slow_bodies")
        ),
        (SLOW as u64, SLOW as u64, 0),
        "{s}"
    );
    assert!(n(&s, "peak_in_use") <= n(&s, "budget"), "{s}");
    // What the slow bodies held is bounded, and counted in the bound.
    assert!(
        n(&s, "memory_bound") >= n(&s, "budget") + n(&s, "slow_memory"),
        "{s}"
    );
}

#[test]
fn slow_senders_leave_their_client_places_to_prompt_clients() {
    slow_senders_leave_their_places_to_prompt_clients("shed");
}

#[test]
fn slow_senders_leave_their_client_places_to_prompt_clients_in_wait_mode() {
    slow_senders_leave_their_places_to_prompt_clients("wait");
}

#[test]
fn a_slow_body_past_the_slow_memory_gets_503_and_the_others_are_served() {
    // Room for two slow requests of 44 KiB each (a 16 KiB buffer, and the
    // connection and head), not three; and for one of two to grow to its
    // whole body (a 20 KiB buffer, and the 16 KiB one it is copied from:
    // 64 KiB) beside the other.
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--per-client",
        "1M",
        "--fixed-per-client",
        "--slow-memory",
        "120K",
        "--body-timeout",
        "10m",
    ]);
    const DECLARED: usize = 20_000;
    let slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(&server.addr);
            s.write_all(head("POST", "/transform?op=upper", DECLARED).as_bytes())
                .unwrap();
            s.write_all(b"a").unwrap();
            s
        })
        .collect();
    // The refused one's client place goes back as its 503 goes out, just
    // after the pool counted it: wait for that too (the pkey guest, under
    // QEMU's emulation, read clients 1 in the instant between).
    let st = server.wait_for(
        "two slow bodies in the pool, one refused and its place given back",
        |s| n(s, "slow_bodies") == 2 && n(s, "slow_shed") == 1 && n(s, "clients") == 0,
    );
    assert_eq!(
        (n(&st, "slow_in_use"), n(&st, "slow_memory")),
        (2 * (44 << 10), 120 << 10),
        "{st}"
    );
    assert_eq!((n(&st, "clients"), n(&st, "in_use")), (0, 0), "{st}");
    assert_eq!(
        n(&st, "memory_bound"),
        (8 << 20) + (120 << 10) + 2 * 64 * (24 << 10) + (36 << 20),
        "{st}"
    );
    // A prompt client is served meanwhile.
    assert_eq!(request(&server.addr, "POST", "/transform", BODY).0, 200);
    let mut statuses = Vec::new();
    for mut s in slow {
        // The refused one's write may meet its closed connection.
        let _ = s.write_all(&vec![b'a'; DECLARED - 1]);
        let (status, body) = read_response(s);
        if status == 503 {
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("arriving slowly"), "{text}");
        } else {
            assert_eq!((status, body.len()), (200, DECLARED));
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503]);
    let s = server.wait_for("everything released", |s| {
        n(s, "in_use") == 0 && n(s, "slow_in_use") == 0 && n(s, "slow_bodies") == 0
    });
    assert_eq!((n(&s, "admitted"), n(&s, "slow_entered")), (4, 2), "{s}");
}

/// Eight bodies still arriving hold the eight client places within a
/// grace of 30 s (as long as the test's patience: the prompt request comes
/// well within it); a prompt request finds no place, and being refused
/// (`shed`) or queued (`wait`) cuts the grace of the bodies still arriving
/// to a tenth, 3 s: they move to the slow-body pool, and prompt requests
/// are served. Without it, slow senders that reconnect as fast as their grace
/// lets them held the places: 16 new ones a second took 193 of 200 prompt
/// requests' places (bench/slow-senders.py's server, 2026-12-06); 3 with
/// it.
fn a_request_without_a_place_cuts_the_grace_of_bodies_still_arriving(overload: &str) {
    let server = Server::start(&[
        "--max-memory",
        "8M",
        "--per-client",
        "1M",
        "--fixed-per-client",
        "--overload",
        overload,
        "--body-grace",
        "30s",
        "--body-timeout",
        "10m",
    ]);
    const DECLARED: usize = 20_000;
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(&server.addr);
            s.write_all(head("POST", "/transform?op=upper", DECLARED).as_bytes())
                .unwrap();
            s.write_all(b"a").unwrap();
            s
        })
        .collect();
    server.wait_for("eight bodies arriving, holding every place", |s| {
        n(s, "clients") == 8
    });
    let (status, body) = request(&server.addr, "POST", "/transform", BODY);
    match overload {
        // Refused: the places were all taken when it came.
        "shed" => assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body)),
        // Queued, then given a place one of them left.
        _ => assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body)),
    }
    let st = server.wait_within(
        Duration::from_secs(3),
        "the bodies still arriving to leave their places",
        |s| n(s, "slow_bodies") == 8 && n(s, "clients") == 0,
    );
    assert_eq!(n(&st, "in_use"), 0, "{st}");
    for _ in 0..20 {
        assert_eq!(request(&server.addr, "POST", "/transform", BODY).0, 200);
    }
    for mut s in slow {
        s.write_all(&vec![b'a'; DECLARED - 1]).unwrap();
        let (status, body) = read_response(s);
        assert_eq!((status, body.len()), (200, DECLARED));
    }
    let s = server.wait_for("everything released", |s| {
        n(s, "in_use") == 0 && n(s, "slow_in_use") == 0
    });
    assert_eq!((n(&s, "slow_entered"), n(&s, "slow_shed")), (8, 0), "{s}");
    let shed = u64::from(overload == "shed");
    assert_eq!((n(&s, "admitted"), n(&s, "shed")), (29 - shed, shed), "{s}");
}

#[test]
fn a_request_refused_for_want_of_a_place_cuts_the_grace_of_bodies_still_arriving() {
    a_request_without_a_place_cuts_the_grace_of_bodies_still_arriving("shed");
}

#[test]
fn a_request_queued_for_want_of_a_place_cuts_the_grace_of_bodies_still_arriving() {
    a_request_without_a_place_cuts_the_grace_of_bodies_still_arriving("wait");
}
