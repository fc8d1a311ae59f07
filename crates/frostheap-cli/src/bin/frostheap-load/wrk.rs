//! `frostheap-load --wrk`: the server measured with wrk (Debian's `wrk`
//! package), a load generator nobody here wrote, so that the figures do not
//! rest on this project's own client.
//!
//! 1. **Below capacity**: `wrk -t1 -c16` posting an 80-byte JSON document
//!    to `/echo` for `--secs`, alternating plain hyper (`--no-budget`) and
//!    the budgeted server (256 MiB), `--rounds` times, each server on one
//!    thread. Reported: requests/s of each (median and range), the ratio
//!    per round (budgeted ÷ the plain run just before it: median and
//!    range), and server CPU per request.
//! 2. **10× overload**: `wrk -t2 -c2560` posting 64 KiB to
//!    `/transform?hold_ms=200` against a 32 MiB budget at a declared
//!    128 KiB per client (capacity 256), for [`OVERLOAD_SECS`]: answered
//!    2xx, answered 503, wrk's socket errors (a reset shows as a read
//!    error; a short body, one too), and the server's peak RSS against
//!    the bound it states (`memory_bound` in its `/stats`: the README's
//!    one statement of it, serve/mod.rs's `memory_bound`). Then the same load against
//!    `--no-budget`.
//!
//! wrk reconnects after every `Connection: close`, so the shed clients
//! come straight back: this is a harder overload than part 2 of the
//! default mode, whose clients back off 500 ms.

use std::process::Command;

use super::{loadavg, median, memory_bound, mib, outln, spread, Server};

/// Seconds per overload run.
const OVERLOAD_SECS: u64 = 8;

const ECHO_LUA: &str = r#"wrk.method = "POST"
wrk.body = '{"user":"frostheap","items":[1,2,3,4,5],"nested":{"ok":true,"name":"budget"}}'
wrk.headers["Content-Type"] = "application/json"
"#;

const TRANSFORM_LUA: &str = r#"wrk.method = "POST"
wrk.path = "/transform?op=upper&hold_ms=200"
wrk.body = string.rep("frostheap ", 6554)
"#;

/// What one wrk run reported.
#[derive(Debug, Default)]
struct Run {
    requests: u64,
    per_sec: f64,
    non_2xx: u64,
    /// connect, read, write, timeout.
    socket_errors: [u64; 4],
}

