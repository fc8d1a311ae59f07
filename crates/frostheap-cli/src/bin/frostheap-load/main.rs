//! `frostheap-load`: the load test of `frostheap serve`, on loopback only,
//! bounded in time and request count.
//!
//! It starts the servers itself (the `frostheap` binary next to this one,
//! each on `127.0.0.1:0`) and runs, in one process:
//!
//! 1. **Throughput below capacity**: 16 keep-alive connections posting a
//!    small JSON document to `/echo`, alternating the budgeted server and
//!    the same server with `--no-budget` (plain hyper, no layer) for
//!    `ROUNDS` rounds; the median requests/s of each and their ratio.
//! 2. **10× overload**: a 32 MiB budget at 128 KiB per client (capacity
//!    256), and 10 × 256 clients, each posting 64 KiB to `/transform`
//!    slowly (four pieces 25 ms apart) and holding the result 200 ms. A
//!    client that gets 503 waits 500 ms and tries again. Reported: admitted
//!    and shed, p50/p99 latency of admitted requests, peak RSS (VmHWM) of
//!    the server against its budget, and whether it survived.
//! 3. The same overload against `--no-budget`: what the budget prevents.
//!
//! Every address used is `127.0.0.1`. The servers are killed at the end.
//!
//! Options: `--rounds N` and `--secs S` (part 1's rounds and their
//! length; default 3 × 3 s), `--throughput-only` (skip parts 2 and 3),
//! `--compare PATH` (in part 1, also a budgeted server from another
//! `frostheap` binary, say an earlier build, interleaved with the others).
//! The load average is printed at the start and the end of part 1: on a
//! shared machine the ratio is only as good as the conditions.
//!
//! `--wrk` makes the same two measurements with wrk, a load generator
//! nobody here wrote (`crates/frostheap-cli/bench/serve-wrk.sh` installs
//! it and runs this).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Lines that outlive their reader (`frostheap-load | head`): the same
// macros as the `frostheap` command's.
#[path = "../../out.rs"]
mod out;
mod wrk;

use out::outln;

const ROUNDS: usize = 3;
const ROUND_SECS: u64 = 3;
const OVERLOAD_SECS: u64 = 8;
const MAX_REQUESTS: u64 = 2_000_000;

