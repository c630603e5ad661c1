#!/usr/bin/env bash
# Both phases of scripts/bundled_gpu.py at toy sizes on a CPU (about 3 minutes on 2 cores):
# the code the GPU calls run, with a few games, 6 training steps of batch 1 and 2-game matches.
# FINAL_PICK and EVAL_OPPONENTS pass through, e.g. FINAL_PICK=score:bundled EVAL_OPPONENTS=bundled;
# so does SELFPLAY_BESIDE (self-play while the model trains; EVAL_OPPONENTS is then none), e.g.
# SELFPLAY_BESIDE=11 bash scripts/bundled_gpu_smoke.sh: the train call also returns selfplay-11.tgz.
# BUILD_FIRST=1: a build call first, then a second set and the train call (build in parts, merged).
# TRAIN_EXTRA: more training words for the train call; ARM2="WORDS": then a second arm on the same
# data set (DATA_FROM, no build) with WORDS added, e.g. ARM2="train.learning_rate=5e-5".
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-/tmp/bundled-gpu-smoke}
rm -rf "$S" runs/bundled-gpu-smoke && mkdir -p "$S" runs/bundled-gpu-smoke
export PYTHONUNBUFFERED=1 WORK="$S/w" WORKERS=2 SELFPLAY_WORKERS=1 NODES=60 PY=${PY:-.venv/bin/python}
if [ -n "${SELFPLAY_BESIDE:-}" ]; then export EVAL_OPPONENTS=${EVAL_OPPONENTS:-none}; fi
# the local Stockfish (the GPU calls unpack .gpu2/stockfish.xz instead)
export STOCKFISH_PATH=${STOCKFISH_PATH:-$(command -v stockfish || echo /usr/games/stockfish)}
OUT="$S/out-selfplay" "$PY" scripts/bundled_gpu.py selfplay 10 30
cp "$S/out-selfplay/selfplay-10.tgz" runs/bundled-gpu-smoke/
if [ -n "${BUILD_FIRST:-}" ]; then
  # A build call with the games it carries first (set 10), then the train call with one more
  # set (11): it builds only set 11 (excluding set 10's games with dedupe=true) and merges.
  OUT="$S/out-build" GAMES='runs/bundled-gpu-smoke/selfplay-*.tgz' "$PY" scripts/bundled_gpu.py build
  OUT="$S/out-selfplay" "$PY" scripts/bundled_gpu.py selfplay 11 20
  cp "$S/out-selfplay/selfplay-11.tgz" runs/bundled-gpu-smoke/
fi
T="train.per_device_train_batch_size=1 train.device=cpu eval.generation_positions=16 data.max_eval_examples=16 train.warmup_steps=1 train.logging_steps=1 train.threads=1 train.compile=true"
OUT="$S/out-train" MODEL_TAG=smoke FINAL_PICK=${FINAL_PICK:-eval_loss} GAMES='runs/bundled-gpu-smoke/selfplay-*.tgz' TRAIN_STEPS=${TRAIN_STEPS:-6} SAVE_STEPS=${SAVE_STEPS:-2} BUDGET_S=420 \
    EVAL_GAMES=2 EVAL_CONCURRENCY=2 TRAIN_OVERRIDES="$T ${TRAIN_EXTRA:-}" "$PY" scripts/bundled_gpu.py train
ls -la "$S/out-train"
(cd "$S" && cat out-train/model-smoke.tgz.part-* | tar xz && ls bundled-smoke)
if [ -n "${ARM2:-}" ]; then
  # A second arm on the first call's data set, no build (DATA_FROM), with ARM2's training words
  # added, e.g. ARM2="train.learning_rate=5e-5"; its own WORK and MODEL_TAG.
  mkdir -p "$S/out-arm2"
  OUT="$S/out-arm2" WORK="$S/w2" DATA_FROM="$S/w" MODEL_TAG=smoke2 FINAL_PICK=eval_loss TRAIN_STEPS=${TRAIN_STEPS:-6} \
      SAVE_STEPS=${SAVE_STEPS:-2} BUDGET_S=420 EVAL_OPPONENTS=none TRAIN_OVERRIDES="$T $ARM2" "$PY" scripts/bundled_gpu.py train
  (cd "$S" && cat out-arm2/model-smoke2.tgz.part-* | tar xz && ls bundled-smoke2)
fi
