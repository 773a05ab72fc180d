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
# Splits are drawn per artist from a hash; with three artists of pairs, 0.3 puts one (Cedar Avenue,
# 2 songs) in `valid`, so the training runs below validate on songs they never train on. The
# other libraries only feed the mixer here (validation uses pair crops): all of them train.
for layout in pairs vocals instrumentals pretrain; do
  fraction=0; [ "$layout" = pairs ] && fraction=0.3
  "$BIN/vrdata" scan "$DIR/corpus/$layout" --layout "$layout" --out "$DIR/manifests/$layout.jsonl" \
    --group-by artist --valid-fraction "$fraction" --workers "$WORKERS"
done
"$BIN/vrdata" verify-manifest "$DIR/manifests/pairs.jsonl"
echo "   portable manifests: the committed manifests/pairs.jsonl, scanned elsewhere, re-rooted onto this corpus"
"$BIN/vrdata" verify-manifest manifests/pairs.jsonl --root "$DIR/corpus/pairs"

echo "== 3. build the spectrogram store (Zarr v3 + WebDataset), in parallel with dask; rerunning resumes"
"$BIN/vrdata" build-shards "$DIR"/manifests/pairs.jsonl "$DIR"/manifests/vocals.jsonl \
  "$DIR"/manifests/instrumentals.jsonl "$DIR"/manifests/pretrain.jsonl --out "$DIR/store" --workers "$WORKERS"
"$BIN/vrdata" verify "$DIR/store"

echo "== 4. describe the libraries and the store: totals, loudness (LUFS), integrity, input normalisation, figures"
"$BIN/vrdata" stats "$DIR"/manifests/pairs.jsonl "$DIR"/manifests/vocals.jsonl "$DIR"/manifests/instrumentals.jsonl \
  "$DIR"/manifests/pretrain.jsonl "$DIR/store" --workers "$WORKERS" --json "$DIR/stats.json" --plots "$DIR/plots"

echo "== 5. listen to what the mixer feeds the model: pairs and random vocal/instrumental mixes"
"$BIN/vrdata" preview-mix "$DIR/store" --n 6 --out "$DIR/preview"

echo "== 6. the model presets"
"$BIN/vrtrain" presets

echo "== 7. denoising pretraining of tiny on the store's pretrain role (a few steps: the mechanics, not a model)"
# The noise goes into each crop's standardised log magnitude; the linear head predicts it (docs/training.md).
SHORT=(--set model.preset=tiny --set 'curriculum=[{crop_frames=64, batch_size=2, accumulation=1, steps=4}]'
  --set train.warmup_steps=1 --set train.lr=1e-3 --set data.workers=0 --set log.every=2
  --set checkpoint.every=4 --set validation.every=0 --set log.tensorboard=false)
"$BIN/vrtrain" run --store "$DIR/store" --out "$DIR/pretrain-run" --objective denoise "${SHORT[@]}"

echo "== 8. finetune it on the pairs with the encoders frozen (the head starts new: linear -> mask)"
"$BIN/vrtrain" run --store "$DIR/store" --out "$DIR/finetune-run" --init "$DIR/pretrain-run" --init-partial \
  --freeze encoders --set 'mixer.proportions={pair = 1.0, augmented = 0.0, pretrain = 0.0}' "${SHORT[@]}"

echo "== 9. train tiny from scratch on the store for a short budget (supervised; the loss falls)"
# The real loop: curriculum, EMA, checkpoints, metrics.jsonl, TensorBoard, loss.png (docs/training.md).
"$BIN/vrtrain" run --store "$DIR/store" --out "$DIR/train-run" --set model.preset=tiny \
  --set 'curriculum=[{crop_frames=128, batch_size=4, accumulation=1, steps=40}]' --set train.warmup_steps=5 \
  --set train.lr=1e-3 --set log.every=5 --set checkpoint.every=20 --set validation.every=20
ls "$DIR/train-run" "$DIR/train-run/checkpoints"

echo "== 10. separate a demo song; the SDR of a held-out (valid) song, with its bounds"
# 40 steps of tiny: the numbers show the mechanics and the bounds, not a good model (docs/separation.md).
"$BIN/vrtrain" separate "$DIR/corpus/pairs/mixtures/Aurora Lane - Glass Harbour (Mix).flac" \
  --checkpoint "$DIR/train-run" --out "$DIR/separated"
"$BIN/vrtrain" eval --checkpoint "$DIR/train-run" --manifest "$DIR/manifests/pairs.jsonl" --split valid \
  --limit 1 --out "$DIR/eval"

echo "== done: manifests in $DIR/manifests, store in $DIR/store, stats in $DIR/stats.json and $DIR/plots, previews in $DIR/preview, runs in $DIR/pretrain-run, $DIR/finetune-run and $DIR/train-run, separated song in $DIR/separated, SDR in $DIR/eval"
