#!/usr/bin/env python3
"""Per-thread summary of folded stacks (`thread;outermost;...;innermost count` per line), as
`hymba-train --cpu-profile FILE` writes them (see hymba-train/src/profile.rs).

Usage: folded_summary.py FILE [TOP]

For each thread (the main thread, burn's fusion server `DSU-…`, cubecl's device server
`DSD-…`): its share of the samples, then the functions by inclusive share (a function
counted once per stack) and by self share (the innermost frame). Generic arguments and
symbol hashes are dropped from the names.
"""
import collections
import gzip
import re
import sys


def short(frame):
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    for _ in range(4):
        frame = re.sub(r"<[^<>]*>", "", frame)
    return frame


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    opener = gzip.open if path.endswith(".gz") else open
    threads = collections.defaultdict(list)
    for line in opener(path, "rt", errors="replace"):
        stack, count = line.rstrip("\n").rsplit(" ", 1)
        frames = stack.split(";")
        threads[frames[0]].append(([short(f) for f in frames[1:]], int(count)))
    totals = {t: sum(n for _, n in s) for t, s in threads.items()}
    grand = sum(totals.values())
    for thread, stacks in sorted(threads.items(), key=lambda x: -totals[x[0]]):
        total = totals[thread]
        if total < grand / 100:
            continue
        inclusive, itself = collections.Counter(), collections.Counter()
        for frames, n in stacks:
            for f in set(frames):
                inclusive[f] += n
            if frames:
                itself[frames[-1]] += n
        print(f"== {thread}: {total} samples ({100 * total / grand:.1f} %)")
        print("  inclusive:")
        for f, n in inclusive.most_common(top):
            print(f"    {100 * n / total:5.1f} %  {f[-120:]}")
        print("  self:")
        for f, n in itself.most_common(10):
            print(f"    {100 * n / total:5.1f} %  {f[-120:]}")


if __name__ == "__main__":
    main()
