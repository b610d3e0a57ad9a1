#!/usr/bin/env bash
# Rebuilds the embedded default corpus and tokenizer. Run from the workspace root:
#   bash datasets/assets/make_assets.sh [path/to/sotu.txt.gz]
# Deterministic: the same sotu.txt.gz gives byte-identical files (gzip -n: no name/time).
set -euo pipefail
src=${1:-../shared/data/corpus/sotu.txt.gz}
out=datasets/assets
# The last 58 addresses (up to 2021, ~2.0 MB of text): 58 paragraphs + 57 blank lines.
zcat "$src" | tail -n 115 | gzip -9n > "$out/default_corpus.txt.gz"
cargo run -q -p hymba-datasets -- train-tokenizer \
  --input "$out/default_corpus.txt.gz" --vocab-size 4096 --out "$out/default_tokenizer.json"