struct Server {
    child: Child,
    addr: String,
    banner: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let exe = std::env::current_exe().expect("own path");
        Server::start_bin(&exe.with_file_name("frostheap"), args)
    }

    fn start_bin(bin: &std::path::Path, args: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with `cargo build --release`)",
                    bin.display()
                )
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().unwrap().unwrap();
        let listening = lines.next().unwrap().unwrap();
        let addr = listening
            .strip_prefix("listening on http://")
            .expect("listening line")
            .to_owned();
        assert!(addr.starts_with("127.0.0.1:"), "loopback only: {addr}");
        Server {
            child,
            addr,
            banner,
        }
    }

    fn status_kb(&self, field: &str) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn peak_rss(&self) -> usize {
        self.status_kb("VmHWM:") * 1024
    }

    fn rss(&self) -> usize {
        self.status_kb("VmRSS:") * 1024
    }

    /// CPU time the server has used so far, all threads (the sum of
    /// `/proc/PID/task/*/schedstat`'s first field: nanoseconds on a CPU).
    fn cpu_secs(&self) -> f64 {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut ns = 0u64;
        for task in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        ns as f64 / 1e9
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Reads one response (head and `content-length` body); returns the status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

/// Keep-alive `/echo` requests from `conns` connections for `secs`: req/s
/// and the number of requests.
async fn throughput(addr: &str, conns: usize, secs: u64) -> (f64, u64) {
    let body = br#"{"user":"frostheap","items":[1,2,3,4,5],"nested":{"ok":true,"name":"budget"}}"#;
    let request = format!("POST /echo HTTP/1.1\r\nhost: load\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    let request = Arc::new(request);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, request, done) = (addr.to_owned(), request.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            s.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                s.write_all(&request).await.expect("write");
                let status = read_response(&mut s, &mut buf).await.expect("response");
                assert_eq!(status, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

#[derive(Default)]
struct Overload {
    ok: u64,
    shed: u64,
    errors: u64,
    latencies_us: Vec<u64>,
}

/// `clients` clients posting `body_len` bytes slowly to `/transform` for
/// `secs`; 503s back off 500 ms.
async fn overload(addr: &str, clients: usize, body_len: usize, secs: u64) -> Overload {
    let head = format!("POST /transform?op=upper&hold_ms=200 HTTP/1.1\r\nhost: load\r\ncontent-length: {body_len}\r\nconnection: close\r\n\r\n");
    let body: Vec<u8> = (0..body_len).map(|i| b"frostheap "[i % 10]).collect();
    let shared = Arc::new((head.into_bytes(), body));
    let result = Arc::new(Mutex::new(Overload::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (addr, shared, result, sent) = (
            addr.to_owned(),
            shared.clone(),
            result.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Spread the starts over the first 200 ms.
            tokio::time::sleep(Duration::from_micros((c as u64 * 200_000) / clients as u64)).await;
            let mut buf = Vec::new();
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS {
                let start = Instant::now();
                let attempt = async {
                    let mut s = TcpStream::connect(&addr).await?;
                    let (head, body) = (&shared.0, &shared.1);
                    s.write_all(head).await?;
                    let piece = body.len().div_ceil(4);
                    for (i, part) in body.chunks(piece).enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                        // A shed request is answered before its body is
                        // read: stop sending and read the answer.
                        if s.write_all(part).await.is_err() {
                            break;
                        }
                    }
                    read_response(&mut s, &mut buf).await
                };
                let outcome = tokio::time::timeout(Duration::from_secs(10), attempt).await;
                let backoff = {
                    let mut r = result.lock().unwrap();
                    match outcome {
                        Ok(Ok(200)) => {
                            r.ok += 1;
                            r.latencies_us.push(start.elapsed().as_micros() as u64);
                            false
                        }
                        Ok(Ok(503)) => {
                            r.shed += 1;
                            true
                        }
                        _ => {
                            r.errors += 1;
                            true
                        }
                    }
                };
                if backoff {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(result).ok().unwrap().into_inner().unwrap()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn stats(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect for /stats");
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nhost: load\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned()
}

/// The memory the server at `addr` states it stays within (`memory_bound`
/// in its `/stats`).
fn memory_bound(addr: &str) -> usize {
    let s: serde_json::Value = serde_json::from_str(&stats(addr)).expect("/stats is JSON");
    s["memory_bound"].as_u64().expect("/stats has memory_bound") as usize
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The load test of `frostheap serve` (loopback only, bounded).
#[derive(clap::Parser, Debug)]
#[command(name = "frostheap-load")]
struct Options {
    /// Part 1: rounds per server.
    #[arg(long, default_value_t = ROUNDS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Part 1: seconds per round.
    #[arg(long, default_value_t = ROUND_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// Skip parts 2 and 3 (the overload runs).
    #[arg(long)]
    throughput_only: bool,
    /// In part 1, also a budgeted server from another `frostheap` binary
    /// (an earlier build), interleaved with the others.
    #[arg(long, value_name = "PATH")]
    compare: Option<std::path::PathBuf>,
    /// Generate the load with wrk (on PATH) instead: parts 1 and 2, plus
    /// the unbudgeted overload (see `wrk.rs`).
    #[arg(long)]
    wrk: bool,
}

/// The median of `v` (sorted in place, so that `spread` reads its range).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The range of a sorted `v`.
fn spread(v: &[f64]) -> String {
    format!("{:.0}–{:.0}", v[0], v[v.len() - 1])
}

fn main() {
    let opts = <Options as clap::Parser>::parse();
    if opts.wrk {
        return wrk::run(opts.rounds, opts.secs);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rounds, secs) = (opts.rounds, opts.secs);

    outln!("frostheap-load: loopback only, bounded ({rounds}×{secs} s per server, {OVERLOAD_SECS} s per overload run)\n");
    outln!("1. Below capacity: 16 keep-alive connections, POST /echo (80-byte JSON), server on 1 thread");
    outln!("   load average at start: {}", loadavg());
    let budgeted_args = ["--max-memory", "256M", "--threads", "1"];
    let budgeted = Server::start(&budgeted_args);
    let plain = Server::start(&["--no-budget", "--threads", "1"]);
    let compared = opts
        .compare
        .as_ref()
        .map(|bin| Server::start_bin(bin, &budgeted_args));
    outln!("   budgeted: {}", budgeted.banner);
    let (mut with, mut without, mut other) = (Vec::new(), Vec::new(), Vec::new());
    // Server CPU microseconds per request, per round: what the layer costs,
    // much less disturbed by other load on the machine than requests/s.
    let (mut cpu_with, mut cpu_without, mut cpu_other) = (Vec::new(), Vec::new(), Vec::new());
    let measure = |server: &Server, rps: &mut Vec<f64>, cpu: &mut Vec<f64>| {
        let before = server.cpu_secs();
        let (r, n) = rt.block_on(throughput(&server.addr, 16, secs));
        rps.push(r);
        cpu.push((server.cpu_secs() - before) * 1e6 / n.max(1) as f64);
    };
    for _ in 0..rounds {
        measure(&plain, &mut without, &mut cpu_without);
        measure(&budgeted, &mut with, &mut cpu_with);
        if let Some(c) = &compared {
            measure(c, &mut other, &mut cpu_other);
        }
    }
    // Per round, budgeted ÷ the plain run just before it: drift in machine
    // load cancels better than in the ratio of medians.
    let mut paired: Vec<f64> = with.iter().zip(&without).map(|(w, p)| w / p).collect();
    let (m_with, m_without) = (median(&mut with), median(&mut without));
    outln!(
        "   plain hyper (--no-budget): {m_without:>8.0} req/s (median of {rounds}; range {})",
        spread(&without)
    );
    outln!(
        "   with the budget layer:     {m_with:>8.0} req/s (median of {rounds}; range {})",
        spread(&with)
    );
    if let Some(bin) = &opts.compare {
        let m_other = median(&mut other);
        outln!(
            "   budgeted, {}: {m_other:>8.0} req/s (median of {rounds}; range {}; {:.3}× plain)",
            bin.display(),
            spread(&other),
            m_other / m_without
        );
    }
    let m_paired = median(&mut paired);
    outln!(
        "   ratio: {:.3}× plain hyper (target ≥ 0.9×); per-round ratios: median {m_paired:.3}, range {:.3}–{:.3}",
        m_with / m_without,
        paired[0],
        paired[paired.len() - 1]
    );
    let (c_with, c_without) = (median(&mut cpu_with), median(&mut cpu_without));
    outln!(
        "   server CPU per request: plain {c_without:.2} µs (range {:.2}–{:.2}), budgeted {c_with:.2} µs (range {:.2}–{:.2}): {:.3}× plain's requests per CPU-second",
        cpu_without[0],
        cpu_without[cpu_without.len() - 1],
        cpu_with[0],
        cpu_with[cpu_with.len() - 1],
        c_without / c_with
    );
    if !cpu_other.is_empty() {
        let c_other = median(&mut cpu_other);
        outln!(
            "   server CPU per request, compared binary: {c_other:.2} µs (range {:.2}–{:.2}): {:.3}× plain's",
            cpu_other[0],
            cpu_other[cpu_other.len() - 1],
            c_without / c_other
        );
    }
    outln!("   load average at end: {}\n", loadavg());
    drop((budgeted, plain, compared));
    if opts.throughput_only {
        return;
    }

    let budget = 32usize << 20;
    let capacity = 256;
    let clients = 10 * capacity;
    let body_len = 64 << 10;
    for (name, args) in [
        (
            "budget, shed",
            vec![
                "--max-memory",
                "32M",
                "--per-client",
                "128K",
                "--fixed-per-client",
                "--threads",
                "1",
            ],
        ),
        (
            "budget, wait",
            vec![
                "--max-memory",
                "32M",
                "--per-client",
                "128K",
                "--fixed-per-client",
                "--overload",
                "wait",
                "--threads",
                "1",
            ],
        ),
        ("no budget", vec!["--no-budget", "--threads", "1"]),
    ] {
        let mut server = Server::start(&args);
        let idle = server.rss();
        // 0 without a budget.
        let bound = memory_bound(&server.addr);
        outln!("2. 10× overload, {name}: {clients} clients, POST /transform 64 KiB sent in 4 pieces over 75 ms, held 200 ms");
        outln!("   {}", server.banner);
        let mut r = rt.block_on(overload(&server.addr, clients, body_len, OVERLOAD_SECS));
        r.latencies_us.sort_unstable();
        let peak = server.peak_rss();
        let alive = server.alive();
        outln!(
            "   admitted {} · shed (503) {} · errors {} · p50 {:.1} ms · p99 {:.1} ms (admitted requests)",
            r.ok,
            r.shed,
            r.errors,
            percentile(&r.latencies_us, 0.50),
            percentile(&r.latencies_us, 0.99)
        );
        if args.contains(&"--no-budget") {
            outln!("   peak RSS {} (idle {}) — no bound", mib(peak), mib(idle));
        } else {
            outln!(
                "   peak RSS {} = budget {} + {} (idle {}); {} the stated bound {} = budget + {}",
                mib(peak),
                mib(budget),
                mib(peak.saturating_sub(budget)),
                mib(idle),
                if peak <= bound { "within" } else { "OVER" },
                mib(bound),
                mib(bound.saturating_sub(budget))
            );
        }
        outln!("   server {}", if alive { "alive" } else { "CRASHED" });
        if alive {
            outln!("   /stats {}", stats(&server.addr));
        }
        outln!();
    }
}
