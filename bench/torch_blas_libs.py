"""PyTorch's matmul on the products of a `hymba-eval bench matmul` JSON, once through cuBLAS
and once through cuBLASLt (`torch.backends.cuda.preferred_blas_library`), timed as
`torch_matmul.py` times it. Says which library (and so which kernel choice) reaches the
figures that `torch_matmul.py` reports.

Usage: python3 bench/torch_blas_libs.py <bench matmul JSON> <output JSON>
"""
import json
import sys

import torch

from torch_matmul import DTYPES, operand, time_ms


def main():
    src, dst = sys.argv[1], sys.argv[2]
    report = json.load(open(src))
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for row in report["rows"]:
        dtype = DTYPES[row["dtype"]]
        a = operand(row["m"], row["k"], row["lhs_transposed"], dtype)
        b = operand(row["k"], row["n"], row["rhs_transposed"], dtype)
        out = {"name": row["name"], "m": row["m"], "n": row["n"], "k": row["k"], "dtype": row["dtype"]}
        for lib in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(lib)
            ms = time_ms(lambda: torch.matmul(a, b), 3, report.get("rounds", 5), report.get("calls", 1))
            out[f"{lib}_ms"] = ms
            out[f"{lib}_tflops"] = 2.0 * row["m"] * row["n"] * row["k"] / ms / 1e9
        print(f'{row["name"]:<28} cublas {out["cublas_tflops"]:7.1f}  cublasLt {out["cublaslt_tflops"]:7.1f} TFLOP/s')
        rows.append(out)
        del a, b
    json.dump({"device_name": torch.cuda.get_device_name(0), "torch_version": torch.__version__,
               "rows": rows}, open(dst, "w"), indent=2)


if __name__ == "__main__":
    main()
