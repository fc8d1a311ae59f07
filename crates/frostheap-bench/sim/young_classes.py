#!/usr/bin/env python3
"""What young classes would save in the `spawn` and `local` cases of the
`threads` benchmark, without running an allocator.

A heap of segregated classes carves a class's blocks on demand and keeps
them, so it holds, for each class, the most blocks that class ever had
live at once, and at least a page for a class with any block live. With
*young classes* the classes up to 512 B of a small heap would be served
by the next power of two of at least 32 B: five classes instead of
sixteen hold the same blocks. Built and measured, they were not kept
(docs/threads.md, "Young size classes"). This prints
the pages the classes of one heap hold, rounded per class to whole 4 KiB
pages, for the classes as a heap under 8 MiB has them and with the young
classes served, in:

- `spawn`: each generation frees the 50 blocks the previous one kept,
  then allocates 100 blocks of 16–512 B, keeping every other one (one
  heap, as a thread that adopts the heap its predecessor left);
- `local`: a window of 64 blocks of 16 B – 4 KiB at random, replaced in
  turn (no lending between classes: `class_peaks.py` has that).

    python3 crates/frostheap-bench/sim/young_classes.py [seed]
"""

import bisect
import random
import sys

from class_peaks import SIZES

PAGE = 4096


def young(size):
    """The class serving `size`-byte classes while they are young."""
    if size > 512:
        return size
    return max(32, 1 << (size - 1).bit_length())


def pages(trace, serve):
    """KiB of pages the classes hold over `trace`, each class of the
    four-way split served by `serve(size)`."""
    sizes = SIZES
    live, count, peak = {}, {}, {}
    for op, block, n in trace:
        if op == "a":
            s = serve(sizes[bisect.bisect_left(sizes, n)])
            live[block] = s
            count[s] = count.get(s, 0) + 1
            peak[s] = max(peak.get(s, 0), count[s])
        else:
            count[live.pop(block)] -= 1
    return sum(-(-m * s // PAGE) for s, m in peak.items()) * PAGE // 1024


def spawn(rng, generations=400):
    trace, block, prev = [], 0, []
    for _ in range(generations):
        trace += [("f", b, 0) for b in prev]
        keep = []
        for k in range(100):
            trace.append(("a", block, 16 + rng.randrange(497)))
            if k % 2 == 0:
                keep.append(block)
            else:
                trace.append(("f", block, 0))
            block += 1
        prev = keep
    return trace


def local(rng, ops=400_000):
    trace, window = [], [None] * 64
    for i in range(ops):
        if window[i % 64] is not None:
            trace.append(("f", window[i % 64], 0))
        trace.append(("a", i, 16 + rng.randrange(4081)))
        window[i % 64] = i
    return trace


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for name, make in (("spawn", spawn), ("local", local)):
        trace = make(random.Random(seed))
        own = pages(trace, lambda s: s)
        served = pages(trace, young)
        print(f"{name}: class pages {own} KiB a heap, {served} KiB with young classes")


if __name__ == "__main__":
    main()
