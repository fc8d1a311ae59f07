#!/usr/bin/env python3
"""What segregated size classes cost in the `local` case of the `threads`
benchmark, without running an allocator.

Each thread of `local` keeps a window of 64 blocks and replaces them in
turn with blocks of 16 B to 4 KiB at random. A heap of segregated classes
(frostheap's in a heap under 8 MiB, as `local`'s are: 16 B steps to
128 B, then four classes per power of two; `ws_classes.py` has the finer
classes of a larger heap)
carves a class's blocks on demand and keeps them, so it holds, for each
class, the most blocks that class ever had live at once; a coalescing
arena (glibc) holds about the peak of the live bytes. This prints both,
per thread, for segregated classes alone and with frostheap's borrowing
(`HeapCore::borrow`): a class of 1 KiB or more whose current span has no
free block, once it has carved 8 blocks there, takes a free block of one
of the two next classes at most half as large again before it carves
another of its own, at most 1,024 times in a row. The last line bounds
what any rule of lending between classes could do: every class takes a
free block of any larger class whenever it has none of its own. Even then
the classes hold well above the peak of what is live, since a free block
serves only requests up to its size and nothing can lend to the largest
classes.

    python3 crates/frostheap-bench/sim/class_peaks.py [ops] [seed]
"""

import math
import random
import sys


def class_sizes():
    sizes = []
    for c in range(48):
        if c < 8:
            sizes.append(16 * (c + 1))
        else:
            g, i = divmod(c - 8, 4)
            k = 7 + g
            sizes.append((1 << k) + (i + 1) * (1 << (k - 2)))
    return sizes


SIZES = class_sizes()


def class_of(n):
    for c, s in enumerate(SIZES):
        if s >= n:
            return c
    raise ValueError(n)


def run(ops, seed, borrow_classes=0, borrow_min=1024, borrow_after=8, borrow_run=1024,
        window=64, lo=16, hi=4096, max_ratio=1.5):
    """Returns (peak live KiB with a 16 B header each, class pages KiB,
    share of allocations that borrowed, borrows per block carved by the
    classes that borrow)."""
    rng = random.Random(seed)
    slots = [None] * window
    used = [0] * len(SIZES)
    carved = [0] * len(SIZES)
    run_of = [0] * len(SIZES)
    live = peak_live = borrowed = 0
    for i in range(ops):
        n = lo + rng.randrange(hi - lo + 1)
        old = slots[i % window]
        if old:
            used[old[1]] -= 1
            live -= old[0] + 16
        c = class_of(n)
        got = None
        if used[c] < carved[c]:
            got = c
        elif SIZES[c] >= borrow_min and carved[c] >= borrow_after and run_of[c] < borrow_run:
            for d in range(1, borrow_classes + 1):
                if c + d >= len(SIZES) or SIZES[c + d] > max_ratio * SIZES[c]:
                    break
                if used[c + d] < carved[c + d]:
                    got = c + d
                    borrowed += 1
                    run_of[c] += 1
                    break
        if got is None:
            got = c
            carved[c] += 1
            run_of[c] = 0
        used[got] += 1
        slots[i % window] = (n, got)
        live += n + 16
        peak_live = max(peak_live, live)
    pages = sum(math.ceil(carved[c] * SIZES[c] / 4096) * 4096 for c in range(len(SIZES)))
    lenders = sum(carved[c] for c in range(len(SIZES)) if SIZES[c] >= borrow_min)
    return peak_live / 1024, pages / 1024, borrowed / ops, borrowed / max(lenders, 1)


def main():
    ops = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    peak, pages, _, _ = run(ops, seed)
    print(f"peak live {peak:.0f} KiB; class pages {pages:.0f} KiB (segregated classes)")
    _, pages, share, per = run(ops, seed, borrow_classes=2)
    print(f"class pages {pages:.0f} KiB with borrowing ({share:.1%} of allocations borrow, "
          f"{per:.0f} borrows per block carved)")
    _, pages, share, per = run(ops, seed, borrow_classes=2, borrow_run=10**9)
    print(f"class pages {pages:.0f} KiB with borrowing and no cap on a run ({share:.1%} borrow, "
          f"{per:.0f} per block carved)")
    # The most any lending between classes can do: every class, from its
    # first block, takes a free block of any larger class, with no cap.
    _, pages, share, _ = run(ops, seed, borrow_classes=len(SIZES), borrow_min=0,
                             borrow_after=0, borrow_run=10**9, max_ratio=float("inf"))
    print(f"class pages {pages:.0f} KiB if any class took any larger free block "
          f"({share:.1%} borrow)")


if __name__ == "__main__":
    main()
