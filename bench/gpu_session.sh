#!/usr/bin/env bash
# GPU-machine session (see ../shared/GPU.md): binaries built here and staged in .gpu/,
# results written to $OUT. Usage: bash bench/gpu_session.sh <part>,
# part = kernels | matmul | train | post | generate.
#   kernels: the CUDA scan-kernel and cuBLAS-matmul tests, `bench scan`;
#   matmul:  `bench matmul` at 8192³ and the 1.5B projections, then PyTorch on the same
#            products; the whole-model autodiff test of the kernels;
#   train:   `check` against the CPU, the 1.5B layout, hymba-125m training steps with and
#            without cuBLAS.
#   post:    hymba-125m pretraining steps at micro-batch MB × accumulation ACC (cuBLAS and
#            burn's matmul), then one SFT and one DPO run of a few steps (needs the LLaMA-2
#            tokenizer and the data files staged in .gpu/).
#   generate: `bench generate` for hymba-1.5b vs the equal-size attention baseline at 8K.
#   split:   the scan-kernel tests, `bench scan` with and without the time-split forward.
#   diag:    where a CUDA training step's time goes (GPU utilisation, compile/autotune log).
#   steps:   hymba-125m SFT and DPO step times with the persistent kernel cache: a cold run
#            (fills the cache), the same run warm, then DPO; the cache is copied to $OUT.
#   breakdown: `bench step` for hymba-125m at micro-batch 2 × 2048 (where a step's time goes).
#   parallel: `bench scan` for the time-parallel scan kernels (KERNELS, default parallel and
#            tiled), then the scan-kernel tests on CUDA (the kernel-level ones, `kernel_`).
#   profile: `bench scan` for every kernel variant, Nsight Compute on the time-parallel
#            kernels (when `ncu` is installed and allowed), then hymba-125m pretraining on one
#            GPU with each step's phases timed (HYMBA_STEP_TIMES=1), f32 and bf16.
#   ddp:     hymba-125m pretraining on one GPU and data-parallel on two (nvidia-h100-x2),
#            with a kernel cache carried in .gpu/kernel-cache.tgz if there is one.
#   order, order2, order3: session 7's calls (cuBLAS ordering: tests with the mutation
#            check, `bench matmul` with PyTorch, `bench scan --kernel all`, Nsight Compute
#            on the parallel forward, `bench step` per ordering).
#   flagstep: `bench step` with host syncs (fills the kernel cache), then with the flag
#            ordering under a watchdog that dumps every thread's stack if it stalls.
#   planes:  session 8: the scan-kernel tests on CUDA, `bench scan` with and without the
#            plane-shuffle paths, Nsight Compute on the plane forward and the backward.
#   launches: session 12: hymba-125m bf16 at 8 × 2048, the trainer (phases timed, then
#            plain, summarised by train_summary.py) and `bench step --step-only`, then one
#            `bench step` round and three trainer steps under CubeCL's `full`-level profiler,
#            grouped by kernel and size (`cubecl_log_summary.py launches`) and listed in order
#            (`sequence`), so the two can be compared launch by launch.
#   s13:     session 13: the cuBLAS tests, `check`, hymba-125m bf16 8 × 2048 trainer runs
#            (phases, plain, host-synced products as the baseline), `bench step`, hymba-350m,
#            and a `full`-level profile of three trainer steps (PHASES=0, SYNC=0, M350=0,
#            PROFILE=0 leave parts out).
#   s13ab:   session 13: the LM head's vocabulary padding on and off (HYMBA_PAD_VOCAB=0) in
#            alternating trainer runs and `bench step`, hymba-125m bf16 8 × 2048.
#   s14:     session 14: the channel-sequential scan kernels. The scan-kernel tests on CUDA
#            (TEST_KERNELS, default channel; the whole-model autodiff test), `bench scan` for
#            KERNELS (default channel parallel) in both layouts and for the channel kernels
#            with HYMBA_SCAN_LANES in LANES (default none), then hymba-125m bf16 8 × 2048
#            trainer runs alternating the default (channel) and HYMBA_SCAN_KERNEL=parallel
#            (ROUNDS, default 2), and `bench step` each way, alternating (STEP_ROUNDS,
#            default 1; BENCH_STEP=0 leaves it out).
#   s14prof: session 14: three hymba-125m bf16 8 × 2048 trainer steps under CubeCL's
#            `full`-level profiler with HYMBA_SCAN_KERNEL=channel and =parallel, grouped by
#            kernel and size (`cubecl_log_summary.py launches`), to find where the channel
#            kernels' steps lose the time their scan gains.
#   s14step: session 14: `bench step --step-only` for hymba-125m bf16 8 × 2048 with
#            HYMBA_SCAN_KERNEL=channel and =parallel, alternating ROUNDS (default 3) times.
#   s18:     session 18, the issues' evidence on the committed build (each part can be
#            left out with =0): TESTS: the matmul GPU tests; MATMUL: `bench matmul` at
#            8192³ and the 1.5B projections, then PyTorch on the same products (#5); STEP:
#            `bench step` hymba-125m bf16 8 x 2048 with the model's matmul and with
#            HYMBA_MATMUL=burn, alternating STEP_ROUNDS (default 1) times (#5's step-time
#            change); SCAN: `bench scan` with the default kernels, time layout, no
#            reference (#4).
#   s19:     session 19, the warp-per-channel scan kernels (hymba/src/scan/warp.rs, opt-in
#            with HYMBA_SCAN_WARP=1): the scan-kernel tests on CUDA (TESTS, a test-name
#            filter, default "kernel": the kernel-level ones and warp_kernels_equal_reference;
#            TESTS=0 leaves them out), then `bench scan`, time layout, no reference, for each
#            of VARIANTS (default "warp cube"): warp = HYMBA_SCAN_WARP=1, cube = the
#            default (session 18's cube-per-channel plane kernels), i16 / i4 = warp at 16 / 4
#            steps per unit, w2 / w8 = warp at 2 / 8 planes per cube; SHAPES=full|quick.
#   s15trace: session 15: hymba-125m bf16 8 × 2048 trainer steps under a CUPTI activity
#            trace (bench/cupti_trace.c), summarised by bench/trace_summary.py: GPU idle
#            time per step, true kernel durations with cuBLAS, launches per step.
#   s15prof: session 15: host CPU profile (pprof stacks) of hymba-125m trainer steps.
#   s17:     session 17: packed gradients and AdamW. The GPU tests (TESTS=0 leaves them
#            out); hymba-125m bf16 8 x 2048 trainer runs with each step's phases timed
#            (PHASES=0: plain), alternating VARIANTS (default: new = this build, s16 =
#            .gpu/hymba-train.s16, session 16's tensor-by-tensor clipping and AdamW, stream =
#            this build with HYMBA_MATMUL_ORDER=stream) ROUNDS (default 2) times; with two
#            GPUs, data-parallel on both against one (DDP=0 leaves it out); `bench step`
#            (BENCH_STEP=0 leaves it out). Within the 600 s of one call: TESTS=1 VARIANTS=new
#            ROUNDS=1 DDP=0 BENCH_STEP=0, then TESTS=0 BENCH_STEP=0 (and DDP=0 on one GPU).
#   s15mem:  session 15: hymba-125m trainer steps with cubecl's pooled and persistent memory.
#   s15:     session 15, the committed build: model tests, the trainer with and without
#            hymba::FixedShapeMemory, `bench step`.
#   s15flags: session 15: the matmul GPU tests, then the trainer with one cubecl flag kernel
#            per cuBLAS product (.gpu/hymba-train) and two (.gpu/hymba-train.old). The
#            one-kernel build hung (see bench/results/README.md) and was not committed.
#   s16:     session 16: cuBLAS on cubecl's own stream (HYMBA_MATMUL_ORDER=stream, found
#            through CUPTI), the RMS-norm and SSM-conv operations. With TESTS=1 (the default)
#            the matmul GPU tests (every ordering against host syncs, on one and on two cubecl
#            streams) and the scan-kernel binary's norm, conv, softmax and model tests; then
#            hymba-125m bf16 8 x 2048 trainer steps for each of VARIANTS (default: base stream
#            tensorboth; stream = the stream ordering, tensornorm = HYMBA_RMS_NORM=tensor,
#            tensorconv = HYMBA_SSM_CONV=tensor, tensorboth = both, i.e. the model as of
#            session 15; any other word is passed to `env`), alternating ROUNDS times; `bench
#            step` (BENCH_STEP=0 leaves it out). Within the 600 s of one call: TESTS=1
#            VARIANTS=base ROUNDS=1 BENCH_STEP=0, then TESTS=0.
set -uo pipefail
OUT=${OUT:?set OUT}
part=${1:?kernels or train}
# The binaries travel gzipped or xz-compressed (the working tree that is sent is capped
# at 64 MiB).
for f in .gpu/*.gz; do [ -f "$f" ] && gunzip -f "$f"; done
for f in .gpu/*.xz; do [ -f "$f" ] && python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f" && rm -f "$f"; done
chmod +x .gpu/* 2>/dev/null
# cuBLAS: the system's, else the wheel PyTorch brought.
CUBLAS_DIR=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=${CUBLAS_DIR}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
ldconfig -p | grep -E 'libcublas(Lt)?\.so' | head -3; ls "$CUBLAS_DIR" 2>/dev/null | head -3

# The persistent kernel cache (see README): carried in .gpu/kernel-cache.t{gz,xz}.part-*
# between calls (PTX text: xz makes it 2.4× smaller than gzip), with cubecl's autotune
# cache (`target/autotune`, which cubecl keeps under the nearest Cargo project's target/):
# without it every call benchmarks ~20 matmul kernels per shape that burn's matmul serves
# (bf16: the LM head's and the small products), minutes per call.
use_cache() {
  export CUBECL_AUTOTUNE_LEVEL=minimal HYMBA_KERNEL_CACHE=$PWD/target/kernel-cache
  if [ ! -d "$HYMBA_KERNEL_CACHE" ]; then
    mkdir -p target
    if ls .gpu/kernel-cache.txz* >/dev/null 2>&1; then
      cat .gpu/kernel-cache.txz* | python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))' | tar x -C target
    elif ls .gpu/kernel-cache.tgz* >/dev/null 2>&1; then
      cat .gpu/kernel-cache.tgz* | tar xz -C target
    fi
  fi
}
# Files come back from $OUT at 16 MiB at most: the cache travels in 15 MB parts.
save_cache() {
  local xz="python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.compress(sys.stdin.buffer.read(), preset=2))'"
  command -v xz >/dev/null && xz="xz -T0 -4"
  tar c -C target kernel-cache $(cd target && ls -d autotune 2>/dev/null) 2>/dev/null | eval "$xz" \
    | split -b 15M - "$OUT/kernel-cache.txz.part-"
  ls -la "$OUT"/kernel-cache.txz.part-*
}
step() { echo; echo "=== $*"; local t0=$SECONDS; timeout "${LIMIT:-300}" "$@"; local rc=$?; echo "=== rc=$rc in $((SECONDS - t0)) s"; }

case $part in
planes)
  # Session 8: the plane-shuffle paths of the time-parallel scan. 1. the scan-kernel tests
  # on CUDA (kernel level: both paths, several planes and chunks); 2. `bench scan` for every
  # kernel with the plane paths, then the time-parallel kernels without them
  # (HYMBA_SCAN_PLANES=0); 3. Nsight Compute on the plane forward and the backward.
  use_cache
  if [ -x .gpu/scan_kernel ]; then
    LIMIT=${TEST_LIMIT:-200} step .gpu/scan_kernel --test-threads=1 ${TESTS:-kernel_} 2>&1 | grep -E "^test |test result|panicked|error|differ" | tee "$OUT/test_scan_kernel_cuda.txt"
  fi
  for kern in ${KERNELS:-parallel tiled}; do
    LIMIT=${SCAN_LIMIT:-150} step .gpu/hymba-eval bench scan --backend cuda --kernel $kern --no-reference --out "$OUT/scan_planes_$kern.json" 2>&1 | tail -8
  done
  if [ "${NOPLANES:-1}" = 1 ]; then
    HYMBA_SCAN_PLANES=0 LIMIT=${SCAN_LIMIT:-150} step .gpu/hymba-eval bench scan --backend cuda --kernel parallel --no-reference --out "$OUT/scan_noplanes.json" 2>&1 | tail -6
  fi
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
  if [ -n "$NCU" ] && [ "${NCU_RUN:-1}" = 1 ]; then
    for kern in ${NCU_KERNELS:-forward_plane backward_parallel}; do
      LIMIT=${NCU_LIMIT:-100} step "$NCU" --clock-control none --kernel-name regex:$kern --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats .gpu/hymba-eval bench scan --backend cuda --kernel parallel --no-reference --rounds 1 --warmup 0 > "$OUT/ncu_$kern.txt" 2>&1
      grep -E "Duration|Registers Per|Theoretical Occ|Achieved Occ|Compute \(SM\) Thr|L1/TEX Cache Thr|Memory Thr" "$OUT/ncu_$kern.txt"
    done
  fi
  [ "${SAVE_CACHE:-1}" = 1 ] && save_cache
  ;;
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
post)
  common="data.seq_len=2048 batch_size=${MB:-2} grad_accum=${ACC:-4} valid_every=100000 checkpoint_every=100000 samples=0 log_every=1"
  for mm in cublas burn; do
    if [ $mm = burn ]; then export HYMBA_MATMUL=burn; else unset HYMBA_MATMUL; fi
    LIMIT=${TRAIN_LIMIT:-180} step .gpu/hymba-train pretrain --backend ${BACKEND:-cuda} model.preset=hymba-125m model.vocab_size=32001 steps=${STEPS:-5} $common out_dir=/tmp/run_$mm 2>&1 | tail -12
    grep -h -m3 -i "panic" /tmp/run_$mm/experiment.log 2>/dev/null | cut -c1-600
  done
  unset HYMBA_MATMUL
  LIMIT=120 step .gpu/hymba-eval init --preset hymba-125m --out /tmp/m125
  cp .gpu/tokenizer.json /tmp/m125/tokenizer.json
  LIMIT=${TRAIN_LIMIT:-180} step .gpu/hymba-train sft --backend ${BACKEND:-cuda} --init /tmp/m125 out_dir=/tmp/sft 'data.jsonl=[".gpu/sft.jsonl"]' steps=3 $common 2>&1 | tail -8
  LIMIT=${TRAIN_LIMIT:-180} step .gpu/hymba-train dpo --backend ${BACKEND:-cuda} --init /tmp/m125 out_dir=/tmp/dpo 'data.jsonl=[".gpu/hhh.jsonl"]' data.seq_len=1024 batch_size=4 steps=3 valid_every=100000 checkpoint_every=100000 samples=0 log_every=1 2>&1 | tail -8
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv
  ;;
split)
  # The scan kernels' tests, then the kernel timed with the time-split forward and without.
  # (When this ran, the split was the default and HYMBA_SCAN_SPLIT=0 turned it off; it is
  # now opt-in with HYMBA_SCAN_SPLIT=1.)
  LIMIT=200 step .gpu/scan_kernel --test-threads=1 2>&1 | grep -E "^test |test result|panicked" | tee "$OUT/test_scan_kernel_cuda.txt"
  HYMBA_SCAN_SPLIT=1 LIMIT=150 step .gpu/hymba-eval bench scan --backend cuda --kernel tiled --no-reference --out "$OUT/scan_split.json" 2>&1 | tail -12
  HYMBA_SCAN_SPLIT=0 LIMIT=150 step .gpu/hymba-eval bench scan --backend cuda --kernel tiled --no-reference --out "$OUT/scan_nosplit.json" 2>&1 | tail -12
  ;;
diag)
  # Where a CUDA training step's time goes: GPU utilisation (nvidia-smi dmon), the process's
  # CPU time, and cubecl's compile/autotune log, at a small and the full 125M shape.
  export CUBECL_AUTOTUNE_LEVEL=${AUTOTUNE:-minimal}
  nvidia-smi dmon -s u -d 5 > "$OUT/dmon.txt" 2>&1 &
  DMON=$!
  i=0
  for shape in "${SHAPE_A:-data.seq_len=512 batch_size=2 grad_accum=1}" "${SHAPE_B:-data.seq_len=2048 batch_size=2 grad_accum=4}"; do
    i=$((i + 1))
    export CUBECL_DEBUG_LOG=/tmp/cubecl_$i.log
    ( sleep ${PEEK:-60}; echo "--- top at ${PEEK:-60} s"; top -b -n 1 | head -12 ) &
    LIMIT=${TRAIN_LIMIT:-150} step .gpu/hymba-train pretrain --backend ${BACKEND:-cuda} model.preset=hymba-125m model.vocab_size=32001 steps=${STEPS:-3} $shape valid_every=100000 checkpoint_every=100000 samples=0 log_every=1 out_dir=/tmp/diag_$i 2>&1 | tail -8
    unset CUBECL_DEBUG_LOG
    echo "--- cubecl log $i: $(wc -c < /tmp/cubecl_$i.log 2>/dev/null) bytes"
    grep -c -i "compil" /tmp/cubecl_$i.log 2>/dev/null
    grep -i "autotune\|fastest" /tmp/cubecl_$i.log 2>/dev/null | cut -c1-200 | tail -15
    grep -h -m3 -i "panic" /tmp/diag_$i/experiment.log 2>/dev/null | cut -c1-600
  done
  tail -c 3000000 /tmp/cubecl_2.log > "$OUT/cubecl_2_tail.log" 2>/dev/null
  kill $DMON
  ;;
steps)
  use_cache
  [ -d /tmp/m125 ] || { LIMIT=120 step .gpu/hymba-eval init --preset hymba-125m --out /tmp/m125; cp .gpu/tokenizer.json /tmp/m125/; }
  common="data.seq_len=2048 batch_size=${MB:-2} grad_accum=${ACC:-4} valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1"
  for pass in ${PASSES:-cold warm}; do
    LIMIT=${SFT_LIMIT:-400} step .gpu/hymba-train sft --backend cuda --init /tmp/m125 out_dir=/tmp/sft_$pass 'data.jsonl=[".gpu/sft.jsonl"]' steps=${STEPS:-4} $common ${EXTRA:-} 2>&1 | tee "$OUT/sft_125m_$pass${TAG:-}.txt" | tail -9
    du -sh "$HYMBA_KERNEL_CACHE" 2>/dev/null
  done
  if [ "${DPO:-1}" = 1 ]; then
    LIMIT=${DPO_LIMIT:-200} step .gpu/hymba-train dpo --backend cuda --devices ${DPO_DEVICES:-0} --init /tmp/m125 out_dir=/tmp/dpo 'data.jsonl=[".gpu/hhh.jsonl"]' data.seq_len=2048 batch_size=1 grad_accum=4 steps=${STEPS:-4} valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 ${EXTRA:-} 2>&1 | tee "$OUT/dpo_125m${TAG:-}.txt" | tail -12
  fi
  save_cache
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv
  ;;
breakdown)
  use_cache
  LIMIT=${STEP_LIMIT:-500} step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch ${MB:-2} --seq 2048 --rounds ${ROUNDS:-5} ${STEP_ARGS:-} --out "$OUT/step_breakdown_125m${TAG:-}.json" 2>&1 | tail -14
  save_cache
  ;;
ddp)
  use_cache
  nvidia-smi -L
  common="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=${MB:-2} grad_accum=${ACC:-4} valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1"
  for devs in ${DEVICES:-0,1 0}; do
    LIMIT=${TRAIN_LIMIT:-280} step .gpu/hymba-train pretrain --backend cuda --devices $devs steps=${STEPS:-6} $common ${EXTRA:-} out_dir=/tmp/ddp_${devs/,/_}${TAG:-} 2>&1 | tee "$OUT/pretrain_125m_devices_${devs/,/_}${TAG:-}.txt" | tail -12
  done
  save_cache
  ;;
parallel)
  use_cache
  for k in ${KERNELS:-parallel tiled}; do
    LIMIT=${SCAN_LIMIT:-200} step .gpu/hymba-eval bench scan --backend cuda --kernel $k --no-reference --out "$OUT/scan_$k.json" 2>&1 | tail -8
  done
  LIMIT=${TEST_LIMIT:-240} step .gpu/scan_kernel --test-threads=1 ${TESTS:-kernel_} 2>&1 | grep -E "^test |test result|panicked|error" | tee "$OUT/test_scan_kernel_cuda.txt"
  save_cache
  ;;
flagstep)
  # Does the flag ordering (HYMBA_MATMUL_ORDER=flags) hang in a training step, or were the
  # session-7 runs still compiling? A sync-ordered step first fills the kernel cache for
  # this binary; then the same step with flags, watched: if it has not finished after
  # FLAG_LIMIT s, every thread's kernel stack (and gdb's backtraces, if gdb exists) and the
  # GPU's state are written to $OUT before it is killed.
  use_cache
  for p in ${STEP_PRECISIONS:-f32}; do
    args="bench step --backend cuda --preset hymba-125m --batch ${MB:-2} --seq 2048 --rounds ${ROUNDS:-3} --precision $p"
    HYMBA_MATMUL_ORDER=sync LIMIT=${WARM_LIMIT:-300} step .gpu/hymba-eval $args --out "$OUT/step_125m_${p}_sync.json" 2>&1 | tail -9
    echo "=== flags, $p"
    HYMBA_MATMUL_ORDER=flags .gpu/hymba-eval $args --out "$OUT/step_125m_${p}_flags.json" > "$OUT/step_125m_${p}_flags.txt" 2>&1 &
    pid=$!
    t0=$SECONDS
    while kill -0 $pid 2>/dev/null && [ $((SECONDS - t0)) -lt ${FLAG_LIMIT:-120} ]; do sleep 1; done
    if kill -0 $pid 2>/dev/null; then
      echo "=== still running after $((SECONDS - t0)) s: dumping threads"
      for t in /proc/$pid/task/*; do echo "== $t $(cat $t/comm) wchan=$(cat $t/wchan 2>/dev/null)"; cat $t/stack 2>/dev/null; done > "$OUT/flags_stall_threads_$p.txt"
      dbg=$(command -v gdb || command -v cuda-gdb || ls /usr/local/cuda/bin/cuda-gdb 2>/dev/null)
      [ -n "$dbg" ] && timeout 60 "$dbg" -p $pid -batch -ex "thread apply all bt 20" > "$OUT/flags_stall_gdb_$p.txt" 2>&1
      nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> "$OUT/flags_stall_threads_$p.txt"
      kill -9 $pid
    else
      echo "=== finished in $((SECONDS - t0)) s"
    fi
    tail -9 "$OUT/step_125m_${p}_flags.txt"
  done
  save_cache
  ;;
order3)
  # Session 7, last call: the host path of a product on cubecl's runner thread. Tests, the
  # 1.5B products against PyTorch, and the training step in f32 and bf16.
  use_cache
  export HYMBA_MATMUL_ORDER=flags  # (the default when this ran)
  LIMIT=150 step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | tee "$OUT/test_matmul_cuda.txt" | grep -E "^test |ordering|test result|panicked|error"
  LIMIT=${MATMUL_LIMIT:-150} step .gpu/hymba-eval bench matmul --backend cuda --presets hymba-1.5b --out "$OUT/matmul_cuda.json" 2>&1 | tail -17
  LIMIT=40 step python3 bench/torch_matmul.py "$OUT/matmul_cuda.json" "$OUT/matmul_h100.json"
  for p in ${STEP_PRECISIONS:-f32 bf16}; do
    LIMIT=${STEP_LIMIT:-150} step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch ${MB:-2} --seq 2048 --rounds ${ROUNDS:-3} --precision $p --out "$OUT/step_125m_${p}_flags.json" 2>&1 | tail -9
  done
  save_cache
  ;;
order2)
  # Session 7, second call: the fixed matmul tests (aligned odd shapes through cuBLAS, the
  # ordering test against host syncs, and its mutation check); the host time of one product
  # without fusion; the 1.5B products against PyTorch (cuBLAS and cuBLASLt); the register-
  # light time-parallel scan forward under Nsight Compute; the bf16 training step.
  use_cache
  LIMIT=150 step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | tee "$OUT/test_matmul_cuda.txt" | grep -E "^test |ordering|test result|panicked|error"
  HYMBA_MATMUL_ORDER=unordered LIMIT=100 step .gpu/matmul_gpu --test-threads=1 --nocapture ordered 2>&1 | tee "$OUT/test_matmul_unordered_cuda.txt" | grep -E "^test |ordering|test result|panicked"
  LIMIT=60 step .gpu/hymba-eval bench matmul --backend cuda-raw --presets hymba-1.5b --only out_proj 2>&1 | tail -4
  export HYMBA_MATMUL_ORDER=flags  # (the default when this ran)
  LIMIT=${MATMUL_LIMIT:-200} step .gpu/hymba-eval bench matmul --backend cuda --presets hymba-1.5b --out "$OUT/matmul_cuda.json" 2>&1 | tail -17
  LIMIT=60 step python3 bench/torch_matmul.py "$OUT/matmul_cuda.json" "$OUT/matmul_h100.json"
  (cd bench && LIMIT=60 step python3 torch_blas_libs.py "$OUT/matmul_cuda.json" "$OUT/torch_blas_libs_h100.json")
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
  if [ -n "$NCU" ] && [ "${NCU_RUN:-1}" = 1 ]; then
    LIMIT=${NCU_LIMIT:-90} step "$NCU" --kernel-name regex:forward_parallel --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis .gpu/hymba-eval bench scan --backend cuda --kernel parallel --no-reference --rounds 1 --warmup 0 > "$OUT/ncu_forward_parallel.txt" 2>&1
    grep -E "Duration|Registers Per|Theoretical Occ|Achieved Occ|Spilling Requests  |Compute \(SM\) Thr|L1/TEX Cache Thr|Stall|Issued Warp" "$OUT/ncu_forward_parallel.txt" | head -30
  fi
  for p in ${STEP_PRECISIONS:-bf16}; do
    LIMIT=${STEP_LIMIT:-150} step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch ${MB:-2} --seq 2048 --rounds ${ROUNDS:-3} --precision $p --out "$OUT/step_125m_${p}_flags.json" 2>&1 | tail -9
  done
  save_cache
  ;;
order)
  # Session 7: the cuBLAS products ordered on the device (flags) instead of by host syncs.
  # 1. the matmul tests, then the ordering tests with the ordering switched off (they must
  #    fail: the mutation check); 2. the matmul bench with PyTorch on the same shapes;
  # 3. the scan kernels; 4. a training step with flags, with host syncs, and with burn's
  #    matmul.
  use_cache
  if [ -x .gpu/matmul_gpu ]; then
    LIMIT=150 step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | tee "$OUT/test_matmul_cuda.txt" | grep -E "^test |ordering|test result|panicked"
    HYMBA_MATMUL_ORDER=unordered LIMIT=100 step .gpu/matmul_gpu --test-threads=1 --nocapture ordered 2>&1 | tee "$OUT/test_matmul_unordered_cuda.txt" | grep -E "^test |ordering|test result|panicked"
  fi
  if [ "${MATMUL:-1}" = 1 ]; then
    LIMIT=${MATMUL_LIMIT:-240} step .gpu/hymba-eval bench matmul --backend cuda --presets hymba-1.5b ${MATMUL_ARGS:-} --out "$OUT/matmul_cuda.json" 2>&1 | tail -20
    LIMIT=90 step python3 bench/torch_matmul.py "$OUT/matmul_cuda.json" "$OUT/matmul_h100.json"
  fi
  if [ "${SCAN:-1}" = 1 ]; then
    LIMIT=${SCAN_LIMIT:-150} step .gpu/hymba-eval bench scan --backend cuda --kernel all --no-reference --out "$OUT/scan_all.json" 2>&1 | tail -20
  fi
  for v in ${STEP_VARIANTS:-flags sync burn}; do
    case $v in
      flags) unset HYMBA_MATMUL; export HYMBA_MATMUL_ORDER=flags ;;
      sync) unset HYMBA_MATMUL; export HYMBA_MATMUL_ORDER=sync ;;
      burn) export HYMBA_MATMUL=burn; unset HYMBA_MATMUL_ORDER ;;
    esac
    for p in ${STEP_PRECISIONS:-f32}; do
      LIMIT=${STEP_LIMIT:-200} step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch ${MB:-2} --seq 2048 --rounds ${ROUNDS:-3} --precision $p --out "$OUT/step_125m_${p}_$v.json" 2>&1 | tail -9
    done
  done
  unset HYMBA_MATMUL HYMBA_MATMUL_ORDER
  [ "${SAVE_CACHE:-1}" = 1 ] && save_cache
  ;;
profile)
  use_cache
  LIMIT=${SCAN_LIMIT:-150} step .gpu/hymba-eval bench scan --backend cuda --kernel all --no-reference --out "$OUT/scan_all.json" 2>&1 | tail -20
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
  if [ -n "$NCU" ] && [ "${NCU_RUN:-1}" = 1 ]; then
    for kern in forward_parallel backward_parallel; do
      LIMIT=${NCU_LIMIT:-150} step "$NCU" --kernel-name regex:$kern --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis .gpu/hymba-eval bench scan --backend cuda --kernel parallel --no-reference --rounds 1 --warmup 0 > "$OUT/ncu_$kern.txt" 2>&1
      grep -E "Duration|Registers Per|Theoretical Occ|Achieved Occ|Spilling Requests  |Compute \(SM\) Thr|L1/TEX Cache Thr" "$OUT/ncu_$kern.txt"
    done
  fi
  if [ -x .gpu/scan_kernel ]; then
    LIMIT=${TEST_LIMIT:-240} step .gpu/scan_kernel --test-threads=1 ${TESTS:-kernel_} 2>&1 | grep -E "^test |test result|panicked|error" | tee "$OUT/test_scan_kernel_cuda.txt"
  fi
  if [ -x .gpu/hymba-eval ] && [ "${STEP:-1}" = 1 ]; then
    for p in ${STEP_PRECISIONS:-f32}; do
      LIMIT=${STEP_LIMIT:-200} step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch ${MB:-2} --seq 2048 --rounds ${ROUNDS:-3} --precision $p --out "$OUT/step_breakdown_125m_$p${TAG:-}.json" 2>&1 | tail -9
    done
  fi
  [ -x .gpu/hymba-train ] || { save_cache; exit 0; }
  export HYMBA_STEP_TIMES=1
  common="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=${MB:-2} grad_accum=${ACC:-4} valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1"
  for p in ${PRECISIONS:-f32 bf16}; do
    LIMIT=${TRAIN_LIMIT:-200} step .gpu/hymba-train pretrain --backend cuda steps=${STEPS:-6} $common precision=$p out_dir=/tmp/pt_$p 2>&1 | tee "$OUT/pretrain_125m_1gpu_${p}_phases${TAG:-}.txt" | tail -16
  done
  save_cache
  ;;
launches)
  use_cache
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  bench="bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --step-only"
  HYMBA_STEP_TIMES=1 LIMIT=${TRAIN_LIMIT:-300} step .gpu/hymba-train pretrain --backend cuda steps=8 $train out_dir=/tmp/lt_phases 2>&1 | grep -E "phases|^step|tokens/s|warning" | tee "$OUT/train_phases.txt"
  LIMIT=${TRAIN_LIMIT:-300} step .gpu/hymba-train pretrain --backend cuda steps=12 $train out_dir=/tmp/lt_plain 2>&1 | grep -E "^step|tokens/s|step time|valid|unigram|warning" | tee "$OUT/train_plain.txt"
  python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 "$OUT/train_plain.txt"
  LIMIT=${STEP_LIMIT:-200} step .gpu/hymba-eval $bench --rounds 5 --out "$OUT/step_only.json" 2>&1 | grep -E "^step|warning"
  for run in bench train; do
    printf '[profiling.logger]\nlevel = "full"\nfile = "/tmp/profile_%s.log"\n' $run > cubecl.toml
    if [ $run = bench ]; then
      LIMIT=200 step .gpu/hymba-eval $bench --rounds 1 --warmup 0 2>&1 | tail -2
    else
      LIMIT=200 step .gpu/hymba-train pretrain --backend cuda steps=3 $train out_dir=/tmp/lt_profile 2>&1 | grep -E "^step"
    fi
    rm -f cubecl.toml
    python3 bench/cubecl_log_summary.py launches /tmp/profile_$run.log "$OUT/launches_$run.json" 12 | cut -c1-200
    python3 bench/cubecl_log_summary.py sequence /tmp/profile_$run.log "$OUT/sequence_$run.txt" 6000
  done
  [ "${SAVE_CACHE:-1}" = 1 ] && save_cache
  ;;
s13)
  # Session 13: our own flag kernels instead of the driver's stream memory operations.
  # 1. the cuBLAS tests (the ordering test now also fails if the flags fell back to host
  # syncs); 2. `check` against the CPU; 3. hymba-125m bf16 at 8 × 2048: the trainer with
  # phases, plain (summarised), then with host-synced products (the baseline, same call);
  # 4. `bench step`; 5. hymba-350m at the same shape; 6. three trainer steps under CubeCL's
  # `full`-level profiler, grouped by kernel and size. Logs go to one file (a call returns
  # at most 8 files).
  use_cache
  log="$OUT/s13_log.txt"
  if [ -x .gpu/matmul_gpu ]; then
    LIMIT=150 step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | grep -E "^test |ordering|error|test result|panicked|warning" | tee -a "$log"
  fi
  [ -x .gpu/scan_kernel ] && LIMIT=200 step .gpu/scan_kernel --test-threads=1 model_on_autodiff_gpu_equals_ndarray 2>&1 | grep -E "^test |test result|panicked" | tee -a "$log"
  [ "${CHECK:-1}" = 1 ] && LIMIT=200 step .gpu/hymba-eval check --backend cuda --preset hymba-125m --batch 2 --len 300 2>&1 | tail -4 | tee -a "$log"
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  keep="^step|tokens/s|step time|valid|unigram|warning|rror"
  [ "${PHASES:-1}" = 1 ] && HYMBA_STEP_TIMES=1 LIMIT=${TRAIN_LIMIT:-300} step .gpu/hymba-train pretrain --backend cuda steps=8 $train out_dir=/tmp/s13_phases 2>&1 | grep -E "phases|$keep" | tee -a "$log"
  LIMIT=${TRAIN_LIMIT:-300} step .gpu/hymba-train pretrain --backend cuda steps=12 $train out_dir=/tmp/s13_plain 2>&1 | grep -E "$keep" | tee /tmp/train_plain.txt | tee -a "$log"
  NOTE="session 13: own flag kernels; hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), 12 steps; one GPU" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 /tmp/train_plain.txt
  [ "${SYNC:-1}" = 1 ] && HYMBA_MATMUL_ORDER=sync LIMIT=${TRAIN_LIMIT:-300} step .gpu/hymba-train pretrain --backend cuda steps=12 $train out_dir=/tmp/s13_sync 2>&1 | grep -E "$keep" | tee -a "$log"
  [ "${BENCH_STEP:-1}" = 1 ] && LIMIT=200 step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 3 --out "$OUT/step_125m_b8_bf16.json" 2>&1 | grep -vE "^\s*$" | tail -20 | tee -a "$log"
  if [ "${M350:-1}" = 1 ]; then
    LIMIT=240 step .gpu/hymba-train pretrain --backend cuda steps=10 ${train/hymba-125m/hymba-350m} out_dir=/tmp/s13_350 2>&1 | grep -E "$keep" | tee /tmp/train_350m.txt | tee -a "$log"
    NOTE="session 13: own flag kernels; hymba-train pretrain, hymba-350m, bf16, 8 x 2048 (+128 meta), 10 steps; one GPU" python3 bench/train_summary.py "$OUT/pretrain_350m_1gpu_bf16_b8.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-350m 8 2048 /tmp/train_350m.txt
  fi
  if [ "${PROFILE:-1}" = 1 ]; then
    printf '[profiling.logger]\nlevel = "full"\nfile = "/tmp/profile_train.log"\n' > cubecl.toml
    LIMIT=200 step .gpu/hymba-train pretrain --backend cuda steps=3 $train out_dir=/tmp/s13_profile 2>&1 | grep -E "^step" | tee -a "$log"
    rm -f cubecl.toml
    python3 bench/cubecl_log_summary.py launches /tmp/profile_train.log "$OUT/launches_train.json" 25 | cut -c1-220 | tee -a "$log"
  fi
  [ "${SAVE_CACHE:-0}" = 1 ] && save_cache
  ;;
s13ab)
  # Session 13: the LM head's vocabulary padding (`matmul_wt_padded`) against none
  # (HYMBA_PAD_VOCAB=0) in one call, alternating, since whole calls differ by up to 1.5×:
  # hymba-125m bf16 8 × 2048 trainer runs (pad, none, pad, none), then `bench step` each way.
  use_cache
  log="$OUT/s13ab_log.txt"
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  for round in $(seq ${ROUNDS:-2}); do
    for pad in 1 0; do
      HYMBA_PAD_VOCAB=$pad LIMIT=${TRAIN_LIMIT:-200} step .gpu/hymba-train pretrain --backend cuda steps=12 $train out_dir=/tmp/ab_${pad}_$round 2>&1 | grep -E "^step|tokens/s|step time|valid|warning|rror" | tee /tmp/train_pad$pad.txt | sed "s/^/[pad=$pad round $round] /" | tee -a "$log"
      [ $round = "${ROUNDS:-2}" ] && NOTE="session 13: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), 12 steps, one GPU; HYMBA_PAD_VOCAB=$pad (1: the LM head pads the vocabulary to 32,008), last of ${ROUNDS:-2} alternating rounds" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8_pad$pad.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 /tmp/train_pad$pad.txt
    done
  done
  [ "${BENCH_STEP:-1}" = 1 ] && for pad in 1 0; do
    HYMBA_PAD_VOCAB=$pad LIMIT=200 step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 3 --out "$OUT/step_125m_b8_bf16_pad$pad.json" 2>&1 | grep -vE "^\s*$" | tail -16 | sed "s/^/[pad=$pad] /" | tee -a "$log"
  done
  ;;
s14)
  use_cache
  log="$OUT/s14_log.txt"
  if [ -x .gpu/scan_kernel ]; then
    HYMBA_TEST_SCAN_KERNELS=${TEST_KERNELS:-channel} LIMIT=${TEST_LIMIT:-240} step .gpu/scan_kernel --test-threads=1 kernel_ 2>&1 | grep -E "^test |test result|panicked|differ|error" | tee -a "$log"
    LIMIT=200 step .gpu/scan_kernel --test-threads=1 model_on_autodiff_gpu_equals_ndarray 2>&1 | grep -E "^test |test result|panicked" | tee -a "$log"
  fi
  for k in ${KERNELS:-channel parallel}; do
    LIMIT=${SCAN_LIMIT:-200} step .gpu/hymba-eval bench scan --backend cuda --kernel $k --layout both --no-reference --rounds 7 --out "$OUT/scan_$k.json" 2>&1 | grep -vE "^\s*$" | tail -16 | tee -a "$log"
  done
  for l in ${LANES:-}; do
    HYMBA_SCAN_LANES=$l LIMIT=${SCAN_LIMIT:-200} step .gpu/hymba-eval bench scan --backend cuda --kernel channel --layout model --no-reference --rounds 7 --out "$OUT/scan_channel_lanes$l.json" 2>&1 | grep -vE "^\s*$" | tail -8 | sed "s/^/[lanes=$l] /" | tee -a "$log"
  done
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  for round in $(seq ${ROUNDS:-2}); do
    for k in auto parallel; do
      HYMBA_SCAN_KERNEL=$k LIMIT=${TRAIN_LIMIT:-200} step .gpu/hymba-train pretrain --backend cuda steps=12 $train out_dir=/tmp/s14_${k}_$round 2>&1 | grep -E "^step|tokens/s|step time|valid|warning|rror" | tee /tmp/train_$k.txt | sed "s/^/[scan=$k round $round] /" | tee -a "$log"
      [ $round = "${ROUNDS:-2}" ] && NOTE="session 14: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), 12 steps, one GPU; HYMBA_SCAN_KERNEL=$k (auto: the channel kernels on the model's layout), last of ${ROUNDS:-2} alternating rounds" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8_scan_$k.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 /tmp/train_$k.txt
    done
  done
  [ "${BENCH_STEP:-1}" = 1 ] && for round in $(seq ${STEP_ROUNDS:-1}); do
    for k in auto parallel; do
      HYMBA_SCAN_KERNEL=$k LIMIT=200 step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 3 --out "$OUT/step_125m_b8_bf16_scan_$k.json" 2>&1 | grep -vE "^\s*$" | tail -16 | sed "s/^/[scan=$k step round $round] /" | tee -a "$log"
    done
  done
  [ "${SAVE_CACHE:-0}" = 1 ] && save_cache
  ;;
s14prof)
  use_cache
  log="$OUT/s14prof_log.txt"
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  # ORDER: the runs in turn (the first run of a call also autotunes what the cache lacks).
  n=0
  for k in ${ORDER:-channel parallel}; do
    n=$((n + 1))
    printf '[profiling.logger]\nlevel = "full"\nfile = "/tmp/profile_%s.log"\n' $n > cubecl.toml
    HYMBA_SCAN_KERNEL=$k LIMIT=200 step .gpu/hymba-train pretrain --backend cuda steps=${STEPS:-3} $train out_dir=/tmp/s14prof_$n 2>&1 | grep -E "^step" | sed "s/^/[$n $k] /" | tee -a "$log"
    rm -f cubecl.toml
    python3 bench/cubecl_log_summary.py launches /tmp/profile_$n.log "$OUT/launches_train_${n}_$k.json" ${TOP:-30} | cut -c1-200 | sed "s/^/[$n $k] /" | tee -a "$log"
  done
  ;;
s14step)
  use_cache
  log="$OUT/s14step_log.txt"
  for round in $(seq ${ROUNDS:-3}); do
    for k in channel parallel; do
      HYMBA_SCAN_KERNEL=$k LIMIT=120 step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 5 --step-only 2>&1 | grep -E "^step|rror" | sed "s/^/[$k round $round] /" | tee -a "$log"
    done
  done
  ;;
s15trace)
  # Session 15: hymba-125m bf16 8 x 2048 trainer steps under a CUPTI activity trace
  # (bench/cupti_trace.c, built here against the box's CUPTI; the box's Nsight Systems
  # records but fails to import its traces): true kernel durations with cuBLAS, how much of
  # a step the GPU is idle, launches per step. ORDER: scan kernels in turn.
  use_cache
  log="$OUT/s15trace_log.txt"
  inc=/usr/local/cuda/include
  kt=$(grep -o "} CUpti_ActivityKernel[0-9]*;" $inc/cupti_activity.h | tail -1 | tr -d '}; ')
  mt=$(grep -o "} CUpti_ActivityMemcpy[0-9]*;" $inc/cupti_activity.h | tail -1 | tr -d '}; ')
  gcc -shared -fPIC -O2 -Wall -DKERNEL_T=$kt -DMEMCPY_T=$mt -I$inc -o /tmp/libcupti_trace.so bench/cupti_trace.c -L/usr/local/cuda/lib64 -lcupti 2>&1 | tee -a "$log" || exit 1
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16 ${EXTRA:-}"
  n=0
  for k in ${ORDER:-parallel}; do
    n=$((n + 1))
    CUDA_INJECTION64_PATH=/tmp/libcupti_trace.so CUPTI_TRACE_OUT=/tmp/trace_$n.txt HYMBA_SCAN_KERNEL=$k LIMIT=${TRAIN_LIMIT:-240} step .gpu/hymba-train pretrain --backend cuda steps=${STEPS:-8} $train out_dir=/tmp/s15trace_$n 2>&1 | grep -E "^step|tokens/s|rror" | sed "s/^/[$n $k] /" | tee -a "$log"
    ls -la /tmp/trace_$n.txt | tee -a "$log"
    python3 bench/trace_summary.py /tmp/trace_$n.txt "$OUT/trace_train_${n}_$k.json" ${TOP:-45} ${SKIP:-3} ${STEPS:-8} 2>&1 | cut -c1-170 | sed "s/^/[$n $k] /" | tee -a "$log"
    [ "${KEEP_TRACE:-0}" = 1 ] && gzip -c /tmp/trace_$n.txt > "$OUT/trace_$n.txt.gz"
  done
  ;;
s15prof)
  # Session 15: where the host's time goes in hymba-125m bf16 8 x 2048 trainer steps: a
  # build with `--features hymba-train/cpu-profile` (not stripped) samples its threads
  # (HYMBA_CPU_PROFILE) over STEPS steps; the folded stacks come back gzipped.
  use_cache
  log="$OUT/s15prof_log.txt"
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16 ${EXTRA:-}"
  HYMBA_CPU_PROFILE_WALL=${WALL:-0} HYMBA_CPU_PROFILE=/tmp/cpu.folded LIMIT=${TRAIN_LIMIT:-240} step .gpu/hymba-train pretrain --backend cuda steps=${STEPS:-12} $train out_dir=/tmp/s15prof 2>&1 | grep -E "^step|tokens/s|rror|cpu profile|warning" | tee -a "$log"
  gzip -c /tmp/cpu.folded > "$OUT/cpu_train.folded.gz"
  ;;
s15mem)
  # Session 15: cubecl's memory pools on CUDA. Host profiles of hymba-125m steps put ~60 %
  # of cubecl's device-server thread in its sliced pools (`MemoryPage::coalesce` on every
  # reservation, ~10,000 per step: kernel outputs and each launch's metadata); the
  # persistent pool reuses buffers by exact size. MODES in turn, ROUNDS times: `pooled`
  # (cubecl's default) and `persistent` (cubecl.toml `[memory] persistent_memory = "enforced"`).
  use_cache
  log="$OUT/s15mem_log.txt"
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16 ${EXTRA:-}"
  for round in $(seq ${ROUNDS:-2}); do
    for m in ${MODES:-persistent pooled}; do
      rm -f cubecl.toml
      [ $m = persistent ] && printf '[memory]\npersistent_memory = "enforced"\n' > cubecl.toml
      ( while sleep 2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > /tmp/mem_$m.txt 2>/dev/null &
      MON=$!
      LIMIT=${TRAIN_LIMIT:-240} step .gpu/hymba-train pretrain --backend cuda steps=${STEPS:-12} $train out_dir=/tmp/s15mem_${m}_$round 2>&1 | grep -E "^step|tokens/s|step time|valid|rror|warning|panick" | tee /tmp/train_$m.txt | sed "s/^/[$m round $round] /" | tee -a "$log"
      kill $MON 2>/dev/null
      echo "[$m round $round] peak GPU memory used: $(sort -n /tmp/mem_$m.txt | tail -1) MiB" | tee -a "$log"
      [ $round = "${ROUNDS:-2}" ] && NOTE="session 15: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), ${STEPS:-12} steps, one GPU; cubecl memory: $m; last of ${ROUNDS:-2} alternating rounds" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8_mem_$m.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 /tmp/train_$m.txt
    done
  done
  rm -f cubecl.toml
  ;;
s15)
  # Session 15, the committed build: 1. the scan-kernel test binary's model tests on CUDA
  # (the autodiff model against ndarray; FixedShapeMemory against the default allocator);
  # 2. hymba-125m bf16 8 x 2048 trainer steps with the fixed-shape allocator (the default)
  # and HYMBA_CUDA_MEMORY=pooled, alternating ROUNDS times; 3. `bench step`; 4. a CUPTI
  # trace of the default (s15trace); 5. a wall-clock host profile (s15prof, with WALL).
  use_cache
  log="$OUT/s15_log.txt"
  if [ -x .gpu/scan_kernel ]; then
    LIMIT=240 step .gpu/scan_kernel --test-threads=1 model_on_autodiff_gpu_equals_ndarray fixed_shape_memory_gives_the_same_gradients 2>&1 | grep -E "^test |test result|panicked|diff" | tee -a "$log"
  fi
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  for round in $(seq ${ROUNDS:-2}); do
    for m in fixed pooled; do
      mem=; [ $m = pooled ] && mem=pooled
      ( while sleep 2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > /tmp/mem_$m.txt 2>/dev/null &
      MON=$!
      HYMBA_CUDA_MEMORY=$mem LIMIT=${TRAIN_LIMIT:-240} step .gpu/hymba-train pretrain --backend cuda steps=${STEPS:-12} $train out_dir=/tmp/s15_${m}_$round 2>&1 | grep -E "^step|tokens/s|step time|valid|rror|warning|panick" | tee /tmp/train_$m.txt | sed "s/^/[$m round $round] /" | tee -a "$log"
      kill $MON 2>/dev/null
      echo "[$m round $round] peak GPU memory used: $(sort -n /tmp/mem_$m.txt | tail -1) MiB" | tee -a "$log"
      [ $round = "${ROUNDS:-2}" ] && NOTE="session 15: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), ${STEPS:-12} steps, one GPU; device memory: $m (HYMBA_CUDA_MEMORY=$mem); last of ${ROUNDS:-2} alternating rounds" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8_$m.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 /tmp/train_$m.txt > /dev/null
    done
  done
  [ "${BENCH_STEP:-1}" = 1 ] && LIMIT=200 step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 3 --out "$OUT/step_125m_b8_bf16.json" 2>&1 | grep -vE "^\s*$" | tail -16 | tee -a "$log"
  ;;
s16)
  # Session 16: see the header.
  use_cache
  log="$OUT/s16_log.txt"
  if [ "${TESTS:-1}" = 1 ]; then
    [ -x .gpu/matmul_gpu ] && LIMIT=${TEST_LIMIT:-150} step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | grep -E "^test |ordering|test result|panicked|warning|note" | tee -a "$log"
    [ -x .gpu/scan_kernel ] && LIMIT=240 step .gpu/scan_kernel --test-threads=1 kernel_rms_norm kernel_conv kernel_masked_softmax model_on_autodiff_gpu_equals_ndarray fixed_shape_memory_gives_the_same_gradients 2>&1 | grep -E "^test |test result|panicked|diff|note" | tee -a "$log"
  fi
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  for round in $(seq ${ROUNDS:-2}); do
    for v in ${VARIANTS:-base stream tensorboth}; do
      case $v in
        base) vars= ;;
        stream) vars="HYMBA_MATMUL_ORDER=stream" ;;
        tensornorm) vars="HYMBA_RMS_NORM=tensor" ;;
        tensorconv) vars="HYMBA_SSM_CONV=tensor" ;;
        tensorboth) vars="HYMBA_RMS_NORM=tensor HYMBA_SSM_CONV=tensor" ;;
        *) vars=$v ;;
      esac
      LIMIT=${TRAIN_LIMIT:-200} step env $vars .gpu/hymba-train pretrain --backend cuda steps=${STEPS:-12} $train out_dir=/tmp/s16_${v}_$round 2>&1 | grep -E "^step|tokens/s|step time|valid loss|rror|warning|note|panick" | tee /tmp/train_$v.txt | sed "s/^/[$v round $round] /" | tee -a "$log"
      [ $round = "${ROUNDS:-2}" ] && NOTE="session 16: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), ${STEPS:-12} steps, one GPU, hymba::FixedShapeMemory; variant $v (${vars:-defaults}); last of ${ROUNDS:-2} alternating rounds" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8_$v.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 /tmp/train_$v.txt > /dev/null
    done
  done
  [ "${BENCH_STEP:-1}" = 1 ] && LIMIT=200 step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 3 --out "$OUT/step_125m_b8_bf16.json" 2>&1 | grep -vE "^\s*$" | tail -16 | tee -a "$log"
  ;;
s19)
  # Session 19: see the header.
  log="$OUT/s19_log.txt"
  nvidia-smi -L | tee -a "$log"
  if [ "${TESTS:-kernel}" != 0 ] && [ -x .gpu/scan_kernel ]; then
    LIMIT=${TEST_LIMIT:-240} step .gpu/scan_kernel --test-threads=1 ${TESTS:-kernel} 2>&1 | grep -E "^test |test result|panicked|differ|error" | tee -a "$log"
  fi
  for v in ${VARIANTS:-warp cube}; do
    vars="HYMBA_SCAN_WARP=1"
    case $v in
      cube) vars= ;;
      i16) vars="$vars HYMBA_SCAN_WARP_ITEMS=16" ;;
      i4) vars="$vars HYMBA_SCAN_WARP_ITEMS=4" ;;
      w2) vars="$vars HYMBA_SCAN_WARPS=2" ;;
      w8) vars="$vars HYMBA_SCAN_WARPS=8" ;;
    esac
    LIMIT=${SCAN_LIMIT:-150} step env $vars .gpu/hymba-eval bench scan --backend cuda --kernel auto --layout time --no-reference --shapes ${SHAPES:-full} --out "$OUT/scan_s19_$v.json" 2>&1 | grep -vE "^\s*$" | tail -12 | sed "s/^/[$v] /" | tee -a "$log"
  done
  ;;
s18)
  # Session 18: see the header.
  use_cache
  log="$OUT/s18_log.txt"
  nvidia-smi -L | tee -a "$log"
  [ "${TESTS:-1}" = 1 ] && [ -x .gpu/matmul_gpu ] && LIMIT=${TEST_LIMIT:-150} step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | grep -E "^test |ordering|test result|panicked|warning|note|differ" | tee -a "$log"
  if [ "${MATMUL:-1}" = 1 ]; then
    LIMIT=${MATMUL_LIMIT:-420} step .gpu/hymba-eval bench matmul --backend cuda --presets hymba-1.5b --out "$OUT/matmul_s18.json" 2>&1 | grep -vE "^\s*$" | tail -24 | tee -a "$log"
    LIMIT=90 step python3 bench/torch_matmul.py "$OUT/matmul_s18.json" "$OUT/matmul_torch_s18.json" 2>&1 | tail -24 | tee -a "$log"
  fi
  if [ "${STEP:-1}" = 1 ]; then
    for round in $(seq ${STEP_ROUNDS:-1}); do
      for mm in model burn; do
        vars=; [ $mm = burn ] && vars="HYMBA_MATMUL=burn"
        # burn's matmul autotunes every shape on first use: 200 s were not enough (session 18).
        LIMIT=${STEP_LIMIT:-400} step env $vars .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 3 --out "$OUT/step_125m_b8_bf16_matmul_${mm}_s18.json" 2>&1 | grep -vE "^\s*$" | tail -16 | sed "s/^/[$mm round $round] /" | tee -a "$log"
      done
    done
  fi
  [ "${SCAN:-1}" = 1 ] && LIMIT=${SCAN_LIMIT:-200} step .gpu/hymba-eval bench scan --backend cuda --kernel auto --layout time --no-reference --out "$OUT/scan_s18.json" 2>&1 | grep -vE "^\s*$" | tail -20 | tee -a "$log"
  ;;
s17)
  # Session 17: see the header.
  use_cache
  log="$OUT/s17_log.txt"
  nvidia-smi -L | tee -a "$log"
  if [ "${TESTS:-1}" = 1 ]; then
    [ -x .gpu/matmul_gpu ] && LIMIT=${TEST_LIMIT:-150} step .gpu/matmul_gpu --test-threads=1 --nocapture 2>&1 | grep -E "^test |ordering|test result|panicked|warning|note" | tee -a "$log"
    [ -x .gpu/scan_kernel ] && LIMIT=240 step .gpu/scan_kernel --test-threads=1 kernel_rms_norm kernel_conv kernel_masked_softmax model_on_autodiff_gpu_equals_ndarray fixed_shape_memory_gives_the_same_gradients 2>&1 | grep -E "^test |test result|panicked|diff|note" | tee -a "$log"
  fi
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  dev="$(cut -d, -f1 "$OUT/device.txt")"
  for round in $(seq ${ROUNDS:-2}); do
    for v in ${VARIANTS:-new s16 stream}; do
      bin=.gpu/hymba-train; vars=
      case $v in
        s16) bin=.gpu/hymba-train.s16 ;;
        stream) vars="HYMBA_MATMUL_ORDER=stream" ;;
      esac
      [ -x $bin ] || { echo "[$v] $bin missing" | tee -a "$log"; continue; }
      LIMIT=${TRAIN_LIMIT:-200} step env HYMBA_STEP_TIMES=${PHASES:-1} $vars $bin pretrain --backend cuda steps=${STEPS:-12} $train out_dir=/tmp/s17_${v}_$round 2>&1 | grep -E "^step|phases|tokens/s|step time|valid loss|rror|warning|note|panick" | tee /tmp/train_$v.txt | sed "s/^/[$v round $round] /" | tee -a "$log"
      [ $round = "${ROUNDS:-2}" ] && NOTE="session 17: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), ${STEPS:-12} steps, one GPU, phases timed (HYMBA_STEP_TIMES=${PHASES:-1}); variant $v ($bin ${vars:-defaults}); last of ${ROUNDS:-2} alternating rounds" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8_s17_$v.json" "$dev" hymba-125m 8 2048 /tmp/train_$v.txt > /dev/null
    done
  done
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ] && [ "${DDP:-1}" = 1 ]; then
    for round in $(seq ${DDP_ROUNDS:-1}); do
      for devs in 0,1 0; do
        LIMIT=${DDP_LIMIT:-240} step env HYMBA_STEP_TIMES=1 .gpu/hymba-train pretrain --backend cuda --devices $devs steps=${STEPS:-12} $train out_dir=/tmp/s17_ddp_${devs/,/_}_$round 2>&1 | grep -E "^step|phases|tokens/s|step time|valid loss|rror|warning|note|panick" | tee /tmp/ddp_${devs/,/_}.txt | sed "s/^/[devices $devs round $round] /" | tee -a "$log"
      done
    done
    NOTE="session 17: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta) per device and step, ${STEPS:-12} steps, phases timed; devices 0,1 (packed weights out, packed gradients back) against device 0 in the same call" python3 bench/train_summary.py "$OUT/pretrain_125m_ddp_bf16_b8_s17.json" "$dev" hymba-125m 8 2048 /tmp/ddp_0.txt /tmp/ddp_0_1.txt | tee -a "$log"
  fi
  [ "${BENCH_STEP:-1}" = 1 ] && LIMIT=200 step .gpu/hymba-eval bench step --backend cuda --preset hymba-125m --batch 8 --seq 2048 --precision bf16 --rounds 3 --out "$OUT/step_125m_b8_bf16_s17.json" 2>&1 | grep -vE "^\s*$" | tail -16 | tee -a "$log"
  ;;
s15flags)
  # Session 15: one cubecl kernel per cuBLAS product instead of two (raise_and_wait). 1. the
  # matmul GPU tests (the ordering test fails on a fallback to host syncs); 2. the trainer,
  # hymba-125m bf16 8 x 2048, with this build (.gpu/hymba-train) and the one before
  # (.gpu/hymba-train.old), alternating ROUNDS times.
  use_cache
  log="$OUT/s15flags_log.txt"
  [ -x .gpu/matmul_gpu ] && LIMIT=200 step .gpu/matmul_gpu --test-threads=1 2>&1 | grep -E "^test |ordering|test result|panicked|warning" | tee -a "$log"
  train="model.preset=hymba-125m model.vocab_size=32001 data.seq_len=2048 batch_size=8 grad_accum=1 valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=bf16"
  for round in $(seq ${ROUNDS:-2}); do
    for b in new old; do
      bin=.gpu/hymba-train; [ $b = old ] && bin=.gpu/hymba-train.old
      LIMIT=${TRAIN_LIMIT:-200} step $bin pretrain --backend cuda steps=${STEPS:-12} $train out_dir=/tmp/s15f_${b}_$round 2>&1 | grep -E "^step|tokens/s|step time|valid loss|rror|warning|panick" | tee /tmp/train_$b.txt | sed "s/^/[$b round $round] /" | tee -a "$log"
      [ $round = "${ROUNDS:-2}" ] && NOTE="session 15: hymba-train pretrain, hymba-125m, bf16, 8 x 2048 (+128 meta), ${STEPS:-12} steps, one GPU, hymba::FixedShapeMemory; cuBLAS ordering: $b (new: one cubecl kernel per product, old: two); last of ${ROUNDS:-2} alternating rounds" python3 bench/train_summary.py "$OUT/pretrain_125m_1gpu_bf16_b8_flags_$b.json" "$(cut -d, -f1 "$OUT/device.txt")" hymba-125m 8 2048 /tmp/train_$b.txt > /dev/null
    done
  done
  ;;
probe)
  # Why a first step takes minutes: full logs of a non-fusion pretraining run and of an SFT
  # run with the kernel cache, GPU utilisation every 5 s, a `top` snapshot.
  use_cache
  nvidia-smi dmon -s u -d 5 > "$OUT/dmon.txt" 2>&1 &
  DMON=$!
  common="data.seq_len=2048 batch_size=${MB:-2} grad_accum=${ACC:-4} valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1"
  ( sleep ${PEEK:-90}; top -b -n 1 | head -15 > "$OUT/top.txt" ) &
  for b in ${PROBE_BACKENDS:-cuda-raw}; do
    LIMIT=${RAW_LIMIT:-200} step .gpu/hymba-train pretrain --backend $b model.preset=hymba-125m model.vocab_size=32001 steps=${STEPS:-4} $common out_dir=/tmp/probe_$b > "$OUT/probe_pretrain_$b.txt" 2>&1
    tail -8 "$OUT/probe_pretrain_$b.txt"; cp /tmp/probe_$b/experiment.log "$OUT/probe_pretrain_$b.log" 2>/dev/null
  done
  if [ "${SFT:-1}" = 1 ]; then
    [ -d /tmp/m125 ] || { LIMIT=120 step .gpu/hymba-eval init --preset hymba-125m --out /tmp/m125; cp .gpu/tokenizer.json /tmp/m125/; }
    LIMIT=${SFT_LIMIT:-250} step .gpu/hymba-train sft --backend cuda --init /tmp/m125 out_dir=/tmp/probe_sft 'data.jsonl=[".gpu/sft.jsonl"]' steps=${STEPS:-4} $common > "$OUT/probe_sft.txt" 2>&1
    tail -8 "$OUT/probe_sft.txt"; cp /tmp/probe_sft/experiment.log "$OUT/probe_sft.log" 2>/dev/null
  fi
  kill $DMON
  save_cache
  ;;
generate)
  for dt in ${DTYPES:-f32 bf16}; do
    LIMIT=${GEN_LIMIT:-240} step .gpu/hymba-eval bench generate --backend cuda --preset hymba-1.5b --context ${CONTEXT:-8192} --decode ${DECODE:-64} --batch ${BATCH:-1} --dtype $dt --out "$OUT/generate_h15_$dt.json" 2>&1 | tail -8
  done
  ;;
esac
