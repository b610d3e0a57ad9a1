#!/usr/bin/env bash
# GPU-machine session (see ../shared/GPU.md): binaries built here and staged in .gpu/,
# results written to $OUT. Usage: bash bench/gpu_session.sh <part>, part = kernels | matmul | train.
#   kernels: the CUDA scan-kernel and cuBLAS-matmul tests, `bench scan`;
#   matmul:  `bench matmul` at 8192³ and the 1.5B projections, then PyTorch on the same
#            products; the whole-model autodiff test of the kernels;
#   train:   `check` against the CPU, the 1.5B layout, hymba-125m training steps with and
#            without cuBLAS.
set -uo pipefail
OUT=${OUT:?set OUT}
part=${1:?kernels or train}
# The binaries travel gzipped (the working tree that is sent is capped at 64 MiB).
for f in .gpu/*.gz; do [ -f "$f" ] && gunzip -f "$f"; done
chmod +x .gpu/* 2>/dev/null
# cuBLAS: the system's, else the wheel PyTorch brought.
CUBLAS_DIR=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=${CUBLAS_DIR}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
ldconfig -p | grep -E 'libcublas(Lt)?\.so' | head -3; ls "$CUBLAS_DIR" 2>/dev/null | head -3

step() { echo; echo "=== $*"; local t0=$SECONDS; timeout "${LIMIT:-300}" "$@"; local rc=$?; echo "=== rc=$rc in $((SECONDS - t0)) s"; }

case $part in
kernels)
  LIMIT=120 step .gpu/scan_kernel --test-threads=1 2>&1 | tee "$OUT/test_scan_kernel_cuda.txt"
  LIMIT=120 step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | tee "$OUT/test_matmul_cuda.txt"
  LIMIT=200 step .gpu/hymba-eval bench scan --backend cuda --out "$OUT/scan_cuda.json" 2>&1 | tail -20
  ;;
matmul)
  LIMIT=300 step .gpu/hymba-eval bench matmul --backend cuda --presets hymba-1.5b --out "$OUT/matmul_cuda.json" 2>&1 | tail -60
  LIMIT=60 step python3 bench/torch_matmul.py "$OUT/matmul_cuda.json" "$OUT/matmul_h100.json"
  LIMIT=200 step .gpu/scan_kernel model_on_autodiff_gpu_equals_ndarray 2>&1 | tee "$OUT/test_model_autodiff_cuda.txt"
  ;;
torch)
  LIMIT=60 step python3 bench/torch_matmul.py bench/results/matmul_h100_ours_burn.json "$OUT/matmul_h100.json"
  ;;
train)
  [ "${CHECK:-1}" = 1 ] && LIMIT=120 step .gpu/hymba-eval check --backend cuda --preset hymba-125m --batch 2 --len 300
  [ "${PARAMS:-1}" = 1 ] && LIMIT=120 step .gpu/hymba-eval init --preset hymba-1.5b --dtype bf16 --out /tmp/h15
  [ "${PARAMS:-1}" = 1 ] && LIMIT=120 step .gpu/hymba-eval params --backend cuda --model /tmp/h15
  for mm in cublas burn; do
    run="model.preset=hymba-125m data.seq_len=2048 batch_size=8 steps=${STEPS:-8} valid_every=100000 checkpoint_every=100000 samples=0 log_every=1 out_dir=/tmp/run_$mm"
    if [ $mm = burn ]; then export HYMBA_MATMUL=burn; else unset HYMBA_MATMUL; fi
    LIMIT=${TRAIN_LIMIT:-200} step .gpu/hymba-train pretrain --backend ${BACKEND:-cuda} $run 2>&1 | tail -15 | tee "$OUT/train_125m_$mm.txt"
  done
  ;;
esac
