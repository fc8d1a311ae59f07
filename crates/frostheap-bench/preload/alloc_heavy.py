# Allocation-heavy Python: dicts, lists and strings that outgrow pymalloc's
# 512-byte arenas, so the C allocator does real work.
import sys

def run(rounds):
    total = 0
    for r in range(rounds):
        d = {}
        for i in range(60000):
            key = "key-%d-%d" % (r, i)
            d[key] = [i, str(i) * (i % 40), {"n": i, "s": key * 3}]
        lists = [list(range(i % 300)) for i in range(20000)]
        text = "".join(str(x) for x in range(100000))
        parts = text.split("9")
        big = [s * 20 for s in parts[:5000]]
        total += len(d) + sum(map(len, lists)) + len(parts) + sum(map(len, big))
        del d, lists, text, parts, big
    return total

print(run(int(sys.argv[1]) if len(sys.argv) > 1 else 4))
