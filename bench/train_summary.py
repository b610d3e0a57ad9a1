#!/usr/bin/env python3
"""Summarise hymba-train runs for bench/results: the median tokens/s and MFU of the steps
after the first (the first compiles kernels), the run's own median step time (all steps),
and the data-parallel scaling against a one-device run of the same shape on the same machine.

usage: train_summary.py OUT.json DEVICE_NAME MODEL BATCH SEQ ONE_GPU_LOG [MULTI_GPU_LOG]
BATCH is the global batch per optimizer step of the one-device run. A NOTE environment
variable, when set, is stored as the report's "note".
"""
import json
import os
import re
import statistics
import sys


def steps(path):
    """(tokens/s, MFU %) of every logged step but the first."""
    rows = []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"step (\d+)/\d+ \|.*Throughput (\d+) tok/s \| MFU ([0-9.e+-]+) %", line)
        if m and int(m.group(1)) > 1:
            rows.append((float(m.group(2)), float(m.group(3))))
    if not rows:
        sys.exit(f"{path}: no steps after the first")
    return rows


def run_median_step_time(path):
    """The run's own "median step time" line (all steps), in seconds, or None."""
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"median step time:\s+([0-9.]+) s", line)
        if m:
            return float(m.group(1))
    return None


def main():
    out, device, model, batch, seq, one = sys.argv[1:7]
    multi = sys.argv[7] if len(sys.argv) > 7 else None
    single = steps(one)
    report = {
        "model": model,
        "device_name": device,
        "batch": int(batch),
        "seq": int(seq),
        "tokens_per_s": statistics.median(r[0] for r in single),
        "mfu_pct": statistics.median(r[1] for r in single),
        "steps_timed": len(single),
        "run_median_step_time_s": run_median_step_time(one),
        "source": one,
    }
    if os.environ.get("NOTE"):
        report["note"] = os.environ["NOTE"]
    if multi:
        rows = steps(multi)
        tps = statistics.median(r[0] for r in rows)
        report.update(
            ddp_tokens_per_s=tps,
            ddp_steps_timed=len(rows),
            ddp_scaling=tps / report["tokens_per_s"],
            ddp_source=multi,
        )
    json.dump(report, open(out, "w"), indent=2)
    print(json.dumps(report, indent=2))


main()
