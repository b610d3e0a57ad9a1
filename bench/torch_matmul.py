"""Times PyTorch's torch.matmul on the products of a `hymba-eval bench matmul` report, in the
same layouts and dtypes, on the same GPU, and writes the report back with `torch_ms` and
`torch_tflops` added to every row (and the device name).

    python3 bench/torch_matmul.py matmul.json matmul_with_torch.json
"""
import json
import statistics
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def operand(rows, cols, transposed, dtype):
    if transposed:
        return torch.randn(cols, rows, device="cuda", dtype=dtype).t()
    return torch.randn(rows, cols, device="cuda", dtype=dtype)


def time_ms(fn, warmup, rounds, calls):
    """Median over rounds of (one round's event time) / calls: `calls` products queued back
    to back per round, as `hymba-eval bench matmul --calls` times ours."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    report = json.load(open(src))
    # Exact f32 like ours (allow_tf32 off); bf16/f16 accumulate in f32 either way.
    torch.backends.cuda.matmul.allow_tf32 = False
    for row in report["rows"]:
        dtype = DTYPES[row["dtype"]]
        a = operand(row["m"], row["k"], row["lhs_transposed"], dtype)
        b = operand(row["k"], row["n"], row["rhs_transposed"], dtype)
        ms = time_ms(lambda: torch.matmul(a, b), 3, report.get("rounds", 5), report.get("calls", 1))
        row["torch_ms"] = ms
        row["torch_tflops"] = 2.0 * row["m"] * row["n"] * row["k"] / ms / 1e9
        row["ours_pct_of_torch"] = 100.0 * row["ours_tflops"] / row["torch_tflops"]
        print(f'{row["name"]:<28} {row["dtype"]:>5} ours {row["ours_tflops"]:7.1f} '
              f'burn {row["burn_tflops"]:7.1f} torch {row["torch_tflops"]:7.1f} TFLOP/s '
              f'({row["ours_pct_of_torch"]:.0f} % of torch)')
        del a, b
    report["device_name"] = torch.cuda.get_device_name(0)
    report["torch_version"] = torch.__version__
    json.dump(report, open(dst, "w"), indent=2)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
