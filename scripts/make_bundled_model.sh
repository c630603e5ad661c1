#!/usr/bin/env bash
# Reproduce the bundled model (engine/data/bundled-model) with the project's own pipeline:
# Stockfish self-play -> whole-game data set -> a small Mistral-architecture model from
# scratch. Seeds are fixed in the configs. Made on the lent GPU machine (16 cores for
# self-play, one H100 for training: about 11 + 1 + 4 minutes).
#   bash scripts/make_bundled_model.sh [WORK_DIR]
# Rerunning continues where it stopped: self-play plays only missing chunks, training
# resumes from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/bundled}
MC=${MISTRAL_CHESS:-.venv/bin/mistral-chess}
mkdir -p "$W"
# 35,000 games at 600 nodes a move, 2-4 random opening plies (the run stopped at 35,000
# of the config's 50,000: the GPU machine's lease is 30 minutes).
$MC dataset selfplay --config configs/dataset/selfplay.yaml --out "$W/selfplay" --games 35000 \
    nodes=600 random_plies_min=2 random_plies_max=4
$MC dataset build --config configs/dataset/scratch-games.yaml --source "$W/selfplay" --out "$W/scratch-games"
# 4,000 steps: the validation loss is lowest near step 1,000 and rises after (35k games
# are few for 8.9M parameters); 4,000 had the best legal-move rate (see the model card).
$MC train --config configs/train/scratch-small.yaml data.path="$W/scratch-games" \
    train.output_dir="$W/run" train.max_steps=4000 eval.eval_steps=1000 train.save_steps=1000
echo "model: $W/run  (copy config.json, generation_config.json, model.safetensors, tokenizer*.json into engine/data/bundled-model)"
