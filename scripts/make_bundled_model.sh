#!/usr/bin/env bash
# Reproduce the bundled model (engine/data/bundled-model) with the project's own pipeline:
# Stockfish self-play -> whole-game data set -> a small Mistral-architecture model from
# scratch. Seeds are fixed. Made on the lent GPU machine (16 cores for self-play, one
# H100 for training: about 18 + 1 + 4 minutes).
#   bash scripts/make_bundled_model.sh [WORK_DIR]
# Rerunning continues where it stopped: self-play plays only missing chunks, training
# resumes from its newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/bundled}
MC=${MISTRAL_CHESS:-.venv/bin/mistral-chess}
mkdir -p "$W"
# Set A: 35,000 games at 600 nodes a move, 2-4 random opening plies, seed 0. Set B:
# 22,500 games, 4-6 random plies, seed 1 (so that games do not repeat). Both runs were
# cut short by the GPU machine's 30-minute lease; these counts are what they made.
$MC dataset selfplay --config configs/dataset/selfplay.yaml --out "$W/selfplay" --games 35000 \
    seed=0 nodes=600 random_plies_min=2 random_plies_max=4
$MC dataset selfplay --config configs/dataset/selfplay.yaml --out "$W/selfplay-b" --games 22500 \
    seed=1 nodes=600 random_plies_min=4 random_plies_max=6
$MC dataset build --config configs/dataset/scratch-games.yaml --source "$W/selfplay" --source "$W/selfplay-b" \
    --out "$W/scratch-games"
# 4,000 steps (about 3 passes over the data; see the model card's evaluation table).
$MC train --config configs/train/scratch-small.yaml data.path="$W/scratch-games" \
    train.output_dir="$W/run" train.max_steps=4000 eval.eval_steps=1000 train.save_steps=1000
echo "model: $W/run  (copy config.json, generation_config.json, model.safetensors, tokenizer*.json into engine/data/bundled-model)"
