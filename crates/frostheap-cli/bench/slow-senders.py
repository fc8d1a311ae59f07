#!/usr/bin/env python3
"""Slow senders against prompt clients: how many prompt requests a
`frostheap serve` answers while slow senders trickle their bodies.

A server of 8 client places (--max-memory 8M --per-client 1M
--fixed-per-client; body deadlines of 10 minutes, so that no slow sender
is cut during the run). SLOW senders (16 by default: twice the places)
each send a head declaring a 20,000-byte body and then one byte every
100 ms, in waves of 8 a grace and a half apart (a wave past the places
would be shed from its head: the server cannot tell a slow sender from a
prompt one before its body is late). Then PROMPT prompt requests (200),
one after the other, each a small `POST /transform`. Then each slow
sender sends the rest of its body, one after the other, and reads its
answer. Prints the statuses of each group and the server's /stats.

With RECONNECT, slow senders instead keep coming: RECONNECT new ones a
second (each trickling as above, replaced when the server closes it),
and the prompt requests are made 10 ms apart once they have come for 3 s.

    slow-senders.py [BINARY] [SLOW] [PROMPT] [RECONNECT]

BINARY defaults to target/release/frostheap (CARGO_TARGET_DIR if set).
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

DECLARED = 20_000
BODY = b"frostheap holds this body while half of it is in flight"


def head(path, length):
    return (
        f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {length}\r\n"
        "connection: close\r\n\r\n"
    ).encode()


def status_of(sock):
    raw = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        raw += chunk
    sock.close()
    line = raw.split(b"\r\n", 1)[0].split(b" ")
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else f"no answer ({len(raw)} B)"


def request(addr, path, body):
    s = socket.create_connection(addr)
    s.settimeout(60)
    s.sendall(head(path, len(body)) + body)
    return status_of(s)


def stats(addr):
    s = socket.create_connection(addr)
    s.settimeout(60)
    s.sendall(b"GET /stats HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    s.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def main():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = sys.argv[1] if len(sys.argv) > 1 else f"{target}/release/frostheap"
    slow_n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    prompt_n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    reconnect = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--threads", "2",
         "--max-memory", "8M", "--per-client", "1M", "--fixed-per-client",
         "--body-timeout", "10m", "--body-max-time", "10m"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()
        listening = server.stdout.readline().strip()
        host, port = listening.removeprefix("listening on http://").rsplit(":", 1)
        addr = (host, int(port))

        if reconnect:
            return keep_coming(addr, binary, reconnect, prompt_n)
        slow, sent, lock, stop = [], [], threading.Lock(), threading.Event()

        def trickle():
            while not stop.is_set():
                with lock:
                    for i, s in enumerate(slow):
                        if sent[i] is not None and sent[i] < DECLARED - 1:
                            try:
                                s.sendall(b"a")
                                sent[i] += 1
                            except OSError:
                                sent[i] = None  # answered and closed
                time.sleep(0.1)

        threading.Thread(target=trickle, daemon=True).start()
        for wave in range(0, slow_n, 8):
            for _ in range(min(8, slow_n - wave)):
                s = socket.create_connection(addr)
                s.settimeout(60)
                s.sendall(head("/transform?op=upper", DECLARED) + b"a")
                with lock:
                    slow.append(s)
                    sent.append(1)
            time.sleep(1.5)  # past the server's grace of 1 s
        start = time.monotonic()
        prompt = Counter(request(addr, "/transform", BODY) for _ in range(prompt_n))
        took = time.monotonic() - start
        during = stats(addr)
        stop.set()
        time.sleep(0.2)
        done = Counter()
        for i, s in enumerate(slow):
            if sent[i] is None:
                done[status_of(s)] += 1
                continue
            try:
                s.sendall(b"a" * (DECLARED - sent[i]))
            except OSError:
                pass
            done[status_of(s)] += 1
        print(f"{binary}: {slow_n} slow senders, {prompt_n} prompt requests in {took:.2f} s")
        print(f"  prompt requests: {dict(prompt)}")
        print(f"  slow senders' answers: {dict(done)}")
        keys = ["capacity", "clients", "in_use", "admitted", "shed", "slow_bodies",
                "peak_slow_bodies", "slow_in_use", "slow_memory", "memory_bound"]
        print("  /stats during the prompt requests:",
              {k: during[k] for k in keys if k in during})
    finally:
        server.kill()
        server.wait()


def keep_coming(addr, binary, rate, prompt_n):
    stop, conns = threading.Event(), []

    def attacker():
        while not stop.is_set():
            for _ in range(max(1, rate // 10)):
                try:
                    s = socket.create_connection(addr)
                    s.setblocking(False)
                    s.sendall(head("/transform?op=upper", DECLARED) + b"a")
                    conns.append(s)
                except OSError:
                    pass
            for s in list(conns):
                try:
                    s.send(b"a")
                except OSError:  # answered (503, 408) and closed
                    conns.remove(s)
                    s.close()
            time.sleep(0.1)

    threading.Thread(target=attacker, daemon=True).start()
    time.sleep(3)
    prompt = Counter()
    for _ in range(prompt_n):
        prompt[request(addr, "/transform", BODY)] += 1
        time.sleep(0.01)
    during = stats(addr)
    stop.set()
    print(f"{binary}: {rate} new slow senders a second, {prompt_n} prompt requests 10 ms apart")
    print(f"  prompt requests: {dict(prompt)}")
    keys = ["clients", "shed", "slow_bodies", "slow_entered", "slow_shed"]
    print("  /stats after the prompt requests:", {k: during[k] for k in keys if k in during})


if __name__ == "__main__":
    main()
