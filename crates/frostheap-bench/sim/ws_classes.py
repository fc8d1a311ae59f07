#!/usr/bin/env python3
"""What size classes cost in the `working-set` case of the `threads`
benchmark, without running an allocator.

Each thread of `working-set` fills a window of 25,000 blocks of 16 B to
4 KiB at random and replaces one at a random slot per operation. A heap of
segregated classes carves a class's blocks on demand and keeps them, so it
holds, for each class, the most blocks that class ever had live at once,
each rounded up to its class's size; glibc holds about the peak of its
chunks (the request plus an 8-byte header, rounded to 16). This prints the
first over the second for frostheap's classes as a small heap has them
(16 B steps to 128 B, then four classes per power of two) and as a heap
past 8 MiB has them (eight per power of two from 1 KiB to 4 KiB: see
`crates/frostheap/src/heap/class.rs`), each without lending between
classes and with frostheap's (`HeapCore::borrow`: a class of 1 KiB or
more with no free block takes one of the two next classes', at most half
as large again).

    python3 crates/frostheap-bench/sim/ws_classes.py [ops] [seed]
"""

import random
import sys


def four_way():
    sizes = [16 * (c + 1) for c in range(8)]
    for k in range(7, 17):
        sizes += [(1 << k) + i * (1 << (k - 2)) for i in range(1, 5)]
    return sizes


def eight_way():
    fine = [(1 << k) + i * (1 << (k - 3)) for k in (10, 11) for i in range(1, 9)]
    return sorted(set(four_way()) | set(fine))


def run(sizes, borrow, ops, seed, window=25_000, lo=16, hi=4096):
    """Bytes the classes hold at the end over glibc's peak of chunks."""
    n_classes = len(sizes)
    class_of = [0] * (hi + 1)
    c = 0
    for n in range(hi + 1):
        while sizes[c] < n:
            c += 1
        class_of[n] = c
    rng = random.Random(seed)
    used = [0] * n_classes
    carved = [0] * n_classes
    chunks = 0

    def add(n):
        nonlocal chunks
        c = class_of[n]
        got = None
        if used[c] < carved[c]:
            got = c
        elif borrow and sizes[c] >= 1024:
            for d in (1, 2):
                if c + d < n_classes and sizes[c + d] * 2 <= sizes[c] * 3 \
                        and used[c + d] < carved[c + d]:
                    got = c + d
                    break
        if got is None:
            got = c
            carved[c] += 1
        used[got] += 1
        chunks += max(32, (n + 8 + 15) & ~15)
        return n, got

    def remove(block):
        nonlocal chunks
        used[block[1]] -= 1
        chunks -= max(32, (block[0] + 8 + 15) & ~15)

    slots = [add(lo + rng.randrange(hi - lo + 1)) for _ in range(window)]
    peak = chunks
    for _ in range(ops):
        j = rng.randrange(window)
        remove(slots[j])
        slots[j] = add(lo + rng.randrange(hi - lo + 1))
        peak = max(peak, chunks)
    return sum(carved[c] * sizes[c] for c in range(n_classes)) / peak


def main():
    ops = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    for name, sizes in (("four per doubling", four_way()),
                        ("eight per doubling from 1 KiB to 4 KiB", eight_way())):
        plain = run(sizes, False, ops, seed)
        lent = run(sizes, True, ops, seed)
        print(f"{name} ({len(sizes)} classes): {plain:.3f}x glibc's chunks, "
              f"{lent:.3f}x with lending")


if __name__ == "__main__":
    main()
