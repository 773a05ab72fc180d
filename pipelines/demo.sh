#!/usr/bin/env bash
# `make demo`: the whole pipeline end to end on the synthetic demo corpus.
# Usage: bash pipelines/demo.sh [DIR]   (default: demo/). Uses the project venv's console scripts.
set -euo pipefail
DIR=${1:-demo}
BIN=${VENV:-.venv}/bin
WORKERS=${WORKERS:-2}
rm -rf "$DIR"
mkdir -p "$DIR/manifests"

echo "== 1. synthesise the demo corpus"
"$BIN/vrdata" demo-corpus "$DIR/corpus"

echo "== 2. scan each library into a portable manifest (one mixture is unmatched and one file corrupt, on purpose)"
for layout in pairs vocals instrumentals pretrain; do
  "$BIN/vrdata" scan "$DIR/corpus/$layout" --layout "$layout" --out "$DIR/manifests/$layout.jsonl" \
    --group-by artist --valid-fraction 0.2 --workers "$WORKERS"
done
"$BIN/vrdata" verify-manifest "$DIR/manifests/pairs.jsonl"
