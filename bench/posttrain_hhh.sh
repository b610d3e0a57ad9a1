#!/usr/bin/env bash
# The post-training pipeline of issue #8 on the CPU: the main job's small model (pretrain),
# SFT on the shared Natural Instructions chats, then DPO on the shared HHH pairs with 20 %
# held out. Prints each stage's report; the DPO report holds the held-out reward accuracy.
#   bash bench/posttrain_hhh.sh [OUT_DIR]   (about 15 minutes on 2 cores)
set -euo pipefail
OUT=${1:-runs/hhh}
DATA=${DATA:-../shared/data}
BIN=${BIN:-target/release/hymba-train}
mkdir -p "$OUT"
"$BIN" pretrain out_dir="$OUT/pretrain" samples=1
"$BIN" sft --init "$OUT/pretrain/model" out_dir="$OUT/sft" \
  "data.jsonl=[\"$DATA/sft/natural_instructions.jsonl\"]" data.seq_len=512 \
  batch_size=4 steps=150 optimizer.lr=5e-4 valid_batches=8 samples=2 log_every=25
"$BIN" dpo --init "$OUT/sft/model" out_dir="$OUT/dpo" \
  "data.jsonl=[\"$DATA/dpo/hhh_alignment.jsonl\"]" data.seq_len=384 data.val_fraction=0.2 \
  batch_size=4 steps=90 optimizer.lr=1e-4 valid_every=15 samples=2 log_every=15
