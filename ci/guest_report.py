#!/usr/bin/env python3
"""Reads the console log of CI's pkey guest run (ci/guest.sh) and says what
happened, briefly, after the full log:

- each command's exit status and wall time in the guest, and the timings of
  the whole guest part;
- every failed test, by name, with the first lines of its failure message;
- the pkey cases of the `it` runs: how many ran and passed, and by name any
  case that one run shows and the other does not; the job fails if one was
  skipped, or none ran, or the guest had no pku/ospke;
- the tests skipped for another need (mseal, AVX-512F, the source tree)
  with the reason, and the shuffle seed;
- the freeze benchmark's mprotect/pkey freeze + thaw ratios, measured within
  the guest (its absolute timings are emulated).

usage: guest_report.py LOG LABELS VM_EXIT BUILD_SECONDS VM_SECONDS [NOT_RUN ...]
(LABELS: a file with one name per command, in order.)
Exit status 0 only if everything ran and passed.
"""

import re
import sys

FAIL_LINES = 12


def sections(lines):
    """(index, command, rc, wall, lines) per command of the guest run."""
    out, cur = [], None
    for line in lines:
        m = re.match(r"^=== PKEY-VM: BEGIN (\d+): (.*)$", line)
        if m:
            cur = {"i": int(m.group(1)), "cmd": m.group(2), "rc": None, "wall": None, "lines": []}
            out.append(cur)
            continue
        m = re.match(r"^=== PKEY-VM: END (\d+) rc=(\d+) wall=([0-9.]+)s", line)
        if m and cur is not None:
            cur["rc"], cur["wall"] = int(m.group(2)), float(m.group(3))
            cur = None
            continue
        if cur is not None:
            cur["lines"].append(line)
    return out


LABELS = []


def label(cmd, i=None):
    if i is not None and 0 < i <= len(LABELS):
        return LABELS[i - 1]
    words = [w for w in cmd.split() if "=" not in w or w.startswith("-")]
    prog = words[0].rsplit("/", 1)[-1] if words else cmd
    prog = re.sub(r"-[0-9a-f]{16}$", "", prog)
    return " ".join([prog] + words[1:])


def failures(sec):
    """Failed test names and the first lines of each one's message."""
    names, started = [], None
    for line in sec["lines"]:
        m = re.match(r"^test (\S+) +\.\.\. (.*)$", line)
        if m:
            started = m.group(1)
            if m.group(2).startswith("FAILED"):
                names.append(started)
        elif line.strip() == "FAILED" and started:
            # One test thread: the verdict comes after the test's own output.
            names.append(started)
    messages = {}
    cur = None
    for line in sec["lines"]:
        m = re.match(r"^---- (\S+) .*----$", line)
        if m:
            cur = m.group(1)
            messages[cur] = []
            continue
        if cur is not None:
            if line.strip() == "failures:" or line.startswith("test result:"):
                cur = None
                continue
            if len(messages[cur]) < 400:  # printed: FAIL_LINES, and the gist
                messages[cur].append(line)
    return names, messages


def gist(lines, limit=8):
    """The lines of a failure message that say the most, for the closing
    summary: its first two, the exit status, and every panic with the line
    after it (a fixture's own assertion under the harness's), up to `limit`."""
    keep = set(range(min(2, len(lines))))
    for i, l in enumerate(lines):
        if l.startswith("status:") or "signal:" in l:
            keep.add(i)
        if "panicked at" in l:
            keep.update({i, i + 1})
    return [lines[i] for i in sorted(keep) if i < len(lines)][:limit]


PKEY_LINE = re.compile(
    r"pkey vs mprotect \((huge pages|4 KiB pages)\): (\S+ \S+): mprotect/pkey = ([0-9.]+)x(.*)$")


