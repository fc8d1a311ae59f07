#!/usr/bin/env python3
"""Where the `working-set` case of the `threads` benchmark puts its bytes,
without running an allocator.

Each thread of `working-set` fills 25,000 blocks of 16 B to 4 KiB and then
replaces one at random per operation (preload/threads.c, whose xorshift
generator and seeds this replays, so the sizes are the C program's). For
each thread this prints:

- the bytes the program asked for at the end (what is live);
- the most bytes its blocks took at once rounded up to their classes
  (what any allocator with these classes must hold at least);
- the sum over classes of the most blocks each class had live at once,
  rounded up to 4 KiB pages (what segregated classes hold: a class keeps
  the blocks it carved, and classes peak at different times).

The difference between the first two is class rounding; between the last
two, segregation. The same figures follow for a finer spacing of the
classes above a size (eight classes per power of two instead of four),
with the sum of peaks of the `local` case (64 live blocks replaced in
turn) beside them, since more classes hold more partly used pages there.

    python3 crates/frostheap-bench/sim/working_set.py [ops]
"""

import bisect
import math
import sys

MASK = (1 << 64) - 1
BLOCKS = 25_000
LOCAL_WINDOW = 64


def classes(fine_from=None):
    """frostheap's class sizes up to 4 KiB (class.rs): 16 B steps to 128 B,
    then four classes per power of two; eight from `fine_from` on."""
    sizes = [16 * (c + 1) for c in range(8)]
    k = 7
    while (1 << k) < 4096:
        per = 8 if fine_from is not None and (1 << k) >= fine_from else 4
        step = (1 << k) // per
        sizes += [(1 << k) + (i + 1) * step for i in range(per)]
        k += 1
    return sizes


def xorshift(x):
    x ^= (x << 13) & MASK
    x ^= x >> 7
    x ^= (x << 17) & MASK
    return x


def working_set(sizes, ops, thread):
    """(live KiB, most class KiB at once, sum of class peaks KiB)."""
    class_of = [bisect.bisect_left(sizes, n) for n in range(4097)]
    x = 0x6A09E667F3BCC908 ^ (thread + 1)
    window, count = [], [0] * len(sizes)
    for _ in range(BLOCKS):
        x = xorshift(x)
        n = 16 + x % 4081
        window.append(n)
        count[class_of[n]] += 1
    peak = count[:]
    held = most = sum(sizes[class_of[n]] for n in window)
    for _ in range(ops):
        x = xorshift(x)
        slot = x % BLOCKS
        c = class_of[window[slot]]
        count[c] -= 1
        held -= sizes[c]
        n = 16 + (x >> 32) % 4081
        window[slot] = n
        c = class_of[n]
        count[c] += 1
        held += sizes[c]
        peak[c] = max(peak[c], count[c])
        most = max(most, held)
    pages = sum(math.ceil(peak[c] * sizes[c] / 4096) * 4 for c in range(len(sizes)))
    return sum(window) / 1024, most / 1024, pages


def local(sizes, ops, thread):
    """Sum of class peaks, KiB, of the `local` case (blocks replaced in
    turn; the C program's generator for the sizes)."""
    class_of = [bisect.bisect_left(sizes, n) for n in range(4097)]
    x = 0x9E3779B97F4A7C15 ^ (thread + 1)
    window = [None] * LOCAL_WINDOW
    count, peak = [0] * len(sizes), [0] * len(sizes)
    for i in range(ops):
        old = window[i % LOCAL_WINDOW]
        if old is not None:
            count[old] -= 1
        x = xorshift(x)
        c = class_of[16 + x % 4081]
        window[i % LOCAL_WINDOW] = c
        count[c] += 1
        peak[c] = max(peak[c], count[c])
    return sum(math.ceil(peak[c] * sizes[c] / 4096) * 4 for c in range(len(sizes)))


def main():
    ops = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
    for label, fine_from in (("four classes per power of two", None),
                             ("eight from 2 KiB", 2048),
                             ("eight from 1 KiB", 1024)):
        sizes = classes(fine_from)
        print(f"{label} ({len(sizes)} classes up to 4 KiB), per thread:")
        for t in range(2):
            live, most, pages = working_set(sizes, ops, t)
            print(f"  working-set thread {t}: live {live:,.0f} KiB; in classes at most "
                  f"{most:,.0f} KiB (rounding +{most / live - 1:.1%}); sum of class peaks "
                  f"{pages:,.0f} KiB (segregation +{pages - most:,.0f} KiB)")
        print(f"  local thread 0: sum of class peaks {local(sizes, ops, 0):,.0f} KiB")


if __name__ == "__main__":
    main()
