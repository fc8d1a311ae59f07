#!/usr/bin/env python3
"""What an idle `frostheap serve` gives back: committed heap memory under
load and once the server has been idle long enough to trim (its check runs
every 5 s), for one or more `frostheap` binaries, run in turn.

The load: four bursts of eight 4 MiB `/transform` requests at once, then
16 connections of `--mixed` requests each (150: 2,400 in all) of 100 B to
250 KB (`/echo` and `/transform`, sizes drawn from a fixed seed). Loopback
only; about 15 s a run with the defaults, 40 s with `--mixed 1500`.

    cargo build --release -p frostheap-cli
    python3 crates/frostheap-cli/bench/idle-trim.py [--threads N] [--runs R] \
        [--mixed M] [BINARY ...]    # default: $CARGO_TARGET_DIR/release/frostheap
                                    # (target/release/frostheap without it)

Prints one line a run: the binary, the workers, committed KiB under load
and once idle, the bytes in use, and `idle_trim_threads` (the workers that
trimmed their own heap; absent from builds before 2026-12-06).
"""

import argparse
import json
import os
import random
import socket
import subprocess
import threading
import time

BURST_BYTES = 4 << 20
MIXED_SIZES = [100, 700, 3000, 20000, 90000, 250000]


def request(addr, method, path, body=b""):
    with socket.create_connection(addr) as s:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        s.sendall(head.encode() + body)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    return data


def stats(addr):
    return json.loads(request(addr, "GET", "/stats").split(b"\r\n\r\n", 1)[1])


def in_threads(target, args_list):
    threads = [threading.Thread(target=target, args=a) for a in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def mixed(addr, seed, count):
    rnd = random.Random(seed)
    for _ in range(count):
        n = rnd.choice(MIXED_SIZES)
        path = rnd.choice(["/echo", "/transform?op=upper"])
        request(addr, "POST", path, b"a" * n)


def run(binary, workers, count):
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--threads", str(workers),
         "--max-memory", "256M", "--max-body", "8M"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()  # the capacity line
        listening = server.stdout.readline().strip()
        host, port = listening.split("http://", 1)[1].rsplit(":", 1)
        addr = (host, int(port))
        for _ in range(4):
            in_threads(request, [(addr, "POST", "/transform?op=upper",
                                  b"a" * BURST_BYTES)] * 8)
        in_threads(mixed, [(addr, seed, count) for seed in range(16)])
        busy = stats(addr)
        time.sleep(12)  # two of the server's 5 s checks, and the trims
        idle = stats(addr)
    finally:
        server.kill()
        server.wait()
    return busy, idle


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=8, help="worker threads (8)")
    p.add_argument("--runs", type=int, default=2, help="runs of each binary (2)")
    p.add_argument("--mixed", type=int, default=150,
                   help="mixed requests per connection, 16 connections (150)")
    default = os.path.join(os.environ.get("CARGO_TARGET_DIR") or "target", "release", "frostheap")
    p.add_argument("binaries", nargs="*", default=[default])
    o = p.parse_args()
    for r in range(o.runs):
        for b in o.binaries:
            busy, idle = run(b, o.threads, o.mixed)
            print(f"run {r + 1} {b}: {o.threads} workers, committed "
                  f"{busy['heap_committed'] >> 10} KiB under load, "
                  f"{idle['heap_committed'] >> 10} KiB idle "
                  f"({idle['heap_in_use'] >> 10} KiB in use), idle_trims "
                  f"{idle['idle_trims']}, idle_trim_threads "
                  f"{idle.get('idle_trim_threads', '-')}", flush=True)


if __name__ == "__main__":
    main()
