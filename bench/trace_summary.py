#!/usr/bin/env python3
"""Summarise a CUDA activity trace of hymba-train pretraining steps.

Usage: trace_summary.py TRACE OUT.json [TOP] [SKIP] [STEPS] [PER_STEP]

TRACE is the text trace of `bench/cupti_trace.c` (the GPU box's `nsys` cannot import its
own traces).

Step boundaries are the trainer's scalar read-backs (device-to-host copies of the loss and
the gradient norm: PER_STEP, default 2, per step with `log_every=1`) of a run of STEPS
(default 8) steps. The first SKIP steps (default 3: compilation and autotuning) are left
out; over the steps after them, but the last, the script prints and writes:
- wall time per step, and how much of it the GPU was busy (the union of kernel and copy
  intervals on every stream), so host-bound stretches show as idle time;
- the idle gaps by length (how much idle time lies in gaps under 10 µs, 10–100 µs, ...);
- kernels per step and host time in the launch API per launch;
- kernels grouped by name and grid (CubeCL kernels share a few names), true GPU durations
  (not serialised the way CubeCL's own profiler times them), cuBLAS kernels included.
"""
import json
import os
import sys
from collections import defaultdict


def union_length(intervals):
    """Total length covered by (start, end) intervals, and the gaps between them."""
    total, gaps, cur_s, cur_e = 0, [], None, None
    for s, e in sorted(intervals):
        if cur_e is None:
            cur_s, cur_e = s, e
        elif s > cur_e:
            total += cur_e - cur_s
            gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total, gaps


def load_text(path):
    """Kernels, copies and driver API calls from `bench/cupti_trace.c`'s text lines (K, M and
    A records), each list in time order."""
    kernels, copies, api = [], [], []
    for line in open(path, errors="replace"):
        f = line.split(" ", 11)
        if f[0] == "K" and len(f) == 12:
            kernels.append((int(f[1]), int(f[2]), f[11].strip()) + tuple(int(x) for x in f[3:10]))
        elif f[0] == "M" and len(f) >= 6:
            copies.append((int(f[1]), int(f[2]), int(f[3]), int(f[4])))
        elif f[0] == "A" and len(f) >= 5:
            api.append((int(f[1]), int(f[2]), f[4].strip()))
    kernels.sort()
    copies.sort()
    return kernels, copies, api


def main():
    path, out = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    skip = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    per_step = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    kernels, copies, api = load_text(path)
    # Device-to-host copies (copyKind 2) of one scalar mark the steps: with `log_every=1`
    # the trainer reads the loss and the gradient norm once each per step (PER_STEP marks).
    # Reads less than 50 ms apart count once.
    marks = []
    for c in copies:
        if c[2] == 2 and c[3] <= 8 and (not marks or c[0] - marks[-1] > 50e6):
            marks.append(c[0])
    print(f"kernels {len(kernels)}, copies {len(copies)}, scalar read-backs {len(marks)}")
    # Step k (from 0) starts at marks[k * per_step]; the window is steps skip .. steps - 2
    # (the last step's end has no mark of its own: what follows is the end of the run).
    last = min(steps - 1, (len(marks) - 1) // per_step)
    if last <= skip:
        sys.exit(f"too few step marks ({len(marks)}) for {steps} steps, skipping {skip}")
    t0, t1 = marks[skip * per_step], marks[last * per_step]
    nsteps = last - skip
    span = t1 - t0
    win_k = [k for k in kernels if k[0] >= t0 and k[1] <= t1]
    win_c = [c for c in copies if c[0] >= t0 and c[1] <= t1]
    busy, gaps = union_length([(k[0], k[1]) for k in win_k] + [(c[0], c[1]) for c in win_c])
    buckets = [(0, 1e4), (1e4, 1e5), (1e5, 1e6), (1e6, 1e7), (1e7, 1e12)]
    gap_hist = {
        f"{int(lo / 1e3)}us-{int(hi / 1e3) if hi < 1e12 else 'inf'}us": round(
            sum(g for g in gaps if lo <= g < hi) / 1e6 / nsteps, 2
        )
        for lo, hi in buckets
    }
    # The cuBLAS ordering's wait kernels spin while the other stream works (or waits for the
    # host): busy time without them is the device's real work.
    waits = ("hymba_flag_wait", "wait_flag")
    busy_real, _ = union_length([(k[0], k[1]) for k in win_k if not k[2].startswith(waits)])
    kern_sum = sum(k[1] - k[0] for k in win_k)
    groups = defaultdict(lambda: [0, 0])
    for k in win_k:
        key = f"{k[2][:48]} g({k[3]},{k[4]},{k[5]}) b({k[6]},{k[7]},{k[8]})"
        groups[key][0] += 1
        groups[key][1] += k[1] - k[0]
    per_api = defaultdict(lambda: [0, 0])
    for s, e, n in api:
        if s >= t0 and e <= t1:
            per_api[n][0] += 1
            per_api[n][1] += e - s
    launches = sorted(((n, c, t) for n, (c, t) in per_api.items()), key=lambda x: -x[2])[:15]
    report = {
        "device_name": os.environ.get("DEVICE", ""),
        "note": os.environ.get("NOTE", ""),
        "steps": nsteps,
        "step_ms": round(span / 1e6 / nsteps, 2),
        "gpu_busy_ms_per_step": round(busy / 1e6 / nsteps, 2),
        "gpu_busy_pct": round(100 * busy / span, 1),
        "gpu_busy_ms_per_step_without_flag_waits": round(busy_real / 1e6 / nsteps, 2),
        "kernel_ms_per_step": round(kern_sum / 1e6 / nsteps, 2),
        "kernels_per_step": round(len(win_k) / nsteps, 1),
        "idle_ms_per_step_by_gap": gap_hist,
        "api_per_step": [
            {"api": n, "calls": round(c / nsteps, 1), "ms": round(t / 1e6 / nsteps, 2)}
            for n, c, t in launches
        ],
        "kernels": [
            {"kernel": key, "per_step": round(c / nsteps, 1), "ms_per_step": round(t / 1e6 / nsteps, 3),
             "mean_us": round(t / c / 1e3, 1)}
            for key, (c, t) in sorted(groups.items(), key=lambda x: -x[1][1])[:top]
        ],
    }
    json.dump(report, open(out, "w"), indent=1)
    for k, v in report.items():
        if k not in ("kernels", "api_per_step"):
            print(f"{k}: {v}")
    print("host API per step:")
    for a in report["api_per_step"]:
        print(f"  {a['api'][:40]:40} {a['calls']:8} calls {a['ms']:9} ms")
    print("kernels per step:")
    for k in report["kernels"]:
        print(f"  {k['kernel'][:90]:90} {k['per_step']:7} {k['ms_per_step']:9} ms {k['mean_us']:9} us")


if __name__ == "__main__":
    main()
