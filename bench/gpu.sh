#!/usr/bin/env bash
# What runs on the GPU machine (docs/gpu.md says how to build and stage the binaries).
#
#   OUT=<folder> bash bench/gpu.sh PART [PART ...]
#
# PART, each named by what it measures:
#   scan      the CUDA scan-kernel tests (if .gpu/scan_kernel.xz is staged), then
#             `bench scan --kernel $KERNEL --layout $LAYOUT` (auto|warp|tiled|all; time|model|both)
#   matmul    the cuBLAS tests (if .gpu/matmul_gpu.xz is staged), `bench matmul` at 8192³ and
#             the $PRESETS projections, then PyTorch on the same products (bench/torch_matmul.py)
#   train     `hymba-train pretrain`, $MODEL $DTYPE $MB × 2048, $STEPS steps (--step-times with
#             PHASES=1), summarised by bench/train_summary.py
#   step      `bench step` for $MODEL $DTYPE $MB × 2048, once per $MATMUL (cublas, burn)
#   generate  `bench generate` for hymba-1.5b against the attention-only baseline at 8K context
#   ddp       the trainer data-parallel on GPUs 0,1 and on GPU 0 alone (needs two GPUs)
#   profile   a CUPTI activity trace of trainer steps (bench/cupti_trace.c, trace_summary.py),
#             a host-thread profile (--cpu-profile: hymba-train built with the cpu-profile
#             feature, not stripped; folded_summary.py), and CubeCL's per-launch profile of
#             three steps (cubecl_log_summary.py)
#
# Binaries: .gpu/hymba-eval.xz and .gpu/hymba-train.xz, unpacked into a temporary folder.
# BASE=.gpu/base: the same parts also run with the baseline binaries in .gpu/base/,
# alternating with this build ROUNDS times (default 1; the last round's JSON is kept), so both
# are measured on the same card in the same call; their files are named <part>_base_….
# Results are named <what>_<model>_<dtype>_<device>_<date>.json, ready for bench/results/;
# every command's output goes to $OUT/log_<parts>_<device>_<date>.txt.
set -uo pipefail
OUT=${OUT:?set OUT to the output folder}
[ $# -ge 1 ] || { sed -n 2,27p "$0"; exit 2; }
MODEL=${MODEL:-hymba-125m} DTYPE=${DTYPE:-bf16} MB=${MB:-8} STEPS=${STEPS:-12}

# --- binaries ---------------------------------------------------------------------------
BIN=$(mktemp -d)
unpack() {  # unpack DIR DEST: every DIR/*.xz into DEST, executable
  mkdir -p "$2"
  for f in "$1"/*.xz; do
    [ -f "$f" ] || continue
    local to="$2/$(basename "${f%.xz}")"
    if command -v xz >/dev/null; then xz -dc "$f" > "$to"
    else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$to"; fi
    chmod +x "$to"
  done
}
unpack .gpu "$BIN/new"
variants=new
if [ -n "${BASE:-}" ]; then unpack "$BASE" "$BIN/base"; variants="new base"; fi
# each CMD...: run CMD ROUNDS times for every variant, with $B (its binaries), $tag ('' or
# '_base') and $v (new or base) set.
each() {
  for r in $(seq "${ROUNDS:-1}"); do
    for v in $variants; do B=$BIN/$v; tag=; [ $v = base ] && tag=_base; "$@"; done
  done
}

# --- machine ------------------------------------------------------------------------------
# cuBLAS: the system's, else the wheel PyTorch brought.
CUBLAS_DIR=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=${CUBLAS_DIR}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
NGPU=$(nvidia-smi -L | wc -l)
DEV=$(echo "$GPU" | grep -oiE 'h100|h200|a100|b200' | head -1 | tr A-Z a-z); DEV=${DEV:-gpu}
DATE=$(date -u +%F)
LOG="$OUT/log_$(echo "$@" | tr ' ' -)_${DEV}_${DATE}.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

# step LABEL CMD...: run CMD under a time limit ($LIMIT, default 300 s); its output goes to the
# log (each line prefixed with LABEL), to stdout and, as is, to /tmp/step.txt.
step() {
  local label=$1; shift
  echo "=== [$label] $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "${LIMIT:-300}" "$@" 2>&1 | tee /tmp/step.txt | sed "s/^/[$label] /" | tee -a "$LOG"
  echo "=== [$label] rc=${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$LOG"
}

# The persistent kernel cache (HYMBA_KERNEL_CACHE) and cubecl's autotune results, carried
# between calls in .gpu/kernel-cache.txz.part-* (files come back at 16 MiB at most) and saved
# with SAVE_CACHE=1. Without them every call compiles and autotunes for minutes.
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal} HYMBA_KERNEL_CACHE=$PWD/target/kernel-cache
if [ ! -d "$HYMBA_KERNEL_CACHE" ] && ls .gpu/kernel-cache.txz.part-* >/dev/null 2>&1; then
  mkdir -p target
  cat .gpu/kernel-cache.txz.part-* | python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))' | tar x -C target
fi
save_cache() {
  tar c -C target kernel-cache $(cd target && ls -d autotune 2>/dev/null) | xz -T0 -4 \
    | split -b 15M - "$OUT/kernel-cache.txz.part-"
}

TRAIN="model.preset=$MODEL model.vocab_size=32001 data.seq_len=2048 batch_size=$MB grad_accum=${ACC:-1} valid_every=100000 checkpoint_every=100000 valid_batches=1 samples=0 log_every=1 precision=$DTYPE"
SHAPE="${MODEL}_${DTYPE}_b${MB}"

# --- parts --------------------------------------------------------------------------------
tests() {  # tests BINARY FILTER: a CUDA test binary, if it was staged
  [ -x "$B/$1" ] || return 0
  LIMIT=${TEST_LIMIT:-300} step "$v $1" "$B/$1" --test-threads=1 $2
}

scan() {
  tests scan_kernel "${TESTS-kernel}"
  LIMIT=${SCAN_LIMIT:-200} step "$v scan" "$B/hymba-eval" bench scan --backend cuda \
    --kernel "${KERNEL:-all}" --layout "${LAYOUT:-time}" --no-reference \
    --out "$OUT/scan${tag}_${KERNEL:-all}_${DEV}_${DATE}.json"
}

matmul() {
  tests matmul_gpu ""
  local f="$OUT/matmul${tag}_${PRESETS:-hymba-1.5b}_bf16_${DEV}_${DATE}.json"
  LIMIT=${MATMUL_LIMIT:-420} step "$v matmul" "$B/hymba-eval" bench matmul --backend cuda \
    --presets "${PRESETS:-hymba-1.5b}" --out "$f"
  [ -f "$f" ] && LIMIT=120 step "$v torch" python3 bench/torch_matmul.py "$f" "${f/_bf16_/_bf16_torch_}"
}

train() {
  local log=/tmp/train_${v}.txt phases=
  [ "${PHASES:-0}" = 1 ] && phases=--step-times
  LIMIT=${TRAIN_LIMIT:-300} step "$v train" "$B/hymba-train" pretrain --backend cuda $phases \
    steps="$STEPS" $TRAIN out_dir=/tmp/train_$v
  cp /tmp/step.txt "$log"
  NOTE="hymba-train pretrain $phases $TRAIN steps=$STEPS; build: $v" \
    python3 bench/train_summary.py "$OUT/train${tag}_${SHAPE}_${DEV}_${DATE}.json" "$GPU" "$MODEL" "$MB" 2048 "$log" | tee -a "$LOG"
}

bench_step() {
  for mm in ${MATMUL:-cublas}; do
    # --matmul only where it is not the default, so that older builds (without it) run too.
    local name=$SHAPE flag=; [ "$mm" = cublas ] || { name=${SHAPE}_$mm-matmul; flag="--matmul $mm"; }
    # burn's matmul autotunes every shape on first use: give it time.
    LIMIT=${STEP_LIMIT:-400} step "$v step $mm" "$B/hymba-eval" bench step --backend cuda \
      --preset "$MODEL" --batch "$MB" --seq 2048 --precision "$DTYPE" --rounds 3 $flag \
      --out "$OUT/step${tag}_${name}_${DEV}_${DATE}.json"
  done
}

generate() {
  for dt in ${DTYPES:-f32 bf16}; do
    LIMIT=${GEN_LIMIT:-240} step "$v generate $dt" "$B/hymba-eval" bench generate --backend cuda \
      --preset hymba-1.5b --context 8192 --decode 64 --dtype "$dt" \
      --out "$OUT/generate${tag}_hymba-1.5b_${dt}_ctx8k_${DEV}_${DATE}.json"
  done
}

ddp() {
  [ "$NGPU" -ge 2 ] || { echo "ddp: one GPU only, skipped" | tee -a "$LOG"; return; }
  for devs in 0,1 0; do
    LIMIT=${TRAIN_LIMIT:-300} step "$v devices $devs" "$B/hymba-train" pretrain --backend cuda \
      --devices $devs --step-times steps="$STEPS" $TRAIN out_dir=/tmp/ddp_${devs/,/_}
    cp /tmp/step.txt /tmp/ddp_${devs/,/_}.txt
  done
  NOTE="hymba-train pretrain --devices 0,1 against --devices 0, $TRAIN per device and step; build: $v" \
    python3 bench/train_summary.py "$OUT/ddp${tag}_${SHAPE}_2x${DEV}_${DATE}.json" "$GPU" "$MODEL" "$MB" 2048 \
    /tmp/ddp_0.txt /tmp/ddp_0_1.txt | tee -a "$LOG"
}

profile() {
  # 1. CUPTI activity trace: GPU busy time per step, idle gaps, kernels per step.
  local inc=/usr/local/cuda/include kt mt
  kt=$(grep -o "} CUpti_ActivityKernel[0-9]*;" $inc/cupti_activity.h | tail -1 | tr -d '}; ')
  mt=$(grep -o "} CUpti_ActivityMemcpy[0-9]*;" $inc/cupti_activity.h | tail -1 | tr -d '}; ')
  if gcc -shared -fPIC -O2 -DKERNEL_T=$kt -DMEMCPY_T=$mt -I$inc -o /tmp/libcupti_trace.so \
      bench/cupti_trace.c -L/usr/local/cuda/lib64 -lcupti; then
    CUDA_INJECTION64_PATH=/tmp/libcupti_trace.so CUPTI_TRACE_OUT=/tmp/trace_$v.txt \
      LIMIT=${TRAIN_LIMIT:-300} step "$v trace" "$B/hymba-train" pretrain --backend cuda steps=8 $TRAIN out_dir=/tmp/trace_$v
    step "$v trace" python3 bench/trace_summary.py /tmp/trace_$v.txt \
      "$OUT/trace-train${tag}_${SHAPE}_${DEV}_${DATE}.json" 45 3 8
  fi
  # 2. Host threads: where the training, fusion and device threads spend (or wait) their time.
  LIMIT=${TRAIN_LIMIT:-300} step "$v cpu-profile" "$B/hymba-train" pretrain --backend cuda \
    --cpu-profile /tmp/cpu_$v.folded steps="$STEPS" $TRAIN out_dir=/tmp/cpuprof_$v
  if [ -f /tmp/cpu_$v.folded ]; then
    python3 bench/folded_summary.py /tmp/cpu_$v.folded 30 > "$OUT/cpuprof-train${tag}_${SHAPE}_${DEV}_${DATE}.txt"
    gzip -c /tmp/cpu_$v.folded > "$OUT/cpuprof-train${tag}_${SHAPE}_${DEV}_${DATE}.folded.gz"
  fi
  # 3. CubeCL's own per-launch profile of three steps, grouped by kernel and launch size.
  printf '[profiling.logger]\nlevel = "full"\nfile = "/tmp/cubecl_%s.log"\n' $v > cubecl.toml
  LIMIT=${TRAIN_LIMIT:-300} step "$v launches" "$B/hymba-train" pretrain --backend cuda steps=3 $TRAIN out_dir=/tmp/launches_$v
  rm -f cubecl.toml
  step "$v launches" python3 bench/cubecl_log_summary.py launches /tmp/cubecl_$v.log \
    "$OUT/launches-train${tag}_${SHAPE}_${DEV}_${DATE}.json" 30
}

for part in "$@"; do
  case $part in
    scan | matmul | train | generate | ddp | profile) each $part ;;
    step) each bench_step ;;
    *) echo "unknown part: $part (scan, matmul, train, step, generate, ddp, profile)" >&2; exit 2 ;;
  esac
done
[ "${SAVE_CACHE:-0}" = 1 ] && save_cache
ls -la "$OUT"