fn wrk(args: &[&str], script: &str, url: &str) -> Run {
    let dir = std::env::temp_dir().join(format!("frostheap-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let lua = dir.join("script.lua");
    std::fs::write(&lua, script).expect("write the wrk script");
    let out = Command::new("wrk")
        .args(args)
        .arg("-s")
        .arg(&lua)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run wrk: {e} (crates/frostheap-cli/bench/serve-wrk.sh installs it)")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text).unwrap_or_else(|| panic!("unexpected wrk output:\n{text}"))
}

/// Reads wrk's summary lines.
fn parse(text: &str) -> Option<Run> {
    let mut run = Run::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.per_sec = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for (i, part) in v.split(',').enumerate().take(4) {
                run.socket_errors[i] = part.split_whitespace().nth(1)?.parse().ok()?;
            }
        } else if line.contains(" requests in ") {
            run.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    (run.per_sec > 0.0 || run.requests > 0).then_some(run)
}

/// Raises the soft descriptor limit to the hard one (wrk inherits it and
/// opens 2,560 connections).
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit, soft raised to hard.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    lim.rlim_cur
}

pub(super) fn run(rounds: usize, secs: u64) {
    let fds = raise_fd_limit();
    assert!(
        fds >= 3000,
        "wrk needs 2,560 descriptors; the limit is {fds}"
    );
    let version = Command::new("wrk").arg("-v").output().ok().map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    });
    outln!(
        "frostheap-load --wrk: {}; loopback only, bounded\n",
        version.as_deref().unwrap_or("wrk not found")
    );
    outln!(
        "1. Below capacity: wrk -t1 -c16 -d{secs}s, POST /echo (80-byte JSON), server on 1 thread"
    );
    outln!("   load average at start: {}", loadavg());
    let budgeted = Server::start(&["--max-memory", "256M", "--threads", "1"]);
    let plain = Server::start(&["--no-budget", "--threads", "1"]);
    outln!("   budgeted: {}", budgeted.banner);
    let duration = format!("{secs}s");
    let (mut with, mut without, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_with, mut cpu_without) = (Vec::new(), Vec::new());
    let measure = |server: &Server, cpu: &mut Vec<f64>| {
        let before = server.cpu_secs();
        let r = wrk(
            &["-t1", "-c16", "-d", &duration],
            ECHO_LUA,
            &format!("http://{}/echo", server.addr),
        );
        assert_eq!(
            r.non_2xx, 0,
            "below capacity every request is served: {r:?}"
        );
        cpu.push((server.cpu_secs() - before) * 1e6 / r.requests.max(1) as f64);
        r.per_sec
    };
    for _ in 0..rounds {
        let p = measure(&plain, &mut cpu_without);
        let b = measure(&budgeted, &mut cpu_with);
        without.push(p);
        with.push(b);
        paired.push(b / p);
    }
    let (m_with, m_without) = (median(&mut with), median(&mut without));
    let m_paired = median(&mut paired);
    outln!(
        "   plain hyper (--no-budget): {m_without:>8.0} req/s (median of {rounds}; range {})",
        spread(&without)
    );
    outln!(
        "   with the budget layer:     {m_with:>8.0} req/s (median of {rounds}; range {})",
        spread(&with)
    );
    outln!(
        "   ratio per round: median {m_paired:.3}× plain hyper (target ≥ 0.9×), range {:.3}–{:.3}",
        paired[0],
        paired[paired.len() - 1]
    );
    let (c_with, c_without) = (median(&mut cpu_with), median(&mut cpu_without));
    outln!(
        "   server CPU per request: plain {c_without:.2} µs, budgeted {c_with:.2} µs: {:.3}× plain's requests per CPU-second",
        c_without / c_with
    );
    outln!("   load average at end: {}\n", loadavg());
    drop((budgeted, plain));

    let budget = 32usize << 20;
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
        ("no budget", vec!["--no-budget", "--threads", "1"]),
    ] {
        let mut server = Server::start(&args);
        let idle = server.rss();
        // 0 without a budget.
        let bound = memory_bound(&server.addr);
        outln!("2. 10× overload, {name}: wrk -t2 -c2560 -d{OVERLOAD_SECS}s, POST /transform 64 KiB, held 200 ms");
        outln!("   {}", server.banner);
        let r = wrk(
            &[
                "-t2",
                "-c2560",
                "-d",
                &format!("{OVERLOAD_SECS}s"),
                "--timeout",
                "10s",
            ],
            TRANSFORM_LUA,
            &format!("http://{}/transform", server.addr),
        );
        let peak = server.peak_rss();
        let [connect, read, write, timeout] = r.socket_errors;
        outln!(
            "   {} responses: {} 2xx, {} 503 or other; socket errors: connect {connect}, read {read}, write {write}, timeout {timeout}",
            r.requests,
            r.requests - r.non_2xx,
            r.non_2xx
        );
        if name == "no budget" {
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
        outln!(
            "   server {}",
            if server.alive() { "alive" } else { "CRASHED" }
        );
        outln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 3s test @ http://127.0.0.1:1/echo\n  1 threads and 16 connections\n  35914 requests in 3.00s, 5.10MB read\n  Socket errors: connect 0, read 12, write 3, timeout 1\n  Non-2xx or 3xx responses: 200\nRequests/sec:  11970.77\nTransfer/sec:      1.70MB\n";
        let r = parse(text).unwrap();
        assert_eq!(r.requests, 35914);
        assert_eq!(r.non_2xx, 200);
        assert_eq!(r.socket_errors, [0, 12, 3, 1]);
        assert!((r.per_sec - 11970.77).abs() < 1e-9);
    }
}
