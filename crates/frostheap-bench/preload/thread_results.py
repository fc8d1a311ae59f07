"""Resident memory of a CPython program whose threads leave results behind.

64 threads each build a list of 20,000 strings and 2,000 bytearrays of
700 bytes; the main thread joins them, drops their results (frees into
the heaps of exited threads, under the library), then grows by some 50 MB
of its own. Prints VmRSS in MB after the join, after the drop, and after
the growth:

    python3 thread_results.py
    LD_PRELOAD=target/release/libfrostheap.so python3 thread_results.py
"""
import threading


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


results = [None] * 64


def work(i):
    results[i] = [("x%d" % j) * 8 + str(i) for j in range(20000)] + [
        bytearray(700) for _ in range(2000)
    ]


threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("joined", rss_mb(), end=" ")
results = None
print("freed", rss_mb(), end=" ")
grown = [("y%d" % j) * 8 for j in range(400000)] + [bytearray(700) for _ in range(30000)]
print("grown", rss_mb())
