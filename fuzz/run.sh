#!/usr/bin/env bash
# Fuzzes every parser of a file a user hands us, one target after another.
#
#   bash fuzz/run.sh SECONDS [TARGET ...]   (RUNS=N: stop each target after N inputs;
#                                            JOBS=N: run N targets at once)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds are real
# files: the repository's fixtures, a tiny training run's run.toml, checkpoint and data
# folder, and a micro model written by `hymba-eval init`. Prints one line per target
# (inputs executed, crashes) and writes the same to fuzz/last_run.tsv. A crash leaves its
# input in fuzz/artifacts/TARGET/: fix the bug and add the input to fuzz/regressions/TARGET/,
# which the crates' regression tests replay in CI.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:?usage: bash fuzz/run.sh SECONDS [TARGET ...]}
shift
ALL="hf_config sft_jsonl dpo_jsonl choice_jsonl recall_jsonl shard_header data_manifest safetensors run_toml checkpoint_state"
TARGETS=${*:-$ALL}

# --- seeds ------------------------------------------------------------------------------
seed() {  # seed TARGET FILE...: copy files into the target's corpus
  local t=$1; shift
  mkdir -p "corpus/$t"
  for f in "$@"; do cp "$f" "corpus/$t/seed-$(basename "$(dirname "$f")")-$(basename "$f")"; done
}
lines() {  # lines TARGET FILE...: the first 20 lines of each file, one seed each
  local t=$1; shift
  mkdir -p "corpus/$t"
  for f in "$@"; do
    head -n 20 "$f" | split -l 1 - "corpus/$t/seed-$(basename "$f" .jsonl)-"
  done
}
(cd .. && cargo build -q -p hymba-train -p hymba-eval)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
../target/debug/hymba-train pretrain out_dir="$work/run" model.preset=tiny data.seq_len=32 \
  batch_size=2 steps=2 checkpoint_every=2 valid_every=0 valid_batches=1 samples=0 >/dev/null 2>&1
../target/debug/hymba-eval init --config micro_config.json --dtype bf16 --out "$work/bf16" >/dev/null
../target/debug/hymba-eval init --config micro_config.json --dtype f32 --out "$work/f32" >/dev/null
seed hf_config ../hymba/tests/fixtures/tiny_hf/config.json micro_config.json "$work/run/config.json"
lines sft_jsonl ../fixtures/sft/*.jsonl
lines dpo_jsonl ../fixtures/dpo/*.jsonl
lines choice_jsonl $(ls ../fixtures/eval/*.jsonl | grep -v recall)
lines recall_jsonl ../fixtures/eval/recall_*.jsonl
seed data_manifest "$work/run/data/manifest.json"
seed run_toml "$work/run/run.toml"
seed checkpoint_state "$work"/run/checkpoints/step-*/state.json "$work"/run/checkpoints/step-*/checksums.json
seed safetensors "$work/bf16/model.safetensors" "$work/f32/model.safetensors"
# A shard cut to its header and 64 tokens, the header's count patched to match.
mkdir -p corpus/shard_header
python3 - "$work/run/data/val-00000.bin" corpus/shard_header/seed-val.bin <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
width = struct.unpack_from("<I", b, 12)[0]
b = b[: 32 + 64 * width]
struct.pack_into("<Q", b, 16, 64)
open(sys.argv[2], "wb").write(b)
PY

# --- fuzzing ----------------------------------------------------------------------------
max_len() { case $1 in safetensors) echo 65536 ;; *) echo 8192 ;; esac; }
fuzz_one() {  # fuzz_one TARGET: one target's run, one line of figures
  local t=$1 start=$SECONDS before rc inputs crashes
  local log="$work/$t.log"
  mkdir -p "artifacts/$t"
  before=$(ls "artifacts/$t" | wc -l)
  local dict=; [ -f "dicts/$t.dict" ] && dict=-dict=dicts/$t.dict
  cargo +nightly fuzz run -s none -a "$t" "corpus/$t" -- $dict -max_total_time="$SECONDS_EACH" \
    -runs="${RUNS:--1}" -max_len="$(max_len "$t")" -print_final_stats=1 -rss_limit_mb=4096 \
    >"$log" 2>&1
  rc=$?
  inputs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(( $(ls "artifacts/$t" | wc -l) - before ))
  printf '%s\t%s\t%s\t%s\n' "$t" "${inputs:-0}" "$crashes" "$((SECONDS - start))" | tee -a last_run.tsv
  if [ $rc -ne 0 ]; then
    grep -a -m1 -A12 -E 'panicked|ERROR: libFuzzer' "$log" >&2 || tail -20 "$log" >&2
    return 1
  fi
}
export -f fuzz_one max_len
export work SECONDS_EACH RUNS
printf 'target\tinputs\tcrashes\tseconds\n' | tee last_run.tsv
# JOBS=N runs N targets at once (one core each).
printf '%s\n' $TARGETS | xargs -P "${JOBS:-1}" -I{} bash -c 'fuzz_one {}'
