#!/usr/bin/env python3
"""What a coalescing allocator for the larger small blocks would hold in
the `local` case of the `threads` benchmark, against segregated classes
(see class_peaks.py, whose workload this replays).

Blocks up to THRESH bytes keep their segregated classes (each class holds
the most blocks it ever had live at once). Blocks above it are carved from
one run of GRAN-byte granules (a span's worth of address space and more,
for the whole thread), first fit or best fit from the lowest address, and
freed granules coalesce with their free neighbours at once, as glibc's
arena does. The resident figure of that part is every 4 KiB page a block
ever covered. Prints, per thread, the class pages of the small part and
the pages of the coalesced part, for two thresholds and two granule sizes.

    python3 crates/frostheap-bench/sim/coalesce.py [ops] [seed]
"""

import math
import random
import sys

from class_peaks import SIZES, class_of

PAGE = 4096


def run(ops, seed, thresh, gran, fit, window=64, lo=16, hi=4096, granules=4096):
    rng = random.Random(seed)
    slots = [None] * window
    used = [0] * len(SIZES)
    carved = [0] * len(SIZES)
    taken = [False] * granules
    touched = set()
    for i in range(ops):
        n = lo + rng.randrange(hi - lo + 1)
        old = slots[i % window]
        if old:
            if old[0] == "class":
                used[old[1]] -= 1
            else:
                for g in range(old[1], old[1] + old[2]):
                    taken[g] = False
        if n > thresh:
            k = math.ceil(n / gran)
            best = None
            j = 0
            while j < granules:
                if taken[j]:
                    j += 1
                    continue
                start = j
                while j < granules and not taken[j]:
                    j += 1
                if j - start >= k and (best is None or j - start < best[1]):
                    best = (start, j - start)
                    if fit == "first":
                        break
            start = best[0]
            for g in range(start, start + k):
                taken[g] = True
                touched.add(g * gran // PAGE)
                touched.add(((g + 1) * gran - 1) // PAGE)
            slots[i % window] = ("run", start, k)
        else:
            c = class_of(n)
            if used[c] == carved[c]:
                carved[c] += 1
            used[c] += 1
            slots[i % window] = ("class", c)
    small = sum(math.ceil(carved[c] * SIZES[c] / PAGE) * PAGE for c in range(len(SIZES)))
    return small // 1024, len(touched) * PAGE // 1024


def main():
    ops = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    for thresh in (512, 1024):
        for gran in (256, 512):
            for fit in ("first", "best"):
                small, coalesced = run(ops, seed, thresh, gran, fit)
                print(f"above {thresh} B coalesced in {gran} B granules, {fit} fit: "
                      f"classes {small} KiB + coalesced {coalesced} KiB = {small + coalesced} KiB")


if __name__ == "__main__":
    main()