def freeze_ratios(lines):
    """The freeze benchmark's `pkey vs mprotect (<pages>): <size>: mprotect/pkey
    = <r>x (p10–p90 <a>–<b>)` lines, as (pages, size, ratio, spread); and its
    `not measurable` line, if any."""
    rows, unmeasurable = [], None
    for line in lines:
        m = PKEY_LINE.search(line)
        if m:
            rows.append((m.group(1), m.group(2), float(m.group(3)), m.group(4).strip()))
        elif "pkey vs mprotect: not measurable" in line:
            unmeasurable = line.strip("- ").strip()
    return rows, unmeasurable


def main():
    log, labels = sys.argv[1], sys.argv[2]
    vm_rc, build_s, vm_s = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    not_run = sys.argv[6:]
    try:
        LABELS.extend(open(labels, encoding="utf-8").read().splitlines())
    except OSError:
        pass
    try:
        text = open(log, encoding="utf-8", errors="replace").read()
    except OSError as e:
        print(f"\n=== guest: FAILED\n  - no console log of the guest ({e}); the VM runner exited {vm_rc}")
        return 1
    # Colour codes, should a program print them on the guest's terminal.
    text = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-Z\\-_a-z])", "", text)
    lines = text.splitlines()
    problems = []

    print("\n=== guest report")
    for line in lines:
        if line.startswith("=== PKEY-VM: kernel") or line.startswith("=== PKEY-VM: cpu flags") \
                or line.startswith("=== PKEY-VM: thp"):
            print("  " + line[len("=== PKEY-VM: "):])
    flags = next((l for l in lines if l.startswith("=== PKEY-VM: cpu flags:")), "")
    if not ("pku" in flags.split() and "ospke" in flags.split()):
        problems.append("the guest has no pku/ospke: " + (flags or "no cpu flags line"))

    secs = sections(lines)
    print("\n  command (in the guest)                                   exit   wall")
    for s in secs:
        rc = "-" if s["rc"] is None else str(s["rc"])
        wall = "-" if s["wall"] is None else f"{s['wall']:.1f}s"
        print(f"  {s['i']:>2}. {label(s['cmd'], s['i'])[:52]:<52} {rc:>5} {wall:>7}")
        if s["rc"] is None:
            problems.append(f"command {s['i']} ({label(s['cmd'], s['i'])}) did not finish (the VM stopped)")
        elif s["rc"] == 124:
            problems.append(f"command {s['i']} ({label(s['cmd'], s['i'])}) ran out of time")
        elif s["rc"] != 0:
            problems.append(f"command {s['i']} ({label(s['cmd'], s['i'])}) exited {s['rc']}")
    done = re.search(r"^=== PKEY-VM: DONE uptime=([0-9.]+)s", text, re.M)
    print(f"\n  timings: host-side build and collection {build_s}s; VM {vm_s}s"
          + (f" (guest uptime at the end {float(done.group(1)):.0f}s;"
             f" commands {sum(s['wall'] or 0 for s in secs):.0f}s)" if done else " (did not finish)"))

    for n in not_run:
        print(f"  not run in the guest: {n}")

    # Failed tests. Their names and first message lines are repeated in
    # the closing summary too: a CI record that keeps only the head and the
    # tail of the job's output still says why a test failed.
    failed_tests = []
    for s in secs:
        names, messages = failures(s)
        for n in names:
            print(f"\n  FAILED in command {s['i']} ({label(s['cmd'], s['i'])}): {n}")
            for l in messages.get(n, [])[:FAIL_LINES]:
                print("    | " + l)
            failed_tests.append((s['i'], n, gist(messages.get(n, []))))
        for l in s["lines"]:
            if "FAILED: still running after" in l:
                print(f"  TIME LIMIT in command {s['i']}: {l.strip()}")

    # The pkey cases of the `it` runs.
    it_runs = [s for s in secs if "FROSTHEAP_TEST_REQUIRE=pkey" in s["cmd"]]
    if not it_runs:
        problems.append("no `it` run with FROSTHEAP_TEST_REQUIRE=pkey in the guest")
    pkey_ran = []  # per `it` run: the pkey cases that ran, with their outcomes
    for s in it_runs:
        ran = ok = 0
        skipped = []
        outcomes = {}
        for l in s["lines"]:
            # Searched for anywhere in the line, not only at its start: the
            # console is shared, and another process's output without a
            # final newline (a child's, a raw write to stderr) may come
            # first on the line.
            m = re.search(r"test (\S+) +\.\.\. (ok|FAILED|ignored)(.*)$", l)
            if not m:
                continue
            name, outcome, rest = m.groups()
            if outcome == "ignored" and "needs pkey" in rest:
                skipped.append(name)
            elif "pkey" in name and outcome != "ignored":
                ran += 1
                ok += outcome == "ok"
                outcomes[name] = outcome
        pkey_ran.append((s, outcomes))
        machine = next((l for l in s["lines"] if l.startswith("this machine:")), "")
        seed = next((l for l in s["lines"] if l.startswith("shuffled with seed")), "")
        print(f"\n  {label(s['cmd'], s['i'])}: {ran} pkey cases ran, {ok} passed, {len(skipped)} skipped"
              + (f"; {seed}" if seed else ""))
        if machine:
            print(f"    {machine}")
        if "pkey yes" not in machine and s["rc"] is not None:
            problems.append(f"command {s['i']}: the test binary found no protection keys ({machine or 'no probe line'})")
        if skipped:
            problems.append(f"command {s['i']}: pkey cases were skipped in the guest: {', '.join(skipped)}")
        if ran == 0 and s["rc"] is not None:
            problems.append(f"command {s['i']}: no pkey case ran")
        in_skips = False
        for l in s["lines"]:
            if l.startswith("SKIPPED "):
                in_skips = True
            elif in_skips and not l.strip():
                in_skips = False
            if in_skips and not l.startswith("    "):
                print("    " + l.strip())

    # Both runs hold the same pkey cases (the second leaves out only tests
    # that guard no heap): name any case one of them lacks, so that a count
    # that differs explains itself. Not a failure: the command's exit
    # status already fails the job for a test that failed, and a result
    # line lost on the shared console is no failed test.
    unmatched = 0
    for (s1, o1), (s2, o2) in zip(pkey_ran, pkey_ran[1:]):
        for a, b, names in ((s1, s2, sorted(set(o1) - set(o2))), (s2, s1, sorted(set(o2) - set(o1)))):
            for n in names:
                unmatched += 1
                other = next((l.strip() for l in b["lines"] if re.search(rf"test {re.escape(n)}\b", l)), None)
                print(f"  a pkey case ran in command {a['i']} and not in command {b['i']}: {n}"
                      + (f" (there: {other!r})" if other else " (no line names it there)"))

    # The freeze benchmark.
    bench = [s for s in secs if "--budget-ms" in s["cmd"]]
    if bench:
        rows, unmeasurable = freeze_ratios(bench[0]["lines"])
        if unmeasurable:
            problems.append(f"the freeze benchmark in the guest: {unmeasurable}")
        elif not rows:
            problems.append("the freeze benchmark printed no `pkey vs mprotect (...): ...` line")
        else:
            print("\n  freeze + thaw in the guest, mprotect over pkey, median of per-round ratios"
                  " (TCG timings: only ratios within this run mean something):")
            for pages, size, ratio, spread in rows:
                print(f"    mprotect ({pages}) / pkey at {size}: {ratio:.2f}x {spread}")

    if vm_rc == 3 and not any("pku" in p for p in problems):
        problems.append("the guest has no pku/ospke")
    elif vm_rc == 124:
        problems.append("the VM ran out of time")
    elif vm_rc not in (0, 1, 3):
        problems.append(f"the VM runner failed (exit {vm_rc})")
    elif vm_rc == 1 and not problems:
        problems.append("the guest run failed (see the log above)")

    if problems:
        print("\n=== guest: FAILED")
        for p in problems:
            print("  - " + p)
        for i, n, lines in failed_tests:
            print(f"  - test {n} failed in command {i}:")
            for l in lines:
                print("      | " + l)
        return 1
    print("\n=== guest: all commands passed; every pkey case ran"
          + (f" ({unmatched} not seen in both `it` runs: see above)" if unmatched else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
