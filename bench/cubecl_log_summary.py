#!/usr/bin/env python3
"""Summarises a CubeCL log written with a `cubecl.toml` in the working directory (session 10's
device calls wrote one before a `bench step` run; see bench/results/README.md).

    cubecl_log_summary.py profile LOG OUT.json [TOP]
        LOG holds CubeCL's profiling lines, `| <duration> | <kernel name>` (one per kernel
        launch, written with `[profiling.logger] level = "basic"` in cubecl.toml). Writes the
        kernels' total time grouped by name (the name's first line, cut at 160 characters),
        largest first, with launches and share of the total; prints the TOP (default 30).

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


def profile(lines):
    totals = {}
    for line in lines:
        m = DURATION.match(line)
        if not m:
            continue
        ms = float(m.group(1)) * UNITS[m.group(2)]
        name = m.group(3)[:160]
        count, total = totals.get(name, (0, 0.0))
        totals[name] = (count + 1, total + ms)
    grand = sum(t for _, t in totals.values()) or 1.0
    rows = [
        {"kernel": k, "launches": c, "total_ms": round(t, 3), "pct": round(100 * t / grand, 2)}
        for k, (c, t) in sorted(totals.items(), key=lambda kv: -kv[1][1])
    ]
    return {"total_ms": round(grand, 3), "kernels": rows}


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
    if len(sys.argv) < 4 or sys.argv[1] not in ("profile", "compile"):
        sys.exit(__doc__)
    mode, log, out = sys.argv[1:4]
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    with open(log, encoding="utf-8", errors="replace") as f:
        summary = profile(f) if mode == "profile" else compile_(f)
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    head = {k: v for k, v in summary.items() if k != "kernels"}
    print(mode, head)
    for row in summary["kernels"][:top]:
        print("  ", row)


if __name__ == "__main__":
    main()
