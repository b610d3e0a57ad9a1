#!/usr/bin/env python3
"""Summarises a CubeCL log written with a `cubecl.toml` in the working directory (`bash bench/gpu.sh
profile` writes one before three trainer steps).

    cubecl_log_summary.py profile LOG OUT.json [TOP]
        LOG holds CubeCL's profiling lines, `| <duration> | <kernel name>` (one per kernel
        launch, written with `[profiling.logger] level = "basic"` in cubecl.toml). Writes the
        kernels' total time grouped by name (the name's first line, cut at 160 characters),
        largest first, with launches and share of the total; prints the TOP (default 30).

    cubecl_log_summary.py launches LOG OUT.json [TOP]
        LOG written with `level = "full"`: each launch's record also holds the kernel's id
        (for a fused kernel, the fused operations) and its `CubeCount`. Groups launches by
        kernel name and cube count (the launch's size), largest total first, so that two
        runs of the same step can be compared launch size by launch size.

    cubecl_log_summary.py sequence LOG OUT.txt [COUNT]
        The first COUNT (default 2000) launches of a `full`-level LOG in order, one line
        each (duration, kernel name, cube count): which operations sit around a kernel.

    cubecl_log_summary.py compile LOG OUT.json [TOP]
        LOG holds CubeCL's compilation log (`[compilation.logger] level = "basic"`): one
        `[Compiling kernel] <type path>` line per kernel compiled. Counts them by kernel
        type, so that many variants of one kernel show as one row.
"""
import json
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
DURATION = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*(.+?)\s*$")


def grouped(items, label):
    """Totals `(key, ms)` pairs by key: rows with launches, total and mean time, and each
    key's share of the whole, largest total first; `label` names the key column."""
    totals = {}
    for key, ms in items:
        count, total = totals.get(key, (0, 0.0))
        totals[key] = (count + 1, total + ms)
    grand = sum(t for _, t in totals.values()) or 1.0
    rows = [
        {label: k, "launches": c, "total_ms": round(t, 3), "mean_us": round(1e3 * t / c, 1),
         "pct": round(100 * t / grand, 2)}
        for k, (c, t) in sorted(totals.items(), key=lambda kv: -kv[1][1])
    ]
    return {"total_ms": round(grand, 3), "kernels": rows}


def profile(lines):
    """Groups `basic`-level lines by kernel name (its first line, cut at 160 characters)."""
    matches = (DURATION.match(line) for line in lines)
    return grouped(
        ((m.group(3)[:160], float(m.group(1)) * UNITS[m.group(2)]) for m in matches if m),
        "kernel",
    )


def records(lines):
    """`(ms, name, cube count)` of each `full`-level record, in launch order."""
    count_re = re.compile(r"CubeCount\s*(\S.*?)\s*$")
    record = None
    for line in lines:
        m = DURATION.match(line)
        if m:
            if record is not None:
                yield record
            # `path::to::Kernel<Runtime>: id ...`: the type's last path segment.
            name = re.sub(r"<.*", "", m.group(3).split(": ", 1)[0]).split("::")[-1]
            record = [float(m.group(1)) * UNITS[m.group(2)], name, "?"]
            line = m.group(3)
        if record is not None and "CubeCount" in line:
            c = count_re.search(line)
            record[2] = c.group(1)[:60] if c else "?"
    if record is not None:
        yield record


def launches(lines):
    """Groups `full`-level records by kernel name and cube count."""
    return grouped(
        ((f"{name[:60]} @ {count}", ms) for ms, name, count in records(lines)), "launch"
    )


def compile_(lines):
    entry = re.compile(r"^\[Compiling kernel\]\s+(\S+)")
    counts = {}
    for line in lines:
        m = entry.match(line)
        if m:
            name = m.group(1)
            counts[name] = counts.get(name, 0) + 1
    rows = [{"kernel": k, "compiled": c} for k, c in sorted(counts.items(), key=lambda kv: -kv[1])]
    return {"compiled": sum(counts.values()), "kernels": rows}


def main():
    modes = {"profile": profile, "launches": launches, "compile": compile_}
    if len(sys.argv) >= 4 and sys.argv[1] == "sequence":
        count = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
        with open(sys.argv[2], encoding="utf-8", errors="replace") as f, open(sys.argv[3], "w") as out:
            for i, (ms, name, cubes) in enumerate(records(f)):
                if i >= count:
                    break
                out.write(f"{i:6d} {ms:10.3f} ms  {name} @ {cubes}\n")
        return
    if len(sys.argv) < 4 or sys.argv[1] not in modes:
        sys.exit(__doc__)
    mode, log, out = sys.argv[1:4]
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    with open(log, encoding="utf-8", errors="replace") as f:
        summary = modes[mode](f)
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    head = {k: v for k, v in summary.items() if k != "kernels"}
    print(mode, head)
    for row in summary["kernels"][:top]:
        print("  ", row)


if __name__ == "__main__":
    main()
