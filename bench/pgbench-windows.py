#!/usr/bin/env python3
"""tps of a pgbench run (-P 1) in the windows of bench/snapshot-cost.sh.

Usage: pgbench-windows.py PGBENCH_OUT WINDOW_SECONDS [LABEL]

The run is 5 windows with a snapshot at the start of windows 3 and 5.
Without LABEL: prints "before after", the mean tps over the windows just
before the snapshots and just after them (integers). With LABEL: prints
LABEL, after/before, and the first second, seconds 2-4 and seconds
5-WINDOW after the snapshots as fractions of before (tab-separated).
"""
import re
import sys

path, w = sys.argv[1], int(sys.argv[2])
tps = {}
for line in open(path):
    m = re.match(r"progress: ([0-9.]+) s, ([0-9.]+) tps", line)
    if m:
        tps[round(float(m.group(1)))] = float(m.group(2))


def mean(a, b):
    return sum(tps.get(t, 0) for t in range(a + 1, b + 1)) / (b - a)


before = (mean(w, 2 * w) + mean(3 * w, 4 * w)) / 2
after = (mean(2 * w, 3 * w) + mean(4 * w, 5 * w)) / 2
if len(sys.argv) < 4:
    print(int(before), int(after))
else:
    def part(a, b):
        return (mean(2 * w + a, 2 * w + b) + mean(4 * w + a, 4 * w + b)) / 2 / before

    print(f"{sys.argv[3]}\t{after / before:.2f}\t{part(0, 1):.2f}\t{part(1, 4):.2f}\t{part(4, w):.2f}")
